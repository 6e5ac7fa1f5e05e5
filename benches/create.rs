//! Build throughput of `warren create` through the library: the fixture tree (small, many
//! entries) and, when `WARREN_ROOTFS` names one, a real root file system. The side-by-side
//! comparison with nydus-image is `benches/compare-create.sh`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::path::{Path, PathBuf};
use warren::build::dir::DirSource;
use warren::build::{build, BuildOptions};
use warren::rafs::Compressor;

fn tree_bytes(root: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let md = e.path().symlink_metadata().unwrap();
            if md.is_dir() {
                stack.push(e.path());
            } else if md.is_file() {
                total += md.len();
            }
        }
    }
    total
}

fn fixture_tree() -> tempfile::TempDir {
    let fixtures = std::env::var_os("WARREN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    let dir = tempfile::tempdir().unwrap();
    let st = std::process::Command::new("tar")
        .arg("-xf")
        .arg(fixtures.join("tree.tar"))
        .arg("-C")
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    dir
}

fn bench_create(c: &mut Criterion) {
    let fixture = fixture_tree();
    let mut inputs: Vec<(String, PathBuf)> =
        vec![("fixture-tree".into(), fixture.path().to_path_buf())];
    if let Some(rootfs) = std::env::var_os("WARREN_ROOTFS")
        .map(PathBuf::from)
        .filter(|p| p.is_dir())
    {
        inputs.push(("debian-minbase".into(), rootfs));
    }
    let mut group = c.benchmark_group("create");
    group.sample_size(10);
    for (name, root) in &inputs {
        group.throughput(Throughput::Bytes(tree_bytes(root)));
        for compressor in [Compressor::Zstd, Compressor::Lz4Block, Compressor::None] {
            group.bench_with_input(
                BenchmarkId::new(name, compressor.name()),
                root,
                |b, root| {
                    b.iter(|| {
                        let out = tempfile::tempdir().unwrap();
                        let opts = BuildOptions {
                            compressor,
                            blob_dir: out.path().to_path_buf(),
                            ..BuildOptions::default()
                        };
                        build(&mut DirSource::new(root), &opts, &|_| {}).unwrap()
                    })
                },
            );
        }
    }
    group.finish();
}

criterion_group!(benches, bench_create);
criterion_main!(benches);
