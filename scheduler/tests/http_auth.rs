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
    matches!(
        path,
        "/healthz" | "/readyz" | "/login" | "/logout" | "/favicon.ico"
    ) || path.starts_with("/static/")
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

// ---- DNS rebinding: open mode answers loopback hosts (and --allowed-host) only

fn get_with_host(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

#[tokio::test]
async fn open_mode_refuses_a_rebinding_host_and_serves_loopback_hosts() {
    let app = app_with_recorder(trainyard_scheduler::http::AuthConfig::open()).await;
    let addr = serve(app.state.clone()).await;
    let port = addr.port();

    let (status, body) = raw_request(addr, &get_with_host("evil.example", "/api/v1/dags")).await;
    assert_eq!(status, 421, "{body}");
    assert!(
        body.contains("evil.example"),
        "names the refused host: {body}"
    );
    assert!(
        body.contains("--allowed-host evil.example"),
        "says which flag allows it: {body}"
    );
    // A UI page is refused the same way (plain text for a person).
    let (status, body) = raw_request(
        addr,
        &get_with_host(&format!("rebind.evil.example:{port}"), "/"),
    )
    .await;
    assert_eq!(status, 421, "{body}");

    for host in [
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
        "localhost".to_owned(),
    ] {
        let (status, body) = raw_request(addr, &get_with_host(&host, "/api/v1/dags")).await;
        assert_eq!(status, 200, "Host {host}: {body}");
    }
    // HTTP/1.0 without Host: no browser sends that, so no rebinding page can.
    let (status, _) = raw_request(addr, "GET /api/v1/dags HTTP/1.0\r\n\r\n").await;
    assert_eq!(status, 200);
    // Probes answer whatever the host (load balancers send their own).
    let (status, _) = raw_request(addr, &get_with_host("10.0.0.5:8080", "/healthz")).await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_rebinding_post_with_a_matching_origin_is_refused_and_runs_nothing() {
    let app = app_with_recorder(trainyard_scheduler::http::AuthConfig::open()).await;
    let r = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/api/v1/dags/retrain/runs")
        .header("host", "rebind.evil.example:8080")
        .header("origin", "http://rebind.evil.example:8080")
        .header("sec-fetch-site", "same-origin")
        .body(axum::body::Body::empty())
        .unwrap();
    let resp = send(&app.router, r).await;
    assert_eq!(resp.status, StatusCode::MISDIRECTED_REQUEST);
    assert_eq!(resp.code(), "misdirected_request");
    assert!(app.recorder.calls.lock().unwrap().is_empty());
}

#[tokio::test]
async fn allowed_hosts_are_served_in_open_mode() {
    use trainyard_scheduler::http::{AuthConfig, parse_allowed_hosts};
    let hosts = parse_allowed_hosts("trainyard.internal,gpu-box:9000").unwrap();
    let app = app_with_recorder(AuthConfig::open().with_allowed_hosts(hosts)).await;
    let get = |host: &'static str| {
        axum::http::Request::builder()
            .uri("/api/v1/dags")
            .header("host", host)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    for (host, status) in [
        ("trainyard.internal", StatusCode::OK),
        ("TrainYard.Internal:8080", StatusCode::OK),
        ("gpu-box:9000", StatusCode::OK),
        ("gpu-box:8080", StatusCode::MISDIRECTED_REQUEST),
        ("evil.example", StatusCode::MISDIRECTED_REQUEST),
    ] {
        assert_eq!(send(&app.router, get(host)).await.status, status, "{host}");
    }
}

#[tokio::test]
async fn with_tokens_the_host_is_not_checked() {
    let app = app_with_recorder(tokens()).await;
    let r = axum::http::Request::builder()
        .uri("/api/v1/dags")
        .header("host", "trainyard.example.com")
        .header("authorization", format!("Bearer {VIEWER}"))
        .body(axum::body::Body::empty())
        .unwrap();
    assert_eq!(send(&app.router, r).await.status, StatusCode::OK);
}

// ---- Tokens mode: a session-cookie POST to the API must name its origin

async fn session_cookie(app: &App, token: &str) -> String {
    let r = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header("host", "scheduler:8080")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(format!("token={token}&next=/")))
        .unwrap();
    let resp = send(&app.router, r).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER, "{}", resp.text());
    let cookie = resp.headers["set-cookie"].to_str().unwrap();
    cookie.split(';').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_cookie_api_post_without_origin_is_refused_with_tokens() {
    let app = app_with_recorder(tokens()).await;
    let session = session_cookie(&app, OPERATOR).await;
    let post = |extra: Option<(&'static str, &'static str)>| {
        let mut b = axum::http::Request::builder()
            .method(Method::POST)
            .uri("/api/v1/dags/retrain/pause")
            .header("host", "scheduler:8080")
            .header("cookie", session.clone());
        if let Some((k, v)) = extra {
            b = b.header(k, v);
        }
        b.body(axum::body::Body::empty()).unwrap()
    };
    let resp = send(&app.router, post(None)).await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);
    assert_eq!(resp.code(), "cross_site_request");
    assert!(resp.text().contains("Origin"), "{}", resp.text());
    assert!(app.recorder.calls.lock().unwrap().is_empty());
    // A foreign Referer does not stand in for Origin.
    let resp = send(
        &app.router,
        post(Some(("referer", "http://evil.example/page"))),
    )
    .await;
    assert_eq!(resp.status, StatusCode::FORBIDDEN);

    let resp = send(&app.router, post(Some(("origin", "http://scheduler:8080")))).await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    let resp = send(
        &app.router,
        post(Some(("referer", "http://scheduler:8080/dags/retrain"))),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK, "{}", resp.text());
    // Bearer callers (scripts, the CLI) need no Origin.
    let resp = send(
        &app.router,
        req(
            Method::POST,
            "/api/v1/dags/retrain/pause",
            Some(OPERATOR),
            None,
        ),
    )
    .await;
    assert_eq!(resp.status, StatusCode::OK);
    assert_eq!(app.recorder.calls.lock().unwrap().len(), 3);
}

// ---- /login: failed attempts limited per client address; `next` stays on site

fn login_from(ip: &str, token: &str, next: &str) -> axum::http::Request<axum::body::Body> {
    let body = format!("token={token}&next={}", urlencode(next));
    let r = axum::http::Request::builder()
        .method(Method::POST)
        .uri("/login")
        .header("host", "scheduler:8080")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(axum::body::Body::from(body))
        .unwrap();
    from_addr(r, ip)
}

/// Form encoding of every byte but unreserved ones.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn failed_logins_are_limited_per_client_address_with_retry_after() {
    use trainyard_scheduler::clock::ManualClock;
    use trainyard_scheduler::http::LoginLimit;
    let clock = ManualClock::new(chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap());
    let limit = LoginLimit {
        burst: 3,
        per_minute: 6,
        ..LoginLimit::default()
    };
    let auth = tokens().with_login_limit(limit, std::sync::Arc::new(clock.clone()));
    let app = app_with_recorder(auth).await;
    for _ in 0..3 {
        let resp = send(
            &app.router,
            login_from("10.0.0.1", "wrong-token-0123456789", "/"),
        )
        .await;
        assert_eq!(resp.status, StatusCode::UNAUTHORIZED);
    }
    // Spent: even the right token is refused (a limit that answered would
    // still confirm the guess), with how long to wait.
    let resp = send(&app.router, login_from("10.0.0.1", VIEWER, "/")).await;
    assert_eq!(resp.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers["retry-after"], "10");
    assert!(
        resp.text().contains("Too many failed logins"),
        "{}",
        resp.text()
    );
    assert!(resp.headers.get("set-cookie").is_none());
    // Another address is not affected.
    let resp = send(&app.router, login_from("10.0.0.2", VIEWER, "/")).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER);
    // Ten seconds later one attempt is forgiven.
    clock.advance(chrono::Duration::seconds(10));
    let resp = send(&app.router, login_from("10.0.0.1", VIEWER, "/")).await;
    assert_eq!(resp.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn login_next_never_leaves_the_site() {
    let app = app_with_recorder(tokens()).await;
    for evil in [
        "//evil.example/",
        "/\\evil.example/",
        "\\\\evil.example/",
        "/%5Cevil.example/",
        "/%5cevil.example/",
        "/%2F/evil.example/",
        "/%252F/evil.example/",
        "/\t/evil.example/",
        "/\n/evil.example/",
        "/\r\n/evil.example/",
        " //evil.example/",
        "https://evil.example/",
        "http:evil.example",
        "evil.example",
        "javascript:alert(1)",
        "/login",
    ] {
        let resp = send(&app.router, login_from("10.9.0.1", VIEWER, evil)).await;
        assert_eq!(resp.status, StatusCode::SEE_OTHER, "{evil:?}");
        assert_eq!(resp.headers["location"], "/", "next {evil:?} was followed");
    }
    for good in [
        "/runs?dag_id=retrain",
        "/dags/retrain/grid",
        "/runs/0190f3a0-0000-7000-8000-000000000000#log",
    ] {
        let resp = send(&app.router, login_from("10.9.0.1", VIEWER, good)).await;
        assert_eq!(resp.headers["location"], good);
    }
}
