#!/usr/bin/env bash
# Fuzzes the parsers of outside bytes (not part of CI): the bootstrap reader, the
# blob-side decoders and the peer wire format, one target after the other, one worker each.
#
#   scripts/fuzz.sh                 every target, FUZZ_SECONDS (default 60) each
#   scripts/fuzz.sh bootstrap       just that target
#
# Installs cargo-fuzz under /var/tmp/warren-tools if it is missing, needs the nightly
# toolchain, and seeds fuzz/corpus/<target> from the fixture images (corpora and
# crash artifacts stay uncommitted). Crashes land in fuzz/artifacts/<target>/; replay
# one with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"

FUZZ_SECONDS=${FUZZ_SECONDS:-60}
export CARGO_TARGET_DIR=${FUZZ_TARGET_DIR:-/var/tmp/warren-fuzz-target}
PATH="$WARREN_TOOLS_ROOT/bin:$PATH"

ensure_cargo
ensure_fixtures "$REPO"
rustup toolchain list | grep -q '^nightly' ||
    die "the nightly toolchain is missing: rustup toolchain install nightly"
if ! command -v cargo-fuzz >/dev/null 2>&1; then
    say "installing cargo-fuzz into $WARREN_TOOLS_ROOT"
    CARGO_TARGET_DIR=$WARREN_TOOLS_ROOT/target-fuzz-install \
        cargo install --locked cargo-fuzz --root "$WARREN_TOOLS_ROOT"
fi

seed_bootstrap() {
    local dir=$REPO/fuzz/corpus/bootstrap boot name
    mkdir -p "$dir"
    for boot in "$WARREN_FIXTURES"/images/*/image.boot "$WARREN_FIXTURES"/images/*/lower.boot; do
        [ -f "$boot" ] || continue
        name=$(basename "$(dirname "$boot")")-$(basename "$boot" .boot)
        cp -f "$boot" "$dir/seed-$name"
    done
}

# Blob tails: the ci table and the 4 KiB header that ends it, or the TOC and its tar
# header; whole blobs when they are small.
seed_blob_meta() {
    local dir=$REPO/fuzz/corpus/blob_meta blob name n size
    mkdir -p "$dir"
    for blob in "$WARREN_FIXTURES"/images/*/blobs/*; do
        [ -f "$blob" ] || continue
        name=$(basename "$(dirname "$(dirname "$blob")")")-$(basename "$blob" | cut -c1-12)
        size=$(stat -c %s "$blob")
        for n in 4096 8192 12288 16384; do
            if [ "$size" -ge "$n" ]; then
                tail -c "$n" "$blob" >"$dir/seed-$name-tail$n"
            fi
        done
        if [ "$size" -le 65536 ]; then
            cp -f "$blob" "$dir/seed-$name-whole"
        fi
    done
}

run_target() {
    local target=$1 max_len=$2
    say "fuzzing $target for ${FUZZ_SECONDS}s"
    (cd "$REPO/fuzz" && cargo +nightly fuzz run "$target" -- \
        -max_total_time="$FUZZ_SECONDS" -rss_limit_mb=2048 -max_len="$max_len" -timeout=20)
}

targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(bootstrap blob_meta peer_wire)
for t in "${targets[@]}"; do
    case $t in
    bootstrap)
        seed_bootstrap
        run_target bootstrap 200000
        ;;
    blob_meta)
        seed_blob_meta
        run_target blob_meta 65536
        ;;
    peer_wire)
        # No seeds needed: requests are small and the fuzzer finds the framing fast.
        mkdir -p "$REPO/fuzz/corpus/peer_wire"
        run_target peer_wire 20000
        ;;
    *) die "unknown fuzz target $t (bootstrap, blob_meta, peer_wire)" ;;
    esac
done
