//! The chunk store on its own: keys with algorithms, restarts, LRU eviction with protected
//! chunks, repair of what a crash leaves, corruption, verify and gc, compression, a full
//! disk (a 2 MiB tmpfs; needs root) and a second opener.

mod common;
mod store_support;

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use store_support::{noise, Tmpfs};
use warren::rafs::image::ChunkDigest;
use warren::rafs::Digester;
use warren::store::{ChunkKey, Lookup, Store, StoreCompression, StoreError, StoreOptions};

/// Bytes that compress well.
fn text(seed: u64, len: usize) -> Vec<u8> {
    let line = format!("line {seed}: the quick brown fox jumps over the lazy dog\n");
    line.bytes().cycle().take(len).collect()
}

fn chunk(seed: u64, len: usize) -> (ChunkKey, Vec<u8>) {
    let data = noise(seed, len);
    (ChunkKey::of(Digester::Blake3, &data), data)
}

fn opts(quota: u64) -> StoreOptions {
    StoreOptions {
        quota_bytes: Some(quota),
        data_file_bytes: 1 << 20,
        ..StoreOptions::default()
    }
}

/// Bytes allocated to the files in `dir`.
fn data_disk_bytes(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap().blocks() * 512)
        .sum()
}

fn hit(store: &Store, key: &ChunkKey) -> Vec<u8> {
    match store.get(key) {
        Lookup::Hit(d) => d,
        other => panic!("{key}: {other:?}"),
    }
}

#[test]
fn chunks_survive_a_restart_and_algorithms_never_collide() {
    let dir = tempfile::tempdir().unwrap();
    let (key, data) = chunk(1, 100_000);
    let sha = ChunkKey::of(Digester::Sha256, &data);
    // The same 32 bytes under the other algorithm name a different chunk.
    let twin = ChunkKey::new(Digester::Sha256, key.digest);
    {
        let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
        assert!(store.insert(&key, &data).unwrap());
        assert!(!store.insert(&key, &data).unwrap(), "stored twice");
        assert!(store.insert(&sha, &data).unwrap());
        assert_eq!(store.get(&twin), Lookup::Miss);
        assert!(!store.contains(&twin));
        assert_eq!(store.stats().chunks, 2);
    }
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    assert_eq!(store.repair_report(), &Default::default());
    assert_eq!(hit(&store, &key), data);
    assert_eq!(hit(&store, &sha), data);
    assert_eq!(store.get(&twin), Lookup::Miss);
    let s = store.stats();
    assert_eq!((s.chunks, s.bytes), (2, 200_000));
    assert_eq!((s.hits, s.misses), (2, 1));
}

#[test]
fn queued_writes_are_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let chunks: Vec<_> = (0..50).map(|i| chunk(i, 10_000 + i as usize)).collect();
    for (k, d) in chunks.iter().chain(chunks.iter()) {
        store.put(k, &Arc::new(d.clone()));
    }
    store.flush();
    assert_eq!(store.stats().chunks, 50);
    for (k, d) in &chunks {
        assert_eq!(&hit(&store, k), d);
    }
}

#[test]
fn eviction_takes_least_recently_used_first_and_protected_last() {
    let dir = tempfile::tempdir().unwrap();
    // high water 95% of 1 MiB, low water 80%: room for 15 chunks of 64 KiB.
    let store = Store::open(dir.path(), &opts(1 << 20)).unwrap();
    let chunks: Vec<_> = (0..40).map(|i| chunk(100 + i, 64 << 10)).collect();
    for (k, d) in &chunks[..10] {
        store.insert(k, d).unwrap();
    }
    store.protect(7, vec![chunks[0].0, chunks[1].0]);
    hit(&store, &chunks[2].0); // now the most recently used
    for (k, d) in &chunks[10..16] {
        store.insert(k, d).unwrap();
        assert!(store.stats().bytes <= store.limits().high_water_bytes);
    }
    let s = store.stats();
    assert!(s.evictions > 0, "{s:?}");
    assert!(
        s.bytes <= store.limits().low_water_bytes + (64 << 10),
        "{s:?}"
    );
    for i in [0, 1, 2] {
        assert!(store.contains(&chunks[i].0), "chunk {i} was evicted");
    }
    assert!(
        !store.contains(&chunks[3].0),
        "the least recently used chunk stayed"
    );
    // With everything else gone, protected chunks go too: the quota always wins.
    store.release(7);
    store.protect(8, chunks.iter().map(|c| c.0).collect());
    for (k, d) in &chunks[16..] {
        store.insert(k, d).unwrap();
        assert!(store.stats().bytes <= store.limits().high_water_bytes);
    }
    assert!(!store.contains(&chunks[0].0));
    for (k, d) in &chunks[36..] {
        assert_eq!(&hit(&store, k), d);
    }
    // Evicted space goes back to the file system (holes, deleted files).
    let s = store.stats();
    let data = data_disk_bytes(&dir.path().join("data"));
    assert!(
        data < s.bytes + 2 * 4096 * s.chunks,
        "{data} bytes on disk: {s:?}"
    );
}

#[test]
fn leftovers_of_a_crash_are_repaired_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let chunks: Vec<_> = (0..20).map(|i| chunk(200 + i, 30_000)).collect();
    let data_file;
    {
        let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
        for (k, d) in &chunks {
            store.insert(k, d).unwrap();
        }
        data_file = store.locate(&chunks[19].0).unwrap().0;
    }
    // A write cut short: bytes after the last committed chunk.
    let f = std::fs::OpenOptions::new()
        .append(true)
        .open(&data_file)
        .unwrap();
    f.write_all_at(&noise(9, 5000), f.metadata().unwrap().len())
        .unwrap();
    // A data file created for a batch that never committed.
    std::fs::write(dir.path().join("data/00000099.dat"), b"half").unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let r = store.repair_report();
    assert_eq!(
        (r.truncated_files, r.truncated_bytes, r.removed_files),
        (1, 5000, 1)
    );
    assert!(!dir.path().join("data/00000099.dat").exists());
    for (k, d) in &chunks {
        assert_eq!(&hit(&store, k), d);
    }
    // New writes append where the committed bytes end.
    let (k, d) = chunk(300, 1234);
    store.insert(&k, &d).unwrap();
    assert_eq!(hit(&store, &k), d);
    assert_eq!(store.verify(false).unwrap().bad.len(), 0);
}

fn flip_byte(path: &Path, at: u64) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, at).unwrap();
    f.write_all_at(&[b[0] ^ 0xff], at).unwrap();
}

#[test]
fn a_corrupt_chunk_is_dropped_and_can_be_stored_again() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let (k, d) = chunk(400, 50_000);
    let (k2, d2) = chunk(401, 50_000);
    store.insert(&k, &d).unwrap();
    store.insert(&k2, &d2).unwrap();
    let (path, offset, len) = store.locate(&k).unwrap();
    flip_byte(&path, offset + len as u64 / 2);
    assert_eq!(store.get(&k), Lookup::Corrupt);
    assert!(!store.contains(&k));
    assert_eq!(store.get(&k), Lookup::Miss);
    assert_eq!(store.stats().verify_failures, 1);
    assert_eq!(hit(&store, &k2), d2);
    store.insert(&k, &d).unwrap();
    assert_eq!(hit(&store, &k), d);
}

#[test]
fn verify_reports_and_gc_repairs_the_whole_store() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let chunks: Vec<_> = (0..30).map(|i| chunk(500 + i, 20_000)).collect();
    for (k, d) in &chunks {
        store.insert(k, d).unwrap();
    }
    let (path, offset, _) = store.locate(&chunks[3].0).unwrap();
    flip_byte(&path, offset + 10);
    let report = store.verify(false).unwrap();
    assert_eq!((report.chunks, report.bad.len()), (30, 1));
    assert!(report.bad[0].0.contains(&chunks[3].0.digest.to_string()));
    assert_eq!(store.verify(true).unwrap().dropped, 1);
    assert_eq!(store.verify(false).unwrap().bad.len(), 0);
    // Bytes lost behind the index's back: the last chunk is cut off its file.
    let (path, offset, _) = store.locate(&chunks[29].0).unwrap();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(offset + 1)
        .unwrap();
    let gc = store.gc(Some(10 * 20_000)).unwrap();
    assert_eq!(gc.dangling_entries, 1);
    assert!(gc.recounted);
    assert_eq!(gc.bytes_after, 10 * 20_000);
    let s = store.stats();
    assert_eq!((s.chunks, s.bytes), (10, 200_000));
    assert_eq!(store.verify(false).unwrap().bad.len(), 0);
}

#[test]
fn compressed_stores_round_trip_and_take_less_disk() {
    for compression in [StoreCompression::Lz4, StoreCompression::Zstd] {
        let dir = tempfile::tempdir().unwrap();
        let o = StoreOptions {
            compression,
            ..opts(64 << 20)
        };
        let store = Store::open(dir.path(), &o).unwrap();
        let t = text(1, 200_000);
        let kt = ChunkKey::of(Digester::Sha256, &t);
        let (kn, n) = chunk(600, 100_000);
        store.insert(&kt, &t).unwrap();
        store.insert(&kn, &n).unwrap();
        let s = store.stats();
        assert!(s.bytes < 100_000 + 200_000 / 4, "{compression:?}: {s:?}");
        drop(store);
        let store = Store::open(dir.path(), &StoreOptions::default()).unwrap();
        assert_eq!(hit(&store, &kt), t);
        assert_eq!(hit(&store, &kn), n);
    }
}

#[test]
fn a_second_writer_is_refused_but_readers_may_look() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let (k, d) = chunk(700, 4096);
    store.insert(&k, &d).unwrap();
    match Store::open(dir.path(), &opts(64 << 20)) {
        Err(StoreError::Busy(p)) => assert_eq!(p, dir.path()),
        Err(e) => panic!("expected Busy, got {e}"),
        Ok(_) => panic!("a second writer opened the store"),
    }
    let ro = Store::open_read_only(dir.path()).unwrap();
    assert_eq!(ro.stats().chunks, 1);
    assert_eq!(ro.stats().quota_bytes, 64 << 20);
    assert_eq!(hit(&ro, &k), d);
    assert!(matches!(ro.insert(&k, &d), Err(StoreError::ReadOnly(_))));
}

#[test]
fn a_full_disk_fails_writes_and_keeps_reads() {
    let fs = Tmpfs::new("2m");
    // A quota far above the disk: the disk fills before eviction would start.
    let store = Store::open(fs.0.path(), &opts(1 << 30)).unwrap();
    let chunks: Vec<_> = (0..12).map(|i| chunk(800 + i, 256 << 10)).collect();
    let mut stored = Vec::new();
    let mut failed = None;
    for (k, d) in &chunks {
        match store.insert(k, d) {
            Ok(_) => stored.push((k, d)),
            Err(e) => {
                assert!(e.is_disk_full(), "{e}");
                failed = Some(e);
            }
        }
    }
    assert!(failed.is_some(), "2 MiB took 3 MiB of chunks");
    assert!(!stored.is_empty());
    // Background writes fail quietly too.
    for (k, d) in &chunks {
        store.put(k, &Arc::new(d.clone()));
    }
    store.flush();
    let s = store.stats();
    assert!(s.write_failures >= 2, "{s:?}");
    for (k, d) in &stored {
        assert_eq!(&&hit(&store, k), d);
    }
    drop(store);
    let store = Store::open(fs.0.path(), &opts(1 << 30)).unwrap();
    for (k, d) in &stored {
        assert_eq!(&&hit(&store, k), d);
    }
    assert_eq!(store.verify(false).unwrap().bad.len(), 0);
}

#[test]
fn digest_of_nothing_is_a_valid_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(1 << 20)).unwrap();
    let k = ChunkKey::of(Digester::Blake3, b"");
    store.insert(&k, b"").unwrap();
    assert_eq!(hit(&store, &k), Vec::<u8>::new());
    let zero = ChunkKey::new(Digester::Blake3, ChunkDigest([0; 32]));
    assert_eq!(store.get(&zero), Lookup::Miss);
}

#[test]
fn gc_evicts_just_down_to_its_target_oldest_first() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), &opts(64 << 20)).unwrap();
    let mut big = Vec::new();
    for i in 0..12u64 {
        for j in 0..25u64 {
            let (k, d) = chunk(1000 + i * 100 + j, 4 + j as usize);
            store.insert(&k, &d).unwrap();
        }
        let (k, d) = chunk(5000 + i, 400_000);
        store.insert(&k, &d).unwrap();
        big.push(k);
    }
    let before = store.stats().bytes;
    let gc = store.gc(Some(1_000_000)).unwrap();
    assert_eq!(gc.bytes_before, before);
    assert!(
        gc.bytes_after <= 1_000_000 && gc.bytes_after > 1_000_000 - 400_000,
        "{gc:?}"
    );
    // The oldest big chunks went, the newest stayed.
    assert!(!store.contains(&big[0]));
    assert!(store.contains(&big[11]));
}
