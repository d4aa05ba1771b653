//! The API's errors: an [`ErrorKind`] mapped once to an HTTP status and a
//! stable machine-readable `code`, plus a message for people. Internal
//! details (SQL, file paths, URLs) are logged, never sent: errors from the
//! store, the engine and the log store arrive through [`Classify`], whose
//! public message already leaves them out.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use trainyard_core::error::{Classify, ErrorKind};

use crate::engine::EngineError;
use crate::logs::LogError;
use crate::store::StoreError;

/// An error the API answers with.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub kind: ErrorKind,
    /// What the client reads.
    pub message: String,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: &'a str,
}

/// The HTTP status and API `code` of each kind (the only place that decides
/// them; `code` values are part of the API and listed in the OpenAPI document).
pub const fn http_of(kind: ErrorKind) -> (StatusCode, &'static str) {
    match kind {
        ErrorKind::NotFound => (StatusCode::NOT_FOUND, "not_found"),
        ErrorKind::Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated"),
        ErrorKind::Invalid => (StatusCode::BAD_REQUEST, "bad_request"),
        ErrorKind::Conflict => (StatusCode::CONFLICT, "conflict"),
        ErrorKind::FailedPrecondition => (StatusCode::CONFLICT, "failed_precondition"),
        ErrorKind::Unavailable => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
        ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
    }
}

impl ApiError {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotFound, message)
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Invalid, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Unavailable, message)
    }

    /// A classified error from another layer: its kind, its public message;
    /// the full message is logged when it is our trouble.
    pub fn of(err: &(impl Classify + ?Sized)) -> Self {
        let kind = err.kind();
        if matches!(kind, ErrorKind::Internal | ErrorKind::Unavailable) {
            tracing::warn!(error = %err, %kind, "api request failed");
        }
        Self::new(kind, err.public_message())
    }

    pub fn code(&self) -> &'static str {
        http_of(self.kind).1
    }

    pub fn status(&self) -> StatusCode {
        http_of(self.kind).0
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: &self.message,
            },
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        Self::of(&err)
    }
}

impl From<EngineError> for ApiError {
    fn from(err: EngineError) -> Self {
        Self::of(&err)
    }
}

impl From<LogError> for ApiError {
    fn from(err: LogError) -> Self {
        Self::of(&err)
    }
}

pub type ApiResult<T> = Result<T, ApiError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_has_its_own_code_and_an_error_status() {
        let codes: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| http_of(*k).1).collect();
        assert_eq!(codes.len(), ErrorKind::ALL.len());
        for kind in ErrorKind::ALL {
            let status = http_of(kind).0;
            assert_eq!(status.is_client_error(), kind.is_client_error(), "{kind}");
            assert_eq!(status.is_server_error(), !kind.is_client_error(), "{kind}");
        }
    }

    #[test]
    fn a_forbidden_transition_is_a_409_that_names_the_states() {
        let e = StoreError::ForbiddenRunTransition {
            id: trainyard_core::ids::RunId::new(),
            from: trainyard_core::state::RunState::Success,
            to: trainyard_core::state::RunState::Cancelled,
        };
        let api = ApiError::from(e);
        assert_eq!(api.status(), StatusCode::CONFLICT);
        assert!(api.message.contains("success"), "{}", api.message);
    }

    #[test]
    fn store_outages_are_503_without_database_detail() {
        let api = ApiError::from(StoreError::Database(sqlx::Error::PoolTimedOut));
        assert_eq!(api.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!api.message.contains("pool"));
    }
}
