//! Self-fencing: a worker that cannot show the scheduler still hears it
//! stops its running tasks before the scheduler declares it lost and starts
//! their retries elsewhere, so an attempt never runs twice at once.
//!
//! The evidence is a HeartbeatAck. The scheduler acknowledges a heartbeat
//! only after its engine recorded it, so from the moment that heartbeat was
//! *sent* the scheduler waits at least the lost-worker timeout `L` (which it
//! announces at Register) before it declares this worker lost; a Register
//! counts the same way (the scheduler records it as a heartbeat). Measuring
//! from the send time on this machine's monotonic clock makes the deadlines
//! conservative whatever the network delay, and independent of either
//! machine's wall clock. From that anchor:
//!
//! - at `max(L/2, 2 heartbeat intervals)` after it (later when that still
//!   leaves the default kill grace), SIGTERM: the task may checkpoint;
//! - at 85% of `L`, SIGKILL, enforced by the watchdog process too, so it
//!   holds while this process is frozen. The remaining 15% absorbs the
//!   scheduler's timer and the kernel's delivery of the kill.
//!
//! A healthy connection renews the anchor every heartbeat interval, far
//! inside `L/2`. The price: a scheduler that is unreachable (down, or a
//! failover) for longer than `L/2` costs the running attempts, which are
//! retried; `--lost-worker-timeout` sets how long that is.

use std::time::Duration;

use tokio::time::Instant;

use crate::exec::DEFAULT_KILL_GRACE;

/// SIGKILL at this share of the lost-worker timeout (in per-mille).
const KILL_AT_PER_MILLE: u32 = 850;
/// Announced timeouts are capped here (they come from the network, and an
/// absurd one must not overflow a deadline).
const MAX_LOST_TIMEOUT: Duration = Duration::from_secs(30 * 24 * 3600);

/// When a cut-off worker stops its tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Deadlines {
    /// SIGTERM (cancel with grace).
    pub term: Instant,
    /// SIGKILL; also the watchdog's lease.
    pub kill: Instant,
}

/// What the worker knows about its standing with the scheduler.
#[derive(Debug, Clone, Default)]
pub(super) struct Fence {
    /// The scheduler's lost-worker timeout; `None`: not announced, no fencing.
    lost_timeout: Option<Duration>,
    heartbeat: Duration,
    /// The send time of the newest heartbeat (or Register) the scheduler
    /// acknowledged.
    anchor: Option<Instant>,
}

impl Fence {
    /// What the scheduler announced at Register (`lost_timeout` zero: not
    /// announced) and the heartbeat interval in use.
    pub fn configure(&mut self, lost_timeout: Duration, heartbeat: Duration) {
        self.lost_timeout = (!lost_timeout.is_zero()).then_some(lost_timeout.min(MAX_LOST_TIMEOUT));
        self.heartbeat = heartbeat.min(MAX_LOST_TIMEOUT);
    }

    /// The scheduler acknowledged something sent at `sent`.
    pub fn heard(&mut self, sent: Instant) {
        self.anchor = Some(self.anchor.map_or(sent, |a| a.max(sent)));
    }

    pub fn lost_timeout(&self) -> Option<Duration> {
        self.lost_timeout
    }

    /// How long ago the scheduler last provably heard from this worker.
    pub fn silent_for(&self, now: Instant) -> Option<Duration> {
        self.anchor.map(|a| now.saturating_duration_since(a))
    }

    /// The current deadlines; `None` before the first registration or
    /// when the scheduler announced no timeout.
    pub fn deadlines(&self) -> Option<Deadlines> {
        let (lost, anchor) = (self.lost_timeout?, self.anchor?);
        let kill_after = lost * KILL_AT_PER_MILLE / 1000;
        let term_after = (lost / 2)
            .max(self.heartbeat * 2)
            .max(kill_after.saturating_sub(DEFAULT_KILL_GRACE))
            .min(kill_after);
        let kill = anchor.checked_add(kill_after)?;
        let term = anchor.checked_add(term_after)?;
        Some(Deadlines { term, kill })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn short_timeouts_term_at_half_and_kill_at_85_percent() {
        let t0 = Instant::now();
        let mut f = Fence::default();
        assert_eq!(f.deadlines(), None);
        f.configure(ms(3000), ms(500));
        f.heard(t0);
        let d = f.deadlines().unwrap();
        assert_eq!(d.term - t0, ms(1500));
        assert_eq!(d.kill - t0, ms(2550));
    }

    #[test]
    fn long_timeouts_keep_the_default_grace_and_wait_for_two_heartbeats() {
        let t0 = Instant::now();
        let mut f = Fence::default();
        f.configure(Duration::from_secs(30), Duration::from_secs(5));
        f.heard(t0);
        let d = f.deadlines().unwrap();
        assert_eq!(d.kill - t0, ms(25_500));
        assert_eq!(d.term - t0, ms(15_500));
        // Slow heartbeats push SIGTERM later, never past the kill.
        f.configure(Duration::from_secs(30), Duration::from_secs(14));
        let d = f.deadlines().unwrap();
        assert_eq!(d.term - t0, ms(25_500));
    }

    #[test]
    fn the_anchor_only_moves_forward_and_no_timeout_means_no_fence() {
        let t0 = Instant::now();
        let mut f = Fence::default();
        f.configure(ms(1000), ms(100));
        f.heard(t0 + ms(300));
        f.heard(t0);
        assert_eq!(f.deadlines().unwrap().kill - t0, ms(1150));
        assert_eq!(f.silent_for(t0 + ms(400)), Some(ms(100)));
        f.configure(Duration::ZERO, ms(100));
        assert_eq!(f.deadlines(), None);
    }
}
