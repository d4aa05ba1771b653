//! The worker service at the protocol level, with raw tonic clients (and one
//! real agent): version mismatch is refused with a reason, malformed input
//! gets INVALID_ARGUMENT and the server keeps serving, a stale report for an
//! old attempt is fenced (engine state unchanged) and answered with Kill,
//! and a draining agent takes no new work.
#![allow(clippy::unwrap_used)]

mod grpc_support;

use grpc_support::*;
use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;
use trainyard_core::state::{RunState, TaskState, WorkerState};
use trainyard_proto::v1::{self, scheduler_message::Kind as In, worker_message::Kind as Out};
use trainyard_worker::agent::{Agent, AgentError, DialError};

fn wm(kind: Out) -> v1::WorkerMessage {
    v1::WorkerMessage { kind: Some(kind) }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_speaking_another_protocol_version_is_rejected_with_the_reason() {
    let s = Scheduler::start().await;
    let mut client = s.client().await;
    let mut req = register_request("future");
    req.protocol_version = v1::PROTOCOL_VERSION + 1;
    let resp = client.register(req).await.unwrap().into_inner();
    assert!(!resp.accepted);
    assert!(resp.worker_id.is_empty());
    assert_eq!(resp.protocol_version, v1::PROTOCOL_VERSION);
    assert!(
        resp.reason
            .contains(&format!("protocol {}", v1::PROTOCOL_VERSION + 1)),
        "{}",
        resp.reason
    );
    assert!(
        resp.reason.contains("upgrade the scheduler"),
        "{}",
        resp.reason
    );

    // A real agent stops with the reason instead of retrying forever.
    let mut o = agent_options(&s, "old", vec![]);
    o.protocol_version = 0;
    let err = tokio::time::timeout(WAIT, Agent::build(o).unwrap().run(std::future::pending()))
        .await
        .unwrap()
        .unwrap_err();
    match err {
        AgentError::Dial(DialError::Rejected(reason)) => {
            assert!(reason.contains("upgrade the worker"), "{reason}")
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    s.shutdown().await;
}

/// A change that makes a valid registration invalid.
type Mutation = Box<dyn Fn(&mut v1::RegisterRequest)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_registrations_and_streams_get_invalid_argument_and_the_server_keeps_serving() {
    let s = Scheduler::start().await;
    let mut client = s.client().await;
    let bad: Vec<(&str, Mutation)> = vec![
        ("bad uuid", Box::new(|r| r.worker_id = "not-a-uuid".into())),
        ("no slots", Box::new(|r| r.slots = 0)),
        ("absurd cpus", Box::new(|r| r.cpus = u32::MAX)),
        ("absurd memory", Box::new(|r| r.memory_bytes = u64::MAX)),
        (
            "absurd gpu",
            Box::new(|r| {
                r.gpus.push(v1::Gpu {
                    index: 1_000_000_000,
                    uuid: "GPU-x".into(),
                    model: "X".into(),
                    memory_bytes: 1_000_000_000_000_000_000,
                    healthy: true,
                })
            }),
        ),
        ("empty name", Box::new(|r| r.name.clear())),
    ];
    for (what, mutate) in bad {
        let mut req = register_request("w");
        mutate(&mut req);
        let status = client.register(req).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status}");
    }
    // Larger than the message limit: refused before decoding.
    let mut huge = register_request("w");
    huge.hostname = "x".repeat(grpc_options().max_message_bytes + 1);
    let status = client.register(huge).await.unwrap_err();
    assert_ne!(status.code(), Code::Ok);

    // A stream must open with a Hello naming a valid worker.
    let (tx, rx) = mpsc::channel(4);
    tx.send(wm(Out::Heartbeat(v1::Heartbeat::default())))
        .await
        .unwrap();
    let status = client.connect(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    let (tx, rx) = mpsc::channel(4);
    tx.send(wm(Out::Hello(v1::Hello {
        worker_id: "garbage".into(),
        running: vec![],
        session_credential: String::new(),
    })))
    .await
    .unwrap();
    let status = client.connect(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status}");
    // An unknown (never registered) worker is told to register.
    let (tx, rx) = mpsc::channel(4);
    tx.send(wm(Out::Hello(v1::Hello {
        worker_id: trainyard_core::ids::WorkerId::new().to_string(),
        running: vec![],
        session_credential: String::new(),
    })))
    .await
    .unwrap();
    let status = client.connect(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{status}");

    // Still serving: a good registration is accepted on a fresh connection.
    let mut fresh = s.client().await;
    let resp = fresh
        .register(register_request("good"))
        .await
        .unwrap()
        .into_inner();
    assert!(resp.accepted, "{}", resp.reason);
    assert_eq!(resp.heartbeat_interval_ms, 200);
    s.shutdown().await;
}

/// A hand-driven worker on a raw stream.
struct RawWorker {
    tx: mpsc::Sender<v1::WorkerMessage>,
    inbound: tonic::Streaming<v1::SchedulerMessage>,
    /// The id and session credential registered, for a reconnect.
    id: String,
    credential: String,
}

impl RawWorker {
    async fn connect(s: &Scheduler) -> Self {
        Self::register_and_hello(s, register_request("raw"), vec![]).await
    }

    /// Registers (again, when the request names an id) and opens a stream
    /// whose Hello lists `running`, as the agent does after a reconnect.
    async fn register_and_hello(
        s: &Scheduler,
        request: v1::RegisterRequest,
        running: Vec<v1::RunningAttempt>,
    ) -> Self {
        let mut client = s.client().await;
        let resp = client.register(request).await.unwrap().into_inner();
        assert!(resp.accepted, "{}", resp.reason);
        let (tx, rx) = mpsc::channel(64);
        tx.send(wm(Out::Hello(v1::Hello {
            worker_id: resp.worker_id.clone(),
            running,
            session_credential: resp.session_credential.clone(),
        })))
        .await
        .unwrap();
        let inbound = client
            .connect(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        Self {
            tx,
            inbound,
            id: resp.worker_id,
            credential: resp.session_credential,
        }
    }

    /// A new stream for the same worker (the old one is dropped).
    async fn reconnect(self, s: &Scheduler, running: Vec<v1::RunningAttempt>) -> Self {
        let mut request = register_request("raw");
        request.worker_id = self.id.clone();
        request.session_credential = self.credential.clone();
        drop(self);
        Self::register_and_hello(s, request, running).await
    }

    /// Messages until a FinishRecorded for `attempt`; with `listed` (the
    /// Hello listed it) a Kill for it may come first; anything else panics.
    async fn expect_finish_recorded(
        &mut self,
        attempt: &v1::AttemptRef,
        listed: bool,
    ) -> v1::FinishRecorded {
        loop {
            match self.next().await {
                In::FinishRecorded(r) if r.attempt.as_ref() == Some(attempt) => return r,
                In::Kill(k) if listed && k.attempt.as_ref() == Some(attempt) => continue,
                other => panic!("expected FinishRecorded for {attempt:?}, got {other:?}"),
            }
        }
    }

    /// The next message that is not a heartbeat ack.
    async fn next(&mut self) -> In {
        loop {
            let m = tokio::time::timeout(WAIT, self.inbound.next())
                .await
                .expect("no message from the scheduler")
                .expect("stream ended")
                .expect("stream failed");
            match m.kind {
                Some(In::HeartbeatAck(_)) | None => continue,
                Some(k) => return k,
            }
        }
    }

    async fn send(&self, kind: Out) {
        self.tx.send(wm(kind)).await.unwrap();
    }

    async fn next_assign(&mut self) -> v1::Assign {
        match self.next().await {
            In::Assign(a) => a,
            other => panic!("expected Assign, got {other:?}"),
        }
    }

    async fn run_attempt(&mut self, a: &v1::Assign, outcome: v1::TaskOutcome) {
        self.send(Out::Ack(v1::Ack {
            assignment_id: a.assignment_id.clone(),
            attempt: a.attempt.clone(),
            accepted: true,
            reason: String::new(),
        }))
        .await;
        self.send(Out::TaskStarted(v1::TaskStarted {
            attempt: a.attempt.clone(),
            assignment_id: a.assignment_id.clone(),
            ..Default::default()
        }))
        .await;
        self.finish(a.attempt.clone().unwrap(), outcome).await;
    }

    async fn finish(&self, attempt: v1::AttemptRef, outcome: v1::TaskOutcome) {
        self.send(Out::TaskFinished(v1::TaskFinished {
            attempt: Some(attempt),
            outcome: outcome as i32,
            ..Default::default()
        }))
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_report_for_an_old_attempt_is_fenced_and_answered_with_kill() {
    let mut s = Scheduler::start().await;
    let mut w = RawWorker::connect(&s).await;
    let dag = s
        .add_dag(
            r#"
id = "fence"
[tasks.t]
command = ["true"]
retries = 1
retry_delay = "1ms"
"#,
        )
        .await;
    let run = s.trigger(&dag).await;

    // Attempt 1 fails; the engine retries it as attempt 2 on the same worker.
    let a1 = w.next_assign().await;
    assert_eq!(a1.attempt.as_ref().unwrap().attempt, 1);
    w.run_attempt(&a1, v1::TaskOutcome::Failed).await;
    let a2 = w.next_assign().await;
    assert_eq!(a2.attempt.as_ref().unwrap().attempt, 2);
    w.send(Out::TaskStarted(v1::TaskStarted {
        attempt: a2.attempt.clone(),
        assignment_id: a2.assignment_id.clone(),
        ..Default::default()
    }))
    .await;
    let store = s.store.clone();
    s.until("attempt 2 running", || {
        let store = store.clone();
        async move {
            let ti = store.task_instances(run).await.unwrap().remove(0);
            ti.state == TaskState::Running && ti.attempt == 2
        }
    })
    .await;

    // A late success report for attempt 1: fenced, answered with Kill.
    w.finish(a1.attempt.clone().unwrap(), v1::TaskOutcome::Succeeded)
        .await;
    match w.next().await {
        In::Kill(k) => assert_eq!(k.attempt, a1.attempt, "{k:?}"),
        other => panic!("expected Kill, got {other:?}"),
    }
    let ti = s.ti(run, "t").await;
    assert_eq!(
        (ti.state, ti.attempt),
        (TaskState::Running, 2),
        "the stale report changed nothing"
    );
    assert_eq!(s.store.get_run(run).await.unwrap().state, RunState::Running);

    // The current attempt still reports normally.
    w.finish(a2.attempt.clone().unwrap(), v1::TaskOutcome::Succeeded)
        .await;
    assert_eq!(s.wait_run(run).await, RunState::Success);
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_agent_takes_no_new_work_and_finishes_what_it_runs() {
    let mut s = Scheduler::start().await;
    // Only the GPU agent can take the first task.
    let gpu = start_agent(agent_options(&s, "gpu", declared_gpus(1, "NVIDIA H100"))).await;
    let cpu = start_agent(agent_options(&s, "cpu", vec![])).await;
    let gate = s.dir.path().join("gate");
    let started = s.dir.path().join("started");
    let long = s
        .add_dag(&format!(
            r#"
id = "long"
[tasks.train]
resources = {{ gpus = 1 }}
shell = '''touch "{started}"; while [ ! -f "{gate}" ]; do sleep 0.02; done'''
"#,
            started = started.display(),
            gate = gate.display()
        ))
        .await;
    let quick = s
        .add_dag(
            r#"
id = "quick"
[tasks.a]
command = ["true"]
[tasks.b]
command = ["true"]
[tasks.c]
command = ["true"]
"#,
        )
        .await;
    let long_run = s.trigger(&long).await;
    s.until("the GPU task to start", || {
        let started = started.clone();
        async move { started.exists() }
    })
    .await;

    gpu.handle.drain();
    s.wait_worker_state(gpu.worker_id, WorkerState::Draining)
        .await;
    let quick_run = s.trigger(&quick).await;
    assert_eq!(s.wait_run(quick_run).await, RunState::Success);
    let attempts = s.store.run_attempts(quick_run).await.unwrap();
    assert_eq!(attempts.len(), 3);
    assert!(
        attempts.iter().all(|a| a.worker_id == Some(cpu.worker_id)),
        "work landed on the draining worker: {attempts:?}"
    );

    // The draining agent finishes its task, reports it and exits.
    assert!(gpu.handle.status().draining);
    std::fs::write(&gate, "go").unwrap();
    assert_eq!(s.wait_run(long_run).await, RunState::Success);
    tokio::time::timeout(WAIT, gpu.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();

    cpu.handle.drain();
    tokio::time::timeout(WAIT, cpu.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    s.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finish_re_sent_for_a_recorded_attempt_is_answered_as_a_duplicate_and_changes_nothing() {
    let mut s = Scheduler::start().await;
    let mut w = RawWorker::connect(&s).await;
    let dag = s
        .add_dag(
            r#"
id = "dup"
[tasks.a]
command = ["true"]
[tasks.b]
depends_on = ["a"]
command = ["true"]
"#,
        )
        .await;
    let run = s.trigger(&dag).await;
    let a = w.next_assign().await;
    w.run_attempt(&a, v1::TaskOutcome::Succeeded).await;
    let b = w.next_assign().await;
    let store = s.store.clone();
    s.until("a recorded as succeeded", || {
        let store = store.clone();
        async move { store.task_instances(run).await.unwrap()[0].state == TaskState::Success }
    })
    .await;

    // The same report again on the same stream while the run is active
    // (decided from the engine's memory): a duplicate, not a Kill.
    let a_ref = a.attempt.clone().unwrap();
    w.finish(a_ref.clone(), v1::TaskOutcome::Succeeded).await;
    let answer = w.expect_finish_recorded(&a_ref, false).await;
    assert!(answer.note.contains("already recorded"), "{answer:?}");

    // b finishes, the run ends; the stream breaks before any confirmation
    // and the worker reconnects listing b (unconfirmed) and re-sends it
    // (decided from the store: the run is no longer in memory).
    w.run_attempt(&b, v1::TaskOutcome::Succeeded).await;
    assert_eq!(s.wait_run(run).await, RunState::Success);
    let b_ref = b.attempt.clone().unwrap();
    let listed = v1::RunningAttempt {
        attempt: Some(b_ref.clone()),
        assignment_id: b.assignment_id.clone(),
        started_at_unix_ms: 0,
        gpu_indices: vec![],
    };
    let mut w = w.reconnect(&s, vec![listed]).await;
    w.finish(b_ref.clone(), v1::TaskOutcome::Succeeded).await;
    w.expect_finish_recorded(&b_ref, true).await;
    // A "re-send" that contradicts what is recorded is no re-send: fenced.
    w.finish(b_ref.clone(), v1::TaskOutcome::Failed).await;
    match w.next().await {
        In::Kill(k) => assert_eq!(k.attempt.as_ref(), Some(&b_ref)),
        other => panic!("expected Kill, got {other:?}"),
    }

    let tis = s.store.task_instances(run).await.unwrap();
    assert!(
        tis.iter()
            .all(|t| t.state == TaskState::Success && t.attempt == 1),
        "{tis:?}"
    );
    assert_eq!(s.store.get_run(run).await.unwrap().state, RunState::Success);
    let attempts = s.store.run_attempts(run).await.unwrap();
    assert_eq!(attempts.len(), 2, "no attempt recorded twice: {attempts:?}");

    // A report for an attempt that was never this worker's is still fenced.
    let foreign = v1::AttemptRef {
        task_instance_id: a_ref.task_instance_id.clone(),
        attempt: 7,
    };
    w.finish(foreign.clone(), v1::TaskOutcome::Succeeded).await;
    match w.next().await {
        In::Kill(k) => assert_eq!(k.attempt, Some(foreign)),
        other => panic!("expected Kill, got {other:?}"),
    }
    s.shutdown().await;
}
