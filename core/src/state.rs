//! Run and task state machines: the states and the pure transition function.
//!
//! The store mirrors every enum here with a SQL `CHECK` constraint on the same
//! snake_case strings ([`TaskState::as_str`] and friends), and checks
//! [`TaskState::can_transition`] / [`RunState::can_transition`] before it writes,
//! so a transition forbidden here can never reach the database.
//!
//! Task life cycle (attempt numbers only ever grow; they are the fencing token):
//!
//! ```text
//! pending ──► ready ──► assigned ──► running ──► success
//!    │          │          │   │        ├──────► failed          (no retries left)
//!    │          │          │   │        ├──────► up_for_retry ──► ready (retry time reached)
//!    │          │          │   │        └──────► lost ──► up_for_retry | failed
//!    │          │          │   └► ready (handed back before it started)
//!    │          │          └► lost | failed (could not start)
//!    ├► skipped / upstream_failed / cancelled       (any non-terminal → cancelled)
//!    terminal (success, failed, upstream_failed, skipped, cancelled) ──► pending (clear)
//! ```
//!
//! `lost` is deliberately *not* terminal: it records that the worker holding the
//! attempt vanished, and the engine then decides between `up_for_retry` and
//! `failed` with the task's retry policy, which the store does not know.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A string that names no state of the given kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {kind} {value:?} (expected one of: {expected})")]
pub struct ParseStateError {
    pub kind: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Declares a field-less enum whose variants map one-to-one to snake_case strings.
macro_rules! string_enum {
    (
        $(#[$doc:meta])*
        $name:ident, $kind:literal {
            $( $(#[$vdoc:meta])* $variant:ident = $s:literal ),+ $(,)?
        }
    ) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $( $(#[$vdoc])* $variant ),+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The string stored in the database and used in the API.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $s),+
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $name {
            type Err = ParseStateError;
            fn from_str(s: &str) -> Result<Self, ParseStateError> {
                match s {
                    $($s => Ok($name::$variant),)+
                    _ => Err(ParseStateError {
                        kind: $kind,
                        value: s.to_owned(),
                        expected: concat!($($s, " "),+),
                    }),
                }
            }
        }
    };
}

string_enum! {
    /// State of a DAG run.
    RunState, "run state" {
        /// Created, waiting for a slot under `max_active_runs`.
        Queued = "queued",
        Running = "running",
        Success = "success",
        Failed = "failed",
        Cancelled = "cancelled",
    }
}

string_enum! {
    /// State of one task instance (one task of one run).
    TaskState, "task state" {
        /// Waiting for its upstream tasks.
        Pending = "pending",
        /// Dependencies met; waiting to be placed on a worker.
        Ready = "ready",
        /// Placed on a worker (queued there), not started yet.
        Assigned = "assigned",
        Running = "running",
        Success = "success",
        Failed = "failed",
        /// The last attempt failed and retries are left; `next_retry_at` says when.
        UpForRetry = "up_for_retry",
        UpstreamFailed = "upstream_failed",
        Skipped = "skipped",
        Cancelled = "cancelled",
        /// The worker holding the attempt vanished; the engine retries or fails it.
        Lost = "lost",
    }
}

string_enum! {
    /// What started a run.
    TriggerKind, "trigger kind" {
        /// A cron slot; exists at most once per (dag, logical date).
        Schedule = "schedule",
        Manual = "manual",
        Backfill = "backfill",
    }
}

string_enum! {
    /// How one attempt ended (recorded on the attempt, beside the task's state).
    AttemptOutcome, "attempt outcome" {
        Success = "success",
        Failed = "failed",
        TimedOut = "timed_out",
        Lost = "lost",
        Cancelled = "cancelled",
        /// Returned unstarted (worker draining or refusing); not a real try.
        HandedBack = "handed_back",
    }
}

string_enum! {
    /// Liveness of a registered worker.
    WorkerState, "worker state" {
        Active = "active",
        /// Takes no new work; finishing what it runs.
        Draining = "draining",
        /// Missed its heartbeats; its attempts were marked lost.
        Lost = "lost",
        /// Disconnected cleanly.
        Offline = "offline",
    }
}

impl RunState {
    /// A run in a terminal state does nothing more unless it is cleared.
    pub const fn is_terminal(self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Cancelled)
    }

    /// Whether a run may move from `from` to `to`.
    ///
    /// A finished run may go back to `queued` when some of its tasks are cleared
    /// for a re-run.
    pub const fn can_transition(from: RunState, to: RunState) -> bool {
        use RunState::*;
        matches!(
            (from, to),
            (Queued, Running | Failed | Cancelled)
                | (Running, Success | Failed | Cancelled)
                | (Success | Failed | Cancelled, Queued)
        )
    }
}

impl TaskState {
    /// A terminal task does nothing more unless it is cleared (→ `pending`).
    pub const fn is_terminal(self) -> bool {
        use TaskState::*;
        matches!(
            self,
            Success | Failed | UpstreamFailed | Skipped | Cancelled
        )
    }

    /// Whether an attempt currently holds (or is about to hold) worker resources.
    pub const fn holds_worker(self) -> bool {
        matches!(self, Self::Assigned | Self::Running)
    }

    /// Whether a task may move from `from` to `to`. Pure; see the module docs.
    pub const fn can_transition(from: TaskState, to: TaskState) -> bool {
        use TaskState::*;
        match (from, to) {
            (Pending, Ready | Skipped | UpstreamFailed | Cancelled) => true,
            (Ready, Assigned | Skipped | Cancelled) => true,
            // Assigned → Ready: handed back unstarted. Failed: could not start.
            (Assigned, Running | Ready | Lost | Failed | Cancelled) => true,
            (Running, Success | Failed | UpForRetry | Lost | Cancelled) => true,
            (UpForRetry, Ready | Cancelled) => true,
            (Lost, UpForRetry | Failed | Cancelled) => true,
            // Clear / retry of a finished task.
            (Success | Failed | UpstreamFailed | Skipped | Cancelled, Pending) => true,
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    const ALLOWED_TASK: &[(TaskState, TaskState)] = &[
        (Pending, Ready),
        (Pending, Skipped),
        (Pending, UpstreamFailed),
        (Pending, Cancelled),
        (Ready, Assigned),
        (Ready, Skipped),
        (Ready, Cancelled),
        (Assigned, Running),
        (Assigned, Ready),
        (Assigned, Lost),
        (Assigned, Failed),
        (Assigned, Cancelled),
        (Running, Success),
        (Running, Failed),
        (Running, UpForRetry),
        (Running, Lost),
        (Running, Cancelled),
        (UpForRetry, Ready),
        (UpForRetry, Cancelled),
        (Lost, UpForRetry),
        (Lost, Failed),
        (Lost, Cancelled),
        (Success, Pending),
        (Failed, Pending),
        (UpstreamFailed, Pending),
        (Skipped, Pending),
        (Cancelled, Pending),
    ];

    #[test]
    fn every_listed_task_transition_is_allowed_and_nothing_else() {
        for &from in TaskState::ALL {
            for &to in TaskState::ALL {
                let expected = ALLOWED_TASK.contains(&(from, to));
                assert_eq!(
                    TaskState::can_transition(from, to),
                    expected,
                    "{from} -> {to} should be {}",
                    if expected { "allowed" } else { "forbidden" }
                );
            }
        }
    }

    #[test]
    fn notable_forbidden_task_transitions() {
        // A finished task cannot silently change its outcome.
        assert!(!TaskState::can_transition(Success, Failed));
        assert!(!TaskState::can_transition(Failed, Success));
        // Nothing runs without being placed first.
        assert!(!TaskState::can_transition(Ready, Running));
        assert!(!TaskState::can_transition(Pending, Running));
        // A retry goes back through the queue, never straight to running.
        assert!(!TaskState::can_transition(UpForRetry, Running));
        // No self-loops: a repeated report is a conflict, not a no-op write.
        for &s in TaskState::ALL {
            assert!(!TaskState::can_transition(s, s), "{s} -> {s}");
        }
    }

    #[test]
    fn terminal_task_states_only_leave_by_being_cleared() {
        for &from in TaskState::ALL.iter().filter(|s| s.is_terminal()) {
            for &to in TaskState::ALL {
                assert_eq!(
                    TaskState::can_transition(from, to),
                    to == Pending,
                    "{from} -> {to}"
                );
            }
        }
        assert!(
            !Lost.is_terminal(),
            "lost waits for the engine's retry decision"
        );
        assert!(!UpForRetry.is_terminal());
    }

    #[test]
    fn run_transitions() {
        use RunState::*;
        let allowed = [
            (Queued, Running),
            (Queued, Failed),
            (Queued, Cancelled),
            (Running, Success),
            (Running, Failed),
            (Running, Cancelled),
            (Success, Queued),
            (Failed, Queued),
            (Cancelled, Queued),
        ];
        for &from in RunState::ALL {
            for &to in RunState::ALL {
                assert_eq!(
                    RunState::can_transition(from, to),
                    allowed.contains(&(from, to)),
                    "{from} -> {to}"
                );
            }
        }
        assert!(!RunState::can_transition(Success, Failed));
        assert!(!RunState::can_transition(Queued, Success));
    }

    #[test]
    fn states_round_trip_through_their_sql_strings() {
        for &s in TaskState::ALL {
            assert_eq!(s.as_str().parse::<TaskState>(), Ok(s));
            assert_eq!(
                serde_json::to_string(&s).unwrap_or_default(),
                format!("\"{}\"", s.as_str())
            );
        }
        for &s in RunState::ALL {
            assert_eq!(s.as_str().parse::<RunState>(), Ok(s));
        }
        for &s in TriggerKind::ALL {
            assert_eq!(s.as_str().parse::<TriggerKind>(), Ok(s));
        }
        for &s in AttemptOutcome::ALL {
            assert_eq!(s.as_str().parse::<AttemptOutcome>(), Ok(s));
        }
        for &s in WorkerState::ALL {
            assert_eq!(s.as_str().parse::<WorkerState>(), Ok(s));
        }
        assert_eq!(UpForRetry.as_str(), "up_for_retry");
        assert_eq!(UpstreamFailed.as_str(), "upstream_failed");
    }

    #[test]
    fn unknown_state_strings_say_what_was_expected() {
        let err = "done"
            .parse::<TaskState>()
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("unknown task state \"done\""), "{err}");
        assert!(err.contains("up_for_retry"), "{err}");
    }
}
