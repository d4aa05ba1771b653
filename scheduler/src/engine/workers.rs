//! The worker registry: what each worker offers, what it holds, its command
//! stream and its liveness (heartbeats, lost-worker timeout, reconnects).
//!
//! Resources follow what a worker actually holds: a hold is taken when an
//! attempt is assigned and released only when the worker reports the attempt
//! ended or shows it is gone, or the engine's timeout backstop gives up on
//! it. A cancelled attempt therefore keeps its GPUs until the process is
//! really gone, so two tasks never share a GPU.
//!
//! A lost worker's attempts are retried elsewhere at once, but their holds
//! stay on that worker, marked [`Hold::lost`]: its processes may still run
//! (a partitioned or frozen worker) until the worker's own fence or a
//! restart's clean-up kills them. The worker (same id, kept across restarts)
//! gets those GPUs back only when it connects again and its `Hello` no longer
//! lists the attempt, or it reports the attempt's end; a restarted worker
//! kills what its predecessor left before it registers, so its first `Hello`
//! is that confirmation.

use std::collections::{BTreeSet, HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{info, instrument, warn};
use trainyard_core::ids::{RunId, TaskInstanceId, WorkerId};
use trainyard_core::state::{TaskState, WorkerState};

use super::placement::{GpuCapacity, WorkerCapacity};
use super::timers::TimerKind;
use super::{
    Core, EngineError, GpuInventory, GpuUsage, Result, WorkerCommand, WorkerLink,
    WorkerRegistration,
};
use crate::store::{NewWorker, Worker, Write};

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
    /// The worker was declared lost while the attempt ran: the attempt is
    /// over for the engine (retried elsewhere), but its processes may live
    /// on that machine until the worker confirms they are gone.
    pub lost: bool,
}

/// One registered worker.
#[derive(Debug, Clone)]
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
    /// The heartbeat time last written to the store (liveness itself lives
    /// in memory; the row is refreshed every `lost_worker_timeout / 3`).
    pub heartbeat_persisted: DateTime<Utc>,
    /// SHA-256 (hex) of the session credential bound to this id; `None` for
    /// workers registered in-process or before credentials existed.
    pub credential: Option<String>,
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
            heartbeat_persisted: now,
            credential: None,
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
            heartbeat_persisted: w.last_heartbeat_at,
            credential: w.credential_sha256.clone(),
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

fn new_worker_row(id: WorkerId, reg: &WorkerRegistration, credential: Option<&str>) -> NewWorker {
    NewWorker {
        credential_sha256: credential.map(str::to_owned),
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
    pub(super) fn register_worker(&mut self, reg: WorkerRegistration) -> Result<WorkerId> {
        if reg.slots == 0 {
            return Err(EngineError::InvalidRequest(
                "a worker needs at least one slot".into(),
            ));
        }
        let id = reg.id.unwrap_or_default();
        let now = self.clock.now();
        let bound = self.workers.get(&id).and_then(|w| w.credential.clone());
        let credential = match (&bound, &reg.credential) {
            // A known id with a credential: only its holder registers it again.
            (Some(bound), claim) => {
                if claim.as_ref().and_then(|c| c.presented.as_ref()) != Some(bound) {
                    warn!(%id, name = %reg.name, "registration refused: wrong session credential for a known worker id");
                    return Err(EngineError::WorkerCredential(id));
                }
                Some(bound.clone())
            }
            (None, Some(claim)) => Some(claim.presented.clone().unwrap_or(claim.issued.clone())),
            (None, None) => None,
        };
        self.write(Write::RegisterWorker(new_worker_row(
            id,
            &reg,
            credential.as_deref(),
        )));
        match self.workers.get_mut(&id) {
            Some(w) => {
                // A re-registration keeps what it holds and its stream.
                let held = std::mem::take(&mut w.held);
                let tx = w.tx.take();
                *w = WorkerEntry::from_registration(id, reg, now);
                w.held = held;
                w.tx = tx;
                w.credential = credential;
            }
            None => {
                let mut entry = WorkerEntry::from_registration(id, reg, now);
                entry.credential = credential;
                self.workers.insert(id, entry);
            }
        }
        self.arm_heartbeat(id, now);
        self.dirty = true;
        info!(%id, "worker registered");
        Ok(id)
    }

    /// Whether `credential` (a digest) is the one bound to `worker`.
    pub(super) fn authenticate_worker(
        &self,
        worker: WorkerId,
        credential: Option<&str>,
    ) -> Result<()> {
        let w = self
            .workers
            .get(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        match &w.credential {
            Some(bound) if Some(bound.as_str()) != credential => {
                warn!(%worker, "stream refused: wrong session credential for a known worker id");
                Err(EngineError::WorkerCredential(worker))
            }
            _ => Ok(()),
        }
    }

    #[instrument(skip(self, still_running), fields(reported = still_running.len()), err)]
    pub(super) async fn connect_worker(
        &mut self,
        worker: WorkerId,
        still_running: Vec<(TaskInstanceId, i32)>,
    ) -> Result<WorkerLink> {
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
        let runs_here = |k: &(TaskInstanceId, i32)| w.held.get(k).is_some_and(|h| !h.lost);
        // Reported but not (or no longer) this worker's to run: killed. A
        // lost attempt's hold stays until its end is reported.
        let foreign: Vec<(TaskInstanceId, i32)> = still_running
            .iter()
            .filter(|k| !runs_here(k))
            .copied()
            .collect();
        let kept: Vec<(TaskInstanceId, i32)> = still_running
            .iter()
            .filter(|k| runs_here(k))
            .copied()
            .collect();
        // Lost attempts it no longer reports are confirmed gone: their GPUs
        // are free again.
        let confirmed_gone: Vec<(TaskInstanceId, i32)> = w
            .held
            .iter()
            .filter(|(k, h)| h.lost && !reported.contains(k))
            .map(|(k, _)| *k)
            .collect();
        // Attempts the engine thinks it runs but it does not report are gone
        // (the worker restarted, or the assignment was lost in transit).
        let missing: Vec<(TaskInstanceId, i32)> = w
            .held
            .iter()
            .filter(|(k, h)| !h.lost && !reported.contains(k))
            .map(|(k, _)| *k)
            .collect();
        if !confirmed_gone.is_empty() {
            info!(%worker, attempts = confirmed_gone.len(), "the worker confirmed its lost attempts are gone; their GPUs are free again");
        }
        for (ti, attempt) in confirmed_gone {
            self.release_hold(worker, ti, attempt);
        }
        for (ti, attempt) in foreign {
            self.send_to(
                worker,
                WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "this attempt is no longer assigned to this worker".into(),
                },
            );
        }
        let held = kept
            .into_iter()
            .filter_map(|(ti, attempt)| {
                let (run, index) = self.locate(ti)?;
                let task = self.runs.get(&run)?.tasks.get(index)?.task_id.clone();
                Some(((ti, attempt), (run, task)))
            })
            .collect();
        for (ti, attempt) in missing {
            self.release_hold(worker, ti, attempt);
            self.attempt_vanished(ti, attempt, "the worker reconnected without it")
                .await;
        }
        self.dirty = true;
        Ok(WorkerLink { commands: rx, held })
    }

    /// Liveness in memory; the store's `last_heartbeat_at` is refreshed in
    /// the turn's batch at most every `lost_worker_timeout / 3`.
    pub(super) fn heartbeat(&mut self, worker: WorkerId, usage: Vec<GpuUsage>) -> Result<()> {
        let now = self.clock.now();
        let every = self.lost_timeout() / 3;
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
        if now - w.heartbeat_persisted >= every {
            w.heartbeat_persisted = now;
            self.write(Write::Heartbeat { id: worker });
        }
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

    /// Marks the worker lost, kills what it held and retries it elsewhere.
    /// The attempts lost are the ones memory holds on it (the engine is the
    /// only writer); the store marks the same ones in the turn's batch.
    #[instrument(skip(self))]
    pub(super) async fn declare_lost(&mut self, worker: WorkerId, reason: &str) {
        self.write(Write::WorkerLost {
            id: worker,
            reason: reason.to_owned(),
        });
        let held: Option<Vec<(TaskInstanceId, i32)>> = self.workers.get_mut(&worker).map(|w| {
            w.state = WorkerState::Lost;
            let held = w
                .held
                .iter()
                .filter(|(_, h)| !h.lost)
                .map(|(k, _)| *k)
                .collect();
            // Kept (not freed) until the worker confirms the processes are
            // gone: see the module docs.
            for hold in w.held.values_mut() {
                hold.lost = true;
            }
            held
        });
        for &(ti, attempt) in held.iter().flatten() {
            self.send_to(
                worker,
                WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "the worker was declared lost; the task is retried elsewhere".into(),
                },
            );
        }
        self.dirty = true;
        // The attempts it held; for a worker memory does not know (start-up
        // found attempts of an unregistered worker), every attempt placed on it.
        let on_worker = |c: &Core, run_id: RunId, idx: usize| {
            let n = &c.runs[&run_id].tasks[idx];
            n.worker == Some(worker) && n.state.holds_worker()
        };
        let lost: Vec<(RunId, usize)> = match &held {
            Some(held) => held
                .iter()
                .filter_map(|(ti, attempt)| {
                    let (run_id, idx) = self.locate(*ti)?;
                    (self.runs[&run_id].tasks[idx].attempt == *attempt).then_some((run_id, idx))
                })
                .filter(|&(r, i)| on_worker(self, r, i))
                .collect(),
            None => self
                .runs
                .iter()
                .flat_map(|(run_id, run)| (0..run.tasks.len()).map(move |i| (*run_id, i)))
                .filter(|&(r, i)| on_worker(self, r, i))
                .collect(),
        };
        warn!(%worker, attempts = lost.len(), reason, "worker lost");
        for (run_id, idx) in lost {
            let attempt = self.runs[&run_id].tasks[idx].attempt;
            self.set_task_state(run_id, idx, TaskState::Lost, attempt);
            self.after_lost(run_id, idx).await;
        }
    }

    pub(super) fn worker_draining(&mut self, worker: WorkerId) -> Result<()> {
        let w = self
            .workers
            .get_mut(&worker)
            .ok_or(EngineError::WorkerNotFound(worker))?;
        w.state = WorkerState::Draining;
        self.write(Write::WorkerState {
            id: worker,
            state: WorkerState::Draining,
        });
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
}
