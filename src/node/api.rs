//! The node's HTTP API on its unix socket, with nydusd's paths and shapes where they fit:
//!
//! | method and path | does |
//! | --- | --- |
//! | `GET /api/v1/daemon` | version, state, uptime, mounts |
//! | `POST /api/v1/mount?mountpoint=P` | mount an image at P (body: nydusd's mount command) |
//! | `DELETE /api/v1/mount?mountpoint=P` | unmount P |
//! | `GET /api/v1/mounts` | every mount with its image's figures (warren's addition) |
//! | `GET /api/v1/metrics` | the metrics as JSON |
//!
//! Errors are `{"code": ..., "message": ...}` with a 4xx or 5xx status.

use super::{MountRequest, Node};
use crate::api::server::{ApiError, ApiRequest, ApiResponse, Handler};
use crate::backend::registry::RegistryOrigin;
use crate::backend::s3::S3Config;
use hyper::Method;
use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;

/// The body of `POST /api/v1/mount`, as nydusd takes it.
#[derive(Debug, Deserialize)]
pub struct MountBody {
    /// The image's bootstrap.
    pub source: PathBuf,
    /// Only `rafs` (nydusd also knows `passthrough_fs`).
    #[serde(default)]
    pub fs_type: Option<String>,
    /// nydusd's JSON config (an object, or a string holding one), or warren's
    /// [`WarrenMountConfig`].
    #[serde(default)]
    pub config: Option<serde_json::Value>,
    /// Paths in the image to prefetch.
    #[serde(default)]
    pub prefetch_files: Option<Vec<String>>,
}

/// warren's own per-mount `config`: every field optional, the node's settings otherwise.
#[derive(Debug, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WarrenMountConfig {
    pub blob_dir: Option<PathBuf>,
    /// An S3 bucket as the origin, instead of `blob_dir`.
    pub s3: Option<S3Config>,
    pub fuse_threads: Option<usize>,
    pub prefetch_table: Option<bool>,
    pub prefetch_all: Option<bool>,
    pub prefetch_bandwidth: Option<u64>,
}

const MOUNT: &str = "/api/v1/mount";
const PEERS: &str = "/api/v1/peers";
const ROUTES: [&str; 5] = [
    "/api/v1/daemon",
    MOUNT,
    "/api/v1/mounts",
    "/api/v1/metrics",
    PEERS,
];

/// The API's request handler over `node`.
pub fn handler(node: Arc<Node>) -> impl Handler {
    move |req: ApiRequest| {
        let node = node.clone();
        async move {
            route(node, req)
                .await
                .unwrap_or_else(ApiError::into_response)
        }
    }
}

async fn route(node: Arc<Node>, req: ApiRequest) -> Result<ApiResponse, ApiError> {
    match (&req.method, req.path.trim_end_matches('/')) {
        (&Method::GET, "/api/v1/daemon") => {
            let info = blocking(move || Ok(node.daemon_info())).await?;
            Ok(ApiResponse::ok_json(&info))
        }
        (&Method::GET, "/api/v1/mounts") => {
            let mounts = blocking(move || Ok(node.mounts())).await?;
            Ok(ApiResponse::ok_json(&mounts))
        }
        (&Method::GET, PEERS) => {
            let info = blocking(move || node.peers_info()).await?;
            Ok(ApiResponse::ok_json(&info))
        }
        (&Method::GET, "/api/v1/metrics") => Ok(ApiResponse::ok_json(&node.metrics().to_json())),
        (&Method::POST, MOUNT) => {
            let mountpoint = mountpoint_param(&req)?;
            let body: MountBody = req.json()?;
            let request = mount_request(&node, mountpoint, body)?;
            blocking(move || node.mount(request)).await?;
            Ok(ApiResponse::no_content())
        }
        (&Method::DELETE, MOUNT) => {
            let mountpoint = mountpoint_param(&req)?;
            blocking(move || node.unmount(&mountpoint)).await?;
            Ok(ApiResponse::no_content())
        }
        (_, path) if ROUTES.contains(&path) => Err(ApiError::method_not_allowed(&req)),
        _ => Err(ApiError::no_route(&req)),
    }
}

/// Runs blocking node work on tokio's blocking pool.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ApiError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::internal(format!("the request's worker failed: {e}")))?
}

fn mountpoint_param(req: &ApiRequest) -> Result<PathBuf, ApiError> {
    match req.query("mountpoint") {
        Some(p) if !p.is_empty() => Ok(PathBuf::from(p)),
        _ => Err(ApiError::bad_request(
            "missing query parameter `mountpoint` (the absolute path to mount at)",
        )),
    }
}

/// Turns nydusd's mount command into a mount request for this node.
pub fn mount_request(
    node: &Node,
    mountpoint: PathBuf,
    body: MountBody,
) -> Result<MountRequest, ApiError> {
    if let Some(t) = body.fs_type.as_deref() {
        if !t.is_empty() && t != "rafs" {
            return Err(ApiError::bad_request(format!(
                "fs_type {t:?} is not supported (only \"rafs\")"
            )));
        }
    }
    let files = body.prefetch_files.unwrap_or_default();
    if let Some(f) = files.iter().find(|f| !f.starts_with('/')) {
        return Err(ApiError::bad_request(format!(
            "prefetch_files: {f:?} is not an absolute path in the image"
        )));
    }
    let mut options = node.mount_options(&files);
    let config = match body.config {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(s)) if s.trim().is_empty() => None,
        Some(serde_json::Value::String(s)) => Some(
            serde_json::from_str::<serde_json::Value>(&s)
                .map_err(|e| ApiError::bad_request(format!("config is not JSON: {e}")))?,
        ),
        Some(v) => Some(v),
    };
    let mut blob_dir = None;
    let mut s3 = None;
    let mut registry = None;
    match config {
        None => {}
        Some(c) if c.get("device").is_some() || c.get("backend").is_some() => {
            s3 = S3Config::from_nydusd(&c)
                .map_err(|e| ApiError::bad_request(format!("config: {e}")))?;
            if s3.is_none() {
                registry = RegistryOrigin::from_nydusd_config(&c)
                    .map_err(|e| ApiError::bad_request(format!("config: {e}")))?;
            }
            if s3.is_none() && registry.is_none() {
                blob_dir = Some(nydusd_localfs_dir(&c)?);
            }
        }
        Some(c) => {
            let w: WarrenMountConfig = serde_json::from_value(c)
                .map_err(|e| ApiError::bad_request(format!("config: {e}")))?;
            if w.blob_dir.is_some() && w.s3.is_some() {
                return Err(ApiError::bad_request(
                    "config: `blob_dir` and `s3` are two origins; give one",
                ));
            }
            blob_dir = w.blob_dir;
            s3 = w.s3;
            if let Some(n) = w.fuse_threads {
                if n == 0 {
                    return Err(ApiError::bad_request(
                        "config: fuse_threads must be at least 1",
                    ));
                }
                options.fuse_threads = n;
            }
            options.prefetch_table = w.prefetch_table.unwrap_or(options.prefetch_table);
            options.prefetch_all = w.prefetch_all.unwrap_or(options.prefetch_all);
            options.prefetch_bandwidth = w.prefetch_bandwidth.unwrap_or(options.prefetch_bandwidth);
        }
    }
    Ok(MountRequest {
        bootstrap: body.source,
        mountpoint,
        blob_dir,
        s3,
        registry,
        options,
    })
}

/// The blob directory of a nydusd config's localfs backend: `device.backend` with
/// `{"type": "localfs", "config": {"dir": D}}` (config v1), or `backend` with
/// `{"type": "localfs", "localfs": {"dir": D}}` (config v2).
fn nydusd_localfs_dir(c: &serde_json::Value) -> Result<PathBuf, ApiError> {
    let (backend, inner) = match c.get("device") {
        Some(d) => (d.get("backend"), "config"),
        None => (c.get("backend"), "localfs"),
    };
    let Some(backend) = backend else {
        return Err(ApiError::bad_request(
            "config: no `device.backend` in the nydusd config",
        ));
    };
    let kind = backend.get("type").and_then(|t| t.as_str()).unwrap_or("");
    if kind != "localfs" {
        return Err(ApiError::bad_request(format!(
            "config: backend type {kind:?} is not supported by this node yet (only \"localfs\", \"s3\" and \"registry\")"
        )));
    }
    let dir = backend
        .get(inner)
        .and_then(|b| b.get("dir"))
        .and_then(|d| d.as_str())
        .filter(|d| !d.is_empty());
    match dir {
        Some(d) => Ok(PathBuf::from(d)),
        None => Err(ApiError::bad_request(format!(
            "config: the localfs backend has no `{inner}.dir` (the blob directory)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn localfs_dir_from_nydusd_configs() {
        let v1 = json!({"device": {"backend": {"type": "localfs", "config": {"dir": "/b"}},
            "cache": {"type": "blobcache"}}, "mode": "direct"});
        assert_eq!(nydusd_localfs_dir(&v1).unwrap(), PathBuf::from("/b"));
        let v2 = json!({"version": 2, "backend": {"type": "localfs", "localfs": {"dir": "/c"}}});
        assert_eq!(nydusd_localfs_dir(&v2).unwrap(), PathBuf::from("/c"));
        let reg = json!({"device": {"backend": {"type": "registry", "config": {}}}});
        assert!(S3Config::from_nydusd(&reg).unwrap().is_none());
        let e = nydusd_localfs_dir(&reg).unwrap_err();
        assert!(e.message.contains("registry"), "{e}");
        let nodir = json!({"device": {"backend": {"type": "localfs", "config": {}}}});
        assert!(nydusd_localfs_dir(&nodir)
            .unwrap_err()
            .message
            .contains("dir"));
    }
}
