//! Command-line arguments (clap) and dispatch to the subcommand modules.

mod client;
pub mod dag;
mod db;
mod runs;

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
}

/// Runs the parsed command; the returned code becomes the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dag(cmd) => dag::run(cmd),
        Command::Trigger(args) => runs::trigger(args),
        Command::Backfill(args) => runs::backfill(args),
        Command::Runs(cmd) => runs::runs(cmd),
        Command::Logs(args) => runs::logs(args),
        Command::Db(cmd) => db::run(cmd),
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
    if let Some(dir) = std::path::Path::new(path).parent() {
        if !dir.as_os_str().is_empty() {
            std::fs::create_dir_all(dir)
                .map_err(|e| anyhow::anyhow!("cannot create {}: {e}", dir.display()))?;
        }
    }
    Ok(())
}
