//! Errors of the gRPC layer and the one mapping from engine and conversion
//! errors to gRPC status codes (client mistakes → 4xx-like codes, engine or
//! store trouble → `UNAVAILABLE`/`INTERNAL`), so workers can tell "fix your
//! request" from "retry later".

use tonic::{Code, Status};

use super::convert::ConvertError;
use crate::engine::EngineError;

/// What [`super::serve`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum GrpcError {
    #[error("gRPC server failed: {0}")]
    Transport(#[from] tonic::transport::Error),
}

pub type Result<T, E = GrpcError> = std::result::Result<T, E>;

impl From<ConvertError> for Status {
    fn from(e: ConvertError) -> Self {
        Status::invalid_argument(e.to_string())
    }
}

/// The status a worker sees for an engine error.
pub fn status_of(e: &EngineError) -> Status {
    let code = match e {
        EngineError::Stopped => Code::Unavailable,
        // The worker re-registers on NOT_FOUND (see the .proto).
        EngineError::WorkerNotFound(_) => Code::NotFound,
        EngineError::Fenced { .. } => Code::FailedPrecondition,
        // E.g. "declared lost; register again": the worker's state is wrong, not the message.
        EngineError::InvalidRequest(_) => Code::FailedPrecondition,
        EngineError::Store(_) => Code::Unavailable,
        EngineError::BadSpec { .. } => Code::Internal,
        EngineError::DagNotFound(_)
        | EngineError::RunNotFound(_)
        | EngineError::TaskNotFound { .. } => Code::NotFound,
        EngineError::DagInactive(_) | EngineError::NoSchedule(_) => Code::FailedPrecondition,
        EngineError::InvalidParams { .. } => Code::InvalidArgument,
    };
    // Store errors may name internals (URLs, SQL); keep them in the log only.
    let message = match e {
        EngineError::Store(_) => "the scheduler's database is unavailable; retry".to_owned(),
        other => other.to_string(),
    };
    Status::new(code, message)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        assert_eq!(status_of(&fenced).code(), Code::FailedPrecondition);
    }

    #[test]
    fn conversion_errors_are_invalid_argument() {
        let s: Status = ConvertError::Missing("attempt").into();
        assert_eq!(s.code(), Code::InvalidArgument);
        assert!(s.message().contains("attempt"));
    }
}
