//! Task progress: worker reports, propagation to downstream tasks by trigger
//! rule and `when`, retries with back-off, the timeout backstop, lost
//! attempts, cancel and clear.
//!
//! A completion is handled in one turn: it is fenced against memory first (a
//! stale report writes nothing), then the attempt's end, its metrics and
//! lineage, and the downstream tasks it decides are queued as writes of the
//! turn's batch, and the turn dispatches them before it commits.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use tracing::{debug, info, instrument, warn};
use trainyard_core::dag::{TriggerRule, eval_when_explained};
use trainyard_core::ids::{RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{AttemptOutcome, RunState, TaskState};

use super::readiness::{Decision, decide};
use super::state::{ActiveRun, RunMetrics};
use super::timers::TimerKind;
use super::{Core, EngineError, Result, TaskOutcome, TaskResult, WorkerCommand};
use crate::store::{AttemptOf, FinishAttempt, TaskTransition, Write};

fn chrono_of(d: std::time::Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl Core {
    /// Whether the current attempt is the one `worker` reports about.
    fn current(
        &self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
    ) -> Option<(RunId, usize)> {
        let (run_id, idx) = self.locate(ti)?;
        let node = &self.runs.get(&run_id)?.tasks[idx];
        (node.attempt == attempt && node.worker == Some(worker) && node.state.holds_worker())
            .then_some((run_id, idx))
    }

    /// Backstop deadline of an attempt starting now, if its task has a timeout.
    fn deadline_for(
        &self,
        run_id: RunId,
        idx: usize,
        from: DateTime<Utc>,
    ) -> Option<DateTime<Utc>> {
        let run = self.runs.get(&run_id)?;
        let spec = run.spec.tasks.get(run.tasks[idx].task_id.as_str())?;
        spec.timeout
            .map(|t| from + chrono_of(t) + chrono_of(self.opts.timeout_grace))
    }

    pub(super) fn arm_deadline(&mut self, run_id: RunId, idx: usize, from: DateTime<Utc>) {
        if let Some(at) = self.deadline_for(run_id, idx, from)
            && let Some(run) = self.runs.get_mut(&run_id)
        {
            let node = &mut run.tasks[idx];
            node.deadline = Some(at);
            let (ti, attempt) = (node.ti, node.attempt);
            self.timers.arm(at, TimerKind::Timeout { ti, attempt });
        }
    }

    #[instrument(skip(self), err)]
    pub(super) fn task_started(
        &mut self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
    ) -> Result<()> {
        let Some((run_id, idx)) = self.current(worker, ti, attempt) else {
            self.send_to(
                worker,
                WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "this attempt is no longer current".into(),
                },
            );
            return Err(EngineError::Fenced { ti, attempt });
        };
        if self.runs[&run_id].tasks[idx].state == TaskState::Running {
            return Ok(()); // a repeated report
        }
        let now = self.clock.now();
        // A start needs no transaction of its own: it rides with the next
        // batch (the attempt's end commits it first) or a short flush.
        self.defer(Write::StartAttempt { id: ti, attempt });
        self.set_task_state(run_id, idx, TaskState::Running, attempt);
        self.arm_deadline(run_id, idx, now);
        Ok(())
    }

    #[instrument(skip(self, result), fields(outcome = ?result.outcome), err)]
    pub(super) async fn task_finished(
        &mut self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
        result: TaskResult,
    ) -> Result<()> {
        // Fenced first: a stale report writes nothing, not even metrics.
        let Some((run_id, idx)) = self.current(worker, ti, attempt) else {
            // The confirmation of an attempt the engine cancelled is expected.
            let hold = self.release_hold(worker, ti, attempt);
            if hold.is_some_and(|h| h.cancelling) {
                return Ok(());
            }
            // A report re-sent after a reconnect, for an end already
            // recorded: nothing to do, and nothing to kill.
            if self.end_recorded(worker, ti, attempt, result.outcome).await {
                return Err(EngineError::AlreadyRecorded { ti, attempt });
            }
            return Err(EngineError::Fenced { ti, attempt });
        };
        // Memory may move ahead of the commit: the turn puts it back if the
        // commit fails, and the freed GPUs reach no worker before it commits.
        self.release_hold(worker, ti, attempt);
        if self.runs[&run_id].tasks[idx].state == TaskState::Assigned {
            self.write(Write::StartAttempt { id: ti, attempt });
            self.set_task_state(run_id, idx, TaskState::Running, attempt);
        }
        let now = self.clock.now();
        let task_id = self.runs[&run_id].tasks[idx].task_id.clone();
        if !result.metrics.is_empty() {
            let metrics: Vec<(String, f64)> = result
                .metrics
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect();
            self.write(Write::Metrics {
                id: ti,
                attempt,
                metrics,
            });
            if let Some(run) = self.runs.get_mut(&run_id) {
                std::sync::Arc::make_mut(&mut run.metrics)
                    .insert(task_id.as_str().to_owned(), result.metrics.clone());
            }
        }
        let lineage = result.lineage;
        let me = AttemptOf {
            run_id,
            task_id,
            task_instance_id: ti,
            attempt,
        };
        if !lineage.outputs.is_empty() {
            self.write(Write::Artifacts {
                producer: me.clone(),
                artifacts: lineage.outputs,
            });
        }
        if !lineage.inputs.is_empty() {
            self.write(Write::ArtifactInputs {
                consumer: me,
                keys: lineage.inputs,
            });
        }
        let (to, outcome, retry_at, error) = match result.outcome {
            TaskOutcome::Succeeded => (
                TaskState::Success,
                AttemptOutcome::Success,
                None,
                result.error,
            ),
            other => {
                let outcome = match other {
                    TaskOutcome::TimedOut => AttemptOutcome::TimedOut,
                    _ => AttemptOutcome::Failed,
                };
                let error = result.error.or_else(|| {
                    (other == TaskOutcome::Cancelled).then(|| "cancelled on the worker".to_owned())
                });
                let retry_at = match other {
                    TaskOutcome::CannotStart => None,
                    _ => self.retry_time(run_id, idx, now),
                };
                match retry_at {
                    Some(at) => (TaskState::UpForRetry, outcome, Some(at), error),
                    None => (TaskState::Failed, outcome, None, error),
                }
            }
        };
        self.write(Write::FinishAttempt(FinishAttempt {
            id: ti,
            attempt,
            from: TaskState::Running,
            to,
            outcome,
            exit_code: result.exit_code,
            error,
            log_location: lineage.log_location,
            next_retry_at: retry_at,
        }));
        self.settled(run_id, idx, to, attempt, retry_at).await;
        Ok(())
    }

    /// Whether this report repeats what is recorded: `worker`'s attempt
    /// `attempt` of `ti` ended, from a report with the same success or
    /// failure (not declared lost or handed back, which a worker never
    /// reported). The store's attempt row says; only reports for attempts
    /// that are not current get here, so the read is rare. A failed read
    /// counts as "no": the report is then fenced, as before.
    async fn end_recorded(
        &self,
        worker: WorkerId,
        ti: TaskInstanceId,
        attempt: i32,
        outcome: TaskOutcome,
    ) -> bool {
        let succeeded = outcome == TaskOutcome::Succeeded;
        match self.store.attempts(ti).await {
            Ok(rows) => rows.iter().any(|a| {
                a.attempt == attempt
                    && a.worker_id == Some(worker)
                    && a.ended_at.is_some()
                    && match a.outcome {
                        Some(AttemptOutcome::Success) => succeeded,
                        Some(AttemptOutcome::Lost | AttemptOutcome::HandedBack) | None => false,
                        Some(_) => !succeeded,
                    }
            }),
            Err(e) => {
                debug!(%ti, attempt, error = %e, "cannot read the attempt to tell a duplicate report");
                false
            }
        }
    }

    /// When the next attempt may start, or `None` when no retries are left.
    fn retry_time(&self, run_id: RunId, idx: usize, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let run = self.runs.get(&run_id)?;
        let node = &run.tasks[idx];
        let tried = node.attempt - node.retry_base;
        if tried >= node.max_attempts {
            return None;
        }
        let spec = run.spec.tasks.get(node.task_id.as_str())?;
        let retry = u32::try_from(tried.max(1)).unwrap_or(1);
        Some(now + chrono_of(spec.retry_delay_for(retry)))
    }

    /// A task reached `to` in the store: apply it, arm its retry, move downstream.
    async fn settled(
        &mut self,
        run_id: RunId,
        idx: usize,
        to: TaskState,
        attempt: i32,
        retry_at: Option<DateTime<Utc>>,
    ) {
        self.set_task_state(run_id, idx, to, attempt);
        if let Some(at) = retry_at {
            self.arm_retry(run_id, idx, at);
        }
        if to.is_terminal() {
            let down = self.runs[&run_id].tasks[idx].downstream.to_vec();
            self.advance(run_id, down).await;
        }
    }

    fn arm_retry(&mut self, run_id: RunId, idx: usize, at: DateTime<Utc>) {
        if let Some(run) = self.runs.get_mut(&run_id) {
            let node = &mut run.tasks[idx];
            node.next_retry_at = Some(at);
            let (ti, attempt) = (node.ti, node.attempt);
            self.timers.arm(at, TimerKind::Retry { ti, attempt });
        }
    }

    /// A retry timer fired: `up_for_retry → ready` if still current.
    pub(super) fn retry_due(&mut self, ti: TaskInstanceId, attempt: i32) {
        let Some((run_id, idx)) = self.locate(ti) else {
            return;
        };
        let node = &self.runs[&run_id].tasks[idx];
        if node.state != TaskState::UpForRetry || node.attempt != attempt {
            return;
        }
        let t = TaskTransition::new(ti, TaskState::UpForRetry, TaskState::Ready, attempt);
        self.write(Write::Transitions(vec![t]));
        self.set_task_state(run_id, idx, TaskState::Ready, attempt);
    }

    /// The timeout backstop fired: no result by timeout + grace → kill and fail the attempt.
    pub(super) async fn attempt_overdue(&mut self, ti: TaskInstanceId, attempt: i32) {
        let now = self.clock.now();
        let Some((run_id, idx)) = self.locate(ti) else {
            return;
        };
        let node = &self.runs[&run_id].tasks[idx];
        if node.attempt != attempt
            || !node.state.holds_worker()
            || node.deadline.is_none_or(|d| d > now)
        {
            return;
        }
        let (state, worker) = (node.state, node.worker);
        warn!(%ti, attempt, "attempt overdue: no result within its timeout plus grace");
        if let Some(w) = worker {
            self.send_to(
                w,
                WorkerCommand::Kill {
                    ti,
                    attempt,
                    reason: "timed out".into(),
                },
            );
            self.release_hold(w, ti, attempt);
        }
        let reason = "no result within the task's timeout plus grace";
        if state == TaskState::Assigned {
            let t = TaskTransition::new(ti, state, TaskState::Lost, attempt)
                .reason(reason)
                .outcome(AttemptOutcome::TimedOut);
            self.write(Write::Transitions(vec![t]));
            self.set_task_state(run_id, idx, TaskState::Lost, attempt);
            self.after_lost(run_id, idx).await;
            return;
        }
        let retry_at = self.retry_time(run_id, idx, now);
        let to = if retry_at.is_some() {
            TaskState::UpForRetry
        } else {
            TaskState::Failed
        };
        let report = FinishAttempt {
            id: ti,
            attempt,
            from: TaskState::Running,
            to,
            outcome: AttemptOutcome::TimedOut,
            exit_code: None,
            error: Some(reason.into()),
            log_location: None,
            next_retry_at: retry_at,
        };
        self.write(Write::FinishAttempt(report));
        self.settled(run_id, idx, to, attempt, retry_at).await;
    }

    /// An attempt a re-read found that memory never placed: one never sent
    /// goes back to `ready`; one reported running (it cannot be, but the
    /// store says so) is lost and retried.
    pub(super) async fn reclaim_orphan(
        &mut self,
        run_id: RunId,
        ti: TaskInstanceId,
        attempt: i32,
        state: TaskState,
    ) {
        let Some((r, idx)) = self.locate(ti) else {
            return;
        };
        let node = &self.runs[&r].tasks[idx];
        if r != run_id
            || node.attempt != attempt
            || node.state != state
            || self.quarantine.holds_task(ti)
        {
            return;
        }
        let (to, reason) = match state {
            TaskState::Assigned => (
                TaskState::Ready,
                "handed back: the assignment was never sent (its turn was rolled back)",
            ),
            _ => (
                TaskState::Lost,
                "no worker is known to hold this attempt (its turn was rolled back)",
            ),
        };
        let t = TaskTransition::new(ti, state, to, attempt).reason(reason);
        self.write(Write::Transitions(vec![t]));
        self.set_task_state(run_id, idx, to, attempt);
        if to == TaskState::Lost {
            self.after_lost(run_id, idx).await;
        }
    }

    /// A `lost` attempt: retry it (at once, elsewhere) or fail the task.
    pub(super) async fn after_lost(&mut self, run_id: RunId, idx: usize) {
        let now = self.clock.now();
        let node = &self.runs[&run_id].tasks[idx];
        let (ti, attempt) = (node.ti, node.attempt);
        let tried = node.attempt - node.retry_base;
        let to = if tried < node.max_attempts {
            TaskState::UpForRetry
        } else {
            TaskState::Failed
        };
        let mut t = TaskTransition::new(ti, TaskState::Lost, to, attempt)
            .reason("the worker holding it was lost");
        if to == TaskState::UpForRetry {
            t = t.retry_at(now);
        }
        self.write(Write::Transitions(vec![t]));
        let retry = (to == TaskState::UpForRetry).then_some(now);
        self.settled(run_id, idx, to, attempt, retry).await;
    }

    /// An attempt the worker no longer has: hand it back if it never started, else it is lost.
    pub(super) async fn attempt_vanished(
        &mut self,
        ti: TaskInstanceId,
        attempt: i32,
        reason: &str,
    ) {
        let Some((run_id, idx)) = self.locate(ti) else {
            return;
        };
        let node = &self.runs[&run_id].tasks[idx];
        if node.attempt != attempt || !node.state.holds_worker() {
            return;
        }
        let (from, to) = match node.state {
            TaskState::Assigned => (TaskState::Assigned, TaskState::Ready),
            _ => (TaskState::Running, TaskState::Lost),
        };
        let t = TaskTransition::new(ti, from, to, attempt).reason(reason);
        self.write(Write::Transitions(vec![t]));
        self.set_task_state(run_id, idx, to, attempt);
        if to == TaskState::Lost {
            self.after_lost(run_id, idx).await;
        }
    }

    /// Decides pending `candidates` (and what their decisions decide in turn),
    /// writing each wave in one batch, then finishes the run if it is done.
    pub(super) async fn advance(&mut self, run_id: RunId, mut candidates: Vec<usize>) {
        while !candidates.is_empty() {
            let decided = self.decide_wave(run_id, &candidates).await;
            if decided.is_empty() {
                break;
            }
            let transitions: Vec<TaskTransition> = {
                let run = &self.runs[&run_id];
                decided
                    .iter()
                    .map(|(i, to, reason)| {
                        let n = &run.tasks[*i];
                        let t = TaskTransition::new(n.ti, TaskState::Pending, *to, n.attempt);
                        match reason {
                            Some(r) => t.reason(r.clone()),
                            None => t,
                        }
                    })
                    .collect()
            };
            self.write(Write::Transitions(transitions));
            candidates.clear();
            for (i, to, _) in decided {
                let attempt = self.runs[&run_id].tasks[i].attempt;
                self.set_task_state(run_id, i, to, attempt);
                if to != TaskState::Ready {
                    candidates.extend(self.runs[&run_id].tasks[i].downstream.iter().copied());
                }
            }
            candidates.sort_unstable();
            candidates.dedup();
        }
        self.finish_run_if_done(run_id).await;
    }

    /// The decisions for pending tasks among `candidates` (trigger rule, then `when`).
    async fn decide_wave(
        &mut self,
        run_id: RunId,
        candidates: &[usize],
    ) -> Vec<(usize, TaskState, Option<String>)> {
        let Some(run) = self.runs.get(&run_id) else {
            return Vec::new();
        };
        if run.run.state != RunState::Running {
            return Vec::new();
        }
        let mut out = Vec::new();
        let mut needs_when = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for &i in candidates {
            let node = &run.tasks[i];
            if node.state != TaskState::Pending
                || !seen.insert(i)
                || self.quarantine.holds_task(node.ti)
            {
                continue;
            }
            let Some(spec) = run.spec.tasks.get(node.task_id.as_str()) else {
                continue;
            };
            let upstream = node.upstream.iter().map(|&u| run.tasks[u].state);
            let rule = spec.trigger_rule;
            match decide(rule, upstream) {
                Decision::Wait => {}
                Decision::Ready if spec.when.is_some() => needs_when.push(i),
                Decision::Ready => out.push((i, TaskState::Ready, None)),
                Decision::Skip => out.push((
                    i,
                    TaskState::Skipped,
                    Some(upstream_reason(run, i, rule, false)),
                )),
                Decision::UpstreamFailed => out.push((
                    i,
                    TaskState::UpstreamFailed,
                    Some(upstream_reason(run, i, rule, true)),
                )),
            }
        }
        if !needs_when.is_empty() {
            if let Err(e) = self.load_previous_metrics(run_id).await {
                // A gate must not be decided on missing data: try the turn again.
                self.log_store_error("previous metrics", &e);
                self.fail_turn(e);
                return Vec::new();
            }
            let run = &self.runs[&run_id];
            for i in needs_when {
                let node = &run.tasks[i];
                let expr = run
                    .spec
                    .tasks
                    .get(node.task_id.as_str())
                    .and_then(|t| t.when.clone())
                    .unwrap_or_default();
                match eval_when_explained(&expr, &run.params, &run.metrics, run.previous.as_deref())
                {
                    Ok(o) if o.value => out.push((i, TaskState::Ready, None)),
                    // The gate's text with the value of every name it read:
                    // stored with the transition, so every replica serves it.
                    Ok(o) => out.push((i, TaskState::Skipped, Some(o.explain(&expr)))),
                    Err(e) => {
                        // A gate that cannot be evaluated does not open: skip, and say why.
                        warn!(run = %run_id, task = %node.task_id, error = %e, "`when` could not be evaluated; skipping");
                        out.push((i, TaskState::Skipped, Some(e.to_string())));
                    }
                }
            }
        }
        out
    }

    /// Loads the metrics of the DAG's last successful run for `when` (once per run).
    async fn load_previous_metrics(&mut self, run_id: RunId) -> crate::store::Result<()> {
        let Some(run) = self.runs.get(&run_id) else {
            return Ok(());
        };
        if run.previous.is_some() {
            return Ok(());
        }
        let dag = run.run.dag_id.clone();
        let previous = match self.store.last_successful_run(&dag).await? {
            Some(prev) => metrics_by_task(self.store.run_metrics(prev.id).await?),
            None => RunMetrics::new(),
        };
        if let Some(run) = self.runs.get_mut(&run_id) {
            run.previous = Some(std::sync::Arc::new(previous));
        }
        Ok(())
    }

    /// How this turn's queued writes end `run_id`, if they do: the run left
    /// memory, but the store still shows it unfinished until the commit.
    fn ended_in_this_turn(&self, run_id: RunId) -> Option<RunState> {
        self.turn
            .writes
            .writes
            .iter()
            .rev()
            .find_map(|(w, _)| match w {
                Write::Run(t) if t.id == run_id && t.to.is_terminal() => Some(t.to),
                _ => None,
            })
    }

    /// Puts an unfinished run in memory (it usually is already), or says why
    /// not: unknown (404) or finished (409, naming its state). A finished
    /// run is never loaded, so no command can try to move it again.
    async fn unfinished_run(&mut self, run_id: RunId, action: &'static str) -> Result<()> {
        let finished = |state| EngineError::RunFinished {
            run: run_id,
            state,
            action,
        };
        if let Some(run) = self.runs.get(&run_id) {
            let state = run.run.state;
            return if state.is_terminal() {
                Err(finished(state))
            } else {
                Ok(())
            };
        }
        if let Some(state) = self.ended_in_this_turn(run_id) {
            return Err(finished(state));
        }
        let run = self.get_run_or_404(run_id).await?;
        if run.state.is_terminal() {
            return Err(finished(run.state));
        }
        self.load_run(run).await
    }

    async fn get_run_or_404(&self, run_id: RunId) -> Result<crate::store::Run> {
        self.store.get_run(run_id).await.map_err(|e| {
            if e.is_not_found() {
                EngineError::RunNotFound(run_id)
            } else {
                e.into()
            }
        })
    }

    /// Cancels an unfinished run and every unfinished task of it; a finished
    /// run is a 409 naming its state. (Refusals are the caller's mistake:
    /// logged at debug; the API logs server-side failures itself.)
    #[instrument(skip(self), err(level = "debug"))]
    pub(super) async fn cancel_run(&mut self, run_id: RunId, reason: &str) -> Result<()> {
        self.unfinished_run(run_id, "cancel").await?;
        let all: Vec<usize> = (0..self.runs[&run_id].tasks.len()).collect();
        self.cancel_tasks(run_id, &all, reason);
        let from = self.runs[&run_id].run.state;
        self.end_run(run_id, from, RunState::Cancelled, Some(reason));
        Ok(())
    }

    /// Cancels one unfinished task; a finished task, or any task of a
    /// finished run, is a 409 naming the state.
    pub(super) async fn cancel_task(&mut self, run_id: RunId, task: &TaskId) -> Result<()> {
        self.unfinished_run(run_id, "cancel").await?;
        let run = &self.runs[&run_id];
        let idx = run
            .index_of(task.as_str())
            .ok_or_else(|| EngineError::TaskNotFound {
                run: run_id,
                task: task.clone(),
            })?;
        let state = run.tasks[idx].state;
        if state.is_terminal() {
            return Err(EngineError::TaskFinished {
                run: run_id,
                task: task.clone(),
                state,
                action: "cancel",
            });
        }
        self.cancel_tasks(run_id, &[idx], "cancelled by request");
        let down = self.runs[&run_id].tasks[idx].downstream.to_vec();
        self.advance(run_id, down).await;
        Ok(())
    }

    /// Cancels the non-terminal tasks among `idxs` in one batch; running attempts get a `Cancel`.
    fn cancel_tasks(&mut self, run_id: RunId, idxs: &[usize], reason: &str) {
        let run = &self.runs[&run_id];
        let targets: Vec<(usize, TaskState, i32, TaskInstanceId, Option<WorkerId>)> = idxs
            .iter()
            .map(|&i| (i, &run.tasks[i]))
            .filter(|(_, n)| !n.state.is_terminal())
            .map(|(i, n)| (i, n.state, n.attempt, n.ti, n.worker))
            .collect();
        let transitions: Vec<TaskTransition> = targets
            .iter()
            .map(|&(_, from, attempt, ti, _)| {
                TaskTransition::new(ti, from, TaskState::Cancelled, attempt).reason(reason)
            })
            .collect();
        if transitions.is_empty() {
            return;
        }
        self.write(Write::Transitions(transitions));
        for (i, from, attempt, ti, worker) in targets {
            if from.holds_worker()
                && let Some(w) = worker
            {
                if let Some(h) = self
                    .workers
                    .get_mut(&w)
                    .and_then(|w| w.held.get_mut(&(ti, attempt)))
                {
                    h.cancelling = true;
                }
                self.send_to(
                    w,
                    WorkerCommand::Cancel {
                        ti,
                        attempt,
                        reason: reason.to_owned(),
                    },
                );
            }
            self.set_task_state(run_id, i, TaskState::Cancelled, attempt);
        }
    }

    #[instrument(skip(self), err(level = "debug"))]
    pub(super) async fn clear_task(
        &mut self,
        run_id: RunId,
        task: &TaskId,
        downstream: bool,
    ) -> Result<()> {
        let loaded_now = !self.runs.contains_key(&run_id);
        if loaded_now {
            if self.ended_in_this_turn(run_id).is_some() {
                // The store still shows it running until this turn commits.
                return Err(EngineError::Store(crate::store::StoreError::Unavailable(
                    format!("run {run_id} is finishing right now; retry in a moment"),
                )));
            }
            let run = self.get_run_or_404(run_id).await?;
            self.load_run(run).await?;
        }
        let run = &self.runs[&run_id];
        let checked = match run.index_of(task.as_str()) {
            None => Err(EngineError::TaskNotFound {
                run: run_id,
                task: task.clone(),
            }),
            Some(idx) if !run.tasks[idx].state.is_terminal() => {
                let state = run.tasks[idx].state;
                Err(EngineError::InvalidRequest(format!(
                    "task `{task}` is {state}; only a finished task can be cleared"
                )))
            }
            Some(idx) => Ok(idx),
        };
        let idx = match checked {
            Ok(idx) => idx,
            Err(err) => {
                // A finished run loaded for this request leaves memory
                // again: memory holds unfinished runs only.
                if loaded_now && run.run.state.is_terminal() {
                    self.forget_run(run_id);
                }
                return Err(err);
            }
        };
        let run = &self.runs[&run_id];
        let targets: Vec<usize> = if downstream {
            run.descendants_and_self(idx)
        } else {
            vec![idx]
        }
        .into_iter()
        .filter(|&i| run.tasks[i].state.is_terminal())
        .collect();
        let transitions: Vec<TaskTransition> = targets
            .iter()
            .map(|&i| {
                let n = &run.tasks[i];
                TaskTransition::new(n.ti, n.state, TaskState::Pending, n.attempt).reason("cleared")
            })
            .collect();
        let run_state = run.run.state;
        self.write(Write::Transitions(transitions));
        for &i in &targets {
            let attempt = self.runs[&run_id].tasks[i].attempt;
            self.set_task_state(run_id, i, TaskState::Pending, attempt);
            if let Some(run) = self.runs.get_mut(&run_id) {
                let name = run.tasks[i].task_id.as_str().to_owned();
                run.tasks[i].retry_base = attempt;
                std::sync::Arc::make_mut(&mut run.metrics).remove(&name);
            }
        }
        info!(run = %run_id, %task, cleared = targets.len(), "tasks cleared");
        if run_state.is_terminal() {
            let t = crate::store::RunTransition {
                id: run_id,
                from: run_state,
                to: RunState::Queued,
                reason: Some(format!("task `{task}` cleared")),
            };
            self.write(Write::Run(t));
            self.set_run_state(run_id, RunState::Queued);
            self.start_pending = true;
        } else {
            self.advance(run_id, targets).await;
        }
        Ok(())
    }
}

/// Groups metric points by task, the latest attempt's value winning.
pub(super) fn metrics_by_task(points: Vec<crate::store::MetricPoint>) -> RunMetrics {
    let mut best: BTreeMap<(String, String), (i32, f64)> = BTreeMap::new();
    for p in points {
        let key = (p.task_id.into_inner(), p.name);
        match best.get(&key) {
            Some((a, _)) if *a > p.attempt => {}
            _ => {
                best.insert(key, (p.attempt, p.value));
            }
        }
    }
    let mut out = RunMetrics::new();
    for ((task, name), (_, v)) in best {
        out.entry(task).or_default().insert(name, v);
    }
    debug!(tasks = out.len(), "metrics loaded");
    out
}

/// Why task `i` of `run` is skipped (`failed = false`) or upstream_failed,
/// naming the upstream tasks that decided it and their states, e.g.
/// "upstream failed: `train` (failed)".
fn upstream_reason(run: &ActiveRun, i: usize, rule: TriggerRule, failed: bool) -> String {
    let list = |pick: &dyn Fn(TaskState) -> bool| {
        run.tasks[i]
            .upstream
            .iter()
            .map(|&u| &run.tasks[u])
            .filter(|u| pick(u.state))
            .map(|u| format!("`{}` ({})", u.task_id, u.state))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let is_failed = |s| {
        matches!(
            s,
            TaskState::Failed | TaskState::UpstreamFailed | TaskState::Cancelled
        )
    };
    if failed {
        return format!("upstream failed: {}", list(&is_failed));
    }
    match rule {
        TriggerRule::OneFailed => format!(
            "no upstream failed (trigger rule one_failed): {}",
            list(&|s: TaskState| s.is_terminal())
        ),
        _ => format!(
            "upstream skipped: {}",
            list(&|s: TaskState| s == TaskState::Skipped)
        ),
    }
}
