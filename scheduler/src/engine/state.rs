//! The engine's in-memory picture of active runs: per run, its tasks with
//! their states, attempts and upstream/downstream indices (from the DAG spec
//! pinned to the run's version), params, metrics and placement demands.
//!
//! The store is the source of truth; this is a cache of it, rebuilt from the
//! store on start-up. A turn changes it freely while it decides, and puts it
//! back as it was when the turn's transaction fails (see `memory.rs`), so
//! everything here is cheap to clone: tasks live in a persistent vector and
//! what never changes after a run is loaded is shared behind an `Arc`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use regex::Regex;
use trainyard_core::cron::Schedule;
use trainyard_core::dag::{DagSpec, ParamValue};
use trainyard_core::ids::{DagVersionId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{RunState, TaskState};

use super::placement::Demand;
use crate::store::{Run, TaskInstance};

/// Per-task metrics of one run: task id → metric name → value.
pub type RunMetrics = BTreeMap<String, BTreeMap<String, f64>>;

/// One registered DAG as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct DagEntry {
    pub paused: bool,
    pub active: bool,
    pub registered_at: DateTime<Utc>,
    pub version_id: Option<DagVersionId>,
    pub spec: Option<Arc<DagSpec>>,
    pub schedule: Option<Schedule>,
    /// The latest slot handled (created, found taken or skipped).
    pub cursor: Option<DateTime<Utc>>,
    /// Bumped on every change so stale cron timers are ignored.
    pub generation: u64,
}

impl DagEntry {
    /// Whether cron should create runs for it.
    pub fn scheduling(&self) -> bool {
        self.active && !self.paused && self.schedule.is_some() && self.spec.is_some()
    }
}

/// One task instance of an active run.
#[derive(Debug, Clone)]
pub struct TaskNode {
    pub ti: TaskInstanceId,
    pub task_id: TaskId,
    pub state: TaskState,
    /// Latest attempt number: the fencing token.
    pub attempt: i32,
    pub max_attempts: i32,
    /// Attempt number when the task was last cleared: retries count from here.
    pub retry_base: i32,
    pub priority: i32,
    pub pool: String,
    /// FIFO position among equal priorities while ready.
    pub ready_seq: u64,
    /// Worker holding the current attempt (assigned/running).
    pub worker: Option<WorkerId>,
    pub gpus: Vec<u32>,
    /// Backstop deadline of the current attempt (timeout + grace).
    pub deadline: Option<DateTime<Utc>>,
    pub next_retry_at: Option<DateTime<Utc>>,
    /// Why it is not running (set by dispatch; served to users).
    pub wait_reason: Option<String>,
    pub upstream: Arc<[usize]>,
    pub downstream: Arc<[usize]>,
}

/// A run in `queued` or `running` (or one being cleared back to life).
#[derive(Debug, Clone)]
pub struct ActiveRun {
    pub run: Run,
    pub spec: Arc<DagSpec>,
    pub params: Arc<BTreeMap<String, ParamValue>>,
    pub tasks: imbl::Vector<TaskNode>,
    pub by_task: Arc<HashMap<String, usize>>,
    /// Placement demand per task (index-aligned with `tasks`), regexes compiled once.
    pub demands: Arc<[Demand]>,
    /// Metrics of this run's tasks (latest attempt).
    pub metrics: Arc<RunMetrics>,
    /// Metrics of the DAG's last successful run, loaded when a `when` first needs them.
    pub previous: Option<Arc<RunMetrics>>,
    /// Tasks not in a terminal state (kept by `Core::set_task_state`), so
    /// "is the run done" costs nothing per completion however wide the run.
    pub unfinished: usize,
}

impl ActiveRun {
    /// Builds the run's picture from its rows and the spec of its version.
    pub fn new(
        run: Run,
        spec: Arc<DagSpec>,
        instances: Vec<TaskInstance>,
        metrics: RunMetrics,
    ) -> Self {
        let params = params_of(&run.params, &spec);
        let mut tasks = Vec::with_capacity(instances.len());
        let mut by_task = HashMap::with_capacity(instances.len());
        for ti in instances {
            by_task.insert(ti.task_id.as_str().to_owned(), tasks.len());
            tasks.push(TaskNode {
                ti: ti.id,
                task_id: ti.task_id,
                state: ti.state,
                attempt: ti.attempt,
                max_attempts: ti.max_attempts,
                retry_base: 0,
                priority: ti.priority,
                pool: ti.pool,
                ready_seq: 0,
                worker: None,
                gpus: Vec::new(),
                deadline: None,
                next_retry_at: ti.next_retry_at,
                wait_reason: None,
                upstream: Arc::from([]),
                downstream: Arc::from([]),
            });
        }
        let mut demands = Vec::with_capacity(tasks.len());
        for node in &mut tasks {
            let name = node.task_id.as_str().to_owned();
            let spec_task = spec.tasks.get(&name);
            let up: Vec<usize> = spec
                .upstream(&name)
                .iter()
                .filter_map(|u| by_task.get(u).copied())
                .collect();
            let down: Vec<usize> = spec
                .downstream(&name)
                .iter()
                .filter_map(|d| by_task.get(d).copied())
                .collect();
            node.upstream = up.into();
            node.downstream = down.into();
            let r = spec_task.map(|t| t.resources.clone()).unwrap_or_default();
            demands.push(Demand {
                pool: node.pool.clone(),
                cpus: r.cpus,
                memory: r.memory.map_or(0, |m| m.bytes()),
                gpus: r.gpus,
                gpu_memory: r.gpu_memory.map(|m| m.bytes()),
                // The DAG parser validated the pattern, so it compiles.
                gpu_model: r.gpu_model.as_deref().and_then(|p| Regex::new(p).ok()),
            });
        }
        let unfinished = tasks.iter().filter(|t| !t.state.is_terminal()).count();
        Self {
            unfinished,
            run,
            spec,
            params: Arc::new(params),
            tasks: tasks.into_iter().collect(),
            by_task: Arc::new(by_task),
            demands: demands.into(),
            metrics: Arc::new(metrics),
            previous: None,
        }
    }

    pub fn index_of(&self, task_id: &str) -> Option<usize> {
        self.by_task.get(task_id).copied()
    }

    /// Whether every task has reached a terminal state.
    pub fn all_terminal(&self) -> bool {
        self.unfinished == 0
    }

    /// `i` and every task downstream of it, transitively, in index order.
    pub fn descendants_and_self(&self, i: usize) -> Vec<usize> {
        let mut seen = vec![false; self.tasks.len()];
        let mut stack = vec![i];
        while let Some(n) = stack.pop() {
            if std::mem::replace(&mut seen[n], true) {
                continue;
            }
            stack.extend(self.tasks[n].downstream.iter().copied());
        }
        (0..self.tasks.len()).filter(|&n| seen[n]).collect()
    }
}

/// The run's params as typed values: the stored JSON over the declared defaults.
pub fn params_of(json: &serde_json::Value, spec: &DagSpec) -> BTreeMap<String, ParamValue> {
    let mut out = spec.params.clone();
    if let Some(map) = json.as_object() {
        for (k, v) in map {
            if let Ok(p) = serde_json::from_value::<ParamValue>(v.clone()) {
                out.insert(k.clone(), p);
            }
        }
    }
    out
}

/// Params as the JSON object tasks receive.
pub fn params_json(params: &BTreeMap<String, ParamValue>) -> serde_json::Value {
    serde_json::Value::Object(
        params
            .iter()
            .map(|(k, v)| (k.clone(), v.to_json()))
            .collect(),
    )
}

/// Why each waiting task of a run is not running.
pub fn wait_reasons_of(run: &ActiveRun) -> super::WaitReasons {
    let mut out = BTreeMap::new();
    for n in &run.tasks {
        let reason = match n.state {
            TaskState::Ready => Some(
                n.wait_reason
                    .clone()
                    .unwrap_or_else(|| "waiting for a free worker slot".into()),
            ),
            TaskState::Pending if run.run.state == RunState::Queued => {
                Some("the run is queued (max_active_runs)".into())
            }
            TaskState::Pending => Some(format!(
                "waiting for upstream: {}",
                pending_upstream(run, &n.upstream)
            )),
            TaskState::UpForRetry => n
                .next_retry_at
                .map(|t| format!("retrying at {}", t.to_rfc3339())),
            _ => None,
        };
        if let Some(r) = reason {
            out.insert(n.task_id.clone(), r);
        }
    }
    out
}

fn pending_upstream(run: &ActiveRun, upstream: &[usize]) -> String {
    upstream
        .iter()
        .filter(|&&u| !run.tasks[u].state.is_terminal())
        .map(|&u| run.tasks[u].task_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
