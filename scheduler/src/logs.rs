//! Task logs on the scheduler side: every line a worker streams is appended to
//! the attempt's log file (so logs survive the worker) and fanned out to live
//! followers (CLI `logs --follow`, the UI's log tail).
//!
//! Layout: `<root>/<run_id>/<task_id>/<attempt>.log`, one line per output line,
//! prefixed by nothing: the file is exactly what the task printed, stdout and
//! stderr interleaved in arrival order. Secret values are masked by the caller
//! before lines reach this module.
//!
//! Archive: with an artifact store ([`LogStore::with_archive`]) the whole file
//! of an attempt is uploaded when the attempt ends
//! (`runs/<run>/<task>/<attempt>/log.txt`) and the local file is removed;
//! [`LogStore::read`] serves it from there when the local file is gone, so
//! logs outlive both the worker and the scheduler's disk, and the disk holds
//! only running attempts' logs (plus any whose upload failed, until the
//! retention task prunes their run).
//!
//! Followers: live streams of a task's new lines are bounded per client and
//! in total, and hold a channel only while someone reads it (`follow.rs`).

mod follow;

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Serialize;
use tokio::io::AsyncWriteExt;
use trainyard_artifacts::{ArtifactStore, AttemptKey};
use trainyard_core::error::{Classify, ErrorKind};
use trainyard_core::ids::RunId;

/// Which stream a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of task output, as followers receive it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LogLine {
    pub run_id: RunId,
    pub task_id: String,
    pub attempt: i32,
    pub stream: LogStream,
    pub line: String,
}

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("task id {0:?} cannot name a log file")]
    BadTaskId(String),
    #[error("no log for run {run} task {task} attempt {attempt}")]
    NotFound {
        run: RunId,
        task: String,
        attempt: i32,
    },
    #[error("log storage: {0}")]
    Io(#[from] std::io::Error),
    /// The artifact store holding archived logs failed.
    #[error("log archive: {0}")]
    Archive(#[from] trainyard_artifacts::Error),
}

pub type Result<T, E = LogError> = std::result::Result<T, E>;

pub use follow::{FOLLOW_BUFFER, FollowError, FollowLimits, Follower, Followers};

impl Classify for LogError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BadTaskId(_) => ErrorKind::Invalid,
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::Io(_) => ErrorKind::Internal,
            Self::Archive(e) => match e {
                trainyard_artifacts::Error::NotFound { .. } => ErrorKind::NotFound,
                // The archive is a remote object store: its outages pass.
                trainyard_artifacts::Error::Store { .. } => ErrorKind::Unavailable,
                _ => ErrorKind::Internal,
            },
        }
    }

    /// I/O and archive errors name local paths and bucket URLs.
    fn public_message(&self) -> String {
        match self {
            Self::Io(_) | Self::Archive(_) if self.kind() != ErrorKind::NotFound => {
                "the log storage failed (the scheduler log has the detail)".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// Appends and serves attempt logs. Cheap to clone.
#[derive(Clone)]
pub struct LogStore {
    root: PathBuf,
    /// Live followers per (run, task), bounded; a channel exists only while
    /// someone follows.
    followers: Followers,
    /// Where finished attempts' logs are archived; `None`: local files only.
    archive: Option<ArtifactStore>,
}

impl std::fmt::Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("root", &self.root)
            .field("archive", &self.archive.as_ref().map(|a| a.base_uri()))
            .field("follow_limits", &self.followers.limits())
            .finish()
    }
}

impl LogStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self {
            root: root.into(),
            followers: Followers::default(),
            archive: None,
        }
    }

    /// Bounds live followers (default: [`FollowLimits::default`]).
    pub fn with_follow_limits(mut self, limits: FollowLimits) -> Self {
        self.followers = Followers::new(limits);
        self
    }

    pub fn follow_limits(&self) -> FollowLimits {
        self.followers.limits()
    }

    /// Archives finished attempts' logs in `store` and reads them back from
    /// there when the local file is missing.
    pub fn with_archive(mut self, store: ArtifactStore) -> Self {
        self.archive = Some(store);
        self
    }

    pub fn has_archive(&self) -> bool {
        self.archive.is_some()
    }

    /// Uploads the attempt's whole log (an empty one if it printed nothing)
    /// and returns its URI. Lines are already masked when appended.
    pub async fn archive(&self, run: RunId, task: &str, attempt: i32) -> Result<String> {
        let Some(store) = &self.archive else {
            return Err(LogError::Io(std::io::Error::other(
                "no artifact store to archive logs in",
            )));
        };
        let path = self.path(run, task, attempt)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        // Creates the file when the task printed nothing, keeps it otherwise.
        tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        let record = store
            .put_log(&archive_key(run, task, attempt)?, &path)
            .await?;
        // The archive is the copy from now on (`read` falls back to it), so
        // the scheduler's disk holds only attempts still running. Lines of
        // a finished attempt are refused by the worker session, so nothing
        // recreates the file.
        match tokio::fs::remove_file(&path).await {
            Ok(()) => {
                // The task's and run's folders, once empty; a concurrent
                // append for another attempt keeps them (not empty).
                for dir in path.ancestors().skip(1).take(2) {
                    if tokio::fs::remove_dir(dir).await.is_err() {
                        break;
                    }
                }
            }
            Err(e) => {
                tracing::warn!(%run, task, attempt, error = %e, "could not remove the archived log's local copy")
            }
        }
        Ok(record.uri)
    }

    /// Removes what is left locally of a run's logs (attempts whose archive
    /// failed or that never ended); the retention task calls it for runs
    /// it pruned. Missing is fine.
    pub async fn remove_run(&self, run: RunId) -> Result<()> {
        match tokio::fs::remove_dir_all(self.root.join(run.to_string())).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Run ids that have a local log folder (the retention task removes
    /// those whose run no longer exists, e.g. pruned by another replica).
    pub async fn local_runs(&self) -> Result<Vec<RunId>> {
        let mut out = Vec::new();
        let mut entries = match tokio::fs::read_dir(&self.root).await {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(e.into()),
        };
        while let Some(entry) = entries.next_entry().await? {
            if let Some(run) = entry.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(run);
            }
        }
        Ok(out)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where an attempt's log lives (also recorded on the attempt row).
    pub fn path(&self, run: RunId, task: &str, attempt: i32) -> Result<PathBuf> {
        // Task ids are validated by the DAG parser, but the path is built from
        // what a worker sent: refuse anything that could leave the log folder.
        let safe = !task.is_empty()
            && task
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !safe {
            return Err(LogError::BadTaskId(task.to_owned()));
        }
        Ok(self
            .root
            .join(run.to_string())
            .join(task)
            .join(format!("{attempt}.log")))
    }

    /// Appends lines to the attempt's log and hands them to live followers.
    pub async fn append(
        &self,
        run: RunId,
        task: &str,
        attempt: i32,
        lines: &[(LogStream, String)],
    ) -> Result<()> {
        if lines.is_empty() {
            return Ok(());
        }
        let path = self.path(run, task, attempt)?;
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir).await?;
        }
        let mut buf = String::with_capacity(lines.iter().map(|(_, l)| l.len() + 1).sum());
        for (_, line) in lines {
            buf.push_str(line);
            buf.push('\n');
        }
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .await?;
        file.write_all(buf.as_bytes()).await?;
        file.flush().await?;
        self.followers.publish(run, task, attempt, lines);
        Ok(())
    }

    /// The whole log of one attempt.
    pub async fn read(&self, run: RunId, task: &str, attempt: i32) -> Result<String> {
        let path = self.path(run, task, attempt)?;
        let not_found = || LogError::NotFound {
            run,
            task: task.to_owned(),
            attempt,
        };
        match tokio::fs::read_to_string(&path).await {
            Ok(text) => Ok(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let Some(store) = &self.archive else {
                    return Err(not_found());
                };
                match store.read_log(&archive_key(run, task, attempt)?).await {
                    Ok(text) => Ok(text),
                    Err(e) if e.is_not_found() => Err(not_found()),
                    Err(e) => Err(e.into()),
                }
            }
            Err(e) => Err(e.into()),
        }
    }

    /// New lines of any attempt of (run, task) from now on, for `client`
    /// (see [`crate::http::client_key`]). Call it only for a task that exists
    /// and has not finished: the channel lives until the follower is dropped.
    pub fn follow(&self, run: RunId, task: &str, client: IpAddr) -> Result<Follower, FollowError> {
        self.followers.follow(run, task, client)
    }

    /// (channels, open streams) held by live followers now.
    pub fn follow_usage(&self) -> (usize, usize) {
        self.followers.usage()
    }
}

/// The archive key of an attempt's log; attempts start at 1.
fn archive_key(run: RunId, task: &str, attempt: i32) -> Result<AttemptKey> {
    let attempt = u32::try_from(attempt).map_err(|_| LogError::NotFound {
        run,
        task: task.to_owned(),
        attempt,
    })?;
    AttemptKey::new(run.to_string(), task, attempt)
        .map_err(|_| LogError::BadTaskId(task.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_archived_log_leaves_no_local_copy_and_is_served_from_the_archive() {
        let dir = tempfile::tempdir().unwrap();
        let archive = tempfile::tempdir().unwrap();
        let store = ArtifactStore::from_url(&archive.path().display().to_string()).unwrap();
        let logs = LogStore::new(dir.path().join("logs")).with_archive(store);
        let run = RunId::new();
        logs.append(run, "train", 1, &[(LogStream::Stdout, "epoch 1".into())])
            .await
            .unwrap();
        let uri = logs.archive(run, "train", 1).await.unwrap();
        assert!(
            uri.ends_with(&format!("runs/{run}/train/1/log.txt")),
            "{uri}"
        );
        // A silent attempt still gets an (empty) archived log.
        logs.archive(run, "quiet", 1).await.unwrap();

        assert!(
            !dir.path().join("logs").join(run.to_string()).exists(),
            "the local copies went once archived"
        );
        assert_eq!(logs.read(run, "train", 1).await.unwrap(), "epoch 1\n");
        assert_eq!(logs.read(run, "quiet", 1).await.unwrap(), "");
        assert!(matches!(
            logs.read(run, "train", 2).await,
            Err(LogError::NotFound { .. })
        ));
    }

    #[tokio::test]
    async fn appended_lines_are_read_back_and_reach_followers() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path());
        let run = RunId::new();
        let mut follower = logs
            .follow(run, "train", std::net::Ipv4Addr::LOCALHOST.into())
            .unwrap();
        logs.append(
            run,
            "train",
            1,
            &[
                (LogStream::Stdout, "epoch 1".into()),
                (LogStream::Stderr, "warn".into()),
            ],
        )
        .await
        .unwrap();
        assert_eq!(logs.read(run, "train", 1).await.unwrap(), "epoch 1\nwarn\n");
        assert_eq!(follower.recv().await.unwrap().line, "epoch 1");
        assert_eq!(follower.recv().await.unwrap().stream, LogStream::Stderr);
    }

    #[tokio::test]
    async fn task_ids_that_could_escape_the_log_folder_are_refused() {
        let logs = LogStore::new("/tmp/never");
        let err = logs
            .append(
                RunId::new(),
                "../../etc",
                1,
                &[(LogStream::Stdout, "x".into())],
            )
            .await;
        assert!(matches!(err, Err(LogError::BadTaskId(_))));
    }

    #[tokio::test]
    async fn a_missing_log_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let logs = LogStore::new(dir.path());
        let err = logs.read(RunId::new(), "t", 1).await;
        assert!(matches!(err, Err(LogError::NotFound { .. })));
    }
}
