//! TLS for both listeners of the scheduler: the worker gRPC endpoint (tonic's
//! rustls server) and the HTTP API (a [`TlsListener`] that axum serves).
//! Certificates and keys are PEM files; `--client-ca` turns on mTLS for
//! workers (a worker without a certificate signed by that CA cannot finish
//! the handshake).
//!
//! rustls is compiled with both of its crypto backends in this binary (the
//! object-store clients pull in ring), so it cannot pick one on its own:
//! [`install_crypto_provider`] makes aws-lc-rs the process default before
//! any TLS configuration is built.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tracing::debug;

/// How long a client may take to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for axum to take them.
const ACCEPT_QUEUE: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("{what} {path} holds no PEM certificate")]
    Empty { what: &'static str, path: PathBuf },
    #[error("the TLS settings are not usable: {0}")]
    Config(String),
}

/// Where the scheduler's certificate, key and (for mTLS) client CA are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// Require worker client certificates signed by this CA (mTLS, gRPC only).
    pub client_ca: Option<PathBuf>,
}

/// Makes aws-lc-rs rustls' process-wide provider (idempotent).
pub fn install_crypto_provider() {
    // Err means a provider is already installed, which is what we want.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

fn read_pem(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|e| TlsError::Read {
        what,
        path: path.to_owned(),
        source: rustls::pki_types::pem::Error::Io(e),
    })
}

fn certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

impl TlsFiles {
    /// The gRPC server's TLS settings (checked by parsing the files now, so
    /// a bad file stops the start with its name rather than the first
    /// handshake).
    pub fn grpc_config(&self) -> Result<tonic::transport::ServerTlsConfig, TlsError> {
        install_crypto_provider();
        // Parse to fail early with the file's name; tonic re-parses the PEM.
        self.rustls_config(false)?;
        let cert = read_pem("certificate", &self.cert)?;
        let key = read_pem("private key", &self.key)?;
        let mut config = tonic::transport::ServerTlsConfig::new()
            .identity(tonic::transport::Identity::from_pem(cert, key));
        if let Some(ca) = &self.client_ca {
            let ca = read_pem("client CA", ca)?;
            config = config.client_ca_root(tonic::transport::Certificate::from_pem(ca));
        }
        Ok(config)
    }

    /// A rustls server configuration; with `with_client_ca`, client
    /// certificates signed by the client CA are required.
    pub fn rustls_config(&self, with_client_ca: bool) -> Result<rustls::ServerConfig, TlsError> {
        install_crypto_provider();
        let chain = certs("certificate", &self.cert)?;
        let key = PrivateKeyDer::from_pem_file(&self.key).map_err(|source| TlsError::Read {
            what: "private key",
            path: self.key.clone(),
            source,
        })?;
        let builder = rustls::ServerConfig::builder();
        let builder = match (&self.client_ca, with_client_ca) {
            (Some(ca), true) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs("client CA", ca)? {
                    roots.add(cert).map_err(|e| {
                        TlsError::Config(format!("client CA {}: {e}", ca.display()))
                    })?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| TlsError::Config(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
            _ => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| {
            TlsError::Config(format!(
                "{} does not match {}: {e}",
                self.key.display(),
                self.cert.display()
            ))
        })?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}

/// A listener that hands axum TLS streams. Handshakes run on their own
/// tasks (bounded by [`HANDSHAKE_TIMEOUT`]), so one slow or hostile client
/// never holds up the others; a failed handshake is logged at debug and
/// dropped.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    accept_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> std::io::Result<Self> {
        let local = listener.local_addr()?;
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let accept = tokio::spawn(async move {
            loop {
                let (tcp, peer) = match listener.accept().await {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Out of file descriptors and the like: back off a little.
                        debug!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = tcp.set_nodelay(true);
                if tx.is_closed() {
                    return;
                }
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = tx.send((stream, peer)).await;
                        }
                        Ok(Err(e)) => debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => debug!(%peer, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(Self {
            local,
            rx,
            accept_task: accept,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accept_task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept task only ends when this listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
