//! The code that follows a DAG version (see [`trainyard_core::dag::code`]):
//! which files of the DAG folder make it up, their digests, and their
//! upload to the artifact store.
//!
//! Every scan lists the folder's code files once — every regular file that
//! is not a DAG file (`*.toml`), not hidden, not a Python byte-code cache
//! (`__pycache__/`, `*.pyc`: running a job beside the scheduler must not
//! make a new version of every DAG) and not matched by an exclude pattern
//! (`--dag-code-exclude`). Each DAG's snapshot is those files plus its own
//! TOML file. Their combined digest is part of the DAG version's identity,
//! so editing `jobs/train.py` registers a new version of the DAGs of that
//! folder, while runs already pinned to the old version keep the old file.
//!
//! Hashes are cached by (size, modification time), so an idle rescan hashes
//! nothing; files are uploaded content-addressed (`code/sha256/<hex>`)
//! before the version that needs them is registered, and only when the
//! store lacks them. A folder whose code is over `--dag-code-max-bytes`
//! ships no snapshot (reported as an error of the folder): its tasks run in
//! each worker's working directory, as without snapshots.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use bytes::Bytes;
use globset::GlobSet;
use trainyard_artifacts::ArtifactStore;
use trainyard_core::dag::code::{CodeFile, CodeSnapshot};
use trainyard_core::resources::ByteSize;

use super::error::FileError;
use super::scan::{content_hash, has_toml_extension};

/// Default cap (MiB) on the code shipped with a DAG version.
pub const DEFAULT_MAX_CODE_MIB: u64 = 64;

/// How DAG code snapshots are made; off when the loader has none.
#[derive(Debug, Clone)]
pub struct CodeOptions {
    /// Where the files go (the installation's shared artifact store).
    pub artifacts: ArtifactStore,
    /// The DAG folder's place in a snapshot ([`CodeSnapshot::root`]).
    pub root: String,
    /// Total bytes a folder's code may have; over it, no snapshot.
    pub max_bytes: ByteSize,
    /// Paths (relative to the DAG folder) left out of every snapshot.
    pub exclude: GlobSet,
}

/// What one scan found in the folder (besides the DAG files).
#[derive(Debug, Clone, Default)]
pub(super) struct FolderCode {
    /// The shared files, sorted by path; `None` when the folder is over the
    /// cap (no snapshots this scan).
    files: Option<Vec<CodeFile>>,
    /// Identity of `files`: part of every DAG version's hash.
    digest: String,
}

struct Cached {
    size: u64,
    modified: Option<SystemTime>,
    sha256: String,
}

/// The loader's part that knows about code files; see the module docs.
pub(super) struct CodeCollector {
    options: CodeOptions,
    hashes: BTreeMap<PathBuf, Cached>,
    /// Digests this process knows are in the artifact store.
    stored: HashSet<String>,
    /// The latest scan's result.
    folder: FolderCode,
}

impl CodeCollector {
    pub(super) fn new(options: CodeOptions) -> Self {
        Self {
            options,
            hashes: BTreeMap::new(),
            stored: HashSet::new(),
            folder: FolderCode::default(),
        }
    }

    /// Lists and hashes the folder's code files. Returns the error to
    /// report for the folder, if any (too large; files that cannot be read
    /// are left out and reported too).
    pub(super) fn scan(&mut self, dir: &Path) -> Vec<(PathBuf, FileError)> {
        let mut errors = Vec::new();
        let mut files = Vec::new();
        let mut seen = HashSet::new();
        for entry in walkdir::WalkDir::new(dir)
            .follow_links(false)
            .sort_by_file_name()
            .into_iter()
            .filter_entry(|e| e.depth() == 0 || !skipped_name(e.file_name()))
        {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    let path = e
                        .path()
                        .map_or_else(|| dir.to_path_buf(), Path::to_path_buf);
                    errors.push((
                        path.clone(),
                        FileError::Read {
                            path,
                            source: e.into(),
                        },
                    ));
                    continue;
                }
            };
            let path = entry.path();
            // Regular files, or links to them; folder links are not followed.
            let meta = match std::fs::metadata(path) {
                Ok(meta) if meta.is_file() => meta,
                _ => continue,
            };
            if has_toml_extension(path) {
                continue;
            }
            let Some(rel) = relative(dir, path) else {
                continue;
            };
            if self.options.exclude.is_match(&rel) {
                continue;
            }
            let modified = meta.modified().ok();
            let sha256 = match self.hashes.get(path) {
                Some(c) if c.size == meta.len() && c.modified == modified && modified.is_some() => {
                    c.sha256.clone()
                }
                _ => match std::fs::read(path) {
                    Ok(bytes) => content_hash(&bytes),
                    Err(source) => {
                        let path = path.to_path_buf();
                        errors.push((path.clone(), FileError::Read { path, source }));
                        continue;
                    }
                },
            };
            self.hashes.insert(
                path.to_path_buf(),
                Cached {
                    size: meta.len(),
                    modified,
                    sha256: sha256.clone(),
                },
            );
            seen.insert(path.to_path_buf());
            files.push(CodeFile {
                path: rel,
                sha256,
                size: meta.len(),
                executable: is_executable(&meta),
            });
        }
        self.hashes.retain(|p, _| seen.contains(p));
        let total: u64 = files.iter().map(|f| f.size).sum();
        let limit = self.options.max_bytes;
        let files = if total > limit.bytes() {
            errors.push((
                dir.to_path_buf(),
                FileError::CodeTooLarge {
                    dir: dir.to_path_buf(),
                    size: total,
                    limit,
                },
            ));
            None
        } else {
            Some(files)
        };
        let digest = match &files {
            Some(files) => CodeSnapshot {
                root: self.options.root.clone(),
                files: files.clone(),
            }
            .digest(),
            None => "none".to_owned(),
        };
        self.folder = FolderCode { files, digest };
        errors
    }

    /// A DAG file's version hash: its own content's, combined with the
    /// folder's code when snapshots are on.
    pub(super) fn version_hash(&self, own: &str) -> String {
        content_hash(format!("{own}\ncode:{}", self.folder.digest).as_bytes())
    }

    /// The snapshot of the DAG in `path` (read as `source`), its files
    /// uploaded; `Ok(None)` when the folder ships none.
    pub(super) async fn snapshot(
        &mut self,
        dir: &Path,
        path: &Path,
        source: &str,
    ) -> Result<Option<CodeSnapshot>, FileError> {
        let Some(shared) = self.folder.files.clone() else {
            return Ok(None);
        };
        let Some(rel) = relative(dir, path) else {
            return Ok(None);
        };
        let own = CodeFile {
            path: rel,
            sha256: content_hash(source.as_bytes()),
            size: source.len() as u64,
            executable: false,
        };
        let upload_error = |message: String| FileError::CodeUpload {
            path: path.to_path_buf(),
            message,
        };
        self.ensure_stored(&own, || Ok(Bytes::copy_from_slice(source.as_bytes())))
            .await
            .map_err(upload_error)?;
        for file in &shared {
            let local = dir.join(&file.path);
            self.ensure_stored(file, || {
                let bytes = std::fs::read(&local)
                    .map_err(|e| format!("cannot read {}: {e}", local.display()))?;
                // Changed since the scan: the next scan registers it anew.
                if content_hash(&bytes) != file.sha256 {
                    return Err(format!(
                        "{} changed while the folder was loading; it is picked up by the next scan",
                        local.display()
                    ));
                }
                Ok(Bytes::from(bytes))
            })
            .await
            .map_err(upload_error)?;
        }
        let mut files = shared;
        files.push(own);
        files.sort();
        Ok(Some(CodeSnapshot {
            root: self.options.root.clone(),
            files,
        }))
    }

    async fn ensure_stored(
        &mut self,
        file: &CodeFile,
        bytes: impl FnOnce() -> Result<Bytes, String>,
    ) -> Result<(), String> {
        if self.stored.contains(&file.sha256) {
            return Ok(());
        }
        let key = file.object_key();
        let store = &self.options.artifacts;
        match store.size(&key).await {
            Ok(_) => {}
            Err(e) if e.is_not_found() => {
                store
                    .put_bytes(&key, bytes()?)
                    .await
                    .map_err(|e| format!("cannot store {}: {e}", file.path))?;
            }
            Err(e) => {
                return Err(format!(
                    "cannot reach the artifact store for {}: {e}",
                    file.path
                ));
            }
        }
        self.stored.insert(file.sha256.clone());
        Ok(())
    }
}

/// Names never part of a snapshot: hidden files and folders, and Python's
/// byte-code caches (rewritten whenever a job runs beside the scheduler).
fn skipped_name(name: &std::ffi::OsStr) -> bool {
    let name = name.to_string_lossy();
    name.starts_with('.') || name == "__pycache__" || name.ends_with(".pyc")
}

/// `path` relative to `dir`, `/`-separated; `None` if not under it or not UTF-8.
fn relative(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let parts: Option<Vec<&str>> = rel.components().map(|c| c.as_os_str().to_str()).collect();
    let parts = parts?;
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    meta.permissions().mode() & 0o100 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}

/// Where the DAG folder `dags` lies relative to the scheduler's working
/// directory `cwd`, for [`CodeOptions::root`]: the relative path when it is
/// inside (so `python3 dags/jobs/x.py` resolves in a snapshot as beside the
/// scheduler), else the folder's own name.
pub fn snapshot_root(dags: &Path, cwd: &Path) -> String {
    let dags = dags.canonicalize().unwrap_or_else(|_| dags.to_path_buf());
    let cwd = cwd.canonicalize().unwrap_or_else(|_| cwd.to_path_buf());
    if let Some(rel) = relative(&cwd, &dags) {
        return rel;
    }
    dags.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Builds the exclude set from `--dag-code-exclude` patterns (globs over
/// paths relative to the DAG folder, e.g. `data/**`, `*.csv`).
pub fn exclude_set(patterns: &[String]) -> Result<GlobSet, globset::Error> {
    let mut set = globset::GlobSetBuilder::new();
    for p in patterns {
        set.add(globset::Glob::new(p)?);
    }
    set.build()
}
