//! The `trainyard` command-line interface: one binary for the scheduler, the
//! workers, the embedded all-in-one mode and the client commands.
//!
//! Argument parsing lives in [`cli`]; each subcommand's module does the work.
//! `anyhow` is used only here at the binary's edge; the crates below return
//! typed errors.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::run(args) {
        Ok(code) => code,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}
