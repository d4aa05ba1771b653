//! `trainyard standalone --run DAG`: trigger one run inside the standalone
//! process, wait for it, print what each task did, and exit with its outcome.
//! This makes "run the example pipeline end to end" one command.

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow};
use trainyard_core::dag::{DagSpec, cli_params_to_json};
use trainyard_core::ids::DagId;
use trainyard_core::state::RunState;
use trainyard_scheduler::app::SchedulerApp;

/// How often the run's state is read while waiting (the CLI's own loop; the
/// engine itself is event-driven).
const POLL: Duration = Duration::from_millis(100);

pub async fn run_once(
    app: &SchedulerApp,
    dag: &str,
    raw_params: &[String],
) -> anyhow::Result<ExitCode> {
    let dag_id = DagId::from_str(dag).map_err(|e| anyhow!("bad DAG id {dag:?}: {e}"))?;
    let record = app.store.get_dag(&dag_id).await.with_context(|| {
        format!("DAG {dag} is not loaded (is its file in the --dags folder and valid?)")
    })?;
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
    let run_id = app.engine.trigger(dag_id, params, None, None).await?;
    eprintln!("trainyard standalone: triggered {dag} run {run_id}");
    let run = loop {
        let run = app.store.get_run(run_id).await?;
        if run.state.is_terminal() {
            break run;
        }
        tokio::time::sleep(POLL).await;
    };
    let tasks = app.store.task_instances(run_id).await?;
    let attempts = app.store.run_attempts(run_id).await?;
    println!("run {run_id} {}", run.state);
    for ti in tasks {
        let last = attempts
            .iter()
            .filter(|a| a.task_instance_id == ti.id)
            .max_by_key(|a| a.attempt);
        let note = last.and_then(|a| a.error.clone()).unwrap_or_default();
        // Padding needs owned strings: the id and state types format without `pad`.
        let (task, state) = (ti.task_id.to_string(), ti.state.to_string());
        println!("  {task:<20} {state:<16} attempts {:<3} {note}", ti.attempt);
    }
    Ok(if run.state == RunState::Success {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
