//! The worker endpoint of a replica that does not lead (HA standby): every
//! `WorkerService` call is answered `UNAVAILABLE` with a message starting
//! [`NOT_LEADER_PREFIX`] and, when this replica knows who leads, the
//! leader's worker URL in the [`LEADER_METADATA_KEY`] response metadata.
//!
//! Why a real gRPC answer rather than a closed connection: a worker given
//! several `--scheduler` URLs must tell "this replica is a standby, try the
//! next one now" from "the scheduler is down, back off". A closed TCP
//! connection says neither.
//!
//! The answer comes before authentication (no join token interceptor): it
//! reveals nothing but that this replica stands by and an address that is
//! already in every worker's configuration, and a worker whose token is
//! wrong learns that from the leader. TLS is the leader's own configuration,
//! so a worker's certificate checks hold on both.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataValue;
use tonic::transport::{Server, ServerTlsConfig};
use tonic::{Request, Response, Status, Streaming};
use tracing::{debug, info, instrument};
use trainyard_proto::v1::worker_service_server::{WorkerService, WorkerServiceServer};
use trainyard_proto::v1::{self, LEADER_METADATA_KEY, NOT_LEADER_PREFIX};

use super::Result;

/// How long a stopping standby endpoint waits for its connections to close
/// before the caller may drop it (its answers are immediate; a worker that
/// keeps an idle connection open must not delay the start of a term).
pub const STANDBY_STOP_GRACE: Duration = Duration::from_secs(2);

/// `WorkerService` of a standby replica: refuses every call with "not the
/// leader" and the leader's address when `leader` holds one.
#[derive(Debug, Clone)]
pub struct StandbyService {
    /// The leader's worker URL (`http(s)://host:port`) as this replica
    /// knows it; `None` while it does not. Read at each call, so a hint
    /// that arrives later is answered at once.
    leader: watch::Receiver<Option<String>>,
}

impl StandbyService {
    pub fn new(leader: watch::Receiver<Option<String>>) -> Self {
        Self { leader }
    }

    /// The status every call gets.
    pub fn not_leader(&self) -> Status {
        let leader = self
            .leader
            .borrow()
            .clone()
            .filter(|l| !l.trim().is_empty());
        let message = match &leader {
            Some(url) => format!(
                "{NOT_LEADER_PREFIX}: this scheduler replica is a standby; the leader is at {url} \
                 (workers given several --scheduler URLs move on to it by themselves)"
            ),
            None => format!(
                "{NOT_LEADER_PREFIX}: this scheduler replica is a standby and does not know the \
                 leader's address yet; give the worker every replica's URL in --scheduler \
                 (comma-separated) or connect through a load balancer that routes to the leader"
            ),
        };
        let mut status = Status::unavailable(message);
        // A URL that is not valid metadata (it came from configuration) is
        // left out rather than failing the answer; the message still has it.
        if let Some(value) = leader.and_then(|l| MetadataValue::try_from(l.as_str()).ok()) {
            status.metadata_mut().insert(LEADER_METADATA_KEY, value);
        }
        status
    }
}

#[tonic::async_trait]
impl WorkerService for StandbyService {
    async fn register(
        &self,
        _request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        debug!("worker registration refused: this replica is a standby");
        Err(self.not_leader())
    }

    type ConnectStream = ReceiverStream<Result<v1::SchedulerMessage, Status>>;

    async fn connect(
        &self,
        _request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        Err(self.not_leader())
    }
}

/// Serves [`StandbyService`] on an already bound `listener` (with the
/// leader's TLS settings) until `shutdown` completes.
#[instrument(skip_all, fields(addr = ?listener.local_addr().ok()), err)]
pub async fn serve_standby(
    listener: TcpListener,
    leader: watch::Receiver<Option<String>>,
    tls: Option<ServerTlsConfig>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    let incoming = TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            let _ = s.set_nodelay(true);
        })
    });
    let mut server = Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls)?;
    }
    info!("worker endpoint answers \"not the leader\" while on standby");
    server
        .add_service(WorkerServiceServer::new(StandbyService::new(leader)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use tokio_util::sync::CancellationToken;
    use tonic::Code;
    use trainyard_proto::v1::worker_service_client::WorkerServiceClient;

    async fn standby(
        hint: Option<&str>,
    ) -> (
        WorkerServiceClient<tonic::transport::Channel>,
        watch::Sender<Option<String>>,
        CancellationToken,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = watch::channel(hint.map(str::to_owned));
        let stop = CancellationToken::new();
        tokio::spawn(serve_standby(
            listener,
            rx,
            None,
            stop.clone().cancelled_owned(),
        ));
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        (WorkerServiceClient::new(channel), tx, stop)
    }

    fn register() -> v1::RegisterRequest {
        v1::RegisterRequest {
            protocol_version: v1::PROTOCOL_VERSION,
            name: "w".into(),
            slots: 1,
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn a_standby_answers_not_the_leader_with_the_leaders_url() {
        let (mut client, _tx, stop) = standby(Some("https://sched-b:50051")).await;
        let status = client.register(register()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(
            status.message().starts_with("not the leader:"),
            "{}",
            status.message()
        );
        assert!(status.message().contains("standby"), "{}", status.message());
        assert!(
            status.message().contains("https://sched-b:50051"),
            "{}",
            status.message()
        );
        assert_eq!(
            status.metadata().get(LEADER_METADATA_KEY).unwrap(),
            "https://sched-b:50051"
        );
        // The stream is refused the same way (before any message is read).
        let (_out, rx) = tokio::sync::mpsc::channel::<v1::WorkerMessage>(1);
        let status = client.connect(ReceiverStream::new(rx)).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().starts_with(NOT_LEADER_PREFIX));
        assert_eq!(
            status.metadata().get(LEADER_METADATA_KEY).unwrap(),
            "https://sched-b:50051"
        );
        stop.cancel();
    }

    #[tokio::test]
    async fn without_a_hint_it_says_so_and_a_later_hint_is_answered_at_once() {
        let (mut client, tx, stop) = standby(None).await;
        let status = client.register(register()).await.unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().starts_with("not the leader:"));
        assert!(
            status.message().contains("does not know"),
            "{}",
            status.message()
        );
        assert!(status.metadata().get(LEADER_METADATA_KEY).is_none());
        tx.send_replace(Some("http://10.0.0.7:50051".into()));
        let status = client.register(register()).await.unwrap_err();
        assert_eq!(
            status.metadata().get(LEADER_METADATA_KEY).unwrap(),
            "http://10.0.0.7:50051"
        );
        stop.cancel();
    }
}
