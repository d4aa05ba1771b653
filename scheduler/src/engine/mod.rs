//! The scheduling engine: from a cron tick or a trigger to every task of the
//! run reaching a final state, event-driven.
//!
//! Shape (component style): [`EngineOptions`] → [`Engine::build`] (rebuilds the
//! in-memory state from the store) → [`Engine::run`] with a shutdown future,
//! plus a cloneable [`EngineHandle`] the gRPC and HTTP layers call.
//!
//! One task owns all state. Its inputs are handle commands (triggers, worker
//! reports…) and timers from one heap ([`timers`]); a completion makes
//! downstream tasks ready and dispatches them in the same turn, so there is no
//! polling interval anywhere. Every change is written to the store first (a
//! compare-and-set) and applied in memory only once the store accepted it;
//! the store stays the source of truth, which is what makes restarts safe.
//!
//! Module map: `handle` (API types and the handle), `state` (active runs),
//! `readiness` (trigger rules), `placement` (best-fit, pure), `timers`,
//! `cron_slots` (which slots are due), `workers` (the worker registry),
//! `runs` (creating, starting, finishing runs; cron; triggers), `progress`
//! (task results, propagation, retries, timeouts, cancel, clear), `dispatch`
//! (ready tasks onto workers) and `recovery` (rebuild on start-up).

mod cron_slots;
mod dispatch;
mod handle;
pub mod placement;
mod progress;
pub mod readiness;
mod recovery;
mod runs;
mod state;
mod timers;
mod workers;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, instrument, warn};
use trainyard_core::dag::DagSpec;
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::TaskState;

pub use handle::{
    Assignment, EngineEvent, EngineHandle, EngineInbox, GpuInventory, GpuUsage, TaskOutcome,
    TaskResult, WaitReasons, WorkerCommand, WorkerRegistration,
};

pub(crate) use runs::{manual_params, new_run};

use crate::clock::Clock;
use crate::store::{Store, StoreError};
use handle::Command;
use state::{ActiveRun, DagEntry};
use timers::Timers;
use workers::WorkerEntry;

/// Result alias for engine calls.
pub type Result<T, E = EngineError> = std::result::Result<T, E>;

/// What an engine call can fail with. Client mistakes (`InvalidParams`,
/// `NotFound`…) are kept apart from `Store` trouble so the transports can map
/// them to 4xx / `INVALID_ARGUMENT` and 5xx / `UNAVAILABLE`.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine has stopped")]
    Stopped,
    #[error("DAG `{0}` not found")]
    DagNotFound(DagId),
    #[error("DAG `{0}` is not active (its file was deleted or never parsed)")]
    DagInactive(DagId),
    #[error("DAG `{0}` has no schedule, so it has no slots to backfill")]
    NoSchedule(DagId),
    #[error("invalid params for DAG `{dag}`: {message}")]
    InvalidParams { dag: DagId, message: String },
    #[error("run {0} not found")]
    RunNotFound(RunId),
    #[error("run {run} has no task `{task}`")]
    TaskNotFound { run: RunId, task: TaskId },
    #[error("worker {0} is not registered")]
    WorkerNotFound(WorkerId),
    /// A report about an attempt that is no longer current; nothing changed.
    #[error("task instance {ti} attempt {attempt} is no longer current on this worker")]
    Fenced { ti: TaskInstanceId, attempt: i32 },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("DAG version {version} has an unreadable spec: {message}")]
    BadSpec {
        version: DagVersionId,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl EngineError {
    /// A caller mistake (bad params, unknown ids, stale report) rather than server trouble.
    pub fn is_client_error(&self) -> bool {
        !matches!(self, Self::Stopped | Self::Store(_) | Self::BadSpec { .. })
    }
}

/// Everything the engine needs; [`EngineOptions::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// Most missed cron slots created per DAG when catchup is on (the latest ones).
    pub catchup_limit: usize,
    /// A worker silent this long is lost; its attempts are retried elsewhere.
    pub lost_worker_timeout: Duration,
    /// How often workers are asked to heartbeat (served to them at registration).
    pub heartbeat_interval: Duration,
    /// Slack after a task's timeout before the engine fails the attempt itself
    /// (the worker enforces the timeout; this is the backstop).
    pub timeout_grace: Duration,
    /// Slot counts of named pools; a pool not listed (including `default`) is unbounded.
    pub pools: BTreeMap<String, u32>,
    /// Actor name written to the event log.
    pub actor: String,
    /// Capacity of the command channel (back-pressure on callers).
    pub command_buffer: usize,
}

impl EngineOptions {
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>) -> Self {
        Self {
            store,
            clock,
            catchup_limit: 100,
            lost_worker_timeout: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(10),
            timeout_grace: Duration::from_secs(30),
            pools: BTreeMap::new(),
            actor: "scheduler".to_owned(),
            command_buffer: 4096,
        }
    }
}

/// The engine: owns the state; drive it with [`Engine::run`].
#[derive(Debug)]
pub struct Engine {
    core: Core,
    /// Commands from every handle.
    rx: mpsc::Receiver<Command>,
    /// Cleared when the engine stops, so waiting callers get `Stopped`.
    serving: tokio::sync::watch::Sender<bool>,
}

/// The state the engine's task owns; all handlers are methods on it.
#[derive(Debug)]
pub(crate) struct Core {
    opts: EngineOptions,
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    /// Every known DAG by id (current version's spec, cron cursor).
    dags: HashMap<DagId, DagEntry>,
    /// Parsed specs by version, shared by the runs pinned to them.
    versions: HashMap<DagVersionId, Arc<DagSpec>>,
    /// Runs in queued/running state (and runs being cleared).
    runs: HashMap<RunId, ActiveRun>,
    /// Task instance → (run, index in the run's tasks).
    ti_index: HashMap<TaskInstanceId, (RunId, usize)>,
    /// Ready tasks in dispatch order: (-priority, FIFO sequence, id).
    ready: BTreeSet<(i32, u64, TaskInstanceId)>,
    ready_seq: u64,
    /// Attempts assigned or running, per DAG (max_active_tasks) and per pool.
    active_by_dag: HashMap<DagId, u32>,
    active_by_pool: HashMap<String, u32>,
    workers: HashMap<WorkerId, WorkerEntry>,
    timers: Timers,
    events: broadcast::Sender<EngineEvent>,
    /// Something may be dispatchable (a task became ready, capacity freed).
    dirty: bool,
    /// Some queued run may be able to start.
    start_pending: bool,
}

impl Engine {
    /// Opens the engine on the store and rebuilds its state from it (active
    /// runs, their task instances, workers, DAGs and cron cursors).
    #[instrument(skip_all, err)]
    pub async fn build(opts: EngineOptions) -> Result<(Engine, EngineHandle)> {
        let (handle, inbox) = EngineHandle::detached(opts.command_buffer);
        let engine = Self::build_on(opts, inbox).await.map_err(|(e, _)| e)?;
        Ok((engine, handle))
    }

    /// Like [`Engine::build`], on the inbox of an existing handle (HA: each
    /// leadership term builds a fresh engine from the store on the same
    /// handle). On failure the inbox comes back for the next attempt.
    #[instrument(skip_all, err(Debug))]
    pub async fn build_on(
        opts: EngineOptions,
        inbox: EngineInbox,
    ) -> std::result::Result<Engine, (EngineError, EngineInbox)> {
        let mut inbox = inbox;
        inbox.open();
        let EngineInbox {
            rx,
            events,
            serving,
        } = inbox;
        let mut core = Core {
            store: opts.store.clone(),
            clock: opts.clock.clone(),
            opts,
            dags: HashMap::new(),
            versions: HashMap::new(),
            runs: HashMap::new(),
            ti_index: HashMap::new(),
            ready: BTreeSet::new(),
            ready_seq: 0,
            active_by_dag: HashMap::new(),
            active_by_pool: HashMap::new(),
            workers: HashMap::new(),
            timers: Timers::default(),
            events: events.clone(),
            dirty: true,
            start_pending: true,
        };
        if let Err(e) = core.rebuild().await {
            let inbox = EngineInbox {
                rx,
                events,
                serving,
            };
            inbox.close();
            return Err((e, inbox));
        }
        Ok(Engine { core, rx, serving })
    }

    /// Runs until `shutdown` completes. Due cron slots, queued runs and ready
    /// tasks found at start-up are handled first.
    #[instrument(skip_all, err)]
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<()> {
        self.run_keeping_inbox(shutdown).await.0
    }

    /// Like [`Engine::run`], and hands back the inbox so a later engine can
    /// serve the same handle. Commands not yet taken stay in it.
    pub async fn run_keeping_inbox(
        mut self,
        shutdown: impl Future<Output = ()>,
    ) -> (Result<()>, EngineInbox) {
        tokio::pin!(shutdown);
        self.core.startup().await;
        let mut open = true;
        loop {
            let sleep = match self.core.timers.next_deadline() {
                Some(t) => self.core.clock.sleep_until(t),
                None => Box::pin(futures::future::pending()),
            };
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                cmd = self.rx.recv(), if open => match cmd {
                    Some(cmd) => {
                        self.core.handle(cmd).await;
                        // Take what else is waiting before settling once.
                        for _ in 0..256 {
                            match self.rx.try_recv() {
                                Ok(cmd) => self.core.handle(cmd).await,
                                Err(_) => break,
                            }
                        }
                    }
                    None => open = false,
                },
                () = sleep => self.core.on_timers().await,
            }
            self.core.settle().await;
        }
        info!("engine stopped");
        let inbox = EngineInbox {
            rx: self.rx,
            events: self.core.events,
            serving: self.serving,
        };
        inbox.close();
        (Ok(()), inbox)
    }
}

impl Core {
    fn actor(&self) -> &str {
        &self.opts.actor
    }

    fn emit(&self, event: EngineEvent) {
        // No subscriber is fine: events are for tests and the UI.
        let _ = self.events.send(event);
    }

    /// Starts queued runs and dispatches ready tasks if anything changed.
    async fn settle(&mut self) {
        if std::mem::take(&mut self.start_pending) {
            self.start_queued_runs().await;
        }
        if std::mem::take(&mut self.dirty) {
            self.dispatch().await;
        }
    }

    /// First turn after build: cron, queued runs, pending tasks whose
    /// upstreams settled while no scheduler ran, then dispatch.
    async fn startup(&mut self) {
        let ids: Vec<DagId> = self.dags.keys().cloned().collect();
        for id in ids {
            self.schedule_dag(&id).await;
        }
        self.resume_after_restart().await;
        self.settle().await;
    }

    #[instrument(skip_all, fields(cmd = tracing::field::Empty))]
    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::DagChanged(id, reply) => {
                let r = self.dag_changed(&id).await;
                let _ = reply.send(r);
            }
            Command::Pause(id, reply) => {
                let r = self.set_paused(&id, true).await;
                let _ = reply.send(r);
            }
            Command::Resume(id, reply) => {
                let r = self.set_paused(&id, false).await;
                let _ = reply.send(r);
            }
            Command::Trigger {
                dag_id,
                params,
                idempotency_key,
                logical_date,
                reply,
            } => {
                let r = self
                    .trigger(&dag_id, params, idempotency_key, logical_date)
                    .await;
                let _ = reply.send(r);
            }
            Command::Backfill {
                dag_id,
                from,
                to,
                reply,
            } => {
                let r = self.backfill(&dag_id, from, to).await;
                let _ = reply.send(r);
            }
            Command::CancelRun(run, reply) => {
                let r = self.cancel_run(run, "cancelled by request").await;
                let _ = reply.send(r);
            }
            Command::CancelTask(run, task, reply) => {
                let r = self.cancel_task(run, &task).await;
                let _ = reply.send(r);
            }
            Command::ClearTask {
                run_id,
                task_id,
                downstream,
                reply,
            } => {
                let r = self.clear_task(run_id, &task_id, downstream).await;
                let _ = reply.send(r);
            }
            Command::RegisterWorker(reg, reply) => {
                let r = self.register_worker(reg).await;
                let _ = reply.send(r);
            }
            Command::ConnectWorker {
                worker,
                still_running,
                reply,
            } => {
                let r = self.connect_worker(worker, still_running).await;
                let _ = reply.send(r);
            }
            Command::Heartbeat(worker, usage, reply) => {
                let r = self.heartbeat(worker, usage).await;
                let _ = reply.send(r);
            }
            Command::TaskStarted(worker, ti, attempt, reply) => {
                let r = self.task_started(worker, ti, attempt).await;
                let _ = reply.send(r);
            }
            Command::TaskFinished(worker, ti, attempt, result, reply) => {
                let r = self.task_finished(worker, ti, attempt, result).await;
                let _ = reply.send(r);
            }
            Command::WorkerDraining(worker, reply) => {
                let r = self.worker_draining(worker).await;
                let _ = reply.send(r);
            }
            Command::WorkerDisconnected(worker, reply) => {
                let r = self.worker_disconnected(worker);
                let _ = reply.send(r);
            }
            Command::WaitReasons(run, reply) => {
                let _ = reply.send(self.wait_reasons(run));
            }
            Command::GpuUsage(reply) => {
                let usage = self
                    .workers
                    .iter()
                    .map(|(id, w)| (*id, w.usage.clone()))
                    .collect();
                let _ = reply.send(Ok(usage));
            }
            Command::RunCreatedElsewhere(run, reply) => {
                let r = self.adopt_run(run).await;
                let _ = reply.send(r);
            }
            Command::AdoptActiveRuns(reply) => {
                let r = self.adopt_active_runs().await;
                let _ = reply.send(r);
            }
        }
    }

    /// Fires every due timer.
    #[instrument(skip_all)]
    async fn on_timers(&mut self) {
        let now = self.clock.now();
        for timer in self.timers.pop_due(now) {
            debug!(?timer, "timer fired");
            match timer {
                timers::TimerKind::Cron { dag_id, generation } => {
                    if self
                        .dags
                        .get(&dag_id)
                        .is_some_and(|d| d.generation == generation)
                    {
                        self.schedule_dag(&dag_id).await;
                    }
                }
                timers::TimerKind::Retry { ti, attempt } => self.retry_due(ti, attempt).await,
                timers::TimerKind::Timeout { ti, attempt } => {
                    self.attempt_overdue(ti, attempt).await
                }
                timers::TimerKind::Heartbeat { worker } => self.heartbeat_check(worker).await,
            }
        }
    }

    /// Applies a task state the store has accepted to memory: counters, the
    /// ready queue, the event. Every in-memory task change goes through here.
    fn set_task_state(&mut self, run_id: RunId, idx: usize, to: TaskState, attempt: i32) {
        let Some(run) = self.runs.get_mut(&run_id) else {
            return;
        };
        let dag_id = run.run.dag_id.clone();
        let node = &mut run.tasks[idx];
        let from = node.state;
        if from == TaskState::Ready {
            self.ready
                .remove(&(-node.priority, node.ready_seq, node.ti));
        }
        if to == TaskState::Ready {
            self.ready_seq += 1;
            node.ready_seq = self.ready_seq;
            self.ready.insert((-node.priority, node.ready_seq, node.ti));
            self.dirty = true;
        }
        if from.holds_worker() != to.holds_worker() {
            let pool = node.pool.clone();
            let (by_dag, by_pool) = (
                self.active_by_dag.entry(dag_id).or_default(),
                self.active_by_pool.entry(pool).or_default(),
            );
            if to.holds_worker() {
                *by_dag += 1;
                *by_pool += 1;
            } else {
                *by_dag = by_dag.saturating_sub(1);
                *by_pool = by_pool.saturating_sub(1);
                self.dirty = true;
            }
        }
        if !to.holds_worker() {
            node.worker = None;
            node.deadline = None;
        }
        if !matches!(to, TaskState::Ready | TaskState::Pending) {
            node.wait_reason = None;
        }
        node.state = to;
        node.attempt = attempt;
        let event = EngineEvent::TaskState {
            run_id,
            ti: node.ti,
            task_id: node.task_id.clone(),
            state: to,
            attempt,
        };
        self.emit(event);
    }

    /// Where a task instance lives in memory.
    fn locate(&self, ti: TaskInstanceId) -> Option<(RunId, usize)> {
        self.ti_index.get(&ti).copied()
    }

    /// Loads (and caches) the spec of a DAG version.
    async fn spec_of(&mut self, version: DagVersionId) -> Result<Arc<DagSpec>> {
        if let Some(spec) = self.versions.get(&version) {
            return Ok(spec.clone());
        }
        let row = self.store.get_dag_version(version).await?;
        let spec: DagSpec = serde_json::from_value(row.spec).map_err(|e| EngineError::BadSpec {
            version,
            message: e.to_string(),
        })?;
        let spec = Arc::new(spec);
        self.versions.insert(version, spec.clone());
        Ok(spec)
    }

    fn log_store_error(&self, what: &str, e: &StoreError) {
        warn!(error = %e, what, "store call failed");
    }
}
