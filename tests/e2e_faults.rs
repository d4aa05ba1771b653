//! Fault tests with real processes: a worker frozen past the lost timeout, a
//! worker killed mid-task, a scheduler killed and restarted mid-run, and a
//! worker draining on SIGTERM.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::json;
use support::{Cluster, attempt_of, task};

const LONG: Duration = Duration::from_secs(120);
/// Fast liveness so the lost-worker paths take seconds, not minutes.
const FAST_LIVENESS: &[&str] = &[
    "--heartbeat-interval",
    "300ms",
    "--lost-worker-timeout",
    "3s",
];

/// A task that records its attempt and PID, waits for `release`, then appends
/// `<task> <attempt>` to `ran.log` (so tests can count executions).
fn waiting_task(out: &str, name: &str, release: &str) -> String {
    format!(
        r#"echo $$ > {out}/{name}.pid.$TRAINYARD_ATTEMPT; i=0; while [ ! -f {out}/{release} ]; do i=$((i+1)); [ $i -gt 1200 ] && exit 3; sleep 0.1; done; echo "{name} $TRAINYARD_ATTEMPT" >> {out}/ran.log"#
    )
}

fn setup(dag: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    let body = dag.replace("OUT", &out.display().to_string());
    std::fs::write(dir.path().join("dags/faults.toml"), body).unwrap();
    (dir, out)
}

fn one_long_task_dag() -> String {
    format!(
        r#"
id = "faults"
[tasks.long]
shell = '{}'
retries = 2
retry_delay = "100ms"
"#,
        waiting_task("OUT", "long", "release")
    )
}

/// `first` waits for `release`; `second` runs after it.
fn two_step_dag() -> String {
    format!(
        r#"
id = "faults"
[tasks.first]
shell = '{}'
[tasks.second]
depends_on = ["first"]
shell = 'echo "second $TRAINYARD_ATTEMPT" >> OUT/ran.log'
"#,
        waiting_task("OUT", "first", "release")
    )
}

async fn wait_file(cluster: &Cluster, path: &Path) {
    cluster
        .wait_until(LONG, &format!("{} to appear", path.display()), || async {
            path.exists().then_some(())
        })
        .await;
}

fn pid_alive(pid: &str) -> bool {
    let pid: u32 = pid
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("not a pid: {pid:?}: {e}"));
    assert!(pid > 1, "refusing to probe pid {pid}");
    let pid = pid.to_string();
    std::process::Command::new("kill")
        .args(["-0", pid.trim()])
        .status()
        .unwrap()
        .success()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_is_declared_lost_its_task_retried_elsewhere_and_its_copy_killed() {
    let (dir, out) = setup(&one_long_task_dag());
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let frozen = cluster.start_worker("frozen", "none", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("faults", json!({})).await;
    wait_file(&cluster, &out.join("long.pid.1")).await;
    cluster.start_worker("healthy", "none", &[]);
    cluster.wait_workers(2).await;

    cluster.workers[frozen].signal("STOP");
    // Past the lost timeout the task is retried on the healthy worker.
    wait_file(&cluster, &out.join("long.pid.2")).await;
    cluster.workers[frozen].signal("CONT");
    // The old copy is killed once the frozen worker talks again: never two copies.
    let old_pid = std::fs::read_to_string(out.join("long.pid.1")).unwrap();
    cluster
        .wait_until(
            Duration::from_secs(60),
            "the stale attempt's process to be killed",
            || async { (!pid_alive(&old_pid)).then_some(()) },
        )
        .await;
    std::fs::write(out.join("release"), "").unwrap();
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    let long = task(&detail, "long");
    assert_eq!(attempt_of(long, 1)["outcome"], "lost", "{long}");
    assert_eq!(attempt_of(long, 2)["outcome"], "success", "{long}");
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "long 2\n",
        "only the retry ran to the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_loses_its_attempt_and_the_task_succeeds_on_another() {
    let (dir, out) = setup(&one_long_task_dag());
    let mut cluster = Cluster::start(dir, FAST_LIVENESS).await;
    let doomed = cluster.start_worker("doomed", "none", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("faults", json!({})).await;
    wait_file(&cluster, &out.join("long.pid.1")).await;
    cluster.start_worker("survivor", "none", &[]);
    cluster.wait_workers(2).await;

    cluster.workers[doomed].signal("KILL");
    wait_file(&cluster, &out.join("long.pid.2")).await;
    // The orphaned copy of attempt 1 cannot be reached once its worker is gone;
    // stop it here so only the retry sees the release.
    let orphan = std::fs::read_to_string(out.join("long.pid.1")).unwrap();
    // Never `kill -9 -1` (every process) or a group that is not the task's.
    let orphan: u32 = orphan
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("long.pid.1 holds {orphan:?}, not a pid: {e}"));
    assert!(orphan > 1, "long.pid.1 holds pid {orphan}");
    // Only while that pid is still our task's shell: once it is gone the pid
    // (and the group id) may belong to anything else on the machine.
    let cmdline = std::fs::read(format!("/proc/{orphan}/cmdline")).unwrap_or_default();
    if String::from_utf8_lossy(&cmdline).contains(&out.display().to_string()) {
        let _ = std::process::Command::new("kill")
            .args(["-9", &format!("-{orphan}")])
            .status();
    }
    std::fs::write(out.join("release"), "").unwrap();
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    let long = task(&detail, "long");
    assert_eq!(attempt_of(long, 1)["outcome"], "lost");
    assert_eq!(long["worker"], "survivor");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scheduler_restart_mid_run_loses_nothing_and_runs_nothing_twice() {
    let (dir, out) = setup(&two_step_dag());
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("w", "none", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("faults", json!({})).await;
    wait_file(&cluster, &out.join("first.pid.1")).await;

    cluster.stop_scheduler_hard();
    cluster.start_scheduler(&[]);
    cluster.wait_workers(1).await;
    std::fs::write(out.join("release"), "").unwrap();
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    assert_eq!(
        task(&detail, "first")["attempts"].as_array().unwrap().len(),
        1,
        "{detail}"
    );
    assert_eq!(
        task(&detail, "second")["attempts"]
            .as_array()
            .unwrap()
            .len(),
        1,
        "{detail}"
    );
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "first 1\nsecond 1\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_a_worker_it_finishes_running_work_and_takes_no_more() {
    let (dir, out) = setup(&two_step_dag());
    let mut cluster = Cluster::start(dir, &[]).await;
    let draining = cluster.start_worker("draining", "none", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("faults", json!({})).await;
    wait_file(&cluster, &out.join("first.pid.1")).await;

    cluster.workers[draining].signal("TERM");
    cluster
        .wait_until(LONG, "the worker to be draining", || async {
            let v = cluster.get("/api/v1/workers").await;
            v["workers"]
                .as_array()
                .unwrap()
                .iter()
                .any(|w| w["name"] == "draining" && w["state"] == "draining")
                .then_some(())
        })
        .await;
    std::fs::write(out.join("release"), "").unwrap();
    let status = cluster.workers[draining]
        .wait_exit(LONG)
        .expect("the draining worker exits once its task is done");
    assert!(status.success(), "drain exit status {status:?}");
    let detail = cluster.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(task(&detail, "first")["state"], "success", "{detail}");
    assert_ne!(
        task(&detail, "second")["state"],
        "success",
        "second must wait for a worker"
    );

    cluster.start_worker("fresh", "none", &[]);
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    assert_eq!(task(&detail, "second")["worker"], "fresh");
}
