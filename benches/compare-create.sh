#!/usr/bin/env bash
# Side-by-side image build benchmark on a real root file system (Debian
# bookworm minbase, ~200 MB in ~6,800 entries):
#
#   warren create        (release build of this tree)
#   nydus-image create   (the reference, nydus-rs 2.2.0 from /var/tmp/warren-tools)
#   tar c | zstd -3 -T0  (baseline: what a plain compressed OCI layer costs)
#
# warren and nydus-image get the same options: zstd, blake3, 1 MiB chunks, RAFS v6.
# One warm-up round (page cache, binaries), then N measured rounds, the tools
# interleaved and their order rotated each round so drift hits all of them alike.
# Peak RSS comes from /usr/bin/time (for the tar pipeline: its largest process);
# wall time is measured around it, in milliseconds.
#
# Usage: benches/compare-create.sh [--rounds N] [--json]
#   WARREN_ROOTFS   input tree (default /var/tmp/warren-rootfs/bookworm-minbase,
#                   made with debootstrap when missing)
#   WARREN_BIN      warren binary to measure (default: build it, release)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

usage() {
    sed -n '/^# Usage:/,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'
}

ROUNDS=3
JSON=0
while [ $# -gt 0 ]; do
    case $1 in
    --rounds) [ $# -ge 2 ] || die "--rounds needs a value"; ROUNDS=$2; shift 2 ;;
    --rounds=*) ROUNDS=${1#--rounds=}; shift ;;
    --json) JSON=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument: $1" ;;
    esac
done
[[ $ROUNDS =~ ^[1-9][0-9]*$ ]] || die "--rounds must be a positive integer, got '$ROUNDS'"

# Quiet: only the results go to stdout; only errors to stderr.
WARREN_QUIET=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
ROOTFS=${WARREN_ROOTFS:-$WARREN_ROOTFS_DEFAULT}
COMPRESSOR=zstd
DIGESTER=blake3
CHUNK_SIZE=0x100000
TOOLS=(warren nydus-image tar-zstd)

require_root "the rootfs has root-only files, and debootstrap needs root"
ensure_apt_packages time=/usr/bin/time zstd=zstd
ensure_rootfs "$ROOTFS"
ensure_nydus_tools
NYDUS_IMAGE=$WARREN_TOOLS_ROOT/bin/nydus-image

WORK=$(mktemp -d /var/tmp/warren-bench.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

if [ -n "${WARREN_BIN:-}" ]; then
    WARREN=$WARREN_BIN
else
    ensure_cargo
    if ! cargo build --release --bin warren >"$WORK/cargo-build.log" 2>&1; then
        tail -n 40 "$WORK/cargo-build.log" >&2
        die "cargo build --release --bin warren failed"
    fi
    WARREN=$CARGO_TARGET_DIR/release/warren
fi
[ -x "$WARREN" ] || die "warren binary not found at $WARREN"

# run_tool TOOL ROUND: one build into a fresh output dir; appends
# "TOOL ROUND WALL_S MAX_RSS_KIB BLOB_BYTES BOOTSTRAP_BYTES" to $WORK/results
# (ROUND 0 is the warm-up and is not counted).
run_tool() {
    local tool=$1 round=$2
    local out=$WORK/out-$tool
    rm -rf "$out"
    mkdir -p "$out/blobs"
    local cmd
    case $tool in
    warren)
        cmd=("$WARREN" create --compressor "$COMPRESSOR" --digester "$DIGESTER"
            --chunk-size "$CHUNK_SIZE" --blob-dir "$out/blobs" --bootstrap "$out/bootstrap" "$ROOTFS")
        ;;
    nydus-image)
        cmd=("$NYDUS_IMAGE" create --fs-version 6 --compressor "$COMPRESSOR" --digester "$DIGESTER"
            --chunk-size "$CHUNK_SIZE" --blob-dir "$out/blobs" --bootstrap "$out/bootstrap" "$ROOTFS")
        ;;
    tar-zstd)
        # shellcheck disable=SC2016 # expanded by the inner bash
        cmd=(bash -c 'set -o pipefail; tar -C "$1" -cf - . | zstd -3 -T0 -q -o "$2"'
            tar-zstd "$ROOTFS" "$out/blobs/layer.tar.zst")
        ;;
    esac
    # /usr/bin/time gives the peak RSS; the wall time is taken here, to the millisecond
    # (time's %e has only 10 ms steps, coarse for runs of about a second).
    local t0 t1
    t0=$(now_ms)
    if ! /usr/bin/time -f '%M' -o "$out.time" "${cmd[@]}" >"$out.log" 2>&1; then
        tail -n 20 "$out.log" >&2
        die "$tool failed (round $round): ${cmd[*]}"
    fi
    t1=$(now_ms)
    local wall rss blob boot=0
    wall=$(awk -v ms=$((t1 - t0)) 'BEGIN { printf "%.3f", ms / 1000 }')
    read -r rss <"$out.time"
    blob=$(find "$out/blobs" -type f -printf '%s\n' | awk '{ s += $1 } END { print s + 0 }')
    [ -f "$out/bootstrap" ] && boot=$(stat -c %s "$out/bootstrap")
    [ "$blob" -gt 0 ] || die "$tool wrote no blob data in $out/blobs"
    if [ "$tool" != tar-zstd ] && [ "$boot" -eq 0 ]; then
        die "$tool wrote no bootstrap at $out/bootstrap"
    fi
    echo "$tool $round $wall $rss $blob $boot" >>"$WORK/results"
}

INPUT_ENTRIES=$(find "$ROOTFS" | wc -l)
INPUT_BYTES=$(du -sb "$ROOTFS" | cut -f1)

: >"$WORK/results"
for tool in "${TOOLS[@]}"; do
    run_tool "$tool" 0
done
n=${#TOOLS[@]}
for ((r = 1; r <= ROUNDS; r++)); do
    for ((i = 0; i < n; i++)); do
        run_tool "${TOOLS[(i + r - 1) % n]}" "$r"
    done
done

# stats TOOL -> "WALL_MEDIAN WALL_MIN MAX_RSS_KIB BLOB BOOT SIZES_STABLE WALLS_CSV"
stats() {
    awk -v t="$1" '
        $1 == t && $2 > 0 {
            w[n++] = $3
            if ($4 > rss) rss = $4
            if (n > 1 && ($5 != blob || $6 != boot)) stable = 0
            blob = $5; boot = $6
        }
        BEGIN { stable = 1; rss = 0 }
        END {
            for (i = 0; i < n; i++) for (j = i + 1; j < n; j++) if (w[j] < w[i]) { x = w[i]; w[i] = w[j]; w[j] = x }
            med = (n % 2) ? w[int(n / 2)] : (w[n / 2 - 1] + w[n / 2]) / 2
            csv = ""
            for (i = 0; i < n; i++) csv = csv (i ? "," : "") w[i]
            printf "%.3f %.3f %d %d %d %d %s\n", med, w[0], rss, blob, boot, stable, csv
        }' "$WORK/results"
}

declare -A MED MIN RSS BLOB BOOT STABLE WALLS
for tool in "${TOOLS[@]}"; do
    read -r "MED[$tool]" "MIN[$tool]" "RSS[$tool]" "BLOB[$tool]" "BOOT[$tool]" "STABLE[$tool]" "WALLS[$tool]" < <(stats "$tool")
done

# ratio A B -> A/B with 2 decimals, or "null" when B is 0
ratio() {
    awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0) print "null"; else printf "%.2f\n", a / b }'
}
R_WALL=$(ratio "${MED[warren]}" "${MED[nydus-image]}")
R_RSS=$(ratio "${RSS[warren]}" "${RSS[nydus-image]}")
R_BLOB=$(ratio "${BLOB[warren]}" "${BLOB[nydus-image]}")
R_BOOT=$(ratio "${BOOT[warren]}" "${BOOT[nydus-image]}")

mib() {
    awk -v b="$1" 'BEGIN { printf "%.2f MiB", b / 1048576 }'
}

json_str() {
    local s=${1//\\/\\\\}
    printf '"%s"' "${s//\"/\\\"}"
}

if [ "$JSON" = 1 ]; then
    printf '{"input":{"path":%s,"entries":%d,"bytes":%d},' "$(json_str "$ROOTFS")" "$INPUT_ENTRIES" "$INPUT_BYTES"
    printf '"rounds":%d,"options":{"compressor":"%s","digester":"%s","chunk_size":"%s","fs_version":6},"tools":{' \
        "$ROUNDS" "$COMPRESSOR" "$DIGESTER" "$CHUNK_SIZE"
    sep=
    for tool in "${TOOLS[@]}"; do
        boot=${BOOT[$tool]}
        [ "$tool" = tar-zstd ] && boot=null
        stable=false
        [ "${STABLE[$tool]}" = 1 ] && stable=true
        printf '%s"%s":{"wall_s":[%s],"wall_median_s":%s,"wall_min_s":%s,"max_rss_kib":%d,"blob_bytes":%d,"bootstrap_bytes":%s,"sizes_stable":%s}' \
            "$sep" "$tool" "${WALLS[$tool]}" "${MED[$tool]}" "${MIN[$tool]}" "${RSS[$tool]}" "${BLOB[$tool]}" "$boot" "$stable"
        sep=,
    done
    printf '},"warren_over_nydus_image":{"wall_median":%s,"max_rss":%s,"blob":%s,"bootstrap":%s}}\n' \
        "$R_WALL" "$R_RSS" "$R_BLOB" "$R_BOOT"
    exit 0
fi

printf 'input: %s (%d entries, %s); %d rounds after 1 warm-up; %s, %s, chunk %s\n\n' \
    "$ROOTFS" "$INPUT_ENTRIES" "$(mib "$INPUT_BYTES")" "$ROUNDS" "$COMPRESSOR" "$DIGESTER" "$CHUNK_SIZE"
printf '%-13s %12s %10s %12s %14s %14s\n' tool "wall median" "wall min" "max RSS" blob bootstrap
for tool in "${TOOLS[@]}"; do
    boot=$(mib "${BOOT[$tool]}")
    [ "$tool" = tar-zstd ] && boot=-
    note=
    [ "${STABLE[$tool]}" = 1 ] || note="  (sizes varied between rounds)"
    printf '%-13s %10s s %8s s %12s %14s %14s%s\n' "$tool" "${MED[$tool]}" "${MIN[$tool]}" \
        "$(mib $((${RSS[$tool]} * 1024)))" "$(mib "${BLOB[$tool]}")" "$boot" "$note"
done
printf '\nwarren / nydus-image: wall %sx, max RSS %sx, blob %sx, bootstrap %sx\n' \
    "$R_WALL" "$R_RSS" "$R_BLOB" "$R_BOOT"
