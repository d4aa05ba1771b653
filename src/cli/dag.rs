//! `trainyard dag validate|show|next-runs`: work on DAG files without a server.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use chrono::{DateTime, Utc};
use clap::{Args, Subcommand};
use trainyard_core::dag::{DagSpec, parse_dag};

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
    },
    /// Show a DAG's tasks in dependency layers, with resources and schedule.
    Show {
        /// The DAG file.
        path: PathBuf,
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
}

fn parse_rfc3339(raw: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}); example: 2026-03-28T00:00:00Z"))
}

pub fn run(cmd: DagCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        DagCommand::Validate { paths } => validate(&paths),
        DagCommand::Show { path } => show(&load(&path)?),
        DagCommand::NextRuns(args) => next_runs(&args),
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

fn validate(paths: &[PathBuf]) -> anyhow::Result<ExitCode> {
    let mut failed = false;
    let mut seen: std::collections::BTreeMap<String, PathBuf> = Default::default();
    for path in dag_files(paths)? {
        let shown = path.display().to_string();
        let source = match std::fs::read_to_string(&path) {
            Ok(source) => source,
            Err(err) => {
                eprintln!("{shown}: error: cannot read file: {err}");
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
                println!("ok {} ({} tasks)", dag.id, dag.tasks.len());
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

fn load(path: &Path) -> anyhow::Result<DagSpec> {
    let shown = path.display().to_string();
    let source = std::fs::read_to_string(path).with_context(|| format!("cannot read {shown}"))?;
    match parse_dag(&shown, &source) {
        Ok(dag) => Ok(dag),
        Err(errors) => {
            eprintln!("{errors}");
            bail!(
                "{shown} is not a valid DAG ({} errors)",
                errors.errors.len()
            )
        }
    }
}

fn show(dag: &DagSpec) -> anyhow::Result<ExitCode> {
    println!("DAG {}", dag.id);
    if let Some(description) = &dag.description {
        println!("  {description}");
    }
    match &dag.schedule {
        Some(expr) => {
            let words = trainyard_core::cron::parse(expr)
                .map(|s| s.describe())
                .unwrap_or_else(|e| format!("invalid: {e}"));
            println!("schedule: {expr} ({words}, {})", dag.timezone);
        }
        None => println!("schedule: none (manual and API triggers only)"),
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
        println!("active: {window}");
    }
    println!(
        "catchup: {}, max_active_runs: {}, max_active_tasks: {}, overlap: {}",
        dag.catchup,
        dag.max_active_runs,
        dag.max_active_tasks
            .map_or("unlimited".to_string(), |n| n.to_string()),
        serde_json::to_value(dag.overlap)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    );
    if !dag.tags.is_empty() {
        println!("tags: {}", dag.tags.join(", "));
    }
    if !dag.params.is_empty() {
        println!("params:");
        for (name, value) in &dag.params {
            println!("  {name} = {value}");
        }
    }
    println!("tasks ({}):", dag.tasks.len());
    for (depth, layer) in dag.topological_layers().iter().enumerate() {
        println!("  layer {depth}:");
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
            println!("{line}");
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn next_runs(args: &NextRunsArgs) -> anyhow::Result<ExitCode> {
    let dag = load(&args.path)?;
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
        println!("{}", t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
    }
    Ok(ExitCode::SUCCESS)
}
