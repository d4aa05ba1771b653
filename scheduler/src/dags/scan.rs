//! Finding DAG files on disk and the small pure helpers the loader applies to
//! them: which paths count, the content hash, and a best-effort DAG id for a
//! file that does not parse.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

/// Every DAG file under `dir`, recursively, sorted: regular files (or links to
/// them) named `*.toml`, skipping hidden files and everything inside hidden
/// folders (`.git`, editor swap folders, …).
///
/// Directories that cannot be read are skipped with a warning rather than
/// failing the whole listing: one unreadable folder must not hide the others.
/// Symbolic links to directories are not followed, so a link cycle cannot
/// loop the scan.
pub fn dag_files(dir: &Path) -> Vec<PathBuf> {
    scan_dir(dir).files
}

/// Like [`dag_files`], but a folder that cannot be listed is an error
/// (for one-shot callers such as `trainyard dag validate`).
pub fn try_dag_files(dir: &Path) -> io::Result<Vec<PathBuf>> {
    let scan = scan_dir(dir);
    match scan.unreadable.into_iter().next() {
        Some((path, err)) => Err(io::Error::new(
            err.kind(),
            format!("cannot read {}: {err}", path.display()),
        )),
        None => Ok(scan.files),
    }
}

/// What one walk of the folder found.
pub(crate) struct DirScan {
    /// DAG files, sorted.
    pub(crate) files: Vec<PathBuf>,
    /// Folders that could not be listed: their files are unknown, not gone.
    pub(crate) unreadable: Vec<(PathBuf, io::Error)>,
}

pub(crate) fn scan_dir(dir: &Path) -> DirScan {
    let mut files = Vec::new();
    let mut unreadable = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(current) = pending.pop() {
        let entries = match fs::read_dir(&current) {
            Ok(entries) => entries,
            Err(error) => {
                tracing::warn!(dir = %current.display(), %error, "cannot list dag folder");
                unreadable.push((current, error));
                continue;
            }
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_hidden_name(&path) {
                continue;
            }
            let Ok(file_type) = entry.file_type() else {
                continue;
            };
            if file_type.is_dir() {
                pending.push(path);
            } else if has_toml_extension(&path)
                && (file_type.is_file() || (file_type.is_symlink() && path.is_file()))
            {
                files.push(path);
            }
        }
    }
    files.sort();
    DirScan { files, unreadable }
}

/// True when the last component of `path` starts with a dot.
fn is_hidden_name(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with('.'))
}

pub(crate) fn has_toml_extension(path: &Path) -> bool {
    path.extension().is_some_and(|ext| ext == "toml")
}

/// True when `path` lies under `dir` but some component below `dir` is hidden.
/// Paths outside `dir` count as hidden: they are none of the loader's business.
pub(crate) fn is_hidden_below(dir: &Path, path: &Path) -> bool {
    match path.strip_prefix(dir) {
        Ok(rel) => rel
            .components()
            .any(|c| c.as_os_str().to_string_lossy().starts_with('.')),
        Err(_) => true,
    }
}

/// Hex SHA-256 of a file's bytes: the identity of a DAG version.
pub(crate) fn content_hash(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// The top-level `id = "…"` of a file that may not be valid TOML, so a broken
/// file that never parsed can still have its error recorded on the DAG it
/// means to be. Only lines before the first table header are looked at, and
/// only a value that is a valid DAG id (`[A-Za-z0-9_-]+`) is returned.
pub(crate) fn guess_dag_id(source: &str) -> Option<String> {
    for line in source.lines() {
        let line = line.trim_start();
        if line.starts_with('[') {
            return None;
        }
        let Some(rest) = line.strip_prefix("id") else {
            continue;
        };
        let Some(rest) = rest.trim_start().strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        let quote = rest.chars().next()?;
        if quote != '"' && quote != '\'' {
            return None;
        }
        let value = rest[1..].split(quote).next()?;
        let valid = !value.is_empty()
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        return valid.then(|| value.to_owned());
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guess_reads_top_level_id_even_when_the_rest_is_broken() {
        let src = "# comment\n  id = \"churn\" # trailing\nschedule = [[[\n";
        assert_eq!(guess_dag_id(src).as_deref(), Some("churn"));
        assert_eq!(guess_dag_id("id='a-b_1'").as_deref(), Some("a-b_1"));
    }

    #[test]
    fn guess_ignores_ids_inside_tables_and_invalid_ids() {
        assert_eq!(guess_dag_id("[tasks.a]\nid = \"x\""), None);
        assert_eq!(guess_dag_id("id = \"has space\""), None);
        assert_eq!(guess_dag_id("id = 3"), None);
        assert_eq!(
            guess_dag_id("identity = \"x\"\nid = \"y\"").as_deref(),
            Some("y")
        );
    }

    #[test]
    fn hidden_components_below_the_folder_are_detected() {
        let dir = Path::new("/d");
        assert!(is_hidden_below(dir, Path::new("/d/.git/x.toml")));
        assert!(is_hidden_below(dir, Path::new("/d/a/.x.toml")));
        assert!(is_hidden_below(dir, Path::new("/elsewhere/x.toml")));
        assert!(!is_hidden_below(dir, Path::new("/d/a/x.toml")));
    }
}
