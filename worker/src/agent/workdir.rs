//! Per-attempt directories and the artifact hook.
//!
//! Layout: `<work_dir>/<run_id>/<task_id>/<attempt>/` holding `out/`
//! (`TRAINYARD_OUTPUT_DIR`), `in/` (`TRAINYARD_INPUT_DIR`) and
//! `metrics.json` (`TRAINYARD_METRICS_FILE`). A successful attempt's folder
//! goes once its outputs are in the artifact store; a failed one is kept
//! for `--keep-failed-work-dirs` to debug from (see `cleanup`).
//!
//! Artifacts: an [`ArtifactHook`] fetches inputs before the task starts and
//! uploads outputs after it exits. The object_store implementation is
//! [`super::StoreArtifacts`]; it is used whenever an artifact store is
//! configured (by the scheduler at registration, or the worker's own
//! `--artifacts`). Only when none is configured at all is [`LocalInputs`]
//! the **same-host fallback**: each upstream task's newest `out/` under this
//! worker's `work_dir` is symlinked as `in/<upstream>`, and nothing is
//! uploaded. It only works when every worker shares one `work_dir` on one
//! machine.
//!
//! Either way an upstream that left nothing (or whose output is not found)
//! gets an empty `in/<upstream>/` and a note in the task log, never a
//! failure: a task that reads nothing from an upstream must still run.

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use trainyard_artifacts::ArtifactRecord;
use trainyard_core::dag::code::CodeSnapshot;

use super::AttemptError;

/// Where an upstream task's usable output lives, as the scheduler said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamOutput {
    pub task_id: String,
    /// The upstream's successful attempt.
    pub attempt: u32,
    /// Key prefix in the artifact store (`runs/<run>/<task>/<attempt>/out`).
    pub prefix: String,
}

/// What a transfer moved, for lineage, and notes for the task log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Transfer {
    pub records: Vec<ArtifactRecord>,
    /// Sentences for the task log (e.g. an upstream with no output).
    pub notes: Vec<String>,
}

/// Where one attempt lives on disk, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptPaths {
    pub run_id: String,
    pub dag_id: String,
    pub task_id: String,
    pub attempt: u32,
    /// Direct upstream task ids (their outputs are this task's inputs).
    pub upstream: Vec<String>,
    /// Which attempt of each upstream to read, from the assignment; an
    /// upstream missing here gets an empty input folder.
    pub upstream_outputs: Vec<UpstreamOutput>,
    /// The worker's `work_dir` (root of every attempt directory).
    pub work_dir: PathBuf,
    /// `<work_dir>/<run_id>/<task_id>/<attempt>`.
    pub dir: PathBuf,
    pub out_dir: PathBuf,
    pub in_dir: PathBuf,
    pub metrics_file: PathBuf,
}

/// A name that is safe as one path component (ids come from the network).
pub fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.len() <= 255
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

impl AttemptPaths {
    /// The paths of an attempt; `None` when an id cannot name a directory.
    pub fn new(
        work_dir: &Path,
        run_id: &str,
        dag_id: &str,
        task_id: &str,
        attempt: u32,
        upstream: Vec<String>,
    ) -> Result<Self, AttemptError> {
        for (what, v) in [("run id", run_id), ("task id", task_id)] {
            if !safe_component(v) {
                return Err(AttemptError::BadAssignment(format!(
                    "{what} {v:?} cannot name a directory"
                )));
            }
        }
        let dir = work_dir
            .join(run_id)
            .join(task_id)
            .join(attempt.to_string());
        Ok(Self {
            run_id: run_id.to_owned(),
            dag_id: dag_id.to_owned(),
            task_id: task_id.to_owned(),
            attempt,
            upstream,
            upstream_outputs: Vec::new(),
            work_dir: work_dir.to_path_buf(),
            out_dir: dir.join("out"),
            in_dir: dir.join("in"),
            metrics_file: dir.join("metrics.json"),
            dir,
        })
    }

    /// Creates a clean attempt directory (a leftover from a worker that died
    /// mid-attempt is removed first) with empty `out/` and `in/`.
    pub async fn prepare(&self) -> std::io::Result<()> {
        match tokio::fs::remove_dir_all(&self.dir).await {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        create_dir_racing_removal(&self.out_dir).await?;
        tokio::fs::create_dir_all(&self.in_dir).await?;
        Ok(())
    }
}

/// `create_dir_all`, tried again when a parent vanished half-way: another
/// attempt of the same run that just ended removes the run's and task's
/// folders once they are empty (`cleanup`), and ours may be empty for an
/// instant between creating a parent and its child. Once `dir` exists its
/// parents are not empty, so nobody removes them any more.
async fn create_dir_racing_removal(dir: &Path) -> std::io::Result<()> {
    const TRIES: usize = 5;
    let mut tries = 1;
    loop {
        match tokio::fs::create_dir_all(dir).await {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && tries < TRIES => tries += 1,
            other => return other,
        }
    }
}

/// Moves artifacts between the object store and an attempt's directories.
/// Errors become the attempt's error and a line of its log.
pub trait ArtifactHook: Send + Sync + fmt::Debug {
    /// Before the task starts: fill `in_dir` with the upstream outputs
    /// (`in/<upstream>/`, empty when the upstream left nothing).
    fn fetch_inputs<'a>(
        &'a self,
        attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>>;
    /// After the task exited (successfully or not): store `out_dir`.
    fn upload_outputs<'a>(
        &'a self,
        attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>>;
    /// Before the task starts: build the DAG version's code tree in `tree`
    /// (see `code.rs`) and return the folder to run in; `None` when this
    /// worker has no artifact store to fetch it from.
    fn fetch_code<'a>(
        &'a self,
        work_dir: &'a Path,
        code: &'a CodeSnapshot,
        tree: &'a Path,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, AttemptError>>;
    /// Whether an uploaded `out_dir` is kept elsewhere, so a successful
    /// attempt's folder can go once the upload succeeded (see `cleanup`).
    /// False for the same-host fallback, whose downstream tasks read it.
    fn stores_outputs(&self) -> bool {
        false
    }
}

/// Creates `in/<upstream>/` empty and says why in the task log.
pub(super) async fn empty_input(
    attempt: &AttemptPaths,
    upstream: &str,
    why: &str,
) -> Result<String, AttemptError> {
    let dir = attempt.in_dir.join(upstream);
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(AttemptError::workdir(&dir))?;
    // Normal (an upstream that writes no files, e.g. a gate that only
    // records metrics), so it is a note in the task log, not a warning.
    tracing::debug!(upstream, reason = why, "empty input folder");
    Ok(format!(
        "input folder of upstream task `{upstream}` is empty: {why}"
    ))
}

/// The same-host fallback: link upstream `out/` dirs into `in/`, upload nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalInputs;

impl ArtifactHook for LocalInputs {
    fn fetch_inputs<'a>(
        &'a self,
        attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(link_local_inputs(attempt))
    }

    fn upload_outputs<'a>(
        &'a self,
        _attempt: &'a AttemptPaths,
    ) -> BoxFuture<'a, Result<Transfer, AttemptError>> {
        Box::pin(async { Ok(Transfer::default()) })
    }

    fn fetch_code<'a>(
        &'a self,
        _work_dir: &'a Path,
        _code: &'a CodeSnapshot,
        _tree: &'a Path,
    ) -> BoxFuture<'a, Result<Option<PathBuf>, AttemptError>> {
        Box::pin(async { Ok(None) })
    }
}

/// The newest attempt directory of `task` in `run` that has an `out/`.
async fn latest_out(work_dir: &Path, run_id: &str, task: &str) -> Option<PathBuf> {
    let task_dir = work_dir.join(run_id).join(task);
    let mut entries = tokio::fs::read_dir(&task_dir).await.ok()?;
    let mut best: Option<(u32, PathBuf)> = None;
    while let Ok(Some(entry)) = entries.next_entry().await {
        let Some(n) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let out = entry.path().join("out");
        if best.as_ref().is_none_or(|(b, _)| n > *b) && tokio::fs::metadata(&out).await.is_ok() {
            best = Some((n, out));
        }
    }
    best.map(|(_, p)| p)
}

/// Links each upstream's newest `out/` as `in/<upstream>`. An upstream with
/// no output here gets an empty folder and a note: on a multi-host setup
/// without an artifact store its output is on another machine.
async fn link_local_inputs(attempt: &AttemptPaths) -> Result<Transfer, AttemptError> {
    let mut done = Transfer::default();
    for up in &attempt.upstream {
        if !safe_component(up) {
            return Err(AttemptError::BadAssignment(format!(
                "upstream task id {up:?} cannot name a directory"
            )));
        }
        let Some(out) = latest_out(&attempt.work_dir, &attempt.run_id, up).await else {
            let why = format!(
                "no output under {} (without an artifact store, inputs are only found \
                 when the upstream ran on a worker sharing this work dir)",
                attempt.work_dir.display()
            );
            done.notes.push(empty_input(attempt, up, &why).await?);
            continue;
        };
        let out = tokio::fs::canonicalize(&out).await.unwrap_or(out);
        let link = attempt.in_dir.join(up);
        tokio::fs::symlink(&out, &link)
            .await
            .map_err(AttemptError::workdir(&link))?;
    }
    Ok(done)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn ids_that_could_leave_the_work_dir_are_refused() {
        let root = Path::new("/w");
        assert!(AttemptPaths::new(root, "../etc", "d", "t", 1, vec![]).is_err());
        assert!(AttemptPaths::new(root, "r", "d", "a/b", 1, vec![]).is_err());
        assert!(AttemptPaths::new(root, "r", "d", "..", 1, vec![]).is_err());
        let p = AttemptPaths::new(root, "r1", "d", "train", 2, vec![]).unwrap();
        assert_eq!(p.out_dir, Path::new("/w/r1/train/2/out"));
        assert_eq!(p.metrics_file, Path::new("/w/r1/train/2/metrics.json"));
    }

    #[tokio::test]
    async fn local_inputs_link_the_newest_upstream_attempt() {
        let tmp = tempfile::tempdir().unwrap();
        for attempt in [1, 2] {
            let up = AttemptPaths::new(tmp.path(), "r", "d", "ingest", attempt, vec![]).unwrap();
            up.prepare().await.unwrap();
            std::fs::write(up.out_dir.join("data.csv"), format!("attempt {attempt}")).unwrap();
        }
        let me =
            AttemptPaths::new(tmp.path(), "r", "d", "train", 1, vec!["ingest".into()]).unwrap();
        me.prepare().await.unwrap();
        LocalInputs.fetch_inputs(&me).await.unwrap();
        let seen = std::fs::read_to_string(me.in_dir.join("ingest").join("data.csv")).unwrap();
        assert_eq!(seen, "attempt 2");
    }

    #[tokio::test]
    async fn a_missing_upstream_output_is_an_empty_folder_and_a_note_naming_it() {
        let tmp = tempfile::tempdir().unwrap();
        let me =
            AttemptPaths::new(tmp.path(), "r", "d", "train", 1, vec!["ingest".into()]).unwrap();
        me.prepare().await.unwrap();
        let done = LocalInputs.fetch_inputs(&me).await.unwrap();
        assert!(done.notes[0].contains("`ingest`"), "{:?}", done.notes);
        let dir = me.in_dir.join("ingest");
        assert!(dir.is_dir());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn prepare_clears_a_leftover_attempt_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let p = AttemptPaths::new(tmp.path(), "r", "d", "t", 1, vec![]).unwrap();
        p.prepare().await.unwrap();
        std::fs::write(p.out_dir.join("stale"), "x").unwrap();
        p.prepare().await.unwrap();
        assert!(!p.out_dir.join("stale").exists());
    }
}
