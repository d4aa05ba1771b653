//! One scheduling process per SQLite file. Two schedulers (or two
//! `standalone`s) on one SQLite database would both lead — SQLite has no
//! advisory locks — and corrupt each other's state, so the second one
//! refuses to start. The lock is an OS file lock on `<db>.lock`, held for
//! the life of the process (it dies with it, even on `kill -9`); the file
//! holds the owner's pid for the refusal message.

use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};
use std::str::FromStr as _;

#[derive(Debug, thiserror::Error)]
pub enum DbLockError {
    #[error(
        "another trainyard{pid} is using {db}; trigger runs with `trainyard trigger …` \
         (or the API) on that one, or pass another --data-dir / --db"
    )]
    InUse { db: String, pid: String },
    #[error("cannot lock {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Held while the process uses the database.
#[derive(Debug)]
pub struct DbLock {
    _file: File,
}

/// The file of a `sqlite:` URL; `None` for other databases and in-memory ones.
pub fn sqlite_file(db_url: &str) -> Option<PathBuf> {
    if !db_url.starts_with("sqlite:")
        || db_url.contains(":memory:")
        || db_url.contains("mode=memory")
    {
        return None;
    }
    let options = sqlx::sqlite::SqliteConnectOptions::from_str(db_url).ok()?;
    let path = options.get_filename();
    let text = path.to_string_lossy();
    (!text.is_empty() && text != ":memory:").then(|| path.to_owned())
}

impl DbLock {
    /// Locks `db` (a SQLite file) for this process or says who holds it.
    pub fn acquire(db: &Path) -> Result<Self, DbLockError> {
        let path = PathBuf::from(format!("{}.lock", db.display()));
        let io = |source| DbLockError::Io {
            path: path.clone(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut owner = String::new();
                let _ = file.read_to_string(&mut owner);
                let owner = owner.trim();
                return Err(DbLockError::InUse {
                    db: db.display().to_string(),
                    pid: if owner.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {owner})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        write!(file, "{}", std::process::id()).map_err(io)?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_owners_pid_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("trainyard.db");
        let first = DbLock::acquire(&db).unwrap();
        let err = DbLock::acquire(&db).unwrap_err().to_string();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert!(err.contains("trainyard.db"), "{err}");
        assert!(err.contains("--data-dir"), "{err}");
        drop(first);
        assert!(DbLock::acquire(&db).is_ok());
    }

    #[test]
    fn only_sqlite_files_are_locked() {
        assert_eq!(
            sqlite_file("sqlite:/tmp/x.db?mode=rwc"),
            Some(PathBuf::from("/tmp/x.db"))
        );
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://u@h/db"), None);
    }
}
