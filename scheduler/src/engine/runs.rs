//! Runs: DAG registrations and their cron schedules, creating runs (cron,
//! manual trigger, backfill), starting queued runs under `max_active_runs`,
//! the overlap policy, and finishing runs.

use std::collections::HashSet;

use chrono::{DateTime, Duration, Utc};
use serde_json::Value;
use tracing::{info, instrument, warn};
use trainyard_core::cron::fire_times;
use trainyard_core::dag::{DagSpec, Overlap, check_logical_date};
use trainyard_core::ids::{DagId, DagVersionId, RunId};
use trainyard_core::state::{RunState, TaskState, TriggerKind};

use super::cron_slots::{self, CronSettings};
use super::progress::metrics_by_task;
use super::state::{ActiveRun, DagEntry, params_json};
use super::timers::TimerKind;
use super::{Core, EngineError, EngineEvent, Result};
use crate::store::{
    NewRun, NewTaskInstance, Run, RunCreation, RunFilter, RunTransition, SkippedSlots, Write,
};

/// Most runs one backfill may create.
const MAX_BACKFILL: usize = 10_000;

impl Core {
    /// Re-reads a DAG's registration (version, paused, active) and re-arms its schedule.
    #[instrument(skip(self), err)]
    pub(super) async fn dag_changed(&mut self, id: &DagId) -> Result<()> {
        let dag = match self.store.get_dag(id).await {
            Ok(d) => d,
            Err(e) if e.is_not_found() => {
                self.dags.remove(id);
                return Err(EngineError::DagNotFound(id.clone()));
            }
            Err(e) => return Err(e.into()),
        };
        let spec = match dag.current_version_id {
            Some(v) => Some(self.spec_of(v).await?),
            None => None,
        };
        let schedule = spec
            .as_ref()
            .and_then(|s| s.schedule.as_deref())
            .and_then(|e| {
                trainyard_core::cron::parse(e)
                    .map_err(|err| warn!(dag = %id, error = %err, "schedule does not parse"))
                    .ok()
            });
        let (cursor, generation) = match self.dags.get(id) {
            Some(old) => (old.cursor, old.generation + 1),
            None => (self.store.last_scheduled_logical_date(id).await?, 1),
        };
        self.dags.insert(
            id.clone(),
            DagEntry {
                paused: dag.paused,
                active: dag.active,
                registered_at: dag.created_at,
                version_id: dag.current_version_id,
                spec,
                schedule,
                cursor,
                generation,
            },
        );
        self.schedule_dag(id).await;
        Ok(())
    }

    pub(super) async fn set_paused(&mut self, id: &DagId, paused: bool) -> Result<()> {
        // A direct write: the re-read below must see it.
        self.before_direct_write().await?;
        match self
            .store
            .set_dag_paused(id, paused, self.clock.now())
            .await
        {
            Err(e) if e.is_not_found() => return Err(EngineError::DagNotFound(id.clone())),
            r => r?,
        }
        info!(dag = %id, paused, "dag pause changed");
        let r = self.dag_changed(id).await;
        self.after_direct_write();
        r
    }

    /// Creates the runs of due slots and arms the timer for the next one.
    pub(super) async fn schedule_dag(&mut self, id: &DagId) {
        let now = self.clock.now();
        let Some(entry) = self.dags.get(id) else {
            return;
        };
        if !entry.scheduling() {
            return;
        }
        let (Some(spec), Some(schedule)) = (entry.spec.clone(), entry.schedule.clone()) else {
            return;
        };
        let settings = CronSettings {
            schedule: &schedule,
            tz: spec.tz(),
            start_date: spec.start_date,
            end_date: spec.end_date,
            catchup: spec.catchup,
            catchup_limit: self.opts.catchup_limit,
        };
        let plan = cron_slots::plan(&settings, entry.cursor, entry.registered_at, now);
        let (version, generation) = (entry.version_id, entry.generation);
        if plan.dropped > 0 {
            info!(dag = %id, dropped = plan.dropped, catchup = spec.catchup, "missed slots dropped");
        }
        // With catchup on, a slot left out is one the user asked to run:
        // recorded (in this turn's batch), with the range, so it can be
        // backfilled. Without catchup only the latest slot is meant to run.
        if spec.catchup
            && let Some((first, last)) = plan.dropped_range
        {
            warn!(dag = %id, skipped = plan.dropped, %first, %last, limit = self.opts.catchup_limit,
                "catch-up skipped slots beyond the catch-up limit; backfill them if they are needed");
            self.write(Write::SkippedSlots(SkippedSlots {
                dag_id: id.clone(),
                slots: plan.dropped as u64,
                first,
                last,
                reason: format!(
                    "beyond the catch-up limit of {} (--catchup-limit); `trainyard backfill` runs them",
                    self.opts.catchup_limit
                ),
            }));
        }
        for slot in plan.due {
            if let Some(v) = version {
                self.slot_due(id, &spec, v, slot).await;
            }
            if let Some(e) = self.dags.get_mut(id) {
                e.cursor = Some(slot);
            }
        }
        if let Some(next) = plan.next {
            self.timers.arm(
                next,
                TimerKind::Cron {
                    dag_id: id.clone(),
                    generation,
                },
            );
        }
    }

    /// One cron slot came due: apply the overlap policy and create its run.
    #[instrument(skip(self, spec, version))]
    async fn slot_due(
        &mut self,
        id: &DagId,
        spec: &DagSpec,
        version: DagVersionId,
        slot: DateTime<Utc>,
    ) {
        let max = spec.max_active_runs.max(1) as usize;
        let mut active: Vec<(RunId, RunState)> = self
            .runs
            .values()
            .filter(|r| r.run.dag_id == *id && !r.run.state.is_terminal())
            .map(|r| (r.run.id, r.run.state))
            .collect();
        active.sort_by_key(|(id, _)| *id);
        if active.len() >= max {
            let skip = match spec.overlap {
                Overlap::Skip => true,
                Overlap::Buffer => {
                    active
                        .iter()
                        .filter(|(_, s)| *s == RunState::Queued)
                        .count()
                        >= max
                }
                Overlap::CancelPrevious => {
                    for (old, _) in active.iter().take(active.len() + 1 - max) {
                        if let Err(e) = self
                            .cancel_run(*old, "cancelled: a newer scheduled run replaced it")
                            .await
                        {
                            warn!(run = %old, error = %e, "could not cancel the previous run");
                        }
                    }
                    false
                }
            };
            if skip {
                info!(dag = %id, %slot, "slot skipped: previous run still active");
                self.emit(EngineEvent::SlotSkipped {
                    dag_id: id.clone(),
                    logical_date: slot,
                });
                return;
            }
        }
        let params = params_json(&spec.params);
        if let Err(e) = self
            .create_run(
                id,
                spec,
                version,
                TriggerKind::Schedule,
                Some(slot),
                params,
                None,
            )
            .await
        {
            warn!(dag = %id, %slot, error = %e, "could not create the scheduled run");
        }
    }

    /// Inserts a run with all its tasks pending and loads it; returns the run
    /// that holds the slot / idempotency key if there already is one.
    #[allow(clippy::too_many_arguments)]
    async fn create_run(
        &mut self,
        dag: &DagId,
        spec: &DagSpec,
        version: DagVersionId,
        trigger: TriggerKind,
        logical_date: Option<DateTime<Utc>>,
        params: Value,
        idempotency_key: Option<String>,
    ) -> Result<RunId> {
        let new = new_run(
            dag,
            spec,
            version,
            trigger,
            logical_date,
            params,
            idempotency_key,
        );
        // Loaded before the write: once the run exists, nothing may fail.
        let spec = self.spec_of(version).await?;
        self.before_direct_write().await?;
        match self
            .store
            .create_run(new, self.actor(), self.clock.now())
            .await?
        {
            RunCreation::Created { run, tasks } => {
                let id = run.id;
                info!(dag = %dag, run = %id, ?logical_date, %trigger, "run created");
                self.insert_run(ActiveRun::new(run, spec, tasks, Default::default()));
                self.emit(EngineEvent::RunState {
                    run_id: id,
                    dag_id: dag.clone(),
                    state: RunState::Queued,
                });
                self.start_pending = true;
                self.after_direct_write();
                Ok(id)
            }
            RunCreation::AlreadyExists(run) => {
                // The first creation may have committed while its answer was
                // lost: the run exists but this engine never loaded it.
                let id = run.id;
                if !run.state.is_terminal() && !self.runs.contains_key(&id) {
                    self.load_run(run).await?;
                    self.start_pending = true;
                    self.after_direct_write();
                }
                Ok(id)
            }
        }
    }

    /// The DAG entry for a trigger, reading it from the store if not known yet.
    async fn runnable_dag(
        &mut self,
        id: &DagId,
    ) -> Result<(std::sync::Arc<DagSpec>, DagVersionId)> {
        if !self.dags.contains_key(id) {
            self.dag_changed(id).await?;
        }
        let entry = self
            .dags
            .get(id)
            .ok_or_else(|| EngineError::DagNotFound(id.clone()))?;
        match (entry.active, &entry.spec, entry.version_id) {
            (true, Some(spec), Some(v)) => Ok((spec.clone(), v)),
            _ => Err(EngineError::DagInactive(id.clone())),
        }
    }

    #[instrument(skip(self, params), err)]
    pub(super) async fn trigger(
        &mut self,
        id: &DagId,
        params: serde_json::Map<String, Value>,
        idempotency_key: Option<String>,
        logical_date: Option<DateTime<Utc>>,
    ) -> Result<RunId> {
        let (spec, version) = self.runnable_dag(id).await?;
        let params = manual_params(id, &spec, &params)?;
        let date = checked_logical_date(logical_date.unwrap_or_else(|| self.clock.now()))?;
        self.create_run(
            id,
            &spec,
            version,
            TriggerKind::Manual,
            Some(date),
            params,
            idempotency_key,
        )
        .await
    }

    #[instrument(skip(self), err)]
    pub(super) async fn backfill(
        &mut self,
        id: &DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<RunId>> {
        checked_logical_date(from)?;
        checked_logical_date(to)?;
        if from > to {
            return Err(EngineError::InvalidRequest(format!(
                "backfill range is empty: {from} is after {to}"
            )));
        }
        let (spec, version) = self.runnable_dag(id).await?;
        let schedule = self
            .dags
            .get(id)
            .and_then(|d| d.schedule.clone())
            .ok_or_else(|| EngineError::NoSchedule(id.clone()))?;
        let slots: Vec<DateTime<Utc>> = fire_times(
            &schedule,
            spec.tz(),
            from - Duration::nanoseconds(1),
            None,
            Some(to),
        )
        .take(MAX_BACKFILL + 1)
        .collect();
        if slots.len() > MAX_BACKFILL {
            return Err(EngineError::InvalidRequest(format!(
                "backfill of more than {MAX_BACKFILL} slots; split the range"
            )));
        }
        let taken = self.taken_logical_dates(id, from, to).await?;
        let params = params_json(&spec.params);
        let mut created = Vec::new();
        for slot in slots.into_iter().filter(|s| !taken.contains(s)) {
            let key = format!("backfill:{}", slot.to_rfc3339());
            let run = self
                .create_run(
                    id,
                    &spec,
                    version,
                    TriggerKind::Backfill,
                    Some(slot),
                    params.clone(),
                    Some(key),
                )
                .await?;
            created.push(run);
        }
        info!(dag = %id, runs = created.len(), "backfill created");
        Ok(created)
    }

    /// Logical dates in `[from, to]` that already have a run of the DAG.
    async fn taken_logical_dates(
        &self,
        id: &DagId,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<HashSet<DateTime<Utc>>> {
        let mut taken = HashSet::new();
        let mut before = None;
        loop {
            let page = self
                .store
                .list_runs(RunFilter {
                    dag_id: Some(id.clone()),
                    states: vec![],
                    before,
                    limit: 1000,
                })
                .await?;
            taken.extend(
                page.runs
                    .iter()
                    .filter_map(|r| r.logical_date)
                    .filter(|d| *d >= from && *d <= to),
            );
            match page.next_cursor {
                Some(c) => before = Some(c),
                None => return Ok(taken),
            }
        }
    }

    /// Starts queued runs, oldest first, while their DAG is under max_active_runs.
    /// Returns whether it started any.
    pub(super) async fn start_queued_runs(&mut self) -> bool {
        let mut queued: Vec<(RunId, DagId)> = self
            .runs
            .values()
            .filter(|r| r.run.state == RunState::Queued && !self.quarantine.holds_run(r.run.id))
            .map(|r| (r.run.id, r.run.dag_id.clone()))
            .collect();
        if queued.is_empty() {
            return false;
        }
        let mut started = false;
        queued.sort();
        for (run_id, dag) in queued {
            let max = self.runs[&run_id].spec.max_active_runs.max(1) as usize;
            let running = self
                .runs
                .values()
                .filter(|r| r.run.dag_id == dag && r.run.state == RunState::Running)
                .count();
            if running >= max {
                continue;
            }
            let t = RunTransition {
                id: run_id,
                from: RunState::Queued,
                to: RunState::Running,
                reason: None,
            };
            self.write(Write::Run(t));
            self.set_run_state(run_id, RunState::Running);
            let pending: Vec<usize> = (0..self.runs[&run_id].tasks.len()).collect();
            self.advance(run_id, pending).await;
            started = true;
            if self.one_at_a_time {
                // One start per commit (isolation); the next settle goes on.
                self.start_pending = true;
                break;
            }
        }
        started
    }

    /// Success when every task succeeded or was skipped, else failed.
    pub(super) async fn finish_run_if_done(&mut self, run_id: RunId) {
        let Some(run) = self.runs.get(&run_id) else {
            return;
        };
        if run.run.state != RunState::Running || !run.all_terminal() {
            return;
        }
        let ok = run
            .tasks
            .iter()
            .all(|t| matches!(t.state, TaskState::Success | TaskState::Skipped));
        let to = if ok {
            RunState::Success
        } else {
            RunState::Failed
        };
        self.end_run(run_id, RunState::Running, to, None);
    }

    /// Moves a run to a terminal state and forgets it.
    pub(super) fn end_run(
        &mut self,
        run_id: RunId,
        from: RunState,
        to: RunState,
        reason: Option<&str>,
    ) {
        let t = RunTransition {
            id: run_id,
            from,
            to,
            reason: reason.map(str::to_owned),
        };
        self.write(Write::Run(t));
        self.set_run_state(run_id, to);
        info!(run = %run_id, state = %to, "run finished");
        if let Some(run) = self.runs.remove(&run_id) {
            for t in &run.tasks {
                self.ti_index.remove(&t.ti);
                if t.state == TaskState::Ready {
                    self.ready.remove(&(-t.priority, t.ready_seq, t.ti));
                }
            }
        }
        self.start_pending = true;
    }

    pub(super) fn set_run_state(&mut self, run_id: RunId, state: RunState) {
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.run.state = state;
            let dag_id = run.run.dag_id.clone();
            self.emit(EngineEvent::RunState {
                run_id,
                dag_id,
                state,
            });
        }
    }

    /// Puts a run in memory and indexes its tasks (ready ones join the queue).
    pub(super) fn insert_run(&mut self, run: ActiveRun) {
        let run_id = run.run.id;
        let dag_id = run.run.dag_id.clone();
        for (i, t) in run.tasks.iter().enumerate() {
            self.ti_index.insert(t.ti, (run_id, i));
            if t.state.holds_worker() {
                *self.active_by_dag.entry(dag_id.clone()).or_default() += 1;
                *self.active_by_pool.entry(t.pool.clone()).or_default() += 1;
            }
        }
        self.runs.insert(run_id, run);
        let ready: Vec<usize> = self.runs[&run_id]
            .tasks
            .iter()
            .enumerate()
            .filter(|(_, t)| t.state == TaskState::Ready)
            .map(|(i, _)| i)
            .collect();
        for i in ready {
            self.ready_seq += 1;
            let seq = self.ready_seq;
            if let Some(run) = self.runs.get_mut(&run_id) {
                let t = &mut run.tasks[i];
                t.ready_seq = seq;
                self.ready.insert((-t.priority, seq, t.ti));
                self.dirty = true;
            }
        }
    }

    /// Loads a run (and its tasks and metrics) from the store into memory.
    pub(super) async fn load_run(&mut self, run: Run) -> Result<()> {
        let spec = self.spec_of(run.version_id).await?;
        let tasks = self.store.task_instances(run.id).await?;
        let metrics = metrics_by_task(self.store.run_metrics(run.id).await?);
        self.insert_run(ActiveRun::new(run, spec, tasks, metrics));
        Ok(())
    }

    /// Replaces a run's in-memory picture by the store's (after a conflict:
    /// the store's word wins, e.g. a turn committed although its answer was
    /// lost). Everything is read first; memory changes only once every read
    /// succeeded. Worker holds follow the store: a hold whose attempt the
    /// store has ended is released; an attempt the store assigned that this
    /// engine never sent (its turn was rolled back) is handed back. The next
    /// turn then decides the run's pending tasks again and dispatches.
    pub(super) async fn resync_run(&mut self, run_id: RunId) -> Result<()> {
        let row = match self.store.get_run(run_id).await {
            Ok(r) => Some(r),
            Err(e) if e.is_not_found() => None,
            Err(e) => return Err(e.into()),
        };
        let fresh = match row {
            Some(run) if !run.state.is_terminal() => {
                let spec = self.spec_of(run.version_id).await?;
                let tasks = self.store.task_instances(run.id).await?;
                let metrics = metrics_by_task(self.store.run_metrics(run.id).await?);
                Some(ActiveRun::new(run, spec, tasks, metrics))
            }
            _ => None,
        };
        // What memory placed: (ti, attempt) → worker, GPUs, deadline.
        let placed: std::collections::HashMap<_, _> = self
            .runs
            .get(&run_id)
            .map(|old| {
                old.tasks
                    .iter()
                    .filter(|t| t.state.holds_worker())
                    .filter_map(|t| {
                        Some(((t.ti, t.attempt), (t.worker?, t.gpus.clone(), t.deadline)))
                    })
                    .collect()
            })
            .unwrap_or_default();
        self.forget_run(run_id);
        let Some(mut fresh) = fresh else {
            for ((ti, attempt), (worker, _, _)) in placed {
                self.release_hold(worker, ti, attempt);
            }
            return Ok(());
        };
        let mut kept = std::collections::HashSet::new();
        for i in 0..fresh.tasks.len() {
            let n = &mut fresh.tasks[i];
            if !n.state.holds_worker() {
                continue;
            }
            match placed.get(&(n.ti, n.attempt)) {
                Some((worker, gpus, deadline)) => {
                    n.worker = Some(*worker);
                    n.gpus = gpus.clone();
                    n.deadline = *deadline;
                    kept.insert((n.ti, n.attempt));
                }
                None => self.orphaned.push((run_id, n.ti, n.attempt, n.state)),
            }
        }
        for ((ti, attempt), (worker, _, _)) in placed {
            if !kept.contains(&(ti, attempt)) {
                self.release_hold(worker, ti, attempt);
            }
        }
        self.insert_run(fresh);
        self.start_pending = true;
        self.dirty = true;
        self.redecide.push(run_id);
        Ok(())
    }

    /// Drops a run from memory with its index entries and counters.
    pub(super) fn forget_run(&mut self, run_id: RunId) {
        let Some(old) = self.runs.remove(&run_id) else {
            return;
        };
        for t in &old.tasks {
            self.ti_index.remove(&t.ti);
            if t.state == TaskState::Ready {
                self.ready.remove(&(-t.priority, t.ready_seq, t.ti));
            }
            if t.state.holds_worker() {
                if let Some(c) = self.active_by_dag.get_mut(&old.run.dag_id) {
                    *c = c.saturating_sub(1);
                }
                if let Some(c) = self.active_by_pool.get_mut(&t.pool) {
                    *c = c.saturating_sub(1);
                }
            }
        }
    }
}

/// A run of `spec` with every task pending, as both the engine and a standby
/// replica (which writes runs through the store directly) create it.
pub(crate) fn new_run(
    dag: &DagId,
    spec: &DagSpec,
    version: DagVersionId,
    trigger: TriggerKind,
    logical_date: Option<DateTime<Utc>>,
    params: Value,
    idempotency_key: Option<String>,
) -> NewRun {
    let tasks = spec
        .task_ids_in_topological_order()
        .into_iter()
        .filter_map(|t| spec.tasks.get(&t))
        .map(|t| NewTaskInstance {
            task_id: t.id.as_str().into(),
            state: TaskState::Pending,
            max_attempts: i32::try_from(t.retries)
                .unwrap_or(i32::MAX - 1)
                .saturating_add(1),
            priority: t.priority,
            pool: t.pool.clone(),
            resources: serde_json::to_value(&t.resources).unwrap_or_default(),
        })
        .collect();
    NewRun {
        id: RunId::new(),
        dag_id: dag.clone(),
        version_id: version,
        logical_date,
        trigger,
        params,
        idempotency_key,
        state: RunState::Queued,
        tasks,
    }
}

/// A run's logical date, refused outside the years 1 to 9999.
pub(crate) fn checked_logical_date(date: DateTime<Utc>) -> Result<DateTime<Utc>> {
    check_logical_date(date).map_err(|e| EngineError::BadInput(e.to_string()))?;
    Ok(date)
}

/// A manual trigger's params checked against the DAG's declared params
/// (names, types, no NUL, the size cap) and merged with their defaults (the
/// run's `params` column).
pub(crate) fn manual_params(
    dag: &DagId,
    spec: &DagSpec,
    params: &serde_json::Map<String, Value>,
) -> Result<Value> {
    let merged = spec
        .validate_params(params)
        .map_err(|e| EngineError::InvalidParams {
            dag: dag.clone(),
            message: e.to_string(),
        })?;
    Ok(params_json(&merged))
}

impl Core {
    /// Another process (a standby replica's API) created this run in the
    /// store: load it and let it start under max_active_runs. Idempotent: a
    /// run already in memory, or already finished, is left alone.
    #[instrument(skip(self), err)]
    pub(super) async fn adopt_run(&mut self, run_id: RunId) -> Result<()> {
        if self.runs.contains_key(&run_id) {
            return Ok(());
        }
        let run = match self.store.get_run(run_id).await {
            Ok(r) => r,
            Err(e) if e.is_not_found() => return Err(EngineError::RunNotFound(run_id)),
            Err(e) => return Err(e.into()),
        };
        if run.state.is_terminal() {
            return Ok(());
        }
        let (dag_id, state) = (run.dag_id.clone(), run.state);
        self.load_run(run).await?;
        info!(dag = %dag_id, run = %run_id, "run created elsewhere adopted");
        self.emit(EngineEvent::RunState {
            run_id,
            dag_id,
            state,
        });
        self.start_pending = true;
        Ok(())
    }

    /// Adopts every active run of the store this engine does not hold (after
    /// a gap in which wake-ups may have been missed). Returns how many.
    pub(super) async fn adopt_active_runs(&mut self) -> Result<usize> {
        let unknown: Vec<RunId> = self
            .store
            .active_runs()
            .await?
            .into_iter()
            .map(|r| r.id)
            .filter(|id| !self.runs.contains_key(id))
            .collect();
        for id in &unknown {
            self.adopt_run(*id).await?;
        }
        Ok(unknown.len())
    }
}
