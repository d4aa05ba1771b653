//! The `trainyard` command-line interface: one binary for the scheduler, the
//! workers, the embedded all-in-one mode and the client commands.
//!
//! Argument parsing lives in [`cli`]; each subcommand's module does the work.
//! `anyhow` is used only here at the binary's edge; the crates below return
//! typed errors.

mod cli;

use std::process::ExitCode;

use clap::Parser;

/// mimalloc instead of glibc malloc: the scheduler allocates on many threads
/// (tokio workers, the blocking pool, sqlx's SQLite thread), and glibc's
/// per-thread arenas kept freed memory as RSS (a 20,000-task run peaked at
/// 404 MB RSS over 126 MB of live heap; see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    // A worker runs this binary again as its task watchdog (see
    // trainyard_worker::exec::watchdog); that process parses no CLI.
    if let Some(code) = trainyard_worker::exec::watchdog::main_if_invoked() {
        return code;
    }
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
