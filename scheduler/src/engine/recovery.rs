//! Start-up: rebuilds the engine's memory from the store (DAGs and cron
//! cursors, active runs and their tasks, workers and what they hold, timers)
//! and then finishes what a previous scheduler left half done.

use std::collections::HashMap;

use tracing::{info, instrument, warn};
use trainyard_core::ids::{RunId, WorkerId};
use trainyard_core::state::{RunState, TaskState, WorkerState};

use super::state::DagEntry;
use super::timers::TimerKind;
use super::workers::{Hold, WorkerEntry};
use super::{Core, Result};

impl Core {
    #[instrument(skip_all, err)]
    pub(super) async fn rebuild(&mut self) -> Result<()> {
        let now = self.clock.now();
        for dag in self.store.list_dags().await? {
            let spec = match dag.current_version_id {
                Some(v) => match self.spec_of(v).await {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(dag = %dag.id, error = %e, "dag version unreadable; not scheduling it");
                        None
                    }
                },
                None => None,
            };
            let schedule = spec
                .as_ref()
                .and_then(|s| s.schedule.as_deref())
                .and_then(|e| trainyard_core::cron::parse(e).ok());
            let cursor = self.store.last_scheduled_logical_date(&dag.id).await?;
            self.dags.insert(
                dag.id.clone(),
                DagEntry {
                    paused: dag.paused,
                    active: dag.active,
                    registered_at: dag.created_at,
                    version_id: dag.current_version_id,
                    spec,
                    schedule,
                    cursor,
                    generation: 1,
                },
            );
        }
        for w in self.store.list_workers().await? {
            if matches!(w.state, WorkerState::Active | WorkerState::Draining) {
                self.workers.insert(w.id, WorkerEntry::from_row(&w, now));
                self.arm_heartbeat(w.id, now);
            }
        }
        let mut orphaned: Vec<WorkerId> = Vec::new();
        for run in self.store.active_runs().await? {
            let run_id = run.id;
            self.load_run(run).await?;
            let holds_any = self.runs[&run_id]
                .tasks
                .iter()
                .any(|t| t.state.holds_worker());
            if holds_any {
                self.restore_holds(run_id, &mut orphaned).await?;
            }
            let retries: Vec<_> = self.runs[&run_id]
                .tasks
                .iter()
                .filter(|t| t.state == TaskState::UpForRetry)
                .map(|t| (t.ti, t.attempt, t.next_retry_at.unwrap_or(now)))
                .collect();
            for (ti, attempt, at) in retries {
                self.timers.arm(at, TimerKind::Retry { ti, attempt });
            }
        }
        orphaned.sort();
        orphaned.dedup();
        for w in orphaned {
            // Attempts held by a worker that is not active: it is gone for good.
            self.declare_lost(w, "its attempts outlived the worker's registration")
                .await;
        }
        info!(
            dags = self.dags.len(),
            runs = self.runs.len(),
            workers = self.workers.len(),
            "engine state rebuilt"
        );
        Ok(())
    }

    /// Gives the workers back the holds of a run's assigned/running attempts.
    async fn restore_holds(&mut self, run_id: RunId, orphaned: &mut Vec<WorkerId>) -> Result<()> {
        let attempts = self.store.run_attempts(run_id).await?;
        let by_key: HashMap<_, _> = attempts
            .into_iter()
            .map(|a| ((a.task_instance_id, a.attempt), a))
            .collect();
        let held: Vec<usize> = self.runs[&run_id]
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state.holds_worker())
            .map(|(i, _)| i)
            .collect();
        for idx in held {
            let (ti, attempt) = {
                let t = &self.runs[&run_id].tasks[idx];
                (t.ti, t.attempt)
            };
            let Some(a) = by_key.get(&(ti, attempt)) else {
                continue;
            };
            let Some(worker) = a.worker_id else { continue };
            let demand = &self.runs[&run_id].demands[idx];
            let hold = Hold {
                cpus: demand.cpus,
                memory: demand.memory,
                gpus: a.gpus.clone(),
                cancelling: false,
                lost: false,
            };
            match self.workers.get_mut(&worker) {
                Some(w) => {
                    w.held.insert((ti, attempt), hold);
                }
                None => orphaned.push(worker),
            }
            if let Some(run) = self.runs.get_mut(&run_id) {
                run.tasks[idx].worker = Some(worker);
                run.tasks[idx].gpus = a.gpus.clone();
            }
            let from = a.started_at.unwrap_or(a.assigned_at);
            self.arm_deadline(run_id, idx, from);
        }
        Ok(())
    }

    /// Finishes what a previous scheduler left half done: lost attempts get
    /// their retry decision, pending tasks whose upstreams settled move on,
    /// finished runs are closed.
    pub(super) async fn resume_after_restart(&mut self) {
        let runs: Vec<RunId> = self.runs.keys().copied().collect();
        for run_id in runs {
            let Some(run) = self.runs.get(&run_id) else {
                continue;
            };
            if run.run.state != RunState::Running {
                continue;
            }
            let lost: Vec<usize> = run
                .tasks
                .iter()
                .enumerate()
                .filter(|(_, t)| t.state == TaskState::Lost)
                .map(|(i, _)| i)
                .collect();
            for idx in lost {
                self.after_lost(run_id, idx).await;
            }
            if let Some(run) = self.runs.get(&run_id) {
                let all: Vec<usize> = (0..run.tasks.len()).collect();
                self.advance(run_id, all).await;
            }
        }
        self.start_pending = true;
    }
}
