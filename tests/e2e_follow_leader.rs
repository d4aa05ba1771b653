//! Workers and the CLI follow the leader, with no load balancer: two
//! `trainyard scheduler` replicas on one PostgreSQL database, separate
//! processes. A worker given both gRPC URLs, the standby's first, registers
//! with the leader (the standby answers "not the leader"); after the leader
//! is `kill -9`ed, the same worker (same id) runs a run triggered on the new
//! leader. The CLI given a dead URL, a standby and the leader gets its
//! answers anyway.
//!
//! PostgreSQL being down FAILS these tests (see `scripts/test`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};
use support::{Addrs, BIN, Cluster, Proc, free_port, task, write_dag};

/// Yearly, so backfills have slots; no slot falls inside a test.
const DAG: &str = r#"
id = "follow"
schedule = "0 0 1 1 *"
[tasks.hello]
command = ["true"]
"#;

/// A run on a worker that is already connected ends within this.
const RUN: Duration = Duration::from_secs(60);

/// Two replicas on one fresh database, sharing the DAG folder and (through
/// the same data dir path) the artifact store. The cluster points at the
/// first, which leads (it started alone); the second is returned.
async fn two_replicas() -> (Cluster, Proc, Addrs) {
    let dir = tempfile::tempdir().unwrap();
    write_dag(dir.path(), "follow", DAG);
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster
        .wait_until(
            Duration::from_secs(30),
            "the first replica to be ready",
            || async {
                let resp = cluster.http.get(cluster.url("/readyz")).send().await.ok()?;
                resp.status().is_success().then_some(())
            },
        )
        .await;
    // `start_scheduler` starts a replica on fresh ports while the cluster
    // knows none; put the first back afterwards.
    let first = cluster.scheduler.take();
    let first_addrs = std::mem::replace(
        &mut cluster.addrs,
        Addrs {
            http: String::new(),
            grpc: String::new(),
        },
    );
    cluster.start_scheduler(&[]);
    let second = cluster.scheduler.take().unwrap();
    let second_addrs = std::mem::replace(&mut cluster.addrs, first_addrs);
    cluster.scheduler = first;
    let standby = reqwest::get(format!("http://{}/readyz", second_addrs.http))
        .await
        .unwrap();
    assert_eq!(
        standby.status(),
        503,
        "the second replica must stand by:\n{}",
        second.log_text()
    );
    (cluster, second, second_addrs)
}

/// Triggers on the replica `cluster` points at and waits for success;
/// returns the `hello` task.
async fn run_succeeds(cluster: &Cluster) -> Value {
    let run = cluster.trigger("follow", json!({})).await;
    let detail = cluster.wait_run(&run, RUN).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    task(&detail, "hello").clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_given_every_replica_follows_the_leader_after_kill_9() {
    let (mut cluster, standby, standby_addrs) = two_replicas().await;
    let leader_grpc = cluster.addrs.grpc.clone();
    // The standby's URL first: the worker must move past it.
    let urls = format!("{},http://{leader_grpc}", standby_addrs.grpc);
    let saved = std::mem::replace(&mut cluster.addrs.grpc, urls);
    cluster.start_worker("follower", "none", &[]);
    cluster.addrs.grpc = saved;
    cluster.wait_workers(1).await;
    let before = run_succeeds(&cluster).await;
    assert_eq!(before["worker"], "follower");
    let worker_id = before["worker_id"].as_str().unwrap().to_owned();
    let log = cluster.workers[0].log_text();
    assert!(
        log.contains("not the leader"),
        "the standby answered the worker \"not the leader\":\n{log}"
    );

    // kill -9 the leader; the standby takes over and the worker follows it.
    cluster.stop_scheduler_hard();
    cluster.scheduler = Some(standby);
    cluster.addrs = standby_addrs;
    cluster
        .wait_until(Duration::from_secs(30), "the standby to lead", || async {
            let resp = cluster.http.get(cluster.url("/readyz")).send().await.ok()?;
            resp.status().is_success().then_some(())
        })
        .await;
    let after = run_succeeds(&cluster).await;
    assert_eq!(after["worker"], "follower", "{after}");
    assert_eq!(
        after["worker_id"], worker_id,
        "the worker kept its identity across replicas"
    );
}

/// Runs the CLI; (exit success, stdout, stderr).
fn cli(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .env_remove("TRAINYARD_SERVER")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_moves_past_dead_urls_and_standbys_to_the_leader() {
    let (mut cluster, standby, standby_addrs) = two_replicas().await;
    cluster.start_worker("cli-worker", "none", &[]);
    cluster.wait_workers(1).await;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let leader = format!("http://{}", cluster.addrs.http);
    let standby_url = format!("http://{}", standby_addrs.http);

    // A dead URL first: trigger and runs still work.
    let servers = format!("{dead},{leader}");
    let (ok, run, err) = cli(&["trigger", "follow", "--wait", "--server", &servers]);
    assert!(ok, "trigger --server {servers}: {err}");
    let run = run.trim().to_owned();
    let (ok, out, err) = cli(&["runs", "list", "--server", &servers]);
    assert!(ok, "runs list --server {servers}: {err}");
    assert!(out.contains(&run), "{out}");

    // A standby refuses backfills (503): the CLI moves on to the leader.
    let servers = format!("{standby_url},{leader}");
    let (ok, _, err) = cli(&[
        "backfill",
        "follow",
        "--from",
        "2024-01-01T00:00:00Z",
        "--to",
        "2024-01-01T00:00:00Z",
        "--server",
        &servers,
    ]);
    assert!(ok, "backfill --server {servers}: {err}");

    // Nothing leads: the error names every URL and what it said.
    let servers = format!("{dead},{standby_url}");
    let (ok, _, err) = cli(&[
        "backfill",
        "follow",
        "--from",
        "2024-01-01T00:00:00Z",
        "--to",
        "2024-01-01T00:00:00Z",
        "--server",
        &servers,
    ]);
    assert!(!ok);
    assert!(err.contains(&dead) && err.contains("cannot reach"), "{err}");
    assert!(
        err.contains(&standby_url) && err.contains("standby"),
        "{err}"
    );
    drop(standby);
}
