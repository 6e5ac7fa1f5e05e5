//! The node's metrics, one registry per process, rendered as Prometheus text on the
//! metrics port and as JSON on the API socket. Names are `warren_*`; the traffic split
//! that tells whether caching and P2P work is `warren_chunk_fetch_bytes_total{source}`.

use prometheus::proto::MetricType;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};
use std::sync::Arc;

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
            mounts: gauge("warren_mounts", "Images mounted"),
            registry,
        })
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
