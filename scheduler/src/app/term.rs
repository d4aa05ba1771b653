//! One leadership term of a scheduler replica, and the loop that moves the
//! replica between standby and leading.
//!
//! A term starts the wake-up listener (Postgres) before the engine rebuilds
//! from the store, so a run committed by a standby during the rebuild is
//! either read by it or announced after it; then the engine, the DAG loader
//! and the gRPC service for workers. Losing the lease cancels the term's
//! token at once; the engine hands its inbox back for the next term. While
//! standing by, the gRPC port answers every worker call "not the leader"
//! (`grpc::standby`, naming the leader's advertised URL from the lease when
//! it is known), so workers move on to their next `--scheduler` URL (or
//! redial through a load balancer) at once.
//!
//! The engine writes through the term's fenced store
//! ([`crate::store::LeaseStore::fenced`]): once another replica holds a
//! newer term, every write of this one is refused. A leader that could not
//! renew in time ([`Held::Unsure`]) stops serving workers and the DAG
//! loader but keeps its engine: if the lease is renewed again with the same
//! term (nobody led in between), serving resumes on the same engine, with
//! nothing rebuilt.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};
use trainyard_artifacts::ArtifactStore;

use super::{AppError, SchedulerConfig};
use trainyard_core::ids::DagId;

use crate::clock::Clock;
use crate::dags::{CodeOptions, DagLoaderOptions};
use crate::engine::{Engine, EngineHandle, EngineInbox, EngineOptions};
use crate::grpc::{self, ArtifactContext, GrpcOptions, WorkerServiceImpl};
use crate::ha::{ElectionOptions, Held, LeaderElection, Regained, spawn_wakeup_relay};
use crate::logs::LogStore;
use crate::store::{Backend, Store, TermFence};

/// Pause after a term failed to start before trying for the lease again.
const RESTART_PAUSE: Duration = Duration::from_secs(1);

/// Everything a term needs, kept across terms.
pub(super) struct Term {
    pub config: SchedulerConfig,
    pub store: Arc<dyn Store>,
    pub clock: Arc<dyn Clock>,
    /// The app's handle; every term's engine serves it.
    pub handle: EngineHandle,
    pub logs: LogStore,
    pub artifacts: ArtifactStore,
    /// The bound gRPC socket; each term (and each standby spell) serves a
    /// duplicate of it, so the port stays bound across terms.
    pub grpc_listener: std::net::TcpListener,
    /// TLS for the worker endpoint, checked once at start.
    pub grpc_tls: Option<tonic::transport::ServerTlsConfig>,
    /// The app's shutdown; a term's token is its child.
    pub shutdown: CancellationToken,
    /// The current leader's advertised worker gRPC URL, from the lease row
    /// ([`LeaderElection::leader_hint`]); `None` while unknown. For the
    /// standby's worker endpoint, to tell workers where the leader is.
    pub leader_hint: tokio::sync::watch::Receiver<Option<String>>,
}

/// A term in progress.
pub(super) struct Running {
    stop: CancellationToken,
    engine: JoinHandle<EngineInbox>,
    /// The wake-up relay: runs for the whole term.
    others: JoinSet<()>,
    /// The DAG loader and the worker service: stopped while the term is
    /// unsure of its lease, started again when it is renewed.
    serving: CancellationToken,
    serving_set: JoinSet<()>,
}

impl Running {
    /// Stops the term's components and takes the engine's inbox back.
    async fn stop(mut self) -> Result<EngineInbox, AppError> {
        self.stop.cancel();
        while self.serving_set.join_next().await.is_some() {}
        while self.others.join_next().await.is_some() {}
        self.engine
            .await
            .map_err(|e| AppError::Io(std::io::Error::other(e)))
    }

    /// Stops serving workers and the DAG loader; the engine keeps running.
    async fn suspend(&mut self) {
        self.serving.cancel();
        while self.serving_set.join_next().await.is_some() {}
    }
}

/// Where the replica is between the supervisor's steps.
pub(super) enum Phase {
    Leading(Running),
    Standby(EngineInbox),
}

impl Term {
    fn grpc_clone(&self) -> std::io::Result<TcpListener> {
        let std = self.grpc_listener.try_clone()?;
        std.set_nonblocking(true)?;
        TcpListener::from_std(std)
    }

    /// Starts a term on the engine's inbox; on failure the inbox comes back
    /// (`None` only if the engine's task panicked).
    pub async fn start(
        &self,
        inbox: EngineInbox,
        fence: TermFence,
    ) -> Result<Running, (AppError, Option<EngineInbox>)> {
        let stop = self.shutdown.child_token();
        let mut others = JoinSet::new();
        if self.store.backend() == Backend::Postgres {
            let options = ElectionOptions::new(self.config.db_url.clone()).connect;
            match spawn_wakeup_relay(
                &self.config.db_url,
                &options,
                self.store.clone(),
                self.handle.clone(),
                stop.clone(),
            )
            .await
            {
                Ok(relay) => {
                    others.spawn(async move {
                        let _ = relay.await;
                    });
                }
                Err(e) => return Err((e.into(), Some(inbox))),
            }
        }
        // Every engine write of this term carries it (see the module doc).
        let mut opts = EngineOptions::new(self.store.fenced(fence), self.clock.clone());
        opts.heartbeat_interval = self.config.heartbeat_interval;
        opts.lost_worker_timeout = self.config.lost_worker_timeout;
        opts.pools = self.config.pools.clone();
        opts.catchup_limit = self.config.catchup_limit;
        let engine = match Engine::build_on(opts, inbox).await {
            Ok(engine) => engine,
            Err((e, inbox)) => {
                stop.cancel();
                while others.join_next().await.is_some() {}
                return Err((e.into(), Some(inbox)));
            }
        };
        let engine = {
            let (token, app) = (stop.clone(), self.shutdown.clone());
            tokio::spawn(async move {
                let (result, inbox) = engine.run_keeping_inbox(token.cancelled_owned()).await;
                if let Err(err) = result {
                    error!(error = %err, "engine stopped with an error");
                    app.cancel();
                }
                inbox
            })
        };
        let serving = stop.child_token();
        let mut running = Running {
            stop,
            engine,
            others,
            serving: serving.clone(),
            serving_set: JoinSet::new(),
        };
        match self.start_serving(&serving, &mut running.serving_set).await {
            Ok(()) => {
                info!("leader term started: engine, dag loader and worker service running");
                Ok(running)
            }
            Err(e) => match running.stop().await {
                Ok(inbox) => Err((e, Some(inbox))),
                // The engine task panicked: nothing can serve the handle again.
                Err(join) => {
                    error!(error = %join, "engine task lost");
                    Err((e, None))
                }
            },
        }
    }

    /// Serves again after a suspension (the lease was renewed, same term).
    async fn resume(&self, running: &mut Running) -> Result<(), AppError> {
        running.serving = running.stop.child_token();
        let serving = running.serving.clone();
        self.start_serving(&serving, &mut running.serving_set).await
    }

    /// The DAG loader and the gRPC service of a term.
    async fn start_serving(
        &self,
        stop: &CancellationToken,
        set: &mut JoinSet<()>,
    ) -> Result<(), AppError> {
        let config = &self.config;
        if let Some(dir) = &config.dags_dir {
            let notify = self.handle.clone();
            let loader_clock = self.clock.clone();
            let dags_error = |e: &dyn std::fmt::Display| AppError::Dags {
                dir: dir.clone(),
                message: e.to_string(),
            };
            // During the initial load the changes are collected and handed
            // to the engine (awaited) before the term counts as started, so
            // a replica is ready only once its engine knows every DAG of the
            // folder ("start, wait for ready, trigger" never meets "DAG not
            // found"). Later changes go to the engine on their own tasks.
            let initial: Arc<std::sync::Mutex<Option<Vec<DagId>>>> =
                Arc::new(std::sync::Mutex::new(Some(Vec::new())));
            let collecting = initial.clone();
            let code = match &config.dag_code {
                Some(code) => {
                    let exclude = crate::dags::exclude_set(&code.exclude)
                        .map_err(|e| dags_error(&format!("--dag-code-exclude: {e}")))?;
                    let cwd = std::env::current_dir()?;
                    Some(CodeOptions {
                        artifacts: self.artifacts.clone(),
                        root: crate::dags::snapshot_root(dir, &cwd),
                        max_bytes: code.max_bytes,
                        exclude,
                    })
                }
                None => None,
            };
            let mut loader = DagLoaderOptions::new(dir.clone(), self.store.clone())
                .code(code)
                .on_change(move |dag_id| {
                    if let Ok(mut pending) = collecting.lock()
                        && let Some(pending) = pending.as_mut()
                    {
                        pending.push(dag_id);
                        return;
                    }
                    let engine = notify.clone();
                    tokio::spawn(async move {
                        if let Err(err) = engine.dag_changed(dag_id.clone()).await {
                            warn!(%dag_id, error = %err, "engine did not take the DAG change");
                        }
                    });
                })
                .clock(move || loader_clock.now())
                .limits(config.dag_limits)
                .build()
                .map_err(|e| dags_error(&e))?;
            let report = loader
                .load_all(self.clock.now())
                .await
                .map_err(|e| dags_error(&e))?;
            let pending = initial
                .lock()
                .map(|mut p| p.take().unwrap_or_default())
                .unwrap_or_default();
            for dag_id in pending {
                if let Err(err) = self.handle.dag_changed(dag_id.clone()).await {
                    warn!(%dag_id, error = %err, "engine did not take the DAG");
                }
            }
            info!(loaded = report.loaded.len(), errors = report.errors.len(), dir = %dir.display(), "dags loaded");
            for (path, error) in &report.errors {
                warn!(path = %path.display(), "{error}");
            }
            let token = stop.clone();
            set.spawn(async move {
                if let Err(err) = loader.run(token.cancelled_owned()).await {
                    error!(error = %err, "dag watcher stopped");
                }
            });
        }
        let service = WorkerServiceImpl::new(
            self.handle.clone(),
            self.logs.clone(),
            GrpcOptions {
                heartbeat_interval: config.heartbeat_interval,
                lost_worker_timeout: config.lost_worker_timeout,
                auth: config.worker_auth.clone(),
                tls: self.grpc_tls.clone(),
                max_worker_gpus: config.max_worker_gpus,
                ..GrpcOptions::default()
            },
        )
        .with_artifacts(ArtifactContext {
            store: self.store.clone(),
            url: self.artifacts.base_uri().to_owned(),
        });
        let listener = self.grpc_clone()?;
        let token = stop.clone();
        set.spawn(async move {
            if let Err(err) = grpc::serve(listener, service, token.cancelled_owned()).await {
                error!(error = %err, "worker gRPC service stopped");
            }
        });
        Ok(())
    }

    /// While standing by: the worker endpoint answers every call "not the
    /// leader" (`grpc::standby`), with the leader's URL once the election
    /// knows it, so workers with several `--scheduler` URLs move on at once.
    fn refuse_workers(&self, until: CancellationToken) -> Option<JoinHandle<()>> {
        let listener = match self.grpc_clone() {
            Ok(l) => l,
            Err(e) => {
                warn!(error = %e, "cannot answer workers on the gRPC port while on standby");
                return None;
            }
        };
        // The leader's worker URL from the lease, as the election last read
        // it; the endpoint reads it at every call.
        let hint = self.leader_hint.clone();
        let tls = self.grpc_tls.clone();
        Some(tokio::spawn(async move {
            if let Err(err) =
                grpc::serve_standby(listener, hint, tls, until.cancelled_owned()).await
            {
                warn!(error = %err, "standby worker endpoint stopped");
            }
        }))
    }
}

/// Moves the replica between standby and leading until shutdown.
pub(super) async fn supervise(mut election: LeaderElection, term: Term, mut phase: Phase) {
    let shutdown = term.shutdown.clone();
    loop {
        phase = match phase {
            Phase::Leading(mut running) => {
                let mut held = election.hold(&shutdown).await;
                if held == Held::Unsure {
                    held = match suspended(&mut election, &term, &mut running).await {
                        Some(held) => held,
                        // Renewed with the same term: lead on, same engine.
                        None => {
                            phase = Phase::Leading(running);
                            continue;
                        }
                    };
                }
                let inbox = match running.stop().await {
                    Ok(inbox) => inbox,
                    Err(e) => {
                        error!(error = %e, "engine task lost; shutting down");
                        shutdown.cancel();
                        election.step_down().await;
                        return;
                    }
                };
                if shutdown.is_cancelled() {
                    election.step_down().await;
                    return;
                }
                warn!(?held, leader = ?*term.leader_hint.borrow(), "leader term ended; standing by");
                Phase::Standby(inbox)
            }
            Phase::Standby(inbox) => {
                let refusing = CancellationToken::new();
                let refuser = term.refuse_workers(refusing.clone());
                let won = election.acquire(&shutdown).await;
                refusing.cancel();
                if let Some(mut r) = refuser
                    && tokio::time::timeout(grpc::STANDBY_STOP_GRACE, &mut r)
                        .await
                        .is_err()
                {
                    // A connection still open: its answers are stale now.
                    r.abort();
                }
                let fence = match (won, election.fence()) {
                    (true, Some(fence)) => fence,
                    _ => {
                        election.step_down().await;
                        return;
                    }
                };
                match term.start(inbox, fence).await {
                    Ok(running) => {
                        election.mark_leading();
                        Phase::Leading(running)
                    }
                    Err((e, None)) => {
                        error!(error = %e, "engine task lost; shutting down");
                        shutdown.cancel();
                        election.step_down().await;
                        return;
                    }
                    Err((e, Some(inbox))) => {
                        error!(error = %e, "cannot start leading; standing by");
                        election.step_down().await;
                        tokio::select! {
                            () = shutdown.cancelled() => return,
                            () = tokio::time::sleep(RESTART_PAUSE) => {}
                        }
                        Phase::Standby(inbox)
                    }
                }
            }
        };
    }
}

/// A leader unsure of its lease: stops serving (workers go elsewhere, the
/// port refuses them as on standby) and keeps trying to renew. `None`: the
/// same term was renewed and serving resumed on the same engine; otherwise
/// why the term is over.
async fn suspended(
    election: &mut LeaderElection,
    term: &Term,
    running: &mut Running,
) -> Option<Held> {
    let shutdown = term.shutdown.clone();
    running.suspend().await;
    let refusing = CancellationToken::new();
    let refuser = term.refuse_workers(refusing.clone());
    let regained = election.regain(&shutdown).await;
    refusing.cancel();
    if let Some(r) = refuser {
        let _ = r.await;
    }
    match regained {
        Regained::Kept => match term.resume(running).await {
            Ok(()) => {
                election.mark_leading();
                None
            }
            Err(e) => {
                error!(error = %e, "cannot serve again after renewing the lease; ending the term");
                election.step_down().await;
                Some(Held::Lost)
            }
        },
        Regained::Lost => Some(Held::Lost),
        Regained::Shutdown => Some(Held::Shutdown),
    }
}
