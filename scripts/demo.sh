#!/usr/bin/env bash
# The main job on the embedded default: a server (SQLite + a directory, nothing to install) on
# 127.0.0.1, one user with two devices, and two drives A and B mounted from it as if on two
# machines. A file written in A appears in B; an edit made in B appears in A. Then both drives'
# status, and everything is stopped and removed, also on failure or Ctrl-C.
# Installs fuse3 with apt-get if it is missing (and says so), and builds the binary.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v fusermount3 >/dev/null 2>&1 || need+=(fuse3)
if [ ${#need[@]} -gt 0 ]; then
    echo "demo.sh: installing ${need[*]} with apt-get"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

echo "demo.sh: building (release)"
cargo build --release --quiet --bin deltadrive
dd=${CARGO_TARGET_DIR:-$PWD/target}/release/deltadrive

work=$(mktemp -d /tmp/deltadrive-demo.XXXXXX)
A=$work/A
B=$work/B
mkdir -p "$A" "$B"
server_pid=""
cleanup() {
    local m
    for m in "$A" "$B"; do
        if grep -q " $m " /proc/self/mountinfo 2>/dev/null; then
            # --force: no waiting for the server (it may be gone); the data goes anyway.
            "$dd" umount "$m" --force >/dev/null 2>&1 || fusermount3 -u -z "$m" 2>/dev/null || true
        fi
    done
    if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
ms_since() { echo $((($(date +%s%N) - $1) / 1000000)); }

# Waits until FILE holds exactly the text TEXT; prints how long that took since START (ns).
wait_for() { # FILE TEXT START
    local deadline=$(($(date +%s) + 30))
    until [ -f "$1" ] && [ "$(cat "$1" 2>/dev/null)" = "$2" ]; do
        if [ "$(date +%s)" -gt "$deadline" ]; then
            echo "demo.sh: $1 did not get the change within 30 s; the drives' logs:" >&2
            tail -n 20 "$work"/state*/daemon.log >&2 || true
            exit 1
        fi
        sleep 0.005
    done
    echo "-> there after $(ms_since "$3") ms"
}

step deltadrive admin --data "$work/server" user add alice
"$dd" admin --data "$work/server" user add alice
step "deltadrive admin --data $work/server device add alice laptop > $work/laptop.token"
"$dd" admin --data "$work/server" device add alice laptop >"$work/laptop.token"
step "deltadrive admin --data $work/server device add alice desktop > $work/desktop.token"
"$dd" admin --data "$work/server" device add alice desktop >"$work/desktop.token"
step deltadrive admin --data "$work/server" volume create alice docs
"$dd" admin --data "$work/server" volume create alice docs

step "deltadrive serve --data $work/server --listen 127.0.0.1:0 &"
"$dd" serve --data "$work/server" --listen 127.0.0.1:0 --addr-file "$work/addr" >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 200); do [ -s "$work/addr" ] && break; sleep 0.05; done
[ -s "$work/addr" ] || { echo "demo.sh: the server did not start:" >&2; cat "$work/server.log" >&2; exit 1; }
url="http://$(cat "$work/addr")"
echo "-> listening on $url (pid $server_pid)"

step deltadrive mount "$A" --state "$work/stateA" --server "$url" --volume docs --token-file "$work/laptop.token"
"$dd" mount "$A" --state "$work/stateA" --server "$url" --volume docs --token-file "$work/laptop.token"
step deltadrive mount "$B" --state "$work/stateB" --server "$url" --volume docs --token-file "$work/desktop.token"
"$dd" mount "$B" --state "$work/stateB" --server "$url" --volume docs --token-file "$work/desktop.token"

step "echo 'hello from A' > $A/hello.txt; then wait until $B/hello.txt says the same"
start=$(date +%s%N)
echo 'hello from A' >"$A/hello.txt"
wait_for "$B/hello.txt" 'hello from A' "$start"

step "head -c 8M /dev/urandom > $work/big.bin; mkdir $A/photos; cp $work/big.bin $A/photos/; wait until B has the same bytes"
head -c 8M /dev/urandom >"$work/big.bin"
mkdir "$A/photos"
start=$(date +%s%N)
cp "$work/big.bin" "$A/photos/big.bin"
until cmp -s "$work/big.bin" "$B/photos/big.bin" 2>/dev/null; do
    [ "$(ms_since "$start")" -lt 30000 ] || { echo "demo.sh: big.bin did not reach B" >&2; exit 1; }
    sleep 0.01
done
echo "-> same 8 MiB in B after $(ms_since "$start") ms"

step "echo 'edited on B' >> $B/hello.txt; then wait until $A/hello.txt has it"
start=$(date +%s%N)
echo 'edited on B' >>"$B/hello.txt"
wait_for "$A/hello.txt" $'hello from A\nedited on B' "$start"

step cat "$A/hello.txt"
cat "$A/hello.txt"
step ls -lR "$A" "$B"
ls -lR "$A" "$B"

step deltadrive status "$A"
"$dd" status "$A"
step deltadrive status "$B"
"$dd" status "$B"

step deltadrive umount "$A"
"$dd" umount "$A"
step deltadrive umount "$B"
"$dd" umount "$B"
step "kill $server_pid   # the server stops cleanly on SIGTERM"
kill "$server_pid"
wait "$server_pid" || true
server_pid=""
echo
echo "demo.sh: done"
