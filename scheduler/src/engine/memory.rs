//! The engine's memory as a value.
//!
//! Everything a turn may change — DAG entries, active runs, the task index,
//! the ready queue, the active counters, the worker registry — is held in
//! persistent collections (`imbl`), so [`Core::snapshot`] is a handful of
//! reference-count bumps however large the runs are, and a change copies
//! only the small part of a tree it touches. A turn takes a snapshot before
//! it decides anything; when its transaction fails, [`Core::restore`] puts
//! memory back exactly as it was, so no half-applied decision survives.
//!
//! After each committed turn the engine [publishes](Core::publish) the same
//! cheap clone of its runs and workers: the HTTP side reads wait reasons and
//! GPU usage from it without a round trip through the command queue, and
//! `/readyz` reads the [`StoreHealth`] published with it.

use std::collections::BTreeMap;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};
use trainyard_core::ids::{DagId, RunId, TaskInstanceId, WorkerId};

use trainyard_core::state::WorkerState;

use super::placement;
use super::state::{ActiveRun, DagEntry, WaitContext, demand_of, queued_reason, wait_reasons_of};
use super::workers::WorkerEntry;
use super::{Core, Ended, GpuUsage, WaitReasons};

/// Memory at the start of a turn (see the module docs).
#[derive(Debug, Clone)]
pub(super) struct Snapshot {
    dags: imbl::HashMap<DagId, DagEntry>,
    runs: imbl::HashMap<RunId, ActiveRun>,
    ti_index: imbl::HashMap<TaskInstanceId, (RunId, usize)>,
    ready: imbl::OrdSet<(i32, u64, TaskInstanceId)>,
    ready_seq: u64,
    active_by_dag: imbl::HashMap<DagId, u32>,
    active_by_pool: imbl::HashMap<String, u32>,
    workers: imbl::HashMap<WorkerId, WorkerEntry>,
    dirty: bool,
    start_pending: bool,
}

impl Core {
    pub(super) fn snapshot(&self) -> Snapshot {
        Snapshot {
            dags: self.dags.clone(),
            runs: self.runs.clone(),
            ti_index: self.ti_index.clone(),
            ready: self.ready.clone(),
            ready_seq: self.ready_seq,
            active_by_dag: self.active_by_dag.clone(),
            active_by_pool: self.active_by_pool.clone(),
            workers: self.workers.clone(),
            dirty: self.dirty,
            start_pending: self.start_pending,
        }
    }

    pub(super) fn restore(&mut self, s: Snapshot) {
        self.dags = s.dags;
        self.runs = s.runs;
        self.ti_index = s.ti_index;
        self.ready = s.ready;
        self.ready_seq = s.ready_seq;
        self.active_by_dag = s.active_by_dag;
        self.active_by_pool = s.active_by_pool;
        self.workers = s.workers;
        self.dirty = s.dirty;
        self.start_pending = s.start_pending;
    }

    /// Publishes what HTTP reads (after a committed turn, or a health change).
    pub(super) fn publish(&self, health: StoreHealth) {
        self.published.set(View {
            dags: self.dags.clone(),
            runs: self.runs.clone(),
            workers: self.workers.clone(),
            held: self.quarantine.tasks.clone(),
            active_by_dag: self.active_by_dag.clone(),
            active_by_pool: self.active_by_pool.clone(),
            pools: self.opts.pools.clone(),
            health,
        });
    }
}

/// Whether the store takes the engine's writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum StoreHealth {
    #[default]
    Ok,
    /// Turns fail to commit; the engine keeps memory as it was and retries.
    Failing {
        since: DateTime<Utc>,
        failures: u32,
        error: String,
    },
}

impl StoreHealth {
    pub fn is_ok(&self) -> bool {
        matches!(self, StoreHealth::Ok)
    }
}

impl std::fmt::Display for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreHealth::Ok => f.write_str("ok"),
            StoreHealth::Failing {
                since,
                failures,
                error,
            } => write!(
                f,
                "the database refuses the scheduler's writes since {} ({failures} failed \
                 transactions; retrying with back-off): {error}",
                since.to_rfc3339()
            ),
        }
    }
}

#[derive(Debug, Default)]
struct View {
    dags: imbl::HashMap<DagId, DagEntry>,
    runs: imbl::HashMap<RunId, ActiveRun>,
    workers: imbl::HashMap<WorkerId, WorkerEntry>,
    /// Tasks whose writes the database refuses, with why (`isolate.rs`).
    held: imbl::HashMap<TaskInstanceId, String>,
    active_by_dag: imbl::HashMap<DagId, u32>,
    active_by_pool: imbl::HashMap<String, u32>,
    pools: BTreeMap<String, u32>,
    health: StoreHealth,
}

impl View {
    fn wait_context(&self) -> WaitContext<'_> {
        WaitContext {
            idle: self
                .workers
                .values()
                .filter(|w| w.state == WorkerState::Active)
                .map(|w| {
                    let mut c = w.capacity();
                    c.free_slots = c.total_slots;
                    c
                })
                .collect(),
            runs: &self.runs,
            active_by_dag: &self.active_by_dag,
            active_by_pool: &self.active_by_pool,
            pools: &self.pools,
        }
    }
}

/// Ends a listener may fall behind by before it is told it lagged (and
/// re-reads the store).
const ENDS_BUFFER: usize = 1024;

/// The engine's last published view, shared with every handle, and the
/// runs and tasks it ended: `GET /api/v1/runs/{run}?wait_for_end=…` and
/// live log streams wait on those instead of polling the store.
#[derive(Debug, Clone)]
pub struct Published {
    view: Arc<RwLock<Arc<View>>>,
    ends: tokio::sync::broadcast::Sender<Ended>,
}

impl Default for Published {
    fn default() -> Self {
        Self {
            view: Arc::default(),
            ends: tokio::sync::broadcast::channel(ENDS_BUFFER).0,
        }
    }
}

impl Published {
    /// Tells listeners that a run or task ended; called once it is committed.
    pub(super) fn ended(&self, what: Ended) {
        // No receiver is fine: nobody waits.
        let _ = self.ends.send(what);
    }

    pub(super) fn end_listeners(&self) -> usize {
        self.ends.receiver_count()
    }

    /// Run and task ends from now on (lossy: a receiver that lags should
    /// re-read the store).
    pub(super) fn subscribe_ends(&self) -> tokio::sync::broadcast::Receiver<Ended> {
        self.ends.subscribe()
    }

    fn set(&self, view: View) {
        let view = Arc::new(view);
        match self.view.write() {
            Ok(mut g) => *g = view,
            Err(poisoned) => *poisoned.into_inner() = view,
        }
    }

    fn get(&self) -> Arc<View> {
        match self.view.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    pub(super) fn wait_reasons(&self, run: RunId) -> WaitReasons {
        let view = self.get();
        let Some(r) = view.runs.get(&run) else {
            return WaitReasons::default();
        };
        let mut reasons = wait_reasons_of(r, &view.wait_context());
        if !view.held.is_empty() {
            // A held task waits for a person, whatever its state: say so.
            for t in r.tasks.iter() {
                if let Some(why) = view.held.get(&t.ti) {
                    reasons.insert(t.task_id.clone(), why.clone());
                }
            }
        }
        reasons
    }

    /// Why a queued run has not started (its DAG's `max_active_runs`).
    pub(super) fn run_wait_reason(&self, run: RunId) -> Option<String> {
        let view = self.get();
        queued_reason(view.runs.get(&run)?, &view.wait_context())
    }

    /// One line per task of the DAG's current version that no registered
    /// worker could hold even when idle, saying why.
    pub(super) fn unschedulable(&self, dag: &DagId) -> Vec<String> {
        let view = self.get();
        let Some(spec) = view.dags.get(dag).and_then(|d| d.spec.clone()) else {
            return Vec::new();
        };
        let ctx = view.wait_context();
        spec.tasks
            .iter()
            .filter_map(|(id, t)| {
                let why = placement::never_fits(&demand_of(&t.pool, &t.resources), &ctx.idle)?;
                Some(format!(
                    "task `{id}` cannot start on any registered worker: {why}; \
                     it waits until a worker that fits registers"
                ))
            })
            .collect()
    }

    pub(super) fn gpu_usage(&self) -> BTreeMap<WorkerId, Vec<GpuUsage>> {
        self.get()
            .workers
            .iter()
            .map(|(id, w)| (*id, w.usage.clone()))
            .collect()
    }

    pub(super) fn health(&self) -> StoreHealth {
        self.get().health.clone()
    }
}
