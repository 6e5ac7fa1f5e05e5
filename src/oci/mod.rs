//! OCI images in registries: references ([`reference`]), manifests, indexes and configs
//! ([`manifest`], over `oci-spec`), the distribution API client ([`client`]: auth, retries,
//! ranged reads, chunked uploads), reading a Nydus image's bootstrap out of a registry
//! ([`pull`]) and converting an ordinary OCI or Docker image into a Nydus image
//! ([`convert`]).
//!
//! Credentials (passwords, tokens, `auth` strings) never appear in logs, errors or
//! metrics: they live in [`auth::Credentials`] and token caches, whose `Debug` hides them,
//! and errors name the registry, the method and the path, never a header or a query.

pub mod auth;
pub mod client;
pub mod convert;
mod convert_push;
pub mod manifest;
pub mod pull;
pub mod reference;
mod status;
mod stream;
mod transport;

pub use client::{Client, RegistryOptions};
pub use reference::Reference;

/// Errors of registry operations. Their text never holds credentials or signed URLs.
#[derive(Debug, thiserror::Error)]
pub enum OciError {
    #[error("invalid image reference {reference:?}: {detail}")]
    Reference { reference: String, detail: String },
    /// The registry answered with an error status.
    #[error("{op}: {status}{}", detail_suffix(.detail))]
    Status {
        op: String,
        status: u16,
        detail: String,
    },
    /// The registry refused our credentials (or we had none).
    #[error("{op}: authentication failed: {detail}")]
    Auth { op: String, detail: String },
    /// Connection failures, resets, timeouts and short bodies, once the retries are spent.
    #[error("{op}: {detail} (gave up after {attempts} attempt{} in {secs:.1} s)", if *.attempts == 1 { "" } else { "s" })]
    Transport {
        op: String,
        detail: String,
        attempts: u32,
        secs: f64,
    },
    /// Content that is not what it claims to be (bad JSON, digest or size mismatch).
    #[error("{what}: {detail}")]
    Invalid { what: String, detail: String },
    #[error("{0}")]
    Unsupported(String),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("building layer {layer}: {source}")]
    Build {
        layer: String,
        #[source]
        source: crate::build::source::BuildError,
    },
    #[error("{0}")]
    Image(#[from] crate::rafs::RafsError),
}

fn detail_suffix(d: &str) -> String {
    if d.is_empty() {
        String::new()
    } else {
        format!(" ({d})")
    }
}

impl OciError {
    pub fn invalid(what: impl Into<String>, detail: impl Into<String>) -> Self {
        OciError::Invalid {
            what: what.into(),
            detail: detail.into(),
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        OciError::Io {
            path: path.as_ref().display().to_string(),
            source,
        }
    }

    /// The registry said the thing does not exist.
    pub fn is_not_found(&self) -> bool {
        matches!(self, OciError::Status { status: 404, .. })
    }
}

impl From<OciError> for std::io::Error {
    fn from(e: OciError) -> Self {
        let kind = match &e {
            OciError::Status { status: 404, .. } => std::io::ErrorKind::NotFound,
            OciError::Auth { .. } => std::io::ErrorKind::PermissionDenied,
            OciError::Transport { .. } => std::io::ErrorKind::TimedOut,
            OciError::Invalid { .. } => std::io::ErrorKind::InvalidData,
            _ => std::io::ErrorKind::Other,
        };
        std::io::Error::new(kind, e.to_string())
    }
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(data)))
}
