//! `/api/v1` handlers and the probes. Each handler validates its input, calls
//! the store or the run control, and shapes JSON; no business rules live here.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::str::FromStr;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use futures::Stream;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use trainyard_core::ids::{DagId, RunId, WorkerId};
use trainyard_core::state::RunState;

use super::{ApiError, ApiResult, AppState, TriggerRequest};
use crate::store::{Attempt, RunFilter, TaskInstance};

pub(super) fn routes() -> Router<AppState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/api/v1/dags", get(list_dags))
        .route("/api/v1/dags/{dag_id}", get(get_dag))
        .route("/api/v1/dags/{dag_id}/runs", post(trigger))
        .route("/api/v1/dags/{dag_id}/backfill", post(backfill))
        .route("/api/v1/dags/{dag_id}/pause", post(pause))
        .route("/api/v1/dags/{dag_id}/resume", post(resume))
        .route("/api/v1/runs", get(list_runs))
        .route("/api/v1/runs/{run_id}", get(get_run))
        .route("/api/v1/runs/{run_id}/cancel", post(cancel_run))
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/cancel",
            post(cancel_task),
        )
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/clear",
            post(clear_task),
        )
        .route("/api/v1/runs/{run_id}/tasks/{task_id}/logs", get(task_log))
        .route(
            "/api/v1/runs/{run_id}/tasks/{task_id}/logs/stream",
            get(task_log_stream),
        )
        .route("/api/v1/workers", get(list_workers))
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.store.migration_status().await {
        Ok(status) if status.iter().all(|m| m.applied) => (StatusCode::OK, "ready").into_response(),
        Ok(_) => {
            ApiError::Unavailable("database migrations are not all applied".into()).into_response()
        }
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            ApiError::Unavailable("database unreachable".into()).into_response()
        }
    }
}

fn dag_id(raw: &str) -> ApiResult<DagId> {
    DagId::from_str(raw).map_err(|e| ApiError::BadRequest(format!("bad DAG id {raw:?}: {e}")))
}

fn run_id(raw: &str) -> ApiResult<RunId> {
    RunId::from_str(raw).map_err(|e| ApiError::BadRequest(format!("bad run id {raw:?}: {e}")))
}

async fn list_dags(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let dags = state.store.list_dags().await?;
    Ok(Json(json!({ "dags": dags })))
}

async fn get_dag(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = dag_id(&raw)?;
    let dag = state.store.get_dag(&id).await?;
    let version = match dag.current_version_id {
        Some(v) => Some(state.store.get_dag_version(v).await?),
        None => None,
    };
    Ok(Json(json!({
        "dag": dag,
        "spec": version.as_ref().map(|v| &v.spec),
        "version": version.as_ref().map(|v| json!({"id": v.id, "content_hash": v.content_hash, "created_at": v.created_at})),
    })))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TriggerBody {
    #[serde(default)]
    params: Map<String, Value>,
    #[serde(default)]
    logical_date: Option<DateTime<Utc>>,
}

async fn trigger(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Option<Json<TriggerBody>>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = dag_id(&raw)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .to_owned(),
        ),
        None => None,
    };
    let run = state
        .control
        .trigger(
            &id,
            TriggerRequest {
                params: body.params,
                idempotency_key,
                logical_date: body.logical_date,
            },
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "run_id": run, "dag_id": id })),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BackfillBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

async fn backfill(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(body): Json<BackfillBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = dag_id(&raw)?;
    if body.from > body.to {
        return Err(ApiError::BadRequest("`from` is after `to`".into()));
    }
    let runs = state.control.backfill(&id, body.from, body.to).await?;
    Ok((StatusCode::CREATED, Json(json!({ "run_ids": runs }))))
}

async fn pause(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = dag_id(&raw)?;
    state.control.set_paused(&id, true).await?;
    Ok(Json(json!({ "dag_id": id, "paused": true })))
}

async fn resume(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = dag_id(&raw)?;
    state.control.set_paused(&id, false).await?;
    Ok(Json(json!({ "dag_id": id, "paused": false })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunsQuery {
    dag_id: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<Value>> {
    let mut filter = RunFilter {
        limit: q.limit.unwrap_or(50).clamp(1, 1000),
        ..RunFilter::default()
    };
    if let Some(raw) = &q.dag_id {
        filter.dag_id = Some(dag_id(raw)?);
    }
    if let Some(raw) = &q.state {
        for s in raw.split(',').filter(|s| !s.is_empty()) {
            filter
                .states
                .push(RunState::from_str(s).map_err(|e| ApiError::BadRequest(e.to_string()))?);
        }
    }
    if let Some(raw) = &q.before {
        filter.before = Some(run_id(raw)?);
    }
    let page = state.store.list_runs(filter).await?;
    Ok(Json(
        json!({ "runs": page.runs, "next_cursor": page.next_cursor }),
    ))
}

/// One task of a run, with every attempt, as `runs show --json` prints it.
#[derive(Debug, Serialize)]
struct TaskView {
    task_id: String,
    state: String,
    attempt: i32,
    max_attempts: i32,
    worker_id: Option<WorkerId>,
    worker: Option<String>,
    gpus: Vec<u32>,
    started_at: Option<DateTime<Utc>>,
    ended_at: Option<DateTime<Utc>>,
    wait_reason: Option<String>,
    attempts: Vec<Attempt>,
}

async fn get_run(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = run_id(&raw)?;
    let run = state.store.get_run(id).await?;
    let tasks = state.store.task_instances(id).await?;
    let attempts = state.store.run_attempts(id).await?;
    let workers: BTreeMap<WorkerId, String> = state
        .store
        .list_workers()
        .await?
        .into_iter()
        .map(|w| (w.id, w.name))
        .collect();
    let reasons: BTreeMap<String, String> =
        state.control.wait_reasons(id).await.into_iter().collect();
    let views: Vec<TaskView> = tasks
        .into_iter()
        .map(|t| task_view(t, &attempts, &workers, &reasons))
        .collect();
    Ok(Json(json!({ "run": run, "tasks": views })))
}

fn task_view(
    task: TaskInstance,
    attempts: &[Attempt],
    workers: &BTreeMap<WorkerId, String>,
    reasons: &BTreeMap<String, String>,
) -> TaskView {
    let mut mine: Vec<Attempt> = attempts
        .iter()
        .filter(|a| a.task_instance_id == task.id)
        .cloned()
        .collect();
    mine.sort_by_key(|a| a.attempt);
    let current = mine.iter().rev().find(|a| a.attempt == task.attempt);
    let worker_id = current.and_then(|a| a.worker_id);
    TaskView {
        worker: worker_id.and_then(|w| workers.get(&w).cloned()),
        worker_id,
        gpus: current.map(|a| a.gpus.clone()).unwrap_or_default(),
        wait_reason: reasons.get(task.task_id.as_str()).cloned(),
        task_id: task.task_id.to_string(),
        state: task.state.to_string(),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        started_at: task.started_at,
        ended_at: task.ended_at,
        attempts: mine,
    }
}

async fn cancel_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&raw)?;
    state.control.cancel_run(id).await?;
    Ok(Json(json!({ "run_id": id, "cancelled": true })))
}

async fn cancel_task(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&raw)?;
    state.control.cancel_task(id, &task).await?;
    Ok(Json(
        json!({ "run_id": id, "task_id": task, "cancelled": true }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClearQuery {
    downstream: Option<bool>,
}

async fn clear_task(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
    Query(q): Query<ClearQuery>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&raw)?;
    let downstream = q.downstream.unwrap_or(true);
    state.control.clear_task(id, &task, downstream).await?;
    Ok(Json(
        json!({ "run_id": id, "task_id": task, "cleared": true, "downstream": downstream }),
    ))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct LogQuery {
    attempt: Option<i32>,
}

/// The attempt asked for, or the task's latest attempt.
async fn pick_attempt(
    state: &AppState,
    run: RunId,
    task: &str,
    asked: Option<i32>,
) -> ApiResult<i32> {
    if let Some(a) = asked {
        return Ok(a);
    }
    let tasks = state.store.task_instances(run).await?;
    let ti = tasks
        .iter()
        .find(|t| t.task_id.as_str() == task)
        .ok_or_else(|| ApiError::NotFound(format!("run {run} has no task {task:?}")))?;
    Ok(ti.attempt.max(1))
}

async fn task_log(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = run_id(&raw)?;
    let attempt = pick_attempt(&state, id, &task, q.attempt).await?;
    let text = match state.logs.read(id, &task, attempt).await {
        Ok(text) => text,
        // A task that has not printed anything yet has an empty log.
        Err(crate::logs::LogError::NotFound { .. }) => String::new(),
        Err(e) => return Err(e.into()),
    };
    Ok((
        [
            ("content-type", "text/plain; charset=utf-8"),
            ("x-trainyard-attempt", &attempt.to_string()),
        ],
        text,
    )
        .into_response())
}

/// Live log lines of a task as Server-Sent Events (`data:` is the JSON line).
async fn task_log_stream(
    State(state): State<AppState>,
    Path((raw, task)): Path<(String, String)>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let id = run_id(&raw)?;
    let rx = state.logs.follow(id, &task);
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        loop {
            match rx.recv().await {
                Ok(line) => {
                    let data = serde_json::to_string(&line).unwrap_or_default();
                    return Some((Ok(Event::default().event("line").data(data)), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                    let ev = Event::default().event("lagged").data(n.to_string());
                    return Some((Ok(ev), rx));
                }
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

async fn list_workers(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let workers = state.store.list_workers().await?;
    Ok(Json(json!({ "workers": workers })))
}
