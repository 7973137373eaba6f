#!/usr/bin/env bash
# The main job on the embedded default: mount a local drive, use it with ordinary programs,
# unmount, mount again, and see everything back. (Two mounts syncing through a server come
# with the sync engine's write path.) Installs fuse3 and git with apt-get if they are missing,
# and says so.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
command -v git >/dev/null 2>&1 || need+=(git)
if [ ${#need[@]} -gt 0 ]; then
    echo "demo.sh: installing ${need[*]} with apt-get"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "demo.sh: building (release)"
cargo build --release --quiet
dd=./target/release/deltadrive

work=$(mktemp -d /tmp/deltadrive-demo.XXXXXX)
mnt="$work/drive"
state="$work/state"
mkdir -p "$mnt"
cleanup() {
    if grep -q " $mnt " /proc/self/mountinfo 2>/dev/null; then
        $dd umount "$mnt" >/dev/null 2>&1 || fusermount3 -u -z "$mnt" 2>/dev/null || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }

step deltadrive mount "$mnt" --state "$state"
$dd mount "$mnt" --state "$state"

step "echo 'hello from deltadrive' > $mnt/hello.txt; mkdir -p $mnt/projects/demo; ln -s ../hello.txt $mnt/projects/link"
echo 'hello from deltadrive' > "$mnt/hello.txt"
mkdir -p "$mnt/projects/demo"
ln -s ../hello.txt "$mnt/projects/link"
head -c 8M /dev/urandom > "$mnt/projects/demo/random.bin"
(cd "$mnt/projects/demo" && git init -q -b main . && git -c user.email=demo@example.com -c user.name=demo commit -q --allow-empty -m "first commit in the drive")
sum_before=$(sha256sum "$mnt/projects/demo/random.bin" | cut -d' ' -f1)

step ls -lR "$mnt"
ls -lR "$mnt"

step deltadrive status "$mnt"
$dd status "$mnt"

step deltadrive umount "$mnt"
$dd umount "$mnt"

step deltadrive mount "$mnt" --state "$state"
$dd mount "$mnt" --state "$state"

step cat "$mnt/projects/link"
cat "$mnt/projects/link"
step "git -C $mnt/projects/demo log --oneline"
git -C "$mnt/projects/demo" log --oneline
sum_after=$(sha256sum "$mnt/projects/demo/random.bin" | cut -d' ' -f1)
if [ "$sum_before" = "$sum_after" ]; then
    echo "random.bin: same SHA-256 after remount ($sum_after)"
else
    echo "random.bin changed across remount!" >&2
    exit 1
fi

step deltadrive umount "$mnt"
$dd umount "$mnt"
echo
echo "demo.sh: done"
