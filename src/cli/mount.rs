use crate::api::metrics::Metrics;
use crate::backend::localfs::LocalFs;
use crate::fetch::cache::{ChunkCache, NoCache};
use crate::fetch::FetchOptions;
use crate::fs::{open_image, ImageMount, MountOptions};
use crate::store::{Store, StoreOptions};
use anyhow::Context;
use clap::Args;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Args, Debug)]
pub struct MountArgs {
    /// The image's bootstrap.
    #[arg(
        long,
        short = 'B',
        required_unless_present = "image",
        conflicts_with = "image"
    )]
    pub bootstrap: Option<PathBuf>,
    /// Directory holding the image's blobs (the origin).
    #[arg(
        long,
        short = 'D',
        required_unless_present_any = ["image", "s3_config"],
        conflicts_with_all = ["image", "s3_config"]
    )]
    pub blob_dir: Option<PathBuf>,
    /// Read the blobs from S3 instead (JSON or TOML: S3 fields, or a whole nydusd config with
    /// an s3 backend); with `--image`, the bootstrap still comes from the registry.
    #[arg(long)]
    pub s3_config: Option<PathBuf>,
    /// A Nydus image in a registry (REGISTRY/REPO[:TAG|@DIGEST]): its bootstrap is fetched
    /// and its blobs are read from the registry by range, on demand.
    #[arg(long)]
    pub image: Option<String>,
    /// The platform to pick from an image index (os/arch[/variant]; default: this machine's).
    #[arg(long, requires = "image")]
    pub platform: Option<String>,
    #[command(flatten)]
    pub registry: super::registry::RegistryArgs,
    /// Where to mount it.
    pub mountpoint: PathBuf,
    /// Chunk store directory (default: `cache` under the data directory); `none` disables it.
    #[arg(long)]
    pub cache_dir: Option<PathBuf>,
    /// The chunk store's quota in bytes (default: half the free space of its file system).
    #[arg(long)]
    pub cache_quota: Option<u64>,
    /// FUSE worker threads.
    #[arg(long, default_value_t = crate::fs::session::DEFAULT_FUSE_THREADS)]
    pub fuse_threads: usize,
    /// A file listing paths to prefetch, one per line (as nydusd's --prefetch-files).
    #[arg(long)]
    pub prefetch_files: Option<PathBuf>,
    /// Prefetch every file in the background.
    #[arg(long)]
    pub prefetch_all: bool,
    /// Prefetch bandwidth cap, bytes per second (0: none).
    #[arg(long, default_value_t = 0)]
    pub prefetch_bandwidth: u64,
    /// Largest merged origin request, bytes.
    #[arg(long, default_value_t = crate::fetch::DEFAULT_AMPLIFY_BYTES)]
    pub amplify_bytes: u64,
    /// Do not put chunks read ahead for a scan into the kernel's page cache (each read
    /// then asks the node).
    #[arg(long)]
    pub no_push_read_ahead: bool,
    /// Serve Prometheus text at http://ADDR/metrics while mounted (e.g. 127.0.0.1:9464).
    #[arg(long)]
    pub metrics_addr: Option<std::net::SocketAddr>,
}

/// Where a node keeps its state when the config does not say: /var/lib/warren for root,
/// the XDG state directory otherwise.
pub fn default_data_dir() -> PathBuf {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/var/lib/warren");
    }
    std::env::var_os("XDG_STATE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/state")))
        .unwrap_or_else(std::env::temp_dir)
        .join("warren")
}

/// The node's chunk store in `dir` (`none`: no store). A store that cannot be opened for a
/// reason other than being in use (a full or read-only disk, a damaged index) is not fatal:
/// the node runs without it and reads go to the origin, which is what a cache is for.
pub fn open_cache(dir: &Path, opts: &StoreOptions) -> anyhow::Result<Arc<dyn ChunkCache>> {
    if dir.as_os_str() == "none" {
        return Ok(Arc::new(NoCache));
    }
    match Store::open(dir, opts) {
        Ok(store) => Ok(Arc::new(store)),
        Err(e @ crate::store::StoreError::Busy(_)) => Err(e.into()),
        Err(e) => {
            tracing::error!(dir = %dir.display(), error = %e, "cannot open the chunk store; running without it");
            Ok(Arc::new(NoCache))
        }
    }
}

pub fn read_prefetch_list(path: &Path) -> anyhow::Result<Vec<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading prefetch list {}", path.display()))?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect())
}

pub fn run(args: MountArgs, quiet: bool) -> anyhow::Result<()> {
    crate::fs::check_mountpoint(&args.mountpoint)?;
    let cache_dir = args
        .cache_dir
        .clone()
        .unwrap_or_else(|| default_data_dir().join("cache"));
    let store = StoreOptions {
        quota_bytes: args.cache_quota,
        ..StoreOptions::default()
    };
    // The chunk store opens (tens of ms cold) while the image's bootstrap comes from the
    // registry.
    let opening = std::thread::spawn(move || open_cache(&cache_dir, &store));
    let s3 = match &args.s3_config {
        Some(path) => {
            let cfg = crate::backend::s3::S3Config::from_file(path)?;
            let backend: Arc<dyn crate::backend::BlobBackend> =
                Arc::new(crate::backend::s3::S3Backend::new(&cfg)?);
            Some(backend)
        }
        None => None,
    };
    let (bootstrap, origin, _pulled) = match (&args.image, &args.bootstrap, &args.blob_dir) {
        (Some(image), _, _) => {
            let o = super::registry::open_image_origin(
                image,
                args.platform.as_deref(),
                &args.registry,
            )?;
            let origin = s3.clone().unwrap_or_else(|| o.backend.clone());
            (o.bootstrap.clone(), origin, Some(o))
        }
        (None, Some(b), None) if s3.is_some() => (b.clone(), s3.clone().expect("checked"), None),
        (None, Some(b), Some(d)) => {
            let local: Arc<dyn crate::backend::BlobBackend> = Arc::new(LocalFs::new(d));
            (b.clone(), local, None)
        }
        _ => anyhow::bail!("give --bootstrap and --blob-dir, or --image"),
    };
    let cache = opening
        .join()
        .map_err(|_| anyhow::anyhow!("the thread opening the chunk store panicked"))??;
    let metrics = Metrics::new();
    metrics.watch_store(cache.clone());
    let _metrics_server = match args.metrics_addr {
        Some(addr) => {
            let server = crate::api::server::BackgroundServer::metrics(addr, metrics.clone())?;
            if !quiet {
                eprintln!("metrics at http://{}/metrics", server.local_addr());
            }
            Some(server)
        }
        None => None,
    };
    let fetch = FetchOptions {
        amplify_bytes: args.amplify_bytes,
        ..FetchOptions::default()
    };
    let chain = open_image(&bootstrap, origin, cache, fetch, metrics)?;
    let opts = MountOptions {
        fuse_threads: args.fuse_threads,
        prefetch_files: match &args.prefetch_files {
            Some(p) => read_prefetch_list(p)?,
            None => Vec::new(),
        },
        prefetch_all: args.prefetch_all,
        prefetch_bandwidth: args.prefetch_bandwidth,
        push_read_ahead: !args.no_push_read_ahead,
        ..MountOptions::default()
    };
    let term = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, term.clone()).context("installing signal handlers")?;
    }
    let mount = ImageMount::mount(&args.mountpoint, chain, &opts)?;
    if !quiet {
        eprintln!(
            "mounted {} at {} (Ctrl-C to unmount)",
            args.image
                .clone()
                .unwrap_or_else(|| bootstrap.display().to_string()),
            args.mountpoint.display()
        );
    }
    // Until a signal, or until someone unmounts it from outside.
    while !term.load(Ordering::Relaxed) && is_mounted(&args.mountpoint) {
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    if is_mounted(&args.mountpoint) {
        mount
            .unmount()
            .with_context(|| format!("unmounting {}", args.mountpoint.display()))?;
    }
    if !quiet {
        eprintln!("unmounted {}", args.mountpoint.display());
    }
    Ok(())
}

/// Whether `path` is a mount point right now, by the kernel's mount table.
pub fn is_mounted(path: &Path) -> bool {
    let target = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let target = target.to_string_lossy();
    mounts.lines().any(|l| {
        l.split(' ')
            .nth(1)
            .is_some_and(|m| m.replace("\\040", " ") == *target)
    })
}
