//! Errors of the gRPC layer and the one mapping from an [`ErrorKind`] to a
//! gRPC status code, so workers can tell "fix your request" from "retry
//! later" whichever layer (engine, store, conversion) the error came from.

use tonic::{Code, Status};
use trainyard_core::error::{Classify, ErrorKind};

use super::convert::ConvertError;

/// What [`super::serve`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub type Result<T, E = GrpcError> = std::result::Result<T, E>;

/// The gRPC code of each kind (the only place that decides it).
pub const fn code_of(kind: ErrorKind) -> Code {
    match kind {
        // The worker re-registers on NOT_FOUND (see the .proto).
        ErrorKind::NotFound => Code::NotFound,
        ErrorKind::Unauthenticated => Code::Unauthenticated,
        ErrorKind::Invalid => Code::InvalidArgument,
        // gRPC's code for "a concurrency conflict; re-read and retry the sequence".
        ErrorKind::Conflict => Code::Aborted,
        ErrorKind::FailedPrecondition => Code::FailedPrecondition,
        ErrorKind::Unavailable => Code::Unavailable,
        ErrorKind::Internal => Code::Internal,
    }
}

/// The status a worker sees for any classified error: its kind's code and
/// its public message (internals stay in the scheduler's log).
pub fn status_of(e: &(impl Classify + ?Sized)) -> Status {
    let kind = e.kind();
    if matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable) {
        tracing::debug!(error = %e, kind = %kind, "answering a worker with an error");
    }
    Status::new(code_of(kind), e.public_message())
}

impl From<ConvertError> for Status {
    fn from(e: ConvertError) -> Self {
        status_of(&e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::EngineError;
    use crate::store::StoreError;
    use trainyard_core::ids::{TaskInstanceId, WorkerId};

    #[test]
    fn engine_errors_map_to_codes_a_worker_can_act_on() {
        assert_eq!(status_of(&EngineError::Stopped).code(), Code::Unavailable);
        assert_eq!(
            status_of(&EngineError::WorkerNotFound(WorkerId::new())).code(),
            Code::NotFound
        );
        let fenced = EngineError::Fenced {
            ti: TaskInstanceId::new(1),
            attempt: 1,
        };
        assert_eq!(status_of(&fenced).code(), Code::Aborted);
        let lost = EngineError::InvalidRequest("declared lost; register again".into());
        assert_eq!(status_of(&lost).code(), Code::FailedPrecondition);
    }

    #[test]
    fn conversion_errors_are_invalid_argument() {
        let s: Status = ConvertError::Missing("attempt").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("attempt"));
    }

    #[test]
    fn database_trouble_is_unavailable_and_hides_the_database_message() {
        let e = EngineError::Store(StoreError::Database(sqlx::Error::PoolTimedOut));
        let s = status_of(&e);
        assert_eq!(s.code(), Code::Unavailable);
        assert!(!s.message().contains("pool"), "{}", s.message());
        let corrupt = StoreError::Corrupt {
            table: "runs",
            detail: "state 'x' at postgres://secret@db".into(),
        };
        let s = status_of(&corrupt);
        assert_eq!(s.code(), Code::Internal);
        assert!(!s.message().contains("secret"), "{}", s.message());
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let codes: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| code_of(*k) as i32).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
    }
}
