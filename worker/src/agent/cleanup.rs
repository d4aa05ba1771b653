//! Bounded disk on a worker: which attempt folders are removed, and when.
//!
//! - A **successful** attempt's folder is removed by its job as soon as its
//!   outputs are in the artifact store (the store keeps them; downstream
//!   tasks download them from there). See [`remove_attempt_dir`].
//! - A **failed** attempt's folder (failed, timed out, cancelled, killed, or
//!   one whose upload failed) is kept for people to debug from: its job
//!   writes an [`ENDED_MARKER`] into it, and [`sweep`] removes it once the
//!   marker is older than `--keep-failed-work-dirs` (default 24 h). The sweep
//!   runs when the agent starts and then periodically.
//! - A folder with no marker is a leftover of a worker that died mid-attempt;
//!   the sweep treats it like a failed one (age from the folder's own mtime),
//!   unless the attempt is running now.
//! - Without an artifact store (the same-host fallback, [`super::LocalInputs`])
//!   downstream tasks read upstream `out/` folders in place, at any later
//!   time (a retry hours later included), so a successful attempt's folder
//!   is never removed there. Neither `trainyard worker` nor `standalone` runs
//!   that way: the scheduler always announces a store (default
//!   `<data dir>/artifacts`).
//!
//! What the sweep may touch is narrow on purpose: only
//! `<work_dir>/<run id>/<task id>/<attempt number>/` where the run id is a
//! UUID, the task id a safe path component and the attempt a number, each a
//! real directory (symlinks are never followed or removed through; removal
//! itself does not follow links inside). So the `.identity` folder, a DAG
//! snapshot cache or anything else living in the work dir is never touched,
//! and nothing outside it is. Emptied task and run folders are removed too.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tracing::{debug, info, warn};

use super::workdir::safe_component;

/// Written into a kept attempt folder when its attempt ended without
/// success; its mtime is when the keep period starts.
pub const ENDED_MARKER: &str = ".trainyard-ended";

/// How long failed attempts' folders are kept by default (`--keep-failed-work-dirs`).
pub const DEFAULT_KEEP_FAILED: Duration = Duration::from_secs(24 * 3600);

/// How often the sweep runs for a given keep period: a quarter of it,
/// between 1 s and 10 min, so a folder outlives its period by at most that.
pub fn sweep_interval(keep: Duration) -> Duration {
    (keep / 4).clamp(Duration::from_secs(1), Duration::from_secs(600))
}

/// Removes a successful attempt's folder (its outputs are in the store).
/// A failure is logged, never fatal: the sweep does not take successful
/// folders, so a leftover stays until someone removes it.
pub(super) async fn remove_attempt_dir(dir: &Path) {
    match tokio::fs::remove_dir_all(dir).await {
        Ok(()) => {
            debug!(dir = %dir.display(), "removed a successful attempt's folder");
            remove_empty_parents(dir, 2).await;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "could not remove a successful attempt's folder")
        }
    }
}

/// Marks a kept folder as ended now (see [`ENDED_MARKER`]).
pub(super) async fn mark_ended(dir: &Path, outcome: &str) {
    let marker = dir.join(ENDED_MARKER);
    if let Err(e) = tokio::fs::write(&marker, format!("{outcome}\n")).await {
        // Without it the sweep falls back to the folder's mtime.
        debug!(marker = %marker.display(), error = %e, "could not mark the attempt folder");
    }
}

/// Removes up to `levels` parents of `dir` that are empty now (a task's and
/// a run's folder after their last attempt folder went). A parent that is
/// not empty, or is being filled again concurrently, stays.
async fn remove_empty_parents(dir: &Path, levels: usize) {
    let mut at = dir.parent();
    for _ in 0..levels {
        let Some(p) = at else { return };
        if tokio::fs::remove_dir(p).await.is_err() {
            return;
        }
        at = p.parent();
    }
}

/// One attempt folder the sweep looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SweepOutcome {
    /// Folders removed.
    pub removed: Vec<PathBuf>,
    /// Folders kept because they are younger than the keep period.
    pub kept: usize,
}

/// Removes failed (or abandoned) attempt folders older than `keep` at `now`.
///
/// `running` lists `(run id, task id, attempt)` of attempts running now;
/// their folders are never touched. `started` is when the caller took that
/// list: a folder without a marker that was modified after it may belong to
/// an attempt that started since, and is left for the next sweep.
/// Blocking; call it from `spawn_blocking`.
pub fn sweep(
    work_dir: &Path,
    keep: Duration,
    now: SystemTime,
    started: SystemTime,
    running: &HashSet<(String, String, u32)>,
) -> SweepOutcome {
    let mut out = SweepOutcome {
        removed: Vec::new(),
        kept: 0,
    };
    for (run, run_dir) in real_dirs(work_dir) {
        if run.parse::<trainyard_core::ids::RunId>().is_err() {
            continue;
        }
        for (task, task_dir) in real_dirs(&run_dir) {
            if !safe_component(&task) {
                continue;
            }
            for (n, dir) in real_dirs(&task_dir) {
                let Ok(attempt) = n.parse::<u32>() else {
                    continue;
                };
                if running.contains(&(run.clone(), task.clone(), attempt)) {
                    continue;
                }
                match expired(&dir, keep, now, started) {
                    Some(true) => match std::fs::remove_dir_all(&dir) {
                        Ok(()) => out.removed.push(dir),
                        Err(e) => {
                            warn!(dir = %dir.display(), error = %e, "could not remove an old attempt folder")
                        }
                    },
                    Some(false) => out.kept += 1,
                    None => {}
                }
            }
            // Only succeeds when empty.
            let _ = std::fs::remove_dir(&task_dir);
        }
        let _ = std::fs::remove_dir(&run_dir);
    }
    if !out.removed.is_empty() {
        info!(removed = out.removed.len(), kept = out.kept, keep = ?keep, "removed failed attempts' folders past their keep period");
    }
    out
}

/// Whether an attempt folder's keep period is over: `Some(true)` remove,
/// `Some(false)` keep, `None` not a kept folder (a successful attempt under
/// the same-host fallback, or unreadable).
fn expired(dir: &Path, keep: Duration, now: SystemTime, started: SystemTime) -> Option<bool> {
    let since = match std::fs::symlink_metadata(dir.join(ENDED_MARKER)) {
        Ok(meta) if meta.is_file() => {
            let outcome = std::fs::read_to_string(dir.join(ENDED_MARKER)).unwrap_or_default();
            if outcome.trim() == "succeeded" {
                // Kept on purpose: downstream tasks read it in place.
                return None;
            }
            meta.modified().ok()?
        }
        _ => {
            let modified = std::fs::symlink_metadata(dir).ok()?.modified().ok()?;
            if modified >= started {
                // Possibly an attempt that started after `running` was taken.
                return Some(false);
            }
            modified
        }
    };
    Some(now.duration_since(since).unwrap_or_default() >= keep)
}

/// The real (not symlinked) directories directly under `dir`, by name.
fn real_dirs(dir: &Path) -> Vec<(String, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()))
        .filter_map(|e| Some((e.file_name().into_string().ok()?, e.path())))
        .filter(|(name, _)| !name.starts_with('.'))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const RUN: &str = "0190a3c4-5b6d-7e8f-9a0b-1c2d3e4f5a6b";

    fn attempt_dir(root: &Path, task: &str, n: u32) -> PathBuf {
        let d = root.join(RUN).join(task).join(n.to_string());
        std::fs::create_dir_all(d.join("out")).unwrap();
        d
    }

    fn later(d: Duration) -> SystemTime {
        SystemTime::now() + d
    }

    #[tokio::test]
    async fn a_failed_folder_is_kept_for_the_period_then_swept() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = attempt_dir(tmp.path(), "train", 1);
        mark_ended(&dir, "failed").await;
        let keep = Duration::from_secs(3600);
        let started = SystemTime::now() + Duration::from_secs(1);
        let none = HashSet::new();

        let early = sweep(
            tmp.path(),
            keep,
            later(Duration::from_secs(60)),
            started,
            &none,
        );
        assert_eq!(early.removed, Vec::<PathBuf>::new());
        assert!(dir.is_dir());

        let past = sweep(
            tmp.path(),
            keep,
            later(Duration::from_secs(3700)),
            started,
            &none,
        );
        assert_eq!(past.removed, vec![dir.clone()]);
        assert!(!dir.exists());
        // The emptied task and run folders went with it.
        assert!(!tmp.path().join(RUN).exists());
    }

    #[tokio::test]
    async fn running_attempts_identity_and_foreign_folders_are_never_touched() {
        let tmp = tempfile::tempdir().unwrap();
        let running_dir = attempt_dir(tmp.path(), "train", 2);
        let leftover = attempt_dir(tmp.path(), "train", 1);
        let identity = tmp.path().join(".identity");
        std::fs::create_dir_all(identity.join("w.groups")).unwrap();
        let not_a_run = tmp.path().join("snapshots").join("x").join("1");
        std::fs::create_dir_all(&not_a_run).unwrap();
        // A symlink where a task folder would be, pointing outside.
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("1");
        std::fs::create_dir_all(&victim).unwrap();
        std::os::unix::fs::symlink(outside.path(), tmp.path().join(RUN).join("linked")).unwrap();

        let running: HashSet<_> = [(RUN.to_owned(), "train".to_owned(), 2)].into();
        let started = SystemTime::now() + Duration::from_secs(1);
        let done = sweep(
            tmp.path(),
            Duration::ZERO,
            later(Duration::from_secs(10)),
            started,
            &running,
        );
        assert_eq!(done.removed, vec![leftover]);
        assert!(running_dir.is_dir());
        assert!(identity.join("w.groups").is_dir());
        assert!(not_a_run.is_dir());
        assert!(victim.is_dir());
    }

    #[tokio::test]
    async fn an_unmarked_folder_newer_than_the_running_list_waits() {
        let tmp = tempfile::tempdir().unwrap();
        let started = SystemTime::now() - Duration::from_secs(5);
        let dir = attempt_dir(tmp.path(), "t", 1);
        let done = sweep(
            tmp.path(),
            Duration::ZERO,
            later(Duration::from_secs(10)),
            started,
            &HashSet::new(),
        );
        assert!(done.removed.is_empty());
        assert!(dir.is_dir());
    }

    #[tokio::test]
    async fn a_successful_folder_is_removed_with_its_empty_parents() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = attempt_dir(tmp.path(), "t", 1);
        let sibling = attempt_dir(tmp.path(), "u", 1);
        remove_attempt_dir(&dir).await;
        assert!(!dir.exists());
        assert!(!tmp.path().join(RUN).join("t").exists());
        assert!(sibling.is_dir(), "a run folder still in use stays");
    }

    #[test]
    fn the_sweep_runs_a_quarter_of_the_period_within_bounds() {
        assert_eq!(
            sweep_interval(DEFAULT_KEEP_FAILED),
            Duration::from_secs(600)
        );
        assert_eq!(sweep_interval(Duration::ZERO), Duration::from_secs(1));
        assert_eq!(
            sweep_interval(Duration::from_secs(60)),
            Duration::from_secs(15)
        );
    }
}
