//! Read-ahead chunks handed on: a window fetched for a scan decodes chunks nobody has asked
//! for yet. Whoever serves the files (the FUSE layer) may take them and put them where the
//! next read finds them without asking (the kernel's page cache).

use super::inflight::ChunkResult;
use super::FetchChain;
use crate::rafs::image::ChunkRef;
use std::sync::Arc;

/// Takes decoded, verified chunks fetched ahead of the readers.
pub trait ReadAheadSink: Send + Sync {
    /// Must not block on readers: it is called from the threads that finish their chunks.
    fn offer(&self, chunks: Vec<(ChunkRef, Arc<Vec<u8>>)>);
}

impl FetchChain {
    /// Hands this chain's read-ahead to `sink` (once, when the image is mounted).
    pub fn set_read_ahead_sink(&self, sink: Arc<dyn ReadAheadSink>) {
        let _ = self.read_ahead.set(sink);
    }

    /// Offers the chunks of a finished read-ahead that decoded well.
    pub(super) fn read_ahead_done<'a>(
        &self,
        done: impl IntoIterator<Item = (ChunkRef, &'a ChunkResult)>,
    ) {
        let Some(sink) = self.read_ahead.get() else {
            return;
        };
        let ready: Vec<_> = done
            .into_iter()
            .filter_map(|(c, r)| r.as_ref().ok().map(|d| (c, d.clone())))
            .collect();
        if !ready.is_empty() {
            sink.offer(ready);
        }
    }
}
