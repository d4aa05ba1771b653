//! Reaching the scheduler: dial, Register, open Connect with a Hello. One
//! call is one try; the agent's loop retries with back-off. Errors say
//! whether retrying can help ([`DialError::is_fatal`]).

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::Interceptor;
use tonic::transport::{Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status, Streaming};
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
    /// Connecting, Register and opening the stream together took too long
    /// (a frozen or overloaded scheduler): the next URL is tried.
    #[error("the scheduler at {url} did not answer within {after:?}")]
    TimedOut { url: String, after: Duration },
    /// A standby replica: the worker tries its next `--scheduler` URL (the
    /// leader's first, when the replica named it and it is one of them).
    #[error("{url}: {message}")]
    NotLeader {
        url: String,
        /// The leader's worker URL from the `trainyard-leader` metadata.
        leader: Option<String>,
        message: String,
    },
    #[error("{call} failed: {status}")]
    Call {
        call: &'static str,
        status: tonic::Status,
    },
    #[error("the scheduler answered an unusable worker id {0:?}")]
    BadWorkerId(String),
    #[error("the worker join token cannot be sent: {0}")]
    BadToken(String),
    #[error(
        "TLS with the scheduler at {url} failed: {reason} (check --ca-cert, and --cert/--key \
         when the scheduler requires client certificates)"
    )]
    TlsRefused { url: String, reason: String },
    #[error("TLS settings for {url} are not usable: {source}")]
    Tls {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
}

impl DialError {
    /// Retrying the same request cannot help: stop the agent and say why.
    pub fn is_fatal(&self) -> bool {
        match self {
            Self::BadUrl { .. }
            | Self::Rejected(_)
            | Self::BadToken(_)
            | Self::Tls { .. }
            | Self::TlsRefused { .. } => true,
            // A wrong join token or credential stays wrong: say so and stop
            // rather than retry forever.
            Self::Call { status, .. }
                if matches!(
                    status.code(),
                    Code::Unauthenticated | Code::PermissionDenied
                ) =>
            {
                true
            }
            Self::Call { call, status } => {
                *call == "Register"
                    && matches!(status.code(), Code::InvalidArgument | Code::Unimplemented)
            }
            _ => false,
        }
    }
}

/// The TLS failure somewhere in `err`'s chain, if any: a certificate the
/// other side refuses stays refused, so retrying cannot help. tokio-rustls
/// hands rustls errors up as `io::Error`s carrying only their text, so the
/// text is what is recognised (an alert the scheduler sent, or a
/// certificate this worker could not verify).
fn tls_problem(err: &(dyn std::error::Error + 'static)) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(e) = next {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        let text = e.to_string();
        if text.starts_with("received fatal alert") || text.starts_with("invalid peer certificate")
        {
            return Some(text);
        }
        next = e.source();
    }
    None
}

/// The "not the leader" answer of a standby replica, recognised by its
/// message or its leader metadata (`grpc::standby` in the scheduler).
fn not_leader(url: &str, status: &Status) -> Option<DialError> {
    let leader = status
        .metadata()
        .get(v1::LEADER_METADATA_KEY)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty());
    let says_so = status.message().starts_with(v1::NOT_LEADER_PREFIX);
    (status.code() == Code::Unavailable && (says_so || leader.is_some())).then(|| {
        DialError::NotLeader {
            url: url.to_owned(),
            leader,
            message: status.message().to_owned(),
        }
    })
}

/// Adds the join token (`authorization: Bearer <token>`) to every call.
#[derive(Debug, Clone, Default)]
pub struct JoinToken(Option<MetadataValue<Ascii>>);

impl JoinToken {
    pub fn new(token: Option<&str>) -> Result<Self, DialError> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim())
                    .parse::<MetadataValue<Ascii>>()
                    .map_err(|_| {
                        DialError::BadToken(
                            "it must be printable ASCII (no spaces or control characters)".into(),
                        )
                    })
            })
            .transpose()
            .map(Self)
    }
}

impl Interceptor for JoinToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// How this worker proves who it is: the join token on every call, and the
/// session credential of its id (empty until the first Register answers).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub token: JoinToken,
    pub session_credential: String,
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
    /// The session credential bound to `worker_id` (keep it for the next Register).
    pub session_credential: String,
    /// The scheduler's lost-worker timeout; zero when it did not say.
    pub lost_worker_timeout: Duration,
    /// Taken before Register was sent: the scheduler counts a registration
    /// as a heartbeat, so it cannot declare this worker lost before this
    /// moment plus its lost-worker timeout (see `fence`).
    pub register_sent: tokio::time::Instant,
}

/// `host:port` becomes `http://host:port`.
pub fn normalise_url(url: &str) -> String {
    if url.contains("://") {
        url.to_owned()
    } else {
        format!("http://{url}")
    }
}

/// The scheduler's endpoint; `https://` URLs need `tls`, and `tls` needs
/// an `https://` URL (so a typo never sends secrets in cleartext).
pub fn endpoint(url: &str, tls: Option<&ClientTlsConfig>) -> Result<Endpoint, DialError> {
    let url = normalise_url(url);
    let https = url.starts_with("https://");
    if tls.is_some() && !https {
        return Err(DialError::BadUrl {
            url,
            reason: "TLS settings (--ca-cert, --cert) need an https:// scheduler URL".into(),
        });
    }
    let endpoint = Endpoint::from_shared(url.clone())
        .map(|e| {
            e.connect_timeout(Duration::from_secs(5))
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(10))
                .keep_alive_timeout(Duration::from_secs(20))
                .keep_alive_while_idle(true)
        })
        .map_err(|e| DialError::BadUrl {
            url: url.clone(),
            reason: e.to_string(),
        })?;
    match (tls, https) {
        (Some(tls), _) => endpoint
            .tls_config(tls.clone())
            .map_err(|source| DialError::Tls { url, source }),
        // The system's roots for a public certificate.
        (None, true) => endpoint
            .tls_config(ClientTlsConfig::new().with_enabled_roots())
            .map_err(|source| DialError::Tls { url, source }),
        (None, false) => Ok(endpoint),
    }
}

/// Dials, registers with `request` and opens the stream with a Hello
/// listing `running` (built with the id the scheduler answered).
pub async fn establish(
    endpoint: Endpoint,
    credentials: Credentials,
    mut request: v1::RegisterRequest,
    running: Vec<v1::RunningAttempt>,
    max_message_bytes: usize,
) -> Result<Established, DialError> {
    let register_sent = tokio::time::Instant::now();
    let url = endpoint.uri().to_string();
    let channel: Channel =
        endpoint
            .connect()
            .await
            .map_err(|source| match tls_problem(&source) {
                Some(reason) => DialError::TlsRefused {
                    url: url.clone(),
                    reason,
                },
                None => DialError::Unreachable {
                    url: url.clone(),
                    source,
                },
            })?;
    request.session_credential = credentials.session_credential;
    let mut client = WorkerServiceClient::with_interceptor(channel, credentials.token)
        .max_decoding_message_size(max_message_bytes)
        .max_encoding_message_size(max_message_bytes);
    let resp = client
        .register(request)
        .await
        .map_err(|status| match tls_problem(&status) {
            Some(reason) => DialError::TlsRefused {
                url: url.clone(),
                reason,
            },
            None => not_leader(&url, &status).unwrap_or(DialError::Call {
                call: "Register",
                status,
            }),
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
            session_credential: resp.session_credential.clone(),
        })),
    };
    // The buffer is empty, so this cannot wait.
    let _ = tx.send(hello).await;
    let inbound = client
        .connect(ReceiverStream::new(rx))
        .await
        .map_err(|status| {
            not_leader(&url, &status).unwrap_or(DialError::Call {
                call: "Connect",
                status,
            })
        })?
        .into_inner();
    Ok(Established {
        worker_id,
        heartbeat_interval: Duration::from_millis(resp.heartbeat_interval_ms),
        tx,
        inbound,
        artifact_store_url: resp.artifact_store_url,
        session_credential: resp.session_credential,
        lost_worker_timeout: Duration::from_millis(resp.lost_worker_timeout_ms),
        register_sent,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn tls_refusals_are_recognised_through_io_errors() {
        let alert = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            "received fatal alert: CertificateRequired",
        );
        let status = tonic::Status::from_error(Box::new(alert));
        assert!(tls_problem(&status).is_some());
        let pipe = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        assert!(tls_problem(&pipe).is_none());
    }

    #[test]
    fn tls_settings_need_an_https_url() {
        let tls = ClientTlsConfig::new();
        assert!(matches!(
            endpoint("http://s:1", Some(&tls)),
            Err(DialError::BadUrl { .. })
        ));
        assert!(endpoint("http://s:1", None).is_ok());
    }

    #[test]
    fn a_token_with_control_characters_is_refused_up_front() {
        assert!(JoinToken::new(Some("ok-token-0123456789")).is_ok());
        assert!(matches!(
            JoinToken::new(Some("bad\ntoken")),
            Err(DialError::BadToken(_))
        ));
    }

    #[test]
    fn a_standbys_answer_is_recognised_with_its_leader_hint() {
        let mut status = Status::unavailable("not the leader: this replica is a standby");
        status
            .metadata_mut()
            .insert(v1::LEADER_METADATA_KEY, "http://b:1".parse().unwrap());
        match not_leader("http://a:1", &status) {
            Some(DialError::NotLeader { leader, url, .. }) => {
                assert_eq!(leader.as_deref(), Some("http://b:1"));
                assert_eq!(url, "http://a:1");
            }
            other => panic!("{other:?}"),
        }
        let bare = Status::unavailable("not the leader: standby");
        assert!(matches!(
            not_leader("http://a:1", &bare),
            Some(DialError::NotLeader { leader: None, .. })
        ));
        // Any other outage is not a standby's answer.
        assert!(not_leader("http://a:1", &Status::unavailable("restarting")).is_none());
        let e = not_leader("http://a:1", &bare).unwrap();
        assert!(!e.is_fatal());
    }

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
        let refused = DialError::Call {
            call: "Connect",
            status: tonic::Status::unauthenticated("wrong token"),
        };
        assert!(refused.is_fatal());
    }
}
