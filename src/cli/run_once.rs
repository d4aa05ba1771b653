//! `trainyard standalone --run DAG`: trigger one run inside the standalone
//! process, print one line per task as it ends (state, duration, metrics),
//! then a summary, and exit with the run's outcome. This makes "run the
//! example pipeline end to end" one command whose whole output fits on a
//! screen.
//!
//! It follows the engine's events (published after each committed turn), so
//! a line appears the moment its task ended and the command returns as soon
//! as the run did; after each event it reads the store, so a lagged
//! (lossy) event stream loses nothing. A failed task's last log lines are
//! printed below the summary with the path of the whole log.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use trainyard_core::dag::{DagSpec, cli_params_to_json};
use trainyard_core::ids::{DagId, RunId, TaskInstanceId};
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::app::SchedulerApp;
use trainyard_scheduler::engine::EngineEvent;
use trainyard_scheduler::store::{Attempt, MetricPoint, TaskInstance};

/// Without any event, the store is read again this often (a safety net; the
/// events are what make the output prompt).
const RECHECK: Duration = Duration::from_secs(1);
/// How many of a failed attempt's last log lines are printed.
const TAIL_LINES: usize = 20;

pub async fn run_once(
    app: &SchedulerApp,
    dag: &str,
    raw_params: &[String],
) -> anyhow::Result<ExitCode> {
    let dag_id = loaded_dag(app, dag).await?;
    let record = app.store.get_dag(&dag_id).await?;
    let version = record.current_version_id.ok_or_else(|| {
        anyhow!(
            "DAG {dag} has no valid version: {}",
            record.parse_error.unwrap_or_default()
        )
    })?;
    let spec: DagSpec = app
        .store
        .get_dag_version(version)
        .await?
        .spec
        .decode()
        .context("the stored DAG spec cannot be read")?;
    let params = cli_params_to_json(&spec.params, raw_params)?;
    // Subscribed before the trigger: no event of the run can be missed.
    let mut events = app.engine.subscribe();
    let run_id = app.engine.trigger(dag_id, params, None, None).await?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{dag} run {run_id}")?;
    out.flush()?;
    let mut printed: BTreeSet<(TaskInstanceId, i32, &'static str)> = BTreeSet::new();
    let width = spec.tasks.keys().map(String::len).max().unwrap_or(8);
    let run = loop {
        let run = app.store.get_run(run_id).await?;
        let view = RunView::read(app, run_id).await?;
        view.print_new(&mut out, &mut printed, width)?;
        out.flush()?;
        if run.state.is_terminal() {
            break (run, view);
        }
        // Any event (or a lag, or the recheck) is a reason to read again.
        loop {
            match tokio::time::timeout(RECHECK, events.recv()).await {
                Ok(Ok(EngineEvent::RunState { run_id: r, .. }))
                | Ok(Ok(EngineEvent::TaskState { run_id: r, .. }))
                    if r == run_id =>
                {
                    break;
                }
                Ok(Ok(_)) => continue,
                Ok(Err(_)) | Err(_) => break,
            }
        }
    };
    let (run, view) = run;
    let took = match (run.started_at, run.ended_at) {
        (Some(s), Some(e)) => format!(" in {}", super::runs::seconds(secs(e - s))),
        _ => String::new(),
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for ti in &view.tasks {
        *counts.entry(ti.state.as_str()).or_default() += 1;
    }
    let counts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
    writeln!(
        out,
        "run {} {}{took} ({})",
        run_id,
        run.state,
        counts.join(", ")
    )?;
    for ti in view.tasks.iter().filter(|t| t.state == TaskState::Failed) {
        print_failure(app, &mut out, run_id, ti, view.last_attempt(ti)).await?;
    }
    out.flush()?;
    Ok(if run.state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// The DAG's id when the scheduler loaded it; otherwise an error that names
/// the closest loaded DAG.
async fn loaded_dag(app: &SchedulerApp, dag: &str) -> anyhow::Result<DagId> {
    let known = app.store.list_dags().await?;
    let ids: Vec<&str> = known.iter().map(|d| d.id.as_str()).collect();
    if !ids.contains(&dag) {
        bail!(
            "no DAG {dag:?} in the --dags folder{} (loaded: {}; is its file there and valid? \
             `trainyard dag validate DIR` says)",
            trainyard_core::suggest::did_you_mean(dag, ids.iter().copied()),
            if ids.is_empty() {
                "none".to_owned()
            } else {
                ids.join(", ")
            }
        );
    }
    DagId::from_str(dag).map_err(|e| anyhow!("bad DAG id {dag:?}: {e}"))
}

/// The run's tasks, attempts and metrics as the store has them now.
struct RunView {
    tasks: Vec<TaskInstance>,
    attempts: Vec<Attempt>,
    metrics: Vec<MetricPoint>,
}

impl RunView {
    async fn read(app: &SchedulerApp, run_id: RunId) -> anyhow::Result<Self> {
        Ok(Self {
            tasks: app.store.task_instances(run_id).await?,
            attempts: app.store.run_attempts(run_id).await?,
            metrics: app.store.run_metrics(run_id).await?,
        })
    }

    fn last_attempt(&self, ti: &TaskInstance) -> Option<&Attempt> {
        self.attempts
            .iter()
            .filter(|a| a.task_instance_id == ti.id)
            .max_by_key(|a| a.attempt)
    }

    /// One line for each task that ended (or is waiting to retry) since the
    /// last call, in the store's task order.
    fn print_new(
        &self,
        out: &mut impl Write,
        printed: &mut BTreeSet<(TaskInstanceId, i32, &'static str)>,
        width: usize,
    ) -> std::io::Result<()> {
        for ti in &self.tasks {
            let shown = ti.state.is_terminal() || ti.state == TaskState::UpForRetry;
            if !shown || !printed.insert((ti.id, ti.attempt, ti.state.as_str())) {
                continue;
            }
            let last = self.last_attempt(ti);
            let took = last
                .and_then(|a| Some(a.ended_at? - a.started_at?))
                .map(|d| super::runs::seconds(secs(d)))
                .unwrap_or_else(|| "-".into());
            let metrics: Vec<String> = self
                .metrics
                .iter()
                .filter(|m| m.task_instance_id == ti.id && m.attempt == ti.attempt)
                .map(|m| format!("{}={}", m.name, number(m.value)))
                .collect();
            let note = match ti.state {
                TaskState::UpForRetry => format!(
                    "attempt {} of {} failed{}; retrying",
                    ti.attempt,
                    ti.max_attempts,
                    last.and_then(|a| a.error.as_deref())
                        .map(|e| format!(": {e}"))
                        .unwrap_or_default()
                ),
                TaskState::Success => metrics.join(" "),
                _ => {
                    let attempts = if ti.attempt > 1 {
                        format!("after {} attempts", ti.attempt)
                    } else {
                        String::new()
                    };
                    let error = last.and_then(|a| a.error.clone()).unwrap_or_default();
                    [attempts, error, metrics.join(" ")]
                        .into_iter()
                        .filter(|s| !s.is_empty())
                        .collect::<Vec<_>>()
                        .join("; ")
                }
            };
            let mark = match ti.state {
                TaskState::Success => "ok",
                TaskState::Skipped => "--",
                TaskState::UpForRetry => "..",
                _ => "!!",
            };
            let task = ti.task_id.as_str();
            let state = ti.state.as_str();
            let line = format!("  {mark} {task:<width$}  {state:<15}  {took:>7}  {note}");
            writeln!(out, "{}", line.trim_end())?;
        }
        Ok(())
    }
}

/// The failed attempt's last log lines and where the whole log is.
async fn print_failure(
    app: &SchedulerApp,
    out: &mut impl Write,
    run_id: RunId,
    ti: &TaskInstance,
    last: Option<&Attempt>,
) -> anyhow::Result<()> {
    let task = ti.task_id.as_str();
    let Some(attempt) = last else {
        return Ok(());
    };
    let text = match app.logs.read(run_id, task, attempt.attempt).await {
        Ok(text) => text,
        Err(e) => {
            writeln!(
                out,
                "{task} attempt {}: its log cannot be read: {e}",
                attempt.attempt
            )?;
            return Ok(());
        }
    };
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(TAIL_LINES);
    let shown = if from > 0 {
        format!("last {} of {} lines", lines.len() - from, lines.len())
    } else {
        format!("{} lines", lines.len())
    };
    writeln!(out, "--- {task}, attempt {} ({shown}) ---", attempt.attempt)?;
    for line in &lines[from..] {
        writeln!(out, "{line}")?;
    }
    let file = app.logs.path(run_id, task, attempt.attempt).ok();
    let whole = match (file, &attempt.log_location) {
        (Some(path), _) if path.exists() => path.display().to_string(),
        // Archived (the local copy is removed once it is): a local store's
        // object is shown as the path a person can open.
        (_, Some(uri)) => uri.strip_prefix("file://").unwrap_or(uri).to_owned(),
        (Some(path), None) => path.display().to_string(),
        (None, None) => "not kept".to_owned(),
    };
    writeln!(out, "--- full log: {whole}")?;
    Ok(())
}

fn secs(d: chrono::TimeDelta) -> f64 {
    d.num_milliseconds().max(0) as f64 / 1000.0
}

/// A metric as a person reads it: at most 4 decimals, no trailing zeros.
fn number(v: f64) -> String {
    let s = format!("{v:.4}");
    if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    }
}

#[cfg(test)]
mod tests {
    use super::number;

    #[test]
    fn metrics_print_short() {
        assert_eq!(number(0.871_234_5), "0.8712");
        assert_eq!(number(3.0), "3");
        assert_eq!(number(0.5), "0.5");
    }
}
