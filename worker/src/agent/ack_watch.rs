//! The heartbeat acknowledgement watchdog: a scheduler that stops
//! acknowledging heartbeats is dropped, so the worker tries its next
//! `--scheduler` URL.
//!
//! Why: a frozen leader (SIGSTOP, a hung host, a network path that stops
//! forwarding) never closes the stream, and HTTP/2 keepalive takes tens of
//! seconds to notice, if the kernel still answers at all. The scheduler
//! answers every heartbeat with a `HeartbeatAck` once its engine recorded
//! it, so "no acknowledgement for a few heartbeat intervals" means the
//! scheduler is not doing its job for this worker, whatever the socket says.
//!
//! How long: three heartbeat intervals and at least 3 s (with short
//! heartbeats one long engine turn on a loaded machine must not cost a
//! reconnect, whose in-flight assignments would be handed back), but at
//! most a third of the lost-worker timeout the scheduler announced, and
//! never under two intervals (one late ack is not a failure). The cap keeps the watchdog
//! well ahead of the self-fence (`fence`: SIGTERM at half the timeout after
//! the last acknowledged heartbeat), so a worker that finds the new leader
//! in the time left re-registers, lists its running attempts in Hello, and
//! keeps them running — exactly as after any reconnect. With the defaults
//! (5 s heartbeats, 30 s timeout) that is 10 s.

use std::time::Duration;

use tokio::time::Instant;

/// Heartbeat intervals without an acknowledgement before the stream is dropped.
const INTERVALS: u32 = 3;
/// Never fewer intervals than this, whatever the lost-worker timeout.
const MIN_INTERVALS: u32 = 2;
/// Never less silence than this (unless the lost-worker timeout's third is
/// shorter): with short heartbeats, one long engine turn on a loaded
/// machine must not cost a reconnect.
const MIN_SILENCE: Duration = Duration::from_secs(3);

/// Watches one stream's acknowledgements.
#[derive(Debug, Clone, Default)]
pub(super) struct AckWatch {
    /// Silence tolerated; set when a stream opens.
    limit: Duration,
    /// When the scheduler last showed it is alive on this stream (the
    /// stream opening, or the newest acknowledgement); `None`: no stream.
    heard: Option<Instant>,
}

impl AckWatch {
    /// The silence tolerated for `heartbeat` intervals and the scheduler's
    /// lost-worker timeout (zero: not announced).
    pub fn limit_for(heartbeat: Duration, lost_timeout: Duration) -> Duration {
        let limit = (heartbeat * INTERVALS).max(MIN_SILENCE);
        let limit = if lost_timeout.is_zero() {
            limit
        } else {
            limit.min(lost_timeout / 3)
        };
        limit.max(heartbeat * MIN_INTERVALS)
    }

    /// A stream opened at `now` (Register answered: the scheduler is alive).
    pub fn opened(&mut self, now: Instant, heartbeat: Duration, lost_timeout: Duration) {
        self.limit = Self::limit_for(heartbeat, lost_timeout);
        self.heard = Some(now);
    }

    /// A HeartbeatAck arrived at `now`.
    pub fn acknowledged(&mut self, now: Instant) {
        if let Some(heard) = self.heard.as_mut() {
            *heard = (*heard).max(now);
        }
    }

    /// The stream is gone: nothing to watch.
    pub fn closed(&mut self) {
        self.heard = None;
    }

    /// When the open stream counts as stalled; `None` without one.
    pub fn deadline(&self) -> Option<Instant> {
        self.heard.and_then(|h| h.checked_add(self.limit))
    }

    /// How long the scheduler has been silent at `now`, once past the limit.
    pub fn stalled(&self, now: Instant) -> Option<Duration> {
        let heard = self.heard?;
        self.deadline()
            .filter(|d| now >= *d)
            .map(|_| now.saturating_duration_since(heard))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn the_limit_is_three_intervals_capped_by_the_lost_timeout() {
        assert_eq!(AckWatch::limit_for(secs(5), secs(60)), secs(15));
        // Defaults: 5 s heartbeats, 30 s timeout → a third of it.
        assert_eq!(AckWatch::limit_for(secs(5), secs(30)), secs(10));
        // Never under two intervals.
        assert_eq!(AckWatch::limit_for(secs(5), secs(12)), secs(10));
        // No timeout announced: three intervals.
        assert_eq!(AckWatch::limit_for(secs(5), Duration::ZERO), secs(15));
        // Short heartbeats: at least 3 s of silence…
        let ms = Duration::from_millis;
        assert_eq!(AckWatch::limit_for(ms(200), secs(60)), secs(3));
        // …unless a third of the lost timeout is shorter.
        assert_eq!(AckWatch::limit_for(ms(200), secs(3)), secs(1));
    }

    /// The watchdog over an injected clock (every method takes `now`):
    /// acknowledgements keep the stream, silence past the limit stalls it,
    /// and nothing is watched without a stream.
    #[test]
    fn silence_past_the_limit_stalls_the_stream_and_acks_keep_it() {
        let t0 = Instant::now();
        let mut now = t0;
        let mut w = AckWatch::default();
        assert_eq!(w.deadline(), None);
        w.opened(now, secs(5), secs(30));
        for _ in 0..5 {
            now += secs(5);
            assert_eq!(w.stalled(now), None);
            w.acknowledged(now);
        }
        let last = now;
        assert_eq!(w.deadline(), Some(last + secs(10)));
        assert_eq!(w.stalled(last + Duration::from_millis(9_999)), None);
        // The agent sleeps until the deadline and finds it stalled then.
        assert_eq!(w.stalled(last + secs(10)), Some(secs(10)));
        assert_eq!(w.stalled(last + secs(12)), Some(secs(12)));
        // An old acknowledgement arriving late never moves it back.
        w.acknowledged(last - secs(3));
        assert_eq!(w.deadline(), Some(last + secs(10)));
        w.closed();
        assert_eq!(w.deadline(), None);
        assert_eq!(w.stalled(last + secs(60)), None);
        // A new stream starts a new watch.
        w.opened(last + secs(60), secs(1), secs(30));
        assert_eq!(w.deadline(), Some(last + secs(63)));
    }
}
