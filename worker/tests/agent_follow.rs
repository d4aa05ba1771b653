//! The agent leaves a scheduler that stops acknowledging heartbeats: two
//! in-process `WorkerService`s, the first accepts the worker and then says
//! nothing on its stream (a frozen leader never closes it), the second
//! acknowledges every heartbeat. The agent, given both URLs, must end up on
//! the second by itself. Waits are for a condition with a deadline.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use trainyard_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use trainyard_proto::v1::{self, scheduler_message, worker_message};
use trainyard_worker::agent::{Agent, AgentOptions};

/// A scheduler stand-in: registers anyone; `acks` says whether it answers
/// heartbeats. Counts the streams opened with a Hello.
#[derive(Clone)]
struct FakeScheduler {
    acks: bool,
    /// Streams opened with a Hello so far.
    hellos: Arc<watch::Sender<usize>>,
}

impl FakeScheduler {
    fn new(acks: bool) -> Self {
        Self {
            acks,
            hellos: Arc::new(watch::channel(0).0),
        }
    }

    /// Waits until a Hello arrived (the server reads it on its own task).
    async fn saw_hello(&self) {
        let mut rx = self.hellos.subscribe();
        tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|n| *n >= 1))
            .await
            .expect("no Hello arrived")
            .unwrap();
    }
}

#[tonic::async_trait]
impl WorkerService for FakeScheduler {
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let req = request.into_inner();
        Ok(Response::new(v1::RegisterResponse {
            accepted: true,
            worker_id: req.worker_id,
            session_credential: "credential-0123456789".into(),
            heartbeat_interval_ms: 100,
            lost_worker_timeout_ms: 3_000,
            protocol_version: v1::PROTOCOL_VERSION,
            ..Default::default()
        }))
    }

    type ConnectStream = ReceiverStream<Result<v1::SchedulerMessage, Status>>;

    async fn connect(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let (tx, rx) = mpsc::channel(16);
        let (acks, hellos) = (self.acks, self.hellos.clone());
        tokio::spawn(async move {
            // Keeps `tx` (the stream stays open) until the worker leaves.
            while let Some(Ok(m)) = inbound.next().await {
                match m.kind {
                    Some(worker_message::Kind::Hello(_)) => {
                        hellos.send_modify(|n| *n += 1);
                    }
                    Some(worker_message::Kind::Heartbeat(hb)) if acks => {
                        let ack = v1::SchedulerMessage {
                            kind: Some(scheduler_message::Kind::HeartbeatAck(v1::HeartbeatAck {
                                timestamp_unix_ms: hb.timestamp_unix_ms,
                                server_time_unix_ms: hb.timestamp_unix_ms,
                            })),
                        };
                        if tx.send(Ok(ack)).await.is_err() {
                            return;
                        }
                    }
                    _ => {}
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

async fn serve(fake: FakeScheduler) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(WorkerServiceServer::new(fake))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_leaves_a_scheduler_that_stops_acknowledging_heartbeats() {
    let frozen = FakeScheduler::new(false);
    let healthy = FakeScheduler::new(true);
    let frozen_url = serve(frozen.clone()).await;
    let healthy_url = serve(healthy.clone()).await;
    let work = tempfile::tempdir().unwrap();
    let opts = AgentOptions::new(format!("{frozen_url}, {healthy_url}"), work.path());
    let agent = Agent::build(opts).unwrap();
    let handle = agent.handle();
    let id = agent.worker_id();
    let mut run = tokio::spawn(agent.run(std::future::pending::<()>()));

    // First the frozen one (first in the list), then, after its silence
    // (3 × 100 ms heartbeats, under a third of the 3 s timeout), the
    // healthy one, as the same worker.
    let moved = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            status = handle.wait_for(|s| s.connected && s.connections >= 2) => status,
            stopped = &mut run => panic!("the agent stopped: {stopped:?}"),
        }
    })
    .await
    .expect("the agent did not leave the silent scheduler")
    .expect("the agent's status channel closed");
    frozen.saw_hello().await;
    healthy.saw_hello().await;
    assert_eq!(moved.worker_id, Some(id), "the same worker on both");
    handle.drain();
    tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
