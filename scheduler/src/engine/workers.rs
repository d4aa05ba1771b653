//! The worker registry: what each worker offers, what it holds, its command
//! stream and its liveness (heartbeats, lost-worker timeout, reconnects).
//!
//! Resources follow what a worker actually holds: a hold is taken when an
//! attempt is assigned and released only when the worker reports the attempt
//! ended, the worker is declared lost, or the engine's timeout backstop gives
//! up on it. A cancelled attempt therefore keeps its GPUs until the process is
//! really gone, so two tasks never share a GPU.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};
use trainyard_core::ids::{TaskInstanceId, WorkerId};
use trainyard_core::state::{TaskState, WorkerState};

use super::placement::{GpuCapacity, WorkerCapacity};
use super::timers::TimerKind;
use super::{Core, EngineError, GpuInventory, GpuUsage, Result, WorkerCommand, WorkerRegistration};
use crate::store::{NewWorker, Worker};

/// Commands buffered per worker before a slow stream counts as broken.
const WORKER_CHANNEL: usize = 4096;

/// Resources one attempt holds on a worker.
#[derive(Debug, Clone)]
pub struct Hold {
    pub cpus: f64,
    pub memory: u64,
    pub gpus: Vec<u32>,
    /// The engine cancelled the attempt and waits for the worker to confirm.
    pub cancelling: bool,
}

/// One registered worker.
#[derive(Debug)]
pub struct WorkerEntry {
    pub id: WorkerId,
    pub name: String,
    pub state: WorkerState,
    pub queues: Vec<String>,
    pub cpus: f64,
    pub memory: u64,
    pub slots: u32,
    pub gpus: Vec<GpuInventory>,
    /// GPUs its latest heartbeat called unhealthy.
    pub unhealthy: BTreeSet<u32>,
    pub usage: Vec<GpuUsage>,
    /// Attempts it holds, by (task instance, attempt).
    pub held: HashMap<(TaskInstanceId, i32), Hold>,
    /// Its command stream; `None` while disconnected.
    pub tx: Option<mpsc::Sender<WorkerCommand>>,
    pub last_heartbeat: DateTime<Utc>,
}

impl WorkerEntry {
    fn from_registration(id: WorkerId, reg: WorkerRegistration, now: DateTime<Utc>) -> Self {
        Self {
            id,
            name: reg.name,
            state: WorkerState::Active,
            queues: reg.queues,
            cpus: reg.cpus,
            memory: reg.memory_bytes,
            slots: reg.slots,
            gpus: reg.gpus,
            unhealthy: BTreeSet::new(),
            usage: Vec::new(),
            held: HashMap::new(),
            tx: None,
            last_heartbeat: now,
        }
    }

    /// Rebuilds an entry from its store row (start-up).
    pub fn from_row(w: &Worker, now: DateTime<Utc>) -> Self {
        let r = &w.resources;
        Self {
            id: w.id,
            name: w.name.clone(),
            state: w.state,
            queues: serde_json::from_value(r["queues"].clone()).unwrap_or_default(),
            cpus: r["cpus"].as_f64().unwrap_or(0.0),
            memory: r["memory_bytes"].as_u64().unwrap_or(0),
            slots: r["slots"]
                .as_u64()
                .and_then(|s| u32::try_from(s).ok())
                .unwrap_or(0),
            gpus: serde_json::from_value(w.gpus.clone()).unwrap_or_default(),
            unhealthy: BTreeSet::new(),
            usage: Vec::new(),
            held: HashMap::new(),
            tx: None,
            // A restarted scheduler gives every worker a full timeout to reconnect.
            last_heartbeat: now,
        }
    }

    /// Whether new work may be placed here.
    pub fn accepts_work(&self) -> bool {
        self.state == WorkerState::Active && self.tx.is_some()
    }

    /// Totals and what is free now, for placement.
    pub fn capacity(&self) -> WorkerCapacity {
        let used_cpus: f64 = self.held.values().map(|h| h.cpus).sum();
        let used_mem: u64 = self.held.values().map(|h| h.memory).sum();
        let held_gpus: HashSet<u32> = self
            .held
            .values()
            .flat_map(|h| h.gpus.iter().copied())
            .collect();
        WorkerCapacity {
            id: self.id,
            name: self.name.clone(),
            queues: self.queues.clone(),
            total_cpus: self.cpus,
            free_cpus: (self.cpus - used_cpus).max(0.0),
            total_memory: self.memory,
            free_memory: self.memory.saturating_sub(used_mem),
            total_slots: self.slots,
            free_slots: self
                .slots
                .saturating_sub(u32::try_from(self.held.len()).unwrap_or(u32::MAX)),
            gpus: self
                .gpus
                .iter()
                .map(|g| GpuCapacity {
                    index: g.index,
                    model: g.model.clone(),
                    memory_bytes: g.memory_bytes,
                    healthy: g.healthy && !self.unhealthy.contains(&g.index),
                    free: !held_gpus.contains(&g.index),
                })
                .collect(),
        }
    }

    /// Sends a command if connected; a full or closed stream counts as disconnected.
    pub fn send(&mut self, cmd: WorkerCommand) -> bool {
        let Some(tx) = &self.tx else {
            return false;
        };
        match tx.try_send(cmd) {
            Ok(()) => true,
            Err(e) => {
                warn!(worker = %self.id, error = %e, "worker stream unusable; treating it as disconnected");
                self.tx = None;
                false
            }
        }
    }
}

fn new_worker_row(id: WorkerId, reg: &WorkerRegistration) -> NewWorker {
    NewWorker {
        id,
        name: reg.name.clone(),
        resources: json!({
            "cpus": reg.cpus,
            "memory_bytes": reg.memory_bytes,
            "slots": reg.slots,
            "queues": reg.queues,
        }),
        gpus: serde_json::to_value(&reg.gpus).unwrap_or_default(),
        labels: serde_json::to_value(&reg.labels).unwrap_or_default(),
    }
}

impl Core {
    fn lost_timeout(&self) -> chrono::Duration {
        chrono::Duration::from_std(self.opts.lost_worker_timeout).unwrap_or(chrono::Duration::MAX)
    }

    pub(super) fn arm_heartbeat(&mut self, worker: WorkerId, last: DateTime<Utc>) {
        let at = last + self.lost_timeout();
        self.timers.arm(at, TimerKind::Heartbeat { worker });
    }

    #[instrument(skip_all, fields(worker = %reg.name), err)]
    pub(super) async fn register_worker(&mut self, reg: WorkerRegistration) -> Result<WorkerId> {
        if reg.slots == 0 {
            return Err(EngineError::InvalidRequest(
                "a worker needs at least one slot".into(),
            ));
        }
        let id = reg.id.unwrap_or_default();
        let now = self.clock.now();
        self.store
            .register_worker(new_worker_row(id, &reg), now)
            .await?;
        match self.workers.get_mut(&id) {
            Some(w) => {
                // A re-registration keeps what it holds and its stream.
                let held = std::mem::take(&mut w.held);
                let tx = w.tx.take();
                *w = WorkerEntry::from_registration(id, reg, now);
                w.held = held;
                w.tx = tx;
            }
            None => {
                self.workers
                    .insert(id, WorkerEntry::from_registration(id, reg, now));
            }
        }
        self.arm_heartbeat(id, now);
        self.dirty = true;
        info!(%id, "worker registered");
        Ok(id)
    }

    #[instrument(skip(self, still_running), fields(reported = still_running.len()), err)]
    pub(super) async fn connect_worker(
        &mut self,
        worker: WorkerId,
        still_running: Vec<(TaskInstanceId, i32)>,
    ) -> Result<mpsc::Receiver<WorkerCommand>> {
        let (tx, rx) = mpsc::channel(WORKER_CHANNEL);
        let reported: HashSet<(TaskInstanceId, i32)> = still_running.iter().copied().collect();
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        if w.state == WorkerState::Lost {
            return Err(EngineError::InvalidRequest(format!(
                "worker {worker} was declared lost; register again before connecting"
            )));
        }
        w.tx = Some(tx);
        for &(ti, attempt) in &still_running {
            if !w.held.contains_key(&(ti, attempt)) {
                w.send(WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "this attempt is no longer assigned to this worker".into(),
                });
            }
        }
        // Attempts the engine thinks it holds but it does not report are gone
        // (the worker restarted, or the assignment was lost in transit).
        let missing: Vec<(TaskInstanceId, i32)> = w
            .held
            .keys()
            .filter(|k| !reported.contains(k))
            .copied()
            .collect();
        for (ti, attempt) in missing {
            self.release_hold(worker, ti, attempt);
            self.attempt_vanished(ti, attempt, "the worker reconnected without it")
                .await;
        }
        self.dirty = true;
        Ok(rx)
    }

    pub(super) async fn heartbeat(&mut self, worker: WorkerId, usage: Vec<GpuUsage>) -> Result<()> {
        let now = self.clock.now();
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        if w.state == WorkerState::Lost {
            return Err(EngineError::InvalidRequest(format!(
                "worker {worker} was declared lost; register again"
            )));
        }
        w.last_heartbeat = now;
        let unhealthy: BTreeSet<u32> = usage
            .iter()
            .filter(|u| !u.healthy)
            .map(|u| u.index)
            .collect();
        if unhealthy != w.unhealthy {
            w.unhealthy = unhealthy;
            self.dirty = true;
        }
        w.usage = usage;
        self.store.heartbeat_worker(worker, now).await?;
        Ok(())
    }

    /// The heartbeat timer fired: declare the worker lost or look again later.
    pub(super) async fn heartbeat_check(&mut self, worker: WorkerId) {
        let now = self.clock.now();
        let timeout = self.lost_timeout();
        let Some(w) = self.workers.get(&worker) else {
            return;
        };
        if matches!(w.state, WorkerState::Lost | WorkerState::Offline) {
            return;
        }
        let deadline = w.last_heartbeat + timeout;
        if deadline > now {
            self.timers.arm(deadline, TimerKind::Heartbeat { worker });
            return;
        }
        self.declare_lost(worker, "no heartbeat within the lost-worker timeout")
            .await;
    }

    /// Marks the worker lost (store first), kills what it held and retries it elsewhere.
    #[instrument(skip(self))]
    pub(super) async fn declare_lost(&mut self, worker: WorkerId, reason: &str) {
        let now = self.clock.now();
        let lost = match self.store.mark_worker_lost(worker, reason, now).await {
            Ok(lost) => lost,
            Err(e) => {
                self.log_store_error("mark_worker_lost", &e);
                // Look again after another timeout rather than spin.
                self.arm_heartbeat(worker, now);
                return;
            }
        };
        warn!(%worker, attempts = lost.len(), reason, "worker lost");
        if let Some(w) = self.workers.get_mut(&worker) {
            w.state = WorkerState::Lost;
            let held: Vec<(TaskInstanceId, i32)> = w.held.keys().copied().collect();
            for (ti, attempt) in held {
                w.send(WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "the worker was declared lost; the task is retried elsewhere".into(),
                });
            }
            w.held.clear();
        }
        self.dirty = true;
        for h in lost {
            if let Some((run_id, idx)) = self.locate(h.task_instance_id) {
                let node = &self.runs[&run_id].tasks[idx];
                if node.attempt == h.attempt && node.state.holds_worker() {
                    self.set_task_state(run_id, idx, TaskState::Lost, h.attempt);
                    self.after_lost(run_id, idx).await;
                }
            }
        }
    }

    pub(super) async fn worker_draining(&mut self, worker: WorkerId) -> Result<()> {
        let now = self.clock.now();
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        w.state = WorkerState::Draining;
        self.store
            .set_worker_state(worker, WorkerState::Draining, now)
            .await?;
        info!(%worker, "worker draining");
        Ok(())
    }

    pub(super) fn worker_disconnected(&mut self, worker: WorkerId) -> Result<()> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        w.tx = None;
        info!(%worker, held = w.held.len(), "worker disconnected; its tasks run on until the lost timeout");
        Ok(())
    }

    /// Frees what an attempt held; returns the hold if there was one.
    pub(super) fn release_hold(
        &mut self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
    ) -> Option<Hold> {
        let hold = self.workers.get_mut(&worker)?.held.remove(&(ti, attempt));
        if hold.is_some() {
            self.dirty = true;
        }
        hold
    }

    /// Sends a command to a worker if it is connected.
    pub(super) fn send_to(&mut self, worker: WorkerId, cmd: WorkerCommand) -> bool {
        self.workers.get_mut(&worker).is_some_and(|w| w.send(cmd))
    }
}
