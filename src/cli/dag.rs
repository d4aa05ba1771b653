//! `trainyard dag validate|show|next-runs`: work on DAG files without a server.
//!
//! Files are read under the same size and task caps as the scheduler's
//! loader ([`DagLimitArgs`], shared with `scheduler` and `standalone`).
//! Output goes through a locked stdout whose write errors are returned, so
//! `trainyard dag show FILE | head` ends quietly when `head` closes the pipe
//! (`println!` would panic there).

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use trainyard_core::dag::{DagSpec, parse_dag};
use trainyard_core::resources::ByteSize;
use trainyard_scheduler::dags::{DagLimits, FileError};

/// The caps on a DAG file, for every command that reads DAG files.
#[derive(Debug, Clone, Args)]
pub struct DagLimitArgs {
    /// Largest DAG file loaded, e.g. 2MiB. A bigger file is not read: it is
    /// reported as an error on its DAG (the other DAGs load as usual).
    #[arg(
        long,
        env = "TRAINYARD_MAX_DAG_FILE_SIZE",
        default_value = "1MiB",
        value_name = "SIZE",
        value_parser = parse_size
    )]
    pub max_dag_file_size: ByteSize,
    /// Most tasks one DAG file may define; a file with more is reported as
    /// an error on its DAG and not loaded.
    #[arg(
        long,
        env = "TRAINYARD_MAX_DAG_TASKS",
        default_value_t = DagLimits::DEFAULT_MAX_TASKS,
        value_name = "N"
    )]
    pub max_dag_tasks: usize,
}

impl DagLimitArgs {
    pub fn limits(&self) -> DagLimits {
        DagLimits {
            max_file_size: self.max_dag_file_size,
            max_tasks: self.max_dag_tasks,
        }
    }
}

pub fn parse_size(raw: &str) -> Result<ByteSize, String> {
    ByteSize::parse(raw).map_err(|e| format!("{e}; write e.g. 2MiB or 500KB"))
}

#[derive(Debug, Subcommand)]
pub enum DagCommand {
    /// Check DAG files (or every *.toml under the given folders).
    ///
    /// Prints `ok <dag_id> (<n> tasks)` for each good file and
    /// `path:line:col: error: message` on stderr for every problem found.
    /// Exits 1 if any file has an error.
    Validate {
        /// DAG files or folders holding them.
        #[arg(required = true, value_name = "PATH")]
        paths: Vec<PathBuf>,
        #[command(flatten)]
        limits: DagLimitArgs,
    },
    /// Show a DAG's tasks in dependency layers, with resources and schedule.
    Show {
        /// The DAG file.
        path: PathBuf,
        #[command(flatten)]
        limits: DagLimitArgs,
    },
    /// Print the next fire times of a DAG's schedule, one per line (RFC 3339, UTC).
    NextRuns(NextRunsArgs),
}

#[derive(Debug, Args)]
pub struct NextRunsArgs {
    /// The DAG file.
    path: PathBuf,
    /// How many fire times to print.
    #[arg(long, short = 'n', default_value_t = 5)]
    count: usize,
    /// Start after this instant (RFC 3339, e.g. 2026-03-28T00:00:00Z); default now.
    #[arg(long, value_parser = parse_rfc3339)]
    after: Option<DateTime<Utc>>,
    #[command(flatten)]
    limits: DagLimitArgs,
}

fn parse_rfc3339(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); example: 2026-03-28T00:00:00Z"))
}

pub fn run(cmd: DagCommand) -> anyhow::Result<ExitCode> {
    let out = &mut io::stdout().lock();
    let written = match cmd {
        DagCommand::Validate { paths, limits } => validate(out, &paths, &limits.limits()),
        DagCommand::Show { path, limits } => show(out, &load(&path, &limits.limits())?),
        DagCommand::NextRuns(args) => next_runs(out, &args),
    };
    quiet_on_closed_pipe(written.and_then(|code| {
        out.flush()?;
        Ok(code)
    }))
}

/// A reader that stopped reading (`| head`) is not an error: stop quietly
/// with success, as `cat` and `ls` do. Other write errors are reported.
fn quiet_on_closed_pipe(written: anyhow::Result<ExitCode>) -> anyhow::Result<ExitCode> {
    match written {
        Err(e)
            if e.downcast_ref::<io::Error>()
                .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe) =>
        {
            Ok(ExitCode::SUCCESS)
        }
        other => other,
    }
}

/// Every `*.toml` file named or found (recursively, sorted, hidden ones
/// skipped) under the paths — the same walk the scheduler's loader does.
pub fn dag_files(paths: &[PathBuf]) -> anyhow::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for path in paths {
        if path.is_dir() {
            files.extend(trainyard_scheduler::dags::try_dag_files(path)?);
        } else {
            files.push(path.clone());
        }
    }
    Ok(files)
}

fn validate(
    out: &mut impl Write,
    paths: &[PathBuf],
    limits: &DagLimits,
) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut seen: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for path in dag_files(paths)? {
        let shown = path.display().to_string();
        let source = match limits.read_source(&path) {
            Ok(source) => source,
            Err(err) => {
                eprintln!("{}", file_error_line(&shown, &err));
                failed = true;
                continue;
            }
        };
        match parse_dag(&shown, &source) {
            Ok(dag) => {
                if let Some(first) = seen.get(dag.id.as_str()) {
                    eprintln!(
                        "{shown}:1:1: error: duplicate DAG id `{}` (also defined in {})",
                        dag.id,
                        first.display()
                    );
                    failed = true;
                    continue;
                }
                if let Err(err) = limits.check_task_count(&path, dag.tasks.len()) {
                    eprintln!("{}", file_error_line(&shown, &err));
                    failed = true;
                    continue;
                }
                writeln!(out, "ok {} ({} tasks)", dag.id, dag.tasks.len())?;
                seen.insert(dag.id.to_string(), path.clone());
            }
            Err(errors) => {
                eprintln!("{errors}");
                failed = true;
            }
        }
    }
    Ok(if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// `path: error: message` for a file that could not be read or is over a cap
/// (the message names the file already).
fn file_error_line(shown: &str, err: &FileError) -> String {
    let text = err.to_string();
    let message = text
        .strip_prefix(&format!("{shown}: "))
        .unwrap_or(&text)
        .to_owned();
    format!("{shown}: error: {message}")
}

fn load(path: &Path, limits: &DagLimits) -> anyhow::Result<DagSpec> {
    let shown = path.display().to_string();
    let source = limits.read_source(path).map_err(|e| anyhow!("{e}"))?;
    match parse_dag(&shown, &source) {
        Ok(dag) => {
            limits
                .check_task_count(path, dag.tasks.len())
                .map_err(|e| anyhow!("{e}"))?;
            Ok(dag)
        }
        Err(errors) => {
            eprintln!("{errors}");
            bail!(
                "{shown} is not a valid DAG ({} errors)",
                errors.errors.len()
            )
        }
    }
}

fn show(out: &mut impl Write, dag: &DagSpec) -> anyhow::Result<ExitCode> {
    writeln!(out, "DAG {}", dag.id)?;
    if let Some(description) = &dag.description {
        writeln!(out, "  {description}")?;
    }
    match &dag.schedule {
        Some(expr) => {
            let words = trainyard_core::cron::parse(expr)
                .map(|s| s.describe())
                .unwrap_or_else(|e| format!("invalid: {e}"));
            writeln!(out, "schedule: {expr} ({words}, {})", dag.timezone)?;
        }
        None => writeln!(out, "schedule: none (manual and API triggers only)")?,
    }
    let window = match (dag.start_date, dag.end_date) {
        (None, None) => None,
        (start, end) => Some(format!(
            "{} .. {}",
            start.map_or("-".into(), |t| t.to_rfc3339()),
            end.map_or("-".into(), |t| t.to_rfc3339())
        )),
    };
    if let Some(window) = window {
        writeln!(out, "active: {window}")?;
    }
    writeln!(
        out,
        "catchup: {}, max_active_runs: {}, max_active_tasks: {}, overlap: {}",
        dag.catchup,
        dag.max_active_runs,
        dag.max_active_tasks
            .map_or("unlimited".to_string(), |n| n.to_string()),
        serde_json::to_value(dag.overlap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    )?;
    if !dag.tags.is_empty() {
        writeln!(out, "tags: {}", dag.tags.join(", "))?;
    }
    if !dag.params.is_empty() {
        writeln!(out, "params:")?;
        for (name, value) in &dag.params {
            writeln!(out, "  {name} = {value}")?;
        }
    }
    writeln!(out, "tasks ({}):", dag.tasks.len())?;
    for (depth, layer) in dag.topological_layers().iter().enumerate() {
        writeln!(out, "  layer {depth}:")?;
        for id in layer {
            let Some(task) = dag.tasks.get(id) else {
                continue;
            };
            let mut line = format!("    {id}");
            if !task.depends_on.is_empty() {
                line.push_str(&format!(" <- {}", task.depends_on.join(", ")));
            }
            line.push_str(&format!("  [{}]", task.resources));
            if let Some(when) = &task.when {
                line.push_str(&format!("  when {when}"));
            }
            writeln!(out, "{line}")?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn next_runs(out: &mut impl Write, args: &NextRunsArgs) -> anyhow::Result<ExitCode> {
    let dag = load(&args.path, &args.limits.limits())?;
    let Some(expr) = &dag.schedule else {
        bail!(
            "DAG {} has no schedule; it runs only when triggered",
            dag.id
        );
    };
    let schedule = trainyard_core::cron::parse(expr)?;
    let after = args.after.unwrap_or_else(Utc::now);
    let times =
        trainyard_core::cron::fire_times(&schedule, dag.tz(), after, dag.start_date, dag.end_date);
    for t in times.take(args.count) {
        writeln!(
            out,
            "{}",
            t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        )?;
    }
    Ok(ExitCode::SUCCESS)
}
