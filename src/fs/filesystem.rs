//! `FileSystem` for one image. FUSE inode numbers are the image's inode ids plus one (the
//! root is 1), so hard links share a number. The image never changes, so the kernel may
//! cache entries, attributes, symlinks and pages for as long as it likes.

use crate::fetch::{FetchChain, FetchError};
use crate::rafs::image::*;
use fuse_backend_rs::abi::fuse_abi::{stat64, statvfs64};
use fuse_backend_rs::api::filesystem::{
    Context, DirEntry, Entry, FileSystem, FsOptions, GetxattrReply, ListxattrReply, OpenOptions,
    ZeroCopyWriter,
};
use std::ffi::CStr;
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// How long the kernel may trust what we tell it: the image is immutable.
const TTL: Duration = Duration::from_secs(3600 * 24 * 365);

pub struct RafsFs {
    chain: Arc<FetchChain>,
    /// The kernel agreed to skip open/release (and opendir/releasedir) round trips.
    no_open: std::sync::atomic::AtomicBool,
    /// Parent of each directory, for the `..` entries of readdir.
    parents: Vec<InodeId>,
}

fn errno(e: i32) -> io::Error {
    io::Error::from_raw_os_error(e)
}

impl RafsFs {
    pub fn new(chain: Arc<FetchChain>) -> Self {
        let image = chain.image();
        let mut parents: Vec<InodeId> = (0..image.inodes.len()).collect();
        for (id, node) in image.inodes.iter().enumerate() {
            for c in node.children() {
                if image.inodes[c.inode].is_dir() {
                    parents[c.inode] = id;
                }
            }
        }
        RafsFs {
            chain,
            parents,
            no_open: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn image(&self) -> &Image {
        self.chain.image()
    }

    fn inode(&self, ino: u64) -> io::Result<(InodeId, &Inode)> {
        let id = ino.checked_sub(1).ok_or_else(|| errno(libc::ENOENT))? as usize;
        let node = self
            .image()
            .inodes
            .get(id)
            .ok_or_else(|| errno(libc::ENOENT))?;
        Ok((id, node))
    }

    fn stat(&self, id: InodeId, node: &Inode) -> stat64 {
        // SAFETY: stat64 is plain old data; all-zero is a valid value.
        let mut st: stat64 = unsafe { std::mem::zeroed() };
        st.st_ino = id as u64 + 1;
        st.st_mode = node.mode;
        st.st_nlink = node.nlink as _;
        st.st_uid = node.uid;
        st.st_gid = node.gid;
        st.st_rdev = libc::makedev(node.rdev.0, node.rdev.1);
        st.st_size = node.size as i64;
        st.st_blksize = 4096;
        st.st_blocks = node.size.div_ceil(512) as i64;
        st.st_mtime = node.mtime as i64;
        st.st_mtime_nsec = node.mtime_nsec as i64;
        st.st_atime = st.st_mtime;
        st.st_atime_nsec = st.st_mtime_nsec;
        st.st_ctime = st.st_mtime;
        st.st_ctime_nsec = st.st_mtime_nsec;
        st
    }

    fn entry(&self, id: InodeId) -> Entry {
        let node = &self.image().inodes[id];
        Entry {
            inode: id as u64 + 1,
            generation: 0,
            attr: self.stat(id, node),
            attr_flags: 0,
            attr_timeout: TTL,
            entry_timeout: TTL,
        }
    }

    /// Hands the entries of directory `inode` from position `offset` on to `add` (with the
    /// child's inode id and position) until it reports a full buffer by returning 0.
    fn each_dirent(
        &self,
        inode: u64,
        offset: u64,
        add: &mut dyn FnMut(DirEntry, InodeId, usize) -> io::Result<usize>,
    ) -> io::Result<()> {
        let (id, node) = self.inode(inode)?;
        if !node.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        // Positions: 0 is `.`, 1 is `..`, then the children in name order; nothing is
        // copied, so paging through a large directory stays linear.
        let kids = node.children();
        for i in offset as usize..kids.len() + 2 {
            let (name, child): (&[u8], InodeId) = match i {
                0 => (b".", id),
                1 => (b"..", self.parents[id]),
                _ => (&kids[i - 2].name, kids[i - 2].inode),
            };
            let mode = self.image().inodes[child].mode;
            let e = DirEntry {
                ino: child as u64 + 1,
                offset: i as u64 + 1,
                type_: dirent_type(mode),
                name,
            };
            if add(e, child, i)? == 0 {
                break;
            }
        }
        Ok(())
    }

    fn xattr_reply(data: Vec<u8>, size: u32) -> io::Result<GetxattrReply> {
        if size == 0 {
            Ok(GetxattrReply::Count(data.len() as u32))
        } else if data.len() > size as usize {
            Err(errno(libc::ERANGE))
        } else {
            Ok(GetxattrReply::Value(data))
        }
    }
}

fn dirent_type(mode: u32) -> u32 {
    (mode & S_IFMT) >> 12
}

impl FileSystem for RafsFs {
    type Inode = u64;
    type Handle = u64;

    fn init(&self, capable: FsOptions) -> io::Result<FsOptions> {
        let wanted = FsOptions::ASYNC_READ
            | FsOptions::PARALLEL_DIROPS
            | FsOptions::CACHE_SYMLINKS
            | FsOptions::DO_READDIRPLUS
            | FsOptions::MAX_PAGES
            | FsOptions::BIG_WRITES
            | FsOptions::ZERO_MESSAGE_OPEN
            | FsOptions::ZERO_MESSAGE_OPENDIR;
        // Nothing happens at open, so let the kernel skip it: it then keeps the page cache
        // of files and directories as if every open had said so.
        let no_open =
            capable.contains(FsOptions::ZERO_MESSAGE_OPEN | FsOptions::ZERO_MESSAGE_OPENDIR);
        self.no_open
            .store(no_open, std::sync::atomic::Ordering::Relaxed);
        Ok(capable & wanted)
    }

    fn lookup(&self, _ctx: &Context, parent: u64, name: &CStr) -> io::Result<Entry> {
        let (_, dir) = self.inode(parent)?;
        if !dir.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        let name = name.to_bytes();
        let kids = dir.children();
        let i = kids
            .binary_search_by(|e| e.name.as_slice().cmp(name))
            .map_err(|_| errno(libc::ENOENT))?;
        Ok(self.entry(kids[i].inode))
    }

    fn getattr(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: Option<u64>,
    ) -> io::Result<(stat64, Duration)> {
        let (id, node) = self.inode(inode)?;
        Ok((self.stat(id, node), TTL))
    }

    fn readlink(&self, _ctx: &Context, inode: u64) -> io::Result<Vec<u8>> {
        match &self.inode(inode)?.1.kind {
            InodeKind::Symlink(target) => Ok(target.clone()),
            _ => Err(errno(libc::EINVAL)),
        }
    }

    fn open(
        &self,
        _ctx: &Context,
        inode: u64,
        flags: u32,
        _fuse_flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions, Option<u32>)> {
        let (_, node) = self.inode(inode)?;
        if node.is_dir() {
            return Err(errno(libc::EISDIR));
        }
        if flags as i32 & libc::O_ACCMODE != libc::O_RDONLY {
            return Err(errno(libc::EROFS));
        }
        if self.no_open.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(errno(libc::ENOSYS));
        }
        Ok((None, OpenOptions::KEEP_CACHE, None))
    }

    #[allow(clippy::too_many_arguments)]
    fn read(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        w: &mut dyn ZeroCopyWriter,
        size: u32,
        offset: u64,
        _lock_owner: Option<u64>,
        _flags: u32,
    ) -> io::Result<usize> {
        let (id, node) = self.inode(inode)?;
        if node.file_type() != S_IFREG {
            return Err(errno(libc::EINVAL));
        }
        let asked = std::time::Instant::now();
        let parts = self.chain.read_parts(id, offset, size).map_err(|e| {
            tracing::error!(inode, offset, size, error = %e, "read failed");
            match e {
                FetchError::NotAFile(_) => errno(libc::EINVAL),
                FetchError::Chunk { .. } => errno(libc::EIO),
            }
        })?;
        tracing::trace!(
            inode,
            offset,
            size,
            ms = asked.elapsed().as_secs_f64() * 1e3,
            "read"
        );
        // Straight from the chunks into the reply: no gathering copy.
        parts.try_for_each(|piece| w.write_all(piece))?;
        Ok(parts.len())
    }

    fn release(
        &self,
        _ctx: &Context,
        _inode: u64,
        _flags: u32,
        _handle: u64,
        _flush: bool,
        _flock_release: bool,
        _lock_owner: Option<u64>,
    ) -> io::Result<()> {
        Ok(())
    }

    fn statfs(&self, _ctx: &Context, _inode: u64) -> io::Result<statvfs64> {
        // SAFETY: plain old data.
        let mut st: statvfs64 = unsafe { std::mem::zeroed() };
        let image = self.image();
        st.f_bsize = 4096;
        st.f_frsize = 4096;
        st.f_blocks = image
            .blobs
            .iter()
            .map(|b| b.uncompressed_size.div_ceil(4096))
            .sum();
        st.f_files = image.inodes.len() as u64;
        st.f_namemax = 255;
        Ok(st)
    }

    fn getxattr(
        &self,
        _ctx: &Context,
        inode: u64,
        name: &CStr,
        size: u32,
    ) -> io::Result<GetxattrReply> {
        let (_, node) = self.inode(inode)?;
        let name = name.to_bytes();
        let value = node
            .xattrs
            .iter()
            .find(|(k, _)| k == name)
            .ok_or_else(|| errno(libc::ENODATA))?;
        Self::xattr_reply(value.1.clone(), size)
    }

    fn listxattr(&self, _ctx: &Context, inode: u64, size: u32) -> io::Result<ListxattrReply> {
        let (_, node) = self.inode(inode)?;
        let mut names = Vec::new();
        for (k, _) in &node.xattrs {
            names.extend_from_slice(k);
            names.push(0);
        }
        match Self::xattr_reply(names, size)? {
            GetxattrReply::Count(n) => Ok(ListxattrReply::Count(n)),
            GetxattrReply::Value(v) => Ok(ListxattrReply::Names(v)),
        }
    }

    fn opendir(
        &self,
        _ctx: &Context,
        inode: u64,
        _flags: u32,
    ) -> io::Result<(Option<u64>, OpenOptions)> {
        let (_, node) = self.inode(inode)?;
        if !node.is_dir() {
            return Err(errno(libc::ENOTDIR));
        }
        if self.no_open.load(std::sync::atomic::Ordering::Relaxed) {
            return Err(errno(libc::ENOSYS));
        }
        Ok((None, OpenOptions::KEEP_CACHE | OpenOptions::CACHE_DIR))
    }

    fn readdir(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.each_dirent(inode, offset, &mut |e, _, _| add_entry(e))
    }

    fn readdirplus(
        &self,
        _ctx: &Context,
        inode: u64,
        _handle: u64,
        _size: u32,
        offset: u64,
        add_entry: &mut dyn FnMut(DirEntry, Entry) -> io::Result<usize>,
    ) -> io::Result<()> {
        self.each_dirent(inode, offset, &mut |e, child, i| {
            // `.` and `..` must not bump lookup counts: hand them over without an entry.
            let entry = if i < 2 {
                Entry {
                    inode: 0,
                    ..self.entry(child)
                }
            } else {
                self.entry(child)
            };
            add_entry(e, entry)
        })
    }

    fn releasedir(&self, _ctx: &Context, _inode: u64, _flags: u32, _handle: u64) -> io::Result<()> {
        Ok(())
    }

    fn access(&self, ctx: &Context, inode: u64, mask: u32) -> io::Result<()> {
        let (_, node) = self.inode(inode)?;
        if mask as i32 & libc::W_OK != 0 {
            return Err(errno(libc::EROFS));
        }
        if ctx.uid == 0 || mask as i32 == libc::F_OK {
            return Ok(());
        }
        let bits = if ctx.uid == node.uid {
            (node.mode >> 6) & 7
        } else if ctx.gid == node.gid {
            (node.mode >> 3) & 7
        } else {
            node.mode & 7
        };
        if mask & !bits & 7 != 0 {
            return Err(errno(libc::EACCES));
        }
        Ok(())
    }
}
