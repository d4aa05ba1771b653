//! Artifact and log storage for Trainyard, on `object_store`.
//!
//! Workers upload what a task left in `TRAINYARD_OUTPUT_DIR` after it ends
//! and download upstream outputs into `TRAINYARD_INPUT_DIR` before it starts;
//! the scheduler stores each attempt's full log and serves it after the
//! worker is gone. One setting (a path or a `s3://`, `gs://`, `az://` URL)
//! chooses the backend; see [`ArtifactStore::from_url`].
//!
//! Transfers stream in fixed-size chunks and hash on the fly, so memory stays
//! bounded (tens of MiB) whatever the artifact's size.
//!
//! This crate depends on neither the scheduler nor the worker: both depend
//! on it.

mod backend;
mod error;
mod layout;
mod store;
mod transfer;

pub use error::{Error, Result};
pub use layout::{AttemptKey, parse_key, relative_key_to_path};
pub use store::{ArtifactRecord, ArtifactStore, ListedObject, OpenedObject};
pub use transfer::{DEFAULT_CHUNK_SIZE, MIN_CHUNK_SIZE};
