//! Typed identifiers (newtypes) for DAGs, runs, task instances, attempts and workers.
//!
//! Every id that crosses a module boundary is one of these types, so a run id can
//! never be passed where a worker id is expected. All of them print with
//! `Display`, parse with `FromStr` and serialise transparently (a JSON string or
//! number, exactly as the inner value would).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why a string could not be parsed into an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    #[error("{kind} must not be empty")]
    Empty { kind: &'static str },
    #[error("{kind} {value:?} is not valid: {reason}")]
    Invalid {
        kind: &'static str,
        value: String,
        reason: String,
    },
}

macro_rules! string_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// Wraps a string without validation (the DAG parser validates names).
            pub fn new(value: impl Into<String>) -> Self {
                Self(value.into())
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub fn into_inner(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                Ok(Self(s.to_owned()))
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> Self {
                Self(s.to_owned())
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> Self {
                Self(s)
            }
        }
    };
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            /// A new time-ordered (UUID v7) id: ids sort by creation time, which
            /// keeps B-tree inserts local and makes cursor pagination by id follow
            /// creation order.
            pub fn new() -> Self {
                Self(Uuid::now_v7())
            }

            pub const fn from_uuid(uuid: Uuid) -> Self {
                Self(uuid)
            }

            pub const fn as_uuid(&self) -> Uuid {
                self.0
            }
        }

        impl Default for $name {
            fn default() -> Self {
                Self::new()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                Uuid::parse_str(s).map(Self).map_err(|e| IdError::Invalid {
                    kind: $kind,
                    value: s.to_owned(),
                    reason: e.to_string(),
                })
            }
        }

        impl From<Uuid> for $name {
            fn from(uuid: Uuid) -> Self {
                Self(uuid)
            }
        }
    };
}

macro_rules! int_id {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(i64);

        impl $name {
            pub const fn new(value: i64) -> Self {
                Self(value)
            }

            pub const fn get(self) -> i64 {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                fmt::Display::fmt(&self.0, f)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                if s.is_empty() {
                    return Err(IdError::Empty { kind: $kind });
                }
                s.parse::<i64>().map(Self).map_err(|e| IdError::Invalid {
                    kind: $kind,
                    value: s.to_owned(),
                    reason: e.to_string(),
                })
            }
        }

        impl From<i64> for $name {
            fn from(value: i64) -> Self {
                Self(value)
            }
        }
    };
}

string_id!(
    /// A DAG's id as written in its file (`id = "churn_retrain"`).
    DagId,
    "dag id"
);
string_id!(
    /// A task's name within its DAG (`[tasks.train]` → `train`).
    TaskId,
    "task id"
);
uuid_id!(
    /// One run of a DAG (UUID v7, so ids sort by creation time).
    RunId,
    "run id"
);
uuid_id!(
    /// A worker process; chosen by the worker and kept across reconnects.
    WorkerId,
    "worker id"
);
int_id!(
    /// One task of one run (database row id).
    TaskInstanceId,
    "task instance id"
);
int_id!(
    /// One try of a task instance (database row id). The attempt *number*
    /// within the task instance is a plain `i32` and is the fencing token.
    AttemptId,
    "attempt id"
);
int_id!(
    /// One registered version of a DAG (database row id).
    DagVersionId,
    "dag version id"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_ids_round_trip_through_display_and_from_str() {
        let run = RunId::new();
        let parsed: RunId = run.to_string().parse().unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(run, parsed);
        let worker = WorkerId::new();
        assert_eq!(
            worker,
            worker
                .to_string()
                .parse::<WorkerId>()
                .unwrap_or_else(|e| panic!("{e}"))
        );
    }

    #[test]
    fn run_ids_sort_by_creation_time() {
        let a = RunId::new();
        let b = RunId::new();
        assert!(a < b);
    }

    #[test]
    fn bad_ids_are_refused_with_their_kind() {
        assert_eq!("".parse::<DagId>(), Err(IdError::Empty { kind: "dag id" }));
        let err = "nope"
            .parse::<RunId>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.starts_with("run id \"nope\" is not valid"), "{err}");
        assert!("12x".parse::<TaskInstanceId>().is_err());
        assert_eq!("42".parse::<TaskInstanceId>(), Ok(TaskInstanceId::new(42)));
    }

    #[test]
    fn ids_serialise_transparently() {
        let json = serde_json::to_string(&DagId::new("churn")).unwrap_or_default();
        assert_eq!(json, "\"churn\"");
        let json = serde_json::to_string(&TaskInstanceId::new(7)).unwrap_or_default();
        assert_eq!(json, "7");
        let back: TaskId = serde_json::from_str("\"train\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, TaskId::new("train"));
    }
}
