//! [`LeaderElection`]: who runs the engine. On PostgreSQL, the replica that
//! holds the group's row in `leader_lease` and keeps renewing it; on SQLite,
//! the one process (which takes the row too, a new term per start).
//!
//! A lease, not a lock: a frozen or partitioned leader keeps nothing. Its
//! row simply expires (by the database's clock) and a standby takes it over
//! with the next term; every engine write carries its term and is refused
//! once a newer one exists ([`crate::store::TermFence`]), so a leader that
//! wakes up after a SIGSTOP cannot write before it notices.
//!
//! How a leader keeps its term:
//! - it renews every `lease / 3`; a renewal that finds another holder or
//!   term (or a write refused by the fence, which wakes the election at
//!   once) ends the term: [`Held::Lost`], the engine stops;
//! - a renewal that fails for a transient reason (connection killed,
//!   timeout) is retried on a fresh connection until the lease would have
//!   expired by this replica's own monotonic clock (the last successful
//!   renewal's send time + lease − a margin). Renewing in time changes
//!   nothing: the engine never noticed.
//! - past that deadline the replica cannot know whether another leads:
//!   [`Held::Unsure`]. The caller stops serving workers and reports
//!   standby, but keeps the engine; [`LeaderElection::regain`] keeps trying
//!   to renew, and a renewal that still finds this holder and term (nobody
//!   led in between) resumes the same term without rebuilding anything.

use std::time::Duration;

use chrono::Utc;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ElectionOptions, Result, Role};
use crate::store::{
    Backend, Lease, LeaseConnection, LeaseStore, Renewed, Replica, StoreError, Taken, TermFence,
    backend_of,
};

/// Why [`LeaderElection::hold`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The lease names another holder or term: another replica leads, the
    /// engine must stop now (the role is Standby already).
    Lost,
    /// Renewals failed until the lease may have expired: this replica no
    /// longer knows whether it leads (the role is Standby); call
    /// [`LeaderElection::regain`].
    Unsure,
    /// The shutdown token fired while leading.
    Shutdown,
}

/// Why [`LeaderElection::regain`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Regained {
    /// A renewal found the lease still this replica's term: lead on (the
    /// role is published by [`LeaderElection::mark_leading`]).
    Kept,
    /// Another replica took the lease: the term is over.
    Lost,
    Shutdown,
}

/// One replica's part in the election. Publishes its [`Role`], the lease
/// as last seen and the leader's advertised worker URL on watches.
pub struct LeaderElection {
    opts: ElectionOptions,
    backend: Backend,
    me: Replica,
    /// SQLite's lease is taken through the store (an in-memory database
    /// exists only in the store's own connection).
    store: Arc<dyn LeaseStore>,
    /// The lease's connection (PostgreSQL), once opened; dropped after a
    /// failure so the next try opens a fresh one.
    conn: Option<LeaseConnection>,
    /// The HA group, once known (configured, or derived at the first connect).
    group: Option<String>,
    /// The term this replica holds (or held last).
    fence: Option<TermFence>,
    /// When the last successful take or renewal was sent: the lease runs
    /// at least `lease` from then by the database's clock.
    renewed: Option<Instant>,
    role: watch::Sender<Role>,
    lease: watch::Sender<Option<Lease>>,
    leader_hint: watch::Sender<Option<String>>,
}

impl std::fmt::Debug for LeaderElection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LeaderElection")
            .field("me", &self.me)
            .field("group", &self.group)
            .field("fence", &self.fence)
            .field("role", &*self.role.borrow())
            .finish_non_exhaustive()
    }
}

impl LeaderElection {
    pub fn new(opts: ElectionOptions, store: Arc<dyn LeaseStore>) -> Result<Self> {
        let backend = backend_of(&opts.db_url)?;
        Ok(Self {
            group: opts.group.clone(),
            opts,
            backend,
            me: Replica::this_process(),
            store,
            conn: None,
            fence: None,
            renewed: None,
            role: watch::Sender::new(Role::Standby),
            lease: watch::Sender::new(None),
            leader_hint: watch::Sender::new(None),
        })
    }

    /// The role as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// The lease row as this replica last saw it (taken, renewed or read
    /// while standing by): holder, term, expiry. For operators' surfaces.
    pub fn lease(&self) -> watch::Receiver<Option<Lease>> {
        self.lease.subscribe()
    }

    /// The current leader's advertised worker gRPC URL (`--advertise-grpc`),
    /// from the lease row; `None` while no unexpired lease names one. A
    /// standby's worker endpoint can tell workers where to go.
    pub fn leader_hint(&self) -> watch::Receiver<Option<String>> {
        self.leader_hint.subscribe()
    }

    /// This replica's identity in the lease (random per process).
    pub fn replica(&self) -> &Replica {
        &self.me
    }

    /// The fence of the term this replica holds: the engine's store writes
    /// under it ([`LeaseStore::fenced`]).
    pub fn fence(&self) -> Option<TermFence> {
        self.fence.clone()
    }

    /// One try for the lease (the role stays Standby until
    /// [`LeaderElection::mark_leading`]). Trouble reaching the database
    /// counts as "not leader" (logged); the next try reconnects.
    pub async fn try_acquire(&mut self) -> bool {
        let r = match self.backend {
            Backend::Sqlite => self.take_alone().await,
            Backend::Postgres => self.try_take().await,
        };
        match r {
            Ok(won) => won,
            Err(e) => {
                warn!(error = %e, "cannot reach the database for the leader lease; retrying");
                self.drop_conn().await;
                false
            }
        }
    }

    async fn take_alone(&mut self) -> Result<bool> {
        let group = self.group.clone().unwrap_or_else(|| "local".to_owned());
        let lease = self
            .store
            .take_lease_alone(&group, &self.me, self.opts.lease, Utc::now())
            .await?;
        info!(term = lease.term, group = %group, "leader lease taken (the one SQLite process)");
        self.won(lease, Instant::now());
        Ok(true)
    }

    async fn try_take(&mut self) -> Result<bool> {
        let sent = Instant::now();
        let group = self.connect().await?;
        let (me, lease, url) = (
            self.me.clone(),
            self.opts.lease,
            self.opts.advertise_grpc.clone(),
        );
        let taken = self
            .conn()?
            .try_take(&group, &me, lease, url.as_deref())
            .await?;
        match taken {
            Taken::Won { lease, previous } => {
                match &previous {
                    Some(p) => info!(
                        term = lease.term,
                        group = %group,
                        previous_holder = %p.holder_host,
                        previous_pid = p.holder_pid,
                        previous_term = p.term,
                        "leader lease taken over (the previous one had expired)"
                    ),
                    None => info!(term = lease.term, group = %group, "leader lease taken"),
                }
                self.won(lease, sent);
                Ok(true)
            }
            Taken::Held(lease) => {
                self.observe(&lease);
                Ok(false)
            }
        }
    }

    /// Opens the lease's connection when missing and learns the group.
    async fn connect(&mut self) -> Result<String> {
        if self.conn.is_none() {
            let conn = LeaseConnection::connect(
                &self.opts.db_url,
                &self.opts.connect,
                self.opts.timeouts(),
            )
            .await?;
            self.conn = Some(conn);
        }
        if let Some(g) = &self.group {
            return Ok(g.clone());
        }
        let Some(conn) = self.conn.as_mut() else {
            return Err(StoreError::Unavailable("the lease connection closed".into()).into());
        };
        let g = conn.default_group().await?;
        info!(group = %g, "HA group derived from the database and schema");
        self.group = Some(g.clone());
        Ok(g)
    }

    /// The open lease connection (after [`Self::connect`]).
    fn conn(&mut self) -> Result<&mut LeaseConnection> {
        self.conn
            .as_mut()
            .ok_or_else(|| StoreError::Unavailable("the lease connection closed".into()).into())
    }

    /// This replica holds `lease` now.
    fn won(&mut self, lease: Lease, sent: Instant) {
        let same = self
            .fence
            .as_ref()
            .is_some_and(|f| f.term == lease.term && f.group == lease.group);
        if !same {
            self.fence = Some(TermFence::new(lease.group.clone(), lease.term));
        }
        self.renewed = Some(sent);
        self.leader_hint
            .send_replace(self.opts.advertise_grpc.clone());
        self.publish(&lease, true);
    }

    /// Another replica's lease, seen while standing by.
    fn observe(&mut self, lease: &Lease) {
        let hint = (!lease.expired).then(|| lease.grpc_url.clone()).flatten();
        self.leader_hint.send_if_modified(|h| {
            let changed = *h != hint;
            *h = hint;
            changed
        });
        self.publish(lease, false);
    }

    fn publish(&self, lease: &Lease, mine: bool) {
        let m = crate::metrics::global();
        m.leader_term.set(lease.term);
        m.leader_lease_expiry
            .set(lease.expires_at.timestamp_millis() as f64 / 1000.0);
        if !mine {
            m.leader.set(0);
        }
        self.lease.send_replace(Some(lease.clone()));
    }

    /// The engine runs under the lease now: publish [`Role::Leader`]. Kept
    /// apart from acquiring so the role never says "leader" while the
    /// engine is still rebuilding (callers would find no engine to talk to).
    pub fn mark_leading(&self) {
        info!(
            term = self.fence.as_ref().map(|f| f.term),
            "this replica leads"
        );
        crate::metrics::global().leader.set(1);
        self.role.send_replace(Role::Leader);
    }

    fn mark_standby(&self) {
        crate::metrics::global().leader.set(0);
        self.role.send_replace(Role::Standby);
    }

    /// Tries every `retry_interval` until this replica leads (true) or
    /// `shutdown` fires (false).
    pub async fn acquire(&mut self, shutdown: &CancellationToken) -> bool {
        loop {
            if shutdown.is_cancelled() {
                return false;
            }
            if self.try_acquire().await {
                return true;
            }
            tokio::select! {
                () = shutdown.cancelled() => return false,
                () = tokio::time::sleep(self.opts.retry_interval) => {}
            }
        }
    }

    /// One renewal of the held term: (what it found, or why it failed). A
    /// failed one drops the connection, so the next opens a fresh one.
    async fn renew_once(&mut self) -> Result<Renewed> {
        let Some(fence) = self.fence.clone() else {
            return Ok(Renewed::Replaced(None));
        };
        let sent = Instant::now();
        let r = async {
            let group = self.connect().await?;
            let (me, lease, url) = (
                self.me.clone(),
                self.opts.lease,
                self.opts.advertise_grpc.clone(),
            );
            let found = self
                .conn()?
                .renew(&group, &me, fence.term, lease, url.as_deref())
                .await?;
            Ok::<_, super::HaError>(found)
        }
        .await;
        match r {
            Ok(Renewed::Kept(lease)) => {
                self.renewed = Some(sent);
                self.publish(&lease, true);
                Ok(Renewed::Kept(lease))
            }
            Ok(Renewed::Replaced(lease)) => {
                if let Some(l) = &lease {
                    self.observe(l);
                }
                Ok(Renewed::Replaced(lease))
            }
            Err(e) => {
                self.drop_conn().await;
                Err(e)
            }
        }
    }

    /// When the held lease may have expired by this replica's own clock:
    /// the last successful renewal's send time + lease − the safety margin.
    fn deadline(&self) -> Instant {
        let base = self.renewed.unwrap_or_else(Instant::now);
        base + self.opts.lease.saturating_sub(self.opts.safety_margin())
    }

    /// While leading: renews every `lease / 3` (at once when the store
    /// refused a write of this term) and returns when the term is over
    /// ([`Held::Lost`]), may be over ([`Held::Unsure`]) or `shutdown` fired.
    pub async fn hold(&mut self, shutdown: &CancellationToken) -> Held {
        let Some(fence) = self.fence.clone() else {
            self.mark_standby();
            return Held::Lost;
        };
        if self.backend == Backend::Sqlite {
            // The file lock makes this the only process: nobody can take
            // the lease, so there is nothing to renew.
            shutdown.cancelled().await;
            return Held::Shutdown;
        }
        let refused = fence.refused();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Held::Shutdown,
                () = tokio::time::sleep(self.opts.renew_interval()) => {}
                () = refused.notified() => {
                    warn!(term = fence.term, "a write of this term was refused; checking the lease now");
                }
            }
            match self.renew_until_deadline(shutdown).await {
                Some(Renewed::Kept(_)) => {}
                Some(Renewed::Replaced(lease)) => {
                    self.replaced(fence.term, lease.as_ref());
                    return Held::Lost;
                }
                None if shutdown.is_cancelled() => return Held::Shutdown,
                None => {
                    warn!(
                        term = fence.term,
                        lease = ?self.opts.lease,
                        "could not renew the leader lease before it may have expired; \
                         not serving workers until the lease is renewed or another replica leads"
                    );
                    self.mark_standby();
                    return Held::Unsure;
                }
            }
        }
    }

    /// A renewal, retried on a fresh connection after transient failures
    /// until the local deadline; `None` when the deadline passed (or
    /// `shutdown` fired) without an answer.
    async fn renew_until_deadline(&mut self, shutdown: &CancellationToken) -> Option<Renewed> {
        let deadline = self.deadline();
        let mut tries = 0u32;
        loop {
            tries += 1;
            let e = match self.renew_once().await {
                Ok(found) => return Some(found),
                Err(e) => e,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            warn!(
                error = %e,
                left_ms = left.as_millis() as u64,
                "leader lease renewal failed; retrying on a fresh connection"
            );
            // The first failure may only mean the session died while idle
            // (a new leader ends its predecessor's sessions, a restarted
            // database): one immediate try on a fresh connection, even past
            // the deadline, tells "replaced" from "unreachable".
            if tries == 1 {
                continue;
            }
            if left.is_zero() {
                return None;
            }
            let pause = self.opts.renew_retry().min(left);
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(pause) => {}
            }
        }
    }

    /// After [`Held::Unsure`]: keeps trying to renew the same term.
    /// [`Regained::Kept`] when the lease still names this holder and term
    /// (nobody led in between: the engine never needs rebuilding),
    /// [`Regained::Lost`] as soon as it names another.
    pub async fn regain(&mut self, shutdown: &CancellationToken) -> Regained {
        let term = self.fence.as_ref().map(|f| f.term).unwrap_or_default();
        loop {
            match self.renew_once().await {
                Ok(Renewed::Kept(_)) => {
                    info!(term, "leader lease renewed again; the same term goes on");
                    return Regained::Kept;
                }
                Ok(Renewed::Replaced(lease)) => {
                    self.replaced(term, lease.as_ref());
                    return Regained::Lost;
                }
                Err(e) => {
                    warn!(error = %e, "still cannot renew the leader lease; retrying");
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return Regained::Shutdown,
                () = tokio::time::sleep(self.opts.retry_interval) => {}
            }
        }
    }

    fn replaced(&mut self, term: i64, now: Option<&Lease>) {
        match now {
            Some(l) => warn!(
                term,
                new_term = l.term,
                new_holder = %l.holder_host,
                new_pid = l.holder_pid,
                "leader lease taken over by another replica; stepping down"
            ),
            None => warn!(term, "leader lease row is gone; stepping down"),
        }
        self.mark_standby();
    }

    /// Gives the term up (on shutdown, or a term that failed to start):
    /// the lease expires now, so a standby takes over at its next try.
    pub async fn step_down(&mut self) {
        self.mark_standby();
        if self.backend == Backend::Postgres
            && let Some(fence) = self.fence.clone()
            && let Some(conn) = &mut self.conn
        {
            match conn.release(&fence.group, &self.me, fence.term).await {
                Ok(()) => info!(term = fence.term, "leader lease released"),
                Err(e) => {
                    warn!(error = %e, "could not release the leader lease; it expires by itself")
                }
            }
        }
        self.renewed = None;
        self.drop_conn().await;
    }

    async fn drop_conn(&mut self) {
        if let Some(conn) = self.conn.take() {
            conn.close().await;
        }
    }

    /// The server pid of the lease's session, if one is open (tests kill it).
    pub async fn lease_backend_pid(&mut self) -> Option<i32> {
        match &mut self.conn {
            Some(conn) => conn.backend_pid().await.ok(),
            None => None,
        }
    }
}

/// `lease / n`, never zero.
pub(super) fn part(lease: Duration, n: u32) -> Duration {
    (lease / n).max(Duration::from_millis(10))
}
