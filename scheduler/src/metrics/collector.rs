//! Turns the engine's event broadcast into counters and histograms.
//!
//! The collector remembers when each task became ready (or, for root tasks
//! that are created ready without an event, when their run started) so that
//! the `assigned` event can be observed as queue wait (per pool) and the
//! `running` event as scheduling latency; when each attempt started running,
//! for task durations (by DAG and outcome); and when each run started, for
//! run durations. The maps only hold live work and forget an entry when its
//! task or run ends.

use std::collections::HashMap;
use std::time::Instant;

use tokio::sync::broadcast::{self, error::RecvError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use trainyard_core::ids::{RunId, TaskInstanceId};
use trainyard_core::state::{RunState, TaskState};

use super::{Metrics, global};
use crate::engine::{EngineEvent, EngineHandle};

/// Past this many remembered entries something is leaking (missed end
/// events while lagging); start over rather than grow without bound.
const MAX_TRACKED: usize = 1_000_000;

/// What the collector remembers between events.
#[derive(Debug, Default)]
pub(crate) struct Tracker {
    /// When each task entered `ready`; removed once it runs or ends.
    ready_since: HashMap<TaskInstanceId, Instant>,
    /// When each attempt entered `running`; removed when it leaves running.
    running_since: HashMap<TaskInstanceId, Instant>,
    /// When each run entered `running`; removed when it ends.
    run_started: HashMap<RunId, Instant>,
}

impl Tracker {
    /// Applies one event at time `now` (injected so tests need no clock).
    pub(crate) fn observe(&mut self, metrics: &Metrics, event: &EngineEvent, now: Instant) {
        match event {
            EngineEvent::TaskState {
                run_id,
                dag_id,
                ti,
                pool,
                state,
                ..
            } => {
                metrics
                    .task_transitions
                    .with_label_values(&[dag_id.as_str(), state.as_str()])
                    .inc();
                // Leaving `running` (for whatever state) ends the attempt.
                if *state != TaskState::Running
                    && let Some(started) = self.running_since.remove(ti)
                {
                    metrics
                        .task_duration
                        .with_label_values(&[dag_id.as_str(), state.as_str()])
                        .observe(now.saturating_duration_since(started).as_secs_f64());
                }
                // Root tasks are created ready without an event: their wait
                // starts with their run.
                let waiting_since = |tracker: &Self| {
                    tracker
                        .ready_since
                        .get(ti)
                        .or_else(|| tracker.run_started.get(run_id))
                        .copied()
                };
                match state {
                    TaskState::Ready => {
                        self.ready_since.insert(*ti, now);
                    }
                    // Assigned keeps the ready time: latency runs to the process start.
                    TaskState::Assigned => {
                        if let Some(since) = waiting_since(self) {
                            metrics
                                .queue_wait
                                .with_label_values(&[pool.as_str()])
                                .observe(now.saturating_duration_since(since).as_secs_f64());
                        }
                    }
                    TaskState::Running => {
                        if let Some(since) = waiting_since(self) {
                            metrics
                                .scheduling_latency
                                .observe(now.saturating_duration_since(since).as_secs_f64());
                        }
                        self.ready_since.remove(ti);
                        self.running_since.insert(*ti, now);
                    }
                    _ => {
                        self.ready_since.remove(ti);
                    }
                }
            }
            EngineEvent::RunState {
                run_id,
                dag_id,
                state,
            } => {
                metrics
                    .run_transitions
                    .with_label_values(&[dag_id.as_str(), state.as_str()])
                    .inc();
                match state {
                    RunState::Running => {
                        self.run_started.entry(*run_id).or_insert(now);
                    }
                    s if s.is_terminal() => {
                        if let Some(started) = self.run_started.remove(run_id) {
                            metrics
                                .run_duration
                                .with_label_values(&[s.as_str()])
                                .observe(now.saturating_duration_since(started).as_secs_f64());
                        }
                    }
                    _ => {}
                }
            }
            EngineEvent::SlotSkipped { .. } => {}
        }
        if self.ready_since.len() + self.running_since.len() + self.run_started.len() > MAX_TRACKED
        {
            self.ready_since.clear();
            self.running_since.clear();
            self.run_started.clear();
        }
    }
}

/// Subscribes to the engine and feeds the [`global`] metrics until `shutdown`.
pub fn spawn_collector(engine: &EngineHandle, shutdown: CancellationToken) -> JoinHandle<()> {
    let events = engine.subscribe();
    tokio::spawn(run(events, global(), shutdown))
}

async fn run(
    mut events: broadcast::Receiver<EngineEvent>,
    metrics: &'static Metrics,
    shutdown: CancellationToken,
) {
    let mut tracker = Tracker::default();
    loop {
        let event = tokio::select! {
            _ = shutdown.cancelled() => return,
            event = events.recv() => event,
        };
        match event {
            Ok(event) => tracker.observe(metrics, &event, Instant::now()),
            Err(RecvError::Lagged(missed)) => metrics.events_lagged.inc_by(missed),
            Err(RecvError::Closed) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use trainyard_core::ids::{DagId, TaskId};

    use super::*;

    fn task(run: RunId, ti: i64, state: TaskState) -> EngineEvent {
        EngineEvent::TaskState {
            run_id: run,
            dag_id: DagId::new("d"),
            ti: TaskInstanceId::new(ti),
            task_id: TaskId::new("t"),
            pool: "default".into(),
            state,
            attempt: 1,
        }
    }

    fn run_event(run: RunId, state: RunState) -> EngineEvent {
        EngineEvent::RunState {
            run_id: run,
            dag_id: DagId::new("d"),
            state,
        }
    }

    #[test]
    fn latency_runs_from_ready_to_running_and_roots_count_from_run_start() {
        let m = Metrics::new().unwrap();
        let mut t = Tracker::default();
        let run = RunId::new();
        let t0 = Instant::now();
        t.observe(&m, &run_event(run, RunState::Running), t0);
        // Root task: created ready without an event, runs 3 ms after the run started.
        t.observe(
            &m,
            &task(run, 1, TaskState::Assigned),
            t0 + Duration::from_millis(1),
        );
        t.observe(
            &m,
            &task(run, 1, TaskState::Running),
            t0 + Duration::from_millis(3),
        );
        // Successor: ready at 10 ms, running at 11 ms.
        t.observe(
            &m,
            &task(run, 2, TaskState::Ready),
            t0 + Duration::from_millis(10),
        );
        t.observe(
            &m,
            &task(run, 2, TaskState::Running),
            t0 + Duration::from_millis(11),
        );
        t.observe(
            &m,
            &run_event(run, RunState::Success),
            t0 + Duration::from_millis(20),
        );

        assert_eq!(m.scheduling_latency.get_sample_count(), 2);
        let sum = m.scheduling_latency.get_sample_sum();
        assert!((sum - 0.004).abs() < 1e-9, "sum {sum}");
        let runs = m.run_duration.with_label_values(&["success"]);
        assert_eq!(runs.get_sample_count(), 1);
        assert_eq!(
            m.task_transitions
                .with_label_values(&["d", "running"])
                .get(),
            2
        );
        // Queue wait ends at assignment: 1 ms for the root only (task 2 was
        // never assigned in this sequence).
        let wait = m.queue_wait.with_label_values(&["default"]);
        assert_eq!(wait.get_sample_count(), 1);
        assert!((wait.get_sample_sum() - 0.001).abs() < 1e-9);
        assert!(t.ready_since.is_empty() && t.run_started.is_empty());
    }

    #[test]
    fn an_attempt_is_timed_from_running_to_the_state_it_ends_in_by_dag() {
        let m = Metrics::new().unwrap();
        let mut t = Tracker::default();
        let run = RunId::new();
        let t0 = Instant::now();
        let at = |ms| t0 + Duration::from_millis(ms);
        t.observe(&m, &run_event(run, RunState::Running), t0);
        t.observe(&m, &task(run, 1, TaskState::Assigned), at(1));
        t.observe(&m, &task(run, 1, TaskState::Running), at(2));
        t.observe(&m, &task(run, 1, TaskState::UpForRetry), at(102));
        t.observe(&m, &task(run, 1, TaskState::Ready), at(200));
        t.observe(&m, &task(run, 1, TaskState::Assigned), at(205));
        t.observe(&m, &task(run, 1, TaskState::Running), at(210));
        t.observe(&m, &task(run, 1, TaskState::Success), at(260));

        let retried = m.task_duration.with_label_values(&["d", "up_for_retry"]);
        assert_eq!(retried.get_sample_count(), 1);
        assert!((retried.get_sample_sum() - 0.1).abs() < 1e-9);
        let ok = m.task_duration.with_label_values(&["d", "success"]);
        assert_eq!(ok.get_sample_count(), 1);
        assert!((ok.get_sample_sum() - 0.05).abs() < 1e-9);
        // Two assignments: 1 ms from the run start, 5 ms after the retry's ready.
        let wait = m.queue_wait.with_label_values(&["default"]);
        assert_eq!(wait.get_sample_count(), 2);
        assert!((wait.get_sample_sum() - 0.006).abs() < 1e-9);
        assert!(t.running_since.is_empty() && t.ready_since.is_empty());
    }
}
