//! The data files: `data/NNNNNNNN.dat`, chunk bytes appended back to back, never rewritten
//! in place. Space of evicted chunks goes back to the file system at once by punching holes
//! (fallocate PUNCH_HOLE, which ext4, xfs, btrfs and tmpfs support), so no compaction pass
//! has to copy live chunks around; a file whose chunks are all gone is deleted.

use super::error::{Result, StoreError};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

/// Chunks of a block or more start on a block boundary in the data files, and so does the
/// chunk after them, so every block of such a chunk is its own and all can be punched; the
/// cost is the unused end of its last block (2 KiB on average, 0.2% of a 1 MiB chunk), a
/// hole on disk. Smaller chunks are packed back to back: they free their space only when
/// their data file is deleted.
pub(crate) const BLOCK: u64 = 4096;

/// `n` rounded up to a block boundary.
pub(crate) fn align(n: u64) -> u64 {
    n.div_ceil(BLOCK) * BLOCK
}

pub(crate) struct DataFiles {
    dir: PathBuf,
    open: RwLock<HashMap<u32, Arc<File>>>,
    /// Set once a file system refuses to punch holes, to warn only once.
    no_punch: AtomicBool,
}

impl DataFiles {
    pub(crate) fn new(dir: PathBuf) -> Self {
        DataFiles {
            dir,
            open: RwLock::new(HashMap::new()),
            no_punch: AtomicBool::new(false),
        }
    }

    pub(crate) fn path(&self, id: u32) -> PathBuf {
        self.dir.join(format!("{id:08}.dat"))
    }

    /// The file, opened on first use (read-write, so the active one can be appended to).
    pub(crate) fn get(&self, id: u32) -> Result<Arc<File>> {
        if let Some(f) = self.open.read().unwrap_or_else(|p| p.into_inner()).get(&id) {
            return Ok(f.clone());
        }
        let path = self.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .or_else(|_| OpenOptions::new().read(true).open(&path))
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(self.keep_open(id, file))
    }

    /// Creates (or reopens) file `id` for appending.
    pub(crate) fn create(&self, id: u32) -> Result<Arc<File>> {
        let path = self.path(id);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| StoreError::io(&path, e))?;
        Ok(self.keep_open(id, file))
    }

    /// Remembers data file `id` as open, for the reads and appends that follow.
    fn keep_open(&self, id: u32, file: File) -> Arc<File> {
        let file = Arc::new(file);
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, file.clone());
        file
    }

    pub(crate) fn read_at(&self, id: u32, offset: u64, len: usize) -> Result<Vec<u8>> {
        let file = self.get(id)?;
        let mut buf = vec![0u8; len];
        file.read_exact_at(&mut buf, offset)
            .map_err(|e| StoreError::io(self.path(id), e))?;
        Ok(buf)
    }

    /// Gives the blocks of a chunk at `[offset, offset + len)` back to the file system: all
    /// of them for a chunk of a block or more (its last block is its own, see [`BLOCK`]),
    /// else the whole blocks inside it (none).
    pub(crate) fn punch_chunk(&self, id: u32, offset: u64, len: u64) -> Result<()> {
        if len >= BLOCK && offset % BLOCK == 0 {
            self.punch(id, offset, align(offset + len) - offset)
        } else {
            self.punch(id, offset, len)
        }
    }

    /// Gives the whole blocks inside `[offset, offset + len)` back to the file system.
    pub(crate) fn punch(&self, id: u32, offset: u64, len: u64) -> Result<()> {
        let start = align(offset);
        let end = (offset + len) / BLOCK * BLOCK;
        if end <= start || self.no_punch.load(Ordering::Relaxed) {
            return Ok(());
        }
        let file = match self.get(id) {
            Ok(f) => f,
            // Already deleted: nothing left to free.
            Err(StoreError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                return Ok(())
            }
            Err(e) => return Err(e),
        };
        // SAFETY: fallocate on a valid open descriptor; no memory is passed.
        let rc = unsafe {
            libc::fallocate(
                file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                start as libc::off_t,
                (end - start) as libc::off_t,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
            if !self.no_punch.swap(true, Ordering::Relaxed) {
                tracing::warn!(dir = %self.dir.display(), "file system cannot punch holes: evicted chunks free their space only when their whole data file is deleted");
            }
            return Ok(());
        }
        Err(StoreError::io(self.path(id), err))
    }

    /// Cuts file `id` back to `len` bytes (a write that did not complete).
    pub(crate) fn truncate(&self, id: u32, len: u64) -> Result<()> {
        let file = self.get(id)?;
        file.set_len(len)
            .map_err(|e| StoreError::io(self.path(id), e))
    }

    pub(crate) fn remove(&self, id: u32) -> Result<()> {
        self.open
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
        match std::fs::remove_file(self.path(id)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(StoreError::io(self.path(id), e))
            }
            _ => Ok(()),
        }
    }

    /// The data files present on disk: id, length, bytes allocated.
    pub(crate) fn on_disk(&self) -> Result<Vec<(u32, u64, u64)>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| StoreError::io(&self.dir, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| StoreError::io(&self.dir, e))?;
            let name = entry.file_name();
            let Some(id) = name
                .to_str()
                .and_then(|n| n.strip_suffix(".dat"))
                .filter(|n| n.len() == 8)
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let md = entry
                .metadata()
                .map_err(|e| StoreError::io(entry.path(), e))?;
            out.push((id, md.len(), md.blocks() * 512));
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// Bytes allocated on disk under `path` (files and directories below it).
pub(crate) fn disk_usage(path: &Path) -> u64 {
    let Ok(md) = std::fs::symlink_metadata(path) else {
        return 0;
    };
    if !md.is_dir() {
        return md.blocks() * 512;
    }
    std::fs::read_dir(path)
        .map(|rd| rd.flatten().map(|e| disk_usage(&e.path())).sum())
        .unwrap_or(0)
}

/// Free bytes for an unprivileged writer on the file system holding `path`.
pub(crate) fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: statvfs fills the zeroed struct; `c` is NUL-terminated.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}
