//! Claiming ready work: `ready → assigned`, attempt + 1, one attempt row each.
//!
//! Both forms are a single `UPDATE … RETURNING`. On PostgreSQL the rows are
//! picked in a CTE with `FOR UPDATE SKIP LOCKED`, so concurrent claimers (other
//! scheduler replicas) skip rows another transaction holds instead of waiting
//! or claiming them twice; the outer `UPDATE` re-checks `state = 'ready'`. On
//! SQLite the store's single write connection plus `BEGIN IMMEDIATE` already
//! excludes every other writer, so a plain subquery is enough.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{AttemptId, WorkerId};
use trainyard_core::state::TaskState;
use uuid::Uuid;

use super::builder::SqlBuilder;
use super::common::{self, EventSink, NewEvent};
use super::{SqlBackend, SqlStore};
use crate::store::Backend;
use crate::store::error::Result;
use crate::store::rows::{Rows, TI_COLS};
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
    /// Pushes the claim statement for this backend (`SqlBackend::KIND`);
    /// `RETURNING` gives the claimed rows.
    fn push_claim<'a>(qb: &mut SqlBuilder<'a, DB>, list: &'a [Assignment], now: DateTime<Utc>) {
        let push_candidates = |qb: &mut SqlBuilder<'a, DB>| {
            qb.push("SELECT id FROM task_instances WHERE state = 'ready'");
            qb.push(" AND id IN (");
            let mut s = qb.separated(", ");
            for a in list.iter() {
                s.push_bind(a.id.get());
            }
            qb.push(") AND (id, attempt) IN (VALUES ");
            let mut s = qb.separated(", ");
            for a in list.iter() {
                s.push("(");
                s.push_bind_unseparated(a.id.get());
                s.push_unseparated(", ");
                s.push_bind_unseparated(a.attempt);
                s.push_unseparated(")");
            }
            qb.push(")");
        };
        let returning = TI_COLS
            .split(", ")
            .map(|c| format!("t.{}", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        match DB::KIND {
            Backend::Postgres => {
                qb.push("WITH picked AS (");
                push_candidates(qb);
                qb.push(
                    " FOR UPDATE SKIP LOCKED) UPDATE task_instances AS t SET state = 'assigned', ",
                );
                qb.push("attempt = t.attempt + 1, queued_at = ")
                    .push_bind(now);
                qb.push(", updated_at = ").push_bind(now);
                qb.push(" FROM picked WHERE t.id = picked.id AND t.state = 'ready' RETURNING ");
                qb.push(returning);
            }
            Backend::Sqlite => {
                qb.push(
                "UPDATE task_instances SET state = 'assigned', attempt = attempt + 1, queued_at = ",
            );
                qb.push_bind(now).push(", updated_at = ").push_bind(now);
                qb.push(" WHERE id IN (");
                push_candidates(qb);
                qb.push(") RETURNING ");
                qb.push(TI_COLS);
            }
        }
    }

    /// The claim inside `tx` (nothing is written when nothing matched).
    #[allow(clippy::too_many_arguments)]
    async fn tx_claim(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        list: &[Assignment],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        let placements: HashMap<i64, (Option<WorkerId>, Vec<u32>)> = list
            .iter()
            .map(|a| (a.id.get(), (a.worker_id, a.gpus.clone())))
            .collect();
        let mut qb = SqlBuilder::<DB>::new("");
        Self::push_claim(&mut qb, list, now);
        let (sql, args) = qb.finish()?;
        let rows = sqlx::query_with(&sql, args).fetch_all(&mut **tx).await?;
        let mut tasks = rows
            .iter()
            .map(Rows::<DB>::task)
            .collect::<Result<Vec<_>>>()?;
        if tasks.is_empty() {
            return Ok(Vec::new());
        }
        tasks.sort_by(|a, b| b.priority.cmp(&a.priority).then(a.id.cmp(&b.id)));
        let place = |t: &TaskInstance| {
            placements
                .get(&t.id.get())
                .cloned()
                .unwrap_or((None, Vec::new()))
        };
        let mut attempt_ids = HashMap::with_capacity(tasks.len());
        for chunk in tasks.chunks(common::CHUNK) {
            let mut qb = SqlBuilder::<DB>::new(
                "INSERT INTO attempts (task_instance_id, run_id, attempt, worker_id, gpus, \
                 assigned_at) ",
            );
            qb.push_values(chunk, |mut b, t| {
                let (worker, gpus) = place(t);
                b.push_bind(t.id.get())
                    .push_bind(t.run_id.as_uuid())
                    .push_bind(t.attempt)
                    .push_bind(worker.map(|w| w.as_uuid()))
                    .push_bind(sqlx::types::Json(gpus))
                    .push_bind(now);
            });
            qb.push(" RETURNING id, task_instance_id");
            let (sql, args) = qb.finish()?;
            for r in sqlx::query_with(&sql, args).fetch_all(&mut **tx).await? {
                attempt_ids.insert(
                    r.try_get::<i64, _>("task_instance_id")?,
                    r.try_get::<i64, _>("id")?,
                );
            }
        }
        let events: Vec<NewEvent> = tasks
            .iter()
            .map(|t| NewEvent {
                run_id: t.run_id,
                entity: EventEntity::Task,
                task_instance_id: Some(t.id),
                task_id: Some(t.task_id.clone()),
                from_state: Some(TaskState::Ready.as_str()),
                to_state: TaskState::Assigned.as_str(),
                attempt: Some(t.attempt),
                reason: None,
            })
            .collect();
        sink.add(&events, actor, now);
        Ok(tasks
            .into_iter()
            .map(|t| {
                let (worker, gpus) = place(&t);
                ClaimedTask {
                    attempt_id: AttemptId::new(
                        attempt_ids.get(&t.id.get()).copied().unwrap_or_default(),
                    ),
                    id: t.id,
                    run_id: t.run_id,
                    dag_id: t.dag_id,
                    task_id: t.task_id,
                    attempt: t.attempt,
                    worker_id: worker,
                    gpus,
                    priority: t.priority,
                    pool: t.pool,
                    resources: t.resources,
                }
            })
            .collect())
    }

    /// Claims exactly these assignments inside `tx`; fewer rows than asked
    /// is a conflict (the engine's memory and the store disagree).
    pub(crate) async fn tx_assign_exactly(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        assignments: &[Assignment],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        for chunk in assignments.chunks(common::CHUNK) {
            let claimed = Self::tx_claim(tx, sink, chunk, actor, now).await?;
            if claimed.len() < chunk.len() {
                let missed = chunk
                    .iter()
                    .find(|a| !claimed.iter().any(|c| c.id == a.id))
                    .unwrap_or(&chunk[0]);
                return Err(crate::store::StoreError::NotReady {
                    id: missed.id,
                    attempt: missed.attempt,
                });
            }
        }
        Ok(())
    }
}
