//! A directory of blob files named by blob id.

use super::BlobBackend;
use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

pub struct LocalFs {
    dir: PathBuf,
    open: Mutex<HashMap<String, Arc<File>>>,
}

impl LocalFs {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LocalFs {
            dir: dir.into(),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn file(&self, blob_id: &str) -> std::io::Result<Arc<File>> {
        if blob_id.is_empty() || blob_id.contains('/') || blob_id.starts_with('.') {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("bad blob id {blob_id:?}"),
            ));
        }
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(f) = open.get(blob_id) {
            return Ok(f.clone());
        }
        let path = self.dir.join(blob_id);
        let f = Arc::new(
            File::open(&path)
                .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", path.display())))?,
        );
        open.insert(blob_id.to_string(), f.clone());
        Ok(f)
    }
}

impl BlobBackend for LocalFs {
    fn read_range(&self, blob_id: &str, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
        let f = self.file(blob_id)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn kind(&self) -> &'static str {
        "localfs"
    }

    fn remote(&self) -> bool {
        false
    }
}
