#!/usr/bin/env bash
# Rollout: N warren nodes (separate processes on 127.0.1.x) start the same image at the
# same moment, from one registry behind a bandwidth cap, with the peer mesh on and off.
#
# Each node mounts the Debian minbase image (converted to Nydus) through its API, with the
# registry (via benches/ratelimit_proxy.py, default 50 MB/s shared by all) as the origin.
# Then the page cache is dropped and every node runs `chroot MNT /bin/bash -c true` (the
# startup set) at once. Reported per fleet size and mode: p50 and p99 of the per-node
# time to done, and the bytes the registry sent (the proxy's count); and one lone node's
# time and bytes (the set's size as fetched by one node).
# Targets (issue 6): with the mesh, registry bytes <= 1.1x the lone node's and p99 <= 2x
# the lone node's time; without it the registry sends about N times the set.
#
# ROLLOUT_THREADS=1 prints the nodes' CPU during each start by thread name (to stderr).
# ROLLOUT_PERF=FILE records a system-wide perf profile of each run's start into
# FILE.N.MODE (ROLLOUT_PERF_ARGS: perf's sampling options, default -g).
# Mode `local` (not run by default) is the floor: the same start with every node already
# holding the set, so no fetch at all.
# Usage: benches/rollout.sh [--nodes "10 20"] [--rate BYTES_PER_S] [--json] [--keep DIR]
#                           [--hedge-ms MS] [--modes "on off"]
#                           [--peer-set "KEY = VALUE"]... [--node-set "KEY = VALUE"]...
# (--keep DIR saves each node's metrics and log per run; --hedge-ms MS is short for
# --peer-set "hedge_ms = MS"; --peer-set "KEY = VALUE" adds a line to every node's [peer],
# --node-set one to the top of its config, e.g. "store.sync = false".)
# The harness is meant to be kept and extended (more modes, other sets).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=scripts/lib.sh
source "$REPO/scripts/lib.sh"
# shellcheck source=benches/registry-setup.sh
source "$REPO/benches/registry-setup.sh"
cd "$REPO"

FLEETS="10 20"
RATE=$((50 * 1000 * 1000))
JSON=0
KEEP=
PEER_SET=()
NODE_SET=()
MODES="on off"
while [ $# -gt 0 ]; do
    case $1 in
    --nodes) FLEETS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --json) JSON=1; shift ;;
    --keep) KEEP=$2; shift 2 ;;
    --hedge-ms) PEER_SET+=("hedge_ms = $2"); shift 2 ;;
    --peer-set) PEER_SET+=("$2"); shift 2 ;;
    --node-set) NODE_SET+=("$2"); shift 2 ;;
    --modes) MODES=$2; shift 2 ;;
    *) die "usage: benches/rollout.sh [--nodes \"10 20\"] [--rate BYTES_PER_S] [--json] [--keep DIR] [--hedge-ms MS] [--modes \"on off\"] [--peer-set \"KEY = VALUE\"] [--node-set \"KEY = VALUE\"]" ;;
    esac
done
prepare_registry_bench

WORK=$(mktemp -d /var/tmp/warren-rollout.XXXXXX)
PIDS=()
NODE_PIDS=()
stop_nodes() {
    local p
    for p in "${NODE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${NODE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    NODE_PIDS=()
    for m in "$WORK"/n*/mnt; do mountpoint -q "$m" && umount -l "$m"; done
    return 0
}
cleanup() {
    stop_nodes
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

start_registry
push_debian_oci
convert_debian
start_capped_proxy "$RATE"
# The bootstrap is fetched once, uncapped: what is measured is the data (a snapshotter
# would have fetched the bootstrap layer before starting the container anyway).
mkdir -p "$WORK/boot"
curl -sf "http://127.0.0.1:$REG_PORT/v2/debian/blobs/$BOOT_LAYER" | tar -xz -C "$WORK/boot" image/image.boot
BOOT=$WORK/boot/image/image.boot
printf 'secret for the rollout benchmark cluster\n' > "$WORK/secret"
MOUNT_BODY=$(python3 -c '
import json, sys
cfg = {"device": {"backend": {"type": "registry", "config": {"scheme": "http", "host": sys.argv[1],
       "repo": "debian", "timeout": 30, "connect_timeout": 5, "retry_limit": 2}}},
       "mode": "direct", "digest_validate": False}
print(json.dumps({"source": sys.argv[2], "fs_type": "rafs", "config": json.dumps(cfg)}))' "$PROXY" "$BOOT")

api() { curl -sf --unix-socket "$1/data/api.sock" "${@:2}"; }
free_peer_port() { python3 -c '
import socket, sys
while True:
    t = socket.socket(); t.bind((sys.argv[1], 0)); p = t.getsockname()[1]
    u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        u.bind((sys.argv[1], p)); print(p); break
    except OSError:
        pass' "$1"; }

# start_fleet N MESH: N nodes, each with an empty store, mounted; waits for the mesh.
start_fleet() {
    local n=$1 mesh=$2 i dir ip seed=
    rm -rf "$WORK"/n*
    for i in $(seq "$n"); do
        dir=$WORK/n$i
        ip=127.0.1.$i
        mkdir -p "$dir/mnt"
        {
            printf 'data_dir = "%s/data"\ncache_dir = "%s/cache"\nmetrics_addr = "127.0.0.1:0"\nid = "rollout-%s"\n' "$dir" "$dir" "$i"
            [ ${#NODE_SET[@]} -gt 0 ] && printf '%s\n' "${NODE_SET[@]}"
            if [ "$mesh" = on ]; then
                local port
                port=$(free_peer_port "$ip")
                [ -z "$seed" ] && seed=$ip:$port
                printf '[peer]\nlisten = "%s:%s"\nseeds = ["%s"]\ncluster_secret_file = "%s"\n' "$ip" "$port" "$seed" "$WORK/secret"
                printf '%s\n' "${PEER_SET[@]}"
            fi
        } > "$dir/node.toml"
        "$WARREN" node --quiet --config "$dir/node.toml" > "$dir/node.log" 2>&1 &
        NODE_PIDS+=($!)
    done
    for i in $(seq "$n"); do
        for _ in $(seq 300); do api "$WORK/n$i" http://x/api/v1/daemon >/dev/null 2>&1 && break; sleep 0.1; done
        api "$WORK/n$i" -X POST -H 'Content-Type: application/json' -d "$MOUNT_BODY" \
            "http://x/api/v1/mount?mountpoint=$WORK/n$i/mnt" || die "node $i did not mount: $(tail -5 "$WORK/n$i/node.log")"
    done
    if [ "$mesh" = on ]; then
        for i in $(seq "$n"); do
            for _ in $(seq 300); do
                [ "$(api "$WORK/n$i" http://x/api/v1/peers | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["members"]))')" = "$n" ] && break
                sleep 0.1
            done
        done
    fi
}

# CPU milliseconds the given processes have used so far, all threads (schedstat: ns).
cpu_ms() {
    local p
    for p in "$@"; do cat /proc/"$p"/task/*/schedstat 2>/dev/null; done |
        awk '{ns += $1} END {printf "%d", ns / 1000000}'
}
# "thread-name ns" for every thread of the given processes (numbered names merged).
cpu_by_thread() {
    local p t
    for p in "$@"; do
        for t in /proc/"$p"/task/*; do
            printf '%s %s\n' "$(sed 's/-\?[0-9]*$//' "$t/comm" 2>/dev/null)" "$(cut -d' ' -f1,3 "$t/schedstat" 2>/dev/null)"
        done
    done
}
# Busy CPU milliseconds of the whole machine so far (/proc/stat, all but idle and iowait).
machine_busy_ms() {
    awk -v hz="$(getconf CLK_TCK)" '/^cpu / {print int(($2 + $3 + $4 + $7 + $8) * 1000 / hz)}' /proc/stat
}

# Context switches of the whole machine so far (/proc/stat).
context_switches() { awk '/^ctxt/ {print $2}' /proc/stat; }

# run_fleet N MESH: sets TIMES (ms per node), BYTES (registry bytes of the run), and
# NODE_CPU / BUSY (the nodes' CPU and the machine's busy CPU during the start, ms).
run_fleet() {
    local n=$1 i b0
    if [ "$2" = local ]; then
        # The floor: every node already holds the set (a first start fetched it), so
        # what is left is FUSE, the nodes and the containers sharing this machine.
        start_fleet "$n" off
        for i in $(seq "$n"); do chroot "$WORK/n$i/mnt" /bin/bash -c true; done
    else
        start_fleet "$n" "$2"
    fi
    sync
    echo 3 > /proc/sys/vm/drop_caches
    b0=$(bytes_now)
    rm -f "$WORK"/t.*
    local readers=()
    local perf=
    if [ -n "${ROLLOUT_PERF:-}" ]; then
        # shellcheck disable=SC2086 # ROLLOUT_PERF_ARGS holds several arguments
        perf record -a ${ROLLOUT_PERF_ARGS:--g} -q -o "$ROLLOUT_PERF.$n.$2" 2>/dev/null &
        perf=$!
        sleep 0.5
    fi
    local c0 m0 o0 x0
    c0=$(cpu_ms "${NODE_PIDS[@]}")
    o0=$(cpu_ms "${PIDS[@]}")
    [ -n "${ROLLOUT_THREADS:-}" ] && cpu_by_thread "${NODE_PIDS[@]}" > "$WORK/threads.0"
    m0=$(machine_busy_ms)
    x0=$(context_switches)
    for i in $(seq "$n"); do
        (t0=$(now_ms); chroot "$WORK/n$i/mnt" /bin/bash -c true; echo $(($(now_ms) - t0)) > "$WORK/t.$i") &
        readers+=($!)
    done
    wait "${readers[@]}" || die "a chroot failed"
    NODE_CPU=$(($(cpu_ms "${NODE_PIDS[@]}") - c0))
    BUSY=$(($(machine_busy_ms) - m0))
    ORIGIN_CPU=$(($(cpu_ms "${PIDS[@]}") - o0))
    if [ -n "${ROLLOUT_THREADS:-}" ]; then
        # The nodes' CPU during the start by thread name, ms (to stderr).
        cpu_by_thread "${NODE_PIDS[@]}" | awk -v n="$n" -v mode="$2" '
            FNR == NR {before[$1] += $2; b[$1] += $3; next} {after[$1] += $2; a[$1] += $3}
            END {for (t in after) if (after[t] - before[t] >= 500000)
                printf "  %s nodes %s: %-20s %6.1f ms %7d times on a CPU\n", n, mode, t,
                    (after[t] - before[t]) / 1e6, a[t] - b[t]}' \
            "$WORK/threads.0" - | sort -k5 -rn >&2
        echo "  $n nodes $2: registry and proxy: $ORIGIN_CPU ms" >&2
        echo "  $n nodes $2: context switches (machine): $(($(context_switches) - x0))" >&2
    fi
    if [ -n "$perf" ]; then kill -INT "$perf"; wait "$perf" || true; fi
    BYTES=$(($(bytes_now) - b0))
    TIMES=$(cat "$WORK"/t.* | tr '\n' ' ')
    if [ -n "$KEEP" ]; then
        mkdir -p "$KEEP/$n.$2"
        for i in $(seq "$n"); do
            api "$WORK/n$i" http://x/api/v1/metrics > "$KEEP/$n.$2/metrics.$i.json" || true
            cp "$WORK/n$i/node.log" "$KEEP/$n.$2/node.$i.log"
        done
    fi
    stop_nodes
}

say "lone node"
run_fleet 1 off
LONE_MS=$(echo "$TIMES" | median)
LONE_BYTES=$BYTES
LONE_CPU=$NODE_CPU
LONE_BUSY=$BUSY
declare -A P50 P99 B CPU MBUSY
for n in $FLEETS; do
    for mode in $MODES; do
        say "$n nodes, mesh $mode"
        run_fleet "$n" "$mode"
        P50[$n.$mode]=$(echo "$TIMES" | median)
        P99[$n.$mode]=$(echo "$TIMES" | p99)
        B[$n.$mode]=$BYTES
        CPU[$n.$mode]=$NODE_CPU
        MBUSY[$n.$mode]=$BUSY
    done
done

if [ "$JSON" = 1 ]; then
    printf '{"rate_bytes_per_s":%s,"lone":{"ms":%s,"registry_bytes":%s,"node_cpu_ms":%s,"busy_cpu_ms":%s},"fleets":[' \
        "$RATE" "$LONE_MS" "$LONE_BYTES" "$LONE_CPU" "$LONE_BUSY"
    sep=
    for n in $FLEETS; do
        for mode in $MODES; do
            printf '%s{"nodes":%s,"mesh":"%s","p50_ms":%s,"p99_ms":%s,"registry_bytes":%s,"bytes_over_lone":%s,"p99_over_lone":%s,"node_cpu_ms":%s,"busy_cpu_ms":%s}' \
                "$sep" "$n" "$mode" "${P50[$n.$mode]}" "${P99[$n.$mode]}" "${B[$n.$mode]}" \
                "$(ratio "${B[$n.$mode]}" "$LONE_BYTES")" "$(ratio "${P99[$n.$mode]}" "$LONE_MS")" \
                "${CPU[$n.$mode]}" "${MBUSY[$n.$mode]}"
            sep=,
        done
    done
    printf ']}\n'
else
    printf '\nrollout of /bin/bash -c true, registry capped at %s MB/s\n' "$(mb "$RATE")"
    printf '  lone node: %s ms, %s MB from the registry, node CPU %s ms, machine busy %s ms\n' \
        "$LONE_MS" "$(mb "$LONE_BYTES")" "$LONE_CPU" "$LONE_BUSY"
    printf '  %6s %5s %8s %8s %10s %12s %12s %13s %13s\n' nodes mesh "p50 ms" "p99 ms" "MB" "bytes/lone" "p99/lone" \
        "nodes CPU ms" "busy CPU ms"
    for n in $FLEETS; do
        for mode in $MODES; do
            printf '  %6s %5s %8s %8s %10s %12s %12s %13s %13s\n' "$n" "$mode" "${P50[$n.$mode]}" "${P99[$n.$mode]}" \
                "$(mb "${B[$n.$mode]}")" "$(ratio "${B[$n.$mode]}" "$LONE_BYTES")" "$(ratio "${P99[$n.$mode]}" "$LONE_MS")" \
                "${CPU[$n.$mode]}" "${MBUSY[$n.$mode]}"
        done
    done
fi
