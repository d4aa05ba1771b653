//! A test-only [`EngineStore`] wrapper (the one trait the engine takes) that
//! counts every call and can fail the N-th write: before it reaches the database (the write never happened) or
//! after it committed (the caller is told it failed although it landed — the
//! ambiguous case a lost connection produces). In the spirit of Temporal's
//! persistence fault injection: the engine must end every run exactly as it
//! would without the fault.
//!
//! It can also **poison** one task instance: every batch that carries a
//! write for it (any write, or only its report's metrics) is refused the way
//! the database refuses a constraint violation — deterministically, with a
//! real SQLSTATE / SQLite code (or, to test the classification's blind
//! spot, with an error that looks transient) — while every other batch
//! commits.
#![allow(dead_code, clippy::unwrap_used)]

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::TaskState;
use trainyard_scheduler::store::*;

/// Where the injected fault strikes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write is refused before it reaches the database.
    Before,
    /// The write commits, then the caller gets an error.
    After,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Read,
    Write,
}

/// Which writes of the poisoned task instance are refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoisonScope {
    /// Every write that names it (starts, ends, transitions, assignments…).
    AnyWrite,
    /// Only the metrics its report carries (a value the database refuses).
    ReportMetrics,
}

/// How the refusal looks to the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A check violation with the backend's real code (23514 / 275).
    CheckViolation,
    /// `database unavailable`: what the classification cannot tell apart
    /// from an outage (only repetition shows it is the batch's fault).
    LooksTransient,
}

#[derive(Debug, Clone, Copy)]
struct Poison {
    ti: TaskInstanceId,
    scope: PoisonScope,
    refusal: Refusal,
}

/// A database error as the drivers report a CHECK violation.
#[derive(Debug)]
struct CheckViolation {
    code: &'static str,
    message: String,
}

impl std::fmt::Display for CheckViolation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CheckViolation {}

impl sqlx::error::DatabaseError for CheckViolation {
    fn message(&self) -> &str {
        &self.message
    }

    fn code(&self) -> Option<Cow<'_, str>> {
        Some(Cow::Borrowed(self.code))
    }

    fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
        self
    }

    fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
        self
    }

    fn kind(&self) -> sqlx::error::ErrorKind {
        sqlx::error::ErrorKind::CheckViolation
    }
}

/// Whether `write` is one the poison refuses.
fn poisoned(write: &Write, p: &Poison) -> bool {
    let ti = p.ti;
    match (p.scope, write) {
        (PoisonScope::ReportMetrics, Write::Metrics { id, .. }) => *id == ti,
        (PoisonScope::ReportMetrics, _) => false,
        (PoisonScope::AnyWrite, w) => names(w).contains(&ti),
    }
}

/// The task instances a write names.
pub fn names(write: &Write) -> Vec<TaskInstanceId> {
    match write {
        Write::StartAttempt { id, .. }
        | Write::Metrics { id, .. }
        | Write::LogLocation { id, .. } => vec![*id],
        Write::FinishAttempt(f) => vec![f.id],
        Write::Transitions(ts) => ts.iter().map(|t| t.id).collect(),
        Write::Assign(a) => a.iter().map(|a| a.id).collect(),
        Write::Artifacts { producer: a, .. } | Write::ArtifactInputs { consumer: a, .. } => {
            vec![a.task_instance_id]
        }
        _ => Vec::new(),
    }
}

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn EngineStore>,
    writes: AtomicU64,
    reads: AtomicU64,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    plan: Mutex<Option<(u64, Fault)>>,
    injected: AtomicU64,
    poison: Mutex<Option<Poison>>,
    /// Batches the poison refused, and how many of them also carried
    /// writes for other task instances (other commands of the same turn).
    refused: AtomicU64,
    refused_shared: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn EngineStore>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            calls: Mutex::new(BTreeMap::new()),
            plan: Mutex::new(None),
            injected: AtomicU64::new(0),
            poison: Mutex::new(None),
            refused: AtomicU64::new(0),
            refused_shared: AtomicU64::new(0),
        })
    }

    /// Fails the `n`-th write call from now on (1-based, counted from the
    /// start of the store's life), once.
    pub fn fail_write(&self, n: u64, fault: Fault) {
        *self.plan.lock().unwrap() = Some((n, fault));
    }

    /// From now on, refuses every batch with a poisoned write for `ti`.
    pub fn poison(&self, ti: TaskInstanceId, scope: PoisonScope, refusal: Refusal) {
        *self.poison.lock().unwrap() = Some(Poison { ti, scope, refusal });
    }

    /// The database takes the poisoned task's writes again (the cause fixed).
    pub fn cure(&self) {
        *self.poison.lock().unwrap() = None;
    }

    /// Batches the poison refused so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::SeqCst)
    }

    /// Refused batches that also carried other task instances' writes.
    pub fn refused_shared(&self) -> u64 {
        self.refused_shared.load(Ordering::SeqCst)
    }

    /// The refusal for `batch` if the poison hits it.
    fn refuse(&self, batch: &WriteBatch) -> Option<StoreError> {
        let p = (*self.poison.lock().unwrap())?;
        if !batch.writes.iter().any(|(w, _)| poisoned(w, &p)) {
            return None;
        }
        self.refused.fetch_add(1, Ordering::SeqCst);
        let others = batch
            .writes
            .iter()
            .flat_map(|(w, _)| names(w))
            .any(|ti| ti != p.ti);
        if others {
            self.refused_shared.fetch_add(1, Ordering::SeqCst);
        }
        Some(match p.refusal {
            Refusal::LooksTransient => StoreError::Unavailable(format!(
                "injected: a batch writing task instance {} failed",
                p.ti
            )),
            Refusal::CheckViolation => {
                let code = match self.inner.backend() {
                    Backend::Postgres => "23514",
                    _ => "275",
                };
                StoreError::Database(sqlx::Error::Database(Box::new(CheckViolation {
                    code,
                    message: format!(
                        "new row for relation \"task_instances\" violates check constraint \
                         \"injected_poison\" (task instance {})",
                        p.ti
                    ),
                })))
            }
        })
    }

    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::SeqCst)
    }

    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::SeqCst)
    }

    pub fn injected(&self) -> u64 {
        self.injected.load(Ordering::SeqCst)
    }

    /// Calls per store method so far.
    pub fn calls(&self) -> BTreeMap<&'static str, u64> {
        self.calls.lock().unwrap().clone()
    }

    pub fn reset_counts(&self) {
        self.reads.store(0, Ordering::SeqCst);
        self.calls.lock().unwrap().clear();
    }

    fn before(&self, kind: Kind, name: &'static str) -> Result<bool> {
        *self.calls.lock().unwrap().entry(name).or_default() += 1;
        if kind == Kind::Read {
            self.reads.fetch_add(1, Ordering::SeqCst);
            return Ok(false);
        }
        let n = self.writes.fetch_add(1, Ordering::SeqCst) + 1;
        let hit = matches!(*self.plan.lock().unwrap(), Some((at, _)) if at == n);
        if !hit {
            return Ok(false);
        }
        self.injected.fetch_add(1, Ordering::SeqCst);
        match self.plan.lock().unwrap().map(|(_, f)| f) {
            Some(Fault::Before) => Err(StoreError::Unavailable(format!(
                "injected fault: write #{n} ({name}) refused before it reached the database"
            ))),
            _ => Ok(true),
        }
    }

    fn after<T>(&self, fail: bool, r: Result<T>) -> Result<T> {
        if fail && r.is_ok() {
            return Err(StoreError::Unavailable(
                "injected fault: the write committed but its answer was lost".into(),
            ));
        }
        r
    }
}

#[async_trait]
impl StoreBase for FaultyStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn pool_usage(&self) -> PoolUsage {
        self.inner.pool_usage()
    }

    fn transactions_committed(&self) -> u64 {
        self.inner.transactions_committed()
    }

    async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        self.inner.migration_status().await
    }
}

#[async_trait]
impl ReadStore for FaultyStore {
    async fn get_dag(&self, dag_id: &DagId) -> Result<Dag> {
        let fail = self.before(Kind::Read, "get_dag")?;
        let r = self.inner.get_dag(dag_id).await;
        self.after(fail, r)
    }

    async fn list_dags(&self) -> Result<Vec<Dag>> {
        let fail = self.before(Kind::Read, "list_dags")?;
        let r = self.inner.list_dags().await;
        self.after(fail, r)
    }

    async fn get_dag_version(&self, id: DagVersionId) -> Result<DagVersion> {
        let fail = self.before(Kind::Read, "get_dag_version")?;
        let r = self.inner.get_dag_version(id).await;
        self.after(fail, r)
    }

    async fn get_run(&self, id: RunId) -> Result<Run> {
        let fail = self.before(Kind::Read, "get_run")?;
        let r = self.inner.get_run(id).await;
        self.after(fail, r)
    }

    async fn list_runs(&self, filter: RunFilter) -> Result<RunPage> {
        let fail = self.before(Kind::Read, "list_runs")?;
        let r = self.inner.list_runs(filter).await;
        self.after(fail, r)
    }

    async fn active_runs(&self) -> Result<Vec<Run>> {
        let fail = self.before(Kind::Read, "active_runs")?;
        let r = self.inner.active_runs().await;
        self.after(fail, r)
    }

    async fn last_successful_run(&self, dag_id: &DagId) -> Result<Option<Run>> {
        let fail = self.before(Kind::Read, "last_successful_run")?;
        let r = self.inner.last_successful_run(dag_id).await;
        self.after(fail, r)
    }

    async fn last_scheduled_logical_date(&self, dag_id: &DagId) -> Result<Option<DateTime<Utc>>> {
        let fail = self.before(Kind::Read, "last_scheduled_logical_date")?;
        let r = self.inner.last_scheduled_logical_date(dag_id).await;
        self.after(fail, r)
    }

    async fn run_events(
        &self,
        run_id: RunId,
        after: Option<i64>,
        limit: u32,
    ) -> Result<Vec<Event>> {
        let fail = self.before(Kind::Read, "run_events")?;
        let r = self.inner.run_events(run_id, after, limit).await;
        self.after(fail, r)
    }

    async fn get_task_instance(&self, id: TaskInstanceId) -> Result<TaskInstance> {
        let fail = self.before(Kind::Read, "get_task_instance")?;
        let r = self.inner.get_task_instance(id).await;
        self.after(fail, r)
    }

    async fn task_instances(&self, run_id: RunId) -> Result<Vec<TaskInstance>> {
        let fail = self.before(Kind::Read, "task_instances")?;
        let r = self.inner.task_instances(run_id).await;
        self.after(fail, r)
    }

    async fn task_instances_in_state(
        &self,
        state: TaskState,
        limit: u32,
    ) -> Result<Vec<TaskInstance>> {
        let fail = self.before(Kind::Read, "task_instances_in_state")?;
        let r = self.inner.task_instances_in_state(state, limit).await;
        self.after(fail, r)
    }

    async fn attempts(&self, id: TaskInstanceId) -> Result<Vec<Attempt>> {
        let fail = self.before(Kind::Read, "attempts")?;
        let r = self.inner.attempts(id).await;
        self.after(fail, r)
    }

    async fn run_attempts(&self, run_id: RunId) -> Result<Vec<Attempt>> {
        let fail = self.before(Kind::Read, "run_attempts")?;
        let r = self.inner.run_attempts(run_id).await;
        self.after(fail, r)
    }

    async fn attempts_held_by_worker(&self, worker_id: WorkerId) -> Result<Vec<HeldAttempt>> {
        let fail = self.before(Kind::Read, "attempts_held_by_worker")?;
        let r = self.inner.attempts_held_by_worker(worker_id).await;
        self.after(fail, r)
    }

    async fn list_workers(&self) -> Result<Vec<Worker>> {
        let fail = self.before(Kind::Read, "list_workers")?;
        let r = self.inner.list_workers().await;
        self.after(fail, r)
    }

    async fn run_metrics(&self, run_id: RunId) -> Result<Vec<MetricPoint>> {
        let fail = self.before(Kind::Read, "run_metrics")?;
        let r = self.inner.run_metrics(run_id).await;
        self.after(fail, r)
    }

    async fn metric_series(
        &self,
        dag_id: &DagId,
        task_id: &TaskId,
        name: &str,
        limit: u32,
    ) -> Result<Vec<SeriesPoint>> {
        let fail = self.before(Kind::Read, "metric_series")?;
        let r = self.inner.metric_series(dag_id, task_id, name, limit).await;
        self.after(fail, r)
    }

    async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>> {
        let fail = self.before(Kind::Read, "run_artifacts")?;
        let r = self.inner.run_artifacts(run_id).await;
        self.after(fail, r)
    }
    async fn skipped_slots(&self, dag_id: &DagId, limit: u32) -> Result<Vec<SkippedSlotsRecord>> {
        let fail = self.before(Kind::Read, "skipped_slots")?;
        let r = self.inner.skipped_slots(dag_id, limit).await;
        self.after(fail, r)
    }
}

#[async_trait]
impl EngineStore for FaultyStore {
    async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
        let fail = self.before(Kind::Write, "commit_batch")?;
        if let Some(e) = self.refuse(batch) {
            return Err(e);
        }
        let r = self.inner.commit_batch(batch, actor).await;
        self.after(fail, r)
    }

    async fn create_run(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation> {
        let fail = self.before(Kind::Write, "create_run")?;
        let r = self.inner.create_run(run, actor, now).await;
        self.after(fail, r)
    }

    async fn set_dag_paused(&self, dag_id: &DagId, paused: bool, now: DateTime<Utc>) -> Result<()> {
        let fail = self.before(Kind::Write, "set_dag_paused")?;
        let r = self.inner.set_dag_paused(dag_id, paused, now).await;
        self.after(fail, r)
    }
}
