#!/usr/bin/env python3
"""Whole-daemon mutation fuzzing: mutate a seed image (mutate.py), mount it
with vdiskfs (the sanitizer build), use the view as a guest would, classify.
Run through contrib/fuzz-mount.sh, which builds and makes the seeds.

Each case lives in a scratch directory of its own:
  src/IMG       the mutated image, alone in the mounted SOURCE directory
  back/         the backing files and vhdx parent its seed names (../back/NAME)
  sentinel      a file nothing may touch
  mnt/          the directory mount: mnt/IMG is the view, mnt/.vdiskfs the control file
The actions (a separate process, under a time limit): read the view (all of
it up to 256 MiB, else its data extents), walk SEEK_DATA/SEEK_HOLE, read
every xattr and the control file, write, punch and zero ranges, fsync; then
unmount. Classes: refused (not served, with the reason in the control file),
served, eio (served, some request failed), crash (a signal, a sanitizer
report, a lost connection), hang (the time limit), escape (another file
changed, or the image grew beyond reason), mismatch (qemu-img accepted and
converted the image, and vdiskfs served something else, or left an image
that qemu-img check or compare rejects after the same writes).
"""
import argparse
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import ctypes

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import mutate  # noqa: E402

FAILS = ("crash", "hang", "escape", "mismatch")
CLASSES = ("refused", "refused-with-reason", "served", "eio") + FAILS
READ_ALL = 256 << 20   # views up to this size are read whole
READ_BUDGET = 64 << 20  # else this much of their data extents
DIFF_MAX = 64 << 20    # largest virtual size compared with qemu-img
GROWTH = 1 << 30       # an image may grow this much (6 writes into 256 MiB vhdx blocks)
SANITIZER = (b"Sanitizer", b"runtime error", b"LeakSanitizer")

# ---------------------------------------------------------------- the actions


def act_plan(rng, size):
    """Writes, punches and zeroes within the view: (op, offset, length)."""
    plan = []
    for _ in range(rng.randrange(2, 7)):
        op = rng.choice(("write", "write", "punch", "zero"))
        ln = rng.choice((1, 512, 4096, 65536, 3000, 70000, 1 << 20))
        off = rng.choice((0, rng.randrange(size), rng.randrange(size) // 4096 * 4096,
                          max(size - ln, 0)))
        ln = min(ln, size - off)
        if ln > 0:
            plan.append((op, off, ln, rng.randrange(1, 256)))
    return plan


def fallocate(fd, mode, off, ln):
    libc = ctypes.CDLL(None, use_errno=True)
    libc.fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long)
    if libc.fallocate(fd, mode, off, ln) < 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e))


PUNCH = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
ZERO = 0x10          # FALLOC_FL_ZERO_RANGE


def first_diff(a, b):
    for i in range(min(len(a), len(b))):
        if a[i] != b[i]:
            return i
    return min(len(a), len(b))


def act(view, ctl, ref, plan_seed, res):
    """The guest's part; results into res (a dict, printed as JSON)."""
    res["errors"] = []

    def err(what, e):
        res["errors"].append(f"{what}: {e.strerror if isinstance(e, OSError) else e}")
        if isinstance(e, OSError) and e.errno == errno.ENOTCONN:
            res["enotconn"] = True

    try:
        fd = os.open(view, os.O_RDWR)
    except OSError as e:
        fd = -1
        res["open"] = e.errno
    try:  # after the open: the directory is scanned on lookup
        res["status"] = open(ctl).read()
    except OSError as e:
        err("control file", e)
    if fd < 0:
        return
    res["open"] = 0
    size = os.fstat(fd).st_size
    res["size"] = size
    try:
        for name in os.listxattr(view):
            os.getxattr(view, name)
    except OSError as e:
        err("xattr", e)
    read_view(fd, size, ref, res, err)
    plan = act_plan(random.Random(plan_seed), size) if size else []
    rf = open(ref, "r+b") if ref and res.get("same") else None
    for op, off, ln, pat in plan:
        try:
            if op == "write":
                os.pwrite(fd, bytes([pat]) * ln, off)
            else:
                fallocate(fd, PUNCH if op == "punch" else ZERO, off, ln)
            if rf:
                rf.seek(off)
                rf.write(bytes([pat]) * ln if op == "write" else bytes(ln))
        except OSError as e:
            err(f"{op} {off}+{ln}", e)
    try:
        os.fsync(fd)
    except OSError as e:
        err("fsync", e)
    if rf:
        rf.close()
    os.close(fd)


def read_view(fd, size, ref, res, err):
    """Read the view (whole, or its data extents), compare with ref, walk the holes."""
    rf = open(ref, "rb") if ref else None
    res["same"] = bool(rf)
    off, done, steps = 0, 0, 0
    while off < size and steps < 100000:
        steps += 1
        try:
            d = os.lseek(fd, off, os.SEEK_DATA)
            h = os.lseek(fd, d, os.SEEK_HOLE)
        except OSError as e:
            if e.errno != errno.ENXIO:
                err(f"seek {off}", e)
            break
        if h <= d:
            err(f"seek {off}", f"SEEK_HOLE {h} not after SEEK_DATA {d}")
            break
        off = h
    pos = 0
    while pos < size and (size <= READ_ALL or done < READ_BUDGET):
        n = min(1 << 20, size - pos)
        try:
            b = os.pread(fd, n, pos)
        except OSError as e:
            err(f"read {pos}", e)
            res["same"] = False
            if e.errno == errno.ENOTCONN:
                break
            pos += n
            continue
        if rf and res["same"]:
            rf.seek(pos)
            r = rf.read(n)
            if r != b:
                res["same"] = False
                res["diff_at"] = pos + first_diff(r, b)
        done += n
        pos += n
    if rf:
        rf.close()


# ---------------------------------------------------------------- one case


def run(cmd, timeout, **kw):
    try:
        return subprocess.run(cmd, timeout=timeout, capture_output=True, **kw)
    except subprocess.TimeoutExpired:
        return None


def digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for b in iter(lambda: f.read(1 << 20), b""):
            h.update(b)
    return h.hexdigest()


def snapshot_tree(case, img):
    """The sentinel and every file beside the image or in back/: name -> digest."""
    out = {"sentinel": digest(os.path.join(case, "sentinel"))}
    for d in ("src", "back"):
        for n in sorted(os.listdir(os.path.join(case, d))):
            p = os.path.join(case, d, n)
            if os.path.isfile(p) and p != img:
                out[os.path.join(d, n)] = digest(p)
    out["src/ (names)"] = ",".join(sorted(os.listdir(os.path.join(case, "src"))))
    return out


def qemu_oracle(case, img, fmt, ref):
    """ref (raw) if qemu-img checks and converts the image, else None."""
    o = os.path.join(case, "oracle")
    os.makedirs(o)
    copy = os.path.join(o, os.path.basename(img))
    shutil.copyfile(img, copy)
    info = run(["qemu-img", "info", "--output=json", "-f", fmt, copy], 20)
    try:
        vsize = json.loads(info.stdout)["virtual-size"] if info and info.returncode == 0 else -1
    except (ValueError, KeyError):
        vsize = -1
    ok = 0 <= vsize <= DIFF_MAX
    if ok:
        r = run(["qemu-img", "check", "-f", fmt, copy], 30)
        ok = r is not None and r.returncode == 0
    if ok:
        r = run(["qemu-img", "convert", "-f", fmt, "-O", "raw", copy, ref], 60)
        ok = r is not None and r.returncode == 0
    if not ok:
        shutil.rmtree(o)
    return ref if ok else None


def is_mounted(mnt):
    with open("/proc/self/mounts") as f:
        return any(line.split()[1] == mnt for line in f)


def unmount(mnt):
    if is_mounted(mnt):
        if run(["fusermount3", "-u", mnt], 10) is None or is_mounted(mnt):
            run(["umount", "-l", mnt], 10)


def stop_daemon(p, mnt, timeout):
    """Unmount and wait for the daemon; its exit status, or None if it hung."""
    unmount(mnt)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        run(["umount", "-l", mnt], 10)
        return None


def sanitizer_env():
    env = dict(os.environ)
    top = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0")
    env["ASAN_OPTIONS"] += ":handle_abort=1"  # a hung daemon gets SIGABRT: its stacks in the log
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")
    env.setdefault("LSAN_OPTIONS", f"suppressions={top}/tests/lsan.supp:print_suppressions=0")
    return env


def run_case(a, case, img, fmt, plan_seed):
    """Mount, act, unmount, judge. (class, detail)."""
    mnt = os.path.join(case, "mnt")
    os.makedirs(mnt, exist_ok=True)
    before = snapshot_tree(case, img)
    size0 = os.path.getsize(img)
    ref = qemu_oracle(case, img, fmt, os.path.join(case, "ref.raw")) if a.qemu else None
    log = open(os.path.join(case, "vdiskfs.log"), "wb")
    p = subprocess.Popen([a.vdiskfs, "-f", "-o", "backing=follow", os.path.join(case, "src"), mnt],
                         stdout=log, stderr=subprocess.STDOUT, env=sanitizer_env())
    t0 = time.monotonic()
    while not is_mounted(mnt) and p.poll() is None and time.monotonic() - t0 < a.timeout:
        time.sleep(0.02)
    res = {}
    if p.poll() is not None:
        res["early_exit"] = p.returncode
    else:
        if not is_mounted(mnt):
            res["hang"] = "mount"
        else:
            act_on_view(a, mnt, os.path.basename(img), ref, plan_seed, res)
        if res.get("hang"):
            p.send_signal(signal.SIGABRT)  # a sanitizer build prints where it was
            time.sleep(1)
        st = stop_daemon(p, mnt, a.timeout)
        if st is None:
            res.setdefault("hang", "unmount")
        res["exit"] = st
    log.close()
    return judge(a, case, img, fmt, ref, res, before, size0, plan_seed)


def act_on_view(a, mnt, name, ref, plan_seed, res):
    """The actions in a child process, under the time limit; its results into res."""
    c = run([sys.executable, os.path.abspath(__file__), "--act", os.path.join(mnt, name),
             os.path.join(mnt, ".vdiskfs"), ref or "", str(plan_seed)], a.timeout)
    if c is None:
        res["hang"] = "actions"
        return
    try:
        res.update(json.loads(c.stdout or b"{}"))
    except ValueError:
        res["errors"] = [c.stderr.decode(errors="replace")[-300:]]


def judge(a, case, img, fmt, ref, res, before, size0, plan_seed):
    logb = open(os.path.join(case, "vdiskfs.log"), "rb").read()
    if res.get("hang"):
        return "hang", "timed out in " + res["hang"]
    if any(s in logb for s in SANITIZER):
        line = next(ln for ln in logb.splitlines() if any(s in ln for s in SANITIZER))
        return "crash", line.decode(errors="replace")[:200]
    if "early_exit" in res:
        return "crash", f"daemon exited with {res['early_exit']} before mounting"
    ex = res.get("exit")
    if ex not in (0, None) or res.get("enotconn"):
        return "crash", f"daemon exit {ex}" + (" (ENOTCONN)" if res.get("enotconn") else "")
    after = snapshot_tree(case, img) if os.path.exists(img) else {}
    changed = [k for k in set(before) | set(after) if before.get(k) != after.get(k)]
    if changed:
        return "escape", "changed: " + " ".join(sorted(changed))
    grown = os.path.getsize(img) - size0
    if grown > GROWTH:
        return "escape", f"image grew by {grown} bytes"
    if res.get("open"):
        reason = status_error(res.get("status", ""), os.path.basename(img))
        if ref:
            return "refused-with-reason", reason or "(no reason in the control file)"
        return "refused", reason or os.strerror(res["open"])
    if "open" not in res:  # the actions died: say so loudly
        return "crash", "actions: " + "; ".join(res.get("errors", []))
    if ref and res.get("size") is not None and res["size"] != os.path.getsize(ref):
        return "mismatch", f"view is {res['size']} bytes, qemu-img convert gives {os.path.getsize(ref)}"
    if ref and not res.get("same") and "diff_at" in res:
        return "mismatch", f"view differs from qemu-img convert at byte {res['diff_at']}"
    if res.get("errors"):
        return "eio", res["errors"][0]
    if ref and res.get("same"):
        return after_writes(case, img, fmt, ref, act_plan(random.Random(plan_seed), res["size"]))
    return "served", ""


# Bugs known and being fixed elsewhere: a failing case that matches one says so.
KNOWN = ((b"in zero_pump ", "known: zero_pump() use after free on a refused allocation"),
         (b"replayed the log", "known?: vhdx log replay without bounds"))


def known_bug(case, cls, detail, fmt):
    logb = open(os.path.join(case, "vdiskfs.log"), "rb").read()
    for sig, what in KNOWN:
        if sig in logb and (cls == "crash" or what.startswith("known?") and cls == "escape"):
            return what
    if cls == "mismatch" and fmt == "qcow2" and "view is" in detail:
        n = [int(w) for w in detail.split() if w.isdigit()]
        if len(n) == 2 and n[0] // 512 * 512 == n[1]:
            return "known: qcow2 virtual size not a multiple of 512"
    return ""


def after_writes(case, img, fmt, ref, plan):
    """qemu-img check and compare after vdiskfs's writes (the raw got the same).
    Leaks only count when qemu's own writes (qemu-io, same plan) leave fewer:
    a mutated refcount for a cluster past the end of the file is invisible to
    qemu-img check until the file grows over it."""
    r = run(["qemu-img", "check", "-f", fmt, img], 60)
    if r is None or r.returncode != 0 and not (
            r.returncode == 3 and leaks(r) <= qemu_leaks(case, img, fmt, plan)):
        out = r.stdout.decode(errors="replace").splitlines() if r else ["timed out"]
        out = [ln for ln in out if any(w in ln for w in ("ERROR", "Leaked", "leaked", "error",
                                                          "corrupt", "timed out"))]
        return "mismatch", f"qemu-img check after writes (exit {r and r.returncode}): " + \
            "; ".join(out[:3] + [f"({len(out)} lines)"] if len(out) > 3 else out)
    r = run(["qemu-img", "compare", "-f", fmt, "-F", "raw", img, ref], 60)
    if r is None or r.returncode != 0:
        out = r.stdout.decode(errors="replace").strip() if r else "timed out"
        return "mismatch", "qemu-img compare after writes: " + out[:200]
    return "served", "identical to qemu-img"


def leaks(r):
    for ln in r.stdout.decode(errors="replace").splitlines():
        if "leaked clusters were found" in ln:
            return int(ln.split()[0])
    return 0


def qemu_leaks(case, img, fmt, plan):
    """Leaked clusters after qemu-io makes the same writes on the image as mutated."""
    copy = os.path.join(case, "oracle", os.path.basename(img))
    cmds = []
    for op, off, ln, pat in plan:
        cmds += ["-c", f"write -P {pat} {off} {ln}" if op == "write" else
                 f"discard {off} {ln}" if op == "punch" else f"write -z {off} {ln}"]
    r = run(["qemu-io", "-f", fmt] + cmds + [copy], 60)
    c = run(["qemu-img", "check", "-f", fmt, copy], 60) if r and r.returncode == 0 else None
    return leaks(c) if c is not None and c.returncode == 3 else 0


def status_error(status, name):
    """The reason the control file's "errors" gives for name, if any."""
    try:
        errs = json.loads(status).get("errors", [])
    except (ValueError, AttributeError):
        return ""
    return next((str(e.get("error", ""))[:200] for e in errs
                 if isinstance(e, dict) and e.get("name") == name), "")


# ---------------------------------------------------------------- the loop


def seeds(a):
    out = []
    for fmt in ("qcow2", "vhdx"):
        if a.format in (fmt, "both"):
            d = os.path.join(a.seeds, fmt)
            out += [(fmt, os.path.join(d, n)) for n in sorted(os.listdir(d))]
    return out


def make_case(a, work, k, seed_list):
    """The case directory of case k: mutated image, backing files, sentinel."""
    rng = random.Random(f"{a.seed}:{k}")
    fmt, seed_img = rng.choice(seed_list)
    mseed = rng.randrange(1 << 32)
    case = os.path.join(work, f"case-{k}")
    shutil.rmtree(case, ignore_errors=True)
    os.makedirs(os.path.join(case, "src"))
    shutil.copytree(os.path.join(a.seeds, "back"), os.path.join(case, "back"))
    data, done = mutate.mutate(open(seed_img, "rb").read(), mseed)
    img = os.path.join(case, "src", "img." + fmt)
    open(img, "wb").write(data)
    with open(os.path.join(case, "sentinel"), "wb") as f:
        f.write(random.Random(k).randbytes(4096))
    meta = {"seed": a.seed, "case": k, "seed_image": os.path.basename(seed_img),
            "mutation_seed": mseed, "mutations": done, "format": fmt}
    json.dump(meta, open(os.path.join(case, "case.json"), "w"))
    return case, img, fmt, meta


def keep(a, case, cls, detail, meta):
    dst = os.path.join(a.out, f"{cls}-{meta['seed']}-{meta['case']}")
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(case, dst, ignore=shutil.ignore_patterns("mnt", "ref.raw", "oracle"))
    # The image as mutated (made again: the mutation is a function of the seed
    # image and its number) for --replay; as vdiskfs left it beside.
    img = os.path.join(dst, "src", "img." + meta["format"])
    os.rename(img, os.path.join(dst, "after." + meta["format"]))
    seed_img = os.path.join(a.seeds, meta["format"], meta["seed_image"])
    open(img, "wb").write(mutate.mutate(open(seed_img, "rb").read(), meta["mutation_seed"])[0])
    meta = dict(meta, result=cls, detail=detail)
    json.dump(meta, open(os.path.join(dst, "case.json"), "w"), indent=1)
    line = f"contrib/fuzz-mount.sh --vdiskfs {a.vdiskfs} --replay {dst}"
    open(os.path.join(dst, "REPRODUCE"), "w").write(line + "\n")
    return line


def replay(a):
    """Run a kept case again, from its own copy."""
    meta = json.load(open(os.path.join(a.replay, "case.json")))
    work = os.path.join(a.work, "replay")
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(a.replay, work, ignore=shutil.ignore_patterns("mnt", "oracle", "*.log"))
    img = os.path.join(work, "src", "img." + meta["format"])
    cls, detail = run_case(a, work, img, meta["format"], f"{meta['seed']}:{meta['case']}")
    if cls in FAILS:
        lines = open(os.path.join(work, "vdiskfs.log"), errors="replace").readlines()
        at = next((i for i, ln in enumerate(lines) if "ERROR:" in ln), max(len(lines) - 40, 0))
        sys.stdout.writelines(lines[at:at + 40])
    print(f"{cls}: {detail}")
    return 1 if cls in FAILS else 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=0)
    ap.add_argument("--seconds", type=float, default=0)
    ap.add_argument("--seed", type=int, default=int(time.time()))
    ap.add_argument("--out", default="fuzz-mount-out")
    ap.add_argument("--vdiskfs", required=True)
    ap.add_argument("--format", choices=("qcow2", "vhdx", "both"), default="both")
    ap.add_argument("--seeds", required=True, help="made by make-seeds.sh --mount")
    ap.add_argument("--work", default=os.environ.get("VDISKFS_TESTDIR", "/var/tmp"))
    ap.add_argument("--timeout", type=float, default=30, help="per step of a case")
    ap.add_argument("--no-qemu", dest="qemu", action="store_false")
    ap.add_argument("--replay")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    a.out, a.vdiskfs, a.seeds = map(os.path.abspath, (a.out, a.vdiskfs, a.seeds))
    os.makedirs(a.out, exist_ok=True)
    a.work = os.path.join(os.path.abspath(a.work), f"vdiskfs-fuzzmount.{os.getpid()}")
    os.makedirs(a.work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        if a.replay:
            return replay(a)
        return loop(a)
    finally:
        clean_work(a.work)


def clean_work(work):
    """Interrupted or done: nothing of ours stays mounted or on disk."""
    with open("/proc/self/mounts") as f:
        mnts = [line.split()[1] for line in f if line.split()[1].startswith(work + "/")]
    for m in mnts:
        run(["umount", "-l", m], 10)
    shutil.rmtree(work, ignore_errors=True)


def loop(a):
    if not a.rounds and not a.seconds:
        a.rounds = 100
    seed_list = seeds(a)
    counts = dict.fromkeys(CLASSES, 0)
    t0, k = time.monotonic(), 0
    print(f"fuzz-mount: seed {a.seed}, {len(seed_list)} seed images, out {a.out}", flush=True)
    while (not a.rounds or k < a.rounds) and (not a.seconds or time.monotonic() - t0 < a.seconds):
        case, img, fmt, meta = make_case(a, a.work, k, seed_list)
        cls, detail = run_case(a, case, img, fmt, f"{a.seed}:{k}")
        counts[cls] += 1
        what = f"{meta['seed_image']} [{'; '.join(meta['mutations'])}]"
        if cls in FAILS:
            tag = known_bug(case, cls, detail, fmt)
            detail += f" ({tag})" if tag else ""
            line = keep(a, case, cls, detail, meta)
            print(f"case {k}: {cls.upper()}: {detail}\n  {what}\n  {line}", flush=True)
        elif a.verbose:
            print(f"case {k}: {cls}: {detail[:120]} | {what}", flush=True)
        shutil.rmtree(case, ignore_errors=True)
        k += 1
    print(f"fuzz-mount: {k} cases in {time.monotonic() - t0:.0f} s: " +
          ", ".join(f"{c} {counts[c]}" for c in CLASSES), flush=True)
    return 1 if any(counts[c] for c in FAILS) else 0


if __name__ == "__main__":
    if len(sys.argv) == 6 and sys.argv[1] == "--act":
        r = {}
        try:
            act(sys.argv[2], sys.argv[3], sys.argv[4] or None, sys.argv[5], r)
        finally:
            print(json.dumps(r))
        sys.exit(0)
    sys.exit(main())
