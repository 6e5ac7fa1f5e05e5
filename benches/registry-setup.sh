# shellcheck shell=bash disable=SC2034 # the variables it sets are read by the scripts that source it
# Shared by the registry benchmarks (sourced, not run): a Debian `docker-registry` on a
# free loopback port holding the Debian minbase image as OCI (`debian:minbase`), its Nydus
# conversion (`debian:nydus`), and a bandwidth-capped proxy in front of it that counts the
# bytes it sends. Expects scripts/lib.sh sourced, $WORK, $WARREN, $ROOTFS, $REPO set, and
# a PIDS array whose processes the caller's cleanup kills.

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# The value below which 99% of the samples fall (nearest rank).
p99() { tr ' ' '\n' | grep -v '^$' | sort -n | awk '{a[NR]=$1} END {i=int(NR*0.99+0.999); if (i<1) i=1; print a[i]}'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a / b}'; }
mb() { awk -v b="$1" 'BEGIN {printf "%.1f", b / 1000000}'; }

# prepare_registry_bench: what every registry benchmark needs before it starts (root,
# the registry and OCI tools, the Debian rootfs, a warren binary); sets ROOTFS.
prepare_registry_bench() {
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/warren-target}
    ROOTFS=${WARREN_ROOTFS:-$WARREN_ROOTFS_DEFAULT}
    require_root "FUSE mounts, chroot and dropping the page cache need root"
    ensure_apt_packages docker-registry=docker-registry skopeo=skopeo umoci=umoci curl=curl
    ensure_rootfs "$ROOTFS"
    ensure_warren_bin
}

# start_registry: sets REG_PORT.
start_registry() {
    REG_PORT=$(free_port)
    cat > "$WORK/registry.yml" <<YML
version: 0.1
log: {level: error, accesslog: {disabled: true}}
storage: {filesystem: {rootdirectory: $WORK/registry}, delete: {enabled: true}}
http: {addr: 127.0.0.1:$REG_PORT}
YML
    docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && return 0; sleep 0.1; done
    die "docker-registry did not start"
}

# push_debian_oci: the rootfs as a one-layer OCI image, pushed as debian:minbase.
push_debian_oci() {
    say "making the OCI image of $ROOTFS"
    tar --numeric-owner --xattrs --xattrs-include='*' -C "$ROOTFS" -cf "$WORK/layer.tar" .
    umoci init --layout "$WORK/oci"
    umoci new --image "$WORK/oci:minbase"
    umoci raw add-layer --image "$WORK/oci:minbase" "$WORK/layer.tar"
    umoci config --image "$WORK/oci:minbase" --config.cmd /bin/sh
    rm -f "$WORK/layer.tar"
    skopeo copy -q --dest-tls-verify=false "oci:$WORK/oci:minbase" "docker://127.0.0.1:$REG_PORT/debian:minbase"
}

# convert_debian: warren convert into debian:nydus; prints the milliseconds it took and
# sets BOOT_LAYER (the bootstrap layer's digest) and BLOB_SIZE.
convert_debian() {
    local t0
    t0=$(now_ms)
    "$WARREN" convert -q --plain-http --json --source "127.0.0.1:$REG_PORT/debian:minbase" \
        --target "127.0.0.1:$REG_PORT/debian:nydus" > "$WORK/convert.json"
    CONVERT_LAST_MS=$(($(now_ms) - t0))
    BOOT_LAYER=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"][0]["bootstrap"]["digest"])' "$WORK/convert.json")
    BLOB_SIZE=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["images"][0]["blobs"][0]["size"])' "$WORK/convert.json")
}

# start_capped_proxy RATE: sets PROXY (host:port); bytes_now reads its counter.
start_capped_proxy() {
    local port
    port=$(free_port)
    python3 "$REPO/benches/ratelimit_proxy.py" "$port" "127.0.0.1:$REG_PORT" "$1" "$WORK/bytes" &
    PIDS+=($!)
    for _ in $(seq 100); do [ -s "$WORK/bytes" ] && curl -sf "http://127.0.0.1:$port/v2/" >/dev/null && break; sleep 0.1; done
    PROXY=127.0.0.1:$port
}
bytes_now() { sleep 0.15; cat "$WORK/bytes"; }
