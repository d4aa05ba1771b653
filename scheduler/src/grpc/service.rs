//! [`WorkerServiceImpl`]: Register (protocol check, validation, engine
//! registration) and the Connect handshake (Hello, then a `session` task per
//! stream).

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio_stream::StreamExt as _;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, instrument, warn};
use trainyard_proto::v1::{self, worker_message::Kind, worker_service_server::WorkerService};

use super::GrpcOptions;
use super::artifacts::ArtifactContext;
use super::auth::{credential_digest, issue_credential};
use super::convert;
use super::error::status_of;
use super::session::{Session, Sessions};
use crate::engine::EngineHandle;
use crate::logs::LogStore;

/// Messages buffered towards one worker before the session waits on it.
const OUT_BUFFER: usize = 1024;

/// The worker service over an engine and a log store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct WorkerServiceImpl {
    engine: EngineHandle,
    logs: LogStore,
    opts: GrpcOptions,
    /// Which stream currently speaks for each worker.
    sessions: Arc<Sessions>,
    /// Cancelled when the server shuts down: every session ends its stream.
    stop: CancellationToken,
    /// Artifact store and lineage; `None`: workers use the same-host fallback.
    artifacts: Option<ArtifactContext>,
}

impl WorkerServiceImpl {
    pub fn new(engine: EngineHandle, logs: LogStore, opts: GrpcOptions) -> Self {
        Self {
            engine,
            logs,
            opts,
            sessions: Arc::default(),
            stop: CancellationToken::new(),
            artifacts: None,
        }
    }

    /// Announces the artifact store to workers, names upstream attempts in
    /// assignments, records lineage and archives logs (see `artifacts`).
    pub fn with_artifacts(mut self, ctx: ArtifactContext) -> Self {
        self.artifacts = Some(ctx);
        self
    }

    pub fn options(&self) -> &GrpcOptions {
        &self.opts
    }

    /// Ends every open worker stream when cancelled ([`super::serve`] does it
    /// on shutdown).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    fn register_response(
        &self,
        accepted: bool,
        reason: String,
        worker_id: String,
        session_credential: String,
    ) -> v1::RegisterResponse {
        v1::RegisterResponse {
            accepted,
            reason,
            worker_id,
            session_credential,
            heartbeat_interval_ms: u64::try_from(self.opts.heartbeat_interval.as_millis())
                .unwrap_or(u64::MAX),
            lost_worker_timeout_ms: u64::try_from(self.opts.lost_worker_timeout.as_millis())
                .unwrap_or(u64::MAX),
            protocol_version: v1::PROTOCOL_VERSION,
            artifact_store_url: self
                .artifacts
                .as_ref()
                .map(|a| a.url.clone())
                .unwrap_or_default(),
        }
    }
}

/// The reason given to a worker that speaks another protocol version.
pub fn version_mismatch_reason(worker: u32) -> String {
    let ours = v1::PROTOCOL_VERSION;
    let upgrade = if worker > ours {
        "the scheduler"
    } else {
        "the worker"
    };
    format!(
        "worker speaks protocol {worker}, this scheduler speaks {ours}: upgrade {upgrade} so both run the same trainyard version"
    )
}

#[tonic::async_trait]
impl WorkerService for WorkerServiceImpl {
    #[instrument(skip_all, fields(name = %request.get_ref().name.chars().take(64).collect::<String>()), err)]
    async fn register(
        &self,
        request: Request<v1::RegisterRequest>,
    ) -> Result<Response<v1::RegisterResponse>, Status> {
        let req = request.into_inner();
        if req.protocol_version != v1::PROTOCOL_VERSION {
            let reason = version_mismatch_reason(req.protocol_version);
            warn!(worker_protocol = req.protocol_version, %reason, "worker rejected");
            return Ok(Response::new(self.register_response(
                false,
                reason,
                String::new(),
                String::new(),
            )));
        }
        let mut registration = convert::registration_from_proto(&req, self.opts.max_worker_gpus)?;
        // The engine binds the presented credential to an id it does not
        // know yet, else the fresh one; a known id needs its own.
        let presented = (!req.session_credential.is_empty()).then_some(req.session_credential);
        let issued = issue_credential();
        registration.credential = Some(crate::engine::CredentialClaim {
            presented: presented.as_deref().map(credential_digest),
            issued: credential_digest(&issued),
        });
        let id = self
            .engine
            .register_worker(registration)
            .await
            .map_err(|e| status_of(&e))?;
        info!(worker = %id, "worker registered over gRPC");
        Ok(Response::new(self.register_response(
            true,
            String::new(),
            id.to_string(),
            presented.unwrap_or(issued),
        )))
    }

    type ConnectStream = ReceiverStream<Result<v1::SchedulerMessage, Status>>;

    #[instrument(skip_all, err)]
    async fn connect(
        &self,
        request: Request<Streaming<v1::WorkerMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let mut inbound = request.into_inner();
        let first = match tokio::time::timeout(self.opts.hello_timeout, inbound.next()).await {
            Err(_) => {
                return Err(Status::deadline_exceeded(format!(
                    "no Hello within {:?} of opening the stream",
                    self.opts.hello_timeout
                )));
            }
            Ok(None) => {
                return Err(Status::invalid_argument(
                    "the stream ended before its Hello",
                ));
            }
            Ok(Some(Err(status))) => return Err(status),
            Ok(Some(Ok(msg))) => msg,
        };
        let Some(Kind::Hello(hello)) = first.kind else {
            return Err(Status::invalid_argument(
                "the first message on a Connect stream must be Hello",
            ));
        };
        let worker = convert::worker_id(&hello.worker_id)?;
        let running = convert::running_from_proto(&hello.running)?;
        // Before this stream may supersede the worker's current one: only
        // the holder of the id's session credential speaks for it.
        let credential = (!hello.session_credential.is_empty())
            .then(|| credential_digest(&hello.session_credential));
        self.engine
            .authenticate_worker(worker, credential)
            .await
            .map_err(|e| status_of(&e))?;
        let generation = self.sessions.begin(worker);
        let link = match self.engine.connect_worker(worker, running.clone()).await {
            Ok(link) => link,
            Err(e) => {
                self.sessions.end(worker, generation);
                return Err(status_of(&e));
            }
        };
        info!(%worker, running = running.len(), "worker connected");
        let (out, rx) = mpsc::channel(OUT_BUFFER);
        let session = Session::new(
            self.engine.clone(),
            self.logs.clone(),
            worker,
            generation,
            self.sessions.clone(),
            link,
            out,
            self.artifacts.clone(),
        );
        tokio::spawn(session.run(inbound, self.stop.clone()));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mismatch_reason_names_both_versions_and_what_to_upgrade() {
        let r = version_mismatch_reason(v1::PROTOCOL_VERSION + 1);
        assert!(
            r.contains(&format!("protocol {}", v1::PROTOCOL_VERSION + 1)),
            "{r}"
        );
        assert!(
            r.contains(&format!("speaks {}", v1::PROTOCOL_VERSION)),
            "{r}"
        );
        assert!(r.contains("upgrade the scheduler"), "{r}");
        assert!(version_mismatch_reason(0).contains("upgrade the worker"));
    }
}
