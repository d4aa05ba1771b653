//! Reaching the scheduler: dial, Register, open Connect with a Hello. One
//! call is one try; the agent's loop retries with back-off. Errors say
//! whether retrying can help ([`DialError::is_fatal`]).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Streaming};
use trainyard_core::ids::WorkerId;
use trainyard_proto::v1::{self, worker_service_client::WorkerServiceClient};

/// Messages buffered towards the scheduler on one stream.
pub const OUT_BUFFER: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error("scheduler URL {url:?} is not valid: {reason}")]
    BadUrl { url: String, reason: String },
    #[error("cannot reach the scheduler at {url}: {source}")]
    Unreachable {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("the scheduler rejected this worker: {0}")]
    Rejected(String),
    #[error("{call} failed: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("the scheduler answered an unusable worker id {0:?}")]
    BadWorkerId(String),
}

impl DialError {
    /// Retrying the same request cannot help: stop the agent and say why.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::BadUrl { .. } | Self::Rejected(_) => true,
            Self::Call { call, status } => {
                *call == "Register"
                    && matches!(status.code(), Code::InvalidArgument | Code::Unimplemented)
            }
            _ => false,
        }
    }
}

/// A registered worker with an open stream.
pub struct Established {
    pub worker_id: WorkerId,
    /// From the scheduler; zero means it did not say.
    pub heartbeat_interval: Duration,
    pub tx: mpsc::Sender<v1::WorkerMessage>,
    pub inbound: Streaming<v1::SchedulerMessage>,
    /// The scheduler's artifact store; empty when it configured none.
    pub artifact_store_url: String,
}

/// `host:port` becomes `http://host:port`.
pub fn normalise_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

pub fn endpoint(url: &str) -> Result<Endpoint, DialError> {
    let url = normalise_url(url);
    Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| DialError::BadUrl {
            url,
            reason: e.to_string(),
        })
}

/// Dials, registers with `request` and opens the stream with a Hello
/// listing `running` (built with the id the scheduler answered).
pub async fn establish(
    endpoint: Endpoint,
    request: v1::RegisterRequest,
    running: Vec<v1::RunningAttempt>,
    max_message_bytes: usize,
) -> Result<Established, DialError> {
    let url = endpoint.uri().to_string();
    let channel: Channel = endpoint
        .connect()
        .await
        .map_err(|source| DialError::Unreachable { url, source })?;
    let mut client = WorkerServiceClient::new(channel)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let resp = client
        .register(request)
        .await
        .map_err(|status| DialError::Call {
            call: "Register",
            status,
        })?
        .into_inner();
    if !resp.accepted {
        return Err(DialError::Rejected(resp.reason));
    }
    let worker_id: WorkerId = resp
        .worker_id
        .parse()
        .map_err(|_| DialError::BadWorkerId(resp.worker_id.clone()))?;
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    let hello = v1::WorkerMessage {
        kind: Some(v1::worker_message::Kind::Hello(v1::Hello {
            worker_id: worker_id.to_string(),
            running,
        })),
    };
    // The buffer is empty, so this cannot wait.
    let _ = tx.send(hello).await;
    let inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|status| DialError::Call {
            call: "Connect",
            status,
        })?
        .into_inner();
    Ok(Established {
        worker_id,
        heartbeat_interval: Duration::from_millis(resp.heartbeat_interval_ms),
        tx,
        inbound,
        artifact_store_url: resp.artifact_store_url,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bare_host_port_gets_a_scheme() {
        assert_eq!(normalise_url("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalise_url("https://s:1"), "https://s:1");
    }

    #[test]
    fn rejection_and_bad_registrations_are_fatal_but_outages_are_not() {
        assert!(DialError::Rejected("old".into()).is_fatal());
        let bad = DialError::Call {
            call: "Register",
            status: tonic::Status::invalid_argument("slots"),
        };
        assert!(bad.is_fatal());
        let down = DialError::Call {
            call: "Connect",
            status: tonic::Status::unavailable("restarting"),
        };
        assert!(!down.is_fatal());
    }
}
