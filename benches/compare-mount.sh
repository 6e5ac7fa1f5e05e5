#!/usr/bin/env bash
# Side-by-side read benchmark of a mounted image on a real root file system (Debian
# bookworm minbase): warren's FUSE node, nydusd 2.2.0 mounting the same image (the
# reference), and the plain source directory.
#
#   metadata walk   find over every entry, printing inode, mode, owner, size (first walk
#                   after a fresh mount and dropped caches)
#   cold full read  every regular file read by 4 parallel readers, right after a fresh
#                   mount with an empty cache and dropped page cache
#   warm full read  the same again, caches warm (the better of two passes)
#   random 4 KiB    fio randread, 4 KiB blocks, in the largest file, page cache dropped
#                   first (the node's chunk cache stays warm), 5 s
#
# Both FUSE daemons use 4 worker threads and a local blob directory as their origin.
# Usage: benches/compare-mount.sh [--rounds N] [--json]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

ROUNDS=3
JSON=0
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    *) die "usage: benches/compare-mount.sh [--rounds N] [--json]" ;;
    esac
done
WARREN_QUIET=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
ROOTFS=${WARREN_ROOTFS:-$WARREN_ROOTFS_DEFAULT}
require_root "FUSE mounts and dropping the page cache need root"
ensure_apt_packages fio=fio
ensure_rootfs "$ROOTFS"
ensure_nydus_tools
NYDUSD=$WARREN_TOOLS_ROOT/bin/nydusd
ensure_warren_bin

WORK=$(mktemp -d /var/tmp/warren-mountbench.XXXXXX)
MNT=$WORK/mnt
PID=
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null
    mountpoint -q "$MNT" && umount -l "$MNT"
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT" "$WORK/blobs"
"$WARREN" create -q -B "$WORK/image.boot" -D "$WORK/blobs" "$ROOTFS"
BIG=$(cd "$ROOTFS" && find . -type f -printf '%s %p\n' | sort -n | tail -1 | cut -d' ' -f2-)
TOTAL=$(cd "$ROOTFS" && find . -type f -printf '%s\n' | awk '{s+=$1} END {print s}')

mount_tool() { # tool round
    local cache=$WORK/cache-$1-$2
    rm -rf "$cache"
    mkdir -p "$cache"
    case $1 in
    warren)
        "$WARREN" mount -q -B "$WORK/image.boot" -D "$WORK/blobs" --cache-dir "$cache" --fuse-threads 4 "$MNT" &
        PID=$! ;;
    nydusd)
        printf '{"device":{"backend":{"type":"localfs","config":{"dir":"%s"}},"cache":{"type":"blobcache","config":{"work_dir":"%s"}}},"mode":"direct","digest_validate":false,"enable_xattr":true}' \
            "$WORK/blobs" "$cache" > "$WORK/nydusd.json"
        "$NYDUSD" --config "$WORK/nydusd.json" --mountpoint "$MNT" --bootstrap "$WORK/image.boot" \
            --rlimit-nofile 0 --fuse-threads 4 --log-level error > "$WORK/nydusd.log" 2>&1 &
        PID=$! ;;
    dir) PID=; return ;;
    esac
    for _ in $(seq 200); do mountpoint -q "$MNT" && return; sleep 0.05; done
    die "$1 did not mount"
}

unmount_tool() {
    [ -n "$PID" ] || return 0
    umount "$MNT" 2>/dev/null || umount -l "$MNT"
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }

timed_ms() { local t0; t0=$(now_ms); "$@" > /dev/null 2>&1; echo $(( $(now_ms) - t0 )); }

read_all() { (cd "$1" && find . -type f -print0 | xargs -0 -P4 -n64 cat) > /dev/null; }

declare -A META COLD WARM IOPS
for round in $(seq "$ROUNDS"); do
    for tool in warren nydusd dir; do
        root=$MNT
        [ "$tool" = dir ] && root=$ROOTFS
        drop_caches
        mount_tool "$tool" "$round"
        META[$tool]+="$(timed_ms find "$root" -printf '%i %m %u %s\n') "
        COLD[$tool]+="$(timed_ms read_all "$root") "
        # Warm: the better of two passes, so a daemon still flushing its cache after the
        # cold pass is not what gets measured.
        w1=$(timed_ms read_all "$root"); w2=$(timed_ms read_all "$root")
        WARM[$tool]+="$(( w1 < w2 ? w1 : w2 )) "
        drop_caches
        IOPS[$tool]+="$(fio --name=r --filename="$root/$BIG" --rw=randread --bs=4k --readonly --ioengine=psync \
            --time_based --runtime=5 --output-format=json 2>/dev/null | python3 -c 'import json,sys; print(int(json.load(sys.stdin)["jobs"][0]["read"]["iops"]))') "
        unmount_tool
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mbps() { awk -v b="$TOTAL" -v ms="$1" 'BEGIN {printf "%.1f", b / 1048576 / (ms / 1000)}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
declare -A M C W I
for t in warren nydusd dir; do
    M[$t]=$(echo "${META[$t]}" | median); C[$t]=$(echo "${COLD[$t]}" | median)
    W[$t]=$(echo "${WARM[$t]}" | median); I[$t]=$(echo "${IOPS[$t]}" | median)
done
if [ "$JSON" = 1 ]; then
    printf '{"rounds":%s,"total_bytes":%s,"largest_file":"%s"' "$ROUNDS" "$TOTAL" "$BIG"
    for t in warren nydusd dir; do
        printf ',"%s":{"metadata_walk_ms":%s,"cold_read_ms":%s,"warm_read_ms":%s,"randread_4k_iops":%s}' "$t" "${M[$t]}" "${C[$t]}" "${W[$t]}" "${I[$t]}"
    done
    echo '}'
    exit 0
fi
echo "input: $ROOTFS ($(mbps 1000) MiB in files), $ROUNDS rounds, medians; largest file $BIG"
printf '%-8s %14s %18s %18s %14s\n' tool "metadata walk" "cold read" "warm read" "4K randread"
for t in warren nydusd dir; do
    printf '%-8s %11s ms %9s MiB/s %9s MiB/s %9s IOPS\n' "$t" "${M[$t]}" "$(mbps "${C[$t]}")" "$(mbps "${W[$t]}")" "${I[$t]}"
done
echo
echo "warren/nydusd: metadata walk time $(ratio "${M[warren]}" "${M[nydusd]}")x, cold read throughput $(ratio "${C[nydusd]}" "${C[warren]}")x, 4K IOPS $(ratio "${I[warren]}" "${I[nydusd]}")x"
echo "warren/dir:    warm read throughput $(ratio "${W[dir]}" "${W[warren]}")x"
