//! What the worker service adds around artifacts:
//!
//! - the output prefix of each upstream attempt an assignment reads its
//!   inputs from (the engine's assignment carries those attempts; nothing
//!   is read from the store per assignment);
//! - secrets: literal values of the task's secret env are masked in log
//!   lines again before they are stored (the worker masks first; this is
//!   defence in depth, e.g. against an old worker);
//! - the attempt's full log is archived to the artifact store when it ends,
//!   before the result goes to the engine, so its URI is committed with the
//!   attempt's end (see [`crate::logs::LogStore::archive`]). Lineage (outputs
//!   and inputs) travels in the result too (`convert::result_from_proto`).

use std::collections::HashMap;
use std::sync::Arc;

use tracing::{debug, warn};
use trainyard_artifacts::AttemptKey;
use trainyard_core::dag::{DagSpec, EnvSource};
use trainyard_core::ids::RunId;
use trainyard_proto::v1;

use crate::engine::Assignment;
use crate::logs::{LogStore, LogStream};
use crate::store::ReadStore;

/// What the service needs for artifacts; see the module docs.
#[derive(Debug, Clone)]
pub struct ArtifactContext {
    pub store: Arc<dyn ReadStore>,
    /// Announced to workers at registration (`RegisterResponse`).
    pub url: String,
}

/// Fills `upstream_outputs` of an outgoing Assign: for each upstream that
/// succeeded, its attempt (as the engine knows it) and output prefix.
pub(super) fn fill_upstream_outputs(a: &Assignment, msg: &mut v1::Assign) {
    for up in &a.upstream_attempts {
        let Ok(attempt) = u32::try_from(up.attempt) else {
            continue;
        };
        match AttemptKey::new(a.run_id.to_string(), up.task_id.as_str(), attempt) {
            Ok(key) => msg.upstream_outputs.push(v1::UpstreamOutput {
                task_id: up.task_id.to_string(),
                attempt,
                prefix: key.output_prefix(),
            }),
            Err(e) => {
                warn!(upstream = %up.task_id, error = %e, "upstream cannot name an artifact prefix")
            }
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
pub(super) async fn secrets_from_spec(
    store: &dyn ReadStore,
    run: RunId,
    task: &str,
) -> Vec<String> {
    let spec = async {
        let run = store.get_run(run).await.ok()?;
        let version = store.get_dag_version(run.version_id).await.ok()?;
        version.spec.decode::<DagSpec>().ok()
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
        store: Option<&dyn ReadStore>,
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

/// How long a finished attempt's log upload may hold up its report; past
/// it the attempt ends without an archived log (the local copy stays).
const ARCHIVE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Archives a finished attempt's log and returns its URI, to be committed
/// with the attempt's end. `None` when there is no archive or it failed.
pub(super) async fn archive_log(
    logs: &LogStore,
    run: RunId,
    task: &str,
    attempt: i32,
) -> Option<String> {
    if !logs.has_archive() {
        return None;
    }
    match tokio::time::timeout(ARCHIVE_TIMEOUT, logs.archive(run, task, attempt)).await {
        Ok(Ok(uri)) => Some(uri),
        Ok(Err(e)) => {
            warn!(%run, task, attempt, error = %e, "could not archive the attempt log");
            None
        }
        Err(_) => {
            warn!(%run, task, attempt, "archiving the attempt log took too long; the attempt ends without it");
            None
        }
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
