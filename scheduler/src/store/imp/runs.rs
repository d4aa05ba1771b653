//! Runs: atomic creation with all task instances, reads, listing with cursor
//! pagination, and compare-and-set run transitions.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Row, Transaction, Type};
use trainyard_core::ids::{DagId, RunId};
use trainyard_core::state::{RunState, TaskState, TriggerKind};
use uuid::Uuid;

use super::builder::SqlBuilder;
use super::common::{self, EventSink, NewEvent};
use super::{SqlBackend, SqlStore};
use crate::store::Wakeup;
use crate::store::error::{Result, StoreError};
use crate::store::rows::{EVENT_COLS, RUN_COLS, Rows, TI_COLS, parse};
use crate::store::types::*;

/// Refuses a run the schema would refuse, with a message that says why.
fn validate_new_run(run: &NewRun) -> Result<()> {
    if run.trigger == TriggerKind::Schedule && run.logical_date.is_none() {
        return Err(StoreError::InvalidArgument(format!(
            "run {}: a scheduled run needs its logical date (the slot)",
            run.id
        )));
    }
    if !matches!(run.state, RunState::Queued | RunState::Running) {
        return Err(StoreError::InvalidArgument(format!(
            "run {}: a new run starts queued or running, not {}",
            run.id, run.state
        )));
    }
    let mut seen = HashSet::with_capacity(run.tasks.len());
    for t in &run.tasks {
        if !matches!(t.state, TaskState::Pending | TaskState::Ready) {
            return Err(StoreError::InvalidArgument(format!(
                "run {}: task {} starts pending or ready, not {}",
                run.id, t.task_id, t.state
            )));
        }
        if t.max_attempts < 1 {
            return Err(StoreError::InvalidArgument(format!(
                "run {}: task {} needs max_attempts >= 1",
                run.id, t.task_id
            )));
        }
        if !seen.insert(&t.task_id) {
            return Err(StoreError::InvalidArgument(format!(
                "run {}: task {} appears twice",
                run.id, t.task_id
            )));
        }
    }
    Ok(())
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
    /// With `wake`, a created run is announced to the leader's engine
    /// in the same transaction (Postgres `NOTIFY`, delivered at commit).
    pub(crate) async fn sql_create_run_waking(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
        wake: bool,
    ) -> Result<RunCreation> {
        validate_new_run(&run)?;
        // The engine's creations are fenced by its term; a standby's
        // (`wake`) are not engine writes and need no term.
        let mut tx = if wake {
            self.begin_write().await?
        } else {
            self.begin_engine_write().await?
        };
        let sql = format!(
            "INSERT INTO runs (id, dag_id, version_id, logical_date, trigger, params, state, \
             idempotency_key, created_at, started_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $9) \
             ON CONFLICT DO NOTHING RETURNING {RUN_COLS}"
        );
        let inserted = sqlx::query(&sql)
            .bind(run.id.as_uuid())
            .bind(run.dag_id.as_str())
            .bind(run.version_id.get())
            .bind(run.logical_date)
            .bind(run.trigger.as_str())
            .bind(Json(&run.params))
            .bind(run.state.as_str())
            .bind(run.idempotency_key.as_deref())
            .bind(now)
            .bind((run.state == RunState::Running).then_some(now))
            .fetch_optional(&mut *tx)
            .await?;
        let Some(row) = inserted else {
            let existing = sqlx::query(include_str!("../sql/find_existing_run.sql"))
                .bind(run.dag_id.as_str())
                .bind(run.trigger.as_str())
                .bind(run.logical_date)
                .bind(run.idempotency_key.as_deref())
                .fetch_optional(&mut *tx)
                .await?;
            return match existing {
                Some(r) => Ok(RunCreation::AlreadyExists(Rows::<DB>::run(&r)?)),
                None => Err(StoreError::InvalidArgument(format!(
                    "run id {} already exists",
                    run.id
                ))),
            };
        };
        let created = Rows::<DB>::run(&row)?;
        let mut tasks = Vec::with_capacity(run.tasks.len());
        for chunk in run.tasks.chunks(common::CHUNK) {
            let mut qb = SqlBuilder::<DB>::new(
                "INSERT INTO task_instances (run_id, dag_id, task_id, state, attempt, \
                 max_attempts, \
                 priority, pool, resources, ready_at, created_at, updated_at) ",
            );
            qb.push_values(chunk, |mut b, t| {
                b.push_bind(run.id.as_uuid())
                    .push_bind(run.dag_id.as_str().to_owned())
                    .push_bind(t.task_id.as_str().to_owned())
                    .push_bind(t.state.as_str())
                    .push_bind(0_i32)
                    .push_bind(t.max_attempts)
                    .push_bind(t.priority)
                    .push_bind(t.pool.clone())
                    .push_bind(Json(t.resources.clone()))
                    .push_bind((t.state == TaskState::Ready).then_some(now))
                    .push_bind(now)
                    .push_bind(now);
            });
            qb.push(" RETURNING ").push(TI_COLS);
            let (sql, args) = qb.finish()?;
            for r in sqlx::query_with(&sql, args).fetch_all(&mut *tx).await? {
                tasks.push(Rows::<DB>::task(&r)?);
            }
        }
        tasks.sort_by_key(|t| t.id);
        let event = NewEvent {
            run_id: run.id,
            entity: EventEntity::Run,
            task_instance_id: None,
            task_id: None,
            from_state: None,
            to_state: run.state.as_str(),
            attempt: None,
            reason: Some(format!("created by {} trigger", run.trigger)),
        };
        Self::insert_events(&mut tx, std::slice::from_ref(&event), actor, now).await?;
        if wake {
            Self::wake_in(&mut tx, &Wakeup::RunCreated(run.id)).await?;
        }
        self.commit(tx).await?;
        Ok(RunCreation::Created {
            run: created,
            tasks,
        })
    }

    pub(crate) async fn sql_get_run(&self, id: RunId) -> Result<Run> {
        let sql = format!("SELECT {RUN_COLS} FROM runs WHERE id = $1");
        match sqlx::query(&sql)
            .bind(id.as_uuid())
            .fetch_optional(self.read_pool())
            .await?
        {
            Some(r) => Rows::<DB>::run(&r),
            None => Err(StoreError::not_found("run", id)),
        }
    }

    pub(crate) async fn sql_list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        let limit = i64::from(filter.limit.clamp(1, 1000));
        let mut qb = SqlBuilder::<DB>::new(format!("SELECT {RUN_COLS} FROM runs WHERE 1 = 1"));
        if let Some(dag) = &filter.dag_id {
            qb.push(" AND dag_id = ").push_bind(dag.as_str().to_owned());
        }
        if !filter.states.is_empty() {
            qb.push(" AND state IN (");
            let mut s = qb.separated(", ");
            for st in &filter.states {
                s.push_bind(st.as_str());
            }
            qb.push(")");
        }
        if let Some(before) = filter.before {
            qb.push(" AND id < ").push_bind(before.as_uuid());
        }
        // One extra row tells whether another page exists.
        qb.push(" ORDER BY id DESC LIMIT ").push_bind(limit + 1);
        let (sql, args) = qb.finish()?;
        let rows = sqlx::query_with(&sql, args)
            .fetch_all(self.read_pool())
            .await?;
        let mut runs = rows
            .iter()
            .map(Rows::<DB>::run)
            .collect::<Result<Vec<_>>>()?;
        let more = runs.len() as i64 > limit;
        runs.truncate(limit as usize);
        let next_cursor = if more {
            runs.last().map(|r| r.id)
        } else {
            None
        };
        Ok(RunPage { runs, next_cursor })
    }

    pub(crate) async fn sql_active_runs(&self) -> Result<Vec<Run>> {
        let sql =
            format!("SELECT {RUN_COLS} FROM runs WHERE state IN ('queued', 'running') ORDER BY id");
        let rows = sqlx::query(&sql).fetch_all(self.read_pool()).await?;
        rows.iter().map(Rows::<DB>::run).collect()
    }

    /// CAS on one run's state inside `tx`, with its event row.
    pub(crate) async fn tx_transition_run(
        tx: &mut Transaction<'static, DB>,
        sink: &mut EventSink,
        t: &RunTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        if !RunState::can_transition(t.from, t.to) {
            return Err(StoreError::ForbiddenRunTransition {
                id: t.id,
                from: t.from,
                to: t.to,
            });
        }
        let times = match t.to {
            RunState::Running => ", started_at = COALESCE(started_at, $1)",
            RunState::Queued => ", ended_at = NULL",
            _ => ", ended_at = $1",
        };
        let sql = format!(
            "UPDATE runs SET state = $2, updated_at = $1{times} WHERE id = $3 AND state = $4 \
             RETURNING {RUN_COLS}"
        );
        let row = sqlx::query(&sql)
            .bind(now)
            .bind(t.to.as_str())
            .bind(t.id.as_uuid())
            .bind(t.from.as_str())
            .fetch_optional(&mut **tx)
            .await?;
        let Some(row) = row else {
            let found: Option<String> = sqlx::query_scalar("SELECT state FROM runs WHERE id = $1")
                .bind(t.id.as_uuid())
                .fetch_optional(&mut **tx)
                .await?;
            return match found {
                Some(s) => Err(StoreError::RunConflict {
                    id: t.id,
                    expected: t.from,
                    found: parse("runs", &s)?,
                }),
                None => Err(StoreError::not_found("run", t.id)),
            };
        };
        let run = Rows::<DB>::run(&row)?;
        let event = NewEvent {
            run_id: t.id,
            entity: EventEntity::Run,
            task_instance_id: None,
            task_id: None,
            from_state: Some(t.from.as_str()),
            to_state: t.to.as_str(),
            attempt: None,
            reason: t.reason.clone(),
        };
        sink.push(event, actor, now);
        Ok(run)
    }

    pub(crate) async fn sql_last_successful_run(&self, dag_id: &DagId) -> Result<Option<Run>> {
        let sql = format!(
            "SELECT {RUN_COLS} FROM runs WHERE dag_id = $1 AND state = 'success' ORDER BY id DESC \
             LIMIT 1"
        );
        let row = sqlx::query(&sql)
            .bind(dag_id.as_str())
            .fetch_optional(self.read_pool())
            .await?;
        row.as_ref().map(Rows::<DB>::run).transpose()
    }

    pub(crate) async fn sql_last_scheduled_logical_date(
        &self,
        dag_id: &DagId,
    ) -> Result<Option<DateTime<Utc>>> {
        let row = sqlx::query(
            "SELECT logical_date FROM runs WHERE dag_id = $1 AND trigger = 'schedule' \
             ORDER BY logical_date DESC LIMIT 1",
        )
        .bind(dag_id.as_str())
        .fetch_optional(self.read_pool())
        .await?;
        Ok(match row {
            Some(r) => r.try_get::<Option<DateTime<Utc>>, _>("logical_date")?,
            None => None,
        })
    }

    pub(crate) async fn sql_skip_events(&self, run_id: RunId) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events WHERE run_id = $1 AND entity = 'task' \
             AND to_state IN ('skipped', 'upstream_failed') ORDER BY id"
        );
        let rows = sqlx::query(&sql)
            .bind(run_id.as_uuid())
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::event).collect()
    }

    pub(crate) async fn sql_run_events(
        &self,
        run_id: RunId,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let sql = format!(
            "SELECT {EVENT_COLS} FROM events WHERE run_id = $1 AND id > $2 ORDER BY id LIMIT $3"
        );
        let rows = sqlx::query(&sql)
            .bind(run_id.as_uuid())
            .bind(after.unwrap_or(0))
            .bind(common::clamp_limit(limit))
            .fetch_all(self.read_pool())
            .await?;
        rows.iter().map(Rows::<DB>::event).collect()
    }
}
