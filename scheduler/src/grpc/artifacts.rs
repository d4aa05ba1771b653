//! What the worker service adds around artifacts, with the [`Store`]:
//!
//! - which attempt of each upstream an assignment reads its inputs from
//!   (the engine's assignment only names upstream tasks; their current
//!   attempt is read from the store when the assignment goes out);
//! - lineage: the outputs and inputs a TaskFinished reports are recorded;
//! - secrets: literal values of the task's secret env are masked in log
//!   lines again before they are stored (the worker masks first; this is
//!   defence in depth, e.g. against an old worker);
//! - the attempt's full log is archived to the artifact store when it ends
//!   and its URI recorded on the attempt (see [`crate::logs::LogStore::archive`]).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, warn};
use trainyard_artifacts::AttemptKey;
use trainyard_core::dag::{DagSpec, EnvSource};
use trainyard_core::ids::{RunId, TaskId, TaskInstanceId};
use trainyard_core::state::TaskState;
use trainyard_proto::v1;

use crate::engine::Assignment;
use crate::logs::{LogStore, LogStream};
use crate::store::{AttemptOf, NewArtifact, Store};

/// What the service needs for artifacts; see the module docs.
#[derive(Debug, Clone)]
pub struct ArtifactContext {
    pub store: Arc<dyn Store>,
    /// Announced to workers at registration (`RegisterResponse`).
    pub url: String,
}

/// Caps what one TaskFinished may record (a hostile or buggy worker must
/// not write millions of rows in one go).
const MAX_RECORDS: usize = 100_000;

/// Fills `upstream_outputs` of an outgoing Assign: for each upstream that
/// succeeded, its current attempt and output prefix.
pub(super) async fn fill_upstream_outputs(store: &dyn Store, a: &Assignment, msg: &mut v1::Assign) {
    if a.upstream.is_empty() {
        return;
    }
    let tasks = match store.task_instances(a.run_id).await {
        Ok(t) => t,
        Err(e) => {
            warn!(run = %a.run_id, task = %a.task_id, error = %e, "cannot read upstream attempts; inputs will be empty");
            return;
        }
    };
    for up in &a.upstream {
        let Some(t) = tasks
            .iter()
            .find(|t| &t.task_id == up && t.state == TaskState::Success)
        else {
            continue;
        };
        let Ok(attempt) = u32::try_from(t.attempt) else {
            continue;
        };
        match AttemptKey::new(a.run_id.to_string(), up.as_str(), attempt) {
            Ok(key) => msg.upstream_outputs.push(v1::UpstreamOutput {
                task_id: up.to_string(),
                attempt,
                prefix: key.output_prefix(),
            }),
            Err(e) => warn!(upstream = %up, error = %e, "upstream cannot name an artifact prefix"),
        }
    }
}

/// Literal values of the task's secret env, from an assignment.
pub(super) fn secrets_of(a: &Assignment) -> Vec<String> {
    a.secret_env
        .iter()
        .filter_map(|name| a.env.get(name))
        .filter(|v| !v.is_empty())
        .cloned()
        .collect()
}

/// Literal values of the task's secret env, from the run's DAG version (for
/// lines of an attempt assigned before this scheduler started).
pub(super) async fn secrets_from_spec(store: &dyn Store, run: RunId, task: &str) -> Vec<String> {
    let spec = async {
        let run = store.get_run(run).await.ok()?;
        let version = store.get_dag_version(run.version_id).await.ok()?;
        serde_json::from_value::<DagSpec>(version.spec).ok()
    }
    .await;
    let Some(spec) = spec else {
        debug!(%run, task, "no DAG spec to read secrets from");
        return Vec::new();
    };
    spec.tasks
        .get(task)
        .map(|t| {
            t.env
                .values()
                .filter(|v| v.secret)
                .filter_map(|v| match &v.source {
                    EnvSource::Value(s) if !s.is_empty() => Some(s.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Replaces every secret value in the lines by `***`.
pub fn mask_lines(lines: &mut [(LogStream, String)], secrets: &[String]) {
    if secrets.is_empty() {
        return;
    }
    for (_, line) in lines.iter_mut() {
        for s in secrets {
            if line.contains(s.as_str()) {
                *line = line.replace(s.as_str(), "***");
            }
        }
    }
}

/// Secret values per (run, task), cached for a session.
#[derive(Debug, Default)]
pub(super) struct SecretCache {
    known: HashMap<(RunId, String), Arc<Vec<String>>>,
}

impl SecretCache {
    pub(super) fn insert(&mut self, run: RunId, task: &str, secrets: Vec<String>) {
        self.known.insert((run, task.to_owned()), Arc::new(secrets));
    }

    /// The secrets of (run, task), loaded from the spec on first use.
    pub(super) async fn get(
        &mut self,
        store: Option<&dyn Store>,
        run: RunId,
        task: &str,
    ) -> Arc<Vec<String>> {
        if let Some(s) = self.known.get(&(run, task.to_owned())) {
            return s.clone();
        }
        let loaded = match store {
            Some(store) => secrets_from_spec(store, run, task).await,
            None => Vec::new(),
        };
        let loaded = Arc::new(loaded);
        self.known.insert((run, task.to_owned()), loaded.clone());
        loaded
    }
}

fn artifacts_from_proto(list: &[v1::Artifact]) -> Vec<NewArtifact> {
    list.iter()
        .take(MAX_RECORDS)
        .map(|a| NewArtifact {
            key: a.key.clone(),
            uri: a.uri.clone(),
            size: a.size,
            sha256: a.sha256.clone(),
        })
        .collect()
}

/// After the engine accepted a TaskFinished: records its lineage (inline,
/// so it is there when the run's next task asks) and archives the log in the
/// background (an upload must not stall the worker's stream).
pub(super) async fn on_finished(
    ctx: &ArtifactContext,
    logs: &LogStore,
    place: Option<(RunId, String)>,
    ti: TaskInstanceId,
    attempt: i32,
    f: &v1::TaskFinished,
) {
    let place = match place {
        Some(p) => Some(p),
        None => match ctx.store.get_task_instance(ti).await {
            Ok(t) => Some((t.run_id, t.task_id.to_string())),
            Err(e) => {
                warn!(%ti, attempt, error = %e, "finished attempt not found; no lineage, no log archive");
                None
            }
        },
    };
    let Some((run, task)) = place else {
        return;
    };
    let me = AttemptOf {
        run_id: run,
        task_id: TaskId::new(task.clone()),
        task_instance_id: ti,
        attempt,
    };
    let now = chrono::Utc::now();
    let produced = artifacts_from_proto(&f.outputs);
    if let Err(e) = ctx.store.record_artifacts(&me, &produced, now).await {
        warn!(%run, %task, attempt, error = %e, "could not record produced artifacts");
    }
    let consumed: Vec<String> = f
        .inputs
        .iter()
        .take(MAX_RECORDS)
        .map(|a| a.key.clone())
        .collect();
    match ctx.store.record_artifact_inputs(&me, &consumed, now).await {
        Ok(linked) if (linked as usize) < consumed.len() => {
            debug!(%run, %task, attempt, linked, reported = consumed.len(), "some inputs match no recorded artifact");
        }
        Ok(_) => {}
        Err(e) => warn!(%run, %task, attempt, error = %e, "could not record consumed artifacts"),
    }
    if logs.has_archive() {
        let (store, logs) = (ctx.store.clone(), logs.clone());
        tokio::spawn(async move {
            match logs.archive(run, &task, attempt).await {
                Ok(uri) => {
                    if let Err(e) = store.set_attempt_log_location(ti, attempt, &uri).await {
                        warn!(%run, %task, attempt, error = %e, "could not record the log location");
                    }
                }
                Err(e) => {
                    warn!(%run, %task, attempt, error = %e, "could not archive the attempt log")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_occurrence_of_every_secret_is_masked() {
        let mut lines = vec![
            (LogStream::Stdout, "token=hunter2 again hunter2".to_owned()),
            (LogStream::Stderr, "pw abc".to_owned()),
            (LogStream::Stdout, "clean".to_owned()),
        ];
        mask_lines(&mut lines, &["hunter2".to_owned(), "abc".to_owned()]);
        assert_eq!(lines[0].1, "token=*** again ***");
        assert_eq!(lines[1].1, "pw ***");
        assert_eq!(lines[2].1, "clean");
    }
}
