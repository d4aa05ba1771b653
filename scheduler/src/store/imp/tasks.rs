//! Task instances: compare-and-set transitions (single and batched), claiming
//! ready work, and attempts (start, finish, fencing).
//!
//! A transition batch is validated against the core state machine, grouped by
//! (from, to, retry time, outcome), and each group is one
//! `UPDATE … WHERE state = from AND id IN (…) AND (id, attempt) IN (VALUES …)
//! RETURNING …`; fewer rows back than asked means a compare-and-set missed.
//! Attempt rows are closed and event rows appended in the same transaction.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::TaskState;
use uuid::Uuid;

use super::builder::SqlBuilder;
use super::common::{self, EventSink, NewEvent, OnConflict};
use super::{SqlBackend, SqlStore};
use crate::store::error::{Result, StoreError};
use crate::store::rows::{ATTEMPT_COLS, Rows, TI_COLS, parse};
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
    /// Applies CAS transitions inside `tx`; returns (id, run, task, attempt) of
    /// those applied. With `OnConflict::Fail` any miss aborts with an error.
    pub(crate) async fn apply_transitions(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        transitions: &[TaskTransition],
        on_conflict: OnConflict,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<(TaskInstanceId, RunId, TaskId, i32)>> {
        let mut applied = Vec::with_capacity(transitions.len());
        let mut events = Vec::with_capacity(transitions.len());
        for group in common::group(transitions) {
            for chunk in group.chunks(common::CHUNK) {
                let first = chunk[0];
                let (from, to) = (first.from, first.to);
                let mut qb = SqlBuilder::<DB>::new("UPDATE task_instances SET state = ");
                qb.push_bind(to.as_str())
                    .push(", updated_at = ")
                    .push_bind(now);
                match to {
                    TaskState::Ready => {
                        qb.push(", ready_at = ")
                            .push_bind(now)
                            .push(", next_retry_at = NULL");
                    }
                    TaskState::Running => {
                        qb.push(", started_at = ").push_bind(now);
                    }
                    TaskState::UpForRetry => {
                        qb.push(", next_retry_at = ").push_bind(first.next_retry_at);
                        qb.push(", ended_at = ").push_bind(now);
                    }
                    TaskState::Pending => {
                        qb.push(
                            ", ready_at = NULL, queued_at = NULL, next_retry_at = NULL, \
                             started_at = NULL, ended_at = NULL",
                        );
                    }
                    s if s.is_terminal() => {
                        qb.push(", ended_at = ").push_bind(now);
                    }
                    _ => {}
                }
                qb.push(" WHERE state = ").push_bind(from.as_str());
                // `id IN (…)` lets both databases use the primary key;
                // the row-value test then checks each row's attempt.
                qb.push(" AND id IN (");
                let mut ids = qb.separated(", ");
                for t in chunk {
                    ids.push_bind(t.id.get());
                }
                qb.push(") AND (id, attempt) IN (VALUES ");
                let mut pairs = qb.separated(", ");
                for t in chunk {
                    pairs.push("(");
                    pairs.push_bind_unseparated(t.id.get());
                    pairs.push_unseparated(", ");
                    pairs.push_bind_unseparated(t.attempt);
                    pairs.push_unseparated(")");
                }
                qb.push(") RETURNING id, run_id, task_id, attempt");
                let (sql, args) = qb.finish()?;
                let rows = sqlx::query_with(&sql, args).fetch_all(&mut **tx).await?;
                let mut done = std::collections::HashMap::with_capacity(rows.len());
                for r in &rows {
                    let id: i64 = r.try_get("id")?;
                    let run: Uuid = r.try_get("run_id")?;
                    let task: String = r.try_get("task_id")?;
                    done.insert(id, (RunId::from_uuid(run), TaskId::new(task)));
                }
                if done.len() < chunk.len() && on_conflict == OnConflict::Fail {
                    let missed = chunk
                        .iter()
                        .find(|t| !done.contains_key(&t.id.get()))
                        .copied()
                        .unwrap_or(first);
                    return Err(Self::task_conflict(tx, missed).await);
                }
                let closes_attempt = from.holds_worker() && to != TaskState::Running;
                let mut closed = Vec::new();
                for t in chunk {
                    let Some((run, task)) = done.remove(&t.id.get()) else {
                        continue;
                    };
                    events.push(NewEvent {
                        run_id: run,
                        entity: EventEntity::Task,
                        task_instance_id: Some(t.id),
                        task_id: Some(task.clone()),
                        from_state: Some(from.as_str()),
                        to_state: to.as_str(),
                        attempt: Some(t.attempt),
                        reason: t.reason.clone(),
                    });
                    if closes_attempt {
                        closed.push((t.id.get(), t.attempt));
                    }
                    applied.push((t.id, run, task, t.attempt));
                }
                if !closed.is_empty() {
                    let outcome = first.outcome.unwrap_or_else(|| common::default_outcome(to));
                    let mut qb = SqlBuilder::<DB>::new("UPDATE attempts SET ended_at = ");
                    qb.push_bind(now)
                        .push(", outcome = ")
                        .push_bind(outcome.as_str());
                    qb.push(" WHERE ended_at IS NULL AND task_instance_id IN (");
                    let mut ids = qb.separated(", ");
                    for (id, _) in &closed {
                        ids.push_bind(*id);
                    }
                    qb.push(") AND (task_instance_id, attempt) IN (VALUES ");
                    let mut pairs = qb.separated(", ");
                    for (id, attempt) in &closed {
                        pairs.push("(");
                        pairs.push_bind_unseparated(*id);
                        pairs.push_unseparated(", ");
                        pairs.push_bind_unseparated(*attempt);
                        pairs.push_unseparated(")");
                    }
                    qb.push(")");
                    let (sql, args) = qb.finish()?;
                    sqlx::query_with(&sql, args).execute(&mut **tx).await?;
                }
            }
        }
        sink.add(&events, actor, now);
        Ok(applied)
    }

    /// Builds the error for a CAS that missed: what is there now.
    async fn task_conflict(tx: &mut Transaction<'static, DB>, t: &TaskTransition) -> StoreError {
        let found = sqlx::query("SELECT run_id, state, attempt FROM task_instances WHERE id = $1")
            .bind(t.id.get())
            .fetch_optional(&mut **tx)
            .await;
        let row = match found {
            Ok(Some(row)) => row,
            Ok(None) => return StoreError::not_found("task instance", t.id),
            Err(e) => return e.into(),
        };
        let decoded = (|| -> Result<StoreError> {
            Ok(StoreError::TaskConflict {
                id: t.id,
                run: RunId::from_uuid(row.try_get("run_id")?),
                expected_state: t.from,
                expected_attempt: t.attempt,
                found_state: parse("task_instances", &row.try_get::<String, _>("state")?)?,
                found_attempt: row.try_get("attempt")?,
            })
        })();
        decoded.unwrap_or_else(|e| e)
    }

    /// `assigned → running` for one attempt, inside `tx`.
    pub(crate) async fn tx_start_attempt(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        id: TaskInstanceId,
        attempt: i32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let t = TaskTransition::new(id, TaskState::Assigned, TaskState::Running, attempt);
        common::validate(std::slice::from_ref(&t), true)?;
        Self::apply_transitions(
            tx,
            sink,
            std::slice::from_ref(&t),
            OnConflict::Fail,
            actor,
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE attempts SET started_at = $1 WHERE task_instance_id = $2 AND attempt = $3",
        )
        .bind(now)
        .bind(id.get())
        .bind(attempt)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// Ends one attempt and moves its task, fenced on (from, attempt), inside `tx`.
    pub(crate) async fn tx_finish_attempt(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        report: &FinishAttempt,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut t = TaskTransition::new(report.id, report.from, report.to, report.attempt)
            .outcome(report.outcome);
        t.next_retry_at = report.next_retry_at;
        t.reason = report.error.clone();
        if !report.from.holds_worker() {
            return Err(StoreError::InvalidArgument(format!(
                "task instance {}: an attempt finishes from assigned or running, not {}",
                report.id, report.from
            )));
        }
        common::validate(std::slice::from_ref(&t), false)?;
        Self::apply_transitions(
            tx,
            sink,
            std::slice::from_ref(&t),
            OnConflict::Fail,
            actor,
            now,
        )
        .await?;
        sqlx::query(
            "UPDATE attempts SET exit_code = $1, error = $2, log_location = COALESCE($3, \
             log_location) \
             WHERE task_instance_id = $4 AND attempt = $5",
        )
        .bind(report.exit_code)
        .bind(report.error.as_deref())
        .bind(report.log_location.as_deref())
        .bind(report.id.get())
        .bind(report.attempt)
        .execute(&mut **tx)
        .await?;
        Ok(())
    }

    /// `assigned → running → to` for one attempt in two statements (and
    /// its two event rows), when a batch holds both its start and its
    /// end: the same rows as [`Self::tx_start_attempt`] followed by
    /// [`Self::tx_finish_attempt`], for a third of the statements. A
    /// compare-and-set that misses falls back to those two, which name
    /// the conflict exactly.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn tx_start_and_finish(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        report: &FinishAttempt,
        started: DateTime<Utc>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let mut t = TaskTransition::new(report.id, TaskState::Running, report.to, report.attempt);
        t.next_retry_at = report.next_retry_at;
        common::validate(std::slice::from_ref(&t), false)?;
        let fusable = report.from == TaskState::Running
            && (report.to != TaskState::UpForRetry || report.next_retry_at.is_some());
        let row = if fusable {
            Self::fused_task_update(tx, report, started, now).await?
        } else {
            None
        };
        let Some(row) = row else {
            Self::tx_start_attempt(tx, sink, report.id, report.attempt, actor, started).await?;
            return Self::tx_finish_attempt(tx, sink, report, actor, now).await;
        };
        let run = RunId::from_uuid(row.try_get("run_id")?);
        let task = TaskId::new(row.try_get::<String, _>("task_id")?);
        sqlx::query(
            "UPDATE attempts SET started_at = $1, ended_at = $2, outcome = $3, exit_code = $4, \
             error = $5, log_location = COALESCE($6, log_location) \
             WHERE task_instance_id = $7 AND attempt = $8",
        )
        .bind(started)
        .bind(now)
        .bind(report.outcome.as_str())
        .bind(report.exit_code)
        .bind(report.error.as_deref())
        .bind(report.log_location.as_deref())
        .bind(report.id.get())
        .bind(report.attempt)
        .execute(&mut **tx)
        .await?;
        let event = |from: TaskState, to: TaskState, reason: Option<String>| NewEvent {
            run_id: run,
            entity: EventEntity::Task,
            task_instance_id: Some(report.id),
            task_id: Some(task.clone()),
            from_state: Some(from.as_str()),
            to_state: to.as_str(),
            attempt: Some(report.attempt),
            reason,
        };
        sink.push(
            event(TaskState::Assigned, TaskState::Running, None),
            actor,
            started,
        );
        sink.push(
            event(TaskState::Running, report.to, report.error.clone()),
            actor,
            now,
        );
        Ok(())
    }

    /// The task row of a fused start and end; `None` when its CAS missed.
    async fn fused_task_update(
        tx: &mut Transaction<'static, DB>,
        report: &FinishAttempt,
        started: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Option<DB::Row>> {
        let retry = if report.to == TaskState::UpForRetry {
            ", next_retry_at = $6"
        } else {
            ""
        };
        let sql = format!(
            "UPDATE task_instances SET state = $1, updated_at = $2, started_at = $3, ended_at = \
             $2{retry} \
             WHERE id = $4 AND state = 'assigned' AND attempt = $5 RETURNING run_id, \
             task_id"
        );
        let mut q = sqlx::query(&sql)
            .bind(report.to.as_str())
            .bind(now)
            .bind(started)
            .bind(report.id.get())
            .bind(report.attempt);
        if report.to == TaskState::UpForRetry {
            q = q.bind(report.next_retry_at);
        }
        Ok(q.fetch_optional(&mut **tx).await?)
    }

    pub(crate) async fn sql_get_task_instance(&self, id: TaskInstanceId) -> Result<TaskInstance> {
        let sql = format!("SELECT {TI_COLS} FROM task_instances WHERE id = $1");
        let row = sqlx::query(&sql)
            .bind(id.get())
            .fetch_optional(self.read_pool())
            .await?;
        match row {
            Some(r) => Rows::<DB>::task(&r),
            None => Err(StoreError::not_found("task instance", id)),
        }
    }

    pub(crate) async fn sql_task_instances(&self, run_id: RunId) -> Result<Vec<TaskInstance>> {
        let sql = format!("SELECT {TI_COLS} FROM task_instances WHERE run_id = $1 ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(run_id.as_uuid())
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::task).collect()
    }

    pub(crate) async fn sql_task_instances_in_state(
        &self,
        state: TaskState,
        limit: u32,
    ) -> Result<Vec<TaskInstance>> {
        let sql = format!(
            "SELECT {TI_COLS} FROM task_instances WHERE state = $1 ORDER BY updated_at, id LIMIT $2"
        );
        let rows = sqlx::query(&sql)
            .bind(state.as_str())
            .bind(common::clamp_limit(limit))
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::task).collect()
    }

    pub(crate) async fn sql_attempts(&self, id: TaskInstanceId) -> Result<Vec<Attempt>> {
        let sql = format!(
            "SELECT {ATTEMPT_COLS} FROM attempts WHERE task_instance_id = $1 ORDER BY attempt"
        );
        let rows = sqlx::query(&sql)
            .bind(id.get())
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::attempt).collect()
    }

    pub(crate) async fn sql_run_attempts(&self, run_id: RunId) -> Result<Vec<Attempt>> {
        let sql = format!("SELECT {ATTEMPT_COLS} FROM attempts WHERE run_id = $1 ORDER BY id");
        let rows = sqlx::query(&sql)
            .bind(run_id.as_uuid())
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::attempt).collect()
    }

    pub(crate) async fn sql_attempts_held_by_worker(
        &self,
        worker_id: WorkerId,
    ) -> Result<Vec<HeldAttempt>> {
        let rows = sqlx::query(include_str!("../sql/held_attempts.sql"))
            .bind(worker_id.as_uuid())
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::held).collect()
    }
}
