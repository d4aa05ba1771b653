//! The SQL behind the store traits, written once and instantiated for both
//! backends.
//!
//! Each file defines a `macro_rules!` that expands to inherent methods on a
//! backend type, then invokes it for `PgStore` and `SqliteStore`. The queries
//! are the same text on both (`$n` placeholders, `RETURNING`, `ON CONFLICT`
//! and row values work on PostgreSQL and SQLite alike); the few that differ
//! (claiming) branch on the backend. This module's `delegate!` then
//! implements the store traits by forwarding. Row decoding is already plain
//! generic code (`rows::Rows<DB>`).
//!
//! Why the areas are not yet generic over `DB: sqlx::Database` (tried on
//! `artifacts.rs`; the issue asks for it and it remains to be done):
//! - `QueryBuilder` in generic code did not borrow-check with sqlx 0.8
//!   (E0597 on `qb` at `qb.build().execute(&mut **tx)`). Our reading:
//!   `Sqlite::Arguments<'q>` is `SqliteArguments<'q>`, which is
//!   `IntoArguments<'q, Sqlite>` only at that same lifetime, and a projection
//!   `DB::Arguments<'args>` is invariant, so `qb.build().execute(..)` must
//!   borrow `qb` for all of `'args` and its destructor then outlives the
//!   borrow (E0597). Concrete types escape through variance. The multi-row
//!   statements (`push_values`, the claim, grouped transitions) would need
//!   their own builder over `sqlx::query_with` to be generic.
//! - `rows_affected` is an inherent method of `PgQueryResult` and
//!   `SqliteQueryResult`, not part of `Database::QueryResult`'s bounds: it
//!   needs a small backend trait (`fn rows_affected(&Self::QueryResult)`).
//! - Rust does not imply `i64: Encode<'q, DB>`-style bounds from a trait on
//!   `DB`, so every generic `impl` block repeats one list of ~15 bounds (as
//!   `Rows<DB>` does).

mod artifacts;
mod batch;
mod claim;
mod common;
mod dags;
mod runs;
mod tasks;
mod workers;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::TaskState;

use super::error::Result;
use super::types::*;
use super::{
    Coordination, DagCatalog, EngineStore, PgStore, ReadStore, SqliteStore, StoreAdmin, StoreBase,
};

macro_rules! delegate {
    ($Store:ty) => {
        #[async_trait]
        impl StoreBase for $Store {
            fn backend(&self) -> Backend {
                self.backend_kind()
            }
            fn pool_usage(&self) -> PoolUsage {
                self.pool_usage_now()
            }
            fn transactions_committed(&self) -> u64 {
                self.transactions_committed_now()
            }
            async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
                self.migration_status_now().await
            }
        }
        #[async_trait]
        impl StoreAdmin for $Store {
            async fn migrate(&self) -> Result<()> {
                self.migrate_now().await
            }
            async fn close(&self) {
                self.close_now().await
            }
        }
        #[async_trait]
        impl ReadStore for $Store {
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
            async fn last_scheduled_logical_date(
                &self,
                dag_id: &DagId,
            ) -> Result<Option<DateTime<Utc>>> {
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
            async fn attempts_held_by_worker(
                &self,
                worker_id: WorkerId,
            ) -> Result<Vec<HeldAttempt>> {
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
        }
        #[async_trait]
        impl EngineStore for $Store {
            async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
                self.sql_commit_batch(batch, actor).await
            }
            async fn create_run(
                &self,
                run: NewRun,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<RunCreation> {
                self.sql_create_run(run, actor, now).await
            }
            async fn set_dag_paused(
                &self,
                dag_id: &DagId,
                paused: bool,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_set_dag_paused(dag_id, paused, now).await
            }
        }
        #[async_trait]
        impl DagCatalog for $Store {
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
        impl Coordination for $Store {
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
                self.sql_set_dag_paused_and_wake(dag_id, paused, now).await
            }
        }
    };
}

delegate!(PgStore);
delegate!(SqliteStore);
