//! Turns a child's stdout/stderr pipe into [`LogLine`]s on a channel.
//!
//! Lines are split on `\n` (a trailing `\r` is dropped), a final line without
//! newline is kept, and lines longer than [`MAX_LINE_BYTES`] are split into
//! several so one runaway line cannot exhaust memory. Bytes that are not
//! UTF-8 are replaced, never rejected.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use tokio::io::{AsyncBufReadExt as _, AsyncRead, BufReader};
use tokio::sync::mpsc;

/// Longest line sent as one [`LogLine`]; longer output continues in the next.
pub const MAX_LINE_BYTES: usize = 16 * 1024;

/// Which pipe a line came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogStream {
    Stdout,
    Stderr,
}

/// One line of task output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    pub stream: LogStream,
    /// Without its line terminator.
    pub line: String,
    /// When the worker read it.
    pub at: DateTime<Utc>,
    /// Order of reading across both streams of one task, from 0.
    pub seq: u64,
}

/// Reads `pipe` to EOF, sending each line. Keeps reading when the receiver
/// is gone so the child never blocks on a full pipe.
pub(super) async fn pump<R: AsyncRead + Unpin>(
    pipe: R,
    stream: LogStream,
    seq: Arc<AtomicU64>,
    tx: mpsc::Sender<LogLine>,
) {
    let mut reader = BufReader::with_capacity(64 * 1024, pipe);
    let mut pending: Vec<u8> = Vec::new();
    let emit = |bytes: &[u8]| {
        let bytes = bytes.strip_suffix(b"\r").unwrap_or(bytes);
        LogLine {
            stream,
            line: String::from_utf8_lossy(bytes).into_owned(),
            at: Utc::now(),
            seq: seq.fetch_add(1, Ordering::Relaxed),
        }
    };
    loop {
        let chunk = match reader.fill_buf().await {
            Ok(chunk) => chunk,
            Err(error) => {
                tracing::warn!(?stream, %error, "reading task output failed");
                break;
            }
        };
        if chunk.is_empty() {
            break;
        }
        let len = chunk.len();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            pending.extend_from_slice(&rest[..pos]);
            for line in split_long(&pending) {
                let _ = tx.send(emit(line)).await;
            }
            pending.clear();
            rest = &rest[pos + 1..];
        }
        pending.extend_from_slice(rest);
        // Flush whole chunks of an overlong line now, keep the tail pending.
        if pending.len() > MAX_LINE_BYTES {
            let cut = char_boundary(&pending, MAX_LINE_BYTES);
            let _ = tx.send(emit(&pending[..cut])).await;
            pending.drain(..cut);
        }
        reader.consume(len);
    }
    if !pending.is_empty() {
        for line in split_long(&pending) {
            let _ = tx.send(emit(line)).await;
        }
    }
}

/// Splits `bytes` into pieces of at most [`MAX_LINE_BYTES`], not inside a
/// UTF-8 sequence.
fn split_long(mut bytes: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    while bytes.len() > MAX_LINE_BYTES {
        let cut = char_boundary(bytes, MAX_LINE_BYTES);
        out.push(&bytes[..cut]);
        bytes = &bytes[cut..];
    }
    out.push(bytes);
    out
}

/// The largest cut `<= max` that does not split a UTF-8 sequence (falls back
/// to `max` for bytes that are not UTF-8 at all).
fn char_boundary(bytes: &[u8], max: usize) -> usize {
    let mut cut = max.min(bytes.len());
    // Continuation bytes look like 0b10xx_xxxx; at most 3 precede a boundary.
    for _ in 0..3 {
        if cut == 0 || cut == bytes.len() || bytes[cut] & 0xC0 != 0x80 {
            break;
        }
        cut -= 1;
    }
    if cut == 0 { max.min(bytes.len()) } else { cut }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn lines_of(input: &[u8]) -> Vec<String> {
        let (tx, mut rx) = mpsc::channel(1024);
        pump(input, LogStream::Stdout, Arc::default(), tx).await;
        let mut out = Vec::new();
        while let Some(l) = rx.recv().await {
            out.push(l.line);
        }
        out
    }

    #[tokio::test]
    async fn last_line_without_newline_is_kept_and_crlf_trimmed() {
        assert_eq!(lines_of(b"a\r\nb\n\nc").await, vec!["a", "b", "", "c"]);
    }

    #[tokio::test]
    async fn overlong_lines_are_split_not_dropped() {
        let mut input = vec![b'x'; MAX_LINE_BYTES * 2 + 10];
        input.extend_from_slice(b"\nshort\n");
        let lines = lines_of(&input).await;
        assert_eq!(lines.len(), 4);
        assert_eq!(lines[0].len(), MAX_LINE_BYTES);
        assert_eq!(lines[2].len(), 10);
        assert_eq!(lines[3], "short");
    }

    #[tokio::test]
    async fn splitting_never_cuts_a_utf8_character() {
        let input = "é".repeat(MAX_LINE_BYTES); // 2 bytes each
        let lines = lines_of(format!("x{input}").as_bytes()).await;
        assert!(lines.iter().all(|l| !l.contains('\u{FFFD}')));
        assert_eq!(lines.concat(), format!("x{input}"));
    }
}
