//! [`LeaderElection`]: who runs the engine. On PostgreSQL, the replica whose
//! dedicated connection holds the advisory lock; on SQLite, the one process.

use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::{ElectionOptions, Result, Role};
use crate::store::{Backend, LeaderLock, backend_of};

/// Why [`LeaderElection::hold`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The lock's session failed or stopped answering: another replica may
    /// lead already, so the engine must stop now.
    Lost,
    /// The shutdown token fired while leading.
    Shutdown,
}

/// One replica's part in the election. Publishes its [`Role`] on a watch.
#[derive(Debug)]
pub struct LeaderElection {
    opts: ElectionOptions,
    backend: Backend,
    /// The lock's connection, once opened (dropped after a failure so the
    /// next try opens a fresh one).
    lock: Option<LeaderLock>,
    role: watch::Sender<Role>,
}

impl LeaderElection {
    pub fn new(opts: ElectionOptions) -> Result<Self> {
        let backend = backend_of(&opts.db_url)?;
        Ok(Self {
            opts,
            backend,
            lock: None,
            role: watch::Sender::new(Role::Standby),
        })
    }

    /// The role as it changes.
    pub fn role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    /// One try for the lock (the role stays Standby until
    /// [`LeaderElection::mark_leading`]). Trouble reaching the database counts as "not
    /// leader" (logged); the next try reconnects.
    pub async fn try_acquire(&mut self) -> bool {
        let won = match self.backend {
            Backend::Sqlite => true,
            Backend::Postgres => match self.try_lock().await {
                Ok(won) => won,
                Err(e) => {
                    warn!(error = %e, "cannot reach the database for the leader lock");
                    self.drop_lock().await;
                    false
                }
            },
        };
        if won {
            info!("leader lock acquired");
        }
        won
    }

    /// The engine runs under the lock now: publish [`Role::Leader`]. Kept
    /// apart from acquiring so the role never says "leader" while the engine
    /// is still rebuilding (callers would find no engine to talk to).
    pub fn mark_leading(&self) {
        info!("this replica leads");
        self.role.send_replace(Role::Leader);
    }

    async fn try_lock(&mut self) -> Result<bool> {
        let lock = match &mut self.lock {
            Some(lock) => lock,
            None => self.lock.insert(
                LeaderLock::connect(&self.opts.db_url, &self.opts.connect, self.opts.lock_key)
                    .await?,
            ),
        };
        Ok(lock.try_acquire().await?)
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

    /// While leading: checks the lock every `check_interval` and returns as
    /// soon as it is lost (the role is Standby by then) or `shutdown` fires.
    pub async fn hold(&mut self, shutdown: &CancellationToken) -> Held {
        if self.backend == Backend::Sqlite {
            shutdown.cancelled().await;
            return Held::Shutdown;
        }
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Held::Shutdown,
                () = tokio::time::sleep(self.opts.check_interval) => {}
            }
            let held = match &mut self.lock {
                Some(lock) => lock.check(self.opts.check_timeout).await,
                None => Ok(false),
            };
            match held {
                Ok(true) => {}
                Ok(false) => {
                    warn!("leader lock no longer held; stepping down");
                    return self.lost().await;
                }
                Err(e) => {
                    warn!(error = %e, "leader lock connection failed; stepping down");
                    return self.lost().await;
                }
            }
        }
    }

    async fn lost(&mut self) -> Held {
        self.role.send_replace(Role::Standby);
        self.drop_lock().await;
        Held::Lost
    }

    /// Gives the lock up (on shutdown): releases it and closes its connection.
    pub async fn step_down(&mut self) {
        self.role.send_replace(Role::Standby);
        if let Some(lock) = self.lock.take() {
            lock.release().await;
            info!("leader lock released");
        }
    }

    async fn drop_lock(&mut self) {
        if let Some(lock) = self.lock.take() {
            // Closing ends the session, which frees the lock if it still held it.
            lock.release().await;
        }
    }
}
