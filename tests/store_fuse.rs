//! The chunk store as the first tier of the fetch chain, through real kernel FUSE mounts
//! (root and /dev/fuse needed): two images sharing most chunks, restarts, the quota, and
//! flipped bytes in a data file; plus the `warren store` commands on the result.

mod common;
mod store_support;

use common::*;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use store_support::*;
use warren::fetch::cache::ChunkKey;
use warren::fs::MountOptions;
use warren::store::{Store, StoreOptions};

fn store_opts(quota: u64) -> StoreOptions {
    StoreOptions {
        quota_bytes: Some(quota),
        data_file_bytes: 4 << 20,
        ..StoreOptions::default()
    }
}

/// The fixture tree, and a copy with a few files changed, added and removed.
fn two_trees(work: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let a = work.join("a");
    let b = work.join("b");
    extract_tree(&a);
    let st = std::process::Command::new("cp")
        .args(["-a"])
        .arg(&a)
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    std::fs::write(b.join("files/size-4097"), noise(1, 4097)).unwrap();
    // One 64 KiB chunk in the middle of a big file changes; the others stay shared.
    let big = b.join("files/random-1.5MiB.bin");
    let f = std::fs::OpenOptions::new().write(true).open(&big).unwrap();
    f.write_all_at(&noise(2, 1000), 700_000).unwrap();
    std::fs::write(b.join("files/added-300k.bin"), noise(3, 300_000)).unwrap();
    std::fs::write(b.join("added.txt"), b"a file only the second image has\n").unwrap();
    std::fs::remove_file(b.join("files/zeros-2MiB")).unwrap();
    (a, b)
}

#[test]
fn a_second_image_fetches_only_the_chunks_it_does_not_share() {
    let work = tempfile::tempdir().unwrap();
    let (a_src, b_src) = two_trees(work.path());
    let a = build(&a_src, &work.path().join("img-a"));
    let b = build(&b_src, &work.path().join("img-b"));
    let (ca, cb) = (image_chunks(&a.boot), image_chunks(&b.boot));
    let unshared: u64 = cb
        .iter()
        .filter(|(d, _)| !ca.contains_key(d))
        .map(|(_, s)| s)
        .sum();
    let b_total: u64 = cb.values().sum();
    assert!(
        unshared > 0 && unshared * 5 < b_total,
        "{unshared} of {b_total}"
    );
    let store_dir = work.path().join("store");
    let store = Arc::new(Store::open(&store_dir, &store_opts(1 << 30)).unwrap());

    let m = InMount::new(&a, store.clone(), no_prefetch());
    assert_eq!(file_hashes(m.root()), file_hashes(&a_src));
    assert_eq!(m.origin_bytes(), ca.values().sum::<u64>());
    drop(m);
    store.flush();

    let m = InMount::new(&b, store.clone(), no_prefetch());
    assert_eq!(file_hashes(m.root()), file_hashes(&b_src));
    assert_eq!(
        m.origin_bytes(),
        unshared,
        "the second image fetched more than its own chunks from the origin"
    );
    assert_eq!(m.store_bytes(), b_total - unshared);
    drop(m);
    store.flush();
    let all = ca
        .keys()
        .chain(cb.keys())
        .collect::<std::collections::HashSet<_>>();
    assert_eq!(
        store.stats().chunks,
        all.len() as u64,
        "a shared chunk stored twice"
    );

    // A restarted node serves both images without going to the origin.
    drop(store);
    let store = Arc::new(Store::open(&store_dir, &store_opts(1 << 30)).unwrap());
    for (built, src) in [(&a, &a_src), (&b, &b_src)] {
        let m = InMount::new(built, store.clone(), no_prefetch());
        assert_eq!(file_hashes(m.root()), file_hashes(src));
        assert_eq!(m.origin_bytes(), 0, "refetched after a restart");
    }
}

#[test]
fn the_store_stays_under_its_quota_and_reads_stay_right() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    extract_tree(&src);
    let img = build(&src, &work.path().join("img"));
    let want = file_hashes(&src);
    let quota = 3 << 20;
    let store = Arc::new(Store::open(&work.path().join("store"), &store_opts(quota)).unwrap());
    let high = store.limits().high_water_bytes;
    // Sample the store's size all along, not just at the end.
    let (stop, max) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicU64::new(0)),
    );
    let sampler = {
        let (store, stop, max) = (store.clone(), stop.clone(), max.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                max.fetch_max(store.stats().bytes, Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        })
    };
    // The prefetch set (this file) is protected: evicted only after everything else.
    let protected = "/files/random-1.5MiB.bin";
    let opts = MountOptions {
        prefetch_files: vec![protected.into()],
        ..no_prefetch()
    };
    for round in 0..3 {
        let m = InMount::new(&img, store.clone(), opts.clone());
        assert_eq!(file_hashes(m.root()), want, "round {round}");
        store.flush();
        let image = m.mount.chain().image().clone();
        let id = image.lookup(&protected.as_bytes()[1..]).unwrap();
        for &c in image.inodes[id].chunks() {
            let key = ChunkKey::new(image.digester, image.chunk(c).unwrap().digest);
            assert!(
                store.contains(&key),
                "round {round}: a protected chunk was evicted"
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    let s = store.stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(
        max.load(Ordering::Relaxed) <= high,
        "peak {} over {high}",
        max.load(Ordering::Relaxed)
    );
    assert!(s.bytes <= high, "{s:?}");
    // Evicted bytes went back to the disk: data files hold about what is live.
    let data: u64 = std::fs::read_dir(work.path().join("store/data"))
        .unwrap()
        .map(|e| std::os::unix::fs::MetadataExt::blocks(&e.unwrap().metadata().unwrap()) * 512)
        .sum();
    assert!(
        data <= s.bytes + s.chunks * 8192,
        "{data} on disk for {s:?}"
    );
}

#[test]
fn flipped_bytes_in_a_data_file_are_refetched_and_counted() {
    let work = tempfile::tempdir().unwrap();
    let src = work.path().join("tree");
    extract_tree(&src);
    let img = build(&src, &work.path().join("img"));
    let want = file_hashes(&src);
    let store_dir = work.path().join("store");
    let store = Arc::new(Store::open(&store_dir, &store_opts(1 << 30)).unwrap());
    let m = InMount::new(&img, store.clone(), no_prefetch());
    assert_eq!(file_hashes(m.root()), want);
    drop(m);
    store.flush();

    // Flip one byte in five chunks of different files.
    let image = warren::rafs::reader::read_bootstrap_file(&img.boot)
        .unwrap()
        .image;
    let mut flipped = Vec::new();
    for path in [
        "files/random-1.5MiB.bin",
        "files/text-compressible.txt",
        "files/one-chunk-exact.bin",
        "files/size-4097",
        "files/repeat-3x1MiB.bin",
    ] {
        let id = image.lookup(path.as_bytes()).unwrap();
        let info = image.chunk(image.inodes[id].chunks()[0]).unwrap();
        let key = ChunkKey::new(image.digester, info.digest);
        if flipped.iter().any(|(k, _)| *k == key) {
            continue; // two files starting with the same chunk
        }
        let (file, offset, len) = store.locate(&key).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&file)
            .unwrap();
        let mut byte = [0u8; 1];
        let at = offset + len as u64 / 3;
        f.read_exact_at(&mut byte, at).unwrap();
        f.write_all_at(&[!byte[0]], at).unwrap();
        flipped.push((key, info.uncompressed_size as u64));
    }
    let dir = store_dir.as_os_str();
    // verify sees them (read-only, beside the open store) and fails.
    let (ok, out, _) = warren(&[
        "store".as_ref(),
        "verify".as_ref(),
        "--json".as_ref(),
        "--store-dir".as_ref(),
        dir,
    ]);
    assert!(!ok, "verify passed a corrupt store: {out}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(flipped.len() >= 3);
    assert_eq!(
        report["bad"].as_array().unwrap().len(),
        flipped.len(),
        "{out}"
    );
    // gc needs the store to itself.
    let (ok, _, err) = warren(&["store".as_ref(), "gc".as_ref(), "--store-dir".as_ref(), dir]);
    assert!(!ok && err.contains("in use"), "{err}");

    let m = InMount::new(&img, store.clone(), no_prefetch());
    assert_eq!(
        file_hashes(m.root()),
        want,
        "a corrupt stored chunk was served"
    );
    assert_eq!(m.metrics.digest_failures.get(), flipped.len() as u64);
    assert_eq!(m.origin_bytes(), flipped.iter().map(|f| f.1).sum::<u64>());
    let text = m.metrics.render_text();
    let line = format!("warren_store_verify_failures_total {}", flipped.len());
    assert!(text.contains(&line), "{text}");
    drop(m);
    store.flush();
    for (key, _) in &flipped {
        assert!(store.contains(key), "{key} was not stored again");
    }
    drop(store);

    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "verify".as_ref(),
        "--store-dir".as_ref(),
        dir,
    ]);
    assert!(ok, "{out}{err}");
    assert!(out.contains(" 0 bad"), "{out}");
    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "gc".as_ref(),
        "--json".as_ref(),
        "--store-dir".as_ref(),
        dir,
    ]);
    assert!(ok, "{err}");
    let gc: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(gc["dangling_entries"], 0, "{out}");
    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "stats".as_ref(),
        "--json".as_ref(),
        "--store-dir".as_ref(),
        dir,
    ]);
    assert!(ok, "{err}");
    let stats: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        stats["chunks"],
        image_chunks(&img.boot).len() as u64,
        "{out}"
    );
    assert_eq!(stats["quota_bytes"], 1u64 << 30, "{out}");
    // The same store through a node config.
    let config = work.path().join("node.toml");
    std::fs::write(
        &config,
        format!(
            "cache_dir = {:?}\n[store]\nquota_bytes = 1073741824\n",
            store_dir
        ),
    )
    .unwrap();
    let (ok, out, err) = warren(&[
        "store".as_ref(),
        "stats".as_ref(),
        "--config".as_ref(),
        config.as_os_str(),
    ]);
    assert!(ok, "{err}");
    assert!(
        out.contains("chunks") && out.contains(&store_dir.display().to_string()),
        "{out}"
    );
}
