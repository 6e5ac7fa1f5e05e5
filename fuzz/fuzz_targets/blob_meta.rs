//! Blob-side bytes from outside: the 4 KiB compression-context header, the chunk table
//! ("ci", v1 and v2) and the TOC. Every decoder must return Ok or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use warren::rafs::blobmeta::{
    decode_ci, encode_ci_v1, encode_ci_v2, BlobMetaHeader, TocEntry, CI_V1_SIZE, CI_V2_SIZE,
    HEADER_SIZE, TAR_HEADER_SIZE,
};
use warren::rafs::layout::BLOB_FEATURE_CHUNK_INFO_V2;

/// Decodes a ci table and, on success, checks that encoding the entries gives a table
/// that decodes to the same entries.
fn ci_roundtrip(table: &[u8], entries: usize, v2: bool) {
    let Ok(chunks) = decode_ci(table, entries, v2) else {
        return;
    };
    assert_eq!(chunks.len(), entries);
    let mut again = Vec::new();
    for c in &chunks {
        if v2 {
            encode_ci_v2(c, &mut again);
        } else {
            encode_ci_v1(c, &mut again);
        }
    }
    let size = if v2 { CI_V2_SIZE } else { CI_V1_SIZE };
    assert_eq!(again.len(), entries * size);
    assert_eq!(decode_ci(&again, entries, v2).unwrap(), chunks);
}

fn tocs(data: &[u8]) {
    let _ = TocEntry::decode_all(data);
    // A TOC is the tail of a blob, a whole number of 128-byte entries, often followed
    // by the 512-byte tar header that names it.
    for end in [
        data.len(),
        data.len().saturating_sub(TAR_HEADER_SIZE as usize),
    ] {
        let body = &data[..end];
        let _ = TocEntry::decode_all(&body[body.len() % 128..]);
    }
}

fuzz_target!(|data: &[u8]| {
    // The header as a blob ends with it, and at the start of the input.
    let hs = HEADER_SIZE as usize;
    if let Some(tail_start) = data.len().checked_sub(hs) {
        if let Ok(h) = BlobMetaHeader::decode(&data[tail_start..]) {
            assert_eq!(BlobMetaHeader::decode(&h.encode()).unwrap(), h);
            // The uncompressed ci table sits right before the header.
            let v2 = h.features & BLOB_FEATURE_CHUNK_INFO_V2 != 0;
            let len = usize::try_from(h.ci_uncompressed_size).unwrap_or(usize::MAX);
            if let Some(start) = tail_start.checked_sub(len) {
                ci_roundtrip(&data[start..tail_start], h.ci_entries as usize, v2);
            }
            let _ = decode_ci(&data[..tail_start], h.ci_entries as usize, v2);
        }
    }
    let _ = BlobMetaHeader::decode(data);

    // A ci table with the entry count and version from the first bytes of the input,
    // the count capped to the data length.
    if data.len() >= 5 {
        let v2 = data[0] & 1 != 0;
        let raw = u32::from_le_bytes(data[1..5].try_into().unwrap()) as usize;
        let table = &data[5..];
        let size = if v2 { CI_V2_SIZE } else { CI_V1_SIZE };
        ci_roundtrip(table, raw.min(table.len()), v2);
        // Counts around what the table holds, so whole tables decode too.
        ci_roundtrip(table, raw % (table.len() / size + 2), v2);
        // And uncapped, which must be refused without allocating for it.
        let _ = decode_ci(table, raw, v2);
    }

    tocs(data);
});
