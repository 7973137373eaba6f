#!/usr/bin/env bash
# Server memory benchmark: the resident memory a real `deltadrive serve` gains while a volume
# of N small files (900 bytes each, in 1,000 directories) is committed by one device in
# transactions of 4,000, pulled by a second device as it grows, and joined by a third
# (snapshot, then every chunk). Drives the server alone through the real client
# (examples/server_memory.rs), no FUSE: 100,000 files take about a minute.
#
# Usage: scripts/bench/server_memory.sh [N]   (default 100000)
#   BENCH_DIR=DIR   where the server's data directory goes (default /var/tmp; removed after)
#   PROFILE=release measure a release build (default: debug, the same structures and
#                   allocator; figures taken while other builds run are not timings)
#   SERVER_WRAP="heaptrack -o FILE"  run the server under heaptrack (slow: use N=10000)
#
# Last line:
#   bench server_memory: files=N rss_growth_kb=K hwm_growth_kb=K
# rss_growth_kb: VmRSS at the end (12 s after the join: past the server's periodic trim)
# minus VmRSS of the warmed-up server with an empty volume; hwm_growth_kb: the same for
# VmHWM (the peak).
set -euo pipefail
cd "$(dirname "$0")/../.."
n="${1:-100000}"
profile="${PROFILE:-debug}"
flags=()
[ "$profile" = release ] && flags=(--release)
cargo build "${flags[@]}" --quiet --bin deltadrive --example server_memory
target="${CARGO_TARGET_DIR:-$PWD/target}/$profile"
dir="${BENCH_DIR:-/var/tmp}"
mkdir -p "$dir"
"$target/examples/server_memory" "$target/deltadrive" "$n" "$dir"
