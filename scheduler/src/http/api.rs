//! `/api/v1` handlers and the probes. Each handler validates its input, calls
//! the store or the run control, and shapes JSON; no business rules live here.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use std::time::Duration;

use trainyard_core::ids::{DagId, RunId, TaskInstanceId, WorkerId};
use trainyard_core::state::{RunState, TaskState};

use super::openapi as doc;
use super::routes::RouteTable;
use super::{ApiError, ApiResult, AppState, TriggerRequest, read, views};
use crate::engine::Ended;
use crate::store::{Attempt, Run, RunFilter, TaskInstance};

/// Adds the probes and `/api/v1` to the route table (see `routes.rs`:
/// `.get(path, handler)` / `.post(path, handler)` record each route).
pub(super) fn routes(t: RouteTable) -> RouteTable {
    t.get("/healthz", healthz)
        .get("/readyz", readyz)
        .get("/metrics", crate::metrics::handler)
        .get("/api/v1/dags", read::list_dags)
        .get("/api/v1/dags/{dag_id}", read::get_dag)
        .post("/api/v1/dags/{dag_id}/runs", trigger)
        .post("/api/v1/dags/{dag_id}/backfill", backfill)
        .post("/api/v1/dags/{dag_id}/pause", pause)
        .post("/api/v1/dags/{dag_id}/resume", resume)
        .get("/api/v1/runs", list_runs)
        .get("/api/v1/runs/{run_id}", get_run)
        .post("/api/v1/runs/{run_id}/cancel", cancel_run)
        .post("/api/v1/runs/{run_id}/tasks/{task_id}/cancel", cancel_task)
        .post("/api/v1/runs/{run_id}/tasks/{task_id}/clear", clear_task)
        .get(
            "/api/v1/runs/{run_id}/tasks/{task_id}/logs",
            super::logs::task_log,
        )
        .get(
            "/api/v1/runs/{run_id}/tasks/{task_id}/logs/stream",
            super::logs::task_log_stream,
        )
        .get("/api/v1/workers", read::list_workers)
}

/// Process up.
#[utoipa::path(get, path = "/healthz", tag = "probes", responses((status = 200, body = String)))]
async fn healthz() -> &'static str {
    "ok"
}

/// Database reachable, every migration applied and the engine's last
/// transaction committed; 503 `standby` on a replica that does not lead (HA),
/// 503 with the reason while the engine's writes fail (it retries them).
#[utoipa::path(get, path = "/readyz", tag = "probes",
    responses((status = 200, body = String), (status = 503, body = doc::ErrorBody)))]
async fn readyz(State(state): State<AppState>) -> Response {
    if state.control.is_standby() {
        return ApiError::unavailable("standby").into_response();
    }
    if let Some(problem) = state.control.store_problem() {
        return ApiError::unavailable(problem).into_response();
    }
    match state.store.migration_status().await {
        Ok(status) if status.iter().all(|m| m.applied) => (StatusCode::OK, "ready").into_response(),
        Ok(_) => ApiError::unavailable("database migrations are not all applied").into_response(),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            ApiError::unavailable("database unreachable").into_response()
        }
    }
}

fn dag_id(raw: &str) -> ApiResult<DagId> {
    read::parse_dag_id(raw)
}

fn run_id(raw: &str) -> ApiResult<RunId> {
    RunId::from_str(raw).map_err(|e| ApiError::bad_request(format!("bad run id {raw:?}: {e}")))
}

#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct TriggerBody {
    /// Param values by name; checked against the DAG's declared params.
    #[serde(default)]
    #[schema(value_type = Object)]
    params: Map<String, Value>,
    #[serde(default)]
    logical_date: Option<DateTime<Utc>>,
}

/// Starts a run. A repeated `Idempotency-Key` returns the run it created first.
#[utoipa::path(post, path = "/api/v1/dags/{dag_id}/runs", tag = "runs",
    params(("dag_id" = String, Path, description = "DAG id"),
        ("Idempotency-Key" = Option<String>, Header, description = "Retries with the same key return the same run")),
    request_body(content = Option<TriggerBody>, content_type = "application/json"),
    responses((status = 201, body = Triggered), (status = 400, body = doc::ErrorBody),
        (status = 401, body = doc::ErrorBody), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody), (status = 413, body = doc::ErrorBody)))]
async fn trigger(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    headers: HeaderMap,
    body: Option<Json<TriggerBody>>,
) -> ApiResult<(StatusCode, Json<Triggered>)> {
    let id = dag_id(&raw)?;
    let body = body.map(|Json(b)| b).unwrap_or_default();
    let idempotency_key = match headers.get("idempotency-key") {
        Some(v) => Some(
            v.to_str()
                .map_err(|_| ApiError::bad_request("Idempotency-Key must be visible ASCII"))?
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
    let warnings = state.control.trigger_warnings(&id).await;
    for w in &warnings {
        tracing::warn!(dag = %id, %run, warning = %w, "triggered a run that cannot finish yet");
    }
    Ok((
        StatusCode::CREATED,
        Json(Triggered {
            run_id: run,
            dag_id: id,
            warnings,
        }),
    ))
}

/// A trigger's answer (also for a repeated `Idempotency-Key`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct Triggered {
    #[schema(value_type = String)]
    run_id: RunId,
    #[schema(value_type = String)]
    dag_id: DagId,
    /// What the run will not get past as things stand, one line each: a
    /// task no registered worker could hold even when idle ("task `train`
    /// cannot start on any registered worker: needs 8 GPUs of model H100;
    /// …"). The run is created all the same; its task waits `ready` until
    /// such a worker registers. Empty when nothing is in the way.
    warnings: Vec<String>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct BackfillBody {
    from: DateTime<Utc>,
    to: DateTime<Utc>,
}

/// Creates one run per schedule slot in `[from, to]`.
#[utoipa::path(post, path = "/api/v1/dags/{dag_id}/backfill", tag = "dags",
    params(("dag_id" = String, Path, description = "DAG id")),
    request_body = BackfillBody,
    responses((status = 201, body = doc::Backfilled), (status = 400, body = doc::ErrorBody),
        (status = 403, body = doc::ErrorBody), (status = 404, body = doc::ErrorBody)))]
async fn backfill(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Json(body): Json<BackfillBody>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let id = dag_id(&raw)?;
    if body.from > body.to {
        return Err(ApiError::bad_request("`from` is after `to`"));
    }
    let runs = state.control.backfill(&id, body.from, body.to).await?;
    Ok((StatusCode::CREATED, Json(json!({ "run_ids": runs }))))
}

/// Stops new scheduled runs of the DAG.
#[utoipa::path(post, path = "/api/v1/dags/{dag_id}/pause", tag = "dags",
    params(("dag_id" = String, Path, description = "DAG id")),
    responses((status = 200, body = doc::Paused), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody)))]
async fn pause(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = dag_id(&raw)?;
    state.control.set_paused(&id, true).await?;
    Ok(Json(json!({ "dag_id": id, "paused": true })))
}

/// Resumes scheduling of the DAG.
#[utoipa::path(post, path = "/api/v1/dags/{dag_id}/resume", tag = "dags",
    params(("dag_id" = String, Path, description = "DAG id")),
    responses((status = 200, body = doc::Paused), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody)))]
async fn resume(State(state): State<AppState>, Path(raw): Path<String>) -> ApiResult<Json<Value>> {
    let id = dag_id(&raw)?;
    state.control.set_paused(&id, false).await?;
    Ok(Json(json!({ "dag_id": id, "paused": false })))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RunsQuery {
    dag_id: Option<String>,
    /// Comma-separated states.
    state: Option<String>,
    before: Option<String>,
    limit: Option<u32>,
}

/// Runs, newest first; filter by DAG and states, page with `before=next_cursor`.
#[utoipa::path(get, path = "/api/v1/runs", tag = "runs", params(RunsQuery),
    responses((status = 200, body = views::RunPage), (status = 400, body = doc::ErrorBody)))]
async fn list_runs(
    State(state): State<AppState>,
    Query(q): Query<RunsQuery>,
) -> ApiResult<Json<views::RunPage>> {
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
                .push(RunState::from_str(s).map_err(|e| ApiError::bad_request(e.to_string()))?);
        }
    }
    if let Some(raw) = &q.before {
        filter.before = Some(run_id(raw)?);
    }
    let page = state.store.list_runs(filter).await?;
    Ok(Json(views::RunPage::from(page)))
}

/// The longest `?wait_for_end` may hold a request.
pub const MAX_WAIT_FOR_END: Duration = Duration::from_secs(60);

/// How often a `?wait_for_end` re-reads the run where no engine runs in this
/// process (a standby replica): its leader's run ends are not heard here.
pub const RUN_END_RECHECK: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RunQuery {
    /// Long-poll: answer as soon as the run has ended (`success`, `failed`,
    /// `cancelled`), or after this long (e.g. `30s`, `500ms`; at most `60s`)
    /// with the run as it is then. No database connection is held while
    /// it waits.
    wait_for_end: Option<String>,
}

fn parse_wait(raw: &str) -> ApiResult<Duration> {
    let d = trainyard_core::dag::units::parse_duration(raw)
        .map_err(|e| ApiError::bad_request(format!("wait_for_end: {e}")))?;
    if d > MAX_WAIT_FOR_END {
        return Err(ApiError::bad_request(format!(
            "wait_for_end={raw} is longer than the most a request may wait ({}); \
             ask again when it answers",
            trainyard_core::dag::units::format_duration(MAX_WAIT_FOR_END)
        )));
    }
    Ok(d)
}

/// A run and every task instance with all its attempts, each waiting task
/// with why it waits and each skipped or upstream_failed one with why.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}", tag = "runs",
    params(("run_id" = String, Path, description = "Run id"), RunQuery),
    responses((status = 200, body = views::RunDetail), (status = 400, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody)))]
async fn get_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<RunQuery>,
) -> ApiResult<Json<views::RunDetail>> {
    let id = run_id(&raw)?;
    let wait = q.wait_for_end.as_deref().map(parse_wait).transpose()?;
    // Listening starts before the read, so an end committed in between is heard.
    let ends = wait.and_then(|_| state.control.ends());
    let mut run = state.store.get_run(id).await?;
    if let Some(limit) = wait
        && !run.state.is_terminal()
    {
        run = wait_for_end(&state, id, limit, ends).await?;
    }
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
    let skips = if tasks
        .iter()
        .any(|t| matches!(t.state, TaskState::Skipped | TaskState::UpstreamFailed))
    {
        skip_reasons(state.store.skip_events(id).await?)
    } else {
        BTreeMap::new()
    };
    let wait_reason = if run.state == RunState::Queued {
        state.control.run_wait_reason(id).await
    } else {
        None
    };
    let views: Vec<views::TaskView> = tasks
        .into_iter()
        .map(|t| task_view(t, &attempts, &workers, &reasons, &skips))
        .collect();
    Ok(Json(views::RunDetail {
        run: views::RunWithReason {
            run: run.into(),
            wait_reason,
        },
        tasks: views,
    }))
}

/// Waits until `id` has ended or `limit` has passed, and returns the run as
/// the store has it then. Holds no database connection while it waits: it
/// reads the store again only when the engine says the run ended (or a
/// lagging listener may have missed it), or every [`RUN_END_RECHECK`] where
/// no engine runs here.
async fn wait_for_end(
    state: &AppState,
    id: RunId,
    limit: Duration,
    mut ends: Option<tokio::sync::broadcast::Receiver<Ended>>,
) -> ApiResult<Run> {
    use tokio::sync::broadcast::error::RecvError;
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let woke = tokio::time::timeout_at(deadline, async {
            match ends.as_mut() {
                Some(rx) => loop {
                    match rx.recv().await {
                        Ok(Ended::Run(ended)) if ended == id => return true,
                        Ok(_) => {}
                        // Some ends were missed: one may have been this run's.
                        Err(RecvError::Lagged(_)) => return true,
                        Err(RecvError::Closed) => return false,
                    }
                },
                None => {
                    tokio::time::sleep(RUN_END_RECHECK).await;
                    true
                }
            }
        })
        .await;
        if woke == Ok(false) {
            // The engine is gone (this replica stepped down): read the store instead.
            ends = None;
        }
        let run = state.store.get_run(id).await?;
        if run.state.is_terminal() || woke.is_err() {
            return Ok(run);
        }
    }
}

/// Why each task of a run waits or did not run (task id → the text the
/// API serves as `wait_reason` or `skip_reason`), for the UI's run and task
/// pages.
pub(in crate::http) async fn task_reasons(
    state: &AppState,
    run: RunId,
    tasks: &[TaskInstance],
) -> ApiResult<BTreeMap<String, String>> {
    let mut out: BTreeMap<String, String> =
        state.control.wait_reasons(run).await.into_iter().collect();
    if tasks
        .iter()
        .any(|t| matches!(t.state, TaskState::Skipped | TaskState::UpstreamFailed))
    {
        let skips = skip_reasons(state.store.skip_events(run).await?);
        for t in tasks {
            if let Some(r) = skips.get(&t.id)
                && matches!(t.state, TaskState::Skipped | TaskState::UpstreamFailed)
            {
                out.insert(t.task_id.to_string(), r.clone());
            }
        }
    }
    Ok(out)
}

/// The reason of each task's latest move to `skipped`/`upstream_failed`.
fn skip_reasons(events: Vec<crate::store::Event>) -> BTreeMap<TaskInstanceId, String> {
    let mut out = BTreeMap::new();
    for e in events {
        if let (Some(ti), Some(reason)) = (e.task_instance_id, e.reason) {
            // Oldest first: a later skip (after a clear) replaces an earlier one.
            out.insert(ti, reason);
        }
    }
    out
}

fn task_view(
    task: TaskInstance,
    attempts: &[Attempt],
    workers: &BTreeMap<WorkerId, String>,
    reasons: &BTreeMap<String, String>,
    skips: &BTreeMap<TaskInstanceId, String>,
) -> views::TaskView {
    let mut mine: Vec<Attempt> = attempts
        .iter()
        .filter(|a| a.task_instance_id == task.id)
        .cloned()
        .collect();
    mine.sort_by_key(|a| a.attempt);
    let current = mine.iter().rev().find(|a| a.attempt == task.attempt);
    let worker_id = current.and_then(|a| a.worker_id);
    let skip_reason = match task.state {
        TaskState::Skipped | TaskState::UpstreamFailed => Some(
            skips
                .get(&task.id)
                .cloned()
                .unwrap_or_else(|| format!("{} (no reason was recorded)", task.state)),
        ),
        _ => None,
    };
    views::TaskView {
        worker: worker_id.and_then(|w| workers.get(&w).cloned()),
        worker_id,
        gpus: current.map(|a| a.gpus.clone()).unwrap_or_default(),
        wait_reason: reasons.get(task.task_id.as_str()).cloned(),
        skip_reason,
        task_id: task.task_id.to_string(),
        state: task.state.to_string(),
        attempt: task.attempt,
        max_attempts: task.max_attempts,
        started_at: task.started_at,
        ended_at: task.ended_at,
        attempts: mine.into_iter().map(views::Attempt::from).collect(),
    }
}

/// Cancels the run and every unfinished task.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/cancel", tag = "runs",
    params(("run_id" = String, Path, description = "Run id")),
    responses((status = 200, body = doc::Cancelled), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody), (status = 409, body = doc::ErrorBody)))]
async fn cancel_run(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = run_id(&raw)?;
    state.control.cancel_run(id).await?;
    Ok(Json(json!({ "run_id": id, "cancelled": true })))
}

/// Cancels one task of a run.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/tasks/{task_id}/cancel", tag = "runs",
    params(("run_id" = String, Path, description = "Run id"), ("task_id" = String, Path, description = "Task id")),
    responses((status = 200, body = doc::Cancelled), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody), (status = 409, body = doc::ErrorBody)))]
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

#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct ClearQuery {
    downstream: Option<bool>,
}

/// Clears (retries) a task and, by default, everything downstream of it.
#[utoipa::path(post, path = "/api/v1/runs/{run_id}/tasks/{task_id}/clear", tag = "runs",
    params(("run_id" = String, Path, description = "Run id"), ("task_id" = String, Path, description = "Task id"), ClearQuery),
    responses((status = 200, body = doc::Cleared), (status = 403, body = doc::ErrorBody),
        (status = 404, body = doc::ErrorBody), (status = 409, body = doc::ErrorBody)))]
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
