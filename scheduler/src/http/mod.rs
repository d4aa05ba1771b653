//! The HTTP layer: JSON API under `/api/v1`, health and readiness probes.
//!
//! A thin layer over services: reads go to the [`Store`], commands (trigger,
//! cancel, pause) go to a [`RunControl`] — the engine in production, anything
//! implementing the trait in tests. [`router`] builds the whole app so tests
//! can drive it with `tower::ServiceExt::oneshot`, without a socket.

mod api;
mod auth;
mod client;
mod control;
mod error;
mod hosts;
mod lineage;
mod login_limit;
mod logs;
mod openapi;
mod read;
mod routes;
mod ui;
mod views;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::DefaultBodyLimit;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use tokio::net::TcpListener;
use trainyard_core::ids::{DagId, RunId, WorkerId};

pub use auth::{ApiToken, AuthConfig, AuthError, Role, parse_token_list};
pub use client::{ClientAddr, client_key};
pub use error::{ApiError, ApiResult};
pub use hosts::{AllowedHost, BadAllowedHost, parse_allowed_hosts};
pub use login_limit::{LoginLimit, LoginLimiter};
pub use openapi::document as openapi_document;

use crate::logs::LogStore;
use crate::store::ReadStore;

/// Request bodies larger than this are refused with 413.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Why a command was refused: the API's own error, so engine, store and
/// standby refusals reach the client through the one kind → status mapping.
pub type ControlError = ApiError;

/// A manual trigger as the API receives it.
#[derive(Debug, Clone, Default)]
pub struct TriggerRequest {
    pub params: Map<String, Value>,
    pub idempotency_key: Option<String>,
    pub logical_date: Option<DateTime<Utc>>,
}

/// Commands the API forwards to the scheduling engine.
#[async_trait]
pub trait RunControl: Send + Sync + 'static {
    async fn trigger(&self, dag: &DagId, request: TriggerRequest) -> Result<RunId, ControlError>;
    async fn backfill(
        &self,
        dag: &DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunId>, ControlError>;
    async fn cancel_run(&self, run: RunId) -> Result<(), ControlError>;
    async fn cancel_task(&self, run: RunId, task: &str) -> Result<(), ControlError>;
    async fn clear_task(
        &self,
        run: RunId,
        task: &str,
        downstream: bool,
    ) -> Result<(), ControlError>;
    async fn set_paused(&self, dag: &DagId, paused: bool) -> Result<(), ControlError>;
    /// Why ready tasks of a run are still waiting (task id → reason).
    async fn wait_reasons(&self, run: RunId) -> Vec<(String, String)>;
    /// Why a queued run has not started (its DAG's `max_active_runs`), if so.
    async fn run_wait_reason(&self, _run: RunId) -> Option<String> {
        None
    }
    /// What a trigger of `dag` answers besides the run: one line per task no
    /// registered worker could ever hold (the run is created all the same).
    async fn trigger_warnings(&self, _dag: &DagId) -> Vec<String> {
        Vec::new()
    }
    /// Runs and tasks as their ends commit, for `?wait_for_end` and live log
    /// streams; `None` where no engine runs here (a standby, a test double):
    /// a long-poll then re-reads the store every `api::RUN_END_RECHECK`, a
    /// log stream every `FollowLimits::recheck`.
    fn ends(&self) -> Option<tokio::sync::broadcast::Receiver<crate::engine::Ended>> {
        None
    }
    /// A standby replica (HA): `/readyz` answers 503 so traffic goes to the leader.
    fn is_standby(&self) -> bool {
        false
    }
    /// Why the engine cannot write now (its turns fail to commit), if so:
    /// `/readyz` answers 503 with it until the store accepts writes again.
    fn store_problem(&self) -> Option<String> {
        None
    }
    /// Latest heartbeat GPU usage per worker: (index, utilisation %, memory used).
    async fn gpu_usage(&self) -> BTreeMap<WorkerId, Vec<(u32, f64, u64)>> {
        BTreeMap::new()
    }
}

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn ReadStore>,
    pub control: Arc<dyn RunControl>,
    pub logs: LogStore,
    /// Tokens, roles and UI sessions; open (everyone operator) without tokens.
    pub auth: AuthConfig,
}

/// Every route: probes, `/api/v1`, the OpenAPI document, login and the UI.
fn all_routes() -> routes::RouteTable {
    let t = api::routes(routes::RouteTable::new());
    let t = lineage::routes(t);
    let t = t.get("/api/v1/openapi.json", openapi::openapi_json);
    ui::routes(t)
}

/// Every (method, path) the router serves, from the same list it is built from.
pub fn route_table() -> Vec<(axum::http::Method, &'static str)> {
    all_routes().into_parts().1
}

/// The whole HTTP application.
pub fn router(state: AppState) -> Router {
    let (routes, _) = all_routes().into_parts();
    routes
        .fallback(ui::not_found)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::guard,
        ))
        .layer(axum::middleware::from_fn(routes::json_errors))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Serves the app on a bound listener until `shutdown` completes; over TLS
/// when `tls` is given (see [`crate::tls`]). Every request carries its peer
/// address (`ConnectInfo<SocketAddr>`): the per-client limits (failed
/// logins, log followers) count by it.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    tls: Option<rustls::ServerConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(state).into_make_service_with_connect_info::<std::net::SocketAddr>();
    match tls {
        None => {
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some(config) => {
            // `tap_io` (a no-op) is how axum lends `ConnectInfo<SocketAddr>`
            // to a listener of its own kind.
            use axum::serve::ListenerExt as _;
            let listener = crate::tls::TlsListener::new(listener, config)?.tap_io(|_| {});
            axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await
        }
    }
}
