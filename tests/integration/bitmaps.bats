#!/usr/bin/env bats
# qcow2 persistent dirty bitmaps with QEMU as the oracle: writes, zeroes and
# punched holes through the view (unaligned ones too) land in every enabled
# bitmap, which an unmount stores exact and not in use, so that
# `qemu-nbd -B` + `nbdinfo --map=qemu:dirty-bitmap:NAME` lists exactly the
# granules written (unioned with what QEMU dirtied before), a disabled bitmap
# stays as it was, and after QEMU clears them a second session (an overwrite
# in place too) and QEMU again add to them; a SIGKILL leaves
# them in use and the image consistent; a resize is refused while they exist.

load helpers

# bm_map IMG NAME...: for each bitmap, "NAME off+len ..." of its dirty runs as
# qemu-nbd serves them (adjacent runs merged); one server per bitmap, as
# qemu-nbd 7.2 answers a second -B's context with the first one's map
bm_map() {
	local img=$1 sock=$T/nbd.sock pid b i
	shift
	for b in "$@"; do
		qemu-nbd -r -t -B "$b" --socket="$sock" -f qcow2 "$img" &
		pid=$!
		for i in $(seq 1 100); do
			[ -S "$sock" ] && break
			sleep 0.05
		done
		echo -n "$b"
		nbdinfo --map="qemu:dirty-bitmap:$b" "nbd+unix:///?socket=$sock" |
			awk '$3 == 1 { if ($1 == e) { l += $2 } else { if (l) printf " %d+%d", s, l; s = $1; l = $2 } e = $1 + $2 }
			     END { if (l) printf " %d+%d", s, l; print "" }'
		kill "$pid"
		wait "$pid" 2>/dev/null || true
		rm -f "$sock"
	done
}

# bm_expect OFF+LEN...: the lines bm_map prints for b64, b4k, b1m and dis
# of a bm_image dirtied by exactly those byte ranges (QEMU's writes added
# unless BM_CLEARED is set: the enabled bitmaps were cleared since)
bm_expect() {
	python3 - "$@" <<'PY'
import os, sys
size, qemu = 64 << 20, ["1048576+4096", "2097152+4096"]
dis = qemu[:1]
if os.environ.get("BM_CLEARED"):
    qemu = []
def line(name, g, ranges):
    bits, runs, out = set(), [], name
    for r in ranges:
        off, n = map(int, r.split("+"))
        bits.update(range(off // g, (off + n - 1) // g + 1))
    for b in sorted(bits):
        if runs and runs[-1][1] == b:
            runs[-1][1] = b + 1
        else:
            runs.append([b, b + 1])
    for a, b in runs:
        out += " %d+%d" % (a * g, min(b * g, size) - a * g)
    print(out)
for name, g in (("b64", 65536), ("b4k", 4096), ("b1m", 1048576)):
    line(name, g, qemu + sys.argv[1:])
line("dis", 65536, dis)
PY
}

# bm_flags IMG: "name:flag,flag" of every bitmap qemu-img info lists
bm_flags() {
	qemu-img info -U --output=json "$1" | python3 -c '
import json, sys
d = json.load(sys.stdin)["format-specific"]["data"]
print(" ".join("%s:%s" % (b["name"], ",".join(b["flags"])) for b in d.get("bitmaps", [])))'
}

# pwrite VIEW OFF LEN: LEN random bytes at OFF, buffered, one write call
pwrite_at() {
	python3 -c '
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, os.urandom(int(sys.argv[3])), int(sys.argv[2]))
os.close(fd)' "$@"
}

# bm_image IMG CLUSTER: 64 MiB with bitmaps b64 (64k), b4k, b1m (enabled, QEMU
# wrote 4k at 1M and 2M while they were) and dis (dirtied at 1M, then disabled)
bm_image() {
	qemu-img create -q -f qcow2 -o cluster_size="$2" "$1" 64M
	qemu-img bitmap --add -g 64k "$1" b64
	qemu-img bitmap --add -g 4k "$1" b4k
	qemu-img bitmap --add -g 1M "$1" b1m
	qemu-img bitmap --add -g 64k "$1" dis
	qemu-io -f qcow2 -c 'write 1M 4k' "$1" >/dev/null
	qemu-img bitmap --disable "$1" dis
	qemu-io -f qcow2 -c 'write 2M 4k' "$1" >/dev/null
}

# writes_one VIEW: the first session's writes (ranges in W)
writes_one() {
	dd if=/dev/urandom of="$1" bs=4k seek=10 count=3 conv=notrunc status=none
	pwrite_at "$1" $((5 * 1048576 + 123)) 100
	fallocate -p -o $((8 * 1048576 + 1000)) -l 204800 "$1"
	fallocate -z -o $((20 * 1048576)) -l $((1048576 + 512)) "$1"
	dd if=/dev/urandom of="$1" bs=64k seek=480 count=1 oflag=direct conv=notrunc status=none
	W=(40960+12288 $((5 * 1048576 + 123))+100 $((8 * 1048576 + 1000))+204800
	   $((20 * 1048576))+$((1048576 + 512)) $((480 * 65536))+65536)
}

# bm_check IMG OFF+LEN...: qemu-nbd serves the bitmaps bm_expect computes
bm_check() {
	local img=$1 want got
	shift
	want=$(bm_expect "$@")
	got=$(bm_map "$img" b64 b4k b1m dis)
	if [ "$got" != "$want" ]; then
		echo "dirty bitmaps differ; expected:" >&2
		echo "$want" >&2
		echo "qemu-nbd serves:" >&2
		echo "$got" >&2
		return 1
	fi
}

@test "bitmaps: writes, zeroes and holes through the view are in the enabled bitmaps, exact" {
	require qemu-nbd nbdinfo
	local cs b
	for cs in 64k 512 2M; do
		bm_image "$T/a$cs.qcow2" "$cs"
		touch "$T/view"
		vd_mount "$T/a$cs.qcow2" "$T/view"
		writes_one "$T/view"
		local one=("${W[@]}")
		vd_umount "$T/view"
		[ "$VD_STATUS" -eq 0 ]
		[ "$(bm_flags "$T/a$cs.qcow2")" = "b64:auto b4k:auto b1m:auto dis:" ]
		qemu_check "$T/a$cs.qcow2"
		bm_check "$T/a$cs.qcow2" "${one[@]}"
		[ "$cs" = 64k ] || continue
		# cleared by QEMU, then a second session: an overwrite in place of a
		# cluster QEMU allocated, an unaligned write, a hole
		for b in b64 b4k b1m; do qemu-img bitmap --clear "$T/a$cs.qcow2" "$b"; done
		vd_mount "$T/a$cs.qcow2" "$T/view"
		pwrite_at "$T/view" $((2 * 1048576 + 8192)) 4096
		pwrite_at "$T/view" $((40 * 1048576 - 10)) 20
		fallocate -p -o $((60 * 1048576)) -l $((4 * 1048576)) "$T/view"
		vd_umount "$T/view"
		qemu_check "$T/a$cs.qcow2"
		local two=($((2 * 1048576 + 8192))+4096 $((40 * 1048576 - 10))+20
			   $((60 * 1048576))+$((4 * 1048576)))
		BM_CLEARED=1 bm_check "$T/a$cs.qcow2" "${two[@]}"
		# and QEMU continues from there
		qemu-io -f qcow2 -c 'write 50M 4k' "$T/a$cs.qcow2" >/dev/null
		BM_CLEARED=1 bm_check "$T/a$cs.qcow2" "${two[@]}" $((50 * 1048576))+4096
	done
}

@test "bitmaps: a SIGKILL leaves them in use, the image consistent; they stay in use" {
	bm_image "$T/a.qcow2" 64k
	touch "$T/view"
	vd_mount "$T/a.qcow2" "$T/view"
	writes_one "$T/view"
	sync "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.info "$T/view" | python3 -c '
import json, sys
print(" ".join("%s:%d" % (b["name"], b["in_use"]) for b in json.load(sys.stdin)["qcow2"]["persistent_bitmaps"]))')" = "b64:1 b4k:1 b1m:1 dis:1" ]
	vd_kill9 "$T/view"
	[ "$(bm_flags "$T/a.qcow2")" = "b64:in-use,auto b4k:in-use,auto b1m:in-use,auto dis:in-use" ]
	run qemu-img check "$T/a.qcow2"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "$output"; false; }
	# served again: inconsistent bitmaps are not maintained and stay in use
	vd_mount "$T/a.qcow2" "$T/view"
	pwrite_at "$T/view" 0 4096
	vd_umount "$T/view"
	[ "$(bm_flags "$T/a.qcow2")" = "b64:in-use,auto b4k:in-use,auto b1m:in-use,auto dis:in-use" ]
	run qemu-img check "$T/a.qcow2"
	[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "$output"; false; }
}

@test "bitmaps: a resize is refused while exact bitmaps exist, an unwritten session stores nothing" {
	bm_image "$T/a.qcow2" 64k
	cp "$T/a.qcow2" "$T/before.qcow2"
	touch "$T/view"
	vd_mount "$T/a.qcow2" "$T/view"
	run truncate -s 128M "$T/view"
	[ "$status" -ne 0 ]
	vd_umount "$T/view"
	grep -q "cannot resize an image with persistent bitmaps" "$T/vdiskfs.log"
	cmp "$T/a.qcow2" "$T/before.qcow2"
}
