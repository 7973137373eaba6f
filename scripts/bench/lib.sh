# Shared by the sync benchmarks (sourced, not run): a real `deltadrive serve` on 127.0.0.1
# (embedded backends, port chosen by the OS), drives mounted from it as devices of one user,
# and the small arithmetic the scripts print with.
#
# The caller sets DD (the deltadrive binary), W (the run's directory) and BENCH (its name,
# for messages) before calling; bench_serve sets SERVER_PID and URL, bench_mount fills
# DAEMON_PID[NAME]. bench_cleanup unmounts every drive mounted and stops the server.

say() { echo "$BENCH: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v s="$1" -v e="$2" 'BEGIN { printf "%.3f", e - s }'; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "na" }'; }
field() { sed -n "s/.*$1=\\([0-9.]*\\).*/\\1/p" <<<"$2"; }
# CPU seconds (user + system, all threads) a process has used so far.
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{ printf "%.2f", ($14 + $15) / hz }' "/proc/$1/stat" 2>/dev/null || echo 0; }
minflt() { awk '{ print $10 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
# Resident and peak resident memory of a process, in KiB: "RSS HWM".
rss_kb() { awk '/^VmRSS/ { r = $2 } /^VmHWM/ { h = $2 } END { print r + 0, h + 0 }' "/proc/$1/status" 2>/dev/null || echo "0 0"; }

declare -A DAEMON_PID
SERVER_PID=""
URL=""

# bench_serve DEVICE... [-- SERVE_ARGS...]: user `bench`, one device per name (token in
# $W/tokenNAME), volume `vol`, and the server started in the background.
bench_serve() {
    local devices=() d
    while [ $# -gt 0 ] && [ "$1" != -- ]; do devices+=("$1"); shift; done
    [ "${1:-}" = -- ] && shift
    "$DD" admin --data "$W/server" user add bench 2>/dev/null
    for d in "${devices[@]}"; do
        "$DD" admin --data "$W/server" device add bench "device$d" >"$W/token$d" 2>/dev/null
    done
    "$DD" admin --data "$W/server" volume create bench vol 2>/dev/null
    say "starting deltadrive serve on 127.0.0.1 (port chosen by the OS)"
    "$DD" serve --data "$W/server" --listen 127.0.0.1:0 --addr-file "$W/addr" "$@" >"$W/server.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 200); do [ -s "$W/addr" ] && break; sleep 0.05; done
    [ -s "$W/addr" ] || { say "the server did not start"; cat "$W/server.log" >&2; exit 1; }
    URL="http://$(cat "$W/addr")"
}

# bench_mount NAME [MOUNT_ARGS...]: mounts $W/NAME with state $W/stateNAME as deviceNAME.
bench_mount() {
    local name=$1 out
    shift
    mkdir -p "$W/$name"
    out=$("$DD" mount "$W/$name" --state "$W/state$name" --server "$URL" --volume vol \
        --token-file "$W/token$name" "$@")
    DAEMON_PID[$name]=$(sed -n 's/.*pid \([0-9]*\)).*/\1/p' <<<"$out")
}

# bench_cleanup [KEEP_DIR]: unmounts every drive, stops the server, keeps the logs in
# KEEP_DIR when given, removes $W.
bench_cleanup() {
    local name
    for name in "${!DAEMON_PID[@]}"; do
        if mountpoint -q "$W/$name" 2>/dev/null; then
            # --force: no waiting for the server (it may be gone); the data goes anyway.
            "$DD" umount "$W/$name" --force >/dev/null 2>&1 || fusermount3 -u -z "$W/$name" 2>/dev/null || true
        fi
    done
    if [ -n "$SERVER_PID" ]; then kill "$SERVER_PID" 2>/dev/null || true; wait "$SERVER_PID" 2>/dev/null || true; fi
    if [ -n "${1:-}" ]; then
        rm -rf "$1"; mkdir -p "$1"
        cp "$W/server.log" "$1/" 2>/dev/null || true
        for name in "${!DAEMON_PID[@]}"; do cp "$W/state$name/daemon.log" "$1/$name.log" 2>/dev/null || true; done
    fi
    rm -rf "$W"
}

# bench_diagnose NAME...: the drives' status and the ends of the logs, for a failed run.
bench_diagnose() {
    local name
    say "diagnostics follow"
    for name in "$@"; do
        "$DD" status "$W/$name" --state "$W/state$name" --json >&2 || true
        echo "--- tail of $W/state$name/daemon.log" >&2
        tail -n 30 "$W/state$name/daemon.log" >&2 || true
    done
    echo "--- tail of the server log" >&2
    tail -n 30 "$W/server.log" >&2 || true
}
