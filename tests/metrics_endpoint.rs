//! `GET /metrics` on a real scheduler (SQLite) after one run on a real worker:
//! the page parses as the Prometheus text format and carries the figures the
//! Grafana dashboard reads, labelled by DAG where alerts need it. The page is also written to
//! `$CARGO_TARGET_TMPDIR/metrics.prom`, where `.ci/run` checks it with
//! `promtool check metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use trainyard_core::ids::DagId;
use trainyard_core::state::RunState;
use trainyard_scheduler::app::{SchedulerApp, SchedulerConfig};
use trainyard_worker::agent::{Agent, AgentOptions};

const DAG: &str = r#"
id = "metrics_probe"
[tasks.a]
command = ["true"]
[tasks.b]
depends_on = ["a"]
command = ["true"]
"#;

/// Checks every sample line is `name{labels} value` with a TYPE for its family.
fn parse_exposition(text: &str) -> BTreeSet<String> {
    let mut typed = BTreeSet::new();
    let mut samples = BTreeSet::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split_whitespace();
            let name = parts.next().unwrap();
            let kind = parts.next().unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            typed.insert(name.to_owned());
            continue;
        }
        if line.starts_with('#') {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
            "bad value in {line:?}"
        );
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad name in {line:?}"
        );
        if let Some(labels) = series.strip_prefix(name)
            && !labels.is_empty()
        {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line:?}");
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE before {line:?}");
        samples.insert(series.to_owned());
    }
    samples
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_page_parses_and_counts_a_real_run() {
    let dir = tempfile::tempdir().unwrap();
    let dags = dir.path().join("dags");
    std::fs::create_dir_all(&dags).unwrap();
    std::fs::write(dags.join("metrics_probe.toml"), DAG).unwrap();
    let mut config = SchedulerConfig::new(
        format!("sqlite:{}", dir.path().join("t.db").display()),
        dir.path(),
    );
    config.dags_dir = Some(dags);
    let shutdown = CancellationToken::new();
    let app = SchedulerApp::start(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        shutdown.clone(),
    )
    .await
    .unwrap();

    let work = dir.path().join("work");
    std::fs::create_dir_all(&work).unwrap();
    let mut opts = AgentOptions::new(format!("http://{}", app.grpc_addr), work);
    opts.name = "metrics-worker".into();
    opts.cpus = 2;
    // A declared GPU, so the per-GPU inventory series appear too.
    opts.gpus = "1xA100-80GB"
        .parse::<trainyard_worker::gpu::GpuSpec>()
        .unwrap()
        .declared_gpus();
    let agent = Agent::build(opts).unwrap();
    let stop_agent = CancellationToken::new();
    let agent_task = tokio::spawn(agent.run(stop_agent.clone().cancelled_owned()));

    let mut events = app.engine.subscribe();
    // The worker may still be registering: the run waits for it.
    let run = app
        .engine
        .trigger(DagId::new("metrics_probe"), Default::default(), None, None)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            if let Ok(trainyard_scheduler::engine::EngineEvent::RunState { run_id, state, .. }) =
                events.recv().await
                && run_id == run
                && state.is_terminal()
            {
                assert_eq!(state, RunState::Success);
                return;
            }
        }
    })
    .await
    .expect("the run ended");

    let url = format!("http://{}/metrics", app.http_addr);
    let resp = reqwest::get(&url).await.unwrap();
    assert_eq!(resp.status(), 200);
    let content_type = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    let text = resp.text().await.unwrap();
    std::fs::write(
        std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("metrics.prom"),
        &text,
    )
    .unwrap();

    let samples = parse_exposition(&text);
    for series in [
        "trainyard_task_transitions_total{dag=\"metrics_probe\",state=\"success\"}",
        "trainyard_run_transitions_total{dag=\"metrics_probe\",state=\"success\"}",
        "trainyard_task_duration_seconds_count{dag=\"metrics_probe\",outcome=\"success\"}",
        "trainyard_queue_wait_seconds_count{pool=\"default\"}",
        "trainyard_tasks{state=\"ready\"}",
        "trainyard_workers{state=\"active\"}",
        "trainyard_scheduling_latency_seconds_count",
        "trainyard_run_duration_seconds_count{state=\"success\"}",
        "trainyard_db_up",
        "trainyard_db_pool_connections{state=\"in_use\"}",
        "trainyard_db_pool_connections{state=\"max\"}",
        "trainyard_process_resident_memory_bytes",
    ] {
        assert!(samples.contains(series), "missing {series} in:\n{text}");
    }
    assert!(text.contains("trainyard_db_up 1"), "{text}");
    // The DAG's last success is the run's stored end, read at scrape time.
    let ended = app
        .store
        .get_run(run)
        .await
        .unwrap()
        .ended_at
        .expect("a finished run has an end");
    let line = format!(
        "trainyard_dag_last_success_timestamp_seconds{{dag=\"metrics_probe\"}} {}",
        ended.timestamp_millis() as f64 / 1000.0
    );
    assert!(text.contains(&line), "missing {line} in:\n{text}");
    for family in [
        "trainyard_gpu_memory_total_bytes{",
        "trainyard_gpu_allocated{",
    ] {
        assert!(
            samples
                .iter()
                .any(|s| s.starts_with(family) && s.contains("worker=\"metrics-worker\"")),
            "missing {family}...}} in:\n{text}"
        );
    }
    // The collector may lag the run event by a moment; the counters are
    // cumulative and process-wide, so at least this run's tasks are counted.
    assert!(
        text.contains("trainyard_workers{state=\"active\"} 1"),
        "{text}"
    );

    stop_agent.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(15), agent_task).await;
    shutdown.cancel();
    app.wait().await;
}
