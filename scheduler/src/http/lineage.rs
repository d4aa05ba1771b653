//! Artifacts, metrics and history read models: a run's artifacts with their
//! lineage (`GET /api/v1/runs/{run_id}/artifacts`), one metric of one task
//! across a DAG's runs (`GET /api/v1/dags/{dag_id}/metrics?task=T&name=N`),
//! and a run's timeline — every state change of the run and its tasks, in
//! order, with who made it and why (`GET /api/v1/runs/{run_id}/events`).

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use trainyard_core::ids::{RunId, TaskId};

use super::routes::RouteTable;
use super::{ApiError, ApiResult, AppState};

pub(super) fn routes(t: RouteTable) -> RouteTable {
    t.get("/api/v1/runs/{run_id}/artifacts", run_artifacts)
        .get("/api/v1/runs/{run_id}/events", run_events)
        .get("/api/v1/dags/{dag_id}/metrics", metric_series)
}

/// Every artifact the run's attempts produced (key, URI, size, sha256, the
/// producing task and attempt) with the attempts that consumed it.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/artifacts", tag = "runs",
    params(("run_id" = String, Path, description = "Run id")),
    responses((status = 200, body = Object), (status = 404, body = super::openapi::ErrorBody)))]
pub(super) async fn run_artifacts(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<Value>> {
    let id = RunId::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("bad run id {raw:?}: {e}")))?;
    // 404 for an unknown run rather than an empty list.
    state.store.get_run(id).await?;
    let artifacts = state.store.run_artifacts(id).await?;
    Ok(Json(json!({ "run_id": id, "artifacts": artifacts })))
}

/// The run's timeline: every transition of the run and of each task
/// attempt, oldest first, with the actor (`scheduler`, `api:<user>`,
/// `worker-monitor:<id>`) and the reason (a `when` that was false, an error,
/// a retry…). Written in the same transaction as each change.
/// Paged: at most `limit` events (default 1,000, at most 10,000) after the
/// event id `after`; `next_after` is set when more follow.
#[utoipa::path(get, path = "/api/v1/runs/{run_id}/events", tag = "runs",
    params(
        ("run_id" = String, Path, description = "Run id"),
        ("after" = Option<i64>, Query, description = "Only events with a larger id (the previous page's next_after)"),
        ("limit" = Option<u32>, Query, description = "Events per page (default 1000, at most 10000)"),
    ),
    responses((status = 200, body = Object), (status = 404, body = super::openapi::ErrorBody)))]
pub(super) async fn run_events(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<EventsQuery>,
) -> ApiResult<Json<Value>> {
    let id = RunId::from_str(&raw)
        .map_err(|e| ApiError::bad_request(format!("bad run id {raw:?}: {e}")))?;
    state.store.get_run(id).await?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 10_000);
    let mut events = state.store.run_events(id, q.after, limit + 1).await?;
    let more = events.len() > limit as usize;
    events.truncate(limit as usize);
    let next_after = more.then(|| events.last().map(|e| e.id)).flatten();
    Ok(Json(
        json!({ "run_id": id, "events": events, "next_after": next_after }),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct EventsQuery {
    after: Option<i64>,
    limit: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct SeriesQuery {
    task: String,
    name: String,
    /// Latest runs to include (default 100, at most 1000).
    limit: Option<u32>,
}

/// One metric of one task across the DAG's latest runs, oldest first (the
/// latest attempt's value per run): what the metric charts draw.
#[utoipa::path(get, path = "/api/v1/dags/{dag_id}/metrics", tag = "dags",
    params(
        ("dag_id" = String, Path, description = "DAG id"),
        ("task" = String, Query, description = "Task id"),
        ("name" = String, Query, description = "Metric name"),
        ("limit" = Option<u32>, Query, description = "Latest runs to include (default 100)"),
    ),
    responses((status = 200, body = Object), (status = 400, body = super::openapi::ErrorBody)))]
pub(super) async fn metric_series(
    State(state): State<AppState>,
    Path(raw): Path<String>,
    Query(q): Query<SeriesQuery>,
) -> ApiResult<Json<Value>> {
    let dag = super::read::parse_dag_id(&raw)?;
    let task = TaskId::new(super::read::check_id("task id", &q.task)?);
    if q.name.is_empty() || q.name.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "bad metric name {:?}: it must be non-empty, without control characters",
            q.name.chars().take(100).collect::<String>()
        )));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let points = state
        .store
        .metric_series(&dag, &task, &q.name, limit)
        .await?;
    Ok(Json(json!({
        "dag_id": dag,
        "task": q.task,
        "name": q.name,
        "points": points,
    })))
}
