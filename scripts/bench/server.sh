#!/usr/bin/env bash
# Server benchmark: commits/s with 1 and 8 concurrent clients, chunk upload MB/s with 1 and 8
# clients, long-poll notify latency p50/p99, all over loopback against a real
# `deltadrive serve` in a temporary data directory.
#
# Usage: scripts/bench/server.sh [SECONDS_PER_COMMIT_RUN]   (default 5)
#   RUNS=N       run N times (default 1) and report the medians
#   REF_BIN=PATH also run this other deltadrive binary (built from another checkout), in turns
#                with this one, and report this one's medians against it
#
# Last line:
#   bench server: commits1=N commits8=N upload_mbs=N notify_p50_ms=N notify_p99_ms=N
#                 [ratio_commits1=R ratio_commits8=R ratio_upload=R ratio_notify_p50=R]
# (upload_mbs is the 1-client figure; the 8-client one is printed above it.)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bin deltadrive --example server_bench
secs="${1:-5}"
runs="${RUNS:-1}"
driver=target/release/examples/server_bench
this=target/release/deltadrive
out=$(mktemp)
trap 'rm -f "$out"' EXIT

for ((i = 1; i <= runs; i++)); do
    for bin in ${REF_BIN:+"$REF_BIN"} "$this"; do
        label=this
        [ "$bin" = "$this" ] || label=ref
        echo "== run $i, $label ($bin)"
        result=$("$driver" "$bin" "$secs")
        echo "$result"
        tail -1 <<<"$result" | sed "s/^bench server:/$label/" >> "$out"
    done
done

# Median of one key over the runs of one label.
median() {
    grep "^$1 " "$out" | tr ' ' '\n' | sed -n "s/^$2=//p" | sort -g |
        awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

keys="commits1 commits8 upload_mbs notify_p50_ms notify_p99_ms"
line="bench server:"
for k in $keys; do
    line+=" $k=$(median this "$k")"
done
if [ -n "${REF_BIN:-}" ]; then
    echo "medians of $runs run(s), reference ($REF_BIN):"
    ref_line=""
    for k in $keys; do
        ref_line+=" $k=$(median ref "$k")"
    done
    echo " $ref_line"
    ratio() { awk -v a="$(median this "$1")" -v b="$(median ref "$1")" 'BEGIN {printf "%.2f", a / b}'; }
    line+=" ratio_commits1=$(ratio commits1) ratio_commits8=$(ratio commits8)"
    line+=" ratio_upload=$(ratio upload_mbs) ratio_notify_p50=$(ratio notify_p50_ms)"
fi
echo "$line"
