//! The store: the only code in Trainyard that speaks SQL.
//!
//! It owns the schema (`migrations/postgres`, `migrations/sqlite`, embedded in
//! the binary), the two backends ([`PgStore`] for production, [`SqliteStore`]
//! for the embedded default) and the [`Store`] trait the engine, the gRPC
//! service and the HTTP API use as `Arc<dyn Store>`.
//!
//! Invariants every method keeps:
//! - every state change is a compare-and-set on (expected state, attempt
//!   number) whose rows-affected is checked, written in the same transaction
//!   as its row in the append-only `events` table;
//! - the pure transition functions of `trainyard_core::state` are checked
//!   before anything is written, so the store refuses what they forbid;
//! - time is a parameter (`now`), never read from the clock here, so callers
//!   (and tests) decide what time it is;
//! - multi-row changes (a run with its tasks, a batch of transitions, a claim)
//!   are one transaction: all or nothing.

mod coordination;
mod error;
mod imp;
mod migrations;
mod postgres;
mod rows;
mod sqlite;
mod types;

pub mod bench;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{TaskState, WorkerState};

pub use coordination::{LeaderLock, ListenEvent, WAKEUP_CHANNEL, Wakeup, WakeupListener};
pub use error::{Result, StoreError};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use types::*;

/// How to open a store. `Default` applies migrations and uses a pool sized for
/// a scheduler process.
#[derive(Debug, Clone)]
pub struct ConnectOptions {
    /// Apply pending migrations on connect (`trainyard db status` turns this off).
    pub migrate: bool,
    /// Pool size (Postgres; for SQLite the number of read connections, writes go
    /// through one connection).
    pub max_connections: u32,
    /// Postgres only: schema to use (set as `search_path` on every connection),
    /// created by the caller. Lets tests and several installations share a database.
    pub pg_schema: Option<String>,
    /// Postgres only: `application_name` reported in `pg_stat_activity`.
    pub application_name: Option<String>,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            max_connections: 16,
            pg_schema: None,
            application_name: Some("trainyard-pool".to_owned()),
            acquire_timeout: Duration::from_secs(30),
        }
    }
}

/// Opens the store named by `url` and applies pending migrations.
///
/// `postgres://…` / `postgresql://…` → [`PgStore`]; `sqlite:PATH`, `sqlite://PATH`
/// (query string such as `?mode=rwc` allowed) → [`SqliteStore`], file created if
/// missing, WAL mode.
pub async fn connect(url: &str) -> Result<Arc<dyn Store>> {
    connect_with(url, ConnectOptions::default()).await
}

pub async fn connect_with(url: &str, options: ConnectOptions) -> Result<Arc<dyn Store>> {
    match backend_of(url)? {
        Backend::Postgres => Ok(Arc::new(PgStore::connect(url, &options).await?)),
        Backend::Sqlite => Ok(Arc::new(SqliteStore::connect(url, &options).await?)),
    }
}

/// Which backend a URL names, without connecting.
pub fn backend_of(url: &str) -> Result<Backend> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        Ok(Backend::Postgres)
    } else if url.starts_with("sqlite:") {
        Ok(Backend::Sqlite)
    } else {
        Err(StoreError::UnsupportedUrl { url: redact(url) })
    }
}

/// Drops a password from a URL before it goes into an error message or a log.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://…{}", &url[..scheme_end], &url[at..])
        }
        _ => url.to_owned(),
    }
}

/// Everything the engine, the worker service and the HTTP API ask of the database.
///
/// `actor` arguments name who made a change (`"scheduler"`, `"worker:<id>"`,
/// `"api:<user>"`); they go into the event log.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    fn backend(&self) -> Backend;
    /// Connections of the pool(s) right now, for `/metrics`.
    fn pool_usage(&self) -> PoolUsage;
    /// Write transactions committed since the store was opened
    /// (`trainyard_store_transactions_total`, `store_tx_per_task` in `bench`).
    fn transactions_committed(&self) -> u64;

    // ------------------------------------------------------------ engine turns
    /// Commits every write of one engine turn, in order, in one transaction:
    /// all or nothing. A compare-and-set that misses fails the whole batch
    /// with a conflict ([`StoreError::is_conflict`]) and nothing is written.
    async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()>;

    // ------------------------------------------------------------ schema
    /// Applies pending migrations; refuses a database newer than this binary.
    async fn migrate(&self) -> Result<()>;
    /// Every migration this binary knows, and whether it is applied.
    async fn migration_status(&self) -> Result<Vec<MigrationStatus>>;
    /// Closes the pool; in-flight calls finish first.
    async fn close(&self);

    // ------------------------------------------------------------ DAGs
    /// Registers a DAG (if new) and a version by content hash, and makes that
    /// version current; clears the DAG's parse error and reactivates it.
    async fn upsert_dag_version(
        &self,
        version: NewDagVersion,
        now: DateTime<Utc>,
    ) -> Result<UpsertedVersion>;
    /// Records that the DAG's file does not parse; the current version stays.
    async fn record_parse_error(
        &self,
        dag_id: &DagId,
        file_path: Option<&str>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn set_dag_paused(&self, dag_id: &DagId, paused: bool, now: DateTime<Utc>) -> Result<()>;
    /// The DAG's file is gone: no new runs; its history stays.
    async fn deactivate_dag(&self, dag_id: &DagId, now: DateTime<Utc>) -> Result<()>;
    async fn get_dag(&self, dag_id: &DagId) -> Result<Dag>;
    /// All DAGs, active or not, by id.
    async fn list_dags(&self) -> Result<Vec<Dag>>;
    async fn get_dag_version(&self, id: DagVersionId) -> Result<DagVersion>;

    // ------------------------------------------------------------ runs
    /// Inserts a run and all its task instances in one transaction.
    /// A taken schedule slot or idempotency key yields `AlreadyExists` with the
    /// run that holds it (nothing written).
    async fn create_run(&self, run: NewRun, actor: &str, now: DateTime<Utc>)
    -> Result<RunCreation>;
    /// [`Store::create_run`] for a process that is not the engine's leader
    /// (a standby replica's API): on Postgres the same transaction sends
    /// `NOTIFY trainyard_wakeup, 'run:<id>'` when the run is created, so the
    /// leader adopts it at once. SQLite has one process: same as `create_run`.
    async fn create_run_and_wake(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation>;
    /// [`Store::set_dag_paused`] plus, on Postgres in the same transaction,
    /// `NOTIFY trainyard_wakeup, 'dag:<id>'` so the leader re-reads the DAG.
    async fn set_dag_paused_and_wake(
        &self,
        dag_id: &DagId,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn get_run(&self, id: RunId) -> Result<Run>;
    /// Newest first, cursor-paginated by id.
    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage>;
    /// Runs in `queued` or `running`, oldest first (start-up recovery, max_active_runs).
    async fn active_runs(&self) -> Result<Vec<Run>>;
    /// CAS on the run's state; sets `started_at` on first `running`, `ended_at` on a terminal state.
    async fn transition_run(
        &self,
        transition: RunTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Run>;
    /// Latest run of the DAG (by creation) that succeeded.
    async fn last_successful_run(&self, dag_id: &DagId) -> Result<Option<Run>>;
    /// Latest logical date of the DAG's scheduled runs (where cron resumes after a restart).
    async fn last_scheduled_logical_date(&self, dag_id: &DagId) -> Result<Option<DateTime<Utc>>>;
    /// The run's transition log, oldest first: up to `limit` (at most
    /// 10,000) events with an id above `after`.
    async fn run_events(&self, run_id: RunId, after: Option<i64>, limit: u32)
    -> Result<Vec<Event>>;

    // ------------------------------------------------------------ task instances
    async fn get_task_instance(&self, id: TaskInstanceId) -> Result<TaskInstance>;
    /// All task instances of a run, by id (creation order).
    async fn task_instances(&self, run_id: RunId) -> Result<Vec<TaskInstance>>;
    /// Task instances in one state across all runs, oldest first (recovery: `lost`, `assigned`…).
    async fn task_instances_in_state(
        &self,
        state: TaskState,
        limit: u32,
    ) -> Result<Vec<TaskInstance>>;
    /// One CAS transition (see [`Store::transition_tasks`]).
    async fn transition_task(
        &self,
        transition: TaskTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Several CAS transitions in one transaction, all or nothing: if any task
    /// is not in its expected (state, attempt), nothing is written and the
    /// error names the first mismatch. `→ assigned` and `→ running` are refused
    /// here (use the claim calls and [`Store::start_attempt`]); leaving
    /// `assigned`/`running` closes the open attempt row.
    async fn transition_tasks(
        &self,
        transitions: &[TaskTransition],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Claims up to `limit` ready tasks, highest priority first, then longest
    /// ready (FIFO), in one statement (`FOR UPDATE SKIP LOCKED` on Postgres):
    /// `ready → assigned`, attempt + 1, attempt row created. Concurrent claimers
    /// never get the same task.
    async fn claim_ready(
        &self,
        filter: &ClaimFilter,
        limit: u32,
        worker_id: Option<WorkerId>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>>;
    /// Claims exactly these tasks at their expected attempts, each on its worker
    /// and GPUs. Tasks no longer ready (taken by another replica, cancelled) are
    /// left out of the result, not an error.
    async fn assign_tasks(
        &self,
        assignments: &[Assignment],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>>;
    /// Ready tasks in claim order without claiming them (placement planning).
    async fn ready_tasks(&self, filter: &ClaimFilter, limit: u32) -> Result<Vec<TaskInstance>>;
    /// `up_for_retry` tasks whose `next_retry_at <= now`, earliest first.
    async fn due_retries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<TaskInstance>>;
    /// Earliest `next_retry_at` among `up_for_retry` tasks (to arm a timer).
    async fn next_retry_time(&self) -> Result<Option<DateTime<Utc>>>;

    // ------------------------------------------------------------ attempts
    /// `assigned → running` for this attempt; fenced on the attempt number.
    async fn start_attempt(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Ends the attempt (exit code, error, outcome) and moves the task, fenced
    /// on (from, attempt): a report for a superseded attempt changes nothing
    /// and returns `TaskConflict`.
    async fn finish_attempt(
        &self,
        report: FinishAttempt,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Every attempt of a task instance, oldest first.
    async fn attempts(&self, id: TaskInstanceId) -> Result<Vec<Attempt>>;
    /// Every attempt of every task of a run.
    async fn run_attempts(&self, run_id: RunId) -> Result<Vec<Attempt>>;
    /// Attempts a worker holds now (their task is `assigned` or `running`).
    async fn attempts_held_by_worker(&self, worker_id: WorkerId) -> Result<Vec<HeldAttempt>>;

    // ------------------------------------------------------------ workers
    /// Registers or re-registers (same id) a worker as active, heartbeat = now.
    async fn register_worker(&self, worker: NewWorker, now: DateTime<Utc>) -> Result<Worker>;
    /// Records a heartbeat; returns the worker's state (a `lost` worker stays
    /// lost until it registers again).
    async fn heartbeat_worker(&self, id: WorkerId, now: DateTime<Utc>) -> Result<WorkerState>;
    async fn set_worker_state(
        &self,
        id: WorkerId,
        state: WorkerState,
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Marks the worker lost and, in the same transaction, every attempt it held
    /// (`assigned`/`running` → `lost`, attempt outcome `lost`). Returns those
    /// attempts so the engine can retry or fail them.
    async fn mark_worker_lost(
        &self,
        id: WorkerId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<HeldAttempt>>;
    async fn list_workers(&self) -> Result<Vec<Worker>>;
    /// Active or draining workers whose last heartbeat is before `cutoff`.
    async fn stale_workers(&self, cutoff: DateTime<Utc>) -> Result<Vec<Worker>>;

    // ------------------------------------------------------------ metrics
    /// Stores metrics of one attempt (a repeated name overwrites its value).
    async fn record_metrics(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        metrics: &[(String, f64)],
        now: DateTime<Utc>,
    ) -> Result<()>;
    async fn run_metrics(&self, run_id: RunId) -> Result<Vec<MetricPoint>>;
    /// One metric of one task across the DAG's latest `limit` runs, oldest first
    /// (the latest attempt's value per run).
    async fn metric_series(
        &self,
        dag_id: &DagId,
        task_id: &TaskId,
        name: &str,
        limit: u32,
    ) -> Result<Vec<SeriesPoint>>;

    // ------------------------------------------------------------ artifacts
    /// Records what an attempt produced (idempotent per run and key).
    async fn record_artifacts(
        &self,
        producer: &AttemptOf,
        artifacts: &[NewArtifact],
        now: DateTime<Utc>,
    ) -> Result<()>;
    /// Records that an attempt consumed the run's artifacts with these keys;
    /// keys no recorded artifact has are ignored. Returns the links made.
    async fn record_artifact_inputs(
        &self,
        consumer: &AttemptOf,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// Every artifact of a run with its consumers, by producer then key.
    async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>>;
    /// Where the attempt's full log was archived (a URI in the artifact store).
    async fn set_attempt_log_location(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        location: &str,
    ) -> Result<()>;
}
