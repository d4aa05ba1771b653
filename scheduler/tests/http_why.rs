//! Why a task waits or did not run, as `GET /api/v1/runs/{run}` tells it,
//! what a trigger warns about, and the `?wait_for_end` long-poll: through the
//! router over a real store and a real engine (ManualClock), with in-process
//! fake workers.
#![allow(clippy::unwrap_used)]

#[path = "engine_support/mod.rs"]
mod engine_support;
#[path = "http_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode};
use engine_support::{FakeWorker, Harness, TestDb, registration, utc};
use serde_json::{Value, json};
use support::*;
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::engine::TaskResult;
use trainyard_scheduler::http::{self, AppState};
use trainyard_scheduler::logs::LogStore;

fn router_over(h: &Harness, dir: &tempfile::TempDir) -> Router {
    http::router(AppState {
        store: h.store.clone(),
        control: Arc::new(h.handle.clone()),
        logs: LogStore::new(dir.path().join("logs")),
        auth: tokens(),
    })
}

async fn trigger(router: &Router, dag: &str) -> Value {
    let resp = send(
        router,
        req(
            Method::POST,
            &format!("/api/v1/dags/{dag}/runs"),
            Some(OPERATOR),
            Some(json!({})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    resp.json()
}

async fn get_run(router: &Router, run: &str) -> Value {
    let resp = send(
        router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{run}"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    resp.json()
}

fn task<'a>(detail: &'a Value, id: &str) -> &'a Value {
    detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == id)
        .unwrap_or_else(|| panic!("no task {id} in {detail}"))
}

const BIG: &str = r#"
id = "big"
max_active_runs = 1
[tasks.train]
command = ["true"]
resources = { gpus = 8, gpu_model = "H100" }
[tasks.report]
depends_on = ["train"]
command = ["true"]
"#;

#[tokio::test]
async fn an_unschedulable_task_says_why_with_numbers_the_trigger_warns_and_a_blocked_run_says_so() {
    let h = Harness::sqlite(utc(2026, 1, 1, 0, 0)).await;
    h.add_dag(BIG).await;
    let _w = FakeWorker::join(&h.handle, registration("two", 4, &[("A100", 80); 2])).await;
    let dir = tempfile::tempdir().unwrap();
    let router = router_over(&h, &dir);
    let why = "needs 8 GPUs of model H100; no registered worker has an H100; \
               the largest worker has 2 GPUs";

    let created = trigger(&router, "big").await;
    assert_eq!(
        created["warnings"],
        json!([format!(
            "task `train` cannot start on any registered worker: {why}; \
             it waits until a worker that fits registers"
        )]),
    );
    let first = created["run_id"].as_str().unwrap().to_owned();
    h.settle().await;
    let detail = get_run(&router, &first).await;
    assert_eq!(task(&detail, "train")["state"], "ready");
    assert_eq!(task(&detail, "train")["wait_reason"], why);
    assert_eq!(
        task(&detail, "report")["wait_reason"],
        "waiting for upstream: train"
    );
    assert!(task(&detail, "train")["skip_reason"].is_null());
    assert!(detail["run"]["wait_reason"].is_null(), "{detail}");

    // max_active_runs = 1: the next run queues behind the stuck one, and says so.
    let second = trigger(&router, "big").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.settle().await;
    let detail = get_run(&router, &second).await;
    assert_eq!(detail["run"]["state"], "queued");
    let blocked = format!(
        "DAG `big` is at max_active_runs (1 of 1 running): run {first} \
         (its task `train` cannot start: {why})"
    );
    assert_eq!(detail["run"]["wait_reason"], blocked);
    assert_eq!(
        task(&detail, "train")["wait_reason"],
        format!("the run is queued: {blocked}")
    );
}

#[tokio::test]
async fn a_full_pool_and_max_active_tasks_are_wait_reasons() {
    let mut h = Harness::start(
        TestDb::sqlite().await,
        ManualClock::new(utc(2026, 1, 1, 0, 0)),
        |o| {
            o.pools.insert("etl".into(), 1);
        },
    )
    .await;
    h.add_dag(
        r#"
id = "pooled"
[tasks.a]
command = ["true"]
pool = "etl"
[tasks.b]
command = ["true"]
pool = "etl"
"#,
    )
    .await;
    h.add_dag(
        r#"
id = "narrow"
max_active_tasks = 1
[tasks.x]
command = ["true"]
[tasks.y]
command = ["true"]
"#,
    )
    .await;
    let mut reg = registration("etl-box", 8, &[]);
    reg.queues = vec!["etl".into(), "default".into()];
    let mut w = FakeWorker::join(&h.handle, reg).await;
    let dir = tempfile::tempdir().unwrap();
    let router = router_over(&h, &dir);

    let run = trigger(&router, "pooled").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let first = w.next_assign().await;
    w.start(&first).await;
    h.settle().await;
    let detail = get_run(&router, &run).await;
    let waiting = if first.task_id.as_str() == "a" {
        "b"
    } else {
        "a"
    };
    assert_eq!(task(&detail, waiting)["state"], "ready");
    assert_eq!(
        task(&detail, waiting)["wait_reason"],
        "pool `etl` is full (1 of 1 slots in use)"
    );
    assert!(task(&detail, first.task_id.as_str())["wait_reason"].is_null());

    let run = trigger(&router, "narrow").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let one = w.next_assign().await;
    h.settle().await;
    let other = if one.task_id.as_str() == "x" {
        "y"
    } else {
        "x"
    };
    let detail = get_run(&router, &run).await;
    assert_eq!(
        task(&detail, other)["wait_reason"],
        "DAG `narrow` is at max_active_tasks (1 of 1 running)"
    );
    w.succeed(&one).await;
    let next = w.next_assign().await;
    assert_eq!(next.task_id.as_str(), other);
    w.succeed(&next).await;
    h.wait_run(
        run.parse().unwrap(),
        trainyard_core::state::RunState::Success,
    )
    .await;
}

const GATED: &str = r#"
id = "gated"
[params]
min_auc = 0.75
[tasks.evaluate]
command = ["true"]
[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= params.min_auc"
command = ["true"]
[tasks.announce]
depends_on = ["deploy"]
command = ["true"]
[tasks.prep]
command = ["true"]
[tasks.train]
depends_on = ["prep"]
command = ["true"]
"#;

/// The skip reasons are stored with the transitions: a new engine on the
/// same database (a restart, another replica) serves the same texts.
async fn skip_reasons_name_the_gate_values_and_the_failed_upstream(db: TestDb) {
    let clock = ManualClock::new(utc(2026, 1, 1, 0, 0));
    let mut h = Harness::start(db, clock, |_| {}).await;
    h.add_dag(GATED).await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 4, &[])).await;
    let dir = tempfile::tempdir().unwrap();
    let router = router_over(&h, &dir);
    let run = trigger(&router, "gated").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    for _ in 0..2 {
        let a = w.next_assign().await;
        w.start(&a).await;
        match a.task_id.as_str() {
            "evaluate" => {
                let result = TaskResult::succeeded().with_metrics([("auc".to_owned(), 0.0197)]);
                w.finish(&a, result).await;
            }
            "prep" => w.finish(&a, TaskResult::failed("exit 3")).await,
            other => panic!("unexpected assignment {other}"),
        }
    }
    h.wait_run(
        run.parse().unwrap(),
        trainyard_core::state::RunState::Failed,
    )
    .await;

    let gate = "metrics.evaluate.auc >= params.min_auc was false \
                (metrics.evaluate.auc = 0.0197, params.min_auc = 0.75)";
    let check = |detail: &Value| {
        assert_eq!(task(detail, "deploy")["state"], "skipped");
        assert_eq!(task(detail, "deploy")["skip_reason"], gate);
        assert_eq!(task(detail, "announce")["state"], "skipped");
        assert_eq!(
            task(detail, "announce")["skip_reason"],
            "upstream skipped: `deploy` (skipped)"
        );
        assert_eq!(task(detail, "train")["state"], "upstream_failed");
        assert_eq!(
            task(detail, "train")["skip_reason"],
            "upstream failed: `prep` (failed)"
        );
        for done in ["evaluate", "prep"] {
            assert!(task(detail, done)["skip_reason"].is_null(), "{done}");
            assert!(task(detail, done)["wait_reason"].is_null(), "{done}");
        }
    };
    check(&get_run(&router, &run).await);
    // The run page and the task page show the same text (HTML-escaped).
    let shown = gate.replace('>', "&gt;");
    for page in [format!("/runs/{run}"), format!("/runs/{run}/tasks/deploy")] {
        let resp = send(&router, req(Method::GET, &page, Some(VIEWER), None)).await;
        assert_eq!(resp.status, StatusCode::OK, "{page}");
        assert!(resp.text().contains(&shown), "{page} lacks the reason");
    }
    let resp = send(
        &router,
        req(Method::GET, &format!("/runs/{run}"), Some(VIEWER), None),
    )
    .await;
    assert!(resp.text().contains("upstream failed: `prep` (failed)"));

    let (db, clock) = h.crash().await;
    let h = Harness::start(db, clock, |_| {}).await;
    let router = router_over(&h, &dir);
    check(&get_run(&router, &run).await);
}

#[tokio::test]
async fn skip_reasons_name_the_gate_values_and_the_failed_upstream_on_sqlite() {
    skip_reasons_name_the_gate_values_and_the_failed_upstream(TestDb::sqlite().await).await;
}

#[tokio::test]
async fn skip_reasons_name_the_gate_values_and_the_failed_upstream_on_postgres() {
    skip_reasons_name_the_gate_values_and_the_failed_upstream(TestDb::postgres().await).await;
}

const QUICK: &str = r#"
id = "quick"
[tasks.only]
command = ["true"]
"#;

#[tokio::test]
async fn wait_for_end_answers_when_the_run_ends_and_with_the_unfinished_run_at_its_timeout() {
    let h = Harness::sqlite(utc(2026, 1, 1, 0, 0)).await;
    h.add_dag(QUICK).await;
    let dir = tempfile::tempdir().unwrap();
    let router = router_over(&h, &dir);
    let run = trigger(&router, "quick").await["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    h.settle().await;

    // No worker: the run cannot end, so the long-poll answers at its timeout
    // with the run as it is.
    let resp = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{run}?wait_for_end=50ms"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert_eq!(resp.json()["run"]["state"], "running");

    for bad in ["2m", "soon", ""] {
        let resp = send(
            &router,
            req(
                Method::GET,
                &format!("/api/v1/runs/{run}?wait_for_end={bad}"),
                Some(VIEWER),
                None,
            ),
        )
        .await;
        assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{bad}");
        assert!(resp.text().contains("wait_for_end"), "{}", resp.text());
    }

    // A long-poll of a minute, waiting before the run ends, answers with the
    // finished run once the engine commits its end: it is the end that wakes
    // it, so it returns long before its timeout.
    let listening = h.handle.end_listeners();
    let poll = tokio::spawn({
        let router = router.clone();
        let path = format!("/api/v1/runs/{run}?wait_for_end=60s");
        async move { send(&router, req(Method::GET, &path, Some(VIEWER), None)).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while h.handle.end_listeners() == listening {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll never started listening"
        );
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!poll.is_finished(), "it answered before the run ended");
    let mut w = FakeWorker::join(&h.handle, registration("w", 1, &[])).await;
    let a = w.next_assign().await;
    w.succeed(&a).await;
    let resp = tokio::time::timeout(Duration::from_secs(30), poll)
        .await
        .expect("the long-poll did not answer when the run ended")
        .unwrap();
    assert_eq!(resp.status, StatusCode::OK);
    let detail = resp.json();
    assert_eq!(detail["run"]["state"], "success");
    assert_eq!(task(&detail, "only")["state"], "success");

    // A finished run is answered at once.
    let resp = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{run}?wait_for_end=60s"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(resp.json()["run"]["state"], "success");
}
