//! Memory under a flood of log-follow requests, measured on a real
//! `trainyard scheduler` process (PostgreSQL): 40,000 `…/logs/stream`
//! requests for unknown runs, unknown tasks and finished tasks must leave
//! the scheduler's resident memory where it was (growth ≤ 20 MB). Before
//! followers were bounded each distinct (run, task) kept a ~96 KB channel
//! forever: 40,000 requests took a scheduler from 42 MB to 3.9 GB.
//!
//! Ignored by default (about a minute); `scripts/test-slow` runs it (the
//! chaos stage of `.ci/run`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use futures::StreamExt;
use support::Cluster;

const REQUESTS: usize = 40_000;
const IN_FLIGHT: usize = 32;
const MAX_GROWTH_KB: u64 = 20 * 1024;

/// Ten tasks that print a little; two runs give twenty finished (run, task) pairs.
const DAG: &str = r#"
id = "chatty"
max_active_runs = 2
[tasks.t0]
command = ["echo", "line from t0"]
[tasks.t1]
command = ["echo", "line from t1"]
[tasks.t2]
command = ["echo", "line from t2"]
[tasks.t3]
command = ["echo", "line from t3"]
[tasks.t4]
command = ["echo", "line from t4"]
[tasks.t5]
command = ["echo", "line from t5"]
[tasks.t6]
command = ["echo", "line from t6"]
[tasks.t7]
command = ["echo", "line from t7"]
[tasks.t8]
command = ["echo", "line from t8"]
[tasks.t9]
command = ["echo", "line from t9"]
"#;

/// VmRSS of a process, in KiB.
fn rss_kb(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// The i-th request of the flood: a quarter for unknown runs, a quarter for
/// unknown tasks of a real run, half for finished tasks (read to their end).
fn path_of(i: usize, runs: &[String]) -> (String, bool) {
    match i % 4 {
        0 => (
            format!(
                "/api/v1/runs/{}/tasks/train/logs/stream",
                uuid::Uuid::now_v7()
            ),
            false,
        ),
        1 => (
            format!(
                "/api/v1/runs/{}/tasks/task_{i}/logs/stream",
                runs[i % runs.len()]
            ),
            false,
        ),
        _ => (
            format!(
                "/api/v1/runs/{}/tasks/t{}/logs/stream",
                runs[i % runs.len()],
                (i / 4) % 10
            ),
            true,
        ),
    }
}

async fn flood(cluster: &Cluster, runs: &[String], from: usize, count: usize) {
    let client = reqwest::Client::new();
    let results = futures::stream::iter(from..from + count)
        .map(|i| {
            let client = client.clone();
            let (path, finished) = path_of(i, runs);
            let url = cluster.url(&path);
            async move {
                let resp = client.get(&url).send().await.unwrap();
                let status = resp.status().as_u16();
                // A finished task's stream replays its log and ends by itself.
                let body = resp.text().await.unwrap();
                match (finished, status) {
                    (true, 200) => assert!(body.contains("event: end"), "{path}: {body}"),
                    (false, 404) => {}
                    _ => panic!("{path}: {status} {body}"),
                }
            }
        })
        .buffer_unordered(IN_FLIGHT);
    results.collect::<Vec<()>>().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "memory test (about a minute): CI runs it with --ignored"]
async fn forty_thousand_follow_requests_for_unknown_and_finished_attempts_keep_rss_flat() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/chatty.toml"), DAG).unwrap();
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("cpu", "none", &[]);
    cluster.wait_workers(1).await;
    let mut runs = Vec::new();
    for _ in 0..2 {
        let run = cluster.trigger("chatty", serde_json::json!({})).await;
        let detail = cluster.wait_run(&run, Duration::from_secs(120)).await;
        assert_eq!(detail["run"]["state"], "success", "{detail}");
        runs.push(run);
    }
    let pid = cluster.scheduler.as_ref().unwrap().pid();

    // Warm up (connection pools, allocator), then measure.
    flood(&cluster, &runs, 0, 2_000).await;
    let before = rss_kb(pid);
    let started = Instant::now();
    flood(&cluster, &runs, 2_000, REQUESTS).await;
    let took = started.elapsed();
    let after = rss_kb(pid);
    let growth = after.saturating_sub(before);
    println!(
        "log-follow flood: {REQUESTS} requests in {:.1} s; scheduler VmRSS before {:.1} MB, after {:.1} MB, growth {:.1} MB",
        took.as_secs_f64(),
        before as f64 / 1024.0,
        after as f64 / 1024.0,
        growth as f64 / 1024.0,
    );
    assert!(
        growth <= MAX_GROWTH_KB,
        "scheduler RSS grew by {growth} KiB ({before} → {after}) over {REQUESTS} follow requests"
    );
    // The scheduler still serves.
    let ready = reqwest::get(cluster.url("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 200);
}
