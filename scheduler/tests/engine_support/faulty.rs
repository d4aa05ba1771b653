//! A test-only [`Store`] wrapper that counts every call and can fail the
//! N-th write: before it reaches the database (the write never happened) or
//! after it committed (the caller is told it failed although it landed — the
//! ambiguous case a lost connection produces). In the spirit of Temporal's
//! persistence fault injection: the engine must end every run exactly as it
//! would without the fault.
#![allow(dead_code, clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{TaskState, WorkerState};
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

#[derive(Debug)]
pub struct FaultyStore {
    inner: Arc<dyn Store>,
    writes: AtomicU64,
    reads: AtomicU64,
    calls: Mutex<BTreeMap<&'static str, u64>>,
    plan: Mutex<Option<(u64, Fault)>>,
    injected: AtomicU64,
}

impl FaultyStore {
    pub fn new(inner: Arc<dyn Store>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            writes: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            calls: Mutex::new(BTreeMap::new()),
            plan: Mutex::new(None),
            injected: AtomicU64::new(0),
        })
    }

    /// Fails the `n`-th write call from now on (1-based, counted from the
    /// start of the store's life), once.
    pub fn fail_write(&self, n: u64, fault: Fault) {
        *self.plan.lock().unwrap() = Some((n, fault));
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
impl Store for FaultyStore {
    fn backend(&self) -> Backend {
        self.inner.backend()
    }

    fn pool_usage(&self) -> PoolUsage {
        self.inner.pool_usage()
    }

    fn transactions_committed(&self) -> u64 {
        self.inner.transactions_committed()
    }

    async fn commit_batch(&self, batch: &WriteBatch, actor: &str) -> Result<()> {
        let fail = self.before(Kind::Write, "commit_batch")?;
        let r = self.inner.commit_batch(batch, actor).await;
        self.after(fail, r)
    }

    async fn migrate(&self) -> Result<()> {
        self.inner.migrate().await
    }

    async fn migration_status(&self) -> Result<Vec<MigrationStatus>> {
        self.inner.migration_status().await
    }

    async fn close(&self) {
        self.inner.close().await
    }

    async fn upsert_dag_version(
        &self,
        version: NewDagVersion,
        now: DateTime<Utc>,
    ) -> Result<UpsertedVersion> {
        let fail = self.before(Kind::Write, "upsert_dag_version")?;
        let r = self.inner.upsert_dag_version(version, now).await;
        self.after(fail, r)
    }

    async fn record_parse_error(
        &self,
        dag_id: &DagId,
        file_path: Option<&str>,
        error: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "record_parse_error")?;
        let r = self
            .inner
            .record_parse_error(dag_id, file_path, error, now)
            .await;
        self.after(fail, r)
    }

    async fn set_dag_paused(&self, dag_id: &DagId, paused: bool, now: DateTime<Utc>) -> Result<()> {
        let fail = self.before(Kind::Write, "set_dag_paused")?;
        let r = self.inner.set_dag_paused(dag_id, paused, now).await;
        self.after(fail, r)
    }

    async fn deactivate_dag(&self, dag_id: &DagId, now: DateTime<Utc>) -> Result<()> {
        let fail = self.before(Kind::Write, "deactivate_dag")?;
        let r = self.inner.deactivate_dag(dag_id, now).await;
        self.after(fail, r)
    }

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

    async fn create_run_and_wake(
        &self,
        run: NewRun,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<RunCreation> {
        let fail = self.before(Kind::Write, "create_run_and_wake")?;
        let r = self.inner.create_run_and_wake(run, actor, now).await;
        self.after(fail, r)
    }

    async fn set_dag_paused_and_wake(
        &self,
        dag_id: &DagId,
        paused: bool,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "set_dag_paused_and_wake")?;
        let r = self
            .inner
            .set_dag_paused_and_wake(dag_id, paused, now)
            .await;
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

    async fn transition_run(
        &self,
        transition: RunTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Run> {
        let fail = self.before(Kind::Write, "transition_run")?;
        let r = self.inner.transition_run(transition, actor, now).await;
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

    async fn transition_task(
        &self,
        transition: TaskTransition,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "transition_task")?;
        let r = self.inner.transition_task(transition, actor, now).await;
        self.after(fail, r)
    }

    async fn transition_tasks(
        &self,
        transitions: &[TaskTransition],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "transition_tasks")?;
        let r = self.inner.transition_tasks(transitions, actor, now).await;
        self.after(fail, r)
    }

    async fn claim_ready(
        &self,
        filter: &ClaimFilter,
        limit: u32,
        worker_id: Option<WorkerId>,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        let fail = self.before(Kind::Write, "claim_ready")?;
        let r = self
            .inner
            .claim_ready(filter, limit, worker_id, actor, now)
            .await;
        self.after(fail, r)
    }

    async fn assign_tasks(
        &self,
        assignments: &[Assignment],
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<ClaimedTask>> {
        let fail = self.before(Kind::Write, "assign_tasks")?;
        let r = self.inner.assign_tasks(assignments, actor, now).await;
        self.after(fail, r)
    }

    async fn ready_tasks(&self, filter: &ClaimFilter, limit: u32) -> Result<Vec<TaskInstance>> {
        let fail = self.before(Kind::Read, "ready_tasks")?;
        let r = self.inner.ready_tasks(filter, limit).await;
        self.after(fail, r)
    }

    async fn due_retries(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<TaskInstance>> {
        let fail = self.before(Kind::Read, "due_retries")?;
        let r = self.inner.due_retries(now, limit).await;
        self.after(fail, r)
    }

    async fn next_retry_time(&self) -> Result<Option<DateTime<Utc>>> {
        let fail = self.before(Kind::Read, "next_retry_time")?;
        let r = self.inner.next_retry_time().await;
        self.after(fail, r)
    }

    async fn start_attempt(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "start_attempt")?;
        let r = self.inner.start_attempt(id, attempt, actor, now).await;
        self.after(fail, r)
    }

    async fn finish_attempt(
        &self,
        report: FinishAttempt,
        actor: &str,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "finish_attempt")?;
        let r = self.inner.finish_attempt(report, actor, now).await;
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

    async fn register_worker(&self, worker: NewWorker, now: DateTime<Utc>) -> Result<Worker> {
        let fail = self.before(Kind::Write, "register_worker")?;
        let r = self.inner.register_worker(worker, now).await;
        self.after(fail, r)
    }

    async fn heartbeat_worker(&self, id: WorkerId, now: DateTime<Utc>) -> Result<WorkerState> {
        let fail = self.before(Kind::Write, "heartbeat_worker")?;
        let r = self.inner.heartbeat_worker(id, now).await;
        self.after(fail, r)
    }

    async fn set_worker_state(
        &self,
        id: WorkerId,
        state: WorkerState,
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "set_worker_state")?;
        let r = self.inner.set_worker_state(id, state, now).await;
        self.after(fail, r)
    }

    async fn mark_worker_lost(
        &self,
        id: WorkerId,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<HeldAttempt>> {
        let fail = self.before(Kind::Write, "mark_worker_lost")?;
        let r = self.inner.mark_worker_lost(id, reason, now).await;
        self.after(fail, r)
    }

    async fn list_workers(&self) -> Result<Vec<Worker>> {
        let fail = self.before(Kind::Read, "list_workers")?;
        let r = self.inner.list_workers().await;
        self.after(fail, r)
    }

    async fn stale_workers(&self, cutoff: DateTime<Utc>) -> Result<Vec<Worker>> {
        let fail = self.before(Kind::Read, "stale_workers")?;
        let r = self.inner.stale_workers(cutoff).await;
        self.after(fail, r)
    }

    async fn record_metrics(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        metrics: &[(String, f64)],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "record_metrics")?;
        let r = self.inner.record_metrics(id, attempt, metrics, now).await;
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

    async fn record_artifacts(
        &self,
        producer: &AttemptOf,
        artifacts: &[NewArtifact],
        now: DateTime<Utc>,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "record_artifacts")?;
        let r = self.inner.record_artifacts(producer, artifacts, now).await;
        self.after(fail, r)
    }

    async fn record_artifact_inputs(
        &self,
        consumer: &AttemptOf,
        keys: &[String],
        now: DateTime<Utc>,
    ) -> Result<u64> {
        let fail = self.before(Kind::Write, "record_artifact_inputs")?;
        let r = self.inner.record_artifact_inputs(consumer, keys, now).await;
        self.after(fail, r)
    }

    async fn run_artifacts(&self, run_id: RunId) -> Result<Vec<StoredArtifact>> {
        let fail = self.before(Kind::Read, "run_artifacts")?;
        let r = self.inner.run_artifacts(run_id).await;
        self.after(fail, r)
    }

    async fn set_attempt_log_location(
        &self,
        id: TaskInstanceId,
        attempt: i32,
        location: &str,
    ) -> Result<()> {
        let fail = self.before(Kind::Write, "set_attempt_log_location")?;
        let r = self
            .inner
            .set_attempt_log_location(id, attempt, location)
            .await;
        self.after(fail, r)
    }
}
