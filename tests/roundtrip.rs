//! Fixture bootstraps re-serialized by warren's writer read back identically.

mod common;
use common::*;
use warren::rafs::reader::{parse, read_bootstrap_file};
use warren::rafs::writer::write_bootstrap;

#[test]
fn rewrite_every_fixture() {
    for name in [
        "v6-zstd-blake3",
        "v6-none-sha256",
        "v6-lz4-64k",
        "v6-blob-toc",
        "v6-two-layers",
    ] {
        let (boot, blobs) = fixture_image(name);
        let orig = read_bootstrap_file(&boot).unwrap();
        let bytes = write_bootstrap(&orig.image).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(bytes.len() % 4096, 0);
        let again = parse(&bytes).unwrap_or_else(|e| panic!("{name}: reading back: {e}"));
        assert_eq!(again.image.inodes.len(), orig.image.inodes.len(), "{name}");
        assert_eq!(again.image.blobs, orig.image.blobs, "{name}");
        assert_manifests_equal(
            &image_manifest(&again.image, &blobs),
            &image_manifest(&orig.image, &blobs),
        );
        // Writing is deterministic: the same image gives the same bytes.
        assert_eq!(
            write_bootstrap(&again.image).unwrap(),
            bytes,
            "{name}: not reproducible"
        );
    }
}
