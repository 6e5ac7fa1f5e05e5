//! What can go wrong in the store. Reads never return these to the fetch chain: a chunk
//! the store cannot produce is a miss, and the chain goes to the next source.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another process (a running node or mount) has the store open for writing.
    #[error("chunk store {0} is in use by another warren process")]
    Busy(PathBuf),
    #[error("chunk store index {path}: {source}")]
    Index {
        path: PathBuf,
        #[source]
        source: rocksdb::Error,
    },
    #[error("chunk store {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An index record that cannot be decoded (a foreign or damaged index).
    #[error("chunk store index: bad record {what}: {detail}")]
    Corrupt { what: String, detail: String },
    #[error(
        "chunk store index was written by format version {found}; this warren reads {supported}"
    )]
    Version { found: u32, supported: u32 },
    /// A write on a store opened read-only.
    #[error("chunk store {0} is open read-only")]
    ReadOnly(PathBuf),
    /// A chunk larger than the high-water mark can never be kept.
    #[error("chunk of {size} bytes does not fit the store's high-water mark of {limit} bytes")]
    TooLarge { size: u64, limit: u64 },
}

impl StoreError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        StoreError::Io {
            path: path.into(),
            source,
        }
    }

    /// Whether the error is the disk being full (or over a file system quota).
    pub fn is_disk_full(&self) -> bool {
        match self {
            StoreError::Io { source, .. } => matches!(
                source.raw_os_error(),
                Some(libc::ENOSPC) | Some(libc::EDQUOT)
            ),
            StoreError::Index { source, .. } => {
                let s = source.to_string();
                s.contains("No space left") || s.contains("NoSpace")
            }
            _ => false,
        }
    }
}

pub type Result<T> = std::result::Result<T, StoreError>;
