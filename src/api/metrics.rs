//! The node's metrics, one registry per process, rendered as Prometheus text on the
//! metrics port and as JSON on the API socket. Names are `warren_*`; the traffic split
//! that tells whether caching and P2P work is `warren_chunk_fetch_bytes_total{source}`.

use crate::fetch::cache::ChunkCache;
use crate::store::StoreStats;
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::{Arc, Mutex};

/// Where a chunk came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkSource {
    /// The node's own cache or store.
    Store,
    /// Another node of the cluster.
    Peer,
    /// The blob's origin (local directory, registry, S3).
    Origin,
}

impl ChunkSource {
    pub fn label(self) -> &'static str {
        match self {
            ChunkSource::Store => "store",
            ChunkSource::Peer => "peer",
            ChunkSource::Origin => "origin",
        }
    }
}

pub struct Metrics {
    pub registry: Registry,
    pub fuse_ops: IntCounterVec,
    pub fuse_errors: IntCounterVec,
    pub fuse_op_seconds: HistogramVec,
    pub read_bytes: IntCounter,
    pub chunk_fetches: IntCounterVec,
    pub chunk_fetch_bytes: IntCounterVec,
    pub origin_requests: IntCounterVec,
    pub origin_errors: IntCounterVec,
    pub digest_failures: IntCounter,
    pub memory_hits: IntCounter,
    pub prefetch_chunks_total: IntGauge,
    pub prefetch_chunks_done: IntCounter,
    pub prefetch_bytes: IntCounter,
    pub pushed_bytes: IntCounter,
    pub mounts: IntGauge,
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("metric");
            registry.register(Box::new(c.clone())).expect("register");
            c
        };
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("metric");
            registry.register(Box::new(g.clone())).expect("register");
            g
        };
        let fuse_op_seconds = HistogramVec::new(
            HistogramOpts::new(
                "warren_fuse_op_seconds",
                "FUSE request latency by operation",
            )
            .buckets(vec![
                0.00001, 0.00005, 0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0,
            ]),
            &["op"],
        )
        .expect("metric");
        registry
            .register(Box::new(fuse_op_seconds.clone()))
            .expect("register");
        Arc::new(Metrics {
            fuse_ops: counter_vec(
                "warren_fuse_ops_total",
                "FUSE requests by operation",
                &["op"],
            ),
            fuse_errors: counter_vec(
                "warren_fuse_errors_total",
                "FUSE requests that failed, by operation",
                &["op"],
            ),
            fuse_op_seconds,
            read_bytes: counter("warren_read_bytes_total", "Bytes returned to FUSE reads"),
            chunk_fetches: counter_vec(
                "warren_chunk_fetches_total",
                "Chunks fetched, by source",
                &["source"],
            ),
            chunk_fetch_bytes: counter_vec(
                "warren_chunk_fetch_bytes_total",
                "Uncompressed chunk bytes fetched, by source",
                &["source"],
            ),
            origin_requests: counter_vec(
                "warren_origin_requests_total",
                "Ranged requests to origins, by backend",
                &["backend"],
            ),
            origin_errors: counter_vec(
                "warren_origin_errors_total",
                "Failed requests to origins, by backend",
                &["backend"],
            ),
            digest_failures: counter(
                "warren_chunk_digest_failures_total",
                "Chunks whose bytes did not match their digest",
            ),
            memory_hits: counter(
                "warren_chunk_memory_hits_total",
                "Chunk reads served from the in-memory chunk cache",
            ),
            prefetch_chunks_total: gauge("warren_prefetch_chunks", "Chunks queued for prefetch"),
            prefetch_chunks_done: counter("warren_prefetch_chunks_done_total", "Prefetched chunks"),
            prefetch_bytes: counter(
                "warren_prefetch_bytes_total",
                "Prefetched uncompressed bytes",
            ),
            pushed_bytes: counter(
                "warren_page_cache_pushed_bytes_total",
                "Read-ahead bytes put into the kernel's page cache before they were read",
            ),
            mounts: gauge("warren_mounts", "Images mounted"),
            registry,
        })
    }

    /// Exposes the chunk store's figures (size, chunks, hits, misses, evictions, verify
    /// failures, write failures) as `warren_store_*`, read from the store at each scrape so
    /// they can never drift from it. Call once per registry.
    pub fn watch_store(&self, cache: Arc<dyn ChunkCache>) {
        if cache.stats().is_none() {
            return;
        }
        let read = move || cache.stats();
        match FigureCollector::new(Box::new(read), &STORE_GAUGES, &STORE_COUNTERS) {
            Ok(c) => {
                if let Err(e) = self.registry.register(Box::new(c)) {
                    tracing::warn!(error = %e, "registering the store metrics");
                }
            }
            Err(e) => tracing::warn!(error = %e, "creating the store metrics"),
        }
    }

    /// Exposes the peer mesh's figures (members, traffic, owner fetches and their dedup,
    /// errors, bad chunks) as `warren_peer_*`, read from the mesh at each scrape.
    pub fn watch_mesh(&self, mesh: Arc<warren_peer::Mesh>) {
        let read = move || {
            Some(MeshFigures {
                stats: mesh.stats(),
                members: mesh.members().len() as u64,
                bad_peers: mesh.bad_peers().len() as u64,
            })
        };
        match FigureCollector::new(Box::new(read), &MESH_GAUGES, &MESH_COUNTERS) {
            Ok(c) => {
                if let Err(e) = self.registry.register(Box::new(c)) {
                    tracing::warn!(error = %e, "registering the mesh metrics");
                }
            }
            Err(e) => tracing::warn!(error = %e, "creating the mesh metrics"),
        }
    }

    pub fn record_fetch(&self, source: ChunkSource, bytes: u64) {
        self.chunk_fetches
            .with_label_values(&[source.label()])
            .inc();
        self.chunk_fetch_bytes
            .with_label_values(&[source.label()])
            .inc_by(bytes);
    }

    /// Prometheus text exposition format.
    pub fn render_text(&self) -> String {
        let mut buf = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// The same figures as JSON: `{metric: value}` or `{metric: {label: value}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        for family in self.registry.gather() {
            let mut values = serde_json::Map::new();
            let kind = family.get_field_type();
            for m in family.get_metric() {
                let label = m
                    .get_label()
                    .iter()
                    .map(|l| l.value())
                    .collect::<Vec<_>>()
                    .join(",");
                let v = match kind {
                    MetricType::COUNTER => serde_json::json!(m.get_counter().get_value()),
                    MetricType::GAUGE => serde_json::json!(m.get_gauge().get_value()),
                    MetricType::HISTOGRAM => {
                        let h = m.get_histogram();
                        serde_json::json!({ "count": h.get_sample_count(), "sum": h.get_sample_sum() })
                    }
                    _ => continue,
                };
                values.insert(label, v);
            }
            let value = match values.len() {
                1 if values.contains_key("") => values.remove("").unwrap_or_default(),
                _ => serde_json::Value::Object(values),
            };
            out.insert(family.name().to_string(), value);
        }
        serde_json::Value::Object(out)
    }
}

/// One figure of a snapshot: metric name, help, and how to read it.
type Figure<T> = (&'static str, &'static str, Reading<T>);
/// How to read one figure off a snapshot.
type Reading<T> = fn(&T) -> u64;

const STORE_GAUGES: [Figure<StoreStats>; 5] = [
    (
        "warren_store_bytes",
        "Bytes of chunk data in the chunk store",
        |s| s.bytes,
    ),
    ("warren_store_chunks", "Chunks in the chunk store", |s| {
        s.chunks
    }),
    ("warren_store_quota_bytes", "The chunk store's quota", |s| {
        s.quota_bytes
    }),
    (
        "warren_store_disk_bytes",
        "Bytes the chunk store takes on disk (data and index)",
        |s| s.disk_bytes,
    ),
    (
        "warren_store_data_files",
        "Data files of the chunk store",
        |s| s.data_files,
    ),
];

const STORE_COUNTERS: [Figure<StoreStats>; 9] = [
    (
        "warren_store_hits_total",
        "Chunk reads the store answered",
        |s| s.hits,
    ),
    (
        "warren_store_misses_total",
        "Chunk reads the store did not hold",
        |s| s.misses,
    ),
    (
        "warren_store_verify_failures_total",
        "Stored chunks that failed verification on read and were dropped",
        |s| s.verify_failures,
    ),
    (
        "warren_store_evictions_total",
        "Chunks evicted to stay within the quota",
        |s| s.evictions,
    ),
    (
        "warren_store_evicted_bytes_total",
        "Bytes evicted to stay within the quota",
        |s| s.evicted_bytes,
    ),
    (
        "warren_store_written_chunks_total",
        "Chunks written to the store",
        |s| s.written_chunks,
    ),
    (
        "warren_store_written_bytes_total",
        "Bytes written to the store",
        |s| s.written_bytes,
    ),
    (
        "warren_store_write_failures_total",
        "Store write batches that failed (full disk, I/O errors)",
        |s| s.write_failures,
    ),
    (
        "warren_store_dropped_writes_total",
        "Chunks not stored because the write queue was full",
        |s| s.dropped_writes,
    ),
];

/// The mesh's figures at one scrape.
struct MeshFigures {
    stats: warren_peer::MeshStatsSnapshot,
    members: u64,
    bad_peers: u64,
}

const MESH_GAUGES: [Figure<MeshFigures>; 2] = [
    (
        "warren_peer_members",
        "Live members of the cluster, this node included",
        |m| m.members,
    ),
    (
        "warren_peer_bad_peers",
        "Peers shunned for serving bad chunks",
        |m| m.bad_peers,
    ),
];

const MESH_COUNTERS: [Figure<MeshFigures>; 13] = [
    (
        "warren_peer_requests_total",
        "Chunk requests sent to peers",
        |m| m.stats.requests,
    ),
    (
        "warren_peer_received_chunks_total",
        "Verified chunks received from peers",
        |m| m.stats.received_chunks,
    ),
    (
        "warren_peer_received_bytes_total",
        "Bytes of verified chunks received from peers",
        |m| m.stats.received_bytes,
    ),
    (
        "warren_peer_misses_total",
        "Chunks a peer did not hold or could not fetch",
        |m| m.stats.peer_misses,
    ),
    (
        "warren_peer_errors_total",
        "Failed peer exchanges: no connection, timeouts, refusals",
        |m| m.stats.peer_errors,
    ),
    (
        "warren_peer_hedges_total",
        "Requests given up because an owner did not accept within the hedge budget",
        |m| m.stats.hedges,
    ),
    (
        "warren_peer_bad_chunks_total",
        "Chunks from peers that failed verification",
        |m| m.stats.bad_chunks,
    ),
    (
        "warren_peer_served_chunks_total",
        "Chunks served to peers",
        |m| m.stats.served_chunks,
    ),
    (
        "warren_peer_served_bytes_total",
        "Bytes served to peers",
        |m| m.stats.served_bytes,
    ),
    (
        "warren_peer_served_busy_total",
        "Peer requests refused as over the per-peer limits",
        |m| m.stats.served_busy,
    ),
    (
        "warren_peer_owner_fetches_total",
        "Chunks fetched as their owner for other members",
        |m| m.stats.owner_fetches,
    ),
    (
        "warren_peer_owner_dedup_total",
        "Owner asks that joined a fetch of the same chunk already in flight",
        |m| m.stats.owner_dedup,
    ),
    (
        "warren_peer_redirects_total",
        "Chunks answered with a holder to ask instead of the bytes (holder hints)",
        |m| m.stats.redirects,
    ),
];

/// Figures read from a snapshot (the store's, the mesh's) at scrape time, so the metrics
/// can never drift from their source.
struct FigureCollector<T> {
    read: Box<dyn Fn() -> Option<T> + Send + Sync>,
    gauges: Vec<(IntGauge, Reading<T>)>,
    counters: Vec<(IntCounter, Reading<T>)>,
    descs: Vec<Desc>,
    /// Counters are brought up to the source's value by difference: one scrape at a time.
    scrape: Mutex<()>,
}

impl<T> FigureCollector<T> {
    fn new(
        read: Box<dyn Fn() -> Option<T> + Send + Sync>,
        gauge_defs: &[Figure<T>],
        counter_defs: &[Figure<T>],
    ) -> prometheus::Result<Self> {
        let mut descs = Vec::new();
        let mut gauges = Vec::new();
        for &(name, help, f) in gauge_defs {
            let g = IntGauge::new(name, help)?;
            descs.extend(g.desc().into_iter().cloned());
            gauges.push((g, f));
        }
        let mut counters = Vec::new();
        for &(name, help, f) in counter_defs {
            let c = IntCounter::new(name, help)?;
            descs.extend(c.desc().into_iter().cloned());
            counters.push((c, f));
        }
        Ok(FigureCollector {
            read,
            gauges,
            counters,
            descs,
            scrape: Mutex::new(()),
        })
    }
}

impl<T: 'static> Collector for FigureCollector<T> {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let Some(stats) = (self.read)() else {
            return Vec::new();
        };
        let _one = self.scrape.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = Vec::new();
        for (g, f) in &self.gauges {
            g.set(f(&stats).min(i64::MAX as u64) as i64);
            out.extend(g.collect());
        }
        for (c, f) in &self.counters {
            let (now, seen) = (f(&stats), c.get());
            if now < seen {
                c.reset();
                c.inc_by(now);
            } else {
                c.inc_by(now - seen);
            }
            out.extend(c.collect());
        }
        out
    }
}
