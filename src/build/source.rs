//! What a build reads: a stream of entries with their metadata and, for regular files,
//! their bytes. Directories and tars both produce it; the order does not matter, the
//! builder sorts everything so the output is the same whatever order entries came in.

use std::io::Read;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceEntry {
    /// Relative path, `/`-separated, without `.` or `..` components; empty for the root.
    pub path: Vec<u8>,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: u64,
    pub mtime_nsec: u32,
    pub rdev: (u32, u32),
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub kind: EntryKind,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    /// A regular file of `size` bytes; its data comes with the entry.
    File {
        size: u64,
    },
    Symlink(Vec<u8>),
    /// Another name for the file at this (relative) path, seen earlier in the same source.
    HardLink(Vec<u8>),
    /// Device node, fifo or socket: everything is in the mode and rdev.
    Special,
}

/// A source of entries. `visit` is called once per entry; a file's data reader must be
/// read to the end (exactly `size` bytes) before the next call.
/// Called once per entry with the file's data, if any.
pub type Visit<'a> = dyn FnMut(SourceEntry, Option<&mut dyn Read>) -> Result<(), BuildError> + 'a;

pub trait Source {
    fn for_each(&mut self, visit: &mut Visit<'_>) -> Result<(), BuildError>;
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("{path}: {err}")]
    Io { path: String, err: std::io::Error },
    #[error("tar entry {path:?}: {detail}")]
    BadTarEntry { path: String, detail: String },
    #[error("{path}: hard link to {target:?}, which is not in this layer")]
    DanglingHardLink { path: String, target: String },
    #[error("{path}: {detail}")]
    BadEntry { path: String, detail: String },
    #[error("invalid option: {0}")]
    Option(String),
    #[error(transparent)]
    Rafs(#[from] crate::rafs::RafsError),
}

impl BuildError {
    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        BuildError::Io {
            path: path.as_ref().display().to_string(),
            err: source,
        }
    }
}

/// Normalizes a path from a source: strips `./` and leading `/`, refuses `..` and empty
/// components that would let an entry escape the image root.
pub fn clean_path(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out: Vec<u8> = Vec::with_capacity(raw.len());
    for part in raw.split(|&b| b == b'/') {
        match part {
            b"" | b"." => continue,
            b".." => return Err("path contains '..'".into()),
            p if p.len() > 255 => return Err("name longer than 255 bytes".into()),
            p if p.contains(&0) => return Err("name contains NUL".into()),
            p => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(p);
            }
        }
    }
    Ok(out)
}

pub fn display(path: &[u8]) -> String {
    if path.is_empty() {
        "/".into()
    } else {
        String::from_utf8_lossy(path).into_owned()
    }
}
