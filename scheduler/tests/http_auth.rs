//! Every route from the router's own route table, called without credentials
//! on a configuration that requires tokens: 401, except the probes, login and
//! static assets. A viewer token on a state-changing route: 403.
#![allow(clippy::unwrap_used)]

#[path = "http_support/mod.rs"]
mod support;

use axum::http::{Method, StatusCode};
use support::*;

/// A concrete path for a route pattern (valid-looking ids, so a 401 is not
/// confused with a 400 from a malformed id).
fn concrete(pattern: &str) -> String {
    pattern
        .replace("{dag_id}", "churn_retrain")
        .replace("{run_id}", "0190f3a0-0000-7000-8000-000000000000")
        .replace("{task_id}", "train")
}

fn is_open(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/login" | "/logout") || path.starts_with("/static/")
}

#[tokio::test]
async fn every_route_but_probes_login_and_assets_needs_credentials() {
    let app = app_with_recorder(tokens()).await;
    let table = trainyard_scheduler::http::route_table();
    assert!(table.len() > 25, "route table looks incomplete: {table:?}");
    for (method, pattern) in &table {
        let path = concrete(pattern);
        let resp = send(&app.router, req(method.clone(), &path, None, None)).await;
        if is_open(pattern) {
            assert_ne!(
                resp.status,
                StatusCode::UNAUTHORIZED,
                "{method} {pattern} must stay open"
            );
        } else {
            assert_eq!(
                resp.status,
                StatusCode::UNAUTHORIZED,
                "{method} {pattern} answered without credentials"
            );
        }
        // A wrong token is refused the same way.
        if !is_open(pattern) {
            let resp = send(
                &app.router,
                req(method.clone(), &path, Some("not-a-real-token-at-all"), None),
            )
            .await;
            assert_eq!(
                resp.status,
                StatusCode::UNAUTHORIZED,
                "{method} {pattern} took an invalid token"
            );
        }
    }
    assert!(
        app.recorder.calls.lock().unwrap().is_empty(),
        "a command ran without credentials"
    );
}

#[tokio::test]
async fn viewer_token_cannot_change_state() {
    let app = app_with_recorder(tokens()).await;
    for (method, pattern) in trainyard_scheduler::http::route_table() {
        if method != Method::POST || is_open(pattern) {
            continue;
        }
        let resp = send(
            &app.router,
            req(method.clone(), &concrete(pattern), Some(VIEWER), None),
        )
        .await;
        assert_eq!(
            resp.status,
            StatusCode::FORBIDDEN,
            "viewer may {method} {pattern}"
        );
        assert_eq!(resp.code(), "forbidden");
    }
    assert!(app.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn viewer_token_reads() {
    let app = app_with_recorder(tokens()).await;
    let resp = send(
        &app.router,
        req(Method::GET, "/api/v1/dags", Some(VIEWER), None),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    let resp = send(&app.router, req(Method::GET, "/", Some(VIEWER), None)).await;
    assert_eq!(resp.status, StatusCode::OK);
}

#[tokio::test]
async fn unauthenticated_api_error_is_json_with_www_authenticate() {
    let app = app_with_recorder(tokens()).await;
    let resp = send(&app.router, req(Method::GET, "/api/v1/runs", None, None)).await;
    assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    assert_eq!(resp.code(), "unauthorized");
    assert!(resp.headers.get("www-authenticate").is_some());
}

#[test]
fn open_configuration_is_refused_beyond_loopback() {
    use trainyard_scheduler::http::AuthConfig;
    let open = AuthConfig::open();
    assert!(
        open.check_bind("0.0.0.0:8080".parse().unwrap(), false)
            .is_err()
    );
    assert!(
        open.check_bind("0.0.0.0:8080".parse().unwrap(), true)
            .is_ok()
    );
    assert!(
        open.check_bind("127.0.0.1:8080".parse().unwrap(), false)
            .is_ok()
    );
    assert!(
        tokens()
            .check_bind("0.0.0.0:8080".parse().unwrap(), false)
            .is_ok()
    );
}

#[test]
fn token_flags_parse_and_reject_bad_input() {
    use trainyard_scheduler::http::{ApiToken, parse_token_list};
    let t: ApiToken = "operator:abcdefghijklmnop".parse().unwrap();
    assert_eq!(t.role, trainyard_scheduler::http::Role::Operator);
    assert!("admin:abcdefghijklmnop".parse::<ApiToken>().is_err());
    assert!("viewer:short".parse::<ApiToken>().is_err());
    assert!(
        !format!("{t:?}").contains("abcdefghijklmnop"),
        "Debug must not print the secret"
    );
    assert_eq!(
        parse_token_list("viewer:abcdefghijklmnop, operator:ponmlkjihgfedcba")
            .unwrap()
            .len(),
        2
    );
}
