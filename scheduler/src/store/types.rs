//! Records the store reads and writes: plain data, typed ids and enums, no SQL.
//!
//! `New*` structs are inputs, the others are rows as read back. DAG specs,
//! params, resource requests and GPU inventories travel as `serde_json::Value`
//! so the store does not depend on the shape of the DAG types.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trainyard_core::ids::{
    AttemptId, DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId,
};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState, TriggerKind, WorkerState};

/// Which database a store talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Postgres,
    Sqlite,
}

/// Database connections held by a store (all its pools together).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PoolUsage {
    /// Open connections (idle + in use).
    pub open: u32,
    pub idle: u32,
    /// The most connections the pools may open.
    pub max: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigrationStatus {
    pub version: i64,
    pub description: String,
    pub applied: bool,
}

// ---------------------------------------------------------------- DAGs

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Dag {
    pub id: DagId,
    pub paused: bool,
    /// False once its file is deleted; history stays.
    pub active: bool,
    /// None when the file never parsed.
    pub current_version_id: Option<DagVersionId>,
    pub file_path: Option<String>,
    pub parse_error: Option<String>,
    pub parse_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Cron slots missed beyond the catch-up limit and never run, in total
    /// (each catch-up that skipped any is a [`SkippedSlotsRecord`]).
    pub skipped_slots: u64,
}

/// Cron slots a catch-up skipped (a [`Write::SkippedSlots`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SkippedSlots {
    pub dag_id: DagId,
    /// How many slots were skipped.
    pub slots: u64,
    /// The first and last skipped logical date.
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    /// Why, for people (e.g. "beyond the catch-up limit of 100").
    pub reason: String,
}

/// One catch-up's skipped slots, as stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedSlotsRecord {
    pub slots: u64,
    pub first_logical_date: DateTime<Utc>,
    pub last_logical_date: DateTime<Utc>,
    pub reason: String,
    pub recorded_at: DateTime<Utc>,
}

/// A DAG version's parsed spec as JSON text, never as a `serde_json::Value`
/// tree: a tree costs about twenty times its text (a 20,000-task spec built
/// ~80 MB of maps to write one row), so the spec is encoded straight from
/// `DagSpec` to text and decoded straight back.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(transparent)]
pub struct SpecJson(Box<serde_json::value::RawValue>);

impl SpecJson {
    /// Encodes a spec (or any serialisable value).
    pub fn encode<T: Serialize + ?Sized>(spec: &T) -> serde_json::Result<Self> {
        Ok(Self(serde_json::value::to_raw_value(spec)?))
    }

    /// Decodes the spec into `T` (usually `DagSpec`).
    pub fn decode<T: serde::de::DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(self.0.get())
    }

    /// The spec as a JSON tree, for callers that edit it (secret masking).
    pub fn to_value(&self) -> serde_json::Result<Value> {
        self.decode()
    }

    pub fn as_str(&self) -> &str {
        self.0.get()
    }
}

/// Equal text. PostgreSQL normalises `jsonb` on the way in, so compare
/// [`SpecJson::to_value`]s across backends.
impl PartialEq for SpecJson {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl From<Value> for SpecJson {
    fn from(value: Value) -> Self {
        // Serialising a `Value` cannot fail (its map keys are strings).
        Self::encode(&value).unwrap_or_else(|_| Self(Box::default()))
    }
}

#[derive(Debug, Clone)]
pub struct NewDagVersion {
    pub dag_id: DagId,
    /// Hash of the source (e.g. hex SHA-256); the same content registers once.
    pub content_hash: String,
    pub source: String,
    /// The parsed spec as JSON.
    pub spec: SpecJson,
    pub file_path: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpsertedVersion {
    pub version_id: DagVersionId,
    /// False when this content hash was already registered (it is made current again).
    pub created: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DagVersion {
    pub id: DagVersionId,
    pub dag_id: DagId,
    pub content_hash: String,
    pub source: String,
    pub spec: SpecJson,
    pub created_at: DateTime<Utc>,
}

// ---------------------------------------------------------------- runs

#[derive(Debug, Clone)]
pub struct NewRun {
    /// Chosen by the caller (`RunId::new()`), so it can be logged before the insert.
    pub id: RunId,
    pub dag_id: DagId,
    pub version_id: DagVersionId,
    /// Required for `TriggerKind::Schedule` (the slot); optional otherwise.
    pub logical_date: Option<DateTime<Utc>>,
    pub trigger: TriggerKind,
    pub params: Value,
    /// A second create with the same key for the same DAG returns the first run.
    pub idempotency_key: Option<String>,
    /// Usually `Queued`; `Running` when the caller already knows it may start.
    pub state: RunState,
    pub tasks: Vec<NewTaskInstance>,
}

#[derive(Debug, Clone)]
pub struct NewTaskInstance {
    pub task_id: TaskId,
    /// `Pending` or `Ready` (roots of a run allowed to start).
    pub state: TaskState,
    /// Retries + 1.
    pub max_attempts: i32,
    pub priority: i32,
    pub pool: String,
    pub resources: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub id: RunId,
    pub dag_id: DagId,
    pub version_id: DagVersionId,
    pub logical_date: Option<DateTime<Utc>>,
    pub trigger: TriggerKind,
    pub params: Value,
    pub state: RunState,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

/// What `create_run` did.
#[derive(Debug, Clone)]
pub enum RunCreation {
    Created {
        run: Run,
        tasks: Vec<TaskInstance>,
    },
    /// The schedule slot or idempotency key was taken; this is the run that holds it.
    AlreadyExists(Run),
}

#[derive(Debug, Clone, Default)]
pub struct RunFilter {
    pub dag_id: Option<DagId>,
    /// Empty = any state.
    pub states: Vec<RunState>,
    /// Cursor: only runs with an id below this one (newest first).
    pub before: Option<RunId>,
    /// Clamped to 1..=1000.
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct RunPage {
    /// Newest first.
    pub runs: Vec<Run>,
    /// Pass as `before` for the next page; None when this was the last.
    pub next_cursor: Option<RunId>,
}

#[derive(Debug, Clone)]
pub struct RunTransition {
    pub id: RunId,
    pub from: RunState,
    pub to: RunState,
    pub reason: Option<String>,
}

// ---------------------------------------------------------------- tasks

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskInstance {
    pub id: TaskInstanceId,
    pub run_id: RunId,
    pub dag_id: DagId,
    pub task_id: TaskId,
    pub state: TaskState,
    /// Latest attempt number (0 = never tried); the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    pub priority: i32,
    pub pool: String,
    pub resources: Value,
    pub ready_at: Option<DateTime<Utc>>,
    pub queued_at: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// One compare-and-set on a task instance: applied only if it is still in
/// `from` at `attempt`.
#[derive(Debug, Clone)]
pub struct TaskTransition {
    pub id: TaskInstanceId,
    pub from: TaskState,
    pub to: TaskState,
    /// The attempt number the caller believes is current.
    pub attempt: i32,
    pub reason: Option<String>,
    /// Required when `to` is `UpForRetry`.
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Outcome recorded on the open attempt when leaving `assigned`/`running`;
    /// derived from `to` when None (e.g. `TimedOut` must be given explicitly).
    pub outcome: Option<AttemptOutcome>,
}

impl TaskTransition {
    pub fn new(id: TaskInstanceId, from: TaskState, to: TaskState, attempt: i32) -> Self {
        Self {
            id,
            from,
            to,
            attempt,
            reason: None,
            next_retry_at: None,
            outcome: None,
        }
    }

    pub fn reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    pub fn retry_at(mut self, at: DateTime<Utc>) -> Self {
        self.next_retry_at = Some(at);
        self
    }

    pub fn outcome(mut self, outcome: AttemptOutcome) -> Self {
        self.outcome = Some(outcome);
        self
    }
}

/// Place one ready task (at its current attempt number) on a worker's GPUs.
#[derive(Debug, Clone)]
pub struct Assignment {
    pub id: TaskInstanceId,
    /// Current attempt number as read (before the claim increments it).
    pub attempt: i32,
    pub worker_id: Option<WorkerId>,
    pub gpus: Vec<u32>,
}

/// A task moved `ready → assigned` with its new attempt row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClaimedTask {
    pub id: TaskInstanceId,
    pub run_id: RunId,
    pub dag_id: DagId,
    pub task_id: TaskId,
    /// The new attempt number (previous + 1).
    pub attempt: i32,
    pub attempt_id: AttemptId,
    pub worker_id: Option<WorkerId>,
    pub gpus: Vec<u32>,
    pub priority: i32,
    pub pool: String,
    pub resources: Value,
}

/// A worker's report that an attempt ended.
#[derive(Debug, Clone)]
pub struct FinishAttempt {
    pub id: TaskInstanceId,
    pub attempt: i32,
    /// Usually `Running`; `Assigned` when the process could not be started.
    pub from: TaskState,
    /// `Success`, `Failed`, `UpForRetry` (retries left) or `Cancelled`.
    pub to: TaskState,
    pub outcome: AttemptOutcome,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub log_location: Option<String>,
    pub next_retry_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub id: AttemptId,
    pub task_instance_id: TaskInstanceId,
    pub run_id: RunId,
    pub attempt: i32,
    pub worker_id: Option<WorkerId>,
    pub gpus: Vec<u32>,
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub log_location: Option<String>,
    pub assigned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// An attempt a worker currently holds (its task is `assigned` or `running`),
/// or held when it was declared lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeldAttempt {
    pub task_instance_id: TaskInstanceId,
    pub run_id: RunId,
    pub dag_id: DagId,
    pub task_id: TaskId,
    pub attempt: i32,
    pub state: TaskState,
    pub gpus: Vec<u32>,
}

// ---------------------------------------------------------------- workers

#[derive(Debug, Clone)]
pub struct NewWorker {
    pub id: WorkerId,
    pub name: String,
    /// SHA-256 (hex) of the session credential bound to the id (see
    /// `grpc::auth`); never the credential itself.
    pub credential_sha256: Option<String>,
    /// CPUs, memory, queues… as the transport layer describes them.
    pub resources: Value,
    /// One entry per GPU (index, uuid, model, memory).
    pub gpus: Value,
    pub labels: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Worker {
    pub id: WorkerId,
    pub name: String,
    pub state: WorkerState,
    pub resources: Value,
    pub gpus: Value,
    pub labels: Value,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The digest of the worker's session credential: the engine checks
    /// registrations and Hellos against it; never served by the API.
    #[serde(skip)]
    pub credential_sha256: Option<String>,
}

// ---------------------------------------------------------------- metrics and events

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricPoint {
    pub task_instance_id: TaskInstanceId,
    pub task_id: TaskId,
    pub attempt: i32,
    pub name: String,
    pub value: f64,
    pub recorded_at: DateTime<Utc>,
}

/// One value of a metric in one run, for charts across runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SeriesPoint {
    pub run_id: RunId,
    pub logical_date: Option<DateTime<Utc>>,
    pub attempt: i32,
    pub value: f64,
    pub recorded_at: DateTime<Utc>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventEntity {
    Run,
    Task,
}

/// One row of the append-only transition log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: i64,
    pub run_id: RunId,
    pub entity: EventEntity,
    pub task_instance_id: Option<TaskInstanceId>,
    pub task_id: Option<TaskId>,
    /// None for creation.
    pub from_state: Option<String>,
    pub to_state: String,
    pub attempt: Option<i32>,
    pub actor: String,
    pub reason: Option<String>,
    pub at: DateTime<Utc>,
}

/// The attempt at one end of a lineage edge (the producer or a consumer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttemptOf {
    pub run_id: RunId,
    pub task_id: TaskId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: i32,
}

/// One object an attempt left in its output folder, as uploaded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewArtifact {
    /// Relative to the artifact store URL (`runs/<run>/<task>/<attempt>/out/…`).
    pub key: String,
    pub uri: String,
    pub size: u64,
    /// Lowercase hex.
    pub sha256: String,
}

/// An attempt that downloaded an artifact as an input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactConsumer {
    pub task_id: TaskId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: i32,
    pub consumed_at: DateTime<Utc>,
}

/// A recorded artifact with its lineage: who produced it, who consumed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredArtifact {
    pub id: i64,
    pub run_id: RunId,
    /// The producing task and attempt.
    pub task_id: TaskId,
    pub task_instance_id: TaskInstanceId,
    pub attempt: i32,
    pub key: String,
    pub uri: String,
    pub size: u64,
    pub sha256: String,
    pub created_at: DateTime<Utc>,
    /// Oldest first.
    pub consumers: Vec<ArtifactConsumer>,
}

/// One write of an engine turn. A [`WriteBatch`] commits its writes in order,
/// all in one transaction ([`crate::store::Store::commit_batch`]).
#[derive(Debug, Clone)]
pub enum Write {
    /// `assigned → running` for this attempt.
    StartAttempt {
        id: TaskInstanceId,
        attempt: i32,
    },
    /// The attempt ended (see [`FinishAttempt`]).
    FinishAttempt(FinishAttempt),
    /// Metrics an attempt reported.
    Metrics {
        id: TaskInstanceId,
        attempt: i32,
        metrics: Vec<(String, f64)>,
    },
    /// Compare-and-set task transitions, all or nothing.
    Transitions(Vec<TaskTransition>),
    /// A compare-and-set on a run's state.
    Run(RunTransition),
    /// `ready → assigned` for exactly these tasks at their expected attempts.
    Assign(Vec<Assignment>),
    RegisterWorker(NewWorker),
    /// The worker's `last_heartbeat_at` (persisted now and then, not per beat).
    Heartbeat {
        id: WorkerId,
    },
    WorkerState {
        id: WorkerId,
        state: WorkerState,
    },
    /// The worker is lost; every attempt it held becomes `lost`.
    WorkerLost {
        id: WorkerId,
        reason: String,
    },
    /// Lineage: what an attempt produced.
    Artifacts {
        producer: AttemptOf,
        artifacts: Vec<NewArtifact>,
    },
    /// Lineage: which of the run's artifacts an attempt consumed.
    ArtifactInputs {
        consumer: AttemptOf,
        keys: Vec<String>,
    },
    /// Where the attempt's full log was archived.
    LogLocation {
        id: TaskInstanceId,
        attempt: i32,
        location: String,
    },
    /// Cron slots a catch-up left out (beyond the catch-up limit).
    SkippedSlots(SkippedSlots),
}

/// The writes one engine turn decided, with the time each was decided.
#[derive(Debug, Clone, Default)]
pub struct WriteBatch {
    pub writes: Vec<(Write, DateTime<Utc>)>,
}

impl WriteBatch {
    /// A batch of one write: its own transaction (tests, `bench store`).
    pub fn one(write: Write, at: DateTime<Utc>) -> Self {
        let mut batch = Self::default();
        batch.push(write, at);
        batch
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    pub fn len(&self) -> usize {
        self.writes.len()
    }

    /// Appends a write. Task transitions right after other task transitions
    /// of the same moment join them (one statement per group instead of one
    /// per wave) unless a task would appear twice.
    pub fn push(&mut self, write: Write, at: DateTime<Utc>) {
        if let (Write::Transitions(new), Some((Write::Transitions(last), last_at))) =
            (&write, self.writes.last_mut())
            && *last_at == at
            && new.iter().all(|n| last.iter().all(|l| l.id != n.id))
        {
            last.extend(new.iter().cloned());
            return;
        }
        self.writes.push((write, at));
    }

    pub fn clear(&mut self) {
        self.writes.clear();
    }
}
