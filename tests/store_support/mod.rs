//! Helpers for the chunk store's integration tests: images built with `warren create`,
//! in-process FUSE mounts over a shared store, origin byte counts, files hashed through a
//! mount, and a size-limited tmpfs.
#![allow(dead_code)]

mod noise;
pub use noise::noise;

use crate::common::{sha256_hex, warren_bin};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use warren::api::metrics::Metrics;
use warren::backend::localfs::LocalFs;
use warren::fetch::cache::ChunkCache;
use warren::fetch::FetchOptions;
use warren::fs::{open_image, ImageMount, MountOptions};
use warren::rafs::image::ChunkDigest;

/// A built image: bootstrap and blob directory.
pub struct Built {
    pub boot: PathBuf,
    pub blobs: PathBuf,
}

/// `warren create` of `src` into `out/` with 64 KiB chunks (so that a changed file shares
/// the rest of the tree's chunks, and big files span several).
pub fn build(src: &Path, out: &Path) -> Built {
    std::fs::create_dir_all(out).unwrap();
    let built = Built {
        boot: out.join("image.boot"),
        blobs: out.join("blobs"),
    };
    let st = Command::new(warren_bin())
        .args(["create", "-q", "--chunk-size", "0x10000", "-B"])
        .arg(&built.boot)
        .arg("-D")
        .arg(&built.blobs)
        .arg(src)
        .status()
        .unwrap();
    assert!(st.success(), "warren create {}", src.display());
    built
}

/// Every distinct chunk the image's files use, with its plain size.
pub fn image_chunks(boot: &Path) -> HashMap<ChunkDigest, u64> {
    let image = warren::rafs::reader::read_bootstrap_file(boot)
        .unwrap()
        .image;
    let mut out = HashMap::new();
    for ino in &image.inodes {
        for &c in ino.chunks() {
            if let Some(info) = image.chunk(c) {
                out.insert(info.digest, info.uncompressed_size as u64);
            }
        }
    }
    out
}

/// Path -> sha256 of every regular file below `root`.
pub fn file_hashes(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for e in std::fs::read_dir(root.join(&rel)).unwrap() {
            let e = e.unwrap();
            let child = rel.join(e.file_name());
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                stack.push(child);
            } else if ft.is_file() {
                let data = std::fs::read(root.join(&child))
                    .unwrap_or_else(|err| panic!("reading {}: {err}", child.display()));
                out.insert(child.to_string_lossy().into_owned(), sha256_hex(&data));
            }
        }
    }
    out
}

/// An image mounted in this process over a given store, with its own metrics.
pub struct InMount {
    pub mount: ImageMount,
    pub metrics: Arc<Metrics>,
    _dir: tempfile::TempDir,
}

impl InMount {
    pub fn new(built: &Built, cache: Arc<dyn ChunkCache>, opts: MountOptions) -> InMount {
        let dir = tempfile::tempdir().unwrap();
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        let metrics = Metrics::new();
        metrics.watch_store(cache.clone());
        let chain = open_image(
            &built.boot,
            Arc::new(LocalFs::new(&built.blobs)),
            cache,
            FetchOptions::default(),
            metrics.clone(),
        )
        .unwrap();
        let mount = ImageMount::mount(&mnt, chain, &opts).unwrap();
        InMount {
            mount,
            metrics,
            _dir: dir,
        }
    }

    pub fn root(&self) -> &Path {
        self.mount.mountpoint()
    }

    pub fn origin_bytes(&self) -> u64 {
        self.metrics
            .chunk_fetch_bytes
            .with_label_values(&["origin"])
            .get()
    }

    pub fn store_bytes(&self) -> u64 {
        self.metrics
            .chunk_fetch_bytes
            .with_label_values(&["store"])
            .get()
    }
}

/// No prefetch: reads alone decide what is fetched.
pub fn no_prefetch() -> MountOptions {
    MountOptions {
        prefetch_table: false,
        ..MountOptions::default()
    }
}

/// A tmpfs of `size`, unmounted on drop.
pub struct Tmpfs(pub tempfile::TempDir);

impl Tmpfs {
    pub fn new(size: &str) -> Tmpfs {
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mount -t tmpfs (needs root)");
        Tmpfs(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0.path()).status();
    }
}

/// `warren ARGS`: exit success, stdout, stderr.
pub fn warren(args: &[&std::ffi::OsStr]) -> (bool, String, String) {
    let out = Command::new(warren_bin()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}
