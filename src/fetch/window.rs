//! What a read fetches along with its own chunks (read amplification), and where that
//! stops being worth it.

use super::inflight::ChunkResult;
use super::FetchChain;
use crate::rafs::image::ChunkRef;
use std::collections::VecDeque;
use std::sync::Arc;

/// Where the latest read windows ended, per blob. A miss just past one continues a scan
/// (a full read, a tree copy): its blob neighbors, the files read next, ride along. A
/// miss elsewhere (a program starting, touching a few scattered libraries) fetches only
/// its file's chunks: with neighbors, a Debian `bash -c true` pulled 3.3x the bytes it
/// reads through a capped registry link, ahead of the reads that waited.
#[derive(Default)]
pub(super) struct ReadStreams {
    /// (blob, index of the chunk after the window), newest last.
    ends: VecDeque<(u32, u32)>,
}

/// Streams remembered: concurrent scans of one image (several readers) each keep theirs.
const STREAMS: usize = 16;
/// How far past a window's end a miss still continues it (holes, chunks already here).
const SLACK: u32 = 4;

impl ReadStreams {
    fn continues(&self, c: ChunkRef) -> bool {
        self.ends.iter().any(|&end| follows(end, c))
    }

    /// A window from `start` to `end` (same blob) was fetched.
    fn note(&mut self, start: ChunkRef, end: ChunkRef) {
        // The stream it continues moves on rather than staying as a second one.
        self.ends.retain(|&e| !follows(e, start));
        if self.ends.len() == STREAMS {
            self.ends.pop_front();
        }
        self.ends.push_back((end.blob, end.index.saturating_add(1)));
    }
}

fn follows((blob, next): (u32, u32), c: ChunkRef) -> bool {
    blob == c.blob && (next..=next.saturating_add(SLACK)).contains(&c.index)
}

impl FetchChain {
    /// The chunks of a read and its window: the requested ones, then, while they fit the
    /// amplification budget, the file's next ones and, when the read continues a scan of
    /// the blob, the blob's next ones (fetched in the background once the reader is
    /// answered). Results for the requested chunks only.
    pub(super) fn fetch_for_read(
        self: &Arc<Self>,
        chunks: &[ChunkRef],
        first: usize,
        last: usize,
    ) -> Vec<ChunkResult> {
        let mut upto = last;
        let mut budget = self.budget_after(&chunks[first..=last]);
        while upto + 1 < chunks.len() {
            let next = self.info(chunks[upto + 1]).compressed_size as u64;
            if next > budget {
                break;
            }
            budget -= next;
            upto += 1;
        }
        let mut wanted = chunks[first..=upto].to_vec();
        self.add_neighbors_if_scanning(&mut wanted, budget);
        self.fetch_window(&wanted, last - first + 1, true)
    }

    /// The same for a member that asked this node as the chunks' owner: never asks the
    /// mesh again (the owner is where the mesh ends), and when the asks scan the blob,
    /// fetches the rest of their segment behind them, as a reader's window does.
    pub(crate) fn fetch_for_peers(self: &Arc<Self>, refs: &[ChunkRef]) -> Vec<ChunkResult> {
        let mut wanted = refs.to_vec();
        self.add_neighbors_if_scanning(&mut wanted, self.budget_after(refs));
        self.fetch_window(&wanted, refs.len(), false)
    }

    /// What is left of the amplification budget once `refs` are in the window.
    fn budget_after(&self, refs: &[ChunkRef]) -> u64 {
        self.opts
            .amplify_bytes
            .saturating_sub(self.stored_bytes(refs))
    }

    /// Adds the blob neighbors of a window (`wanted`, read from its first chunk) when it
    /// continues a scan, and remembers where it ends.
    fn add_neighbors_if_scanning(&self, wanted: &mut Vec<ChunkRef>, budget: u64) {
        let Some(&start) = wanted.first() else {
            return;
        };
        let mut streams = self.streams.lock().unwrap_or_else(|p| p.into_inner());
        if streams.continues(start) {
            self.add_blob_neighbors(wanted, budget);
        }
        streams.note(start, wanted.last().copied().unwrap_or(start));
    }

    /// Read amplification across files: the chunks that follow in the blob usually belong
    /// to the files read next (the builder lays blobs out in tree order), so uncached ones
    /// ride along in the same origin request while the budget lasts.
    fn add_blob_neighbors(&self, wanted: &mut Vec<ChunkRef>, mut budget: u64) {
        let Some(&last) = wanted.last() else { return };
        let end = self.neighbors_end(last);
        let chunks = &self.image.blobs[last.blob as usize].chunks;
        for (index, info) in chunks.iter().enumerate().skip(last.index as usize + 1) {
            if info.is_hole() {
                continue;
            }
            if info.compressed_offset >= end {
                break;
            }
            // Stop at a chunk already here or on its way: what follows it was most likely
            // fetched along with it.
            if info.compressed_size as u64 > budget
                || self.is_local(&info.digest)
                || self.inflight.contains(&info.digest)
            {
                break;
            }
            budget -= info.compressed_size as u64;
            wanted.push(ChunkRef {
                blob: last.blob,
                index: index as u32,
            });
        }
    }

    /// Where in `c`'s blob neighbors stop being worth fetching with it (a compressed
    /// offset). In a mesh that is the end of `c`'s segment when this node owns it, else
    /// right away: the owner fetches a segment's neighbors itself when first asked, and a
    /// member that pulled them too moved several times the bytes it read (a 20-node start
    /// measured 3.8x) at the cost of every node's CPU.
    fn neighbors_end(&self, c: ChunkRef) -> u64 {
        let Some(peers) = self.peers.get() else {
            return u64::MAX;
        };
        let segment_bytes = peers.segment_bytes();
        let offset = self.info(c).compressed_offset;
        match offset.checked_div(segment_bytes) {
            Some(segment) if peers.owns(&[self.route_key(c, segment_bytes)]) == [true] => {
                (segment + 1).saturating_mul(segment_bytes)
            }
            _ => 0,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(blob: u32, index: u32) -> ChunkRef {
        ChunkRef { blob, index }
    }

    #[test]
    fn a_miss_just_past_a_window_continues_it_and_others_do_not() {
        let mut s = ReadStreams::default();
        assert!(!s.continues(at(0, 10)));
        s.note(at(0, 10), at(0, 12));
        assert!(s.continues(at(0, 13)));
        assert!(s.continues(at(0, 13 + SLACK)));
        assert!(!s.continues(at(0, 14 + SLACK)));
        assert!(!s.continues(at(0, 12)));
        assert!(!s.continues(at(1, 13)));
        // The scan moves on: its old end is forgotten, not kept as a second stream.
        s.note(at(0, 13), at(0, 20));
        assert_eq!(s.ends.len(), 1);
        for i in 0..(STREAMS as u32 + 3) {
            s.note(at(2, i * 100), at(2, i * 100));
        }
        assert_eq!(s.ends.len(), STREAMS);
    }
}
