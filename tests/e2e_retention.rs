//! End-to-end, separate processes: bounded disk with default settings. A
//! default `trainyard standalone` runs a DAG of a few hundred short tasks
//! (`TRAINYARD_E2E_TASKS` for more, e.g. the 10,000-task measurement) and
//! one that fails; afterwards the data dir holds no per-attempt folder of a
//! successful attempt and no local log copy, the failed attempt's folder
//! is kept (to debug from), and the archived logs are still served by the
//! API and `trainyard logs`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{BIN, Proc};

/// Tasks in the DAG (besides the failing one); each depends on the one
/// `WIDTH` before it, so most read an upstream's outputs.
fn task_count() -> usize {
    std::env::var("TRAINYARD_E2E_TASKS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(300)
}
const WIDTH: usize = 20;

fn dag(n: usize) -> String {
    let mut s = String::from("id = \"many\"\nmax_active_tasks = 64\n");
    for i in 0..n {
        s.push_str(&format!("[tasks.t{i:05}]\n"));
        if i == 0 {
            s.push_str("command = [\"echo\", \"first task done\"]\n");
        } else {
            s.push_str("command = [\"true\"]\n");
        }
        if i >= WIDTH {
            s.push_str(&format!("depends_on = [\"t{:05}\"]\n", i - WIDTH));
        }
    }
    s.push_str("[tasks.broken]\ncommand = [\"sh\", \"-c\", \"echo partial > \\\"$TRAINYARD_OUTPUT_DIR/x\\\"; exit 3\"]\n");
    s
}

/// `<data>/work/<run>/<task>/<attempt>` folders, as (task, attempt, path).
fn attempt_dirs(work: &Path) -> Vec<(String, String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(runs) = std::fs::read_dir(work) else {
        return out;
    };
    for run in runs.flatten() {
        let name = run.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') || !run.path().is_dir() {
            continue;
        }
        for task in std::fs::read_dir(run.path()).unwrap().flatten() {
            for attempt in std::fs::read_dir(task.path()).unwrap().flatten() {
                out.push((
                    task.file_name().to_string_lossy().into_owned(),
                    attempt.file_name().to_string_lossy().into_owned(),
                    attempt.path(),
                ));
            }
        }
    }
    out
}

fn files_named(dir: &Path, suffix: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(files_named(&p, suffix));
        } else if p.to_string_lossy().ends_with(suffix) {
            out.push(p);
        }
    }
    out
}

fn start_standalone(dir: &Path) -> (Proc, String) {
    let ready = dir.join("standalone.ready");
    let log = dir.join("standalone.log");
    let out = std::fs::File::create(&log).unwrap();
    let child = Command::new(BIN)
        .args(["standalone", "--dags", "dags", "--data-dir", "data"])
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .args(["--gpus", "none", "--slots", "16"])
        .arg("--ready-file")
        .arg(&ready)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        .env("RUST_LOG", "info")
        .spawn()
        .unwrap();
    let proc = Proc {
        child,
        name: "standalone".into(),
        log,
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let addrs: Value = loop {
        if let Ok(text) = std::fs::read_to_string(&ready)
            && let Ok(v) = serde_json::from_str(&text)
        {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "standalone never became ready:\n{}",
            proc.log_text()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let http = format!("http://{}", addrs["http"].as_str().unwrap());
    (proc, http)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn default_standalone_keeps_no_folder_or_local_log_of_successful_attempts() {
    let n = task_count();
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/many.toml"), dag(n)).unwrap();
    let (proc, http) = start_standalone(dir.path());
    let client = reqwest::Client::new();

    let started = Instant::now();
    let created: Value = client
        .post(format!("{http}/api/v1/dags/many/runs"))
        .json(&json!({}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let run = created["run_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no run id in {created}"))
        .to_owned();
    let deadline = Instant::now() + Duration::from_secs(600 + n as u64 / 5);
    let detail = loop {
        let v: Value = client
            .get(format!("{http}/api/v1/runs/{run}"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if matches!(v["run"]["state"].as_str(), Some("success" | "failed")) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "the run did not finish: {}\n{}",
            v["run"],
            proc.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    eprintln!("{n} tasks ran in {:?}", started.elapsed());
    assert_eq!(detail["run"]["state"], "failed", "only `broken` fails");
    let tasks = detail["tasks"].as_array().unwrap();
    let succeeded = tasks.iter().filter(|t| t["state"] == "success").count();
    assert_eq!(succeeded, n, "every other task succeeded");

    // The worker settles an attempt's folder before it reports the end, so
    // by now every folder is settled.
    let work = dir.path().join("data/work");
    let left: Vec<(String, String)> = attempt_dirs(&work)
        .into_iter()
        .map(|(task, attempt, _)| (task, attempt))
        .collect();
    assert_eq!(
        left,
        vec![("broken".to_owned(), "1".to_owned())],
        "only the failed attempt's folder is kept"
    );
    let kept = work.join(&run).join("broken/1");
    assert_eq!(
        std::fs::read_to_string(kept.join("out/x")).unwrap(),
        "partial\n"
    );
    assert!(kept.join(".trainyard-ended").is_file());

    // Every finished attempt's log is archived and its local copy gone; the
    // archive serves it through the API and the CLI.
    let local = files_named(&dir.path().join("data/logs"), ".log");
    assert!(local.is_empty(), "local log copies left: {local:?}");
    let archived = files_named(
        &dir.path().join("data/artifacts/runs").join(&run),
        "log.txt",
    );
    assert_eq!(archived.len(), n + 1);
    let served = client
        .get(format!("{http}/api/v1/runs/{run}/tasks/t00000/logs"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    assert!(served.text().await.unwrap().contains("first task done"));
    let cli = Command::new(BIN)
        .args(["logs", &run, "t00000", "--server", &http])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&cli.stdout).contains("first task done"),
        "{} {}",
        String::from_utf8_lossy(&cli.stdout),
        String::from_utf8_lossy(&cli.stderr)
    );
    // For the record (not asserted): what the data dir holds afterwards.
    let du = Command::new("sh")
        .args([
            "-c",
            "for p in data data/* data/artifacts/runs; do du -sk \"$p\"; done 2>/dev/null",
        ])
        .current_dir(dir.path())
        .output()
        .unwrap();
    eprintln!(
        "data dir after {n} tasks (KiB):\n{}",
        String::from_utf8_lossy(&du.stdout).trim()
    );
    drop(proc);
}
