//! Coordination between scheduler replicas on one PostgreSQL database: the
//! wake-ups one process sends another (`NOTIFY trainyard_wakeup`), the
//! listener that receives them, and the session-level advisory lock that says
//! which replica leads. The election logic lives in `crate::ha`; this module
//! only holds the SQL, because only the store speaks SQL.
//!
//! SQLite has a single process, so there is nothing to coordinate: wake-ups
//! are not sent there and `crate::ha` never opens a lock on it.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnection, PgListener, PgPoolOptions};
use trainyard_core::ids::{DagId, RunId};

use super::ConnectOptions;
use super::error::{Result, StoreError};
use super::postgres::connect_options;

/// The `LISTEN`/`NOTIFY` channel of wake-ups.
pub const WAKEUP_CHANNEL: &str = "trainyard_wakeup";

/// What a wake-up tells the leader's engine; the payload is `<kind>:<id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Wakeup {
    /// `run:<uuid>`: a run was created outside the leader's engine.
    RunCreated(RunId),
    /// `dag:<id>`: a DAG's registration changed (paused, resumed).
    DagChanged(DagId),
}

impl fmt::Display for Wakeup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::RunCreated(id) => write!(f, "run:{id}"),
            Self::DagChanged(id) => write!(f, "dag:{id}"),
        }
    }
}

impl FromStr for Wakeup {
    type Err = StoreError;

    fn from_str(payload: &str) -> Result<Self> {
        let bad = |why: String| StoreError::InvalidArgument(format!("wake-up {payload:?}: {why}"));
        match payload.split_once(':') {
            Some(("run", id)) => Ok(Self::RunCreated(
                RunId::from_str(id).map_err(|e| bad(e.to_string()))?,
            )),
            Some(("dag", id)) => Ok(Self::DagChanged(
                DagId::from_str(id).map_err(|e| bad(e.to_string()))?,
            )),
            _ => Err(bad("expected `run:<id>` or `dag:<id>`".into())),
        }
    }
}

/// Queues a wake-up inside a transaction (`$1` the channel, `$2` the
/// payload): Postgres delivers it at commit and drops it on rollback, so the
/// leader never hears of a run that was not written. The store runs it from
/// `SqlStore::wake_in` (`SqlBackend::NOTIFY`).
pub(crate) const PG_NOTIFY: &str = "SELECT pg_notify($1, $2)";

/// A dedicated connection holding (or trying for) a session-level advisory
/// lock. The lock lives exactly as long as the connection's session, so a
/// replica that dies or loses its connection releases it without help.
#[derive(Debug)]
pub struct LeaderLock {
    conn: PgConnection,
    key: i64,
    held: bool,
}

impl LeaderLock {
    /// Opens the dedicated connection (not from the store's pool: a pooled
    /// connection would carry the lock back into the pool).
    pub async fn connect(url: &str, options: &ConnectOptions, key: i64) -> Result<Self> {
        let conn = PgConnection::connect_with(&connect_options(url, options)?).await?;
        Ok(Self {
            conn,
            key,
            held: false,
        })
    }

    /// `pg_try_advisory_lock`: true when this session holds the lock now.
    pub async fn try_acquire(&mut self) -> Result<bool> {
        if self.held {
            return Ok(true);
        }
        self.held = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(self.key)
            .fetch_one(&mut self.conn)
            .await?;
        Ok(self.held)
    }

    /// Whether the session still holds the lock: a round trip on the lock's
    /// own connection, bounded by `timeout`. An error or a timeout means the
    /// session (and with it the lock) may be gone.
    pub async fn check(&mut self, timeout: Duration) -> Result<bool> {
        let probe = sqlx::query_scalar::<_, bool>(
            "SELECT EXISTS (SELECT 1 FROM pg_locks WHERE locktype = 'advisory' \
             AND pid = pg_backend_pid() AND granted AND objsubid = 1 \
             AND ((classid::bigint << 32) | objid::bigint) = $1)",
        )
        .bind(self.key)
        .fetch_one(&mut self.conn);
        match tokio::time::timeout(timeout, probe).await {
            Ok(Ok(held)) => {
                self.held = held;
                Ok(held)
            }
            Ok(Err(e)) => {
                self.held = false;
                Err(e.into())
            }
            Err(_) => {
                self.held = false;
                Err(StoreError::InvalidArgument(format!(
                    "the leader lock's connection did not answer within {timeout:?}"
                )))
            }
        }
    }

    /// The server process of the lock's session (tests terminate it to
    /// simulate a lost connection).
    pub async fn backend_pid(&mut self) -> Result<i32> {
        Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
            .fetch_one(&mut self.conn)
            .await?)
    }

    /// Releases the lock and closes the connection.
    pub async fn release(mut self) {
        if self.held {
            let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
                .bind(self.key)
                .execute(&mut self.conn)
                .await;
        }
        let _ = self.conn.close().await;
    }
}

/// What [`WakeupListener::recv`] yields.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenEvent {
    Wakeup(Wakeup),
    /// The connection dropped and was re-established: wake-ups sent in
    /// between are lost, so the receiver must re-read what it cares about.
    Reconnected,
}

/// `LISTEN trainyard_wakeup` on a dedicated connection, reconnecting when it drops.
#[derive(Debug)]
pub struct WakeupListener {
    /// The one-connection pool the listener's connection comes from.
    pool: sqlx::PgPool,
    listener: PgListener,
}

impl WakeupListener {
    pub async fn connect(url: &str, options: &ConnectOptions) -> Result<Self> {
        let pool = PgPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(options.acquire_timeout)
            .connect_lazy_with(connect_options(url, options)?);
        let listener = Self::listen_on(&pool).await?;
        Ok(Self { pool, listener })
    }

    async fn listen_on(pool: &sqlx::PgPool) -> Result<PgListener> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(WAKEUP_CHANNEL).await?;
        Ok(listener)
    }

    /// The next wake-up; malformed payloads are skipped with a warning. After
    /// the connection dropped, this listens again first and then returns
    /// [`ListenEvent::Reconnected`], so a re-read done after it misses nothing.
    /// An error means reconnecting failed: call again (after a pause).
    pub async fn recv(&mut self) -> Result<ListenEvent> {
        loop {
            match self.listener.try_recv().await {
                Ok(Some(n)) => match n.payload().parse::<Wakeup>() {
                    Ok(w) => return Ok(ListenEvent::Wakeup(w)),
                    Err(e) => tracing::warn!(error = %e, "ignoring a malformed wake-up"),
                },
                Ok(None) | Err(_) => {
                    self.listener = Self::listen_on(&self.pool).await?;
                    return Ok(ListenEvent::Reconnected);
                }
            }
        }
    }
}
