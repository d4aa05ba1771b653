//! Shared helpers for the gRPC tests: a real engine on a temp-file SQLite
//! store (system clock: real agents heartbeat in real time), the worker
//! service on 127.0.0.1:0, real `Agent`s over loopback tonic, and raw tonic
//! clients for protocol-level checks.
//!
//! Waits are on engine events (re-checking the store after each) or on
//! stream messages, bounded by a generous real-time limit that only turns a
//! hang into a failure; nothing sleeps for correctness.
#![allow(dead_code, clippy::unwrap_used)]

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, oneshot};
use trainyard_core::ids::{DagId, RunId, WorkerId};
use trainyard_core::state::{RunState, WorkerState};
use trainyard_proto::v1;
use trainyard_proto::v1::worker_service_client::WorkerServiceClient;
use trainyard_scheduler::clock::{Clock, SystemClock};
use trainyard_scheduler::engine::{Engine, EngineEvent, EngineHandle, EngineOptions};
use trainyard_scheduler::grpc::{self, GrpcOptions, WorkerServiceImpl};
use trainyard_scheduler::logs::LogStore;
use trainyard_scheduler::store::{EngineStore, NewDagVersion, Store, TaskInstance};
use trainyard_worker::agent::{Agent, AgentHandle, AgentOptions, Backoff};
use trainyard_worker::gpu::GpuInfo;

/// Bound on any single wait; only reached when a test is broken.
pub const WAIT: Duration = Duration::from_secs(30);

pub struct Scheduler {
    pub store: Arc<dyn Store>,
    /// Announced to workers and used for lineage when set (see `start_with`).
    pub artifacts: Option<trainyard_scheduler::grpc::ArtifactContext>,
    pub handle: EngineHandle,
    pub logs: LogStore,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    events: broadcast::Receiver<EngineEvent>,
    server_stop: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
    engine_stop: Option<oneshot::Sender<()>>,
}

pub fn grpc_options() -> GrpcOptions {
    GrpcOptions {
        heartbeat_interval: Duration::from_millis(200),
        ..GrpcOptions::default()
    }
}

impl Scheduler {
    pub async fn start() -> Self {
        Self::start_with(|s| s, false).await
    }

    /// Like [`Scheduler::start`], with the engine and the service on
    /// `wrap(store)` and, with `artifacts`, an artifact store in the temp dir.
    /// The harness's own reads and DAG registrations use the unwrapped store.
    pub async fn start_with(
        wrap: impl FnOnce(Arc<dyn Store>) -> Arc<dyn EngineStore>,
        artifacts: bool,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite:{}?mode=rwc",
            dir.path().join("trainyard.db").display()
        );
        let store = trainyard_scheduler::store::connect(&url).await.unwrap();
        let wrapped = wrap(store.clone());
        let artifacts = artifacts.then(|| {
            let root = dir.path().join("artifacts");
            std::fs::create_dir_all(&root).unwrap();
            trainyard_scheduler::grpc::ArtifactContext {
                store: wrapped.clone(),
                url: format!("file://{}", root.display()),
            }
        });
        let mut opts = EngineOptions::new(wrapped, Arc::new(SystemClock));
        opts.heartbeat_interval = Duration::from_millis(200);
        opts.lost_worker_timeout = Duration::from_secs(60);
        let (engine, handle) = Engine::build(opts).await.unwrap();
        let events = handle.subscribe();
        let (engine_stop, rx) = oneshot::channel::<()>();
        tokio::spawn(async move {
            engine
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        let logs = LogStore::new(dir.path().join("logs"));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let mut s = Self {
            store,
            artifacts,
            handle,
            logs,
            addr,
            dir,
            events,
            server_stop: None,
            server: None,
            engine_stop: Some(engine_stop),
        };
        s.serve(listener);
        s
    }

    fn serve(&mut self, listener: tokio::net::TcpListener) {
        let mut service =
            WorkerServiceImpl::new(self.handle.clone(), self.logs.clone(), grpc_options());
        if let Some(ctx) = &self.artifacts {
            service = service.with_artifacts(ctx.clone());
        }
        let (stop, rx) = oneshot::channel::<()>();
        self.server_stop = Some(stop);
        self.server = Some(tokio::spawn(async move {
            grpc::serve(listener, service, async {
                let _ = rx.await;
            })
            .await
            .unwrap();
        }));
    }

    /// Stops the gRPC server (streams end with UNAVAILABLE); the engine stays.
    pub async fn stop_server(&mut self) {
        if let Some(s) = self.server_stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.server.take() {
            tokio::time::timeout(WAIT, t)
                .await
                .expect("server did not stop")
                .unwrap();
        }
    }

    /// Serves again on the same address.
    pub async fn restart_server(&mut self) {
        let listener = tokio::net::TcpListener::bind(self.addr).await.unwrap();
        self.serve(listener);
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub async fn client(&self) -> WorkerServiceClient<tonic::transport::Channel> {
        let ch = tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        WorkerServiceClient::new(ch)
    }

    /// Registers a DAG from TOML through the store, as the loader does.
    pub async fn add_dag(&self, toml: &str) -> DagId {
        let spec =
            trainyard_core::dag::parse_dag("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
        let id = DagId::new(spec.id.clone());
        self.store
            .upsert_dag_version(
                NewDagVersion {
                    dag_id: id.clone(),
                    content_hash: format!("{:x}", md5ish(toml)),
                    source: toml.to_owned(),
                    spec: trainyard_scheduler::store::SpecJson::encode(&spec).unwrap(),
                    file_path: None,
                },
                SystemClock.now(),
            )
            .await
            .unwrap();
        self.handle.dag_changed(id.clone()).await.unwrap();
        id
    }

    pub async fn trigger(&self, dag: &DagId) -> RunId {
        self.handle
            .trigger(dag.clone(), Default::default(), None, None)
            .await
            .unwrap()
    }

    /// Waits until `check` (re-evaluated after every engine event, and at
    /// least every 50 ms for state the engine does not announce) holds.
    pub async fn until<F, Fut>(&mut self, what: &str, mut check: F)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = bool>,
    {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if check().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(50), self.events.recv()).await;
        }
    }

    pub async fn wait_run(&mut self, run: RunId) -> RunState {
        let store = self.store.clone();
        self.until(&format!("run {run} to end"), || {
            let store = store.clone();
            async move { store.get_run(run).await.unwrap().state.is_terminal() }
        })
        .await;
        self.store.get_run(run).await.unwrap().state
    }

    pub async fn wait_worker_state(&mut self, worker: WorkerId, state: WorkerState) {
        let store = self.store.clone();
        self.until(&format!("worker {worker} {state}"), || {
            let store = store.clone();
            async move {
                store
                    .list_workers()
                    .await
                    .unwrap()
                    .iter()
                    .any(|w| w.id == worker && w.state == state)
            }
        })
        .await;
    }

    pub async fn ti(&self, run: RunId, task: &str) -> TaskInstance {
        self.store
            .task_instances(run)
            .await
            .unwrap()
            .into_iter()
            .find(|t| t.task_id.as_str() == task)
            .unwrap_or_else(|| panic!("no task {task}"))
    }

    pub async fn shutdown(mut self) {
        self.stop_server().await;
        if let Some(s) = self.engine_stop.take() {
            let _ = s.send(());
        }
    }
}

/// A stable content hash without pulling in a hashing crate here.
fn md5ish(s: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    s.hash(&mut h);
    h.finish()
}

pub fn declared_gpus(n: u32, model: &str) -> Vec<GpuInfo> {
    (0..n)
        .map(|i| GpuInfo {
            index: i,
            uuid: format!("GPU-decl-{i}"),
            model: model.to_owned(),
            memory_bytes: 80 << 30,
            healthy: true,
        })
        .collect()
}

/// A running agent and what it needs.
pub struct RunningAgent {
    pub handle: AgentHandle,
    pub worker_id: WorkerId,
    pub work_dir: PathBuf,
    pub task: tokio::task::JoinHandle<trainyard_worker::agent::Result<()>>,
}

pub fn agent_options(s: &Scheduler, name: &str, gpus: Vec<GpuInfo>) -> AgentOptions {
    let mut o = AgentOptions::new(s.url(), s.dir.path().join("work"));
    o.name = name.to_owned();
    o.gpus = gpus;
    o.cpus = 8;
    o.memory_bytes = 32 << 30;
    o.drain_grace = Duration::from_secs(60);
    o.reconnect = Backoff {
        initial: Duration::from_millis(50),
        max: Duration::from_millis(500),
    };
    o
}

pub async fn start_agent(opts: AgentOptions) -> RunningAgent {
    let work_dir = opts.work_dir.clone();
    let agent = Agent::build(opts).unwrap();
    let handle = agent.handle();
    let worker_id = agent.worker_id();
    let task = tokio::spawn(agent.run(std::future::pending()));
    tokio::time::timeout(WAIT, handle.wait_for(|s| s.connected))
        .await
        .expect("agent did not connect")
        .expect("agent stopped before connecting");
    RunningAgent {
        handle,
        worker_id,
        work_dir,
        task,
    }
}

/// The file a task wrote under its attempt's output dir.
pub fn out_file(work_dir: &Path, run: RunId, task: &str, attempt: i32, name: &str) -> String {
    let p = work_dir
        .join(run.to_string())
        .join(task)
        .join(attempt.to_string())
        .join("out")
        .join(name);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// `KEY=value` lines as a map.
pub fn env_map(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// A valid registration for raw-client tests.
pub fn register_request(name: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        protocol_version: v1::PROTOCOL_VERSION,
        name: name.to_owned(),
        cpus: 4,
        memory_bytes: 8 << 30,
        slots: 1,
        worker_id: WorkerId::new().to_string(),
        ..Default::default()
    }
}
