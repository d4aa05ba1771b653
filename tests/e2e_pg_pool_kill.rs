//! Self-healing on real PostgreSQL with separate processes: while a 200-task
//! run is in flight, every `trainyard-pool` backend of the scheduler's
//! database is terminated (`pg_terminate_backend`) again and again for
//! several seconds. The run must finish on its own — no new leadership term,
//! no engine rebuild, no restart of anything — with every task run once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use serde_json::json;
use support::Cluster;

const TASKS: usize = 200;

/// 10 layers of 20; each task records `<task> <attempt>` and sleeps a little,
/// so the run is in flight for several seconds on 8 slots.
fn dag(out: &str) -> String {
    // No retries: a task disturbed by the storm would fail the run.
    let mut s = String::from("id = \"pool_kill\"\n\n[defaults]\nretries = 0\n\n");
    for layer in 0..10 {
        for i in 0..20 {
            let id = format!("t{layer}_{i:02}");
            s.push_str(&format!("[tasks.{id}]\n"));
            if layer > 0 {
                s.push_str(&format!(
                    "depends_on = [\"t{}_{:02}\", \"t{}_{:02}\"]\n",
                    layer - 1,
                    i,
                    layer - 1,
                    (i + 1) % 20
                ));
            }
            s.push_str(&format!(
                "shell = 'echo \"{id} $TRAINYARD_ATTEMPT\" >> {out}/ran.log; sleep 0.15'\n\n"
            ));
        }
    }
    s
}

/// Terminates every pool backend of `db` once; returns how many.
async fn kill_pool(admin: &sqlx::PgPool, db: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE datname = $1 AND application_name = 'trainyard-pool' AND pid <> pg_backend_pid()",
    )
    .bind(db)
    .fetch_one(admin)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_every_pool_connection_mid_run_heals_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/pool_kill.toml"),
        dag(&out.display().to_string()),
    )
    .unwrap();
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("w1", "none", &["--slots", "4"]);
    cluster.start_worker("w2", "none", &["--slots", "4"]);
    cluster.wait_workers(2).await;
    let db_name = cluster.db.rsplit('/').next().unwrap().to_owned();
    let admin = sqlx::PgPool::connect(&support::pg_base_url())
        .await
        .unwrap();

    let run = cluster.trigger("pool_kill", json!({})).await;
    // Wait until the run is under way, then kill for 4 s.
    cluster
        .wait_until(
            Duration::from_secs(60),
            "the first tasks to run",
            || async {
                std::fs::read_to_string(out.join("ran.log"))
                    .ok()
                    .filter(|s| s.lines().count() >= 5)
            },
        )
        .await;
    let mut killed = 0;
    let mut rounds = 0;
    let mut unready = 0;
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        killed += kill_pool(&admin, &db_name).await;
        rounds += 1;
        if let Ok(r) = cluster.http.get(cluster.url("/readyz")).send().await
            && r.status() == reqwest::StatusCode::SERVICE_UNAVAILABLE
        {
            unready += 1;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        killed > 0,
        "no pool backend was terminated in {rounds} rounds"
    );
    let done = cluster.wait_run(&run, Duration::from_secs(180)).await;
    assert_eq!(done["run"]["state"], "success", "run: {}", done["run"]);

    // Every task ran exactly once: no double execution.
    let log = std::fs::read_to_string(out.join("ran.log")).unwrap();
    let mut runs: BTreeMap<&str, usize> = BTreeMap::new();
    for line in log.lines() {
        let task = line.split_whitespace().next().unwrap();
        *runs.entry(task).or_default() += 1;
    }
    assert_eq!(runs.len(), TASKS, "every task ran");
    let twice: Vec<_> = runs.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "tasks run more than once: {twice:?}");

    // Nothing was restarted: one leadership term, one engine build.
    let logs = cluster.scheduler.as_ref().unwrap().log_text();
    assert_eq!(logs.matches("leader term started").count(), 1, "{logs}");
    assert_eq!(logs.matches("engine state rebuilt").count(), 1, "{logs}");
    assert!(!logs.contains("leader term ended"), "{logs}");
    let ready = cluster
        .http
        .get(cluster.url("/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        ready.status(),
        reqwest::StatusCode::OK,
        "ready again after the storm"
    );
    eprintln!(
        "terminated {killed} pool backends in {rounds} rounds; /readyz was 503 {unready} times"
    );
}
