//! Parsing good DAG files: the brief's example, defaults, graph queries and
//! the JSON round trip the store relies on.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use trainyard_core::dag::{
    ByteSize, DagErrorKind, DagSpec, EnvSource, Overlap, ParamValue, RetryBackoff, TaskExec,
    TriggerRule, parse_dag,
};

const CHURN: &str = r#"
id = "churn_retrain"
description = "Retrain the churn model nightly; promote it only if it wins."
schedule = "0 3 * * *"
timezone = "Europe/Berlin"
catchup = false
max_active_runs = 1
tags = ["ml", "churn"]

[params]
learning_rate = 0.001
epochs = 10

[defaults]
retries = 2
retry_delay = "30s"
timeout = "1h"

[tasks.ingest]
command = ["python3", "jobs/ingest.py", "--date", "{{ logical_date }}"]
resources = { cpus = 2, memory = "4GiB" }

[tasks.train]
depends_on = ["ingest"]
command = ["python3", "jobs/train.py", "--lr", "{{ params.learning_rate }}"]
resources = { gpus = 2, gpu_memory = "40GiB", gpu_model = "A100|H100" }
timeout = "6h"

[tasks.evaluate]
depends_on = ["train"]
command = ["python3", "jobs/evaluate.py"]
resources = { gpus = 1 }

[tasks.deploy]
depends_on = ["evaluate"]
when = "metrics.evaluate.auc >= 0.85"
command = ["sh", "jobs/deploy.sh"]
"#;

fn churn() -> DagSpec {
    match parse_dag("churn.toml", CHURN) {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

#[test]
fn brief_example_parses_with_defaults_applied() {
    let spec = churn();
    assert_eq!(spec.id, "churn_retrain");
    assert_eq!(spec.timezone, "Europe/Berlin");
    assert_eq!(spec.schedule.as_deref(), Some("0 3 * * *"));
    assert_eq!(spec.overlap, Overlap::Skip);
    assert_eq!(spec.params["learning_rate"], ParamValue::Float(0.001));
    assert_eq!(spec.params["epochs"], ParamValue::Int(10));
    let train = &spec.tasks["train"];
    assert_eq!(train.retries, 2);
    assert_eq!(train.retry_delay, Duration::from_secs(30));
    assert_eq!(train.timeout, Some(Duration::from_secs(6 * 3600)));
    assert_eq!(train.resources.gpus, 2);
    assert_eq!(train.resources.gpu_memory, Some(ByteSize::gib(40)));
    assert_eq!(train.resources.gpu_model.as_deref(), Some("A100|H100"));
    assert_eq!(train.resources.cpus, 1.0);
    assert_eq!(train.pool, "default");
    assert_eq!(train.trigger_rule, TriggerRule::AllSuccess);
    let ingest = &spec.tasks["ingest"];
    assert_eq!(ingest.timeout, Some(Duration::from_secs(3600)));
    assert_eq!(ingest.resources.cpus, 2.0);
    assert_eq!(ingest.resources.memory, Some(ByteSize::gib(4)));
    assert_eq!(
        spec.tasks["deploy"].when.as_deref(),
        Some("metrics.evaluate.auc >= 0.85")
    );
}

#[test]
fn graph_queries_follow_depends_on() {
    let spec = churn();
    assert_eq!(
        spec.topological_layers(),
        vec![
            vec!["ingest"],
            vec!["train"],
            vec!["evaluate"],
            vec!["deploy"]
        ]
    );
    assert_eq!(
        spec.task_ids_in_topological_order(),
        vec!["ingest", "train", "evaluate", "deploy"]
    );
    assert_eq!(spec.upstream("train"), ["ingest".to_owned()]);
    assert_eq!(spec.downstream("train"), ["evaluate".to_owned()]);
    assert!(spec.downstream("deploy").is_empty());
    assert!(spec.upstream("nope").is_empty());
    assert_eq!(spec.roots(), vec!["ingest"]);
    assert_eq!(spec.ancestors("deploy").len(), 3);
}

#[test]
fn spec_round_trips_through_json() {
    let spec = churn();
    let json = serde_json::to_string_pretty(&spec).unwrap();
    let back: DagSpec = serde_json::from_str(&json).unwrap();
    assert_eq!(back, spec);
}

#[test]
fn all_optional_keys_are_read() {
    let src = r#"
id = "full-dag_1"
schedule = "@daily"
timezone = "America/New_York"
start_date = "2026-01-01"
end_date = 2026-12-31T23:00:00Z
catchup = true
max_active_runs = 3
max_active_tasks = 8
overlap = "cancel_previous"

[params]
dry_run = false
name = "x"

[defaults]
retry_backoff = "exponential"
max_retry_delay = "10m"
pool = "gpu"
priority = 5
env = { SHARED = "1" }
resources = { cpus = 0.5 }

[tasks.a]
shell = "echo hi | tr a-z A-Z"
env.API_KEY = { from_env = "HOST_API_KEY", secret = true }
env.TOKEN = { value = "t0k", secret = true }
working_dir = "/tmp"

[tasks.b]
depends_on = ["a", "a"]
command = ["true"]
trigger_rule = "all_done"
priority = -1
retry_delay = "1s"
retries = 10
"#;
    let spec = parse_dag("full.toml", src).unwrap_or_else(|e| panic!("{e}"));
    // Plain dates are midnight in the DAG's timezone (EST = UTC-5).
    assert_eq!(
        spec.start_date.unwrap().to_rfc3339(),
        "2026-01-01T05:00:00+00:00"
    );
    assert!(spec.catchup);
    assert_eq!(spec.max_active_tasks, Some(8));
    assert_eq!(spec.overlap, Overlap::CancelPrevious);
    let a = &spec.tasks["a"];
    assert!(matches!(a.exec, TaskExec::Shell(_)));
    assert_eq!(a.pool, "gpu");
    assert_eq!(a.resources.cpus, 0.5);
    assert_eq!(
        a.env["API_KEY"].source,
        EnvSource::FromEnv("HOST_API_KEY".into())
    );
    assert!(a.env["API_KEY"].secret);
    assert!(a.env["TOKEN"].secret);
    assert_eq!(a.env["SHARED"].source, EnvSource::Value("1".into()));
    let b = &spec.tasks["b"];
    assert_eq!(b.depends_on, vec!["a"]);
    assert_eq!(b.priority, -1);
    assert_eq!(b.retry_backoff, RetryBackoff::Exponential);
    assert_eq!(b.retry_delay_for(1), Duration::from_secs(1));
    assert_eq!(b.retry_delay_for(4), Duration::from_secs(8));
    assert_eq!(b.retry_delay_for(11), Duration::from_secs(600));
}

#[test]
fn errors_print_as_path_line_col() {
    let src = "id = \"x\"\nbogus = 1\n[tasks.a]\ncommand = [\"true\"]\n";
    let err = parse_dag("dags/x.toml", src).unwrap_err();
    assert_eq!(err.errors.len(), 1);
    assert_eq!(err.errors[0].kind, DagErrorKind::UnknownKey);
    assert!(
        err.to_string()
            .starts_with("dags/x.toml:2:1: error: unknown key `bogus`"),
        "{err}"
    );
}
