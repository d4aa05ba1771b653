//! HA under leader failures, checked like Chronos: three `trainyard
//! scheduler` replicas on one PostgreSQL database (`--leader-lease 3s`),
//! two workers given all three gRPC URLs, and a DAG on a 6-field cron every
//! 2 seconds with `catchup = true`. For about a minute the current leader
//! (the replica whose `/readyz` answers 200) is `kill -9`ed every ~10 s and
//! restarted at once on the same ports; then the leader is SIGSTOPped for
//! 20 s and SIGCONTed.
//!
//! Afterwards every run of the DAG is read through the API and the window
//! from the first run's slot to a slot well before the end is checked:
//! exactly one run per 2-second slot (missing and duplicate slots are
//! counted, both must be 0; so are runs off the schedule's grid), every run
//! succeeded, no task has two successful attempts, and during the SIGSTOP a
//! standby answered `/readyz` 200 within the lease, its renewal and the
//! standbys' one-second retry, plus slack for a loaded machine.
//!
//! Slow (about two minutes): ignored by `scripts/test`, run by
//! `scripts/test-slow`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;
use support::{Proc, free_port, fresh_pg_database, spawn, write_dag};

const REPLICAS: usize = 3;
const WORKERS: usize = 2;
const LEASE: Duration = Duration::from_secs(3);
const SLOT: i64 = 2;
/// How long leaders are killed, and how often.
const KILL_PHASE: Duration = Duration::from_secs(60);
const KILL_EVERY: Duration = Duration::from_secs(10);
const FREEZE: Duration = Duration::from_secs(20);
/// A frozen leader's lease runs out within the lease plus one renewal
/// interval (a third of it); a standby tries every second, then starts its
/// engine. Plus slack for a 2-core machine running five processes.
const TAKEOVER_BOUND: Duration = Duration::from_secs(3 + 1 + 1 + 3);
/// Waits for a leader to exist, a process to start, runs to settle.
const WAIT: Duration = Duration::from_secs(40);
/// The window ends this long after the SIGCONT; it is checked once the
/// schedule is this much further on, so every slot in it had time to run.
const AFTER_CONT: Duration = Duration::from_secs(6);
const SETTLE: Duration = Duration::from_secs(10);

const DAG: &str = r#"
id = "slots"
schedule = "*/2 * * * * *"
catchup = true
max_active_runs = 100
overlap = "buffer"
[tasks.tick]
command = ["true"]
"#;

/// One replica: fixed ports, so a restart serves the URLs workers have.
struct Replica {
    name: String,
    http: String,
    grpc: String,
    proc: Option<Proc>,
    starts: usize,
}

impl Replica {
    fn start(&mut self, dir: &Path, db: &str) {
        let ready = dir.join(format!("{}.ready", self.name));
        let _ = std::fs::remove_file(&ready);
        let args: Vec<String> = [
            "scheduler",
            "--db",
            db,
            "--dags",
            "dags",
            "--data-dir",
            &format!("data-{}", self.name),
            "--artifacts",
            &dir.join("artifacts").display().to_string(),
            "--http",
            &self.http,
            "--grpc",
            &self.grpc,
            "--leader-lease",
            "3s",
            "--heartbeat-interval",
            "500ms",
            "--lost-worker-timeout",
            "10s",
            "--ready-file",
            &ready.display().to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        // `r1.2.log` is r1's third start.
        let proc = spawn(&format!("{}.{}", self.name, self.starts), &args, dir, &[]);
        self.starts += 1;
        self.proc = Some(proc);
    }

    /// Waits for its ready file (standbys write it too).
    async fn wait_started(&mut self, dir: &Path) {
        let ready = dir.join(format!("{}.ready", self.name));
        let deadline = Instant::now() + WAIT;
        while !std::fs::read_to_string(&ready).is_ok_and(|t| t.ends_with('\n')) {
            let proc = self.proc.as_mut().unwrap();
            assert!(
                proc.child.try_wait().unwrap().is_none(),
                "{} exited while starting:\n{}",
                proc.name,
                proc.log_text()
            );
            assert!(
                Instant::now() < deadline,
                "{} did not start within {WAIT:?}:\n{}",
                proc.name,
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn kill_9(&mut self) {
        let mut proc = self.proc.take().unwrap();
        proc.signal("KILL");
        proc.wait_exit(WAIT)
            .unwrap_or_else(|| panic!("{} outlived kill -9", proc.name));
    }

    fn proc(&self) -> &Proc {
        self.proc.as_ref().unwrap()
    }
}

/// `/readyz` status, or `None` when the replica does not answer in time
/// (down, or frozen).
async fn readyz(client: &reqwest::Client, r: &Replica) -> Option<u16> {
    let resp = client
        .get(format!("http://{}/readyz", r.http))
        .send()
        .await
        .ok()?;
    Some(resp.status().as_u16())
}

/// The replicas answering `/readyz` 200 right now.
async fn leaders(
    client: &reqwest::Client,
    replicas: &[Replica],
    skip: Option<usize>,
) -> Vec<usize> {
    let mut out = Vec::new();
    for (i, r) in replicas.iter().enumerate() {
        if Some(i) != skip && readyz(client, r).await == Some(200) {
            out.push(i);
        }
    }
    out
}

/// Waits for one replica (other than `skip`) to lead; returns it and how
/// long that took. Two at once is a failure (split brain).
async fn wait_leader(
    client: &reqwest::Client,
    replicas: &[Replica],
    skip: Option<usize>,
    within: Duration,
) -> (usize, Duration) {
    let began = Instant::now();
    loop {
        let found = leaders(client, replicas, skip).await;
        assert!(
            found.len() <= 1,
            "replicas {found:?} answer /readyz 200 at once\n{}",
            logs(replicas)
        );
        if let Some(&i) = found.first() {
            return (i, began.elapsed());
        }
        assert!(
            began.elapsed() < within,
            "no replica led within {within:?}\n{}",
            logs(replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn logs(replicas: &[Replica]) -> String {
    let mut out = String::new();
    for p in replicas.iter().filter_map(|r| r.proc.as_ref()) {
        let text = p.log_text();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        out.push_str(&format!("---- {} (last lines)\n", p.name));
        for l in tail.into_iter().rev() {
            out.push_str(l);
            out.push('\n');
        }
    }
    out
}

/// Every run of the DAG, through the API's pages.
async fn all_runs(client: &reqwest::Client, http: &str) -> Vec<Value> {
    let mut runs = Vec::new();
    let mut before: Option<String> = None;
    loop {
        let mut url = format!("http://{http}/api/v1/runs?dag_id=slots&limit=500");
        if let Some(b) = &before {
            url.push_str(&format!("&before={b}"));
        }
        let page: Value = client
            .get(&url)
            .send()
            .await
            .unwrap()
            .error_for_status()
            .unwrap()
            .json()
            .await
            .unwrap();
        runs.extend(page["runs"].as_array().unwrap().iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => before = Some(c.to_owned()),
            None => return runs,
        }
    }
}

fn logical(run: &Value) -> DateTime<Utc> {
    run["logical_date"]
        .as_str()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .unwrap_or_else(|| panic!("a scheduled run without a logical date: {run}"))
        .with_timezone(&Utc)
}

fn finished(run: &Value) -> bool {
    matches!(
        run["state"].as_str(),
        Some("success" | "failed" | "cancelled")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: run by the chaos stage (scripts/test-slow)"]
async fn a_killed_and_frozen_leader_loses_no_slot_and_runs_none_twice() {
    let began = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write_dag(dir, "slots", DAG);
    let db = fresh_pg_database().await;
    let client = reqwest::Client::builder()
        .timeout(Duration::from_millis(700))
        .build()
        .unwrap();

    let mut replicas: Vec<Replica> = (0..REPLICAS)
        .map(|i| Replica {
            name: format!("r{i}"),
            http: format!("127.0.0.1:{}", free_port()),
            grpc: format!("127.0.0.1:{}", free_port()),
            proc: None,
            starts: 0,
        })
        .collect();
    for r in &mut replicas {
        r.start(dir, &db);
        r.wait_started(dir).await;
    }
    let urls: Vec<String> = replicas
        .iter()
        .map(|r| format!("http://{}", r.grpc))
        .collect();
    let urls = urls.join(",");
    let mut workers = Vec::new();
    for i in 0..WORKERS {
        let name = format!("ha-w{i}");
        let args: Vec<String> = [
            "worker",
            "--scheduler",
            &urls,
            "--name",
            &name,
            "--gpus",
            "none",
            "--work-dir",
            &format!("work-{name}"),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        workers.push(spawn(&name, &args, dir, &[]));
    }
    wait_leader(&client, &replicas, None, WAIT).await;

    // Kill the leader every ~10 s, restarting it at once on its ports.
    let kill_phase_end = Instant::now() + KILL_PHASE;
    let mut kills = Vec::new();
    while Instant::now() < kill_phase_end {
        tokio::time::sleep(KILL_EVERY).await;
        let (current, _) = wait_leader(&client, &replicas, None, WAIT).await;
        replicas[current].kill_9();
        replicas[current].start(dir, &db);
        let (next, took) = wait_leader(&client, &replicas, None, WAIT).await;
        kills.push((
            replicas[current].name.clone(),
            replicas[next].name.clone(),
            took,
        ));
        replicas[current].wait_started(dir).await;
    }

    // Freeze the leader; a standby must take over within the lease.
    let (frozen, _) = wait_leader(&client, &replicas, None, WAIT).await;
    let stopped_at = Instant::now();
    replicas[frozen].proc().signal("STOP");
    let (successor, takeover) = wait_leader(&client, &replicas, Some(frozen), WAIT).await;
    let remaining = FREEZE.saturating_sub(stopped_at.elapsed());
    tokio::time::sleep(remaining).await;
    replicas[frozen].proc().signal("CONT");
    let window_end = Utc::now() + chrono::Duration::from_std(AFTER_CONT).unwrap();
    // The woken leader stands by: one leader, the successor or a later one.
    let deadline = Instant::now() + WAIT;
    while readyz(&client, &replicas[frozen]).await != Some(503) {
        assert!(
            Instant::now() < deadline,
            "the woken leader {} never stood by\n{}",
            replicas[frozen].name,
            logs(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Settle: the schedule passes the window's end by SETTLE, and every run
    // in the window has finished.
    let settle_from = Instant::now();
    let (runs, reader) = loop {
        let (reader, _) = wait_leader(&client, &replicas, None, WAIT).await;
        let runs = all_runs(&client, &replicas[reader].http).await;
        let past = runs
            .iter()
            .filter(|r| r["trigger"] == "schedule")
            .any(|r| logical(r) > window_end + chrono::Duration::from_std(SETTLE).unwrap());
        let in_window_done = runs
            .iter()
            .filter(|r| r["trigger"] == "schedule" && logical(r) <= window_end)
            .all(finished);
        if past && in_window_done {
            break (runs, reader);
        }
        assert!(
            settle_from.elapsed() < WAIT + SETTLE,
            "the runs did not settle: {} runs, schedule past the window: {past}, all in it finished: {in_window_done}\n{}",
            runs.len(),
            logs(&replicas)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The checker.
    let mut failures = Vec::new();
    let mut per_slot: BTreeMap<DateTime<Utc>, Vec<&Value>> = BTreeMap::new();
    for r in &runs {
        if r["trigger"] != "schedule" {
            failures.push(format!("a run the schedule did not make: {r}"));
            continue;
        }
        let at = logical(r);
        if at.timestamp() % SLOT != 0 || at.timestamp_subsec_nanos() != 0 {
            failures.push(format!("a run off the 2-second grid: {r}"));
        }
        if at <= window_end {
            per_slot.entry(at).or_default().push(r);
        }
    }
    let first = *per_slot.keys().next().expect("no scheduled run at all");
    let (mut slots, mut missing, mut duplicate) = (0usize, Vec::new(), Vec::new());
    let mut at = first;
    while at <= window_end {
        slots += 1;
        match per_slot.get(&at).map_or(0, Vec::len) {
            0 => missing.push(at),
            1 => {}
            _ => duplicate.push(at),
        }
        at += chrono::Duration::seconds(SLOT);
    }
    let mut double_success = 0usize;
    let mut not_success = 0usize;
    for list in per_slot.values() {
        for r in list {
            if r["state"] != "success" {
                not_success += 1;
                failures.push(format!("a run did not succeed: {r}"));
            }
            let id = r["id"].as_str().unwrap();
            let detail: Value = client
                .get(format!("http://{}/api/v1/runs/{id}", replicas[reader].http))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            for t in detail["tasks"].as_array().unwrap() {
                let won = t["attempts"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|a| a["outcome"] == "success")
                    .count();
                if won > 1 {
                    double_success += 1;
                    failures.push(format!("{id}: two successful attempts: {t}"));
                }
            }
        }
    }
    eprintln!(
        "HA slots: window {first} .. {window_end}: {slots} slots, {} runs in it, missing {}, duplicate {}, not successful {not_success}, tasks with two successes {double_success}; leader kills (killed, next leader, time to a new /readyz 200): {kills:?}; SIGSTOP of {}: {} led after {:.2} s (bound {TAKEOVER_BOUND:?}); took {:.0} s",
        per_slot.values().map(Vec::len).sum::<usize>(),
        missing.len(),
        duplicate.len(),
        replicas[frozen].name,
        replicas[successor].name,
        takeover.as_secs_f64(),
        began.elapsed().as_secs_f64()
    );
    if !missing.is_empty() {
        failures.push(format!("missing slots: {missing:?}"));
    }
    if !duplicate.is_empty() {
        failures.push(format!("slots with more than one run: {duplicate:?}"));
    }
    if takeover > TAKEOVER_BOUND {
        failures.push(format!(
            "no standby led until {takeover:?} after the leader froze (bound {TAKEOVER_BOUND:?}, lease {LEASE:?})"
        ));
    }
    assert!(
        failures.is_empty(),
        "{} violations:\n{}\n{}",
        failures.len(),
        failures.join("\n"),
        logs(&replicas)
    );
    drop(workers);
}
