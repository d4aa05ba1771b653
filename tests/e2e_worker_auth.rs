//! End-to-end, separate processes on PostgreSQL: worker join tokens, the
//! refusal of an open worker endpoint beyond loopback, TLS and mTLS with
//! certificates generated here, the CLI over HTTPS, and a hostile worker
//! (a second gRPC client written against the .proto) that holds a valid join
//! token but tries to take over another worker's id, finish its attempt with
//! forged metrics and write into logs that are not its own.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::json;
use support::{BIN, Cluster, task, write_dag};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use trainyard_proto::v1::{self, worker_service_client::WorkerServiceClient};

const TOKEN: &str = "join-token-for-the-tests-0123456789";
const LONG: Duration = Duration::from_secs(120);

fn hello_dag(dir: &Path) {
    write_dag(
        dir,
        "hello",
        r#"
id = "hello"
[tasks.say]
command = ["sh", "-c", "echo hello from a worker"]
"#,
    );
}

async fn run_hello(cluster: &Cluster) {
    let run = cluster.trigger("hello", json!({})).await;
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(
        detail["run"]["state"],
        "success",
        "{detail}\n{}",
        cluster.logs()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_without_the_join_token_exit_with_status_2_and_the_right_token_runs_tasks() {
    let dir = tempfile::tempdir().unwrap();
    hello_dag(dir.path());
    let mut cluster = Cluster::start(dir, &["--worker-token", TOKEN]).await;

    let none = cluster.start_worker("no-token", "none", &[]);
    let status = cluster.workers[none]
        .wait_exit(LONG)
        .expect("a worker without a token exits");
    let log = cluster.workers[none].log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--token"), "the message names the flag: {log}");

    let wrong = cluster.start_worker(
        "wrong-token",
        "none",
        &["--token", "not-the-join-token-9876543210"],
    );
    let status = cluster.workers[wrong]
        .wait_exit(LONG)
        .expect("a worker with a wrong token exits");
    let log = cluster.workers[wrong].log_text();
    assert_eq!(status.code(), Some(2), "{log}");
    assert!(log.contains("--worker-token"), "{log}");

    let good = cluster.start_worker("good", "none", &["--token", TOKEN]);
    cluster.wait_workers(1).await;
    run_hello(&cluster).await;
    let ids = |v: &serde_json::Value| -> Vec<(String, String)> {
        v["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| {
                (
                    w["name"].as_str().unwrap().to_owned(),
                    w["id"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let before = ids(&cluster.get("/api/v1/workers").await);
    assert_eq!(
        before.len(),
        1,
        "refused workers never registered: {before:?}"
    );
    assert_eq!(before[0].0, "good");

    // Killed and started again on its work dir, it is the same worker (its
    // id and session credential persist) and runs tasks again.
    cluster.workers[good].signal("KILL");
    cluster.workers[good].wait_exit(LONG).unwrap();
    cluster.start_worker("good", "none", &["--token", TOKEN]);
    run_hello(&cluster).await;
    let after = ids(&cluster.get("/api/v1/workers").await);
    assert_eq!(after, before, "a restarted worker keeps its id");
}

#[test]
fn a_scheduler_refuses_an_open_worker_endpoint_beyond_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "scheduler",
            "--dags",
            "dags",
            "--data-dir",
            "data",
            "--http",
            "127.0.0.1:0",
            "--grpc",
            "0.0.0.0:0",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "it must not start: {stderr}");
    assert!(stderr.contains("--worker-token"), "{stderr}");
    assert!(stderr.contains("--insecure-no-auth"), "{stderr}");
}

/// A CA, a server certificate for localhost/127.0.0.1 and a worker client
/// certificate, as PEM files in `dir`.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
}

fn make_pki(dir: &Path) -> Pki {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "trainyard test CA");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf = |names: Vec<String>, usage: ExtendedKeyUsagePurpose| {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
        (cert.pem(), key.serialize_pem())
    };
    let (server_cert, server_key) = leaf(
        vec!["localhost".into(), "127.0.0.1".into()],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) =
        leaf(vec!["worker-1".into()], ExtendedKeyUsagePurpose::ClientAuth);
    let write = |name: &str, body: &str| {
        let path = dir.join(name);
        std::fs::write(&path, body).unwrap();
        path
    };
    Pki {
        ca: write("ca.pem", &ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_refuses_a_worker_without_a_client_certificate_and_serves_one_with_it() {
    let dir = tempfile::tempdir().unwrap();
    hello_dag(dir.path());
    let pki = make_pki(dir.path());
    let (ca, cert, key, client_ca) = (
        pki.ca.display().to_string(),
        pki.server_cert.display().to_string(),
        pki.server_key.display().to_string(),
        pki.ca.display().to_string(),
    );
    let mut cluster = Cluster::start(
        dir,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--client-ca",
            &client_ca,
        ],
    )
    .await;
    let ca_pem = std::fs::read(&pki.ca).unwrap();
    cluster.http = reqwest::Client::builder()
        .add_root_certificate(reqwest::Certificate::from_pem(&ca_pem).unwrap())
        .build()
        .unwrap();

    // Without a client certificate the TLS handshake is refused. With TLS
    // 1.3 the client hears of it only after its side of the handshake, as
    // the alert or as a connection reset, so the worker may retry a few
    // times before it recognises the alert and exits with status 2; either
    // way it never registers.
    let bare = cluster.start_worker("no-cert", "none", &["--ca-cert", &ca]);
    let client_cert = pki.client_cert.display().to_string();
    let client_key = pki.client_key.display().to_string();
    cluster.start_worker(
        "with-cert",
        "none",
        &[
            "--ca-cert",
            &ca,
            "--cert",
            &client_cert,
            "--key",
            &client_key,
        ],
    );
    cluster.wait_workers(1).await;
    run_hello(&cluster).await;
    let workers = cluster.get("/api/v1/workers").await;
    let names: Vec<&str> = workers["workers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["with-cert"], "{}", cluster.logs());
    let bare_log = cluster.workers[bare].log_text();
    assert!(
        bare_log.contains("CertificateRequired")
            || bare_log.contains("transport error")
            || bare_log.contains("connection closed"),
        "the refusal shows in the worker's log: {bare_log}"
    );
    if let Some(status) = cluster.workers[bare].child.try_wait().unwrap() {
        assert_eq!(status.code(), Some(2), "{bare_log}");
    }

    // The CLI reaches the HTTPS API with --ca-cert, and not without it.
    let server = format!("https://{}", cluster.addrs.http);
    let with_ca = Command::new(BIN)
        .args(["runs", "list", "--server", &server, "--ca-cert", &ca])
        .output()
        .unwrap();
    assert!(
        with_ca.status.success(),
        "{}",
        String::from_utf8_lossy(&with_ca.stderr)
    );
    assert!(String::from_utf8_lossy(&with_ca.stdout).contains("hello"));
    let without = Command::new(BIN)
        .args(["runs", "list", "--server", &server])
        .output()
        .unwrap();
    assert!(!without.status.success(), "an unknown CA must be refused");
}

/// A gRPC client that speaks the .proto with the join token: what a hostile
/// program on the network can do once it has the token.
async fn hostile_client(
    grpc: &str,
) -> WorkerServiceClient<
    tonic::service::interceptor::InterceptedService<
        Channel,
        impl FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Clone,
    >,
> {
    let channel = Channel::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let token: MetadataValue<_> = format!("Bearer {TOKEN}").parse().unwrap();
    WorkerServiceClient::with_interceptor(channel, move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", token.clone());
        Ok(req)
    })
}

fn register_request(name: &str, worker_id: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        protocol_version: v1::PROTOCOL_VERSION,
        name: name.into(),
        // A queue no task uses: the engine never sends it work.
        queues: vec!["nobody-uses-this-queue".into()],
        cpus: 1,
        memory_bytes: 1 << 30,
        slots: 1,
        worker_id: worker_id.into(),
        ..Default::default()
    }
}

fn message(kind: v1::worker_message::Kind) -> v1::WorkerMessage {
    v1::WorkerMessage { kind: Some(kind) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostile_worker_with_a_join_token_cannot_take_over_ids_finish_or_log_foreign_attempts() {
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    // `train` waits for the test's go-ahead, then reports auc 0.5; the gate
    // opens only for auc >= 0.9, which only a forged report could give.
    write_dag(
        dir.path(),
        "gated",
        &format!(
            r#"
id = "gated"
[tasks.train]
command = ["sh", "-c", "while [ ! -f \"$GO\" ]; do sleep 0.05; done; echo trained; echo '{{\"auc\": 0.5}}' > \"$TRAINYARD_METRICS_FILE\""]
env = {{ GO = "{}" }}
[tasks.deploy]
depends_on = ["train"]
when = "metrics.train.auc >= 0.9"
command = ["sh", "-c", "echo deployed"]
"#,
            go.display()
        ),
    );
    let mut cluster = Cluster::start(dir, &["--worker-token", TOKEN]).await;
    cluster.start_worker("victim", "none", &["--token", TOKEN]);
    cluster.wait_workers(1).await;
    let run = cluster.trigger("gated", json!({})).await;
    let (ti, attempt) = cluster
        .wait_until(LONG, "train to run", || async {
            let d = cluster.get(&format!("/api/v1/runs/{run}")).await;
            let t = task(&d, "train");
            (t["state"] == "running").then(|| {
                let a = &t["attempts"][0];
                (
                    a["task_instance_id"].to_string(),
                    a["attempt"].as_u64().unwrap() as u32,
                )
            })
        })
        .await;
    let workers = cluster.get("/api/v1/workers").await;
    let victim_id = workers["workers"][0]["id"].as_str().unwrap().to_owned();
    let mut client = hostile_client(&cluster.addrs.grpc).await;

    // (a) The victim's id without its credential: neither Register nor Hello.
    let err = client
        .register(register_request("impostor", &victim_id))
        .await
        .expect_err("registering a known id without its credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(message(v1::worker_message::Kind::Hello(v1::Hello {
        worker_id: victim_id.clone(),
        running: Vec::new(),
        session_credential: String::new(),
    })))
    .await
    .unwrap();
    let err = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect_err("a Hello for the victim's id without its credential");
    assert_eq!(err.code(), tonic::Code::Unauthenticated, "{err}");

    // (b), (c) As a registered worker of its own: finish the victim's
    // attempt with forged metrics, write into its log and into a run that
    // does not exist.
    let me = client
        .register(register_request("hostile", ""))
        .await
        .unwrap()
        .into_inner();
    assert!(me.accepted, "{}", me.reason);
    assert!(!me.session_credential.is_empty());
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(message(v1::worker_message::Kind::Hello(v1::Hello {
        worker_id: me.worker_id.clone(),
        running: Vec::new(),
        session_credential: me.session_credential.clone(),
    })))
    .await
    .unwrap();
    let mut inbound = client
        .connect(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let foreign = v1::AttemptRef {
        task_instance_id: ti.clone(),
        attempt,
    };
    tx.send(message(v1::worker_message::Kind::TaskFinished(
        v1::TaskFinished {
            attempt: Some(foreign.clone()),
            outcome: v1::TaskOutcome::Succeeded as i32,
            exit_code: Some(0),
            metrics: [("auc".to_owned(), 0.999)].into_iter().collect(),
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    let line = |text: &str| v1::LogLine {
        stream: v1::LogStream::Stdout as i32,
        text: text.into(),
        ..Default::default()
    };
    tx.send(message(v1::worker_message::Kind::LogLines(v1::LogLines {
        attempt: Some(foreign),
        lines: vec![line("FORGED LINE")],
        run_id: run.clone(),
        task_id: "train".into(),
    })))
    .await
    .unwrap();
    let nowhere = uuid::Uuid::new_v4().to_string();
    tx.send(message(v1::worker_message::Kind::LogLines(v1::LogLines {
        attempt: Some(v1::AttemptRef {
            task_instance_id: "987654321".into(),
            attempt: 1,
        }),
        lines: vec![line("FORGED LINE")],
        run_id: nowhere.clone(),
        task_id: "train".into(),
    })))
    .await
    .unwrap();
    // A heartbeat is answered after every message before it was handled:
    // its ack is the barrier for the checks below.
    tx.send(message(v1::worker_message::Kind::Heartbeat(
        v1::Heartbeat {
            timestamp_unix_ms: 4242,
            ..Default::default()
        },
    )))
    .await
    .unwrap();
    loop {
        let m = tokio::time::timeout(LONG, inbound.message())
            .await
            .expect("a heartbeat ack")
            .unwrap()
            .expect("the stream stays open");
        if let Some(v1::scheduler_message::Kind::HeartbeatAck(ack)) = m.kind
            && ack.timestamp_unix_ms == 4242
        {
            break;
        }
    }

    let detail = cluster.get(&format!("/api/v1/runs/{run}")).await;
    assert_eq!(
        task(&detail, "train")["state"],
        "running",
        "the forged finish changed nothing: {detail}"
    );
    // Let the victim finish for real.
    std::fs::write(&go, b"").unwrap();
    let detail = cluster.wait_run(&run, LONG).await;
    assert_eq!(task(&detail, "train")["state"], "success", "{detail}");
    assert_eq!(
        task(&detail, "deploy")["state"],
        "skipped",
        "the gate saw the real auc 0.5, not the forged 0.999: {detail}"
    );
    let text = cluster
        .http
        .get(cluster.url(&format!("/api/v1/runs/{run}/tasks/train/logs")))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(text.contains("trained"), "the victim's own log: {text}");
    assert!(!text.contains("FORGED"), "no forged line in it: {text}");
    assert!(
        !cluster.dir.path().join("data/logs").join(&nowhere).exists(),
        "no log written for a run that does not exist"
    );
    let scheduler_log = cluster.scheduler.as_ref().unwrap().log_text();
    assert!(
        scheduler_log.contains("not assigned to this worker"),
        "refusals are logged"
    );
}
