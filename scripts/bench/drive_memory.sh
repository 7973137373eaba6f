#!/usr/bin/env bash
# Drive memory benchmark: a local-only drive (`deltadrive mount` without a server, so no sync
# engine runs) gets N files of SIZE bytes in DIRS directories from one Python loop (open,
# write, close: scripts/bench/scale_probe.py create), and the daemon's resident memory growth
# is divided by N. The same loop on the local disk is timed first, as the reference of the
# create rate.
#
# Last line:
#   bench drive_memory: files=N rss_kb_per_file=K rss_b_per_file=B hwm_kb_per_file=K
#   rss_start_kb=K rss_end_kb=K create_vs_local=R profile=P
# rss_* = VmRSS growth from just after the mount to after the loop (the store's writer given
# a moment to drain); hwm = VmHWM growth over the same span; create_vs_local = the drive's
# create rate / the local disk's (higher is better; a noisy figure on a busy machine).
#
# Environment: N (100000), DIRS (1000), SIZE (900), PROFILE (release or debug: which build to
# run; struct layouts and the allocator are the same), DD (a deltadrive binary to use instead
# of building one), BENCH_DIR (/var/tmp/deltadrive-drive-memory), HEAPTRACK (1: run the daemon
# in the foreground under heaptrack and keep its profile in BENCH_DIR; the RSS figures then
# include heaptrack's own memory: read the profile with heaptrack_print instead).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100000}
DIRS=${DIRS:-1000}
SIZE=${SIZE:-900}
PROFILE=${PROFILE:-release}
BASE=${BENCH_DIR:-/var/tmp/deltadrive-drive-memory}
BENCH=drive_memory.sh
SCALE_PROBE=$PWD/scripts/bench/scale_probe.py
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

command -v fusermount3 >/dev/null 2>&1 || { say "fusermount3 is needed (apt-get install fuse3)"; exit 1; }
if [ -z "${DD:-}" ]; then
    say "building deltadrive ($PROFILE)"
    if [ "$PROFILE" = release ]; then
        cargo build --release --quiet --bin deltadrive
    else
        cargo build --quiet --bin deltadrive
    fi
    DD=${CARGO_TARGET_DIR:-$PWD/target}/$PROFILE/deltadrive
fi

mkdir -p "$BASE"
W=$(mktemp -d "$BASE/run.XXXXXX")
PID=""
cleanup() {
    if mountpoint -q "$W/mnt" 2>/dev/null; then
        "$DD" umount "$W/mnt" >/dev/null 2>&1 || fusermount3 -u -z "$W/mnt" 2>/dev/null || true
    fi
    if [ -n "$PID" ] && kill -0 "$PID" 2>/dev/null; then
        kill "$PID" 2>/dev/null || true
        wait "$PID" 2>/dev/null || true
    fi
    rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "local disk: $N files of $SIZE bytes in $DIRS directories"
local_create=$(python3 "$SCALE_PROBE" create "$W/local" "$N" "$DIRS" "$SIZE")
echo "local disk $local_create"
rm -rf "$W/local"

mkdir -p "$W/mnt"
if [ "${HEAPTRACK:-0}" = 1 ]; then
    # The foreground daemon under heaptrack: its PID is heaptrack's child.
    heaptrack -o "$BASE/heaptrack.drive" "$DD" mount "$W/mnt" --state "$W/state" --foreground \
        >"$W/heaptrack.log" 2>&1 &
    PID=$!
    for _ in $(seq 600); do mountpoint -q "$W/mnt" && break; sleep 0.1; done
    mountpoint -q "$W/mnt" || { say "the drive did not mount"; cat "$W/heaptrack.log" >&2; exit 1; }
else
    "$DD" mount "$W/mnt" --state "$W/state" >/dev/null
fi
# The daemon writes its pid into the lock it holds (also under heaptrack, where it is not
# the child the shell knows).
DAEMON=$(tr -d '[:space:]' <"$W/state/daemon.lock")
[ -n "$DAEMON" ] || { say "no daemon pid"; exit 1; }
sleep 1
read -r RSS0 HWM0 <<<"$(rss_kb "$DAEMON")"
say "mounted at $W/mnt (daemon pid $DAEMON, VmRSS $RSS0 KiB); the same loop follows"
dd_create=$(python3 "$SCALE_PROBE" create "$W/mnt/tree" "$N" "$DIRS" "$SIZE")
echo "deltadrive $dd_create"
# Let the store's writer commit what the loop journaled (5 ms group window; more under load).
sleep 3
read -r RSS1 HWM1 <<<"$(rss_kb "$DAEMON")"
got=$(find "$W/mnt/tree" -type f | wc -l)
[ "$got" -eq "$N" ] || { say "the drive has $got files of $N"; exit 1; }

if [ "${HEAPTRACK:-0}" = 1 ]; then
    fusermount3 -u "$W/mnt"
    wait "$PID" 2>/dev/null || true
    PID=""
    say "heaptrack profile: $(ls "$BASE"/heaptrack.drive* | tail -n 1)"
else
    "$DD" umount "$W/mnt" >/dev/null
fi

per() { awk -v a="$1" -v b="$2" -v n="$N" -v m="$3" 'BEGIN { printf "%.3f", (b - a) * m / n }'; }
CREATE_VS_LOCAL=$(ratio "$(field ' rate' "$dd_create")" "$(field ' rate' "$local_create")")
echo "bench drive_memory: files=$N rss_kb_per_file=$(per "$RSS0" "$RSS1" 1) rss_b_per_file=$(per "$RSS0" "$RSS1" 1024 | cut -d. -f1) hwm_kb_per_file=$(per "$HWM0" "$HWM1" 1) rss_start_kb=$RSS0 rss_end_kb=$RSS1 create_vs_local=$CREATE_VS_LOCAL profile=$PROFILE"
