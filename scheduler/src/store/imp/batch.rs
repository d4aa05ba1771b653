//! An engine turn's writes in one transaction: every [`Write`] of the batch,
//! in order, through the same per-area SQL the single calls use, then one
//! commit. Any failure (a compare-and-set that missed, a lost connection)
//! rolls the whole batch back, so the engine can keep its memory as it was
//! and try the turn again.

use std::collections::{HashMap, HashSet};

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::migrate::Migrate;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Decode, Encode, Executor, IntoArguments, Type};
use trainyard_core::ids::TaskInstanceId;
use uuid::Uuid;

use super::common::{self, EventSink, OnConflict};
use super::{SqlBackend, SqlStore};
use crate::store::error::Result;
use crate::store::types::{Write, WriteBatch};

/// Starts that a later end of the same attempt in the batch can take along.
#[derive(Debug, Default)]
struct Fused {
    /// Indices of `StartAttempt` writes done by their `FinishAttempt`.
    skip: HashSet<usize>,
    /// `FinishAttempt` index → the time its attempt started.
    start_of: HashMap<usize, DateTime<Utc>>,
}

/// Pairs each `StartAttempt` with the `FinishAttempt` of the same attempt
/// later in the batch, unless a write in between could see or move the task
/// (a transition or assignment naming it, a worker marked lost).
fn fuse_starts(batch: &WriteBatch) -> Fused {
    let mut fused = Fused::default();
    let mut open: HashMap<(TaskInstanceId, i32), (usize, DateTime<Utc>)> = HashMap::new();
    for (i, (write, at)) in batch.writes.iter().enumerate() {
        match write {
            Write::StartAttempt { id, attempt } => {
                open.insert((*id, *attempt), (i, *at));
            }
            Write::FinishAttempt(r) => {
                if let Some((start, started)) = open.remove(&(r.id, r.attempt)) {
                    fused.skip.insert(start);
                    fused.start_of.insert(i, started);
                }
            }
            Write::Transitions(ts) => {
                for t in ts {
                    open.retain(|(id, _), _| *id != t.id);
                }
            }
            Write::Assign(list) => {
                for a in list {
                    open.retain(|(id, _), _| *id != a.id);
                }
            }
            Write::WorkerLost { .. } => open.clear(),
            _ => {}
        }
    }
    fused
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
    pub(crate) async fn sql_commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_engine_write().await?;
        let mut sink = EventSink::default();
        let fused = fuse_starts(batch);
        for (i, (write, at)) in batch.writes.iter().enumerate() {
            let now = *at;
            match write {
                Write::StartAttempt { .. } if fused.skip.contains(&i) => {}
                Write::StartAttempt { id, attempt } => {
                    Self::tx_start_attempt(&mut tx, &mut sink, *id, *attempt, actor, now).await?;
                }
                Write::FinishAttempt(report) => match fused.start_of.get(&i) {
                    Some(started) => {
                        Self::tx_start_and_finish(&mut tx, &mut sink, report, *started, actor, now)
                            .await?;
                    }
                    None => {
                        Self::tx_finish_attempt(&mut tx, &mut sink, report, actor, now).await?;
                    }
                },
                Write::Metrics {
                    id,
                    attempt,
                    metrics,
                } => {
                    Self::tx_record_metrics(&mut tx, *id, *attempt, metrics, now).await?;
                }
                Write::Transitions(ts) => {
                    common::validate(ts, false)?;
                    Self::apply_transitions(&mut tx, &mut sink, ts, OnConflict::Fail, actor, now)
                        .await?;
                }
                Write::Run(t) => {
                    Self::tx_transition_run(&mut tx, &mut sink, t, actor, now).await?;
                }
                Write::Assign(list) => {
                    Self::tx_assign_exactly(&mut tx, &mut sink, list, actor, now).await?;
                }
                Write::RegisterWorker(w) => {
                    Self::tx_register_worker(&mut tx, w, now).await?;
                }
                Write::Heartbeat { id } => {
                    Self::tx_heartbeat_worker(&mut tx, *id, now).await?;
                }
                Write::WorkerState { id, state } => {
                    Self::tx_set_worker_state(&mut tx, *id, *state, now).await?;
                }
                Write::WorkerLost { id, reason } => {
                    Self::tx_mark_worker_lost(&mut tx, &mut sink, *id, reason, now).await?;
                }
                Write::Artifacts {
                    producer,
                    artifacts,
                } => {
                    Self::tx_record_artifacts(&mut tx, producer, artifacts, now).await?;
                }
                Write::ArtifactInputs { consumer, keys } => {
                    Self::tx_record_artifact_inputs(&mut tx, consumer, keys, now).await?;
                }
                Write::LogLocation {
                    id,
                    attempt,
                    location,
                } => {
                    Self::tx_set_attempt_log_location(&mut tx, *id, *attempt, location).await?;
                }
                Write::SkippedSlots(s) => {
                    Self::tx_record_skipped_slots(&mut tx, s, now).await?;
                }
            }
        }
        // Every event of the turn in one insert, then one commit.
        Self::insert_sink(&mut tx, sink).await?;
        self.commit(tx).await
    }
}
