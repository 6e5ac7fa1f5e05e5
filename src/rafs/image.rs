//! The in-memory image: an inode table with a directory tree over it, and the blobs that
//! hold file data. The reader fills it from a bootstrap, the builder from a directory or
//! tar, the writer serializes it; merge and whiteouts edit it in between.

use super::codec::{Compressor, Digester};
use std::fmt;

/// Index into [`Image::inodes`]; the root is always 0.
pub type InodeId = usize;

pub const ROOT: InodeId = 0;

/// Extended attributes as (full name, value) pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// A chunk's name: the digest of its uncompressed bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct ChunkDigest(pub [u8; 32]);

impl fmt::Display for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for ChunkDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ChunkDigest({self})")
    }
}

#[derive(Clone, Debug)]
pub struct Image {
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub blobs: Vec<BlobInfo>,
    pub inodes: Vec<Inode>,
    /// Inodes listed in the prefetch table, in table order.
    pub prefetch: Vec<InodeId>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inode {
    /// Full `st_mode`: file type and permission bits.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub nlink: u32,
    pub size: u64,
    /// Device number (major, minor) of character and block devices.
    pub rdev: (u32, u32),
    /// Extended attributes, full names (`user.x`), sorted by name.
    pub xattrs: Xattrs,
    pub kind: InodeKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum InodeKind {
    /// Children sorted by name, without `.` and `..`.
    Dir(Vec<DirEntry>),
    File(Vec<ChunkRef>),
    Symlink(Vec<u8>),
    /// Device nodes, fifos and sockets: everything is in the mode and rdev.
    Special,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub name: Vec<u8>,
    pub inode: InodeId,
}

/// One chunk of a file: `index` into `Image::blobs[blob].chunks`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ChunkRef {
    pub blob: u32,
    pub index: u32,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlobInfo {
    /// Hex sha256 of every byte of the blob (its OCI layer digest).
    pub blob_id: String,
    pub chunk_size: u32,
    pub compressor: Compressor,
    pub digester: Digester,
    pub features: u32,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
    pub meta: BlobMetaLocation,
    pub toc_size: u32,
    pub toc_digest: [u8; 32],
    /// Chunks by their index in the blob's chunk table.
    pub chunks: Vec<ChunkInfo>,
}

/// Where the blob's compressed chunk table ("ci") sits in the blob.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BlobMetaLocation {
    pub compressor: u32,
    pub offset: u64,
    pub compressed_size: u64,
    pub uncompressed_size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChunkInfo {
    pub digest: ChunkDigest,
    pub compressed_offset: u64,
    pub compressed_size: u32,
    pub uncompressed_offset: u64,
    pub uncompressed_size: u32,
    /// Stored compressed; clear when compression did not shrink it.
    pub compressed: bool,
    /// CRC32C of the uncompressed bytes, when the writer recorded one.
    pub crc32: Option<u32>,
    /// Offset in the first file that holds this chunk.
    pub file_offset: u64,
}

impl ChunkInfo {
    /// A free slot in a blob's chunk list: no chunk table record has this index.
    pub fn hole() -> Self {
        ChunkInfo {
            digest: ChunkDigest::default(),
            compressed_offset: 0,
            compressed_size: 0,
            uncompressed_offset: 0,
            uncompressed_size: 0,
            compressed: false,
            crc32: None,
            file_offset: 0,
        }
    }

    pub fn is_hole(&self) -> bool {
        self.uncompressed_size == 0
    }
}

pub const S_IFMT: u32 = 0o170000;
pub const S_IFDIR: u32 = 0o040000;
pub const S_IFREG: u32 = 0o100000;
pub const S_IFLNK: u32 = 0o120000;
pub const S_IFCHR: u32 = 0o020000;
pub const S_IFBLK: u32 = 0o060000;
pub const S_IFIFO: u32 = 0o010000;
pub const S_IFSOCK: u32 = 0o140000;

impl Inode {
    pub fn file_type(&self) -> u32 {
        self.mode & S_IFMT
    }
    pub fn is_dir(&self) -> bool {
        self.file_type() == S_IFDIR
    }
    pub fn children(&self) -> &[DirEntry] {
        match &self.kind {
            InodeKind::Dir(c) => c,
            _ => &[],
        }
    }
    pub fn chunks(&self) -> &[ChunkRef] {
        match &self.kind {
            InodeKind::File(c) => c,
            _ => &[],
        }
    }
    /// The name `inspect` and the manifest use for the type.
    pub fn type_name(&self) -> &'static str {
        match self.file_type() {
            S_IFDIR => "dir",
            S_IFREG => "file",
            S_IFLNK => "symlink",
            S_IFCHR => "chr",
            S_IFBLK => "blk",
            S_IFIFO => "fifo",
            S_IFSOCK => "sock",
            _ => "unknown",
        }
    }
}

impl Image {
    pub fn root(&self) -> &Inode {
        &self.inodes[ROOT]
    }

    pub fn chunk(&self, r: ChunkRef) -> Option<&ChunkInfo> {
        self.blobs
            .get(r.blob as usize)?
            .chunks
            .get(r.index as usize)
    }

    /// Looks up a path relative to the root (`a/b/c`, no leading slash needed).
    pub fn lookup(&self, path: &[u8]) -> Option<InodeId> {
        let mut cur = ROOT;
        for part in path
            .split(|&b| b == b'/')
            .filter(|p| !p.is_empty() && *p != b".")
        {
            let kids = self.inodes[cur].children();
            let i = kids
                .binary_search_by(|e| e.name.as_slice().cmp(part))
                .ok()?;
            cur = kids[i].inode;
        }
        Some(cur)
    }

    /// Every entry below the root as (path, inode), depth first, children in name order;
    /// a hard-linked inode appears once per name.
    pub fn walk(&self) -> Vec<(Vec<u8>, InodeId)> {
        let mut out = Vec::with_capacity(self.inodes.len());
        let mut stack: Vec<(Vec<u8>, InodeId)> = vec![(Vec::new(), ROOT)];
        while let Some((prefix, id)) = stack.pop() {
            for e in self.inodes[id].children().iter().rev() {
                let mut p = prefix.clone();
                if !p.is_empty() {
                    p.push(b'/');
                }
                p.extend_from_slice(&e.name);
                stack.push((p, e.inode));
            }
            if id != ROOT || !prefix.is_empty() {
                out.push((prefix, id));
            }
        }
        out
    }
}
