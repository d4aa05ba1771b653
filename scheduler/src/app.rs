//! The scheduler process assembled from its components: store, engine, DAG
//! loader, HTTP API and the gRPC service for workers.
//!
//! `trainyard scheduler`, `trainyard standalone`, `trainyard bench` and the
//! end-to-end tests all start a scheduler through [`SchedulerApp::start`], so
//! they share one code path. Listeners are bound by the caller (port 0 in
//! tests) and everything stops when the shutdown token is cancelled.
//!
//! HA: the store, the HTTP API and the metrics run for the life of the
//! process; the engine, the DAG loader, the gRPC service for workers and (on
//! Postgres) the wake-up listener run only while this replica leads — one
//! "term" per leadership, see `term.rs` and [`crate::ha`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::info;
use trainyard_artifacts::ArtifactStore;

use crate::clock::{Clock, SystemClock};
use crate::engine::{EngineHandle, EngineOptions};
use crate::ha::{ElectionOptions, HaControl, LeaderElection, Role};
use crate::http::{self, AppState};
use crate::logs::{FollowLimits, LogStore};
use crate::retention::{Retention, RetentionOptions};
use crate::store::{self, Lease, Store};

/// Everything a scheduler process needs to know.
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// `sqlite:PATH` or `postgres://…`.
    pub db_url: String,
    /// Folder of DAG files to load and watch; `None` serves only what the
    /// database already holds.
    pub dags_dir: Option<PathBuf>,
    /// Where logs (and, with the default artifact store, artifacts) live.
    pub data_dir: PathBuf,
    /// Size and task caps on DAG files, checked before parsing.
    pub dag_limits: crate::dags::DagLimits,
    /// Code snapshots shipped with DAG versions (`None`: none).
    pub dag_code: Option<DagCodeConfig>,
    pub heartbeat_interval: Duration,
    pub lost_worker_timeout: Duration,
    /// Named pool slot counts.
    pub pools: BTreeMap<String, u32>,
    pub catchup_limit: usize,
    /// The artifact store (`file:///dir`, `s3://bucket/prefix`, `gs://…`,
    /// `az://…`; credentials from the usual env). `None`: a folder
    /// `artifacts/` in the data dir. Announced to workers at registration;
    /// attempt logs are archived there too.
    pub artifacts_url: Option<String>,
    /// API tokens and UI sessions; open (no tokens) by default, which the
    /// CLI allows only on loopback. Also the hosts open mode answers
    /// (`--allowed-host`) and the failed-login limit.
    pub auth: http::AuthConfig,
    /// Join tokens workers must present (open when empty, which the CLI
    /// allows only on loopback or with mTLS).
    pub worker_auth: crate::grpc::WorkerAuth,
    /// Serve HTTP and gRPC over TLS (and require worker certificates with a
    /// client CA); `None`: plaintext.
    pub tls: Option<crate::tls::TlsFiles>,
    /// Most GPUs one worker may register.
    pub max_worker_gpus: u32,
    /// Live log streams served at once, in total and per client address.
    pub log_follow_limits: FollowLimits,
    /// How long the leader lease lasts (HA on PostgreSQL, `--leader-lease`):
    /// a frozen or partitioned leader loses leadership within this plus a
    /// third of it.
    pub leader_lease: Duration,
    /// The HA group whose lease the replica contends for (`--ha-group`);
    /// `None`: the database and schema (`<db>.<schema>`).
    pub ha_group: Option<String>,
    /// The worker gRPC URL written into the lease while leading
    /// (`--advertise-grpc`); `None`: `http(s)://<bound gRPC address>` unless
    /// that address is unspecified (0.0.0.0, ::), then none.
    pub advertise_grpc: Option<String>,
    /// How long finished runs (rows, artifacts, archived and local logs)
    /// are kept after they ended; zero keeps them forever (`--retention`,
    /// see [`crate::retention`]).
    pub retention: Duration,
}

impl SchedulerConfig {
    pub fn new(db_url: impl Into<String>, data_dir: impl Into<PathBuf>) -> Self {
        Self {
            db_url: db_url.into(),
            dags_dir: None,
            data_dir: data_dir.into(),
            dag_limits: crate::dags::DagLimits::default(),
            dag_code: Some(DagCodeConfig::default()),
            heartbeat_interval: Duration::from_secs(5),
            lost_worker_timeout: Duration::from_secs(30),
            pools: BTreeMap::new(),
            catchup_limit: 100,
            artifacts_url: None,
            auth: http::AuthConfig::open(),
            worker_auth: crate::grpc::WorkerAuth::open(),
            tls: None,
            max_worker_gpus: 64,
            log_follow_limits: FollowLimits::default(),
            leader_lease: crate::ha::DEFAULT_LEASE,
            ha_group: None,
            advertise_grpc: None,
            retention: crate::retention::DEFAULT_RETENTION,
        }
    }
}

/// How DAG code snapshots are taken (see [`crate::dags::CodeOptions`]).
#[derive(Debug, Clone)]
pub struct DagCodeConfig {
    /// Most bytes of code a DAG folder ships with each version.
    pub max_bytes: trainyard_core::resources::ByteSize,
    /// Globs (relative to the DAG folder) left out of snapshots.
    pub exclude: Vec<String>,
}

impl Default for DagCodeConfig {
    fn default() -> Self {
        Self {
            max_bytes: trainyard_core::resources::ByteSize::mib(crate::dags::DEFAULT_MAX_CODE_MIB),
            exclude: Vec::new(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the database: {0}")]
    Store(#[from] store::StoreError),
    #[error("cannot start the engine: {0}")]
    Engine(#[from] crate::engine::EngineError),
    #[error("cannot load DAGs from {dir}: {message}")]
    Dags { dir: PathBuf, message: String },
    #[error("cannot open the artifact store: {0}")]
    Artifacts(#[from] trainyard_artifacts::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Ha(#[from] crate::ha::HaError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    #[error(transparent)]
    DbLock(#[from] DbLockError),
}

/// A started scheduler: its parts, for callers that drive or observe it.
pub struct SchedulerApp {
    pub store: Arc<dyn Store>,
    pub engine: EngineHandle,
    pub logs: LogStore,
    /// Where artifacts and archived logs live.
    pub artifacts: ArtifactStore,
    pub http_addr: SocketAddr,
    pub grpc_addr: SocketAddr,
    /// Leader or standby (see [`crate::ha`]).
    role: watch::Receiver<Role>,
    /// The lease as this replica last saw it.
    lease: watch::Receiver<Option<Lease>>,
    /// The current leader's advertised worker URL.
    leader_hint: watch::Receiver<Option<String>>,
    tasks: JoinSet<()>,
    /// Held for the process's life on SQLite (see `db_lock`).
    _db_lock: Option<db_lock::DbLock>,
}

impl std::fmt::Debug for SchedulerApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SchedulerApp")
            .field("http_addr", &self.http_addr)
            .field("grpc_addr", &self.grpc_addr)
            .finish_non_exhaustive()
    }
}

impl SchedulerApp {
    /// Opens the store (applying migrations), rebuilds the engine from it,
    /// loads the DAG folder and starts serving. Returns once everything runs.
    pub async fn start(
        config: SchedulerConfig,
        http_listener: TcpListener,
        grpc_listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<Self, AppError> {
        Self::start_with_clock(
            config,
            http_listener,
            grpc_listener,
            shutdown,
            Arc::new(SystemClock),
        )
        .await
    }

    pub async fn start_with_clock(
        config: SchedulerConfig,
        http_listener: TcpListener,
        grpc_listener: TcpListener,
        shutdown: CancellationToken,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, AppError> {
        // One scheduling process per SQLite file, refused before anything
        // else opens it.
        let db_lock = match db_lock::sqlite_file(&config.db_url) {
            Some(file) => Some(db_lock::DbLock::acquire(&file)?),
            None => None,
        };
        // Bad certificate files stop the start here, with their names.
        let (http_tls, grpc_tls) = match &config.tls {
            Some(files) => (
                Some(files.rustls_config(false)?),
                Some(files.grpc_config()?),
            ),
            None => (None, None),
        };
        let grpc_addr = grpc_listener.local_addr()?;
        let mut election_opts = ElectionOptions::new(config.db_url.clone());
        election_opts.lease = config.leader_lease;
        election_opts.group = config.ha_group.clone();
        election_opts.advertise_grpc = config
            .advertise_grpc
            .clone()
            .or_else(|| default_advertise(grpc_addr, config.tls.is_some()));
        // The pool's sessions cannot outlive a frozen leader's lease with a
        // transaction open (see `crate::ha`).
        let store = store::connect_with(
            &config.db_url,
            store::ConnectOptions {
                pg_session_guard: Some(election_opts.session_guard()),
                ..store::ConnectOptions::default()
            },
        )
        .await?;
        let artifacts = open_artifacts(&config)?;
        info!(store = %artifacts.base_uri(), "artifact store");
        // One handle for the life of the process: each leadership term builds
        // an engine on its inbox, so callers and subscribers never re-wire.
        let (handle, inbox) =
            EngineHandle::detached(EngineOptions::new(store.clone(), clock.clone()).command_buffer);
        let mut tasks = JoinSet::new();
        crate::metrics::spawn_collector(&handle, shutdown.clone());
        crate::metrics::traces::spawn_if_enabled(&handle, store.clone(), shutdown.clone());
        let logs = LogStore::new(config.data_dir.join("logs"))
            .with_archive(artifacts.clone())
            .with_follow_limits(config.log_follow_limits);
        let mut election = LeaderElection::new(election_opts, store.clone())?;
        let role = election.role();
        let lease = election.lease();
        let leader_hint = election.leader_hint();

        let http_addr = http_listener.local_addr()?;
        let state = AppState {
            store: store.clone(),
            control: Arc::new(HaControl::new(
                role.clone(),
                handle.clone(),
                store.clone(),
                clock.clone(),
            )),
            logs: logs.clone(),
            auth: config.auth.clone(),
        };
        {
            let token = shutdown.clone();
            tasks.spawn(async move {
                if let Err(err) =
                    http::serve(http_listener, state, http_tls, token.cancelled_owned()).await
                {
                    tracing::error!(error = %err, "http server stopped");
                }
            });
        }
        {
            // On every replica, for the life of the process: its deletes are
            // guarded in the store (safe beside another replica's), and each
            // replica's local log folder is its own.
            let retention = Retention::new(
                store.clone(),
                artifacts.clone(),
                logs.clone(),
                clock.clone(),
                RetentionOptions::new(config.retention),
            );
            let token = shutdown.clone();
            tasks.spawn(retention.run(token));
        }
        let term = Term {
            config,
            store: store.clone(),
            clock,
            handle: handle.clone(),
            logs: logs.clone(),
            artifacts: artifacts.clone(),
            grpc_listener: grpc_listener.into_std()?,
            grpc_tls,
            shutdown: shutdown.clone(),
            leader_hint: leader_hint.clone(),
        };
        // Lead from the start when the lease is free (always on SQLite), so
        // a lone scheduler is running its engine when `start` returns and a
        // broken first start is reported to the caller.
        let fence = match election.try_acquire().await {
            true => election.fence(),
            false => None,
        };
        let first = if let Some(fence) = fence {
            match term.start(inbox, fence).await {
                Ok(running) => {
                    election.mark_leading();
                    Phase::Leading(running)
                }
                Err((err, _)) => {
                    election.step_down().await;
                    return Err(err);
                }
            }
        } else {
            info!("another replica leads; this one is on standby");
            Phase::Standby(inbox)
        };
        tasks.spawn(supervise(election, term, first));
        info!(%http_addr, %grpc_addr, leader = *role.borrow() == Role::Leader, "scheduler started");
        Ok(Self {
            store,
            engine: handle,
            logs,
            artifacts,
            http_addr,
            grpc_addr,
            role,
            lease,
            leader_hint,
            tasks,
            _db_lock: db_lock,
        })
    }

    /// The leader lease as this replica last saw it: holder, term, expiry.
    pub fn lease(&self) -> watch::Receiver<Option<Lease>> {
        self.lease.clone()
    }

    /// The current leader's advertised worker gRPC URL, when known.
    pub fn leader_hint(&self) -> watch::Receiver<Option<String>> {
        self.leader_hint.clone()
    }

    /// Whether this replica runs the engine now (always true on SQLite).
    pub fn is_leader(&self) -> bool {
        *self.role.borrow() == Role::Leader
    }

    /// The replica's role as it changes (HA on Postgres).
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.clone()
    }

    /// Waits until every component has stopped (after the shutdown token fired).
    pub async fn wait(mut self) {
        while self.tasks.join_next().await.is_some() {}
        self.store.close().await;
    }
}

/// `http(s)://<addr>` for a gRPC listener bound to a specific address; `None`
/// for 0.0.0.0 or :: (no address others could dial is known).
fn default_advertise(addr: SocketAddr, tls: bool) -> Option<String> {
    if addr.ip().is_unspecified() {
        return None;
    }
    let scheme = if tls { "https" } else { "http" };
    Some(format!("{scheme}://{addr}"))
}

/// The configured artifact store, or `<data dir>/artifacts` (an absolute
/// `file://` URL, so workers on this host find it whatever their cwd).
fn open_artifacts(config: &SchedulerConfig) -> Result<ArtifactStore, AppError> {
    match &config.artifacts_url {
        Some(url) => Ok(ArtifactStore::from_url(url)?),
        None => {
            let dir = config.data_dir.join("artifacts");
            std::fs::create_dir_all(&dir)?;
            let dir = std::fs::canonicalize(&dir)?;
            Ok(ArtifactStore::from_url(&dir.display().to_string())?)
        }
    }
}

mod db_lock;
mod term;
pub use db_lock::DbLockError;
use term::{Phase, Term, supervise};
