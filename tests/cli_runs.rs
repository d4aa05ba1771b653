//! The client commands as a user runs them, each a separate `trainyard`
//! process against a real scheduler and worker (PostgreSQL): what they print
//! on stdout and stderr, their exit status, and what they did to the
//! scheduler (read back over the API).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};
use support::{BIN, Cluster, task, write_dag};

const QUICK: &str = r#"
id = "quick"
[tasks.a]
command = ["true"]
[tasks.b]
depends_on = ["a"]
command = ["true"]
"#;

const OTHER: &str = r#"
id = "other"
[params]
size = 3
[tasks.only]
command = ["true"]
"#;

/// A scheduler with `quick` and `other`, and one CPU worker.
async fn cluster_with(extra_dags: &[(&str, &str)]) -> Cluster {
    let dir = tempfile::tempdir().unwrap();
    write_dag(dir.path(), "quick", QUICK);
    write_dag(dir.path(), "other", OTHER);
    for (name, body) in extra_dags {
        write_dag(dir.path(), name, body);
    }
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("w1", "none", &[]);
    cluster.wait_workers(1).await;
    cluster
}

/// Runs `trainyard ARGS --server <the cluster>` with no RUST_LOG.
async fn cli(cluster: &Cluster, args: &[&str]) -> Output {
    tokio::process::Command::new(BIN)
        .args(args)
        .args(["--server", &cluster.url("")])
        .env_remove("RUST_LOG")
        .output()
        .await
        .unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Triggers `dag` with the CLI and waits for the run to end.
async fn finished_run(cluster: &Cluster, dag: &str) -> String {
    let run = cluster.trigger(dag, json!({})).await;
    let detail = cluster.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(detail["run"]["state"], "success", "{detail}");
    run
}

/// How many leading characters `a` and `b` share.
fn common_prefix(a: &str, b: &str) -> usize {
    a.chars().zip(b.chars()).take_while(|(x, y)| x == y).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_prints_the_run_id_alone_on_its_first_line_and_no_log_lines() {
    let cluster = cluster_with(&[]).await;
    let out = cli(&cluster, &["trigger", "quick"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let first = text.lines().next().unwrap_or_default();
    // The line is the id and nothing else: the API knows the run by it.
    let detail = cluster.get(&format!("/api/v1/runs/{first}")).await;
    assert_eq!(detail["run"]["dag_id"], "quick");
    assert_eq!(stderr(&out), "", "nothing below WARN by default");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_ids_are_taken_by_unique_prefix_or_latest_and_an_ambiguous_prefix_lists_the_matches() {
    let cluster = cluster_with(&[]).await;
    let first = finished_run(&cluster, "quick").await;
    let second = finished_run(&cluster, "quick").await;
    let other = finished_run(&cluster, "other").await;
    let ids = [&first, &second, &other];

    // The shortest prefix of `first` that no other run shares.
    let shared = ids[1..]
        .iter()
        .map(|id| common_prefix(&first, id))
        .max()
        .unwrap();
    let unique = &first[..shared + 1];
    let out = cli(&cluster, &["runs", "show", unique, "--json"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["run"]["id"], first.as_str());

    let out = cli(&cluster, &["runs", "show", "latest", "--json"]).await;
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["run"]["id"], other.as_str());
    let out = cli(
        &cluster,
        &["runs", "show", "latest", "--dag", "quick", "--json"],
    )
    .await;
    let shown: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(shown["run"]["id"], second.as_str());

    // The prefix the two `quick` runs share names both.
    let both = &first[..common_prefix(&first, &second)];
    assert!(!both.is_empty());
    let out = cli(&cluster, &["runs", "show", both, "--dag", "quick"]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    let err = stderr(&out);
    assert!(err.contains("ambiguous"), "{err}");
    assert!(
        err.contains(first.as_str()) && err.contains(second.as_str()),
        "{err}"
    );

    let out = cli(&cluster, &["runs", "show", "0000000000", "--json"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("no run has an id starting with"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_dags_params_tasks_and_attempts_are_errors_with_a_suggestion() {
    let cluster = cluster_with(&[]).await;
    let out = cli(&cluster, &["trigger", "quack"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean `quick`?"),
        "{}",
        stderr(&out)
    );
    assert_eq!(stdout(&out), "");

    let out = cli(&cluster, &["trigger", "other", "-p", "sise=4"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean `size`?"),
        "{}",
        stderr(&out)
    );

    let run = finished_run(&cluster, "quick").await;
    let out = cli(&cluster, &["logs", &run, "a", "--attempt", "5"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no attempt 5"),
        "{}",
        stderr(&out)
    );
    let out = cli(&cluster, &["logs", &run, "aa"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("has no task \"aa\"; did you mean `a`?"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_list_shows_duration_and_logical_date_in_utc_and_json_has_them() {
    let cluster = cluster_with(&[]).await;
    let run = finished_run(&cluster, "quick").await;
    let out = cli(&cluster, &["runs", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("LOGICAL DATE") && header.contains("DURATION"),
        "{header}"
    );
    let row = lines.find(|l| l.starts_with(&run)).unwrap();
    assert!(row.contains(" UTC"), "times say their zone: {row}");
    assert!(
        row.trim_end().ends_with('s'),
        "a duration in seconds: {row}"
    );

    let out = cli(&cluster, &["runs", "list", "--json"]).await;
    let page: Value = serde_json::from_str(&stdout(&out)).unwrap();
    let entry = page["runs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == run.as_str())
        .unwrap();
    assert!(
        entry["duration_seconds"].as_f64().unwrap() >= 0.0,
        "{entry}"
    );
    assert!(entry["logical_date"].is_string(), "{entry}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dags_pause_and_resume_change_the_schedule_and_dags_list_shows_it() {
    let cluster = cluster_with(&[]).await;
    let out = cli(&cluster, &["dags", "pause", "quick"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let dag = cluster.get("/api/v1/dags/quick").await;
    assert_eq!(dag["dag"]["paused"], true);
    let out = cli(&cluster, &["dags", "list"]).await;
    let text = stdout(&out);
    let row = text.lines().find(|l| l.starts_with("quick ")).unwrap();
    assert!(row.contains("paused"), "{text}");

    let out = cli(&cluster, &["dags", "resume", "quick"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let dag = cluster.get("/api/v1/dags/quick").await;
    assert_eq!(dag["dag"]["paused"], false);

    let out = cli(&cluster, &["dags", "pause", "quik"]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("did you mean `quick`?"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_clear_runs_a_task_and_its_downstream_again() {
    let cluster = cluster_with(&[]).await;
    let run = finished_run(&cluster, "quick").await;
    let out = cli(&cluster, &["runs", "clear", &run, "a"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let detail = cluster
        .wait_until(
            Duration::from_secs(60),
            "the cleared run to end again",
            || async {
                let v = cluster.get(&format!("/api/v1/runs/{run}")).await;
                (v["run"]["state"] == "success" && task(&v, "b")["attempt"] == 2).then_some(v)
            },
        )
        .await;
    assert_eq!(task(&detail, "a")["attempt"], 2, "{detail}");
    assert_eq!(task(&detail, "a")["state"], "success");
    assert_eq!(task(&detail, "b")["state"], "success");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runs_cancel_cancels_a_running_run_named_by_latest() {
    const SLOW: &str = r#"
id = "slow"
[tasks.wait]
command = ["sleep", "300"]
"#;
    let cluster = cluster_with(&[("slow", SLOW)]).await;
    let run = cluster.trigger("slow", json!({})).await;
    cluster
        .wait_until(Duration::from_secs(60), "the task to run", || async {
            let v = cluster.get(&format!("/api/v1/runs/{run}")).await;
            (task(&v, "wait")["state"] == "running").then_some(())
        })
        .await;
    let out = cli(&cluster, &["runs", "cancel", "latest", "--dag", "slow"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let detail = cluster.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(detail["run"]["state"], "cancelled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_list_shows_each_worker_with_its_resources() {
    let cluster = cluster_with(&[]).await;
    let out = cli(&cluster, &["workers", "list"]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let row = text
        .lines()
        .find(|l| l.contains(" w1 "))
        .unwrap_or_else(|| panic!("{text}"));
    assert!(row.contains("active"), "{row}");
    assert!(row.contains("GiB"), "memory shown: {row}");
    let out = cli(&cluster, &["workers", "list", "--json"]).await;
    let list: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert_eq!(list["workers"][0]["name"], "w1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_is_not_found_fails_on_attempt_1_despite_its_retries() {
    const MISSING: &str = r#"
id = "missing"
[tasks.nope]
command = ["no-such-program-trainyard-test"]
retries = 3
retry_delay = "1s"
"#;
    let cluster = cluster_with(&[("missing", MISSING)]).await;
    let run = cluster.trigger("missing", json!({})).await;
    let detail = cluster.wait_run(&run, Duration::from_secs(60)).await;
    assert_eq!(detail["run"]["state"], "failed");
    let nope = task(&detail, "nope");
    assert_eq!(nope["state"], "failed");
    assert_eq!(nope["max_attempts"], 4);
    assert_eq!(nope["attempt"], 1, "no retry was spent: {nope}");
    let error = support::attempt_of(nope, 1)["error"].as_str().unwrap();
    assert!(error.contains("no-such-program-trainyard-test"), "{error}");
    assert!(error.contains("without using its retries"), "{error}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_days_are_read_in_the_dags_timezone_with_the_end_day_included() {
    // 00:30 and 23:30 in Berlin are on the day before / the same day in UTC:
    // read as UTC days, both ends would lose a slot.
    const BERLIN: &str = r#"
id = "berlin"
schedule = "30 0,23 * * *"
timezone = "Europe/Berlin"
catchup = false
[tasks.t]
command = ["true"]
"#;
    let cluster = cluster_with(&[("berlin", BERLIN)]).await;
    let out = cli(
        &cluster,
        &[
            "backfill",
            "berlin",
            "--from",
            "2026-01-01",
            "--to",
            "2026-01-02",
        ],
    )
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let created: Vec<String> = stdout(&out).lines().map(str::to_owned).collect();
    let mut dates: Vec<String> = Vec::new();
    for run in &created {
        let detail = cluster.get(&format!("/api/v1/runs/{run}")).await;
        dates.push(detail["run"]["logical_date"].as_str().unwrap().to_owned());
    }
    dates.sort();
    assert_eq!(
        dates,
        vec![
            "2025-12-31T23:30:00Z",
            "2026-01-01T22:30:00Z",
            "2026-01-01T23:30:00Z",
            "2026-01-02T22:30:00Z",
        ],
        "every slot of 1 and 2 January in Berlin"
    );
}
