#!/usr/bin/env bash
# Lazy start from a registry behind a bandwidth cap, on the Debian bookworm minbase image:
#
#   convert   warren convert of the OCI image (one ~95 MB tar.gz layer) into a Nydus
#             image in the same registry (no cap: registry on loopback)
#   warren    from `warren mount --image` starting (manifest, bootstrap layer, mount) to
#             `chroot MNT /bin/bash -c true` done, empty chunk store
#   nydusd    the same with nydusd 2.2.0 and its registry backend: the bootstrap layer
#             fetched and unpacked first (nydus-snapshotter's job), then nydusd started,
#             then the same chroot; empty blob cache
#   pull      the classic path: skopeo copy of the OCI image + umoci unpack, then chroot
#
# The registry sits behind benches/ratelimit_proxy.py (default 50 MB/s, one bucket for
# every connection), which also counts the bytes each run takes from the registry.
# Page cache dropped before each run (the programs' own files read back in); median of
# the rounds.
# Usage: benches/compare-registry.sh [--rounds N] [--rate BYTES_PER_S] [--json]
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=benches/registry-setup.sh
source "$REPO/benches/registry-setup.sh"
cd "$REPO"

ROUNDS=3
RATE=$((50 * 1000 * 1000))
JSON=0
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) ROUNDS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    *) die "usage: benches/compare-registry.sh [--rounds N] [--rate BYTES_PER_S] [--json]" ;;
    esac
done
prepare_registry_bench
ensure_nydus_tools
NYDUSD=$WARREN_TOOLS_ROOT/bin/nydusd

WORK=$(mktemp -d /var/tmp/warren-regbench.XXXXXX)
MNT=$WORK/mnt
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    mountpoint -q "$MNT" && umount -l "$MNT"
    rm -rf "$WORK"
}
trap cleanup EXIT
mkdir -p "$MNT"
# Page cache dropped, then the programs themselves loaded again: a node or snapshotter is
# resident when an image starts, so what is measured is the image, not the binaries.
drop_caches() {
    sync
    echo 3 > /proc/sys/vm/drop_caches
    "$WARREN" --version > /dev/null
    "$NYDUSD" --version > /dev/null 2>&1 || true
    skopeo --version > /dev/null
    umoci --version > /dev/null
}
# The registry, the OCI image of the tree, the Nydus image, the bandwidth cap.
start_registry
push_debian_oci
CONVERT_MS=()
for r in $(seq "$ROUNDS"); do
    convert_debian
    CONVERT_MS+=("$CONVERT_LAST_MS")
done
start_capped_proxy "$RATE"

wait_mounted() {
    for _ in $(seq 2000); do mountpoint -q "$MNT" && return 0; sleep 0.005; done
    die "$1 did not mount"
}
stop_mount() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    mountpoint -q "$MNT" && umount -l "$MNT"
    return 0
}

declare -A MS BYTES
run_warren() {
    rm -rf "$WORK/store"
    drop_caches
    local b0 t0 pid
    b0=$(bytes_now)
    t0=$(now_ms)
    "$WARREN" mount -q --plain-http --cache-dir "$WORK/store" --image "$PROXY/debian:nydus" "$MNT" &
    pid=$!
    wait_mounted warren
    chroot "$MNT" /bin/bash -c true
    MS[warren]+="$(($(now_ms) - t0)) "
    BYTES[warren]+="$(($(bytes_now) - b0)) "
    stop_mount "$pid"
}
run_nydusd() {
    rm -rf "${WORK:?}/nydus-cache" "${WORK:?}/boot"
    mkdir -p "$WORK/nydus-cache" "$WORK/boot"
    printf '{"device":{"backend":{"type":"registry","config":{"scheme":"http","host":"%s","repo":"debian","timeout":20,"connect_timeout":5,"retry_limit":2}},"cache":{"type":"blobcache","config":{"work_dir":"%s"}}},"mode":"direct","digest_validate":false,"enable_xattr":true}' \
        "$PROXY" "$WORK/nydus-cache" > "$WORK/nydusd.json"
    drop_caches
    local b0 t0 pid
    b0=$(bytes_now)
    t0=$(now_ms)
    curl -sf "http://$PROXY/v2/debian/blobs/$BOOT_LAYER" | tar -xz -C "$WORK/boot" image/image.boot
    "$NYDUSD" --config "$WORK/nydusd.json" --mountpoint "$MNT" --bootstrap "$WORK/boot/image/image.boot" \
        --rlimit-nofile 0 --log-level error > "$WORK/nydusd.log" 2>&1 &
    pid=$!
    wait_mounted nydusd
    chroot "$MNT" /bin/bash -c true
    MS[nydusd]+="$(($(now_ms) - t0)) "
    BYTES[nydusd]+="$(($(bytes_now) - b0)) "
    stop_mount "$pid"
}
run_pull() {
    rm -rf "$WORK/pulled" "$WORK/bundle"
    drop_caches
    local b0 t0
    b0=$(bytes_now)
    t0=$(now_ms)
    skopeo copy -q --src-tls-verify=false "docker://$PROXY/debian:minbase" "oci:$WORK/pulled:minbase"
    umoci unpack --image "$WORK/pulled:minbase" "$WORK/bundle" > /dev/null
    chroot "$WORK/bundle/rootfs" /bin/bash -c true
    MS[pull]+="$(($(now_ms) - t0)) "
    BYTES[pull]+="$(($(bytes_now) - b0)) "
}

for r in $(seq "$ROUNDS"); do
    say "round $r/$ROUNDS"
    run_warren
    run_nydusd
    run_pull
done

C=$(echo "${CONVERT_MS[*]}" | median)
W=$(echo "${MS[warren]}" | median); WB=$(echo "${BYTES[warren]}" | median)
N=$(echo "${MS[nydusd]}" | median); NB=$(echo "${BYTES[nydusd]}" | median)
P=$(echo "${MS[pull]}" | median); PB=$(echo "${BYTES[pull]}" | median)
if [ "$JSON" = 1 ]; then
    printf '{"rate_bytes_per_s":%s,"rounds":%s,"blob_bytes":%s,"convert_ms":%s,' "$RATE" "$ROUNDS" "$BLOB_SIZE" "$C"
    printf '"warren":{"ms":%s,"registry_bytes":%s},"nydusd":{"ms":%s,"registry_bytes":%s},' "$W" "$WB" "$N" "$NB"
    printf '"pull":{"ms":%s,"registry_bytes":%s},"warren_over_nydusd":%s,"pull_over_warren":%s}\n' \
        "$P" "$PB" "$(ratio "$W" "$N")" "$(ratio "$P" "$W")"
else
    printf '\nlazy start of /bin/bash -c true, registry capped at %s MB/s, median of %s\n' "$(mb "$RATE")" "$ROUNDS"
    printf '  %-8s %8s ms  %8s MB from the registry\n' warren "$W" "$(mb "$WB")" nydusd "$N" "$(mb "$NB")" pull "$P" "$(mb "$PB")"
    printf '  warren/nydusd time %s, bytes %s; pull/warren time %s\n' \
        "$(ratio "$W" "$N")" "$(ratio "$WB" "$NB")" "$(ratio "$P" "$W")"
    printf '  convert (uncapped): %s ms, data blob %s MB\n' "$C" "$(mb "$BLOB_SIZE")"
fi
