//! End-to-end artifacts, metrics, gates and logs with real processes on
//! PostgreSQL: the example pipeline's evaluation gate both ways with inputs
//! travelling through the artifact store between workers that share no work
//! dir; the same pipeline on a real S3-compatible server (s3s-fs on
//! loopback, SigV4 checked); logs served from the object store after the
//! worker died and the scheduler's log folder was wiped; secrets masked in
//! every stored and served log; artifact lineage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Cluster, churn_run_succeeds, copy_example_dags, deployed_models, example_cluster, task,
};

const LONG: Duration = Duration::from_secs(180);

/// Waits until every attempt of the run has its log archived (the scheduler
/// uploads it right after the attempt's report) and returns the run detail.
async fn wait_logs_archived(cluster: &Cluster, run: &str) -> Value {
    cluster
        .wait_until(LONG, "attempt logs to be archived", || async {
            let v = cluster.get(&format!("/api/v1/runs/{run}")).await;
            let all = v["tasks"]
                .as_array()
                .unwrap()
                .iter()
                .flat_map(|t| t["attempts"].as_array().unwrap().iter())
                .all(|a| a["log_location"].is_string());
            all.then_some(v)
        })
        .await
}

async fn text(cluster: &Cluster, path: &str) -> String {
    let resp = cluster.http.get(cluster.url(path)).send().await.unwrap();
    assert!(resp.status().is_success(), "GET {path}: {}", resp.status());
    resp.text().await.unwrap()
}

/// The artifact of `task` whose key ends with `suffix`.
fn artifact<'a>(list: &'a Value, task: &str, suffix: &str) -> &'a Value {
    list["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["task_id"] == task && a["key"].as_str().unwrap().ends_with(suffix))
        .unwrap_or_else(|| panic!("no {task} artifact *{suffix} in {list}"))
}

fn consumers(a: &Value) -> Vec<String> {
    a["consumers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["task_id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gate_deploys_a_good_model_and_skips_a_bad_one_with_inputs_through_the_store() {
    // Two workers with their own work dirs: a task finds its upstream's
    // output only through the artifact store.
    let cluster = example_cluster().await;
    let (good, _) = churn_run_succeeds(&cluster, json!({ "epochs": 40 })).await;
    let models = deployed_models(&cluster, &good);
    assert!(models.join("CURRENT").exists(), "deploy published CURRENT");
    assert!(
        models.join(format!("churn-{good}.json")).exists(),
        "deploy copied the model"
    );

    // Every attempt succeeded and its outputs are in the store, so neither
    // work dir keeps a folder of the run: evaluate's input was downloaded
    // (the lineage below names it a consumer of the stored model), never a
    // link into another work dir.
    for w in ["work-cpu-a", "work-cpu-b"] {
        let run_dir = cluster.dir.path().join(w).join(&good);
        assert!(!run_dir.exists(), "{} is left", run_dir.display());
    }
    let stored = cluster
        .dir
        .path()
        .join("data/artifacts/runs")
        .join(&good)
        .join("train/1/out/model.json");
    assert!(stored.is_file(), "{}", stored.display());

    // Lineage: train attempt 1 produced the model; evaluate and deploy consumed it.
    let lineage = cluster
        .wait_until(LONG, "lineage of the model", || async {
            let v = cluster.get(&format!("/api/v1/runs/{good}/artifacts")).await;
            let ok = v["artifacts"].as_array().unwrap().iter().any(|a| {
                a["task_id"] == "train"
                    && a["key"].as_str().unwrap().ends_with("/out/model.json")
                    && consumers(a).len() >= 2
            });
            ok.then_some(v)
        })
        .await;
    let model = artifact(&lineage, "train", "/out/model.json");
    assert_eq!(model["attempt"], 1);
    assert_eq!(model["key"], format!("runs/{good}/train/1/out/model.json"));
    assert!(
        model["uri"].as_str().unwrap().starts_with("file://"),
        "{model}"
    );
    assert_eq!(
        model["size"].as_u64().unwrap(),
        std::fs::metadata(&stored).unwrap().len()
    );
    assert_eq!(model["sha256"].as_str().unwrap().len(), 64);
    let mut by = consumers(model);
    by.sort();
    assert_eq!(by, ["deploy", "evaluate"]);
    let dataset = artifact(&lineage, "ingest", "/out/dataset.csv");
    assert_eq!(consumers(dataset), ["train"]);

    // The bad model fails the gate: deploy skipped, the run still succeeds.
    let bad = cluster
        .trigger(
            "churn_retrain",
            json!({ "epochs": 40, "force_bad_model": true }),
        )
        .await;
    let detail = cluster.wait_run(&bad, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    assert_eq!(task(&detail, "evaluate")["state"], "success", "{detail}");
    assert_eq!(task(&detail, "deploy")["state"], "skipped", "{detail}");
    assert!(
        !deployed_models(&cluster, &bad).exists(),
        "the bad model was deployed"
    );

    // Metrics across runs: the good auc clears the bar, the bad one does not.
    let series = cluster
        .get("/api/v1/dags/churn_retrain/metrics?task=evaluate&name=auc")
        .await;
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 2, "{series}");
    assert_eq!(points[0]["run_id"], good.as_str());
    assert!(points[0]["value"].as_f64().unwrap() >= 0.75, "{series}");
    assert!(points[1]["value"].as_f64().unwrap() < 0.75, "{series}");
}

/// An s3s-fs server on 127.0.0.1:<free port>, checking SigV4 signatures.
struct S3Server {
    endpoint: String,
    root: tempfile::TempDir,
    accept_loop: tokio::task::JoinHandle<()>,
}

const ACCESS_KEY: &str = "trainyard-e2e";
const SECRET_KEY: &str = "trainyard-e2e-secret";

impl S3Server {
    async fn start(bucket: &str) -> Self {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;

        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join(bucket)).unwrap();
        let fs = s3s_fs::FileSystem::new(root.path()).unwrap();
        let mut builder = s3s::service::S3ServiceBuilder::new(fs);
        builder.set_auth(s3s::auth::SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let service = builder.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accept_loop = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let service = service.clone();
                tokio::spawn(async move {
                    let _ = ConnBuilder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(socket), service)
                        .await;
                });
            }
        });
        Self {
            endpoint: format!("http://{addr}"),
            root,
            accept_loop,
        }
    }

    /// The usual AWS env, as an operator would set it for both processes.
    fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.to_owned()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.accept_loop.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_runs_on_a_real_s3_server_and_logs_outlive_the_worker_and_the_scheduler_disk()
{
    let s3 = S3Server::start("artifacts").await;
    let dir = tempfile::tempdir().unwrap();
    copy_example_dags(dir.path());
    let mut cluster =
        Cluster::start_with_env(dir, &["--artifacts", "s3://artifacts/trainyard"], s3.env()).await;
    cluster.start_worker("s3-a", "none", &[]);
    cluster.start_worker("s3-b", "none", &[]);
    cluster.wait_workers(2).await;

    let run = cluster
        .trigger("churn_retrain", json!({ "epochs": 40 }))
        .await;
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    assert_eq!(task(&detail, "deploy")["state"], "success", "{detail}");

    // The bytes are on the S3 server, under the URL's prefix.
    let on_server = |key: &str| s3.root.path().join("artifacts/trainyard").join(key);
    assert!(on_server(&format!("runs/{run}/train/1/out/model.json")).is_file());
    assert!(on_server(&format!("runs/{run}/ingest/1/out/dataset.csv")).is_file());
    let lineage = cluster.get(&format!("/api/v1/runs/{run}/artifacts")).await;
    let model = artifact(&lineage, "train", "/out/model.json");
    assert_eq!(
        model["uri"],
        format!("s3://artifacts/trainyard/runs/{run}/train/1/out/model.json")
    );

    // Every attempt's log is archived on S3 and recorded on the attempt.
    let detail = wait_logs_archived(&cluster, &run).await;
    let train = task(&detail, "train");
    assert_eq!(
        train["attempts"][0]["log_location"],
        format!("s3://artifacts/trainyard/runs/{run}/train/1/log.txt")
    );
    let archived =
        std::fs::read_to_string(on_server(&format!("runs/{run}/train/1/log.txt"))).unwrap();
    assert!(archived.contains("model written to"), "{archived}");

    // The workers die and the scheduler's local logs are wiped: the API
    // still serves the log, from the object store.
    for w in &mut cluster.workers {
        w.signal("KILL");
        w.wait_exit(Duration::from_secs(30))
            .expect("worker exits after SIGKILL");
    }
    let local_logs = cluster.dir.path().join("data/logs");
    if local_logs.exists() {
        std::fs::remove_dir_all(&local_logs).unwrap();
    }
    let served = text(&cluster, &format!("/api/v1/runs/{run}/tasks/train/logs")).await;
    assert_eq!(served, archived);
    let served = text(&cluster, &format!("/api/v1/runs/{run}/tasks/evaluate/logs")).await;
    assert!(served.contains("metrics:"), "{served}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_env_values_never_reach_stored_or_served_logs() {
    const LITERAL: &str = "lit-s3cr3t-4242";
    const FROM_ENV: &str = "env-s3cr3t-9898";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(
        dir.path().join("dags/secrets.toml"),
        format!(
            r#"
id = "secrets"
[tasks.leak]
shell = 'echo "literal=$LITERAL from_env=$FROM_ENV"; echo "again $LITERAL" >&2; echo "plain line"'
[tasks.leak.env]
LITERAL = {{ value = "{LITERAL}", secret = true }}
FROM_ENV = {{ from_env = "TY_E2E_SECRET", secret = true }}
"#
        ),
    )
    .unwrap();
    let mut cluster =
        Cluster::start_with_env(dir, &[], vec![("TY_E2E_SECRET", FROM_ENV.to_owned())]).await;
    cluster.start_worker("w", "none", &[]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("secrets", json!({})).await;
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
    wait_logs_archived(&cluster, &run).await;

    let root = cluster.dir.path();
    // Once archived, the scheduler keeps no local copy.
    assert!(
        !root
            .join("data/logs")
            .join(&run)
            .join("leak/1.log")
            .exists()
    );
    let archived = std::fs::read_to_string(
        root.join("data/artifacts/runs")
            .join(&run)
            .join("leak/1/log.txt"),
    )
    .unwrap();
    let served = text(&cluster, &format!("/api/v1/runs/{run}/tasks/leak/logs")).await;
    for (what, log) in [("object store", &archived), ("API", &served)] {
        assert!(log.contains("literal=*** from_env=***"), "{what}: {log}");
        assert!(log.contains("again ***"), "{what}: {log}");
        assert!(log.contains("plain line"), "{what}: {log}");
        for secret in [LITERAL, FROM_ENV] {
            assert!(!log.contains(secret), "{what} shows a secret: {log}");
        }
    }
}
