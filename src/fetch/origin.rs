//! The last source of the chain: the blob's origin. Owned chunks are grouped into runs of
//! adjacent chunks, each run is one ranged request, and each chunk is decoded, verified and
//! cached before its waiters are let go.

use super::inflight::{self, ChunkResult};
use super::FetchChain;
use crate::api::metrics::ChunkSource;
use crate::rafs::image::{ChunkDigest, ChunkInfo, ChunkRef};
use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;

/// The bytes of one origin request, or why there are none.
type RunBytes = Result<Vec<u8>, String>;

impl FetchChain {
    /// Groups chunks that sit back to back in one blob into runs no larger than the
    /// amplification budget (a single chunk may exceed it).
    pub(super) fn runs(
        &self,
        mut owned: Vec<(ChunkRef, Arc<inflight::Slot>)>,
    ) -> Vec<Vec<(ChunkRef, Arc<inflight::Slot>)>> {
        owned.sort_by_key(|(c, _)| (c.blob, self.info(*c).compressed_offset));
        let mut runs: Vec<Vec<(ChunkRef, Arc<inflight::Slot>)>> = Vec::new();
        for item in owned {
            let info = *self.info(item.0);
            let joins = runs.last().is_some_and(|run| {
                let (first, last) = (run[0].0, run[run.len() - 1].0);
                let (fi, li) = (self.info(first), self.info(last));
                last.blob == item.0.blob
                    && li.compressed_offset + li.compressed_size as u64 == info.compressed_offset
                    && info.compressed_offset + info.compressed_size as u64 - fi.compressed_offset
                        <= self.opts.amplify_bytes
            });
            match runs.last_mut() {
                Some(run) if joins => run.push(item),
                _ => runs.push(vec![item]),
            }
        }
        runs
    }

    /// One origin request for a run of adjacent chunks, then each chunk expanded, verified,
    /// cached and handed to its waiters. A long run (read amplification) is decoded on
    /// every core, and each chunk's waiters go on as soon as that chunk is ready.
    pub(super) fn fetch_run(
        &self,
        run: Vec<(ChunkRef, Arc<inflight::Slot>)>,
    ) -> Vec<(ChunkRef, ChunkResult)> {
        if self.backend.remote() && run.len() > 1 {
            return self.fetch_run_streamed(run);
        }
        let (start, bytes) = self.read_run(&run);
        self.expand_all(run, start, &bytes)
    }

    /// [`Self::fetch_run`] for a reader: still one request, but only the chunks in
    /// `needed` are expanded before it returns; the rest of the run is expanded by a
    /// background thread from the same bytes.
    pub(super) fn fetch_run_for_reader(
        self: &Arc<Self>,
        run: Vec<(ChunkRef, Arc<inflight::Slot>)>,
        needed: &HashSet<ChunkDigest>,
    ) -> Vec<(ChunkRef, ChunkResult)> {
        let (start, bytes) = self.read_run(&run);
        let (now, later): (Vec<_>, Vec<_>) = run
            .into_iter()
            .partition(|(c, _)| needed.contains(&self.info(*c).digest));
        if !later.is_empty() {
            let chain = self.clone();
            let bytes = Arc::new(bytes);
            let bg = bytes.clone();
            chain.on_demand.fetch_add(1, Ordering::Relaxed);
            super::background::spawn(move || {
                let _guard = super::OnDemand(&chain.on_demand);
                let done = chain.expand_all(later, start, &bg);
                chain.read_ahead_done(done.iter().map(|(c, r)| (*c, r)));
            });
            return self.expand_all(now, start, &bytes);
        }
        self.expand_all(now, start, &bytes)
    }

    /// Counts one origin request; the backend's kind, for labels and logs.
    fn count_origin_request(&self) -> &'static str {
        let kind = self.backend.kind();
        self.metrics
            .origin_requests
            .with_label_values(&[kind])
            .inc();
        kind
    }

    /// The one origin request of a run: where it starts, and its bytes or what went wrong.
    fn read_run(&self, run: &[(ChunkRef, Arc<inflight::Slot>)]) -> (u64, RunBytes) {
        let (start, len) = self.span(run);
        let blob = &self.image.blobs[run[0].0.blob as usize];
        let kind = self.count_origin_request();
        let asked = std::time::Instant::now();
        let bytes = self.backend.read_range(&blob.blob_id, start, len);
        self.origin_request_done(kind, (start, len), run.len(), asked, None, bytes.is_ok());
        (start, bytes.map_err(|e| format!("{kind} origin: {e}")))
    }

    /// Logs one origin request (`first_ms`: when its first bytes came, if streamed) and
    /// counts it when it failed.
    fn origin_request_done(
        &self,
        kind: &'static str,
        (offset, len): (u64, usize),
        chunks: usize,
        asked: std::time::Instant,
        first_ms: Option<f64>,
        ok: bool,
    ) {
        tracing::debug!(
            origin = kind,
            offset,
            len,
            chunks,
            ms = asked.elapsed().as_secs_f64() * 1e3,
            first_ms,
            "origin request"
        );
        if !ok {
            self.metrics.origin_errors.with_label_values(&[kind]).inc();
        }
    }

    /// Where a run starts in its blob, and how long it is.
    fn span(&self, run: &[(ChunkRef, Arc<inflight::Slot>)]) -> (u64, usize) {
        let first = self.info(run[0].0);
        let last = self.info(run[run.len() - 1].0);
        let start = first.compressed_offset;
        let len = (last.compressed_offset + last.compressed_size as u64 - start) as usize;
        (start, len)
    }

    /// Expands the chunks of `run` from the run's bytes (on every core when there are
    /// several) and finishes their slots.
    fn expand_all(
        &self,
        run: Vec<(ChunkRef, Arc<inflight::Slot>)>,
        start: u64,
        bytes: &RunBytes,
    ) -> Vec<(ChunkRef, ChunkResult)> {
        let one = |(c, slot): (ChunkRef, Arc<inflight::Slot>)| {
            let info = self.info(c);
            let result = match bytes {
                Err(e) => Err(e.clone()),
                Ok(b) => {
                    let from = (info.compressed_offset - start) as usize;
                    self.expand(c, &b[from..from + info.compressed_size as usize])
                }
            };
            self.inflight.finish(&info.digest, &slot, result.clone());
            (c, result)
        };
        if run.len() > 1 {
            use rayon::prelude::*;
            run.into_par_iter().map(one).collect()
        } else {
            run.into_iter().map(one).collect()
        }
    }

    /// [`Self::fetch_run`] from a remote origin: each chunk is expanded and handed to its
    /// waiters as soon as its bytes are in, so the reader of the first chunk of a long
    /// run does not wait for the whole run to cross the link.
    fn fetch_run_streamed(
        &self,
        run: Vec<(ChunkRef, Arc<inflight::Slot>)>,
    ) -> Vec<(ChunkRef, ChunkResult)> {
        let (start, len) = self.span(&run);
        let blob = &self.image.blobs[run[0].0.blob as usize];
        let kind = self.count_origin_request();
        let mut buf = Vec::with_capacity(len);
        let mut out = Vec::with_capacity(run.len());
        let asked = std::time::Instant::now();
        let mut first_ms = 0.0;
        let mut sink = |piece: &[u8]| {
            if buf.is_empty() {
                first_ms = asked.elapsed().as_secs_f64() * 1e3;
            }
            buf.extend_from_slice(piece);
            while let Some((c, slot)) = run.get(out.len()) {
                let info = self.info(*c);
                let from = (info.compressed_offset - start) as usize;
                let to = from + info.compressed_size as usize;
                if buf.len() < to {
                    break;
                }
                let result = self.expand(*c, &buf[from..to]);
                self.inflight.finish(&info.digest, slot, result.clone());
                out.push((*c, result));
            }
        };
        let read = self
            .backend
            .read_range_streamed(&blob.blob_id, start, len, &mut sink);
        self.origin_request_done(
            kind,
            (start, len),
            run.len(),
            asked,
            Some(first_ms),
            read.is_ok(),
        );
        if let Err(e) = read {
            for (c, slot) in &run[out.len()..] {
                let result = Err(format!("{kind} origin: {e}"));
                self.inflight
                    .finish(&self.info(*c).digest, slot, result.clone());
                out.push((*c, result));
            }
        }
        out
    }

    /// Decompresses and verifies one chunk fetched from the origin, then caches it.
    fn expand(&self, c: ChunkRef, stored: &[u8]) -> ChunkResult {
        let blob = &self.image.blobs[c.blob as usize];
        let info = self.info(c);
        let data = match self.decode(blob, info, stored) {
            Ok(d) => d,
            Err(e) if self.image.blobs.len() > 1 => self.search_other_blobs(c).ok_or(e)?,
            Err(e) => return Err(e),
        };
        self.metrics
            .record_fetch(ChunkSource::Origin, data.len() as u64);
        let data = Arc::new(data);
        self.hot_put(info.digest, &data);
        self.cache.put(&self.key(info.digest), &data);
        Ok(data)
    }

    fn decode(
        &self,
        blob: &crate::rafs::BlobInfo,
        info: &ChunkInfo,
        stored: &[u8],
    ) -> Result<Vec<u8>, String> {
        let result = if self.opts.verify {
            crate::rafs::blobfile::decode_chunk(blob, info, stored, self.image.digester)
        } else {
            let codec = if info.compressed {
                blob.compressor
            } else {
                crate::rafs::Compressor::None
            };
            codec.decompress(stored, info.uncompressed_size as usize)
        };
        result.map_err(|e| {
            self.metrics.digest_failures.inc();
            tracing::error!(chunk = %info.digest, blob = %blob.blob_id, error = %e, "chunk from origin failed verification");
            e.to_string()
        })
    }

    /// Images built by nydus-image with --parent-bootstrap may record a chunk under the
    /// wrong blob: look for bytes with the right digest at the same place in the others.
    fn search_other_blobs(&self, c: ChunkRef) -> Option<Vec<u8>> {
        let info = self.info(c);
        let recorded = &self.image.blobs[c.blob as usize];
        self.image
            .blobs
            .iter()
            .filter(|b| b.blob_id != recorded.blob_id)
            .find_map(|b| {
                let stored = self
                    .backend
                    .read_range(
                        &b.blob_id,
                        info.compressed_offset,
                        info.compressed_size as usize,
                    )
                    .ok()?;
                crate::rafs::blobfile::decode_chunk(recorded, info, &stored, self.image.digester)
                    .ok()
            })
    }
}
