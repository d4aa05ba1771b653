//! Test databases for the conformance suite: a temp-file SQLite database, or
//! a fresh schema in the test Postgres (`TRAINYARD_TEST_DATABASE_URL`, default
//! `postgres://postgres@127.0.0.1:5432/test`). Postgres being down FAILS the
//! Postgres tests with a message saying how to start it; it never skips them.

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use serde_json::json;
use trainyard_core::ids::{DagId, RunId, TaskId};
use trainyard_core::ids::{TaskInstanceId, WorkerId};
use trainyard_core::state::WorkerState;
use trainyard_core::state::{RunState, TaskState, TriggerKind};
use trainyard_scheduler::store::{
    Assignment, Backend, ConnectOptions, EngineStore, FinishAttempt, NewDagVersion, NewRun,
    NewTaskInstance, NewWorker, Result, Run, RunCreation, RunTransition, Store, StoreError,
    TaskInstance, TaskTransition, Worker, Write, WriteBatch, connect_with,
};

pub const DEFAULT_PG_URL: &str = "postgres://postgres@127.0.0.1:5432/test";

pub fn pg_url() -> String {
    std::env::var("TRAINYARD_TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_PG_URL.to_owned())
}

pub struct TestDb {
    pub store: Arc<dyn Store>,
    pub backend: Backend,
    pub url: String,
    pub options: ConnectOptions,
    /// Postgres: the test's own schema (dropped by `cleanup`).
    pub schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let url = format!(
            "sqlite:{}?mode=rwc",
            dir.path().join("trainyard.db").display()
        );
        let options = ConnectOptions::default();
        let store = connect_with(&url, options.clone()).await.unwrap();
        Self {
            store,
            backend: Backend::Sqlite,
            url,
            options,
            schema: None,
            _dir: Some(dir),
        }
    }

    pub async fn postgres() -> Self {
        let url = pg_url();
        let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
        let admin = sqlx::PgPool::connect(&url).await.unwrap_or_else(|e| {
            panic!(
                "Postgres tests need a database at {url} (set TRAINYARD_TEST_DATABASE_URL, or start \
                 one: `docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`); \
                 connecting failed: {e}"
            )
        });
        sqlx::query(&format!("CREATE SCHEMA {schema}"))
            .execute(&admin)
            .await
            .unwrap();
        admin.close().await;
        let options = ConnectOptions {
            pg_schema: Some(schema.clone()),
            application_name: Some(schema.clone()),
            max_connections: 12,
            ..ConnectOptions::default()
        };
        let store = connect_with(&url, options.clone()).await.unwrap();
        Self {
            store,
            backend: Backend::Postgres,
            url,
            options,
            schema: Some(schema),
            _dir: None,
        }
    }

    /// A second, independent store on the same database (another scheduler replica).
    pub async fn replica(&self) -> Arc<dyn Store> {
        let options = ConnectOptions {
            migrate: false,
            max_connections: 2,
            ..self.options.clone()
        };
        connect_with(&self.url, options).await.unwrap()
    }

    /// Runs raw SQL on the test database (outside the store).
    pub async fn exec(&self, sql: &str) {
        match self.backend {
            Backend::Postgres => {
                let pool = self.pg_pool().await;
                sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
            }
            Backend::Sqlite => {
                let pool = sqlx::SqlitePool::connect(&self.url).await.unwrap();
                sqlx::query(sql).execute(&pool).await.unwrap();
                pool.close().await;
            }
        }
    }

    /// A raw pool on the test's schema (Postgres only).
    pub async fn pg_pool(&self) -> sqlx::PgPool {
        use std::str::FromStr;
        let schema = self.schema.clone().unwrap();
        let opts = sqlx::postgres::PgConnectOptions::from_str(&self.url)
            .unwrap()
            .options([("search_path", schema.as_str())]);
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .connect_with(opts)
            .await
            .unwrap()
    }

    pub async fn cleanup(self) {
        self.store.close().await;
        if let Some(schema) = &self.schema {
            let admin = sqlx::PgPool::connect(&self.url).await.unwrap();
            sqlx::query(&format!("DROP SCHEMA {schema} CASCADE"))
                .execute(&admin)
                .await
                .unwrap();
            admin.close().await;
        }
    }
}

/// A fixed, injected "now"; tests move it explicitly.
pub fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2025, 3, 30, 1, 0, 0).unwrap()
}

pub fn secs(n: i64) -> chrono::Duration {
    chrono::Duration::seconds(n)
}

/// Registers a DAG version and returns its id.
pub async fn seed_dag(store: &dyn Store, dag: &str) -> trainyard_core::ids::DagVersionId {
    store
        .upsert_dag_version(
            NewDagVersion {
                dag_id: DagId::new(dag),
                content_hash: format!("hash-{dag}"),
                source: format!("id = \"{dag}\""),
                spec: json!({"id": dag}).into(),
                file_path: Some(format!("dags/{dag}.toml")),
            },
            t0(),
        )
        .await
        .unwrap()
        .version_id
}

pub fn task(name: &str, state: TaskState) -> NewTaskInstance {
    NewTaskInstance {
        task_id: TaskId::new(name),
        state,
        max_attempts: 3,
        priority: 0,
        pool: "default".to_owned(),
        resources: json!({"cpus": 1}),
    }
}

pub fn manual_run(
    dag: &str,
    version: trainyard_core::ids::DagVersionId,
    tasks: Vec<NewTaskInstance>,
) -> NewRun {
    NewRun {
        id: RunId::new(),
        dag_id: DagId::new(dag),
        version_id: version,
        logical_date: None,
        trigger: TriggerKind::Manual,
        params: json!({}),
        idempotency_key: None,
        state: RunState::Running,
        tasks,
    }
}

/// Creates a running manual run of `n` tasks in `state`, named t0000….
pub async fn seed_run(
    store: &dyn Store,
    dag: &str,
    n: usize,
    state: TaskState,
) -> (Run, Vec<TaskInstance>) {
    let version = seed_dag(store, dag).await;
    let tasks = (0..n).map(|i| task(&format!("t{i:04}"), state)).collect();
    match store
        .create_run(manual_run(dag, version, tasks), "test", t0())
        .await
        .unwrap()
    {
        RunCreation::Created { run, tasks } => (run, tasks),
        RunCreation::AlreadyExists(r) => panic!("run {} already existed", r.id),
    }
}

/// The writes the suite makes, each as a one-write [`WriteBatch`] through
/// [`EngineStore::commit_batch`]: the store has no other way to change a
/// task, an attempt, a worker or a run's state, so the invariants proven here
/// are those of the SQL the engine's turns run.
#[allow(async_fn_in_trait)]
pub trait Writes: EngineStore {
    async fn commit_one(&self, write: Write, actor: &str, at: DateTime<Utc>) -> Result<()> {
        self.commit_batch(&WriteBatch::one(write, at), actor).await
    }

    /// A run's compare-and-set, then the run as it is now.
    async fn transition_run(
        &self,
        t: RunTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let id = t.id;
        self.commit_one(Write::Run(t), actor, now).await?;
        self.get_run(id).await
    }

    async fn transition_task(
        &self,
        t: TaskTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.commit_one(Write::Transitions(vec![t]), actor, now)
            .await
    }

    async fn transition_tasks(
        &self,
        ts: &[TaskTransition],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.commit_one(Write::Transitions(ts.to_vec()), actor, now)
            .await
    }

    /// `ready → assigned` for these tasks at the attempt they were read with.
    async fn assign(
        &self,
        tasks: &[&TaskInstance],
        worker: Option<WorkerId>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let list = tasks
            .iter()
            .map(|t| Assignment {
                id: t.id,
                attempt: t.attempt,
                worker_id: worker,
                gpus: Vec::new(),
            })
            .collect();
        self.commit_one(Write::Assign(list), actor, now).await
    }

    async fn start_attempt(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.commit_one(Write::StartAttempt { id, attempt }, actor, now)
            .await
    }

    async fn finish_attempt(
        &self,
        report: FinishAttempt,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        self.commit_one(Write::FinishAttempt(report), actor, now)
            .await
    }

    /// Registers the worker, then reads it back.
    async fn register_worker(&self, w: NewWorker, now: DateTime<Utc>) -> Result<Worker> {
        let id = w.id;
        self.commit_one(Write::RegisterWorker(w), "test", now)
            .await?;
        self.worker(id).await
    }

    /// Records a heartbeat, then reads the worker's state back.
    async fn heartbeat_worker(&self, id: WorkerId, now: DateTime<Utc>) -> Result<WorkerState> {
        self.commit_one(Write::Heartbeat { id }, "test", now)
            .await?;
        Ok(self.worker(id).await?.state)
    }

    async fn worker(&self, id: WorkerId) -> Result<Worker> {
        self.list_workers()
            .await?
            .into_iter()
            .find(|w| w.id == id)
            .ok_or_else(|| StoreError::NotFound {
                entity: "worker",
                id: id.to_string(),
            })
    }
}

impl<S: EngineStore + ?Sized> Writes for S {}
