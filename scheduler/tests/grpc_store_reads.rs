//! The worker service and the engine do no store read per assignment: a
//! 1,000-task layered run (20 layers, each task depending on two of the layer
//! above) through the real gRPC service, with an artifact store (so
//! assignments name their upstream attempts) and a real agent spawning
//! `true`, is counted call by call by a store wrapper.
#![allow(clippy::unwrap_used)]

mod grpc_support;

#[path = "engine_support/faulty.rs"]
mod faulty;

use std::sync::Arc;

use faulty::FaultyStore;
use grpc_support::*;
use trainyard_core::state::RunState;
use trainyard_scheduler::store::EngineStore;

/// `width × 20` tasks; each below the first layer depends on tasks `i` and
/// `i + 1` of the layer above.
fn layered(width: usize) -> String {
    let mut s = String::from("id = \"layered\"\n\n");
    for l in 0..20 {
        for i in 0..width {
            s.push_str(&format!("[tasks.l{l:02}_{i:03}]\ncommand = [\"true\"]\n"));
            if l > 0 {
                s.push_str(&format!(
                    "depends_on = [\"l{:02}_{i:03}\", \"l{:02}_{:03}\"]\n",
                    l - 1,
                    l - 1,
                    (i + 1) % width
                ));
            }
            s.push('\n');
        }
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_task_layered_run_reads_the_store_a_constant_number_of_times() {
    let mut counting = None;
    let mut s = Scheduler::start_with(
        |inner| {
            let f = FaultyStore::new(inner);
            counting = Some(f.clone());
            f as Arc<dyn EngineStore>
        },
        true,
    )
    .await;
    let counting = counting.unwrap();
    let mut opts = agent_options(&s, "w1", vec![]);
    opts.slots = 8;
    let _agent = start_agent(opts).await;
    let dag = s.add_dag(&layered(50)).await;

    counting.reset_counts();
    let writes_before = counting.writes();
    let run = s.trigger(&dag).await;
    let state = s.wait_run(run).await;
    if state != RunState::Success {
        // Say which attempts failed and why before failing.
        let mut why = Vec::new();
        for ti in s.store.task_instances(run).await.unwrap() {
            for a in s.store.attempts(ti.id).await.unwrap() {
                if a.outcome != Some(trainyard_core::state::AttemptOutcome::Success) {
                    why.push(format!(
                        "{} #{}: {:?} {:?}",
                        ti.task_id, a.attempt, a.outcome, a.error
                    ));
                }
            }
        }
        panic!("run ended {state:?}: {why:#?}");
    }
    // The harness's waits read the unwrapped store: every read counted here
    // is one the scheduler (engine and worker service) made.
    let calls = counting.calls();
    let by_scheduler: u64 = calls
        .iter()
        .filter(|(name, _)| !is_write(name))
        .map(|(_, n)| *n)
        .sum();
    eprintln!(
        "1,000-task layered run: {by_scheduler} scheduler reads, {} writes, calls {calls:?}",
        counting.writes() - writes_before
    );
    assert!(
        by_scheduler <= 20,
        "the scheduler read the store {by_scheduler} times for 1,000 assignments: {calls:?}"
    );
    assert_eq!(
        calls.get("task_instances").copied().unwrap_or(0),
        0,
        "{calls:?}"
    );
    s.shutdown().await;
}

fn is_write(name: &str) -> bool {
    matches!(name, "commit_batch" | "create_run" | "set_dag_paused")
}
