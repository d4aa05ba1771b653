//! Smoke test of the store micro-benchmark on both backends: it runs and
//! reports sane counts. No timing assertions. `STORE_BENCH_TASKS=2000 cargo
//! test -p trainyard-scheduler --test store_bench -- --nocapture` prints figures.
#![allow(clippy::unwrap_used)]

use trainyard_scheduler::store::bench::bench_store;

fn tasks() -> usize {
    std::env::var("STORE_BENCH_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
}

#[tokio::test]
async fn store_bench_runs_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite:{}?mode=rwc", dir.path().join("bench.db").display());
    let report = bench_store(&url, tasks()).await.unwrap();
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert_eq!(report.tasks, tasks());
    assert!(report.claim_one_per_sec > 0.0 && report.transition_per_sec > 0.0);
}

#[tokio::test]
async fn store_bench_runs_on_postgres() {
    let url = std::env::var("TRAINYARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let report = bench_store(&url, tasks())
        .await
        .unwrap_or_else(|e| panic!("the Postgres store benchmark needs a database at {url}: {e}"));
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    assert!(report.claim_batch64_tasks_per_sec > 0.0);
}
