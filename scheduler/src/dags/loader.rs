//! [`DagLoader`]: reconciles the folder's files with the store's DAGs, one
//! full scan at a time ([`DagLoader::load_all`], [`DagLoader::reload_all`]).
//!
//! A scan reads and hashes every file but only talks to the store about files
//! whose hash differs from what the previous scan saw, so an idle scan costs
//! disk reads and no writes. A file over the size cap is never read: its
//! size and modification time stand in for the hash.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use trainyard_core::dag::{DagSpec, parse_dag};
use trainyard_core::ids::{DagId, DagVersionId};

use super::code::CodeCollector;
use super::error::{DagLoadError, FileError, Result};
use super::limits::{read_capped, read_head};
use super::scan::{DirScan, content_hash, guess_dag_id, scan_dir};
use super::{DagLoaderOptions, LoadReport};
use crate::store::{DagCatalog, NewDagVersion};

/// Loads the DAG files of one folder into the store and keeps them in step.
/// See the module docs for the rules; `run` (in `watch.rs`) drives it.
pub struct DagLoader {
    /// Canonical folder path; every tracked path lies under it.
    pub(super) dir: PathBuf,
    pub(super) options: DagLoaderOptions,
    /// What the last scan made of each file, so unchanged files cost no store call.
    files: BTreeMap<PathBuf, FileEntry>,
    /// The file each DAG's current version came from. A file that breaks keeps
    /// its DAG (so another file cannot steal the id meanwhile); a deleted one
    /// lets go of it.
    owners: BTreeMap<DagId, PathBuf>,
    /// The store's state of each DAG as this loader last saw or wrote it, so
    /// `on_change` fires only on a real change (not on every restart).
    known: HashMap<DagId, Known>,
    /// DAGs whose deactivation the store refused last time: tried again.
    pending_deactivations: BTreeMap<DagId, PathBuf>,
    /// Whether `load_all` has read the store's view once.
    seeded: bool,
    /// The folder's code files, when versions ship code snapshots.
    code: Option<CodeCollector>,
}

struct FileEntry {
    /// SHA-256 of the content last processed; `None` for entries seeded from
    /// the store, which the next scan always processes.
    hash: Option<String>,
    outcome: Outcome,
}

enum Outcome {
    /// Parsed and registered; `owners` says which DAG.
    Loaded,
    /// Does not parse; the error was recorded on `recorded`, if any id was known.
    Broken { recorded: Option<DagId> },
    /// Parsed, but another file owns `dag_id`.
    Duplicate { dag_id: DagId },
}

#[derive(Clone, Copy)]
struct Known {
    version: Option<DagVersionId>,
    active: bool,
    has_error: bool,
}

/// DAGs that lost their file in this scan, with the file (for error reports).
type Orphans = BTreeMap<DagId, PathBuf>;

/// How much of a file too large to load is read to find its `id = "…"`.
const GUESS_HEAD_BYTES: u64 = 64 * 1024;

impl DagLoader {
    pub(super) fn new(options: DagLoaderOptions) -> Result<Self> {
        let dir = options
            .dir
            .canonicalize()
            .map_err(|source| DagLoadError::Dir {
                path: options.dir.clone(),
                source,
            })?;
        if !dir.is_dir() {
            return Err(DagLoadError::NotADir { path: dir });
        }
        let code = options.code.clone().map(CodeCollector::new);
        Ok(Self {
            dir,
            options,
            code,
            files: BTreeMap::new(),
            owners: BTreeMap::new(),
            known: HashMap::new(),
            pending_deactivations: BTreeMap::new(),
            seeded: false,
        })
    }

    /// Whether versions ship the folder's code (so every file matters).
    pub(super) fn ships_code(&self) -> bool {
        self.code.is_some()
    }

    /// The folder watched, canonical.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Initial load: reads what the store already knows about this folder's
    /// DAGs (which file defines which DAG, which DAGs are active), then scans.
    /// After a restart this deactivates DAGs whose file was deleted while the
    /// scheduler was down and registers nothing for unchanged files.
    ///
    /// Fails only when the store cannot list the DAGs; problems with single
    /// files are in the report.
    #[tracing::instrument(skip(self), fields(dir = %self.dir.display()), err)]
    pub async fn load_all(&mut self, now: DateTime<Utc>) -> Result<LoadReport> {
        let dags = self.options.store.list_dags().await?;
        self.files.clear();
        self.owners.clear();
        self.known.clear();
        for dag in dags {
            self.known.insert(
                dag.id.clone(),
                Known {
                    version: dag.current_version_id,
                    active: dag.active,
                    has_error: dag.parse_error.is_some(),
                },
            );
            let Some(path) = dag.file_path.map(PathBuf::from) else {
                continue;
            };
            if !dag.active || !path.starts_with(&self.dir) {
                continue;
            }
            let outcome = if dag.current_version_id.is_some() {
                self.owners.insert(dag.id, path.clone());
                Outcome::Loaded
            } else {
                Outcome::Broken {
                    recorded: Some(dag.id),
                }
            };
            self.files.entry(path).or_insert(FileEntry {
                hash: None,
                outcome,
            });
        }
        self.seeded = true;
        let report = self.reload_all(now).await;
        tracing::info!(
            loaded = report.loaded.len(),
            deactivated = report.deactivated.len(),
            errors = report.errors.len(),
            "dags loaded"
        );
        Ok(report)
    }

    /// One full rescan: registers changed and new files, deactivates DAGs of
    /// deleted files. Safe to call at any time (the watcher calls it after
    /// each burst of events and on the periodic safety rescan); a scan over an
    /// unchanged folder writes nothing.
    pub async fn reload_all(&mut self, now: DateTime<Utc>) -> LoadReport {
        let mut report = LoadReport::default();
        let DirScan {
            files: on_disk,
            unreadable,
        } = scan_dir(&self.dir);
        let present: BTreeSet<&PathBuf> = on_disk.iter().collect();
        let mut orphans = std::mem::take(&mut self.pending_deactivations);

        // Deletions first, so a rename (delete + create with the same id) is
        // not taken for a duplicate. Files under a folder that cannot be
        // listed (an unmounted share, a permission change) are unknown, not
        // gone: deactivating every DAG over a hiccup would be worse.
        let gone: Vec<PathBuf> = self
            .files
            .keys()
            .filter(|p| !present.contains(p) && !unreadable.iter().any(|(d, _)| p.starts_with(d)))
            .cloned()
            .collect();
        for (path, source) in unreadable {
            report
                .errors
                .push((path.clone(), FileError::Read { path, source }));
        }
        for path in gone {
            self.forget(&path, &mut orphans);
        }
        // Code first: its digest is part of every version's hash below.
        if let Some(code) = &mut self.code {
            report.errors.extend(code.scan(&self.dir));
        }

        for path in &on_disk {
            self.scan_file(path, now, false, &mut orphans, &mut report)
                .await;
        }

        // A duplicate whose first file let go of the id (in this scan or an
        // earlier one) takes it over now, rather than after its next edit.
        let freed: Vec<PathBuf> = self
            .files
            .iter()
            .filter(|(_, e)| {
                matches!(&e.outcome, Outcome::Duplicate { dag_id } if !self.owners.contains_key(dag_id))
            })
            .map(|(p, _)| p.clone())
            .collect();
        for path in &freed {
            self.scan_file(path, now, true, &mut orphans, &mut report)
                .await;
        }

        for (dag_id, path) in orphans {
            if !self.owners.contains_key(&dag_id) && !self.is_recorded_by_a_file(&dag_id) {
                self.deactivate(dag_id, path, now, &mut report).await;
            }
        }

        report.loaded.sort();
        report.loaded.dedup();
        report.errors.sort_by(|a, b| a.0.cmp(&b.0));
        report
    }

    /// A tracked file is gone: its DAGs lose their file.
    fn forget(&mut self, path: &Path, orphans: &mut Orphans) {
        let Some(entry) = self.files.remove(path) else {
            return;
        };
        self.release_ids_of(path, None, orphans);
        if let Outcome::Broken {
            recorded: Some(dag_id),
        } = entry.outcome
        {
            orphans.insert(dag_id, path.to_path_buf());
        }
    }

    /// `path` no longer defines the DAGs it owned (except `keep`).
    fn release_ids_of(&mut self, path: &Path, keep: Option<&DagId>, orphans: &mut Orphans) {
        let released: Vec<DagId> = self
            .owners
            .iter()
            .filter(|(id, p)| p.as_path() == path && Some(*id) != keep)
            .map(|(id, _)| id.clone())
            .collect();
        for dag_id in released {
            self.owners.remove(&dag_id);
            orphans.insert(dag_id, path.to_path_buf());
        }
    }

    fn is_recorded_by_a_file(&self, dag_id: &DagId) -> bool {
        self.files
            .values()
            .any(|e| matches!(&e.outcome, Outcome::Broken { recorded: Some(id) } if id == dag_id))
    }

    fn notify(&self, dag_id: &DagId) {
        (self.options.on_change)(dag_id.clone());
    }

    /// Reads one file and, if its content changed (or `force`), registers it
    /// or records why it cannot be.
    async fn scan_file(
        &mut self,
        path: &Path,
        now: DateTime<Utc>,
        force: bool,
        orphans: &mut Orphans,
        report: &mut LoadReport,
    ) {
        let limits = self.options.limits;
        let read_failed = |source: std::io::Error, report: &mut LoadReport| {
            // Transient or permission trouble: keep what the file defined
            // rather than deactivating a DAG over a failed read.
            tracing::warn!(path = %path.display(), error = %source, "cannot read dag file");
            let path = path.to_path_buf();
            report
                .errors
                .push((path.clone(), FileError::Read { path, source }));
        };
        let meta = match std::fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.forget(path, orphans);
            }
            Err(source) => return read_failed(source, report),
        };
        if let Err(error) = limits.check_size(path, meta.len()) {
            return self
                .too_large(path, meta.len(), &meta, error, now, force, orphans, report)
                .await;
        }
        let bytes = match read_capped(path, limits.max_file_size.bytes()) {
            Ok(Ok(bytes)) => bytes,
            // It grew between the size check and the read.
            Ok(Err(size)) => {
                let error = FileError::TooLarge {
                    path: path.to_path_buf(),
                    size,
                    limit: limits.max_file_size,
                };
                return self
                    .too_large(path, size, &meta, error, now, force, orphans, report)
                    .await;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return self.forget(path, orphans);
            }
            Err(source) => return read_failed(source, report),
        };
        let hash = match &self.code {
            Some(code) => code.version_hash(&content_hash(&bytes)),
            None => content_hash(&bytes),
        };
        let unchanged = self
            .files
            .get(path)
            .is_some_and(|e| e.hash.as_deref() == Some(hash.as_str()));
        if unchanged && !force {
            return;
        }
        let Ok(source) = String::from_utf8(bytes) else {
            let error = FileError::NotUtf8 {
                path: path.to_path_buf(),
            };
            return self
                .broken(path, hash, None, error, now, orphans, report)
                .await;
        };
        let guess = || guess_dag_id(&source).map(DagId::new);
        // Counted before parsing: the parser's tree costs far more than the text.
        if let Err(error) = limits.check_source(path, &source) {
            return self
                .broken(path, hash, guess(), error, now, orphans, report)
                .await;
        }
        let display = path.display().to_string();
        match parse_dag(&display, &source) {
            Ok(spec) => {
                // Tasks written as inline tables escape the header count.
                if let Err(error) = limits.check_task_count(path, spec.tasks.len()) {
                    let guess = Some(DagId::new(spec.id.clone()));
                    return self
                        .broken(path, hash, guess, error, now, orphans, report)
                        .await;
                }
                self.register(path, hash, source, spec, now, orphans, report)
                    .await;
            }
            Err(errors) => {
                let guess = guess();
                self.broken(
                    path,
                    hash,
                    guess,
                    FileError::Parse(errors),
                    now,
                    orphans,
                    report,
                )
                .await;
            }
        }
    }

    /// A file over the size cap, known from its metadata only: recorded like
    /// a broken file (on the id its first lines name) and not read again
    /// until its size or modification time changes.
    #[allow(clippy::too_many_arguments)]
    async fn too_large(
        &mut self,
        path: &Path,
        size: u64,
        meta: &std::fs::Metadata,
        error: FileError,
        now: DateTime<Utc>,
        force: bool,
        orphans: &mut Orphans,
        report: &mut LoadReport,
    ) {
        let modified = meta
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos());
        // Stands in for the content hash, which would mean reading the file.
        let stamp = format!("too-large:{size}:{modified}");
        let unchanged = self
            .files
            .get(path)
            .is_some_and(|e| e.hash.as_deref() == Some(stamp.as_str()));
        if unchanged && !force {
            return;
        }
        let guess = read_head(path, GUESS_HEAD_BYTES)
            .ok()
            .and_then(|head| guess_dag_id(&head))
            .map(DagId::new);
        self.broken(path, stamp, guess, error, now, orphans, report)
            .await;
    }

    #[allow(clippy::too_many_arguments)]
    async fn register(
        &mut self,
        path: &Path,
        hash: String,
        source: String,
        spec: DagSpec,
        now: DateTime<Utc>,
        orphans: &mut Orphans,
        report: &mut LoadReport,
    ) {
        let dag_id = DagId::new(spec.id.clone());
        if let Some(first) = self.owners.get(&dag_id).filter(|p| p.as_path() != path) {
            let error = FileError::DuplicateId {
                dag_id: dag_id.clone(),
                path: path.to_path_buf(),
                first: first.clone(),
            };
            tracing::warn!(%error, "duplicate dag id");
            self.release_ids_of(path, None, orphans);
            self.release_recorded(path, None, orphans);
            self.files.insert(
                path.to_path_buf(),
                FileEntry {
                    hash: Some(hash),
                    outcome: Outcome::Duplicate { dag_id },
                },
            );
            report.errors.push((path.to_path_buf(), error));
            return;
        }
        let mut spec = spec;
        if let Some(code) = &mut self.code {
            match code.snapshot(&self.dir, path, &source).await {
                Ok(snapshot) => spec.code = snapshot,
                Err(error) => {
                    // The file entry stays as it was, so the next scan retries.
                    tracing::warn!(%error, "dag code not stored");
                    report.errors.push((path.to_path_buf(), error));
                    return;
                }
            }
        }
        let spec = match crate::store::SpecJson::encode(&spec) {
            Ok(spec) => spec,
            Err(source) => {
                let path = path.to_path_buf();
                report
                    .errors
                    .push((path.clone(), FileError::Encode { path, source }));
                return;
            }
        };
        let version = NewDagVersion {
            dag_id: dag_id.clone(),
            content_hash: hash.clone(),
            source,
            spec,
            file_path: Some(path.display().to_string()),
        };
        let upserted = match self.options.store.upsert_dag_version(version, now).await {
            Ok(upserted) => upserted,
            Err(source) => {
                // The file entry stays as it was, so the next scan retries.
                tracing::warn!(path = %path.display(), error = %source, "cannot register dag version");
                let path = path.to_path_buf();
                report
                    .errors
                    .push((path.clone(), FileError::Store { path, source }));
                return;
            }
        };
        self.release_ids_of(path, Some(&dag_id), orphans);
        self.release_recorded(path, Some(&dag_id), orphans);
        self.owners.insert(dag_id.clone(), path.to_path_buf());
        self.files.insert(
            path.to_path_buf(),
            FileEntry {
                hash: Some(hash),
                outcome: Outcome::Loaded,
            },
        );
        let now_known = Known {
            version: Some(upserted.version_id),
            active: true,
            has_error: false,
        };
        let before = self.known.insert(dag_id.clone(), now_known);
        let changed = upserted.created
            || before.is_none_or(|k| k.version != now_known.version || !k.active || k.has_error);
        if changed {
            tracing::info!(
                dag_id = %dag_id,
                version = %upserted.version_id,
                new_version = upserted.created,
                path = %path.display(),
                "dag registered"
            );
            self.notify(&dag_id);
        }
        report.loaded.push(dag_id);
    }

    /// `path` no longer records its parse error on the DAG it did before
    /// (unless that is `keep`): that DAG may have lost its only file.
    fn release_recorded(&mut self, path: &Path, keep: Option<&DagId>, orphans: &mut Orphans) {
        if let Some(FileEntry {
            outcome: Outcome::Broken {
                recorded: Some(dag_id),
            },
            ..
        }) = self.files.get(path)
            && Some(dag_id) != keep
        {
            orphans.insert(dag_id.clone(), path.to_path_buf());
        }
    }

    /// The file does not parse: its last good version (if any) stays current
    /// and the error goes on the DAG it defined, or failing that on the id it
    /// names, unless that id belongs to another file.
    #[allow(clippy::too_many_arguments)]
    async fn broken(
        &mut self,
        path: &Path,
        hash: String,
        guess: Option<DagId>,
        error: FileError,
        now: DateTime<Utc>,
        orphans: &mut Orphans,
        report: &mut LoadReport,
    ) {
        let owned = self
            .owners
            .iter()
            .find(|(_, p)| p.as_path() == path)
            .map(|(id, _)| id.clone());
        let target = owned
            .or_else(|| guess.filter(|id| self.owners.get(id).is_none_or(|p| p.as_path() == path)));
        tracing::warn!(
            path = %path.display(),
            dag_id = target.as_ref().map(DagId::as_str),
            %error,
            "dag file does not load"
        );
        if let Some(dag_id) = &target {
            let message = error.to_string();
            let display = path.display().to_string();
            let recorded = self
                .options
                .store
                .record_parse_error(dag_id, Some(&display), &message, now)
                .await;
            if let Err(source) = recorded {
                let path = path.to_path_buf();
                report.errors.push((path.clone(), error));
                report
                    .errors
                    .push((path.clone(), FileError::Store { path, source }));
                return;
            }
            // The store also (re)activates the DAG when it records an error.
            let known = self.known.entry(dag_id.clone()).or_insert(Known {
                version: None,
                active: true,
                has_error: true,
            });
            known.active = true;
            known.has_error = true;
            self.notify(dag_id);
        }
        self.release_recorded(path, target.as_ref(), orphans);
        self.files.insert(
            path.to_path_buf(),
            FileEntry {
                hash: Some(hash),
                outcome: Outcome::Broken { recorded: target },
            },
        );
        report.errors.push((path.to_path_buf(), error));
    }

    async fn deactivate(
        &mut self,
        dag_id: DagId,
        path: PathBuf,
        now: DateTime<Utc>,
        report: &mut LoadReport,
    ) {
        if self.known.get(&dag_id).is_some_and(|k| !k.active) {
            return;
        }
        match self.options.store.deactivate_dag(&dag_id, now).await {
            Ok(()) => {}
            // Never registered (e.g. its only record failed): nothing to deactivate.
            Err(e) if e.is_not_found() => return,
            Err(source) => {
                tracing::warn!(dag_id = %dag_id, error = %source, "cannot deactivate dag");
                self.pending_deactivations.insert(dag_id, path.clone());
                report
                    .errors
                    .push((path.clone(), FileError::Store { path, source }));
                return;
            }
        }
        tracing::info!(dag_id = %dag_id, path = %path.display(), "dag file removed, dag deactivated");
        if let Some(known) = self.known.get_mut(&dag_id) {
            known.active = false;
        }
        self.notify(&dag_id);
        report.deactivated.push(dag_id);
    }

    /// Whether [`DagLoader::load_all`] has run.
    pub fn loaded_once(&self) -> bool {
        self.seeded
    }

    /// The store this loader writes to.
    pub fn store(&self) -> &Arc<dyn DagCatalog> {
        &self.options.store
    }
}

impl std::fmt::Debug for DagLoader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DagLoader")
            .field("dir", &self.dir)
            .field("files", &self.files.len())
            .field("owners", &self.owners)
            .finish_non_exhaustive()
    }
}
