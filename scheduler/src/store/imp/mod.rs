//! The SQL behind the store traits, written once as plain generic code over
//! the two backends.
//!
//! [`SqlStore<DB>`] is the store on one database; [`PgStore`] is
//! `SqlStore<Postgres>` and [`SqliteStore`] is `SqlStore<Sqlite>`. Each file
//! here holds one area's SQL as an `impl<DB> SqlStore<DB>` block (`tx_*`
//! steps that run inside a caller's transaction, `sql_*` reads and single
//! writes), and this module implements the store traits once, generically,
//! by calling them. The queries are the same text on both backends (`$n`
//! placeholders, `RETURNING`, `ON CONFLICT` and row values work on
//! PostgreSQL and SQLite alike); the few things that differ are data of the
//! [`SqlBackend`] trait (the claim statement's form via `KIND`, `BEGIN
//! IMMEDIATE`, `NOTIFY`, the migrations catalog query) or of the backend's
//! own file (`postgres.rs`, `sqlite.rs`: connecting, the pools). Row
//! decoding is the generic `rows::Rows<DB>`.
//!
//! Two things generic sqlx 0.8 does not give directly, and how they are met:
//! - `rows_affected` is an inherent method of `PgQueryResult` and
//!   `SqliteQueryResult`, not part of `Database::QueryResult`'s bounds:
//!   [`SqlBackend::rows_affected`] reaches it.
//! - `QueryBuilder::build()` does not borrow-check in generic code (E0597,
//!   see `builder.rs`): multi-row statements use [`builder::SqlBuilder`],
//!   which writes the same text but hands back the SQL `String` and the
//!   arguments for `sqlx::query_with`.
//!
//! Every generic impl block repeats one where-clause; `SqlBackend`'s doc
//! says why.

mod artifacts;
mod backend;
mod batch;
mod builder;
mod claim;
mod common;
mod dags;
mod lease;
mod retention;
mod runs;
mod tasks;
mod workers;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{
    ColumnIndex, Database, Decode, Encode, Executor, IntoArguments, Pool, Transaction, Type,
};
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::TaskState;
use uuid::Uuid;

pub(crate) use backend::SqlBackend;

use super::error::{Result, StoreError};
use super::migrations::{check_not_newer, status_of};
use super::types::*;
use super::{
    Coordination, DagCatalog, EngineStore, Lease, LeaseStore, ReadStore, Replica, RetentionStore,
    StoreAdmin, StoreBase, TermFence, WAKEUP_CHANNEL, Wakeup,
};
#[cfg(doc)]
use super::{PgStore, SqliteStore};

/// The store on one database: [`PgStore`] (`SqlStore<Postgres>`) or
/// [`SqliteStore`] (`SqlStore<Sqlite>`). Cloning shares the pools.
pub struct SqlStore<DB: Database> {
    /// Where writes go. SQLite: a pool of exactly one connection, so writes
    /// are serialised in-process. PostgreSQL: the one pool, reads included.
    writer: Pool<DB>,
    /// Reads, where they have a pool of their own (SQLite: read-only
    /// connections, or the writer itself for an in-memory database, which
    /// cannot be shared between connections); `None`: the writer's pool.
    reader: Option<Pool<DB>>,
    /// Committed write transactions (shared by clones).
    committed: Arc<AtomicU64>,
    /// Set on the engine's store of one leadership term
    /// ([`LeaseStore::fenced`]): its engine writes check the term first.
    fence: Option<TermFence>,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            writer: self.writer.clone(),
            reader: self.reader.clone(),
            committed: Arc::clone(&self.committed),
            fence: self.fence.clone(),
        }
    }
}

impl<DB: Database> std::fmt::Debug for SqlStore<DB> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlStore")
            .field("backend", &DB::NAME)
            .field("writer", &self.writer)
            .field("reader", &self.reader)
            .field("committed", &self.committed)
            .field("fence", &self.fence)
            .finish()
    }
}

impl<DB: Database> SqlStore<DB> {
    /// A store over these pools (`reader: None` reads through `writer`);
    /// the backend's `connect` then migrates or checks the schema.
    pub(crate) fn from_pools(writer: Pool<DB>, reader: Option<Pool<DB>>) -> Self {
        Self {
            writer,
            reader,
            committed: Arc::default(),
            fence: None,
        }
    }

    /// The write pool (tests and the benchmark use it for raw checks).
    pub fn pool(&self) -> &Pool<DB> {
        &self.writer
    }

    pub(crate) fn read_pool(&self) -> &Pool<DB> {
        self.reader.as_ref().unwrap_or(&self.writer)
    }

    /// Connections of every pool the store holds (the writer, and the
    /// reader where it is one; an in-memory SQLite database counts its one
    /// connection under both, as it always has).
    fn pool_usage_now(&self) -> PoolUsage {
        let pools = std::iter::once(&self.writer).chain(self.reader.as_ref());
        let mut usage = PoolUsage::default();
        for p in pools {
            usage.open += p.size();
            usage.idle += u32::try_from(p.num_idle()).unwrap_or(u32::MAX);
            usage.max += p.options().get_max_connections();
        }
        usage
    }

    /// Commits a write transaction and counts it (`trainyard_store_transactions_total`).
    pub(crate) async fn commit(&self, tx: Transaction<'static, DB>) -> Result<()> {
        tx.commit().await?;
        self.committed.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn close_now(&self) {
        self.writer.close().await;
        if let Some(reader) = &self.reader {
            reader.close().await;
        }
    }
}

impl<DB> SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    /// Opens a write transaction (`SqlBackend::BEGIN_WRITE`).
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, DB>> {
        Ok(match DB::BEGIN_WRITE {
            Some(begin) => self.writer.begin_with(begin).await?,
            None => self.writer.begin().await?,
        })
    }

    /// Opens a write transaction of the engine: on a term's store
    /// ([`LeaseStore::fenced`]) its first statement is the term fence
    /// (`SqlBackend::LEASE_FENCE`), and a lease that no longer carries the
    /// term refuses it with [`StoreError::NotLeader`] before anything is
    /// written. Without a fence (tests, `bench`, SQLite tools) it is
    /// [`Self::begin_write`].
    pub(crate) async fn begin_engine_write(&self) -> Result<Transaction<'static, DB>> {
        let mut tx = self.begin_write().await?;
        let Some(fence) = &self.fence else {
            return Ok(tx);
        };
        let held: Option<i64> = sqlx::query_scalar(DB::LEASE_FENCE)
            .bind(fence.group.as_str())
            .bind(fence.term)
            .fetch_optional(&mut *tx)
            .await?;
        if held.is_some() {
            return Ok(tx);
        }
        let current: Option<i64> =
            sqlx::query_scalar("SELECT term FROM leader_lease WHERE ha_group = $1")
                .bind(fence.group.as_str())
                .fetch_optional(&mut *tx)
                .await?;
        drop(tx);
        fence.note_refused();
        Err(StoreError::NotLeader {
            group: fence.group.clone(),
            term: fence.term,
            current,
        })
    }

    /// Queues a wake-up in the transaction where the backend has one
    /// (Postgres `NOTIFY`: delivered at commit, dropped on rollback, so the
    /// leader never hears of a run that was not written). SQLite has one
    /// process: the engine that matters is this one, told directly.
    pub(crate) async fn wake_in(tx: &mut Transaction<'static, DB>, w: &Wakeup) -> Result<()> {
        if let Some(notify) = DB::NOTIFY {
            sqlx::query(notify)
                .bind(WAKEUP_CHANNEL)
                .bind(w.to_string())
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    async fn applied_versions(&self) -> Result<Vec<i64>> {
        let exists: bool = sqlx::query_scalar(DB::MIGRATIONS_TABLE_EXISTS)
            .fetch_one(&self.writer)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        Ok(sqlx::query_scalar(
            "SELECT version FROM _sqlx_migrations WHERE success ORDER BY version",
        )
        .fetch_all(&self.writer)
        .await?)
    }

    /// Fails when the database has a migration this binary does not know.
    pub(crate) async fn refuse_newer_schema(&self) -> Result<()> {
        check_not_newer(DB::migrator(), &self.applied_versions().await?)
    }

    pub(crate) async fn migrate_now(&self) -> Result<()> {
        self.refuse_newer_schema().await?;
        DB::migrator().run(&self.writer).await?;
        Ok(())
    }
}

#[async_trait]
impl<DB> StoreBase for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    fn backend(&self) -> Backend {
        DB::KIND
    }
    fn pool_usage(&self) -> PoolUsage {
        self.pool_usage_now()
    }
    fn transactions_committed(&self) -> u64 {
        self.committed.load(Ordering::Relaxed)
    }
    async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        Ok(status_of(DB::migrator(), &self.applied_versions().await?))
    }
}

#[async_trait]
impl<DB> StoreAdmin for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn migrate(&self) -> Result<()> {
        self.migrate_now().await
    }
    async fn close(&self) {
        self.close_now().await
    }
}

#[async_trait]
impl<DB> ReadStore for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn get_dag(&self, dag_id: &DagId) -> Result<Dag> {
        self.sql_get_dag(dag_id).await
    }
    async fn list_dags(&self) -> Result<Vec<Dag>> {
        self.sql_list_dags().await
    }
    async fn get_dag_version(&self, id: DagVersionId) -> Result<DagVersion> {
        self.sql_get_dag_version(id).await
    }
    async fn get_run(&self, id: RunId) -> Result<Run> {
        self.sql_get_run(id).await
    }
    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        self.sql_list_runs(filter).await
    }
    async fn active_runs(&self) -> Result<Vec<Run>> {
        self.sql_active_runs().await
    }
    async fn last_successful_run(&self, dag_id: &DagId) -> Result<Option<Run>> {
        self.sql_last_successful_run(dag_id).await
    }
    async fn last_scheduled_logical_date(&self, dag_id: &DagId) -> Result<Option<DateTime<Utc>>> {
        self.sql_last_scheduled_logical_date(dag_id).await
    }
    async fn run_events(
        &self,
        run_id: RunId,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        self.sql_run_events(run_id, after, limit).await
    }
    async fn skip_events(&self, run_id: RunId) -> Result<Vec<Event>> {
        self.sql_skip_events(run_id).await
    }
    async fn get_task_instance(&self, id: TaskInstanceId) -> Result<TaskInstance> {
        self.sql_get_task_instance(id).await
    }
    async fn task_instances(&self, run_id: RunId) -> Result<Vec<TaskInstance>> {
        self.sql_task_instances(run_id).await
    }
    async fn task_instances_in_state(
        &self,
        state: TaskState,
        limit: u32,
    ) -> Result<Vec<TaskInstance>> {
        self.sql_task_instances_in_state(state, limit).await
    }
    async fn attempts(&self, id: TaskInstanceId) -> Result<Vec<Attempt>> {
        self.sql_attempts(id).await
    }
    async fn run_attempts(&self, run_id: RunId) -> Result<Vec<Attempt>> {
        self.sql_run_attempts(run_id).await
    }
    async fn attempts_held_by_worker(&self, worker_id: WorkerId) -> Result<Vec<HeldAttempt>> {
        self.sql_attempts_held_by_worker(worker_id).await
    }
    async fn list_workers(&self) -> Result<Vec<Worker>> {
        self.sql_list_workers().await
    }
    async fn run_metrics(&self, run_id: RunId) -> Result<Vec<MetricPoint>> {
        self.sql_run_metrics(run_id).await
    }
    async fn metric_series(
        &self,
        dag_id: &DagId,
        task_id: &TaskId,
        name: &str,
        limit: u32,
    ) -> Result<Vec<SeriesPoint>> {
        self.sql_metric_series(dag_id, task_id, name, limit).await
    }
    async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>> {
        self.sql_run_artifacts(run_id).await
    }
    async fn skipped_slots(&self, dag_id: &DagId, limit: u32) -> Result<Vec<SkippedSlotsRecord>> {
        self.sql_skipped_slots(dag_id, limit).await
    }
}

#[async_trait]
impl<DB> EngineStore for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
        self.sql_commit_batch(batch, actor).await
    }
    async fn create_run(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation> {
        self.sql_create_run_waking(run, actor, now, false).await
    }
    async fn set_dag_paused(&self, dag_id: &DagId, paused: bool, now: DateTime<Utc>) -> Result<()> {
        self.sql_set_dag_paused(dag_id, paused, now, false).await
    }
}

#[async_trait]
impl<DB> DagCatalog for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn upsert_dag_version(
        &self,
        v: NewDagVersion,
        now: DateTime<Utc>,
    ) -> Result<UpsertedVersion> {
        self.sql_upsert_dag_version(v, now).await
    }
    async fn record_parse_error(
        &self,
        dag_id: &DagId,
        file_path: Option<&str>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.sql_record_parse_error(dag_id, file_path, error, now)
            .await
    }
    async fn deactivate_dag(&self, dag_id: &DagId, now: DateTime<Utc>) -> Result<()> {
        self.sql_deactivate_dag(dag_id, now).await
    }
}

#[async_trait]
impl<DB> Coordination for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn create_run_and_wake(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation> {
        self.sql_create_run_waking(run, actor, now, true).await
    }
    async fn set_dag_paused_and_wake(
        &self,
        dag_id: &DagId,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.sql_set_dag_paused(dag_id, paused, now, true).await
    }
}

#[async_trait]
impl<DB> LeaseStore for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn lease(&self, group: &str) -> Result<Option<Lease>> {
        self.sql_lease(group).await
    }
    async fn take_lease_alone(
        &self,
        group: &str,
        me: &Replica,
        lease: std::time::Duration,
        now: DateTime<Utc>,
    ) -> Result<Lease> {
        self.sql_take_lease_alone(group, me, lease, now).await
    }
    fn fenced(&self, fence: TermFence) -> Arc<dyn EngineStore> {
        let mut store = self.clone();
        store.fence = Some(fence);
        Arc::new(store)
    }
}

#[async_trait]
impl<DB> RetentionStore for SqlStore<DB>
where
    DB: SqlBackend,
    DB::Connection: Migrate,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    for<'q> DB::Arguments<'q>: IntoArguments<'q, DB>,
    usize: ColumnIndex<DB::Row>,
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'q> bool: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i32: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> i64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> f64: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> String: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> &'q str: Encode<'q, DB> + Type<DB>,
    for<'q> Uuid: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> DateTime<Utc>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<Value>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Json<&'q Value>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<&'q crate::store::SpecJson>: Encode<'q, DB> + Type<DB>,
    for<'q> Json<crate::store::SpecJson>: Decode<'q, DB> + Type<DB>,
    for<'q> Json<Vec<u32>>: Encode<'q, DB> + Decode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB>,
    for<'q> Option<i64>: Encode<'q, DB>,
    for<'q> Option<String>: Encode<'q, DB>,
    for<'q> Option<&'q str>: Encode<'q, DB>,
    for<'q> Option<Uuid>: Encode<'q, DB>,
    for<'q> Option<DateTime<Utc>>: Encode<'q, DB>,
{
    async fn expired_runs(
        &self,
        cutoff: DateTime<Utc>,
        skip: u32,
        limit: u32,
    ) -> Result<Vec<RunId>> {
        self.sql_expired_runs(cutoff, skip, limit).await
    }
    async fn delete_expired_run(&self, run: RunId, cutoff: DateTime<Utc>) -> Result<bool> {
        self.sql_delete_expired_run(run, cutoff).await
    }
    async fn run_exists(&self, run: RunId) -> Result<bool> {
        self.sql_run_exists(run).await
    }
}
