#!/usr/bin/env python3
"""Probes for scripts/bench/scale.sh: many small files.

  scale_probe.py create ROOT N DIRS SIZE   N files of SIZE bytes in DIRS directories under ROOT
                                           (d0000/f0000000...), written as a program would
                                           (open, write, close); prints the files/s of the
                                           first block of 10,000, of the block ending at
                                           100,000 and of the last block, and the whole rate
  scale_probe.py empty DIR TIMEOUT_S       wait until DIR has no entries; prints the seconds
"""

import os
import sys
import time

BLOCK = 10_000


def fail(msg):
    print(f"scale_probe: {msg}", file=sys.stderr)
    sys.exit(2)


def create(root, n, dirs, size):
    os.makedirs(root, exist_ok=True)
    per_dir = -(-n // dirs)
    data = (b"deltadrive scale " * (size // 17 + 1))[:size]
    t0 = time.monotonic()
    block_start = t0
    rates = {}
    for i in range(n):
        d = os.path.join(root, "d%04d" % (i // per_dir))
        if i % per_dir == 0:
            os.mkdir(d)
        fd = os.open(os.path.join(d, "f%07d" % i), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.write(fd, data)
        os.close(fd)
        done = i + 1
        if done % BLOCK == 0 or done == n:
            now = time.monotonic()
            rates[done] = (done - (done - 1) // BLOCK * BLOCK) / max(now - block_start, 1e-9)
            block_start = now
    total = time.monotonic() - t0
    first = rates[min(rates)]
    at_100k = rates.get(100_000, rates[max(rates)])
    last = rates[max(rates)]
    print("create: files=%d seconds=%.2f rate=%.0f first_block_rate=%.0f block_100k_rate=%.0f "
          "last_block_rate=%.0f" % (n, total, n / total, first, at_100k, last))


def empty(path, timeout_s):
    t0 = time.monotonic()
    while True:
        try:
            if not os.listdir(path):
                break
        except FileNotFoundError:
            break
        if time.monotonic() - t0 > timeout_s:
            fail(f"{path} still has entries after {timeout_s:.0f} s")
        time.sleep(0.05)
    print("empty: seconds=%.2f" % (time.monotonic() - t0))


def main(argv):
    if len(argv) == 6 and argv[1] == "create":
        create(argv[2], int(argv[3]), int(argv[4]), int(argv[5]))
    elif len(argv) == 4 and argv[1] == "empty":
        empty(argv[2], float(argv[3]))
    else:
        fail(__doc__)


if __name__ == "__main__":
    main(sys.argv)
