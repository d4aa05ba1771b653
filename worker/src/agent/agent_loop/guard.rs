//! The agent loop's guard over its tasks' processes: at start-up, killing
//! what a previous instance of this worker left running (before the first
//! Register); while running, the self-fence (`super::super::fence`) and
//! the watchdog's lease that enforces it even when this process is frozen.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::AgentLoop;
use crate::exec::groups::GroupFate;
use crate::exec::{GroupBook, Supervisor, mono_now_ms};

/// At start-up, how long to wait for killed leftover processes to be gone
/// (a process stuck in a driver call dies only when the call returns).
const LEFTOVER_WAIT: Duration = Duration::from_secs(10);

impl AgentLoop {
    /// Kills what a previous instance of this worker left running (before
    /// anything is registered) and starts guarding this instance's tasks:
    /// group records under the identity folder, and the watchdog.
    pub(super) async fn supervise(&self) -> Supervisor {
        let book = self.opts.identity.as_ref().and_then(|identity| {
            GroupBook::open(identity.groups_dir())
                .map_err(|error| {
                    warn!(%error, dir = %identity.groups_dir().display(),
                        "cannot keep task process group records; a restart cannot clean up after a killed worker")
                })
                .ok()
        });
        if let Some(book) = book.clone() {
            match tokio::task::spawn_blocking(move || book.kill_leftovers(LEFTOVER_WAIT)).await {
                Ok(leftovers) => {
                    for l in leftovers {
                        let (pgid, attempt) = (l.record.pgid, &l.record.attempt);
                        match &l.fate {
                            GroupFate::Killed(pids) => warn!(pgid, %attempt, ?pids,
                                "killed a task process group a previous run of this worker left behind"),
                            GroupFate::NotOurs => info!(pgid, %attempt,
                                "a recorded task process group id is used by other processes now; left alone"),
                            GroupFate::Gone => {
                                debug!(pgid, %attempt, "a recorded task process group is gone")
                            }
                        }
                        if !l.survivors.is_empty() {
                            tracing::error!(pgid, %attempt, survivors = ?l.survivors,
                                "leftover task processes survived SIGKILL (stuck in the kernel?); registering anyway");
                        }
                    }
                }
                Err(error) => warn!(%error, "cleaning up leftover task processes failed"),
            }
        }
        let supervisor = Supervisor::new(book, self.opts.watchdog.clone());
        if self.opts.watchdog.is_some() && !supervisor.has_watchdog() {
            warn!("running without a task watchdog");
        }
        supervisor
    }

    /// Tells the watchdog the current kill deadline.
    pub(super) fn renew_lease(&self) {
        let Some(s) = &self.supervisor else {
            return;
        };
        let deadline = self.fence.deadlines().map(|d| {
            let now = Instant::now();
            let mono = mono_now_ms();
            let ahead = u64::try_from(d.kill.saturating_duration_since(now).as_millis())
                .unwrap_or(u64::MAX);
            let behind = u64::try_from(now.saturating_duration_since(d.kill).as_millis())
                .unwrap_or(u64::MAX);
            // 0 means "no lease": a deadline in the past is at least 1.
            mono.saturating_add(ahead).saturating_sub(behind).max(1)
        });
        s.lease(deadline);
    }

    /// Why running tasks are being fenced now; with `kill`, only once the
    /// SIGKILL deadline passed, else from the SIGTERM deadline.
    pub(super) fn fenced_reason(&self, kill: bool) -> Option<String> {
        let d = self.fence.deadlines()?;
        let now = Instant::now();
        if now < if kill { d.kill } else { d.term } {
            return None;
        }
        Some(format!(
            "fenced: the scheduler acknowledged no heartbeat for {:.1?} (it declares a worker lost \
             after {:?}); stopped on this worker so that its retry elsewhere cannot overlap it",
            self.fence.silent_for(now).unwrap_or_default(),
            self.fence.lost_timeout().unwrap_or_default(),
        ))
    }

    /// Stops running tasks once the fence's deadlines pass: SIGTERM, then
    /// SIGKILL (see `fence`).
    pub(super) fn enforce_fence(&mut self) {
        if self.tasks.values().all(|t| t.killed) {
            return;
        }
        let Some(reason) = self.fenced_reason(false) else {
            return;
        };
        let kill = self.fenced_reason(true).is_some();
        for (key, t) in self.tasks.iter_mut().filter(|(_, t)| !t.killed) {
            if t.fenced.is_none() {
                warn!(ti = %key.0, attempt = key.1, %reason, "fencing: stopping an attempt (SIGTERM)");
                t.fenced = Some(reason.clone());
                t.stop.cancel.cancel();
            }
            if kill && !t.stop.kill.is_cancelled() {
                warn!(ti = %key.0, attempt = key.1, "fencing: the deadline passed; killing the attempt (SIGKILL)");
                t.stop.kill.cancel();
            }
        }
    }

    /// When the fence next has something to do for the running tasks.
    pub(super) fn next_fence_wake(&self) -> Option<Instant> {
        if self.tasks.values().all(|t| t.killed) {
            return None;
        }
        let d = self.fence.deadlines()?;
        let now = Instant::now();
        [d.term, d.kill].into_iter().find(|at| *at > now)
    }
}
