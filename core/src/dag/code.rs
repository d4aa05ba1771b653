//! A DAG version's code: the files its tasks run, pinned with the version.
//!
//! Workers on other machines do not have the scheduler's DAG folder, and a
//! folder changes while runs are in flight. So the scheduler records, with
//! every DAG version, the list of files that make up its code (by default
//! the DAG's own TOML file plus every non-TOML file of the folder, such as
//! `dags/jobs/*.py`), each with its SHA-256; the files themselves are stored
//! content-addressed in the artifact store ([`CodeFile::object_key`]). A
//! worker rebuilds that tree once per [`CodeSnapshot::digest`] and runs the
//! version's tasks in it, so every attempt of a run — a retry after the file
//! was edited included — runs exactly the code the run pinned.
//!
//! Paths are relative, `/`-separated and checked by
//! [`CodeSnapshot::validate`]: a worker never writes outside its snapshot
//! folder whatever a manifest says.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The files of one DAG version's code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CodeSnapshot {
    /// Where the DAG folder lies inside the snapshot, relative to the
    /// folder tasks run in: the folder as the scheduler was given it,
    /// relative to the scheduler's working directory (`dags` for `--dags
    /// dags`), so a command written as `python3 dags/jobs/train.py` finds its
    /// file in the snapshot just as it does beside the scheduler. Empty: the
    /// snapshot root is the DAG folder itself.
    pub root: String,
    /// Sorted by path; paths are relative to `root`.
    pub files: Vec<CodeFile>,
}

/// One file of a [`CodeSnapshot`].
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct CodeFile {
    /// Relative to the snapshot's `root`, `/`-separated.
    pub path: String,
    /// Lowercase hex SHA-256 of the content.
    pub sha256: String,
    pub size: u64,
    /// The owner may execute it (mode `u+x`); restored on the worker.
    pub executable: bool,
}

/// Why a manifest cannot be materialised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CodeError {
    #[error(
        "code file path {path:?} is not usable: {reason} (paths are relative, `/`-separated, \
         without `.` or `..` segments)"
    )]
    BadPath { path: String, reason: &'static str },
    #[error("code file {path:?} has a malformed sha256 {sha256:?} (64 lowercase hex digits)")]
    BadDigest { path: String, sha256: String },
    #[error("code file path {path:?} appears twice")]
    Duplicate { path: String },
}

impl CodeFile {
    /// The file's key in the artifact store: content-addressed, so one
    /// object serves every version (and every DAG) holding those bytes.
    pub fn object_key(&self) -> String {
        object_key(&self.sha256)
    }
}

/// The artifact-store key of the code file with this SHA-256.
pub fn object_key(sha256: &str) -> String {
    format!("code/sha256/{sha256}")
}

impl CodeSnapshot {
    /// Identifies the tree (root, paths, contents, modes): the name of the
    /// folder a worker builds it in. Two versions with the same code share it.
    pub fn digest(&self) -> String {
        let mut h = Sha256::new();
        h.update(b"trainyard-code-v1\n");
        h.update(self.root.as_bytes());
        h.update(b"\n");
        for f in &self.files {
            h.update(f.path.as_bytes());
            h.update(b"\0");
            h.update(f.sha256.as_bytes());
            h.update(if f.executable { b"\0x\n" } else { b"\0-\n" });
        }
        hex(&h.finalize())
    }

    /// Total bytes of its files.
    pub fn total_size(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }

    /// Checks every path and digest (a worker calls this on what it was
    /// sent before it writes anything).
    pub fn validate(&self) -> Result<(), CodeError> {
        if !self.root.is_empty() {
            check_path(&self.root)?;
        }
        let mut seen = std::collections::BTreeSet::new();
        for f in &self.files {
            check_path(&f.path)?;
            if f.sha256.len() != 64
                || !f
                    .sha256
                    .bytes()
                    .all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
            {
                return Err(CodeError::BadDigest {
                    path: f.path.clone(),
                    sha256: f.sha256.clone(),
                });
            }
            if !seen.insert(f.path.as_str()) {
                return Err(CodeError::Duplicate {
                    path: f.path.clone(),
                });
            }
        }
        Ok(())
    }
}

fn check_path(path: &str) -> Result<(), CodeError> {
    let bad = |reason| {
        Err(CodeError::BadPath {
            path: path.to_owned(),
            reason,
        })
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.starts_with('/') {
        return bad("it is absolute");
    }
    if path.contains('\\') || path.contains('\0') {
        return bad("it holds a backslash or NUL");
    }
    if path
        .split('/')
        .any(|s| s.is_empty() || s == "." || s == "..")
    {
        return bad("it has an empty, `.` or `..` segment");
    }
    Ok(())
}

/// Lowercase hex of a digest.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str) -> CodeFile {
        CodeFile {
            path: path.into(),
            sha256: "a".repeat(64),
            size: 3,
            executable: false,
        }
    }

    fn snap(files: Vec<CodeFile>) -> CodeSnapshot {
        CodeSnapshot {
            root: "dags".into(),
            files,
        }
    }

    #[test]
    fn paths_that_could_escape_the_snapshot_are_refused() {
        for p in [
            "../x",
            "/etc/passwd",
            "a/../../b",
            "a//b",
            "./a",
            "",
            "a\\b",
            "a/.",
        ] {
            assert!(
                matches!(
                    snap(vec![file(p)]).validate(),
                    Err(CodeError::BadPath { .. })
                ),
                "{p:?}"
            );
        }
        let mut bad_root = snap(vec![file("a.py")]);
        bad_root.root = "../up".into();
        assert!(bad_root.validate().is_err());
        assert_eq!(snap(vec![file("jobs/train.py")]).validate(), Ok(()));
    }

    #[test]
    fn malformed_digests_and_duplicates_are_refused() {
        let mut f = file("a.py");
        f.sha256 = "../../x".into();
        assert!(matches!(
            snap(vec![f]).validate(),
            Err(CodeError::BadDigest { .. })
        ));
        assert!(matches!(
            snap(vec![file("a.py"), file("a.py")]).validate(),
            Err(CodeError::Duplicate { .. })
        ));
    }

    #[test]
    fn the_digest_changes_with_content_path_mode_and_root_only() {
        let base = snap(vec![file("a.py")]);
        assert_eq!(base.digest(), base.clone().digest());
        let mut content = base.clone();
        content.files[0].sha256 = "b".repeat(64);
        let mut path = base.clone();
        path.files[0].path = "b.py".into();
        let mut mode = base.clone();
        mode.files[0].executable = true;
        let mut root = base.clone();
        root.root = String::new();
        let digests: std::collections::BTreeSet<String> = [&base, &content, &path, &mode, &root]
            .iter()
            .map(|s| s.digest())
            .collect();
        assert_eq!(digests.len(), 5);
        assert_eq!(base.digest().len(), 64);
    }
}
