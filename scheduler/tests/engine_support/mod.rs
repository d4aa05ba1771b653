//! Shared helpers for the engine tests: a store (SQLite temp file or a fresh
//! Postgres schema, via the store suite's harness), a ManualClock, an engine
//! running on its own task, and an in-process fake worker that talks to the
//! engine only through its handle (the path the gRPC layer uses).
//!
//! Nothing here sleeps on the real clock to wait for the engine: waits are on
//! engine events, re-checking the store after each; a generous real-time
//! bound only turns a hang into a failure.
#![allow(dead_code, clippy::unwrap_used)]

pub mod faulty;
#[path = "../store_conformance/harness.rs"]
#[allow(dead_code, unused_imports)]
mod harness;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use sha2::Digest;
use tokio::sync::{broadcast, mpsc, oneshot};
use trainyard_core::ids::{DagId, RunId, WorkerId};
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::clock::ManualClock;
use trainyard_scheduler::engine::{
    Assignment, Engine, EngineEvent, EngineHandle, EngineOptions, GpuInventory, TaskResult,
    WorkerCommand, WorkerRegistration,
};
use trainyard_scheduler::store::{EngineStore, NewDagVersion, Store, TaskInstance};

pub use harness::TestDb;

/// Bound on any single wait (real time); only reached when a test is broken.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

pub struct Harness {
    pub db: TestDb,
    pub store: Arc<dyn Store>,
    pub clock: ManualClock,
    pub handle: EngineHandle,
    pub events: broadcast::Receiver<EngineEvent>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Harness {
    pub async fn sqlite(start: DateTime<Utc>) -> Self {
        Self::start(TestDb::sqlite().await, ManualClock::new(start), |_| {}).await
    }

    pub async fn postgres(start: DateTime<Utc>) -> Self {
        Self::start(TestDb::postgres().await, ManualClock::new(start), |_| {}).await
    }

    pub async fn start(
        db: TestDb,
        clock: ManualClock,
        tweak: impl FnOnce(&mut EngineOptions),
    ) -> Self {
        let store = db.store.clone();
        Self::start_on(db, store, clock, tweak).await
    }

    /// Like [`Harness::start`], with the engine on `engine_store` (e.g. a
    /// wrapper of `db.store`); the harness's own reads and DAG registrations
    /// go to `db.store`.
    pub async fn start_on(
        db: TestDb,
        engine_store: Arc<dyn EngineStore>,
        clock: ManualClock,
        tweak: impl FnOnce(&mut EngineOptions),
    ) -> Self {
        let store = db.store.clone();
        let mut opts = EngineOptions::new(engine_store, Arc::new(clock.clone()));
        // Tests that advance time by days would otherwise lose their silent fake workers.
        opts.lost_worker_timeout = Duration::from_secs(365 * 86_400);
        opts.timeout_grace = Duration::from_secs(10);
        tweak(&mut opts);
        let (engine, handle) = Engine::build(opts).await.unwrap();
        let events = handle.subscribe();
        let (stop, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            engine
                .run(async {
                    let _ = rx.await;
                })
                .await
                .unwrap();
        });
        Self {
            db,
            store,
            clock,
            handle,
            events,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Kills the engine task mid-flight (a crash), keeping the database.
    pub async fn crash(mut self) -> (TestDb, ManualClock) {
        if let Some(t) = self.task.take() {
            t.abort();
            let _ = t.await;
        }
        self.stop.take();
        (self.db, self.clock)
    }

    /// Registers a DAG from TOML through the store, as the loader does, and tells the engine.
    pub async fn add_dag(&self, toml: &str) -> DagId {
        let spec =
            trainyard_core::dag::parse_dag("test.toml", toml).unwrap_or_else(|e| panic!("{e}"));
        let id = DagId::new(spec.id.clone());
        let hash = format!("{:x}", sha2::Sha256::digest(toml.as_bytes()));
        self.store
            .upsert_dag_version(
                NewDagVersion {
                    dag_id: id.clone(),
                    content_hash: hash,
                    source: toml.to_owned(),
                    spec: trainyard_scheduler::store::SpecJson::encode(&spec).unwrap(),
                    file_path: None,
                },
                self.clock.now_utc(),
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

    /// Waits until `check` (re-evaluated after every engine event) holds.
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
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(e)) => panic!("engine events closed while waiting for {what}: {e}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
    }

    pub async fn wait_run(&mut self, run: RunId, state: RunState) {
        let store = self.store.clone();
        self.until(&format!("run {run} {state}"), || {
            let store = store.clone();
            async move { store.get_run(run).await.unwrap().state == state }
        })
        .await;
    }

    pub async fn wait_task(&mut self, run: RunId, task: &str, state: TaskState) -> TaskInstance {
        let store = self.store.clone();
        let task_owned = task.to_owned();
        self.until(&format!("task {task} {state}"), || {
            let store = store.clone();
            let task = task_owned.clone();
            async move { ti(&*store, run, &task).await.state == state }
        })
        .await;
        ti(&*self.store, run, task).await
    }

    /// Lets the engine drain what is queued (a bounded number of yields).
    pub async fn settle(&self) {
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        // A round trip through the command channel: everything before it is handled.
        let _ = self.handle.barrier().await;
    }

    pub async fn advance(&self, by: chrono::Duration) {
        self.clock.advance(by);
        self.settle().await;
    }

    pub async fn runs_of(&self, dag: &DagId) -> Vec<trainyard_scheduler::store::Run> {
        let page = self
            .store
            .list_runs(trainyard_scheduler::store::RunFilter {
                dag_id: Some(dag.clone()),
                states: vec![],
                before: None,
                limit: 1000,
            })
            .await
            .unwrap();
        let mut runs = page.runs;
        runs.sort_by_key(|r| r.id);
        runs
    }
}

pub async fn ti(store: &dyn Store, run: RunId, task: &str) -> TaskInstance {
    store
        .task_instances(run)
        .await
        .unwrap()
        .into_iter()
        .find(|t| t.task_id.as_str() == task)
        .unwrap_or_else(|| panic!("no task {task}"))
}

pub trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}
impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        trainyard_scheduler::clock::Clock::now(self)
    }
}

/// An in-process worker speaking to the engine through the handle only.
pub struct FakeWorker {
    pub id: WorkerId,
    pub rx: mpsc::Receiver<WorkerCommand>,
    pub handle: EngineHandle,
}

pub fn registration(name: &str, slots: u32, gpus: &[(&str, u64)]) -> WorkerRegistration {
    WorkerRegistration {
        id: None,
        name: name.to_owned(),
        labels: BTreeMap::new(),
        queues: vec![],
        cpus: 16.0,
        memory_bytes: 64 << 30,
        slots,
        gpus: gpus
            .iter()
            .enumerate()
            .map(|(i, (model, gib))| GpuInventory {
                index: i as u32,
                uuid: format!("GPU-{name}-{i}"),
                model: (*model).to_owned(),
                memory_bytes: gib << 30,
                healthy: true,
            })
            .collect(),
        credential: None,
    }
}

impl FakeWorker {
    pub async fn join(handle: &EngineHandle, reg: WorkerRegistration) -> Self {
        let id = handle.register_worker(reg).await.unwrap();
        let rx = handle.connect_worker(id, vec![]).await.unwrap().commands;
        Self {
            id,
            rx,
            handle: handle.clone(),
        }
    }

    pub async fn next(&mut self) -> WorkerCommand {
        tokio::time::timeout(WAIT, self.rx.recv())
            .await
            .expect("timed out waiting for a worker command")
            .expect("worker stream closed")
    }

    pub async fn next_assign(&mut self) -> Assignment {
        loop {
            if let WorkerCommand::Assign(a) = self.next().await {
                return a;
            }
        }
    }

    /// No command is waiting right now (after the engine settled).
    pub fn idle(&mut self) -> bool {
        self.rx.try_recv().is_err()
    }

    pub async fn start(&self, a: &Assignment) {
        self.handle
            .task_started(self.id, a.task_instance_id, a.attempt)
            .await
            .unwrap();
    }

    pub async fn finish(&self, a: &Assignment, result: TaskResult) {
        self.handle
            .task_finished(self.id, a.task_instance_id, a.attempt, result)
            .await
            .unwrap();
    }

    pub async fn succeed(&self, a: &Assignment) {
        self.start(a).await;
        self.finish(a, TaskResult::succeeded()).await;
    }

    pub async fn fail(&self, a: &Assignment) {
        self.start(a).await;
        self.finish(a, TaskResult::failed("exit 1")).await;
    }

    /// Runs every assignment to success until `run` is done.
    pub async fn run_all(&mut self, store: &dyn Store, run: RunId) {
        loop {
            if store.get_run(run).await.unwrap().state.is_terminal() {
                return;
            }
            let cmd = tokio::time::timeout(WAIT, self.rx.recv())
                .await
                .expect("stuck")
                .expect("closed");
            if let WorkerCommand::Assign(a) = cmd {
                self.succeed(&a).await;
            }
        }
    }
}
