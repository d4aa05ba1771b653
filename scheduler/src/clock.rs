//! Time, injected: the [`Clock`] trait the engine reads the time from and
//! sleeps on, the [`SystemClock`] used in production and the [`ManualClock`]
//! tests move by hand.
//!
//! The engine never calls `Utc::now()` or `tokio::time::sleep` itself, so cron
//! slots, retry back-off, attempt timeouts and heartbeat expiry are all tested
//! by moving a [`ManualClock`] rather than by waiting.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::sync::watch;

/// A source of the current time and of timers that fire at a given instant.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time.
    fn now(&self) -> DateTime<Utc>;
    /// A future that completes once `now() >= t` (at once if it already is).
    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()>;
}

/// The real clock: `Utc::now()` and tokio timers.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        Utc::now()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        // A deadline in the past gives a zero duration: the sleep completes at once.
        let wait = (t - Utc::now()).to_std().unwrap_or_default();
        tokio::time::sleep(wait).boxed()
    }
}

/// A clock that only moves when told to. Sleepers wake as soon as the time is
/// set at or past their deadline.
#[derive(Debug, Clone)]
pub struct ManualClock {
    /// The current time; every sleeper holds a receiver and re-checks on change.
    now: Arc<watch::Sender<DateTime<Utc>>>,
}

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        let (tx, _rx) = watch::channel(start);
        Self { now: Arc::new(tx) }
    }

    /// Moves the time forward by `by` (a negative duration is ignored).
    pub fn advance(&self, by: chrono::Duration) {
        if by > chrono::Duration::zero() {
            self.now.send_modify(|t| *t += by);
        }
    }

    /// Sets the time; going backwards is allowed (sleepers simply keep waiting).
    pub fn set(&self, t: DateTime<Utc>) {
        self.now.send_replace(t);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.now.borrow()
    }

    fn sleep_until(&self, t: DateTime<Utc>) -> BoxFuture<'static, ()> {
        let mut rx = self.now.subscribe();
        async move {
            loop {
                if *rx.borrow_and_update() >= t {
                    return;
                }
                if rx.changed().await.is_err() {
                    // The clock is gone: nothing will ever move time again.
                    futures::future::pending::<()>().await;
                }
            }
        }
        .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[tokio::test]
    async fn manual_sleeper_wakes_only_when_time_passes_its_deadline() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        let sleep = clock.sleep_until(start + chrono::Duration::seconds(10));
        let handle = tokio::spawn(sleep);
        clock.advance(chrono::Duration::seconds(5));
        tokio::task::yield_now().await;
        assert!(!handle.is_finished());
        clock.advance(chrono::Duration::seconds(5));
        handle.await.unwrap();
        assert_eq!(clock.now(), start + chrono::Duration::seconds(10));
    }

    #[tokio::test]
    async fn past_deadline_completes_at_once() {
        let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
        let clock = ManualClock::new(start);
        clock.sleep_until(start).await;
        SystemClock
            .sleep_until(Utc::now() - chrono::Duration::seconds(1))
            .await;
    }
}
