//! The error taxonomy of artifact storage. Every variant names the URL, key
//! or local path it is about, so a failed upload in a worker log says which
//! file and which object it was.

use std::path::PathBuf;

/// Result alias for this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong while configuring a store or moving artifacts.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The store URL could not be understood (unknown scheme, missing bucket…).
    #[error("invalid artifact store url {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },

    /// A `(key, value)` option passed to the store builder is not known to it.
    #[error("invalid option {key:?} for artifact store {url:?}: {reason}")]
    InvalidOption {
        url: String,
        key: String,
        reason: String,
    },

    /// A key or relative path would leave its prefix or directory (`..`,
    /// absolute, empty segment) or contains characters a key cannot hold.
    #[error("unsafe artifact key {key:?}: {reason}")]
    UnsafeKey { key: String, reason: String },

    /// An id used to build a run/task/attempt prefix is empty or holds `/`.
    #[error("invalid {what} {value:?} in artifact layout: {reason}")]
    InvalidId {
        what: &'static str,
        value: String,
        reason: &'static str,
    },

    /// The object does not exist; the API maps this to 404.
    #[error("artifact not found: {uri}")]
    NotFound { uri: String },

    /// The object store backend failed (network, auth, backend error).
    #[error("object store error on {uri}: {source}")]
    Store {
        uri: String,
        #[source]
        source: object_store::Error,
    },

    /// Reading or writing a local file failed.
    #[error("local i/o error on {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    /// A download ended with a different size than the listing announced
    /// (the object changed underneath, or the connection was cut).
    #[error("artifact {uri} downloaded {got} bytes, expected {expected}")]
    SizeMismatch {
        uri: String,
        expected: u64,
        got: u64,
    },

    /// A stored log is not valid UTF-8.
    #[error("artifact {uri} is not valid utf-8")]
    NotUtf8 { uri: String },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    /// Wraps a backend error, turning "not found" into [`Error::NotFound`] so
    /// callers can tell a missing log from a broken store.
    pub(crate) fn store(uri: impl Into<String>, source: object_store::Error) -> Self {
        let uri = uri.into();
        match source {
            object_store::Error::NotFound { .. } => Self::NotFound { uri },
            source => Self::Store { uri, source },
        }
    }

    /// True when the object simply does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}
