//! Who may speak the worker protocol: join tokens on every call, and the
//! session credential that binds a worker id to the worker it was issued to.
//!
//! - **Join tokens** (`--worker-token`, `TRAINYARD_WORKER_TOKENS`) are kept
//!   only as SHA-256 digests. A worker sends its token as the metadata
//!   `authorization: Bearer <token>` on every call; [`WorkerAuth::check`]
//!   runs as a tonic interceptor before any message is decoded, so an
//!   unauthenticated caller reaches neither the engine nor the log store.
//!   With no tokens the service is open (the CLI allows that only on
//!   loopback or with mTLS, see `check_bind`).
//! - **Session credentials** are random secrets issued at Register
//!   ([`issue_credential`]); the engine keeps the digest with the worker
//!   ([`credential_digest`]) and the store persists it, so a new leader
//!   checks them too. Knowing a worker id (the API lists them) is worth
//!   nothing without its credential.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use rand::RngCore as _;
use sha2::{Digest as _, Sha256};
use tonic::metadata::MetadataMap;
use tonic::{Request, Status};

/// Metadata key carrying the join token (`Bearer <token>`).
pub const TOKEN_METADATA: &str = "authorization";
/// Shortest join token accepted (same rule as the API tokens).
pub const MIN_TOKEN_LEN: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum WorkerAuthError {
    #[error(
        "a worker join token is shorter than {MIN_TOKEN_LEN} characters; use a long random \
         secret (e.g. `openssl rand -hex 32`)"
    )]
    ShortToken,
    #[error(
        "the worker endpoint would listen on {0}, beyond loopback, without worker \
         authentication; give --worker-token TOKEN (or TRAINYARD_WORKER_TOKENS), or \
         --client-ca for mTLS, or --insecure-no-auth to accept the risk"
    )]
    OpenBeyondLoopback(SocketAddr),
}

/// The join tokens a scheduler accepts; cheap to clone.
#[derive(Clone, Default)]
pub struct WorkerAuth {
    digests: Arc<Vec<[u8; 32]>>,
}

impl fmt::Debug for WorkerAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print a token or its digest.
        f.debug_struct("WorkerAuth")
            .field("tokens", &self.digests.len())
            .finish()
    }
}

impl WorkerAuth {
    /// No join token needed (loopback, or mTLS does the authentication).
    pub fn open() -> Self {
        Self::default()
    }

    /// Requires one of `tokens`; each must be at least [`MIN_TOKEN_LEN`] long.
    pub fn with_tokens<S: AsRef<str>>(tokens: &[S]) -> Result<Self, WorkerAuthError> {
        let mut digests = Vec::with_capacity(tokens.len());
        for token in tokens {
            let token = token.as_ref().trim();
            if token.len() < MIN_TOKEN_LEN {
                return Err(WorkerAuthError::ShortToken);
            }
            digests.push(sha256(token.as_bytes()));
        }
        Ok(Self {
            digests: Arc::new(digests),
        })
    }

    pub fn is_required(&self) -> bool {
        !self.digests.is_empty()
    }

    /// Refuses an open worker endpoint beyond loopback unless mTLS
    /// authenticates workers or the operator accepted the risk.
    pub fn check_bind(
        &self,
        addr: SocketAddr,
        mtls: bool,
        insecure_no_auth: bool,
    ) -> Result<(), WorkerAuthError> {
        if self.is_required() || mtls || insecure_no_auth || addr.ip().is_loopback() {
            Ok(())
        } else {
            Err(WorkerAuthError::OpenBeyondLoopback(addr))
        }
    }

    /// The join token check, run before every call.
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn check(&self, metadata: &MetadataMap) -> Result<(), Status> {
        if !self.is_required() {
            return Ok(());
        }
        let Some(value) = metadata.get(TOKEN_METADATA) else {
            return Err(Status::unauthenticated(
                "this scheduler requires a worker join token: start the worker with \
                 --token TOKEN (or TRAINYARD_WORKER_TOKEN) set to one of the scheduler's \
                 --worker-token values",
            ));
        };
        let token = value
            .to_str()
            .ok()
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::trim)
            .unwrap_or_default();
        let presented = sha256(token.as_bytes());
        if self.digests.contains(&presented) {
            Ok(())
        } else {
            Err(Status::unauthenticated(
                "the worker join token is not one of this scheduler's --worker-token values: \
                 check the worker's --token (or TRAINYARD_WORKER_TOKEN)",
            ))
        }
    }

    /// A tonic interceptor running [`WorkerAuth::check`].
    #[allow(clippy::result_large_err)] // tonic's interceptor signature
    pub fn intercept(&self, request: Request<()>) -> Result<Request<()>, Status> {
        self.check(request.metadata())?;
        Ok(request)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

/// A fresh session credential: 32 random bytes, hex.
pub fn issue_credential() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex(&bytes)
}

/// What the engine and the store keep of a credential: its SHA-256, hex.
pub fn credential_digest(credential: &str) -> String {
    hex(&sha256(credential.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metadata(value: Option<&str>) -> MetadataMap {
        let mut m = MetadataMap::new();
        if let Some(v) = value {
            m.insert(TOKEN_METADATA, v.parse().unwrap());
        }
        m
    }

    #[test]
    fn an_open_service_needs_no_token() {
        assert!(WorkerAuth::open().check(&metadata(None)).is_ok());
    }

    #[test]
    fn a_missing_or_wrong_token_is_unauthenticated_and_names_the_flag() {
        let auth = WorkerAuth::with_tokens(&["join-token-0123456789"]).unwrap();
        let missing = auth.check(&metadata(None)).unwrap_err();
        assert_eq!(missing.code(), tonic::Code::Unauthenticated);
        assert!(missing.message().contains("--token"), "{missing}");
        let wrong = auth
            .check(&metadata(Some("Bearer join-token-9999999999")))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(wrong.message().contains("--worker-token"), "{wrong}");
        assert!(
            auth.check(&metadata(Some("Bearer join-token-0123456789")))
                .is_ok()
        );
        assert!(
            auth.check(&metadata(Some("join-token-0123456789")))
                .is_err()
        );
    }

    #[test]
    fn short_tokens_are_refused() {
        assert!(matches!(
            WorkerAuth::with_tokens(&["short"]),
            Err(WorkerAuthError::ShortToken)
        ));
    }

    #[test]
    fn an_open_endpoint_beyond_loopback_needs_tokens_mtls_or_consent() {
        let open = WorkerAuth::open();
        let lan: SocketAddr = "0.0.0.0:50051".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:50051".parse().unwrap();
        assert!(open.check_bind(lo, false, false).is_ok());
        let err = open.check_bind(lan, false, false).unwrap_err();
        assert!(err.to_string().contains("--worker-token"), "{err}");
        assert!(open.check_bind(lan, true, false).is_ok());
        assert!(open.check_bind(lan, false, true).is_ok());
        let tokens = WorkerAuth::with_tokens(&["join-token-0123456789"]).unwrap();
        assert!(tokens.check_bind(lan, false, false).is_ok());
    }

    #[test]
    fn credentials_are_random_and_digests_stable() {
        let a = issue_credential();
        assert_eq!(a.len(), 64);
        assert_ne!(a, issue_credential());
        assert_eq!(credential_digest(&a), credential_digest(&a));
        assert_ne!(credential_digest(&a), a);
    }
}
