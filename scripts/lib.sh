# shellcheck shell=bash
# Helpers shared by scripts/test.sh, scripts/demo.sh and benches/*.sh.
# Source this file; it defines functions and defaults, and runs nothing.
#
# Everything slow that the tests and benchmarks need is cached under /var/tmp,
# outside the clone, because CI clones afresh on every run but keeps the machine:
#   /var/tmp/warren-target   cargo's target dir for warren itself
#   /var/tmp/warren-tools    the reference Nydus tools (nydus-image, nydusd)
#   /var/tmp/warren-rootfs   a Debian minbase root file system, the realistic input

WARREN_TOOLS_ROOT=${WARREN_TOOLS_ROOT:-/var/tmp/warren-tools}
WARREN_NYDUS_VERSION=2.2.0
WARREN_ROOTFS_DEFAULT=/var/tmp/warren-rootfs/bookworm-minbase
WARREN_DEBIAN_MIRROR=${WARREN_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# Set WARREN_QUIET=1 to silence progress messages (errors are always printed).
WARREN_QUIET=${WARREN_QUIET:-0}

say() {
    [ "$WARREN_QUIET" = 1 ] || printf '==> %s\n' "$*" >&2
}

die() {
    printf 'error: %s\n' "$*" >&2
    exit 1
}

# Wall clock in milliseconds (bash 5's EPOCHREALTIME, no fork).
now_ms() {
    local t=${EPOCHREALTIME/./}
    printf '%s' "$((t / 1000))"
}

# fmt_secs MS -> "12.3s"
fmt_secs() {
    printf '%d.%ds' "$(($1 / 1000))" "$((($1 % 1000) / 100))"
}

require_root() { # [WHY]
    [ "$(id -u)" -eq 0 ] ||
        die "must run as root (id -u is $(id -u)): ${1:-this script needs root}"
}

# cargo is installed by rustup under ~/.cargo/bin; a non-login shell may not have it on PATH.
ensure_cargo() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        PATH="${HOME:-/root}/.cargo/bin:$PATH"
        export PATH
    fi
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install the Rust toolchain (rustup) first"
}

# apt_missing PKG=CHECK ...: prints the packages whose CHECK is absent. CHECK is a
# command name or an absolute path that the package provides.
apt_missing() {
    local spec pkg check
    for spec in "$@"; do
        pkg=${spec%%=*}
        check=${spec#*=}
        if [[ $check == /* ]]; then
            [ -e "$check" ] || printf '%s\n' "$pkg"
        else
            command -v "$check" >/dev/null 2>&1 || printf '%s\n' "$pkg"
        fi
    done
}

# ensure_apt_packages PKG=CHECK ...
# Runs apt-get (update + install) only when something is missing, so warm runs cost
# nothing. A lock serialises our own concurrent runs; apt waits for dpkg's lock too.
ensure_apt_packages() {
    local missing
    missing=$(apt_missing "$@")
    [ -z "$missing" ] && return 0

    local lock=/var/tmp/warren-apt.lock lock_fd
    exec {lock_fd}>"$lock"
    flock "$lock_fd"
    missing=$(apt_missing "$@") # another run may have installed them meanwhile
    if [ -n "$missing" ]; then
        local -a pkgs
        mapfile -t pkgs <<<"$missing"
        say "apt-get install ${pkgs[*]}"
        local log
        log=$(mktemp /var/tmp/warren-apt.XXXXXX.log)
        if ! {
            DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 update -q &&
                DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0 \
                    install -y -q --no-install-recommends "${pkgs[@]}"
        } >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            die "apt-get install ${pkgs[*]} failed (full log: $log)"
        fi
        rm -f "$log"
    fi
    exec {lock_fd}>&-

    # A package that installed but does not provide what we check for is an error too.
    missing=$(apt_missing "$@")
    [ -z "$missing" ] || die "still missing after apt-get install: $(echo "$missing" | tr '\n' ' ')"
}

# Sets WARREN to the warren binary a benchmark runs: $WARREN_BIN when given, else a
# release build in $CARGO_TARGET_DIR.
ensure_warren_bin() {
    WARREN=${WARREN_BIN:-}
    if [ -z "$WARREN" ]; then
        cargo build --release --quiet --bin warren
        WARREN=$CARGO_TARGET_DIR/release/warren
    fi
}

# Builds nydus-image, nydusd and nydusctl from crates.io into $WARREN_TOOLS_ROOT/bin
# (about 6 minutes cold on 2 cores), unless nydus-image is already there, and puts
# that bin dir on PATH. A lock keeps two runs from building into the same root at once.
ensure_nydus_tools() {
    local bin=$WARREN_TOOLS_ROOT/bin
    if [ ! -x "$bin/nydus-image" ]; then
        ensure_cargo
        # nydus-rs builds C dependencies that need these.
        ensure_apt_packages cmake=cmake libssl-dev=/usr/include/openssl/ssl.h pkg-config=pkg-config
        mkdir -p "$WARREN_TOOLS_ROOT"
        local lock=$WARREN_TOOLS_ROOT/.install.lock lock_fd
        exec {lock_fd}>"$lock"
        if ! flock -n "$lock_fd"; then
            say "another run is installing the Nydus tools; waiting for $lock"
            flock "$lock_fd"
        fi
        if [ ! -x "$bin/nydus-image" ]; then
            local log=$WARREN_TOOLS_ROOT/install.log
            say "cargo install nydus-rs $WARREN_NYDUS_VERSION into $WARREN_TOOLS_ROOT (about 6 min cold; log: $log)"
            if ! CARGO_TARGET_DIR=$WARREN_TOOLS_ROOT/target \
                cargo install --locked nydus-rs --version "$WARREN_NYDUS_VERSION" \
                --root "$WARREN_TOOLS_ROOT" >"$log" 2>&1; then
                tail -n 40 "$log" >&2
                die "cargo install nydus-rs $WARREN_NYDUS_VERSION failed (full log: $log)"
            fi
        fi
        exec {lock_fd}>&-
    fi
    local b
    for b in nydus-image nydusd; do
        [ -x "$bin/$b" ] || die "$bin/$b is missing after installing nydus-rs $WARREN_NYDUS_VERSION"
    done
    case ":$PATH:" in
    *":$bin:"*) ;;
    *) PATH="$bin:$PATH" ;;
    esac
    export PATH
}

# ensure_rootfs [DIR]
# Makes a Debian bookworm minbase root file system at DIR (default
# $WARREN_ROOTFS_DEFAULT) unless it exists. debootstrap runs into a temporary
# sibling directory that is renamed into place only on success, so an
# interrupted run never leaves a half-made tree where a finished one is expected.
ensure_rootfs() {
    local dest=${1:-$WARREN_ROOTFS_DEFAULT}
    [ -d "$dest" ] && return 0

    command -v debootstrap >/dev/null 2>&1 || ensure_apt_packages debootstrap=debootstrap
    local parent
    parent=$(dirname "$dest")
    mkdir -p "$parent"
    local lock=$parent/.lock lock_fd
    exec {lock_fd}>"$lock"
    if ! flock -n "$lock_fd"; then
        say "another run is making a rootfs; waiting for $lock"
        flock "$lock_fd"
    fi
    if [ ! -d "$dest" ]; then
        # Holding the lock, nobody else is building: leftovers are from killed runs.
        rm -rf "$parent"/.tmp-*
        local tmp
        tmp=$(mktemp -d "$parent/.tmp-$(basename "$dest").XXXXXX")
        chmod 0755 "$tmp"
        say "debootstrap --variant=minbase bookworm -> $dest (about 90 s)"
        local log=$parent/debootstrap.log
        if ! debootstrap --variant=minbase bookworm "$tmp" "$WARREN_DEBIAN_MIRROR" >"$log" 2>&1; then
            tail -n 30 "$log" >&2
            [ -f "$tmp/debootstrap/debootstrap.log" ] && tail -n 30 "$tmp/debootstrap/debootstrap.log" >&2
            rm -rf "$tmp"
            die "debootstrap failed (log: $log)"
        fi
        [ -x "$tmp/bin/sh" ] || { rm -rf "$tmp"; die "debootstrap finished but $tmp/bin/sh is missing"; }
        mv -T "$tmp" "$dest"
    fi
    exec {lock_fd}>&-
}

# Sets and exports WARREN_FIXTURES: the env value if given, else shared/fixtures
# next to the clone (where CI puts its copy of shared/), else /work/shared/fixtures.
ensure_fixtures() {
    local repo=$1 c
    if [ -z "${WARREN_FIXTURES:-}" ]; then
        for c in "$repo/../shared/fixtures" /work/shared/fixtures; do
            if [ -d "$c" ]; then
                WARREN_FIXTURES=$(cd "$c" && pwd)
                break
            fi
        done
    fi
    [ -n "${WARREN_FIXTURES:-}" ] ||
        die "test fixtures not found: set WARREN_FIXTURES, or provide $repo/../shared/fixtures or /work/shared/fixtures"
    [ -d "$WARREN_FIXTURES" ] || die "WARREN_FIXTURES=$WARREN_FIXTURES is not a directory"
    [ -n "$(ls -A "$WARREN_FIXTURES")" ] || die "WARREN_FIXTURES=$WARREN_FIXTURES is empty"
    export WARREN_FIXTURES
}
