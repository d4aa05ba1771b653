//! End-to-end: a DAG file far over the limits (35 MB, a million tasks)
//! dropped into a running scheduler's folder is recorded as an error on its
//! DAG without being parsed; the scheduler stays ready and keeps serving the
//! other DAGs, and a restart with the file still there becomes ready.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write as _;
use std::time::Duration;

use serde_json::Value;
use support::Cluster;

const LONG: Duration = Duration::from_secs(120);

/// Writes a DAG of `tasks` tasks to `path` as it streams (never whole in memory).
fn write_huge_dag(path: &std::path::Path, tasks: usize) {
    let tmp = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&tmp).unwrap());
    writeln!(out, "id = \"huge\"").unwrap();
    for i in 0..tasks {
        writeln!(out, "[tasks.task_{i:07}]\ncommand = [\"true\"]").unwrap();
    }
    out.into_inner().unwrap().sync_all().unwrap();
    // Appears in the folder complete, as a deploy tool would place it.
    std::fs::rename(&tmp, path).unwrap();
}

/// Peak resident memory of a process, from /proc (kB → bytes).
fn peak_rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb * 1024
}

async fn readyz(cluster: &Cluster) -> u16 {
    cluster
        .http
        .get(cluster.url("/readyz"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// The DAG part of `GET /api/v1/dags/{id}`.
async fn dag(cluster: &Cluster, id: &str) -> Value {
    cluster.get(&format!("/api/v1/dags/{id}")).await["dag"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_million_task_file_leaves_the_scheduler_ready_and_serving_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(
        dags.join("small.toml"),
        "id = \"small\"\n[tasks.hello]\ncommand = [\"true\"]\n",
    )
    .unwrap();
    let mut cluster = Cluster::start(dir, &[]).await;
    assert_eq!(readyz(&cluster).await, 200);

    let huge = dags.join("huge.toml");
    write_huge_dag(&huge, 1_000_000);
    let size = std::fs::metadata(&huge).unwrap().len();
    assert!(size > 30_000_000, "{size}");

    // The watcher records the error on the DAG the file names.
    let error = cluster
        .wait_until(LONG, "the huge DAG's error", || async {
            let resp = cluster
                .http
                .get(cluster.url("/api/v1/dags/huge"))
                .send()
                .await
                .unwrap();
            if !resp.status().is_success() {
                return None;
            }
            let v: Value = resp.json().await.unwrap();
            v["dag"]["parse_error"].as_str().map(str::to_owned)
        })
        .await;
    assert!(
        error.contains(&format!("{size} bytes"))
            && error.contains("1MiB")
            && error.contains("--max-dag-file-size"),
        "{error}"
    );
    assert!(dag(&cluster, "huge").await["current_version_id"].is_null());
    assert_eq!(readyz(&cluster).await, 200);
    let small = dag(&cluster, "small").await;
    assert_eq!(small["active"], true, "{small}");
    assert!(small["parse_error"].is_null(), "{small}");
    cluster.trigger("small", serde_json::json!({})).await;
    // Never parsed: a full parse of this file took the scheduler past 6 GB.
    let pid = cluster.scheduler.as_ref().unwrap().pid();
    let peak = peak_rss(pid);
    assert!(peak < 300 << 20, "scheduler peak RSS {peak} bytes");

    // A restart with the file still in place becomes ready.
    cluster.stop_scheduler_hard();
    cluster.start_scheduler(&[]);
    assert_eq!(readyz(&cluster).await, 200);
    let again = dag(&cluster, "huge").await;
    assert!(
        again["parse_error"]
            .as_str()
            .is_some_and(|e| e.contains("--max-dag-file-size")),
        "{again}"
    );
    assert_eq!(dag(&cluster, "small").await["active"], true);
}
