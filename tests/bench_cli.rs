//! `trainyard bench retrain` on SQLite, once: every line is JSON with the
//! keys the brief names. Timings are printed, never asserted.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use serde_json::Value;

#[test]
fn bench_retrain_prints_the_ceiling_and_one_line_with_every_key() {
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["bench", "retrain", "--ceiling-spawns", "5"])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "bench failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(lines[0]["workload"], "ceiling_spawn");
    assert_eq!(lines[0]["tasks"], 40);
    assert!(lines[0]["tasks_per_s"].as_f64().unwrap() > 0.0);
    assert_eq!(lines[1]["workload"], "ceiling_spawn_serial");
    assert_eq!(lines[1]["threads"], 1);
    assert_eq!(lines[1]["tasks"], 5);

    let run = &lines[2];
    assert_eq!(run["workload"], "retrain");
    assert_eq!(run["backend"], "sqlite");
    assert_eq!(run["tasks"], 4);
    assert_eq!(run["run_state"], "success");
    assert_eq!(run["steps"], 3);
    for key in [
        "wall_s",
        "step_p50_ms",
        "step_p99_ms",
        "tasks_per_s",
        "scheduler_rss_mb",
        "ceiling_ratio",
        "store_tx_per_task",
    ] {
        assert!(run[key].is_number(), "{key} is not a number in {run}");
    }
    // A serial workload is compared with the serial ceiling.
    assert_eq!(run["ceiling"], "ceiling_spawn_serial");
    // One transaction per turn: a started and a finished report per task at most.
    assert!(run["store_tx_per_task"].as_f64().unwrap() <= 3.0, "{run}");
    assert!(run["note"].as_str().unwrap().contains("workers"));
}

#[test]
fn bench_writes_its_dag_files_for_a_server() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_trainyard"))
        .args(["bench", "fanout", "packing", "--write-dags"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    for dag in ["bench_fanout", "bench_packing"] {
        let path = dir.path().join(format!("{dag}.toml"));
        let check = Command::new(env!("CARGO_BIN_EXE_trainyard"))
            .args(["dag", "validate"])
            .arg(&path)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{dag}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
    }
}
