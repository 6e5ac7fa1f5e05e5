//! Mounting an image: a kernel FUSE session at a mount point and worker threads serving it.
//! Each worker blocks only on its own request, so a read waiting on the origin leaves the
//! other workers free.

use super::{opcodes, RafsFs};
use crate::api::metrics::Metrics;
use crate::backend::BlobBackend;
use crate::fetch::cache::ChunkCache;
use crate::fetch::prefetch::{self, PrefetchPlan};
use crate::fetch::{FetchChain, FetchOptions};
use fuse_backend_rs::abi::fuse_abi::{InHeader, OutHeader};
use fuse_backend_rs::api::server::{MetricsHook, Server};
use fuse_backend_rs::transport::FuseSession;
use serde::{Deserialize, Serialize};
use std::cell::Cell;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Instant;

/// Settings of one mount.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MountOptions {
    /// FUSE worker threads.
    pub fuse_threads: usize,
    /// Prefetch the files in the image's prefetch table.
    pub prefetch_table: bool,
    /// Paths (absolute in the image) to prefetch, after the table.
    pub prefetch_files: Vec<String>,
    /// Then prefetch every file of the image.
    pub prefetch_all: bool,
    /// Prefetch bandwidth cap in bytes per second (0: no cap).
    pub prefetch_bandwidth: u64,
    /// Put chunks read ahead for a scan into the kernel's page cache (see `fs::push`).
    pub push_read_ahead: bool,
}

pub const DEFAULT_FUSE_THREADS: usize = 4;

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            fuse_threads: DEFAULT_FUSE_THREADS,
            prefetch_table: true,
            prefetch_files: Vec::new(),
            prefetch_all: false,
            prefetch_bandwidth: 0,
            push_read_ahead: true,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("bootstrap {path}: {detail}")]
    Bootstrap { path: String, detail: String },
    #[error("mount point {path}: {detail}")]
    MountPoint { path: String, detail: String },
    #[error("mount point {0} is busy: something is already mounted there")]
    Busy(String),
    #[error("FUSE: {0}")]
    Fuse(String),
}

/// Reads a bootstrap and builds the fetch chain that serves its data.
pub fn open_image(
    bootstrap: &Path,
    backend: Arc<dyn BlobBackend>,
    cache: Arc<dyn ChunkCache>,
    fetch: FetchOptions,
    metrics: Arc<Metrics>,
) -> Result<Arc<FetchChain>, MountError> {
    let bs =
        crate::rafs::reader::read_bootstrap_file(bootstrap).map_err(|e| MountError::Bootstrap {
            path: bootstrap.display().to_string(),
            detail: e.to_string(),
        })?;
    Ok(Arc::new(FetchChain::new(
        Arc::new(bs.image),
        backend,
        cache,
        fetch,
        metrics,
    )))
}

/// One mounted image. Dropping it unmounts.
pub struct ImageMount {
    mountpoint: PathBuf,
    session: Mutex<FuseSession>,
    workers: Mutex<Vec<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    prefetch: Mutex<Option<JoinHandle<()>>>,
    chain: Arc<FetchChain>,
}

thread_local! {
    static STARTED: Cell<Option<(Instant, u32)>> = const { Cell::new(None) };
}

/// Per-operation counts and latency, around every request a worker handles. The labelled
/// series are looked up once, not on every request.
struct OpMetrics {
    by_opcode: Vec<(
        prometheus::IntCounter,
        prometheus::IntCounter,
        prometheus::Histogram,
    )>,
}

/// Opcodes below this get their own slot; the rest share the last one ("other").
const OPCODES: u32 = 64;

impl OpMetrics {
    fn new(m: &Metrics) -> Self {
        let by_opcode = (0..=OPCODES)
            .map(|op| {
                let name = opcodes::name(op);
                (
                    m.fuse_ops.with_label_values(&[name]),
                    m.fuse_errors.with_label_values(&[name]),
                    m.fuse_op_seconds.with_label_values(&[name]),
                )
            })
            .collect();
        OpMetrics { by_opcode }
    }
}

impl MetricsHook for OpMetrics {
    fn collect(&self, ih: &InHeader) {
        STARTED.with(|s| s.set(Some((Instant::now(), ih.opcode))));
    }

    fn release(&self, oh: Option<&OutHeader>) {
        if let Some((t, op)) = STARTED.with(|s| s.take()) {
            let (count, errors, seconds) = &self.by_opcode[op.min(OPCODES) as usize];
            count.inc();
            seconds.observe(t.elapsed().as_secs_f64());
            if oh.is_some_and(|h| h.error != 0) {
                errors.inc();
            }
        }
    }
}

/// Refuses a mount point that is missing, not a directory or already mounted on, and a
/// process that cannot open /dev/fuse: before any other work, so the error is the first thing.
pub fn check_mountpoint(path: &Path) -> Result<(), MountError> {
    let bad = |detail: String| MountError::MountPoint {
        path: path.display().to_string(),
        detail,
    };
    let md = std::fs::metadata(path).map_err(|e| bad(e.to_string()))?;
    if !md.is_dir() {
        return Err(bad("not a directory".into()));
    }
    let parent = path.canonicalize().map_err(|e| bad(e.to_string()))?;
    let parent_dev = parent
        .parent()
        .map(|p| std::fs::metadata(p).map(|m| m.dev()));
    if let Some(Ok(dev)) = parent_dev {
        if dev != md.dev() {
            return Err(MountError::Busy(path.display().to_string()));
        }
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/fuse")
        .map_err(|e| {
            MountError::Fuse(format!(
                "cannot open /dev/fuse: {e} (mounting needs root or access to /dev/fuse)"
            ))
        })?;
    Ok(())
}

fn start_pusher(session: &FuseSession, chain: &Arc<FetchChain>, stop: &Arc<AtomicBool>) {
    let pusher = session
        .clone_fuse_file()
        .map_err(|e| e.to_string())
        .and_then(|f| {
            let pushed = chain.metrics().pushed_bytes.clone();
            super::push::PagePusher::start(chain.image().clone(), f, pushed, stop.clone())
                .map_err(|e| e.to_string())
        });
    match pusher {
        Ok(pusher) => chain.set_read_ahead_sink(Arc::new(pusher)),
        Err(e) => tracing::warn!(error = %e, "read-ahead will not be pushed into the page cache"),
    }
}

impl ImageMount {
    pub fn mount(
        mountpoint: &Path,
        chain: Arc<FetchChain>,
        opts: &MountOptions,
    ) -> Result<ImageMount, MountError> {
        check_mountpoint(mountpoint)?;
        let mut session = FuseSession::new(mountpoint, "warren", "rafs", true)
            .map_err(|e| MountError::Fuse(e.to_string()))?;
        session
            .mount()
            .map_err(|e| MountError::Fuse(format!("mounting {}: {e}", mountpoint.display())))?;
        let server = Arc::new(Server::new(Arc::new(RafsFs::new(chain.clone()))));
        let stop = Arc::new(AtomicBool::new(false));
        if opts.push_read_ahead {
            start_pusher(&session, &chain, &stop);
        }
        let mut workers = Vec::new();
        for i in 0..opts.fuse_threads.max(1) {
            let mut channel = session
                .new_channel()
                .map_err(|e| MountError::Fuse(e.to_string()))?;
            let server = server.clone();
            let hook = OpMetrics::new(chain.metrics());
            let worker = std::thread::Builder::new()
                .name(format!("warren-fuse-{i}"))
                .spawn(move || {
                    // Ends when woken to exit, or when the session is gone after an unmount.
                    while let Ok(Some((reader, writer))) = channel.get_request() {
                        if let Err(e) =
                            server.handle_message(reader, writer.into(), None, Some(&hook))
                        {
                            if let fuse_backend_rs::Error::EncodeMessage(_) = e {
                                break; // the kernel closed the session
                            }
                            tracing::warn!(error = %e, "FUSE request failed");
                        }
                    }
                })
                .map_err(|e| MountError::Fuse(e.to_string()))?;
            workers.push(worker);
        }
        chain.metrics().mounts.inc();
        let plan = prefetch_plan(&chain, opts);
        chain.protect_prefetch_set(&plan.inodes);
        let prefetch = (!plan.inodes.is_empty() || plan.all)
            .then(|| prefetch::spawn(chain.clone(), plan, stop.clone()));
        Ok(ImageMount {
            mountpoint: mountpoint.to_path_buf(),
            session: Mutex::new(session),
            workers: Mutex::new(workers),
            stop,
            prefetch: Mutex::new(prefetch),
            chain,
        })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    pub fn chain(&self) -> &Arc<FetchChain> {
        &self.chain
    }

    /// Blocks until the workers stop (the file system was unmounted from outside).
    pub fn wait(&self) {
        let workers = std::mem::take(&mut *self.workers.lock().unwrap_or_else(|p| p.into_inner()));
        for w in workers {
            let _ = w.join();
        }
    }

    /// Unmounts and stops the workers and prefetch.
    pub fn unmount(&self) -> Result<(), MountError> {
        self.stop.store(true, Ordering::Relaxed);
        let mut session = self.session.lock().unwrap_or_else(|p| p.into_inner());
        // Workers stop only once the kernel has let go: stopping them under a live mount
        // would leave its readers hanging.
        session.umount().map_err(|e| {
            self.stop.store(false, Ordering::Relaxed);
            MountError::Fuse(format!("unmounting {}: {e}", self.mountpoint.display()))
        })?;
        let _ = session.wake();
        drop(session);
        self.wait();
        if let Some(p) = self
            .prefetch
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            let _ = p.join();
        }
        Ok(())
    }
}

impl Drop for ImageMount {
    fn drop(&mut self) {
        if !self.stop.load(Ordering::Relaxed) {
            let _ = self.unmount();
        }
        self.chain.metrics().mounts.dec();
    }
}

fn prefetch_plan(chain: &FetchChain, opts: &MountOptions) -> PrefetchPlan {
    let image = chain.image();
    let mut inodes = if opts.prefetch_table {
        image.prefetch.clone()
    } else {
        Vec::new()
    };
    for p in &opts.prefetch_files {
        match image.lookup(p.as_bytes()) {
            Some(id) => inodes.push(id),
            None => tracing::warn!(path = %p, "prefetch path not in the image"),
        }
    }
    PrefetchPlan {
        inodes,
        all: opts.prefetch_all,
        bandwidth: (opts.prefetch_bandwidth > 0).then_some(opts.prefetch_bandwidth),
    }
}
