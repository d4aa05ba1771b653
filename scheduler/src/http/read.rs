//! Read models shared by the JSON API and the UI: a DAG with its schedule,
//! next run and recent runs; a DAG's graph; workers with each GPU and the
//! attempt holding it. Handlers here shape what the store returns; the UI
//! renders the same structs, so both always agree.

use std::collections::BTreeMap;
use std::str::FromStr;

use axum::Json;
use axum::extract::{Path, State};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use trainyard_core::cron;
use trainyard_core::dag::DagSpec;
use trainyard_core::ids::{DagId, RunId, WorkerId};
use utoipa::ToSchema;

use super::{ApiError, ApiResult, AppState};
use crate::store::{Dag, ReadStore, RunFilter};

/// Recent runs shown per DAG in the list.
pub const RECENT_RUNS: u32 = 10;

/// A run in one line: enough to colour a status dot.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunBrief {
    #[schema(value_type = String)]
    pub id: RunId,
    pub state: String,
    pub created_at: DateTime<Utc>,
    pub logical_date: Option<DateTime<Utc>>,
}

/// One DAG as the list shows it.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct DagSummary {
    #[schema(value_type = String)]
    pub id: DagId,
    pub description: Option<String>,
    pub tags: Vec<String>,
    /// Cron expression; null for manual-only DAGs.
    pub schedule: Option<String>,
    /// The schedule in words ("at 03:00 every day").
    pub schedule_description: Option<String>,
    pub timezone: Option<String>,
    /// Next cron fire time; null when paused, inactive or unscheduled.
    pub next_run: Option<DateTime<Utc>>,
    pub paused: bool,
    /// False once the DAG's file is deleted.
    pub active: bool,
    #[schema(value_type = Option<i64>)]
    pub current_version_id: Option<trainyard_core::ids::DagVersionId>,
    pub file_path: Option<String>,
    /// Why the DAG's file does not load (the last good version stays current).
    pub parse_error: Option<String>,
    pub parse_error_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// Cron slots a catch-up (`catchup = true`) left out because they were
    /// beyond `--catchup-limit`, in total since the DAG was registered;
    /// `skipped` on the DAG's detail names their ranges.
    pub skipped_slots: u64,
    /// Newest first.
    pub recent_runs: Vec<RunBrief>,
}

/// Slots one catch-up left out (beyond `--catchup-limit`); backfill the
/// range to run them.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct SkippedSlotsView {
    /// How many slots.
    pub slots: u64,
    /// Logical date of the first and the last skipped slot.
    pub first_logical_date: DateTime<Utc>,
    pub last_logical_date: DateTime<Utc>,
    pub reason: String,
    /// When the catch-up that skipped them ran.
    pub recorded_at: DateTime<Utc>,
}

/// `GET /api/v1/dags`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagList {
    pub dags: Vec<DagSummary>,
}

/// A node of the DAG graph, placed in its topological layer.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphNode {
    pub id: String,
    pub layer: usize,
    /// Position within its layer.
    pub index: usize,
    pub description: Option<String>,
    pub when: Option<String>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GraphEdge {
    pub from: String,
    pub to: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct Graph {
    pub nodes: Vec<GraphNode>,
    pub edges: Vec<GraphEdge>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct VersionInfo {
    pub id: i64,
    pub content_hash: String,
    pub created_at: DateTime<Utc>,
}

/// `GET /api/v1/dags/{dag_id}`.
#[derive(Debug, Serialize, ToSchema)]
pub struct DagDetail {
    pub dag: DagSummary,
    /// The current version's parsed spec (the DAG file as JSON); null if it never parsed.
    #[schema(value_type = Option<Object>)]
    pub spec: Option<Value>,
    pub version: Option<VersionInfo>,
    pub graph: Graph,
    /// The latest catch-ups that skipped slots (at most 20), newest first.
    pub skipped: Vec<SkippedSlotsView>,
}

/// A DAG summary plus its parsed spec (when a version exists).
pub async fn dag_summary(
    store: &dyn ReadStore,
    dag: Dag,
    now: DateTime<Utc>,
) -> ApiResult<(DagSummary, Option<DagSpec>, Option<(Value, VersionInfo)>)> {
    let version = match dag.current_version_id {
        Some(v) => Some(store.get_dag_version(v).await?),
        None => None,
    };
    let spec: Option<DagSpec> = version.as_ref().and_then(|v| v.spec.decode().ok());
    let page = store
        .list_runs(RunFilter {
            dag_id: Some(dag.id.clone()),
            limit: RECENT_RUNS,
            ..RunFilter::default()
        })
        .await?;
    let recent_runs = page
        .runs
        .into_iter()
        .map(|r| RunBrief {
            id: r.id,
            state: r.state.to_string(),
            created_at: r.created_at,
            logical_date: r.logical_date,
        })
        .collect();
    let schedule = spec.as_ref().and_then(|s| s.schedule.clone());
    let parsed = schedule.as_deref().and_then(|e| cron::parse(e).ok());
    let next_run = match (&spec, &parsed) {
        (Some(spec), Some(sched)) if !dag.paused && dag.active => {
            cron::fire_times(sched, spec.tz(), now, spec.start_date, spec.end_date).next()
        }
        _ => None,
    };
    let summary = DagSummary {
        description: spec.as_ref().and_then(|s| s.description.clone()),
        tags: spec.as_ref().map(|s| s.tags.clone()).unwrap_or_default(),
        schedule_description: parsed.as_ref().map(|s| s.describe()),
        schedule,
        timezone: spec.as_ref().map(|s| s.timezone.clone()),
        next_run,
        paused: dag.paused,
        active: dag.active,
        current_version_id: dag.current_version_id,
        file_path: dag.file_path,
        parse_error: dag.parse_error,
        parse_error_at: dag.parse_error_at,
        created_at: dag.created_at,
        updated_at: dag.updated_at,
        skipped_slots: dag.skipped_slots,
        recent_runs,
        id: dag.id,
    };
    let raw = version.map(|v| {
        // Masked on the typed spec, so every env value marked secret is found
        // however the spec's JSON is laid out; a stored spec this build cannot
        // decode (written by another version) is masked as JSON instead.
        let shown = match &spec {
            Some(spec) => serde_json::to_value(secrets_masked(spec.clone())).ok(),
            None => None,
        }
        .unwrap_or_else(|| masked_spec(v.spec.to_value().unwrap_or(Value::Null)));
        (
            shown,
            VersionInfo {
                id: v.id.get(),
                content_hash: v.content_hash,
                created_at: v.created_at,
            },
        )
    });
    Ok((summary, spec, raw))
}

/// What a secret env value shows instead of itself.
pub const MASK: &str = "***";

/// `spec` with every secret env value written in the DAG file (`secret =
/// true` with a literal value) replaced by [`MASK`]. A secret copied from
/// the worker's environment (`from_env`) names a variable, not a value, and
/// stays as it is.
pub fn secrets_masked(mut spec: DagSpec) -> DagSpec {
    for task in spec.tasks.values_mut() {
        for var in task.env.values_mut() {
            if var.secret
                && let trainyard_core::dag::EnvSource::Value(value) = &mut var.source
            {
                *value = MASK.to_owned();
            }
        }
    }
    spec
}

/// The stored spec with every secret env value (`secret = true` with a literal
/// value) replaced by `***`: the API shows DAGs to viewers, never their secrets.
pub fn masked_spec(mut spec: Value) -> Value {
    if let Some(tasks) = spec.get_mut("tasks").and_then(Value::as_object_mut) {
        for task in tasks.values_mut() {
            let Some(env) = task.get_mut("env").and_then(Value::as_object_mut) else {
                continue;
            };
            for var in env.values_mut() {
                if var.get("secret").and_then(Value::as_bool) == Some(true)
                    && let Some(value) = var.pointer_mut("/source/value")
                {
                    *value = Value::from(MASK);
                }
            }
        }
    }
    spec
}

/// Every DAG with its schedule state and recent runs.
pub async fn all_dags(store: &dyn ReadStore, now: DateTime<Utc>) -> ApiResult<Vec<DagSummary>> {
    let dags = store.list_dags().await?;
    let mut out = Vec::with_capacity(dags.len());
    for dag in dags {
        out.push(dag_summary(store, dag, now).await?.0);
    }
    Ok(out)
}

/// Nodes in topological layers and one edge per dependency.
pub fn graph_of(spec: &DagSpec) -> Graph {
    let mut nodes = Vec::new();
    for (layer, ids) in spec.topological_layers().into_iter().enumerate() {
        for (index, id) in ids.into_iter().enumerate() {
            let task = spec.tasks.get(&id);
            nodes.push(GraphNode {
                description: task.and_then(|t| t.description.clone()),
                when: task.and_then(|t| t.when.clone()),
                id,
                layer,
                index,
            });
        }
    }
    let edges = spec
        .tasks
        .values()
        .flat_map(|t| {
            t.depends_on.iter().map(|up| GraphEdge {
                from: up.clone(),
                to: t.id.clone(),
            })
        })
        .collect();
    Graph { nodes, edges }
}

/// A DAG or task id from a URL: `[A-Za-z0-9_-]+`, the DAG parser's rule.
/// Anything else names nothing, and is refused here rather than sent to the
/// store (PostgreSQL refuses a NUL in text with an error, not a miss).
pub fn check_id<'a>(what: &str, raw: &'a str) -> ApiResult<&'a str> {
    let ok = !raw.is_empty()
        && raw
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
    if ok {
        Ok(raw)
    } else {
        let shown: String = raw.chars().take(100).collect();
        Err(ApiError::bad_request(format!(
            "bad {what} {shown:?}: ids are letters, digits, `_` and `-` ([A-Za-z0-9_-]+), as in the DAG file"
        )))
    }
}

pub fn parse_dag_id(raw: &str) -> ApiResult<DagId> {
    let raw = check_id("DAG id", raw)?;
    DagId::from_str(raw).map_err(|e| ApiError::bad_request(format!("bad DAG id {raw:?}: {e}")))
}

/// Lists DAGs with schedule, next run, paused flag, parse error and recent runs.
#[utoipa::path(get, path = "/api/v1/dags", tag = "dags",
    responses((status = 200, body = DagList), (status = 401, body = super::openapi::ErrorBody)))]
pub async fn list_dags(State(state): State<AppState>) -> ApiResult<Json<DagList>> {
    let dags = all_dags(state.store.as_ref(), Utc::now()).await?;
    Ok(Json(DagList { dags }))
}

/// One DAG: summary, current spec and its graph.
#[utoipa::path(get, path = "/api/v1/dags/{dag_id}", tag = "dags",
    params(("dag_id" = String, Path, description = "DAG id")),
    responses((status = 200, body = DagDetail), (status = 404, body = super::openapi::ErrorBody),
        (status = 400, body = super::openapi::ErrorBody)))]
pub async fn get_dag(
    State(state): State<AppState>,
    Path(raw): Path<String>,
) -> ApiResult<Json<DagDetail>> {
    Ok(Json(dag_detail(&state, &raw).await?))
}

pub async fn dag_detail(state: &AppState, raw: &str) -> ApiResult<DagDetail> {
    let id = parse_dag_id(raw)?;
    let dag = state.store.get_dag(&id).await?;
    let (summary, spec, raw) = dag_summary(state.store.as_ref(), dag, Utc::now()).await?;
    let graph = spec.as_ref().map(graph_of).unwrap_or(Graph {
        nodes: Vec::new(),
        edges: Vec::new(),
    });
    let (spec, version) = match raw {
        Some((spec, v)) => (Some(spec), Some(v)),
        None => (None, None),
    };
    let skipped = state
        .store
        .skipped_slots(&id, 20)
        .await?
        .into_iter()
        .map(|r| SkippedSlotsView {
            slots: r.slots,
            first_logical_date: r.first_logical_date,
            last_logical_date: r.last_logical_date,
            reason: r.reason,
            recorded_at: r.recorded_at,
        })
        .collect();
    Ok(DagDetail {
        dag: summary,
        spec,
        version,
        graph,
        skipped,
    })
}

/// The attempt holding a GPU.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GpuHolder {
    #[schema(value_type = String)]
    pub run_id: RunId,
    pub dag_id: String,
    pub task_id: String,
    pub attempt: i32,
    pub state: String,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct GpuView {
    pub index: u32,
    pub uuid: Option<String>,
    pub model: Option<String>,
    pub memory_bytes: Option<u64>,
    /// Percent, when the worker reports it (null when unknown).
    pub utilization_percent: Option<f64>,
    pub held_by: Option<GpuHolder>,
}

#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct WorkerView {
    #[schema(value_type = String)]
    pub id: WorkerId,
    pub name: String,
    pub state: String,
    #[schema(value_type = Object)]
    pub resources: Value,
    #[schema(value_type = Object)]
    pub labels: Value,
    pub registered_at: DateTime<Utc>,
    pub last_heartbeat_at: DateTime<Utc>,
    pub gpus: Vec<GpuView>,
    /// Attempts the worker holds now (assigned or running), GPU or not.
    pub running: Vec<GpuHolder>,
}

/// `GET /api/v1/workers`.
#[derive(Debug, Serialize, ToSchema)]
pub struct WorkerList {
    pub workers: Vec<WorkerView>,
}

#[derive(Deserialize)]
struct GpuRecord {
    index: u32,
    uuid: Option<String>,
    model: Option<String>,
    memory_bytes: Option<u64>,
}

pub async fn workers(
    store: &dyn ReadStore,
    usage: &BTreeMap<WorkerId, Vec<(u32, f64, u64)>>,
) -> ApiResult<Vec<WorkerView>> {
    let mut out = Vec::new();
    for w in store.list_workers().await? {
        let utilization: BTreeMap<u32, f64> = usage
            .get(&w.id)
            .map(|gpus| gpus.iter().map(|(i, u, _)| (*i, *u)).collect())
            .unwrap_or_default();
        let held = store.attempts_held_by_worker(w.id).await?;
        let running: Vec<GpuHolder> = held
            .iter()
            .map(|h| GpuHolder {
                run_id: h.run_id,
                dag_id: h.dag_id.to_string(),
                task_id: h.task_id.to_string(),
                attempt: h.attempt,
                state: h.state.to_string(),
            })
            .collect();
        let mut by_gpu = BTreeMap::new();
        for (h, view) in held.iter().zip(&running) {
            for g in &h.gpus {
                by_gpu.insert(*g, view.clone());
            }
        }
        let records: Vec<GpuRecord> = serde_json::from_value(w.gpus.clone()).unwrap_or_default();
        let gpus = records
            .into_iter()
            .map(|g| GpuView {
                held_by: by_gpu.get(&g.index).cloned(),
                index: g.index,
                uuid: g.uuid,
                model: g.model,
                memory_bytes: g.memory_bytes,
                utilization_percent: utilization.get(&g.index).copied(),
            })
            .collect();
        out.push(WorkerView {
            id: w.id,
            name: w.name,
            state: w.state.to_string(),
            resources: w.resources,
            labels: w.labels,
            registered_at: w.registered_at,
            last_heartbeat_at: w.last_heartbeat_at,
            gpus,
            running,
        });
    }
    Ok(out)
}

/// Workers with each GPU and the attempt holding it.
#[utoipa::path(get, path = "/api/v1/workers", tag = "workers",
    responses((status = 200, body = WorkerList), (status = 401, body = super::openapi::ErrorBody)))]
pub async fn list_workers(State(state): State<AppState>) -> ApiResult<Json<WorkerList>> {
    Ok(Json(WorkerList {
        workers: workers(state.store.as_ref(), &state.control.gpu_usage().await).await?,
    }))
}

#[cfg(test)]
mod tests {
    use super::masked_spec;
    use serde_json::json;

    #[test]
    fn secret_env_values_are_masked_and_others_kept() {
        let spec = json!({"tasks": {"t": {"env": {
            "TOKEN": {"source": {"value": "hunter2"}, "secret": true},
            "FROM": {"source": {"from_env": "AWS_SECRET"}, "secret": true},
            "LEVEL": {"source": {"value": "debug"}, "secret": false}
        }}}});
        let masked = masked_spec(spec);
        let env = &masked["tasks"]["t"]["env"];
        assert_eq!(env["TOKEN"]["source"]["value"], "***");
        assert_eq!(env["FROM"]["source"]["from_env"], "AWS_SECRET");
        assert_eq!(env["LEVEL"]["source"]["value"], "debug");
        assert!(!masked.to_string().contains("hunter2"));
    }
}
