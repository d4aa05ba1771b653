//! `trainyard standalone --run DAG`, the quick start, as a new user runs it:
//! a short report (one line per task as it ends, then a summary), no log
//! noise, and for a failure the failed attempt's last log lines.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;

use support::{BIN, copy_example_dags, write_dag};

/// Runs `trainyard standalone --run DAG ARGS` in `dir` (its `dags/` folder)
/// on free ports, with no RUST_LOG.
fn standalone_run(dir: &std::path::Path, dag: &str, args: &[&str]) -> Output {
    std::process::Command::new(BIN)
        .current_dir(dir)
        .args(["standalone", "--dags", "dags", "--http", "127.0.0.1:0"])
        .args(["--grpc", "127.0.0.1:0", "--run", dag])
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

#[test]
fn the_quick_start_prints_a_line_per_task_and_a_summary_in_at_most_15_lines() {
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    let out = standalone_run(dir.path(), "churn_retrain", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert_eq!(
        stderr, "",
        "no log lines (and no warning) at the default level"
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines.len() <= 15, "{stdout}");
    let run = lines[0]
        .strip_prefix("churn_retrain run ")
        .unwrap_or_else(|| panic!("{stdout}"));
    for task in ["ingest", "train", "evaluate", "deploy"] {
        let line = lines
            .iter()
            .find(|l| l.split_whitespace().nth(1) == Some(task))
            .unwrap_or_else(|| panic!("no line for {task}:\n{stdout}"));
        let words: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(words[2], "success", "{line}");
        assert!(words[3].ends_with('s'), "a duration: {line}");
        if task == "evaluate" {
            assert!(line.contains(" auc="), "evaluate's metrics: {line}");
        }
    }
    let summary = lines.last().unwrap();
    assert!(
        summary.starts_with(&format!("run {run} success in ")),
        "{summary}"
    );
    assert!(summary.ends_with("(4 success)"), "{summary}");
}

#[test]
fn a_failed_run_prints_the_last_20_log_lines_and_where_the_whole_log_is() {
    let dir = tempfile::tempdir().unwrap();
    write_dag(
        dir.path(),
        "fails",
        r#"
id = "fails"
[tasks.count]
command = ["sh", "-c", "for i in $(seq 1 30); do echo line $i; done; exit 3"]
"#,
    );
    let out = standalone_run(dir.path(), "fails", &[]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("--- count, attempt 1 (last 20 of"))
        .unwrap_or_else(|| panic!("{stdout}"));
    // Lines 12..=30 of the task, then the worker's note on the exit.
    assert_eq!(lines[head + 1], "line 12", "{stdout}");
    assert_eq!(lines[head + 19], "line 30", "{stdout}");
    assert!(lines[head + 20].contains("exited with code 3"), "{stdout}");
    let whole = lines[head + 21]
        .strip_prefix("--- full log: ")
        .unwrap_or_else(|| panic!("{stdout}"));
    let log = std::fs::read_to_string(dir.path().join(whole)).unwrap();
    assert!(log.starts_with("line 1\n"), "{log}");
}

#[test]
fn an_unknown_dag_names_the_closest_one() {
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    let out = standalone_run(dir.path(), "churn_retrian", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("did you mean `churn_retrain`?"), "{stderr}");
}
