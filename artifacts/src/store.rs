//! [`ArtifactStore`]: the handle workers and the scheduler hold. It owns the
//! configured backend and applies the key rules of [`crate::layout`] to every
//! upload, download and read.

use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};

use crate::backend;
use crate::error::{Error, Result};
use crate::layout::{AttemptKey, join_key, parse_key, relative_key_to_path, relative_path_to_key};
use crate::transfer::{self, DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};

/// One stored object, as recorded for lineage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactRecord {
    /// Key relative to the store URL, e.g. `runs/r1/train/1/out/model.bin`.
    pub key: String,
    /// Full URI, e.g. `s3://bucket/prefix/runs/r1/train/1/out/model.bin`.
    pub uri: String,
    pub size: u64,
    /// Lowercase hex sha256 of the content.
    pub sha256: String,
}

/// An object listed under a prefix (no digest: listing does not read data).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedObject {
    pub key: String,
    pub uri: String,
    pub size: u64,
}

/// A stored object opened for streaming, e.g. a log served over HTTP.
pub struct OpenedObject {
    pub uri: String,
    pub size: u64,
    pub stream: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for OpenedObject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenedObject")
            .field("uri", &self.uri)
            .field("size", &self.size)
            .finish_non_exhaustive()
    }
}

/// Cheap to clone; share one per process.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    /// Scoped to the URL's prefix: keys handed to it are relative.
    store: Arc<dyn ObjectStore>,
    /// `scheme://bucket/prefix`, used to build each record's URI.
    base_uri: Arc<str>,
    /// Multipart part size; bounds upload memory (see `transfer`).
    chunk_size: usize,
}

impl ArtifactStore {
    /// Opens the store named by the one artifact setting: a path,
    /// `file:///dir`, `s3://bucket/prefix`, `gs://…`, `az://…` or
    /// `memory://`. Cloud credentials and endpoints come from the usual env
    /// variables (`AWS_*`, `GOOGLE_*`, `AZURE_*`).
    pub fn from_url(url: &str) -> Result<Self> {
        Self::from_url_with_options(url, &[])
    }

    /// Like [`Self::from_url`], with explicit `object_store` config options
    /// (e.g. `("aws_endpoint", "http://127.0.0.1:9000")`) that win over env.
    pub fn from_url_with_options(url: &str, options: &[(&str, &str)]) -> Result<Self> {
        let backend = backend::build(url, options)?;
        Ok(Self {
            store: backend.store,
            base_uri: backend.base_uri.into(),
            chunk_size: DEFAULT_CHUNK_SIZE,
        })
    }

    /// Sets the multipart part size (clamped to S3's 5 MiB minimum).
    pub fn with_chunk_size(mut self, bytes: usize) -> Self {
        self.chunk_size = bytes.max(MIN_CHUNK_SIZE);
        self
    }

    /// `scheme://bucket/prefix` this store writes under.
    pub fn base_uri(&self) -> &str {
        &self.base_uri
    }

    /// The full URI a key is (or would be) stored at.
    pub fn uri(&self, key: &str) -> String {
        if key.is_empty() {
            self.base_uri.to_string()
        } else if self.base_uri.ends_with("://") {
            format!("{}{key}", self.base_uri)
        } else {
            format!("{}/{key}", self.base_uri)
        }
    }

    /// Uploads every regular file under `local_dir` to `prefix/<relative
    /// path>`, one at a time, streamed. Symlinks are followed only when they
    /// resolve to a file inside `local_dir`; others, and fifos/sockets, are
    /// skipped with a warning. Returns the records sorted by key.
    #[tracing::instrument(skip(self), fields(store = %self.base_uri), err)]
    pub async fn upload_dir(&self, local_dir: &Path, prefix: &str) -> Result<Vec<ArtifactRecord>> {
        let prefix_path = parse_key(prefix)?;
        let root = local_dir
            .canonicalize()
            .map_err(|e| Error::io(local_dir, e))?;
        let files = tokio::task::spawn_blocking(move || collect_files(&root))
            .await
            .map_err(|e| Error::io(local_dir, std::io::Error::other(e)))??;

        let mut records = Vec::with_capacity(files.len());
        for (relative_key, local_file) in files {
            let key = join_key(&prefix_path, &relative_key);
            records.push(self.upload_file(&local_file, &key).await?);
        }
        tracing::debug!(files = records.len(), "uploaded directory");
        Ok(records)
    }

    /// Uploads one file to `key`, streamed and hashed.
    pub async fn upload_file(&self, local_file: &Path, key: &str) -> Result<ArtifactRecord> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        let done = transfer::upload_file(
            self.store.as_ref(),
            local_file,
            &location,
            &uri,
            self.chunk_size,
        )
        .await?;
        Ok(ArtifactRecord {
            key: location.as_ref().to_owned(),
            uri,
            size: done.size,
            sha256: done.sha256,
        })
    }

    /// Stores `bytes` at `key` in one request (small objects, such as a
    /// DAG's code files).
    pub async fn put_bytes(&self, key: &str, bytes: Bytes) -> Result<()> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        self.store
            .put(&location, bytes.into())
            .await
            .map_err(|e| Error::store(&uri, e))?;
        Ok(())
    }

    /// Lists the objects under `prefix` (segment-wise: `a/b` does not match
    /// `a/bc`), sorted by key.
    pub async fn list(&self, prefix: &str) -> Result<Vec<ListedObject>> {
        let prefix_path = parse_key(prefix)?;
        let uri = self.uri(prefix_path.as_ref());
        let mut listed: Vec<ListedObject> = self
            .store
            .list(Some(&prefix_path))
            .map_ok(|meta| ListedObject {
                uri: self.uri(meta.location.as_ref()),
                key: meta.location.as_ref().to_owned(),
                size: meta.size,
            })
            .try_collect()
            .await
            .map_err(|e| Error::store(&uri, e))?;
        listed.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(listed)
    }

    /// Deletes every object under `prefix` (segment-wise, as [`Self::list`];
    /// a local store's emptied folders go too) and returns how many there
    /// were. Deleting what is already gone is not an error, so a pass
    /// interrupted halfway can simply run again.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<u64> {
        let prefix_path = parse_key(prefix)?;
        let listed = self.list(prefix).await?;
        let mut deleted = 0;
        for object in listed {
            let location = parse_key(&object.key)?;
            match self.store.delete(&location).await {
                Ok(()) => deleted += 1,
                Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(&object.uri, e)),
            }
        }
        tracing::debug!(prefix = %prefix_path, deleted, "deleted a prefix");
        Ok(deleted)
    }

    /// Attempt numbers of `task_id` in `run_id` that stored any output, in
    /// ascending order. For a worker that was not told which upstream attempt
    /// succeeded; the scheduler's record of the successful attempt is the
    /// better source when it has one.
    pub async fn attempts_with_outputs(&self, run_id: &str, task_id: &str) -> Result<Vec<u32>> {
        // Validates both ids as single key segments.
        AttemptKey::new(run_id, task_id, 0)?;
        let task_prefix = format!("runs/{run_id}/{task_id}");
        let task_path = parse_key(&task_prefix)?;
        let uri = self.uri(&task_prefix);
        let listing = self
            .store
            .list_with_delimiter(Some(&task_path))
            .await
            .map_err(|e| Error::store(&uri, e))?;
        let mut attempts = Vec::new();
        for dir in listing.common_prefixes {
            let Some(attempt) = dir.filename().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let out = AttemptKey::new(run_id, task_id, attempt)?.output_prefix();
            let out_path = parse_key(&out)?;
            let mut objects = self.store.list(Some(&out_path));
            match objects.next().await {
                Some(Ok(_)) => attempts.push(attempt),
                Some(Err(e)) => return Err(Error::store(self.uri(&out), e)),
                None => {}
            }
        }
        attempts.sort_unstable();
        Ok(attempts)
    }

    /// Downloads every object under `prefix` into `local_dir/<relative key>`,
    /// creating directories. A key whose remainder is not a safe relative
    /// path (`..`, absolute, empty segment) fails the whole download before
    /// any file is written.
    #[tracing::instrument(skip(self), fields(store = %self.base_uri), err)]
    pub async fn download_prefix(
        &self,
        prefix: &str,
        local_dir: &Path,
    ) -> Result<Vec<ArtifactRecord>> {
        let prefix_path = parse_key(prefix)?;
        let listed = self.list(prefix).await?;

        // Validate every key first so a hostile listing writes nothing.
        let mut plan = Vec::with_capacity(listed.len());
        for object in listed {
            let relative = match object.key.strip_prefix(prefix_path.as_ref()) {
                Some(rest) if prefix_path.as_ref().is_empty() => rest,
                Some(rest) => rest.strip_prefix('/').unwrap_or(rest),
                None => {
                    return Err(Error::UnsafeKey {
                        key: object.key,
                        reason: format!("listed outside prefix {prefix:?}"),
                    });
                }
            };
            let local = local_dir.join(relative_key_to_path(relative)?);
            plan.push((object, local));
        }

        tokio::fs::create_dir_all(local_dir)
            .await
            .map_err(|e| Error::io(local_dir, e))?;
        let mut records = Vec::with_capacity(plan.len());
        for (object, local) in plan {
            let location = parse_key(&object.key)?;
            let done = transfer::download_file(self.store.as_ref(), &location, &object.uri, &local)
                .await?;
            records.push(ArtifactRecord {
                key: object.key,
                uri: object.uri,
                size: done.size,
                sha256: done.sha256,
            });
        }
        tracing::debug!(files = records.len(), "downloaded prefix");
        Ok(records)
    }

    /// Downloads one object to `local_file` (parent dirs created).
    pub async fn download_file(&self, key: &str, local_file: &Path) -> Result<ArtifactRecord> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        let done =
            transfer::download_file(self.store.as_ref(), &location, &uri, local_file).await?;
        Ok(ArtifactRecord {
            key: location.as_ref().to_owned(),
            uri,
            size: done.size,
            sha256: done.sha256,
        })
    }

    /// Stores an attempt's full log (already masked by the caller) at
    /// `runs/<run>/<task>/<attempt>/log.txt`.
    pub async fn put_log(&self, attempt: &AttemptKey, local_file: &Path) -> Result<ArtifactRecord> {
        self.upload_file(local_file, &attempt.log_key()).await
    }

    /// Reads an attempt's stored log; [`Error::NotFound`] if none was stored.
    pub async fn read_log(&self, attempt: &AttemptKey) -> Result<String> {
        self.read_to_string(&attempt.log_key()).await
    }

    /// Reads a whole object as UTF-8. For logs of bounded size; use
    /// [`Self::open`] to stream big ones.
    pub async fn read_to_string(&self, key: &str) -> Result<String> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        let bytes = self
            .store
            .get(&location)
            .await
            .map_err(|e| Error::store(&uri, e))?
            .bytes()
            .await
            .map_err(|e| Error::store(&uri, e))?;
        String::from_utf8(bytes.to_vec()).map_err(|_| Error::NotUtf8 { uri })
    }

    /// Opens an object as a byte stream (e.g. to serve a log over HTTP
    /// without holding it in memory).
    pub async fn open(&self, key: &str) -> Result<OpenedObject> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        let result = self
            .store
            .get(&location)
            .await
            .map_err(|e| Error::store(&uri, e))?;
        let size = result.meta.size;
        let stream_uri = uri.clone();
        let stream = result
            .into_stream()
            .map_err(move |e| Error::store(stream_uri.as_str(), e))
            .boxed();
        Ok(OpenedObject { uri, size, stream })
    }

    /// Size of an object, or [`Error::NotFound`].
    pub async fn size(&self, key: &str) -> Result<u64> {
        let location = parse_key(key)?;
        let uri = self.uri(location.as_ref());
        let meta = self
            .store
            .head(&location)
            .await
            .map_err(|e| Error::store(&uri, e))?;
        Ok(meta.size)
    }
}

/// Walks `root` (canonical) without following directory symlinks and returns
/// `(relative key, file to read)` sorted by key.
fn collect_files(root: &Path) -> Result<Vec<(String, std::path::PathBuf)>> {
    let mut files = Vec::new();
    for entry in walkdir::WalkDir::new(root).follow_links(false) {
        let entry = entry.map_err(|e| {
            let path = e.path().unwrap_or(root).to_path_buf();
            Error::io(path, std::io::Error::other(e))
        })?;
        let file_type = entry.file_type();
        if file_type.is_dir() {
            continue;
        }
        let path = entry.path();
        let readable = if file_type.is_file() {
            Some(path.to_path_buf())
        } else if file_type.is_symlink() {
            symlink_target_inside(root, path)
        } else {
            // Fifos and sockets: reading one could block the worker forever.
            tracing::warn!(path = %path.display(), "skipping special file in output dir");
            None
        };
        let Some(readable) = readable else { continue };
        let relative = path.strip_prefix(root).map_err(|_| Error::UnsafeKey {
            key: path.to_string_lossy().into_owned(),
            reason: "walked outside the output directory".to_owned(),
        })?;
        files.push((relative_path_to_key(relative)?, readable));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}

/// A symlink is uploaded (as the file it points at) only when it resolves to
/// a regular file inside the uploaded directory: a task must not be able to
/// publish `/etc/shadow` or a host dataset by linking to it.
fn symlink_target_inside(root: &Path, link: &Path) -> Option<std::path::PathBuf> {
    match link.canonicalize() {
        Ok(target) if target.starts_with(root) && target.is_file() => Some(target),
        Ok(target) => {
            tracing::warn!(
                link = %link.display(),
                target = %target.display(),
                "skipping symlink that leaves the output dir or is not a file"
            );
            None
        }
        Err(e) => {
            tracing::warn!(link = %link.display(), error = %e, "skipping dangling symlink");
            None
        }
    }
}
