//! Task logs over HTTP with a real engine (ManualClock) and a fake worker:
//! unknown runs, tasks and attempts are 404 and hold nothing; a finished
//! task's stream replays its log and ends; live streams are bounded per
//! client and in total, end when their task ends, and free their channel
//! when the last reader leaves.
#![allow(clippy::unwrap_used)]

#[path = "engine_support/mod.rs"]
mod engine_support;
#[path = "http_support/mod.rs"]
mod support;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Response, StatusCode};
use engine_support::{FakeWorker, Harness, registration, utc};
use http_body_util::BodyExt;
use support::*;
use tower::ServiceExt;
use trainyard_core::ids::RunId;
use trainyard_scheduler::http::{self, AppState};
use trainyard_scheduler::logs::{FollowLimits, LogStore, LogStream};

/// `report` wants a GPU the fake worker does not have: it stays ready,
/// never tried (attempt 0), and its run stays running.
const DAG: &str = r#"
id = "train_only"
max_active_runs = 4
[tasks.train]
command = ["true"]
[tasks.report]
depends_on = ["train"]
command = ["true"]
resources = { gpus = 1 }
"#;

struct Setup {
    h: Harness,
    router: Router,
    logs: LogStore,
    _dir: tempfile::TempDir,
}

async fn setup(limits: FollowLimits) -> Setup {
    let h = Harness::sqlite(utc(2026, 1, 1, 0, 0)).await;
    h.add_dag(DAG).await;
    let dir = tempfile::tempdir().unwrap();
    let logs = LogStore::new(dir.path().join("logs")).with_follow_limits(limits);
    let state = AppState {
        store: h.store.clone(),
        control: Arc::new(h.handle.clone()),
        logs: logs.clone(),
        auth: tokens(),
    };
    Setup {
        h,
        router: http::router(state),
        logs,
        _dir: dir,
    }
}

fn get(path: &str) -> axum::http::Request<Body> {
    req(Method::GET, path, Some(VIEWER), None)
}

/// The response with its body unread (a live stream never ends by itself).
async fn open(router: &Router, request: axum::http::Request<Body>) -> Response<Body> {
    router.clone().oneshot(request).await.unwrap()
}

/// Reads the event stream until it contains `needle` (or ends); returns the text so far.
async fn read_until(body: &mut Body, needle: &str) -> String {
    let mut text = String::new();
    let read = async {
        while !text.contains(needle) {
            match body.frame().await {
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        text.push_str(&String::from_utf8_lossy(&data));
                    }
                }
                _ => break,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read)
        .await
        .unwrap_or_else(|_| panic!("no {needle:?} in the stream; got {text:?}"));
    text
}

/// Whether the stream has ended (no more frames).
async fn ended(body: &mut Body) -> bool {
    let next = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match body.frame().await {
                None => return true,
                Some(Err(_)) => return true,
                // Keep-alive comments may still come before the end.
                Some(Ok(_)) => {}
            }
        }
    });
    next.await.unwrap_or(false)
}

fn stream_path(run: RunId, task: &str) -> String {
    format!("/api/v1/runs/{run}/tasks/{task}/logs/stream")
}

#[tokio::test]
async fn logs_of_unknown_runs_tasks_and_attempts_are_404_and_hold_nothing() {
    let s = setup(FollowLimits::default()).await;
    let mut worker = FakeWorker::join(&s.h.handle, registration("box", 4, &[])).await;
    let dag = trainyard_core::ids::DagId::new("train_only");
    let run = s.h.trigger(&dag).await;
    let a = worker.next_assign().await;
    worker.succeed(&a).await;
    s.h.settle().await;

    let unknown_run = RunId::new();
    for path in [
        format!("/api/v1/runs/{unknown_run}/tasks/train/logs"),
        format!("/api/v1/runs/{unknown_run}/tasks/train/logs?attempt=1"),
        stream_path(unknown_run, "train"),
    ] {
        let resp = send(&s.router, get(&path)).await;
        assert_eq!(
            resp.status,
            StatusCode::NOT_FOUND,
            "{path}: {}",
            resp.text()
        );
        assert!(
            resp.json()["error"]["message"]
                .as_str()
                .unwrap()
                .contains(&unknown_run.to_string()),
            "{path}: {}",
            resp.text()
        );
    }
    for path in [
        format!("/api/v1/runs/{run}/tasks/nope/logs"),
        stream_path(run, "nope"),
    ] {
        let resp = send(&s.router, get(&path)).await;
        assert_eq!(resp.status, StatusCode::NOT_FOUND, "{path}");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(message.contains(r#"has no task "nope""#), "{message}");
    }
    // train ran once: attempt 2 does not exist; report has not started.
    let resp = send(
        &s.router,
        get(&format!("/api/v1/runs/{run}/tasks/train/logs?attempt=2")),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(
        resp.text().contains("has only attempt 1"),
        "{}",
        resp.text()
    );
    let resp = send(
        &s.router,
        get(&format!("/api/v1/runs/{run}/tasks/train/logs?attempt=0")),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let report = engine_support::ti(s.h.store.as_ref(), run, "report").await;
    assert_eq!(report.attempt, 0);
    let resp = send(
        &s.router,
        get(&format!("/api/v1/runs/{run}/tasks/report/logs?attempt=1")),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert!(resp.text().contains("not started yet"), "{}", resp.text());
    // Without ?attempt= a task's latest (or upcoming) attempt: empty, 200.
    let resp = send(
        &s.router,
        get(&format!("/api/v1/runs/{run}/tasks/train/logs")),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(resp.headers["x-trainyard-attempt"], "1");
    let resp = send(&s.router, get(&stream_path_bad())).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(
        s.logs.follow_usage(),
        (0, 0),
        "a refused stream held a channel"
    );
}

fn stream_path_bad() -> String {
    "/api/v1/runs/not-a-run/tasks/train/logs/stream".to_owned()
}

#[tokio::test]
async fn a_finished_tasks_stream_replays_its_stored_log_and_ends() {
    let s = setup(FollowLimits::default()).await;
    let mut worker = FakeWorker::join(&s.h.handle, registration("box", 4, &[])).await;
    let dag = trainyard_core::ids::DagId::new("train_only");
    let run = s.h.trigger(&dag).await;
    let a = worker.next_assign().await;
    worker.start(&a).await;
    s.logs
        .append(
            run,
            "train",
            1,
            &[
                (LogStream::Stdout, "epoch 1 loss=0.5".into()),
                (LogStream::Stderr, "warning: slow disk".into()),
            ],
        )
        .await
        .unwrap();
    worker
        .finish(&a, trainyard_scheduler::engine::TaskResult::succeeded())
        .await;
    s.h.settle().await;

    let resp = open(&s.router, get(&stream_path(run, "train"))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let mut body = resp.into_body();
    let text = read_until(&mut body, "event: end").await;
    assert!(text.contains("epoch 1 loss=0.5"), "{text}");
    assert!(text.contains("warning: slow disk"), "{text}");
    assert!(text.contains(r#""state":"success""#), "{text}");
    assert!(
        ended(&mut body).await,
        "the stream of a finished task must end"
    );
    assert_eq!(
        s.logs.follow_usage(),
        (0, 0),
        "a finished task got a channel"
    );
}

#[tokio::test]
async fn live_streams_are_limited_per_client_and_in_total_end_with_the_task_and_free_their_channel()
{
    let limits = FollowLimits {
        total: 3,
        per_client: 2,
        recheck: Duration::from_millis(50),
    };
    let s = setup(limits).await;
    let mut worker = FakeWorker::join(&s.h.handle, registration("box", 4, &[])).await;
    let dag = trainyard_core::ids::DagId::new("train_only");
    let run = s.h.trigger(&dag).await;
    let a = worker.next_assign().await;
    worker.start(&a).await;
    s.h.settle().await;
    let path = stream_path(run, "train");

    let first = open(&s.router, from_addr(get(&path), "10.0.0.1")).await;
    assert_eq!(first.status(), StatusCode::OK);
    let second = open(&s.router, from_addr(get(&path), "10.0.0.1")).await;
    assert_eq!(second.status(), StatusCode::OK);
    let over = open(&s.router, from_addr(get(&path), "10.0.0.1")).await;
    assert_eq!(over.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(over.headers()["retry-after"], "10");
    let over = over.into_body().collect().await.unwrap().to_bytes();
    let over: serde_json::Value = serde_json::from_slice(&over).unwrap();
    assert_eq!(over["error"]["code"], "too_many_requests");
    assert!(
        over["error"]["message"]
            .as_str()
            .unwrap()
            .contains("2 live log streams"),
        "{over}"
    );
    let third = open(&s.router, from_addr(get(&path), "10.0.0.2")).await;
    assert_eq!(third.status(), StatusCode::OK);
    let full = open(&s.router, from_addr(get(&path), "10.0.0.3")).await;
    assert_eq!(full.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(full.headers().contains_key("retry-after"));
    // Three readers of one task share one channel.
    assert_eq!(s.logs.follow_usage(), (1, 3));

    drop(second);
    drop(third);
    assert_eq!(s.logs.follow_usage(), (1, 1));

    let mut body = first.into_body();
    s.logs
        .append(run, "train", 1, &[(LogStream::Stdout, "epoch 7".into())])
        .await
        .unwrap();
    let text = read_until(&mut body, "epoch 7").await;
    assert!(text.contains("event: line"), "{text}");

    worker
        .finish(&a, trainyard_scheduler::engine::TaskResult::succeeded())
        .await;
    s.h.settle().await;
    let text = read_until(&mut body, "event: end").await;
    assert!(text.contains(r#""state":"success""#), "{text}");
    assert!(
        ended(&mut body).await,
        "a live stream must end with its task"
    );
    assert_eq!(s.logs.follow_usage(), (0, 0));

    // A client that hangs up frees its place and the channel at once.
    let mut worker2 = worker;
    let run2 = s.h.trigger(&dag).await;
    let a2 = worker2.next_assign().await;
    worker2.start(&a2).await;
    s.h.settle().await;
    let resp = open(
        &s.router,
        from_addr(get(&stream_path(run2, "train")), "10.0.0.1"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.logs.follow_usage(), (1, 1));
    drop(resp);
    assert_eq!(s.logs.follow_usage(), (0, 0));
}
