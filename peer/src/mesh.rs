//! The mesh as the node sees it: start it with a [`ChunkProvider`], ask it for chunks
//! from blocking code, read its members and figures.

use crate::chunk::ChunkWant;
use crate::config::MeshConfig;
use crate::health::{PeerHealth, ServeLimits};
use crate::membership::{self, Member, MemberTable};
use crate::routing::{RendezvousRouter, Router};
use crate::stats::{MeshStats, MeshStatsSnapshot};
use crate::transfer::client::Client;
use crate::transfer::server::{self, ServeContext};
use crate::transfer::{Answer, ChunkProvider};
use crate::trust::{ClusterTrust, TrustError};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Environment variable of the lying-member test hook: when set to `1`, the node serves
/// every chunk with a flipped byte. Only the mesh tests set it.
pub const FAULT_CORRUPT_ENV: &str = "WARREN_PEER_FAULT_CORRUPT";

/// Why a node could not join the mesh.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error(
        "the peer mesh needs a cluster secret: set `cluster_secret_file` (or `cluster_secret`)"
    )]
    /// Neither `cluster_secret` nor `cluster_secret_file` is set.
    NoSecret,
    /// The secret file could not be read.
    #[error("reading the cluster secret from {path}: {source}")]
    SecretFile {
        /// The file named by the config.
        path: std::path::PathBuf,
        /// Why it could not be read.
        source: std::io::Error,
    },
    /// The secret is too weak, or the certificates could not be made.
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The mesh's own async runtime could not start.
    #[error("starting the mesh's runtime: {0}")]
    Runtime(std::io::Error),
    /// The UDP port for transfers could not be bound.
    #[error("listening for chunk transfers on udp {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// Why binding failed.
        source: std::io::Error,
    },
    /// The membership layer could not start.
    #[error(transparent)]
    Membership(#[from] membership::MembershipError),
}

/// One node's part in the mesh. Dropping it leaves the cluster.
pub struct Mesh {
    runtime: Option<tokio::runtime::Runtime>,
    shutdown: tokio::sync::watch::Sender<bool>,
    table: Arc<MemberTable>,
    router: Box<dyn Router>,
    client: Arc<Client>,
    stats: Arc<MeshStats>,
    replication: usize,
    max_batch: usize,
    segment_bytes: u64,
}

fn secret(cfg: &MeshConfig) -> Result<Vec<u8>, MeshError> {
    if let Some(path) = &cfg.cluster_secret_file {
        let text = std::fs::read(path).map_err(|source| MeshError::SecretFile {
            path: path.clone(),
            source,
        })?;
        let end = text
            .iter()
            .rposition(|b| !b.is_ascii_whitespace())
            .map_or(0, |i| i + 1);
        return Ok(text[..end].to_vec());
    }
    cfg.cluster_secret
        .as_ref()
        .map(|s| s.as_bytes().to_vec())
        .ok_or(MeshError::NoSecret)
}

/// The ceiling of [`MeshConfig::max_datagram_bytes`]: quinn sends up to ten datagrams in
/// one segmented send, and a send over 65,507 bytes fails outright (every one of its
/// datagrams is lost).
const MAX_DATAGRAM_BYTES: u16 = 6_550;

/// QUIC keep-alives well inside the idle timeout, and an idle timeout as long as a
/// member may stay silent: a connection to a killed member fails (and its requests go
/// elsewhere) about when membership drops it, not after QUIC's default 30 s.
fn transport_config(cfg: &MeshConfig) -> quinn::TransportConfig {
    let idle = Duration::from_millis(cfg.member_timeout_ms.clamp(500, 60_000));
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(idle / 4));
    if let Ok(idle) = quinn::IdleTimeout::try_from(idle) {
        t.max_idle_timeout(Some(idle));
    }
    // Discovery probes up from 1,200 bytes to the ceiling; QUIC's segmentation offload
    // then sends ten datagrams per system call.
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(cfg.max_datagram_bytes.clamp(1200, MAX_DATAGRAM_BYTES));
    t.mtu_discovery_config(Some(mtu));
    t
}

/// The transfer socket, with kernel buffers of `buffer_bytes` each way (the kernel may
/// give less; what it gave is logged).
fn transfer_socket(addr: SocketAddr, buffer_bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        socket.set_only_v6(false).ok();
    }
    // Best effort: a smaller buffer only costs resends.
    socket.set_recv_buffer_size(buffer_bytes).ok();
    socket.set_send_buffer_size(buffer_bytes).ok();
    socket.bind(&addr.into())?;
    tracing::debug!(
        recv = socket.recv_buffer_size().unwrap_or(0),
        send = socket.send_buffer_size().unwrap_or(0),
        "transfer socket buffers"
    );
    Ok(socket.into())
}

/// The endpoint that both serves and asks, on `cfg.listen`.
fn transfer_endpoint(
    cfg: &MeshConfig,
    server_config: quinn::ServerConfig,
) -> Result<quinn::Endpoint, MeshError> {
    let listen_error = |source| MeshError::Listen {
        addr: cfg.listen,
        source,
    };
    let socket = transfer_socket(cfg.listen, cfg.udp_buffer_bytes).map_err(listen_error)?;
    let runtime = quinn::default_runtime().ok_or_else(|| {
        listen_error(std::io::Error::other(
            "no async runtime for the transfer socket",
        ))
    })?;
    // What this endpoint accepts (and tells peers they may send): at least the ceiling
    // its own discovery may reach.
    let mut endpoint_config = quinn::EndpointConfig::default();
    endpoint_config
        .max_udp_payload_size(cfg.max_datagram_bytes.clamp(1472, MAX_DATAGRAM_BYTES))
        .map_err(|e| listen_error(std::io::Error::other(e.to_string())))?;
    quinn::Endpoint::new(endpoint_config, Some(server_config), socket, runtime)
        .map_err(listen_error)
}

/// Keeps a connection open to every live member, checked once a heartbeat.
async fn keep_connected(
    client: Arc<Client>,
    table: Arc<MemberTable>,
    every: Duration,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let me = table.me().quic;
        let peers: Vec<SocketAddr> = table
            .live()
            .into_iter()
            .map(|m| m.quic)
            .filter(|a| *a != me)
            .collect();
        client.keep_connected(&peers).await;
    }
}

impl Mesh {
    /// Joins the cluster: listens on `cfg.listen` (TCP for membership, UDP for
    /// transfers) and starts finding members from the seeds.
    pub fn start(
        cfg: &MeshConfig,
        node_name: &str,
        provider: Arc<dyn ChunkProvider>,
    ) -> Result<Mesh, MeshError> {
        let trust = ClusterTrust::from_secret(&secret(cfg)?)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("warren-peer")
            .enable_all()
            .build()
            .map_err(MeshError::Runtime)?;
        let stats = Arc::new(MeshStats::default());
        let health = Arc::new(PeerHealth::new(
            Duration::from_secs(cfg.bad_peer_secs),
            Duration::from_millis(cfg.down_peer_ms),
        ));
        let me = Member::new(cfg.advertised(), node_name.to_string());
        let table = MemberTable::new(me, Duration::from_millis(cfg.member_timeout_ms.max(100)));
        let (shutdown, shutdown_rx) = tokio::sync::watch::channel(false);
        let transport = Arc::new(transport_config(cfg));
        let client = runtime.block_on(async {
            let mut server_config = trust.quic_server()?;
            server_config.transport_config(transport.clone());
            let mut client_config = trust.quic_client()?;
            client_config.transport_config(transport);
            let mut endpoint = transfer_endpoint(cfg, server_config)?;
            endpoint.set_default_client_config(client_config);
            let ctx = ServeContext::new(
                provider,
                ServeLimits::new(cfg.serve_bytes_per_sec, cfg.serve_concurrency),
                stats.clone(),
                cfg.redirect_after,
                std::env::var(FAULT_CORRUPT_ENV).is_ok_and(|v| v == "1"),
            );
            tokio::spawn(server::serve(endpoint.clone(), ctx));
            membership::start(cfg, trust.psk(), table.clone(), shutdown_rx).await?;
            Ok::<_, MeshError>(Client::new(
                endpoint,
                health,
                stats.clone(),
                Duration::from_millis(cfg.hedge_ms.max(1)),
                Duration::from_millis(cfg.request_timeout_ms.max(1)),
            ))
        })?;
        let client = Arc::new(client);
        runtime.spawn(keep_connected(
            client.clone(),
            table.clone(),
            Duration::from_millis(cfg.heartbeat_ms.max(50)),
            shutdown.subscribe(),
        ));
        tracing::info!(listen = %cfg.listen, advertise = %cfg.advertised(), "joined the peer mesh");
        Ok(Mesh {
            runtime: Some(runtime),
            shutdown,
            table,
            router: Box::new(RendezvousRouter),
            client,
            stats,
            replication: cfg.replication.max(1),
            max_batch: cfg.max_batch.clamp(1, crate::wire::MAX_BATCH),
            segment_bytes: cfg.route_segment_bytes,
        })
    }

    /// Size of the blob segments chunks are routed by; 0: each chunk by its digest.
    pub fn segment_bytes(&self) -> u64 {
        self.segment_bytes
    }

    /// The live members, this node included.
    pub fn members(&self) -> Vec<Member> {
        self.table.live()
    }

    /// This node as a member.
    pub fn me(&self) -> &Member {
        self.table.me()
    }

    /// Peers shunned right now for serving bad chunks.
    pub fn bad_peers(&self) -> Vec<SocketAddr> {
        self.client.health.bad_peers()
    }

    /// The open transfer connections to other members, with the largest datagram each
    /// carries now (it grows as path MTU discovery finds room, up to
    /// [`MeshConfig::max_datagram_bytes`]).
    pub fn connections(&self) -> Vec<(SocketAddr, u16)> {
        self.client.datagram_sizes()
    }

    /// The traffic counters so far.
    pub fn stats(&self) -> MeshStatsSnapshot {
        self.stats.snapshot()
    }

    /// For each key, whether this node is its first owner, or alone: it then fetches
    /// those chunks from the origin itself. One look at the member list for all of them.
    pub fn owns(&self, keys: &[crate::chunk::RouteKey]) -> Vec<bool> {
        let members = self.table.live();
        let me = &self.table.me().key;
        keys.iter()
            .map(|key| {
                members.len() < 2
                    || self
                        .router
                        .owners(key, &members, 1)
                        .first()
                        .is_none_or(|m| &m.key == me)
            })
            .collect()
    }

    /// Each wanted chunk from its owners, verified; `None` where the node should go to
    /// the origin itself (it is the owner, or the owners failed, were slow, or lied).
    /// Blocks; call it from plain threads, never from inside an async runtime.
    pub fn fetch(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        let Some(rt) = &self.runtime else {
            return vec![None; wants.len()];
        };
        rt.block_on(self.fetch_async(wants))
    }

    async fn fetch_async(&self, wants: &[ChunkWant]) -> Vec<Option<Arc<Vec<u8>>>> {
        let mut results: Vec<Option<Arc<Vec<u8>>>> = vec![None; wants.len()];
        let members = self.table.live();
        if members.len() < 2 {
            return results;
        }
        let me = self.table.me().key.clone();
        let owners: Vec<Vec<Member>> = wants
            .iter()
            .map(|w| self.router.owners(&w.route, &members, self.replication))
            .collect();
        // Each chunk walks down its owner list: asked of the next usable owner until one
        // answers, or this node itself is next (then it fetches from the origin). An owner
        // may point at a holder instead; a holder that fails sends the chunk back to its
        // owner, asked this time for the bytes.
        let mut next = vec![0usize; wants.len()];
        let mut holder: Vec<Option<SocketAddr>> = vec![None; wants.len()];
        let mut no_redirect = vec![false; wants.len()];
        let mut open: Vec<usize> = (0..wants.len()).collect();
        while !open.is_empty() {
            // (peer, asked as owner, no redirect) -> chunks
            let mut asks: HashMap<(SocketAddr, bool, bool), Vec<usize>> = HashMap::new();
            for &i in &open {
                match holder[i] {
                    Some(h) if self.client.health.usable(h) => {
                        asks.entry((h, false, true)).or_default().push(i);
                        continue;
                    }
                    Some(_) => {
                        holder[i] = None;
                        no_redirect[i] = true;
                    }
                    None => {}
                }
                while let Some(owner) = owners[i].get(next[i]) {
                    if owner.key == me {
                        next[i] = usize::MAX;
                        break;
                    }
                    if self.client.health.usable(owner.quic) {
                        asks.entry((owner.quic, true, no_redirect[i]))
                            .or_default()
                            .push(i);
                        break;
                    }
                    next[i] += 1;
                }
            }
            if asks.is_empty() {
                break;
            }
            let mut calls = Vec::new();
            for (&(peer, as_owner, no_redirect), idx) in &asks {
                for batch in idx.chunks(self.max_batch) {
                    let list: Vec<ChunkWant> = batch.iter().map(|&i| wants[i].clone()).collect();
                    let client = self.client.clone();
                    let batch = batch.to_vec();
                    calls.push(async move {
                        let answers = client.ask(peer, as_owner, no_redirect, &list).await;
                        (batch, as_owner, answers)
                    });
                }
            }
            let mut retry = Vec::new();
            for (batch, as_owner, answers) in futures::future::join_all(calls).await {
                for (i, answer) in batch.into_iter().zip(answers) {
                    match answer {
                        Answer::Data(d) => results[i] = Some(d),
                        Answer::Holder(h) if as_owner && !no_redirect[i] => {
                            holder[i] = Some(h);
                            retry.push(i);
                        }
                        Answer::Miss | Answer::Failed | Answer::Holder(_) if !as_owner => {
                            // Back to the owner that sent us, for the bytes this time.
                            holder[i] = None;
                            no_redirect[i] = true;
                            retry.push(i);
                        }
                        Answer::Miss | Answer::Failed | Answer::Holder(_) => {
                            next[i] += 1;
                            retry.push(i);
                        }
                    }
                }
            }
            open = retry;
        }
        results
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        self.client.close();
        if let Some(rt) = self.runtime.take() {
            // Blocking to wait is not allowed inside another runtime (the node drops its
            // mesh there): then the tasks are left to end on their own.
            if tokio::runtime::Handle::try_current().is_ok() {
                rt.shutdown_background();
            } else {
                rt.shutdown_timeout(Duration::from_millis(500));
            }
        }
    }
}
