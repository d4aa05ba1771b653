//! DAG code that follows the run, with separate processes: a worker started
//! in an empty directory (no DAG folder, no repository) runs
//! `churn_retrain` from the code snapshot its version shipped through the
//! artifact store; and a script edited between a failed attempt and its
//! retry does not change what the retry runs (the run pinned its version),
//! while the next run gets the edit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{Cluster, churn_run_succeeds, copy_example_dags, deployed_models, task};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_saw_the_repository_runs_churn_retrain_from_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    let mut cluster = Cluster::start(dir, &[]).await;
    // Its own current directory, with no `dags/` in it: `python3
    // dags/jobs/ingest.py` resolves only inside a snapshot.
    let elsewhere = tempfile::tempdir().unwrap();
    cluster.start_worker_in(elsewhere.path(), "remote", "none", &[]);
    cluster.wait_workers(1).await;
    assert!(!elsewhere.path().join("dags").exists());
    let (run, _) = churn_run_succeeds(&cluster, json!({})).await;
    assert!(deployed_models(&cluster, &run).join("CURRENT").exists());
    assert!(
        !elsewhere.path().join("dags").exists(),
        "the worker's own directory stays untouched"
    );
}

fn flaky_dag(out: &Path) -> String {
    format!(
        r#"id = "flaky"
[tasks.step]
command = ["sh", "dags/jobs/step.sh"]
retries = 1
retry_delay = "1s"
env = {{ OUT = "{}" }}
"#,
        out.display()
    )
}

/// Attempt 1 records itself, waits for `go`, then fails; later attempts
/// record themselves and succeed. `version` is what the record says.
fn step_script(version: &str) -> String {
    format!(
        r#"echo "{version} $TRAINYARD_ATTEMPT" >> "$OUT/ran.log"
touch "$OUT/started.$TRAINYARD_ATTEMPT"
if [ "$TRAINYARD_ATTEMPT" = 1 ]; then
  while [ ! -f "$OUT/go" ]; do sleep 0.05; done
  exit 1
fi
"#
    )
}

async fn current_version(cluster: &Cluster) -> String {
    cluster.get("/api/v1/dags/flaky").await["dag"]["current_version_id"].to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_runs_the_code_its_run_pinned_even_after_the_file_changed() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let jobs = dir.path().join("dags/jobs");
    std::fs::create_dir_all(&jobs).unwrap();
    std::fs::write(jobs.join("step.sh"), step_script("v1")).unwrap();
    std::fs::write(dir.path().join("dags/flaky.toml"), flaky_dag(&out)).unwrap();
    let mut cluster = Cluster::start(dir, &[]).await;
    let elsewhere = tempfile::tempdir().unwrap();
    cluster.start_worker_in(elsewhere.path(), "remote", "none", &[]);
    cluster.wait_workers(1).await;

    let first = cluster.trigger("flaky", json!({})).await;
    cluster
        .wait_until(LONG, "attempt 1 to start", || async {
            out.join("started.1").exists().then_some(())
        })
        .await;
    // Edit the script while attempt 1 runs, and wait until the scheduler
    // registered the edit as a new version.
    let before = current_version(&cluster).await;
    std::fs::write(jobs.join("step.sh"), step_script("v2")).unwrap();
    cluster
        .wait_until(LONG, "the edited script to make a new version", || async {
            let now = current_version(&cluster).await;
            (now != before).then_some(())
        })
        .await;
    std::fs::write(out.join("go"), "").unwrap();
    let detail = cluster.wait_run(&first, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    let step = task(&detail, "step");
    assert_eq!(step["attempts"].as_array().map(Vec::len), Some(2), "{step}");
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "v1 1\nv1 2\n",
        "the retry ran the pinned version's script"
    );

    // A new run pins the new version.
    let second = cluster.trigger("flaky", json!({})).await;
    let detail = cluster.wait_run(&second, LONG).await;
    assert_eq!(detail["run"]["state"], "success", "{detail}");
    assert_eq!(
        std::fs::read_to_string(out.join("ran.log")).unwrap(),
        "v1 1\nv1 2\nv2 1\nv2 2\n"
    );
}
