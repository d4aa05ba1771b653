//! HA on PostgreSQL: two scheduler replicas on one fresh database. Exactly
//! one leads; a run triggered through the standby's API is started by the
//! leader at once (NOTIFY, no polling); when the leader stops, the standby
//! takes over and finishes the in-flight run with no task run twice; a leader
//! whose lease connection is killed renews on a fresh one and keeps leading
//! with the same term. (Frozen leaders: `tests/e2e_ha_lease.rs`, separate
//! processes and SIGSTOP.)
//!
//! Postgres being down FAILS these tests (TRAINYARD_TEST_DATABASE_URL,
//! default postgres://postgres@127.0.0.1:5432/test).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::str::FromStr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use trainyard_core::ids::RunId;
use trainyard_core::state::{RunState, TaskState};
use trainyard_scheduler::app::{SchedulerApp, SchedulerConfig};
use trainyard_scheduler::engine::{
    EngineEvent, EngineHandle, TaskResult, WorkerCommand, WorkerRegistration,
};
use trainyard_scheduler::ha::Role;

/// Generous: these waits end on an event, never by sleeping them out.
const WAIT: Duration = Duration::from_secs(20);

const DAG: &str = r#"
id = "ha_pipe"
[tasks.a]
command = ["true"]
[tasks.b]
depends_on = ["a"]
command = ["true"]
"#;

/// A new, empty database on the test server (the default HA group and NOTIFY
/// channels are per database, so each test gets its own).
async fn fresh_database() -> String {
    let base = std::env::var("TRAINYARD_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let admin = sqlx::PgPool::connect(&base).await.unwrap_or_else(|e| {
        panic!(
            "HA tests need PostgreSQL at {base} (set TRAINYARD_TEST_DATABASE_URL, or start one: \
             `docker run -p 5432:5432 -e POSTGRES_HOST_AUTH_METHOD=trust postgres`): {e}"
        )
    });
    let name = format!("ha_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(&format!("CREATE DATABASE {name}"))
        .execute(&admin)
        .await
        .unwrap();
    admin.close().await;
    match base.rfind('/') {
        Some(i) => format!("{}/{name}", &base[..i]),
        None => panic!("bad database URL {base}"),
    }
}

struct Replica {
    app: SchedulerApp,
    shutdown: CancellationToken,
}

async fn replica(url: &str, dir: &std::path::Path, name: &str) -> Replica {
    let mut config = SchedulerConfig::new(url, dir.join(name));
    config.dags_dir = Some(dir.join("dags"));
    let shutdown = CancellationToken::new();
    let http = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let grpc = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let app = SchedulerApp::start(config, http, grpc, shutdown.clone())
        .await
        .unwrap();
    Replica { app, shutdown }
}

impl Replica {
    async fn stop(self) {
        self.shutdown.cancel();
        self.app.wait().await;
    }

    /// One HTTP/1.1 request over a raw socket: (status, body).
    async fn http(&self, method: &str, path: &str, body: &str) -> (u16, String) {
        let mut s = TcpStream::connect(self.app.http_addr).await.unwrap();
        let req = format!(
            "{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        );
        s.write_all(req.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        (status, body)
    }
}

async fn wait_role(app: &SchedulerApp, want: Role) {
    let mut role = app.role();
    tokio::time::timeout(WAIT, role.wait_for(|r| *r == want))
        .await
        .unwrap_or_else(|_| panic!("timed out waiting to become {want:?}"))
        .unwrap();
}

async fn wait_run_state(events: &mut broadcast::Receiver<EngineEvent>, run: RunId, want: RunState) {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await.unwrap() {
                EngineEvent::RunState { run_id, state, .. } if run_id == run && state == want => {
                    return;
                }
                _ => {}
            }
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for run {run} to be {want}"));
}

fn registration() -> WorkerRegistration {
    WorkerRegistration {
        id: None,
        name: "w1".into(),
        labels: Default::default(),
        queues: vec![],
        cpus: 8.0,
        memory_bytes: 16 << 30,
        slots: 4,
        gpus: vec![],
        credential: None,
    }
}

async fn next_assign(
    rx: &mut tokio::sync::mpsc::Receiver<WorkerCommand>,
) -> trainyard_scheduler::engine::Assignment {
    loop {
        let cmd = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("timed out waiting for an assignment")
            .expect("worker stream closed");
        if let WorkerCommand::Assign(a) = cmd {
            return a;
        }
    }
}

async fn setup() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("dags")).unwrap();
    std::fs::write(dir.path().join("dags/ha_pipe.toml"), DAG).unwrap();
    (dir, fresh_database().await)
}

async fn trigger_via(replica: &Replica) -> RunId {
    let (status, body) = replica
        .http("POST", "/api/v1/dags/ha_pipe/runs", "{}")
        .await;
    assert_eq!(status, 201, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    RunId::from_str(v["run_id"].as_str().unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn standby_trigger_is_started_by_the_leader_and_survives_failover_once() {
    let (dir, url) = setup().await;
    let a = replica(&url, dir.path(), "a").await;
    let b = replica(&url, dir.path(), "b").await;
    assert!(a.app.is_leader(), "the first replica takes the free lock");
    assert!(!b.app.is_leader(), "exactly one replica leads");
    assert_eq!(a.http("GET", "/readyz", "").await.0, 200);
    let (status, body) = b.http("GET", "/readyz", "").await;
    assert_eq!(status, 503);
    assert!(body.contains("standby"), "{body}");
    // Reads work on the standby.
    assert_eq!(b.http("GET", "/api/v1/dags/ha_pipe", "").await.0, 200);
    // Bad params are refused by the standby as the engine would.
    let (status, _) = b
        .http(
            "POST",
            "/api/v1/dags/ha_pipe/runs",
            r#"{"params":{"nope":1}}"#,
        )
        .await;
    assert_eq!(status, 400);

    let mut worker_rx = {
        let id = a.app.engine.register_worker(registration()).await.unwrap();
        (
            id,
            a.app
                .engine
                .connect_worker(id, vec![])
                .await
                .unwrap()
                .commands,
        )
    };
    let mut events = a.app.engine.subscribe();
    let run = trigger_via(&b).await;
    // The leader hears of it through NOTIFY and starts it: no polling interval.
    wait_run_state(&mut events, run, RunState::Running).await;
    let first = next_assign(&mut worker_rx.1).await;
    assert_eq!(first.task_id.as_str(), "a");
    a.app
        .engine
        .task_started(worker_rx.0, first.task_instance_id, first.attempt)
        .await
        .unwrap();

    // The leader goes away mid-run; the standby takes over.
    let store = b.app.store.clone();
    a.stop().await;
    wait_role(&b.app, Role::Leader).await;
    assert_eq!(b.http("GET", "/readyz", "").await.0, 200);
    let engine: EngineHandle = b.app.engine.clone();
    let mut events = engine.subscribe();
    // The worker reconnects to the new leader still running attempt 1 of `a`.
    let mut reg = registration();
    reg.id = Some(worker_rx.0);
    let wid = engine.register_worker(reg).await.unwrap();
    let mut rx = engine
        .connect_worker(wid, vec![(first.task_instance_id, first.attempt)])
        .await
        .unwrap()
        .commands;
    engine
        .task_finished(
            wid,
            first.task_instance_id,
            first.attempt,
            TaskResult::succeeded(),
        )
        .await
        .unwrap();
    let second = next_assign(&mut rx).await;
    assert_eq!(second.task_id.as_str(), "b");
    engine
        .task_started(wid, second.task_instance_id, second.attempt)
        .await
        .unwrap();
    engine
        .task_finished(
            wid,
            second.task_instance_id,
            second.attempt,
            TaskResult::succeeded(),
        )
        .await
        .unwrap();
    wait_run_state(&mut events, run, RunState::Success).await;

    // Nothing lost, nothing run twice.
    let tasks = store.task_instances(run).await.unwrap();
    assert!(tasks.iter().all(|t| t.state == TaskState::Success));
    let attempts = store.run_attempts(run).await.unwrap();
    assert_eq!(attempts.len(), 2, "one attempt per task: {attempts:?}");
    b.stop().await;
}

/// The lease row of the test database's only HA group: (term, holder, the
/// holder's recorded lease session pids).
async fn lease_row(pool: &sqlx::PgPool) -> (i64, String, Vec<i32>) {
    sqlx::query_as("SELECT term, holder, backend_pids FROM leader_lease")
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_lease_connection_dies_keeps_its_term_and_its_engine() {
    let (dir, url) = setup().await;
    let a = replica(&url, dir.path(), "a").await;
    let b = replica(&url, dir.path(), "b").await;
    assert!(a.app.is_leader() && !b.app.is_leader());
    let mut a_role = a.app.role();
    a_role.mark_unchanged();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let (term, holder, pids) = lease_row(&pool).await;
    assert_eq!(
        a.app.lease().borrow().as_ref().map(|l| l.term),
        Some(term),
        "the leader reports the term it holds"
    );
    // Kill the server side of the leader's lease session.
    let killed: Vec<bool> =
        sqlx::query_scalar("SELECT pg_terminate_backend(p) FROM unnest($1::int[]) p")
            .bind(&pids)
            .fetch_all(&pool)
            .await
            .unwrap();
    assert_eq!(killed, vec![true]);
    // The next renewal fails, is retried on a fresh session and keeps the term.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (now_term, now_holder, now_pids) = lease_row(&pool).await;
        assert_eq!(
            (now_term, &now_holder),
            (term, &holder),
            "nobody else took the lease"
        );
        if now_pids != pids {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the lease was never renewed on a new session"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The leader never stepped down (its role never changed) and its engine
    // still serves: a run triggered on the standby is started by it.
    assert!(!a_role.has_changed().unwrap(), "the leader's role changed");
    assert!(a.app.is_leader() && !b.app.is_leader());
    let mut events = a.app.engine.subscribe();
    let run = trigger_via(&b).await;
    wait_run_state(&mut events, run, RunState::Running).await;
    pool.close().await;
    a.stop().await;
    b.stop().await;
}
