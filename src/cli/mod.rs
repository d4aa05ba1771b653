//! Command-line arguments (clap) and dispatch to the subcommand modules.

pub mod dag;

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
}

/// Runs the parsed command; the returned code becomes the process exit status.
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Dag(cmd) => dag::run(cmd),
    }
}
