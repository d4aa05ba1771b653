//! End-to-end through the CLI: a `trainyard scheduler` and a `trainyard
//! worker` process on PostgreSQL, and `trainyard trigger --wait`, `runs show`
//! and `logs --follow` run as separate processes. `--wait` returns with the
//! run's final state (exit 0 on success, 1 otherwise), a trigger no worker
//! could hold warns on stderr, and `runs show` says why tasks wait or were
//! skipped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use support::{Cluster, task, write_dag};

const BIN: &str = env!("CARGO_BIN_EXE_trainyard");
const LONG: Duration = Duration::from_secs(120);

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
async fn trigger_wait_returns_with_the_final_state_and_the_cli_says_why() {
    let dir = tempfile::tempdir().unwrap();
    write_dag(
        dir.path(),
        "gated",
        r#"
id = "gated"
[params]
min_auc = 0.75
[tasks.evaluate]
shell = "echo 'auc=0.0197'; echo '{\"auc\": 0.0197}' > \"$TRAINYARD_METRICS_FILE\""
[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= params.min_auc"
command = ["true"]
"#,
    );
    write_dag(
        dir.path(),
        "broken",
        r#"
id = "broken"
[tasks.fail]
command = ["false"]
"#,
    );
    write_dag(
        dir.path(),
        "big",
        r#"
id = "big"
[tasks.train]
command = ["true"]
resources = { gpus = 8, gpu_model = "H100" }
"#,
    );
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("w", "2xA100-80GB", &[]);
    cluster.wait_workers(1).await;
    let server = format!("http://{}", cluster.addrs.http);

    // Success: exit 0, the run id first on stdout, the final state and the
    // gate's reason on stderr; the stored run has ended.
    let (ok, out, err) = cli(&["trigger", "gated", "--wait", "--server", &server]);
    assert!(ok, "trigger --wait failed: {err}");
    let run = out.lines().next().unwrap().trim().to_owned();
    assert!(err.contains(&format!("run {run} success")), "{err}");
    let gate = "metrics.evaluate.auc >= params.min_auc was false \
                (metrics.evaluate.auc = 0.0197, params.min_auc = 0.75)";
    assert!(err.contains(gate), "{err}");
    let detail = cluster.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(detail["run"]["state"], "success");
    assert!(detail["run"]["ended_at"].is_string());
    assert_eq!(task(&detail, "deploy")["skip_reason"], gate);

    let (ok, out, err) = cli(&["runs", "show", &run, "--server", &server]);
    assert!(ok, "{err}");
    assert!(out.contains(gate), "{out}");

    // The log of a finished task through --follow: printed, then it returns.
    let (ok, out, err) = cli(&["logs", &run, "evaluate", "--follow", "--server", &server]);
    assert!(ok, "{err}");
    assert!(out.contains("auc=0.0197"), "{out}");

    // Failure: exit 1 with the failed state.
    let (ok, out, err) = cli(&["trigger", "broken", "--wait", "--server", &server]);
    assert!(!ok, "a failed run must exit non-zero");
    let run = out.lines().next().unwrap().trim().to_owned();
    assert!(err.contains(&format!("run {run} failed")), "{err}");

    // A task no worker could hold: accepted, warned about on stderr, and
    // `runs show` says why it waits.
    let (ok, out, err) = cli(&["trigger", "big", "--server", &server]);
    assert!(ok, "{err}");
    let run = out.lines().next().unwrap().trim().to_owned();
    let why = "needs 8 GPUs of model H100; no registered worker has an H100; \
               the largest worker has 2 GPUs";
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: task `train` cannot start") && l.contains(why)),
        "{err}"
    );
    let shown = cluster
        .wait_until(LONG, "the waiting task's reason", || {
            let run = run.clone();
            let server = server.clone();
            async move {
                let (ok, out, _) = cli(&["runs", "show", &run, "--server", &server]);
                (ok && out.contains(why)).then_some(out)
            }
        })
        .await;
    assert!(shown.contains("ready"), "{shown}");
}
