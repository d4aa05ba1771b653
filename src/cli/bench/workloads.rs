//! The standard benchmark workloads as DAG files, generated at run time into
//! a temp folder (the bench does not depend on the repository's `dags/`).
//!
//! Each workload knows its graph (for per-step latency) and, for `packing`,
//! the GPUs and nominal duration of every task (for the utilisation bound).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use clap::ValueEnum;

/// A benchmark workload.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Workload {
    /// start → 100 parallel `true` → join.
    Fanout,
    /// 50 `true` in a line.
    Chain,
    /// 4 `true` in a line (the shape of a retraining pipeline).
    Retrain,
    /// 10,000 independent `true` in one DAG (`--tasks N` for another size).
    Wide,
    /// 20 layers, each task depending on two tasks of the layer above
    /// (2,000 tasks; `--tasks N` for another size).
    Layered,
    /// 200 `sleep` tasks needing 1, 2, 4 or 8 GPUs on 4 workers × 8 GPUs.
    Packing,
    /// Only the machine's ceiling: spawning and reaping `true` on 8 threads.
    Ceiling,
    /// The store alone: claim and compare-and-set transition throughput
    /// (2,000 tasks), no engine, no workers.
    Store,
}

impl Workload {
    pub const STANDARD: [Workload; 5] = [
        Workload::Fanout,
        Workload::Chain,
        Workload::Retrain,
        Workload::Wide,
        Workload::Packing,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Fanout => "fanout",
            Workload::Chain => "chain",
            Workload::Retrain => "retrain",
            Workload::Wide => "wide",
            Workload::Layered => "layered",
            Workload::Packing => "packing",
            Workload::Ceiling => "ceiling_spawn",
            Workload::Store => "store",
        }
    }

    /// The DAG id the workload triggers (same ids as the repository's `dags/bench_*.toml`).
    pub fn dag_id(self) -> String {
        format!("bench_{}", self.name())
    }

    /// Whether each task waits for the one before (a serial workload: its
    /// `ceiling_ratio` is against the single-thread spawn ceiling).
    pub fn serial(self) -> bool {
        matches!(self, Workload::Chain | Workload::Retrain)
    }

    /// Tasks when `--tasks` is not given (workloads that take it).
    pub fn default_tasks(self) -> Option<usize> {
        match self {
            Workload::Wide => Some(10_000),
            Workload::Layered => Some(LAYERED_DEFAULT_TASKS),
            _ => None,
        }
    }
}

/// Layers of the `layered` workload.
pub const LAYERS: usize = 20;
pub const LAYERED_DEFAULT_TASKS: usize = 2_000;

/// One task of a generated DAG.
#[derive(Debug, Clone)]
pub struct TaskSpec {
    pub id: String,
    pub depends_on: Vec<String>,
    pub command: Vec<String>,
    /// GPUs requested (packing only).
    pub gpus: u32,
    /// Nominal run time in seconds (`sleep`), 0 for `true`.
    pub seconds: f64,
}

impl TaskSpec {
    fn truth(id: String, depends_on: Vec<String>) -> Self {
        Self {
            id,
            depends_on,
            command: vec!["true".into()],
            gpus: 0,
            seconds: 0.0,
        }
    }
}

/// A generated DAG: its id and tasks in file order.
#[derive(Debug, Clone)]
pub struct DagPlan {
    pub workload: Workload,
    pub dag_id: String,
    pub tasks: Vec<TaskSpec>,
}

impl DagPlan {
    /// The workload's DAG at its standard size.
    #[cfg(test)]
    pub fn for_workload(workload: Workload) -> Self {
        Self::sized(workload, None)
    }

    /// The workload's DAG; `tasks` resizes `wide` and `layered` (others ignore it).
    pub fn sized(workload: Workload, tasks: Option<usize>) -> Self {
        let n = tasks
            .or(workload.default_tasks())
            .unwrap_or_default()
            .max(1);
        let tasks = match workload {
            Workload::Fanout => fanout(),
            Workload::Chain => line("step", 50),
            Workload::Retrain => ["ingest", "train", "evaluate", "deploy"]
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let deps = if i == 0 {
                        vec![]
                    } else {
                        vec![["ingest", "train", "evaluate"][i - 1].to_owned()]
                    };
                    TaskSpec::truth((*id).to_owned(), deps)
                })
                .collect(),
            Workload::Wide => (1..=n)
                .map(|i| TaskSpec::truth(format!("t_{i:06}"), vec![]))
                .collect(),
            Workload::Layered => layered(n),
            Workload::Packing => packing(),
            Workload::Ceiling | Workload::Store => Vec::new(),
        };
        Self {
            workload,
            dag_id: workload.dag_id(),
            tasks,
        }
    }

    /// Direct upstream tasks of each task.
    pub fn upstream(&self) -> BTreeMap<&str, &[String]> {
        self.tasks
            .iter()
            .map(|t| (t.id.as_str(), t.depends_on.as_slice()))
            .collect()
    }

    /// The DAG file's text.
    pub fn to_toml(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# Generated by `trainyard bench` ({}).",
            self.workload.name()
        );
        let _ = writeln!(out, "id = \"{}\"", self.dag_id);
        let _ = writeln!(
            out,
            "description = \"trainyard bench workload {}\"\n",
            self.workload.name()
        );
        for t in &self.tasks {
            let _ = writeln!(out, "[tasks.{}]", t.id);
            if !t.depends_on.is_empty() {
                let deps: Vec<String> = t.depends_on.iter().map(|d| format!("\"{d}\"")).collect();
                let _ = writeln!(out, "depends_on = [{}]", deps.join(", "));
            }
            let argv: Vec<String> = t.command.iter().map(|a| format!("\"{a}\"")).collect();
            let _ = writeln!(out, "command = [{}]", argv.join(", "));
            if t.gpus > 0 {
                let _ = writeln!(out, "resources = {{ gpus = {} }}", t.gpus);
            }
            out.push('\n');
        }
        out
    }

    /// Writes the DAG file into `dir` as `<dag_id>.toml`.
    pub fn write_into(&self, dir: &Path) -> std::io::Result<()> {
        std::fs::write(dir.join(format!("{}.toml", self.dag_id)), self.to_toml())
    }

    /// Total GPU-seconds of nominal work (packing).
    pub fn gpu_seconds(&self) -> f64 {
        self.tasks
            .iter()
            .map(|t| f64::from(t.gpus) * t.seconds)
            .sum()
    }
}

fn fanout() -> Vec<TaskSpec> {
    let mut tasks = vec![TaskSpec::truth("start".into(), vec![])];
    let fan: Vec<String> = (1..=100).map(|i| format!("fan_{i:03}")).collect();
    tasks.extend(
        fan.iter()
            .map(|id| TaskSpec::truth(id.clone(), vec!["start".into()])),
    );
    tasks.push(TaskSpec::truth("join".into(), fan));
    tasks
}

/// `n` tasks in [`LAYERS`] layers (the first ones take the remainder); each
/// task below the first layer depends on tasks `i` and `i + 1` (wrapping) of
/// the layer above, so fan-in is two everywhere and the graph stays connected.
fn layered(n: usize) -> Vec<TaskSpec> {
    let layers = LAYERS.min(n);
    let width = |l: usize| n / layers + usize::from(l < n % layers);
    let name = |l: usize, i: usize| format!("l{l:02}_{i:05}");
    let mut tasks = Vec::with_capacity(n);
    for l in 0..layers {
        for i in 0..width(l) {
            let deps = if l == 0 {
                vec![]
            } else {
                let above = width(l - 1);
                let mut d = vec![name(l - 1, i % above)];
                if above > 1 {
                    d.push(name(l - 1, (i + 1) % above));
                }
                d
            };
            tasks.push(TaskSpec::truth(name(l, i), deps));
        }
    }
    tasks
}

fn line(prefix: &str, n: usize) -> Vec<TaskSpec> {
    (1..=n)
        .map(|i| {
            let deps = if i == 1 {
                vec![]
            } else {
                vec![format!("{prefix}_{:02}", i - 1)]
            };
            TaskSpec::truth(format!("{prefix}_{i:02}"), deps)
        })
        .collect()
}

/// Tasks in the packing workload.
pub const PACKING_TASKS: usize = 200;
/// Workers × declared GPUs each in the packing workload.
pub const PACKING_WORKERS: u32 = 4;
pub const PACKING_GPUS_PER_WORKER: u32 = 8;
pub const PACKING_GPU_SPEC: &str = "8xA100-80GB";

/// 200 independent tasks; GPU counts 1/2/4/8 and durations 0.1–0.5 s drawn
/// from a fixed-seed generator, so every run packs the same mix
/// (≈ 7 s of lower bound on 32 GPUs).
fn packing() -> Vec<TaskSpec> {
    // Numerical Recipes LCG: deterministic and dependency-free.
    let mut state: u32 = 0x5EED_2024;
    let mut next = move || {
        state = state.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        state >> 16
    };
    (1..=PACKING_TASKS)
        .map(|i| {
            let gpus = [1, 2, 4, 8][(next() % 4) as usize];
            let tenths = 1 + next() % 5;
            let seconds = f64::from(tenths) / 10.0;
            TaskSpec {
                id: format!("job_{i:03}"),
                depends_on: vec![],
                command: vec!["sleep".into(), format!("0.{tenths}")],
                gpus,
                seconds,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workloads_have_the_sizes_the_brief_names() {
        let n = |w| DagPlan::for_workload(w).tasks.len();
        assert_eq!(n(Workload::Fanout), 102);
        assert_eq!(n(Workload::Chain), 50);
        assert_eq!(n(Workload::Retrain), 4);
        assert_eq!(n(Workload::Wide), 10_000);
        assert_eq!(n(Workload::Packing), PACKING_TASKS);
        assert_eq!(n(Workload::Layered), 2_000);
        assert_eq!(
            DagPlan::sized(Workload::Wide, Some(100_000)).tasks.len(),
            100_000
        );
        assert_eq!(
            DagPlan::sized(Workload::Layered, Some(500)).tasks.len(),
            500
        );
    }

    #[test]
    fn layered_tasks_depend_on_two_tasks_of_the_layer_above() {
        let plan = DagPlan::sized(Workload::Layered, Some(2_000));
        let first: Vec<_> = plan
            .tasks
            .iter()
            .filter(|t| t.id.starts_with("l00_"))
            .collect();
        assert_eq!(first.len(), 100);
        assert!(first.iter().all(|t| t.depends_on.is_empty()));
        for t in plan.tasks.iter().filter(|t| !t.id.starts_with("l00_")) {
            assert_eq!(t.depends_on.len(), 2, "{}", t.id);
            let layer: usize = t.id[1..3].parse().unwrap();
            for d in &t.depends_on {
                assert_eq!(d[1..3].parse::<usize>().unwrap(), layer - 1);
            }
        }
        let text = plan.to_toml();
        assert!(trainyard_core::dag::parse_dag("layered.toml", &text).is_ok());
    }

    #[test]
    fn generated_files_parse_as_valid_dags() {
        for w in Workload::STANDARD {
            let plan = DagPlan::for_workload(w);
            let text = plan.to_toml();
            let spec = trainyard_core::dag::parse_dag("bench.toml", &text);
            assert!(spec.is_ok(), "{}: {:?}", w.name(), spec.err());
        }
    }

    #[test]
    fn packing_mix_is_deterministic_and_needs_every_gpu_size() {
        let a = DagPlan::for_workload(Workload::Packing);
        let b = DagPlan::for_workload(Workload::Packing);
        assert_eq!(a.gpu_seconds(), b.gpu_seconds());
        for size in [1, 2, 4, 8] {
            assert!(a.tasks.iter().any(|t| t.gpus == size));
        }
    }
}
