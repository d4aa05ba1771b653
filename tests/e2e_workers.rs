//! End-to-end: a `trainyard scheduler` process and `trainyard worker`
//! processes with declared GPUs, on PostgreSQL, over real gRPC.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::json;
use support::{
    Cluster, attempt_of, churn_run_succeeds, deployed_models, example_cluster, task, write_dag,
};

const LONG: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn example_retraining_pipeline_succeeds_across_processes() {
    let cluster = example_cluster().await;
    let (run, _) = churn_run_succeeds(&cluster, json!({ "epochs": 40 })).await;
    assert!(
        deployed_models(&cluster, &run).join("CURRENT").exists(),
        "deploy published the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_tasks_get_disjoint_devices_big_tasks_wait_and_models_match() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    std::fs::create_dir_all(&out).unwrap();
    let out = out.display().to_string();
    // `a` and `b` each need 2 GPUs and wait for each other: they can only both
    // finish if they run at the same time. `c` needs all 4 GPUs of the A100
    // worker and has a lower priority, so it must wait for both. `h` needs an
    // H100 and must never land on the A100 worker.
    let barrier = |me: &str, other: &str| {
        format!(
            r#"echo "$CUDA_VISIBLE_DEVICES" > {out}/{me}.gpus; i=0; while [ ! -f {out}/{other}.gpus ]; do i=$((i+1)); [ $i -gt 600 ] && exit 3; sleep 0.1; done"#
        )
    };
    write_dag(
        dir.path(),
        "gpu_pack",
        &format!(
            r#"
id = "gpu_pack"
[tasks.a]
shell = '{}'
priority = 10
resources = {{ gpus = 2, gpu_model = "A100" }}
[tasks.b]
shell = '{}'
priority = 10
resources = {{ gpus = 2, gpu_model = "A100" }}
[tasks.c]
shell = 'echo "$CUDA_VISIBLE_DEVICES" > {out}/c.gpus'
priority = 1
resources = {{ gpus = 4 }}
[tasks.h]
shell = 'echo "$CUDA_VISIBLE_DEVICES" > {out}/h.gpus'
resources = {{ gpus = 1, gpu_model = "H100" }}
"#,
            barrier("a", "b"),
            barrier("b", "a")
        ),
    );
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("a100", "4xA100-80GB", &[]);
    cluster.start_worker("h100", "1xH100-80GB", &[]);
    cluster.wait_workers(2).await;

    let run = cluster.trigger("gpu_pack", json!({})).await;
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );

    let read = |name: &str| {
        std::fs::read_to_string(Path::new(&out).join(format!("{name}.gpus")))
            .unwrap()
            .trim()
            .to_owned()
    };
    let gpus =
        |name: &str| -> Vec<u32> { read(name).split(',').map(|g| g.parse().unwrap()).collect() };
    let (a, b) = (gpus("a"), gpus("b"));
    assert_eq!(a.len(), 2);
    assert_eq!(b.len(), 2);
    assert!(
        a.iter().all(|g| !b.contains(g)),
        "a {a:?} and b {b:?} share a GPU"
    );
    let mut c = gpus("c");
    c.sort();
    assert_eq!(c, vec![0, 1, 2, 3]);
    assert_eq!(task(&detail, "a")["worker"], "a100");
    assert_eq!(task(&detail, "h")["worker"], "h100");
    assert_eq!(read("h"), "0");
    // What the task saw is what the scheduler recorded.
    let recorded: Vec<u32> = serde_json::from_value(task(&detail, "a")["gpus"].clone()).unwrap();
    assert_eq!(recorded, a);
    // c started only after a and b ended.
    let c_start = attempt_of(task(&detail, "c"), 1)["started_at"]
        .as_str()
        .unwrap()
        .to_owned();
    for t in ["a", "b"] {
        let end = attempt_of(task(&detail, t), 1)["ended_at"]
            .as_str()
            .unwrap()
            .to_owned();
        assert!(
            parse(&c_start) >= parse(&end),
            "c started {c_start} before {t} ended {end}"
        );
    }
}

fn parse(t: &str) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap()
        .with_timezone(&chrono::Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trigger_params_reach_the_task_as_one_argv_element_and_run_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    write_dag(
        dir.path(),
        "echo_param",
        &format!(
            r#"
id = "echo_param"
[params]
msg = "hello"
[tasks.echo]
command = ["python3", "-c", "import sys; open(sys.argv[2], 'w').write(sys.argv[1])", "{{{{ params.msg }}}}", "{root}/got.txt"]
"#
        ),
    );
    let mut cluster = Cluster::start(dir, &[]).await;
    cluster.start_worker("w", "none", &[]);
    cluster.wait_workers(1).await;
    let attacks = [
        format!("\"; touch {root}/pwned1 #"),
        format!("$(touch {root}/pwned2)"),
        format!("`touch {root}/pwned3`"),
        format!("; touch {root}/pwned4; echo"),
    ];
    for attack in &attacks {
        let run = cluster
            .trigger("echo_param", json!({ "msg": attack }))
            .await;
        let detail = cluster.wait_run(&run, LONG).await;
        assert_eq!(detail["run"]["state"], "success", "{detail}");
        let got = std::fs::read_to_string(cluster.dir.path().join("got.txt")).unwrap();
        assert_eq!(
            &got, attack,
            "the param arrived as exactly one argv element"
        );
    }
    for n in 1..=4 {
        assert!(
            !cluster.dir.path().join(format!("pwned{n}")).exists(),
            "pwned{n} was created"
        );
    }
}
