#!/usr/bin/env python3
"""Race discards and zeroing against allocating writes and reads.

discard-race.py VIEW REF PROCS OPS SEED

PROCS processes each own one slice of VIEW (disjoint guest ranges; on a small
image with small clusters they share, and keep reusing, the same pool of host
clusters). Each does OPS random operations on its slice through O_DIRECT:
writes whose every 16 bytes name their own guest offset, punch-hole and
zero-range (cluster-aligned or not) with a read of the same range racing them
from a second thread, and reads checked against what the process wrote. The
same operations go to REF, a raw file. A racing read may return the old bytes
or zeroes, byte by byte, and nothing else; a checked read must match exactly.
Exits 1 on the first mismatch, naming the process, offset and operation.
"""
import mmap
import os
import random
import sys
import threading

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from falloc import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate


def pattern(off, length, tag):
    """16-byte units: the unit's guest offset, then the writer's tag."""
    return b"".join((off + i).to_bytes(8, "little") + tag for i in range(0, length, 16))


def aligned(length):
    return mmap.mmap(-1, length)


def dread(fd, off, length):
    buf = aligned(length)
    n = os.preadv(fd, [buf], off)
    data = bytes(buf[:n])
    buf.close()
    return data


def dwrite(fd, data, off):
    buf = aligned(len(data))
    buf[:] = data
    n = os.pwritev(fd, [buf], off)
    buf.close()
    if n != len(data):
        raise OSError("short write of %d bytes at %d: %d" % (len(data), off, n))


def old_or_zero(got, old):
    """Every byte of got is the old byte or zero (a racing read may tear
    between the two anywhere)."""
    if got == old or not any(got):
        return True
    return all(g == o or g == 0 for g, o in zip(got, old))


def fail(k, what, off, length, got, want):
    bad = next(i for i in range(length) if got[i] != want[i])
    print("process %d: %s at %d+%d: byte %d is %#x, expected %#x; 16 bytes there: %s" %
          (k, what, off, length, off + bad, got[bad], want[bad],
           got[bad & ~15:(bad & ~15) + 16].hex()), file=sys.stderr)
    sys.stderr.flush()
    os._exit(1)


def run(view, ref, k, base, size, ops, seed):
    rnd = random.Random(seed * 1000 + k)
    vfd = os.open(view, os.O_RDWR | os.O_DIRECT)
    rfd = os.open(ref, os.O_RDWR)
    model = bytearray(size)
    for n in range(ops):
        op = rnd.random()
        off = rnd.randrange(0, size, 4096)
        length = min(rnd.choice((4096, 8192, 16384, 65536)), size - off)
        if op < 0.45:
            data = pattern(base + off, length, bytes([k, n & 0xff]) * 4)
            dwrite(vfd, data, base + off)
            os.pwrite(rfd, data, base + off)
            model[off:off + length] = data
        elif op < 0.8:
            if rnd.random() < 0.25:  # unaligned: written zeroes at the edges
                off += rnd.randrange(0, 4096, 512)
                length = min(length, size - off)
            mode = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE if op < 0.65 else FALLOC_FL_ZERO_RANGE
            r0, r1 = off & ~4095, (off + length + 4095) & ~4095
            seen = {}
            t = threading.Thread(target=lambda: seen.update(d=dread(vfd, base + r0, r1 - r0)))
            t.start()
            fallocate(vfd, mode, base + off, length)
            t.join()
            fallocate(rfd, mode, base + off, length)
            if not old_or_zero(seen["d"], bytes(model[r0:r1])):
                fail(k, "read racing fallocate %#x" % mode, base + r0, r1 - r0, seen["d"],
                     bytes(model[r0:r1]))
            model[off:off + length] = bytes(length)
        else:
            got = dread(vfd, base + off, length)
            if got != bytes(model[off:off + length]):
                fail(k, "read", base + off, length, got, bytes(model[off:off + length]))
    os.close(vfd)
    os.close(rfd)


def main():
    view, ref, procs, ops, seed = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
    size = os.path.getsize(view) // procs & ~65535
    pids = []
    for k in range(procs):
        pid = os.fork()
        if pid == 0:
            try:
                run(view, ref, k, k * size, size, ops, seed)
            except OSError as e:
                print("process %d: %s" % (k, e), file=sys.stderr)
                os._exit(1)
            os._exit(0)
        pids.append(pid)
    sys.exit(max(os.waitpid(p, 0)[1] for p in pids) != 0)


if __name__ == "__main__":
    main()
