#!/usr/bin/env bash
# Memory of a synced pair, per file: the memory part of scale.sh on a binary of choice (the
# debug build by default: struct layouts and the allocator are those of release, and it
# builds in a fraction of the time), with the same state remounted and, optionally, both
# daemons under heaptrack.
#
# A real `deltadrive serve` on 127.0.0.1 and drives A and B mounted from it; N files of SIZE
# bytes in DIRS directories written on A by one Python loop; once both engines are quiet,
# each daemon's resident memory (VmRSS) per file, and its growth from just after the mount.
# REMOUNT=1 then unmounts both, mounts the same state directories again (sync.db loaded, the
# drive scanned whole) and measures again. HEAP=1 runs both daemons under heaptrack
# (foreground mounts), kills them once measured so that heaptrack's "leaked" is the live
# heap, and writes BENCH_DIR/live-{A,B}.txt: the live heap by stack (flamegraph format).
#
# Last line (first line too with REMOUNT=1: "remount: ..."):
#   bench sync_memory: files=N rss_kb_per_file_A=K rss_kb_per_file_B=K growth_kb_per_file_A=K
#   growth_kb_per_file_B=K
# Environment: DD (the binary; default: cargo build, debug), N (20000), DIRS (200), SIZE (900),
# BENCH_DIR (/var/tmp/deltadrive-sync-memory), REMOUNT (0), HEAP (0). Runs as root (FUSE).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-20000}
DIRS=${DIRS:-200}
SIZE=${SIZE:-900}
export PROBE_TIMEOUT_S=${PROBE_TIMEOUT_S:-3600}
BASE=${BENCH_DIR:-/var/tmp/deltadrive-sync-memory}
BENCH=sync_memory.sh
SYNC_PROBE=$PWD/scripts/bench/sync_probe.py
SCALE_PROBE=$PWD/scripts/bench/scale_probe.py
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

if [ -z "${DD:-}" ]; then
    say "building deltadrive (debug)"
    cargo build --quiet --bin deltadrive
    DD=${CARGO_TARGET_DIR:-$PWD/target}/debug/deltadrive
fi
[ "${HEAP:-0}" != 1 ] || command -v heaptrack >/dev/null || { say "HEAP=1 needs heaptrack"; exit 1; }

mkdir -p "$BASE"
W=$(mktemp -d "$BASE/run.XXXXXX")
declare -A HT_PID
cleanup() {
    for name in A B; do
        if mountpoint -q "$W/$name" 2>/dev/null; then
            "$DD" umount "$W/$name" --force >/dev/null 2>&1 || fusermount3 -u -z "$W/$name" 2>/dev/null || true
        fi
    done
    for name in "${!HT_PID[@]}"; do wait "${HT_PID[$name]}" 2>/dev/null || true; done
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
per_file() { awk -v k="$1" -v n="$N" 'BEGIN { printf "%.3f", k / n }'; }
quiet() { python3 "$SYNC_PROBE" quiet "$DD" "$W/A" "$W/stateA" "$W/B" "$W/stateB" >/dev/null || { say "A and B not quiet"; exit 1; }; }

# mount_one NAME: as bench_mount, or in the foreground under heaptrack.
mount_one() {
    local name=$1
    if [ "${HEAP:-0}" != 1 ]; then
        bench_mount "$name"
        return
    fi
    mkdir -p "$W/$name"
    heaptrack -o "$BASE/heap-$name" "$DD" mount "$W/$name" --state "$W/state$name" --server "$URL" \
        --volume vol --token-file "$W/token$name" --foreground >"$BASE/heaptrack-$name.out" 2>&1 &
    HT_PID[$name]=$!
    for _ in $(seq 300); do mountpoint -q "$W/$name" && break; sleep 0.2; done
    mountpoint -q "$W/$name" || { say "$name did not mount under heaptrack"; exit 1; }
    DAEMON_PID[$name]=$(pgrep -f -x "$DD mount $W/$name .*" | head -1)
}

bench_serve A B
mount_one A
mount_one B
sleep 1
read -r RSS0_A _ <<<"$(rss_kb "${DAEMON_PID[A]}")"
read -r RSS0_B _ <<<"$(rss_kb "${DAEMON_PID[B]}")"
python3 "$SCALE_PROBE" create "$W/A/tree" "$N" "$DIRS" "$SIZE" >/dev/null
quiet
got=$(find "$W/B/tree" -type f | wc -l)
[ "$got" -eq "$N" ] || { say "B has $got files of $N"; exit 1; }
read -r RSS_A HWM_A <<<"$(rss_kb "${DAEMON_PID[A]}")"
read -r RSS_B HWM_B <<<"$(rss_kb "${DAEMON_PID[B]}")"
echo "memory KiB: A rss=$RSS_A peak=$HWM_A (after mount $RSS0_A), B rss=$RSS_B peak=$HWM_B (after mount $RSS0_B)"
LINE="files=$N rss_kb_per_file_A=$(per_file "$RSS_A") rss_kb_per_file_B=$(per_file "$RSS_B") growth_kb_per_file_A=$(per_file $((RSS_A - RSS0_A))) growth_kb_per_file_B=$(per_file $((RSS_B - RSS0_B)))"

if [ "${HEAP:-0}" = 1 ]; then
    # Killed where they stand: what heaptrack saw not freed is the live heap.
    kill -9 "${DAEMON_PID[A]}" "${DAEMON_PID[B]}"
    for name in A B; do
        wait "${HT_PID[$name]}" 2>/dev/null || true
        fusermount3 -u -z "$W/$name" 2>/dev/null || true
        data=$(ls "$BASE"/heap-"$name".*zst 2>/dev/null | head -1)
        heaptrack_print -f "${data:-$BASE/heap-$name.zst}" -p 0 -a 0 -T 0 \
            --flamegraph-cost-type leaked -F "$BASE/live-$name.txt" >/dev/null 2>&1 || true
        echo "live heap of $name by stack: $BASE/live-$name.txt"
    done
    HT_PID=()
elif [ "${REMOUNT:-0}" = 1 ]; then
    for name in A B; do "$DD" umount "$W/$name" >/dev/null; done
    bench_mount A
    bench_mount B
    quiet
    read -r RRSS_A RHWM_A <<<"$(rss_kb "${DAEMON_PID[A]}")"
    read -r RRSS_B RHWM_B <<<"$(rss_kb "${DAEMON_PID[B]}")"
    echo "remount: files=$N rss_kb_per_file_A=$(per_file "$RRSS_A") rss_kb_per_file_B=$(per_file "$RRSS_B") (peak A $RHWM_A B $RHWM_B KiB)"
fi
echo "bench sync_memory: $LINE"
