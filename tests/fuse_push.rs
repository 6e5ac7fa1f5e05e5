//! Read-ahead pushed into the page cache: a scan of a real root file system through the
//! kernel gets every byte right, and most files cost no FUSE read at all; with pushing off,
//! every file is read through the node. Needs root and /dev/fuse.

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warren::api::metrics::Metrics;
use warren::backend::localfs::LocalFs;
use warren::fetch::FetchOptions;
use warren::fs::{open_image, ImageMount, MountOptions};
use warren::store::{Store, StoreOptions};

/// Regular files under `root`, depth first in name order (the order a scan like `tar` or
/// `cp -r` reads them, and the order the builder lays them out).
fn files_in_order(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) {
    let mut names: Vec<_> = std::fs::read_dir(root.join(rel))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    for name in names {
        let rel = rel.join(name);
        let md = std::fs::symlink_metadata(root.join(&rel)).unwrap();
        if md.is_dir() {
            files_in_order(root, &rel, out);
        } else if md.is_file() {
            out.push(rel);
        }
    }
}

struct Scan {
    files: usize,
    fuse_reads: u64,
    pushed: u64,
}

/// Mounts `boot` with a fresh store, walks it like `tar` would (a directory listed, then
/// its files read) and checks every file's bytes against `source`.
fn scan(boot: &Path, blobs: &Path, source: &Path, push: bool) -> Scan {
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let metrics = Metrics::new();
    let store = Store::open(&dir.path().join("cache"), &StoreOptions::default()).unwrap();
    let chain = open_image(
        boot,
        Arc::new(LocalFs::new(blobs)),
        Arc::new(store),
        FetchOptions::default(),
        metrics.clone(),
    )
    .unwrap();
    let opts = MountOptions {
        push_read_ahead: push,
        ..MountOptions::default()
    };
    let mount = ImageMount::mount(&mnt, chain, &opts).unwrap();
    let mut files = Vec::new();
    files_in_order(&mnt, Path::new(""), &mut files);
    for rel in &files {
        let got = std::fs::read(mnt.join(rel)).unwrap();
        let want = std::fs::read(source.join(rel)).unwrap();
        assert!(got == want, "{} differs through the mount", rel.display());
    }
    let scan = Scan {
        files: files.len(),
        fuse_reads: metrics.fuse_ops.with_label_values(&["read"]).get(),
        pushed: metrics.pushed_bytes.get(),
    };
    mount.unmount().unwrap();
    scan
}

/// How many times the scan with pushing is tried: on a loaded machine (CI runs tests side
/// by side on two cores) the reader can outrun the pusher for a whole scan, which says
/// nothing about whether pushing works.
const PUSH_TRIES: usize = 3;

#[test]
fn a_scan_finds_most_files_already_in_the_page_cache() {
    let rootfs = rootfs::debian_rootfs();
    let work = tempfile::tempdir().unwrap();
    let (boot, blobs) = create_image(&rootfs, work.path());

    let asked = scan(&boot, &blobs, &rootfs, false);
    assert_eq!(asked.pushed, 0);
    assert!(
        asked.fuse_reads >= asked.files as u64,
        "{} FUSE reads for {} files without pushing",
        asked.fuse_reads,
        asked.files
    );

    // Pushing must spare at least a quarter of the reads (unloaded: about two thirds).
    let mut tries = Vec::new();
    for _ in 0..PUSH_TRIES {
        let pushed = scan(&boot, &blobs, &rootfs, true);
        assert!(pushed.pushed > 0, "nothing was pushed into the page cache");
        eprintln!(
            "{} files: {} FUSE reads and {} bytes pushed with pushing on, {} reads with it off",
            pushed.files, pushed.fuse_reads, pushed.pushed, asked.fuse_reads
        );
        tries.push(pushed.fuse_reads);
        if pushed.fuse_reads * 4 < asked.fuse_reads * 3 {
            return;
        }
    }
    panic!(
        "FUSE reads with pushing {:?} against {} without: the scan's read-ahead did not reach the page cache",
        tries, asked.fuse_reads
    );
}
