//! The scheduler's gRPC server for workers (`trainyard.v1.WorkerService`): a
//! thin transport over [`EngineHandle`] and [`LogStore`].
//!
//! Module map: `convert` (wire ⇄ engine types, input validation), `error`
//! (status mapping), `service` ([`WorkerServiceImpl`]: Register and the
//! Connect handshake), `session` (one worker's Connect stream: engine
//! commands out, reports in) and `artifacts` (upstream attempts for inputs,
//! lineage, secret masking, log archiving — active with an
//! [`ArtifactContext`]). `standby` is the endpoint of a replica that does
//! not lead: every call answered "not the leader" (with the leader's URL
//! when known), so workers with several `--scheduler` URLs move on at once.
//!
//! Invariants:
//! - With join tokens, every call is authenticated before its first message
//!   is decoded (`auth`, a tonic interceptor); a worker id is usable only
//!   with the session credential issued with it at Register.
//! - A worker reports, logs and finishes only attempts assigned to it: a
//!   report about anything else is refused, logged once at WARN, and
//!   changes nothing (`session`).
//! - Nothing a worker sends can panic the server: every id, number and string
//!   is checked in `convert` and refused with `INVALID_ARGUMENT`; messages
//!   over [`GrpcOptions::max_message_bytes`] are refused by tonic
//!   (`OUT_OF_RANGE`) before they are decoded.
//! - Only the newest stream of a worker speaks for it: an older stream that
//!   ends late never marks the worker disconnected (see `session::Sessions`).
//! - A stale report (the engine answers `Fenced`) is answered with `Kill` for
//!   that attempt, so a copy of a task that was retried elsewhere dies.
//!
//! [`EngineHandle`]: crate::engine::EngineHandle
//! [`LogStore`]: crate::logs::LogStore

mod artifacts;
pub mod auth;
pub mod convert;
mod error;
mod service;
mod session;
mod standby;

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Server;
use tracing::{info, instrument};
use trainyard_proto::v1::worker_service_server::WorkerServiceServer;

pub use artifacts::{ArtifactContext, mask_lines};
pub use auth::{WorkerAuth, WorkerAuthError};
pub use error::{GrpcError, Result, status_of};
pub use service::WorkerServiceImpl;
pub use standby::{STANDBY_STOP_GRACE, StandbyService, serve_standby};

/// Settings of the worker service; [`GrpcOptions::default`] suits production.
#[derive(Debug, Clone)]
pub struct GrpcOptions {
    /// Served to workers at registration. Keep it equal to the engine's
    /// `EngineOptions::heartbeat_interval` (the handle does not expose it).
    pub heartbeat_interval: Duration,
    /// Served to workers at registration, so a cut-off worker kills its
    /// tasks before they are retried elsewhere. Keep it equal to the
    /// engine's `EngineOptions::lost_worker_timeout`.
    pub lost_worker_timeout: Duration,
    /// Largest message accepted or sent (both directions).
    pub max_message_bytes: usize,
    /// How long a new Connect stream may take to send its Hello.
    pub hello_timeout: Duration,
    /// HTTP/2 keepalive pings, so a silently dead peer (a paused or
    /// unplugged worker) ends its stream instead of holding it forever.
    pub keepalive_interval: Duration,
    pub keepalive_timeout: Duration,
    /// Join tokens required on every call (open when empty).
    pub auth: WorkerAuth,
    /// TLS (and with a client CA, mTLS) for the endpoint; `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Most GPUs one worker may register (a lying worker cannot claim 256).
    pub max_worker_gpus: u32,
}

impl Default for GrpcOptions {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(10),
            lost_worker_timeout: Duration::from_secs(60),
            max_message_bytes: 16 * 1024 * 1024,
            hello_timeout: Duration::from_secs(30),
            keepalive_interval: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(20),
            auth: WorkerAuth::open(),
            tls: None,
            max_worker_gpus: 64,
        }
    }
}

/// Serves `service` on an already bound `listener` until `shutdown`
/// completes. Open worker streams are then ended with `UNAVAILABLE` ("the
/// scheduler is shutting down") so the server does not wait on them, and the
/// workers reconnect to whichever scheduler comes next.
#[instrument(skip_all, fields(addr = ?listener.local_addr().ok()), err)]
pub async fn serve(
    listener: TcpListener,
    service: WorkerServiceImpl,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let opts = service.options().clone();
    let stop = service.stop_token();
    let svc = WorkerServiceServer::new(service)
        .max_decoding_message_size(opts.max_message_bytes)
        .max_encoding_message_size(opts.max_message_bytes);
    let auth = opts.auth.clone();
    let svc =
        tonic::service::interceptor::InterceptedService::new(svc, move |req| auth.intercept(req));
    // Small messages on a latency-critical path: no Nagle delay.
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    info!(
        tls = opts.tls.is_some(),
        join_tokens = opts.auth.is_required(),
        "worker gRPC service listening"
    );
    let mut server = Server::builder();
    if let Some(tls) = opts.tls.clone() {
        server = server.tls_config(tls)?;
    }
    server
        .http2_keepalive_interval(Some(opts.keepalive_interval))
        .http2_keepalive_timeout(Some(opts.keepalive_timeout))
        .add_service(svc)
        .serve_with_incoming_shutdown(incoming, async move {
            shutdown.await;
            stop.cancel();
        })
        .await?;
    info!("worker gRPC service stopped");
    Ok(())
}
