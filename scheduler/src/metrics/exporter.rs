//! `GET /metrics`: refreshes the store-derived gauges, then renders the
//! registry. A store that does not answer still yields a valid page (with
//! `trainyard_db_up 0`), so Prometheus sees the outage instead of a gap.

use std::collections::BTreeSet;
use std::time::Instant;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use trainyard_core::state::{TaskState, WorkerState};

use super::{Metrics, global};
use crate::http::AppState;
use crate::store::{ReadStore, StoreError};

/// Most task instances counted per state at one scrape; a queue deeper than
/// this reports the cap (the query stays cheap however large the backlog).
const COUNT_CAP: u32 = 100_000;

/// Task states worth a gauge: the ones work waits or runs in.
const LIVE_STATES: [TaskState; 6] = [
    TaskState::Pending,
    TaskState::Ready,
    TaskState::Assigned,
    TaskState::Running,
    TaskState::UpForRetry,
    TaskState::Lost,
];

/// The axum handler behind `/metrics`.
pub async fn handler(State(state): State<AppState>) -> Response {
    let metrics = global();
    let started = Instant::now();
    let ok = refresh_from_store(metrics, state.store.as_ref()).await;
    let pool = state.store.pool_usage();
    // A counter follows the store's own count (it only grows).
    let committed = state.store.transactions_committed();
    let seen = metrics.store_transactions.get();
    if committed > seen {
        metrics.store_transactions.inc_by(committed - seen);
    }
    for (label, value) in [
        ("in_use", pool.open.saturating_sub(pool.idle)),
        ("idle", pool.idle),
        ("max", pool.max),
    ] {
        metrics
            .db_pool_connections
            .with_label_values(&[label])
            .set(i64::from(value));
    }
    metrics
        .db_query_seconds
        .set(started.elapsed().as_secs_f64());
    match ok {
        Ok(()) => metrics.db_up.set(1),
        Err(err) => {
            tracing::warn!(error = %err, "metrics: store queries failed");
            metrics.db_up.set(0);
        }
    }
    if let Some(mem) = super::memory_status() {
        metrics
            .resident_memory
            .set(i64::try_from(mem.rss_bytes).unwrap_or(i64::MAX));
    }
    match metrics.render() {
        Ok(body) => ([(header::CONTENT_TYPE, super::CONTENT_TYPE)], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "metrics: cannot render");
            (StatusCode::INTERNAL_SERVER_ERROR, "cannot render metrics").into_response()
        }
    }
}

/// Sets task, DAG last-success, worker and GPU gauges from the store's current rows.
pub(crate) async fn refresh_from_store(
    metrics: &Metrics,
    store: &dyn ReadStore,
) -> Result<(), StoreError> {
    for state in LIVE_STATES {
        let n = store.task_instances_in_state(state, COUNT_CAP).await?.len();
        metrics
            .tasks
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    // Rebuilt each scrape so a removed DAG's series disappears.
    metrics.dag_last_success.reset();
    for dag in store.list_dags().await?.into_iter().filter(|d| d.active) {
        if let Some(ended) = store
            .last_successful_run(&dag.id)
            .await?
            .and_then(|run| run.ended_at)
        {
            metrics
                .dag_last_success
                .with_label_values(&[dag.id.as_str()])
                .set(ended.timestamp_millis() as f64 / 1000.0);
        }
    }
    let workers = store.list_workers().await?;
    for state in WorkerState::ALL {
        let n = workers.iter().filter(|w| w.state == *state).count();
        metrics
            .workers
            .with_label_values(&[state.as_str()])
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }
    // Workers come and go: rebuild the per-GPU series so gone GPUs disappear.
    metrics.gpu_memory_total.reset();
    metrics.gpu_allocated.reset();
    for worker in workers
        .iter()
        .filter(|w| matches!(w.state, WorkerState::Active | WorkerState::Draining))
    {
        let held: BTreeSet<u32> = store
            .attempts_held_by_worker(worker.id)
            .await?
            .into_iter()
            .flat_map(|a| a.gpus)
            .collect();
        for gpu in worker
            .gpus
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default()
        {
            let Some(index) = gpu.get("index").and_then(Value::as_u64) else {
                continue;
            };
            let model = gpu.get("model").and_then(Value::as_str).unwrap_or("");
            let memory = gpu.get("memory_bytes").and_then(Value::as_u64).unwrap_or(0);
            let index_label = index.to_string();
            metrics
                .gpu_memory_total
                .with_label_values(&[&worker.name, &index_label, model])
                .set(i64::try_from(memory).unwrap_or(i64::MAX));
            let allocated = u32::try_from(index).is_ok_and(|i| held.contains(&i));
            metrics
                .gpu_allocated
                .with_label_values(&[&worker.name, &index_label])
                .set(i64::from(allocated));
        }
    }
    Ok(())
}
