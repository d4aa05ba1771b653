//! The store's error taxonomy: what went wrong, what was expected, what was found.
//!
//! Conflicts (a compare-and-set that found another state or attempt) are normal
//! under concurrency and tell the caller to re-read; `SchemaTooNew` and
//! `UnsupportedUrl` are configuration errors a user must fix; `Database` wraps
//! everything sqlx reports and is worth retrying only when [`StoreError::is_retryable`].

use trainyard_core::error::{Classify, ErrorKind};
use trainyard_core::ids::{RunId, TaskInstanceId};
use trainyard_core::state::{RunState, TaskState};

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(
        "unsupported database url {url:?}: expected postgres://…, postgresql://… or sqlite:PATH"
    )]
    UnsupportedUrl { url: String },

    #[error(
        "database schema version {found} is newer than this trainyard binary (knows up to {known}); upgrade trainyard"
    )]
    SchemaTooNew { found: i64, known: i64 },

    #[error("{entity} {id} not found")]
    NotFound { entity: &'static str, id: String },

    /// A task compare-and-set did not match: someone else moved it first, or the
    /// report is for an attempt that is no longer current (fencing).
    #[error(
        "task instance {id} of run {run}: expected state {expected_state} attempt {expected_attempt}, found {found_state} attempt {found_attempt}"
    )]
    TaskConflict {
        id: TaskInstanceId,
        run: RunId,
        expected_state: TaskState,
        expected_attempt: i32,
        found_state: TaskState,
        found_attempt: i32,
    },

    /// An assignment found its task no longer `ready` at the expected attempt.
    #[error("task instance {id} is no longer ready at attempt {attempt}; nothing was assigned")]
    NotReady { id: TaskInstanceId, attempt: i32 },

    #[error("run {id}: expected state {expected}, found {found}")]
    RunConflict {
        id: RunId,
        expected: RunState,
        found: RunState,
    },

    #[error("task instance {id}: transition {from} -> {to} is not allowed")]
    ForbiddenTaskTransition {
        id: TaskInstanceId,
        from: TaskState,
        to: TaskState,
    },

    #[error("run {id}: transition {from} -> {to} is not allowed")]
    ForbiddenRunTransition {
        id: RunId,
        from: RunState,
        to: RunState,
    },

    #[error("invalid request: {0}")]
    InvalidArgument(String),

    /// A row holds a value the code does not know (e.g. an unknown state string).
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },

    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),

    /// The store could not be used for a while (a failed transaction seen
    /// again, a re-read that failed); the same request may succeed later.
    #[error("database unavailable: {0}")]
    Unavailable(String),

    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),

    /// An engine write under a leadership term the lease no longer carries:
    /// another replica took the lease over (or it was never this term's).
    /// Nothing was written. Unavailable rather than failed precondition: the
    /// request itself is fine and succeeds on the replica that leads now;
    /// the engine does not retry it but ends its term (see `crate::ha`).
    #[error(
        "not the leader: this scheduler wrote under term {term} of HA group {group:?}, but the lease {}; \
         nothing was written (another replica leads now; this one steps down)",
        match current { Some(t) => format!("has term {t} now"), None => "is gone".to_owned() }
    )]
    NotLeader {
        group: String,
        term: i64,
        /// The lease's term now (`None`: no lease row).
        current: Option<i64>,
    },
}

impl Classify for StoreError {
    fn kind(&self) -> ErrorKind {
        match self {
            Self::NotFound { .. } => ErrorKind::NotFound,
            Self::UnsupportedUrl { .. } | Self::InvalidArgument(_) => ErrorKind::Invalid,
            Self::TaskConflict { .. } | Self::RunConflict { .. } | Self::NotReady { .. } => {
                ErrorKind::Conflict
            }
            // A transition the state machine forbids (cancel a finished run):
            // the request is fine, the task or run is past it.
            Self::ForbiddenTaskTransition { .. }
            | Self::ForbiddenRunTransition { .. }
            | Self::SchemaTooNew { .. } => ErrorKind::FailedPrecondition,
            Self::Unavailable(_) | Self::NotLeader { .. } => ErrorKind::Unavailable,
            Self::Database(_) if self.is_retryable() => ErrorKind::Unavailable,
            Self::Database(_) | Self::Corrupt { .. } | Self::Migrate(_) => ErrorKind::Internal,
        }
    }

    /// Database messages can name hosts, schemas and SQL: callers outside
    /// the process get a sentence, the log gets the detail.
    fn public_message(&self) -> String {
        match self.kind() {
            _ if self.is_not_leader() => {
                "this scheduler replica is no longer the leader; retry (another replica leads)"
                    .to_owned()
            }
            ErrorKind::Unavailable => "the scheduler's database is unavailable; retry".to_owned(),
            ErrorKind::Internal => {
                "internal database error (the scheduler log has the detail)".to_owned()
            }
            _ => self.to_string(),
        }
    }
}

impl StoreError {
    /// A compare-and-set lost a race or a report was fenced off: re-read, do not retry blindly.
    pub fn is_conflict(&self) -> bool {
        matches!(
            self,
            Self::TaskConflict { .. } | Self::RunConflict { .. } | Self::NotReady { .. }
        )
    }

    /// The task instance a conflict is about, if it names one.
    pub fn conflict_task(&self) -> Option<TaskInstanceId> {
        match self {
            Self::TaskConflict { id, .. } | Self::NotReady { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The run a conflict is about, if it names one.
    pub fn conflict_run(&self) -> Option<RunId> {
        match self {
            Self::TaskConflict { run, .. } => Some(*run),
            Self::RunConflict { id, .. } => Some(*id),
            _ => None,
        }
    }

    /// The write was refused because a newer leadership term exists: retrying
    /// it here cannot succeed, the term is over.
    pub fn is_not_leader(&self) -> bool {
        matches!(self, Self::NotLeader { .. })
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }

    /// Transient database trouble (connection lost, pool timeout, serialization
    /// failure, SQLite busy): the same call may succeed if repeated.
    pub fn is_retryable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Database(e) => match e {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed => true,
                sqlx::Error::Database(db) => matches!(
                    db.code().as_deref(),
                    // serialization_failure, deadlock_detected, admin_shutdown,
                    // lock_not_available (`lock_timeout`: a frozen session's row
                    // locks), idle_in_transaction_session_timeout,
                    // SQLITE_BUSY, SQLITE_LOCKED
                    Some("40001" | "40P01" | "57P01" | "55P03" | "25P03" | "5" | "6" | "517")
                ),
                _ => false,
            },
            _ => false,
        }
    }

    pub(crate) fn not_found(entity: &'static str, id: impl ToString) -> Self {
        Self::NotFound {
            entity,
            id: id.to_string(),
        }
    }
}
