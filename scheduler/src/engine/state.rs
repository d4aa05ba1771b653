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
use trainyard_core::ids::{DagId, DagVersionId, RunId, TaskId, TaskInstanceId, WorkerId};
use trainyard_core::state::{RunState, TaskState};

use super::placement::{self, Demand, WorkerCapacity};
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
            demands.push(demand_of(&node.pool, &r));
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

/// What a task with `resources` in `pool` asks placement for.
pub fn demand_of(pool: &str, r: &trainyard_core::resources::ResourceRequest) -> Demand {
    Demand {
        pool: pool.to_owned(),
        cpus: r.cpus,
        memory: r.memory.map_or(0, |m| m.bytes()),
        gpus: r.gpus,
        gpu_memory: r.gpu_memory.map(|m| m.bytes()),
        // The DAG parser validated the pattern, so it compiles.
        gpu_model: r.gpu_model.as_deref().and_then(|p| Regex::new(p).ok()),
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

/// What the reasons of a waiting task are read against: the engine's
/// published view (see `memory.rs`), never the store.
pub struct WaitContext<'a> {
    /// Every active worker as if it were idle: what could ever hold a task.
    pub idle: Vec<WorkerCapacity>,
    pub runs: &'a imbl::HashMap<RunId, ActiveRun>,
    pub active_by_dag: &'a imbl::HashMap<DagId, u32>,
    pub active_by_pool: &'a imbl::HashMap<String, u32>,
    /// Slot counts of named pools (`EngineOptions::pools`).
    pub pools: &'a BTreeMap<String, u32>,
}

/// Why each waiting task of a run is not running. For a ready task the
/// strongest reason wins: no registered worker could ever hold it (with the
/// numbers), then the DAG's `max_active_tasks`, then its pool's slots, then
/// what the last dispatch pass recorded.
pub fn wait_reasons_of(run: &ActiveRun, ctx: &WaitContext<'_>) -> super::WaitReasons {
    let mut out = BTreeMap::new();
    for (i, n) in run.tasks.iter().enumerate() {
        let reason = match n.state {
            TaskState::Ready => Some(ready_reason(run, i, ctx)),
            TaskState::Pending if run.run.state == RunState::Queued => Some(format!(
                "the run is queued: {}",
                queued_reason(run, ctx).unwrap_or_else(|| "it starts on the next turn".into())
            )),
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

fn ready_reason(run: &ActiveRun, i: usize, ctx: &WaitContext<'_>) -> String {
    let n = &run.tasks[i];
    if let Some(never) = placement::never_fits(&run.demands[i], &ctx.idle) {
        return never;
    }
    let dag = &run.run.dag_id;
    if let Some(max) = run.spec.max_active_tasks {
        let active = ctx.active_by_dag.get(dag).copied().unwrap_or(0);
        if active >= max {
            return format!("DAG `{dag}` is at max_active_tasks ({active} of {max} running)");
        }
    }
    if let Some(&slots) = ctx.pools.get(&n.pool) {
        let used = ctx.active_by_pool.get(&n.pool).copied().unwrap_or(0);
        if used >= slots {
            return format!("pool `{}` is full ({used} of {slots} slots in use)", n.pool);
        }
    }
    n.wait_reason.clone().unwrap_or_else(|| {
        "waiting for a free worker slot: every worker that could run it is busy".into()
    })
}

/// Why a queued run has not started: its DAG's `max_active_runs`, naming
/// the runs that hold it and, for one that cannot finish, why. `None` when
/// the limit leaves room (the run starts on the engine's next turn).
pub fn queued_reason(run: &ActiveRun, ctx: &WaitContext<'_>) -> Option<String> {
    if run.run.state != RunState::Queued {
        return None;
    }
    let max = run.spec.max_active_runs.max(1);
    let mut active: Vec<&ActiveRun> = ctx
        .runs
        .values()
        .filter(|r| r.run.dag_id == run.run.dag_id && r.run.state == RunState::Running)
        .collect();
    if (active.len() as u64) < u64::from(max) {
        return None;
    }
    active.sort_by_key(|r| r.run.id);
    let mut out = format!(
        "DAG `{}` is at max_active_runs ({} of {max} running): ",
        run.run.dag_id,
        active.len()
    );
    let named: Vec<String> = active
        .iter()
        .take(3)
        .map(|r| {
            // A blocker that can never finish is the news: say which task and why.
            let stuck = r.tasks.iter().enumerate().find_map(|(i, t)| {
                (t.state == TaskState::Ready)
                    .then(|| placement::never_fits(&r.demands[i], &ctx.idle))
                    .flatten()
                    .map(|why| format!(" (its task `{}` cannot start: {why})", t.task_id))
            });
            format!("run {}{}", r.run.id, stuck.unwrap_or_default())
        })
        .collect();
    out.push_str(&named.join(", "));
    if active.len() > 3 {
        out.push_str(&format!(" and {} more", active.len() - 3));
    }
    Some(out)
}

fn pending_upstream(run: &ActiveRun, upstream: &[usize]) -> String {
    upstream
        .iter()
        .filter(|&&u| !run.tasks[u].state.is_terminal())
        .map(|&u| run.tasks[u].task_id.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}
