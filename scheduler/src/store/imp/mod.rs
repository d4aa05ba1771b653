//! The SQL behind [`Store`], written once and instantiated for both backends.
//!
//! Each file defines a `macro_rules!` that expands to inherent methods on a
//! backend type, then invokes it for `PgStore` and `SqliteStore`. The queries
//! are the same text on both (`$n` placeholders, `RETURNING`, `ON CONFLICT`
//! and row values work on PostgreSQL and SQLite alike); the few that differ
//! (claiming) come from the backend's own `.sql` file. A macro rather than
//! generics because sqlx's generic executor bounds would drown the SQL.
//! This module's `delegate!` then implements the trait by forwarding.

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
use trainyard_core::state::{TaskState, WorkerState};

use super::error::Result;
use super::types::*;
use super::{PgStore, SqliteStore, Store};

macro_rules! delegate {
    ($Store:ty) => {
        #[async_trait]
        impl Store for $Store {
            fn backend(&self) -> Backend {
                self.backend_kind()
            }
            fn pool_usage(&self) -> PoolUsage {
                self.pool_usage_now()
            }
            fn transactions_committed(&self) -> u64 {
                self.transactions_committed_now()
            }
            async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
                self.sql_commit_batch(batch, actor).await
            }
            async fn migrate(&self) -> Result<()> {
                self.migrate_now().await
            }
            async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
                self.migration_status_now().await
            }
            async fn close(&self) {
                self.close_now().await
            }
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
            async fn set_dag_paused(
                &self,
                dag_id: &DagId,
                paused: bool,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_set_dag_paused(dag_id, paused, now).await
            }
            async fn deactivate_dag(&self, dag_id: &DagId, now: DateTime<Utc>) -> Result<()> {
                self.sql_deactivate_dag(dag_id, now).await
            }
            async fn get_dag(&self, dag_id: &DagId) -> Result<Dag> {
                self.sql_get_dag(dag_id).await
            }
            async fn list_dags(&self) -> Result<Vec<Dag>> {
                self.sql_list_dags().await
            }
            async fn get_dag_version(&self, id: DagVersionId) -> Result<DagVersion> {
                self.sql_get_dag_version(id).await
            }
            async fn create_run(
                &self,
                run: NewRun,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<RunCreation> {
                self.sql_create_run(run, actor, now).await
            }
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
            async fn get_run(&self, id: RunId) -> Result<Run> {
                self.sql_get_run(id).await
            }
            async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
                self.sql_list_runs(filter).await
            }
            async fn active_runs(&self) -> Result<Vec<Run>> {
                self.sql_active_runs().await
            }
            async fn transition_run(
                &self,
                t: RunTransition,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<Run> {
                self.sql_transition_run(t, actor, now).await
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
            async fn transition_task(
                &self,
                t: TaskTransition,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_transition_tasks(std::slice::from_ref(&t), actor, now)
                    .await
            }
            async fn transition_tasks(
                &self,
                ts: &[TaskTransition],
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_transition_tasks(ts, actor, now).await
            }
            async fn claim_ready(
                &self,
                filter: &ClaimFilter,
                limit: u32,
                worker_id: Option<WorkerId>,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<Vec<ClaimedTask>> {
                self.sql_claim_ready(filter, limit, worker_id, actor, now)
                    .await
            }
            async fn assign_tasks(
                &self,
                assignments: &[Assignment],
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<Vec<ClaimedTask>> {
                self.sql_assign_tasks(assignments, actor, now).await
            }
            async fn ready_tasks(
                &self,
                filter: &ClaimFilter,
                limit: u32,
            ) -> Result<Vec<TaskInstance>> {
                self.sql_ready_tasks(filter, limit).await
            }
            async fn due_retries(
                &self,
                now: DateTime<Utc>,
                limit: u32,
            ) -> Result<Vec<TaskInstance>> {
                self.sql_due_retries(now, limit).await
            }
            async fn next_retry_time(&self) -> Result<Option<DateTime<Utc>>> {
                self.sql_next_retry_time().await
            }
            async fn start_attempt(
                &self,
                id: TaskInstanceId,
                attempt: i32,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_start_attempt(id, attempt, actor, now).await
            }
            async fn finish_attempt(
                &self,
                report: FinishAttempt,
                actor: &str,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_finish_attempt(report, actor, now).await
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
            async fn register_worker(
                &self,
                worker: NewWorker,
                now: DateTime<Utc>,
            ) -> Result<Worker> {
                self.sql_register_worker(worker, now).await
            }
            async fn heartbeat_worker(
                &self,
                id: WorkerId,
                now: DateTime<Utc>,
            ) -> Result<WorkerState> {
                self.sql_heartbeat_worker(id, now).await
            }
            async fn set_worker_state(
                &self,
                id: WorkerId,
                state: WorkerState,
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_set_worker_state(id, state, now).await
            }
            async fn mark_worker_lost(
                &self,
                id: WorkerId,
                reason: &str,
                now: DateTime<Utc>,
            ) -> Result<Vec<HeldAttempt>> {
                self.sql_mark_worker_lost(id, reason, now).await
            }
            async fn list_workers(&self) -> Result<Vec<Worker>> {
                self.sql_list_workers().await
            }
            async fn stale_workers(&self, cutoff: DateTime<Utc>) -> Result<Vec<Worker>> {
                self.sql_stale_workers(cutoff).await
            }
            async fn record_metrics(
                &self,
                id: TaskInstanceId,
                attempt: i32,
                metrics: &[(String, f64)],
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_record_metrics(id, attempt, metrics, now).await
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
            async fn record_artifacts(
                &self,
                producer: &AttemptOf,
                artifacts: &[NewArtifact],
                now: DateTime<Utc>,
            ) -> Result<()> {
                self.sql_record_artifacts(producer, artifacts, now).await
            }
            async fn record_artifact_inputs(
                &self,
                consumer: &AttemptOf,
                keys: &[String],
                now: DateTime<Utc>,
            ) -> Result<u64> {
                self.sql_record_artifact_inputs(consumer, keys, now).await
            }
            async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>> {
                self.sql_run_artifacts(run_id).await
            }
            async fn set_attempt_log_location(
                &self,
                id: TaskInstanceId,
                attempt: i32,
                location: &str,
            ) -> Result<()> {
                self.sql_set_attempt_log_location(id, attempt, location)
                    .await
            }
        }
    };
}

delegate!(PgStore);
delegate!(SqliteStore);
