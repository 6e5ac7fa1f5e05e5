#!/usr/bin/env bash
# The main job, end to end, on a fresh machine: build warren, turn a real
# directory into a RAFS v6 image (bootstrap + data blob), validate and describe
# it, export it as a plain erofs block image, mount that with the kernel's own
# erofs driver and check that every file reads back the same; then start a warren
# node, mount the image lazily over FUSE through its API socket, read everything
# back, and print the node's metrics (where every chunk came from).
#
# Needs root (loop and FUSE mounts). Uses the same cargo target dir as the tests.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
WARREN=$CARGO_TARGET_DIR/release/warren

require_root "the demo loop-mounts an erofs image"
ensure_cargo
# The build links the chunk store's index against Debian's RocksDB (.cargo/config.toml);
# bindgen needs libclang for its bindings.
ensure_apt_packages librocksdb-dev=/usr/include/rocksdb/c.h libclang-dev=/usr/lib/llvm-14/lib/libclang.so
grep -qw erofs /proc/filesystems || die "the kernel has no erofs support (not in /proc/filesystems)"

WORK=$(mktemp -d /var/tmp/warren-demo.XXXXXX)
SRC=$WORK/src
BLOBS=$WORK/blobs
BOOT=$WORK/image.boot
IMG=$WORK/image.erofs
MNT=$WORK/mnt
FUSE_MNT=$WORK/fuse
SOCK=$WORK/node/api.sock
NODE_PID=

cleanup() {
    local rc=$?
    [ "$rc" -eq 0 ] || echo "demo: FAILED (exit $rc)" >&2
    if mountpoint -q "$MNT" 2>/dev/null; then
        umount "$MNT" || echo "warning: could not unmount $MNT" >&2
    fi
    if [ -n "$NODE_PID" ]; then
        kill "$NODE_PID" 2>/dev/null && wait "$NODE_PID" 2>/dev/null
        mountpoint -q "$FUSE_MNT" 2>/dev/null && umount -l "$FUSE_MNT"
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

run umount "$MNT"

section "8. Start a warren node (API on a unix socket, Prometheus metrics on TCP)"
mkdir -p "$FUSE_MNT" "$WORK/node"
cat > "$WORK/node.toml" <<TOML
data_dir = "$WORK/node"
blob_dir = "$BLOBS"
metrics_addr = "127.0.0.1:0"
TOML
printf '  $ %s\n' "$WARREN node --config $WORK/node.toml &"
"$WARREN" node --config "$WORK/node.toml" &
NODE_PID=$!
for _ in $(seq 100); do [ -S "$SOCK" ] && break; sleep 0.05; done
api() { curl -sS --fail-with-body --unix-socket "$SOCK" "$@"; echo; }
for _ in $(seq 100); do api http://localhost/api/v1/daemon >/dev/null 2>&1 && break; sleep 0.05; done
run api http://localhost/api/v1/daemon

section "9. Mount the image through the API: FUSE, data fetched chunk by chunk on first read"
run api -X POST "http://localhost/api/v1/mount?mountpoint=$FUSE_MNT" \
    -H 'Content-Type: application/json' -d "{\"source\": \"$BOOT\", \"fs_type\": \"rafs\"}"
run diff -r --no-dereference "$SRC" "$FUSE_MNT"
echo "  contents through FUSE: identical"
if ! diff <(meta "$SRC") <(meta "$FUSE_MNT") >"$WORK/meta.diff"; then
    head -n 40 "$WORK/meta.diff"
    die "file types, modes, owners or link counts differ between $SRC and the FUSE mount"
fi
echo "  types, modes, owners, link counts: identical"

section "10. Where the bytes came from (Prometheus text from the metrics port)"
METRICS_ADDR=$(api http://localhost/api/v1/daemon | python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics_addr"])')
run curl -sS "http://$METRICS_ADDR/metrics" | grep -E '^warren_(chunk_fetch_bytes_total|chunk_fetches_total|read_bytes_total|origin_requests_total|chunk_digest_failures_total)' || true

section "11. Unmount and stop the node"
run api -X DELETE "http://localhost/api/v1/mount?mountpoint=$FUSE_MNT"
kill -TERM "$NODE_PID"
wait "$NODE_PID"
NODE_PID=
echo
echo "demo: OK"
