//! A fresh embedded instance for one workload: a [`SchedulerApp`] on a temp
//! SQLite file (or a new Postgres database) plus in-process worker agents over
//! loopback gRPC — the code path of `trainyard standalone`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use trainyard_core::ids::{DagId, RunId};
use trainyard_scheduler::app::{SchedulerApp, SchedulerConfig};
use trainyard_scheduler::engine::EngineEvent;
use trainyard_scheduler::store::Store;
use trainyard_worker::agent::{Agent, AgentOptions};
use trainyard_worker::exec::WatchdogCommand;
use trainyard_worker::gpu::GpuSpec;
use trainyard_worker::host::HostResources;

use super::measure::TaskTimes;
use super::workloads::DagPlan;
use super::{RunFigures, postgres};

/// Longest a benchmark run may take before the bench gives up on it.
const RUN_DEADLINE: Duration = Duration::from_secs(600);

/// How the workers of an instance look.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub workers: u32,
    pub slots: u32,
    /// A declared inventory such as `8xA100-80GB`; `None` = CPU-only.
    pub gpus: Option<String>,
}

/// A running scheduler and its workers, torn down by [`Instance::stop`].
pub struct Instance {
    app: SchedulerApp,
    /// Stops the scheduler (after the workers).
    shutdown: CancellationToken,
    /// Drains the workers first, so they do not spend the teardown
    /// reconnecting to a scheduler that is already gone.
    stop_agents: CancellationToken,
    agents: JoinSet<()>,
    /// A Postgres database made for this instance, dropped at stop.
    pg: Option<postgres::FreshDatabase>,
    /// Holds the DAG files, SQLite file, logs and work dirs until stop.
    _dir: tempfile::TempDir,
}

impl Instance {
    /// Writes `plan`'s DAG, opens the store (`db`: `None` = temp SQLite),
    /// starts the scheduler and `fleet`, and waits until every worker registered.
    pub async fn start(plan: &DagPlan, db: Option<&str>, fleet: &Fleet) -> anyhow::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("trainyard-bench-")
            .tempdir()
            .context("cannot create a temp folder for the bench")?;
        let root = std::fs::canonicalize(dir.path())?;
        let dags = root.join("dags");
        std::fs::create_dir_all(&dags)?;
        plan.write_into(&dags)
            .with_context(|| format!("cannot write the {} DAG", plan.dag_id))?;
        let (db_url, pg) = match db {
            None => (
                format!("sqlite:{}", root.join("trainyard.db").display()),
                None,
            ),
            Some(base) => {
                let fresh = postgres::FreshDatabase::create(base).await?;
                (fresh.url.clone(), Some(fresh))
            }
        };
        let mut config = SchedulerConfig::new(db_url, &root);
        config.dags_dir = Some(dags);
        let shutdown = CancellationToken::new();
        let http = TcpListener::bind("127.0.0.1:0").await?;
        let grpc = TcpListener::bind("127.0.0.1:0").await?;
        let app = SchedulerApp::start(config, http, grpc, shutdown.clone())
            .await
            .map_err(|e| anyhow!("cannot start the scheduler: {e}"))?;
        let grpc_url = format!("http://{}", app.grpc_addr);
        let work = root.join("work");
        std::fs::create_dir_all(&work)?;
        let host = HostResources::detect(None, None);
        let gpus = match &fleet.gpus {
            Some(raw) => raw
                .parse::<GpuSpec>()
                .map_err(|e| anyhow!("--gpus {raw:?}: {e}"))?
                .declared_gpus(),
            None => Vec::new(),
        };
        let stop_agents = CancellationToken::new();
        let mut agents = JoinSet::new();
        for i in 0..fleet.workers {
            let mut opts = AgentOptions::new(&grpc_url, work.clone());
            opts.name = format!("bench-{i}");
            opts.slots = fleet.slots.max(1);
            // Every task asks for 1 CPU by default: offer one per slot so the
            // slot count, not this machine's core count, bounds concurrency.
            opts.cpus = fleet.slots.max(1);
            opts.memory_bytes = host.memory_bytes;
            opts.gpus = gpus.clone();
            // What `trainyard worker` runs with: the watchdog guards the
            // tasks (without one every spawn would be a full fork).
            opts.watchdog = WatchdogCommand::this_binary().ok();
            let agent = Agent::build(opts).map_err(|e| anyhow!("cannot build worker {i}: {e}"))?;
            let token = stop_agents.clone();
            agents.spawn(async move {
                if let Err(err) = agent.run(token.cancelled_owned()).await {
                    tracing::error!(error = %err, "bench worker stopped");
                }
            });
        }
        let instance = Self {
            app,
            shutdown,
            stop_agents,
            agents,
            pg,
            _dir: dir,
        };
        instance.wait_for_workers(fleet.workers).await?;
        Ok(instance)
    }

    pub fn store(&self) -> &dyn Store {
        self.app.store.as_ref()
    }

    async fn wait_for_workers(&self, n: u32) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let active = self
                .store()
                .list_workers()
                .await?
                .iter()
                .filter(|w| w.state == trainyard_core::state::WorkerState::Active)
                .count();
            if active >= n as usize {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("only {active} of {n} bench workers registered within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Triggers one run of `plan` and waits for it to end; wall time runs
    /// from the trigger call to the engine's terminal run event.
    pub async fn run(&self, plan: &DagPlan) -> anyhow::Result<RunFigures> {
        // Subscribe before triggering so the end event cannot be missed.
        let mut events = self.app.engine.subscribe();
        let tx_before = self.app.store.transactions_committed();
        // The peak before this run: start-up, the DAG load, earlier runs.
        let before = trainyard_scheduler::metrics::memory_status();
        reset_peak_rss();
        let started = Instant::now();
        let run_id = self
            .app
            .engine
            .trigger(
                DagId::new(plan.dag_id.clone()),
                serde_json::Map::new(),
                None,
                None,
            )
            .await
            .map_err(|e| anyhow!("cannot trigger {}: {e}", plan.dag_id))?;
        let deadline = started + RUN_DEADLINE;
        let mut poll = tokio::time::interval(Duration::from_millis(250));
        let (state, wall) = loop {
            tokio::select! {
                event = events.recv() => match event {
                    Ok(EngineEvent::RunState { run_id: id, state, .. }) if id == run_id && state.is_terminal() => {
                        break (state, started.elapsed());
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => bail!("the engine stopped during the run"),
                },
                // The broadcast is lossy: the store is the fallback.
                _ = poll.tick() => {
                    let run = self.store().get_run(run_id).await?;
                    if run.state.is_terminal() {
                        break (run.state, started.elapsed());
                    }
                    if Instant::now() > deadline {
                        bail!("run {run_id} of {} did not end within {RUN_DEADLINE:?}", plan.dag_id);
                    }
                }
            }
        };
        let transactions = self.app.store.transactions_committed() - tx_before;
        let memory = trainyard_scheduler::metrics::memory_status();
        let run = self.store().get_run(run_id).await?;
        let server_wall_s = run
            .ended_at
            .and_then(|end| (end - run.created_at).num_microseconds())
            .map(|us| us as f64 / 1e6);
        Ok(RunFigures {
            run_id: run_id.to_string(),
            state: state.to_string(),
            wall_s: wall.as_secs_f64(),
            server_wall_s,
            times: self.task_times(run_id).await?,
            transactions: Some(transactions),
            memory,
            peak_before: before.map(|m| m.hwm_bytes),
            client_wait_ms: None,
        })
    }

    /// The latest attempt of every task of the run, keyed by task id.
    ///
    /// Loads every task and attempt row of the run: the bench's own memory,
    /// which is why [`RunFigures::memory`] is read before it.
    async fn task_times(&self, run_id: RunId) -> anyhow::Result<BTreeMap<String, TaskTimes>> {
        let tasks = self.store().task_instances(run_id).await?;
        let attempts = self.store().run_attempts(run_id).await?;
        let by_ti: BTreeMap<_, _> = tasks
            .iter()
            .map(|t| (t.id, t.task_id.to_string()))
            .collect();
        let mut out: BTreeMap<String, TaskTimes> = BTreeMap::new();
        for a in attempts {
            let Some(task) = by_ti.get(&a.task_instance_id) else {
                continue;
            };
            let newer = out.get(task).is_none_or(|t| a.attempt > t.attempt);
            if newer {
                out.insert(
                    task.clone(),
                    TaskTimes {
                        attempt: a.attempt,
                        started_at: a.started_at,
                        ended_at: a.ended_at,
                    },
                );
            }
        }
        Ok(out)
    }

    /// Stops workers and scheduler, then drops the Postgres database if one was made.
    pub async fn stop(mut self) {
        self.stop_agents.cancel();
        let agents = async { while self.agents.join_next().await.is_some() {} };
        if tokio::time::timeout(Duration::from_secs(15), agents)
            .await
            .is_err()
        {
            self.agents.abort_all();
        }
        self.shutdown.cancel();
        if tokio::time::timeout(Duration::from_secs(15), self.app.wait())
            .await
            .is_err()
        {
            tracing::warn!("bench scheduler did not stop within 15 s");
        }
        if let Some(pg) = self.pg.take() {
            pg.drop_database().await;
        }
    }
}

/// Restarts this process's peak-RSS counter (`VmHWM`) so that a run's peak
/// is its own, not an earlier run's or the bench's measuring (Linux:
/// writing `5` to `/proc/self/clear_refs`). Where that is not possible the
/// peak counts from the process start, which the figure then overstates.
fn reset_peak_rss() {
    if let Err(e) = std::fs::write("/proc/self/clear_refs", "5") {
        tracing::debug!(error = %e, "cannot reset the peak RSS; it counts from the process start");
    }
}
