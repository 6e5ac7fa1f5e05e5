//! The Debian minbase tree the tests build real images from (made by scripts/test.sh).

use std::path::PathBuf;

/// `$WARREN_ROOTFS`, else the harness's default; fails (never skips) when it is missing.
pub fn debian_rootfs() -> PathBuf {
    let p = PathBuf::from(
        std::env::var_os("WARREN_ROOTFS")
            .unwrap_or_else(|| "/var/tmp/warren-rootfs/bookworm-minbase".into()),
    );
    assert!(
        p.join("bin/sh").exists(),
        "no Debian rootfs at {} (scripts/test.sh makes one)",
        p.display()
    );
    p
}
