//! The HTTP API through the router, without a socket, over a real SQLite
//! store and a real engine (ManualClock): every endpoint and its error paths.
#![allow(clippy::unwrap_used)]

#[path = "engine_support/mod.rs"]
mod engine_support;
#[path = "http_support/mod.rs"]
mod support;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use engine_support::{FakeWorker, Harness, registration, utc};
use serde_json::{Value, json};
use support::*;
use trainyard_scheduler::http::{self, AppState};
use trainyard_scheduler::logs::LogStore;

const DAG: &str = r#"
id = "retrain"
description = "Nightly <script>alert('x')</script> retrain"
schedule = "0 3 * * *"
[params]
epochs = 10
lr = 0.5
[tasks.train]
command = ["true"]
resources = { gpus = 1 }
[tasks.evaluate]
depends_on = ["train"]
command = ["true"]
[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= 0.85"
command = ["true"]
"#;

async fn setup() -> (Harness, Router, tempfile::TempDir) {
    setup_on(Harness::sqlite(utc(2026, 1, 1, 0, 0)).await).await
}

/// The router over a harness on either backend, with the retrain DAG.
async fn setup_on(h: Harness) -> (Harness, Router, tempfile::TempDir) {
    h.add_dag(DAG).await;
    let dir = tempfile::tempdir().unwrap();
    let state = AppState {
        store: h.store.clone(),
        control: Arc::new(h.handle.clone()),
        logs: LogStore::new(dir.path().join("logs")),
        auth: tokens(),
    };
    (h, http::router(state), dir)
}

async fn trigger(router: &Router, body: Value, key: Option<&str>) -> Resp {
    let mut r = req(
        Method::POST,
        "/api/v1/dags/retrain/runs",
        Some(OPERATOR),
        Some(body),
    );
    if let Some(k) = key {
        r.headers_mut()
            .insert("idempotency-key", k.parse().unwrap());
    }
    send(router, r).await
}

#[tokio::test]
async fn dag_list_and_detail_show_schedule_next_run_graph() {
    let (_h, router, _d) = setup().await;
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/dags", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let dags = resp.json();
    let d = &dags["dags"][0];
    assert_eq!(d["id"], "retrain");
    assert_eq!(d["schedule"], "0 3 * * *");
    assert_eq!(d["paused"], false);
    assert!(d["next_run"].is_string(), "{d}");
    assert!(d["parse_error"].is_null());

    let resp = send(
        &router,
        req(Method::GET, "/api/v1/dags/retrain", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let detail = resp.json();
    assert_eq!(detail["spec"]["id"], "retrain");
    assert_eq!(detail["graph"]["nodes"].as_array().unwrap().len(), 3);
    let edges = detail["graph"]["edges"].as_array().unwrap();
    assert!(edges.contains(&json!({"from": "train", "to": "evaluate"})));
}

#[tokio::test]
async fn unknown_dag_is_404_and_bad_run_id_is_400() {
    let (_h, router, _d) = setup().await;
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/dags/nope", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.code(), "not_found");
    let resp = trigger_to(&router, "/api/v1/dags/nope/runs").await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/runs/not-a-run-id", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    assert_eq!(resp.code(), "bad_request");
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/no-such-route", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    assert_eq!(resp.code(), "not_found");
}

async fn trigger_to(router: &Router, path: &str) -> Resp {
    send(
        router,
        req(Method::POST, path, Some(OPERATOR), Some(json!({}))),
    )
    .await
}

#[tokio::test]
async fn trigger_validates_params() {
    let (_h, router, _d) = setup().await;
    let resp = trigger(&router, json!({"params": {"epochs": 20}}), None).await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let resp = trigger(&router, json!({"params": {"epochs": "many"}}), None).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert_eq!(resp.code(), "bad_request");
    let resp = trigger(&router, json!({"params": {"nope": 1}}), None).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    // Malformed JSON is a JSON error too.
    let r = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/dags/retrain/runs")
        .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{not json"))
        .unwrap();
    let resp = send(&router, r).await;
    assert!(resp.status.is_client_error());
    assert_eq!(resp.code(), "bad_request");
}

const INPUTS_DAG: &str = r#"
id = "inputs"
[params]
note = "none"
[tasks.a]
command = ["echo", "{{ params.note }}"]
"#;

async fn post_run(router: &Router, body: Value) -> Resp {
    send(
        router,
        req(
            Method::POST,
            "/api/v1/dags/inputs/runs",
            Some(OPERATOR),
            Some(body),
        ),
    )
    .await
}

/// What a run is created with is checked before the store sees it: a params
/// size cap, no NUL in strings, logical dates in years 1–9999; each is a 400
/// saying what to do, and no run is created.
async fn run_inputs_are_checked_before_the_store(h: Harness) {
    h.add_dag(INPUTS_DAG).await;
    let dir = tempfile::tempdir().unwrap();
    let router = http::router(AppState {
        store: h.store.clone(),
        control: Arc::new(h.handle.clone()),
        logs: LogStore::new(dir.path().join("logs")),
        auth: tokens(),
    });

    // 900 KB: under the body limit, over the params cap (E2BIG in every task before).
    let big = "x".repeat(900 * 1024);
    let resp = post_run(&router, json!({"params": {"note": big}})).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert_eq!(resp.code(), "bad_request");
    let text = resp.text();
    assert!(
        text.contains("921611 bytes")
            && text.contains("64KiB (65536 bytes)")
            && text.contains("pass their path or URL as a param"),
        "{text}"
    );

    // A NUL in a string param (PostgreSQL's jsonb refuses it: 500 before).
    let resp = post_run(&router, json!({"params": {"note": "a\u{0}b"}})).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert!(resp.text().contains("NUL"), "{}", resp.text());

    // Logical dates outside years 1..=9999.
    let resp = post_run(&router, json!({"logical_date": "0000-06-01T00:00:00Z"})).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert!(resp.text().contains("years 1 to 9999"), "{}", resp.text());
    let resp = post_run(&router, json!({"logical_date": "+10000-01-01T00:00:00Z"})).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    let backfill = send(
        &router,
        req(
            Method::POST,
            "/api/v1/dags/inputs/backfill",
            Some(OPERATOR),
            Some(json!({"from": "0000-01-01T00:00:00Z", "to": "0001-01-02T00:00:00Z"})),
        ),
    )
    .await;
    assert_eq!(
        backfill.status,
        StatusCode::BAD_REQUEST,
        "{}",
        backfill.text()
    );
    assert!(
        backfill.text().contains("years 1 to 9999"),
        "{}",
        backfill.text()
    );

    let inputs: trainyard_core::ids::DagId = "inputs".parse().unwrap();
    assert!(h.runs_of(&inputs).await.is_empty());

    // The edges are fine.
    let resp = post_run(
        &router,
        json!({"params": {"note": "x".repeat(60 * 1024)}, "logical_date": "9999-12-31T23:59:59Z"}),
    )
    .await;
    assert_eq!(resp.status, StatusCode::CREATED, "{}", resp.text());
    let run = resp.json()["run_id"].as_str().unwrap().to_owned();
    let detail = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{run}"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text());
}

#[tokio::test]
async fn run_inputs_are_checked_before_the_store_on_sqlite() {
    run_inputs_are_checked_before_the_store(Harness::sqlite(utc(2026, 1, 1, 0, 0)).await).await;
}

#[tokio::test]
async fn run_inputs_are_checked_before_the_store_on_postgres() {
    run_inputs_are_checked_before_the_store(Harness::postgres(utc(2026, 1, 1, 0, 0)).await).await;
}

#[tokio::test]
async fn oversized_body_is_413_json() {
    let (_h, router, _d) = setup().await;
    let big = "x".repeat(http::MAX_BODY_BYTES + 10);
    let resp = trigger(&router, json!({"params": {"name": big}}), None).await;
    assert_eq!(resp.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.code(), "payload_too_large");
}

#[tokio::test]
async fn idempotency_key_returns_the_existing_run() {
    let (h, router, _d) = setup().await;
    let a = trigger(&router, json!({}), Some("nightly-2026-01-01")).await;
    let b = trigger(&router, json!({}), Some("nightly-2026-01-01")).await;
    assert!(
        a.status.is_success() && b.status.is_success(),
        "{} {}",
        a.text(),
        b.text()
    );
    assert_eq!(a.json()["run_id"], b.json()["run_id"]);
    let c = trigger(&router, json!({}), Some("another")).await;
    assert_ne!(a.json()["run_id"], c.json()["run_id"]);
    assert_eq!(h.runs_of(&"retrain".parse().unwrap()).await.len(), 2);
}

#[tokio::test]
async fn missing_invalid_and_viewer_tokens() {
    let (_h, router, _d) = setup().await;
    let r = req(
        Method::POST,
        "/api/v1/dags/retrain/runs",
        None,
        Some(json!({})),
    );
    assert_eq!(send(&router, r).await.status, StatusCode::UNAUTHORIZED);
    let r = req(
        Method::POST,
        "/api/v1/dags/retrain/runs",
        Some("wrong-token-xxxxxxxx"),
        Some(json!({})),
    );
    assert_eq!(send(&router, r).await.status, StatusCode::UNAUTHORIZED);
    let r = req(
        Method::POST,
        "/api/v1/dags/retrain/runs",
        Some(VIEWER),
        Some(json!({})),
    );
    let resp = send(&router, r).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.code(), "forbidden");
}

#[tokio::test]
async fn runs_list_filters_paginates_and_run_detail_has_attempts() {
    let (h, router, _d) = setup().await;
    let mut worker = FakeWorker::join(&h.handle, registration("gpu-box", 4, &[("A100", 80)])).await;
    let first = trigger(&router, json!({}), None).await.json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = worker.next_assign().await;
    worker.start(&a).await;
    h.settle().await;

    // The worker page shows which attempt holds the GPU and its heartbeat figures.
    h.handle
        .heartbeat(
            worker.id,
            vec![trainyard_scheduler::engine::GpuUsage {
                index: 0,
                utilization_percent: 87.0,
                memory_used_bytes: 40_000_000_000,
                healthy: true,
            }],
        )
        .await
        .unwrap();
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/workers", Some(VIEWER), None),
    )
    .await;
    let workers = resp.json();
    let gpu = &workers["workers"][0]["gpus"][0];
    assert_eq!(gpu["model"], "A100");
    assert_eq!(gpu["held_by"]["task_id"], "train");
    assert_eq!(gpu["held_by"]["run_id"], first.as_str());
    assert_eq!(gpu["utilization_percent"], 87.0);

    let resp = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{first}"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    let detail = resp.json();
    let train = detail["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["task_id"] == "train")
        .unwrap();
    assert_eq!(train["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(train["worker"], "gpu-box");

    // Logs of a task that printed nothing yet: empty, not an error.
    let resp = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs/{first}/tasks/train/logs"),
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);

    // Cancel the run; a second run then pages.
    let resp = send(
        &router,
        req(
            Method::POST,
            &format!("/api/v1/runs/{first}/cancel"),
            Some(OPERATOR),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let _ = trigger(&router, json!({}), None).await;
    let page = send(
        &router,
        req(
            Method::GET,
            "/api/v1/runs?dag_id=retrain&limit=1",
            Some(VIEWER),
            None,
        ),
    )
    .await
    .json();
    assert_eq!(page["runs"].as_array().unwrap().len(), 1);
    let cursor = page["next_cursor"].as_str().unwrap();
    let next = send(
        &router,
        req(
            Method::GET,
            &format!("/api/v1/runs?dag_id=retrain&limit=1&before={cursor}"),
            Some(VIEWER),
            None,
        ),
    )
    .await
    .json();
    assert_eq!(next["runs"][0]["id"], first.as_str());
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/runs?state=bogus", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/runs/not-a-uuid", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn pause_resume_backfill_and_clear() {
    let (_h, router, _d) = setup().await;
    let resp = send(
        &router,
        req(
            Method::POST,
            "/api/v1/dags/retrain/pause",
            Some(OPERATOR),
            None,
        ),
    )
    .await;
    assert_eq!(resp.json()["paused"], true);
    let list = send(
        &router,
        req(Method::GET, "/api/v1/dags", Some(VIEWER), None),
    )
    .await
    .json();
    assert_eq!(list["dags"][0]["paused"], true);
    assert!(list["dags"][0]["next_run"].is_null());
    let resp = send(
        &router,
        req(
            Method::POST,
            "/api/v1/dags/retrain/resume",
            Some(OPERATOR),
            None,
        ),
    )
    .await;
    assert_eq!(resp.json()["paused"], false);
    let resp = send(
        &router,
        req(
            Method::POST,
            "/api/v1/dags/retrain/backfill",
            Some(OPERATOR),
            Some(json!({"from": "2026-01-05T00:00:00Z", "to": "2026-01-01T00:00:00Z"})),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST);
    let resp = send(
        &router,
        req(
            Method::POST,
            "/api/v1/runs/0190f3a0-0000-7000-8000-000000000000/tasks/train/clear",
            Some(OPERATOR),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn openapi_document_lists_every_api_route() {
    let (_h, router, _d) = setup().await;
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/openapi.json", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let doc = resp.json();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for (method, path) in http::route_table() {
        if !path.starts_with("/api/") {
            continue;
        }
        let m = method.as_str().to_lowercase();
        assert!(
            doc["paths"][path][&m].is_object(),
            "OpenAPI lacks {method} {path}"
        );
    }
    // What the layers around the handlers answer is documented on every
    // operation it applies to (scripts/schemathesis fails otherwise).
    for (path, item) in doc["paths"].as_object().unwrap() {
        if matches!(path.as_str(), "/healthz" | "/readyz") {
            continue;
        }
        for (method, op) in item.as_object().unwrap() {
            let codes = &op["responses"];
            for code in ["401", "421"] {
                assert!(codes[code].is_object(), "{method} {path} lacks {code}");
            }
            if method == "post" {
                for code in ["403", "409", "503"] {
                    assert!(codes[code].is_object(), "{method} {path} lacks {code}");
                }
            }
        }
    }
    let trigger = &doc["paths"]["/api/v1/dags/{dag_id}/runs"]["post"]["responses"];
    for code in ["400", "413", "415", "422"] {
        assert!(trigger[code].is_object(), "trigger lacks {code}");
    }
    let stream = &doc["paths"]["/api/v1/runs/{run_id}/tasks/{task_id}/logs/stream"]["get"];
    assert!(stream["responses"]["429"].is_object());
    // CI validates the document with openapi-spec-validator.
    if let Ok(out) = std::env::var("TRAINYARD_OPENAPI_OUT") {
        std::fs::write(out, serde_json::to_string_pretty(&doc).unwrap()).unwrap();
    }
}

#[tokio::test]
async fn ui_pages_render_and_escape_author_text() {
    let (_h, router, _d) = setup().await;
    for path in [
        "/",
        "/dags/retrain",
        "/dags/retrain/grid",
        "/dags/retrain/trigger",
        "/runs",
        "/workers",
        "/login",
    ] {
        let resp = send(&router, req(Method::GET, path, Some(VIEWER), None)).await;
        assert_eq!(resp.status, StatusCode::OK, "{path}: {}", resp.text());
        let html = resp.text();
        assert!(
            !html.contains("<script>alert"),
            "{path} did not escape the description"
        );
    }
    let html = send(&router, req(Method::GET, "/", Some(VIEWER), None))
        .await
        .text();
    assert!(html.contains("&lt;script&gt;alert"));
}

#[tokio::test]
async fn ui_form_posts_need_csrf_token_and_same_origin() {
    let (_h, router, _d) = setup().await;
    // Open configuration (loopback standalone): forms still need the token.
    let state_router = router;
    let form = |origin: Option<&str>, cookie: Option<&str>, body: &str| {
        let mut b = Request::builder()
            .method(Method::POST)
            .uri("/dags/retrain/pause")
            .header(header::HOST, "scheduler:8080")
            .header(header::AUTHORIZATION, format!("Bearer {OPERATOR}"))
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(o) = origin {
            b = b.header(header::ORIGIN, o);
        }
        if let Some(c) = cookie {
            b = b.header(header::COOKIE, c);
        }
        b.body(Body::from(body.to_owned())).unwrap()
    };
    let token = "a".repeat(64);
    let resp = send(&state_router, form(None, None, "csrf=")).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    let resp = send(
        &state_router,
        form(None, Some(&format!("ty_csrf={token}")), "csrf=wrong"),
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    let resp = send(
        &state_router,
        form(
            Some("http://scheduler:8080"),
            Some(&format!("ty_csrf={token}")),
            &format!("csrf={token}"),
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.text());
}

#[tokio::test]
async fn cross_site_post_without_bearer_is_refused_even_when_open() {
    let app = app_with_recorder(trainyard_scheduler::http::AuthConfig::open()).await;
    let r = Request::builder()
        .method(Method::POST)
        .uri("/api/v1/dags/retrain/pause")
        .header(header::HOST, "127.0.0.1:8080")
        .header(header::ORIGIN, "https://evil.example")
        .body(Body::empty())
        .unwrap();
    let resp = send(&app.router, r).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.code(), "cross_site_request");
    assert!(app.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn login_sets_strict_httponly_session_cookie() {
    let app = app_with_recorder(tokens()).await;
    let r = Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header(header::HOST, "scheduler:8080")
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(Body::from(format!("token={VIEWER}&next=/workers")))
        .unwrap();
    let resp = send(&app.router, r).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER);
    let cookie = resp
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let session = cookie.split(';').next().unwrap();
    let r = Request::builder()
        .uri("/workers")
        .header(header::COOKIE, session)
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(&app.router, r).await.status, StatusCode::OK);
}

#[tokio::test]
async fn a_runs_timeline_lists_every_transition_in_order_and_pages() {
    let (h, router, _d) = setup().await;
    let mut worker = FakeWorker::join(&h.handle, registration("gpu-box", 4, &[("A100", 80)])).await;
    let run = trigger(&router, json!({}), None).await.json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let a = worker.next_assign().await;
    worker.succeed(&a).await;
    h.settle().await;
    let get = |path: String| {
        let router = router.clone();
        async move { send(&router, req(Method::GET, &path, Some(VIEWER), None)).await }
    };
    let all = get(format!("/api/v1/runs/{run}/events")).await.json();
    let events = all["events"].as_array().unwrap();
    let steps: Vec<(String, String)> = events
        .iter()
        .filter(|e| e["task_id"] == "train")
        .map(|e| {
            (
                e["from_state"].as_str().unwrap_or("").to_owned(),
                e["to_state"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let pair = |a: &str, b: &str| (a.to_owned(), b.to_owned());
    assert_eq!(
        steps,
        vec![
            pair("pending", "ready"),
            pair("ready", "assigned"),
            pair("assigned", "running"),
            pair("running", "success"),
        ],
        "{all}"
    );
    let ids: Vec<i64> = events.iter().map(|e| e["id"].as_i64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "oldest first: {ids:?}");
    assert!(all["next_after"].is_null());

    // Two per page, following next_after, gives the same list.
    let mut paged = Vec::new();
    let mut after: Option<i64> = None;
    loop {
        let q = after.map(|a| format!("&after={a}")).unwrap_or_default();
        let page = get(format!("/api/v1/runs/{run}/events?limit=2{q}"))
            .await
            .json();
        let batch = page["events"].as_array().unwrap();
        assert!(batch.len() <= 2);
        paged.extend(batch.iter().map(|e| e["id"].as_i64().unwrap()));
        match page["next_after"].as_i64() {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(paged, ids);

    let missing = get(format!(
        "/api/v1/runs/{}/events",
        trainyard_core::ids::RunId::new()
    ))
    .await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    let bad = get("/api/v1/runs/nope/events".to_owned()).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
}

// ---- Cancelling what has finished: 409 naming the state, on both backends

async fn post(router: &Router, path: &str) -> Resp {
    send(router, req(Method::POST, path, Some(OPERATOR), None)).await
}

async fn cancelling_a_finished_run_or_task_is_409_with_the_state(h: Harness) {
    let (h, router, _d) = setup_on(h).await;
    let mut worker = FakeWorker::join(&h.handle, registration("gpu-box", 4, &[("A100", 80)])).await;
    let run = trigger(&router, json!({}), None).await.json()["run_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let run_id: trainyard_core::ids::RunId = run.parse().unwrap();

    // train finished, evaluate still to run: cancelling train is a 409.
    let a = worker.next_assign().await;
    worker.succeed(&a).await;
    h.settle().await;
    let resp = post(&router, &format!("/api/v1/runs/{run}/tasks/train/cancel")).await;
    assert_eq!(resp.status, StatusCode::CONFLICT, "{}", resp.text());
    assert_eq!(resp.code(), "failed_precondition");
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(
        message.contains("`train`") && message.contains("already success"),
        "{message}"
    );

    worker.run_all(h.store.as_ref(), run_id).await;
    h.settle().await;
    let state = h.store.get_run(run_id).await.unwrap().state.to_string();
    assert_eq!(state, "success");

    // A clear that fails leaves nothing behind that a cancel could trip on.
    let resp = post(&router, &format!("/api/v1/runs/{run}/tasks/nope/clear")).await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
    for path in [
        format!("/api/v1/runs/{run}/cancel"),
        format!("/api/v1/runs/{run}/tasks/train/cancel"),
        format!("/api/v1/runs/{run}/cancel"),
    ] {
        let resp = post(&router, &path).await;
        assert_eq!(resp.status, StatusCode::CONFLICT, "{path}: {}", resp.text());
        assert_eq!(resp.code(), "failed_precondition");
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(&format!("run {run} is already success")),
            "{path}: {message}"
        );
    }
    // Nothing moved, and the engine still commits: /readyz stays 200.
    assert_eq!(
        h.store.get_run(run_id).await.unwrap().state.to_string(),
        "success"
    );
    let ready = send(&router, req(Method::GET, "/readyz", None, None)).await;
    assert_eq!(ready.status, StatusCode::OK, "{}", ready.text());
    // An unknown run is still a 404.
    let resp = post(
        &router,
        &format!("/api/v1/runs/{}/cancel", trainyard_core::ids::RunId::new()),
    )
    .await;
    assert_eq!(resp.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn cancelling_a_finished_run_or_task_is_409_with_the_state_on_sqlite() {
    cancelling_a_finished_run_or_task_is_409_with_the_state(
        Harness::sqlite(utc(2026, 1, 1, 0, 0)).await,
    )
    .await;
}

#[tokio::test]
async fn cancelling_a_finished_run_or_task_is_409_with_the_state_on_postgres() {
    cancelling_a_finished_run_or_task_is_409_with_the_state(
        Harness::postgres(utc(2026, 1, 1, 0, 0)).await,
    )
    .await;
}

// ---- Ids no DAG file can have never reach the store (PostgreSQL refuses NUL)

async fn ids_no_dag_file_can_have_are_400(h: Harness) {
    let (_h, router, _d) = setup_on(h).await;
    for path in [
        "/api/v1/dags/a%00b",
        "/api/v1/runs?dag_id=a%00b",
        "/api/v1/dags/a%20b/metrics?task=train&name=auc",
        "/api/v1/dags/retrain/metrics?task=tr%00ain&name=auc",
        "/api/v1/dags/retrain/metrics?task=train&name=a%00uc",
        "/dags/a%00b",
        "/runs?dag_id=a%00b",
    ] {
        let resp = send(&router, req(Method::GET, path, Some(VIEWER), None)).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            resp.text()
        );
    }
    for path in ["/api/v1/dags/a%00b/runs", "/api/v1/dags/a%00b/pause"] {
        let resp = send(&router, req(Method::POST, path, Some(OPERATOR), None)).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            resp.text()
        );
        assert!(resp.text().contains("[A-Za-z0-9_-]+"), "{}", resp.text());
    }
    // A well-formed metric query still answers.
    let resp = send(
        &router,
        req(
            Method::GET,
            "/api/v1/dags/retrain/metrics?task=evaluate&name=auc",
            Some(VIEWER),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
}

#[tokio::test]
async fn ids_no_dag_file_can_have_are_400_on_sqlite() {
    ids_no_dag_file_can_have_are_400(Harness::sqlite(utc(2026, 1, 1, 0, 0)).await).await;
}

#[tokio::test]
async fn ids_no_dag_file_can_have_are_400_on_postgres() {
    ids_no_dag_file_can_have_are_400(Harness::postgres(utc(2026, 1, 1, 0, 0)).await).await;
}

#[tokio::test]
async fn a_catch_up_beyond_the_limit_records_skipped_slots_with_their_range_in_the_api() {
    let clock = trainyard_scheduler::clock::ManualClock::new(utc(2026, 5, 1, 0, 30));
    let h = Harness::start(engine_support::TestDb::sqlite().await, clock, |o| {
        o.catchup_limit = 5
    })
    .await;
    let (h, router, _d) = setup_on(h).await;
    let id = h
        .add_dag(
            "id = \"hourly\"\nschedule = \"0 * * * *\"\ncatchup = true\nmax_active_runs = 100\n[tasks.a]\ncommand = [\"true\"]\n",
        )
        .await;
    h.advance(chrono::Duration::hours(1)).await; // the 01:00 slot runs
    h.handle.pause(id.clone()).await.unwrap();
    for _ in 0..20 {
        h.advance(chrono::Duration::hours(1)).await;
    }
    h.handle.resume(id.clone()).await.unwrap();
    h.settle().await;

    // 02:00 … 21:00 were missed: the latest 5 run, the 15 before are recorded.
    let mut dates: Vec<_> = h
        .runs_of(&id)
        .await
        .into_iter()
        .filter_map(|r| r.logical_date)
        .collect();
    dates.sort();
    assert_eq!(dates.len(), 6, "{dates:?}");
    assert_eq!(dates[1], utc(2026, 5, 1, 17, 0));

    let detail = send(
        &router,
        req(Method::GET, "/api/v1/dags/hourly", Some(VIEWER), None),
    )
    .await;
    assert_eq!(detail.status, StatusCode::OK, "{}", detail.text());
    let body = detail.json();
    assert_eq!(body["dag"]["skipped_slots"], 15, "{body}");
    let skipped = &body["skipped"][0];
    assert_eq!(skipped["slots"], 15);
    assert_eq!(skipped["first_logical_date"], "2026-05-01T02:00:00Z");
    assert_eq!(skipped["last_logical_date"], "2026-05-01T16:00:00Z");
    assert!(
        skipped["reason"]
            .as_str()
            .unwrap()
            .contains("catch-up limit of 5"),
        "{skipped}"
    );
    let list = send(
        &router,
        req(Method::GET, "/api/v1/dags", Some(VIEWER), None),
    )
    .await;
    let hourly = list.json()["dags"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["id"] == "hourly")
        .cloned()
        .unwrap();
    assert_eq!(hourly["skipped_slots"], 15);
    assert_eq!(
        list.json()["dags"]
            .as_array()
            .unwrap()
            .iter()
            .find(|d| d["id"] == "retrain")
            .unwrap()["skipped_slots"],
        0
    );
}

/// A body that is not JSON, a body of the wrong shape and a query parameter
/// that does not parse all answer in the API's JSON error shape, with the
/// status that says which (400 for syntax and queries, 422 for shape).
#[tokio::test]
async fn malformed_bodies_and_bad_query_params_answer_the_json_error_shape() {
    let (_h, router, _d) = setup().await;
    let mut r = req(
        Method::POST,
        "/api/v1/dags/retrain/runs",
        Some(OPERATOR),
        None,
    );
    r.headers_mut()
        .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
    *r.body_mut() = Body::from("{\"params\": {\"epochs\": 3,");
    let resp = send(&router, r).await;
    assert_eq!(resp.status, StatusCode::BAD_REQUEST, "{}", resp.text());
    assert_eq!(resp.code(), "bad_request");
    let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
    assert!(!message.is_empty(), "{}", resp.text());

    let resp = trigger(&router, json!({"params": "not an object"}), None).await;
    assert_eq!(
        resp.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "{}",
        resp.text()
    );
    assert_eq!(resp.code(), "unprocessable");

    for path in [
        "/api/v1/runs?limit=many",
        "/api/v1/runs?no_such_filter=1",
        "/api/v1/runs?state=sleeping",
    ] {
        let resp = send(&router, req(Method::GET, path, Some(VIEWER), None)).await;
        assert_eq!(
            resp.status,
            StatusCode::BAD_REQUEST,
            "{path}: {}",
            resp.text()
        );
        assert_eq!(resp.code(), "bad_request", "{path}");
        assert!(
            resp.headers[header::CONTENT_TYPE]
                .to_str()
                .unwrap()
                .starts_with("application/json"),
            "{path}"
        );
    }
}

const SECRET_DAG: &str = r#"
id = "with_secret"
[tasks.push]
command = ["true"]
env = { PLAIN = "visible-value", TOKEN = { value = "hunter2-very-secret", secret = true }, FROM = { from_env = "HF_TOKEN", secret = true } }
"#;

/// The DAG detail's spec never carries a secret env value written in the
/// DAG file: it shows `***`, while plain values and `from_env` names stay.
#[tokio::test]
async fn dag_detail_masks_secret_env_values() {
    let (h, router, _d) = setup().await;
    h.add_dag(SECRET_DAG).await;
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/dags/with_secret", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    assert!(
        !resp.text().contains("hunter2-very-secret"),
        "secret in {}",
        resp.text()
    );
    let env = &resp.json()["spec"]["tasks"]["push"]["env"];
    assert_eq!(env["TOKEN"]["source"]["value"], "***", "{env}");
    assert_eq!(env["TOKEN"]["secret"], true);
    assert_eq!(env["PLAIN"]["source"]["value"], "visible-value", "{env}");
    assert_eq!(env["FROM"]["source"]["from_env"], "HF_TOKEN", "{env}");
    // The list does not carry specs at all.
    let resp = send(
        &router,
        req(Method::GET, "/api/v1/dags", Some(VIEWER), None),
    )
    .await;
    assert!(!resp.text().contains("hunter2-very-secret"));
}
