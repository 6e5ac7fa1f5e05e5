//! Inline extended attributes: a 12-byte header, then entries of a 4-byte head (name
//! length, prefix index, value size), the name without its prefix and the value, each
//! padded to 4 bytes. Shared xattrs are never written and refused on read.

use super::error::{RafsError, Result};
use super::layout::{align_up, xattr_ibody_size, Le};

/// EROFS xattr name prefixes by index.
pub const XATTR_PREFIXES: &[(u8, &[u8])] = &[
    (1, b"user."),
    (2, b"system.posix_acl_access"),
    (3, b"system.posix_acl_default"),
    (4, b"trusted."),
    (6, b"security."),
];

/// Splits a full xattr name into (prefix index, suffix); index 0 keeps the whole name.
pub fn xattr_split(name: &[u8]) -> (u8, &[u8]) {
    // Longest prefix first so the ACL names are not taken for plain prefixes.
    let mut best: Option<(u8, &[u8])> = None;
    for (idx, prefix) in XATTR_PREFIXES {
        if name.starts_with(prefix) && best.is_none_or(|(_, p)| prefix.len() > p.len()) {
            best = Some((*idx, prefix));
        }
    }
    match best {
        Some((idx, prefix)) => (idx, &name[prefix.len()..]),
        None => (0, name),
    }
}

pub fn xattr_prefix(index: u8) -> Option<&'static [u8]> {
    if index == 0 {
        return Some(b"");
    }
    XATTR_PREFIXES
        .iter()
        .find(|(i, _)| *i == index)
        .map(|(_, p)| *p)
}

pub(crate) fn read_xattrs(data: &[u8], off: u64, icount: u16) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let size = xattr_ibody_size(icount);
    if size == 0 {
        return Ok(Vec::new());
    }
    let r = Le::at(data, off, size)?;
    if size < 12 {
        return Err(RafsError::corrupt("xattrs", "area shorter than its header"));
    }
    if r.u8(4) != 0 {
        return Err(RafsError::unsupported("xattrs", "shared xattrs"));
    }
    let mut out = Vec::new();
    let mut pos = 12usize;
    while pos + 4 <= size as usize {
        let name_len = r.u8(pos) as usize;
        let index = r.u8(pos + 1);
        let value_len = r.u16(pos + 2) as usize;
        if name_len == 0 && index == 0 && value_len == 0 {
            break; // zero padding after the last entry
        }
        let end = pos + 4 + name_len + value_len;
        if end > size as usize {
            return Err(RafsError::corrupt(
                "xattrs",
                format!("entry at {pos} runs past the area"),
            ));
        }
        let prefix = xattr_prefix(index)
            .ok_or_else(|| RafsError::corrupt("xattrs", format!("name index {index}")))?;
        let mut name = prefix.to_vec();
        name.extend_from_slice(r.bytes(pos + 4, name_len));
        out.push((name, r.bytes(pos + 4 + name_len, value_len).to_vec()));
        pos = align_up(end as u64, 4) as usize;
    }
    out.sort();
    Ok(out)
}

/// Inline xattr area: 12-byte header, then 4-byte-aligned entries.
pub(crate) fn xattr_body(xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<Vec<u8>> {
    if xattrs.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = vec![0u8; 12];
    for (name, value) in xattrs {
        let (index, suffix) = xattr_split(name);
        if suffix.len() > 255 || value.len() > u16::MAX as usize {
            return Err(RafsError::unsupported(
                "xattr",
                format!("{} too long", String::from_utf8_lossy(name)),
            ));
        }
        out.push(suffix.len() as u8);
        out.push(index);
        out.extend_from_slice(&(value.len() as u16).to_le_bytes());
        out.extend_from_slice(suffix);
        out.extend_from_slice(value);
        out.resize(align_up(out.len() as u64, 4) as usize, 0);
    }
    if out.len() > 2048 {
        return Err(RafsError::unsupported(
            "xattrs",
            "more than 2 KiB of inline xattrs on one inode",
        ));
    }
    Ok(out)
}

pub(crate) fn xattr_icount(body: &[u8]) -> u16 {
    if body.is_empty() {
        0
    } else {
        ((body.len() - 12) / 4 + 1) as u16
    }
}
