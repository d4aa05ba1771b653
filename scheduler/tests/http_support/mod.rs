//! Shared by the http_* tests: a router over a real SQLite store with a
//! recording RunControl double, and request helpers for `oneshot`.
#![allow(dead_code, clippy::unwrap_used)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode, header};
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;
use trainyard_core::ids::{DagId, RunId};
use trainyard_scheduler::http::{
    self, ApiToken, AppState, AuthConfig, ControlError, Role, RunControl, TriggerRequest,
};
use trainyard_scheduler::logs::LogStore;
use trainyard_scheduler::store::{self, Store};

pub const VIEWER: &str = "viewer-token-0123456789";
pub const OPERATOR: &str = "operator-token-0123456789";

pub fn tokens() -> AuthConfig {
    AuthConfig::with_tokens(vec![
        ApiToken {
            role: Role::Viewer,
            token: VIEWER.into(),
        },
        ApiToken {
            role: Role::Operator,
            token: OPERATOR.into(),
        },
    ])
}

/// Records commands; answers trigger with a fresh run id.
#[derive(Default)]
pub struct Recorder {
    pub calls: Mutex<Vec<String>>,
}

#[async_trait]
impl RunControl for Recorder {
    async fn trigger(&self, dag: &DagId, _r: TriggerRequest) -> Result<RunId, ControlError> {
        self.calls.lock().unwrap().push(format!("trigger {dag}"));
        Ok(RunId::new())
    }
    async fn backfill(
        &self,
        dag: &DagId,
        _f: DateTime<Utc>,
        _t: DateTime<Utc>,
    ) -> Result<Vec<RunId>, ControlError> {
        self.calls.lock().unwrap().push(format!("backfill {dag}"));
        Ok(Vec::new())
    }
    async fn cancel_run(&self, run: RunId) -> Result<(), ControlError> {
        self.calls.lock().unwrap().push(format!("cancel {run}"));
        Ok(())
    }
    async fn cancel_task(&self, run: RunId, task: &str) -> Result<(), ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("cancel {run} {task}"));
        Ok(())
    }
    async fn clear_task(&self, run: RunId, task: &str, _d: bool) -> Result<(), ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("clear {run} {task}"));
        Ok(())
    }
    async fn set_paused(&self, dag: &DagId, paused: bool) -> Result<(), ControlError> {
        self.calls
            .lock()
            .unwrap()
            .push(format!("paused {dag} {paused}"));
        Ok(())
    }
    async fn wait_reasons(&self, _run: RunId) -> Vec<(String, String)> {
        Vec::new()
    }
}

pub struct App {
    pub _dir: tempfile::TempDir,
    pub store: Arc<dyn Store>,
    pub state: AppState,
    pub router: Router,
    pub recorder: Arc<Recorder>,
}

pub async fn app_with_recorder(auth: AuthConfig) -> App {
    let dir = tempfile::tempdir().unwrap();
    let store = store::connect(&format!(
        "sqlite:{}",
        dir.path().join("db.sqlite").display()
    ))
    .await
    .unwrap();
    let recorder = Arc::new(Recorder::default());
    let state = AppState {
        store: store.clone(),
        control: recorder.clone(),
        logs: LogStore::new(dir.path().join("logs")),
        auth,
    };
    App {
        _dir: dir,
        store,
        router: http::router(state.clone()),
        state,
        recorder,
    }
}

/// Serves `state` on a loopback socket (port 0) until the test ends; returns the address.
pub async fn serve(state: AppState) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(http::serve(listener, state, None, std::future::pending()));
    addr
}

/// One raw HTTP/1.x request over a fresh connection (any `Host`, or none);
/// returns the status code and the body.
pub async fn raw_request(addr: std::net::SocketAddr, head: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conn = tokio::net::TcpStream::connect(addr).await.unwrap();
    conn.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

pub struct Resp {
    pub status: StatusCode,
    pub headers: axum::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_owned()
    }
}

/// Marks a request as coming from `ip` (what `http::serve` attaches from the socket).
pub fn from_addr(mut req: Request<Body>, ip: &str) -> Request<Body> {
    let addr = std::net::SocketAddr::new(ip.parse().unwrap(), 40000);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(addr));
    req
}

pub async fn send(router: &Router, req: Request<Body>) -> Resp {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

pub fn req(method: Method, path: &str, token: Option<&str>, json: Option<Value>) -> Request<Body> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        // Loopback, so open-mode routers (which refuse other hosts) serve it.
        .header(header::HOST, "127.0.0.1:8080");
    if let Some(t) = token {
        b = b.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    match json {
        Some(v) => b
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(v.to_string()))
            .unwrap(),
        None => b.body(Body::empty()).unwrap(),
    }
}
