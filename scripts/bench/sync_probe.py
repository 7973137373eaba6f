#!/usr/bin/env python3
"""Probes for scripts/bench/sync.sh: write on one side of a sync, watch the other side.

Works on any two directories (two deltadrive mounts, or two Unison replicas).

  sync_probe.py visible A B N        N small files written one by one on A; for each, the ms
                                     from close() on A until B reads the same bytes (1 ms polls)
  sync_probe.py big SRC A B [DD M1 S1 M2 S2]
                                     copy SRC to A; seconds until B holds the same bytes; with
                                     the two mounts' status: when A's push and B's apply ended
  sync_probe.py edit KIND REF FILE   apply an edit of scripts/bench/delta.sh in place to REF
                                     and FILE (same bytes); KIND: overwrite1 | insert1 |
                                     delete4k | append1m
  sync_probe.py appear FILE REF      wait until FILE holds the same bytes as REF
  sync_probe.py quiet DD M1 S1 M2 S2 wait until both deltadrive mounts are idle at one cursor;
                                     prints "upA downA upB downB" (status counters)
"""

import json
import os
import subprocess
import sys
import threading
import time

TIMEOUT_S = float(os.environ.get("PROBE_TIMEOUT_S", "120"))


def fail(msg):
    print(f"sync_probe: {msg}", file=sys.stderr)
    sys.exit(2)


def read_or_none(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except (FileNotFoundError, IsADirectoryError):
        return None


def percentile(values, p):
    """Nearest-rank percentile."""
    s = sorted(values)
    k = max(0, min(len(s) - 1, -(-len(s) * p // 100) - 1))
    return s[int(k)]


def visible(a, b, n):
    sub = "visible-%d" % os.getpid()
    os.mkdir(os.path.join(a, sub))
    deadline = time.monotonic() + TIMEOUT_S
    while not os.path.isdir(os.path.join(b, sub)):
        if time.monotonic() > deadline:
            fail(f"directory {sub} made on A never appeared on B ({TIMEOUT_S:.0f} s)")
        time.sleep(0.001)
    lat = []
    for i in range(n):
        data = ("file %d\n" % i).encode() + os.urandom(1024)
        name = "f%05d" % i
        fd = os.open(os.path.join(a, sub, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        t0 = time.monotonic()
        os.close(fd)
        target = os.path.join(b, sub, name)
        while True:
            got = read_or_none(target)
            if got == data:
                break
            if time.monotonic() - t0 > TIMEOUT_S:
                seen = "missing" if got is None else f"{len(got)} bytes, not the same"
                fail(f"file {i} ({sub}/{name}) not visible on B after {TIMEOUT_S:.0f} s: {seen}; "
                     f"{len(lat)} files were visible before it")
            time.sleep(0.001)
        lat.append((time.monotonic() - t0) * 1000.0)
    mean = sum(lat) / len(lat)
    print("visible: files=%d p50_ms=%.1f p90_ms=%.1f p99_ms=%.1f max_ms=%.1f mean_ms=%.1f"
          % (n, percentile(lat, 50), percentile(lat, 90), percentile(lat, 99), max(lat), mean))


def same_file(p, q, bufsize=1 << 20):
    with open(p, "rb") as f, open(q, "rb") as g:
        while True:
            x = f.read(bufsize)
            y = g.read(bufsize)
            if x != y:
                return False
            if not x:
                return True


def wait_same(target, ref, t0):
    """Polls until target has ref's size and bytes; returns the time of the matching poll."""
    size = os.path.getsize(ref)
    while True:
        t_poll = time.monotonic()
        try:
            st = os.stat(target)
            if st.st_size == size and same_file(target, ref):
                return t_poll
        except FileNotFoundError:
            pass
        if t_poll - t0 > TIMEOUT_S:
            fail(f"{target} does not match {ref} after {TIMEOUT_S:.0f} s")
        time.sleep(0.005)


class Timeline:
    """Samples A's bytes_uploaded and B's bytes_downloaded every 100 ms in a thread."""

    def __init__(self, dd, m1, s1, m2, s2):
        self.args = (dd, m1, s1, m2, s2)
        self.samples = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        dd, m1, s1, m2, s2 = self.args
        while not self.done.is_set():
            t = time.monotonic()
            try:
                up = status(dd, m1, s1).get("bytes_uploaded", 0)
                down = status(dd, m2, s2).get("bytes_downloaded", 0)
            except (subprocess.CalledProcessError, json.JSONDecodeError):
                continue
            self.samples.append((t, up, down))
            self.done.wait(0.1)

    def phases(self, t0):
        """When A's upload and B's download counters reached their final values (the engine
        publishes its counters at the end of a cycle, so these are when the push and the
        apply finished)."""
        out = []
        for i, who in ((1, "A_pushed_s"), (2, "B_applied_s")):
            last = self.samples[-1][i]
            t = next(t for (t, *v) in self.samples if v[i - 1] == last)
            out.append("%s=%.1f" % (who, t - t0))
        return " ".join(out)


def big(src, a, b, *status_args):
    name = "big-%d.bin" % os.getpid()
    timeline = Timeline(*status_args) if status_args else None
    if timeline:
        timeline.thread.start()
        time.sleep(0.3)
    t0 = time.monotonic()
    with open(src, "rb") as f, open(os.path.join(a, name), "wb") as g:
        while True:
            buf = f.read(1 << 20)
            if not buf:
                break
            g.write(buf)
    t_written = time.monotonic()
    # The size check comes first so that the polls are cheap until the size is right; the
    # time counted ends at the poll whose full comparison then succeeded.
    t_seen = wait_same(os.path.join(b, name), src, t0)
    size = os.path.getsize(src)
    print("big: bytes=%d written_on_A_s=%.3f visible_on_B_s=%.3f rate_mib_s=%.1f"
          % (size, t_written - t0, t_seen - t0, size / (1 << 20) / (t_seen - t0)))
    if timeline:
        timeline.done.set()
        timeline.thread.join()
        print("counters: " + timeline.phases(t0))


def edit(kind, ref, path):
    with open(ref, "rb") as f:
        data = f.read()
    mid = len(data) // 2
    # Each edit writes only what a program must write: from the edit to the end at most.
    if kind == "overwrite1":
        writes, new_len = [(mid, bytes([data[mid] ^ 0xFF]))], None
    elif kind == "insert1":
        writes, new_len = [(mid, b"\x5a" + data[mid:])], None
    elif kind == "delete4k":
        writes, new_len = [(mid, data[mid + 4096:])], len(data) - 4096
    elif kind == "append1m":
        writes, new_len = [(len(data), os.urandom(1 << 20))], None
    else:
        fail(f"unknown edit {kind}")
    for p in (ref, path):
        with open(p, "r+b") as f:
            for off, buf in writes:
                f.seek(off)
                f.write(buf)
            if new_len is not None:
                f.truncate(new_len)


def status(dd, mnt, state):
    out = subprocess.run([dd, "status", mnt, "--state", state, "--json"],
                         capture_output=True, text=True, check=True).stdout
    return json.loads(out)


def settled(s):
    """One mount's status says it has nothing left to do."""
    if "idle" in s:
        # The drive's own counts too: the engine's published `idle` may predate a change
        # that came in a moment ago.
        return (bool(s["idle"]) and s.get("cursor") == s.get("server_head")
                and s.get("unrecorded_files", 0) == 0 and s.get("pending_versions", 0) == 0)
    # Before the engine reported `idle`: nothing recorded or pending, caught up.
    return (s.get("unrecorded_files", 0) == 0 and s.get("pending_versions", 0) == 0
            and s.get("pending_transactions", 0) == 0 and s.get("cursor") == s.get("server_head"))


def quiet(dd, m1, s1, m2, s2):
    deadline = time.monotonic() + TIMEOUT_S
    prev = None
    calm = 0
    while True:
        st = [status(dd, m1, s1), status(dd, m2, s2)]
        key = [(x.get("cursor"), x.get("bytes_uploaded"), x.get("bytes_downloaded")) for x in st]
        ok = all(settled(x) for x in st) and st[0].get("cursor") == st[1].get("cursor")
        calm = calm + 1 if ok and key == prev else 0
        prev = key
        if calm >= 2:
            break
        if time.monotonic() > deadline:
            print(json.dumps(st, indent=1), file=sys.stderr)
            fail(f"mounts not quiet after {TIMEOUT_S:.0f} s (statuses above)")
        time.sleep(0.2)
    print(st[0].get("bytes_uploaded", 0), st[0].get("bytes_downloaded", 0),
          st[1].get("bytes_uploaded", 0), st[1].get("bytes_downloaded", 0))


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    if cmd == "visible" and len(args) == 3:
        visible(args[0], args[1], int(args[2]))
    elif cmd == "big" and len(args) in (3, 8):
        big(*args)
    elif cmd == "edit" and len(args) == 3:
        edit(*args)
    elif cmd == "appear" and len(args) == 2:
        wait_same(args[0], args[1], time.monotonic())
    elif cmd == "quiet" and len(args) == 5:
        quiet(*args)
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
