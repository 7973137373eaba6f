#!/usr/bin/env bash
# Sync benchmark, in one run, on a real `deltadrive serve` (embedded backends) on 127.0.0.1 and
# two drives A and B mounted from it (one user, two devices, one volume):
#
#  (a) visibility: FILES small files (~1 KiB), one at a time: write+close on A, then poll B
#      every 1 ms until it reads the same bytes; p50/p99 of close -> readable, in ms.
#  (b) GIB_MB MiB of new random data copied into A: seconds until B holds the same bytes, and
#      the wire bytes (status counters: bytes_uploaded of A, bytes_downloaded of B), against
#      `rsync -a` of the same file between two local directories on the same disk.
#  (c) the four edits of scripts/bench/delta.sh on an EDIT_MB (64) MiB file in A (delta.sh's
#      content: splitmix64, SEED 20261124), one after the other (overwrite 1 byte, insert 1
#      byte, delete 4 KiB, all in the middle; append 1 MiB), each written in place as a program
#      would: A's upload and B's download for each (status counter deltas once both engines
#      are quiet), beside the bytes of the difference transaction computed offline (delta.sh's
#      `delta_bytes diff`) and rsync's bytes for the same edit (`rsync --no-whole-file -I
#      --stats`, sent + received, as delta.sh measures them).
#  (d) Unison (Debian's package) between two local directories: the same visibility and new
#      data workloads. Debian ships no unison-fsmonitor, so Unison runs with `-repeat 1`
#      (rescans both replicas every second): its continuous mode on this system.
#
# Last line:
#   bench sync: visible_p50_ms=N visible_p99_ms=N insert1_vs_rsync=R gib_rate_vs_rsync=R
# insert1_vs_rsync = A's upload bytes for the 1-byte insert / rsync's bytes (lower is better);
# gib_rate_vs_rsync = deltadrive's MiB/s from A to B / rsync -a's MiB/s (higher is better).
#
# Installs what it needs with apt-get (fuse3, rsync, python3, unison) and says so.
# Environment: FILES (200), GIB_MB (1024), EDIT_MB (64), SEED (20261124), EDITS (the four, in
# order), UNISON_BENCH (1: run part d; 0: skip), UNISON_FILES (50), BENCH_DIR
# (/var/tmp/deltadrive-sync-bench: on the disk being measured), PROBE_TIMEOUT_S (120: how long
# any one wait may last before the run fails), KEEP (1: keep the logs in BENCH_DIR/logs),
# TIMELINE (0; 1: during (b), sample both status counters every 100 ms to show when A's push
# and B's apply ended: two `deltadrive status` processes per sample, ~0.7 CPU s per run on
# the cores the run measures, so it is off unless asked for), TLS (0; 1: the server serves
# HTTPS with a certificate from a CA made for the run with openssl, and the mounts use
# https://localhost:PORT with --ca-file).
set -euo pipefail
cd "$(dirname "$0")/../.."

FILES=${FILES:-200}
GIB_MB=${GIB_MB:-1024}
EDIT_MB=${EDIT_MB:-64}
UNISON_BENCH=${UNISON_BENCH:-1}
UNISON_FILES=${UNISON_FILES:-50}
SEED=${SEED:-20261124}
EDITS=${EDITS:-overwrite1 insert1 delete4k append1m}
TIMELINE=${TIMELINE:-0}
TLS=${TLS:-0}
BASE=${BENCH_DIR:-/var/tmp/deltadrive-sync-bench}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
PROBE_PY=$PWD/scripts/bench/sync_probe.py

BENCH=sync.sh
# shellcheck source=scripts/bench/lib.sh
source scripts/bench/lib.sh
probe() { python3 "$PROBE_PY" "$@"; }

install_tools() {
    local pkgs=()
    command -v fusermount3 >/dev/null 2>&1 || pkgs+=(fuse3)
    command -v rsync >/dev/null 2>&1 || pkgs+=(rsync)
    command -v python3 >/dev/null 2>&1 || pkgs+=(python3)
    if [ "$TLS" = 1 ] && ! command -v openssl >/dev/null 2>&1; then pkgs+=(openssl); fi
    if [ "$UNISON_BENCH" = 1 ] && ! command -v unison >/dev/null 2>&1; then pkgs+=(unison); fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        say "installing ${pkgs[*]} with apt-get"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
}

install_tools
say "building deltadrive (release)"
cargo build --release --quiet --bin deltadrive --example delta_bytes
DD=${CARGO_TARGET_DIR:-$PWD/target}/release/deltadrive
DELTA_BYTES=${CARGO_TARGET_DIR:-$PWD/target}/release/examples/delta_bytes

mkdir -p "$BASE"
W=$(mktemp -d "$BASE/run.XXXXXX")
UNISON_PID=""
cleanup() {
    if [ -n "$UNISON_PID" ]; then kill "$UNISON_PID" 2>/dev/null || true; wait "$UNISON_PID" 2>/dev/null || true; fi
    bench_cleanup "$([ "${KEEP:-0}" = 1 ] && echo "$BASE/logs")"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
diagnose() { bench_diagnose A B; }

# --- server, user, devices, volume, two mounts -------------------------------------------
SERVE_TLS=() MOUNT_TLS=()
if [ "$TLS" = 1 ]; then
    say "making a CA and a certificate for localhost (openssl)"
    ec=(-newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes)
    openssl req -x509 "${ec[@]}" -days 2 -subj /CN=bench-ca -keyout "$W/ca.key" -out "$W/ca.pem" 2>/dev/null
    openssl req "${ec[@]}" -subj /CN=localhost -keyout "$W/tls.key" -out "$W/tls.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost\n' >"$W/san.ext"
    openssl x509 -req -in "$W/tls.csr" -CA "$W/ca.pem" -CAkey "$W/ca.key" -CAcreateserial -days 2 \
        -extfile "$W/san.ext" -out "$W/tls.pem" 2>/dev/null
    SERVE_TLS=(--tls-cert "$W/tls.pem" --tls-key "$W/tls.key")
    MOUNT_TLS=(--ca-file "$W/ca.pem")
fi
bench_serve A B -- "${SERVE_TLS[@]}"
if [ "$TLS" = 1 ]; then URL="https://localhost:$(sed 's/.*://' "$W/addr")"; fi
say "server at $URL (pid $SERVER_PID)"
bench_mount A "${MOUNT_TLS[@]}"
bench_mount B "${MOUNT_TLS[@]}"
say "mounted A=$W/A and B=$W/B"
quiet() { probe quiet "$DD" "$W/A" "$W/stateA" "$W/B" "$W/stateB" || { diagnose; exit 1; }; }
# Once both engines are quiet, B's copy must equal REF. Waiting on the status rather than on
# the file keeps the probe from holding B's file open: a file open for reading is busy, its
# new content waits until it is closed (and the retry fetches its chunks again).
quiet_same() { # B_FILE REF -> the counters
    local c
    c=$(quiet)
    if ! cmp -s "$1" "$2"; then
        say "$1 differs from A's after the engines went quiet; waiting for it"
        probe appear "$1" "$2" || { diagnose; exit 1; }
        c=$(quiet)
    fi
    echo "$c"
}

# --- (a) visibility latency -----------------------------------------------------------------
say "(a) visibility: $FILES files, close on A -> same bytes readable on B"
vis=$(probe visible "$W/A" "$W/B" "$FILES") || { diagnose; exit 1; }
echo "deltadrive $vis"
VIS_P50=$(field p50_ms "$vis")
VIS_P99=$(field p99_ms "$vis")
quiet >/dev/null

# --- (c) the edits of delta.sh ----------------------------------------------------------------
say "(c) edits of a $EDIT_MB MiB random file"
"$DELTA_BYTES" gen $((EDIT_MB << 20)) "$SEED" "$W/ref"
c=$(quiet); read -r upA0 _ _ downB0 <<<"$c"
cp "$W/ref" "$W/A/edit.bin"
c=$(quiet_same "$W/B/edit.bin" "$W/ref"); read -r upA1 _ _ downB1 <<<"$c"
printf 'initial %d MiB file: A uploaded %d B, B downloaded %d B\n' "$EDIT_MB" $((upA1 - upA0)) $((downB1 - downB0))
printf '%-11s %12s %12s %12s %12s %9s %9s\n' edit diff A_uploaded B_downloaded rsync up/rsync down/rsync
INSERT1=na
for kind in $EDITS; do
    cp "$W/ref" "$W/prev"
    probe edit "$kind" "$W/ref" "$W/A/edit.bin"
    c=$(quiet_same "$W/B/edit.bin" "$W/ref"); read -r upA2 _ _ downB2 <<<"$c"
    up=$((upA2 - upA1)); down=$((downB2 - downB1))
    upA1=$upA2; downB1=$downB2

    mkdir -p "$W/rsync-dest"
    cp "$W/prev" "$W/rsync-dest/file"
    stats=$(rsync --no-whole-file -I --stats "$W/ref" "$W/rsync-dest/file")
    sent=$(sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' <<<"$stats" | tr -d ,)
    received=$(sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' <<<"$stats" | tr -d ,)
    rs=$((sent + received))
    cmp -s "$W/ref" "$W/rsync-dest/file" || { say "rsync did not reproduce $kind"; exit 1; }
    diff=$("$DELTA_BYTES" diff "$W/prev" "$W/ref" | sed -n 's/^bytes=\([0-9]*\).*/\1/p')
    printf '%-11s %12d %12d %12d %12d %9s %9s\n' "$kind" "$diff" "$up" "$down" "$rs" "$(ratio "$up" "$rs")" "$(ratio "$down" "$rs")"
    if [ "$kind" = insert1 ]; then INSERT1=$(ratio "$up" "$rs"); fi
done
rm -f "$W/A/edit.bin" "$W/prev" "$W/rsync-dest/file"

# --- (b) GIB_MB MiB of new data ---------------------------------------------------------------
say "(b) $GIB_MB MiB of new random data: A -> B, and rsync -a between two local directories"
mkdir -p "$W/src" "$W/rsync-a"
head -c $((GIB_MB << 20)) /dev/urandom >"$W/src/new.bin"
# Both copies start from the same clean state: the source written out, as before rsync below
# (otherwise the kernel writes the source back while the drives work, at their expense).
sync
c=$(quiet); read -r upA0 _ _ downB0 <<<"$c"
cpu0=("$(cpu_s "$SERVER_PID")" "$(cpu_s "${DAEMON_PID[A]}")" "$(cpu_s "${DAEMON_PID[B]}")")
flt0=("$(minflt "$SERVER_PID")" "$(minflt "${DAEMON_PID[A]}")" "$(minflt "${DAEMON_PID[B]}")")
timeline=()
if [ "$TIMELINE" = 1 ]; then timeline=("$DD" "$W/A" "$W/stateA" "$W/B" "$W/stateB"); fi
big=$(probe big "$W/src/new.bin" "$W/A" "$W/B" "${timeline[@]}") || { diagnose; exit 1; }
c=$(quiet); read -r upA1 _ _ downB1 <<<"$c"
cpu1=("$(cpu_s "$SERVER_PID")" "$(cpu_s "${DAEMON_PID[A]}")" "$(cpu_s "${DAEMON_PID[B]}")")
flt1=("$(minflt "$SERVER_PID")" "$(minflt "${DAEMON_PID[A]}")" "$(minflt "${DAEMON_PID[B]}")")
DD_S=$(field visible_on_B_s "$big")
echo "deltadrive $(head -n 1 <<<"$big") A_uploaded=$((upA1 - upA0)) B_downloaded=$((downB1 - downB0))"
[ "$TIMELINE" = 1 ] && echo "deltadrive $(sed -n 2p <<<"$big") (final bytes_uploaded of A and bytes_downloaded of B first seen, from the start of the copy)"
echo "deltadrive cpu_s: server=$(elapsed "${cpu0[0]}" "${cpu1[0]}") A=$(elapsed "${cpu0[1]}" "${cpu1[1]}") B=$(elapsed "${cpu0[2]}" "${cpu1[2]}") (CPU seconds, user + system, from the copy until both engines were quiet)"
echo "deltadrive page_faults: server=$((flt1[0] - flt0[0])) A=$((flt1[1] - flt0[1])) B=$((flt1[2] - flt0[2])) (minor faults, same span)"
sync
s=$(now); rsync -a "$W/src/" "$W/rsync-a/"; e=$(now)
RSYNC_S=$(elapsed "$s" "$e")
cmp -s "$W/src/new.bin" "$W/rsync-a/new.bin" || { say "rsync -a did not copy the file"; exit 1; }
echo "rsync -a: bytes=$((GIB_MB << 20)) seconds=$RSYNC_S rate_mib_s=$(awk -v m="$GIB_MB" -v t="$RSYNC_S" 'BEGIN { printf "%.1f", m / t }')"
# Same bytes both ways, so the ratio of rates is the inverse ratio of times.
GIB_RATE=$(ratio "$RSYNC_S" "$DD_S")
rm -rf "$W/rsync-a"

# --- (d) Unison -------------------------------------------------------------------------------
if [ "$UNISON_BENCH" = 1 ]; then
    say "(d) Unison $(unison -version | cut -d' ' -f3) between two local directories, -repeat 1"
    mkdir -p "$W/uA" "$W/uB" "$W/unison"
    UNISON="$W/unison" unison "$W/uA" "$W/uB" -batch -auto -repeat 1 -times -perms 0 \
        -confirmbigdel=false -ui text >"$W/unison.log" 2>&1 &
    UNISON_PID=$!
    uvis=$(probe visible "$W/uA" "$W/uB" "$UNISON_FILES") || { tail -n 30 "$W/unison.log" >&2; exit 1; }
    echo "unison $uvis"
    ubig=$(probe big "$W/src/new.bin" "$W/uA" "$W/uB") || { tail -n 30 "$W/unison.log" >&2; exit 1; }
    echo "unison $ubig rate_vs_rsync=$(ratio "$RSYNC_S" "$(field visible_on_B_s "$ubig")")"
    kill "$UNISON_PID" 2>/dev/null || true; wait "$UNISON_PID" 2>/dev/null || true
    UNISON_PID=""
else
    say "(d) Unison skipped (UNISON_BENCH=0)"
fi

echo "bench sync: visible_p50_ms=$VIS_P50 visible_p99_ms=$VIS_P99 insert1_vs_rsync=$INSERT1 gib_rate_vs_rsync=$GIB_RATE"
