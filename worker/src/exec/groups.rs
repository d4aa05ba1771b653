//! The process groups of running attempts, kept where a worker that dies
//! cannot take them along: a record per group on disk, and the
//! [`super::watchdog`] process.
//!
//! Why records: a task's process group can outlive its worker. The
//! watchdog kills it when the worker dies, but the watchdog may have been
//! killed with the worker (`pkill -9 trainyard`, a `kill -9` of
//! everything); and the parent-death signal, where it is used, reaches the
//! main process only, not what it started (`sh -c 'python train.py'` →
//! python). So each running attempt's group is written to
//! `<work dir>/.identity/<name>.groups/<pgid>.json`, and a worker that
//! starts under that name kills whatever its previous instance left there
//! before it registers ([`GroupBook::kill_leftovers`]). The identity lock
//! makes that folder one live worker's alone.
//!
//! Why verification: a record can outlive its group, and pids are reused.
//! A group is only killed while it is provably the recorded one
//! ([`GroupRecord::members`]): its leader is alive with the recorded start
//! time, or one of its processes carries the attempt's tag
//! ([`TAG_VAR`], set in every task's environment and inherited by what it
//! starts). A group number cannot be reused while any process is still in
//! the group, so a member with the tag proves the group is ours.
//!
//! Why a record before the process: the worker learns a task's pid only
//! once the process runs, and a worker killed between the spawn and the
//! record would leave a task nobody knows about, holding its GPUs while
//! the restarted worker is given them again (seen in `tests/e2e_chaos.rs`:
//! a task ran on 200 ms past its worker's `kill -9`, beside the next task
//! on its GPU). So a group is announced by its tag before it is spawned (a
//! *pending* record, pgid 0, `pending-<tag>.json`, and the same line to
//! the watchdog), and replaced by the real record once its pid is known.
//! A pending record names whatever processes carry its tag, with their
//! groups: that costs a read of every process's environment, but only
//! when something is killed.
//!
//! Records are written atomically (temp file + rename) but not fsynced:
//! they guard processes, and no process survives the machine; a record
//! from an earlier boot is dropped unread.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::procfs::{self, ProcStat};
use super::watchdog::{Client, WatchdogCommand};

/// Set in every task's environment to a value unique to its attempt, so
/// its processes can be recognised after the worker that started them is
/// gone (even when the group's leader has exited).
pub const TAG_VAR: &str = "TRAINYARD_PROCESS_TAG";

/// One running attempt's process group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupRecord {
    /// Process group id (= the pid of the task's main process); 0 while
    /// pending (announced before the spawn, see the module docs).
    pub pgid: i32,
    /// The leader's start time (`/proc/<pid>/stat`, ticks since boot).
    pub leader_start_ticks: u64,
    /// The boot the record belongs to.
    pub boot_id: String,
    /// The value of [`TAG_VAR`] in the task's environment.
    pub tag: String,
    /// `run/task/attempt`, for people reading logs.
    pub attempt: String,
}

impl GroupRecord {
    /// Announced before the spawn; its pgid is not known yet.
    pub fn is_pending(&self) -> bool {
        self.pgid == 0
    }

    /// The group's live processes, if it is provably this record's
    /// group; `None` when it is gone or cannot be proven ours.
    pub fn members(&self, procs: &[ProcStat]) -> Option<Vec<i32>> {
        self.groups(procs).map(|(_, members)| members)
    }

    /// The process groups to kill and their live processes: the recorded
    /// group if it is provably ours; for a pending record, the groups of
    /// the processes that carry its tag.
    fn groups(&self, procs: &[ProcStat]) -> Option<(Vec<i32>, Vec<i32>)> {
        let tag = format!("{TAG_VAR}={}", self.tag);
        if self.is_pending() {
            let mut pgids: Vec<i32> = procs
                .iter()
                .filter(|p| !p.is_dead() && p.pgrp > 1 && procfs::environ_has(p.pid, &tag))
                .map(|p| p.pgrp)
                .collect();
            pgids.sort_unstable();
            pgids.dedup();
            let members: Vec<i32> = procs
                .iter()
                .filter(|p| !p.is_dead() && pgids.contains(&p.pgrp))
                .map(|p| p.pid)
                .collect();
            return (!pgids.is_empty()).then_some((pgids, members));
        }
        let members: Vec<&ProcStat> = procs
            .iter()
            .filter(|p| p.pgrp == self.pgid && !p.is_dead())
            .collect();
        if members.is_empty() {
            return None;
        }
        let ours = members.iter().any(|p| {
            (p.pid == self.pgid && p.start_ticks == self.leader_start_ticks)
                || procfs::environ_has(p.pid, &tag)
        });
        ours.then(|| (vec![self.pgid], members.iter().map(|p| p.pid).collect()))
    }
}

/// What became of a recorded group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GroupFate {
    /// No process of it was left.
    Gone,
    /// Processes use the group id, but none is provably ours: left alone.
    NotOurs,
    /// SIGKILL sent to the group; these were its processes.
    Killed(Vec<i32>),
}

/// SIGKILLs `record`'s group if it is still alive and provably ours.
pub fn kill_if_ours(record: &GroupRecord, procs: &[ProcStat]) -> GroupFate {
    let in_use =
        !record.is_pending() && procs.iter().any(|p| p.pgrp == record.pgid && !p.is_dead());
    match record.groups(procs) {
        Some((pgids, pids)) => {
            for pgid in pgids {
                match killpg(Pid::from_raw(pgid), Signal::SIGKILL) {
                    Ok(()) | Err(nix::errno::Errno::ESRCH) => {}
                    Err(error) => {
                        tracing::warn!(pgid, %error, "cannot signal a leftover task process group");
                    }
                }
            }
            GroupFate::Killed(pids)
        }
        None if in_use => GroupFate::NotOurs,
        None => GroupFate::Gone,
    }
}

/// A leftover group found at start-up and what was done with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub record: GroupRecord,
    pub fate: GroupFate,
    /// Processes still alive when the worker stopped waiting for them
    /// (stuck in the kernel, e.g. a GPU driver call); normally empty.
    pub survivors: Vec<i32>,
}

/// The folder of group records of one worker identity.
#[derive(Debug, Clone)]
pub struct GroupBook {
    dir: PathBuf,
}

impl GroupBook {
    /// Opens (creating) the record folder.
    pub fn open(dir: impl Into<PathBuf>) -> std::io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        Ok(Self { dir })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, pgid: i32) -> PathBuf {
        self.dir.join(format!("{pgid}.json"))
    }

    /// Where `record` is kept: by pgid, or by tag while pending (tags are
    /// hex digits and dashes).
    fn path_of(&self, record: &GroupRecord) -> PathBuf {
        if record.is_pending() {
            self.dir.join(format!("pending-{}.json", record.tag))
        } else {
            self.path(record.pgid)
        }
    }

    /// Writes `record` atomically (temp file + rename; see the module docs
    /// for why there is no fsync).
    pub fn write(&self, record: &GroupRecord) -> std::io::Result<()> {
        let path = self.path_of(record);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        std::fs::write(&tmp, body)?;
        std::fs::rename(&tmp, &path)
    }

    /// Removes the record of a group that ended.
    pub fn remove(&self, pgid: i32) {
        self.remove_path(&self.path(pgid));
    }

    /// Removes `record` (pending or not).
    pub fn remove_record(&self, record: &GroupRecord) {
        self.remove_path(&self.path_of(record));
    }

    fn remove_path(&self, path: &Path) {
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(error) => {
                tracing::warn!(path = %path.display(), %error, "cannot remove a process group record")
            }
        }
    }

    /// Every record in the folder; unreadable ones are removed (a worker
    /// killed between writing the temp file and renaming it leaves one).
    pub fn records(&self) -> Vec<GroupRecord> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for entry in entries.filter_map(|e| e.ok()) {
            let path = entry.path();
            let parsed = std::fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<GroupRecord>(&b).ok())
                .filter(|_| path.extension().is_some_and(|e| e == "json"));
            match parsed {
                Some(r) => out.push(r),
                None => {
                    tracing::warn!(path = %path.display(), "removing an unreadable process group record");
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        out
    }

    /// Kills every group a previous worker of this identity left running
    /// and waits (up to `wait`) until their processes are gone, so their
    /// GPUs are free before this worker registers. Records of groups that
    /// are gone are removed; a record whose processes outlived the wait is
    /// kept, so the next start tries again.
    pub fn kill_leftovers(&self, wait: Duration) -> Vec<Leftover> {
        let boot = procfs::boot_id();
        let records = self.records();
        if records.is_empty() {
            return Vec::new();
        }
        let procs = procfs::processes();
        let mut out: Vec<Leftover> = records
            .into_iter()
            .map(|record| {
                let fate = if boot.as_deref() != Some(record.boot_id.as_str()) {
                    GroupFate::Gone
                } else {
                    kill_if_ours(&record, &procs)
                };
                Leftover {
                    record,
                    fate,
                    survivors: Vec::new(),
                }
            })
            .collect();
        let deadline = Instant::now() + wait;
        loop {
            let procs = procfs::processes();
            let mut waiting = false;
            for l in &mut out {
                l.survivors = match &l.fate {
                    GroupFate::Killed(_) => l.record.members(&procs).unwrap_or_default(),
                    _ => Vec::new(),
                };
                waiting |= !l.survivors.is_empty();
            }
            if !waiting || Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        for l in &out {
            if l.survivors.is_empty() {
                self.remove_record(&l.record);
            }
        }
        out
    }
}

/// A tag no other attempt on this machine has: this process, a counter,
/// and the time (a restarted worker may get the same pid).
pub fn new_tag() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!("{:x}-{nanos:x}-{n:x}", std::process::id())
}

/// Keeps track of this worker's running task groups where they survive
/// it: the group records (when the worker has an identity folder) and
/// the watchdog process (when one is configured). Cheap to clone; one
/// per agent.
#[derive(Debug, Clone)]
pub struct Supervisor {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    book: Option<GroupBook>,
    /// `None` without a watchdog command, or when it could not start.
    watchdog: Option<Mutex<Client>>,
    boot_id: String,
}

impl Supervisor {
    /// Starts the watchdog (if `watchdog` is set) for groups recorded in
    /// `book` (if set). A watchdog that cannot start is logged; tasks then
    /// get the parent-death signal instead, which reaches their main
    /// process but not its children.
    pub fn new(book: Option<GroupBook>, watchdog: Option<WatchdogCommand>) -> Self {
        let watchdog = watchdog.and_then(|cmd| Client::start(cmd).map(Mutex::new));
        Self {
            inner: Arc::new(Inner {
                book,
                watchdog,
                boot_id: procfs::boot_id().unwrap_or_default(),
            }),
        }
    }

    /// Whether a watchdog process guards this worker's tasks (as far as
    /// is known: a dead one is noticed, and replaced, at the next write).
    pub fn has_watchdog(&self) -> bool {
        self.with_watchdog(|w| w.is_running()).unwrap_or(false)
    }

    /// The watchdog's pid, for logs and tests.
    pub fn watchdog_pid(&self) -> Option<u32> {
        self.with_watchdog(|w| w.pid()).flatten()
    }

    fn with_watchdog<T>(&self, f: impl FnOnce(&mut Client) -> T) -> Option<T> {
        let w = self.inner.watchdog.as_ref()?;
        let mut guard = match w.lock() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        Some(f(&mut guard))
    }

    /// A task is about to be spawned with `tag` in its environment:
    /// record it as pending and tell the watchdog, so a worker killed
    /// before [`Supervisor::started`] still leaves it findable.
    pub(super) fn starting(&self, tag: &str, attempt: &str) {
        if self.inner.book.is_none() && !self.has_watchdog() {
            return;
        }
        let record = GroupRecord {
            pgid: 0,
            leader_start_ticks: 0,
            boot_id: self.inner.boot_id.clone(),
            tag: tag.to_owned(),
            attempt: attempt.to_owned(),
        };
        if let Some(book) = &self.inner.book
            && let Err(error) = book.write(&record)
        {
            tracing::warn!(tag, %error, dir = %book.dir().display(), "cannot record a task about to start; a restart may not find it");
        }
        self.with_watchdog(|w| w.group(&record));
    }

    /// The spawn announced by [`Supervisor::starting`] failed: forget it.
    pub(super) fn not_started(&self, tag: &str) {
        self.with_watchdog(|w| w.forget(tag));
        if let Some(book) = &self.inner.book {
            book.remove_record(&self.pending(tag));
        }
    }

    fn pending(&self, tag: &str) -> GroupRecord {
        GroupRecord {
            pgid: 0,
            leader_start_ticks: 0,
            boot_id: self.inner.boot_id.clone(),
            tag: tag.to_owned(),
            attempt: String::new(),
        }
    }

    /// A task's group started: record it (replacing its pending record)
    /// and tell the watchdog.
    pub(super) fn started(&self, pgid: i32, tag: &str, attempt: String) {
        if self.inner.book.is_none() && !self.has_watchdog() {
            return;
        }
        let Some(leader) = procfs::stat(pgid) else {
            // Already reaped: nothing is left to guard.
            self.not_started(tag);
            return;
        };
        let record = GroupRecord {
            pgid,
            leader_start_ticks: leader.start_ticks,
            boot_id: self.inner.boot_id.clone(),
            tag: tag.to_owned(),
            attempt,
        };
        if let Some(book) = &self.inner.book {
            match book.write(&record) {
                // The real record is in place: the pending one may go.
                Ok(()) => book.remove_record(&self.pending(tag)),
                Err(error) => {
                    tracing::warn!(pgid, %error, dir = %book.dir().display(), "cannot record a task's process group; a restart may not find it");
                }
            }
        }
        // Replaces the pending announcement (same tag).
        self.with_watchdog(|w| w.group(&record));
    }

    /// A task's group ended (its leader was reaped and the rest killed).
    pub(super) fn ended(&self, pgid: i32) {
        self.with_watchdog(|w| w.ended(pgid));
        if let Some(book) = &self.inner.book {
            book.remove(pgid);
        }
    }

    /// Every guarded group is SIGKILLed by the watchdog at `deadline_ms`
    /// (`CLOCK_MONOTONIC` milliseconds, see [`super::watchdog::mono_now_ms`])
    /// unless a later lease replaces it; `None`: no deadline.
    pub fn lease(&self, deadline_ms: Option<u64>) {
        self.with_watchdog(|w| w.lease(deadline_ms.unwrap_or(0)));
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn record(pgid: i32, start: u64, tag: &str) -> GroupRecord {
        GroupRecord {
            pgid,
            leader_start_ticks: start,
            boot_id: procfs::boot_id().unwrap(),
            tag: tag.into(),
            attempt: "r/t/1".into(),
        }
    }

    fn ps(pid: i32, pgrp: i32, start: u64) -> ProcStat {
        ProcStat {
            pid,
            ppid: 1,
            pgrp,
            state: 'S',
            start_ticks: start,
        }
    }

    #[test]
    fn a_group_is_ours_only_with_the_recorded_leader_or_the_tag() {
        let r = record(500_000_001, 77, "no-process-has-this-tag");
        // The leader with the recorded start time.
        assert_eq!(
            r.members(&[
                ps(500_000_001, 500_000_001, 77),
                ps(500_000_002, 500_000_001, 80)
            ]),
            Some(vec![500_000_001, 500_000_002])
        );
        // The pid reused by another process: not ours.
        assert_eq!(r.members(&[ps(500_000_001, 500_000_001, 99)]), None);
        // Nothing in the group.
        assert_eq!(r.members(&[ps(3, 3, 1)]), None);
        let zombie = ProcStat {
            state: 'Z',
            ..ps(500_000_001, 500_000_001, 77)
        };
        assert_eq!(r.members(&[zombie]), None);
    }

    #[test]
    fn records_round_trip_and_damaged_ones_are_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let book = GroupBook::open(dir.path().join("w.groups")).unwrap();
        let r = record(1234, 5, "t");
        book.write(&r).unwrap();
        std::fs::write(book.dir().join("99.json.tmp"), "{half").unwrap();
        assert_eq!(book.records(), vec![r]);
        assert!(!book.dir().join("99.json.tmp").exists());
        book.remove(1234);
        book.remove(1234);
        assert!(book.records().is_empty());
    }

    #[test]
    fn tags_are_unique() {
        assert_ne!(new_tag(), new_tag());
    }
}
