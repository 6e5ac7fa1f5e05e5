use thiserror::Error;

/// Why a bootstrap or blob could not be read or written.
#[derive(Debug, Error)]
pub enum RafsError {
    #[error("bootstrap truncated: need {need} bytes at offset {offset}, have {have}")]
    Truncated { offset: u64, need: u64, have: u64 },
    #[error("bad {what}: {detail}")]
    Corrupt { what: &'static str, detail: String },
    #[error("unsupported {what}: {detail}")]
    Unsupported { what: &'static str, detail: String },
    #[error("inode nid {nid}: {detail}")]
    BadInode { nid: u64, detail: String },
    #[error("chunk {digest} of blob {blob}: {detail}")]
    BadChunk {
        blob: String,
        digest: String,
        detail: String,
    },
    #[error("I/O error on {path}: {err}")]
    Io { path: String, err: std::io::Error },
}

impl RafsError {
    pub fn corrupt(what: &'static str, detail: impl Into<String>) -> Self {
        RafsError::Corrupt {
            what,
            detail: detail.into(),
        }
    }
    pub fn unsupported(what: &'static str, detail: impl Into<String>) -> Self {
        RafsError::Unsupported {
            what,
            detail: detail.into(),
        }
    }
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        RafsError::Io {
            path: path.as_ref().display().to_string(),
            err: source,
        }
    }
}

pub type Result<T> = std::result::Result<T, RafsError>;
