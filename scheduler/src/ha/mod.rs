//! High availability: several `trainyard scheduler` replicas on one
//! PostgreSQL database, exactly one of which runs the engine.
//!
//! - [`LeaderElection`] (`election.rs`): a replica leads while it holds its
//!   HA group's row in `leader_lease` (holder, term, expiry by the
//!   database's clock) and renews it every `lease / 3`; standbys try every
//!   second to take a missing or expired row, which increments the term.
//!   Every engine write carries the term and is refused once a newer one
//!   exists ([`crate::store::TermFence`]). On SQLite there is one process
//!   and it always leads (it takes the row too: a new term per start).
//! - [`spawn_wakeup_relay`] (`wakeups.rs`): the leader `LISTEN`s on
//!   `trainyard_wakeup` and hands each wake-up to its engine (a run created
//!   by a standby's API, a DAG paused or resumed there), so nothing waits
//!   for a polling interval between processes.
//! - [`HaControl`] (`control.rs`): the API's [`crate::http::RunControl`] on a
//!   replica: commands go to the engine while leading; on standby, triggers
//!   and pause/resume are written through the store (with a wake-up) and the
//!   other commands are refused as unavailable.
//!
//! Safety does not rest on timing: between a leader's lease expiring and
//! the leader noticing, it may still try to write, but every engine write
//! checks its term in its own transaction (PostgreSQL: the lease row
//! `FOR SHARE`, which a takeover must wait for), so no write of an old term
//! commits once a newer term began. Timing only decides how fast a standby
//! takes over: within `lease` + one renewal interval of the leader freezing
//! (6 s + 2 s by default).
//!
//! Stuck sessions: the store's pool connections carry
//! `idle_in_transaction_session_timeout` and `lock_timeout` of `lease / 2`
//! ([`ElectionOptions::session_guard`]), so a frozen leader's open
//! transaction is ended by the server before its lease expires and its row
//! locks never block the next leader; the lease connection carries short
//! statement, lock and idle timeouts, TCP keepalives and `tcp_user_timeout`
//! on the server side, and every lease call is bounded on the client side.
//! A new leader also ends the previous holder's recorded lease sessions.

mod control;
mod election;
mod wakeups;

use std::time::Duration;

pub use control::HaControl;
pub use election::{Held, LeaderElection, Regained};
pub use wakeups::spawn_wakeup_relay;

use crate::store::{ConnectOptions, LeaseTimeouts};

/// Whether this replica runs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves reads and standby commands; waits for the lease.
    Standby,
    /// Holds the lease: runs the engine and accepts workers.
    Leader,
}

/// The default `--leader-lease`: a frozen or partitioned leader loses
/// leadership within this plus one renewal interval (`lease / 3`), 8 s.
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);

/// How a replica takes part in the election; [`ElectionOptions::new`] fills
/// in the defaults.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The store's URL; `sqlite:` means a single, always-leading process.
    pub db_url: String,
    /// Schema and application name (`trainyard-leader`) for the lease and
    /// listener connections.
    pub connect: ConnectOptions,
    /// The HA group whose lease this replica contends for (`--ha-group`);
    /// `None`: `current_database() || '.' || current_schema()`, so two
    /// installations in one database with different schemas never share it.
    pub group: Option<String>,
    /// How long a taken or renewed lease lasts (`--leader-lease`); renewed
    /// every third of it.
    pub lease: Duration,
    /// How often a standby tries to take the lease.
    pub retry_interval: Duration,
    /// This replica's worker gRPC URL, written into the lease while it leads
    /// (`--advertise-grpc`), so standbys can point workers at it.
    pub advertise_grpc: Option<String>,
}

impl ElectionOptions {
    pub fn new(db_url: impl Into<String>) -> Self {
        Self {
            db_url: db_url.into(),
            connect: ConnectOptions {
                application_name: Some("trainyard-leader".to_owned()),
                ..ConnectOptions::default()
            },
            group: None,
            lease: DEFAULT_LEASE,
            retry_interval: Duration::from_secs(1),
            advertise_grpc: None,
        }
    }

    /// How often the leader renews: a third of the lease, so two renewals
    /// can fail before it runs out.
    pub fn renew_interval(&self) -> Duration {
        election::part(self.lease, 3)
    }

    /// How long before the lease's end (by this replica's clock, from the
    /// last successful renewal's send time) a leader that cannot renew
    /// stops serving: a sixth of the lease covers the clocks' rates and the
    /// renewal's own latency.
    pub fn safety_margin(&self) -> Duration {
        election::part(self.lease, 6)
    }

    /// The pause between renewal retries after a failure.
    pub(crate) fn renew_retry(&self) -> Duration {
        election::part(self.lease, 24)
    }

    /// `idle_in_transaction_session_timeout` and `lock_timeout` of the
    /// store's pool connections: half the lease, so a frozen leader's open
    /// transaction is gone before its lease can be taken over.
    pub fn session_guard(&self) -> Duration {
        election::part(self.lease, 2)
    }

    /// The lease connection's session settings: every statement bounded by
    /// a quarter of the lease (a renewal that hangs is abandoned and retried
    /// on a fresh connection well before the lease runs out); the server
    /// drops a dead peer within half the lease (`tcp_user_timeout`,
    /// keepalives).
    pub fn timeouts(&self) -> LeaseTimeouts {
        LeaseTimeouts {
            statement: election::part(self.lease, 4),
            tcp_user: election::part(self.lease, 2),
            keepalive_idle: election::part(self.lease, 6),
            keepalive_interval: election::part(self.lease, 6),
        }
    }
}

/// Result alias for this module.
pub type Result<T, E = HaError> = std::result::Result<T, E>;

/// What taking part in the election can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HaError {
    #[error("leader election: {0}")]
    Store(#[from] crate::store::StoreError),
}
