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
//! polling interval anywhere.
//!
//! The engine works in turns ([`turn`]): it takes the commands waiting (up to
//! [`TURN_CAP`]) and the timers due, decides everything in memory — attempt
//! ends, metrics, lineage, downstream decisions, run ends, assignments —
//! while collecting the writes in one [`crate::store::WriteBatch`], commits
//! that batch in one transaction, and only then answers callers, sends
//! worker messages and publishes events. When the transaction fails, memory
//! goes back to its snapshot from the turn's start (`memory.rs`) and the
//! turn's work is tried again on a back-off; nothing waits for a restart.
//! When the database refuses one command's writes for good (a constraint,
//! a value it rejects), retrying the whole turn would stall everything
//! behind it: the turn is isolated instead (`isolate`), its work committed
//! one command at a time, the refused command answered with
//! [`EngineError::Refused`] and its task recorded failed or held.
//! The store stays the source of truth, which is what makes restarts safe.
//!
//! Module map: `handle` (API types and the handle), `turn` (plan, commit
//! once, apply; healing), `isolate` (poison turns), `memory` (snapshots, the published view),
//! `state` (active runs),
//! `readiness` (trigger rules), `placement` (best-fit, pure), `timers`,
//! `cron_slots` (which slots are due), `workers` (the worker registry),
//! `runs` (creating, starting, finishing runs; cron; triggers), `progress`
//! (task results, propagation, retries, timeouts, cancel, clear), `dispatch`
//! (ready tasks onto workers) and `recovery` (rebuild on start-up).

mod cron_slots;
mod dispatch;
mod handle;
mod isolate;
mod memory;
pub mod placement;
mod progress;
pub mod readiness;
mod recovery;
mod runs;
mod state;
mod timers;
mod turn;
mod workers;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, instrument, warn};
use trainyard_core::dag::DagSpec;
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{RunState, TaskState};

pub use handle::{
    Assignment, CredentialClaim, Ended, EngineEvent, EngineHandle, EngineInbox, GpuInventory,
    GpuUsage, TaskLineage, TaskOutcome, TaskResult, UpstreamAttempt, WaitReasons, WorkerCommand,
    WorkerLink, WorkerRegistration,
};
pub use memory::StoreHealth;

pub(crate) use runs::{checked_logical_date, manual_params, new_run};

use crate::clock::Clock;
use crate::store::{EngineStore, StoreError};
use handle::Command;
use memory::Published;
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
    /// A command for a run that has ended (cancel a finished run).
    #[error(
        "run {run} is already {state}, so there is nothing to {action}; \
         clear one of its tasks to run it again"
    )]
    RunFinished {
        run: RunId,
        state: RunState,
        action: &'static str,
    },
    /// A command for a task that has ended (cancel a finished task).
    #[error(
        "task `{task}` of run {run} is already {state}, so there is nothing to {action}; \
         clear it to run it again"
    )]
    TaskFinished {
        run: RunId,
        task: TaskId,
        state: TaskState,
        action: &'static str,
    },
    #[error("worker {0} is not registered")]
    WorkerNotFound(WorkerId),
    #[error(
        "worker id {0} belongs to another worker: the session credential presented does not \
         match the one issued with this id (start this worker with a fresh work dir or \
         another --name so it registers as a new worker)"
    )]
    WorkerCredential(WorkerId),
    /// A report about an attempt that is no longer current; nothing changed.
    #[error("task instance {ti} attempt {attempt} is no longer current on this worker")]
    Fenced { ti: TaskInstanceId, attempt: i32 },
    /// A finish report for an attempt whose end is already recorded (the
    /// worker re-sent it after a reconnect); nothing changed, nothing is wrong.
    #[error("the end of task instance {ti} attempt {attempt} is already recorded")]
    AlreadyRecorded { ti: TaskInstanceId, attempt: i32 },
    #[error("{0}")]
    InvalidRequest(String),
    /// A malformed request value (e.g. a logical date outside years 1–9999).
    #[error("{0}")]
    BadInput(String),
    #[error("DAG version {version} has an unreadable spec: {message}")]
    BadSpec {
        version: DagVersionId,
        message: String,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The database refuses this command's writes for good (a constraint,
    /// a value it rejects): the engine isolated it from its turn, the rest
    /// went on. The message names the run, task and the database's reason.
    #[error("{0}")]
    Refused(String),
}

impl trainyard_core::error::Classify for EngineError {
    fn kind(&self) -> trainyard_core::error::ErrorKind {
        use trainyard_core::error::ErrorKind;
        match self {
            Self::Stopped => ErrorKind::Unavailable,
            Self::DagNotFound(_)
            | Self::RunNotFound(_)
            | Self::TaskNotFound { .. }
            | Self::WorkerNotFound(_) => ErrorKind::NotFound,
            Self::InvalidParams { .. } | Self::BadInput(_) => ErrorKind::Invalid,
            Self::WorkerCredential(_) => ErrorKind::Unauthenticated,
            // A report for an attempt that is no longer current: someone
            // (a retry, a timeout, a lost-worker decision) moved it first.
            Self::Fenced { .. } | Self::AlreadyRecorded { .. } => ErrorKind::Conflict,
            // E.g. "declared lost; register again", an inactive DAG: the
            // request is well formed, the state does not allow it.
            Self::InvalidRequest(_)
            | Self::DagInactive(_)
            | Self::NoSchedule(_)
            | Self::RunFinished { .. }
            | Self::TaskFinished { .. } => ErrorKind::FailedPrecondition,
            // Repeating the request cannot help: the database refuses what
            // it leads to. Not a stream-ending server error either, so a
            // worker does not resend the same report forever.
            Self::Refused(_) => ErrorKind::FailedPrecondition,
            Self::BadSpec { .. } => ErrorKind::Internal,
            Self::Store(e) => e.kind(),
        }
    }

    fn public_message(&self) -> String {
        match self {
            Self::Store(e) => e.public_message(),
            other => other.to_string(),
        }
    }
}

impl EngineError {
    /// A caller mistake (bad params, unknown ids, stale report) rather than server trouble.
    pub fn is_client_error(&self) -> bool {
        trainyard_core::error::Classify::kind(self).is_client_error()
    }
}

/// Everything the engine needs; [`EngineOptions::new`] fills in defaults.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub store: Arc<dyn EngineStore>,
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
    /// First back-off after a failed turn; doubles up to `heal_max_backoff`.
    pub heal_backoff: Duration,
    pub heal_max_backoff: Duration,
    /// How long "attempt started" writes may wait for a turn that commits
    /// anyway (an attempt's end commits them first, in order); a start
    /// alone costs no transaction of its own before this.
    pub start_flush_delay: Duration,
}

impl EngineOptions {
    pub fn new(store: Arc<dyn EngineStore>, clock: Arc<dyn Clock>) -> Self {
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
            heal_backoff: Duration::from_millis(20),
            heal_max_backoff: Duration::from_secs(2),
            start_flush_delay: Duration::from_millis(100),
        }
    }
}

/// Most commands one turn takes from the channel before it commits.
pub const TURN_CAP: usize = 512;

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
    store: Arc<dyn EngineStore>,
    clock: Arc<dyn Clock>,
    /// Parsed specs by version, shared by the runs pinned to them.
    versions: HashMap<DagVersionId, Arc<DagSpec>>,
    // The fields from here to `start_pending` are the engine's memory: a
    // turn snapshots them (O(1), persistent collections) and puts them back
    // when its transaction fails. See `memory.rs`.
    /// Every known DAG by id (current version's spec, cron cursor).
    dags: imbl::HashMap<DagId, DagEntry>,
    /// Runs in queued/running state (and runs being cleared).
    runs: imbl::HashMap<RunId, ActiveRun>,
    /// Task instance → (run, index in the run's tasks).
    ti_index: imbl::HashMap<TaskInstanceId, (RunId, usize)>,
    /// Ready tasks in dispatch order: (-priority, FIFO sequence, id).
    ready: imbl::OrdSet<(i32, u64, TaskInstanceId)>,
    ready_seq: u64,
    /// Attempts assigned or running, per DAG (max_active_tasks) and per pool.
    active_by_dag: imbl::HashMap<DagId, u32>,
    active_by_pool: imbl::HashMap<String, u32>,
    workers: imbl::HashMap<WorkerId, WorkerEntry>,
    /// Something may be dispatchable (a task became ready, capacity freed).
    dirty: bool,
    /// Some queued run may be able to start.
    start_pending: bool,
    // End of the snapshotted memory.
    timers: Timers,
    events: broadcast::Sender<EngineEvent>,
    /// The turn in progress: its writes, and what it sends once they commit.
    turn: turn::Turn,
    /// Writes that need not commit on their own (attempt starts): prepended
    /// to the next batch, or committed alone once `start_flush_delay` passed.
    deferred: crate::store::WriteBatch,
    deferred_since: Option<tokio::time::Instant>,
    /// Commands of failed turns, tried again (in order) when healing fires.
    backlog: VecDeque<Command>,
    /// Failed turns in a row, and when the next try is due.
    healing: turn::Healing,
    /// Runs to re-read from the store before the next turn (after a conflict).
    resync: std::collections::BTreeSet<RunId>,
    /// Runs just re-read whose pending tasks the next turn decides again.
    redecide: Vec<RunId>,
    /// Attempts a re-read found assigned/running that memory never placed
    /// (their turn was rolled back after it committed): handed back or lost.
    orphaned: Vec<(RunId, TaskInstanceId, i32, TaskState)>,
    /// Assignments whose command could not be rendered: failed after dispatch.
    unrenderable: Vec<(WorkerId, TaskInstanceId, i32, String)>,
    /// Tasks (and run starts) whose writes the database refuses for good:
    /// not decided or dispatched on the engine's own (see `isolate.rs`).
    quarantine: isolate::Quarantine,
    /// Settling starts one run or places one task per commit (isolation).
    one_at_a_time: bool,
    /// What HTTP reads without a round trip through the command queue.
    published: Published,
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
            published,
        } = inbox;
        let mut core = Core {
            store: opts.store.clone(),
            clock: opts.clock.clone(),
            opts,
            dags: imbl::HashMap::new(),
            versions: HashMap::new(),
            runs: imbl::HashMap::new(),
            ti_index: imbl::HashMap::new(),
            ready: imbl::OrdSet::new(),
            ready_seq: 0,
            active_by_dag: imbl::HashMap::new(),
            active_by_pool: imbl::HashMap::new(),
            workers: imbl::HashMap::new(),
            dirty: true,
            start_pending: true,
            timers: Timers::default(),
            events: events.clone(),
            turn: turn::Turn::default(),
            deferred: Default::default(),
            deferred_since: None,
            backlog: VecDeque::new(),
            healing: turn::Healing::default(),
            resync: Default::default(),
            redecide: Vec::new(),
            unrenderable: Vec::new(),
            orphaned: Vec::new(),
            quarantine: Default::default(),
            one_at_a_time: false,
            published: published.clone(),
        };
        // The rebuild's own writes (workers whose attempts outlived them) are
        // the first turn: committed before the engine serves anyone.
        core.begin_turn();
        let rebuilt = match core.rebuild().await {
            Ok(()) => core.commit_rebuild().await,
            Err(e) => Err(e),
        };
        if let Err(e) = rebuilt {
            let inbox = EngineInbox {
                rx,
                events,
                serving,
                published,
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
            let heal = self.core.healing.sleep();
            let healing = self.core.healing.pending();
            let flush = self.core.deferred_flush_sleep();
            let flushing = self.core.deferred_since.is_some();
            tokio::select! {
                biased;
                () = &mut shutdown => break,
                () = heal, if healing => {
                    let mut cmds: Vec<Command> = self.core.backlog.drain(..).collect();
                    take_waiting(&mut self.rx, &mut cmds);
                    self.core.heal_turn(cmds).await;
                }
                // While a failed turn waits to be tried again, new commands
                // wait in the channel so they are handled after it, in order.
                cmd = self.rx.recv(), if open && !healing => match cmd {
                    Some(cmd) => {
                        let mut cmds = vec![cmd];
                        take_waiting(&mut self.rx, &mut cmds);
                        self.core.run_turn(cmds, Vec::new()).await;
                    }
                    None => open = false,
                },
                () = sleep, if !healing => {
                    let due = self.core.timers.pop_due(self.core.clock.now());
                    self.core.run_turn(Vec::new(), due).await;
                }
                () = flush, if flushing && !healing => {
                    self.core.run_turn(Vec::new(), Vec::new()).await;
                }
            }
        }
        info!("engine stopped");
        // Commands of a failed turn not tried again go back to no one: their
        // callers are told `Stopped` when the inbox closes.
        self.core.backlog.clear();
        let inbox = EngineInbox {
            rx: self.rx,
            events: self.core.events,
            serving: self.serving,
            published: self.core.published,
        };
        inbox.close();
        (Ok(()), inbox)
    }
}

/// Takes what else waits in the channel, up to a turn's cap (group commit:
/// reports that arrived while the last transaction was in flight share the next).
fn take_waiting(rx: &mut mpsc::Receiver<Command>, cmds: &mut Vec<Command>) {
    while cmds.len() < TURN_CAP {
        match rx.try_recv() {
            Ok(cmd) => cmds.push(cmd),
            Err(_) => break,
        }
    }
}

impl Core {
    fn actor(&self) -> &str {
        &self.opts.actor
    }

    /// Queues an event; the turn publishes it once its writes commit.
    fn emit(&mut self, event: EngineEvent) {
        self.turn.events.push(event);
    }

    /// Starts queued runs and dispatches ready tasks if anything changed.
    async fn settle(&mut self) {
        if std::mem::take(&mut self.start_pending) {
            let started = self.start_queued_runs().await;
            if started && self.one_at_a_time {
                // Its commit first; placements follow in the next one.
                return;
            }
        }
        // Bounded: each round fails some attempts for good or retries them later.
        for _ in 0..4 {
            if std::mem::take(&mut self.dirty) {
                self.dispatch();
            }
            let failed = std::mem::take(&mut self.unrenderable);
            if failed.is_empty() {
                break;
            }
            for (worker, ti, attempt, msg) in failed {
                let _ = self
                    .task_finished(worker, ti, attempt, TaskResult::failed(msg))
                    .await;
            }
        }
    }

    /// First turn after build: cron, queued runs, pending tasks whose
    /// upstreams settled while no scheduler ran, then dispatch.
    async fn startup(&mut self) {
        self.begin_turn();
        let ids: Vec<DagId> = self.dags.keys().cloned().collect();
        for id in ids {
            self.schedule_dag(&id).await;
        }
        self.resume_after_restart().await;
        self.finish_turn().await;
    }

    /// Handles one command against memory; its writes join the turn's batch.
    /// The answer is sent by the turn once the batch commits.
    #[instrument(skip_all)]
    async fn handle(&mut self, cmd: &Command) -> handle::Answer {
        use handle::Answer;
        match cmd {
            Command::DagChanged(id, _) => Answer::Unit(self.dag_changed(id).await),
            Command::Pause(id, _) => Answer::Unit(self.set_paused(id, true).await),
            Command::Resume(id, _) => Answer::Unit(self.set_paused(id, false).await),
            Command::Trigger {
                dag_id,
                params,
                idempotency_key,
                logical_date,
                ..
            } => Answer::Run(
                self.trigger(
                    dag_id,
                    params.clone(),
                    idempotency_key.clone(),
                    *logical_date,
                )
                .await,
            ),
            Command::Backfill {
                dag_id, from, to, ..
            } => Answer::Runs(self.backfill(dag_id, *from, *to).await),
            Command::CancelRun(run, _) => {
                Answer::Unit(self.cancel_run(*run, "cancelled by request").await)
            }
            Command::CancelTask(run, task, _) => Answer::Unit(self.cancel_task(*run, task).await),
            Command::ClearTask {
                run_id,
                task_id,
                downstream,
                ..
            } => Answer::Unit(self.clear_task(*run_id, task_id, *downstream).await),
            Command::RegisterWorker(reg, _) => Answer::Worker(self.register_worker(reg.clone())),
            Command::AuthenticateWorker(worker, credential, _) => {
                Answer::Unit(self.authenticate_worker(*worker, credential.as_deref()))
            }
            Command::ConnectWorker {
                worker,
                still_running,
                ..
            } => Answer::Stream(self.connect_worker(*worker, still_running.clone()).await),
            Command::Heartbeat(worker, usage, _) => {
                Answer::Unit(self.heartbeat(*worker, usage.clone()))
            }
            Command::TaskStarted(worker, ti, attempt, _) => {
                Answer::Unit(self.task_started(*worker, *ti, *attempt))
            }
            Command::TaskFinished(worker, ti, attempt, result, _) => Answer::Unit(
                self.task_finished(*worker, *ti, *attempt, result.clone())
                    .await,
            ),
            Command::WorkerDraining(worker, _) => Answer::Unit(self.worker_draining(*worker)),
            Command::WorkerDisconnected(worker, _) => {
                Answer::Unit(self.worker_disconnected(*worker))
            }
            Command::RunCreatedElsewhere(run, _) => Answer::Unit(self.adopt_run(*run).await),
            Command::AdoptActiveRuns(_) => Answer::Count(self.adopt_active_runs().await),
            Command::Barrier(_) => {
                self.turn.flush = true;
                Answer::Unit(Ok(()))
            }
        }
    }

    /// Handles one due timer.
    async fn fire(&mut self, timer: timers::TimerKind) {
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
            timers::TimerKind::Retry { ti, attempt } => self.retry_due(ti, attempt),
            timers::TimerKind::Timeout { ti, attempt } => self.attempt_overdue(ti, attempt).await,
            timers::TimerKind::Heartbeat { worker } => self.heartbeat_check(worker).await,
        }
    }

    /// Applies a task state to memory: counters, the ready queue, the event.
    /// Every in-memory task change goes through here; its write is queued by
    /// the caller in the same step.
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
            let by_dag = self.active_by_dag.entry(dag_id.clone()).or_default();
            *by_dag = if to.holds_worker() {
                *by_dag + 1
            } else {
                by_dag.saturating_sub(1)
            };
            let by_pool = self.active_by_pool.entry(pool).or_default();
            *by_pool = if to.holds_worker() {
                *by_pool + 1
            } else {
                by_pool.saturating_sub(1)
            };
            if !to.holds_worker() {
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
        let (ti, task_id, pool) = (node.ti, node.task_id.clone(), node.pool.clone());
        match (from.is_terminal(), to.is_terminal()) {
            (false, true) => run.unfinished = run.unfinished.saturating_sub(1),
            (true, false) => run.unfinished += 1,
            _ => {}
        }
        let event = EngineEvent::TaskState {
            run_id,
            dag_id,
            ti,
            task_id,
            pool,
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
        let spec: DagSpec = row.spec.decode().map_err(|e| EngineError::BadSpec {
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

    /// Appends a write to the turn's batch, stamped with the engine's clock.
    fn write(&mut self, write: crate::store::Write) {
        let now = self.clock.now();
        self.turn.writes.push(write, now);
    }
}
