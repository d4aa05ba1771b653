//! Artifacts and metrics read models: a run's artifacts with their lineage
//! (`GET /api/v1/runs/{run_id}/artifacts`) and one metric of one task across
//! a DAG's runs (`GET /api/v1/dags/{dag_id}/metrics?task=T&name=N`).

use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, Query, State};
use serde::Deserialize;
use serde_json::{Value, json};
use trainyard_core::ids::{DagId, RunId, TaskId};

use super::routes::RouteTable;
use super::{ApiError, ApiResult, AppState};

pub(super) fn routes(t: RouteTable) -> RouteTable {
    t.get("/api/v1/runs/{run_id}/artifacts", run_artifacts)
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
        .map_err(|e| ApiError::BadRequest(format!("bad run id {raw:?}: {e}")))?;
    // 404 for an unknown run rather than an empty list.
    state.store.get_run(id).await?;
    let artifacts = state.store.run_artifacts(id).await?;
    Ok(Json(json!({ "run_id": id, "artifacts": artifacts })))
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
    let dag = DagId::from_str(&raw)
        .map_err(|e| ApiError::BadRequest(format!("bad DAG id {raw:?}: {e}")))?;
    if q.task.is_empty() || q.name.is_empty() {
        return Err(ApiError::BadRequest(
            "`task` and `name` must not be empty".into(),
        ));
    }
    let task = TaskId::new(q.task.clone());
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
