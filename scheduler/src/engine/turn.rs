//! Turns: plan in memory, commit once, then apply.
//!
//! A turn takes the commands waiting in the channel (up to [`super::TURN_CAP`])
//! and the timers that are due, and handles each against memory. Handlers do
//! not write to the store: they queue writes in the turn's
//! [`WriteBatch`](crate::store::WriteBatch) and queue what they would send —
//! answers to callers, messages to workers, engine events. After the last
//! command the turn settles (queued runs start, ready tasks are placed), then
//! commits the batch in **one transaction**. Only when it commits are the
//! answers, messages and events released.
//!
//! When the transaction fails (or a read a decision needed fails), memory
//! goes back to the snapshot taken at the turn's start, nothing queued is
//! released, and the turn's work is tried again after a back-off (doubling,
//! capped, with jitter): worker reports, DAG changes and wake-ups go to the
//! backlog and are handled again in order; a user's request (trigger,
//! cancel, clear, pause) is answered with the store's error instead, as
//! nothing of it happened. A conflict (the store's state is not what memory
//! says) also re-reads the runs concerned before the retry. While turns fail,
//! the published [`StoreHealth`] says so and `/readyz` answers 503. A write
//! refused because a newer leadership term exists
//! ([`StoreError::NotLeader`]) can never succeed here: the store wakes the
//! election, which ends the term and stops this engine.
//!
//! On each kind of failure ([`crate::store::FailureClass`]):
//! - **transient** (connection, timeout, serialization, deadlock, lock
//!   timeout, restart): memory back, the same work retried on the back-off;
//! - **conflict**: memory back, the runs concerned re-read, then retried;
//! - **not leader**: memory back, never retried; the election ends the term;
//! - **deterministic** (a constraint or check violation, a value the
//!   database refuses): memory back, and the next try is an isolation pass
//!   (`isolate.rs`) that commits the turn's work one command at a time, so
//!   only the refused command is answered with the error — its run re-read,
//!   its task recorded failed or held — and everything else commits. A turn
//!   that fails [`ISOLATE_AFTER`] times in a row is isolated too, whatever
//!   its errors looked like; then a user's request waits for the pass
//!   instead of being answered with the error.
//!
//! Run creation needs ids the database assigns, so it is written directly
//! rather than batched ([`Core::before_direct_write`]): what the turn decided
//! so far is committed first, the run is inserted, and the snapshot moves
//! past both, so a later failure in the same turn never forgets the run.

use std::time::Duration;

use chrono::Utc;
use tracing::{debug, warn};
use trainyard_core::ids::WorkerId;

use super::handle::{Answer, Command};
use super::memory::{Snapshot, StoreHealth};
use super::timers::TimerKind;
use super::{Core, Ended, EngineError, EngineEvent, WorkerCommand};
use crate::store::{StoreError, WriteBatch};

/// What the turn in progress has decided and will release once it commits.
#[derive(Debug, Default)]
pub(super) struct Turn {
    /// Memory as it was when the turn (or its last direct write) began.
    pub(super) snapshot: Option<Snapshot>,
    pub(super) writes: WriteBatch,
    /// Messages to workers, sent in order after the commit.
    outbox: Vec<(WorkerId, WorkerCommand)>,
    pub(super) events: Vec<EngineEvent>,
    /// Commands handled, with their answers, awaiting the commit.
    pub(super) answered: Vec<(Command, Answer)>,
    /// Timers handled, fired again if the turn fails.
    fired: Vec<TimerKind>,
    /// Why the turn cannot commit (a read it needed failed, or a direct
    /// write's commit failed); set, the turn is rolled back.
    pub(super) failed: Option<StoreError>,
    /// The command being handled committed a direct write: it is done.
    pub(super) direct: bool,
    /// Commit deferred writes now even if the turn wrote nothing (a barrier).
    pub(super) flush: bool,
}

/// Failed turns in a row and the back-off before the next try.
#[derive(Debug, Default)]
pub(super) struct Healing {
    pub(super) failures: u32,
    since: Option<chrono::DateTime<Utc>>,
    pub(super) next_try: Option<tokio::time::Instant>,
    /// The next try isolates (one unit per transaction, see `isolate.rs`):
    /// the last failure was deterministic, or turns failed
    /// [`ISOLATE_AFTER`] times in a row.
    pub(super) isolate: bool,
}

/// Failed turns in a row after which the next try isolates even when the
/// errors looked transient (a refusal the classification does not know).
pub(super) const ISOLATE_AFTER: u32 = 3;

/// A turn whose transaction failed, memory already back at its snapshot:
/// what it had answered and fired, and the ids its writes named.
#[derive(Debug)]
pub(super) struct FailedTurn {
    pub(super) error: StoreError,
    pub(super) answered: Vec<(Command, Answer)>,
    pub(super) fired: Vec<TimerKind>,
    pub(super) touched: super::isolate::Touched,
    /// Its writes started a run (`queued → running`).
    pub(super) starts_run: bool,
}

impl Healing {
    pub(super) fn pending(&self) -> bool {
        self.next_try.is_some()
    }

    /// Sleeps until the next try (forever when none is due).
    pub(super) fn sleep(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        match self.next_try {
            Some(at) => Box::pin(tokio::time::sleep_until(at)),
            None => Box::pin(futures::future::pending()),
        }
    }
}

/// The back-off before try `failures + 1`: `base · 2^(failures-1)`, capped,
/// ±25 % jitter so replicas and workers do not retry in lock-step.
fn backoff(base: Duration, max: Duration, failures: u32, seed: u64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    let capped = exp.min(max);
    // splitmix64 of the seed: cheap, good enough for jitter.
    let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    let frac = (z % 1000) as f64 / 1000.0; // 0..1
    capped.mul_f64(0.75 + 0.5 * frac)
}

impl Core {
    /// Starts a turn: snapshot memory, empty queues.
    pub(super) fn begin_turn(&mut self) {
        self.turn = Turn {
            snapshot: Some(self.snapshot()),
            ..Turn::default()
        };
    }

    /// One turn over `cmds` and the due `timers` (see the module docs).
    pub(super) async fn run_turn(&mut self, cmds: Vec<Command>, timers: Vec<TimerKind>) {
        self.begin_turn();
        self.prologue().await;
        let mut cmds = cmds.into_iter();
        for cmd in cmds.by_ref() {
            let answer = self.handle(&cmd).await;
            // A report the store could not serve is tried again, not refused.
            let answer = if cmd.retried_on_failure() {
                match answer.into_store_error() {
                    Ok(e) => {
                        self.fail_turn(e);
                        None
                    }
                    Err(a) => Some(a),
                }
            } else {
                Some(answer)
            };
            let Some(answer) = answer else {
                self.backlog.push_back(cmd);
                break;
            };
            if self.turn.failed.is_some() {
                self.backlog.push_back(cmd);
                break;
            }
            if std::mem::take(&mut self.turn.direct) {
                // Its write is committed and its answer final.
                cmd.respond(answer);
            } else {
                self.turn.answered.push((cmd, answer));
            }
        }
        self.backlog.extend(cmds);
        let mut timers = timers.into_iter();
        while self.turn.failed.is_none() {
            let Some(timer) = timers.next() else { break };
            self.turn.fired.push(timer.clone());
            self.fire(timer).await;
            self.turn.direct = false;
        }
        self.turn.fired.extend(timers);
        self.finish_turn().await;
    }

    /// What every turn owes first: runs re-read after a conflict decide
    /// their pending tasks again (kept until a turn commits them), and
    /// attempts the store assigned in a turn this engine rolled back (they
    /// never reached a worker) are handed back.
    pub(super) async fn prologue(&mut self) {
        for (run_id, ti, attempt, state) in self.orphaned.clone() {
            self.reclaim_orphan(run_id, ti, attempt, state).await;
        }
        for run_id in self.redecide.clone() {
            if let Some(run) = self.runs.get(&run_id) {
                let all: Vec<usize> = (0..run.tasks.len()).collect();
                self.advance(run_id, all).await;
            }
        }
    }

    /// A failed turn's back-off ran out: re-read what conflicted, then try
    /// the backlog (and everything memory may owe: starts, dispatch) again.
    pub(super) async fn heal_turn(&mut self, cmds: Vec<Command>) {
        self.healing.next_try = None;
        let runs: Vec<_> = std::mem::take(&mut self.resync).into_iter().collect();
        for run_id in runs {
            if let Err(e) = self.resync_run(run_id).await {
                warn!(run = %run_id, error = %e, "could not re-read the run; trying again later");
                self.resync.insert(run_id);
            }
        }
        if !self.resync.is_empty() {
            // Still cannot read: keep everything for the next try.
            self.backlog.extend(cmds);
            let e = StoreError::Unavailable("runs that conflicted could not be re-read".into());
            self.turn_failed(&e);
            return;
        }
        self.dirty = true;
        self.start_pending = true;
        if std::mem::take(&mut self.healing.isolate) {
            self.isolate(cmds).await;
        } else {
            self.run_turn(cmds, Vec::new()).await;
        }
    }

    /// Settles, commits, and then releases or rolls back.
    pub(super) async fn finish_turn(&mut self) {
        match self.try_finish_turn(true).await {
            Ok(()) => {
                if self.healing.failures > 0 {
                    warn!(
                        failures = self.healing.failures,
                        "store accepts writes again; engine healed"
                    );
                    self.healing = Healing::default();
                }
                self.publish(StoreHealth::Ok);
            }
            Err(failed) => self.roll_back(failed),
        }
    }

    /// Settles (when `settle`), commits, and releases; or, when the commit
    /// fails, puts memory back to the snapshot and hands back what the turn
    /// had answered and fired, for the caller to retry or isolate.
    pub(super) async fn try_finish_turn(&mut self, settle: bool) -> Result<(), FailedTurn> {
        if settle && self.turn.failed.is_none() {
            self.settle().await;
        }
        let result = match self.turn.failed.take() {
            Some(e) => Err(e),
            None => self.commit_writes().await,
        };
        match result {
            Ok(()) => {
                if !self.quarantine.is_empty() {
                    self.lift_quarantine();
                }
                self.release();
                self.redecide.clear();
                self.orphaned.clear();
                Ok(())
            }
            Err(e) => Err(self.undo(e)),
        }
    }
    /// Commits the turn's batch, preceded by the deferred writes; nothing
    /// to do when the turn wrote nothing and the deferred ones may wait.
    async fn commit_writes(&mut self) -> Result<(), StoreError> {
        let flush_due = self.turn.flush
            || self
                .deferred_since
                .is_some_and(|t| t.elapsed() >= self.opts.start_flush_delay);
        if self.turn.writes.is_empty() && (self.deferred.is_empty() || !flush_due) {
            return Ok(());
        }
        let started = std::time::Instant::now();
        let r = if self.deferred.is_empty() {
            self.store
                .commit_batch(&self.turn.writes, &self.opts.actor)
                .await
        } else {
            let mut batch = self.deferred.clone();
            batch.writes.extend(self.turn.writes.writes.iter().cloned());
            self.store.commit_batch(&batch, &self.opts.actor).await
        };
        debug!(
            writes = self.turn.writes.len(),
            deferred = self.deferred.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            ok = r.is_ok(),
            "turn committed"
        );
        if r.is_ok() {
            self.deferred.clear();
            self.deferred_since = None;
        }
        r
    }

    /// Queues a write that may wait for the next batch (see `deferred`).
    pub(super) fn defer(&mut self, write: crate::store::Write) {
        let now = self.clock.now();
        self.deferred.push(write, now);
        self.deferred_since
            .get_or_insert_with(tokio::time::Instant::now);
    }

    /// Sleeps until the deferred writes must be committed (forever when none wait).
    pub(super) fn deferred_flush_sleep(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>> {
        match self.deferred_since {
            Some(t) => Box::pin(tokio::time::sleep_until(t + self.opts.start_flush_delay)),
            None => Box::pin(futures::future::pending()),
        }
    }

    /// The turn committed: answer, send, publish, and start the next snapshot.
    fn release(&mut self) {
        let turn = std::mem::take(&mut self.turn);
        self.deliver(turn.outbox, turn.events, turn.answered);
    }

    /// Sends committed effects: worker messages, then events, then answers.
    fn deliver(
        &mut self,
        outbox: Vec<(WorkerId, WorkerCommand)>,
        events: Vec<EngineEvent>,
        answered: Vec<(Command, Answer)>,
    ) {
        for (worker, cmd) in outbox {
            if let Some(w) = self.workers.get_mut(&worker) {
                w.send(cmd);
            }
        }
        for event in events {
            // Committed: a listener woken now reads the end from the store.
            match &event {
                EngineEvent::RunState { run_id, state, .. } if state.is_terminal() => {
                    self.published.ended(Ended::Run(*run_id));
                }
                EngineEvent::TaskState { ti, state, .. } if state.is_terminal() => {
                    self.published.ended(Ended::Task(*ti));
                }
                _ => {}
            }
            // No subscriber is fine: events are for tests, metrics and the UI.
            let _ = self.events.send(event);
        }
        for (cmd, answer) in answered {
            cmd.respond(answer);
        }
    }

    /// The turn's commit failed: memory back to its snapshot, nothing
    /// released. A conflict also marks the runs concerned for a re-read.
    fn undo(&mut self, e: StoreError) -> FailedTurn {
        let turn = std::mem::take(&mut self.turn);
        let touched = self.touched_by(&turn.writes);
        let starts_run = turn.writes.writes.iter().any(|(w, _)| {
            matches!(w, crate::store::Write::Run(t) if t.from == trainyard_core::state::RunState::Queued)
        });
        if let Some(s) = turn.snapshot {
            self.restore(s);
        }
        if e.is_conflict() {
            // Deferred starts may be what conflicts (a turn that committed
            // unseen): drop them and re-read their runs, the store's word wins.
            for (w, _) in std::mem::take(&mut self.deferred.writes) {
                if let crate::store::Write::StartAttempt { id, .. } = w
                    && let Some((run, _)) = self.locate(id)
                {
                    self.resync.insert(run);
                }
            }
            self.deferred_since = None;
            let run = e.conflict_run().or_else(|| {
                e.conflict_task()
                    .and_then(|ti| self.locate(ti).map(|(r, _)| r))
            });
            match run {
                Some(r) => {
                    self.resync.insert(r);
                }
                None => self.resync.extend(self.runs.keys().copied()),
            }
        }
        FailedTurn {
            error: e,
            answered: turn.answered,
            fired: turn.fired,
            touched,
            starts_run,
        }
    }

    /// The turn failed: nothing of it happened; the work is queued for the
    /// next try (see the module docs).
    fn roll_back(&mut self, failed: FailedTurn) {
        let FailedTurn {
            error: e,
            answered,
            fired,
            ..
        } = failed;
        // The next try isolates: a refusal that will repeat, or a turn that
        // keeps failing. Then a user's request waits for it too (it is tried
        // on its own), since it may well be one of the healthy ones.
        let isolate = e.is_deterministic() || self.healing.failures + 1 >= ISOLATE_AFTER;
        // Answered-in-memory commands: reports again in order, ahead of what
        // was not reached; a user's request gets the error.
        let mut again = std::collections::VecDeque::new();
        let message = e.to_string();
        for (cmd, _) in answered {
            if cmd.retried_on_failure() || (isolate && !e.is_not_leader()) {
                again.push_back(cmd);
            } else {
                cmd.fail(|| {
                    EngineError::Store(StoreError::Unavailable(format!(
                        "the scheduler could not save this change, so nothing changed; retry: {message}"
                    )))
                });
            }
        }
        // Commands the turn never reached keep their place after those.
        let mut rest = std::mem::take(&mut self.backlog);
        again.append(&mut rest);
        self.backlog = again;
        let now = self.clock.now();
        for timer in fired {
            self.timers.arm(now, timer);
        }
        self.turn_failed(&e);
        self.healing.isolate = isolate && !e.is_not_leader();
    }

    /// Counts a failure, publishes it, and schedules the next try.
    pub(super) fn turn_failed(&mut self, e: &StoreError) {
        let h = &mut self.healing;
        h.failures += 1;
        let since = *h.since.get_or_insert_with(Utc::now);
        let seed = u64::from(h.failures) ^ (Utc::now().timestamp_subsec_nanos() as u64);
        let wait = backoff(
            self.opts.heal_backoff,
            self.opts.heal_max_backoff,
            h.failures,
            seed,
        );
        h.next_try = Some(tokio::time::Instant::now() + wait);
        if e.is_not_leader() {
            // Another replica holds a newer term: nothing of this engine can
            // commit any more. The store woke the election, which ends this
            // term (and stops this engine) as soon as it has read the lease;
            // until then turns keep failing without writing anything.
            warn!(error = %e, "this engine's term is over; waiting for the election to stop it");
        } else if e.is_deterministic() {
            // Not an outage: the store refuses what the engine decided. The
            // next try commits the turn's work one command at a time, so the
            // healthy ones go through and the refused one is answered.
            warn!(
                error = %e,
                "the store refuses this turn's writes (not a connection problem); \
                 isolating the command that causes it"
            );
        }
        warn!(
            error = %e,
            failures = h.failures,
            retry_in_ms = wait.as_millis() as u64,
            backlog = self.backlog.len(),
            "turn could not commit; memory kept as it was, trying again"
        );
        let health = StoreHealth::Failing {
            since,
            failures: h.failures,
            error: e.to_string(),
        };
        self.publish(health);
    }

    /// A read a decision needs failed: the turn cannot commit what it decided.
    pub(super) fn fail_turn(&mut self, e: StoreError) {
        if self.turn.failed.is_none() {
            self.turn.failed = Some(e);
        }
    }

    /// Before a write that cannot wait for the batch (run creation): commit
    /// what the turn decided so far, so the direct write lands after it.
    pub(super) async fn before_direct_write(&mut self) -> super::Result<()> {
        if let Some(e) = &self.turn.failed {
            return Err(EngineError::Store(StoreError::Unavailable(format!(
                "an earlier write of this turn failed: {e}"
            ))));
        }
        if let Err(e) = self.commit_writes().await {
            let msg = e.to_string();
            self.fail_turn(e);
            return Err(EngineError::Store(StoreError::Unavailable(msg)));
        }
        self.turn.writes.clear();
        Ok(())
    }

    /// After a direct write and its memory change: everything so far is
    /// committed, so release it and move the snapshot past it.
    pub(super) fn after_direct_write(&mut self) {
        let answered = std::mem::take(&mut self.turn.answered);
        let outbox = std::mem::take(&mut self.turn.outbox);
        let events = std::mem::take(&mut self.turn.events);
        self.deliver(outbox, events, answered);
        self.turn.fired.clear();
        self.turn.direct = true;
        self.turn.snapshot = Some(self.snapshot());
    }

    /// The rebuild's writes, committed before the engine serves.
    pub(super) async fn commit_rebuild(&mut self) -> super::Result<()> {
        self.commit_writes().await?;
        self.release();
        self.publish(StoreHealth::Ok);
        Ok(())
    }

    /// Queues a message to a worker, sent once the turn commits. Returns
    /// whether the worker is connected now (it may still drop before then).
    pub(super) fn send_to(&mut self, worker: WorkerId, cmd: WorkerCommand) -> bool {
        let connected = self.workers.get(&worker).is_some_and(|w| w.tx.is_some());
        if connected {
            self.turn.outbox.push((worker, cmd));
        }
        connected
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_with_bounded_jitter() {
        let (base, max) = (Duration::from_millis(20), Duration::from_secs(2));
        for seed in 0..50 {
            let first = backoff(base, max, 1, seed);
            assert!(first >= Duration::from_millis(15) && first <= Duration::from_millis(25));
            let third = backoff(base, max, 3, seed);
            assert!(third >= Duration::from_millis(60) && third <= Duration::from_millis(100));
            let late = backoff(base, max, 40, seed);
            assert!(late >= Duration::from_millis(1500) && late <= Duration::from_millis(2500));
        }
    }
}
