//! The API's error taxonomy: a stable machine-readable `code`, an HTTP status,
//! and a message for people. Internal details (SQL, file paths) are logged,
//! never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::logs::LogError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    /// Logged with its detail; the client sees only "internal error".
    #[error("internal error")]
    Internal(String),
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: ErrorDetail<'a>,
}

#[derive(Serialize)]
struct ErrorDetail<'a> {
    code: &'a str,
    message: String,
}

impl ApiError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NotFound(_) => "not_found",
            Self::BadRequest(_) => "bad_request",
            Self::Conflict(_) => "conflict",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "internal",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let Self::Internal(detail) = &self {
            tracing::error!(%detail, "api request failed");
        }
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code(),
                message: self.to_string(),
            },
        };
        (self.status(), Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        match err {
            StoreError::NotFound { .. } => Self::NotFound(err.to_string()),
            StoreError::InvalidArgument(msg) => Self::BadRequest(msg),
            e if e.is_conflict() => Self::Conflict(e.to_string()),
            e => Self::Internal(e.to_string()),
        }
    }
}

impl From<LogError> for ApiError {
    fn from(err: LogError) -> Self {
        match err {
            LogError::NotFound { .. } => Self::NotFound(err.to_string()),
            LogError::BadTaskId(_) => Self::BadRequest(err.to_string()),
            LogError::Io(e) => Self::Internal(e.to_string()),
            LogError::Archive(e) => Self::Internal(e.to_string()),
        }
    }
}

pub type ApiResult<T> = Result<T, ApiError>;
