//! High availability: several `trainyard scheduler` replicas on one
//! PostgreSQL database, exactly one of which runs the engine.
//!
//! - [`LeaderElection`] (`election.rs`): a replica leads while it holds a
//!   session-level advisory lock on a dedicated connection; standbys retry
//!   every second; a leader whose lock connection fails steps down at once.
//!   On SQLite there is one process and it always leads.
//! - [`spawn_wakeup_relay`] (`wakeups.rs`): the leader `LISTEN`s on
//!   `trainyard_wakeup` and hands each wake-up to its engine (a run created
//!   by a standby's API, a DAG paused or resumed there), so nothing waits
//!   for a polling interval between processes.
//! - [`HaControl`] (`control.rs`): the API's [`crate::http::RunControl`] on a
//!   replica: commands go to the engine while leading; on standby, triggers
//!   and pause/resume are written through the store (with a wake-up) and the
//!   other commands are refused as unavailable.
//!
//! Safety does not rest on the lock alone: between a leader losing its
//! session and noticing (at most one check interval), two engines may run.
//! Every state change is a compare-and-set in the store, so the stale one
//! cannot move a task twice; it only fails its writes until it steps down.

mod control;
mod election;
mod wakeups;

use std::time::Duration;

pub use control::HaControl;
pub use election::LeaderElection;
pub use wakeups::spawn_wakeup_relay;

use crate::store::ConnectOptions;

/// The advisory lock key every replica of an installation contends for
/// (ASCII `trainyrd`). Installations sharing one database need different keys.
pub const LEADER_LOCK_KEY: i64 = 0x7472_6169_6e79_7264;

/// Whether this replica runs the engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Serves reads and standby commands; waits for the lock.
    Standby,
    /// Holds the lock: runs the engine and accepts workers.
    Leader,
}

/// How a replica takes part in the election; [`ElectionOptions::new`] fills
/// in the defaults.
#[derive(Debug, Clone)]
pub struct ElectionOptions {
    /// The store's URL; `sqlite:` means a single, always-leading process.
    pub db_url: String,
    /// Schema and application name for the lock and listener connections.
    pub connect: ConnectOptions,
    pub lock_key: i64,
    /// How often a standby tries for the lock.
    pub retry_interval: Duration,
    /// How often a leader checks that its session still holds the lock.
    pub check_interval: Duration,
    /// A check not answered this fast counts as a lost lock.
    pub check_timeout: Duration,
}

impl ElectionOptions {
    pub fn new(db_url: impl Into<String>) -> Self {
        Self {
            db_url: db_url.into(),
            connect: ConnectOptions {
                application_name: Some("trainyard-leader".to_owned()),
                ..ConnectOptions::default()
            },
            lock_key: LEADER_LOCK_KEY,
            retry_interval: Duration::from_secs(1),
            check_interval: Duration::from_secs(1),
            check_timeout: Duration::from_secs(2),
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
