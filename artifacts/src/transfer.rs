//! Moving one file's bytes between local disk and the object store, in
//! bounded memory, hashing (sha256) as the bytes go by.
//!
//! Memory bound of an upload: one read buffer of `chunk_size` plus at most
//! `MAX_PARTS_IN_FLIGHT` parts being sent, so `(1 + MAX_PARTS_IN_FLIGHT) ×
//! chunk_size` (32 MiB with the 8 MiB default) whatever the file's size.
//! A download holds only the chunk the backend is currently yielding.

use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Multipart part size. S3 wants parts of at least 5 MiB (except the last)
/// and at most 10,000 parts: 8 MiB parts carry objects up to ~78 GiB.
pub const DEFAULT_CHUNK_SIZE: usize = 8 * 1024 * 1024;

/// Smallest part size S3 accepts for non-final parts.
pub const MIN_CHUNK_SIZE: usize = 5 * 1024 * 1024;

/// Parts uploaded concurrently per file: enough to keep a link busy while
/// the next chunk is read, small enough to keep memory bounded.
const MAX_PARTS_IN_FLIGHT: usize = 3;

/// Size and digest of bytes that went through a transfer.
pub(crate) struct Transferred {
    pub size: u64,
    pub sha256: String,
}

/// Reads up to `chunk_size` bytes; fewer only at end of file.
///
/// `expected` is how many bytes the file should still hold: the buffer
/// starts at that size (and grows if the file grew), so a small file — most
/// task logs — costs a small allocation rather than a whole chunk (8 MiB by
/// default, which also made tokio's file reader stage 2 MiB per read).
async fn read_chunk(
    file: &mut tokio::fs::File,
    path: &Path,
    chunk_size: usize,
    expected: u64,
) -> Result<Bytes> {
    let capacity = usize::try_from(expected.saturating_add(1))
        .unwrap_or(usize::MAX)
        .min(chunk_size);
    let mut buf = BytesMut::with_capacity(capacity);
    while buf.len() < chunk_size {
        let remaining = (chunk_size - buf.len()) as u64;
        let n = (&mut *file)
            .take(remaining)
            .read_buf(&mut buf)
            .await
            .map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// Streams `local_file` to `location`: one PUT when it fits in one chunk,
/// otherwise a multipart upload that is aborted if anything fails.
pub(crate) async fn upload_file(
    store: &dyn ObjectStore,
    local_file: &Path,
    location: &ObjectPath,
    uri: &str,
    chunk_size: usize,
) -> Result<Transferred> {
    let mut file = tokio::fs::File::open(local_file)
        .await
        .map_err(|e| Error::io(local_file, e))?;
    let mut hasher = Sha256::new();
    // A size hint only: a file that grows meanwhile is still read to its end.
    let expected = match file.metadata().await {
        Ok(m) => m.len(),
        Err(_) => chunk_size as u64,
    };

    let first = read_chunk(&mut file, local_file, chunk_size, expected).await?;
    hasher.update(&first);
    let mut size = first.len() as u64;

    if first.len() < chunk_size {
        store
            .put(location, PutPayload::from_bytes(first))
            .await
            .map_err(|e| Error::store(uri, e))?;
    } else {
        let upload = store
            .put_multipart(location)
            .await
            .map_err(|e| Error::store(uri, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, chunk_size);
        writer.put(first);
        let streamed = stream_rest(
            &mut writer,
            &mut file,
            local_file,
            uri,
            chunk_size,
            expected.saturating_sub(size),
            &mut hasher,
        )
        .await;
        match streamed {
            Ok(rest) => size += rest,
            Err(e) => {
                if let Err(abort) = writer.abort().await {
                    tracing::warn!(%uri, error = %abort, "could not abort multipart upload");
                }
                return Err(e);
            }
        }
        writer.finish().await.map_err(|e| Error::store(uri, e))?;
    }
    Ok(Transferred {
        size,
        sha256: hex(hasher.finalize().as_slice()),
    })
}

/// Feeds the rest of the file to a multipart writer, waiting for part slots
/// before reading each chunk so that reading never outruns the network.
async fn stream_rest(
    writer: &mut WriteMultipart,
    file: &mut tokio::fs::File,
    local_file: &Path,
    uri: &str,
    chunk_size: usize,
    expected: u64,
    hasher: &mut Sha256,
) -> Result<u64> {
    let mut size = 0u64;
    loop {
        writer
            .wait_for_capacity(MAX_PARTS_IN_FLIGHT)
            .await
            .map_err(|e| Error::store(uri, e))?;
        let chunk = read_chunk(file, local_file, chunk_size, expected.saturating_sub(size)).await?;
        if chunk.is_empty() {
            return Ok(size);
        }
        hasher.update(&chunk);
        size += chunk.len() as u64;
        let last = chunk.len() < chunk_size;
        writer.put(chunk);
        if last {
            return Ok(size);
        }
    }
}

/// Streams `location` into `local_file`, writing a sibling temporary file
/// first and renaming it into place, so a cut download never leaves a
/// truncated file where a task expects a whole one.
pub(crate) async fn download_file(
    store: &dyn ObjectStore,
    location: &ObjectPath,
    uri: &str,
    local_file: &Path,
) -> Result<Transferred> {
    if let Some(parent) = local_file.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .map_err(|e| Error::io(parent, e))?;
    }
    let result = store
        .get(location)
        .await
        .map_err(|e| Error::store(uri, e))?;
    let expected = result.meta.size;
    let partial = partial_path(local_file);
    let mut file = tokio::fs::File::create(&partial)
        .await
        .map_err(|e| Error::io(&partial, e))?;

    let copied = async {
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mut stream = result.into_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| Error::store(uri, e))?;
            hasher.update(&chunk);
            size += chunk.len() as u64;
            file.write_all(&chunk)
                .await
                .map_err(|e| Error::io(&partial, e))?;
        }
        // tokio's File finishes writes in the background; flush so the
        // rename below publishes the whole content.
        file.flush().await.map_err(|e| Error::io(&partial, e))?;
        if size != expected {
            return Err(Error::SizeMismatch {
                uri: uri.to_owned(),
                expected,
                got: size,
            });
        }
        Ok(Transferred {
            size,
            sha256: hex(hasher.finalize().as_slice()),
        })
    }
    .await;
    drop(file);

    match copied {
        Ok(done) => {
            tokio::fs::rename(&partial, local_file)
                .await
                .map_err(|e| Error::io(local_file, e))?;
            Ok(done)
        }
        Err(e) => {
            let _ = tokio::fs::remove_file(&partial).await;
            Err(e)
        }
    }
}

fn partial_path(local_file: &Path) -> PathBuf {
    let mut name = local_file
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(".trainyard-partial");
    local_file.with_file_name(name)
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::with_capacity(64), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}
