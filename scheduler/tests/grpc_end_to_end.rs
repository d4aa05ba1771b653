//! End to end over real loopback gRPC: engine + worker service + a real
//! `Agent` with declared GPUs run a small DAG of `sh -c` tasks that record
//! their environment. Proves: the run succeeds, every TRAINYARD_* variable
//! is set, CUDA_VISIBLE_DEVICES is exactly the assigned GPUs, upstream
//! outputs reach the downstream input dir (same-host fallback), metrics and
//! logs reach the scheduler, and the agent survives a scheduler (gRPC
//! server) restart mid-task, delivering the result afterwards.
#![allow(clippy::unwrap_used)]

mod grpc_support;

use grpc_support::*;
use trainyard_core::state::RunState;

const RECORD_ENV: &str = r#"env | grep -E '^(TRAINYARD_|CUDA_VISIBLE_DEVICES=|NVIDIA_VISIBLE_DEVICES=)' | sort > "$TRAINYARD_OUTPUT_DIR/env.txt""#;

fn dag() -> String {
    format!(
        r#"
id = "grpc_e2e"

[params]
lr = 0.5

[tasks.ingest]
shell = '''echo "ingest says hi"; echo "to stderr" >&2; echo rows > "$TRAINYARD_OUTPUT_DIR/data.txt"; {RECORD_ENV}'''

[tasks.train]
depends_on = ["ingest"]
resources = {{ gpus = 2 }}
shell = '''cat "$TRAINYARD_INPUT_DIR/ingest/data.txt" > "$TRAINYARD_OUTPUT_DIR/seen.txt"; echo '{{"auc": 0.93}}' > "$TRAINYARD_METRICS_FILE"; {RECORD_ENV}'''
"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dag_runs_end_to_end_over_grpc_with_env_gpus_inputs_metrics_and_logs() {
    let mut s = Scheduler::start().await;
    let agent = start_agent(agent_options(
        &s,
        "gpu-box",
        declared_gpus(4, "NVIDIA A100-SXM4-80GB"),
    ))
    .await;
    let dag = s.add_dag(&dag()).await;
    let run = s.trigger(&dag).await;
    assert_eq!(s.wait_run(run).await, RunState::Success);

    // Every attempt ran on the agent; train got two GPUs.
    let attempts = s.store.run_attempts(run).await.unwrap();
    assert_eq!(attempts.len(), 2, "{attempts:?}");
    assert!(
        attempts
            .iter()
            .all(|a| a.worker_id == Some(agent.worker_id))
    );
    let train_ti = s.ti(run, "train").await;
    let train = attempts
        .iter()
        .find(|a| a.task_instance_id == train_ti.id)
        .unwrap();
    assert_eq!(train.gpus.len(), 2);

    let ingest_env = env_map(&out_file(&agent.work_dir, run, "ingest", 1, "env.txt"));
    let train_env = env_map(&out_file(&agent.work_dir, run, "train", 1, "env.txt"));
    let expected_gpus = train
        .gpus
        .iter()
        .map(u32::to_string)
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(train_env["CUDA_VISIBLE_DEVICES"], expected_gpus);
    assert_eq!(train_env["NVIDIA_VISIBLE_DEVICES"], expected_gpus);
    assert_eq!(
        ingest_env["CUDA_VISIBLE_DEVICES"], "",
        "a CPU task sees no GPU"
    );

    let attempt_dir = agent.work_dir.join(run.to_string()).join("train").join("1");
    assert_eq!(train_env["TRAINYARD_RUN_ID"], run.to_string());
    assert_eq!(train_env["TRAINYARD_DAG_ID"], "grpc_e2e");
    assert_eq!(train_env["TRAINYARD_TASK_ID"], "train");
    assert_eq!(train_env["TRAINYARD_ATTEMPT"], "1");
    assert!(!train_env["TRAINYARD_LOGICAL_DATE"].is_empty());
    let params: serde_json::Value = serde_json::from_str(&train_env["TRAINYARD_PARAMS"]).unwrap();
    assert_eq!(params["lr"], 0.5);
    assert_eq!(
        train_env["TRAINYARD_OUTPUT_DIR"],
        attempt_dir.join("out").display().to_string()
    );
    assert_eq!(
        train_env["TRAINYARD_INPUT_DIR"],
        attempt_dir.join("in").display().to_string()
    );
    assert_eq!(
        train_env["TRAINYARD_METRICS_FILE"],
        attempt_dir.join("metrics.json").display().to_string()
    );

    // The upstream's output reached the downstream's input dir.
    assert_eq!(
        out_file(&agent.work_dir, run, "train", 1, "seen.txt").trim(),
        "rows"
    );

    // Metrics were stored for the attempt.
    let metrics = s.store.run_metrics(run).await.unwrap();
    assert!(
        metrics
            .iter()
            .any(|m| m.name == "auc" && (m.value - 0.93).abs() < 1e-9),
        "{metrics:?}"
    );

    // Logs reached the scheduler's log store (stdout and stderr).
    let log = std::fs::read_to_string(s.logs.path(run, "ingest", 1).unwrap()).unwrap();
    assert!(log.contains("ingest says hi"), "{log}");
    assert!(log.contains("to stderr"), "{log}");

    agent.handle.drain();
    tokio::time::timeout(WAIT, agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_keeps_running_across_a_scheduler_restart_and_its_result_arrives_after() {
    let mut s = Scheduler::start().await;
    let agent = start_agent(agent_options(&s, "box", vec![])).await;
    let gate = s.dir.path().join("gate");
    let started = s.dir.path().join("started");
    let toml = format!(
        r#"
id = "grpc_restart"
[tasks.wait]
shell = '''touch "{started}"; while [ ! -f "{gate}" ]; do sleep 0.02; done; echo done'''
"#,
        started = started.display(),
        gate = gate.display()
    );
    let dag = s.add_dag(&toml).await;
    let run = s.trigger(&dag).await;
    s.until("the task to start", || {
        let started = started.clone();
        async move { started.exists() }
    })
    .await;

    // The scheduler's gRPC side goes away; the agent loses its stream.
    s.stop_server().await;
    tokio::time::timeout(WAIT, agent.handle.wait_for(|st| !st.connected))
        .await
        .unwrap();
    // The task finishes while the agent is disconnected.
    std::fs::write(&gate, "go").unwrap();
    tokio::time::timeout(WAIT, agent.handle.wait_for(|st| st.running == 0))
        .await
        .unwrap();

    s.restart_server().await;
    assert_eq!(s.wait_run(run).await, RunState::Success);
    let st = agent.handle.status();
    assert!(st.connections >= 2, "{st:?}");
    let attempts = s.store.run_attempts(run).await.unwrap();
    assert_eq!(attempts.len(), 1, "the task ran once: {attempts:?}");

    agent.handle.drain();
    tokio::time::timeout(WAIT, agent.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    s.shutdown().await;
}
