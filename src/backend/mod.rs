//! Origins of blob data: where a chunk comes from when no cache and no peer has it.
//! Each backend serves ranged reads of a blob by id; the registry and S3 backends plug in
//! beside [`localfs`].

pub mod localfs;
pub mod registry;
pub mod s3;

/// Ranged reads of blobs, by blob id.
pub trait BlobBackend: Send + Sync {
    /// `len` bytes at `offset` of blob `blob_id`; a short read is an error.
    fn read_range(&self, blob_id: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>>;
    /// [`BlobBackend::read_range`] handing the bytes to `sink` in order as they arrive
    /// (by default all at once, at the end). On an error `sink` may have had a part.
    fn read_range_streamed(
        &self,
        blob_id: &str,
        offset: u64,
        len: usize,
        sink: &mut dyn FnMut(&[u8]),
    ) -> std::io::Result<()> {
        sink(&self.read_range(blob_id, offset, len)?);
        Ok(())
    }
    /// A short name for logs and metrics (`localfs`, `registry`, `s3`).
    fn kind(&self) -> &'static str;
    /// Whether reads cross a network link whose bandwidth readers compete for (the fetch
    /// chain then gives readers' requests the link before read-ahead).
    fn remote(&self) -> bool {
        true
    }
}

/// Where new blobs go: the registry itself, or object storage (`convert --backend s3`).
pub trait BlobUpload: Send + Sync {
    /// Uploads the blob file at `path` under `blob_id` (the sha256 of its bytes), unless
    /// the destination already has it.
    fn upload(&self, blob_id: &str, path: &std::path::Path) -> std::io::Result<()>;
    fn kind(&self) -> &'static str;
}
