//! An OCI layer tar (plain, gzip or zstd) as a build source, read as a stream: nothing
//! is unpacked to disk, and paths that would escape the root are refused.

use super::source::{clean_path, BuildError, EntryKind, Source, SourceEntry, Visit};
use std::io::{BufRead, BufReader, Read};

pub struct TarSource<R: Read> {
    reader: Option<R>,
    name: String,
}

impl<R: Read> TarSource<R> {
    /// `name` is used in error messages (the file the stream comes from).
    pub fn new(reader: R, name: impl Into<String>) -> Self {
        TarSource {
            reader: Some(reader),
            name: name.into(),
        }
    }
}

/// Compression detected from the first bytes of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TarCompression {
    None,
    Gzip,
    Zstd,
}

pub fn sniff(head: &[u8]) -> TarCompression {
    if head.starts_with(&[0x1f, 0x8b]) {
        TarCompression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        TarCompression::Zstd
    } else {
        TarCompression::None
    }
}

impl<R: Read> Source for TarSource<R> {
    fn for_each(&mut self, visit: &mut Visit<'_>) -> Result<(), BuildError> {
        let reader = self
            .reader
            .take()
            .ok_or_else(|| BuildError::Option("tar source already read".into()))?;
        let mut buffered = BufReader::with_capacity(1 << 20, reader);
        let head = buffered
            .fill_buf()
            .map_err(|e| BuildError::io(&self.name, e))?
            .to_vec();
        let stream: Box<dyn Read> = match sniff(&head) {
            TarCompression::None => Box::new(buffered),
            TarCompression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buffered)),
            TarCompression::Zstd => Box::new(
                zstd::Decoder::with_buffer(buffered).map_err(|e| BuildError::io(&self.name, e))?,
            ),
        };
        let mut archive = tar::Archive::new(stream);
        let bad = |path: &str, detail: String| BuildError::BadTarEntry {
            path: path.to_string(),
            detail,
        };
        let entries = archive
            .entries()
            .map_err(|e| bad(&self.name, e.to_string()))?;
        for (seen, entry) in entries.enumerate() {
            let mut entry = match entry {
                Ok(e) => e,
                // Some writers (umoci) end the stream without the last entry's padding: every
                // entry has been read whole by then, so that is the end, not a truncation.
                Err(e) if seen > 0 && e.to_string() == "unexpected EOF during skip" => {
                    tracing::debug!(tar = %self.name, "tar ends without its final padding");
                    break;
                }
                Err(e) => return Err(bad(&self.name, format!("unreadable entry: {e}"))),
            };
            let raw_path = entry.path_bytes().into_owned();
            let shown = String::from_utf8_lossy(&raw_path).into_owned();
            let path = clean_path(&raw_path).map_err(|d| bad(&shown, d))?;
            // `/` itself is the root (umoci writes it so); any other absolute path is refused.
            if raw_path.starts_with(b"/") && !path.is_empty() {
                return Err(bad(&shown, "absolute path".into()));
            }
            let (xattrs, pax_mtime) = pax_fields(&mut entry).map_err(|e| bad(&shown, e))?;
            let h = entry.header();
            let kind_byte = h.entry_type();
            let num = |r: std::io::Result<u64>, what: &str| {
                r.map_err(|e| bad(&shown, format!("bad {what}: {e}")))
            };
            let mode = num(h.mode().map(|m| m as u64), "mode")? as u32 & 0o7777;
            let (mtime, mtime_nsec) = match pax_mtime {
                Some(t) => t,
                None => (num(h.mtime(), "mtime")?, 0),
            };
            let dev = |r: std::io::Result<Option<u32>>| r.ok().flatten().unwrap_or(0);
            let mut e = SourceEntry {
                path,
                mode,
                uid: num(h.uid(), "uid")?.min(u32::MAX as u64) as u32,
                gid: num(h.gid(), "gid")?.min(u32::MAX as u64) as u32,
                mtime,
                mtime_nsec,
                rdev: (dev(h.device_major()), dev(h.device_minor())),
                xattrs,
                kind: EntryKind::Special,
            };
            use crate::rafs::image::*;
            let link = || {
                entry
                    .link_name_bytes()
                    .map(|l| l.into_owned())
                    .ok_or_else(|| bad(&shown, "link without a target".into()))
            };
            match kind_byte {
                tar::EntryType::Directory => {
                    e.mode |= S_IFDIR;
                    e.kind = EntryKind::Dir;
                }
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    e.mode |= S_IFREG;
                    e.kind = EntryKind::File { size: entry.size() };
                }
                tar::EntryType::Symlink => {
                    e.mode |= S_IFLNK;
                    e.kind = EntryKind::Symlink(link()?);
                }
                tar::EntryType::Link => {
                    let target = clean_path(&link()?)
                        .map_err(|d| bad(&shown, format!("hard link target: {d}")))?;
                    e.mode |= S_IFREG;
                    e.kind = EntryKind::HardLink(target);
                }
                tar::EntryType::Char => e.mode |= S_IFCHR,
                tar::EntryType::Block => e.mode |= S_IFBLK,
                tar::EntryType::Fifo => e.mode |= S_IFIFO,
                tar::EntryType::XGlobalHeader => continue,
                other => return Err(bad(&shown, format!("unsupported entry type {other:?}"))),
            }
            if matches!(e.kind, EntryKind::File { .. }) {
                visit(e, Some(&mut entry))?;
            } else {
                visit(e, None)?;
            }
        }
        Ok(())
    }
}

type PaxFields = (Vec<(Vec<u8>, Vec<u8>)>, Option<(u64, u32)>);

/// Extended attributes (`SCHILY.xattr.*`) and a sub-second mtime from PAX headers.
fn pax_fields<R: Read>(entry: &mut tar::Entry<'_, R>) -> Result<PaxFields, String> {
    let mut xattrs = Vec::new();
    let mut mtime = None;
    if let Some(exts) = entry.pax_extensions().map_err(|e| e.to_string())? {
        for ext in exts {
            let ext = ext.map_err(|e| format!("bad PAX header: {e}"))?;
            let key = ext.key_bytes();
            if let Some(name) = key.strip_prefix(b"SCHILY.xattr.") {
                xattrs.push((name.to_vec(), ext.value_bytes().to_vec()));
            } else if key == b"mtime" {
                mtime = parse_pax_time(ext.value_bytes());
            }
        }
    }
    xattrs.sort();
    xattrs.dedup_by(|a, b| a.0 == b.0);
    Ok((xattrs, mtime))
}

fn parse_pax_time(v: &[u8]) -> Option<(u64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: i64 = secs.parse().ok()?;
    let mut nanos = String::from(frac);
    nanos.truncate(9);
    while nanos.len() < 9 {
        nanos.push('0');
    }
    Some((secs.max(0) as u64, nanos.parse().ok()?))
}
