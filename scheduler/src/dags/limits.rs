//! Limits on a DAG file, checked before it is parsed: its size (from the
//! file's metadata, before reading) and its number of tasks (a cheap scan
//! for `[tasks.NAME]` headers, before the TOML parser builds a tree). A
//! 35 MB file with a million tasks costs a `stat`; one just under the size
//! cap with too many tasks costs one pass over its text. Either is reported
//! as a [`FileError`] on its DAG and never loaded.
//!
//! Tasks written as inline tables (`[tasks]` with `a = { … }`) escape the
//! header scan; the loader counts the parsed tasks as well, and the size cap
//! bounds what parsing such a file can cost.

use std::fs;
use std::io::{self, Read as _};
use std::path::Path;

use trainyard_core::resources::ByteSize;

use super::error::FileError;

/// The caps a DAG file must stay under; [`DagLimits::default`] gives 1 MiB
/// and 20,000 tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DagLimits {
    /// Largest file read (`--max-dag-file-size`).
    pub max_file_size: ByteSize,
    /// Most tasks in one file (`--max-dag-tasks`).
    pub max_tasks: usize,
}

impl DagLimits {
    pub const DEFAULT_MAX_FILE_SIZE: ByteSize = ByteSize::mib(1);
    pub const DEFAULT_MAX_TASKS: usize = 20_000;

    /// Refuses a file of `size` bytes over the size cap.
    pub fn check_size(&self, path: &Path, size: u64) -> Result<(), FileError> {
        if size > self.max_file_size.bytes() {
            return Err(FileError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit: self.max_file_size,
            });
        }
        Ok(())
    }

    /// Refuses `count` tasks over the task cap.
    pub fn check_task_count(&self, path: &Path, count: usize) -> Result<(), FileError> {
        if count > self.max_tasks {
            return Err(FileError::TooManyTasks {
                path: path.to_path_buf(),
                count,
                limit: self.max_tasks,
            });
        }
        Ok(())
    }

    /// Refuses a source with more `[tasks.NAME]` tables than the cap,
    /// without parsing it.
    pub fn check_source(&self, path: &Path, source: &str) -> Result<(), FileError> {
        self.check_task_count(path, count_task_tables(source))
    }

    /// Reads a DAG file for a one-shot command (`trainyard dag validate`):
    /// the size cap before reading, UTF-8, the task cap before parsing.
    pub fn read_source(&self, path: &Path) -> Result<String, FileError> {
        let read_error = |source| FileError::Read {
            path: path.to_path_buf(),
            source,
        };
        let size = fs::metadata(path).map_err(read_error)?.len();
        self.check_size(path, size)?;
        let bytes = read_capped(path, self.max_file_size.bytes())
            .map_err(read_error)?
            .map_err(|size| FileError::TooLarge {
                path: path.to_path_buf(),
                size,
                limit: self.max_file_size,
            })?;
        let source = String::from_utf8(bytes).map_err(|_| FileError::NotUtf8 {
            path: path.to_path_buf(),
        })?;
        self.check_source(path, &source)?;
        Ok(source)
    }
}

impl Default for DagLimits {
    fn default() -> Self {
        Self {
            max_file_size: Self::DEFAULT_MAX_FILE_SIZE,
            max_tasks: Self::DEFAULT_MAX_TASKS,
        }
    }
}

/// Reads at most `cap` bytes; `Ok(Err(len))` when the file holds more (it
/// grew after its size was checked), with the length read so far.
pub(crate) fn read_capped(path: &Path, cap: u64) -> io::Result<Result<Vec<u8>, u64>> {
    let file = fs::File::open(path)?;
    let mut bytes = Vec::new();
    file.take(cap.saturating_add(1)).read_to_end(&mut bytes)?;
    let len = bytes.len() as u64;
    Ok(if len > cap { Err(len) } else { Ok(bytes) })
}

/// The first `n` bytes of a file as text (lossy), e.g. to find the `id` of
/// a file too large to read whole.
pub(crate) fn read_head(path: &Path, n: u64) -> io::Result<String> {
    let mut bytes = Vec::new();
    fs::File::open(path)?.take(n).read_to_end(&mut bytes)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Counts the `[tasks.NAME]` table headers of a TOML text without parsing
/// it: one pass that skips comments and strings (so a header-like line
/// inside a multi-line string does not count) and reads each header's
/// dotted key. Sub-tables such as `[tasks.a.resources]` are not tasks.
pub fn count_task_tables(source: &str) -> usize {
    let bytes = source.as_bytes();
    let mut count = 0;
    let mut i = 0;
    let mut line_start = true;
    while i < bytes.len() {
        let b = bytes[i];
        if line_start && (b == b' ' || b == b'\t') {
            i += 1;
            continue;
        }
        if line_start && b == b'[' && bytes.get(i + 1) != Some(&b'[') {
            let end = bytes[i..]
                .iter()
                .position(|&c| c == b'\n')
                .map_or(bytes.len(), |p| i + p);
            if is_task_header(&source[i + 1..end]) {
                count += 1;
            }
            i = end;
            continue;
        }
        line_start = false;
        match b {
            b'\n' => line_start = true,
            b'#' => {
                i = bytes[i..]
                    .iter()
                    .position(|&c| c == b'\n')
                    .map_or(bytes.len(), |p| i + p);
                continue;
            }
            b'"' | b'\'' => {
                i = skip_string(bytes, i);
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    count
}

/// Index just past the string starting at `start` (a quote), handling
/// multi-line strings and, in basic strings, backslash escapes.
fn skip_string(bytes: &[u8], start: usize) -> usize {
    let quote = bytes[start];
    let basic = quote == b'"';
    let multi = bytes.get(start + 1) == Some(&quote) && bytes.get(start + 2) == Some(&quote);
    let mut i = start + if multi { 3 } else { 1 };
    while i < bytes.len() {
        let b = bytes[i];
        if basic && b == b'\\' {
            i += 2;
            continue;
        }
        if !multi && b == b'\n' {
            return i; // unterminated: leave the newline to the caller
        }
        if b == quote {
            if !multi {
                return i + 1;
            }
            let run = bytes[i..].iter().take_while(|&&c| c == quote).count();
            if run >= 3 {
                // Up to two quotes before the closing three belong to the string.
                return i + run;
            }
            i += run;
            continue;
        }
        i += 1;
    }
    bytes.len()
}

/// Whether a header's text after `[` (up to the line's end) is `tasks.NAME]`
/// with exactly two key segments, bare or quoted, spaces allowed around dots.
fn is_task_header(text: &str) -> bool {
    let mut segments = Vec::with_capacity(2);
    let mut rest = text.trim_start();
    loop {
        let (segment, after) = match rest.as_bytes().first() {
            Some(&q @ (b'"' | b'\'')) => {
                let close = rest[1..].find(q as char).map(|p| p + 1);
                match close {
                    Some(c) => (&rest[1..c], &rest[c + 1..]),
                    None => return false,
                }
            }
            _ => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
                    .unwrap_or(rest.len());
                if end == 0 {
                    return false;
                }
                (&rest[..end], &rest[end..])
            }
        };
        segments.push(segment);
        if segments.len() > 2 {
            return false;
        }
        let after = after.trim_start();
        if let Some(next) = after.strip_prefix('.') {
            rest = next.trim_start();
        } else {
            return after.starts_with(']') && segments.len() == 2 && segments[0] == "tasks";
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_task_tables_but_not_sub_tables_or_other_tables() {
        let src = r#"
id = "x"
[params]
a = 1
[tasks.a]
command = ["true"]
[tasks.a.resources]
cpus = 1
  [ tasks . "b c" ]   # a comment
command = ["true"]
[tasks.'d']
[[tasks.e]]
[defaults]
"#;
        assert_eq!(count_task_tables(src), 3);
    }

    #[test]
    fn headers_inside_strings_and_comments_do_not_count() {
        let src = "id = \"x\"\n\
                   doc = \"\"\"\n[tasks.fake]\n\"\"\"\n\
                   lit = '''\n[tasks.fake2]\n'''\n\
                   q = \"\"\"ends with quotes\"\"\"\"\"\n\
                   # [tasks.commented]\n\
                   s = \"[tasks.inline]\"\n\
                   [tasks.real]\ncommand = [\"true\"]\n";
        assert_eq!(count_task_tables(src), 1);
    }

    #[test]
    fn a_million_headers_are_counted_in_one_pass() {
        let src: String = (0..1_000_000)
            .map(|i| format!("[tasks.t{i}]\ncommand = [\"true\"]\n"))
            .collect();
        assert_eq!(count_task_tables(&src), 1_000_000);
    }

    #[test]
    fn limits_name_the_value_the_limit_and_the_flag() {
        let limits = DagLimits::default();
        let path = Path::new("/d/big.toml");
        let err = limits.check_size(path, 36_700_160).unwrap_err().to_string();
        assert!(
            err.contains("/d/big.toml")
                && err.contains("36700160 bytes")
                && err.contains("1MiB")
                && err.contains("--max-dag-file-size"),
            "{err}"
        );
        let err = limits
            .check_task_count(path, 1_000_000)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("1000000 tasks")
                && err.contains("20000")
                && err.contains("--max-dag-tasks"),
            "{err}"
        );
        assert!(limits.check_size(path, 1 << 20).is_ok());
        assert!(limits.check_task_count(path, 20_000).is_ok());
    }
}
