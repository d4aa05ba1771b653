//! Row → record decoding, written once for both backends.
//!
//! Column lists live here too so every query selects exactly what the decoder
//! reads. States are parsed back into the core enums; a string the code does
//! not know is reported as [`StoreError::Corrupt`], never silently mapped.

use std::marker::PhantomData;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::types::Json;
use sqlx::{ColumnIndex, Database, Decode, Row, Type};
use trainyard_core::ids::*;
use uuid::Uuid;

use super::error::{Result, StoreError};
use super::types::*;

pub(crate) const RUN_COLS: &str = "id, dag_id, version_id, logical_date, trigger, params, state, \
     idempotency_key, created_at, started_at, ended_at, updated_at";

pub(crate) const TI_COLS: &str = "id, run_id, dag_id, task_id, state, attempt, max_attempts, \
     priority, pool, resources, ready_at, queued_at, next_retry_at, started_at, ended_at, \
     created_at, updated_at";

pub(crate) const DAG_COLS: &str = "id, paused, active, current_version_id, file_path, \
     parse_error, parse_error_at, created_at, updated_at, skipped_slots";

pub(crate) const ATTEMPT_COLS: &str = "id, task_instance_id, run_id, attempt, worker_id, gpus, \
     outcome, exit_code, error, log_location, assigned_at, started_at, ended_at";

pub(crate) const WORKER_COLS: &str = "id, name, state, resources, gpus, labels, registered_at, \
     last_heartbeat_at, updated_at, credential_sha256";

pub(crate) const EVENT_COLS: &str = "id, run_id, entity, task_instance_id, task_id, from_state, \
     to_state, attempt, actor, reason, at";

/// Parses a stored enum string, naming the table on failure.
pub(crate) fn parse<T: FromStr>(table: &'static str, value: &str) -> Result<T>
where
    T::Err: std::fmt::Display,
{
    value.parse::<T>().map_err(|e| StoreError::Corrupt {
        table,
        detail: e.to_string(),
    })
}

type Ts = DateTime<Utc>;

/// The decoders of one backend's rows: `Rows::<Postgres>::run(&row)`.
///
/// The where-clause lists every column type the decoders read; Postgres and
/// Sqlite satisfy it, and Rust needs it spelled out on this impl because a
/// bound like `i64: Decode<'r, DB>` cannot be made implied by a trait on `DB`.
pub(crate) struct Rows<DB>(PhantomData<DB>);

impl<DB: Database> Rows<DB>
where
    for<'c> &'c str: ColumnIndex<DB::Row>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    for<'r> i32: Decode<'r, DB> + Type<DB>,
    for<'r> bool: Decode<'r, DB> + Type<DB>,
    for<'r> f64: Decode<'r, DB> + Type<DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> Uuid: Decode<'r, DB> + Type<DB>,
    for<'r> Ts: Decode<'r, DB> + Type<DB>,
    for<'r> Json<Value>: Decode<'r, DB> + Type<DB>,
    for<'r> Json<SpecJson>: Decode<'r, DB> + Type<DB>,
    for<'r> Json<Vec<u32>>: Decode<'r, DB> + Type<DB>,
{
    pub(crate) fn run(r: &DB::Row) -> Result<Run> {
        Ok(Run {
            id: RunId::from_uuid(r.try_get::<Uuid, _>("id")?),
            dag_id: DagId::new(r.try_get::<String, _>("dag_id")?),
            version_id: DagVersionId::new(r.try_get("version_id")?),
            logical_date: r.try_get::<Option<Ts>, _>("logical_date")?,
            trigger: parse("runs", &r.try_get::<String, _>("trigger")?)?,
            params: r.try_get::<Json<Value>, _>("params")?.0,
            state: parse("runs", &r.try_get::<String, _>("state")?)?,
            idempotency_key: r.try_get("idempotency_key")?,
            created_at: r.try_get("created_at")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub(crate) fn task(r: &DB::Row) -> Result<TaskInstance> {
        Ok(TaskInstance {
            id: TaskInstanceId::new(r.try_get("id")?),
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            dag_id: DagId::new(r.try_get::<String, _>("dag_id")?),
            task_id: TaskId::new(r.try_get::<String, _>("task_id")?),
            state: parse("task_instances", &r.try_get::<String, _>("state")?)?,
            attempt: r.try_get("attempt")?,
            max_attempts: r.try_get("max_attempts")?,
            priority: r.try_get("priority")?,
            pool: r.try_get("pool")?,
            resources: r.try_get::<Json<Value>, _>("resources")?.0,
            ready_at: r.try_get("ready_at")?,
            queued_at: r.try_get("queued_at")?,
            next_retry_at: r.try_get("next_retry_at")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
        })
    }

    pub(crate) fn dag(r: &DB::Row) -> Result<Dag> {
        Ok(Dag {
            id: DagId::new(r.try_get::<String, _>("id")?),
            paused: r.try_get("paused")?,
            active: r.try_get("active")?,
            current_version_id: r
                .try_get::<Option<i64>, _>("current_version_id")?
                .map(DagVersionId::new),
            file_path: r.try_get("file_path")?,
            parse_error: r.try_get("parse_error")?,
            parse_error_at: r.try_get("parse_error_at")?,
            created_at: r.try_get("created_at")?,
            updated_at: r.try_get("updated_at")?,
            skipped_slots: u64::try_from(r.try_get::<i64, _>("skipped_slots")?).unwrap_or(0),
        })
    }

    pub(crate) fn dag_version(r: &DB::Row) -> Result<DagVersion> {
        Ok(DagVersion {
            id: DagVersionId::new(r.try_get("id")?),
            dag_id: DagId::new(r.try_get::<String, _>("dag_id")?),
            content_hash: r.try_get("content_hash")?,
            source: r.try_get("source")?,
            spec: r.try_get::<Json<SpecJson>, _>("spec")?.0,
            created_at: r.try_get("created_at")?,
        })
    }

    pub(crate) fn attempt(r: &DB::Row) -> Result<Attempt> {
        let outcome: Option<String> = r.try_get("outcome")?;
        Ok(Attempt {
            id: AttemptId::new(r.try_get("id")?),
            task_instance_id: TaskInstanceId::new(r.try_get("task_instance_id")?),
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            attempt: r.try_get("attempt")?,
            worker_id: r
                .try_get::<Option<Uuid>, _>("worker_id")?
                .map(WorkerId::from_uuid),
            gpus: r.try_get::<Json<Vec<u32>>, _>("gpus")?.0,
            outcome: outcome.map(|o| parse("attempts", &o)).transpose()?,
            exit_code: r.try_get("exit_code")?,
            error: r.try_get("error")?,
            log_location: r.try_get("log_location")?,
            assigned_at: r.try_get("assigned_at")?,
            started_at: r.try_get("started_at")?,
            ended_at: r.try_get("ended_at")?,
        })
    }

    pub(crate) fn held(r: &DB::Row) -> Result<HeldAttempt> {
        Ok(HeldAttempt {
            task_instance_id: TaskInstanceId::new(r.try_get("task_instance_id")?),
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            dag_id: DagId::new(r.try_get::<String, _>("dag_id")?),
            task_id: TaskId::new(r.try_get::<String, _>("task_id")?),
            attempt: r.try_get("attempt")?,
            state: parse("task_instances", &r.try_get::<String, _>("state")?)?,
            gpus: r.try_get::<Json<Vec<u32>>, _>("gpus")?.0,
        })
    }

    pub(crate) fn worker(r: &DB::Row) -> Result<Worker> {
        Ok(Worker {
            id: WorkerId::from_uuid(r.try_get::<Uuid, _>("id")?),
            name: r.try_get("name")?,
            state: parse("workers", &r.try_get::<String, _>("state")?)?,
            resources: r.try_get::<Json<Value>, _>("resources")?.0,
            gpus: r.try_get::<Json<Value>, _>("gpus")?.0,
            labels: r.try_get::<Json<Value>, _>("labels")?.0,
            registered_at: r.try_get("registered_at")?,
            last_heartbeat_at: r.try_get("last_heartbeat_at")?,
            updated_at: r.try_get("updated_at")?,
            credential_sha256: r.try_get("credential_sha256")?,
        })
    }

    pub(crate) fn event(r: &DB::Row) -> Result<Event> {
        let entity: String = r.try_get("entity")?;
        Ok(Event {
            id: r.try_get("id")?,
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            entity: match entity.as_str() {
                "run" => EventEntity::Run,
                "task" => EventEntity::Task,
                other => {
                    return Err(StoreError::Corrupt {
                        table: "events",
                        detail: format!("unknown entity {other:?}"),
                    });
                }
            },
            task_instance_id: r
                .try_get::<Option<i64>, _>("task_instance_id")?
                .map(TaskInstanceId::new),
            task_id: r.try_get::<Option<String>, _>("task_id")?.map(TaskId::new),
            from_state: r.try_get("from_state")?,
            to_state: r.try_get("to_state")?,
            attempt: r.try_get("attempt")?,
            actor: r.try_get("actor")?,
            reason: r.try_get("reason")?,
            at: r.try_get("at")?,
        })
    }

    pub(crate) fn metric(r: &DB::Row) -> Result<MetricPoint> {
        Ok(MetricPoint {
            task_instance_id: TaskInstanceId::new(r.try_get("task_instance_id")?),
            task_id: TaskId::new(r.try_get::<String, _>("task_id")?),
            attempt: r.try_get("attempt")?,
            name: r.try_get("name")?,
            value: r.try_get("value")?,
            recorded_at: r.try_get("recorded_at")?,
        })
    }

    pub(crate) fn artifact(r: &DB::Row) -> Result<StoredArtifact> {
        let size: i64 = r.try_get("size")?;
        Ok(StoredArtifact {
            id: r.try_get("id")?,
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            task_id: TaskId::new(r.try_get::<String, _>("task_id")?),
            task_instance_id: TaskInstanceId::new(r.try_get("task_instance_id")?),
            attempt: r.try_get("attempt")?,
            key: r.try_get("key")?,
            uri: r.try_get("uri")?,
            // The CHECK keeps it non-negative.
            size: u64::try_from(size).unwrap_or(0),
            sha256: r.try_get("sha256")?,
            created_at: r.try_get("created_at")?,
            consumers: Vec::new(),
        })
    }

    /// The consumer columns of a `run_artifacts.sql` row, if any.
    pub(crate) fn artifact_consumer(r: &DB::Row) -> Result<Option<ArtifactConsumer>> {
        let Some(task) = r.try_get::<Option<String>, _>("consumer_task_id")? else {
            return Ok(None);
        };
        Ok(Some(ArtifactConsumer {
            task_id: TaskId::new(task),
            task_instance_id: TaskInstanceId::new(r.try_get("consumer_task_instance_id")?),
            attempt: r.try_get("consumer_attempt")?,
            consumed_at: r.try_get("consumed_at")?,
        }))
    }

    pub(crate) fn series(r: &DB::Row) -> Result<SeriesPoint> {
        Ok(SeriesPoint {
            run_id: RunId::from_uuid(r.try_get::<Uuid, _>("run_id")?),
            logical_date: r.try_get("logical_date")?,
            attempt: r.try_get("attempt")?,
            value: r.try_get("value")?,
            recorded_at: r.try_get("recorded_at")?,
        })
    }
}
