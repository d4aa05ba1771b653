//! Command-line arguments (clap) and dispatch to the subcommand modules.

mod bench;
mod client;
pub mod dag;
mod db;
mod inventory;
mod refs;
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
    /// More log output on stderr: `-v` info, `-vv` debug, `-vvv` trace.
    /// Client commands and `standalone --run` print warnings and errors
    /// only by default; `RUST_LOG` (e.g. `RUST_LOG=info`) also overrides.
    #[arg(short = 'v', long = "verbose", action = clap::ArgAction::Count, global = true)]
    verbose: u8,
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
    /// List, show, cancel or clear runs.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// List the scheduler's DAGs, pause or resume their schedules.
    #[command(subcommand)]
    Dags(inventory::DagsCommand),
    /// List the workers the scheduler knows.
    #[command(subcommand)]
    Workers(inventory::WorkersCommand),
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
    // Servers log what they do; a command a person runs and reads the
    // answer of prints only warnings and errors unless asked.
    let quiet = match &cli.command {
        Command::Scheduler(_) | Command::Worker(_) | Command::Bench(_) => false,
        Command::Standalone(args) => args.run.is_some(),
        _ => true,
    };
    init_tracing(quiet, cli.verbose);
    match cli.command {
        Command::Dag(cmd) => dag::run(cmd),
        Command::Scheduler(args) => serve::scheduler(args),
        Command::Worker(args) => serve::worker(args),
        Command::Standalone(args) => serve::standalone(args),
        Command::Trigger(args) => runs::trigger(args),
        Command::Backfill(args) => runs::backfill(args),
        Command::Runs(cmd) => runs::runs(cmd),
        Command::Dags(cmd) => inventory::dags(cmd),
        Command::Workers(cmd) => inventory::workers(cmd),
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

/// Logs to stderr; `RUST_LOG` filters, `TRAINYARD_LOG_FORMAT=json` for JSON
/// lines. Without `RUST_LOG` the level is `info` for servers and `warn` for
/// `quiet` commands, each `-v` one step more; a quiet command at its default
/// level prints `warning: …` / `error: …` lines without timestamps.
fn init_tracing(quiet: bool, verbose: u8) {
    if telemetry::try_init() {
        return;
    }
    use tracing_subscriber::EnvFilter;
    let levels = ["warn", "info", "debug", "trace"];
    let base = usize::from(!quiet) + usize::from(verbose);
    let level = levels[base.min(levels.len() - 1)];
    let from_env = EnvFilter::try_from_default_env().ok();
    let json = std::env::var("TRAINYARD_LOG_FORMAT").is_ok_and(|v| v == "json");
    if quiet && base == 0 && from_env.is_none() && !json {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(EnvFilter::new("warn"))
            .with_writer(std::io::stderr)
            .event_format(Plain)
            .try_init();
        return;
    }
    let filter = from_env.unwrap_or_else(|| EnvFilter::new(level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    // A second init (tests) fails harmlessly.
    let _ = if json {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}

/// `warning: message key=value …`: how a command-line tool says something
/// went wrong, without the timestamps and module paths a server log needs.
struct Plain;

impl<S, N> tracing_subscriber::fmt::FormatEvent<S, N> for Plain
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    N: for<'a> tracing_subscriber::fmt::FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &tracing_subscriber::fmt::FmtContext<'_, S, N>,
        mut writer: tracing_subscriber::fmt::format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let label = match *event.metadata().level() {
            tracing::Level::ERROR => "error",
            tracing::Level::WARN => "warning",
            tracing::Level::INFO => "info",
            _ => "debug",
        };
        write!(writer, "{label}: ")?;
        ctx.field_format().format_fields(writer.by_ref(), event)?;
        writeln!(writer)
    }
}
