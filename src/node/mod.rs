//! The long-running node (`warren node`): its configuration ([`config`]), its state (the
//! images it has mounted, one FUSE mount point each, sharing one chunk cache and one
//! metrics registry), the HTTP API over that state ([`api`]) and its life cycle ([`run`]).
//!
//! The methods of [`Node`] block (they read bootstraps and talk to the kernel): the API
//! calls them on tokio's blocking pool, never on the executor threads.

pub mod api;
pub mod config;
mod run;

pub use run::run;

use crate::api::metrics::Metrics;
use crate::api::server::ApiError;
use crate::backend::localfs::LocalFs;
use crate::backend::registry::RegistryOrigin;
use crate::backend::s3::{S3Backend, S3Config};
use crate::backend::BlobBackend;
use crate::cli::mount::is_mounted;
use crate::fetch::cache::ChunkCache;
use crate::fetch::peers::BlobChains;
use crate::fs::{open_image, ImageMount, MountError, MountOptions};
use crate::rafs::image::{Image, InodeKind};
use config::{normalize, NodeSettings};
use hyper::StatusCode;
use serde::Serialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// The node: settings, shared cache and metrics, and what is mounted.
pub struct Node {
    settings: NodeSettings,
    /// The address the metrics endpoint really listens on.
    metrics_addr: SocketAddr,
    metrics: Arc<Metrics>,
    cache: Arc<dyn ChunkCache>,
    started: Instant,
    state: Mutex<State>,
    /// The peer mesh, when the config has a `[peer]` section.
    mesh: Option<Arc<warren_peer::Mesh>>,
    /// Mounted images by blob, for chunks members ask this node for as their owner.
    chains: Arc<BlobChains>,
}

#[derive(Default)]
struct State {
    /// Set once the node shuts down: no new mounts from then on.
    closing: bool,
    mounts: BTreeMap<PathBuf, Slot>,
}

enum Slot {
    /// A mount request for this mount point is being served.
    Pending,
    Mounted(Arc<MountEntry>),
}

struct MountEntry {
    info: MountInfo,
    mount: ImageMount,
}

/// One image to mount.
#[derive(Clone, Debug)]
pub struct MountRequest {
    pub bootstrap: PathBuf,
    pub mountpoint: PathBuf,
    /// The origin directory; the node's default when `None`.
    pub blob_dir: Option<PathBuf>,
    /// An S3 bucket as the origin instead of a directory (`blob_dir` is then unused).
    pub s3: Option<S3Config>,
    /// A registry repository as the origin (nydusd's `registry` backend).
    pub registry: Option<RegistryOrigin>,
    pub options: MountOptions,
}

/// What `GET /api/v1/mounts` says about a mount.
#[derive(Clone, Debug, Serialize)]
pub struct MountInfo {
    pub mountpoint: PathBuf,
    pub bootstrap: PathBuf,
    /// The origin directory; absent for other origins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blob_dir: Option<PathBuf>,
    /// Where the blobs come from: the directory, `s3://BUCKET/PREFIX`, or the registry
    /// repository's URL.
    pub origin: String,
    pub fs_type: &'static str,
    /// Seconds since the Unix epoch.
    pub mounted_at: u64,
    pub fuse_threads: usize,
    pub stats: ImageStats,
}

/// Figures of one mounted image, from its bootstrap.
#[derive(Clone, Debug, Default, Serialize)]
pub struct ImageStats {
    pub inodes: usize,
    pub files: usize,
    pub dirs: usize,
    pub symlinks: usize,
    pub blobs: usize,
    pub chunks: usize,
    /// Sum of the regular files' sizes.
    pub file_bytes: u64,
    /// Sum of the blobs' compressed sizes.
    pub blob_bytes: u64,
    pub chunk_size: u32,
    /// Entries in the image's prefetch table.
    pub prefetch_table: usize,
}

impl ImageStats {
    pub fn of(image: &Image) -> ImageStats {
        let mut s = ImageStats {
            inodes: image.inodes.len(),
            blobs: image.blobs.len(),
            chunks: image.blobs.iter().map(|b| b.chunks.len()).sum(),
            blob_bytes: image.blobs.iter().map(|b| b.compressed_size).sum(),
            chunk_size: image.chunk_size,
            prefetch_table: image.prefetch.len(),
            ..ImageStats::default()
        };
        for ino in &image.inodes {
            match ino.kind {
                InodeKind::File(_) => {
                    s.files += 1;
                    s.file_bytes += ino.size;
                }
                InodeKind::Dir(_) => s.dirs += 1,
                InodeKind::Symlink(_) => s.symlinks += 1,
                InodeKind::Special => {}
            }
        }
        s
    }
}

/// Frees a reserved mount point unless the mount went through.
struct Reservation<'a> {
    node: &'a Node,
    mountpoint: PathBuf,
    done: bool,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut st = self.node.lock();
            if matches!(st.mounts.get(&self.mountpoint), Some(Slot::Pending)) {
                st.mounts.remove(&self.mountpoint);
            }
        }
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl Node {
    pub fn new(
        settings: NodeSettings,
        metrics_addr: SocketAddr,
        metrics: Arc<Metrics>,
        cache: Arc<dyn ChunkCache>,
    ) -> Node {
        Node {
            settings,
            metrics_addr,
            metrics,
            cache,
            started: Instant::now(),
            state: Mutex::new(State::default()),
            mesh: None,
            chains: Arc::new(BlobChains::default()),
        }
    }

    /// Makes this node a member of a mesh: its mounts ask the members for chunks, and
    /// serve them chunks of their blobs. `chains` must be the table the mesh's
    /// [`NodeChunks`](crate::fetch::peers::NodeChunks) reads.
    pub fn with_mesh(mut self, mesh: Arc<warren_peer::Mesh>, chains: Arc<BlobChains>) -> Node {
        self.mesh = Some(mesh);
        self.chains = chains;
        self
    }

    /// `GET /api/v1/peers`: this node, the live members, shunned peers and traffic.
    pub fn peers_info(&self) -> Result<serde_json::Value, ApiError> {
        let Some(mesh) = &self.mesh else {
            return Err(ApiError::not_found(
                "this node is not part of a peer mesh (no `[peer]` section in its config)",
            ));
        };
        Ok(serde_json::json!({
            "me": mesh.me(),
            "members": mesh.members(),
            "bad_peers": mesh.bad_peers(),
            "connections": mesh
                .connections()
                .into_iter()
                .map(|(peer, datagram_bytes)| serde_json::json!({
                    "peer": peer,
                    "datagram_bytes": datagram_bytes,
                }))
                .collect::<Vec<_>>(),
            "stats": mesh.stats(),
        }))
    }

    pub fn settings(&self) -> &NodeSettings {
        &self.settings
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `GET /api/v1/daemon`.
    pub fn daemon_info(&self) -> serde_json::Value {
        let mounts: Vec<_> = self
            .mounts()
            .into_iter()
            .map(|m| serde_json::json!({"mountpoint": m.mountpoint, "bootstrap": m.bootstrap}))
            .collect();
        let state = if self.lock().closing {
            "STOPPING"
        } else {
            "RUNNING"
        };
        let mut info = serde_json::json!({
            "version": {
                "package_ver": env!("CARGO_PKG_VERSION"),
                "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
            },
            "state": state,
            "uptime_secs": self.started.elapsed().as_secs(),
            "pid": std::process::id(),
            "api_socket": self.settings.api_socket,
            "metrics_addr": self.metrics_addr.to_string(),
            "data_dir": self.settings.data_dir,
            "mounts": mounts,
        });
        if let Some(id) = &self.settings.id {
            info["id"] = serde_json::json!(id);
        }
        info
    }

    /// Every mount, by mount point. Mounts that someone unmounted from outside the node
    /// are forgotten here.
    pub fn mounts(&self) -> Vec<MountInfo> {
        let entries: Vec<Arc<MountEntry>> = self
            .lock()
            .mounts
            .values()
            .filter_map(|s| match s {
                Slot::Mounted(e) => Some(e.clone()),
                Slot::Pending => None,
            })
            .collect();
        let (live, gone): (Vec<_>, Vec<_>) = entries
            .into_iter()
            .partition(|e| is_mounted(&e.info.mountpoint));
        if !gone.is_empty() {
            let mut st = self.lock();
            for e in &gone {
                tracing::warn!(mountpoint = %e.info.mountpoint.display(), "unmounted from outside the node");
                if matches!(st.mounts.get(&e.info.mountpoint), Some(Slot::Mounted(x)) if Arc::ptr_eq(x, e))
                {
                    st.mounts.remove(&e.info.mountpoint);
                }
            }
        }
        live.into_iter().map(|e| e.info.clone()).collect()
    }

    /// The mount options a request starts from: the node's defaults plus its own files.
    pub fn mount_options(&self, prefetch_files: &[String]) -> MountOptions {
        let mut o = self.settings.mount_defaults.clone();
        o.prefetch_files.extend(prefetch_files.iter().cloned());
        o
    }

    /// Mounts an image. Errors carry the HTTP status that fits and name what was wrong.
    pub fn mount(&self, req: MountRequest) -> Result<MountInfo, ApiError> {
        let mountpoint = mountpoint_key(&req.mountpoint)?;
        let bootstrap = absolute_path("bootstrap", &req.bootstrap)?;
        let blob_dir = match &req.blob_dir {
            Some(d) => absolute_path("blob directory", d)?,
            None => self.settings.blob_dir.clone(),
        };
        let mut reservation = self.reserve(&mountpoint)?;

        check_file("bootstrap", &bootstrap, false)?;
        check_file("mount point", &mountpoint, true)?;
        if is_mounted(&mountpoint) {
            return Err(ApiError::conflict(format!(
                "mount point {} is busy: something is already mounted there",
                mountpoint.display()
            )));
        }
        let bootstrap = std::fs::canonicalize(&bootstrap).unwrap_or(bootstrap);
        let (backend, blob_dir, origin): (Arc<dyn BlobBackend>, _, _) =
            match (&req.s3, &req.registry) {
                (Some(s3), _) => {
                    let b = S3Backend::new(s3).map_err(|e| ApiError::bad_request(e.to_string()))?;
                    let origin = b.location();
                    (Arc::new(b), None, origin)
                }
                (None, Some(r)) => {
                    let b = r.open().map_err(|e| ApiError::bad_request(e.to_string()))?;
                    (Arc::new(b), None, r.location())
                }
                (None, None) => {
                    check_file("blob directory", &blob_dir, true)?;
                    let dir = std::fs::canonicalize(&blob_dir).unwrap_or(blob_dir);
                    let origin = dir.display().to_string();
                    (Arc::new(LocalFs::new(&dir)), Some(dir), origin)
                }
            };

        let chain = open_image(
            &bootstrap,
            backend,
            self.cache.clone(),
            self.settings.fetch.clone(),
            self.metrics.clone(),
        )
        .map_err(mount_error)?;
        if let Some(mesh) = &self.mesh {
            chain.join_mesh(mesh.clone());
            self.chains.register(&chain);
        }
        let stats = ImageStats::of(chain.image());
        let mount = ImageMount::mount(&mountpoint, chain, &req.options).map_err(mount_error)?;
        let info = MountInfo {
            mountpoint: mountpoint.clone(),
            bootstrap,
            blob_dir,
            origin,
            fs_type: "rafs",
            mounted_at: unix_now(),
            fuse_threads: req.options.fuse_threads,
            stats,
        };
        let entry = Arc::new(MountEntry {
            info: info.clone(),
            mount,
        });
        let mut st = self.lock();
        if st.closing {
            drop(st);
            drop(entry); // unmounts
            return Err(shutting_down());
        }
        st.mounts.insert(mountpoint, Slot::Mounted(entry));
        reservation.done = true;
        tracing::info!(mountpoint = %info.mountpoint.display(), bootstrap = %info.bootstrap.display(), "mounted");
        Ok(info)
    }

    fn reserve(&self, mountpoint: &Path) -> Result<Reservation<'_>, ApiError> {
        let mut st = self.lock();
        if st.closing {
            return Err(shutting_down());
        }
        match st.mounts.get(mountpoint) {
            Some(Slot::Pending) => {
                return Err(ApiError::conflict(format!(
                    "a mount at {} is in progress",
                    mountpoint.display()
                )))
            }
            Some(Slot::Mounted(e)) if is_mounted(mountpoint) => {
                return Err(ApiError::conflict(format!(
                    "{} is already mounted by this node (bootstrap {})",
                    mountpoint.display(),
                    e.info.bootstrap.display()
                )))
            }
            _ => {}
        }
        // Absent, or mounted once and unmounted from outside since: take it.
        st.mounts.insert(mountpoint.to_path_buf(), Slot::Pending);
        Ok(Reservation {
            node: self,
            mountpoint: mountpoint.to_path_buf(),
            done: false,
        })
    }

    /// Unmounts what this node mounted at `mountpoint`.
    pub fn unmount(&self, mountpoint: &Path) -> Result<(), ApiError> {
        let mountpoint = mountpoint_key(mountpoint)?;
        let entry = {
            let mut st = self.lock();
            match st.mounts.get(&mountpoint) {
                None => {
                    return Err(ApiError::not_found(format!(
                        "nothing is mounted at {} by this node",
                        mountpoint.display()
                    )))
                }
                Some(Slot::Pending) => {
                    return Err(ApiError::conflict(format!(
                        "a mount at {} is in progress",
                        mountpoint.display()
                    )))
                }
                Some(Slot::Mounted(_)) => match st.mounts.remove(&mountpoint) {
                    Some(Slot::Mounted(e)) => e,
                    _ => unreachable!("checked above"),
                },
            }
        };
        let result = entry.mount.unmount().map_err(mount_error);
        tracing::info!(mountpoint = %mountpoint.display(), "unmounted");
        result
    }

    /// Stops taking mounts and unmounts everything; the failures, by mount point.
    pub fn unmount_all(&self) -> Vec<(PathBuf, ApiError)> {
        let entries: Vec<Arc<MountEntry>> = {
            let mut st = self.lock();
            st.closing = true;
            let all = std::mem::take(&mut st.mounts);
            let mut keep = BTreeMap::new();
            let mut out = Vec::new();
            for (k, v) in all {
                match v {
                    Slot::Mounted(e) => out.push(e),
                    // The request serving it unmounts it, since `closing` is set.
                    Slot::Pending => {
                        keep.insert(k, Slot::Pending);
                    }
                }
            }
            st.mounts = keep;
            out
        };
        entries
            .into_iter()
            .filter_map(|e| {
                let r = e.mount.unmount();
                r.err()
                    .map(|err| (e.info.mountpoint.clone(), mount_error(err)))
            })
            .collect()
    }
}

fn shutting_down() -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "UNAVAILABLE",
        "the node is shutting down",
    )
}

fn absolute_path(what: &str, p: &Path) -> Result<PathBuf, ApiError> {
    if p.as_os_str().is_empty() {
        return Err(ApiError::bad_request(format!("the {what} path is empty")));
    }
    if !p.is_absolute() {
        return Err(ApiError::bad_request(format!(
            "{what} {} is not an absolute path",
            p.display()
        )));
    }
    Ok(normalize(p))
}

/// A mount point as the node knows it: its parent resolved by the file system (symbolic
/// links, `..`) and its own name. The mount point itself is not looked at: it may be a
/// FUSE mount that no longer answers.
fn mountpoint_key(p: &Path) -> Result<PathBuf, ApiError> {
    let p = absolute_path("mount point", p)?;
    Ok(match (p.parent(), p.file_name()) {
        (Some(parent), Some(name)) => std::fs::canonicalize(parent)
            .map(|c| c.join(name))
            .unwrap_or(p),
        _ => p,
    })
}

fn check_file(what: &str, p: &Path, dir: bool) -> Result<(), ApiError> {
    let md = std::fs::metadata(p).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ApiError::not_found(format!("{what} {} does not exist", p.display()))
        } else {
            ApiError::bad_request(format!("{what} {}: {e}", p.display()))
        }
    })?;
    if dir && !md.is_dir() {
        return Err(ApiError::bad_request(format!(
            "{what} {} is not a directory",
            p.display()
        )));
    }
    if !dir && !md.is_file() {
        return Err(ApiError::bad_request(format!(
            "{what} {} is not a regular file",
            p.display()
        )));
    }
    Ok(())
}

fn mount_error(e: MountError) -> ApiError {
    match e {
        MountError::Bootstrap { .. } => {
            ApiError::new(StatusCode::BAD_REQUEST, "INVALID_IMAGE", e.to_string())
        }
        MountError::Busy(_) => ApiError::conflict(e.to_string()),
        MountError::MountPoint { .. } => ApiError::bad_request(e.to_string()),
        MountError::Fuse(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "FUSE_ERROR",
            e.to_string(),
        ),
    }
}
