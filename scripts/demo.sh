#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: build warren, turn a real
# directory into a RAFS v6 image (bootstrap + data blob), validate and describe
# it, export it as a plain erofs block image, mount that with the kernel's own
# erofs driver and check that every file reads back the same.
#
# Needs root (for the loop mount). Uses the same cargo target dir as the tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
WARREN=$CARGO_TARGET_DIR/release/warren

require_root "the demo loop-mounts an erofs image"
ensure_cargo
grep -qw erofs /proc/filesystems || die "the kernel has no erofs support (not in /proc/filesystems)"

WORK=$(mktemp -d /var/tmp/warren-demo.XXXXXX)
SRC=$WORK/src
BLOBS=$WORK/blobs
BOOT=$WORK/image.boot
IMG=$WORK/image.erofs
MNT=$WORK/mnt

cleanup() {
    local rc=$?
    [ "$rc" -eq 0 ] || echo "demo: FAILED (exit $rc)" >&2
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || echo "warning: could not unmount $MNT" >&2
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT

# run CMD...: show the command, then run it.
run() {
    printf '  $ %s\n' "$*"
    "$@"
}

section() {
    printf '\n== %s\n' "$*"
}

section "1. Build warren (cargo build --release, target dir $CARGO_TARGET_DIR)"
run cargo build --release
[ -x "$WARREN" ] || die "build finished but $WARREN is missing"

section "2. Make a small real source tree: a copy of /etc, a multi-chunk file, a hard link"
mkdir -p "$SRC" "$BLOBS" "$MNT"
cp -a /etc "$SRC/etc"
# 3 MiB of random bytes spans several 1 MiB chunks and does not compress.
head -c 3145728 /dev/urandom >"$SRC/random.bin"
ln "$SRC/random.bin" "$SRC/random-hardlink.bin"
: >"$SRC/empty"
printf '  %s entries, %s\n' "$(find "$SRC" | wc -l)" "$(du -sh "$SRC" | cut -f1)"

section "3. Build a RAFS v6 image: the bootstrap (metadata) and a data blob named by its sha256"
run "$WARREN" create --blob-dir "$BLOBS" --bootstrap "$BOOT" "$SRC"
ls -l "$BOOT" "$BLOBS"

section "4. Validate the image: structure, blob table and chunk digests"
run "$WARREN" check --bootstrap "$BOOT" --blob-dir "$BLOBS"

section "5. Describe the image"
run "$WARREN" inspect --bootstrap "$BOOT"

section "6. Export bootstrap + blob as one uncompressed erofs block image"
run "$WARREN" export --block --bootstrap "$BOOT" --blob-dir "$BLOBS" --output "$IMG"
ls -l "$IMG"

section "7. Mount it with the kernel's erofs driver and compare with the source"
run mount -t erofs -o ro,loop "$IMG" "$MNT"
run diff -r --no-dereference "$SRC" "$MNT"
echo "  contents: identical"
# diff compares bytes and symlink targets; also compare type, mode, owner, and the
# link count of non-directories (hard links); directory link counts depend on the
# source file system, so they are left out.
meta() {
    (cd "$1" && find . \( -type d -printf '%y %#m %U:%G - %p\n' \) -o -printf '%y %#m %U:%G %n %p\n' |
        LC_ALL=C sort)
}
if ! diff <(meta "$SRC") <(meta "$MNT") >"$WORK/meta.diff"; then
    head -n 40 "$WORK/meta.diff"
    die "file types, modes, owners or link counts differ between $SRC and the erofs mount"
fi
echo "  types, modes, owners, link counts: identical"

section "8. Clean up"
run umount "$MNT"
echo
echo "demo: OK"
