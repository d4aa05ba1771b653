//! Command-line arguments (clap) and dispatch to the subcommand modules.

mod bench;
mod client;
pub mod dag;
mod db;
mod run_once;
pub(crate) mod runs;
mod serve;
mod telemetry;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Trainyard: a workflow orchestrator for ML training and retraining.
///
/// Write DAGs of tasks in TOML, check them with `trainyard dag validate`, and run
/// them with `trainyard standalone` (everything in one process) or a
/// `trainyard scheduler` plus `trainyard worker`s on your GPU machines.
#[derive(Debug, Parser)]
#[command(
    name = "trainyard",
    version,
    about,
    long_about,
    propagate_version = true
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check, inspect and preview DAG files.
    #[command(subcommand)]
    Dag(dag::DagCommand),
    /// Run the scheduler: store, engine, DAG loader, HTTP API and the gRPC endpoint for workers.
    Scheduler(serve::SchedulerCmd),
    /// Run a worker: connect to a scheduler, offer this machine's GPUs, run tasks.
    Worker(serve::WorkerArgs),
    /// Run a scheduler and workers in one process, on SQLite, with the example DAGs.
    Standalone(serve::StandaloneArgs),
    /// Trigger a run of a DAG on a running scheduler.
    Trigger(runs::TriggerArgs),
    /// Create one run per schedule slot between two dates.
    Backfill(runs::BackfillArgs),
    /// List runs or show one.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// Print a task's log (`--follow` to keep printing while it runs).
    Logs(runs::LogsArgs),
    /// Apply or inspect database migrations.
    #[command(subcommand)]
    Db(db::DbCommand),
    /// Measure the standard workloads (fanout, chain, retrain, wide, packing) and the spawn ceiling.
    Bench(bench::BenchArgs),
}

/// Runs the parsed command; the returned code becomes the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    init_tracing();
    match cli.command {
        Command::Dag(cmd) => dag::run(cmd),
        Command::Scheduler(args) => serve::scheduler(args),
        Command::Worker(args) => serve::worker(args),
        Command::Standalone(args) => serve::standalone(args),
        Command::Trigger(args) => runs::trigger(args),
        Command::Backfill(args) => runs::backfill(args),
        Command::Runs(cmd) => runs::runs(cmd),
        Command::Logs(args) => runs::logs(args),
        Command::Db(cmd) => db::run(cmd),
        Command::Bench(args) => bench::run(args),
    }
}

/// Creates the folder of a `sqlite:` database file so a fresh machine needs no set-up.
pub fn ensure_sqlite_dir(url: &str) -> anyhow::Result<()> {
    let Some(rest) = url.strip_prefix("sqlite:") else {
        return Ok(());
    };
    let path = rest.trim_start_matches("//");
    let path = path.split('?').next().unwrap_or(path);
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
    }
    Ok(())
}

/// A multi-threaded runtime for the long-running processes.
pub fn runtime_multi() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot start the async runtime: {e}"))
}

/// Logs to stderr; `RUST_LOG` filters (default `info`), `TRAINYARD_LOG_FORMAT=json` for JSON lines.
fn init_tracing() {
    if telemetry::try_init() {
        return;
    }
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let json = std::env::var("TRAINYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    // A second init (tests) fails harmlessly.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
