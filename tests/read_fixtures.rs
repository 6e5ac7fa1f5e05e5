//! warren's reader against images written by the real nydus-image 2.4.4.

mod common;
use common::*;
use warren::rafs::reader::read_bootstrap_file;

fn check_fixture(name: &str) {
    let (boot, blobs) = fixture_image(name);
    let bs = read_bootstrap_file(&boot).unwrap_or_else(|e| panic!("{name}: {e}"));
    let got = image_manifest(&bs.image, &blobs);
    assert_manifests_equal(&got, &load_manifest());
}

#[test]
fn v6_zstd_blake3() {
    check_fixture("v6-zstd-blake3");
}

#[test]
fn v6_none_sha256() {
    check_fixture("v6-none-sha256");
}

#[test]
fn v6_lz4_64k() {
    check_fixture("v6-lz4-64k");
}

#[test]
fn v6_from_tar() {
    check_fixture("v6-from-tar");
}

#[test]
fn v6_blob_toc() {
    check_fixture("v6-blob-toc");
}

/// The upper layer built by nydus-image with `--parent-bootstrap`: the merged view of
/// `layer-lower.tar` and `layer-upper.tar`, whiteouts applied.
#[test]
fn v6_two_layers_merged_view() {
    let (boot, blobs) = fixture_image("v6-two-layers");
    let bs = read_bootstrap_file(&boot).unwrap();
    let got = image_manifest(&bs.image, &blobs);
    let paths: Vec<&str> = got.keys().map(|k| k.as_str()).collect();
    assert_eq!(
        paths,
        ["etc", "etc/changed", "etc/keep", "opaque", "opaque/new"]
    );
    assert_eq!(got["etc/keep"].sha_or_target, sha256_hex(b"base\n"));
    assert_eq!(got["etc/changed"].sha_or_target, sha256_hex(b"new\n"));
    assert_eq!(got["opaque/new"].sha_or_target, sha256_hex(b"fresh\n"));
}
