//! The mesh's settings: a plain serde struct with named defaults (the node's `[peer]`
//! config section).

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Settings of one node's part in the mesh.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MeshConfig {
    /// Address of both peer listeners: libp2p membership on TCP and chunk transfer on
    /// UDP (QUIC), same port.
    pub listen: SocketAddr,
    /// The address other members reach this node at; `listen` when unset (set it when
    /// listening on 0.0.0.0).
    pub advertise: Option<SocketAddr>,
    /// Where to find the cluster: `host:port` entries, resolved again every
    /// `resolve_interval_ms`; a DNS name with several addresses (a Kubernetes headless
    /// service) gives every one of them.
    pub seeds: Vec<String>,
    /// The shared cluster secret (at least 16 bytes); prefer `cluster_secret_file`.
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (trailing whitespace ignored).
    pub cluster_secret_file: Option<PathBuf>,
    /// Owners per chunk: the members asked before the origin, in rendezvous order.
    pub replication: usize,
    /// Route chunks by the blob segment of this many bytes they lie in, not one by one:
    /// an owner then holds whole stretches of a blob and fetches what a read needs in one
    /// origin request, where per-chunk owners would make one request per scattered chunk
    /// (measured: several times slower starts from a registry). Chunks are still named,
    /// stored and verified by digest; 0 routes every chunk by its digest, which also
    /// merges owners of one chunk found in several blobs.
    pub route_segment_bytes: u64,
    /// How long an owner may take to accept a request before the next owner (or the
    /// origin) is tried (milliseconds).
    pub hedge_ms: u64,
    /// Longest wait for an accepted request's chunks (milliseconds); an owner may be
    /// fetching them from a slow origin meanwhile.
    pub request_timeout_ms: u64,
    /// Interval of this node's membership heartbeats (milliseconds).
    pub heartbeat_ms: u64,
    /// A member not heard from for this long is dropped (milliseconds).
    pub member_timeout_ms: u64,
    /// Interval of seed resolution and redialing (milliseconds).
    pub resolve_interval_ms: u64,
    /// How long a peer that served a wrong chunk is shunned (seconds).
    pub bad_peer_secs: u64,
    /// How long a peer that failed to answer is skipped (milliseconds).
    pub down_peer_ms: u64,
    /// Bytes per second this node serves to any one peer; 0 means no limit.
    pub serve_bytes_per_sec: u64,
    /// Chunk requests served at once per peer; more get "busy" and go elsewhere.
    pub serve_concurrency: usize,
    /// Most chunks asked in one request.
    pub max_batch: usize,
    /// After taking this many askers of a chunk, point later ones at those first askers
    /// (holder hints) instead of sending it again; 0 never does.
    pub redirect_after: u32,
    /// Kernel buffer of the transfer socket, each way (bytes). A burst of chunks to a busy
    /// node overflows the 208 KiB default and every dropped datagram is resent; the kernel
    /// caps it at `net.core.rmem_max`/`wmem_max`.
    pub udp_buffer_bytes: usize,
    /// Largest UDP datagram the transfer sends, found by QUIC's path MTU discovery from
    /// 1,200 bytes up (a path with a smaller MTU settles lower). Every datagram is
    /// encrypted, framed and acknowledged on its own, so bigger ones cost less CPU per
    /// byte: loopback and jumbo-frame links carry far more than Ethernet's 1,472. At most
    /// 6,550 (ten of them must fit one segmented UDP send).
    pub max_datagram_bytes: u16,
}

/// Default port of both peer listeners (TCP membership, UDP transfers).
pub const DEFAULT_PORT: u16 = 7170;
/// Default [`MeshConfig::replication`].
pub const DEFAULT_REPLICATION: usize = 2;
/// Default [`MeshConfig::hedge_ms`].
pub const DEFAULT_HEDGE_MS: u64 = 50;
/// Default [`MeshConfig::route_segment_bytes`].
pub const DEFAULT_ROUTE_SEGMENT_BYTES: u64 = 1 << 20;
/// Default [`MeshConfig::request_timeout_ms`].
pub const DEFAULT_REQUEST_TIMEOUT_MS: u64 = 30_000;
/// Default [`MeshConfig::heartbeat_ms`].
pub const DEFAULT_HEARTBEAT_MS: u64 = 1_000;
/// Default [`MeshConfig::member_timeout_ms`].
pub const DEFAULT_MEMBER_TIMEOUT_MS: u64 = 3_000;
/// Default [`MeshConfig::resolve_interval_ms`].
pub const DEFAULT_RESOLVE_INTERVAL_MS: u64 = 2_000;
/// Default [`MeshConfig::bad_peer_secs`].
pub const DEFAULT_BAD_PEER_SECS: u64 = 60;
/// Default [`MeshConfig::down_peer_ms`].
pub const DEFAULT_DOWN_PEER_MS: u64 = 2_000;
/// Default [`MeshConfig::serve_concurrency`].
pub const DEFAULT_SERVE_CONCURRENCY: usize = 64;
/// Default [`MeshConfig::redirect_after`].
pub const DEFAULT_REDIRECT_AFTER: u32 = 4;
/// Default [`MeshConfig::udp_buffer_bytes`].
pub const DEFAULT_UDP_BUFFER_BYTES: usize = 8 << 20;
/// Default [`MeshConfig::max_datagram_bytes`]: a little under 6,550, the largest size at
/// which ten segmented datagrams (quinn's batch) fit the 65,507 bytes one UDP send carries.
pub const DEFAULT_MAX_DATAGRAM_BYTES: u16 = 6_500;
/// Default [`MeshConfig::max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 64;

impl Default for MeshConfig {
    fn default() -> Self {
        MeshConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_PORT)),
            advertise: None,
            seeds: Vec::new(),
            cluster_secret: None,
            cluster_secret_file: None,
            replication: DEFAULT_REPLICATION,
            route_segment_bytes: DEFAULT_ROUTE_SEGMENT_BYTES,
            hedge_ms: DEFAULT_HEDGE_MS,
            request_timeout_ms: DEFAULT_REQUEST_TIMEOUT_MS,
            heartbeat_ms: DEFAULT_HEARTBEAT_MS,
            member_timeout_ms: DEFAULT_MEMBER_TIMEOUT_MS,
            resolve_interval_ms: DEFAULT_RESOLVE_INTERVAL_MS,
            bad_peer_secs: DEFAULT_BAD_PEER_SECS,
            down_peer_ms: DEFAULT_DOWN_PEER_MS,
            serve_bytes_per_sec: 0,
            serve_concurrency: DEFAULT_SERVE_CONCURRENCY,
            max_batch: DEFAULT_MAX_BATCH,
            redirect_after: DEFAULT_REDIRECT_AFTER,
            udp_buffer_bytes: DEFAULT_UDP_BUFFER_BYTES,
            max_datagram_bytes: DEFAULT_MAX_DATAGRAM_BYTES,
        }
    }
}

impl MeshConfig {
    /// The address members reach this node at.
    pub fn advertised(&self) -> SocketAddr {
        self.advertise.unwrap_or(self.listen)
    }
}
