//! Pieces every area of the store shares: event rows, batch limits, and the
//! validation of task transitions done before any SQL runs.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Transaction, Type};
use trainyard_core::ids::{RunId, TaskId, TaskInstanceId};
use trainyard_core::state::{AttemptOutcome, TaskState};
use uuid::Uuid;

use super::builder::SqlBuilder;
use super::{SqlBackend, SqlStore};
use crate::store::error::{Result, StoreError};
use crate::store::types::{EventEntity, TaskTransition};

/// Rows per multi-row statement: well under SQLite's 32,766 and Postgres'
/// 65,535 bind parameters for our widest row (~10 columns).
pub(crate) const CHUNK: usize = 500;

/// One row for the `events` table.
#[derive(Debug, Clone)]
pub(crate) struct NewEvent {
    pub run_id: RunId,
    pub entity: EventEntity,
    pub task_instance_id: Option<TaskInstanceId>,
    pub task_id: Option<TaskId>,
    pub from_state: Option<&'static str>,
    pub to_state: &'static str,
    pub attempt: Option<i32>,
    pub reason: Option<String>,
}

/// Event rows a transaction collects from its steps and writes in one
/// multi-row insert per chunk just before it commits (a turn's batch writes
/// all its events at once instead of one insert per step).
#[derive(Debug, Default)]
pub(crate) struct EventSink {
    pub rows: Vec<(NewEvent, String, DateTime<Utc>)>,
}

impl EventSink {
    pub(crate) fn add(&mut self, events: &[NewEvent], actor: &str, at: DateTime<Utc>) {
        self.rows
            .extend(events.iter().map(|e| (e.clone(), actor.to_owned(), at)));
    }

    pub(crate) fn push(&mut self, event: NewEvent, actor: &str, at: DateTime<Utc>) {
        self.rows.push((event, actor.to_owned(), at));
    }
}

impl EventEntity {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            EventEntity::Run => "run",
            EventEntity::Task => "task",
        }
    }
}

/// Clamps a caller's page size.
pub(crate) fn clamp_limit(limit: u32) -> i64 {
    i64::from(limit.clamp(1, 10_000))
}

/// The outcome recorded on an attempt when its task leaves `assigned`/`running` for `to`.
pub(crate) fn default_outcome(to: TaskState) -> AttemptOutcome {
    match to {
        TaskState::Success => AttemptOutcome::Success,
        TaskState::Lost => AttemptOutcome::Lost,
        TaskState::Cancelled | TaskState::Skipped => AttemptOutcome::Cancelled,
        TaskState::Ready | TaskState::Pending => AttemptOutcome::HandedBack,
        _ => AttemptOutcome::Failed,
    }
}

/// Checks a batch before touching the database: allowed by the state machine,
/// not a transition only the claim/start calls may make (`internal` lifts that),
/// a retry time where one is needed, no task twice.
pub(crate) fn validate(transitions: &[TaskTransition], internal: bool) -> Result<()> {
    let mut seen = HashSet::with_capacity(transitions.len());
    for t in transitions {
        if !TaskState::can_transition(t.from, t.to) {
            return Err(StoreError::ForbiddenTaskTransition {
                id: t.id,
                from: t.from,
                to: t.to,
            });
        }
        if !internal && matches!(t.to, TaskState::Assigned | TaskState::Running) {
            return Err(StoreError::InvalidArgument(format!(
                "task instance {}: {} -> {} must go through claim/assign or start_attempt",
                t.id, t.from, t.to
            )));
        }
        if t.to == TaskState::UpForRetry && t.next_retry_at.is_none() {
            return Err(StoreError::InvalidArgument(format!(
                "task instance {}: -> up_for_retry needs next_retry_at",
                t.id
            )));
        }
        if !seen.insert(t.id) {
            return Err(StoreError::InvalidArgument(format!(
                "task instance {} appears twice in one batch",
                t.id
            )));
        }
    }
    Ok(())
}

/// Whether a batch stops at the first compare-and-set that does not match.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum OnConflict {
    /// All or nothing: the first mismatch is returned as `TaskConflict`.
    Fail,
    /// Apply what matches, leave the rest (used when the store itself chose
    /// the rows, e.g. a lost worker's attempts that may finish concurrently).
    Skip,
}

/// Transitions that can share one `UPDATE` (same from, to, retry time and outcome).
pub(crate) fn group(transitions: &[TaskTransition]) -> Vec<Vec<&TaskTransition>> {
    type Key = (
        TaskState,
        TaskState,
        Option<DateTime<Utc>>,
        Option<AttemptOutcome>,
    );
    let mut groups: Vec<(Key, Vec<&TaskTransition>)> = Vec::new();
    for t in transitions {
        let key = (t.from, t.to, t.next_retry_at, t.outcome);
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, members)) => members.push(t),
            None => groups.push((key, vec![t])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
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
    /// Appends events in one multi-row insert per chunk.
    pub(crate) async fn insert_events(
        tx: &mut Transaction<'static, DB>,
        events: &[crate::store::imp::common::NewEvent],
        actor: &str,
        now: chrono::DateTime<chrono::Utc>,
    ) -> crate::store::error::Result<()> {
        let mut sink = crate::store::imp::common::EventSink::default();
        sink.add(events, actor, now);
        Self::insert_sink(tx, sink).await
    }

    /// Writes what `sink` collected (each row with its own actor and time).
    pub(crate) async fn insert_sink(
        tx: &mut Transaction<'static, DB>,
        sink: crate::store::imp::common::EventSink,
    ) -> crate::store::error::Result<()> {
        for chunk in sink.rows.chunks(crate::store::imp::common::CHUNK) {
            let mut qb = SqlBuilder::<DB>::new(
                "INSERT INTO events (run_id, entity, task_instance_id, task_id, from_state, \
                 to_state, attempt, actor, reason, at) ",
            );
            qb.push_values(chunk, |mut b, (e, actor, at)| {
                b.push_bind(e.run_id.as_uuid())
                    .push_bind(e.entity.as_str())
                    .push_bind(e.task_instance_id.map(|i| i.get()))
                    .push_bind(e.task_id.as_ref().map(|t| t.as_str().to_owned()))
                    .push_bind(e.from_state)
                    .push_bind(e.to_state)
                    .push_bind(e.attempt)
                    .push_bind(actor.clone())
                    .push_bind(e.reason.clone())
                    .push_bind(*at);
            });
            let (sql, args) = qb.finish()?;
            sqlx::query_with(&sql, args).execute(&mut **tx).await?;
        }
        Ok(())
    }
}
