//! Measures (does not assert) the engine's per-step latency over a
//! 1,000-task chain: from an upstream task's success being recorded to its
//! downstream task being marked ready (both are engine events emitted right
//! after their store commit), and to the downstream's assignment.
//!
//! `cargo test --release -p trainyard-scheduler --test engine_bench -- --ignored --nocapture`
#![allow(clippy::unwrap_used)]

mod engine_support;

use std::collections::HashMap;
use std::time::Instant;

use engine_support::*;
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::engine::{EngineEvent, WorkerCommand};

const STEPS: usize = 1000;

fn chain_toml() -> String {
    let mut s = String::from("id = \"chain1000\"\n");
    for i in 0..STEPS {
        s.push_str(&format!("[tasks.t{i:04}]\ncommand = [\"true\"]\n"));
        if i > 0 {
            s.push_str(&format!("depends_on = [\"t{:04}\"]\n", i - 1));
        }
    }
    s
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn bench_chain_step(h: Harness, label: &str) {
    let dag = h.add_dag(&chain_toml()).await;
    let mut w = FakeWorker::join(&h.handle, registration("bench", 8, &[])).await;
    let mut events = h.handle.subscribe();
    let recorder = tokio::spawn(async move {
        let mut success = HashMap::new();
        let mut ready = HashMap::new();
        let mut assigned = HashMap::new();
        while let Ok(e) = events.recv().await {
            let now = Instant::now();
            match e {
                EngineEvent::TaskState { task_id, state, .. } => {
                    let i: usize = task_id.as_str()[1..].parse().unwrap();
                    match state {
                        TaskState::Success => success.insert(i, now),
                        TaskState::Ready => ready.insert(i, now),
                        TaskState::Assigned => assigned.insert(i, now),
                        _ => None,
                    };
                }
                EngineEvent::RunState { state, .. } if state.is_terminal() => break,
                _ => {}
            }
        }
        (success, ready, assigned)
    });
    let started = Instant::now();
    let run = h.trigger(&dag).await;
    let handle = w.handle.clone();
    let id = w.id;
    let worker = tokio::spawn(async move {
        while let Some(cmd) = w.rx.recv().await {
            if let WorkerCommand::Assign(a) = cmd {
                handle
                    .task_started(id, a.task_instance_id, a.attempt)
                    .await
                    .unwrap();
                handle
                    .task_finished(
                        id,
                        a.task_instance_id,
                        a.attempt,
                        trainyard_scheduler::engine::TaskResult::succeeded(),
                    )
                    .await
                    .unwrap();
            }
        }
    });
    let (success, ready, assigned) =
        tokio::time::timeout(std::time::Duration::from_secs(600), recorder)
            .await
            .expect("the chain did not finish in 10 minutes")
            .unwrap();
    let total = started.elapsed();
    assert_eq!(h.store.get_run(run).await.unwrap().state, RunState::Success);
    worker.abort();
    let mut to_ready: Vec<f64> = (1..STEPS)
        .filter_map(|i| Some((*ready.get(&i)? - *success.get(&(i - 1))?).as_secs_f64() * 1e3))
        .collect();
    let mut to_assigned: Vec<f64> = (1..STEPS)
        .filter_map(|i| Some((*assigned.get(&i)? - *success.get(&(i - 1))?).as_secs_f64() * 1e3))
        .collect();
    to_ready.sort_by(f64::total_cmp);
    to_assigned.sort_by(f64::total_cmp);
    println!(
        "{label}: {STEPS}-step chain in {:.3}s ({:.3} ms/step end to end); completion recorded → downstream ready: p50 {:.3} ms, p99 {:.3} ms (n={}); → downstream assigned: p50 {:.3} ms, p99 {:.3} ms",
        total.as_secs_f64(),
        total.as_secs_f64() * 1e3 / STEPS as f64,
        pct(&to_ready, 0.5),
        pct(&to_ready, 0.99),
        to_ready.len(),
        pct(&to_assigned, 0.5),
        pct(&to_assigned, 0.99),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn chain_step_latency_sqlite() {
    bench_chain_step(Harness::sqlite(utc(2026, 1, 1, 0, 0)).await, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: run with --release --ignored --nocapture"]
async fn chain_step_latency_postgres() {
    bench_chain_step(Harness::postgres(utc(2026, 1, 1, 0, 0)).await, "postgres").await;
}
