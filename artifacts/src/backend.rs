//! Turns the one artifact-store setting (a URL or a plain path) into an
//! `object_store` backend.
//!
//! | setting                         | backend                                    |
//! |---------------------------------|--------------------------------------------|
//! | `/abs/dir`, `rel/dir`, `file:///abs/dir` | local directory (created if missing) |
//! | `memory://`                     | in-process memory (tests, dry runs)        |
//! | `s3://bucket/prefix`            | S3 or S3-compatible, credentials from env  |
//! | `gs://bucket/prefix`            | Google Cloud Storage, credentials from env |
//! | `az://container/prefix`         | Azure Blob Storage, credentials from env   |
//!
//! Explicit `(key, value)` options use `object_store`'s own config key names
//! (`aws_endpoint`, `aws_access_key_id`, `google_service_account`,
//! `azure_storage_account_name`, …) and win over the environment, so tests can
//! point at a loopback server without touching the process env.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::azure::{AzureConfigKey, MicrosoftAzureBuilder};
use object_store::gcp::{GoogleCloudStorageBuilder, GoogleConfigKey};
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::prefix::PrefixStore;
use url::Url;

use crate::error::{Error, Result};
use crate::layout::parse_key;

/// Region used when neither the env nor the options name one: S3-compatible
/// servers (MinIO, Ceph, s3s) accept it, and AWS routes it to the default.
const DEFAULT_S3_REGION: &str = "us-east-1";

/// A configured backend and the URI its keys hang under.
pub(crate) struct Backend {
    /// Already scoped to the URL's key prefix: keys given to it are relative.
    pub store: Arc<dyn ObjectStore>,
    /// `scheme://bucket/prefix` (no trailing `/`); a key's URI is
    /// `{base_uri}/{key}`.
    pub base_uri: String,
}

pub(crate) fn build(setting: &str, options: &[(&str, &str)]) -> Result<Backend> {
    let invalid = |reason: &str| Error::InvalidUrl {
        url: setting.to_owned(),
        reason: reason.to_owned(),
    };
    if setting.trim().is_empty() {
        return Err(invalid("empty setting"));
    }
    if !setting.contains("://") {
        return local(setting, PathBuf::from(setting), options);
    }
    let url = Url::parse(setting).map_err(|e| invalid(&e.to_string()))?;
    match url.scheme() {
        "file" => {
            let dir = url
                .to_file_path()
                .map_err(|()| invalid("file:// url must hold an absolute local path"))?;
            local(setting, dir, options)
        }
        "memory" => {
            reject_options(setting, options, "memory://")?;
            Ok(Backend {
                store: Arc::new(InMemory::new()),
                base_uri: "memory://".to_owned(),
            })
        }
        "s3" | "s3a" => {
            let (bucket, prefix) = bucket_and_prefix(setting, &url)?;
            let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
            for (key, value) in options {
                let parsed =
                    AmazonS3ConfigKey::from_str(key).map_err(|e| bad_option(setting, key, e))?;
                builder = builder.with_config(parsed, *value);
            }
            if let Some(endpoint) = builder.get_config_value(&AmazonS3ConfigKey::Endpoint) {
                // A custom endpoint is a MinIO/Ceph-style server: those serve
                // buckets as paths, and on a private network often over http.
                builder = builder.with_virtual_hosted_style_request(false);
                if endpoint.starts_with("http://") {
                    builder = builder.with_allow_http(true);
                }
            }
            if builder
                .get_config_value(&AmazonS3ConfigKey::Region)
                .is_none()
            {
                builder = builder.with_region(DEFAULT_S3_REGION);
            }
            let store = builder.build().map_err(|e| invalid(&e.to_string()))?;
            scoped(setting, Arc::new(store), "s3", &bucket, &prefix)
        }
        "gs" => {
            let (bucket, prefix) = bucket_and_prefix(setting, &url)?;
            let mut builder = GoogleCloudStorageBuilder::from_env().with_bucket_name(&bucket);
            for (key, value) in options {
                let parsed =
                    GoogleConfigKey::from_str(key).map_err(|e| bad_option(setting, key, e))?;
                builder = builder.with_config(parsed, *value);
            }
            let store = builder.build().map_err(|e| invalid(&e.to_string()))?;
            scoped(setting, Arc::new(store), "gs", &bucket, &prefix)
        }
        "az" | "azure" => {
            let (container, prefix) = bucket_and_prefix(setting, &url)?;
            let mut builder = MicrosoftAzureBuilder::from_env().with_container_name(&container);
            for (key, value) in options {
                let parsed =
                    AzureConfigKey::from_str(key).map_err(|e| bad_option(setting, key, e))?;
                builder = builder.with_config(parsed, *value);
            }
            let store = builder.build().map_err(|e| invalid(&e.to_string()))?;
            scoped(setting, Arc::new(store), "az", &container, &prefix)
        }
        other => Err(invalid(&format!(
            "unsupported scheme {other:?}; use a path, file://, s3://, gs://, az:// or memory://"
        ))),
    }
}

fn local(setting: &str, dir: PathBuf, options: &[(&str, &str)]) -> Result<Backend> {
    reject_options(setting, options, "a local directory")?;
    let dir = if dir.is_absolute() {
        dir
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io(&dir, e))?
            .join(dir)
    };
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let dir = dir.canonicalize().map_err(|e| Error::io(&dir, e))?;
    // Deleting an object removes the folders it leaves empty (up to the
    // store's root), so pruned runs leave no empty tree behind.
    let store = LocalFileSystem::new_with_prefix(&dir)
        .map_err(|e| Error::InvalidUrl {
            url: setting.to_owned(),
            reason: e.to_string(),
        })?
        .with_automatic_cleanup(true);
    let base_uri = Url::from_directory_path(&dir)
        .map(|u| u.as_str().trim_end_matches('/').to_owned())
        .unwrap_or_else(|()| format!("file://{}", dir.display()));
    Ok(Backend {
        store: Arc::new(store),
        base_uri,
    })
}

fn reject_options(setting: &str, options: &[(&str, &str)], what: &str) -> Result<()> {
    match options.first() {
        None => Ok(()),
        Some((key, _)) => Err(Error::InvalidOption {
            url: setting.to_owned(),
            key: (*key).to_owned(),
            reason: format!("{what} takes no options"),
        }),
    }
}

fn bad_option(setting: &str, key: &str, e: object_store::Error) -> Error {
    Error::InvalidOption {
        url: setting.to_owned(),
        key: key.to_owned(),
        reason: e.to_string(),
    }
}

/// `s3://bucket/a/b/` → (`bucket`, `a/b`).
fn bucket_and_prefix(setting: &str, url: &Url) -> Result<(String, String)> {
    let bucket = url.host_str().unwrap_or_default();
    if bucket.is_empty() {
        return Err(Error::InvalidUrl {
            url: setting.to_owned(),
            reason: "missing bucket or container name".to_owned(),
        });
    }
    let prefix = url.path().trim_matches('/').to_owned();
    Ok((bucket.to_owned(), prefix))
}

/// Wraps a cloud store so that every key lives under the URL's prefix.
fn scoped(
    setting: &str,
    store: Arc<dyn ObjectStore>,
    scheme: &str,
    bucket: &str,
    prefix: &str,
) -> Result<Backend> {
    let base = format!("{scheme}://{bucket}");
    if prefix.is_empty() {
        return Ok(Backend {
            store,
            base_uri: base,
        });
    }
    let path = parse_key(prefix).map_err(|e| Error::InvalidUrl {
        url: setting.to_owned(),
        reason: format!("bad key prefix: {e}"),
    })?;
    Ok(Backend {
        store: Arc::new(PrefixStore::new(store, path)),
        base_uri: format!("{base}/{prefix}"),
    })
}
