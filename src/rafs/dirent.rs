//! Directory blocks: per 4 KiB block, an array of 12-byte dirents (nid, name offset, file
//! type) followed by the names, sorted by name bytes (`.` and `..` included), so lookups
//! can binary-search a block.

use super::error::Result;
use super::image::*;
use super::layout::{Le, BLOCK_SIZE, DIRENT_SIZE};

/// Splits directory data into (name, nid, file type) entries, block by block.
pub fn parse_dir_blocks(data: &[u8]) -> std::result::Result<Vec<(Vec<u8>, u64, u8)>, String> {
    let mut out = Vec::new();
    for (b, block) in data.chunks(BLOCK_SIZE as usize).enumerate() {
        if block.len() < DIRENT_SIZE as usize {
            return Err(format!("directory block {b} of {} bytes", block.len()));
        }
        let r = Le::at(block, 0, block.len() as u64).map_err(|e| e.to_string())?;
        let first = r.u16(8) as usize;
        if first % DIRENT_SIZE as usize != 0 || first == 0 || first > block.len() {
            return Err(format!("directory block {b}: first name offset {first}"));
        }
        let n = first / DIRENT_SIZE as usize;
        for k in 0..n {
            let nid = r.u64(k * 12);
            let start = r.u16(k * 12 + 8) as usize;
            let ftype = r.u8(k * 12 + 10);
            let end = if k + 1 < n {
                r.u16((k + 1) * 12 + 8) as usize
            } else {
                block.len()
            };
            if start < first || end < start || end > block.len() {
                return Err(format!(
                    "directory block {b}: entry {k} name at {start}..{end}"
                ));
            }
            let mut name = &block[start..end];
            if k + 1 == n {
                let len = name.iter().position(|&c| c == 0).unwrap_or(name.len());
                name = &name[..len];
            }
            if name.is_empty() || name.len() > 255 || name.contains(&b'/') || name.contains(&0) {
                return Err(format!(
                    "directory block {b}: bad name {:?}",
                    String::from_utf8_lossy(name)
                ));
            }
            out.push((name.to_vec(), nid, ftype));
        }
    }
    Ok(out)
}

/// Sorted entries (with `.` and `..`) packed into blocks of 12-byte dirents plus names.
/// Nids are written as the child's inode id for now; [`fill_nids`] swaps them for nids.
pub(crate) fn dir_data(
    image: &Image,
    id: InodeId,
    children: &[DirEntry],
    parent: InodeId,
) -> Result<Vec<u8>> {
    let mut entries: Vec<(&[u8], InodeId)> = Vec::with_capacity(children.len() + 2);
    entries.push((b".", id));
    entries.push((b"..", parent));
    for c in children {
        entries.push((&c.name, c.inode));
    }
    entries.sort_by(|a, b| a.0.cmp(b.0));
    let mut out = Vec::new();
    let mut i = 0;
    while i < entries.len() {
        let mut n = 0;
        let mut used = 0;
        while i + n < entries.len()
            && used + DIRENT_SIZE as usize + entries[i + n].0.len() <= BLOCK_SIZE as usize
        {
            used += DIRENT_SIZE as usize + entries[i + n].0.len();
            n += 1;
        }
        let block = &entries[i..i + n];
        let mut nameoff = n * DIRENT_SIZE as usize;
        let start = out.len();
        for (name, child) in block {
            out.extend_from_slice(&(*child as u64).to_le_bytes());
            out.extend_from_slice(&(nameoff as u16).to_le_bytes());
            out.push(erofs_file_type(image.inodes[*child].file_type()));
            out.push(0);
            nameoff += name.len();
        }
        for (name, _) in block {
            out.extend_from_slice(name);
        }
        i += n;
        if i < entries.len() {
            out.resize(start + BLOCK_SIZE as usize, 0);
        }
    }
    Ok(out)
}

/// Rewrites the placeholder ids in directory blocks with the placed nids.
pub(crate) fn fill_nids(bytes: &[u8], nid: &dyn Fn(InodeId) -> u64) -> Vec<u8> {
    let mut out = bytes.to_vec();
    for block in out.chunks_mut(BLOCK_SIZE as usize) {
        if block.len() < DIRENT_SIZE as usize {
            continue;
        }
        let n = u16::from_le_bytes([block[8], block[9]]) as usize / DIRENT_SIZE as usize;
        for k in 0..n {
            let o = k * DIRENT_SIZE as usize;
            let id = u64::from_le_bytes(block[o..o + 8].try_into().unwrap()) as InodeId;
            block[o..o + 8].copy_from_slice(&nid(id).to_le_bytes());
        }
    }
    out
}

pub(crate) fn erofs_file_type(t: u32) -> u8 {
    match t {
        S_IFREG => 1,
        S_IFDIR => 2,
        S_IFCHR => 3,
        S_IFBLK => 4,
        S_IFIFO => 5,
        S_IFSOCK => 6,
        S_IFLNK => 7,
        _ => 0,
    }
}
