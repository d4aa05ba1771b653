//! Placement: which worker (and which of its GPUs) a task goes to. Pure.
//!
//! A task fits a worker when the worker serves the task's pool, has a free
//! slot, enough free CPUs and memory, and `gpus` free healthy GPUs each with
//! at least `gpu_memory` and a model matching the `gpu_model` regex.
//!
//! Queues: a worker that registered no queues serves only the `default` pool;
//! a worker listing queues serves exactly those (list `default` to serve it too).
//!
//! Best fit: among the workers that fit, the one left with the fewest free
//! GPUs wins, then the fewest free CPUs, then the name (for determinism), so
//! whole machines stay free for big jobs. Within a worker the GPUs with the
//! least memory that still suffices are taken first, lowest index first.
//! Nothing is ever overcommitted: callers reserve what [`place`] returns
//! before placing the next task.
//!
//! [`never_fits`] says, in words, why no registered worker could hold a task
//! even when idle ("needs 4 GPUs of model H100; the largest worker has 2").

use regex::Regex;
use trainyard_core::ids::WorkerId;

/// The pool a worker serves when it registered no queues.
pub const DEFAULT_POOL: &str = "default";

/// One GPU as placement sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct GpuCapacity {
    pub index: u32,
    pub model: String,
    pub memory_bytes: u64,
    pub healthy: bool,
    /// Not held by any attempt.
    pub free: bool,
}

/// A worker's totals and what is free now.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerCapacity {
    pub id: WorkerId,
    pub name: String,
    pub queues: Vec<String>,
    pub total_cpus: f64,
    pub free_cpus: f64,
    pub total_memory: u64,
    pub free_memory: u64,
    pub total_slots: u32,
    pub free_slots: u32,
    pub gpus: Vec<GpuCapacity>,
}

impl WorkerCapacity {
    /// Whether the worker takes tasks of `pool`.
    pub fn serves(&self, pool: &str) -> bool {
        if self.queues.is_empty() {
            pool == DEFAULT_POOL
        } else {
            self.queues.iter().any(|q| q == pool)
        }
    }

    fn free_gpu_count(&self) -> usize {
        self.gpus.iter().filter(|g| g.free && g.healthy).count()
    }
}

/// What one task asks for.
#[derive(Debug, Clone)]
pub struct Demand {
    pub pool: String,
    pub cpus: f64,
    pub memory: u64,
    pub gpus: u32,
    pub gpu_memory: Option<u64>,
    /// Compiled `gpu_model`; `None` = any model. Matched unanchored, as written.
    pub gpu_model: Option<Regex>,
}

impl Demand {
    fn gpu_ok(&self, g: &GpuCapacity) -> bool {
        g.healthy
            && self.gpu_memory.is_none_or(|m| g.memory_bytes >= m)
            && self
                .gpu_model
                .as_ref()
                .is_none_or(|re| re.is_match(&g.model))
    }
}

/// Where a task goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub worker: WorkerId,
    pub gpu_indices: Vec<u32>,
}

/// Small tolerance so 0.1 + 0.2 cpus still fit in 0.3.
const CPU_EPS: f64 = 1e-9;

/// The GPUs `demand` would take on `w` now, or `None` if it does not fit now.
fn fit_now(demand: &Demand, w: &WorkerCapacity) -> Option<Vec<u32>> {
    if !w.serves(&demand.pool)
        || w.free_slots == 0
        || w.free_cpus + CPU_EPS < demand.cpus
        || w.free_memory < demand.memory
    {
        return None;
    }
    let mut candidates: Vec<&GpuCapacity> = w
        .gpus
        .iter()
        .filter(|g| g.free && demand.gpu_ok(g))
        .collect();
    if candidates.len() < demand.gpus as usize {
        return None;
    }
    candidates.sort_by_key(|g| (g.memory_bytes, g.index));
    let mut chosen: Vec<u32> = candidates
        .iter()
        .take(demand.gpus as usize)
        .map(|g| g.index)
        .collect();
    chosen.sort_unstable();
    Some(chosen)
}

/// Best-fit placement among `workers`, or `None` when none fits now.
pub fn place(demand: &Demand, workers: &[WorkerCapacity]) -> Option<Placement> {
    workers
        .iter()
        .filter_map(|w| fit_now(demand, w).map(|gpus| (w, gpus)))
        .min_by(|(a, ga), (b, gb)| {
            let left_a = a.free_gpu_count() - ga.len();
            let left_b = b.free_gpu_count() - gb.len();
            left_a
                .cmp(&left_b)
                .then(a.free_cpus.total_cmp(&b.free_cpus))
                .then(a.name.cmp(&b.name))
        })
        .map(|(w, gpus)| Placement {
            worker: w.id,
            gpu_indices: gpus,
        })
}

/// Whether `demand` could fit `w` if `w` were idle.
fn fits_empty(demand: &Demand, w: &WorkerCapacity) -> bool {
    w.serves(&demand.pool)
        && w.total_slots > 0
        && w.total_cpus + CPU_EPS >= demand.cpus
        && w.total_memory >= demand.memory
        && w.gpus.iter().filter(|g| demand.gpu_ok(g)).count() >= demand.gpus as usize
}

/// Why no worker could ever hold `demand`, or `None` if one could (when idle).
pub fn never_fits(demand: &Demand, workers: &[WorkerCapacity]) -> Option<String> {
    if workers.iter().any(|w| fits_empty(demand, w)) {
        return None;
    }
    if workers.is_empty() {
        return Some("no worker is registered".to_owned());
    }
    let serving: Vec<&WorkerCapacity> = workers.iter().filter(|w| w.serves(&demand.pool)).collect();
    if serving.is_empty() {
        return Some(format!(
            "no worker serves pool `{}` (start a worker with --queues {})",
            demand.pool, demand.pool
        ));
    }
    if demand.gpus > 0 {
        let best = serving
            .iter()
            .map(|w| w.gpus.iter().filter(|g| demand.gpu_ok(g)).count())
            .max()
            .unwrap_or(0);
        if best < demand.gpus as usize {
            let mut what = format!("needs {} GPU{}", demand.gpus, plural(demand.gpus as usize));
            let mut kind = String::new();
            if let Some(re) = &demand.gpu_model {
                what.push_str(&format!(" of model {}", re.as_str()));
                kind = format!("{} {}", article(re.as_str()), re.as_str());
            }
            if let Some(m) = demand.gpu_memory {
                let at_least = format!("with at least {}", trainyard_core::resources::ByteSize(m));
                what.push_str(&format!(" {at_least}"));
                kind = if kind.is_empty() {
                    format!("a GPU {at_least}")
                } else {
                    format!("{kind} {at_least}")
                };
            }
            let largest = serving
                .iter()
                .map(|w| w.gpus.iter().filter(|g| g.healthy).count())
                .max()
                .unwrap_or(0);
            if best == 0 && !kind.is_empty() {
                // None of the kind at all: say so, and how big the biggest worker is.
                return Some(format!(
                    "{what}; no registered worker has {kind}; the largest worker has {largest} GPU{}",
                    plural(largest)
                ));
            }
            let qualifier = if kind.is_empty() { "" } else { " such" };
            return Some(format!(
                "{what}; the largest worker has {best}{qualifier} GPU{}",
                plural(best)
            ));
        }
    }
    let max_cpus = serving.iter().map(|w| w.total_cpus).fold(0.0, f64::max);
    if max_cpus + CPU_EPS < demand.cpus {
        return Some(format!(
            "needs {} CPUs; the largest worker has {max_cpus}",
            demand.cpus
        ));
    }
    let max_mem = serving.iter().map(|w| w.total_memory).max().unwrap_or(0);
    if max_mem < demand.memory {
        return Some(format!(
            "needs {} of memory; the largest worker has {}",
            trainyard_core::resources::ByteSize(demand.memory),
            trainyard_core::resources::ByteSize(max_mem)
        ));
    }
    Some("no single worker has all of the requested CPUs, memory and GPUs".to_owned())
}

/// "a" or "an" before a model name as it is spoken: "an H100", "an A100", "a T4".
fn article(name: &str) -> &'static str {
    // Letters whose spoken name starts with a vowel sound (A, E, F "ef", H "aitch"…).
    match name.chars().next().map(|c| c.to_ascii_uppercase()) {
        Some('A' | 'E' | 'F' | 'H' | 'I' | 'L' | 'M' | 'N' | 'O' | 'R' | 'S' | 'X') => "an",
        _ => "a",
    }
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn worker(name: &str, gpus: &[(&str, u64, bool)]) -> WorkerCapacity {
        WorkerCapacity {
            id: WorkerId::new(),
            name: name.to_owned(),
            queues: vec![],
            total_cpus: 16.0,
            free_cpus: 16.0,
            total_memory: 64 * GIB,
            free_memory: 64 * GIB,
            total_slots: 8,
            free_slots: 8,
            gpus: gpus
                .iter()
                .enumerate()
                .map(|(i, (model, mem, free))| GpuCapacity {
                    index: i as u32,
                    model: (*model).to_owned(),
                    memory_bytes: mem * GIB,
                    healthy: true,
                    free: *free,
                })
                .collect(),
        }
    }

    fn demand(gpus: u32) -> Demand {
        Demand {
            pool: DEFAULT_POOL.to_owned(),
            cpus: 1.0,
            memory: GIB,
            gpus,
            gpu_memory: None,
            gpu_model: None,
        }
    }

    #[test]
    fn best_fit_prefers_the_worker_left_with_fewest_free_gpus() {
        let big = worker("big", &[("A100", 80, true); 8]);
        let half = worker(
            "half",
            &[
                ("A100", 80, true),
                ("A100", 80, true),
                ("A100", 80, false),
                ("A100", 80, false),
            ],
        );
        let p = place(&demand(2), &[big.clone(), half.clone()]).unwrap();
        assert_eq!(p.worker, half.id, "the 8-GPU machine stays whole");
        assert_eq!(p.gpu_indices, vec![0, 1]);
    }

    #[test]
    fn cpu_tasks_go_to_cpu_only_workers_first() {
        let gpu = worker("gpu", &[("A100", 80, true)]);
        let cpu = worker("cpu", &[]);
        assert_eq!(
            place(&demand(0), &[gpu, cpu.clone()]).unwrap().worker,
            cpu.id
        );
    }

    #[test]
    fn model_memory_health_and_freedom_are_all_required() {
        let mut w = worker(
            "w",
            &[
                ("NVIDIA A100-SXM4-80GB", 80, true),
                ("NVIDIA H100 80GB HBM3", 80, false),
                ("NVIDIA H100 80GB HBM3", 40, true),
            ],
        );
        let mut d = demand(1);
        d.gpu_model = Some(Regex::new("H100").unwrap());
        assert_eq!(
            place(&d, std::slice::from_ref(&w)).unwrap().gpu_indices,
            vec![2]
        );
        d.gpu_memory = Some(80 * GIB);
        assert!(
            place(&d, std::slice::from_ref(&w)).is_none(),
            "the free H100 is too small"
        );
        w.gpus[1].free = true;
        w.gpus[1].healthy = false;
        assert!(
            place(&d, std::slice::from_ref(&w)).is_none(),
            "unhealthy GPUs are never used"
        );
    }

    #[test]
    fn smallest_sufficient_gpus_are_taken_first() {
        let w = worker(
            "w",
            &[("A100", 80, true), ("A100", 40, true), ("A100", 40, true)],
        );
        let mut d = demand(1);
        d.gpu_memory = Some(40 * GIB);
        assert_eq!(place(&d, &[w]).unwrap().gpu_indices, vec![1]);
    }

    #[test]
    fn slots_cpus_memory_and_queues_are_never_overcommitted() {
        let mut w = worker("w", &[]);
        w.free_slots = 0;
        assert!(place(&demand(0), std::slice::from_ref(&w)).is_none());
        w.free_slots = 1;
        w.free_cpus = 0.5;
        assert!(place(&demand(0), std::slice::from_ref(&w)).is_none());
        w.free_cpus = 1.0;
        w.free_memory = GIB - 1;
        assert!(place(&demand(0), std::slice::from_ref(&w)).is_none());
        w.free_memory = GIB;
        assert!(place(&demand(0), std::slice::from_ref(&w)).is_some());
        let mut d = demand(0);
        d.pool = "etl".into();
        assert!(
            place(&d, std::slice::from_ref(&w)).is_none(),
            "no queues = default pool only"
        );
        w.queues = vec!["etl".into()];
        assert!(place(&d, std::slice::from_ref(&w)).is_some());
        assert!(place(&demand(0), std::slice::from_ref(&w)).is_none());
    }

    #[test]
    fn never_fits_explains_in_words() {
        let a = worker("a", &[("A100", 80, true), ("A100", 80, true)]);
        let b = worker("b", &[("H100", 80, false), ("H100", 80, false)]);
        let mut d = demand(4);
        d.gpu_model = Some(Regex::new("H100").unwrap());
        assert_eq!(
            never_fits(&d, &[a.clone(), b.clone()]).unwrap(),
            "needs 4 GPUs of model H100; the largest worker has 2 such GPUs"
        );
        assert_eq!(
            never_fits(&d, std::slice::from_ref(&a)).unwrap(),
            "needs 4 GPUs of model H100; no registered worker has an H100; \
             the largest worker has 2 GPUs"
        );
        // Busy is not "never": b's GPUs are held now but it could hold 2.
        d.gpus = 2;
        assert_eq!(never_fits(&d, &[a.clone(), b]), None);
        let mut d = demand(0);
        d.cpus = 64.0;
        assert_eq!(
            never_fits(&d, std::slice::from_ref(&a)).unwrap(),
            "needs 64 CPUs; the largest worker has 16"
        );
        assert_eq!(
            never_fits(&demand(0), &[]).unwrap(),
            "no worker is registered"
        );
        let mut d = demand(0);
        d.pool = "gpu-big".into();
        assert!(
            never_fits(&d, &[a])
                .unwrap()
                .starts_with("no worker serves pool `gpu-big`")
        );
    }
}
