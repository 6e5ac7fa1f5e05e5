//! Property test: random trees go through `build` and come back out of the reader with
//! the same entries, attributes and bytes.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::io::Read;
use warren::build::source::{BuildError, EntryKind, Source, SourceEntry, Visit};
use warren::build::{build, BuildOptions};
use warren::rafs::blobfile::BlobDir;
use warren::rafs::image::*;
use warren::rafs::reader::parse;
use warren::rafs::{Compressor, Digester};

struct MemSource(Vec<(SourceEntry, Vec<u8>)>);

impl Source for MemSource {
    fn for_each(&mut self, visit: &mut Visit<'_>) -> Result<(), BuildError> {
        for (e, data) in &self.0 {
            let mut r: &[u8] = data;
            let reader: Option<&mut dyn Read> = if matches!(e.kind, EntryKind::File { .. }) {
                Some(&mut r)
            } else {
                None
            };
            visit(e.clone(), reader)?;
        }
        Ok(())
    }
}

#[derive(Clone, Debug)]
enum Node {
    File(Vec<u8>),
    Symlink(Vec<u8>),
    Dir,
    Fifo,
}

fn name() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(prop_oneof![b'a'..=b'e', Just(b'.'), Just(0xc3u8)], 1..12)
        .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn content() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..300),
        // Several 4 KiB chunks with repeats, so dedup and contiguity both happen.
        (1usize..6, any::<u8>()).prop_map(|(n, b)| (0..n)
            .flat_map(|i| vec![b.wrapping_add((i % 2) as u8); 4096])
            .collect()),
        prop::collection::vec(any::<u8>(), 4000..9000),
    ]
}

fn node() -> impl Strategy<Value = Node> {
    prop_oneof![
        4 => content().prop_map(Node::File),
        1 => prop::collection::vec(b'a'..=b'z', 1..200).prop_map(Node::Symlink),
        2 => Just(Node::Dir),
        1 => Just(Node::Fifo),
    ]
}

/// Up to 3 levels of paths; a file under a name that is also a directory is dropped.
fn tree() -> impl Strategy<Value = BTreeMap<Vec<u8>, (Node, u32, u64, bool)>> {
    prop::collection::vec(
        (
            prop::collection::vec(name(), 1..4),
            node(),
            0u32..100_000,
            0u64..2_000_000_000,
            any::<bool>(),
        ),
        1..40,
    )
    .prop_map(|items| {
        let mut out: BTreeMap<Vec<u8>, (Node, u32, u64, bool)> = BTreeMap::new();
        for (parts, node, uid, mtime, xattr) in items {
            let path = parts.join(&b'/');
            let clash = out.keys().any(|k| {
                (k.starts_with(&path) && k.get(path.len()) == Some(&b'/'))
                    || (path.starts_with(k) && path.get(k.len()) == Some(&b'/'))
            });
            if !clash {
                out.insert(path, (node, uid, mtime, xattr));
            }
        }
        out
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]
    #[test]
    fn random_trees_round_trip(t in tree(), lz4 in any::<bool>()) {
        let mut entries = Vec::new();
        for (path, (node, uid, mtime, xattr)) in &t {
            let (mode, kind, data) = match node {
                Node::File(d) => (S_IFREG | 0o640, EntryKind::File { size: d.len() as u64 }, d.clone()),
                Node::Symlink(target) => (S_IFLNK | 0o777, EntryKind::Symlink(target.clone()), Vec::new()),
                Node::Dir => (S_IFDIR | 0o750, EntryKind::Dir, Vec::new()),
                Node::Fifo => (S_IFIFO | 0o600, EntryKind::Special, Vec::new()),
            };
            let xattrs = if *xattr { vec![(b"user.k".to_vec(), path.clone())] } else { Vec::new() };
            entries.push((SourceEntry { path: path.clone(), mode, uid: *uid, gid: uid / 2, mtime: *mtime, mtime_nsec: 0, rdev: (0, 0), xattrs, kind }, data));
        }
        let dir = tempfile::tempdir().unwrap();
        let opts = BuildOptions {
            chunk_size: 0x1000,
            compressor: if lz4 { Compressor::Lz4Block } else { Compressor::Zstd },
            digester: Digester::Blake3,
            blob_dir: dir.path().to_path_buf(),
            ..BuildOptions::default()
        };
        let report = build(&mut MemSource(entries), &opts, &|_| {}).unwrap();
        let image = parse(&report.bootstrap).unwrap().image;
        let blobs = BlobDir::new(dir.path());
        for (path, (node, uid, mtime, xattr)) in &t {
            let id = image.lookup(path).unwrap_or_else(|| panic!("{:?} missing", String::from_utf8_lossy(path)));
            let ino = &image.inodes[id];
            prop_assert_eq!(ino.uid, *uid);
            prop_assert_eq!(ino.gid, uid / 2);
            prop_assert_eq!(ino.mtime, *mtime);
            prop_assert_eq!(ino.xattrs.len(), usize::from(*xattr));
            match node {
                Node::File(d) => prop_assert_eq!(&blobs.read_file(&image, id).unwrap(), d),
                Node::Symlink(target) => prop_assert_eq!(&ino.kind, &InodeKind::Symlink(target.clone())),
                Node::Dir => prop_assert!(ino.is_dir()),
                Node::Fifo => prop_assert_eq!(ino.file_type(), S_IFIFO),
            }
        }
        // Nothing extra: every entry is one we put in, or a parent directory of one.
        for (path, _) in image.walk() {
            prop_assert!(t.keys().any(|k| k == &path || (k.starts_with(&path) && k.get(path.len()) == Some(&b'/'))));
        }
    }
}
