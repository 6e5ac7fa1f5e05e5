//! `warren export --block` against the kernel's own EROFS driver: export each fixture
//! image, loop-mount the disk image (`mount -t erofs -o ro,loop`), and compare everything the
//! kernel shows with the ground-truth manifest. Needs root and erofs; without them these
//! tests fail, they do not skip.

mod common;
use common::mountfs::*;
use common::*;
use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Output};
use warren::rafs::reader::read_bootstrap_file;

fn warren(args: &[&OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warren"))
        .args(args)
        .output()
        .expect("running warren")
}

/// Runs `warren export --block --json` and returns its JSON report.
fn export(boot: &Path, blobs: &Path, out: &Path) -> serde_json::Value {
    let o = warren(&[
        "export".as_ref(),
        "--block".as_ref(),
        "--json".as_ref(),
        "--bootstrap".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        blobs.as_os_str(),
        "--output".as_ref(),
        out.as_os_str(),
    ]);
    assert!(
        o.status.success(),
        "warren export failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout).expect("export --json output")
}

/// Exports a fixture image, checks the file's size against the device table, and mounts it.
fn export_and_mount(name: &str, work: &Path) -> (serde_json::Value, Mount) {
    let (boot, blobs) = fixture_image(name);
    let img = work.join(format!("{name}.img"));
    let report = export(&boot, &blobs, &img);
    let bs = read_bootstrap_file(&boot).unwrap();
    let last = bs.devices.last().expect("a device slot");
    let want = (last.mapped_blkaddr as u64 + last.blocks as u64) * 4096;
    assert_eq!(
        std::fs::metadata(&img).unwrap().len(),
        want,
        "{name}: image size"
    );
    assert_eq!(report["size"], want, "{name}: reported size");
    assert_eq!(report["output"], img.to_str().unwrap());
    let slots = report["blobs"].as_array().unwrap();
    assert_eq!(slots.len(), bs.devices.len());
    for (s, d) in slots.iter().zip(&bs.devices) {
        assert_eq!(s["blob_id"], d.blob_id.as_str());
        assert_eq!(s["mapped_blkaddr"], d.mapped_blkaddr);
        assert_eq!(s["blocks"], d.blocks);
    }
    let m = Mount::erofs(&img);
    (report, m)
}

fn check_single_blob(name: &str) {
    let work = tempfile::tempdir().unwrap();
    let (report, mount) = export_and_mount(name, work.path());
    assert_eq!(report["misplaced_chunks"], serde_json::json!([]), "{name}");
    let got = fs_manifest(mount.path());
    assert_manifests_equal(&got, &load_manifest());
}

#[test]
fn v6_zstd_blake3() {
    check_single_blob("v6-zstd-blake3");
}

#[test]
fn v6_none_sha256() {
    check_single_blob("v6-none-sha256");
}

#[test]
fn v6_lz4_64k() {
    check_single_blob("v6-lz4-64k");
}

#[test]
fn v6_from_tar() {
    check_single_blob("v6-from-tar");
}

#[test]
fn v6_blob_toc() {
    check_single_blob("v6-blob-toc");
}

/// The two-layer fixture: nydus-image recorded the upper layer's chunks under the lower
/// blob, in the chunk table and in the inodes' chunk indexes, so the kernel would read
/// `etc/changed` and `opaque/new` from the wrong blob. Export repairs the records (each
/// chunk goes to the blob whose bytes match its digest) and writes the bootstrap anew:
/// the kernel then shows the merged view with every byte right.
#[test]
fn v6_two_layers() {
    let work = tempfile::tempdir().unwrap();
    let (report, mount) = export_and_mount("v6-two-layers", work.path());
    assert_eq!(report["misplaced_chunks"], serde_json::json!([]));
    let got: Vec<(String, String, String)> = fs_manifest(mount.path())
        .into_iter()
        .map(|(k, v)| (k, v.kind, v.sha_or_target))
        .collect();
    let want = vec![
        ("etc".to_string(), "dir".to_string(), String::new()),
        ("etc/changed".into(), "file".into(), sha256_hex(b"new\n")),
        ("etc/keep".into(), "file".into(), sha256_hex(b"base\n")),
        ("opaque".into(), "dir".into(), String::new()),
        ("opaque/new".into(), "file".into(), sha256_hex(b"fresh\n")),
    ];
    assert_eq!(got, want);
}

#[test]
fn corrupt_chunk_fails_export() {
    let (boot, blobs) = fixture_image("v6-zstd-blake3");
    let bs = read_bootstrap_file(&boot).unwrap();
    let blob = &bs.image.blobs[0];
    let chunk = blob
        .chunks
        .iter()
        .filter(|c| c.compressed)
        .max_by_key(|c| c.compressed_size)
        .expect("a compressed chunk");
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("blobs");
    std::fs::create_dir(&dir).unwrap();
    let path = dir.join(&blob.blob_id);
    let mut data = std::fs::read(blobs.join(&blob.blob_id)).unwrap();
    let at = (chunk.compressed_offset + chunk.compressed_size as u64 / 2) as usize;
    data[at] ^= 0x5a;
    std::fs::write(&path, &data).unwrap();

    let out_dir = work.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let img = out_dir.join("bad.img");
    let o = warren(&[
        "export".as_ref(),
        "--block".as_ref(),
        "--bootstrap".as_ref(),
        boot.as_os_str(),
        "--blob-dir".as_ref(),
        dir.as_os_str(),
        "--output".as_ref(),
        img.as_os_str(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "export of a corrupt blob succeeded");
    let digest = chunk.digest.to_string();
    assert!(
        stderr.contains(&digest),
        "error does not name chunk {digest}: {stderr}"
    );
    assert!(
        stderr.contains(&blob.blob_id),
        "error does not name the blob: {stderr}"
    );
    let left: Vec<_> = std::fs::read_dir(&out_dir).unwrap().collect();
    assert!(left.is_empty(), "export left files behind: {left:?}");
}

/// Usage errors: no `--block`, a missing blob file, a file that is no bootstrap.
#[test]
fn export_errors_are_clear() {
    let (boot, blobs) = fixture_image("v6-lz4-64k");
    let work = tempfile::tempdir().unwrap();
    let img = work.path().join("x.img");
    let run = |boot: &Path, blobs: &Path, block: bool| {
        let mut args: Vec<&OsStr> = vec!["export".as_ref()];
        if block {
            args.push("--block".as_ref());
        }
        args.extend([
            "--bootstrap".as_ref(),
            boot.as_os_str(),
            "--blob-dir".as_ref(),
            blobs.as_os_str(),
            "--output".as_ref(),
            img.as_os_str(),
        ]);
        let o = warren(&args);
        assert!(!o.status.success());
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = run(&boot, &blobs, false);
    assert!(e.contains("--block"), "{e}");
    let bs = read_bootstrap_file(&boot).unwrap();
    let e = run(&boot, work.path(), true);
    assert!(e.contains(&bs.image.blobs[0].blob_id), "{e}");
    let e = run(&blobs.join(&bs.image.blobs[0].blob_id), &blobs, true);
    assert!(e.contains("bootstrap"), "{e}");
    assert!(!img.exists());
}

/// Images warren builds, exported and mounted by the kernel, show the source tree.
#[test]
fn warren_built_images_mount_in_the_kernel() {
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    extract_tree(&tree);
    for (name, flags) in [
        ("default", &[][..]),
        (
            "none-sha256",
            &["--compressor", "none", "--digester", "sha256"][..],
        ),
        (
            "lz4-64k",
            &["--compressor", "lz4_block", "--chunk-size", "0x10000"][..],
        ),
        ("blob-toc", &["--features", "blob-toc"][..]),
    ] {
        let boot = work.path().join(format!("{name}.boot"));
        let blobs = work.path().join(format!("{name}-blobs"));
        create_image_with(&tree, &boot, &blobs, flags);
        let img = work.path().join(format!("{name}.img"));
        let report = export(&boot, &blobs, &img);
        assert_eq!(report["misplaced_chunks"], serde_json::json!([]), "{name}");
        let mount = Mount::erofs(&img);
        assert_manifests_equal(&fs_manifest(mount.path()), &load_manifest());
    }
}
