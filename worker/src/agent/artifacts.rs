//! The [`ArtifactHook`] on object storage: inputs are downloaded from, and
//! outputs uploaded to, the artifact store (`trainyard-artifacts`), so
//! upstream outputs reach a downstream task on any machine.
//!
//! Keys: an attempt's outputs live under `runs/<run>/<task>/<attempt>/out/`;
//! the scheduler names, in the assignment, which attempt of each upstream to
//! read (its successful one). Transfers stream in bounded memory whatever the
//! size (see the artifacts crate).

use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use tracing::info;
use trainyard_artifacts::{ArtifactStore, AttemptKey};
use trainyard_core::dag::code::CodeSnapshot;

use super::AttemptError;
use super::workdir::{ArtifactHook, AttemptPaths, Transfer, empty_input, safe_component};

/// Inputs and outputs through an [`ArtifactStore`].
#[derive(Debug, Clone)]
pub struct StoreArtifacts {
    store: ArtifactStore,
}

impl StoreArtifacts {
    pub fn new(store: ArtifactStore) -> Self {
        Self { store }
    }

    /// Opens the store named by `url` (credentials from the usual env).
    pub fn from_url(url: &str) -> Result<Self, trainyard_artifacts::Error> {
        Ok(Self::new(ArtifactStore::from_url(url)?))
    }

    pub fn store(&self) -> &ArtifactStore {
        &self.store
    }

    async fn fetch(&self, attempt: &AttemptPaths) -> Result<Transfer, AttemptError> {
        let mut done = Transfer::default();
        for up in &attempt.upstream {
            if !safe_component(up) {
                return Err(AttemptError::BadAssignment(format!(
                    "upstream task id {up:?} cannot name a directory"
                )));
            }
            let Some(source) = attempt.upstream_outputs.iter().find(|o| &o.task_id == up) else {
                let why = "the scheduler named no successful attempt of it";
                done.notes.push(empty_input(attempt, up, why).await?);
                continue;
            };
            let dir = attempt.in_dir.join(up);
            let records = self
                .store
                .download_prefix(&source.prefix, &dir)
                .await
                .map_err(|source| AttemptError::Inputs {
                    upstream: up.clone(),
                    source,
                })?;
            if records.is_empty() {
                let why = format!(
                    "attempt {} stored no output under {}",
                    source.attempt,
                    self.store.uri(&source.prefix)
                );
                done.notes.push(empty_input(attempt, up, &why).await?);
            } else {
                let bytes: u64 = records.iter().map(|r| r.size).sum();
                info!(upstream = %up, files = records.len(), bytes, "inputs downloaded");
            }
            done.records.extend(records);
        }
        Ok(done)
    }

    async fn upload(&self, attempt: &AttemptPaths) -> Result<Transfer, AttemptError> {
        let key = AttemptKey::new(&attempt.run_id, &attempt.task_id, attempt.attempt)
            .map_err(|e| AttemptError::BadAssignment(e.to_string()))?;
        if tokio::fs::metadata(&attempt.out_dir).await.is_err() {
            // The task removed its own output folder: nothing to keep.
            return Ok(Transfer::default());
        }
        let records = self
            .store
            .upload_dir(&attempt.out_dir, &key.output_prefix())
            .await
            .map_err(AttemptError::Outputs)?;
        if !records.is_empty() {
            let bytes: u64 = records.iter().map(|r| r.size).sum();
            info!(files = records.len(), bytes, "outputs uploaded");
        }
        Ok(Transfer {
            records,
            notes: Vec::new(),
        })
    }
}

impl ArtifactHook for StoreArtifacts {
    fn fetch_inputs<'a>(
        &'a self,
        attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(self.fetch(attempt))
    }

    fn upload_outputs<'a>(
        &'a self,
        attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(self.upload(attempt))
    }

    fn fetch_code<'a>(
        &'a self,
        work_dir: &'a Path,
        code: &'a CodeSnapshot,
        tree: &'a Path,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, AttemptError>> {
        Box::pin(async move {
            super::code::materialize(&self.store, work_dir, code, tree)
                .await
                .map(Some)
        })
    }

    fn stores_outputs(&self) -> bool {
        true
    }
}

/// A configured store this worker cannot open (bad URL, missing
/// credentials): every attempt fails with the reason rather than silently
/// running without its inputs or losing its outputs.
#[derive(Debug, Clone)]
pub(super) struct UnusableStore {
    pub(super) reason: String,
}

impl ArtifactHook for UnusableStore {
    fn fetch_inputs<'a>(
        &'a self,
        _attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(async move { Err(AttemptError::StoreUnusable(self.reason.clone())) })
    }

    fn upload_outputs<'a>(
        &'a self,
        _attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(async move { Err(AttemptError::StoreUnusable(self.reason.clone())) })
    }

    fn fetch_code<'a>(
        &'a self,
        _work_dir: &'a Path,
        _code: &'a CodeSnapshot,
        _tree: &'a Path,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, AttemptError>> {
        Box::pin(async move { Err(AttemptError::StoreUnusable(self.reason.clone())) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::agent::workdir::UpstreamOutput;

    fn paths(work: &std::path::Path, task: &str, attempt: u32, up: &[&str]) -> AttemptPaths {
        AttemptPaths::new(
            work,
            "run1",
            "dag",
            task,
            attempt,
            up.iter().map(|s| (*s).to_owned()).collect(),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn outputs_travel_to_a_downstream_on_another_work_dir() {
        let store_dir = tempfile::tempdir().unwrap();
        let hook = StoreArtifacts::from_url(&store_dir.path().display().to_string()).unwrap();

        // train runs on one host (its attempt 2 succeeded)...
        let host_a = tempfile::tempdir().unwrap();
        let train = paths(host_a.path(), "train", 2, &[]);
        train.prepare().await.unwrap();
        std::fs::create_dir_all(train.out_dir.join("ckpt")).unwrap();
        std::fs::write(train.out_dir.join("model.json"), b"{\"w\": 1}").unwrap();
        std::fs::write(train.out_dir.join("ckpt/e1.bin"), b"abc").unwrap();
        let up = hook.upload_outputs(&train).await.unwrap();
        let keys: Vec<&str> = up.records.iter().map(|r| r.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "runs/run1/train/2/out/ckpt/e1.bin",
                "runs/run1/train/2/out/model.json"
            ]
        );
        assert_eq!(up.records[1].size, 8);
        assert_eq!(up.records[1].sha256.len(), 64);

        // ...evaluate on another, with a second upstream that stored nothing.
        let host_b = tempfile::tempdir().unwrap();
        let mut eval = paths(host_b.path(), "evaluate", 1, &["train", "ingest"]);
        eval.upstream_outputs = vec![
            UpstreamOutput {
                task_id: "train".into(),
                attempt: 2,
                prefix: "runs/run1/train/2/out".into(),
            },
            UpstreamOutput {
                task_id: "ingest".into(),
                attempt: 1,
                prefix: "runs/run1/ingest/1/out".into(),
            },
        ];
        eval.prepare().await.unwrap();
        let got = hook.fetch_inputs(&eval).await.unwrap();
        assert_eq!(
            std::fs::read(eval.in_dir.join("train/model.json")).unwrap(),
            b"{\"w\": 1}"
        );
        assert_eq!(
            std::fs::read(eval.in_dir.join("train/ckpt/e1.bin")).unwrap(),
            b"abc"
        );
        assert_eq!(
            got.records, up.records,
            "the consumed records name what was produced"
        );
        assert!(eval.in_dir.join("ingest").is_dir());
        assert!(got.notes[0].contains("`ingest`"), "{:?}", got.notes);
    }

    #[tokio::test]
    async fn an_upstream_the_scheduler_did_not_name_gets_an_empty_folder() {
        let store_dir = tempfile::tempdir().unwrap();
        let hook = StoreArtifacts::from_url(&store_dir.path().display().to_string()).unwrap();
        let host = tempfile::tempdir().unwrap();
        let me = paths(host.path(), "deploy", 1, &["evaluate"]);
        me.prepare().await.unwrap();
        let got = hook.fetch_inputs(&me).await.unwrap();
        assert!(got.records.is_empty());
        assert!(me.in_dir.join("evaluate").is_dir());
        assert_eq!(got.notes.len(), 1);
    }

    #[tokio::test]
    async fn an_empty_output_dir_uploads_nothing() {
        let store_dir = tempfile::tempdir().unwrap();
        let hook = StoreArtifacts::from_url(&store_dir.path().display().to_string()).unwrap();
        let host = tempfile::tempdir().unwrap();
        let me = paths(host.path(), "t", 1, &[]);
        me.prepare().await.unwrap();
        assert!(hook.upload_outputs(&me).await.unwrap().records.is_empty());
    }
}
