//! The chunk store against the simplest alternative, one plain file per chunk in a
//! directory (named by digest), at 4 KiB, 64 KiB and 1 MiB chunks:
//!
//! - `put`: storing new chunks. The store appends a batch (as its writer does) and
//!   fdatasyncs it once (`store-sync`) or not (`store-nosync`); plain files are written one
//!   by one, without (`files`) or with (`files-fsync`) an fsync each.
//! - `get`: reading stored chunks back (warm page cache, random order). `store` verifies
//!   each chunk's blake3 digest (the default), `store-noverify` does not; `files` reads the
//!   file, `files-verify` also hashes it. The difference is the cost of verify-on-read.
//! - `get-compressed`: reads from stores that keep chunks as lz4 or zstd, on real file data
//!   (the Debian minbase tree when present), against the plain store on the same data.
//! - `lookup`: index lookups (`contains`) that hit and that miss.
//! - `hash`: blake3 and sha256 of one chunk, the whole of what verification adds.
//!
//! Run: `cargo bench --bench store` (the README's "Chunk store" section has the figures).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warren::rafs::Digester;
use warren::store::{ChunkKey, Lookup, Store, StoreCompression, StoreOptions};

const SIZES: [(usize, &str); 3] = [(4 << 10, "4KiB"), (64 << 10, "64KiB"), (1 << 20, "1MiB")];
/// Bytes per measured put batch and per read working set.
const BATCH_BYTES: usize = 8 << 20;
const SET_BYTES: usize = 64 << 20;

#[path = "../tests/store_support/noise.rs"]
mod noise;
use noise::noise;

/// A source of distinct chunks: random bytes with a counter in front.
struct Chunks {
    pool: Vec<u8>,
    next: AtomicU64,
}

impl Chunks {
    fn new() -> Self {
        Chunks {
            pool: noise(7, 2 << 20),
            next: AtomicU64::new(1),
        }
    }

    fn take(&self, size: usize) -> (ChunkKey, Arc<Vec<u8>>) {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let start = (n as usize * 4099) % (self.pool.len() - size);
        let mut data = self.pool[start..start + size].to_vec();
        data[..8].copy_from_slice(&n.to_le_bytes());
        (ChunkKey::of(Digester::Blake3, &data), Arc::new(data))
    }
}

fn bench_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("warren-store-bench")
        .tempdir_in("/var/tmp")
        .unwrap()
}

fn open(dir: &Path, sync: bool, verify: bool, compression: StoreCompression) -> Store {
    let opts = StoreOptions {
        quota_bytes: Some(64 << 30),
        sync,
        verify_on_read: verify,
        compression,
        ..StoreOptions::default()
    };
    Store::open(dir, &opts).unwrap()
}

fn file_path(dir: &Path, key: &ChunkKey) -> PathBuf {
    dir.join(key.digest.to_string())
}

fn put(c: &mut Criterion) {
    let chunks = Chunks::new();
    let mut g = c.benchmark_group("put");
    for (size, name) in SIZES {
        let per_batch = BATCH_BYTES / size;
        g.throughput(Throughput::Bytes((per_batch * size) as u64));
        for sync in [true, false] {
            let dir = bench_dir();
            let store = open(dir.path(), sync, true, StoreCompression::None);
            let id = if sync { "store-sync" } else { "store-nosync" };
            g.bench_function(BenchmarkId::new(id, name), |b| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<_> = (0..per_batch).map(|_| chunks.take(size)).collect();
                        let start = Instant::now();
                        store.insert_batch(batch).unwrap();
                        t += start.elapsed();
                    }
                    t
                })
            });
        }
        for fsync in [false, true] {
            let dir = bench_dir();
            let id = if fsync { "files-fsync" } else { "files" };
            g.bench_function(BenchmarkId::new(id, name), |b| {
                b.iter_custom(|iters| {
                    let mut t = Duration::ZERO;
                    for _ in 0..iters {
                        let batch: Vec<_> = (0..per_batch).map(|_| chunks.take(size)).collect();
                        let start = Instant::now();
                        for (k, d) in &batch {
                            let f = std::fs::File::create(file_path(dir.path(), k)).unwrap();
                            std::io::Write::write_all(&mut &f, d).unwrap();
                            if fsync {
                                f.sync_data().unwrap();
                            }
                        }
                        t += start.elapsed();
                    }
                    t
                })
            });
        }
    }
    g.finish();
}

/// A store and a plain directory holding the same chunks.
struct ReadSet {
    _dir: tempfile::TempDir,
    store: Store,
    files: PathBuf,
    keys: Vec<ChunkKey>,
}

fn read_set(data: &[Arc<Vec<u8>>], verify: bool, compression: StoreCompression) -> ReadSet {
    let dir = bench_dir();
    let store = open(&dir.path().join("store"), false, verify, compression);
    let files = dir.path().join("files");
    std::fs::create_dir(&files).unwrap();
    let mut keys = Vec::new();
    for group in data.chunks(256) {
        let batch: Vec<_> = group
            .iter()
            .map(|d| (ChunkKey::of(Digester::Blake3, d), d.clone()))
            .collect();
        for (k, d) in &batch {
            std::fs::write(file_path(&files, k), &**d).unwrap();
            keys.push(*k);
        }
        store.insert_batch(batch).unwrap();
    }
    // Random order, fixed.
    let mut x = 12345u64;
    for i in (1..keys.len()).rev() {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        keys.swap(i, (x >> 33) as usize % (i + 1));
    }
    ReadSet {
        _dir: dir,
        store,
        files,
        keys,
    }
}

fn get_all(set: &ReadSet) {
    for k in &set.keys {
        match set.store.get(k) {
            Lookup::Hit(d) => {
                std::hint::black_box(d);
            }
            other => panic!("{k}: {other:?}"),
        }
    }
}

fn get(c: &mut Criterion) {
    let chunks = Chunks::new();
    let mut g = c.benchmark_group("get");
    for (size, name) in SIZES {
        let data: Vec<_> = (0..SET_BYTES / size).map(|_| chunks.take(size).1).collect();
        g.throughput(Throughput::Bytes((data.len() * size) as u64));
        for verify in [true, false] {
            let set = read_set(&data, verify, StoreCompression::None);
            let id = if verify { "store" } else { "store-noverify" };
            g.bench_function(BenchmarkId::new(id, name), |b| b.iter(|| get_all(&set)));
            if verify {
                for hash in [false, true] {
                    let id = if hash { "files-verify" } else { "files" };
                    g.bench_function(BenchmarkId::new(id, name), |b| {
                        b.iter(|| {
                            for k in &set.keys {
                                let d = std::fs::read(file_path(&set.files, k)).unwrap();
                                if hash {
                                    assert!(k.matches(&d));
                                }
                                std::hint::black_box(d);
                            }
                        })
                    });
                }
            }
        }
    }
    g.finish();
}

/// Real file data for the compression comparison: the Debian minbase tree's /usr when it
/// is there (scripts/test.sh makes it), else this repository's sources and build outputs.
fn real_data(len: usize) -> Vec<u8> {
    let root = std::env::var_os("WARREN_ROOTFS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp/warren-rootfs/bookworm-minbase"));
    let start = if root.join("usr").is_dir() {
        root.join("usr")
    } else {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
    };
    let mut out = Vec::with_capacity(len);
    let mut stack = vec![start];
    while let Some(dir) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut entries: Vec<_> = rd.flatten().collect();
        entries.sort_by_key(|e| e.file_name());
        for e in entries {
            let Ok(ft) = e.file_type() else { continue };
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() {
                if let Ok(d) = std::fs::read(e.path()) {
                    out.extend_from_slice(&d);
                }
            }
            if out.len() >= len {
                out.truncate(len);
                return out;
            }
        }
    }
    out
}

fn get_compressed(c: &mut Criterion) {
    let corpus = real_data(SET_BYTES);
    let mut g = c.benchmark_group("get-compressed");
    for (size, name) in SIZES {
        let data: Vec<_> = corpus
            .chunks_exact(size)
            .map(|d| Arc::new(d.to_vec()))
            .collect();
        g.throughput(Throughput::Bytes((data.len() * size) as u64));
        for compression in [
            StoreCompression::None,
            StoreCompression::Lz4,
            StoreCompression::Zstd,
        ] {
            let set = read_set(&data, true, compression);
            let s = set.store.stats();
            eprintln!(
                "get-compressed/{}/{name}: {} stored bytes for {} plain ({:.2}x)",
                compression.name(),
                s.bytes,
                data.len() * size,
                (data.len() * size) as f64 / s.bytes as f64
            );
            g.bench_function(BenchmarkId::new(compression.name(), name), |b| {
                b.iter(|| get_all(&set))
            });
        }
    }
    g.finish();
}

fn lookup(c: &mut Criterion) {
    let chunks = Chunks::new();
    let data: Vec<_> = (0..100_000).map(|_| chunks.take(4096).1).collect();
    let set = read_set(&data, true, StoreCompression::None);
    let misses: Vec<_> = (0..100_000)
        .map(|i| ChunkKey::of(Digester::Blake3, &(i as u64).to_le_bytes()))
        .collect();
    let mut g = c.benchmark_group("lookup");
    g.throughput(Throughput::Elements(set.keys.len() as u64));
    g.bench_function("hit", |b| {
        b.iter(|| {
            for k in &set.keys {
                assert!(set.store.contains(k));
            }
        })
    });
    g.bench_function("miss", |b| {
        b.iter(|| {
            for k in &misses {
                assert!(!set.store.contains(k));
            }
        })
    });
    g.finish();
}

fn hash(c: &mut Criterion) {
    let mut g = c.benchmark_group("hash");
    for (size, name) in SIZES {
        let data = noise(3, size);
        g.throughput(Throughput::Bytes(size as u64));
        for algo in [Digester::Blake3, Digester::Sha256] {
            g.bench_function(BenchmarkId::new(algo.name(), name), |b| {
                b.iter(|| algo.digest(std::hint::black_box(&data)))
            });
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = put, get, get_compressed, lookup, hash
}
criterion_main!(benches);
