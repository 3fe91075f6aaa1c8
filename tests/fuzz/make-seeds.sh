#!/usr/bin/env bash
# Make the image seeds of tests/fuzz/corpus/{qcow2,vhdx} (small images: 512 B
# to 16 KiB clusters, a few MiB of virtual size; vhdx packed with
# pack-image.py). Needs qemu-img, qemu-io, python3 and a build (default
# build/) for mkimage and replay-vhdx.
#   tests/fuzz/make-seeds.sh [--mount DIR] [BUILDDIR]
# With --mount, the seeds of contrib/fuzz-mount.sh instead: the same images
# unpacked plus every qcow2 and vhdx feature the drivers support (cluster
# sizes 512 B-2 MiB, refcount widths 1-64, zlib, a backing chain, internal
# snapshots, preallocation, fixed vhdx, a differencing disk), in DIR/qcow2
# and DIR/vhdx; their backing files in DIR/back, named as ../back/NAME.
set -euo pipefail
cd "$(dirname "$0")/../.."
mount=
if [ "${1:-}" = --mount ]; then
	mount=$(realpath -m "$2")
	shift 2
fi
build=${1:-build}
src=$PWD
q=$src/tests/fuzz/corpus/qcow2
v=$src/tests/fuzz/corpus/vhdx
[ -z "$mount" ] || { q=$mount/qcow2 v=$mount/vhdx; mkdir -p "$mount"/back; }
pack=$src/tests/fuzz/pack-image.py
mkdir -p "$q" "$v"
t=$(mktemp -d)
trap 'rm -rf "$t"' EXIT
# Images in src/, backing files in back/: backing names stay valid in DIR.
mkdir "$t/src" "$t/back"
cd "$t/src"
# put_vhdx FILE NAME: packed into the corpus, or as it is for mounting.
put_vhdx() {
	if [ -n "$mount" ]; then
		cp "$1" "$v/$2"
	else
		python3 "$pack" pack "$1" "$v/$2"
	fi
}

# ---- qcow2 (plain images) ----
qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=16k extl2.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x21 2k 1k' -c 'write -z 20k 2k' -c 'write -P 0x22 40k 4k' \
	extl2.qcow2 >/dev/null
cp extl2.qcow2 "$q"/

qemu-img create -q -f qcow2 -o cluster_size=4k bitmap.qcow2 1M
qemu-img bitmap --add bitmap.qcow2 b0
qemu-io -f qcow2 -c 'write -P 0x31 4k 8k' bitmap.qcow2 >/dev/null
qemu-img bitmap --add --granularity 64k bitmap.qcow2 b1
cp bitmap.qcow2 "$q"/

# lazy refcounts, killed after a write: the dirty bit stays set.
qemu-img create -q -f qcow2 -o lazy_refcounts=on,cluster_size=4k lazy-dirty.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x41 8k 12k' -c 'write -P 0x42 600k 4k' -c 'sigraise 9' \
	lazy-dirty.qcow2 >/dev/null 2>&1 || true
cp lazy-dirty.qcow2 "$q"/

qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=4k zstd-4k.qcow2 256k
qemu-img create -q -f raw pat.raw 256k
qemu-io -f raw -c 'write -P 0x51 0 64k' -c 'write -P 0x52 128k 8k' pat.raw >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o compression_type=zstd,cluster_size=4k pat.raw \
	zstd-4k.qcow2
cp zstd-4k.qcow2 "$q"/

qemu-img create -q -f qcow2 -o compat=0.10,cluster_size=4k v2-4k.qcow2 1M
qemu-io -f qcow2 -c 'write -P 0x61 4k 4k' -c 'write -P 0x62 512k 8k' v2-4k.qcow2 >/dev/null
cp v2-4k.qcow2 "$q"/

# ---- vhdx (packed) ----
# The target's own parent (fixed DataWriteGuid) for the differencing disk.
: >empty
VDISKFS_FUZZ_DIR=$t/fz "$src/$build"/tests/fuzz/replay-vhdx empty >/dev/null
# Run an image through the target once: it writes a few bytes (partial blocks),
# with no injected failure.
through() {
	VDISKFS_FUZZ_FAULTS=0 VDISKFS_FUZZ_DIR=$t/fz "$src/$build"/tests/fuzz/replay-vhdx "$1" >/dev/null
	cp "$t/fz/img" "$1"
}

qemu-img create -q -f vhdx -o block_size=1M,log_size=1M dyn.vhdx 8M
qemu-io -f vhdx -c 'write -P 0x71 1M 4k' -c 'write -P 0x72 5M 4k' dyn.vhdx >/dev/null
put_vhdx dyn.vhdx dyn.vhdx

if [ -z "$mount" ]; then
	"$src/$build"/tests/tools/mkimage vhdx "$PWD"/diff.vhdx 4M backing="$t/fz/parent.vhdx"
	through diff.vhdx
	through diff.vhdx
	put_vhdx diff.vhdx diff.vhdx
fi

"$src/$build"/tests/tools/mkimage vhdx "$PWD"/4k.vhdx 4M sector=4096
through 4k.vhdx
through 4k.vhdx
put_vhdx 4k.vhdx 4k.vhdx

# A log QEMU left behind: the header points at the LogGuid of the second
# entry and the BAT page is as before it (as after a crash mid-update).
qemu-img create -q -f vhdx -o block_size=1M,log_size=1M dirty.vhdx 8M
python3 - <<'PY'
import struct
f = open("dirty.vhdx", "r+b")
def rd(o, n):
    f.seek(o); return f.read(n)
rt = rd(192 << 10, 64 << 10)
bat = None
for i in range(struct.unpack_from("<I", rt, 8)[0]):
    e = rt[16 + 32 * i:48 + 32 * i]
    if e[:16] == bytes.fromhex("6677c22d23f600429d64115e9bfd4a08"):
        bat = struct.unpack_from("<Q", e, 16)[0]
open("bat.page", "wb").write(rd(bat, 4096))
open("bat.off", "w").write(str(bat))
PY
qemu-io -f vhdx -c 'write -P 0xa5 3M 4k' -c 'write -P 0xa6 7M 4k' dirty.vhdx >/dev/null
python3 - <<'PY'
import struct
T = []
for i in range(256):
    c = i
    for _ in range(8):
        c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
    T.append(c)
def crc(b):
    c = 0xffffffff
    for x in b:
        c = T[(c ^ x) & 0xff] ^ (c >> 8)
    return c ^ 0xffffffff
f = open("dirty.vhdx", "r+b")
def rd(o, n):
    f.seek(o); return f.read(n)
def wr(o, b):
    f.seek(o); f.write(b)
h1, h2 = rd(64 << 10, 4096), rd(128 << 10, 4096)
s1, s2 = struct.unpack_from("<Q", h1, 8)[0], struct.unpack_from("<Q", h2, 8)[0]
cur, other = (h2, 64 << 10) if s2 > s1 else (h1, 128 << 10)
log_off = struct.unpack_from("<Q", cur, 72)[0]
for off in range(0, 1 << 20, 4096):
    e = rd(log_off + off, 4096)
    if e[:4] == b"loge" and struct.unpack_from("<Q", e, 16)[0] == 2:
        break
else:
    raise SystemExit("no second log entry")
h = bytearray(cur)
h[48:64] = e[32:48]
struct.pack_into("<Q", h, 8, struct.unpack_from("<Q", h, 8)[0] + 1)
struct.pack_into("<I", h, 4, 0)
struct.pack_into("<I", h, 4, crc(h))
wr(other, bytes(h))
wr(int(open("bat.off").read()), open("bat.page", "rb").read())
PY
put_vhdx dirty.vhdx dirty-log.vhdx
[ -n "$mount" ] || { ls -l "$q" "$v"; exit 0; }

# ---- the wider set for mounting (not in the corpus: too large packed) ----
# fill IMAGE: data, an unaligned write and a zeroed range, through qemu-io.
fill() {
	qemu-io -f qcow2 -c 'write -P 0x81 0 9k' -c 'write -P 0x82 1000k 3k' \
		-c 'write -z 2M 64k' -c 'write -P 0x83 3M 512k' "$1" >/dev/null
}
qnew() { # qnew NAME SIZE OPTIONS: a filled qcow2 in the seed folder
	qemu-img create -q -f qcow2 -o "$3" "$1" "$2"
	fill "$1"
	cp "$1" "$q"/
}
for c in 512 4k 64k 2M; do
	qnew "c$c.qcow2" 4M cluster_size=$c
done
for r in 1 2 4 8 16 32 64; do
	qnew "refbits$r.qcow2" 4M refcount_bits=$r,cluster_size=4k
done
qnew v2-64k.qcow2 4M compat=0.10
qnew extl2-64k.qcow2 4M extended_l2=on
qnew extl2-2M.qcow2 8M extended_l2=on,cluster_size=2M
for p in metadata falloc full; do
	qnew "prealloc-$p.qcow2" 4M preallocation=$p,cluster_size=16k
done
qemu-img create -q -f raw pat.raw 4M
qemu-io -f raw -c 'write -P 0x91 0 1M' -c 'write -P 0x92 3M 64k' pat.raw >/dev/null
qemu-img convert -q -c -f raw -O qcow2 -o cluster_size=8k pat.raw zlib-8k.qcow2
cp zlib-8k.qcow2 "$q"/
# Internal snapshots: data changed after each.
qnew snap2.qcow2 4M cluster_size=4k
qemu-img snapshot -c s1 snap2.qcow2
qemu-io -f qcow2 -c 'write -P 0x84 0 8k' snap2.qcow2 >/dev/null
qemu-img snapshot -c s2 snap2.qcow2
qemu-io -f qcow2 -c 'write -P 0x85 4k 8k' snap2.qcow2 >/dev/null
cp snap2.qcow2 "$q"/
# A chain of three: base <- mid (in back/) <- chain.qcow2.
qemu-img create -q -f qcow2 -o cluster_size=4k ../back/base.qcow2 4M
fill ../back/base.qcow2
qemu-img create -q -f qcow2 -o cluster_size=16k -b base.qcow2 -F qcow2 ../back/mid.qcow2
qemu-io -f qcow2 -c 'write -P 0x86 8k 4k' ../back/mid.qcow2 >/dev/null
qemu-img create -q -f qcow2 -o cluster_size=64k -b ../back/mid.qcow2 -F qcow2 chain.qcow2
qemu-io -f qcow2 -c 'write -P 0x87 1M 4k' chain.qcow2 >/dev/null
cp chain.qcow2 "$q"/
cp ../back/base.qcow2 ../back/mid.qcow2 "$mount"/back/

qemu-img create -q -f vhdx -o subformat=fixed,block_size=1M fixed.vhdx 4M
qemu-io -f vhdx -c 'write -P 0x93 0 9k' -c 'write -P 0x94 3M 4k' fixed.vhdx >/dev/null
put_vhdx fixed.vhdx fixed.vhdx
qemu-img create -q -f vhdx -o block_size=8M,log_size=1M ../back/parent.vhdx 16M
qemu-io -f vhdx -c 'write -P 0x95 0 12k' -c 'write -P 0x96 9M 4k' ../back/parent.vhdx >/dev/null
cp ../back/parent.vhdx "$mount"/back/
"$src/$build"/tests/tools/mkimage vhdx diff.vhdx 16M backing=../back/parent.vhdx
put_vhdx diff.vhdx diff.vhdx
ls -l "$q" "$v" "$mount"/back
