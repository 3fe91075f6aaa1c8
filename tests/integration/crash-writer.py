#!/usr/bin/env python3
"""The guest of the crash tests (tests/integration/crash.bash, used by
qcow2.bats, vhdx.bats and contrib/crash-test.sh).

  crash-writer.py write VIEW LOG [SEED]
      Random writes (offset and length anywhere, up to 128 KiB) to VIEW, one
      in ten a punched hole instead (so space is freed and allocated again),
      an fdatasync after every one to four of them, until an error (the
      daemon was killed). LOG gets "R" once VIEW is open, "W i off len" (or
      "D i off len" for a hole) before operation i starts and "A i" once an
      fdatasync after it returned: every operation up to i is acknowledged.

  crash-writer.py verify DATA LOG [BASE]
      DATA (a raw copy of the image after the crash) must hold every
      acknowledged write (a hole: zeroes), except where a later,
      unacknowledged one (which may or may not have landed) overlaps it;
      everything no operation touched must still be BASE (the image before
      the round; default: zeroes).

Each write's bytes name the write and the 4 KiB page they belong to, so data
that lands in the wrong place or comes from a stale write is caught too."""
import os
import random
import struct
import sys

from falloc import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, fallocate

PAGE = 4096
MAX_LEN = 128 << 10


def punch(fd, off, ln):
    fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, ln)


def pattern(i, off, ln):
    """The bytes write i puts at [off, off+ln): per 4 KiB page, (i, page) repeated."""
    first, last = off // PAGE, (off + ln - 1) // PAGE
    buf = b"".join(struct.pack("<QQ", i + 1, p) * (PAGE // 16) for p in range(first, last + 1))
    return buf[off - first * PAGE:off - first * PAGE + ln]


def write(view, log, seed):
    fd = os.open(view, os.O_RDWR)
    lg = open(log, "w")
    if os.fstat(fd).st_dev == os.stat(os.path.dirname(os.path.abspath(view))).st_dev:
        lg.write("X not mounted\n")
        lg.close()
        sys.exit("%s is not mounted" % view)
    size = os.fstat(fd).st_size
    rnd = random.Random(seed)
    lg.write("R\n")
    lg.flush()
    try:
        i = 0
        while True:
            ln = rnd.randrange(1, MAX_LEN + 1)
            kind = rnd.random()
            if kind < 0.3:  # page-aligned, the common guest case
                ln = (ln + PAGE - 1) // PAGE * PAGE
                off = rnd.randrange(0, (size - ln) // PAGE + 1) * PAGE
            elif kind < 0.5:  # sector-aligned
                ln = (ln + 511) // 512 * 512
                off = rnd.randrange(0, (size - ln) // 512 + 1) * 512
            else:
                off = rnd.randrange(0, size - ln + 1)
            hole = rnd.randrange(10) == 0
            lg.write("%s %d %d %d\n" % ("D" if hole else "W", i, off, ln))
            lg.flush()
            if hole:
                punch(fd, off, ln)
            else:
                os.pwrite(fd, pattern(i, off, ln), off)
            if rnd.randrange(4) == 0 or i % 4 == 3:
                os.fdatasync(fd)
                lg.write("A %d\n" % i)
                lg.flush()
            i += 1
    except OSError:
        pass


def runs(buf, byte, start=0):
    """[a, b) runs of buf that are all byte."""
    other = bytes([byte ^ 1])
    pos = buf.find(bytes([byte]), start)
    while pos >= 0:
        end = buf.find(other, pos)
        end = len(buf) if end < 0 else end
        yield pos, end
        pos = buf.find(bytes([byte]), end)


def verify(data_path, log, base_path):
    data = open(data_path, "rb").read()
    expected = bytearray(open(base_path, "rb").read() if base_path else len(data))
    if len(expected) != len(data):
        sys.exit("%s: %d bytes, the base has %d" % (data_path, len(data), len(expected)))
    writes, holes, acked = [], set(), -1
    for line in open(log):
        p = line.split()
        if p and p[0] in "WD":
            writes.append((int(p[1]), int(p[2]), int(p[3])))
            if p[0] == "D":
                holes.add(int(p[1]))
        elif p and p[0] == "A":
            acked = int(p[1])
        elif p and p[0] == "X":
            sys.exit("the writer did not write through the view")
    known = bytearray(b"\x01") * len(data)
    for i, off, ln in writes:
        if i <= acked:
            expected[off:off + ln] = bytes(ln) if i in holes else pattern(i, off, ln)
        else:
            known[off:off + ln] = bytes(ln)
    for a, b in runs(known, 0):  # may hold either: take what is there
        expected[a:b] = data[a:b]
    checked = sum(ln for i, off, ln in writes if i <= acked)
    if expected == data:
        print("%d operations (%d holes), %d acknowledged (%d bytes), all there" %
              (len(writes), len(holes), acked + 1, checked))
        return
    pos = next(k for k in range(0, len(data), PAGE) if expected[k:k + PAGE] != data[k:k + PAGE])
    pos += next(k for k in range(PAGE) if expected[pos + k] != data[pos + k])
    who = [i for i, off, ln in writes if i <= acked and off <= pos < off + ln]
    print("%s: byte %d is 0x%02x, expected 0x%02x (%s); %d operations, %d acknowledged" %
          (data_path, pos, data[pos], expected[pos],
           "acknowledged %s %d" % ("hole" if who[-1] in holes else "write", who[-1])
           if who else "untouched since the round began", len(writes), acked + 1))
    sys.exit(1)


if __name__ == "__main__":
    if len(sys.argv) >= 4 and sys.argv[1] == "write":
        write(sys.argv[2], sys.argv[3], int(sys.argv[4]) if len(sys.argv) > 4 else None)
    elif len(sys.argv) >= 4 and sys.argv[1] == "verify":
        verify(sys.argv[2], sys.argv[3], sys.argv[4] if len(sys.argv) > 4 else None)
    else:
        sys.exit(__doc__)
