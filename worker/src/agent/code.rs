//! The DAG version's code on this worker: the tree an attempt runs in.
//!
//! An assignment names its DAG version's code files
//! ([`trainyard_core::dag::code`]). Each file is fetched once per worker
//! from the artifact store (`code/sha256/<hex>`) into a cache in the work
//! dir (`.code/files/`), checked against its SHA-256, and made read-only;
//! every attempt then gets its own tree of hard links to the cache under
//! its attempt dir (`<attempt>/code/`, the DAG folder at the snapshot's
//! `root` inside it) and runs there. So a retry runs exactly the bytes of
//! the version its run pinned, whatever the scheduler's folder holds now,
//! a worker that never saw the repository runs the DAG, and what one
//! attempt writes into its working directory never reaches another's.
//!
//! Nothing here trusts the manifest: paths are validated before anything is
//! written (no absolute paths, no `..`), and a downloaded file whose digest
//! differs is refused.

use std::path::{Path, PathBuf};

use trainyard_artifacts::ArtifactStore;
use trainyard_core::dag::code::{CodeFile, CodeSnapshot, object_key};
use trainyard_proto::v1;

use super::AttemptError;

/// Builds the attempt's code tree in `tree` (created fresh) from the cache
/// under `work_dir`, fetching what the cache lacks; returns the folder the
/// task runs in (`tree` itself: the DAG folder lies at `root` inside it).
pub async fn materialize(
    store: &ArtifactStore,
    work_dir: &Path,
    code: &CodeSnapshot,
    tree: &Path,
) -> Result<PathBuf, AttemptError> {
    code.validate()
        .map_err(|e| AttemptError::BadAssignment(e.to_string()))?;
    let cache = work_dir.join(".code").join("files");
    tokio::fs::create_dir_all(&cache)
        .await
        .map_err(AttemptError::workdir(&cache))?;
    let base = if code.root.is_empty() {
        tree.to_path_buf()
    } else {
        tree.join(&code.root)
    };
    tokio::fs::create_dir_all(&base)
        .await
        .map_err(AttemptError::workdir(&base))?;
    for file in &code.files {
        let cached = cached_file(store, &cache, file).await?;
        let target = base.join(&file.path);
        if let Some(parent) = target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(AttemptError::workdir(parent))?;
        }
        // A hard link costs no copy; the cache file is read-only, so the
        // task cannot change another attempt's code through it.
        if tokio::fs::hard_link(&cached, &target).await.is_err() {
            tokio::fs::copy(&cached, &target)
                .await
                .map_err(AttemptError::workdir(&target))?;
        }
    }
    Ok(tree.to_path_buf())
}

/// The cache file holding `file`'s bytes with its mode, downloaded and
/// checked if missing.
async fn cached_file(
    store: &ArtifactStore,
    cache: &Path,
    file: &CodeFile,
) -> Result<PathBuf, AttemptError> {
    // Mode is part of the name: one content may be a script in one version
    // and plain data in another, and hard links share the mode.
    let name = if file.executable {
        format!("{}.x", file.sha256)
    } else {
        file.sha256.clone()
    };
    let path = cache.join(&name);
    if tokio::fs::metadata(&path).await.is_ok() {
        return Ok(path);
    }
    let partial = cache.join(format!("{name}.part-{}", uuid::Uuid::new_v4()));
    let fetched = store
        .download_file(&object_key(&file.sha256), &partial)
        .await
        .map_err(|source| AttemptError::Code {
            path: file.path.clone(),
            source,
        });
    let record = match fetched {
        Ok(record) => record,
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            return Err(e);
        }
    };
    if record.sha256 != file.sha256 {
        let _ = tokio::fs::remove_file(&partial).await;
        return Err(AttemptError::CodeCorrupt {
            path: file.path.clone(),
            expected: file.sha256.clone(),
            found: record.sha256,
        });
    }
    set_read_only(&partial, file.executable)
        .await
        .map_err(AttemptError::workdir(&partial))?;
    // Another attempt may have put it there meanwhile: same bytes, either wins.
    tokio::fs::rename(&partial, &path)
        .await
        .map_err(AttemptError::workdir(&path))?;
    Ok(path)
}

#[cfg(unix)]
async fn set_read_only(path: &Path, executable: bool) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let mode = if executable { 0o555 } else { 0o444 };
    tokio::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).await
}

#[cfg(not(unix))]
async fn set_read_only(path: &Path, _executable: bool) -> std::io::Result<()> {
    let mut perms = tokio::fs::metadata(path).await?.permissions();
    perms.set_readonly(true);
    tokio::fs::set_permissions(path, perms).await
}

/// The snapshot an assignment carries, in the domain's type.
pub fn from_proto(code: &v1::CodeSnapshot) -> CodeSnapshot {
    let mut files: Vec<CodeFile> = code
        .files
        .iter()
        .map(|f| CodeFile {
            path: f.path.clone(),
            sha256: f.sha256.clone(),
            size: f.size,
            executable: f.executable,
        })
        .collect();
    files.sort();
    CodeSnapshot {
        root: code.root.clone(),
        files,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use sha2::{Digest, Sha256};

    async fn put(store: &ArtifactStore, content: &str) -> String {
        let sha = format!("{:x}", Sha256::digest(content.as_bytes()));
        store
            .put_bytes(&object_key(&sha), Bytes::from(content.to_owned()))
            .await
            .unwrap();
        sha
    }

    fn file(path: &str, sha: &str, executable: bool) -> CodeFile {
        CodeFile {
            path: path.into(),
            sha256: sha.into(),
            size: 0,
            executable,
        }
    }

    #[tokio::test]
    async fn a_tree_is_built_from_the_store_with_modes_and_read_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ArtifactStore::from_url(&dir.path().join("store").display().to_string()).unwrap();
        let job = put(&store, "print('v1')\n").await;
        let run = put(&store, "#!/bin/sh\necho hi\n").await;
        let code = CodeSnapshot {
            root: "dags".into(),
            files: vec![
                file("jobs/train.py", &job, false),
                file("run.sh", &run, true),
            ],
        };
        let work = dir.path().join("work");
        let tree = work.join("r/t/1/code");
        let cwd = materialize(&store, &work, &code, &tree).await.unwrap();
        assert_eq!(cwd, tree);
        let train = tree.join("dags/jobs/train.py");
        assert_eq!(std::fs::read_to_string(&train).unwrap(), "print('v1')\n");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&train), 0o444);
        assert_eq!(mode(&tree.join("dags/run.sh")), 0o555);
        // A second attempt reuses the cache: works with the store gone.
        std::fs::remove_dir_all(dir.path().join("store")).unwrap();
        let again = work.join("r/t/2/code");
        materialize(&store, &work, &code, &again).await.unwrap();
        assert_eq!(
            std::fs::read_to_string(again.join("dags/jobs/train.py")).unwrap(),
            "print('v1')\n"
        );
    }

    #[tokio::test]
    async fn a_manifest_that_escapes_or_lies_about_content_writes_nothing_outside() {
        let dir = tempfile::tempdir().unwrap();
        let store =
            ArtifactStore::from_url(&dir.path().join("store").display().to_string()).unwrap();
        let sha = put(&store, "x").await;
        let work = dir.path().join("work");
        let escape = CodeSnapshot {
            root: String::new(),
            files: vec![file("../../outside", &sha, false)],
        };
        let err = materialize(&store, &work, &escape, &work.join("t"))
            .await
            .unwrap_err();
        assert!(matches!(err, AttemptError::BadAssignment(_)), "{err}");
        assert!(!dir.path().join("outside").exists());
        // The store holds other bytes under the claimed digest.
        let wrong = "0".repeat(64);
        store
            .put_bytes(&object_key(&wrong), Bytes::from_static(b"tampered"))
            .await
            .unwrap();
        let lying = CodeSnapshot {
            root: String::new(),
            files: vec![file("a.py", &wrong, false)],
        };
        let err = materialize(&store, &work, &lying, &work.join("t2"))
            .await
            .unwrap_err();
        assert!(matches!(err, AttemptError::CodeCorrupt { .. }), "{err}");
        assert!(err.to_string().contains("a.py"), "{err}");
        let missing = CodeSnapshot {
            root: String::new(),
            files: vec![file("b.py", &"1".repeat(64), false)],
        };
        let err = materialize(&store, &work, &missing, &work.join("t3"))
            .await
            .unwrap_err();
        assert!(matches!(err, AttemptError::Code { .. }), "{err}");
    }
}
