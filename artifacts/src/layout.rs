//! Where things live in the store, and the rules keys must follow.
//!
//! Layout (relative to the store URL's own prefix):
//! ```text
//! runs/<run_id>/<task_id>/<attempt>/out/<relative path>   task outputs
//! runs/<run_id>/<task_id>/<attempt>/log.txt               full attempt log
//! ```
//! Keys are `/`-separated and relative. Because a key becomes a local path
//! when downloaded, every segment is checked here: no empty, `.` or `..`
//! segment, no leading `/`, no control characters. This module is the single
//! place that decides whether a key or a relative path is safe.

use std::path::{Component, Path, PathBuf};

use object_store::path::Path as ObjectPath;

use crate::error::{Error, Result};

/// Identifies one attempt of one task in one run: the unit artifacts and logs
/// are stored under.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttemptKey {
    run_id: String,
    task_id: String,
    attempt: u32,
}

impl AttemptKey {
    /// Checks that both ids can be a single key segment.
    pub fn new(
        run_id: impl Into<String>,
        task_id: impl Into<String>,
        attempt: u32,
    ) -> Result<Self> {
        let run_id = run_id.into();
        let task_id = task_id.into();
        check_id("run id", &run_id)?;
        check_id("task id", &task_id)?;
        Ok(Self {
            run_id,
            task_id,
            attempt,
        })
    }

    pub fn run_id(&self) -> &str {
        &self.run_id
    }

    pub fn task_id(&self) -> &str {
        &self.task_id
    }

    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// `runs/<run_id>/<task_id>/<attempt>`
    pub fn prefix(&self) -> String {
        format!("runs/{}/{}/{}", self.run_id, self.task_id, self.attempt)
    }

    /// `runs/<run_id>/<task_id>/<attempt>/out`: what the task left in
    /// `TRAINYARD_OUTPUT_DIR`.
    pub fn output_prefix(&self) -> String {
        format!("{}/out", self.prefix())
    }

    /// `runs/<run_id>/<task_id>/<attempt>/log.txt`: the attempt's full log.
    pub fn log_key(&self) -> String {
        format!("{}/log.txt", self.prefix())
    }
}

fn check_id(what: &'static str, value: &str) -> Result<()> {
    let reason = if value.is_empty() {
        "must not be empty"
    } else if value.contains('/') {
        "must not contain '/'"
    } else if value == "." || value == ".." {
        "must not be '.' or '..'"
    } else if value.chars().any(char::is_control) {
        "must not contain control characters"
    } else {
        return Ok(());
    };
    Err(Error::InvalidId {
        what,
        value: value.to_owned(),
        reason,
    })
}

fn unsafe_key(key: &str, reason: impl Into<String>) -> Error {
    Error::UnsafeKey {
        key: key.to_owned(),
        reason: reason.into(),
    }
}

/// Checks one `/`-separated key segment.
fn check_segment(key: &str, segment: &str) -> Result<()> {
    if segment.is_empty() {
        return Err(unsafe_key(key, "empty path segment"));
    }
    if segment == "." || segment == ".." {
        return Err(unsafe_key(key, "'.' and '..' segments are not allowed"));
    }
    if segment.contains('\\') {
        // A backslash is a separator on Windows; refusing it keeps a key from
        // meaning two different paths on two platforms.
        return Err(unsafe_key(key, "'\\' is not allowed"));
    }
    if segment.chars().any(char::is_control) {
        return Err(unsafe_key(key, "control characters are not allowed"));
    }
    Ok(())
}

/// Parses a relative key (or key prefix) into an object path.
///
/// An empty string is the root; one trailing `/` is tolerated so that
/// `runs/r/t/1/out/` and `runs/r/t/1/out` mean the same prefix.
pub fn parse_key(key: &str) -> Result<ObjectPath> {
    if key.starts_with('/') {
        return Err(unsafe_key(
            key,
            "keys are relative; leading '/' is not allowed",
        ));
    }
    let trimmed = key.strip_suffix('/').unwrap_or(key);
    if trimmed.is_empty() {
        return Ok(ObjectPath::default());
    }
    for segment in trimmed.split('/') {
        check_segment(key, segment)?;
    }
    ObjectPath::parse(trimmed).map_err(|e| unsafe_key(key, e.to_string()))
}

/// Turns a key relative to a downloaded prefix into a path relative to the
/// download directory, refusing anything that could land outside it.
pub fn relative_key_to_path(relative_key: &str) -> Result<PathBuf> {
    if relative_key.is_empty() {
        return Err(unsafe_key(relative_key, "empty relative key"));
    }
    if relative_key.starts_with('/') {
        return Err(unsafe_key(relative_key, "absolute keys are not allowed"));
    }
    let mut out = PathBuf::new();
    for segment in relative_key.split('/') {
        check_segment(relative_key, segment)?;
        out.push(segment);
    }
    // Belt and braces: after the per-segment checks only normal components
    // can remain, but a future edit to check_segment must not open a hole.
    if !out.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(unsafe_key(
            relative_key,
            "path would leave the target directory",
        ));
    }
    Ok(out)
}

/// Turns a file's path relative to an uploaded directory into key segments.
pub(crate) fn relative_path_to_key(relative: &Path) -> Result<String> {
    let mut segments = Vec::new();
    for component in relative.components() {
        match component {
            Component::Normal(part) => {
                let part = part.to_str().ok_or_else(|| {
                    unsafe_key(&relative.to_string_lossy(), "file name is not valid utf-8")
                })?;
                segments.push(part);
            }
            _ => {
                return Err(unsafe_key(
                    &relative.to_string_lossy(),
                    "path is not a plain relative path",
                ));
            }
        }
    }
    let key = segments.join("/");
    for segment in &segments {
        check_segment(&key, segment)?;
    }
    Ok(key)
}

/// Joins a prefix and a relative key with exactly one `/`.
pub(crate) fn join_key(prefix: &ObjectPath, relative: &str) -> String {
    if prefix.as_ref().is_empty() {
        relative.to_owned()
    } else {
        format!("{}/{relative}", prefix.as_ref())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn attempt_key_builds_the_documented_layout() {
        let key = AttemptKey::new("run-1", "train", 2).unwrap();
        assert_eq!(key.output_prefix(), "runs/run-1/train/2/out");
        assert_eq!(key.log_key(), "runs/run-1/train/2/log.txt");
    }

    #[test]
    fn attempt_key_refuses_ids_that_are_not_one_segment() {
        for bad in ["", "a/b", "..", ".", "a\nb"] {
            assert!(AttemptKey::new(bad, "t", 1).is_err(), "{bad:?}");
            assert!(AttemptKey::new("r", bad, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn relative_keys_that_escape_are_refused() {
        for bad in [
            "../x",
            "a/../../x",
            "a/./b",
            "/etc/passwd",
            "a//b",
            "..",
            "a\\..\\b",
            "",
        ] {
            let err = relative_key_to_path(bad).unwrap_err();
            assert!(matches!(err, Error::UnsafeKey { .. }), "{bad:?}: {err}");
        }
        assert_eq!(
            relative_key_to_path("a/b c/d.txt").unwrap(),
            PathBuf::from("a").join("b c").join("d.txt")
        );
    }

    #[test]
    fn parse_key_accepts_root_and_trailing_slash_but_not_dotdot() {
        assert_eq!(parse_key("").unwrap().as_ref(), "");
        assert_eq!(parse_key("runs/a/").unwrap().as_ref(), "runs/a");
        assert!(parse_key("runs/../a").is_err());
        assert!(parse_key("/runs").is_err());
    }
}
