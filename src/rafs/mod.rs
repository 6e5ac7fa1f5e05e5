//! RAFS v6: the Nydus image format, an EROFS file system whose file data lives in
//! separate, chunked and compressed blobs.
//!
//! [`layout`] holds the fixed-size on-disk records, [`blobmeta`] the blob-side chunk table
//! and TOC, [`image`] the in-memory tree both the reader and the writer work on.

pub mod blobfile;
pub mod blobmeta;
pub mod codec;
pub mod dirent;
pub mod error;
pub mod export;
pub mod image;
pub mod layout;
pub mod reader;
pub mod repair;
pub mod verify;
pub mod writer;
pub mod xattr;

pub use codec::{Compressor, Digester};
pub use error::RafsError;
pub use image::{
    BlobInfo, ChunkDigest, ChunkInfo, ChunkRef, DirEntry, Image, Inode, InodeId, InodeKind,
};
