//! The node's life: bind the API socket and the metrics port, mount the configured images,
//! serve until SIGINT or SIGTERM, then unmount everything and remove the socket.

use super::config::NodeSettings;
use super::{api, MountRequest, Node};
use crate::api::metrics::Metrics;
use crate::api::server::{self, RemoveOnDrop};
use crate::fetch::cache::{ChunkCache, NoCache};
use crate::fetch::peers::{BlobChains, NodeChunks};
use anyhow::{bail, Context};
use std::os::unix::fs::DirBuilderExt;
use std::sync::Arc;
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Runs the node until a signal; errors name what failed (a socket, a configured mount).
pub fn run(settings: NodeSettings, quiet: bool) -> anyhow::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&settings.data_dir)
        .with_context(|| format!("creating data directory {}", settings.data_dir.display()))?;
    // Both listeners are bound before anything is mounted, so a taken socket or port stops
    // the node before it changes anything.
    let api_listener = server::bind_api_socket(&settings.api_socket)
        .with_context(|| format!("API socket {}", settings.api_socket.display()))?;
    let _socket = RemoveOnDrop(settings.api_socket.clone());
    let metrics_listener = server::bind_tcp(settings.metrics_addr)?;
    let metrics_addr = metrics_listener.local_addr()?;
    api_listener.set_nonblocking(true)?;
    metrics_listener.set_nonblocking(true)?;
    // The socket first: a second node on the same data directory is told that a node is
    // running, not that the cache is locked.
    let cache: Arc<dyn ChunkCache> = match &settings.cache_dir {
        Some(dir) => crate::cli::mount::open_cache(dir, &settings.store)?,
        None => Arc::new(NoCache),
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("warren-node")
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let metrics = Metrics::new();
    metrics.watch_store(cache.clone());
    let mut node = Node::new(
        settings.clone(),
        metrics_addr,
        metrics.clone(),
        cache.clone(),
    );
    if let Some(peer) = &settings.peer {
        let chains = Arc::new(BlobChains::default());
        let provider = Arc::new(NodeChunks {
            cache,
            chains: chains.clone(),
        });
        let name = settings.id.clone().unwrap_or_else(host_name);
        let mesh = Arc::new(
            warren_peer::Mesh::start(peer, &name, provider)
                .with_context(|| format!("joining the peer mesh on {}", peer.listen))?,
        );
        metrics.watch_mesh(mesh.clone());
        if !quiet {
            eprintln!(
                "warren node: peer mesh on {} (tcp membership, udp transfers)",
                peer.listen
            );
        }
        node = node.with_mesh(mesh, chains);
    }
    let node = Arc::new(node);
    let result = runtime.block_on(serve(node, api_listener, metrics_listener, quiet));
    // Dropping the runtime waits for blocking work still running (a mount request that
    // started before the signal unmounts itself once it sees the node closing).
    drop(runtime);
    result
}

async fn serve(
    node: Arc<Node>,
    api_listener: std::os::unix::net::UnixListener,
    metrics_listener: std::net::TcpListener,
    quiet: bool,
) -> anyhow::Result<()> {
    let (stop_tx, stop) = watch::channel(false);
    let mut sigterm = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    let mut sigint = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = sigterm.recv() => "SIGTERM",
            _ = sigint.recv() => "SIGINT",
        };
        tracing::info!("{name}: shutting down");
        let _ = stop_tx.send(true);
    });

    let settings = node.settings().clone();
    for (i, m) in settings.mounts.iter().enumerate() {
        if *stop.borrow() {
            break;
        }
        let req = MountRequest {
            bootstrap: m.bootstrap.clone(),
            mountpoint: m.mountpoint.clone(),
            blob_dir: m.blob_dir.clone(),
            s3: None,
            registry: None,
            options: node.mount_options(&m.prefetch_files),
        };
        let n = node.clone();
        let mounted = tokio::task::spawn_blocking(move || n.mount(req)).await?;
        if let Err(e) = mounted {
            unmount_all(&node).await;
            bail!(
                "config mounts[{i}] ({} at {}): {}",
                m.bootstrap.display(),
                m.mountpoint.display(),
                e.message
            );
        }
        if !quiet {
            eprintln!(
                "mounted {} at {}",
                m.bootstrap.display(),
                m.mountpoint.display()
            );
        }
    }

    let api = tokio::spawn(server::serve(
        tokio::net::UnixListener::from_std(api_listener)?,
        api::handler(node.clone()),
        stop.clone(),
    ));
    let metrics = tokio::spawn(server::serve(
        tokio::net::TcpListener::from_std(metrics_listener)?,
        server::metrics_handler(node.metrics().clone()),
        stop.clone(),
    ));
    if !quiet {
        eprintln!(
            "warren node: API on {}, metrics at http://{}/metrics",
            settings.api_socket.display(),
            node.metrics_addr
        );
    }

    let mut stop_wait = stop.clone();
    let _ = stop_wait.wait_for(|s| *s).await;
    let _ = api.await;
    let _ = metrics.await;
    let failed = unmount_all(&node).await;
    if !quiet {
        eprintln!("warren node: stopped");
    }
    if !failed.is_empty() {
        bail!("unmounting failed: {}", failed.join("; "));
    }
    Ok(())
}

async fn unmount_all(node: &Arc<Node>) -> Vec<String> {
    let n = node.clone();
    match tokio::task::spawn_blocking(move || n.unmount_all()).await {
        Ok(failures) => failures
            .into_iter()
            .map(|(mp, e)| format!("{}: {}", mp.display(), e.message))
            .collect(),
        Err(e) => vec![format!("unmount worker: {e}")],
    }
}

/// This machine's host name, the node's name on the mesh when the config gives no `id`.
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "warren".to_string())
}
