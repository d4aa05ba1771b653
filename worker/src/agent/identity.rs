//! The worker's identity on disk: the id the scheduler knows it by and the
//! session credential issued with that id, kept per `--name` in the work dir
//! (`<work dir>/.identity/<name>.json`, mode 0600), so a restarted worker is
//! the same worker to the scheduler and nobody else can speak for its id.
//!
//! One live worker per (work dir, name): the identity file's lock
//! (`<name>.lock`, an OS file lock held for the life of the process) makes a
//! second worker with the same work dir and name refuse to start. The lock
//! dies with the process, so a `kill -9` leaves nothing to clean up.

use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use trainyard_core::ids::WorkerId;

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("cannot use the identity folder {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another worker named {name:?} is running on the work dir {work_dir} (it holds \
         {lock}); give this one another --name or another --work-dir"
    )]
    InUse {
        name: String,
        work_dir: PathBuf,
        lock: PathBuf,
    },
    #[error(
        "the identity file {path} is damaged ({reason}); delete it to register as a new worker"
    )]
    Damaged { path: PathBuf, reason: String },
}

/// What is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stored {
    worker_id: WorkerId,
    #[serde(default)]
    session_credential: Option<String>,
}

/// A worker's identity file, locked for this process.
#[derive(Debug)]
pub struct IdentityFile {
    path: PathBuf,
    /// Held (locked) until the process ends.
    _lock: File,
    stored: std::sync::Mutex<Stored>,
}

/// A file name for any worker name: safe characters kept, others escaped,
/// so two different names never share a file.
fn file_stem(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl IdentityFile {
    /// Opens (creating if needed) and locks the identity of worker `name`
    /// in `work_dir`. A first start gets a fresh id and no credential yet.
    pub fn open(work_dir: &Path, name: &str) -> Result<Self, IdentityError> {
        let dir = work_dir.join(".identity");
        let io = |source| IdentityError::Io {
            path: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io)?;
        let stem = file_stem(name);
        let lock_path = dir.join(format!("{stem}.lock"));
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io)?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(IdentityError::InUse {
                    name: name.to_owned(),
                    work_dir: work_dir.to_owned(),
                    lock: lock_path,
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        let path = dir.join(format!("{stem}.json"));
        let stored = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| IdentityError::Damaged {
                path: path.clone(),
                reason: e.to_string(),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Stored {
                worker_id: WorkerId::new(),
                session_credential: None,
            },
            Err(e) => return Err(io(e)),
        };
        let file = Self {
            path,
            _lock: lock,
            stored: std::sync::Mutex::new(stored.clone()),
        };
        file.write(&stored)?;
        Ok(file)
    }

    /// Where this worker records its running tasks' process groups
    /// (`<work dir>/.identity/<name>.groups/`), so that its next start can
    /// kill what a killed instance left (see `exec::groups`). Covered by
    /// this file's lock like the identity itself.
    pub fn groups_dir(&self) -> PathBuf {
        self.path.with_extension("groups")
    }

    pub fn worker_id(&self) -> WorkerId {
        self.stored().worker_id
    }

    pub fn session_credential(&self) -> Option<String> {
        self.stored().session_credential
    }

    fn stored(&self) -> Stored {
        match self.stored.lock() {
            Ok(s) => s.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Records what the scheduler answered at Register (no write when
    /// nothing changed).
    pub fn save(&self, worker_id: WorkerId, credential: &str) -> Result<(), IdentityError> {
        let next = Stored {
            worker_id,
            session_credential: (!credential.is_empty()).then(|| credential.to_owned()),
        };
        if self.stored() == next {
            return Ok(());
        }
        self.write(&next)?;
        match self.stored.lock() {
            Ok(mut s) => *s = next,
            Err(poisoned) => *poisoned.into_inner() = next,
        }
        Ok(())
    }

    /// Atomic (temp file + rename), readable by this user only.
    fn write(&self, stored: &Stored) -> Result<(), IdentityError> {
        let io = |source| IdentityError::Io {
            path: self.path.clone(),
            source,
        };
        let tmp = self.path.with_extension("json.tmp");
        let mut opts = OpenOptions::new();
        opts.create(true).truncate(true).write(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt as _;
            opts.mode(0o600);
        }
        let mut f = opts.open(&tmp).map_err(io)?;
        let body = serde_json::to_vec_pretty(stored).map_err(|e| io(std::io::Error::other(e)))?;
        f.write_all(&body).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_worker_keeps_its_id_and_credential() {
        let dir = tempfile::tempdir().unwrap();
        let id = {
            let f = IdentityFile::open(dir.path(), "gpu-box").unwrap();
            assert_eq!(f.session_credential(), None);
            f.save(f.worker_id(), "secret-credential").unwrap();
            f.worker_id()
        };
        let again = IdentityFile::open(dir.path(), "gpu-box").unwrap();
        assert_eq!(again.worker_id(), id);
        assert_eq!(
            again.session_credential().as_deref(),
            Some("secret-credential")
        );
    }

    #[test]
    fn a_second_live_worker_with_the_same_name_refuses_but_other_names_share_the_dir() {
        let dir = tempfile::tempdir().unwrap();
        let first = IdentityFile::open(dir.path(), "w").unwrap();
        let err = IdentityFile::open(dir.path(), "w").unwrap_err();
        assert!(matches!(err, IdentityError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("--name"), "{err}");
        let other = IdentityFile::open(dir.path(), "w2").unwrap();
        assert_ne!(first.worker_id(), other.worker_id());
        drop(first);
        assert!(IdentityFile::open(dir.path(), "w").is_ok());
    }

    #[test]
    fn names_that_are_not_file_names_get_distinct_safe_files() {
        assert_eq!(file_stem("box-1_a"), "box-1_a");
        assert_eq!(file_stem("../x"), "%2E%2E%2Fx");
        assert_ne!(file_stem("a/b"), file_stem("a_b"));
    }

    #[cfg(unix)]
    #[test]
    fn the_identity_file_is_private() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let f = IdentityFile::open(dir.path(), "w").unwrap();
        f.save(f.worker_id(), "c").unwrap();
        let mode = std::fs::metadata(dir.path().join(".identity/w.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
