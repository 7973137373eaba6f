#!/usr/bin/env bash
# Sync planner benchmark: plan() over ~100,000 nodes with a few changes per side, and over
# an initial sync (100,000 remote creates to order). Pure CPU, no I/O. Last line:
#   bench planner: nodes=N changes=N plan_ms=N scan_ms=N initial_sync_ms=N
# Usage: scripts/bench/planner.sh [RUNS]   (default 20; medians are reported)
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo build --release --quiet --example plan_bench
exec target/release/examples/plan_bench "${1:-20}"
