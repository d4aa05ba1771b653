//! [`EngineHandle`]: the cheap, cloneable way in to the engine, and the types
//! that cross it. The gRPC worker service and the HTTP API are thin adapters
//! over exactly these calls; each sends one [`Command`] over a channel and
//! awaits the engine's reply, so every change happens on the engine's task.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use trainyard_core::dag::code::CodeSnapshot;
use trainyard_core::ids::{DagId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{RunState, TaskState};

use super::memory::{Published, StoreHealth};
use super::{EngineError, Result};
use crate::store::NewArtifact;

/// A GPU as the worker registers it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuInventory {
    pub index: u32,
    pub uuid: String,
    pub model: String,
    pub memory_bytes: u64,
    pub healthy: bool,
}

/// What a worker says about itself when it registers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerRegistration {
    /// The worker's own id, kept across reconnects; `None` lets the engine pick one.
    pub id: Option<WorkerId>,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// Pools it serves; empty = the `default` pool only.
    pub queues: Vec<String>,
    pub cpus: f64,
    pub memory_bytes: u64,
    /// Tasks it runs at once.
    pub slots: u32,
    pub gpus: Vec<GpuInventory>,
    /// The session credential this registration brings (digests only, see
    /// `grpc::auth`); `None` for in-process callers that need none.
    #[serde(default)]
    pub credential: Option<CredentialClaim>,
}

/// A registration's session credential, as SHA-256 digests (hex).
///
/// A known id registers again only with the credential bound to it; an id
/// the engine does not know yet (or knows without a credential) is bound to
/// `presented` when the worker brought one (it kept it from an earlier
/// scheduler), else to `issued`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CredentialClaim {
    pub presented: Option<String>,
    pub issued: String,
}

/// A worker's open command stream and the attempts it holds that stay its
/// own, with their run and task (what its logs and reports may name).
#[derive(Debug)]
pub struct WorkerLink {
    pub commands: mpsc::Receiver<WorkerCommand>,
    pub held: Vec<((TaskInstanceId, i32), (RunId, TaskId))>,
}

/// One GPU's live figures, sent with heartbeats.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GpuUsage {
    pub index: u32,
    /// 0–100.
    pub utilization_percent: f64,
    pub memory_used_bytes: u64,
    /// False takes the GPU out of placement until it reports healthy again.
    pub healthy: bool,
}

/// How an attempt ended, as the worker saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskOutcome {
    Succeeded,
    Failed,
    TimedOut,
    Cancelled,
    /// The command never started (not found, not executable): failed at
    /// once, its retries left unspent, since every retry would fail alike.
    CannotStart,
}

/// What a finished attempt produced and consumed, and where its full log
/// was archived: committed in the same transaction as the attempt's end, so
/// a crash can never keep the end and lose the lineage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskLineage {
    pub outputs: Vec<NewArtifact>,
    /// Keys of the run's artifacts the attempt read.
    pub inputs: Vec<String>,
    pub log_location: Option<String>,
}

/// A worker's report of a finished attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskResult {
    pub outcome: TaskOutcome,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    /// From `TRAINYARD_METRICS_FILE`.
    pub metrics: BTreeMap<String, f64>,
    pub lineage: TaskLineage,
}

impl TaskResult {
    pub fn succeeded() -> Self {
        Self {
            outcome: TaskOutcome::Succeeded,
            exit_code: Some(0),
            error: None,
            metrics: BTreeMap::new(),
            lineage: TaskLineage::default(),
        }
    }

    pub fn failed(error: impl Into<String>) -> Self {
        Self {
            outcome: TaskOutcome::Failed,
            exit_code: Some(1),
            error: Some(error.into()),
            metrics: BTreeMap::new(),
            lineage: TaskLineage::default(),
        }
    }

    pub fn with_metrics(mut self, metrics: impl IntoIterator<Item = (String, f64)>) -> Self {
        self.metrics.extend(metrics);
        self
    }
}

/// Everything a worker needs to run one attempt.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_instance_id: TaskInstanceId,
    pub run_id: RunId,
    pub dag_id: DagId,
    pub task_id: TaskId,
    /// The fencing token: quote it in every report about this attempt.
    pub attempt: i32,
    /// Placeholders already rendered; for a shell task, the one script.
    pub argv: Vec<String>,
    /// Run `argv[0]` with `sh -c` (the task said `shell`).
    pub shell: bool,
    /// Literal values from the DAG file.
    pub env: BTreeMap<String, String>,
    /// Variables copied from the worker's own environment: name → source variable.
    pub env_from_worker: BTreeMap<String, String>,
    /// Names (in `env` or `env_from_worker`) whose values must be masked in logs.
    pub secret_env: Vec<String>,
    /// Run with the worker's whole environment rather than a clean one.
    #[serde(default)]
    pub inherit_env: bool,
    pub working_dir: Option<String>,
    /// The worker enforces it; the engine fails the attempt after it plus a grace.
    pub timeout: Option<Duration>,
    /// Exactly these GPUs (`CUDA_VISIBLE_DEVICES`).
    pub gpu_indices: Vec<u32>,
    pub cpus: f64,
    pub memory_bytes: Option<u64>,
    /// The run's params merged with the declared defaults (`TRAINYARD_PARAMS`).
    pub params_json: Value,
    pub logical_date: DateTime<Utc>,
    /// Direct upstream tasks (their outputs are the inputs).
    pub upstream: Vec<TaskId>,
    /// The attempt of each direct upstream that succeeded, as the engine
    /// knows it: the worker service names their outputs from this without
    /// reading the store.
    pub upstream_attempts: Vec<UpstreamAttempt>,
    /// The code of the run's DAG version, when one was shipped.
    #[serde(default)]
    pub code: Option<CodeSnapshot>,
}

/// An upstream task's successful attempt, whose outputs an assignment reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamAttempt {
    pub task_id: TaskId,
    pub attempt: i32,
}

/// What the engine tells a connected worker.
// Assign dominates the traffic and is moved, not copied, into the channel;
// boxing it would only add an allocation per attempt.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum WorkerCommand {
    Assign(Assignment),
    /// Stop the attempt gracefully (SIGTERM, grace, SIGKILL) and report `Cancelled`.
    Cancel {
        ti: TaskInstanceId,
        attempt: i32,
        reason: String,
    },
    /// The attempt is no longer this worker's (fenced, lost, timed out): kill it now.
    Kill {
        ti: TaskInstanceId,
        attempt: i32,
        reason: String,
    },
}

/// A notification for tests and the UI. Lossy: a slow subscriber misses some.
#[derive(Debug, Clone, PartialEq)]
pub enum EngineEvent {
    RunState {
        run_id: RunId,
        dag_id: DagId,
        state: RunState,
    },
    TaskState {
        run_id: RunId,
        /// The run's DAG, so subscribers (metrics) can label by DAG without a lookup.
        dag_id: DagId,
        ti: TaskInstanceId,
        task_id: TaskId,
        /// The task's pool, for queue wait per pool.
        pool: String,
        state: TaskState,
        attempt: i32,
    },
    /// A cron slot that came due while the previous run was active and was dropped.
    SlotSkipped {
        dag_id: DagId,
        logical_date: DateTime<Utc>,
    },
}

/// A run or task that reached a final state (sent once its end is committed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Run(RunId),
    Task(TaskInstanceId),
}

/// Why a task of a run is not running, per task id (only tasks that wait).
pub type WaitReasons = BTreeMap<TaskId, String>;

type Reply<T> = oneshot::Sender<Result<T>>;

/// One request to the engine; see the matching [`EngineHandle`] method.
#[derive(Debug)]
pub(crate) enum Command {
    DagChanged(DagId, Reply<()>),
    Pause(DagId, Reply<()>),
    Resume(DagId, Reply<()>),
    Trigger {
        dag_id: DagId,
        params: serde_json::Map<String, Value>,
        idempotency_key: Option<String>,
        logical_date: Option<DateTime<Utc>>,
        reply: Reply<RunId>,
    },
    Backfill {
        dag_id: DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        reply: Reply<Vec<RunId>>,
    },
    CancelRun(RunId, Reply<()>),
    CancelTask(RunId, TaskId, Reply<()>),
    ClearTask {
        run_id: RunId,
        task_id: TaskId,
        downstream: bool,
        reply: Reply<()>,
    },
    RegisterWorker(WorkerRegistration, Reply<WorkerId>),
    /// Checks a Hello's session credential (a digest) against the worker's.
    AuthenticateWorker(WorkerId, Option<String>, Reply<()>),
    ConnectWorker {
        worker: WorkerId,
        still_running: Vec<(TaskInstanceId, i32)>,
        reply: Reply<WorkerLink>,
    },
    Heartbeat(WorkerId, Vec<GpuUsage>, Reply<()>),
    TaskStarted(WorkerId, TaskInstanceId, i32, Reply<()>),
    TaskFinished(WorkerId, TaskInstanceId, i32, TaskResult, Reply<()>),
    WorkerDraining(WorkerId, Reply<()>),
    WorkerDisconnected(WorkerId, Reply<()>),
    RunCreatedElsewhere(RunId, Reply<()>),
    AdoptActiveRuns(Reply<usize>),
    /// Answered once every command sent before it is handled and committed.
    Barrier(Reply<()>),
}

/// The engine's answer to a [`Command`], held until the turn commits.
#[derive(Debug)]
pub(crate) enum Answer {
    Unit(Result<()>),
    Run(Result<RunId>),
    Runs(Result<Vec<RunId>>),
    Worker(Result<WorkerId>),
    Stream(Result<WorkerLink>),
    Count(Result<usize>),
}

impl Answer {
    /// The store error inside, if the command failed on the store; else the answer back.
    pub(crate) fn into_store_error(self) -> std::result::Result<crate::store::StoreError, Answer> {
        match self {
            Answer::Unit(Err(EngineError::Store(e)))
            | Answer::Run(Err(EngineError::Store(e)))
            | Answer::Runs(Err(EngineError::Store(e)))
            | Answer::Worker(Err(EngineError::Store(e)))
            | Answer::Stream(Err(EngineError::Store(e)))
            | Answer::Count(Err(EngineError::Store(e))) => Ok(e),
            other => Err(other),
        }
    }
}

impl Command {
    /// Whether a failed turn tries this command again (reports from workers,
    /// the DAG loader and wake-ups: progress must not be lost) rather than
    /// answering it with the store's error (a user's request: they retry).
    pub(crate) fn retried_on_failure(&self) -> bool {
        !matches!(
            self,
            Command::Trigger { .. }
                | Command::Backfill { .. }
                | Command::Pause(..)
                | Command::Resume(..)
                | Command::CancelRun(..)
                | Command::CancelTask(..)
                | Command::ClearTask { .. }
                | Command::AuthenticateWorker(..)
        )
    }

    /// Sends `answer` to the caller (a caller that went away is fine).
    pub(crate) fn respond(self, answer: Answer) {
        fn send<T>(reply: Reply<T>, r: Result<T>) {
            let _ = reply.send(r);
        }
        match (self, answer) {
            (
                Command::DagChanged(_, r)
                | Command::Pause(_, r)
                | Command::Resume(_, r)
                | Command::CancelRun(_, r)
                | Command::CancelTask(_, _, r)
                | Command::ClearTask { reply: r, .. }
                | Command::Heartbeat(_, _, r)
                | Command::TaskStarted(_, _, _, r)
                | Command::TaskFinished(_, _, _, _, r)
                | Command::WorkerDraining(_, r)
                | Command::WorkerDisconnected(_, r)
                | Command::RunCreatedElsewhere(_, r)
                | Command::AuthenticateWorker(_, _, r)
                | Command::Barrier(r),
                Answer::Unit(a),
            ) => send(r, a),
            (Command::Trigger { reply, .. }, Answer::Run(a)) => send(reply, a),
            (Command::Backfill { reply, .. }, Answer::Runs(a)) => send(reply, a),
            (Command::RegisterWorker(_, r), Answer::Worker(a)) => send(r, a),
            (Command::ConnectWorker { reply, .. }, Answer::Stream(a)) => send(reply, a),
            (Command::AdoptActiveRuns(r), Answer::Count(a)) => send(r, a),
            (cmd, answer) => {
                tracing::error!(?cmd, ?answer, "engine answer does not match its command");
            }
        }
    }

    /// Answers with an error (a failed turn, for commands it does not retry).
    pub(crate) fn fail(self, err: impl Fn() -> EngineError) {
        let answer = match &self {
            Command::Trigger { .. } => Answer::Run(Err(err())),
            Command::Backfill { .. } => Answer::Runs(Err(err())),
            Command::RegisterWorker(..) => Answer::Worker(Err(err())),
            Command::ConnectWorker { .. } => Answer::Stream(Err(err())),
            Command::AdoptActiveRuns(_) => Answer::Count(Err(err())),
            _ => Answer::Unit(Err(err())),
        };
        self.respond(answer);
    }
}

/// A cheap, cloneable handle on a running [`super::Engine`].
#[derive(Debug, Clone)]
pub struct EngineHandle {
    pub(crate) tx: mpsc::Sender<Command>,
    pub(crate) events: broadcast::Sender<EngineEvent>,
    /// Whether an engine serves the channel now: a call made while none does
    /// (a standby replica) or whose engine stops before replying fails with
    /// [`EngineError::Stopped`] instead of waiting for a later engine.
    pub(crate) serving: watch::Receiver<bool>,
    /// What the engine published after its last committed turn.
    pub(crate) published: Published,
}

impl EngineHandle {
    async fn call<T>(&self, make: impl FnOnce(Reply<T>) -> Command) -> Result<T> {
        let mut serving = self.serving.clone();
        if !*serving.borrow_and_update() {
            return Err(EngineError::Stopped);
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        tokio::select! {
            r = rx => r.map_err(|_| EngineError::Stopped)?,
            // Left in the channel; the next engine drops it unread.
            _ = serving.wait_for(|s| !*s) => Err(EngineError::Stopped),
        }
    }

    /// The DAG's registration changed (new version, paused, deactivated): re-read it.
    pub async fn dag_changed(&self, dag_id: DagId) -> Result<()> {
        self.call(|r| Command::DagChanged(dag_id, r)).await
    }

    /// Stops creating cron runs for the DAG (runs already created go on).
    pub async fn pause(&self, dag_id: DagId) -> Result<()> {
        self.call(|r| Command::Pause(dag_id, r)).await
    }

    /// Resumes the schedule; missed slots follow the DAG's catchup setting.
    pub async fn resume(&self, dag_id: DagId) -> Result<()> {
        self.call(|r| Command::Resume(dag_id, r)).await
    }

    /// Starts a manual run. Params are checked against the DAG's declared params;
    /// a repeated `idempotency_key` returns the run it created first.
    pub async fn trigger(
        &self,
        dag_id: DagId,
        params: serde_json::Map<String, Value>,
        idempotency_key: Option<String>,
        logical_date: Option<DateTime<Utc>>,
    ) -> Result<RunId> {
        self.call(|reply| Command::Trigger {
            dag_id,
            params,
            idempotency_key,
            logical_date,
            reply,
        })
        .await
    }

    /// One run per schedule slot in `[from, to]` (trigger kind backfill);
    /// slots that already have a run are skipped. Returns the new runs, oldest first.
    pub async fn backfill(
        &self,
        dag_id: DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        self.call(|reply| Command::Backfill {
            dag_id,
            from,
            to,
            reply,
        })
        .await
    }

    pub async fn cancel_run(&self, run_id: RunId) -> Result<()> {
        self.call(|r| Command::CancelRun(run_id, r)).await
    }

    pub async fn cancel_task(&self, run_id: RunId, task_id: TaskId) -> Result<()> {
        self.call(|r| Command::CancelTask(run_id, task_id, r)).await
    }

    /// Re-runs a finished task (and, with `downstream`, everything after it);
    /// a finished run goes back to running.
    pub async fn clear_task(&self, run_id: RunId, task_id: TaskId, downstream: bool) -> Result<()> {
        self.call(|reply| Command::ClearTask {
            run_id,
            task_id,
            downstream,
            reply,
        })
        .await
    }

    pub async fn register_worker(&self, registration: WorkerRegistration) -> Result<WorkerId> {
        self.call(|r| Command::RegisterWorker(registration, r))
            .await
    }

    /// Whether `credential` (the digest of what a Hello presented) is the
    /// one bound to `worker`: [`EngineError::WorkerCredential`] if not,
    /// [`EngineError::WorkerNotFound`] for an unknown id. Changes nothing.
    pub async fn authenticate_worker(
        &self,
        worker: WorkerId,
        credential: Option<String>,
    ) -> Result<()> {
        self.call(|r| Command::AuthenticateWorker(worker, credential, r))
            .await
    }

    /// Opens the worker's command stream. `still_running` lists the attempts it
    /// holds after a reconnect: those still its own continue (listed in the
    /// link with their run and task), the others get a `Kill`.
    pub async fn connect_worker(
        &self,
        worker: WorkerId,
        still_running: Vec<(TaskInstanceId, i32)>,
    ) -> Result<WorkerLink> {
        self.call(|reply| Command::ConnectWorker {
            worker,
            still_running,
            reply,
        })
        .await
    }

    pub async fn heartbeat(&self, worker: WorkerId, gpus: Vec<GpuUsage>) -> Result<()> {
        self.call(|r| Command::Heartbeat(worker, gpus, r)).await
    }

    /// The attempt's process started. A stale attempt → [`EngineError::Fenced`].
    pub async fn task_started(
        &self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
    ) -> Result<()> {
        self.call(|r| Command::TaskStarted(worker, ti, attempt, r))
            .await
    }

    /// The attempt ended. A stale attempt → [`EngineError::Fenced`], nothing changes.
    pub async fn task_finished(
        &self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
        result: TaskResult,
    ) -> Result<()> {
        self.call(|r| Command::TaskFinished(worker, ti, attempt, result, r))
            .await
    }

    /// The worker takes no new work (it finishes what it runs).
    pub async fn worker_draining(&self, worker: WorkerId) -> Result<()> {
        self.call(|r| Command::WorkerDraining(worker, r)).await
    }

    /// The stream dropped; its tasks keep running until the lost timeout.
    pub async fn worker_disconnected(&self, worker: WorkerId) -> Result<()> {
        self.call(|r| Command::WorkerDisconnected(worker, r)).await
    }

    /// The GPU utilisation and memory each worker reported in its latest
    /// heartbeat, from the engine's last published view (no round trip).
    pub async fn gpu_usage(&self) -> Result<BTreeMap<WorkerId, Vec<GpuUsage>>> {
        self.live()?;
        Ok(self.published.gpu_usage())
    }

    /// Why each waiting task of an active run is not running yet, from the
    /// engine's last published view (no round trip).
    pub async fn task_wait_reasons(&self, run_id: RunId) -> Result<WaitReasons> {
        self.live()?;
        Ok(self.published.wait_reasons(run_id))
    }

    /// Why a queued run has not started (its DAG is at `max_active_runs`,
    /// naming the runs that hold it), from the last published view.
    pub fn run_wait_reason(&self, run_id: RunId) -> Option<String> {
        self.published.run_wait_reason(run_id)
    }

    /// A line per task of the DAG's current version that no registered
    /// worker could hold even when idle (a trigger's warnings).
    pub fn unschedulable_tasks(&self, dag_id: &DagId) -> Vec<String> {
        self.published.unschedulable(dag_id)
    }

    /// How many listeners wait on ends now (long-polls, live log streams).
    pub fn end_listeners(&self) -> usize {
        self.published.end_listeners()
    }

    /// Runs and tasks as they end, each sent once the end is committed.
    /// Lossy: a receiver that lags gets `Lagged` and should re-read the store.
    pub fn subscribe_ends(&self) -> broadcast::Receiver<Ended> {
        self.published.subscribe_ends()
    }

    /// Whether the store accepted the engine's last transaction; while it
    /// fails, the engine retries and `/readyz` answers 503 with the reason.
    pub fn store_health(&self) -> StoreHealth {
        self.published.health()
    }

    fn live(&self) -> Result<()> {
        if *self.serving.borrow() {
            Ok(())
        } else {
            Err(EngineError::Stopped)
        }
    }

    /// Waits until every command sent before it has been handled and its
    /// turn committed (tests and benchmarks use it as a barrier).
    pub async fn barrier(&self) -> Result<()> {
        self.call(Command::Barrier).await
    }

    /// Engine notifications (lossy).
    pub fn subscribe(&self) -> broadcast::Receiver<EngineEvent> {
        self.events.subscribe()
    }

    /// Another process created this run in the store (a standby replica's
    /// API; Postgres `NOTIFY`): load it and start it under max_active_runs.
    /// A run the engine already holds, or one already finished, is left alone.
    pub async fn run_created_elsewhere(&self, run_id: RunId) -> Result<()> {
        self.call(|r| Command::RunCreatedElsewhere(run_id, r)).await
    }

    /// Adopts every queued or running run of the store the engine does not
    /// hold yet (after wake-ups may have been missed). Returns how many.
    pub async fn adopt_active_runs(&self) -> Result<usize> {
        self.call(Command::AdoptActiveRuns).await
    }

    /// A handle with no engine behind it yet, and the inbox an engine is
    /// built on ([`super::Engine::build_on`]). The handle outlives engines:
    /// a replica hands the inbox from one leadership term's engine to the
    /// next, so callers keep one handle (and one event stream) throughout.
    /// Calls made while no engine is built on it fail with `Stopped`.
    pub fn detached(command_buffer: usize) -> (EngineHandle, EngineInbox) {
        let (tx, rx) = mpsc::channel(command_buffer.max(1));
        let (events, _) = broadcast::channel(1 << 16);
        let (serving_tx, serving) = watch::channel(false);
        let published = Published::default();
        let inbox = EngineInbox {
            rx,
            events: events.clone(),
            serving: serving_tx,
            published: published.clone(),
        };
        (
            EngineHandle {
                tx,
                events,
                serving,
                published,
            },
            inbox,
        )
    }
}

/// The receiving end of an [`EngineHandle`]: what an engine reads commands
/// from and publishes events to. Owned by one engine at a time.
#[derive(Debug)]
pub struct EngineInbox {
    pub(crate) rx: mpsc::Receiver<Command>,
    pub(crate) events: broadcast::Sender<EngineEvent>,
    /// Tells the handles whether an engine serves this inbox.
    pub(crate) serving: watch::Sender<bool>,
    pub(crate) published: Published,
}

impl EngineInbox {
    /// An engine takes the inbox: commands left from callers already told
    /// `Stopped` are dropped unread, then calls are accepted again.
    pub(crate) fn open(&mut self) {
        while self.rx.try_recv().is_ok() {}
        self.serving.send_replace(true);
    }

    /// The engine stopped: waiting and new calls fail with `Stopped`.
    pub(crate) fn close(&self) {
        self.serving.send_replace(false);
    }
}

impl From<oneshot::error::RecvError> for EngineError {
    fn from(_: oneshot::error::RecvError) -> Self {
        EngineError::Stopped
    }
}
