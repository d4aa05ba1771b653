//! Figures from a finished run: per-step latency from the attempts' stored
//! timestamps, packing makespan and utilisation, percentiles; and the
//! machine's ceiling (spawning and reaping `true` on 8 threads).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::workloads::DagPlan;

/// The latest attempt of one task, as stored.
#[derive(Debug, Clone)]
pub struct TaskTimes {
    pub attempt: i32,
    pub started_at: Option<DateTime<Utc>>,
    pub ended_at: Option<DateTime<Utc>>,
}

/// Step latencies in milliseconds: for every task with upstream tasks, from
/// the last upstream attempt's recorded end to this task's process start.
/// In `fanout` this includes waiting for a free slot (100 tasks, 8 slots).
pub fn step_latencies_ms(plan: &DagPlan, times: &BTreeMap<String, TaskTimes>) -> Vec<f64> {
    let mut out = Vec::new();
    for (task, upstream) in plan.upstream() {
        if upstream.is_empty() {
            continue;
        }
        let Some(start) = times.get(task).and_then(|t| t.started_at) else {
            continue;
        };
        let ends: Option<Vec<DateTime<Utc>>> = upstream
            .iter()
            .map(|u| times.get(u.as_str()).and_then(|t| t.ended_at))
            .collect();
        let Some(last_end) = ends.and_then(|e| e.into_iter().max()) else {
            continue;
        };
        out.push((start - last_end).num_microseconds().unwrap_or(0) as f64 / 1000.0);
    }
    out.sort_by(f64::total_cmp);
    out
}

/// Nearest-rank percentile of sorted values; `None` when there are none.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// First attempt start to last attempt end, in seconds.
pub fn makespan_s(times: &BTreeMap<String, TaskTimes>) -> Option<f64> {
    let first = times.values().filter_map(|t| t.started_at).min()?;
    let last = times.values().filter_map(|t| t.ended_at).max()?;
    Some((last - first).num_microseconds().unwrap_or(0) as f64 / 1e6)
}

/// Result of the spawn ceiling.
#[derive(Debug, Clone, Copy)]
pub struct Ceiling {
    pub spawns: usize,
    pub threads: usize,
    pub wall: Duration,
    /// Mean time of one spawn+wait, as a thread sees it.
    pub mean_spawn: Duration,
}

impl Ceiling {
    pub fn per_second(&self) -> f64 {
        self.spawns as f64 / self.wall.as_secs_f64().max(1e-9)
    }
}

/// How many `true` processes this machine spawns and reaps per second with
/// `threads` threads each running `per_thread` in a row (the same work the
/// workers do, minus the scheduler).
pub fn spawn_ceiling(threads: usize, per_thread: usize) -> std::io::Result<Ceiling> {
    let started = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            std::thread::spawn(move || -> std::io::Result<Duration> {
                let mut busy = Duration::ZERO;
                for _ in 0..per_thread {
                    let t = Instant::now();
                    let status = std::process::Command::new("true")
                        .stdin(std::process::Stdio::null())
                        .stdout(std::process::Stdio::null())
                        .stderr(std::process::Stdio::null())
                        .status()?;
                    if !status.success() {
                        return Err(std::io::Error::other("`true` failed"));
                    }
                    busy += t.elapsed();
                }
                Ok(busy)
            })
        })
        .collect();
    let mut busy = Duration::ZERO;
    for h in handles {
        busy += h
            .join()
            .map_err(|_| std::io::Error::other("a spawn thread panicked"))??;
    }
    let spawns = threads * per_thread;
    Ok(Ceiling {
        spawns,
        threads,
        wall: started.elapsed(),
        mean_spawn: busy / u32::try_from(spawns.max(1)).unwrap_or(u32::MAX),
    })
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::super::workloads::Workload;
    use super::*;

    fn at(ms: i64) -> Option<DateTime<Utc>> {
        Some(Utc.timestamp_millis_opt(1_700_000_000_000 + ms).unwrap())
    }

    #[test]
    fn a_step_runs_from_the_last_upstream_end_to_the_successor_start() {
        let plan = DagPlan::for_workload(Workload::Retrain);
        let t = |s, e| TaskTimes {
            attempt: 1,
            started_at: at(s),
            ended_at: at(e),
        };
        let times: BTreeMap<String, TaskTimes> = [
            ("ingest".to_owned(), t(0, 10)),
            ("train".to_owned(), t(12, 20)),
            ("evaluate".to_owned(), t(21, 30)),
            ("deploy".to_owned(), t(35, 40)),
        ]
        .into();
        assert_eq!(step_latencies_ms(&plan, &times), vec![1.0, 2.0, 5.0]);
        assert_eq!(makespan_s(&times), Some(0.04));
    }

    #[test]
    fn percentiles_use_the_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&[], 50.0), None);
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
    }
}
