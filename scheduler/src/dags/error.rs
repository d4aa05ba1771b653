//! Errors of DAG loading: per-file problems (reported, never fatal to the
//! other files) and the few that stop the loader itself.

use std::io;
use std::path::PathBuf;

use trainyard_core::dag::DagErrors;
use trainyard_core::ids::DagId;
use trainyard_core::resources::ByteSize;

use crate::store::StoreError;

pub type Result<T, E = DagLoadError> = std::result::Result<T, E>;

/// What is wrong with one DAG file. The other files load regardless.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// The file is not a valid DAG; every problem has its line and column.
    #[error("{0}")]
    Parse(DagErrors),

    #[error("{path}: cannot read: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("{path}: not UTF-8 text; DAG files must be UTF-8")]
    NotUtf8 { path: PathBuf },

    /// Over the size cap: refused from its metadata, never read.
    #[error(
        "{path}: the file is {size} bytes, over the {limit} limit for a DAG file, so it is not loaded; split it into smaller DAGs or raise --max-dag-file-size (TRAINYARD_MAX_DAG_FILE_SIZE)"
    )]
    TooLarge {
        path: PathBuf,
        size: u64,
        limit: ByteSize,
    },

    /// Over the task cap: refused before (or, for inline tables, right
    /// after) parsing.
    #[error(
        "{path}: the file defines {count} tasks, over the limit of {limit} tasks per DAG, so it is not loaded; split it into smaller DAGs or raise --max-dag-tasks (TRAINYARD_MAX_DAG_TASKS)"
    )]
    TooManyTasks {
        path: PathBuf,
        count: usize,
        limit: usize,
    },

    /// The folder's code files are over `--dag-code-max-bytes`: versions
    /// loaded from it ship no code snapshot.
    #[error(
        "{dir}: the DAG folder's code files total {size} bytes, over the {limit} limit, so no code snapshot ships with its DAGs and their tasks run in each worker's working directory; exclude data files with --dag-code-exclude (TRAINYARD_DAG_CODE_EXCLUDE) or raise --dag-code-max-bytes (TRAINYARD_DAG_CODE_MAX_BYTES)"
    )]
    CodeTooLarge {
        dir: PathBuf,
        size: u64,
        limit: ByteSize,
    },

    /// The DAG's code could not be put into the artifact store; the file
    /// is tried again on the next scan.
    #[error(
        "{path}: the DAG's code files could not be stored, so this version is not registered yet (tried again on the next scan): {message}"
    )]
    CodeUpload { path: PathBuf, message: String },

    /// A second file claims a DAG id another file already defines. The first
    /// keeps it; the second is ignored until one of them changes.
    #[error(
        "{path}: DAG id {dag_id:?} is already defined in {first}; rename one of them (this file is ignored)"
    )]
    DuplicateId {
        dag_id: DagId,
        path: PathBuf,
        first: PathBuf,
    },

    /// The parsed spec could not be turned into JSON for the store (a bug, not a user error).
    #[error("{path}: cannot encode the parsed DAG: {source}")]
    Encode {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },

    /// The store refused or failed; the file is tried again on the next scan.
    #[error("{path}: could not save to the store: {source}")]
    Store {
        path: PathBuf,
        #[source]
        source: StoreError,
    },
}

/// Why the loader as a whole cannot work.
#[derive(Debug, thiserror::Error)]
pub enum DagLoadError {
    #[error("DAG folder {path}: {source}; create it or point the scheduler at another folder")]
    Dir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    #[error("DAG folder {path} is not a directory")]
    NotADir { path: PathBuf },

    #[error("cannot watch DAG folder {path}: {source}")]
    Watch {
        path: PathBuf,
        #[source]
        source: notify::Error,
    },

    #[error("cannot read the registered DAGs from the store: {0}")]
    Store(#[from] StoreError),
}
