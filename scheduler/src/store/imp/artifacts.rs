//! Artifact lineage: what each attempt produced (key, URI, size, sha256) and
//! which attempts consumed it, plus where an attempt's archived log lives.
//!
//! Recording is idempotent: a TaskFinished re-sent after a reconnect inserts
//! nothing twice (`ON CONFLICT DO NOTHING` on the natural keys).

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{RunId, TaskInstanceId};
use uuid::Uuid;

use super::builder::SqlBuilder;
use super::{SqlBackend, SqlStore, common};
use crate::store::error::{Result, StoreError};
use crate::store::rows::Rows;
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
    /// Records what an attempt produced, inside `tx`.
    pub(crate) async fn tx_record_artifacts(
        tx: &mut Transaction<'static, DB>,
        producer: &AttemptOf,
        artifacts: &[NewArtifact],
        now: DateTime<Utc>,
    ) -> Result<()> {
        if artifacts.is_empty() {
            return Ok(());
        }
        for chunk in artifacts.chunks(common::CHUNK) {
            let mut qb = SqlBuilder::<DB>::new(
                "INSERT INTO artifacts (run_id, task_id, task_instance_id, attempt, key, uri, \
                 size, sha256, created_at) ",
            );
            let mut bad = None;
            qb.push_values(chunk, |mut b, a| {
                let size = i64::try_from(a.size).unwrap_or_else(|_| {
                    bad = Some(a.key.clone());
                    0
                });
                b.push_bind(producer.run_id.as_uuid())
                    .push_bind(producer.task_id.as_str().to_owned())
                    .push_bind(producer.task_instance_id.get())
                    .push_bind(producer.attempt)
                    .push_bind(a.key.clone())
                    .push_bind(a.uri.clone())
                    .push_bind(size)
                    .push_bind(a.sha256.clone())
                    .push_bind(now);
            });
            if let Some(key) = bad {
                return Err(StoreError::InvalidArgument(format!(
                    "artifact {key}: size does not fit in 63 bits"
                )));
            }
            qb.push(" ON CONFLICT (run_id, key) DO NOTHING");
            let (sql, args) = qb.finish()?;
            sqlx::query_with(&sql, args).execute(&mut **tx).await?;
        }
        Ok(())
    }

    /// Links an attempt to the run's artifacts it consumed, inside `tx`.
    pub(crate) async fn tx_record_artifact_inputs(
        tx: &mut Transaction<'static, DB>,
        consumer: &AttemptOf,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        if keys.is_empty() {
            return Ok(0);
        }
        let mut linked = 0;
        for chunk in keys.chunks(common::CHUNK) {
            let mut qb = SqlBuilder::<DB>::new(
                "INSERT INTO artifact_inputs (artifact_id, run_id, task_id, task_instance_id, \
                 attempt, consumed_at) SELECT id, ",
            );
            qb.push_bind(consumer.run_id.as_uuid())
                .push(", ")
                .push_bind(consumer.task_id.as_str().to_owned())
                .push(", ")
                .push_bind(consumer.task_instance_id.get())
                .push(", ")
                .push_bind(consumer.attempt)
                .push(", ")
                .push_bind(now)
                .push(" FROM artifacts WHERE run_id = ")
                .push_bind(consumer.run_id.as_uuid())
                .push(" AND key IN (");
            let mut list = qb.separated(", ");
            for key in chunk {
                list.push_bind(key.clone());
            }
            qb.push(") ON CONFLICT (artifact_id, task_instance_id, attempt) DO NOTHING");
            let (sql, args) = qb.finish()?;
            let done = sqlx::query_with(&sql, args).execute(&mut **tx).await?;
            linked += DB::rows_affected(&done);
        }
        Ok(linked)
    }

    pub(crate) async fn sql_run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>> {
        let rows = sqlx::query(include_str!("../sql/run_artifacts.sql"))
            .bind(run_id.as_uuid())
            .fetch_all(self.read_pool())
            .await?;
        let mut out: Vec<StoredArtifact> = Vec::new();
        for r in &rows {
            let id: i64 = r.try_get("id")?;
            if out.last().is_none_or(|a| a.id != id) {
                out.push(Rows::<DB>::artifact(r)?);
            }
            if let (Some(consumer), Some(last)) =
                (Rows::<DB>::artifact_consumer(r)?, out.last_mut())
            {
                last.consumers.push(consumer);
            }
        }
        Ok(out)
    }

    /// Where an attempt's archived log lives, inside `tx`.
    pub(crate) async fn tx_set_attempt_log_location(
        tx: &mut Transaction<'static, DB>,
        id: TaskInstanceId,
        attempt: i32,
        location: &str,
    ) -> Result<()> {
        let done = sqlx::query(
            "UPDATE attempts SET log_location = $1 WHERE task_instance_id = $2 AND attempt = $3",
        )
        .bind(location)
        .bind(id.get())
        .bind(attempt)
        .execute(&mut **tx)
        .await?;
        if DB::rows_affected(&done) == 0 {
            return Err(StoreError::not_found("attempt", format!("{id}/{attempt}")));
        }
        Ok(())
    }
}
