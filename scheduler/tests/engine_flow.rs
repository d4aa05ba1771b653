//! Engine behaviour on SQLite with a ManualClock and in-process fake workers:
//! dependencies and trigger rules, `when` gates, retries, timeouts, params,
//! idempotency, cancel and clear.
#![allow(clippy::unwrap_used)]

mod engine_support;

use chrono::Duration;
use engine_support::*;
use serde_json::json;
use trainyard_core::ids::TaskId;
use trainyard_core::state::{AttemptOutcome, RunState, TaskState};
use trainyard_scheduler::engine::{EngineError, TaskOutcome, TaskResult};

const T0: (i32, u32, u32) = (2026, 3, 2);

fn start() -> chrono::DateTime<chrono::Utc> {
    utc(T0.0, T0.1, T0.2, 12, 0)
}

#[tokio::test]
async fn a_chain_runs_in_order_and_the_run_succeeds_with_rendered_argv() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag(
            r#"
id = "chain"
[params]
lr = 0.5
[tasks.a]
command = ["train", "--lr", "{{ params.lr }}", "{{ dag_id }}/{{ task_id }}"]
[tasks.b]
depends_on = ["a"]
command = ["true"]
"#,
        )
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w1", 4, &[])).await;
    let run = h
        .handle
        .trigger(
            dag.clone(),
            json!({"lr": 0.01}).as_object().unwrap().clone(),
            None,
            None,
        )
        .await
        .unwrap();
    let a = w.next_assign().await;
    assert_eq!(a.task_id, TaskId::new("a"));
    assert_eq!(a.argv, vec!["train", "--lr", "0.01", "chain/a"]);
    assert_eq!(a.params_json, json!({"lr": 0.01}));
    assert!(w.idle(), "b waits for a");
    w.succeed(&a).await;
    let b = w.next_assign().await;
    assert_eq!(b.task_id, TaskId::new("b"));
    assert_eq!(b.upstream, vec![TaskId::new("a")]);
    w.succeed(&b).await;
    h.wait_run(run, RunState::Success).await;
    let r = h.store.get_run(run).await.unwrap();
    assert!(r.ended_at.is_some());
}

#[tokio::test]
async fn env_values_are_rendered_as_plain_text_and_inherit_env_reaches_the_worker() {
    let h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag(
            r#"
id = "envs"
[params]
name = "world"
[tasks.greet]
command = ["sh", "-c", "echo hello \"$NAME\""]
env = { NAME = "{{ params.name }}", WHERE = "{{ dag_id }}/{{ run_id }}", KEY = { value = "k-{{ params.name }}", secret = true } }
inherit_env = true
"#,
        )
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w1", 4, &[])).await;
    let hostile = "x; id > /tmp/pwned $(id) `id`";
    let run = h
        .handle
        .trigger(
            dag.clone(),
            json!({ "name": hostile }).as_object().unwrap().clone(),
            None,
            None,
        )
        .await
        .unwrap();
    let a = w.next_assign().await;
    assert_eq!(a.argv, vec!["sh", "-c", "echo hello \"$NAME\""]);
    assert_eq!(a.env["NAME"], hostile);
    assert_eq!(a.env["WHERE"], format!("envs/{run}"));
    assert_eq!(a.env["KEY"], format!("k-{hostile}"));
    assert_eq!(a.secret_env, vec!["KEY".to_owned()]);
    assert!(a.inherit_env);
}

#[tokio::test]
async fn params_are_validated_and_idempotency_keys_return_the_first_run() {
    let h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag("id = \"p\"\n[params]\nepochs = 10\n[tasks.a]\ncommand = [\"true\"]\n")
        .await;
    let err = h
        .handle
        .trigger(
            dag.clone(),
            json!({"nope": 1}).as_object().unwrap().clone(),
            None,
            None,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, EngineError::InvalidParams { .. }), "{err}");
    assert!(err.to_string().contains("unknown param `nope`"), "{err}");
    let err = h
        .handle
        .trigger(
            dag.clone(),
            json!({"epochs": "ten"}).as_object().unwrap().clone(),
            None,
            None,
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("expects an integer"), "{err}");
    let first = h
        .handle
        .trigger(dag.clone(), Default::default(), Some("k1".into()), None)
        .await
        .unwrap();
    let again = h
        .handle
        .trigger(dag.clone(), Default::default(), Some("k1".into()), None)
        .await
        .unwrap();
    assert_eq!(first, again);
    assert_eq!(h.runs_of(&dag).await.len(), 1);
}

const RULES: &str = r#"
id = "rules"
[tasks.ok]
command = ["true"]
[tasks.bad]
command = ["false"]
[tasks.all_success]
depends_on = ["ok", "bad"]
command = ["true"]
[tasks.all_done]
depends_on = ["ok", "bad"]
trigger_rule = "all_done"
command = ["true"]
[tasks.one_success]
depends_on = ["ok", "bad"]
trigger_rule = "one_success"
command = ["true"]
[tasks.one_failed]
depends_on = ["ok", "bad"]
trigger_rule = "one_failed"
command = ["true"]
[tasks.none_failed]
depends_on = ["ok", "bad"]
trigger_rule = "none_failed"
command = ["true"]
[tasks.after_upstream_failed]
depends_on = ["all_success"]
command = ["true"]
[tasks.skipper]
depends_on = ["ok"]
when = "params.go"
command = ["true"]
[tasks.after_skip]
depends_on = ["skipper"]
command = ["true"]
[tasks.none_failed_after_skip]
depends_on = ["skipper", "ok"]
trigger_rule = "none_failed"
command = ["true"]
[params]
go = false
"#;

#[tokio::test]
async fn each_trigger_rule_decides_as_airflow_users_expect() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h.add_dag(RULES).await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 8, &[])).await;
    let run = h.trigger(&dag).await;
    let mut ran = Vec::new();
    loop {
        if h.store.get_run(run).await.unwrap().state.is_terminal() {
            break;
        }
        let a = w.next_assign().await;
        ran.push(a.task_id.to_string());
        if a.task_id.as_str() == "bad" {
            w.fail(&a).await
        } else {
            w.succeed(&a).await
        }
    }
    h.wait_run(run, RunState::Failed).await;
    let state = |t: &'static str| {
        let store = h.store.clone();
        async move { ti(&*store, run, t).await.state }
    };
    assert_eq!(state("all_success").await, TaskState::UpstreamFailed);
    assert_eq!(
        state("after_upstream_failed").await,
        TaskState::UpstreamFailed
    );
    assert_eq!(state("all_done").await, TaskState::Success);
    assert_eq!(state("one_success").await, TaskState::Success);
    assert_eq!(state("one_failed").await, TaskState::Success);
    assert_eq!(state("none_failed").await, TaskState::UpstreamFailed);
    assert_eq!(
        state("skipper").await,
        TaskState::Skipped,
        "when = params.go is false"
    );
    assert_eq!(state("after_skip").await, TaskState::Skipped);
    assert_eq!(state("none_failed_after_skip").await, TaskState::Success);
    assert!(!ran.contains(&"skipper".to_owned()));
}

const GATE: &str = r#"
id = "gate"
[tasks.evaluate]
command = ["true"]
[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= 0.85"
command = ["true"]
"#;

#[tokio::test]
async fn a_when_gate_on_upstream_metrics_opens_and_closes() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h.add_dag(GATE).await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 2, &[])).await;
    for (auc, deploys) in [(0.9, true), (0.5, false)] {
        let run = h.trigger(&dag).await;
        let a = w.next_assign().await;
        w.start(&a).await;
        w.finish(
            &a,
            TaskResult::succeeded().with_metrics([("auc".to_owned(), auc)]),
        )
        .await;
        if deploys {
            let d = w.next_assign().await;
            assert_eq!(d.task_id.as_str(), "deploy");
            w.succeed(&d).await;
        }
        h.wait_run(run, RunState::Success).await;
        let deploy = ti(&*h.store, run, "deploy").await;
        assert_eq!(
            deploy.state,
            if deploys {
                TaskState::Success
            } else {
                TaskState::Skipped
            },
            "auc {auc}"
        );
    }
}

#[tokio::test]
async fn retries_follow_exponential_backoff_to_the_exact_instant() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag(
            r#"
id = "retry"
[tasks.flaky]
command = ["true"]
retries = 3
retry_delay = "10s"
retry_backoff = "exponential"
max_retry_delay = "25s"
"#,
        )
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 1, &[])).await;
    let run = h.trigger(&dag).await;
    for (attempt, delay) in [(1, 10), (2, 20), (3, 25)] {
        let a = w.next_assign().await;
        assert_eq!(a.attempt, attempt);
        let failed_at = trainyard_scheduler::clock::Clock::now(&h.clock);
        w.fail(&a).await;
        let t = ti(&*h.store, run, "flaky").await;
        assert_eq!(t.state, TaskState::UpForRetry);
        assert_eq!(
            t.next_retry_at,
            Some(failed_at + Duration::seconds(delay)),
            "attempt {attempt}"
        );
        h.advance(Duration::seconds(delay - 1)).await;
        assert!(w.idle(), "no retry before its time");
        h.advance(Duration::seconds(1)).await;
    }
    let a = w.next_assign().await;
    assert_eq!(a.attempt, 4);
    w.fail(&a).await;
    h.wait_run(run, RunState::Failed).await;
    assert_eq!(ti(&*h.store, run, "flaky").await.state, TaskState::Failed);
}

#[tokio::test]
async fn a_command_that_cannot_start_fails_at_once_without_spending_retries() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag(
            r#"
id = "missing"
[tasks.nope]
command = ["no-such-program"]
retries = 3
"#,
        )
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 1, &[])).await;
    let run = h.trigger(&dag).await;
    let a = w.next_assign().await;
    // As the worker reports it: no TaskStarted (nothing ran), then the end.
    let mut result = TaskResult::failed("could not start \"no-such-program\": not found");
    result.outcome = TaskOutcome::CannotStart;
    result.exit_code = None;
    w.finish(&a, result).await;
    h.wait_run(run, RunState::Failed).await;
    let t = ti(&*h.store, run, "nope").await;
    assert_eq!(t.state, TaskState::Failed);
    assert_eq!((t.attempt, t.max_attempts), (1, 4));
    assert!(w.idle(), "no retry is assigned");
}

#[tokio::test]
async fn the_timeout_backstop_fails_a_silent_attempt_and_retries_it() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h
        .add_dag("id = \"to\"\n[tasks.slow]\ncommand = [\"sleep\", \"999\"]\ntimeout = \"60s\"\nretries = 1\nretry_delay = \"5s\"\n")
        .await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 1, &[])).await;
    let run = h.trigger(&dag).await;
    let a = w.next_assign().await;
    assert_eq!(a.timeout, Some(std::time::Duration::from_secs(60)));
    w.start(&a).await;
    // Timeout 60s + grace 10s.
    h.advance(Duration::seconds(69)).await;
    assert_eq!(ti(&*h.store, run, "slow").await.state, TaskState::Running);
    h.advance(Duration::seconds(1)).await;
    h.wait_task(run, "slow", TaskState::UpForRetry).await;
    let attempts = h
        .store
        .attempts(ti(&*h.store, run, "slow").await.id)
        .await
        .unwrap();
    assert_eq!(attempts[0].outcome, Some(AttemptOutcome::TimedOut));
    // The worker is told to kill it, and its late report is fenced.
    match w.next().await {
        trainyard_scheduler::engine::WorkerCommand::Kill { attempt, .. } => assert_eq!(attempt, 1),
        other => panic!("expected a kill, got {other:?}"),
    }
    let late = h
        .handle
        .task_finished(w.id, a.task_instance_id, 1, TaskResult::succeeded())
        .await;
    assert!(matches!(late, Err(EngineError::Fenced { .. })), "{late:?}");
    h.advance(Duration::seconds(5)).await;
    let b = w.next_assign().await;
    assert_eq!(b.attempt, 2);
    w.succeed(&b).await;
    h.wait_run(run, RunState::Success).await;
}

#[tokio::test]
async fn cancel_run_cancels_everything_and_clear_reruns_a_finished_task() {
    let mut h = Harness::sqlite(start()).await;
    let dag = h.add_dag("id = \"c\"\n[tasks.a]\ncommand = [\"true\"]\n[tasks.b]\ndepends_on = [\"a\"]\ncommand = [\"true\"]\n").await;
    let mut w = FakeWorker::join(&h.handle, registration("w", 2, &[])).await;
    let run = h.trigger(&dag).await;
    let a = w.next_assign().await;
    w.start(&a).await;
    h.handle.cancel_run(run).await.unwrap();
    h.wait_run(run, RunState::Cancelled).await;
    match w.next().await {
        trainyard_scheduler::engine::WorkerCommand::Cancel { ti, .. } => {
            assert_eq!(ti, a.task_instance_id)
        }
        other => panic!("expected cancel, got {other:?}"),
    }
    // The worker confirms; that is not an error.
    w.finish(
        &a,
        TaskResult {
            outcome: trainyard_scheduler::engine::TaskOutcome::Cancelled,
            exit_code: None,
            error: None,
            metrics: Default::default(),
            lineage: Default::default(),
        },
    )
    .await;
    assert_eq!(ti(&*h.store, run, "b").await.state, TaskState::Cancelled);

    // A failed run: clear `a` with downstream, the run goes back to running and succeeds.
    let run = h.trigger(&dag).await;
    let a = w.next_assign().await;
    w.fail(&a).await;
    h.wait_run(run, RunState::Failed).await;
    assert_eq!(
        ti(&*h.store, run, "b").await.state,
        TaskState::UpstreamFailed
    );
    h.handle
        .clear_task(run, TaskId::new("a"), true)
        .await
        .unwrap();
    let a2 = w.next_assign().await;
    assert_eq!((a2.task_id.as_str(), a2.attempt), ("a", 2));
    w.succeed(&a2).await;
    let b = w.next_assign().await;
    w.succeed(&b).await;
    h.wait_run(run, RunState::Success).await;
}
