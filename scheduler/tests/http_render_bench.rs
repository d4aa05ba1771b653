//! Server-side render time of the two heaviest UI pages, through the router
//! without a socket over a real SQLite store: the DAG list with 500 DAGs and
//! the runs grid with 1,000 runs (× 4 tasks). Ignored by default; run it in a
//! release build:
//!
//! ```text
//! cargo test --release -p trainyard-scheduler --test http_render_bench -- --ignored --nocapture
//! ```
#![allow(clippy::unwrap_used)]

#[path = "http_support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use axum::Router;
use axum::http::{Method, StatusCode};
use chrono::{TimeZone, Utc};
use support::{app_with_recorder, req, send};
use trainyard_core::ids::{DagId, RunId, TaskId};
use trainyard_core::state::{RunState, TaskState, TriggerKind};
use trainyard_scheduler::http::AuthConfig;
use trainyard_scheduler::store::{NewDagVersion, NewRun, NewTaskInstance, Store};

const DAGS: usize = 500;
const GRID_RUNS: usize = 1000;
/// Runs given to each of the other DAGs, so the list shows recent-run dots.
const RUNS_PER_OTHER_DAG: usize = 3;
const SAMPLES: usize = 9;

fn dag_toml(id: &str) -> String {
    format!(
        r#"
id = "{id}"
description = "Retrain model {id}; promote it only if it wins."
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
tags = ["ml", "bench"]
[params]
epochs = 10
lr = 0.5
[tasks.ingest]
command = ["true"]
[tasks.train]
depends_on = ["ingest"]
command = ["true"]
[tasks.evaluate]
depends_on = ["train"]
command = ["true"]
[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= 0.85"
command = ["true"]
"#
    )
}

async fn add_runs(
    store: &dyn Store,
    dag: &DagId,
    version: trainyard_core::ids::DagVersionId,
    n: usize,
) {
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    for _ in 0..n {
        let tasks = ["ingest", "train", "evaluate", "deploy"]
            .iter()
            .map(|t| NewTaskInstance {
                task_id: TaskId::new(*t),
                state: if *t == "ingest" {
                    TaskState::Ready
                } else {
                    TaskState::Pending
                },
                max_attempts: 1,
                priority: 0,
                pool: "default".into(),
                resources: serde_json::json!({}),
            })
            .collect();
        store
            .create_run(
                NewRun {
                    id: RunId::new(),
                    dag_id: dag.clone(),
                    version_id: version,
                    logical_date: None,
                    trigger: TriggerKind::Manual,
                    params: serde_json::json!({"epochs": 10}),
                    idempotency_key: None,
                    state: RunState::Queued,
                    tasks,
                },
                "bench",
                now,
            )
            .await
            .unwrap();
    }
}

/// Median (and min/max) wall time of `SAMPLES` GETs of `path`, after one warm-up.
async fn time_get(router: &Router, path: &str) -> (Duration, Duration, Duration, String) {
    let warm = send(router, req(Method::GET, path, None, None)).await;
    assert_eq!(warm.status, StatusCode::OK, "{path}: {}", warm.text());
    let mut times = Vec::with_capacity(SAMPLES);
    for _ in 0..SAMPLES {
        let start = Instant::now();
        let resp = send(router, req(Method::GET, path, None, None)).await;
        times.push(start.elapsed());
        assert_eq!(resp.status, StatusCode::OK);
    }
    times.sort();
    (
        times[SAMPLES / 2],
        times[0],
        times[SAMPLES - 1],
        warm.text(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run in release with --ignored --nocapture"]
async fn render_dag_list_500_dags_and_grid_1000_runs() {
    let app = app_with_recorder(AuthConfig::open()).await;
    let store = app.store.as_ref();
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    let fill = Instant::now();
    let mut grid_dag = None;
    for i in 0..DAGS {
        let id = format!("model_{i:03}");
        let toml = dag_toml(&id);
        let spec = trainyard_core::dag::parse_dag(&format!("{id}.toml"), &toml)
            .unwrap_or_else(|e| panic!("{e}"));
        let dag = DagId::new(id.clone());
        let v = store
            .upsert_dag_version(
                NewDagVersion {
                    dag_id: dag.clone(),
                    content_hash: format!("hash-{id}"),
                    source: toml.clone(),
                    spec: trainyard_scheduler::store::SpecJson::encode(&spec).unwrap(),
                    file_path: Some(format!("dags/{id}.toml")),
                },
                now,
            )
            .await
            .unwrap();
        let n = if i == 0 {
            GRID_RUNS
        } else {
            RUNS_PER_OTHER_DAG
        };
        add_runs(store, &dag, v.version_id, n).await;
        if i == 0 {
            grid_dag = Some(dag);
        }
    }
    let grid_dag = grid_dag.unwrap();
    println!(
        "filled SQLite: {DAGS} DAGs, {} runs in {:.1?}",
        GRID_RUNS + (DAGS - 1) * RUNS_PER_OTHER_DAG,
        fill.elapsed()
    );

    let (median, min, max, page) = time_get(&app.router, "/").await;
    assert_eq!(
        page.matches("class=\"dag-id\"").count(),
        DAGS,
        "every DAG is listed"
    );
    let bytes = page.len();
    println!(
        "GET / (DAG list, {DAGS} DAGs): median {median:.1?} (min {min:.1?}, max {max:.1?}) over {SAMPLES} requests, {} KiB",
        bytes / 1024
    );

    let path = format!("/dags/{grid_dag}/grid?limit={GRID_RUNS}");
    let (median, min, max, page) = time_get(&app.router, &path).await;
    assert!(
        page.contains(&format!("{GRID_RUNS} runs, oldest left")),
        "grid holds every run"
    );
    let bytes = page.len();
    println!(
        "GET {path} (runs grid, {GRID_RUNS} runs x 4 tasks): median {median:.1?} (min {min:.1?}, max {max:.1?}) over {SAMPLES} requests, {} KiB",
        bytes / 1024
    );
}
