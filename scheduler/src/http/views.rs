//! The public response types of `/api/v1/runs` and `/api/v1/runs/{run}`:
//! the handlers build them from store rows and serialise them, and the
//! OpenAPI document describes these same structs, so the two cannot drift
//! and a store column rename cannot change the public API (a renamed store
//! field fails to compile here instead). Field names and JSON shapes are the
//! ones the API had when it serialised store rows directly; only additions
//! are allowed.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use trainyard_core::ids::{AttemptId, DagId, DagVersionId, RunId, TaskInstanceId, WorkerId};
use trainyard_core::state::{AttemptOutcome, RunState, TriggerKind};
use utoipa::ToSchema;

use crate::store;

/// A DAG run.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Run {
    #[schema(value_type = String)]
    pub id: RunId,
    #[schema(value_type = String)]
    pub dag_id: DagId,
    #[schema(value_type = i64)]
    pub version_id: DagVersionId,
    pub logical_date: Option<DateTime<Utc>>,
    /// `schedule`, `manual` or `backfill`.
    #[schema(value_type = String)]
    pub trigger: TriggerKind,
    #[schema(value_type = Object)]
    pub params: Value,
    /// `queued`, `running`, `success`, `failed`, `cancelled`.
    #[schema(value_type = String)]
    pub state: RunState,
    pub idempotency_key: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl From<store::Run> for Run {
    fn from(r: store::Run) -> Self {
        Self {
            id: r.id,
            dag_id: r.dag_id,
            version_id: r.version_id,
            logical_date: r.logical_date,
            trigger: r.trigger,
            params: r.params,
            state: r.state,
            idempotency_key: r.idempotency_key,
            created_at: r.created_at,
            started_at: r.started_at,
            ended_at: r.ended_at,
            updated_at: r.updated_at,
        }
    }
}

/// `GET /api/v1/runs`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunPage {
    /// Newest first.
    pub runs: Vec<Run>,
    /// Pass as `before` for the next page; null on the last page.
    #[schema(value_type = Option<String>)]
    pub next_cursor: Option<RunId>,
}

impl From<store::RunPage> for RunPage {
    fn from(p: store::RunPage) -> Self {
        Self {
            runs: p.runs.into_iter().map(Run::from).collect(),
            next_cursor: p.next_cursor,
        }
    }
}

/// One try of a task.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Attempt {
    #[schema(value_type = i64)]
    pub id: AttemptId,
    #[schema(value_type = i64)]
    pub task_instance_id: TaskInstanceId,
    #[schema(value_type = String)]
    pub run_id: RunId,
    pub attempt: i32,
    #[schema(value_type = Option<String>)]
    pub worker_id: Option<WorkerId>,
    pub gpus: Vec<u32>,
    /// `success`, `failed`, `timed_out`, `cancelled`, `lost`…; null while it runs.
    #[schema(value_type = Option<String>)]
    pub outcome: Option<AttemptOutcome>,
    pub exit_code: Option<i32>,
    pub error: Option<String>,
    pub log_location: Option<String>,
    pub assigned_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

impl From<store::Attempt> for Attempt {
    fn from(a: store::Attempt) -> Self {
        Self {
            id: a.id,
            task_instance_id: a.task_instance_id,
            run_id: a.run_id,
            attempt: a.attempt,
            worker_id: a.worker_id,
            gpus: a.gpus,
            outcome: a.outcome,
            exit_code: a.exit_code,
            error: a.error,
            log_location: a.log_location,
            assigned_at: a.assigned_at,
            started_at: a.started_at,
            ended_at: a.ended_at,
        }
    }
}

/// A task instance of a run with every attempt, as `runs show --json` prints it.
#[derive(Debug, Serialize, ToSchema)]
pub struct TaskView {
    pub task_id: String,
    pub state: String,
    pub attempt: i32,
    pub max_attempts: i32,
    #[schema(value_type = Option<String>)]
    pub worker_id: Option<WorkerId>,
    pub worker: Option<String>,
    pub gpus: Vec<u32>,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
    /// Why a task that has not started waits: for a ready task the
    /// strongest reason ("needs 8 GPUs of model H100; no registered worker
    /// has an H100; the largest worker has 2 GPUs", "pool `etl` is full (1
    /// of 1 slots in use)", "DAG `x` is at max_active_tasks (…)"); for a
    /// pending one its upstream tasks or its run's queue; for one waiting
    /// to retry, when. Null for a task that runs or has finished.
    pub wait_reason: Option<String>,
    /// Why a `skipped` or `upstream_failed` task did not run: a closed
    /// `when` gate with the value of every name it read
    /// ("metrics.evaluate.auc >= params.min_auc was false
    /// (metrics.evaluate.auc = 0.0197, params.min_auc = 0.75)"), or the
    /// upstream tasks that decided it ("upstream failed: `train` (failed)").
    /// Stored with the transition, so every replica serves it after
    /// restarts. Null in every other state.
    pub skip_reason: Option<String>,
    pub attempts: Vec<Attempt>,
}

/// A run as `GET /api/v1/runs/{run_id}` shows it: the run's fields and
/// why it has not started.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunWithReason {
    #[serde(flatten)]
    #[schema(inline)]
    pub run: Run,
    /// Why a `queued` run has not started: its DAG is at `max_active_runs`,
    /// naming the runs that hold it (and why one of them cannot finish).
    /// Null otherwise.
    pub wait_reason: Option<String>,
}

/// `GET /api/v1/runs/{run_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct RunDetail {
    pub run: RunWithReason,
    pub tasks: Vec<TaskView>,
}
