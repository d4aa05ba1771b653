//! The retention task's SQL (finished runs past the retention, with all
//! their rows) and the engine's record of skipped cron slots.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{DagId, RunId};
use uuid::Uuid;

use super::{SqlBackend, SqlStore};
use crate::store::error::Result;
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
    pub(crate) async fn sql_expired_runs(
        &self,
        cutoff: DateTime<Utc>,
        skip: u32,
        limit: u32,
    ) -> Result<Vec<RunId>> {
        let ids: Vec<Uuid> = sqlx::query_scalar(
            "SELECT id FROM runs WHERE state IN ('success', 'failed', 'cancelled') \
             AND ended_at IS NOT NULL AND ended_at < $1 ORDER BY ended_at, id LIMIT $2 OFFSET $3",
        )
        .bind(cutoff)
        .bind(i64::from(limit.clamp(1, 10_000)))
        .bind(i64::from(skip))
        .fetch_all(self.read_pool())
        .await?;
        Ok(ids.into_iter().map(RunId::from_uuid).collect())
    }

    /// One run's rows, in one transaction: nothing when a guard of
    /// `prune_run.sql` holds (then `false`).
    pub(crate) async fn sql_delete_expired_run(
        &self,
        run: RunId,
        cutoff: DateTime<Utc>,
    ) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let deleted = sqlx::query(include_str!("../sql/prune_run.sql"))
            .bind(run.as_uuid())
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        if DB::rows_affected(&deleted) == 0 {
            // Still active, reopened, needed, or gone already.
            tx.rollback().await?;
            return Ok(false);
        }
        // Rows that name the run without a foreign key: its transition log
        // and what its attempts consumed of other runs' artifacts.
        for sql in [
            "DELETE FROM events WHERE run_id = $1",
            "DELETE FROM artifact_inputs WHERE run_id = $1",
        ] {
            sqlx::query(sql)
                .bind(run.as_uuid())
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        Ok(true)
    }

    pub(crate) async fn sql_run_exists(&self, run: RunId) -> Result<bool> {
        let row = sqlx::query("SELECT 1 AS one FROM runs WHERE id = $1")
            .bind(run.as_uuid())
            .fetch_optional(self.read_pool())
            .await?;
        Ok(row.is_some())
    }

    /// Records a catch-up's skipped slots: one row, and the DAG's count.
    pub(crate) async fn tx_record_skipped_slots(
        tx: &mut Transaction<'static, DB>,
        s: &SkippedSlots,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let slots = i64::try_from(s.slots).unwrap_or(i64::MAX);
        sqlx::query(
            "INSERT INTO skipped_slots (dag_id, slots, first_logical_date, last_logical_date, \
             reason, recorded_at) VALUES ($1, $2, $3, $4, $5, $6)",
        )
        .bind(s.dag_id.as_str())
        .bind(slots)
        .bind(s.first)
        .bind(s.last)
        .bind(s.reason.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
        sqlx::query("UPDATE dags SET skipped_slots = skipped_slots + $1 WHERE id = $2")
            .bind(slots)
            .bind(s.dag_id.as_str())
            .execute(&mut **tx)
            .await?;
        Ok(())
    }

    /// The DAG's skipped-slot records, newest first.
    pub(crate) async fn sql_skipped_slots(
        &self,
        dag_id: &DagId,
        limit: u32,
    ) -> Result<Vec<SkippedSlotsRecord>> {
        let rows = sqlx::query(
            "SELECT slots, first_logical_date, last_logical_date, reason, recorded_at \
             FROM skipped_slots WHERE dag_id = $1 ORDER BY id DESC LIMIT $2",
        )
        .bind(dag_id.as_str())
        .bind(i64::from(limit.clamp(1, 10_000)))
        .fetch_all(self.read_pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SkippedSlotsRecord {
                    slots: u64::try_from(r.try_get::<i64, _>("slots")?).unwrap_or(0),
                    first_logical_date: r.try_get("first_logical_date")?,
                    last_logical_date: r.try_get("last_logical_date")?,
                    reason: r.try_get("reason")?,
                    recorded_at: r.try_get("recorded_at")?,
                })
            })
            .collect()
    }
}
