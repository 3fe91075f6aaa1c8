#!/usr/bin/env python3
"""Guest load for the mirror tests: random O_DIRECT writes, punch-holes and
zero-ranges on [OFF, OFF+LEN) of VIEW, mirrored into the plain file REF, until
STOPFILE exists. REF is the oracle the destination is compared with. With
PAUSEDIR (7th argument) it stops between two writes while PAUSEDIR/pause
exists, saying so with PAUSEDIR/paused: a test copies the view at a known
moment then (the backup tests' point in time)."""
import mmap, os, random, sys, time

sys.dont_write_bytecode = True  # no __pycache__ in the source tree
from falloc import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate

view, ref, off, ln, stop = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
vfd = os.open(view, os.O_RDWR | os.O_DIRECT)
rfd = os.open(ref, os.O_RDWR)
buf = mmap.mmap(-1, 64 << 10)
rnd = random.Random(int(sys.argv[6]) if len(sys.argv) > 6 else 1)
pause = sys.argv[7] if len(sys.argv) > 7 else None
ops = 0
while not os.path.exists(stop) or ops < 50:
    if pause and os.path.exists(pause + "/pause"):
        open(pause + "/paused", "w").close()
        while os.path.exists(pause + "/pause"):
            time.sleep(0.01)
        os.unlink(pause + "/paused")
    blocks = rnd.randint(1, 16)
    pos = off + rnd.randrange(0, ln // 4096 - blocks) * 4096
    n = blocks * 4096
    kind = rnd.random()
    if kind < 0.6:
        data = os.urandom(n)
        buf[:n] = data
        assert os.pwritev(vfd, [memoryview(buf)[:n]], pos) == n
        os.pwrite(rfd, data, pos)
    elif kind < 0.8:
        fallocate(vfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, n)
        fallocate(rfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, pos, n)
    else:
        fallocate(vfd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, pos, n)
        fallocate(rfd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, pos, n)
    ops += 1
os.fsync(vfd)
print(ops)
