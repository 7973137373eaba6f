#!/usr/bin/env bash
# Server benchmark (issue 4): commits/s with 1 and 8 concurrent clients, chunk upload MB/s
# with 1 and 8 clients, long-poll notify latency p50/p99, all over loopback against a real
# `deltadrive serve` in a temporary data directory. Last line:
#   bench server: commits1=N commits8=N upload_mbs=N notify_p50_ms=N notify_p99_ms=N
# (upload_mbs is the 1-client figure; the 8-client one is printed above it.)
# Usage: scripts/bench/server.sh [SECONDS_PER_COMMIT_RUN]   (default 5)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --bin deltadrive --example server_bench
exec target/release/examples/server_bench target/release/deltadrive "${1:-5}"
