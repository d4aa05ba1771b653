//! The store: the only code in Trainyard that speaks SQL.
//!
//! It owns the schema (`migrations/postgres`, `migrations/sqlite`, embedded in
//! the binary), the two backends ([`PgStore`] for production, [`SqliteStore`]
//! for the embedded default) and the traits its consumers hold, one per kind
//! of consumer: [`EngineStore`] (the engine: the only writer of runs, tasks,
//! attempts and workers, through [`EngineStore::commit_batch`]),
//! [`ReadStore`] (HTTP API, UI, metrics, traces, the worker service),
//! [`DagCatalog`] (the DAG loader), [`Coordination`] (a standby replica's
//! writes that wake the leader), [`LeaseStore`] (the leader lease's row and
//! the engine's store of one leadership term), [`RetentionStore`] (the
//! retention task's deletes of old finished runs) and [`StoreAdmin`]
//! (migrations, shutdown), all over [`StoreBase`]. [`Store`] is all of
//! them, for wiring.
//!
//! There are no single-call writes of tasks, attempts, workers, metrics or
//! lineage: each is a [`Write`] in a [`WriteBatch`], so tests and
//! `trainyard bench store` exercise exactly the statements the engine runs.
//! The store's claim (`FOR UPDATE SKIP LOCKED` on Postgres) is reached only
//! through `Write::Assign`; nothing in production asked the store to pick
//! ready work by itself (the engine plans placement in memory), so that call
//! (`claim_ready`) is gone.
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
use trainyard_core::state::TaskState;

pub use coordination::{
    Lease, LeaseConnection, LeaseTimeouts, ListenEvent, Renewed, Replica, Taken, TermFence,
    WAKEUP_CHANNEL, Wakeup, WakeupListener,
};
pub use error::{FailureClass, Result, StoreError, class_of_code};
pub use imp::SqlStore;
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
    /// Postgres only: `idle_in_transaction_session_timeout` and `lock_timeout`
    /// of every connection. Set from the leader lease (`crate::ha`): a
    /// frozen leader's open transaction is ended by the server before its
    /// lease can expire, so its row locks never block the next leader, and
    /// no statement waits on a row lock for longer than this.
    pub pg_session_guard: Option<Duration>,
}

impl Default for ConnectOptions {
    fn default() -> Self {
        Self {
            migrate: true,
            max_connections: 16,
            pg_schema: None,
            application_name: Some("trainyard-pool".to_owned()),
            acquire_timeout: Duration::from_secs(30),
            pg_session_guard: None,
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

// ---------------------------------------------------------------- the traits
//
// The store is split by who uses it, so that "only the engine writes runs and
// tasks" is a fact of the types rather than a convention: the engine holds an
// `Arc<dyn EngineStore>`, the HTTP API, metrics and the worker service hold
// `Arc<dyn ReadStore>`, the DAG loader `Arc<dyn DagCatalog>`, a standby's
// control plane `Arc<dyn Coordination>`. [`Store`] is every one of them at
// once, for the code that wires a process together (`app.rs`, the CLI); an
// `Arc<dyn Store>` coerces to any of them (trait upcasting).
//
// `actor` arguments name who made a change (`"scheduler"`, `"worker:<id>"`,
// `"api:<user>"`); they go into the event log.

/// What any holder may ask about the store itself (no table is read but the
/// migrations table).
#[async_trait]
pub trait StoreBase: Send + Sync + std::fmt::Debug {
    fn backend(&self) -> Backend;
    /// Connections of the pool(s) right now, for `/metrics`.
    fn pool_usage(&self) -> PoolUsage;
    /// Write transactions committed since the store was opened
    /// (`trainyard_store_transactions_total`, `store_tx_per_task` in `bench`).
    fn transactions_committed(&self) -> u64;
    /// Every migration this binary knows, and whether it is applied.
    async fn migration_status(&self) -> Result<Vec<MigrationStatus>>;
}

/// Schema and lifecycle: `trainyard db migrate` and process shutdown.
#[async_trait]
pub trait StoreAdmin: StoreBase {
    /// Applies pending migrations; refuses a database newer than this binary.
    async fn migrate(&self) -> Result<()>;
    /// Closes the pool; in-flight calls finish first.
    async fn close(&self);
}

/// The read side: the HTTP API and UI, metrics, traces, the worker service's
/// lookups, the CLI's reports, and the engine's recovery and decisions. No
/// method here writes.
#[async_trait]
pub trait ReadStore: StoreBase {
    async fn get_dag(&self, dag_id: &DagId) -> Result<Dag>;
    /// All DAGs, active or not, by id.
    async fn list_dags(&self) -> Result<Vec<Dag>>;
    async fn get_dag_version(&self, id: DagVersionId) -> Result<DagVersion>;

    async fn get_run(&self, id: RunId) -> Result<Run>;
    /// Newest first, cursor-paginated by id.
    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage>;
    /// Runs in `queued` or `running`, oldest first (start-up recovery, max_active_runs).
    async fn active_runs(&self) -> Result<Vec<Run>>;
    /// Latest run of the DAG (by creation) that succeeded.
    async fn last_successful_run(&self, dag_id: &DagId) -> Result<Option<Run>>;
    /// Latest logical date of the DAG's scheduled runs (where cron resumes after a restart).
    async fn last_scheduled_logical_date(&self, dag_id: &DagId) -> Result<Option<DateTime<Utc>>>;
    /// The run's transition log, oldest first: up to `limit` (at most
    /// 10,000) events with an id above `after`.
    async fn run_events(&self, run_id: RunId, after: Option<i64>, limit: u32)
    -> Result<Vec<Event>>;

    /// The events that moved a task of the run to `skipped` or
    /// `upstream_failed`, oldest first: their reasons say why (the gate's
    /// values, the upstream that failed). The default pages through
    /// [`ReadStore::run_events`]; the SQL stores ask for just these rows.
    async fn skip_events(&self, run_id: RunId) -> Result<Vec<Event>> {
        let mut out = Vec::new();
        let mut after = None;
        loop {
            let page = self.run_events(run_id, after, 10_000).await?;
            let Some(last) = page.last() else {
                return Ok(out);
            };
            after = Some(last.id);
            out.extend(page.into_iter().filter(|e| {
                e.entity == EventEntity::Task
                    && matches!(e.to_state.as_str(), "skipped" | "upstream_failed")
            }));
        }
    }

    async fn get_task_instance(&self, id: TaskInstanceId) -> Result<TaskInstance>;
    /// All task instances of a run, by id (creation order).
    async fn task_instances(&self, run_id: RunId) -> Result<Vec<TaskInstance>>;
    /// Task instances in one state across all runs, oldest first (metrics' gauges).
    async fn task_instances_in_state(
        &self,
        state: TaskState,
        limit: u32,
    ) -> Result<Vec<TaskInstance>>;

    /// Every attempt of a task instance, oldest first.
    async fn attempts(&self, id: TaskInstanceId) -> Result<Vec<Attempt>>;
    /// Every attempt of every task of a run.
    async fn run_attempts(&self, run_id: RunId) -> Result<Vec<Attempt>>;
    /// Attempts a worker holds now (their task is `assigned` or `running`).
    async fn attempts_held_by_worker(&self, worker_id: WorkerId) -> Result<Vec<HeldAttempt>>;

    async fn list_workers(&self) -> Result<Vec<Worker>>;

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

    /// Every artifact of a run with its consumers, by producer then key.
    async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>>;

    /// The DAG's records of cron slots skipped by catch-ups, newest first.
    async fn skipped_slots(&self, dag_id: &DagId, limit: u32) -> Result<Vec<SkippedSlotsRecord>>;
}

/// The engine's writes. Every change to a task, an attempt, a worker row or
/// a run's state is a [`Write`] in the batch of the turn that decided it;
/// there is no other way to make one. The engine reads through the
/// [`ReadStore`] supertrait (recovery, cron, `max_active_runs`).
#[async_trait]
pub trait EngineStore: ReadStore {
    /// Commits every write of one engine turn, in order, in one transaction:
    /// all or nothing. A compare-and-set that misses fails the whole batch
    /// with a conflict ([`StoreError::is_conflict`]) and nothing is written.
    async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()>;
    /// Inserts a run and all its task instances in one transaction (outside a
    /// batch because the database assigns the task instances' ids, which the
    /// engine needs before it can plan anything for them).
    /// A taken schedule slot or idempotency key yields `AlreadyExists` with the
    /// run that holds it (nothing written).
    async fn create_run(&self, run: NewRun, actor: &str, now: DateTime<Utc>)
    -> Result<RunCreation>;
    /// Pauses or resumes a DAG (no effect on the runs it has).
    async fn set_dag_paused(&self, dag_id: &DagId, paused: bool, now: DateTime<Utc>) -> Result<()>;
}

/// The DAG loader's writes: the catalog of DAGs and their versions.
#[async_trait]
pub trait DagCatalog: ReadStore {
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
    /// The DAG's file is gone: no new runs; its history stays.
    async fn deactivate_dag(&self, dag_id: &DagId, now: DateTime<Utc>) -> Result<()>;
}

/// What a process that is not the engine's leader (a standby replica's API)
/// may write: each write tells the leader in the same transaction, so it
/// never waits for a poll to notice (see [`Wakeup`]).
#[async_trait]
pub trait Coordination: ReadStore {
    /// [`EngineStore::create_run`] plus, on Postgres in the same transaction,
    /// `NOTIFY trainyard_wakeup, 'run:<id>'` when the run is created, so the
    /// leader adopts it at once. SQLite has one process: same as `create_run`.
    async fn create_run_and_wake(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation>;
    /// [`EngineStore::set_dag_paused`] plus, on Postgres in the same
    /// transaction, `NOTIFY trainyard_wakeup, 'dag:<id>'` so the leader
    /// re-reads the DAG.
    async fn set_dag_paused_and_wake(
        &self,
        dag_id: &DagId,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<()>;
}

/// The leader lease as the election and the operators' surfaces see it
/// through the store's pool, and the engine store of one term. (On
/// PostgreSQL the election takes and renews the lease on a dedicated
/// [`LeaseConnection`] instead.)
#[async_trait]
pub trait LeaseStore: StoreBase {
    /// The lease row of `group` now, if it was ever taken.
    async fn lease(&self, group: &str) -> Result<Option<Lease>>;
    /// SQLite's one scheduling process (the file lock makes it the only
    /// one) takes the lease unconditionally: a new term per start, so the
    /// term fence applies as on PostgreSQL. `now`: the time written.
    async fn take_lease_alone(
        &self,
        group: &str,
        me: &Replica,
        lease: Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease>;
    /// The engine's store for one leadership term: the same database, but
    /// every [`EngineStore`] write checks `fence` in its transaction and is
    /// refused with [`StoreError::NotLeader`] once the lease has another
    /// term (see [`TermFence`]). Reads are unchanged.
    fn fenced(&self, fence: TermFence) -> Arc<dyn EngineStore>;
}

/// The retention task's deletes (`crate::retention`): finished runs whose
/// end is older than the retention, with everything recorded about them.
///
/// Why deleting runs outside the engine (the only writer of runs and
/// tasks) does not race with it: the engine never writes a finished run
/// except to reopen it (a user clears a task of it, `clear_task`), and that
/// write (back to `queued`) is a compare-and-set on the run's finished state in the engine's
/// turn. [`RetentionStore::delete_expired_run`] is one `DELETE` guarded by
/// the same facts (finished, ended before the cutoff) in one transaction,
/// so whichever commits first wins: a reopened run is no longer finished
/// and is not deleted; a deleted run makes the engine's compare-and-set
/// match nothing, the turn is retried from the store, and the clear is
/// answered "not found". A run the engine holds in memory is never finished
/// in the store (memory holds unfinished runs only).
#[async_trait]
pub trait RetentionStore: StoreBase {
    /// Finished runs that ended before `cutoff`, the oldest end first,
    /// after skipping the first `skip` (runs a guard keeps), at most
    /// `limit` (1..=10,000).
    async fn expired_runs(
        &self,
        cutoff: DateTime<Utc>,
        skip: u32,
        limit: u32,
    ) -> Result<Vec<RunId>>;
    /// Deletes the run with its task instances, attempts, events, metrics
    /// and artifact rows (lineage) in one transaction, only if it is still
    /// finished and ended before `cutoff`, none of its artifacts was
    /// consumed by another run, and it is neither its DAG's latest
    /// successful run (the `when` baseline) nor its latest scheduled one
    /// (where cron resumes). Whether it was deleted.
    async fn delete_expired_run(&self, run: RunId, cutoff: DateTime<Utc>) -> Result<bool>;
    /// Whether the run exists (local log folders of runs another replica pruned).
    async fn run_exists(&self, run: RunId) -> Result<bool>;
}

/// Every store trait at once: what `store::connect` opens and what the code
/// that wires a process (`app.rs`, the CLI, tests) hands out, each consumer
/// getting only the trait it needs.
pub trait Store:
    StoreAdmin + EngineStore + DagCatalog + Coordination + LeaseStore + RetentionStore
{
}

impl<T> Store for T where
    T: StoreAdmin + EngineStore + DagCatalog + Coordination + LeaseStore + RetentionStore + ?Sized
{
}
