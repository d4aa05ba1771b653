//! DAG loading: keeps the store's DAGs in step with the `*.toml` files of one
//! folder.
//!
//! [`DagLoaderOptions`] → [`DagLoaderOptions::build`] → [`DagLoader::load_all`]
//! (initial load) → [`DagLoader::run`] (watch and reload until shutdown).
//!
//! What it guarantees, file by file (one bad file never stops the others):
//! - a file whose content changed registers a new DAG version (content hash,
//!   so saving identical bytes or `touch` registers nothing and notifies
//!   nobody; going back to an earlier content makes that version current
//!   again); runs already started keep their version — the store and the
//!   engine see to that, the loader only registers;
//! - a file that stops parsing keeps its last good version current and the
//!   error is recorded on that DAG (`Store::record_parse_error`); a file that
//!   never parsed records it on the id its `id = "…"` line names, when it
//!   has a valid one;
//! - a deleted file deactivates its DAG (history stays); a file that comes
//!   back reactivates it; renaming a file keeps the DAG active;
//! - a second file claiming a DAG id another file defines is an error naming
//!   both files; the first keeps the id, and the second takes over when the
//!   first lets go of it;
//! - a file over the size cap (`DagLimits::max_file_size`, from its
//!   metadata, never read) or with more tasks than the task cap (counted
//!   before parsing) is a parse error on its DAG like any broken file, so a
//!   35 MB file of a million tasks costs a `stat`, not gigabytes;
//! - non-`.toml` files are not DAGs; with code snapshots on
//!   ([`DagLoaderOptions::code`], `code.rs`) they are the DAGs' code: each
//!   version records the folder's code files and its own TOML with their
//!   digests (uploaded to the artifact store), and editing one registers a
//!   new version of the folder's DAGs; hidden files and folders are ignored;
//! - a folder that cannot be listed (unmounted share, the DAG folder itself
//!   removed) is reported, and its DAGs are kept as they were rather than
//!   all deactivated at once.
//!
//! Each change that matters to scheduling (new current version, activation,
//! deactivation, a recorded parse error) is announced through the `on_change`
//! callback, which the integrator wires to the engine's `dag_changed`.
//!
//! Watching uses the OS notification API (inotify, FSEvents, …) through the
//! `notify` crate. Every event is only a hint: after a short debounce the
//! loader rescans the whole folder and compares content hashes, so missed,
//! reordered or coalesced events cannot leave it wrong for longer than the
//! next event or the periodic safety rescan ([`DagLoaderOptions::rescan_interval`],
//! 30 s by default) — needed on network and container filesystems where
//! notifications are lost. On filesystems with no notifications at all, set
//! [`DagLoaderOptions::poll_interval`] to poll instead.

mod code;
mod error;
mod limits;
mod loader;
mod scan;
mod watch;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::mpsc;
use trainyard_core::ids::DagId;

use crate::store::DagCatalog;

pub use code::{CodeOptions, DEFAULT_MAX_CODE_MIB, exclude_set, snapshot_root};
pub use error::{DagLoadError, FileError, Result};
pub use limits::{DagLimits, count_task_tables};
pub use loader::DagLoader;
pub use scan::{dag_files, try_dag_files};

/// Called with a DAG's id whenever the loader changed it in the store.
pub type OnDagChange = Arc<dyn Fn(DagId) + Send + Sync>;

/// Where the loader reads the time from (the engine's clock in production).
pub type NowFn = Arc<dyn Fn() -> DateTime<Utc> + Send + Sync>;

/// Settings of a [`DagLoader`]; [`DagLoaderOptions::new`] gives the defaults.
#[derive(Clone)]
pub struct DagLoaderOptions {
    /// The folder holding the DAG files (searched recursively).
    pub dir: PathBuf,
    pub store: Arc<dyn DagCatalog>,
    /// Told about every DAG the loader changed; a no-op by default.
    pub on_change: OnDagChange,
    /// How long to let a burst of file events settle before rescanning
    /// (editors write a file in several steps); default 200 ms.
    pub debounce: Duration,
    /// Full rescan even without events, for filesystems that lose them
    /// (NFS, some container mounts); `None` disables it. Default 30 s.
    pub rescan_interval: Option<Duration>,
    /// Poll the folder at this interval instead of using OS notifications
    /// (for filesystems that have none). `None` (default) uses notifications,
    /// falling back to polling every second if they cannot be set up.
    pub poll_interval: Option<Duration>,
    /// The time stamped on what the loader writes in [`DagLoader::run`];
    /// `Utc::now` by default.
    pub clock: NowFn,
    /// Size and task caps checked before a file is parsed.
    pub limits: DagLimits,
    /// Code snapshots shipped with every version; `None` (default): none,
    /// tasks run in each worker's working directory.
    pub code: Option<CodeOptions>,
}

impl DagLoaderOptions {
    pub const DEFAULT_DEBOUNCE: Duration = Duration::from_millis(200);
    pub const DEFAULT_RESCAN_INTERVAL: Duration = Duration::from_secs(30);

    pub fn new(dir: impl Into<PathBuf>, store: Arc<dyn DagCatalog>) -> Self {
        Self {
            dir: dir.into(),
            store,
            on_change: Arc::new(|_| {}),
            debounce: Self::DEFAULT_DEBOUNCE,
            rescan_interval: Some(Self::DEFAULT_RESCAN_INTERVAL),
            poll_interval: None,
            clock: Arc::new(Utc::now),
            limits: DagLimits::default(),
            code: None,
        }
    }

    pub fn on_change(mut self, f: impl Fn(DagId) + Send + Sync + 'static) -> Self {
        self.on_change = Arc::new(f);
        self
    }

    /// Sends each changed DAG's id on `tx` (a closed receiver is ignored).
    pub fn notify_channel(self, tx: mpsc::UnboundedSender<DagId>) -> Self {
        self.on_change(move |id| {
            // The receiver going away means nobody listens any more; loading goes on.
            let _ = tx.send(id);
        })
    }

    pub fn debounce(mut self, debounce: Duration) -> Self {
        self.debounce = debounce;
        self
    }

    pub fn rescan_interval(mut self, interval: Option<Duration>) -> Self {
        self.rescan_interval = interval;
        self
    }

    pub fn poll_interval(mut self, interval: Option<Duration>) -> Self {
        self.poll_interval = interval;
        self
    }

    pub fn clock(mut self, now: impl Fn() -> DateTime<Utc> + Send + Sync + 'static) -> Self {
        self.clock = Arc::new(now);
        self
    }

    pub fn limits(mut self, limits: DagLimits) -> Self {
        self.limits = limits;
        self
    }

    pub fn code(mut self, code: Option<CodeOptions>) -> Self {
        self.code = code;
        self
    }

    /// Checks the folder exists and makes its path canonical (file paths are
    /// recorded in the store under it, and events name canonical paths).
    pub fn build(self) -> Result<DagLoader> {
        DagLoader::new(self)
    }
}

impl fmt::Debug for DagLoaderOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DagLoaderOptions")
            .field("dir", &self.dir)
            .field("store", &self.store.backend())
            .field("debounce", &self.debounce)
            .field("rescan_interval", &self.rescan_interval)
            .field("poll_interval", &self.poll_interval)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

/// What one load or rescan did.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// DAGs registered or confirmed from a good file in this pass, sorted
    /// (after [`DagLoader::load_all`]: every good file; after a rescan: only
    /// the files whose content changed).
    pub loaded: Vec<DagId>,
    /// DAGs whose file disappeared in this pass (now inactive).
    pub deactivated: Vec<DagId>,
    /// Files that did not load, with why, in path order.
    pub errors: Vec<(PathBuf, FileError)>,
}

impl LoadReport {
    pub fn is_clean(&self) -> bool {
        self.errors.is_empty()
    }
}
