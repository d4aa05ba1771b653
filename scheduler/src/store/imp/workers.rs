//! Workers (registration, heartbeats, lost workers and their attempts) and
//! metrics reported by attempts.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{DagId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{TaskState, WorkerState};
use uuid::Uuid;

use super::common::{self, OnConflict};
use super::{SqlBackend, SqlStore};
use crate::store::error::{Result, StoreError};
use crate::store::rows::{Rows, WORKER_COLS, parse};
use crate::store::types::*;

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
    /// Inserts or re-registers a worker inside `tx`.
    pub(crate) async fn tx_register_worker(
        tx: &mut Transaction<'static, DB>,
        w: &NewWorker,
        now: DateTime<Utc>,
    ) -> Result<Worker> {
        let sql = format!(
            "INSERT INTO workers (id, name, state, resources, gpus, labels, registered_at, \
             last_heartbeat_at, updated_at, credential_sha256) VALUES ($1, $2, 'active', $3, \
             $4, $5, $6, $6, $6, $7) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, state = 'active', \
             resources = excluded.resources, gpus = excluded.gpus, labels = \
             excluded.labels, \
             last_heartbeat_at = excluded.last_heartbeat_at, updated_at = \
             excluded.updated_at, credential_sha256 = excluded.credential_sha256 \
             RETURNING {WORKER_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(w.id.as_uuid())
            .bind(&w.name)
            .bind(Json(&w.resources))
            .bind(Json(&w.gpus))
            .bind(Json(&w.labels))
            .bind(now)
            .bind(w.credential_sha256.as_deref())
            .fetch_one(&mut **tx)
            .await?;
        let worker = Rows::<DB>::worker(&row)?;
        Ok(worker)
    }

    /// Records a heartbeat time inside `tx`.
    pub(crate) async fn tx_heartbeat_worker(
        tx: &mut Transaction<'static, DB>,
        id: WorkerId,
        now: DateTime<Utc>,
    ) -> Result<WorkerState> {
        let state: Option<String> = sqlx::query_scalar(
            "UPDATE workers SET last_heartbeat_at = $1 WHERE id = $2 RETURNING state",
        )
        .bind(now)
        .bind(id.as_uuid())
        .fetch_optional(&mut **tx)
        .await?;
        match state {
            Some(s) => parse("workers", &s),
            None => Err(StoreError::not_found("worker", id)),
        }
    }

    pub(crate) async fn tx_set_worker_state(
        tx: &mut Transaction<'static, DB>,
        id: WorkerId,
        state: WorkerState,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let done = sqlx::query("UPDATE workers SET state = $1, updated_at = $2 WHERE id = $3")
            .bind(state.as_str())
            .bind(now)
            .bind(id.as_uuid())
            .execute(&mut **tx)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::not_found("worker", id));
        }
        Ok(())
    }

    /// Marks a worker lost and its held attempts `lost`, inside `tx`.
    pub(crate) async fn tx_mark_worker_lost(
        tx: &mut Transaction<'static, DB>,
        sink: &mut common::EventSink,
        id: WorkerId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<HeldAttempt>> {
        let done = sqlx::query("UPDATE workers SET state = 'lost', updated_at = $1 WHERE id = $2")
            .bind(now)
            .bind(id.as_uuid())
            .execute(&mut **tx)
            .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::not_found("worker", id));
        }
        let rows = sqlx::query(include_str!("../sql/held_attempts.sql"))
            .bind(id.as_uuid())
            .fetch_all(&mut **tx)
            .await?;
        let held = rows
            .iter()
            .map(Rows::<DB>::held)
            .collect::<Result<Vec<_>>>()?;
        let transitions: Vec<TaskTransition> = held
            .iter()
            .map(|h| {
                TaskTransition::new(h.task_instance_id, h.state, TaskState::Lost, h.attempt)
                    .reason(reason)
            })
            .collect();
        // An attempt may finish while we look; skip it rather than fail the rest.
        let applied = Self::apply_transitions(
            tx,
            sink,
            &transitions,
            OnConflict::Skip,
            &format!("worker-monitor:{id}"),
            now,
        )
        .await?;
        Ok(held
            .into_iter()
            .filter(|h| applied.iter().any(|a| a.0 == h.task_instance_id))
            .collect())
    }

    pub(crate) async fn sql_list_workers(&self) -> Result<Vec<Worker>> {
        let sql = format!("SELECT {WORKER_COLS} FROM workers ORDER BY name, id");
        let rows = sqlx::query(&sql).fetch_all(self.read_pool()).await?;
        rows.iter().map(Rows::<DB>::worker).collect()
    }

    /// Stores one attempt's metrics inside `tx`.
    pub(crate) async fn tx_record_metrics(
        tx: &mut Transaction<'static, DB>,
        id: TaskInstanceId,
        attempt: i32,
        metrics: &[(String, f64)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if metrics.is_empty() {
            return Ok(());
        }
        let row = sqlx::query(
            "SELECT run_id, dag_id, task_id, attempt FROM task_instances WHERE id = $1",
        )
        .bind(id.get())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::not_found("task instance", id))?;
        let current: i32 = row.try_get("attempt")?;
        if attempt < 1 || attempt > current {
            return Err(StoreError::InvalidArgument(format!(
                "task instance {id}: metrics for attempt {attempt}, but the latest attempt is \
                 {current}"
            )));
        }
        let run: Uuid = row.try_get("run_id")?;
        let dag: String = row.try_get("dag_id")?;
        let task: String = row.try_get("task_id")?;
        for (name, value) in metrics {
            if !value.is_finite() {
                return Err(StoreError::InvalidArgument(format!(
                    "metric {name:?} of task instance {id} is not a finite number"
                )));
            }
            sqlx::query(include_str!("../sql/record_metrics.sql"))
                .bind(run)
                .bind(&dag)
                .bind(&task)
                .bind(id.get())
                .bind(attempt)
                .bind(name)
                .bind(*value)
                .bind(now)
                .execute(&mut **tx)
                .await?;
        }
        Ok(())
    }

    pub(crate) async fn sql_run_metrics(&self, run_id: RunId) -> Result<Vec<MetricPoint>> {
        let rows = sqlx::query(
            "SELECT task_instance_id, task_id, attempt, name, value, recorded_at FROM metrics \
             WHERE run_id = $1 ORDER BY task_id, attempt, name",
        )
        .bind(run_id.as_uuid())
        .fetch_all(self.read_pool())
        .await?;
        rows.iter().map(Rows::<DB>::metric).collect()
    }

    pub(crate) async fn sql_metric_series(
        &self,
        dag_id: &DagId,
        task_id: &TaskId,
        name: &str,
        limit: u32,
    ) -> Result<Vec<SeriesPoint>> {
        let rows = sqlx::query(include_str!("../sql/metric_series.sql"))
            .bind(dag_id.as_str())
            .bind(task_id.as_str())
            .bind(name)
            .bind(common::clamp_limit(limit))
            .fetch_all(self.read_pool())
            .await?;
        let mut points = rows
            .iter()
            .map(Rows::<DB>::series)
            .collect::<Result<Vec<_>>>()?;
        points.reverse();
        Ok(points)
    }
}
