//! Shared test helpers: fixture paths, the ground-truth manifest, and comparing an image
//! read by warren against it.
#![allow(dead_code)]

pub mod child;
pub mod rootfs;

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::PathBuf;
use warren::rafs::blobfile::BlobDir;
use warren::rafs::image::{Image, InodeKind};

pub fn fixtures() -> PathBuf {
    let dir = std::env::var_os("WARREN_FIXTURES")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../shared/fixtures"));
    assert!(
        dir.join("tree.manifest.tsv").exists(),
        "fixtures not found at {} (set WARREN_FIXTURES)",
        dir.display()
    );
    dir
}

pub fn warren_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_warren"))
}

/// One line of `tree.manifest.tsv`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: String,
    pub mode: String,
    pub uid: String,
    pub gid: String,
    pub size: String,
    pub mtime: String,
    pub nlink: String,
    pub sha_or_target: String,
    pub rdev: String,
    pub xattrs: String,
}

pub fn load_manifest() -> BTreeMap<String, Entry> {
    let text = std::fs::read_to_string(fixtures().join("tree.manifest.tsv")).unwrap();
    parse_manifest(&text)
}

pub fn parse_manifest(text: &str) -> BTreeMap<String, Entry> {
    text.lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            assert_eq!(c.len(), 11, "manifest line {l:?}");
            (
                c[0].to_string(),
                Entry {
                    kind: c[1].into(),
                    mode: c[2].into(),
                    uid: c[3].into(),
                    gid: c[4].into(),
                    size: c[5].into(),
                    mtime: c[6].into(),
                    nlink: c[7].into(),
                    sha_or_target: c[8].into(),
                    rdev: c[9].into(),
                    xattrs: c[10].into(),
                },
            )
        })
        .collect()
}

pub mod mountfs;

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// The manifest as warren sees the image: every entry, with file bytes read (and verified)
/// from the blobs in `blob_dir`.
pub fn image_manifest(image: &Image, blob_dir: &std::path::Path) -> BTreeMap<String, Entry> {
    let blobs = BlobDir::new(blob_dir);
    image
        .walk()
        .into_iter()
        .map(|(path, id)| {
            let ino = &image.inodes[id];
            let kind = ino.type_name().to_string();
            let dir = ino.is_dir();
            let (size, sha) = match &ino.kind {
                InodeKind::File(_) => {
                    let data = blobs
                        .read_file(image, id)
                        .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&path)));
                    assert_eq!(data.len() as u64, ino.size);
                    (ino.size.to_string(), sha256_hex(&data))
                }
                InodeKind::Symlink(t) => (
                    ino.size.to_string(),
                    String::from_utf8_lossy(t).into_owned(),
                ),
                InodeKind::Special => ("0".into(), String::new()),
                InodeKind::Dir(_) => (String::new(), String::new()),
            };
            let rdev = if matches!(kind.as_str(), "chr" | "blk") {
                format!("{}:{}", ino.rdev.0, ino.rdev.1)
            } else {
                String::new()
            };
            let xattrs = xattr_column(&ino.xattrs);
            (
                String::from_utf8_lossy(&path).into_owned(),
                Entry {
                    kind,
                    mode: format!("{:o}", ino.mode & 0o7777),
                    uid: ino.uid.to_string(),
                    gid: ino.gid.to_string(),
                    size,
                    mtime: ino.mtime.to_string(),
                    nlink: if dir {
                        String::new()
                    } else {
                        ino.nlink.to_string()
                    },
                    sha_or_target: sha,
                    rdev,
                    xattrs,
                },
            )
        })
        .collect()
}

/// Asserts two manifests agree on every path and column, with a readable diff on failure.
pub fn assert_manifests_equal(got: &BTreeMap<String, Entry>, want: &BTreeMap<String, Entry>) {
    let mut problems = Vec::new();
    for (path, w) in want {
        match got.get(path) {
            None => problems.push(format!("missing: {path}")),
            Some(g) if g != w => problems.push(format!("{path}:\n  got  {g:?}\n  want {w:?}")),
            _ => {}
        }
    }
    for path in got.keys().filter(|p| !want.contains_key(*p)) {
        problems.push(format!("unexpected: {path}"));
    }
    assert!(
        problems.is_empty(),
        "{} differences:\n{}",
        problems.len(),
        problems.join("\n")
    );
}

/// The one blob directory of a fixture image.
pub fn fixture_image(name: &str) -> (PathBuf, PathBuf) {
    let dir = fixtures().join("images").join(name);
    (dir.join("image.boot"), dir.join("blobs"))
}

/// A reference tool (nydus-image, nydusd): on the PATH or in the test script's install
/// dir. Missing is a failure, not a skip.
pub fn tool(name: &str) -> PathBuf {
    let installed = PathBuf::from("/var/tmp/warren-tools/bin").join(name);
    if installed.exists() {
        return installed;
    }
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(name))
        .find(|p| p.exists());
    found.unwrap_or_else(|| {
        panic!("{name} is not installed: scripts/test.sh installs nydus-rs 2.2.0")
    })
}

/// Runs `warren ARGS`, panicking with its stderr when it fails.
pub fn warren_ok(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let out = std::process::Command::new(warren_bin())
        .args(args)
        .output()
        .expect("running warren");
    assert!(
        out.status.success(),
        "warren {:?} failed: {}",
        args,
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// `warren create -q TREE` into `dir`: the bootstrap's and the blob directory's paths.
pub fn create_image(tree: &std::path::Path, dir: &std::path::Path) -> (PathBuf, PathBuf) {
    let (boot, blobs) = (dir.join("image.boot"), dir.join("blobs"));
    create_image_with(tree, &boot, &blobs, &[]);
    (boot, blobs)
}

/// `warren create -q -B BOOT -D BLOBS FLAGS... TREE`, panicking with its stderr on failure.
pub fn create_image_with(
    tree: &std::path::Path,
    boot: &std::path::Path,
    blobs: &std::path::Path,
    flags: &[&str],
) {
    let mut args: Vec<&std::ffi::OsStr> = vec![
        "create".as_ref(),
        "-q".as_ref(),
        "-B".as_ref(),
        boot.as_os_str(),
        "-D".as_ref(),
        blobs.as_os_str(),
    ];
    args.extend(flags.iter().map(std::ffi::OsStr::new));
    args.push(tree.as_os_str());
    warren_ok(&args);
}

/// The fixture tree, extracted as root with owners, xattrs and device nodes.
pub fn extract_tree(dest: &std::path::Path) {
    std::fs::create_dir_all(dest).unwrap();
    let st = std::process::Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-xf"])
        .arg(fixtures().join("tree.tar"))
        .arg("-C")
        .arg(dest)
        .status()
        .unwrap();
    assert!(st.success(), "extracting tree.tar (needs root)");
}

/// The manifest's xattrs column: `name=value` pairs by name, joined with commas.
pub fn xattr_column(pairs: &[(Vec<u8>, Vec<u8>)]) -> String {
    let mut pairs = pairs.to_vec();
    pairs.sort();
    pairs
        .iter()
        .map(|(k, v)| {
            format!(
                "{}={}",
                String::from_utf8_lossy(k),
                String::from_utf8_lossy(v)
            )
        })
        .collect::<Vec<_>>()
        .join(",")
}
