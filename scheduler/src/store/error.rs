//! The store's error taxonomy: what went wrong, what was expected, what was found.
//!
//! Conflicts (a compare-and-set that found another state or attempt) are normal
//! under concurrency and tell the caller to re-read; `SchemaTooNew` and
//! `UnsupportedUrl` are configuration errors a user must fix; `Database` wraps
//! everything sqlx reports and is worth retrying only when [`StoreError::is_retryable`].
//!
//! [`StoreError::failure_class`] sorts a failed engine commit into what the
//! engine does next: **transient** (connection lost, pool timeout,
//! serialization failure or deadlock, lock timeout, the database restarting:
//! the same transaction may commit later, so it is retried with back-off),
//! **conflict** (a compare-and-set found another state: re-read the run),
//! **not leader** (the term is over: never retried), and **deterministic**
//! (a constraint or check violation, a value the database refuses, invalid
//! SQL: SQLSTATE classes 22, 23, 42 and the like, SQLite's constraint,
//! mismatch and too-big codes — the same writes fail every time, so the
//! engine isolates the command that produced them instead of retrying the
//! whole turn). An error the table does not know counts as transient: the
//! engine still isolates a turn that keeps failing (see `engine::turn`).

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

/// What a failed write means for the engine (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// The database could not take the transaction now; the same one may
    /// commit later (retry with back-off).
    Transient,
    /// A compare-and-set found another state: re-read, then decide again.
    Conflict,
    /// A newer leadership term exists: nothing of this engine can commit.
    NotLeader,
    /// The database refuses these writes and will refuse them again.
    Deterministic,
}

/// The class of a database error code: a PostgreSQL SQLSTATE (five
/// characters, class = the first two) or a SQLite result code (primary or
/// extended, as decimal text; the primary code is the low byte).
pub fn class_of_code(code: &str) -> FailureClass {
    if code.len() == 5 {
        return class_of_sqlstate(code);
    }
    match code.parse::<u32>() {
        Ok(n) => class_of_sqlite(n),
        Err(_) => FailureClass::Transient,
    }
}

fn class_of_sqlstate(code: &str) -> FailureClass {
    match code {
        // lock_not_available (`lock_timeout`), idle_in_transaction_session_timeout:
        // a session held a lock too long; the next try may get it.
        "55P03" | "25P03" => return FailureClass::Transient,
        _ => {}
    }
    match &code[..2] {
        // 08 connection exception, 40 transaction rollback (serialization,
        // deadlock), 53 insufficient resources (disk full, out of memory,
        // too many connections), 57 operator intervention (shutdown, crash
        // recovery, query cancelled), 58 system error (I/O), XX internal.
        "08" | "40" | "53" | "57" | "58" | "XX" => FailureClass::Transient,
        // 21 cardinality violation, 22 data exception (a value the column
        // refuses: NUL in text, out of range, bad encoding), 23 integrity
        // constraint violation (unique, foreign key, not null, check), 27
        // triggered data change, 2B/2BP01 dependent objects, 42 syntax error
        // or access rule violation (a bug, or a schema the binary does not
        // expect), 44 with check option, 0A feature not supported, P0 a
        // PL/pgSQL RAISE.
        "21" | "22" | "23" | "27" | "2B" | "42" | "44" | "0A" | "P0" => FailureClass::Deterministic,
        _ => FailureClass::Transient,
    }
}

fn class_of_sqlite(code: u32) -> FailureClass {
    match code & 0xff {
        // SQLITE_TOOBIG, SQLITE_CONSTRAINT (unique, not null, check, foreign
        // key, primary key… as extended codes), SQLITE_MISMATCH, SQLITE_RANGE,
        // SQLITE_ERROR (1: a missing table or column, bad SQL).
        1 | 18 | 19 | 20 | 25 => FailureClass::Deterministic,
        // SQLITE_BUSY, SQLITE_LOCKED, SQLITE_IOERR, SQLITE_FULL,
        // SQLITE_CANTOPEN, SQLITE_PROTOCOL… : the file or a lock, not the data.
        _ => FailureClass::Transient,
    }
}

impl StoreError {
    /// What a failed write means for the engine: retry it, re-read, stop,
    /// or isolate it (see the module docs). Only meaningful for errors of
    /// writes; a read's `NotFound` is classed deterministic.
    pub fn failure_class(&self) -> FailureClass {
        match self {
            Self::NotLeader { .. } => FailureClass::NotLeader,
            Self::TaskConflict { .. } | Self::RunConflict { .. } | Self::NotReady { .. } => {
                FailureClass::Conflict
            }
            Self::Unavailable(_) => FailureClass::Transient,
            Self::Database(e) => match e {
                sqlx::Error::Database(db) => match db.code() {
                    Some(code) => class_of_code(&code),
                    None => FailureClass::Transient,
                },
                // A value the driver cannot send, a column it cannot read, a
                // type the database does not have: the same every time.
                sqlx::Error::Encode(_)
                | sqlx::Error::Decode(_)
                | sqlx::Error::ColumnDecode { .. }
                | sqlx::Error::ColumnNotFound(_)
                | sqlx::Error::ColumnIndexOutOfBounds { .. }
                | sqlx::Error::TypeNotFound { .. }
                | sqlx::Error::RowNotFound => FailureClass::Deterministic,
                _ => FailureClass::Transient,
            },
            Self::InvalidArgument(_)
            | Self::Corrupt { .. }
            | Self::NotFound { .. }
            | Self::ForbiddenTaskTransition { .. }
            | Self::ForbiddenRunTransition { .. } => FailureClass::Deterministic,
            Self::UnsupportedUrl { .. } | Self::SchemaTooNew { .. } | Self::Migrate(_) => {
                FailureClass::Deterministic
            }
        }
    }

    /// The database refuses these writes and will refuse them again.
    pub fn is_deterministic(&self) -> bool {
        self.failure_class() == FailureClass::Deterministic
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn postgres_sqlstates_are_classed_by_their_class() {
        for (code, class) in [
            // Transient: connection, rollback, resources, operator, system.
            ("08006", FailureClass::Transient), // connection_failure
            ("08003", FailureClass::Transient), // connection_does_not_exist
            ("40001", FailureClass::Transient), // serialization_failure
            ("40P01", FailureClass::Transient), // deadlock_detected
            ("55P03", FailureClass::Transient), // lock_not_available
            ("25P03", FailureClass::Transient), // idle_in_transaction_session_timeout
            ("53100", FailureClass::Transient), // disk_full
            ("53300", FailureClass::Transient), // too_many_connections
            ("57P01", FailureClass::Transient), // admin_shutdown
            ("57P03", FailureClass::Transient), // cannot_connect_now
            ("57014", FailureClass::Transient), // query_canceled
            ("58030", FailureClass::Transient), // io_error
            ("XX000", FailureClass::Transient), // internal_error
            // Deterministic: the data or the statement.
            ("22021", FailureClass::Deterministic), // character_not_in_repertoire (NUL)
            ("22003", FailureClass::Deterministic), // numeric_value_out_of_range
            ("22P02", FailureClass::Deterministic), // invalid_text_representation
            ("23505", FailureClass::Deterministic), // unique_violation
            ("23503", FailureClass::Deterministic), // foreign_key_violation
            ("23502", FailureClass::Deterministic), // not_null_violation
            ("23514", FailureClass::Deterministic), // check_violation
            ("42P01", FailureClass::Deterministic), // undefined_table
            ("42703", FailureClass::Deterministic), // undefined_column
            ("42601", FailureClass::Deterministic), // syntax_error
            ("21000", FailureClass::Deterministic), // cardinality_violation
            ("0A000", FailureClass::Deterministic), // feature_not_supported
            ("P0001", FailureClass::Deterministic), // raise_exception
        ] {
            assert_eq!(class_of_code(code), class, "SQLSTATE {code}");
        }
    }

    #[test]
    fn sqlite_codes_are_classed_by_their_primary_code() {
        for (code, class) in [
            ("5", FailureClass::Transient),        // SQLITE_BUSY
            ("517", FailureClass::Transient),      // SQLITE_BUSY_SNAPSHOT
            ("6", FailureClass::Transient),        // SQLITE_LOCKED
            ("10", FailureClass::Transient),       // SQLITE_IOERR
            ("13", FailureClass::Transient),       // SQLITE_FULL
            ("14", FailureClass::Transient),       // SQLITE_CANTOPEN
            ("1", FailureClass::Deterministic),    // SQLITE_ERROR (no such table)
            ("18", FailureClass::Deterministic),   // SQLITE_TOOBIG
            ("19", FailureClass::Deterministic),   // SQLITE_CONSTRAINT
            ("275", FailureClass::Deterministic),  // SQLITE_CONSTRAINT_CHECK
            ("787", FailureClass::Deterministic),  // SQLITE_CONSTRAINT_FOREIGNKEY
            ("1299", FailureClass::Deterministic), // SQLITE_CONSTRAINT_NOTNULL
            ("1555", FailureClass::Deterministic), // SQLITE_CONSTRAINT_PRIMARYKEY
            ("2067", FailureClass::Deterministic), // SQLITE_CONSTRAINT_UNIQUE
            ("3091", FailureClass::Deterministic), // SQLITE_CONSTRAINT_DATATYPE
            ("20", FailureClass::Deterministic),   // SQLITE_MISMATCH
            ("25", FailureClass::Deterministic),   // SQLITE_RANGE
        ] {
            assert_eq!(class_of_code(code), class, "SQLite code {code}");
        }
        // Not a code either backend sends: retried like an outage (a turn
        // that keeps failing is isolated anyway).
        assert_eq!(class_of_code("what"), FailureClass::Transient);
    }

    #[test]
    fn store_errors_without_a_code_are_classed_by_what_they_are() {
        let unavailable = StoreError::Unavailable("pool timed out".into());
        assert_eq!(unavailable.failure_class(), FailureClass::Transient);
        let io = StoreError::Database(sqlx::Error::Io(std::io::Error::other("reset")));
        assert_eq!(io.failure_class(), FailureClass::Transient);
        assert_eq!(
            StoreError::Database(sqlx::Error::PoolTimedOut).failure_class(),
            FailureClass::Transient
        );
        let conflict = StoreError::RunConflict {
            id: RunId::new(),
            expected: RunState::Running,
            found: RunState::Success,
        };
        assert_eq!(conflict.failure_class(), FailureClass::Conflict);
        let not_leader = StoreError::NotLeader {
            group: "g".into(),
            term: 1,
            current: Some(2),
        };
        assert_eq!(not_leader.failure_class(), FailureClass::NotLeader);
        let invalid = StoreError::InvalidArgument("metric value NaN".into());
        assert!(invalid.is_deterministic());
        let encode = StoreError::Database(sqlx::Error::Encode("too long".into()));
        assert!(encode.is_deterministic());
    }

    /// The codes sqlx reports for real SQLite refusals reach the table.
    #[tokio::test]
    async fn real_sqlite_refusals_are_deterministic_and_busy_is_not() {
        use sqlx::sqlite::SqlitePoolOptions;
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect("sqlite::memory:")
            .await
            .unwrap();
        sqlx::query("CREATE TABLE t (id INTEGER PRIMARY KEY, x INTEGER NOT NULL CHECK (x > 0))")
            .execute(&pool)
            .await
            .unwrap();
        sqlx::query("INSERT INTO t VALUES (1, 1)")
            .execute(&pool)
            .await
            .unwrap();
        for bad in [
            "INSERT INTO t VALUES (2, -1)",   // check
            "INSERT INTO t VALUES (1, 5)",    // primary key
            "INSERT INTO t VALUES (3, NULL)", // not null
            "INSERT INTO missing VALUES (1)", // no such table
        ] {
            let e = StoreError::from(sqlx::query(bad).execute(&pool).await.unwrap_err());
            assert_eq!(e.failure_class(), FailureClass::Deterministic, "{bad}: {e}");
            assert!(!e.is_retryable(), "{bad}");
        }
    }
}
