//! One error taxonomy for every layer.
//!
//! Each module keeps its own `thiserror` enum (what went wrong, with the
//! values), and every such enum says which [`ErrorKind`] it is through
//! [`Classify`]. The transports map a kind to their own vocabulary exactly
//! once: `scheduler::grpc::error` to gRPC codes, `scheduler::http::error` to
//! HTTP statuses. So "a stale report" is the same thing to a worker (gRPC
//! `ABORTED`), to the API (409) and in the logs, and adding an error variant
//! never needs a new arm in a transport.

use std::fmt;

/// What kind of failure an error is, as far as a caller can act on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The thing named does not exist (an unknown run, DAG, task, worker).
    NotFound,
    /// The caller did not prove who it is (a missing or wrong worker
    /// credential): it must fix its credentials, not retry.
    Unauthenticated,
    /// The request itself is wrong (bad params, malformed id or message);
    /// sending it again unchanged fails again.
    Invalid,
    /// Someone else changed the thing first (a compare-and-set that missed,
    /// a fenced stale report): re-read, then decide again.
    Conflict,
    /// The request is well formed but the system is not in a state that
    /// allows it (a finished run cancelled, a paused DAG, a newer schema).
    FailedPrecondition,
    /// Trouble on our side that should pass (database down, engine
    /// stopped, a standby): the same request may succeed later.
    Unavailable,
    /// A bug or corrupt data: not the caller's fault, not worth retrying.
    Internal,
}

impl ErrorKind {
    /// Every kind, for exhaustive tests of the transport mappings.
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::NotFound,
        ErrorKind::Unauthenticated,
        ErrorKind::Invalid,
        ErrorKind::Conflict,
        ErrorKind::FailedPrecondition,
        ErrorKind::Unavailable,
        ErrorKind::Internal,
    ];

    /// A stable snake_case name (logs, metrics labels).
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "not_found",
            ErrorKind::Unauthenticated => "unauthenticated",
            ErrorKind::Invalid => "invalid",
            ErrorKind::Conflict => "conflict",
            ErrorKind::FailedPrecondition => "failed_precondition",
            ErrorKind::Unavailable => "unavailable",
            ErrorKind::Internal => "internal",
        }
    }

    /// The caller has to change something (the request, or what it
    /// believes about the system) before trying again.
    pub const fn is_client_error(self) -> bool {
        matches!(
            self,
            ErrorKind::NotFound
                | ErrorKind::Unauthenticated
                | ErrorKind::Invalid
                | ErrorKind::Conflict
                | ErrorKind::FailedPrecondition
        )
    }

    /// The same request may succeed if repeated later, unchanged.
    pub const fn is_retryable(self) -> bool {
        matches!(self, ErrorKind::Unavailable)
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that knows its [`ErrorKind`].
pub trait Classify: fmt::Display {
    fn kind(&self) -> ErrorKind;

    /// What a remote caller may read. By default the message itself; an
    /// error whose message can carry internals (SQL, URLs with credentials,
    /// local paths) overrides it, and the transports log the full message.
    fn public_message(&self) -> String {
        self.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unavailable_is_worth_repeating_and_it_is_never_the_callers_fault() {
        for kind in ErrorKind::ALL {
            assert_eq!(kind.is_retryable(), kind == ErrorKind::Unavailable);
            if kind.is_retryable() {
                assert!(!kind.is_client_error());
            }
        }
        assert!(!ErrorKind::Internal.is_client_error());
    }

    #[test]
    fn names_are_distinct_snake_case() {
        let names: std::collections::HashSet<_> =
            ErrorKind::ALL.iter().map(|k| k.as_str()).collect();
        assert_eq!(names.len(), ErrorKind::ALL.len());
        assert!(
            names
                .iter()
                .all(|n| n.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        );
    }
}
