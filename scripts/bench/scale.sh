#!/usr/bin/env bash
# Scale benchmark: a synced volume of N small files, on a real `deltadrive serve` (embedded
# backends) on 127.0.0.1 and drives A, B (and a late C) mounted from it, against the same
# work on the local disk in the same run:
#
#  (a) create: N files of SIZE bytes in DIRS directories written on A by one Python loop
#      (open, write, close), against the same loop on the local disk: files/s of the first
#      10,000, of the 10,000 ending at 100,000, and of the last 10,000 (the rate must hold as
#      the volume grows); then seconds until B has them all (both engines quiet, B's count).
#  (b) memory: resident and peak memory of A's and B's daemons and of the server, per file;
#      the server's before (a) and after (c), to see it stay flat.
#  (c) a fresh device C joins (metadata and content): seconds until C holds the volume,
#      against `rsync -a` of the local tree into an empty local directory.
#  (d) cold `ls -lR` on B (after echo 3 > /proc/sys/vm/drop_caches) against the local tree.
#  (e) visibility in the full volume: VIS_FILES small files, close on A -> readable on B (p50).
#  (f) `rm -r` of everything on A, against `rm -r` of the local tree; seconds until B is empty.
#
# Last line:
#   bench scale: files=N create_vs_local=R create_last_vs_first=R sync_s=S rss_kb_per_file_A=K
#   rss_kb_per_file_B=K server_rss_growth_kb=K join_vs_rsync=R ls_cold_vs_local=R
#   visible_p50_ms=N rm_vs_local=R rm_visible_s=S
# create_vs_local = the drive's whole create rate / the local disk's (higher is better);
# create_last_vs_first = the drive's last block rate / its first; join_vs_rsync and
# ls_cold_vs_local = the local time / the drive's time (higher is better, 0.5 is "2x the time").
#
# Installs what it needs with apt-get (fuse3, rsync, python3) and says so. Runs as root (drops
# the page cache). Environment: N (1000000; 100000 for a quick run), DIRS (1000), SIZE (900),
# VIS_FILES (50), BENCH_DIR (/var/tmp/deltadrive-scale-bench: on the disk being measured),
# PROBE_TIMEOUT_S (3600: how long any one wait may last), KEEP (1: keep the logs in
# BENCH_DIR/logs).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-1000000}
DIRS=${DIRS:-1000}
SIZE=${SIZE:-900}
VIS_FILES=${VIS_FILES:-50}
export PROBE_TIMEOUT_S=${PROBE_TIMEOUT_S:-3600}
BASE=${BENCH_DIR:-/var/tmp/deltadrive-scale-bench}
BENCH=scale.sh
SYNC_PROBE=$PWD/scripts/bench/sync_probe.py
SCALE_PROBE=$PWD/scripts/bench/scale_probe.py
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh

[ "$(id -u)" -eq 0 ] || { say "run as root: the cold runs drop the page cache"; exit 1; }
pkgs=()
command -v fusermount3 >/dev/null 2>&1 || pkgs+=(fuse3)
command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
if [ ${#pkgs[@]} -gt 0 ]; then
    say "installing ${pkgs[*]} with apt-get"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}" >/dev/null
fi
say "building deltadrive (release)"
cargo build --release --quiet --bin deltadrive
DD=${CARGO_TARGET_DIR:-$PWD/target}/release/deltadrive

mkdir -p "$BASE"
W=$(mktemp -d "$BASE/run.XXXXXX")
cleanup() { bench_cleanup "$([ "${KEEP:-0}" = 1 ] && echo "$BASE/logs")"; }
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { say "$1"; bench_diagnose "${!DAEMON_PID[@]}"; exit 1; }
quiet() { python3 "$SYNC_PROBE" quiet "$DD" "$W/$1" "$W/state$1" "$W/$2" "$W/state$2" >/dev/null || fail "$1 and $2 not quiet"; }
cold() { sync; echo 3 >/proc/sys/vm/drop_caches; }
# Seconds a command takes (its output discarded).
timed() { local s e; s=$(now); "$@" >/dev/null; e=$(now); elapsed "$s" "$e"; }
count() { find "$1" -type f | wc -l; }
per_file() { awk -v k="$1" -v n="$N" 'BEGIN { printf "%.3f", k / n }'; }

bench_serve A B C
say "server at $URL (pid $SERVER_PID)"
bench_mount A
bench_mount B
read -r SERVER_RSS0 _ <<<"$(rss_kb "$SERVER_PID")"
say "mounted A=$W/A and B=$W/B; $N files of $SIZE bytes in $DIRS directories follow"

# --- (a) create -----------------------------------------------------------------------------
cold
local_create=$(python3 "$SCALE_PROBE" create "$W/local" "$N" "$DIRS" "$SIZE")
echo "local disk $local_create"
cold
s=$(now)
dd_create=$(python3 "$SCALE_PROBE" create "$W/A/tree" "$N" "$DIRS" "$SIZE")
echo "deltadrive $dd_create"
e_create=$(now)
quiet A B
e_sync=$(now)
got=$(count "$W/B/tree")
[ "$got" -eq "$N" ] || fail "B has $got files of $N after both engines went quiet"
SYNC_S=$(elapsed "$e_create" "$e_sync")
echo "deltadrive B has all $N files: $(elapsed "$s" "$e_sync") s after the first create, $SYNC_S s after the last"
CREATE_VS_LOCAL=$(ratio "$(field ' rate' "$dd_create")" "$(field ' rate' "$local_create")")
CREATE_LAST_VS_FIRST=$(ratio "$(field last_block_rate "$dd_create")" "$(field first_block_rate "$dd_create")")
echo "create rate vs local: whole=$CREATE_VS_LOCAL first_block=$(ratio "$(field first_block_rate "$dd_create")" "$(field first_block_rate "$local_create")") block_100k=$(ratio "$(field block_100k_rate "$dd_create")" "$(field block_100k_rate "$local_create")") last_block=$(ratio "$(field last_block_rate "$dd_create")" "$(field last_block_rate "$local_create")")"

# --- (b) memory -----------------------------------------------------------------------------
read -r RSS_A HWM_A <<<"$(rss_kb "${DAEMON_PID[A]}")"
read -r RSS_B HWM_B <<<"$(rss_kb "${DAEMON_PID[B]}")"
echo "memory KiB: A rss=$RSS_A peak=$HWM_A ($(per_file "$RSS_A") per file), B rss=$RSS_B peak=$HWM_B ($(per_file "$RSS_B") per file)"

# --- (c) a fresh device joins ---------------------------------------------------------------
cold
s=$(now)
bench_mount C
quiet B C
e=$(now)
got=$(count "$W/C/tree")
[ "$got" -eq "$N" ] || fail "C has $got files of $N after it went quiet"
JOIN_S=$(elapsed "$s" "$e")
read -r RSS_C HWM_C <<<"$(rss_kb "${DAEMON_PID[C]}")"
cold
RSYNC_S=$(timed rsync -a "$W/local/" "$W/rsync/")
JOIN_VS_RSYNC=$(ratio "$RSYNC_S" "$JOIN_S")
echo "join: C holds the volume in $JOIN_S s (rsync -a of the local tree: $RSYNC_S s); C rss=$RSS_C peak=$HWM_C KiB"
rm -rf "$W/rsync"
read -r SERVER_RSS1 SERVER_HWM <<<"$(rss_kb "$SERVER_PID")"
echo "server KiB: rss before=$SERVER_RSS0 after=$SERVER_RSS1 peak=$SERVER_HWM"

# --- (d) cold ls -lR ------------------------------------------------------------------------
cold
LS_LOCAL=$(timed ls -lR "$W/local")
cold
LS_B=$(timed ls -lR "$W/B/tree")
LS_VS_LOCAL=$(ratio "$LS_LOCAL" "$LS_B")
echo "cold ls -lR: local=$LS_LOCAL s B=$LS_B s"

# --- (e) visibility in the full volume ------------------------------------------------------
vis=$(python3 "$SYNC_PROBE" visible "$W/A" "$W/B" "$VIS_FILES") || fail "visibility probe failed"
echo "deltadrive $vis"
VIS_P50=$(field p50_ms "$vis")

# --- (f) rm -r ------------------------------------------------------------------------------
RM_LOCAL=$(timed rm -r "$W/local")
s=$(now)
rm -r "$W/A/tree"
e_rm=$(now)
python3 "$SCALE_PROBE" empty "$W/B/tree" "$PROBE_TIMEOUT_S" >/dev/null || fail "B still has the tree"
e_gone=$(now)
RM_A=$(elapsed "$s" "$e_rm")
RM_VISIBLE=$(elapsed "$e_rm" "$e_gone")
echo "rm -r: local=$RM_LOCAL s A=$RM_A s; B empty $RM_VISIBLE s after A's rm returned"

echo "bench scale: files=$N create_vs_local=$CREATE_VS_LOCAL create_last_vs_first=$CREATE_LAST_VS_FIRST sync_s=$SYNC_S rss_kb_per_file_A=$(per_file "$RSS_A") rss_kb_per_file_B=$(per_file "$RSS_B") server_rss_growth_kb=$((SERVER_RSS1 - SERVER_RSS0)) join_vs_rsync=$JOIN_VS_RSYNC ls_cold_vs_local=$LS_VS_LOCAL visible_p50_ms=$VIS_P50 rm_vs_local=$(ratio "$RM_LOCAL" "$RM_A") rm_visible_s=$RM_VISIBLE"
