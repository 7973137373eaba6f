#!/usr/bin/env bash
# Runs every test of deltadrive: unit, property and end-to-end tests on real FUSE mounts.
# Installs what the tests need with apt-get when it is missing (fuse3, sqlite3, git, attr,
# util-linux, systemd for systemctl) and says so. The end-to-end tests mount filesystems and
# switch users, so this runs as root (or through sudo).
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v sqlite3 >/dev/null 2>&1 || need+=(sqlite3)
command -v git >/dev/null 2>&1 || need+=(git)
command -v getfattr >/dev/null 2>&1 || need+=(attr)
command -v setpriv >/dev/null 2>&1 || need+=(util-linux)
command -v unshare >/dev/null 2>&1 || need+=(util-linux)
command -v systemctl >/dev/null 2>&1 || need+=(systemd)
if [ ${#need[@]} -gt 0 ]; then
    echo "test.sh: installing ${need[*]} with apt-get"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
if [ ! -e /dev/fuse ]; then
    echo "test.sh: /dev/fuse is missing: load the fuse module (modprobe fuse)" >&2
    exit 1
fi

echo "test.sh: cargo clippy (warnings are errors)"
cargo clippy --all-targets --quiet -- -D warnings

echo "test.sh: cargo test"
if [ "$(id -u)" -eq 0 ]; then
    cargo test --all-targets --no-fail-fast
else
    # Build as the user, run the tests (which mount and switch users) as root.
    cargo test --all-targets --no-run --quiet
    $SUDO env "PATH=$PATH" "HOME=$HOME" cargo test --all-targets --no-fail-fast
fi
