//! Read-ahead pushed into the kernel's page cache. A scan (a full read, `tar`, a copy)
//! reads files in the order their chunks lie in the blob, so the window fetched for one
//! file decodes the next files too; handing those to the kernel with FUSE_NOTIFY_STORE
//! means the reader finds them cached and the next files cost no FUSE round trip at all.
//! Scattered reads never reach this: only windows fetched for a scan are offered.

use crate::fetch::ReadAheadSink;
use crate::rafs::image::{ChunkRef, Image, InodeId, InodeKind};
use prometheus::IntCounter;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender};
use std::sync::Arc;
use std::time::Duration;

/// Batches of chunks waiting to be pushed; more are dropped (the reader then asks for them
/// the usual way).
const QUEUE_BATCHES: usize = 64;
/// Files a shared chunk is pushed to at most.
const PLACES_PER_CHUNK: usize = 4;
/// `FUSE_NOTIFY_STORE` of the kernel's FUSE protocol.
const FUSE_NOTIFY_STORE: i32 = 4;

type Batch = Vec<(ChunkRef, Arc<Vec<u8>>)>;

/// Pushes offered chunks into the page cache of the files that hold them, from a thread of
/// its own: a store into a page a reader has locked waits for that read to be answered,
/// and the threads that answer reads must never wait on this.
pub struct PagePusher {
    queue: SyncSender<Batch>,
}

impl PagePusher {
    /// Starts pushing into the FUSE session behind `fuse` (a clone of its /dev/fuse file).
    /// Counts what it pushes in `pushed`; ends (closing its file) once `stop` is set.
    pub fn start(
        image: Arc<Image>,
        fuse: File,
        pushed: IntCounter,
        stop: Arc<AtomicBool>,
    ) -> std::io::Result<PagePusher> {
        let (queue, rx) = sync_channel(QUEUE_BATCHES);
        std::thread::Builder::new()
            .name("warren-fuse-push".into())
            .spawn(move || {
                let out = Pushing {
                    places: ChunkPlaces::new(&image),
                    image: &image,
                    fuse: &fuse,
                    pushed: &pushed,
                };
                out.run(&rx, &stop)
            })?;
        Ok(PagePusher { queue })
    }
}

impl ReadAheadSink for PagePusher {
    fn offer(&self, chunks: Batch) {
        // A full queue drops the batch: its files are then read the usual way.
        let _ = self.queue.try_send(chunks);
    }
}

/// Where each chunk lies in the image's files: (chunk, inode, index in the file's list),
/// sorted by chunk.
struct ChunkPlaces(Vec<(ChunkRef, InodeId, u32)>);

impl ChunkPlaces {
    fn new(image: &Image) -> ChunkPlaces {
        let mut places = Vec::new();
        for (id, inode) in image.inodes.iter().enumerate() {
            if let InodeKind::File(chunks) = &inode.kind {
                places.extend(chunks.iter().enumerate().map(|(k, c)| (*c, id, k as u32)));
            }
        }
        places.sort_unstable_by_key(|(c, id, _)| (c.blob, c.index, *id));
        ChunkPlaces(places)
    }

    fn of(&self, c: ChunkRef) -> impl Iterator<Item = (InodeId, u32)> + '_ {
        let key = (c.blob, c.index);
        let from = self.0.partition_point(|(p, _, _)| (p.blob, p.index) < key);
        self.0[from..]
            .iter()
            .take_while(move |(p, _, _)| (p.blob, p.index) == key)
            .take(PLACES_PER_CHUNK)
            .map(|(_, id, k)| (*id, *k))
    }
}

/// How often a pusher with nothing to do checks whether its mount is gone.
const STOP_CHECK: Duration = Duration::from_millis(500);

struct Pushing<'a> {
    places: ChunkPlaces,
    image: &'a Image,
    fuse: &'a File,
    pushed: &'a IntCounter,
}

impl Pushing<'_> {
    fn run(&self, rx: &Receiver<Batch>, stop: &AtomicBool) {
        while !stop.load(Ordering::Relaxed) {
            let batch = match rx.recv_timeout(STOP_CHECK) {
                Ok(batch) => batch,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            for (c, data) in &batch {
                if let Err(e) = self.push(*c, data) {
                    tracing::debug!(error = %e, "pushing read-ahead into the page cache stopped");
                    return;
                }
            }
        }
    }

    /// Pushes one chunk into each file that holds it.
    fn push(&self, c: ChunkRef, data: &[u8]) -> std::io::Result<()> {
        let cs = self.image.chunk_size as u64;
        for (id, k) in self.places.of(c) {
            let offset = k as u64 * cs;
            let size = self.image.inodes[id].size;
            let len = size.saturating_sub(offset).min(data.len() as u64);
            if len == 0 {
                continue;
            }
            match notify_store(self.fuse, id as u64 + 1, offset, &data[..len as usize]) {
                Ok(()) => self.pushed.inc_by(len),
                // The kernel has not looked the file up (or has forgotten it): nothing to
                // cache into.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One FUSE_NOTIFY_STORE message: `bytes` become the page cache of inode `nodeid` at
/// `offset`.
fn notify_store(fuse: &File, nodeid: u64, offset: u64, bytes: &[u8]) -> std::io::Result<()> {
    // fuse_out_header (len, error = notify code, unique = 0), then fuse_notify_store_out
    // (nodeid, offset, size, padding), native endian as the kernel reads them.
    let mut head = [0u8; 40];
    let total = (head.len() + bytes.len()) as u32;
    head[0..4].copy_from_slice(&total.to_ne_bytes());
    head[4..8].copy_from_slice(&FUSE_NOTIFY_STORE.to_ne_bytes());
    head[16..24].copy_from_slice(&nodeid.to_ne_bytes());
    head[24..32].copy_from_slice(&offset.to_ne_bytes());
    head[32..36].copy_from_slice(&(bytes.len() as u32).to_ne_bytes());
    let iov = [
        libc::iovec {
            iov_base: head.as_ptr() as *mut libc::c_void,
            iov_len: head.len(),
        },
        libc::iovec {
            iov_base: bytes.as_ptr() as *mut libc::c_void,
            iov_len: bytes.len(),
        },
    ];
    // SAFETY: both iovecs point at live buffers of the stated lengths, only read by writev.
    let n = unsafe { libc::writev(fuse.as_raw_fd(), iov.as_ptr(), iov.len() as libc::c_int) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
