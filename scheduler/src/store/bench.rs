//! `trainyard bench store`: claim and transition throughput of a store.
//!
//! Every write goes through [`EngineStore::commit_batch`], the only way the
//! engine writes, so the numbers are those of the statements the engine runs.
//! Measures, on the database named by `url`, with `tasks` ready tasks:
//! - claiming them one at a time (a batch holding one `Write::Assign` of one
//!   task: a scheduler placing tasks one by one) and 64 per batch;
//! - single CAS transitions (a `Write::StartAttempt` batch, then a
//!   `Write::FinishAttempt` batch: one transaction each, the per-task cost
//!   of a chain step when nothing else shares the turn);
//! - one batched transition of all of them (`pending → ready`, a fan-out).
//!
//! On Postgres it works in a fresh schema (`bench_<uuid>`) it drops at the end;
//! on SQLite in the given file. Numbers only; nothing asserts on them.

use std::time::{Duration, Instant};

use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use trainyard_core::ids::{DagId, RunId, TaskId};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState, TriggerKind};

use super::error::{Result, StoreError};
use super::{
    Assignment, Backend, ConnectOptions, FinishAttempt, NewDagVersion, NewRun, NewTaskInstance,
    RunCreation, Store, TaskInstance, TaskTransition, Write, WriteBatch, backend_of, connect_with,
};

#[derive(Debug, Clone, Serialize)]
pub struct StoreBenchReport {
    pub backend: Backend,
    pub tasks: usize,
    /// Creating one run with all `tasks` task instances.
    pub create_run_ms: f64,
    /// One `Write::Assign` of one task per batch, repeated.
    pub claim_one_per_sec: f64,
    pub claim_one_p50_us: f64,
    pub claim_one_p99_us: f64,
    /// `Write::Assign` of 64 tasks per batch, in tasks per second.
    pub claim_batch64_tasks_per_sec: f64,
    /// `Write::StartAttempt` + `Write::FinishAttempt`, each one batch (one
    /// transaction with its event).
    pub transition_per_sec: f64,
    pub transition_p50_us: f64,
    pub transition_p99_us: f64,
    /// One `Write::Transitions` batch moving every task `pending → ready`.
    pub batch_transition_tasks_per_sec: f64,
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)].as_secs_f64() * 1e6
}

fn per_sec(n: usize, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// Runs the benchmark against `url` with `tasks` tasks per phase.
pub async fn bench_store(url: &str, tasks: usize) -> Result<StoreBenchReport> {
    let tasks = tasks.max(1);
    let backend = backend_of(url)?;
    let schema = match backend {
        Backend::Postgres => {
            let name = format!("bench_{}", uuid::Uuid::new_v4().simple());
            let admin = sqlx::PgPool::connect(url).await?;
            sqlx::query(&format!("CREATE SCHEMA {name}"))
                .execute(&admin)
                .await?;
            admin.close().await;
            Some(name)
        }
        Backend::Sqlite => None,
    };
    let options = ConnectOptions {
        pg_schema: schema.clone(),
        ..ConnectOptions::default()
    };
    let store = connect_with(url, options).await?;
    let report = run_phases(&*store, backend, tasks).await;
    store.close().await;
    if let Some(name) = schema {
        let admin = sqlx::PgPool::connect(url).await?;
        sqlx::query(&format!("DROP SCHEMA {name} CASCADE"))
            .execute(&admin)
            .await?;
        admin.close().await;
    }
    report
}

async fn new_run(
    store: &dyn Store,
    state: TaskState,
    tasks: usize,
) -> Result<(RunId, Vec<TaskInstance>)> {
    let dag = DagId::new("bench_store");
    let version = store
        .upsert_dag_version(
            NewDagVersion {
                dag_id: dag.clone(),
                content_hash: "bench".to_owned(),
                source: String::new(),
                spec: json!({}).into(),
                file_path: None,
            },
            Utc::now(),
        )
        .await?
        .version_id;
    let run = NewRun {
        id: RunId::new(),
        dag_id: dag,
        version_id: version,
        logical_date: None,
        trigger: TriggerKind::Manual,
        params: json!({}),
        idempotency_key: None,
        state: RunState::Running,
        tasks: (0..tasks)
            .map(|i| NewTaskInstance {
                task_id: TaskId::new(format!("t{i}")),
                state,
                max_attempts: 1,
                priority: 0,
                pool: "default".to_owned(),
                resources: json!({}),
            })
            .collect(),
    };
    match store.create_run(run, "bench", Utc::now()).await? {
        RunCreation::Created { run, tasks } => Ok((run.id, tasks)),
        RunCreation::AlreadyExists(_) => Err(StoreError::InvalidArgument(
            "bench run already exists".to_owned(),
        )),
    }
}

/// Commits one write as its own batch (its own transaction).
async fn commit_one(store: &dyn Store, write: Write) -> Result<()> {
    store
        .commit_batch(&WriteBatch::one(write, Utc::now()), "bench")
        .await
}

/// Assigns `tasks` (ready, never attempted) in batches of `per_batch`,
/// returning each batch's latency.
async fn assign_all(
    store: &dyn Store,
    tasks: &[TaskInstance],
    per_batch: usize,
) -> Result<Vec<Duration>> {
    let mut latencies = Vec::with_capacity(tasks.len().div_ceil(per_batch));
    for chunk in tasks.chunks(per_batch) {
        let list = chunk
            .iter()
            .map(|t| Assignment {
                id: t.id,
                attempt: t.attempt,
                worker_id: None,
                gpus: Vec::new(),
            })
            .collect();
        let t = Instant::now();
        commit_one(store, Write::Assign(list)).await?;
        latencies.push(t.elapsed());
    }
    Ok(latencies)
}

async fn run_phases(store: &dyn Store, backend: Backend, tasks: usize) -> Result<StoreBenchReport> {
    // Claim one at a time.
    let started = Instant::now();
    let (_, ready) = new_run(store, TaskState::Ready, tasks).await?;
    let create_run = started.elapsed();
    let started = Instant::now();
    let mut claim_lat = assign_all(store, &ready, 1).await?;
    let claim_one = started.elapsed();

    // Start and finish each claimed attempt: two CAS transactions per task.
    let mut tr_lat = Vec::with_capacity(tasks * 2);
    let started = Instant::now();
    for c in &ready {
        let attempt = c.attempt + 1;
        let t = Instant::now();
        commit_one(store, Write::StartAttempt { id: c.id, attempt }).await?;
        tr_lat.push(t.elapsed());
        let t = Instant::now();
        let report = FinishAttempt {
            id: c.id,
            attempt,
            from: TaskState::Running,
            to: TaskState::Success,
            outcome: AttemptOutcome::Success,
            exit_code: Some(0),
            error: None,
            log_location: None,
            next_retry_at: None,
        };
        commit_one(store, Write::FinishAttempt(report)).await?;
        tr_lat.push(t.elapsed());
    }
    let transitions = started.elapsed();

    // Batched: every task pending → ready in one batch, then claim 64 at a time.
    let (_, pending) = new_run(store, TaskState::Pending, tasks).await?;
    let batch: Vec<_> = pending
        .iter()
        .map(|t| TaskTransition::new(t.id, TaskState::Pending, TaskState::Ready, 0))
        .collect();
    let moved = batch.len();
    let started = Instant::now();
    commit_one(store, Write::Transitions(batch)).await?;
    let batch_transition = started.elapsed();
    let started = Instant::now();
    assign_all(store, &pending, 64).await?;
    let claim_batch = started.elapsed();

    claim_lat.sort();
    tr_lat.sort();
    Ok(StoreBenchReport {
        backend,
        tasks,
        create_run_ms: create_run.as_secs_f64() * 1e3,
        claim_one_per_sec: per_sec(ready.len(), claim_one),
        claim_one_p50_us: percentile(&claim_lat, 0.5),
        claim_one_p99_us: percentile(&claim_lat, 0.99),
        claim_batch64_tasks_per_sec: per_sec(pending.len(), claim_batch),
        transition_per_sec: per_sec(tr_lat.len(), transitions),
        transition_p50_us: percentile(&tr_lat, 0.5),
        transition_p99_us: percentile(&tr_lat, 0.99),
        batch_transition_tasks_per_sec: per_sec(moved, batch_transition),
    })
}
