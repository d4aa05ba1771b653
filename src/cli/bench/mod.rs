//! `trainyard bench`: the standard workloads of the brief, measured.
//!
//! Each workload runs on a fresh embedded instance (a scheduler on a temp
//! SQLite file, or a new database on `--db postgres://…`, plus in-process
//! workers over loopback gRPC: the `standalone` code path) or against a
//! running deployment (`--server URL`). One JSON line per measurement goes
//! to stdout; logs go to stderr. The spawn ceiling of the machine is measured
//! first so every line can say how close it came (`ceiling_ratio`).
//! Nothing here asserts on timings.

mod embedded;
mod measure;
mod postgres;
mod remote;
mod workloads;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::Args;
use serde_json::{Map, Value, json};

use self::embedded::{Fleet, Instance};
use self::measure::{Ceiling, TaskTimes};
use self::workloads::{
    DagPlan, PACKING_GPU_SPEC, PACKING_GPUS_PER_WORKER, PACKING_WORKERS, Workload,
};

/// Arguments of `trainyard bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// Workloads to run (default: fanout chain retrain wide packing); the
    /// spawn ceiling is always measured first.
    #[arg(value_enum)]
    pub workloads: Vec<Workload>,
    /// Run on a new database on this PostgreSQL server (created and dropped
    /// per workload) instead of a temp SQLite file.
    #[arg(long, value_name = "postgres://…")]
    pub db: Option<String>,
    /// Run against a deployment's HTTP API instead of an embedded instance;
    /// its DAG folder must hold the bench DAGs (see --write-dags).
    #[arg(long, value_name = "URL", conflicts_with = "db")]
    pub server: Option<String>,
    /// API token for --server.
    #[arg(long, env = "TRAINYARD_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Task slots of the (single) embedded worker.
    #[arg(long, default_value_t = 8)]
    pub slots: u32,
    /// Runs per workload on the same instance (the first one is cold).
    #[arg(long, default_value_t = 1)]
    pub repeat: u32,
    /// `true` processes spawned per thread (8 threads, then 1) for the ceilings.
    #[arg(long, default_value_t = 500)]
    pub ceiling_spawns: usize,
    /// Tasks of `wide` (default 10,000) and `layered` (default 2,000).
    #[arg(long, value_name = "N")]
    pub tasks: Option<usize>,
    /// Write the workloads' DAG files here and exit (to load them on a server).
    #[arg(long, value_name = "DIR")]
    pub write_dags: Option<PathBuf>,
}

/// The outcome of one run, whatever the target.
#[derive(Debug, Clone)]
pub struct RunFigures {
    pub run_id: String,
    pub state: String,
    /// Trigger call to the end observed by the bench.
    pub wall_s: f64,
    /// The run's stored `created_at → ended_at`.
    pub server_wall_s: Option<f64>,
    /// Latest attempt per task id.
    pub times: BTreeMap<String, TaskTimes>,
    /// Store transactions committed from the trigger to the run's end
    /// (embedded instances; a remote server is not asked).
    pub transactions: Option<u64>,
    /// This process's memory when the run ended, its peak counted from the
    /// trigger (embedded instances): read before the bench loads the run's
    /// attempts for its own figures, so it is the system's, not the bench's.
    pub memory: Option<trainyard_scheduler::metrics::MemoryStatus>,
    /// Peak RSS (bytes) from the process start to this run's trigger: the
    /// scheduler's start-up and DAG load, and earlier runs.
    pub peak_before: Option<u64>,
    /// From the run's stored `ended_at` to the CLI's `trigger --wait` wait
    /// returning in this process (`--server` only; same-host clocks).
    pub client_wait_ms: Option<f64>,
}

const CEILING_THREADS: usize = 8;

/// The machine's spawn ceilings: 8 threads (parallel workloads) and one
/// thread (serial workloads: each task waits for the one before).
#[derive(Debug, Clone, Copy)]
pub struct Ceilings {
    pub parallel: Ceiling,
    pub serial: Ceiling,
}

pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    let mut workloads = if args.workloads.is_empty() {
        Workload::STANDARD.to_vec()
    } else {
        args.workloads.clone()
    };
    workloads.dedup();
    if let Some(dir) = &args.write_dags {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        for w in workloads
            .iter()
            .filter(|w| !matches!(w, Workload::Ceiling | Workload::Store))
        {
            DagPlan::sized(*w, args.tasks).write_into(dir)?;
        }
        eprintln!("trainyard bench: DAG files written to {}", dir.display());
        return Ok(ExitCode::SUCCESS);
    }
    let parallel = measure::spawn_ceiling(CEILING_THREADS, args.ceiling_spawns.max(1))
        .context("cannot spawn `true` for the ceiling")?;
    emit(&ceiling_line("ceiling_spawn", &parallel));
    let serial = measure::spawn_ceiling(1, args.ceiling_spawns.max(1))
        .context("cannot spawn `true` for the serial ceiling")?;
    emit(&ceiling_line("ceiling_spawn_serial", &serial));
    let ceiling = Ceilings { parallel, serial };
    let runtime = super::runtime_multi()?;
    let mut all_ok = true;
    for workload in workloads.into_iter().filter(|w| *w != Workload::Ceiling) {
        if workload == Workload::Store {
            runtime.block_on(bench_store(&args))?;
            continue;
        }
        let ok = runtime.block_on(bench_workload(&args, workload, &ceiling))?;
        all_ok &= ok;
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Tasks in the store micro-benchmark.
const STORE_BENCH_TASKS: usize = 2_000;

/// `bench store`: the store's claim and transition throughput on a temp
/// SQLite file or (with --db) a throwaway schema on PostgreSQL.
async fn bench_store(args: &BenchArgs) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let url = match &args.db {
        Some(url) => url.clone(),
        None => format!("sqlite:{}", dir.path().join("store-bench.db").display()),
    };
    let report = trainyard_scheduler::store::bench::bench_store(&url, STORE_BENCH_TASKS)
        .await
        .context("store benchmark failed")?;
    let mut line = serde_json::to_value(&report)?;
    if let Some(obj) = line.as_object_mut() {
        obj.insert("workload".into(), Value::from("store"));
    }
    emit(&line);
    Ok(())
}

fn emit(line: &Value) {
    println!("{line}");
}

fn round(x: f64, digits: i32) -> f64 {
    let p = 10f64.powi(digits);
    (x * p).round() / p
}

fn ceiling_line(name: &str, c: &Ceiling) -> Value {
    json!({
        "workload": name,
        "backend": "none",
        "tasks": c.spawns,
        "threads": c.threads,
        "wall_s": round(c.wall.as_secs_f64(), 4),
        "tasks_per_s": round(c.per_second(), 1),
        "spawn_mean_ms": round(c.mean_spawn.as_secs_f64() * 1e3, 3),
        "note": "std::process::Command::new(\"true\").status() in a loop on each thread; no scheduler",
    })
}

/// Runs one workload `--repeat` times; false when a run did not succeed.
async fn bench_workload(
    args: &BenchArgs,
    workload: Workload,
    ceiling: &Ceilings,
) -> anyhow::Result<bool> {
    let plan = DagPlan::sized(workload, args.tasks);
    let packing = workload == Workload::Packing;
    let fleet = if packing {
        Fleet {
            workers: PACKING_WORKERS,
            slots: args.slots.max(PACKING_GPUS_PER_WORKER),
            gpus: Some(PACKING_GPU_SPEC.to_owned()),
        }
    } else {
        Fleet {
            workers: 1,
            slots: args.slots,
            gpus: None,
        }
    };
    let mut ok = true;
    if let Some(server) = &args.server {
        let remote = remote::Remote::new(server, args.token.clone())?;
        for i in 0..args.repeat.max(1) {
            let figures = remote.run(&plan).await?;
            let rss = remote.scheduler_rss_bytes().await;
            let mut line = figures_line(&plan, &figures, ceiling, "server", i);
            line.insert(
                "scheduler_rss_mb".into(),
                json!(rss.map(|b| round(b / 1048576.0, 1))),
            );
            line.insert(
                "note".into(),
                json!("remote: RSS from the server's /metrics; wall_s polled every 10 ms"),
            );
            ok &= figures.state == "success";
            emit(&Value::Object(line));
        }
        return Ok(ok);
    }
    let backend = if args.db.is_some() {
        "postgres"
    } else {
        "sqlite"
    };
    let instance = Instance::start(&plan, args.db.as_deref(), &fleet).await?;
    for i in 0..args.repeat.max(1) {
        let figures = match instance.run(&plan).await {
            Ok(f) => f,
            Err(err) => {
                instance.stop().await;
                return Err(err);
            }
        };
        let mut line = figures_line(&plan, &figures, ceiling, backend, i);
        let mem = figures.memory;
        line.insert(
            "scheduler_rss_mb".into(),
            json!(mem.map(|m| round(m.rss_bytes as f64 / 1048576.0, 1))),
        );
        line.insert(
            "scheduler_peak_rss_mb".into(),
            json!(mem.map(|m| round(m.hwm_bytes as f64 / 1048576.0, 1))),
        );
        line.insert(
            "peak_rss_before_run_mb".into(),
            json!(figures.peak_before.map(|b| round(b as f64 / 1048576.0, 1))),
        );
        line.insert("workers".into(), json!(fleet.workers));
        line.insert("slots".into(), json!(fleet.slots));
        line.insert(
            "note".into(),
            json!("embedded: RSS (VmRSS at the run's end; peak = VmHWM from the trigger to the run's end) is this whole process: scheduler, workers and the idle bench"),
        );
        ok &= figures.state == "success";
        emit(&Value::Object(line));
    }
    instance.stop().await;
    Ok(ok)
}

/// The keys every workload line has, plus packing's.
fn figures_line(
    plan: &DagPlan,
    f: &RunFigures,
    ceiling: &Ceilings,
    backend: &str,
    repeat: u32,
) -> Map<String, Value> {
    let steps = measure::step_latencies_ms(plan, &f.times);
    let tasks = plan.tasks.len();
    let tasks_per_s = tasks as f64 / f.wall_s.max(1e-9);
    let mut line = Map::new();
    line.insert("workload".into(), json!(plan.workload.name()));
    line.insert("backend".into(), json!(backend));
    line.insert("tasks".into(), json!(tasks));
    line.insert("repeat".into(), json!(repeat));
    line.insert("run_id".into(), json!(f.run_id));
    line.insert("run_state".into(), json!(f.state));
    line.insert("wall_s".into(), json!(round(f.wall_s, 4)));
    line.insert(
        "server_wall_s".into(),
        json!(f.server_wall_s.map(|s| round(s, 4))),
    );
    line.insert(
        "step_p50_ms".into(),
        json!(measure::percentile(&steps, 50.0).map(|v| round(v, 3))),
    );
    line.insert(
        "step_p99_ms".into(),
        json!(measure::percentile(&steps, 99.0).map(|v| round(v, 3))),
    );
    if let Some(ms) = f.client_wait_ms {
        line.insert("client_wait_ms".into(), json!(round(ms, 2)));
    }
    line.insert("steps".into(), json!(steps.len()));
    line.insert("tasks_per_s".into(), json!(round(tasks_per_s, 1)));
    line.insert(
        "store_tx_per_task".into(),
        json!(
            f.transactions
                .map(|n| round(n as f64 / tasks.max(1) as f64, 3))
        ),
    );
    if plan.workload == Workload::Packing {
        let total_gpus = f64::from(PACKING_WORKERS * PACKING_GPUS_PER_WORKER);
        let bound = plan.gpu_seconds() / total_gpus;
        let makespan = measure::makespan_s(&f.times);
        line.insert("makespan_s".into(), json!(makespan.map(|m| round(m, 3))));
        line.insert("bound_s".into(), json!(round(bound, 3)));
        line.insert(
            "gpu_utilization".into(),
            json!(makespan.map(|m| round(bound / m.max(1e-9), 3))),
        );
        line.insert("total_gpus".into(), json!(total_gpus));
    } else {
        let (against, c) = if plan.workload.serial() {
            ("ceiling_spawn_serial", &ceiling.serial)
        } else {
            ("ceiling_spawn", &ceiling.parallel)
        };
        line.insert(
            "ceiling_ratio".into(),
            json!(round(tasks_per_s / c.per_second().max(1e-9), 4)),
        );
        line.insert("ceiling".into(), json!(against));
    }
    line
}
