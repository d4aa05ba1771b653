//! Dispatch: ready tasks, highest priority first then FIFO, onto workers.
//!
//! For each ready task in order: the DAG's `max_active_tasks` and the task's
//! pool must have room, then [`placement::place`] picks a worker and GPUs; the
//! chosen capacity is reserved in this pass's snapshot so nothing is
//! overcommitted. A task that cannot go anywhere now does not block lower
//! priorities that can (no head-of-line blocking of idle GPUs); it records
//! why it waits. All placements of a pass join the turn's batch as one
//! `Assign` write; the `Assign` messages go out once the turn commits.

use std::collections::HashMap;

use tracing::{debug, instrument, warn};
use trainyard_core::dag::{EnvSource, RenderContext, TaskExec, render_argv, render_str};
use trainyard_core::ids::{DagId, RunId, TaskId, TaskInstanceId};
use trainyard_core::state::TaskState;

use super::placement::{self, WorkerCapacity};
use super::state::params_json;
use super::workers::Hold;
use super::{Assignment, Core, UpstreamAttempt, WorkerCommand};
use crate::store::{self, Write};

/// One placement decided in a pass.
struct Planned {
    run_id: RunId,
    idx: usize,
    ti: TaskInstanceId,
    attempt: i32,
    worker: trainyard_core::ids::WorkerId,
    gpus: Vec<u32>,
}

impl Core {
    #[instrument(skip_all, fields(ready = self.ready.len()))]
    pub(super) fn dispatch(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        let mut caps: Vec<WorkerCapacity> = self
            .workers
            .values()
            .filter(|w| w.accepts_work())
            .map(|w| w.capacity())
            .collect();
        caps.sort_by(|a, b| a.name.cmp(&b.name));
        let mut free_slots: u64 = caps.iter().map(|c| u64::from(c.free_slots)).sum();
        let mut all: Option<Vec<WorkerCapacity>> = None;
        let mut extra_dag: HashMap<DagId, u32> = HashMap::new();
        let mut extra_pool: HashMap<String, u32> = HashMap::new();
        let mut planned = Vec::new();
        // Walked in place: a pass stops at the first `free_slots` placements,
        // so a wide run's ready queue is not copied on every turn.
        for &(_, _, ti) in self.ready.iter() {
            if free_slots == 0 || (self.one_at_a_time && !planned.is_empty()) {
                break;
            }
            // Held: its writes are refused (see `isolate.rs`); the wait
            // reason says so.
            if self.quarantine.holds_task(ti) {
                continue;
            }
            let Some(&(run_id, idx)) = self.ti_index.get(&ti) else {
                continue;
            };
            let run = &self.runs[&run_id];
            let node = &run.tasks[idx];
            let dag = &run.run.dag_id;
            let reason = 'reason: {
                if let Some(max) = run.spec.max_active_tasks {
                    let n = self.active_by_dag.get(dag).copied().unwrap_or(0)
                        + extra_dag.get(dag).copied().unwrap_or(0);
                    if n >= max {
                        break 'reason Some(format!("DAG `{dag}` is at max_active_tasks ({max})"));
                    }
                }
                if let Some(&slots) = self.opts.pools.get(&node.pool) {
                    let n = self.active_by_pool.get(&node.pool).copied().unwrap_or(0)
                        + extra_pool.get(&node.pool).copied().unwrap_or(0);
                    if n >= slots {
                        break 'reason Some(format!(
                            "pool `{}` is full ({n} of {slots} slots in use)",
                            node.pool
                        ));
                    }
                }
                let demand = &run.demands[idx];
                match placement::place(demand, &caps) {
                    Some(p) => {
                        if let Some(c) = caps.iter_mut().find(|c| c.id == p.worker) {
                            c.free_slots -= 1;
                            c.free_cpus -= demand.cpus;
                            c.free_memory = c.free_memory.saturating_sub(demand.memory);
                            for g in c
                                .gpus
                                .iter_mut()
                                .filter(|g| p.gpu_indices.contains(&g.index))
                            {
                                g.free = false;
                            }
                        }
                        free_slots -= 1;
                        *extra_dag.entry(dag.clone()).or_default() += 1;
                        *extra_pool.entry(node.pool.clone()).or_default() += 1;
                        planned.push(Planned {
                            run_id,
                            idx,
                            ti,
                            attempt: node.attempt,
                            worker: p.worker,
                            gpus: p.gpu_indices,
                        });
                        None
                    }
                    None => {
                        let all = all.get_or_insert_with(|| {
                            self.workers
                                .values()
                                .filter(|w| w.state == trainyard_core::state::WorkerState::Active)
                                .map(|w| {
                                    let mut c = w.capacity();
                                    c.free_slots = c.total_slots;
                                    c
                                })
                                .collect()
                        });
                        Some(placement::never_fits(demand, all).unwrap_or_else(|| {
                            "waiting for resources: every worker that could run it is busy or disconnected".to_owned()
                        }))
                    }
                }
            };
            if let Some(reason) = reason
                && let Some(run) = self.runs.get_mut(&run_id)
            {
                let node = &mut run.tasks[idx];
                if node.wait_reason.as_deref() != Some(reason.as_str()) {
                    debug!(task = %node.task_id, %reason, "task waits");
                    node.wait_reason = Some(reason);
                }
            }
        }
        if planned.is_empty() {
            return;
        }
        if self.one_at_a_time {
            // One placement per commit; the next pass places the next.
            self.dirty = true;
        }
        self.assign_and_send(planned);
    }

    /// Queues the claim of every placement (attempt + 1 each) and the
    /// `Assign` messages that follow it once the turn commits.
    fn assign_and_send(&mut self, planned: Vec<Planned>) {
        let now = self.clock.now();
        let batch: Vec<store::Assignment> = planned
            .iter()
            .map(|p| store::Assignment {
                id: p.ti,
                attempt: p.attempt,
                worker_id: Some(p.worker),
                gpus: p.gpus.clone(),
            })
            .collect();
        self.write(Write::Assign(batch));
        for p in planned {
            // The claim opens the next attempt: its number is the fencing token.
            let attempt = p.attempt + 1;
            self.set_task_state(p.run_id, p.idx, TaskState::Assigned, attempt);
            let demand = &self.runs[&p.run_id].demands[p.idx];
            let hold = Hold {
                cpus: demand.cpus,
                memory: demand.memory,
                gpus: p.gpus.clone(),
                cancelling: false,
                lost: false,
            };
            if let Some(w) = self.workers.get_mut(&p.worker) {
                w.held.insert((p.ti, attempt), hold);
            }
            if let Some(run) = self.runs.get_mut(&p.run_id) {
                run.tasks[p.idx].worker = Some(p.worker);
                run.tasks[p.idx].gpus = p.gpus.clone();
            }
            self.arm_deadline(p.run_id, p.idx, now);
            match self.assignment(p.run_id, p.idx, attempt) {
                Ok(a) => {
                    if !self.send_to(p.worker, WorkerCommand::Assign(a)) {
                        warn!(worker = %p.worker, ti = %p.ti, "assignment not delivered; it is handed back when the worker reconnects or is lost");
                    }
                }
                Err(msg) => {
                    // Validation normally prevents this; fail the attempt so retries and the run move on.
                    warn!(ti = %p.ti, error = %msg, "cannot render the task's command");
                    self.unrenderable.push((p.worker, p.ti, attempt, msg));
                }
            }
        }
    }

    /// Builds what the worker needs for this attempt.
    fn assignment(&self, run_id: RunId, idx: usize, attempt: i32) -> Result<Assignment, String> {
        let run = &self.runs[&run_id];
        let node = &run.tasks[idx];
        let spec = run.spec.tasks.get(node.task_id.as_str()).ok_or_else(|| {
            format!(
                "task `{}` is missing from the run's DAG version",
                node.task_id
            )
        })?;
        let logical_date = run.run.logical_date.unwrap_or(run.run.created_at);
        let ctx = RenderContext {
            dag_id: run.run.dag_id.to_string(),
            run_id: run_id.to_string(),
            task_id: node.task_id.to_string(),
            logical_date,
            params: (*run.params).clone(),
        };
        let (argv, shell) = match &spec.exec {
            TaskExec::Command(argv) => (render_argv(argv, &ctx).map_err(|e| e.to_string())?, false),
            TaskExec::Shell(script) => (vec![script.clone()], true),
        };
        let mut env = std::collections::BTreeMap::new();
        let mut env_from_worker = std::collections::BTreeMap::new();
        let mut secret_env = Vec::new();
        for (name, var) in &spec.env {
            match &var.source {
                // Plain strings in the child's environment: no shell reads them.
                EnvSource::Value(v) => {
                    let value = render_str(v, &ctx).map_err(|e| format!("env {name}: {e}"))?;
                    env.insert(name.clone(), value)
                }
                EnvSource::FromEnv(src) => env_from_worker.insert(name.clone(), src.clone()),
            };
            if var.secret {
                secret_env.push(name.clone());
            }
        }
        Ok(Assignment {
            task_instance_id: node.ti,
            run_id,
            dag_id: run.run.dag_id.clone(),
            task_id: node.task_id.clone(),
            attempt,
            argv,
            shell,
            env,
            env_from_worker,
            secret_env,
            inherit_env: spec.inherit_env,
            working_dir: spec.working_dir.clone(),
            timeout: spec.timeout,
            gpu_indices: node.gpus.clone(),
            cpus: spec.resources.cpus,
            memory_bytes: spec.resources.memory.map(|m| m.bytes()),
            params_json: params_json(&run.params),
            logical_date,
            upstream: spec
                .depends_on
                .iter()
                .map(|u| TaskId::new(u.clone()))
                .collect(),
            upstream_attempts: node
                .upstream
                .iter()
                .map(|&u| &run.tasks[u])
                .filter(|u| u.state == TaskState::Success)
                .map(|u| UpstreamAttempt {
                    task_id: u.task_id.clone(),
                    attempt: u.attempt,
                })
                .collect(),
            code: run.spec.code.clone(),
        })
    }
}
