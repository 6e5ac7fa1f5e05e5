//! Damaged bootstraps: `parse` returns Ok or an error that says what is wrong, and never
//! panics. Fixture bootstraps are cut short and bit-flipped; a few hand-made corruptions
//! check the error text.

mod common;
use common::fixtures;
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use warren::rafs::reader::{parse, Bootstrap};
use warren::rafs::RafsError;

/// The system allocator, noting the largest single request of each thread, so a test can
/// check that a size claimed by the input did not become an allocation.
struct TrackLargest;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

unsafe impl GlobalAlloc for TrackLargest {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOC: TrackLargest = TrackLargest;

/// Runs `f` and returns its result with the largest single allocation it made.
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(|l| l.get()))
}

/// Every fixture bootstrap: (name, bytes).
fn fixture_bootstraps() -> Vec<(String, Vec<u8>)> {
    let images = fixtures().join("images");
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&images)
        .unwrap()
        .flat_map(|e| {
            let dir = e.unwrap().path();
            ["image.boot", "lower.boot"].map(|f| dir.join(f))
        })
        .filter(|p| p.is_file())
        .collect();
    paths.sort();
    assert!(
        paths.len() >= 7,
        "expected the fixture bootstraps in {images:?}"
    );
    paths
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&images).unwrap().display().to_string();
            (name, std::fs::read(&p).unwrap())
        })
        .collect()
}

/// A v6 fixture to damage by hand.
fn v6_boot() -> Vec<u8> {
    std::fs::read(fixtures().join("images/v6-zstd-blake3/image.boot")).unwrap()
}

/// Parses, turning a panic into a test failure that names the input.
fn parse_no_panic(what: &str, data: &[u8]) -> Result<Bootstrap, RafsError> {
    catch_unwind(AssertUnwindSafe(|| parse(data)))
        .unwrap_or_else(|_| panic!("parse panicked on {what} ({} bytes)", data.len()))
}

fn err_text(what: &str, data: &[u8]) -> String {
    match parse_no_panic(what, data) {
        Ok(_) => panic!("{what}: parsed, expected an error"),
        Err(e) => e.to_string(),
    }
}

fn put_u16(b: &mut [u8], off: usize, v: u16) {
    b[off..off + 2].copy_from_slice(&v.to_le_bytes());
}
fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}
fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

const SB: usize = 1024;
const EXT: usize = 1152;

#[test]
fn truncated_bootstraps_are_errors() {
    for (name, boot) in fixture_bootstraps() {
        let len = boot.len();
        for cut in [0, 1023, 1100, 4096, len / 2, len - 1] {
            let what = format!("{name} cut to {cut}");
            let res = parse_no_panic(&what, &boot[..cut]);
            if cut < 1408 {
                // Not even both superblocks: the error says it ran out of bytes.
                let msg = res
                    .err()
                    .unwrap_or_else(|| panic!("{what}: parsed"))
                    .to_string();
                assert!(msg.contains("truncated"), "{what}: {msg}");
            }
        }
    }
}

#[test]
fn bit_flipped_bootstraps_never_panic() {
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        // xorshift64*: deterministic, so a failure names a reproducible position.
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        state.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut parsed = 0;
    let mut refused = 0;
    for (name, boot) in fixture_bootstraps() {
        for k in 0..300 {
            let r = next();
            // Half the flips land in the first 8 KiB (superblocks, device, blob and
            // prefetch tables, first inodes), half anywhere.
            let span = if k % 2 == 0 {
                boot.len().min(8192)
            } else {
                boot.len()
            };
            let pos = (r >> 8) as usize % span;
            let bit = (r & 7) as u8;
            let mut bad = boot.clone();
            bad[pos] ^= 1 << bit;
            match parse_no_panic(
                &format!("{name} with bit {bit} of byte {pos} flipped"),
                &bad,
            ) {
                Ok(_) => parsed += 1,
                Err(_) => refused += 1,
            }
        }
    }
    // Most flips hit names, sizes or padding; some must hit something the reader checks.
    assert!(
        parsed > 0 && refused > 0,
        "parsed {parsed}, refused {refused}"
    );
}

#[test]
fn zeroes_are_not_a_bootstrap() {
    let msg = err_text("8 KiB of zeroes", &[0u8; 8192]);
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn rafs_v5_bootstrap_is_refused_by_magic() {
    let boot = std::fs::read(fixtures().join("images/v5-zstd-blake3/image.boot")).unwrap();
    let msg = err_text("v5 bootstrap", &boot);
    assert!(msg.contains("magic"), "{msg}");
}

#[test]
fn errors_name_what_is_wrong() {
    let boot = v6_boot();
    parse(&boot).expect("the untouched fixture parses");

    let with = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = boot.clone();
        f(&mut b);
        b
    };
    let cases: Vec<(&str, Vec<u8>, &[&str])> = vec![
        (
            "cut inside the superblock",
            boot[..1100].to_vec(),
            &["truncated", "offset 1024", "have 1100"],
        ),
        (
            "wrong magic",
            with(&|b| put_u32(b, SB, 0x1234_5678)),
            &["superblock", "magic 0x12345678"],
        ),
        (
            "no RAFS v6 feature",
            with(&|b| put_u32(b, SB + 8, 0)),
            &["RAFS v6 feature"],
        ),
        (
            "512-byte blocks",
            with(&|b| b[SB + 12] = 9),
            &["block size", "2^9"],
        ),
        (
            "unknown incompat feature",
            with(&|b| put_u32(b, SB + 80, 0x4 | 0x8 | 0x100)),
            &["incompatible features 0x10c"],
        ),
        (
            "chunk size not a power of two",
            with(&|b| put_u32(b, EXT + 20, 0x3000)),
            &["extended superblock", "chunk size 0x3000"],
        ),
        (
            "blob table size not whole entries",
            with(&|b| put_u32(b, EXT + 16, 300)),
            &["blob table", "300", "multiple of 256"],
        ),
        (
            "chunk table size not whole records",
            with(&|b| put_u64(b, EXT + 32, 81)),
            &["chunk table", "81", "multiple of 80"],
        ),
        (
            "chunk table past the end",
            with(&|b| put_u64(b, EXT + 24, 1 << 40)),
            &["truncated", "offset 1099511627776"],
        ),
        (
            "tarfs mode",
            with(&|b| {
                let flags = u64::from_le_bytes(b[EXT..EXT + 8].try_into().unwrap());
                put_u64(b, EXT, flags | 0x200)
            }),
            &["tarfs"],
        ),
        (
            "one device too many",
            with(&|b| {
                let n = u16::from_le_bytes(b[SB + 86..SB + 88].try_into().unwrap());
                put_u16(b, SB + 86, n + 1)
            }),
            // The slot after the last is zeroes: no blob id.
            &["bad blob id"],
        ),
        (
            "root inode past the end",
            with(&|b| put_u32(b, SB + 40, 0x0fff_ffff)),
            &["inode nid", "past the end"],
        ),
    ];
    for (what, data, needles) in cases {
        let msg = err_text(what, &data);
        for n in needles {
            assert!(msg.contains(n), "{what}: {msg:?} does not mention {n:?}");
        }
    }
}

/// Byte offset of the root inode of a v6 bootstrap.
fn root_inode_offset(boot: &[u8]) -> usize {
    let root_nid = u16::from_le_bytes(boot[SB + 14..SB + 16].try_into().unwrap()) as usize;
    let meta_blkaddr = u32::from_le_bytes(boot[SB + 40..SB + 44].try_into().unwrap()) as usize;
    meta_blkaddr * 4096 + root_nid * 32
}

/// Offset of record `i` of the chunk table.
fn chunk_record_offset(boot: &[u8], i: usize) -> usize {
    let table = u64::from_le_bytes(boot[EXT + 24..EXT + 32].try_into().unwrap()) as usize;
    table + i * 80
}

/// Found by `cargo fuzz run bootstrap` (out of memory): one chunk record with index
/// 13481750 in a blob of 380 chunks made the reader fill 13 million empty slots, over
/// a gigabyte, for a 90 KB bootstrap.
#[test]
fn huge_chunk_index_is_refused_without_allocating_for_it() {
    let mut boot = v6_boot();
    let rec = chunk_record_offset(&boot, 0);
    put_u32(&mut boot, rec + 72, 13_481_750);
    let (res, largest) = largest_allocation(|| parse_no_panic("huge chunk index", &boot));
    let msg = res.expect_err("huge chunk index parsed").to_string();
    assert!(
        msg.contains("chunk table") && msg.contains("index 13481750"),
        "{msg}"
    );
    assert!(msg.contains("have no record"), "{msg}");
    assert!(largest < 256 << 20, "largest allocation {largest} bytes");
}

/// Holes in the chunk table are fine as long as they are few: a lower layer's chunks that
/// no file of this image uses any more.
#[test]
fn chunk_table_with_a_hole_still_parses() {
    let mut boot = v6_boot();
    // Move the record with the highest index of the blob 1000 slots further out; no file
    // uses that index then, so the hole and the new slot are never read.
    let n = u64::from_le_bytes(boot[EXT + 32..EXT + 40].try_into().unwrap()) as usize / 80;
    let top = (0..n)
        .max_by_key(|&i| {
            let o = chunk_record_offset(&boot, i) + 72;
            u32::from_le_bytes(boot[o..o + 4].try_into().unwrap())
        })
        .unwrap();
    let o = chunk_record_offset(&boot, top) + 72;
    let idx = u32::from_le_bytes(boot[o..o + 4].try_into().unwrap());
    put_u32(&mut boot, o, idx + 1000);
    match parse_no_panic("chunk table with a hole", &boot) {
        Ok(bs) => assert_eq!(bs.image.blobs[0].chunks.len(), idx as usize + 1001),
        // The file that used the moved chunk now names a missing one.
        Err(e) => assert!(e.to_string().contains("not in the chunk table"), "{e}"),
    }
}

/// A flat directory whose size claims 3.75 GiB made the reader reserve that much before
/// finding the data missing (seen reading the code while fuzzing). The directory size
/// budget now refuses it first; `read_data` no longer reserves a claimed size either.
#[test]
fn huge_flat_inode_is_refused_without_allocating_for_it() {
    let mut boot = v6_boot();
    let root = root_inode_offset(&boot);
    assert_eq!(boot[root] & 1, 1, "the fixture's root inode is extended");
    put_u16(&mut boot, root, 1); // extended, FLAT_PLAIN
    put_u64(&mut boot, root + 8, 0xf000_0000);
    let (res, largest) = largest_allocation(|| parse_no_panic("huge flat directory", &boot));
    let msg = res.expect_err("huge directory parsed").to_string();
    assert!(
        msg.contains("inode nid") && msg.contains("4026531840"),
        "{msg}"
    );
    assert!(largest < 64 << 20, "largest allocation {largest} bytes");
}

/// A blob table size that claims 16 million entries must not become a reservation.
#[test]
fn huge_blob_table_is_refused_without_allocating_for_it() {
    let mut boot = v6_boot();
    put_u32(&mut boot, EXT + 16, 0xffff_ff00);
    let (res, largest) = largest_allocation(|| parse_no_panic("huge blob table", &boot));
    let msg = res.expect_err("huge blob table parsed").to_string();
    assert!(msg.contains("truncated"), "{msg}");
    assert!(largest < 64 << 20, "largest allocation {largest} bytes");
}

/// Directories whose inodes point at one shared set of blocks: each lists every entry of
/// the first. Sizes stay within the file, but the tree grows with the product of the
/// directory and entry counts (2,000 x 7,000 from 360 KB took 1.7 GB); refused.
#[test]
fn directories_sharing_blocks_are_refused() {
    use warren::rafs::image::{DirEntry, Image, Inode, InodeKind, S_IFDIR, S_IFREG};
    use warren::rafs::writer::write_bootstrap;
    use warren::rafs::{Compressor, Digester};

    let inode = |mode: u32, kind: InodeKind| Inode {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        nlink: 1,
        size: 0,
        rdev: (0, 0),
        xattrs: vec![],
        kind,
    };
    // Root with 20 directories; the first holds 1,000 names of one (hard-linked) file.
    let mut inodes = vec![
        inode(S_IFDIR | 0o755, InodeKind::Dir(vec![])),
        inode(S_IFREG | 0o644, InodeKind::File(vec![])),
    ];
    let mut dirs = vec![];
    for i in 0..20 {
        let kids = if i == 0 {
            (0..1000)
                .map(|j| DirEntry {
                    name: format!("f{j:04}").into_bytes(),
                    inode: 1,
                })
                .collect()
        } else {
            vec![]
        };
        dirs.push(DirEntry {
            name: format!("d{i:02}").into_bytes(),
            inode: inodes.len(),
        });
        inodes.push(inode(S_IFDIR | 0o755, InodeKind::Dir(kids)));
    }
    inodes[0].kind = InodeKind::Dir(dirs);
    let image = Image {
        chunk_size: 1 << 20,
        compressor: Compressor::None,
        digester: Digester::Blake3,
        blobs: vec![],
        inodes,
        prefetch: vec![],
    };
    let mut boot = write_bootstrap(&image).unwrap();
    let bs = parse(&boot).expect("the written bootstrap parses");

    // Point d01..d19 at the whole blocks of d00, as plain (not inline) directories.
    let meta = bs.super_block.meta_blkaddr as usize * 4096;
    let at = |id: usize| meta + bs.nids[id] as usize * 32;
    let kids = bs.image.root().children();
    let d0 = at(kids[0].inode);
    let size = u64::from_le_bytes(boot[d0 + 8..d0 + 16].try_into().unwrap()) / 4096 * 4096;
    assert!(size >= 4096, "d00 has whole blocks");
    let blkaddr = u32::from_le_bytes(boot[d0 + 16..d0 + 20].try_into().unwrap());
    for e in &kids[1..] {
        let o = at(e.inode);
        assert_eq!(boot[o] & 1, 1, "extended inode");
        put_u16(&mut boot, o, 1); // extended, FLAT_PLAIN
        put_u64(&mut boot, o + 8, size);
        put_u32(&mut boot, o + 16, blkaddr);
    }
    let msg = err_text("directories sharing blocks", &boot);
    assert!(msg.contains("directory sizes add up to"), "{msg}");
}

/// The reader's limit on chunk-table holes (`MAX_CHUNK_HOLES`).
const MAX_HOLES: usize = 1 << 20;

/// A one-blob image whose chunk list is a chunk, `holes` free slots, and a second chunk;
/// files `a` and `b` use the two chunks. Written by warren's writer, with the first
/// chunk record then repeated once in the padding after the table.
fn bootstrap_with_holes_and_a_duplicate(holes: usize) -> Vec<u8> {
    use warren::rafs::image::{
        BlobInfo, BlobMetaLocation, ChunkDigest, ChunkInfo, ChunkRef, DirEntry, Image, Inode,
        InodeKind, S_IFDIR, S_IFREG,
    };
    use warren::rafs::writer::write_bootstrap;
    use warren::rafs::{Compressor, Digester};

    let chunk = |n: u8| ChunkInfo {
        digest: ChunkDigest([n; 32]),
        compressed_offset: (n as u64 - 1) * 4096,
        compressed_size: 4096,
        uncompressed_offset: (n as u64 - 1) * 4096,
        uncompressed_size: 4096,
        compressed: false,
        crc32: None,
        file_offset: 0,
    };
    let mut chunks = vec![chunk(1)];
    chunks.resize(holes + 1, ChunkInfo::hole());
    chunks.push(chunk(2));
    let inode = |mode: u32, size: u64, kind: InodeKind| Inode {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        nlink: 1,
        size,
        rdev: (0, 0),
        xattrs: vec![],
        kind,
    };
    let file = |index: usize| {
        let refs = vec![ChunkRef {
            blob: 0,
            index: index as u32,
        }];
        inode(S_IFREG | 0o644, 4096, InodeKind::File(refs))
    };
    let root = InodeKind::Dir(vec![
        DirEntry {
            name: b"a".to_vec(),
            inode: 1,
        },
        DirEntry {
            name: b"b".to_vec(),
            inode: 2,
        },
    ]);
    let image = Image {
        chunk_size: 4096,
        compressor: Compressor::None,
        digester: Digester::Blake3,
        blobs: vec![BlobInfo {
            blob_id: "ab".repeat(32),
            chunk_size: 4096,
            compressor: Compressor::None,
            digester: Digester::Blake3,
            features: 0,
            compressed_size: 8192,
            uncompressed_size: 8192,
            meta: BlobMetaLocation::default(),
            toc_size: 0,
            toc_digest: [0; 32],
            chunks,
        }],
        inodes: vec![inode(S_IFDIR | 0o755, 0, root), file(0), file(holes + 1)],
        prefetch: vec![],
    };
    let mut boot = write_bootstrap(&image).unwrap();
    let table = u64::from_le_bytes(boot[EXT + 24..EXT + 32].try_into().unwrap()) as usize;
    let size = u64::from_le_bytes(boot[EXT + 32..EXT + 40].try_into().unwrap()) as usize;
    assert_eq!(size, 160, "two chunk records");
    assert!(table + size + 80 <= boot.len(), "room after the table");
    boot.copy_within(table..table + 80, table + size);
    put_u64(&mut boot, EXT + 32, size as u64 + 80);
    boot
}

/// Found by `cargo fuzz run bootstrap`: the hole limit was "slots <= records + 2^20",
/// so identical repeated records bought extra holes. The reader accepted such a table,
/// the writer wrote it back without the repeats, and the reader refused its own
/// output. Holes are now counted as such, whatever repeats or order the table has.
#[test]
fn chunk_hole_limit_counts_holes_not_records() {
    let boot = bootstrap_with_holes_and_a_duplicate(MAX_HOLES);
    let bs = parse_no_panic("2^20 holes", &boot).expect("2^20 holes are allowed");
    assert_eq!(bs.image.blobs[0].chunks.len(), MAX_HOLES + 2);
    let again = warren::rafs::writer::write_bootstrap(&bs.image).unwrap();
    parse_no_panic("2^20 holes, written again", &again).expect("the rewrite parses");

    let boot = bootstrap_with_holes_and_a_duplicate(MAX_HOLES + 1);
    let msg = err_text("2^20 + 1 holes and a repeated record", &boot);
    assert!(
        msg.contains("1048577 chunks below index 1048578 have no record"),
        "{msg}"
    );
}

/// Inline xattr areas that overlap the inodes after them: each fifo claims 64 KiB of
/// xattrs, whose one entry's value is the bytes that follow. Every inode copied up to
/// 256 KiB that way, so memory grew with inodes x area; refused now (found reading the
/// code while fuzzing).
#[test]
fn overlapping_xattr_areas_are_refused() {
    use warren::rafs::image::{DirEntry, Image, Inode, InodeKind, S_IFDIR, S_IFIFO};
    use warren::rafs::writer::write_bootstrap;
    use warren::rafs::{Compressor, Digester};

    let inode = |mode: u32, kind: InodeKind| Inode {
        mode,
        uid: 0,
        gid: 0,
        mtime: 0,
        mtime_nsec: 0,
        nlink: 1,
        size: 0,
        rdev: (0, 0),
        xattrs: vec![],
        kind,
    };
    let fifos: Vec<DirEntry> = (1..=40)
        .map(|i| DirEntry {
            name: format!("f{i:02}").into_bytes(),
            inode: i,
        })
        .collect();
    let mut inodes = vec![inode(S_IFDIR | 0o755, InodeKind::Dir(fifos))];
    // Permission bits 0: the mode's low byte is the "shared xattr count" of the area
    // that starts at this inode, and must be 0.
    inodes.extend((0..40).map(|_| inode(S_IFIFO, InodeKind::Special)));
    let image = Image {
        chunk_size: 1 << 20,
        compressor: Compressor::None,
        digester: Digester::Blake3,
        blobs: vec![],
        inodes,
        prefetch: vec![],
    };
    let mut boot = write_bootstrap(&image).unwrap();
    let bs = parse(&boot).expect("the written bootstrap parses");
    // Room for the areas to stay inside the file.
    boot.resize(boot.len() + (128 << 10), 0);
    let meta = bs.super_block.meta_blkaddr as usize * 4096;
    for e in bs.image.root().children() {
        let o = meta + bs.nids[e.inode] as usize * 32;
        assert_eq!(boot[o] & 1, 1, "extended inode");
        // 16386 slots: a 65552-byte area. Its first entry, 12 bytes into the next
        // inode, is the top of that inode's size: no name, a 65535-byte value.
        put_u16(&mut boot, o + 2, 16386);
        put_u64(&mut boot, o + 8, 0xffff_0000_0000_0000);
    }
    let msg = err_text("overlapping xattr areas", &boot);
    assert!(msg.contains("xattr areas add up to"), "{msg}");
}
