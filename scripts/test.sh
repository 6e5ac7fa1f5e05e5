#!/usr/bin/env bash
# The one test command (CI runs it through .ci/run).
#
# Installs what the tests need (Debian packages, the reference Nydus tools, a
# Debian minbase rootfs), caching the slow parts under /var/tmp, then builds
# warren in release mode and runs every test with cargo-nextest. Anything
# missing is an error, never a skipped test.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
cd "$REPO"

export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
export WARREN_ROOTFS=${WARREN_ROOTFS:-$WARREN_ROOTFS_DEFAULT}

SUMMARY=()
CURRENT_STEP=
RUN_START=$(now_ms)

on_exit() {
    local rc=$?
    if [ "$rc" -ne 0 ] && [ -n "$CURRENT_STEP" ]; then
        printf '==> FAILED in step "%s" (exit %d)\n' "$CURRENT_STEP" "$rc" >&2
    fi
}
trap on_exit EXIT

# step NAME FUNCTION...: run, time and record one step. A failure exits the script
# (set -e) and the EXIT trap names the failed step.
step() {
    local name=$1 t0 line
    shift
    CURRENT_STEP=$name
    t0=$(now_ms)
    "$@"
    line=$(printf '%-14s ok  %8s' "$name" "$(fmt_secs $(($(now_ms) - t0)))")
    SUMMARY+=("$line")
    printf '==> %s\n' "$line" >&2
    CURRENT_STEP=
}

preflight() {
    require_root "the tests mount FUSE and erofs file systems"
    ensure_cargo
    command -v cargo-nextest >/dev/null 2>&1 ||
        die "cargo-nextest not found on PATH (expected /usr/local/bin/cargo-nextest)"
    [ -c /dev/fuse ] || die "/dev/fuse is missing: the FUSE tests need the kernel's FUSE"
    grep -qw erofs /proc/filesystems || die "the kernel has no erofs support (not in /proc/filesystems)"
    ensure_fixtures "$REPO"
}

apt_deps() {
    # package=command-or-path-it-provides
    ensure_apt_packages \
        erofs-utils=mkfs.erofs \
        debootstrap=debootstrap \
        attr=setfattr \
        fuse3=fusermount3 \
        cmake=cmake \
        libssl-dev=/usr/include/openssl/ssl.h \
        pkg-config=pkg-config \
        zstd=zstd \
        hyperfine=hyperfine \
        time=/usr/bin/time \
        prometheus=promtool \
        librocksdb-dev=/usr/include/rocksdb/c.h \
        libclang-dev=/usr/lib/llvm-14/lib/libclang.so \
        docker-registry=docker-registry \
        skopeo=skopeo \
        umoci=umoci \
        apache2-utils=htpasswd \
        openssl=openssl \
        curl=curl
}

# moto_server is the S3 server (it checks SigV4) that tests/s3.rs starts; boto3 creates its
# IAM user and bucket. Installed with pip into a venv under the tools dir, only when no
# moto_server with boto3 beside it is on the PATH already.
s3_deps() {
    local venv=$WARREN_TOOLS_ROOT/s3-venv
    if [ -x "$venv/bin/moto_server" ]; then
        PATH="$venv/bin:$PATH"
        export PATH
    fi
    if command -v moto_server >/dev/null 2>&1 && python3 -c 'import boto3' 2>/dev/null; then
        return 0
    fi
    say "installing moto[server] and boto3 into $venv"
    command -v python3 >/dev/null 2>&1 || ensure_apt_packages python3=python3
    if ! python3 -m venv "$venv" 2>/dev/null; then
        ensure_apt_packages python3-venv=/usr/share/doc/python3-venv
        python3 -m venv "$venv" || die "python3 -m venv $venv failed"
    fi
    "$venv/bin/python3" -m pip install --quiet 'moto[server]' boto3 ||
        die "pip could not install moto[server] and boto3 (tests/s3.rs needs them)"
    PATH="$venv/bin:$PATH"
    export PATH
    if ! command -v moto_server >/dev/null 2>&1 || ! python3 -c 'import boto3' 2>/dev/null; then
        die "moto_server or boto3 still missing after pip install"
    fi
}

rootfs() {
    ensure_rootfs "$WARREN_ROOTFS"
}

build() {
    cargo build --release --bins
}

run_tests() {
    cargo nextest run --release --workspace --no-fail-fast
}

step preflight preflight
step apt apt_deps
step nydus-tools ensure_nydus_tools
step s3-deps s3_deps
step rootfs rootfs
step build build
step tests run_tests

printf '\n==> summary (CARGO_TARGET_DIR=%s, WARREN_ROOTFS=%s, WARREN_FIXTURES=%s)\n' \
    "$CARGO_TARGET_DIR" "$WARREN_ROOTFS" "$WARREN_FIXTURES" >&2
for line in "${SUMMARY[@]}"; do
    printf '    %s\n' "$line" >&2
done
printf '    %-14s     %8s\n' total "$(fmt_secs $(($(now_ms) - RUN_START)))" >&2
