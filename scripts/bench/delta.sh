#!/usr/bin/env bash
# Bytes a deltadrive diff carries vs what rsync's delta transfer sends and receives,
# for a 64 MiB random file edited four ways. Last line:
#   bench delta: overwrite1=R insert1=R delete4k=R append1m=R
# with R = deltadrive bytes / rsync bytes (lower is better; < 1 beats rsync).
#
# deltadrive bytes: new chunk payloads (zstd level 3, raw where smaller) + encoded edit script
# + base and target manifest ids (examples/delta_bytes.rs). rsync bytes: "Total bytes sent"
# + "Total bytes received" of `rsync --no-whole-file --stats`, local to local (-I so that
# rsync's size+mtime quick check cannot skip the same-size edits). SEED=N picks other content:
# a 1-byte edit costs the one chunk it falls in, so its figure varies with that chunk's size.
set -euo pipefail

cd "$(dirname "$0")/../.."
command -v rsync >/dev/null || { echo "rsync missing: apt-get install -y rsync" >&2; exit 1; }

cargo build --release --quiet --example delta_bytes
bin=target/release/examples/delta_bytes

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

"$bin" gen $((64 * 1024 * 1024)) "${SEED:-20261124}" "$work/base"

printf '%-11s %12s %12s %8s   %s\n' edit deltadrive rsync ratio detail
line="bench delta:"
for kind in overwrite1 insert1 delete4k append1m; do
    "$bin" edit "$kind" "$work/base" "$work/$kind"
    detail=$("$bin" diff "$work/base" "$work/$kind")
    dd_bytes=$(sed -n 's/^bytes=\([0-9]*\).*/\1/p' <<<"$detail")

    mkdir -p "$work/dest"
    cp "$work/base" "$work/dest/file"
    stats=$(rsync --no-whole-file -I --stats "$work/$kind" "$work/dest/file")
    sent=$(sed -n 's/^Total bytes sent: \([0-9,]*\).*/\1/p' <<<"$stats" | tr -d ,)
    received=$(sed -n 's/^Total bytes received: \([0-9,]*\).*/\1/p' <<<"$stats" | tr -d ,)
    rsync_bytes=$((sent + received))
    cmp -s "$work/$kind" "$work/dest/file" || { echo "rsync did not reproduce $kind" >&2; exit 1; }

    ratio=$(awk -v a="$dd_bytes" -v b="$rsync_bytes" 'BEGIN { printf "%.3f", a / b }')
    printf '%-11s %12d %12d %8s   %s\n' "$kind" "$dd_bytes" "$rsync_bytes" "$ratio" "$detail"
    line="$line $kind=$ratio"
    rm -f "$work/$kind"
done
echo "$line"
