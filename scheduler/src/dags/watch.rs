//! [`DagLoader::run`]: watches the folder and rescans after each burst of
//! file events, on a periodic safety rescan, until shutdown.
//!
//! Events are hints, never applied one by one: each relevant burst ends in a
//! full [`DagLoader::reload_all`], which compares content hashes. That makes
//! renames, editors' write-to-temp-then-rename, directory moves and lost or
//! coalesced events all come out right without per-event bookkeeping.

use std::future::Future;
use std::path::Path;
use std::time::Duration;

use notify::event::{AccessKind, AccessMode};
use notify::{Event, EventKind, PollWatcher, RecursiveMode, Watcher};
use tokio::sync::mpsc;
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::error::{DagLoadError, Result};
use super::loader::DagLoader;
use super::scan::{has_toml_extension, is_hidden_below};

/// Poll interval used when OS notifications cannot be set up.
const FALLBACK_POLL: Duration = Duration::from_secs(1);

type EventRx = mpsc::UnboundedReceiver<notify::Result<Event>>;

impl DagLoader {
    /// Watches the folder until `shutdown` completes. Starts watching first and
    /// then loads (or rescans, if [`DagLoader::load_all`] already ran), so a
    /// change made in between is not missed.
    ///
    /// Returns an error only when the folder cannot be watched at all, or the
    /// initial load cannot read the store.
    #[tracing::instrument(skip_all, fields(dir = %self.dir.display()), err)]
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<()> {
        let (tx, mut events) = mpsc::unbounded_channel();
        // Held for the whole loop: dropping the watcher stops the events.
        let _watcher = self.start_watcher(tx)?;

        let now = (self.options.clock)();
        if self.loaded_once() {
            self.reload_all(now).await;
        } else {
            self.load_all(now).await?;
        }

        let mut rescan = self.options.rescan_interval.map(|period| {
            let mut interval = tokio::time::interval_at(Instant::now() + period, period);
            interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
            interval
        });
        let mut events_open = true;
        tokio::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                event = events.recv(), if events_open => {
                    let Some(event) = event else {
                        // Cannot happen while `_watcher` lives; rely on rescans if it does.
                        events_open = false;
                        continue;
                    };
                    if !self.is_relevant(&event) {
                        continue;
                    }
                    self.settle(&mut events).await;
                }
                () = tick(&mut rescan) => {
                    tracing::debug!("periodic dag rescan");
                }
            }
            let report = self.reload_all((self.options.clock)()).await;
            if !report.loaded.is_empty() || !report.deactivated.is_empty() {
                tracing::info!(
                    loaded = ?report.loaded,
                    deactivated = ?report.deactivated,
                    errors = report.errors.len(),
                    "dag folder rescanned"
                );
            }
        }
        tracing::debug!("dag loader stopped");
        Ok(())
    }

    fn start_watcher(
        &self,
        tx: mpsc::UnboundedSender<notify::Result<Event>>,
    ) -> Result<Box<dyn Watcher + Send>> {
        let handler = move |event| {
            // The loop has stopped when the receiver is gone; nothing to do.
            let _ = tx.send(event);
        };
        let mut watcher: Box<dyn Watcher + Send> = match self.options.poll_interval {
            Some(every) => Box::new(poll_watcher(handler, every, &self.dir)?),
            None => match notify::recommended_watcher(handler.clone()) {
                Ok(watcher) => Box::new(watcher),
                Err(error) => {
                    tracing::warn!(%error, "file notifications unavailable, polling the dag folder every second");
                    Box::new(poll_watcher(handler, FALLBACK_POLL, &self.dir)?)
                }
            },
        };
        watcher
            .watch(&self.dir, RecursiveMode::Recursive)
            .map_err(|source| DagLoadError::Watch {
                path: self.dir.clone(),
                source,
            })?;
        Ok(watcher)
    }

    /// Whether an event may concern a DAG file. Errors and unknown kinds count
    /// (a rescan is cheap and safe); reads, hidden paths and existing non-DAG
    /// files do not (unless versions ship code, where every file counts). A path that no longer exists or has no `.toml` extension
    /// may have been a folder full of DAG files, so it counts.
    fn is_relevant(&self, event: &notify::Result<Event>) -> bool {
        let event = match event {
            Ok(event) => event,
            Err(error) => {
                tracing::warn!(%error, "dag folder watch error, rescanning");
                return true;
            }
        };
        if let EventKind::Access(kind) = event.kind
            && kind != AccessKind::Close(AccessMode::Write)
        {
            return false;
        }
        if event.need_rescan() || event.paths.is_empty() {
            return true;
        }
        event.paths.iter().any(|path| self.may_hold_dags(path))
    }

    fn may_hold_dags(&self, path: &Path) -> bool {
        if path == self.dir {
            return true;
        }
        if is_hidden_below(&self.dir, path) {
            return false;
        }
        // With code snapshots every other file is part of the DAGs' code
        // (the scan skips byte-code caches itself).
        if self.ships_code() {
            return true;
        }
        has_toml_extension(path) || path.is_dir() || !path.exists()
    }

    /// Lets a burst of events settle for the debounce time, swallowing them:
    /// the rescan that follows covers them all.
    async fn settle(&self, events: &mut EventRx) {
        tokio::time::sleep(self.options.debounce).await;
        while events.try_recv().is_ok() {}
    }
}

fn poll_watcher(
    handler: impl notify::EventHandler,
    every: Duration,
    dir: &Path,
) -> Result<PollWatcher> {
    // notify's poller compares mtimes in whole seconds, so two saves within a
    // second would look like one; DAG files are small, so hash contents too.
    let config = notify::Config::default()
        .with_poll_interval(every)
        .with_compare_contents(true);
    PollWatcher::new(handler, config).map_err(|source| DagLoadError::Watch {
        path: dir.to_path_buf(),
        source,
    })
}

/// The next tick of the safety rescan, or never when it is off.
async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}
