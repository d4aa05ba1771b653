//! Why an attempt could not run: everything that can fail between an
//! `Assign` and the task's process starting, or while its outputs are kept.
//!
//! The message becomes the attempt's error (the scheduler stores it, the UI
//! shows it) and a line of the task's log, so each variant names the
//! directory, upstream or store it is about. [`Classify`] says whether it is
//! the assignment's fault or this machine's.

use std::path::PathBuf;

use trainyard_core::error::{Classify, ErrorKind};

/// What an attempt failed with before (or around) its process.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    /// The assignment cannot be run as sent (an id that cannot name a
    /// directory, a field that does not convert).
    #[error("the assignment cannot run: {0}")]
    BadAssignment(String),
    /// The attempt's directories could not be made.
    #[error("preparing {}: {source}", path.display())]
    Workdir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An upstream task's outputs could not be downloaded.
    #[error("downloading the outputs of `{upstream}`: {source}")]
    Inputs {
        upstream: String,
        #[source]
        source: trainyard_artifacts::Error,
    },
    /// The attempt's outputs could not be uploaded.
    #[error("uploading outputs: {0}")]
    Outputs(#[source] trainyard_artifacts::Error),
    /// A file of the DAG version's code could not be fetched.
    #[error("fetching the DAG version's code file {path}: {source}")]
    Code {
        path: String,
        #[source]
        source: trainyard_artifacts::Error,
    },
    /// A fetched code file does not have the digest the version recorded.
    #[error(
        "the DAG version's code file {path} in the artifact store is corrupt: its sha256 is {found}, the version recorded {expected}"
    )]
    CodeCorrupt {
        path: String,
        expected: String,
        found: String,
    },
    /// The configured artifact store cannot be opened on this worker.
    #[error("{0}")]
    StoreUnusable(String),
    /// The process could not be started.
    #[error(transparent)]
    Launch(#[from] crate::exec::ExecError),
    /// A kill or cancel arrived before the process started.
    #[error("stopped before it started")]
    Stopped,
}

impl Classify for AttemptError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::BadAssignment(_) => ErrorKind::Invalid,
            Self::Launch(crate::exec::ExecError::EmptyArgv) => ErrorKind::Invalid,
            // The command or its working directory does not exist here.
            Self::Launch(_) => ErrorKind::FailedPrecondition,
            Self::CodeCorrupt { .. } => ErrorKind::Internal,
            Self::Inputs { source, .. } | Self::Outputs(source) | Self::Code { source, .. } => {
                match source {
                    trainyard_artifacts::Error::NotFound { .. } => ErrorKind::NotFound,
                    trainyard_artifacts::Error::Store { .. } => ErrorKind::Unavailable,
                    _ => ErrorKind::Internal,
                }
            }
            Self::StoreUnusable(_) => ErrorKind::FailedPrecondition,
            Self::Workdir { .. } => ErrorKind::Internal,
            Self::Stopped => ErrorKind::Conflict,
        }
    }
}

impl AttemptError {
    /// The command itself cannot start on any attempt: its program is not
    /// found or not executable (or the command is empty). Reported as
    /// `TASK_OUTCOME_CANNOT_START` so the scheduler does not spend retries
    /// on it. A missing working directory is not counted: it may be this
    /// worker's layout, and another worker may have it.
    pub fn cannot_start(&self) -> bool {
        use std::io::ErrorKind as Io;
        match self {
            Self::Launch(crate::exec::ExecError::EmptyArgv) => true,
            Self::Launch(crate::exec::ExecError::Spawn { source, .. }) => {
                matches!(source.kind(), Io::NotFound | Io::PermissionDenied)
            }
            _ => false,
        }
    }

    pub(crate) fn workdir(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Workdir { path, source }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_names_the_place_and_the_kind_says_whose_fault() {
        let e = AttemptError::Workdir {
            path: "/w/run/t/1".into(),
            source: std::io::Error::other("disk full"),
        };
        assert_eq!(e.to_string(), "preparing /w/run/t/1: disk full");
        assert_eq!(e.kind(), ErrorKind::Internal);
        let bad = AttemptError::BadAssignment("run id \"..\" cannot name a directory".into());
        assert!(bad.kind().is_client_error());
    }
}
