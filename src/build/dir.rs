//! A directory on the local file system as a build source.

use super::source::{BuildError, EntryKind, Source, SourceEntry, Visit};
use std::collections::HashMap;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

pub struct DirSource {
    root: PathBuf,
}

impl DirSource {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        DirSource { root: root.into() }
    }
}

impl Source for DirSource {
    fn for_each(&mut self, visit: &mut Visit<'_>) -> Result<(), BuildError> {
        let mut links: HashMap<(u64, u64), Vec<u8>> = HashMap::new();
        let mut stack: Vec<Vec<u8>> = vec![Vec::new()];
        while let Some(rel) = stack.pop() {
            let path = if rel.is_empty() {
                self.root.clone()
            } else {
                self.root.join(std::ffi::OsStr::from_bytes(&rel))
            };
            let md = std::fs::symlink_metadata(&path).map_err(|e| BuildError::io(&path, e))?;
            let ft = md.file_type();
            let mut entry = SourceEntry {
                path: rel.clone(),
                mode: md.mode(),
                uid: md.uid(),
                gid: md.gid(),
                mtime: md.mtime().max(0) as u64,
                mtime_nsec: md.mtime_nsec().clamp(0, 999_999_999) as u32,
                rdev: (libc::major(md.rdev()), libc::minor(md.rdev())),
                xattrs: read_xattrs(&path)?,
                kind: EntryKind::Special,
            };
            if ft.is_dir() {
                entry.kind = EntryKind::Dir;
                visit(entry, None)?;
                let mut names: Vec<Vec<u8>> = std::fs::read_dir(&path)
                    .map_err(|e| BuildError::io(&path, e))?
                    .map(|e| e.map(|e| e.file_name().as_bytes().to_vec()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| BuildError::io(&path, e))?;
                names.sort();
                for name in names.into_iter().rev() {
                    let mut child = rel.clone();
                    if !child.is_empty() {
                        child.push(b'/');
                    }
                    child.extend_from_slice(&name);
                    stack.push(child);
                }
            } else if ft.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| BuildError::io(&path, e))?;
                entry.kind = EntryKind::Symlink(target.as_os_str().as_bytes().to_vec());
                visit(entry, None)?;
            } else if ft.is_file() {
                if md.nlink() > 1 {
                    if let Some(first) = links.get(&(md.dev(), md.ino())) {
                        entry.kind = EntryKind::HardLink(first.clone());
                        visit(entry, None)?;
                        continue;
                    }
                    links.insert((md.dev(), md.ino()), rel.clone());
                }
                entry.kind = EntryKind::File { size: md.len() };
                let mut f = std::fs::File::open(&path).map_err(|e| BuildError::io(&path, e))?;
                visit(entry, Some(&mut f))?;
            } else {
                visit(entry, None)?;
            }
        }
        Ok(())
    }
}

/// All extended attributes of a path (not following symlinks), sorted by name.
fn read_xattrs(path: &Path) -> Result<crate::rafs::image::Xattrs, BuildError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| BuildError::BadEntry {
        path: path.display().to_string(),
        detail: "NUL in path".into(),
    })?;
    let err = |path: &Path| BuildError::io(path, std::io::Error::last_os_error());
    // SAFETY: c is a valid NUL-terminated string; buffers are sized from the previous call.
    let len = unsafe { libc::llistxattr(c.as_ptr(), std::ptr::null_mut(), 0) };
    if len < 0 {
        let e = std::io::Error::last_os_error();
        return match e.raw_os_error() {
            Some(libc::ENOTSUP) => Ok(Vec::new()),
            _ => Err(BuildError::io(path, e)),
        };
    }
    if len == 0 {
        return Ok(Vec::new());
    }
    let mut names = vec![0u8; len as usize];
    let len = unsafe {
        libc::llistxattr(
            c.as_ptr(),
            names.as_mut_ptr() as *mut libc::c_char,
            names.len(),
        )
    };
    if len < 0 {
        return Err(err(path));
    }
    names.truncate(len as usize);
    let mut out = Vec::new();
    for name in names.split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split on NUL");
        let size = unsafe { libc::lgetxattr(c.as_ptr(), cname.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(err(path));
        }
        let mut value = vec![0u8; size as usize];
        let size = unsafe {
            libc::lgetxattr(
                c.as_ptr(),
                cname.as_ptr(),
                value.as_mut_ptr() as *mut libc::c_void,
                value.len(),
            )
        };
        if size < 0 {
            return Err(err(path));
        }
        value.truncate(size as usize);
        out.push((name.to_vec(), value));
    }
    out.sort();
    Ok(out)
}
