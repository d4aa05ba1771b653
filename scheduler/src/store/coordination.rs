//! Coordination between scheduler replicas on one PostgreSQL database: the
//! wake-ups one process sends another (`NOTIFY trainyard_wakeup`), the
//! listener that receives them, and the leader lease (the `leader_lease`
//! row: holder, term, expiry by the database's clock) with the fence that
//! ties every engine write to a term. The election logic lives in
//! `crate::ha`; this module only holds the SQL, because only the store
//! speaks SQL.
//!
//! SQLite has a single process, so there is little to coordinate: wake-ups
//! are not sent there, and the one process takes the lease row through the
//! store ([`super::LeaseStore::take_lease_alone`]) so its term fences its
//! writes the same way.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnection, PgListener, PgPoolOptions, PgRow};
use sqlx::{Connection, Row};
use tokio::sync::Notify;
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

/// Who takes part in an election: a replica id (random per process, so a
/// restarted process is a new holder) and, for people, where it runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replica {
    pub id: String,
    pub host: String,
    pub pid: i64,
}

impl Replica {
    /// This process: a fresh random id, the host name and the pid.
    pub fn this_process() -> Self {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .ok()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .map(|h| h.trim().to_owned())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "unknown-host".to_owned());
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            host,
            pid: i64::from(std::process::id()),
        }
    }
}

/// The lease row of one HA group, as the database had it when read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    pub group: String,
    /// The holder's replica id.
    pub holder: String,
    pub holder_host: String,
    pub holder_pid: i64,
    /// Increases on every change of holder; engine writes carry it.
    pub term: i64,
    pub acquired_at: DateTime<Utc>,
    pub renewed_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// The holder's advertised worker gRPC URL.
    pub grpc_url: Option<String>,
    /// `expires_at` had passed by the database's clock when this was read
    /// (always false for SQLite's row, which is not renewed: one process).
    pub expired: bool,
}

/// The leadership term an engine writes under. Every engine write checks,
/// in its own transaction, that the lease of `group` still carries `term`
/// (PostgreSQL: `SELECT … FOR SHARE`, so a takeover waits for a write in
/// flight, and no write of an old term commits after a new term began), and
/// is refused with [`StoreError::NotLeader`] otherwise. A refusal also wakes
/// [`TermFence::refused`], so the election re-checks the lease at once
/// instead of at its next renewal.
#[derive(Debug, Clone)]
pub struct TermFence {
    pub group: String,
    pub term: i64,
    refused: Arc<Notify>,
}

impl TermFence {
    pub fn new(group: impl Into<String>, term: i64) -> Self {
        Self {
            group: group.into(),
            term,
            refused: Arc::new(Notify::new()),
        }
    }

    /// Woken (a stored permit) whenever the store refused a write of this term.
    pub fn refused(&self) -> Arc<Notify> {
        self.refused.clone()
    }

    /// Records a refusal (called by the store).
    pub(crate) fn note_refused(&self) {
        self.refused.notify_one();
    }
}

/// Whether the lease's holder provably died: it ran on this host (same
/// host name) and its process no longer exists. A scheduler restarted on
/// the same machine then leads at once instead of waiting out its dead
/// predecessor's lease. Safe either way: a holder that is alive after all
/// (a host name shared by two machines) has its next write refused by the
/// term fence and steps down; a reused pid looks alive, and the lease is
/// simply waited out (so is a container's pid 1, and replicas sharing a
/// process in tests).
fn holder_is_gone(current: &Lease, me: &Replica) -> bool {
    current.holder != me.id
        && current.holder_host == me.host
        && current.holder_pid != me.pid
        && !process_exists(current.holder_pid)
}

#[cfg(target_os = "linux")]
fn process_exists(pid: i64) -> bool {
    pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[cfg(not(target_os = "linux"))]
fn process_exists(_pid: i64) -> bool {
    // Unknown: assume alive, so the lease is waited out.
    true
}

/// How long a lease lasts once taken or renewed.
fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The columns of a [`Lease`] (PostgreSQL), `expired` by the database's clock.
const LEASE_COLS: &str = "ha_group, holder, holder_host, holder_pid, term, acquired_at, \
     renewed_at, expires_at, grpc_url, expires_at <= clock_timestamp() AS expired";

fn lease_of(row: &PgRow) -> Result<Lease> {
    Ok(Lease {
        group: row.try_get("ha_group")?,
        holder: row.try_get("holder")?,
        holder_host: row.try_get("holder_host")?,
        holder_pid: row.try_get("holder_pid")?,
        term: row.try_get("term")?,
        acquired_at: row.try_get("acquired_at")?,
        renewed_at: row.try_get("renewed_at")?,
        expires_at: row.try_get("expires_at")?,
        grpc_url: row.try_get("grpc_url")?,
        expired: row.try_get("expired")?,
    })
}

/// What [`LeaseConnection::try_take`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taken {
    /// This replica holds the lease now (a new term, or its own term kept
    /// when the row still named it). `previous`: the holder it took over
    /// from, if another.
    Won {
        lease: Lease,
        previous: Option<Lease>,
    },
    /// Another replica holds an unexpired lease.
    Held(Lease),
}

/// What [`LeaseConnection::renew`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Renewed {
    /// Still this replica's term; the expiry moved on.
    Kept(Lease),
    /// The row names another holder or term (or is gone): the term is over.
    Replaced(Option<Lease>),
}

/// Settings of the lease's session, derived from the lease length by `crate::ha`.
#[derive(Debug, Clone, Copy)]
pub struct LeaseTimeouts {
    /// Bounds every lease statement: server side (`statement_timeout`,
    /// `lock_timeout`, `idle_in_transaction_session_timeout`) and client side
    /// (the call is abandoned and the connection dropped).
    pub statement: Duration,
    /// Server-side `tcp_user_timeout` and keepalive timing (idle, interval;
    /// three probes), so a partitioned replica's session dies on the server
    /// within seconds instead of TCP's two hours.
    pub tcp_user: Duration,
    pub keepalive_idle: Duration,
    pub keepalive_interval: Duration,
}

/// A dedicated connection for the leader lease (not from the store's pool:
/// its statements must never queue behind the engine's, and its session
/// settings are its own). `application_name` is `trainyard-leader`.
///
/// sqlx 0.8 sets no client-side TCP keepalive, so the client side is bounded
/// by timing out every call (and dropping the connection); the server side by
/// the keepalive GUCs and `tcp_user_timeout` set at connect.
#[derive(Debug)]
pub struct LeaseConnection {
    conn: PgConnection,
    timeout: Duration,
}

impl LeaseConnection {
    pub async fn connect(
        url: &str,
        options: &ConnectOptions,
        timeouts: LeaseTimeouts,
    ) -> Result<Self> {
        let ms = |d: Duration| d.as_millis().max(1).to_string();
        let secs_at_least_1 = |d: Duration| d.as_secs().max(1).to_string();
        let connect = connect_options(url, options)?.options([
            ("statement_timeout", ms(timeouts.statement)),
            ("lock_timeout", ms(timeouts.statement)),
            (
                "idle_in_transaction_session_timeout",
                ms(timeouts.statement),
            ),
            ("tcp_user_timeout", ms(timeouts.tcp_user)),
            (
                "tcp_keepalives_idle",
                secs_at_least_1(timeouts.keepalive_idle),
            ),
            (
                "tcp_keepalives_interval",
                secs_at_least_1(timeouts.keepalive_interval),
            ),
            ("tcp_keepalives_count", "3".to_owned()),
        ]);
        let conn = tokio::time::timeout(timeouts.statement, PgConnection::connect_with(&connect))
            .await
            .map_err(|_| {
                StoreError::Unavailable(format!(
                    "connecting for the leader lease took longer than {:?}",
                    timeouts.statement
                ))
            })??;
        Ok(Self {
            conn,
            timeout: timeouts.statement,
        })
    }

    /// Runs `f` on the connection, abandoned after the statement timeout.
    async fn bounded<T>(
        &mut self,
        what: &str,
        f: impl AsyncFnOnce(&mut PgConnection) -> Result<T>,
    ) -> Result<T> {
        let timeout = self.timeout;
        match tokio::time::timeout(timeout, f(&mut self.conn)).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Unavailable(format!(
                "the leader lease's {what} did not answer within {timeout:?}"
            ))),
        }
    }

    /// The default HA group: `current_database() || '.' || current_schema()`,
    /// so two installations in one database (different schemas) never share
    /// a lease.
    pub async fn default_group(&mut self) -> Result<String> {
        self.bounded("group query", async |c| {
            Ok(sqlx::query_scalar::<_, String>(
                "SELECT current_database() || '.' || coalesce(current_schema(), 'public')",
            )
            .fetch_one(c)
            .await?)
        })
        .await
    }

    /// The lease row of `group` now (no lock taken).
    pub async fn read(&mut self, group: &str) -> Result<Option<Lease>> {
        let sql = format!("SELECT {LEASE_COLS} FROM leader_lease WHERE ha_group = $1");
        self.bounded("read", async |c| {
            let row = sqlx::query(&sql).bind(group).fetch_optional(c).await?;
            row.as_ref().map(lease_of).transpose()
        })
        .await
    }

    /// Takes the lease when it is missing, expired, or still names `me`
    /// (then the term is kept: nobody led in between); otherwise reports
    /// who holds it. A takeover increments the term in a transaction that
    /// first locks the row (`FOR UPDATE`), so it waits for an old term's
    /// write in flight (which holds the row `FOR SHARE`) and that write's
    /// fence re-check then fails. Afterwards the previous holder's recorded
    /// lease sessions still alive since its last renewal are terminated.
    pub async fn try_take(
        &mut self,
        group: &str,
        me: &Replica,
        lease: Duration,
        grpc_url: Option<&str>,
    ) -> Result<Taken> {
        // A plain read first: while another holder's lease runs (the usual
        // case for a standby) no lock is taken, so standbys never delay the
        // leader's writes.
        if let Some(current) = self.read(group).await?
            && !current.expired
            && current.holder != me.id
            && !holder_is_gone(&current, me)
        {
            return Ok(Taken::Held(current));
        }
        let select = format!(
            "SELECT {LEASE_COLS}, backend_pids FROM leader_lease WHERE ha_group = $1 FOR UPDATE"
        );
        let insert = format!(
            "INSERT INTO leader_lease (ha_group, holder, holder_host, holder_pid, term, \
             acquired_at, renewed_at, expires_at, grpc_url, backend_pids) \
             VALUES ($1, $2, $3, $4, 1, clock_timestamp(), clock_timestamp(), \
             clock_timestamp() + make_interval(secs => $5), $6, ARRAY[pg_backend_pid()]) \
             ON CONFLICT (ha_group) DO NOTHING RETURNING {LEASE_COLS}"
        );
        let update = format!(
            "UPDATE leader_lease SET \
             term = CASE WHEN holder = $2 THEN term ELSE term + 1 END, \
             acquired_at = CASE WHEN holder = $2 THEN acquired_at ELSE clock_timestamp() END, \
             holder = $2, holder_host = $3, holder_pid = $4, renewed_at = clock_timestamp(), \
             expires_at = clock_timestamp() + make_interval(secs => $5), grpc_url = $6, \
             backend_pids = ARRAY[pg_backend_pid()] \
             WHERE ha_group = $1 RETURNING {LEASE_COLS}"
        );
        let step = self
            .bounded("takeover", async |c| {
                let mut tx = c.begin().await?;
                let row = sqlx::query(&select)
                    .bind(group)
                    .fetch_optional(&mut *tx)
                    .await?;
                let previous = match &row {
                    Some(row) => {
                        let current = lease_of(row)?;
                        if !current.expired
                            && current.holder != me.id
                            && !holder_is_gone(&current, me)
                        {
                            tx.rollback().await?;
                            return Ok(TakeStep::Held(current));
                        }
                        if !current.expired && current.holder != me.id {
                            tracing::info!(
                                holder = %current.holder,
                                pid = current.holder_pid,
                                host = %current.holder_host,
                                "the lease's holder ran on this host and its process is gone; taking the lease without waiting for it to expire"
                            );
                        }
                        let pids: Vec<i32> = row.try_get("backend_pids")?;
                        Some((current, pids))
                    }
                    None => None,
                };
                let sql = if previous.is_some() { &update } else { &insert };
                let won = sqlx::query(sql)
                    .bind(group)
                    .bind(&me.id)
                    .bind(&me.host)
                    .bind(me.pid)
                    .bind(secs(lease))
                    .bind(grpc_url)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(won) = won else {
                    tx.rollback().await?;
                    return Ok(TakeStep::Raced);
                };
                let lease = lease_of(&won)?;
                tx.commit().await?;
                Ok(TakeStep::Won(lease, previous))
            })
            .await?;
        match step {
            TakeStep::Held(current) => Ok(Taken::Held(current)),
            // Another replica inserted the first row in between: it holds it.
            TakeStep::Raced => match self.read(group).await? {
                Some(current) => Ok(Taken::Held(current)),
                None => Err(StoreError::Unavailable(
                    "the leader lease row vanished while it was being taken; retrying".into(),
                )),
            },
            TakeStep::Won(lease, previous) => {
                let previous = match previous {
                    Some((p, pids)) if p.holder != me.id => {
                        if !pids.is_empty() {
                            self.terminate_sessions(&pids, p.renewed_at).await;
                        }
                        Some(p)
                    }
                    _ => None,
                };
                Ok(Taken::Won { lease, previous })
            }
        }
    }

    /// Ends the previous holder's lease sessions that are still alive and
    /// already were at its last renewal (a pid reused since is not touched).
    /// Best effort: without the privilege to signal them, they end by their
    /// own timeouts.
    async fn terminate_sessions(&mut self, pids: &[i32], renewed_at: DateTime<Utc>) {
        let r = self
            .bounded("session cleanup", async |c| {
                Ok(sqlx::query_scalar::<_, i64>(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) \
                     FROM pg_stat_activity WHERE pid = ANY($1) AND pid <> pg_backend_pid() \
                     AND application_name = 'trainyard-leader' AND backend_start <= $2",
                )
                .bind(pids)
                .bind(renewed_at)
                .fetch_one(c)
                .await?)
            })
            .await;
        match r {
            Ok(n) if n > 0 => {
                tracing::info!(sessions = n, "ended the previous leader's lease sessions")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "could not end the previous leader's sessions"),
        }
    }

    /// Renews this replica's term: moves the expiry on by `lease` from the
    /// database's now, only while the row still names `me` and `term`.
    pub async fn renew(
        &mut self,
        group: &str,
        me: &Replica,
        term: i64,
        lease: Duration,
        grpc_url: Option<&str>,
    ) -> Result<Renewed> {
        let sql = format!(
            "UPDATE leader_lease SET renewed_at = clock_timestamp(), \
             expires_at = clock_timestamp() + make_interval(secs => $4), grpc_url = $5, \
             backend_pids = ARRAY[pg_backend_pid()] \
             WHERE ha_group = $1 AND holder = $2 AND term = $3 RETURNING {LEASE_COLS}"
        );
        let renewed = self
            .bounded("renewal", async |c| {
                let row = sqlx::query(&sql)
                    .bind(group)
                    .bind(&me.id)
                    .bind(term)
                    .bind(secs(lease))
                    .bind(grpc_url)
                    .fetch_optional(c)
                    .await?;
                row.as_ref().map(lease_of).transpose()
            })
            .await?;
        match renewed {
            Some(l) => Ok(Renewed::Kept(l)),
            None => Ok(Renewed::Replaced(self.read(group).await?)),
        }
    }

    /// Gives the term up (shutdown): the lease expires now, so a standby
    /// takes over at its next try instead of waiting out the lease.
    pub async fn release(&mut self, group: &str, me: &Replica, term: i64) -> Result<()> {
        self.bounded("release", async |c| {
            sqlx::query(
                "UPDATE leader_lease SET expires_at = clock_timestamp(), \
                 renewed_at = clock_timestamp() \
                 WHERE ha_group = $1 AND holder = $2 AND term = $3",
            )
            .bind(group)
            .bind(&me.id)
            .bind(term)
            .execute(c)
            .await?;
            Ok(())
        })
        .await
    }

    /// The server process of the lease's session (tests terminate it to
    /// simulate a lost connection).
    pub async fn backend_pid(&mut self) -> Result<i32> {
        self.bounded("pid query", async |c| {
            Ok(sqlx::query_scalar("SELECT pg_backend_pid()")
                .fetch_one(c)
                .await?)
        })
        .await
    }

    pub async fn close(self) {
        let _ = self.conn.close().await;
    }
}

/// One takeover transaction's outcome, before the session cleanup.
enum TakeStep {
    Held(Lease),
    /// The row did not exist at the locking read and another replica's
    /// insert won.
    Raced,
    /// Taken; the row as it was before (with its recorded pids), if any.
    Won(Lease, Option<(Lease, Vec<i32>)>),
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
