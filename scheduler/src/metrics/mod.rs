//! Prometheus metrics: the registry behind `GET /metrics` and what feeds it.
//!
//! Owns the metric names (the Grafana dashboard in `deploy/grafana/` and the
//! Helm ServiceMonitor rely on them), the collector that turns the engine's
//! event broadcast into counters and histograms ([`spawn_collector`]), and the
//! exporter ([`handler`]) that refreshes store-derived gauges at scrape time
//! and renders the text exposition format (version 0.0.4, what
//! `promtool check metrics` reads).
//!
//! Where each figure comes from, and why:
//! - transitions (by DAG), scheduling latency, queue wait per pool, task and
//!   run durations: engine events, because they are the moment things happen;
//!   the broadcast is lossy, so a lagging collector counts what it missed in
//!   `trainyard_engine_events_lagged_total`;
//! - each DAG's last success: read from the store at scrape time, so an alert
//!   on "no success for a day" survives a scheduler restart and agrees across
//!   replicas;
//! - task counts per state (queue depth = `state="ready"`), workers and GPU
//!   inventory/allocation: read from the store at scrape time, because the
//!   store is the truth shared by every scheduler replica and the engine does
//!   not emit events for tasks created directly in `ready`;
//! - GPU utilisation and memory in use: only the heartbeat carries them, so
//!   the gRPC session calls [`Metrics::observe_gpu_usage`] on each heartbeat
//!   (absent for workers that sample no real GPU);
//! - DB pool usage: the store's own pool figures (`Store::pool_usage`) at
//!   scrape, with the duration and success of the exporter's queries.
//!
//! Cardinality: DAG ids and pools are bounded by what operators deploy, so
//! they are labels; task ids are not (a DAG may generate thousands), so task
//! durations are labelled by DAG and outcome only.
//!
//! One process-wide registry ([`global`]): Prometheus scrapes a process, and
//! several schedulers in one test process simply add up their counters.

mod collector;
mod exporter;
mod process;
pub mod traces;

use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::engine::GpuUsage;

pub use collector::spawn_collector;
pub use exporter::handler;
pub use process::{MemoryStatus, memory_status};

/// Content type of the text exposition format the exporter writes.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Errors of this module: building metrics (a bad name is a bug caught by the
/// tests) and encoding them.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metric registry: {0}")]
    Prometheus(#[from] prometheus::Error),
    #[error("metrics text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

pub type Result<T, E = MetricsError> = std::result::Result<T, E>;

/// Every metric Trainyard exports, registered in one registry.
#[derive(Debug, Clone)]
pub struct Metrics {
    registry: Registry,
    /// Task state changes seen by the engine, by DAG and the state entered.
    pub task_transitions: IntCounterVec,
    /// Run state changes, by DAG and the state entered.
    pub run_transitions: IntCounterVec,
    /// Attempt running → the state it left running for, by DAG and that state.
    pub task_duration: HistogramVec,
    /// Ready (root tasks: run start) → assigned to a worker, by pool.
    pub queue_wait: HistogramVec,
    /// When each DAG's latest successful run ended (store, at scrape time).
    pub dag_last_success: prometheus::GaugeVec,
    /// What the retention task removed, by kind (`runs`, `artifacts`,
    /// `local_logs`).
    pub retention_pruned: IntCounterVec,
    /// Task instances per non-terminal state (store, at scrape time).
    pub tasks: IntGaugeVec,
    /// Ready (or run start, for root tasks) → process started.
    pub scheduling_latency: Histogram,
    /// Run start → terminal state, by final state.
    pub run_duration: HistogramVec,
    /// Registered workers by state (store, at scrape time).
    pub workers: IntGaugeVec,
    /// Per-GPU memory size from the workers' registrations.
    pub gpu_memory_total: IntGaugeVec,
    /// 1 when an attempt holds the GPU now.
    pub gpu_allocated: IntGaugeVec,
    /// Per-GPU utilisation (0–1) from heartbeats.
    pub gpu_utilization: prometheus::GaugeVec,
    /// Per-GPU memory in use from heartbeats.
    pub gpu_memory_used: IntGaugeVec,
    /// Engine events a slow collector missed (the broadcast is lossy).
    pub events_lagged: IntCounter,
    /// 1 when the exporter's store queries succeeded at the last scrape.
    pub db_up: IntGauge,
    /// Store pool connections: `in_use`, `idle`, `max`.
    pub db_pool_connections: IntGaugeVec,
    /// Write transactions the store committed (engine turns, run creations…).
    pub store_transactions: IntCounter,
    /// How long the exporter's store queries took at the last scrape.
    pub db_query_seconds: prometheus::Gauge,
    /// Resident memory of this process (VmRSS).
    pub resident_memory: IntGauge,
    /// The leader lease's term as this replica last saw it (its own while
    /// leading, the holder's while standing by).
    pub leader_term: IntGauge,
    /// 1 while this replica leads (runs the engine).
    pub leader: IntGauge,
    /// When the lease as last seen expires (Unix seconds, the database's clock).
    pub leader_lease_expiry: prometheus::Gauge,
    /// Engine commands (and timers, dispatches) whose writes the database
    /// refused deterministically, isolated from their turn and answered
    /// with an error (see `engine::isolate`).
    pub engine_poison_commands: IntCounter,
}

/// Latency buckets from 0.5 ms (a chain step on a quiet machine) to 2 min.
fn latency_buckets() -> Vec<f64> {
    vec![
        0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
        60.0, 120.0,
    ]
}

/// Run durations: 10 ms (a benchmark DAG) to 1 day (a long training run).
fn run_buckets() -> Vec<f64> {
    vec![
        0.01,
        0.05,
        0.1,
        0.5,
        1.0,
        5.0,
        15.0,
        60.0,
        300.0,
        900.0,
        3600.0,
        4.0 * 3600.0,
        12.0 * 3600.0,
        86400.0,
    ]
}

impl Metrics {
    /// Builds and registers every metric in a fresh registry.
    pub fn new() -> Result<Self> {
        let registry = Registry::new();
        let task_transitions = IntCounterVec::new(
            Opts::new(
                "trainyard_task_transitions_total",
                "Task state changes, by DAG and the state entered.",
            ),
            &["dag", "state"],
        )?;
        let run_transitions = IntCounterVec::new(
            Opts::new(
                "trainyard_run_transitions_total",
                "Run state changes, by DAG and the state entered.",
            ),
            &["dag", "state"],
        )?;
        let task_duration = HistogramVec::new(
            HistogramOpts::new(
                "trainyard_task_duration_seconds",
                "How long an attempt ran (process start to its end), by DAG and the state it \
                 ended in (success, failed, up_for_retry, lost, cancelled...).",
            )
            .buckets(run_buckets()),
            &["dag", "outcome"],
        )?;
        let queue_wait = HistogramVec::new(
            HistogramOpts::new(
                "trainyard_queue_wait_seconds",
                "Time a task waited for a worker: from becoming ready (root tasks: its run \
                 starting) to being assigned, by pool.",
            )
            .buckets(latency_buckets()),
            &["pool"],
        )?;
        let dag_last_success = prometheus::GaugeVec::new(
            Opts::new(
                "trainyard_dag_last_success_timestamp_seconds",
                "When the DAG's latest successful run ended (Unix time); absent for a DAG \
                 that never succeeded.",
            ),
            &["dag"],
        )?;
        let retention_pruned = IntCounterVec::new(
            Opts::new(
                "trainyard_retention_pruned_total",
                "What the retention task removed past --retention: finished runs (with their \
                 rows), objects in the artifact store (outputs and archived logs), local log \
                 folders.",
            ),
            &["kind"],
        )?;
        let tasks = IntGaugeVec::new(
            Opts::new(
                "trainyard_tasks",
                "Task instances per non-terminal state; state=\"ready\" is the queue depth.",
            ),
            &["state"],
        )?;
        let scheduling_latency = Histogram::with_opts(
            HistogramOpts::new(
                "trainyard_scheduling_latency_seconds",
                "Time from a task becoming ready (root tasks: its run starting) to its process starting.",
            )
            .buckets(latency_buckets()),
        )?;
        let run_duration = HistogramVec::new(
            HistogramOpts::new(
                "trainyard_run_duration_seconds",
                "Run start to its end, by final state.",
            )
            .buckets(run_buckets()),
            &["state"],
        )?;
        let workers = IntGaugeVec::new(
            Opts::new("trainyard_workers", "Registered workers by state."),
            &["state"],
        )?;
        let gpu_memory_total = IntGaugeVec::new(
            Opts::new(
                "trainyard_gpu_memory_total_bytes",
                "Memory of each registered GPU.",
            ),
            &["worker", "gpu", "model"],
        )?;
        let gpu_allocated = IntGaugeVec::new(
            Opts::new(
                "trainyard_gpu_allocated",
                "1 when an attempt holds the GPU now, else 0.",
            ),
            &["worker", "gpu"],
        )?;
        let gpu_utilization = prometheus::GaugeVec::new(
            Opts::new(
                "trainyard_gpu_utilization_ratio",
                "GPU utilisation (0-1) from the worker's latest heartbeat.",
            ),
            &["worker", "gpu"],
        )?;
        let gpu_memory_used = IntGaugeVec::new(
            Opts::new(
                "trainyard_gpu_memory_used_bytes",
                "GPU memory in use from the worker's latest heartbeat.",
            ),
            &["worker", "gpu"],
        )?;
        let events_lagged = IntCounter::new(
            "trainyard_engine_events_lagged_total",
            "Engine events the metrics collector missed because it fell behind.",
        )?;
        let db_up = IntGauge::new(
            "trainyard_db_up",
            "1 when the exporter's store queries succeeded at the last scrape.",
        )?;
        let db_pool_connections = IntGaugeVec::new(
            Opts::new(
                "trainyard_db_pool_connections",
                "Database pool connections by state (in_use, idle) and the pool maximum (max).",
            ),
            &["state"],
        )?;
        let store_transactions = IntCounter::new(
            "trainyard_store_transactions_total",
            "Write transactions the store committed: one per engine turn that changed \
             anything, plus run creations, DAG registrations and API writes.",
        )?;
        let db_query_seconds = prometheus::Gauge::new(
            "trainyard_db_scrape_query_seconds",
            "Duration of the exporter's store queries at the last scrape.",
        )?;
        let resident_memory = IntGauge::new(
            "trainyard_process_resident_memory_bytes",
            "Resident memory of the scheduler process (VmRSS).",
        )?;
        let leader_term = IntGauge::new(
            "trainyard_leader_term",
            "The leader lease's term as this replica last saw it (HA): it increases \
             with every change of leader.",
        )?;
        let leader = IntGauge::new(
            "trainyard_leader",
            "1 while this scheduler replica leads (holds the lease and runs the engine).",
        )?;
        let leader_lease_expiry = prometheus::Gauge::new(
            "trainyard_leader_lease_expiry_timestamp_seconds",
            "When the leader lease as this replica last saw it expires (Unix time, \
             database clock).",
        )?;
        let engine_poison_commands = IntCounter::new(
            "trainyard_engine_poison_commands_total",
            "Engine commands whose writes the database refused deterministically (a constraint, \
             a value it rejects): isolated from the rest of their turn, answered with the \
             error, their task marked failed or held.",
        )?;
        let metrics = Self {
            registry,
            task_transitions,
            run_transitions,
            task_duration,
            queue_wait,
            dag_last_success,
            retention_pruned,
            tasks,
            scheduling_latency,
            run_duration,
            workers,
            gpu_memory_total,
            gpu_allocated,
            gpu_utilization,
            gpu_memory_used,
            events_lagged,
            db_up,
            db_pool_connections,
            store_transactions,
            db_query_seconds,
            resident_memory,
            leader_term,
            leader,
            leader_lease_expiry,
            engine_poison_commands,
        };
        metrics.register_all()?;
        Ok(metrics)
    }

    fn register_all(&self) -> Result<()> {
        let r = &self.registry;
        r.register(Box::new(self.task_transitions.clone()))?;
        r.register(Box::new(self.run_transitions.clone()))?;
        r.register(Box::new(self.task_duration.clone()))?;
        r.register(Box::new(self.queue_wait.clone()))?;
        r.register(Box::new(self.dag_last_success.clone()))?;
        r.register(Box::new(self.retention_pruned.clone()))?;
        r.register(Box::new(self.tasks.clone()))?;
        r.register(Box::new(self.scheduling_latency.clone()))?;
        r.register(Box::new(self.run_duration.clone()))?;
        r.register(Box::new(self.workers.clone()))?;
        r.register(Box::new(self.gpu_memory_total.clone()))?;
        r.register(Box::new(self.gpu_allocated.clone()))?;
        r.register(Box::new(self.gpu_utilization.clone()))?;
        r.register(Box::new(self.gpu_memory_used.clone()))?;
        r.register(Box::new(self.events_lagged.clone()))?;
        r.register(Box::new(self.db_up.clone()))?;
        r.register(Box::new(self.db_pool_connections.clone()))?;
        r.register(Box::new(self.store_transactions.clone()))?;
        r.register(Box::new(self.db_query_seconds.clone()))?;
        r.register(Box::new(self.resident_memory.clone()))?;
        r.register(Box::new(self.leader_term.clone()))?;
        r.register(Box::new(self.leader.clone()))?;
        r.register(Box::new(self.leader_lease_expiry.clone()))?;
        r.register(Box::new(self.engine_poison_commands.clone()))?;
        Ok(())
    }

    /// Records a worker's heartbeat figures. The hook for the heartbeat path:
    /// the engine keeps usage to itself, so nothing else can see it.
    pub fn observe_gpu_usage(&self, worker: &str, usage: &[GpuUsage]) {
        for gpu in usage {
            let index = gpu.index.to_string();
            self.gpu_utilization
                .with_label_values(&[worker, &index])
                .set((gpu.utilization_percent / 100.0).clamp(0.0, 1.0));
            self.gpu_memory_used
                .with_label_values(&[worker, &index])
                .set(i64::try_from(gpu.memory_used_bytes).unwrap_or(i64::MAX));
        }
    }

    /// The whole registry in the Prometheus text exposition format.
    pub fn render(&self) -> Result<String> {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf)?;
        Ok(String::from_utf8(buf)?)
    }
}

/// The process-wide metrics.
pub fn global() -> &'static Metrics {
    static GLOBAL: OnceLock<Metrics> = OnceLock::new();
    // Only a bad literal name can fail here (a bug the unit tests catch), never
    // anything a user or the network controls.
    GLOBAL.get_or_init(|| Metrics::new().expect("metric names and labels are valid literals"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_builds_and_renders_with_help_and_type() {
        let m = Metrics::new().unwrap();
        m.task_transitions.with_label_values(&["d", "ready"]).inc();
        m.scheduling_latency.observe(0.002);
        m.observe_gpu_usage(
            "w1",
            &[GpuUsage {
                index: 0,
                utilization_percent: 150.0,
                memory_used_bytes: 1 << 30,
                healthy: true,
            }],
        );
        let text = m.render().unwrap();
        assert!(text.contains("# TYPE trainyard_task_transitions_total counter"));
        assert!(text.contains("trainyard_task_transitions_total{dag=\"d\",state=\"ready\"} 1"));
        assert!(text.contains("trainyard_scheduling_latency_seconds_bucket"));
        // Utilisation is clamped to a ratio.
        assert!(text.contains("trainyard_gpu_utilization_ratio{gpu=\"0\",worker=\"w1\"} 1"));
    }
}
