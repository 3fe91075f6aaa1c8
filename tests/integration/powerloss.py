#!/usr/bin/env python3
"""Power-loss simulation (docs/powerloss.md; used by powerloss.bats and
contrib/powerloss.sh).

  powerloss.py stamp FILE SIZE [EVERY]
      Fill FILE (SIZE bytes) with generation-0 stamps, one 512 B sector in
      EVERY (default 1) stamped, the rest zero: the guest data of a fixture.

  powerloss.py write VIEW WLOG SEED [OPS] [THREADS] [SYNC%] [UNIT] [DISCARD%] [ALIGN]
      The guest: THREADS threads (default 4) share OPS operations on VIEW
      (O_DIRECT, so several requests are in flight): SYNC% of them (default
      8) fdatasyncs, DISCARD% of the rest (default 12) punched holes and
      zeroed ranges (in multiples of UNIT bytes, default 512), the rest
      writes (in multiples of ALIGN bytes, default 512). Each 512 B sector written holds its own
      guest offset and the write's generation. WLOG gets, under one lock,
      "W|P|Z gen off len t0" before an operation, "E gen t1" after it,
      "S k t0" and "s k t1" around fdatasync k (t: CLOCK_MONOTONIC ns).

  powerloss.py scenario NAME INIT IMG LOG FOCUS
      Exit 1 unless the recorded run did what scenario NAME is for (c512:
      the refcount table grew; evict: more L2 tables than the cache holds;
      vhdx: the log wrapped); FOCUS gets the records where that happened.

  powerloss.py states --fmt F --image IMG --init COPY --iolog LOG --wlog WLOG
                      --base RAW --vdiskfs BIN --work DIR [--states N]
                      [--seed S] [--keep DIR] [--focus FILE]
                      [--control drop-acked|refcount]
      Build N crash states of IMG from COPY (IMG before the run) and LOG (what
      vdiskfs recorded with VDISKFS_IOLOG=LOG), check each, print one line per
      state and a summary; exit 1 if any state fails. Crash points are drawn
      from the whole run, one in two near a record listed in FOCUS if given. With --control, build
      one hand-made wrong state instead and exit 0 only if the check fails.

The crash model: a crash point c in the recorded order (submissions and
completions share one counter). A write, fallocate or truncate that
completed before a completed flush of its file started is kept. Every other
operation submitted before c is kept, dropped or torn (a random subset of its
512 B or 4 KiB sectors applied); operations after c are dropped."""
import mmap
import os
import random
import shutil
import struct
import subprocess
import sys
import threading
import time
from collections import namedtuple

from falloc import FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE, fallocate

SECTOR = 512
STAMP = struct.Struct("<QQ")
MAX_LEN = 64 << 10
QEMU_TIMEOUT = 120  # s; QEMU's vhdx replay has looped for ever on a bad log

# ---- the guest's data: every 512 B sector says where it belongs ----


def stamp(off, gen):
    return STAMP.pack(off, gen) * (SECTOR // STAMP.size)


def stamped(off, ln, gen):
    return b"".join(stamp(o, gen) for o in range(off, off + ln, SECTOR))


def cmd_stamp(path, size, every=1):
    with open(path, "wb") as f:
        for off in range(0, size, SECTOR):
            f.write(stamp(off, 0) if (off // SECTOR) % every == 0 else bytes(SECTOR))


# ---- the writer ----

class Writer:
    def __init__(self, view, wlog, seed, ops, sync_pct, unit, discard_pct, align):
        self.fd = os.open(view, os.O_RDWR | os.O_DIRECT)
        if os.fstat(self.fd).st_dev == os.stat(os.path.dirname(os.path.abspath(view))).st_dev:
            sys.exit("%s is not mounted" % view)
        self.size = os.fstat(self.fd).st_size
        self.log = open(wlog, "w")
        self.lock = threading.Lock()
        self.rnd = random.Random(seed)
        self.left = ops
        self.sync = sync_pct / 100
        self.unit = unit
        self.discard = discard_pct / 100
        self.align = align
        self.gen = 0
        self.syncs = 0
        self.error = None

    def note(self, fmt, *args):
        """Log one line under the lock, with the time taken under it too."""
        with self.lock:
            self.log.write(fmt % (args + (time.monotonic_ns(),)) + "\n")

    def next_op(self):
        """(kind, gen, off, len) or None when the budget is spent."""
        with self.lock:
            if self.left <= 0 or self.error:
                return None
            self.left -= 1
            r = self.rnd.random()
            if r < self.sync:
                self.syncs += 1
                return ("S", self.syncs, 0, 0)
            self.gen += 1
            r = (r - self.sync) / (1 - self.sync)
            kind = "P" if r < self.discard * 0.6 else "Z" if r < self.discard else "W"
            unit = self.align if kind == "W" else self.unit
            ln = self.rnd.randrange(1, max(MAX_LEN // unit, 2) + 1) * unit
            off = self.rnd.randrange(0, (self.size - ln) // unit + 1) * unit
            return (kind, self.gen, off, ln)

    def run_one(self, op, buf):
        kind, gen, off, ln = op
        if kind == "S":
            self.note("S %d %d", gen)
            os.fdatasync(self.fd)
            self.note("s %d %d", gen)
            return
        self.note("%s %d %d %d %d", kind, gen, off, ln)
        if kind == "W":
            buf[:ln] = stamped(off, ln, gen)
            os.pwrite(self.fd, memoryview(buf)[:ln], off)
        else:
            mode = FALLOC_FL_PUNCH_HOLE if kind == "P" else FALLOC_FL_ZERO_RANGE
            fallocate(self.fd, mode | FALLOC_FL_KEEP_SIZE, off, ln)
        self.note("E %d %d", gen)

    def thread(self):
        buf = mmap.mmap(-1, MAX_LEN)
        try:
            while True:
                op = self.next_op()
                if not op:
                    break
                self.run_one(op, buf)
        except OSError as e:
            with self.lock:
                self.error = e


def cmd_write(view, wlog, seed, ops=300, threads=4, sync_pct=8, unit=SECTOR, discard_pct=12,
              align=SECTOR):
    w = Writer(view, wlog, seed, ops, sync_pct, unit, discard_pct, align)
    ts = [threading.Thread(target=w.thread) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    w.syncs += 1
    w.note("S %d %d", w.syncs)
    os.fdatasync(w.fd)
    w.note("s %d %d", w.syncs)
    w.log.close()
    if w.error:
        sys.exit("writer: %s" % w.error)


# ---- the writer's log: what may and what must read back ----

GOp = namedtuple("GOp", "kind gen off len start end t0")


class GuestLog:
    def __init__(self, path):
        self.ops, self.syncs = {}, []  # syncs: (start position, end time)
        starts, pos = {}, 0
        for line in open(path):
            p = line.split()
            pos += 1
            if p[0] in "WPZ":
                self.ops[int(p[1])] = [p[0], int(p[1]), int(p[2]), int(p[3]), pos, None,
                                       int(p[4])]
            elif p[0] == "E":
                self.ops[int(p[1])][5] = pos
            elif p[0] == "S":
                starts[int(p[1])] = pos
            elif p[0] == "s":
                self.syncs.append((starts[int(p[1])], int(p[2])))
        self.ops = [GOp(*o) for o in self.ops.values()]
        self.by_sector = {}
        for o in self.ops:
            for s in range(o.off // SECTOR, (o.off + o.len) // SECTOR):
                self.by_sector.setdefault(s, []).append(o)

    def acked_pos(self, t_done):
        """Log position before which every completed operation is acknowledged by a
        view fdatasync that returned before t_done."""
        return max([s for s, t in self.syncs if t < t_done], default=0)

    def allowed(self, sector, apos, t_start):
        """The operations whose data sector may hold (None: the base may show)."""
        ops = self.by_sector.get(sector, [])
        acked = [o for o in ops if o.end is not None and o.end < apos]
        # An acknowledged operation that another acknowledged one started
        # after is overwritten; the rest may each be the last.
        last_start = max((o.start for o in acked), default=0)
        last = [o for o in acked if o.end > last_start]
        maybe = [o for o in ops if (o.end is None or o.end >= apos) and o.t0 < t_start]
        return (last if last else [None]) + maybe


def value(op, sector):
    if op.kind == "W":
        return stamp(sector * SECTOR, op.gen)
    return bytes(SECTOR)


def describe(data, sector, base):
    if data == base:
        return "the base data"
    if data == bytes(SECTOR):
        return "zeroes"
    off, gen = STAMP.unpack_from(data)
    if data == stamp(off, gen):
        if off != sector * SECTOR:
            return "data of ANOTHER OFFSET 0x%x (generation %d)" % (off, gen)
        return "generation %d" % gen
    return "unknown bytes"


def verify(view, base, glog, apos, t_start):
    """First wrong sector as a message, or None."""
    for s in range(len(view) // SECTOR):
        got = view[s * SECTOR:(s + 1) * SECTOR]
        b = base[s * SECTOR:(s + 1) * SECTOR]
        cands = glog.allowed(s, apos, t_start) if s in glog.by_sector else [None]
        if any(got == (b if o is None else value(o, s)) for o in cands):
            continue
        want = ", ".join("the base data" if o is None else "%s generation %d" % (o.kind, o.gen)
                         for o in cands)
        return "sector at 0x%x reads %s, want one of: %s" % (s * SECTOR,
                                                             describe(got, s, b), want)
    return None


# ---- the recorded image I/O ----

Rec = namedtuple("Rec", "seq t kind fid off len arg data")


class IoLog:
    def __init__(self, path):
        self.files, self.ops, self.done, self.times = {}, [], {}, {}
        for line in open(path):
            p = line.split()
            if p[0] == "F":
                self.files[p[2]] = int(p[1])
            elif p[0] == "S":
                r = Rec(int(p[1]), int(p[2]), p[3], int(p[4]), int(p[5]), int(p[6]),
                        int(p[7]), int(p[8]))
                self.ops.append(r)
                self.times[r.seq] = r.t
            elif p[0] == "C":
                self.done[int(p[3])] = (int(p[1]), int(p[4]))
                self.times[int(p[1])] = int(p[2])
        self.last = max(self.times, default=0)
        self.data = open(path + ".data", "rb").read()

    def fid(self, path):
        """The file id of path; by its name alone if the run was moved."""
        fid = self.files.get(os.path.realpath(path))
        same = [i for f, i in self.files.items() if os.path.basename(f) == os.path.basename(path)]
        return fid if fid or len(same) != 1 else same[0]

    def completed(self, r, c):
        d = self.done.get(r.seq)
        return d is not None and d[0] < c

    def barrier(self, fid, c):
        """Start of the last flush of fid that completed, successfully, before c."""
        b = 0
        for r in self.ops:
            if r.fid == fid and r.kind in "sf" and self.completed(r, c) and \
                    self.done[r.seq][1] == 0:
                b = max(b, r.seq)
        return b


def sparse_copy(src, dst):
    subprocess.run(["cp", "--sparse=always", src, dst], check=True)


def apply(f, r, data, pieces=None):
    """Apply record r to the open state file f (all of it, or only the given
    (offset, length) pieces), with the same call vdiskfs made."""
    if r.kind == "t":
        f.truncate(r.off)
        return
    for off, ln in pieces or [(r.off, r.len)]:
        if not ln:
            continue
        if r.kind == "w":
            os.pwrite(f.fileno(), data[r.data + off - r.off:r.data + off - r.off + ln], off)
        else:
            fallocate(f.fileno(), r.arg, off, ln)


def torn(r, rnd, gran):
    """A random subset (or prefix) of r's sectors at granularity gran."""
    first, end = r.off // gran * gran, r.off + r.len
    pieces = []
    for a in range(first, end, gran):
        lo, hi = max(a, r.off), min(a + gran, end)
        pieces.append((lo, hi - lo))
    if rnd.random() < 0.5:
        return pieces[:rnd.randrange(len(pieces) + 1)]
    return [p for p in pieces if rnd.random() < 0.5]


def build_state(io, fid, init, out, c, rnd):
    """Write the crash state at point c to out; returns counts of what was done."""
    sparse_copy(init, out)
    bar = io.barrier(fid, c)
    gran = rnd.choice((512, 4096))
    n = {"kept": 0, "dropped": 0, "torn": 0, "forced": 0}
    with open(out, "r+b") as f:
        for r in io.ops:
            if r.seq >= c or r.fid != fid or r.kind in "sf":
                continue
            d = io.done.get(r.seq)
            if d and d[0] < bar and d[1] >= 0:
                apply(f, r, io.data)
                n["forced"] += 1
                continue
            x = rnd.random()
            if x < 0.35:
                n["dropped"] += 1
            elif x < 0.7 or r.kind == "t" or (r.kind == "a" and not r.arg & 0x12):
                apply(f, r, io.data)
                n["kept"] += 1
            else:
                apply(f, r, io.data, torn(r, rnd, gran) or [(r.off, 0)])
                n["torn"] += 1
    return n


# ---- checking one state ----


def mounted(path):
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == path for line in f)


def read_view(vdiskfs, img, work):
    """Mount img read-write with vdiskfs (a vhdx log is replayed), read the
    view, unmount. Returns (bytes, None) or (None, error)."""
    mnt = os.path.abspath(os.path.join(work, "view"))
    if not os.path.exists(mnt):
        open(mnt, "w").close()
    log = open(os.path.join(work, "vdiskfs.log"), "a")
    p = subprocess.Popen([vdiskfs, "-f", img, mnt], stdout=log, stderr=log)
    for _ in range(400):
        if mounted(mnt) or p.poll() is not None:
            break
        time.sleep(0.025)
    if not mounted(mnt):
        p.kill()
        p.wait()
        subprocess.run(["fusermount3", "-uz", mnt], stderr=subprocess.DEVNULL, check=False)
        return None, "vdiskfs did not mount it (exit %s)" % p.returncode
    try:
        with open(mnt, "rb") as f:
            data = f.read()
    except OSError as e:
        data, err = None, "reading the view: %s" % e
    subprocess.run(["fusermount3", "-u", mnt], check=False)
    try:
        rc = p.wait(timeout=60)
    except subprocess.TimeoutExpired:
        p.kill()
        rc = p.wait()
    if data is None:
        return None, err
    if rc:
        return None, "vdiskfs exited %d after serving it" % rc
    return data, None


def qemu_check(fmt, img, work):
    """qemu-img check (a vhdx on a copy with -r all, which replays its log).
    Returns (image qemu reads, error)."""
    if fmt == "vhdx":
        copy = os.path.join(work, "qemu.vhdx")
        sparse_copy(img, copy)
        img, args = copy, ["-r", "all"]
    else:
        args = []
    try:
        p = subprocess.run(["qemu-img", "check"] + args + ["-f", fmt, img],
                           capture_output=True, text=True, timeout=QEMU_TIMEOUT)
    except subprocess.TimeoutExpired:
        return img, "qemu-img check did not finish in %d s" % QEMU_TIMEOUT
    if p.returncode not in (0, 3):
        return img, "qemu-img check exits %d: %s" % (p.returncode,
                                                      (p.stdout + p.stderr).strip()[-600:])
    return img, None


def qemu_read(fmt, img, work):
    raw = os.path.join(work, "qemu.raw")
    subprocess.run(["qemu-img", "convert", "-f", fmt, "-O", "raw", img, raw], check=True,
                   timeout=QEMU_TIMEOUT)
    return open(raw, "rb").read()


def check_state(a, io, glog, base, state, c):
    qimg, err = qemu_check(a.fmt, state, a.work)
    if err:
        return err
    qdata = qemu_read(a.fmt, qimg, a.work) if a.fmt == "vhdx" else None
    view, err = read_view(a.vdiskfs, state, a.work)
    if err:
        return err
    if len(view) != len(base):
        return "the view has %d bytes, the base %d" % (len(view), len(base))
    t_done = io.times.get(c - 1, 0)
    t_start = io.times.get(c, 1 << 64)
    err = verify(view, base, glog, glog.acked_pos(t_done), t_start)
    if err:
        return err
    if qdata is not None and qdata != view:
        return "vdiskfs and qemu-img read the replayed log differently"
    return None


# ---- the two hand-made wrong states ----


def control_drop_acked(io, fid, init, out, glog):
    """Everything applied except one data write that holds, at the end, the
    only data a guest sector may read: acknowledged, never overwritten."""
    apos = glog.acked_pos(1 << 64)
    for r in io.ops:
        if r.fid != fid or r.kind != "w" or r.len < SECTOR or r.off % SECTOR:
            continue
        needed = None
        for at in range(r.data, r.data + r.len - SECTOR + 1, SECTOR):
            off, gen = STAMP.unpack_from(io.data, at)
            if io.data[at:at + SECTOR] != stamp(off, gen) or off % SECTOR:
                break
            only = glog.allowed(off // SECTOR, apos, 1 << 64)
            if len(only) == 1 and only[0] and only[0].kind == "W" and only[0].gen == gen \
                    and io.data.find(stamp(off, gen), at + SECTOR) < 0 \
                    and io.data.rfind(stamp(off, gen), 0, at) < 0:
                needed = (off, gen)  # and no copy of it anywhere else
                break
        if not needed:
            continue
        sparse_copy(init, out)
        with open(out, "r+b") as f:
            for y in io.ops:
                if y.fid == fid and y.kind not in "sf" and y is not r:
                    apply(f, y, io.data)
        return "dropped the write of %d bytes at 0x%x (guest offset 0x%x, generation %d)" % (
            r.len, r.off, needed[0], needed[1])
    return None


def qcow2_first_data_cluster(f):
    """(host offset of a data cluster an L2 entry points at, cluster bits)."""
    h = f.read(104)
    cbits = struct.unpack_from(">I", h, 20)[0]
    l1_size, l1_off = struct.unpack_from(">IQ", h, 36)
    f.seek(l1_off)
    l1 = f.read(8 * l1_size)
    for i in range(l1_size):
        l2_off = struct.unpack_from(">Q", l1, 8 * i)[0] & 0x00fffffffffffe00
        if not l2_off:
            continue
        f.seek(l2_off)
        l2 = f.read(1 << cbits)
        for j in range(0, len(l2), 8):
            e = struct.unpack_from(">Q", l2, j)[0]
            if not e & (1 << 62) and e & 0x00fffffffffffe00:
                return e & 0x00fffffffffffe00, cbits
    return None, cbits


def control_refcount(io, fid, init, out):
    """Everything applied, then the refcount of one cluster an L2 entry points
    at set back to 0: the refcount block write dropped, the L2 entry kept."""
    sparse_copy(init, out)
    with open(out, "r+b") as f:
        for r in io.ops:
            if r.fid == fid and r.kind not in "sf":
                apply(f, r, io.data)
        data, cbits = qcow2_first_data_cluster(f)
        if data is None:
            return None
        f.seek(0)
        h = f.read(104)
        rt_off = struct.unpack_from(">Q", h, 48)[0]
        order = struct.unpack_from(">I", h, 96)[0] if struct.unpack_from(">I", h, 4)[0] >= 3 \
            else 4
        if order != 4:
            return None
        per_block = (1 << cbits) * 8 >> order
        c = data >> cbits
        f.seek(rt_off + 8 * (c // per_block))
        rb = struct.unpack(">Q", f.read(8))[0]
        os.pwrite(f.fileno(), bytes(2), rb + 2 * (c % per_block))
    return "refcount of the data cluster at 0x%x set to 0 in the block at 0x%x" % (data, rb)


# ---- did the run do what its scenario is for? ----


def qcow2_header(path):
    with open(path, "rb") as f:
        return f.read(104)


def vhdx_log_region(path):
    """(offset, length) of the log, from the current of the two headers."""
    best = None
    with open(path, "rb") as f:
        for at in (64 << 10, 128 << 10):
            f.seek(at)
            h = f.read(80)
            if h[:4] == b"head":
                seq = struct.unpack_from("<Q", h, 8)[0]
                if not best or seq > best[0]:
                    best = (seq, struct.unpack_from("<Q", h, 72)[0],
                            struct.unpack_from("<I", h, 68)[0])
    return best[1:] if best else (0, 0)


def cmd_scenario(name, init, img, iolog, focus_path):
    """Exit 1 unless the run shows what the scenario is for; write the records
    where it happens to focus_path (crash points are drawn near them too)."""
    io = IoLog(iolog)
    fid = io.fid(img)
    focus = []
    syncs = sum(1 for r in io.ops if r.fid == fid and r.kind in "sf")
    what = "%d records, %d flushes" % (io.last, syncs)
    if name == "c512":
        a, b = qcow2_header(init), qcow2_header(img)
        ra, rb = struct.unpack_from(">QI", a, 48), struct.unpack_from(">QI", b, 48)
        if rb[1] <= ra[1]:
            sys.exit("c512: the refcount table did not grow (%d clusters)" % rb[1])
        what += "; refcount table grew from %d to %d clusters" % (ra[1], rb[1])
        cbits = struct.unpack_from(">I", b, 20)[0]
        focus = [r.seq for r in io.ops if r.fid == fid and r.kind == "w" and
                 rb[0] <= r.off < rb[0] + (rb[1] << cbits)][:1]
    elif name == "evict":
        h = qcow2_header(img)
        l1_size, l1_off = struct.unpack_from(">IQ", h, 36)
        with open(img, "rb") as f:
            f.seek(l1_off)
            l1 = f.read(8 * l1_size)
        n = sum(1 for i in range(l1_size) if struct.unpack_from(">Q", l1, 8 * i)[0])
        if n <= 4:
            sys.exit("evict: only %d L2 tables, the cache holds 4" % n)
        what += "; %d L2 tables through a cache of 4" % n
    elif name == "vhdx":
        off, ln = vhdx_log_region(img)
        prev, wraps = None, 0
        for r in io.ops:
            if r.fid == fid and r.kind == "w" and off <= r.off < off + ln:
                if prev is not None and r.off < prev:
                    wraps += 1
                    focus.append(r.seq)
                prev = r.off
        if not wraps:
            sys.exit("vhdx: the log at 0x%x (%d bytes) never wrapped" % (off, ln))
        what += "; the log wrapped %d times" % wraps
    elif name in ("commit", "backup"):
        # the job wrote its other file while the guest wrote the image
        other = os.path.join(os.path.dirname(img), "lower.qcow2" if name == "commit" else "bk.qcow2")
        ofid = io.fid(other)
        n = sum(1 for r in io.ops if ofid is not None and r.fid == ofid and r.kind == "w")
        if not n:
            sys.exit("%s: the job wrote nothing to %s" % (name, other))
        what += "; the %s wrote %d times to %s" % (name, n, os.path.basename(other))
    print("%s: %s" % (name, what))
    with open(focus_path, "w") as f:
        f.write("".join("%d\n" % x for x in focus))
    return 0


# ---- the driver ----


def cmd_states(a):
    io = IoLog(a.iolog)
    glog = GuestLog(a.wlog)
    base = open(a.base, "rb").read()
    fid = io.fid(a.image)
    if fid is None:
        sys.exit("%s: vdiskfs recorded no I/O on it" % a.image)
    os.makedirs(a.work, exist_ok=True)
    state = os.path.join(a.work, "state." + a.fmt)
    if a.control:
        if a.control == "drop-acked":
            what = control_drop_acked(io, fid, a.init, state, glog)
        else:
            what = control_refcount(io, fid, a.init, state)
        if not what:
            sys.exit("control %s: nothing to drop in this run" % a.control)
        err = check_state(a, io, glog, base, state, io.last + 1)
        print("control %s: %s: %s" % (a.control, what, err or "NOT CAUGHT"))
        return 0 if err else 1
    rnd = random.Random(a.seed)
    focus = [int(x) for x in open(a.focus)] if a.focus else []
    bad = 0
    for i in range(a.states):
        # The end of the run is one crash point in every few.
        if i % 8 == 7:
            c = io.last + 1
        elif focus and i % 2:
            c = min(max(1, rnd.choice(focus) + rnd.randrange(-40, 41)), io.last + 1)
        else:
            c = rnd.randrange(1, io.last + 2)
        n = build_state(io, fid, a.init, state, c, rnd)
        err = crash_backing(a, io, state, c, rnd)
        err = err or check_state(a, io, glog, base, state, c)
        print("state %d: crash before record %d of %d (%d forced, %d kept, %d torn, "
              "%d dropped): %s" % (i, c, io.last, n["forced"], n["kept"], n["torn"],
                                   n["dropped"], err or "ok"))
        if err:
            bad += 1
            if a.keep:
                os.makedirs(a.keep, exist_ok=True)
                kept = os.path.join(a.keep, "state-%d-%d.%s" % (a.seed, i, a.fmt))
                sparse_copy(state, kept)
                print("  kept %s; again: %s" % (kept, repro(a, i)))
    print("%s: %d states, %d failed" % (a.image, a.states, bad))
    return 1 if bad else 0


def crash_backing(a, io, state, c, rnd):
    """With --backing-state: the backing file crashed at the same point c,
    checked by qemu-img, and the state made to back onto it."""
    if not a.backing_state:
        return None
    path, init = a.backing_state
    out = os.path.join(a.work, "backing-state.qcow2")
    build_state(io, io.fid(path), init, out, c, rnd)
    _, err = qemu_check("qcow2", out, a.work)
    if err:
        return "the backing file's state: " + err
    subprocess.run(["qemu-img", "rebase", "-u", "-f", a.fmt, "-F", "qcow2", "-b",
                    os.path.abspath(out), state], check=True, timeout=QEMU_TIMEOUT)
    return None


def repro(a, i):
    return "powerloss.py states --fmt %s --image %s --init %s --iolog %s --wlog %s " \
        "--base %s --vdiskfs %s --work %s --seed %d --states %d%s" % (
            a.fmt, a.image, a.init, a.iolog, a.wlog, a.base, a.vdiskfs, a.work, a.seed, i + 1,
            " --focus " + a.focus if a.focus else "")


def main():
    import argparse
    if len(sys.argv) > 1 and sys.argv[1] == "stamp":
        cmd_stamp(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 1)
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "scenario":
        return cmd_scenario(*sys.argv[2:7])
    if len(sys.argv) > 1 and sys.argv[1] == "write":
        cmd_write(sys.argv[2], sys.argv[3], int(sys.argv[4]),
                  *[int(x) for x in sys.argv[5:11]])
        return 0
    ap = argparse.ArgumentParser()
    ap.add_argument("cmd", choices=["states"])
    for opt in ("fmt", "image", "init", "iolog", "wlog", "base", "vdiskfs", "work"):
        ap.add_argument("--" + opt, required=True)
    ap.add_argument("--states", type=int, default=8)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep")
    ap.add_argument("--focus")
    ap.add_argument("--control", choices=["drop-acked", "refcount"])
    ap.add_argument("--backing-state", nargs=2, metavar=("FILE", "INIT"),
                    help="the image's qcow2 backing file, written in the same run (a "
                         "commit): crashed at the same point, and the state backs onto it")
    return cmd_states(ap.parse_args())


if __name__ == "__main__":
    sys.exit(main())
