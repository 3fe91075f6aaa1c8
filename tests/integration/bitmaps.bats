#!/usr/bin/env bats
# qcow2 persistent dirty bitmaps with QEMU as the oracle: writes, zeroes and
# punched holes through the view (unaligned ones too) land in every enabled
# bitmap, which an unmount stores exact and not in use, so that
# `qemu-nbd -B` + `nbdinfo --map=qemu:dirty-bitmap:NAME` lists exactly the
# granules written (unioned with what QEMU dirtied before), a disabled bitmap
# stays as it was, and after QEMU clears them a second session (an overwrite
# in place too) and QEMU again add to them; a SIGKILL leaves
# them in use and the image consistent; a resize is refused while they exist.
# Bitmaps added, disabled, enabled, cleared and removed live (xattrs, the
# control file, vdiskfsctl) are what QEMU then serves, `qemu-img check` clean.

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

# bm_set VIEW VERB VALUE: user.vdiskfs.bitmap.VERB
bm_set() { setfattr -n "user.vdiskfs.bitmap.$2" -v "$3" "$1"; }

# refused VIEW VERB VALUE ERRNO-TEXT REASON: the xattr fails with the errno,
# last-error says why
refused() {
	run setfattr -n "user.vdiskfs.bitmap.$2" -v "$3" "$1"
	[ "$status" -ne 0 ] && [[ "$output" == *"$4"* ]] || { echo "$output"; return 1; }
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$1")" == *"$5"* ]]
}

@test "bitmaps: added, disabled, enabled, cleared and removed live through xattrs" {
	require qemu-nbd nbdinfo
	local M=1048576
	# an overlay without bitmaps: the first add inserts the header extension
	qemu-img create -q -f qcow2 "$T/base.qcow2" 64M
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/a.qcow2"
	touch "$T/view"
	vd_mount "$T/a.qcow2" "$T/view"
	bm_set "$T/view" add n64
	bm_set "$T/view" add name=n4k,granularity=4K
	[ "$(bm_flags "$T/a.qcow2")" = "n64:auto n4k:auto" ]
	refused "$T/view" add n64 "File exists" "a bitmap named 'n64' exists"
	refused "$T/view" add name=x,granularity=1000 "Invalid argument" "not a power of two"
	refused "$T/view" add name=x,granularity=256 "Invalid argument" "not a power of two"
	refused "$T/view" add name=x,colour=red "Invalid argument" "want name=NAME"
	refused "$T/view" remove nope "No such file" "no bitmap named 'nope'"
	refused "$T/view" frobnicate n64 "Invalid argument" "unknown attribute"
	pwrite_at "$T/view" $((1 * M)) 4096
	pwrite_at "$T/view" $((5 * M + 123)) 100
	bm_set "$T/view" disable n4k
	pwrite_at "$T/view" $((10 * M)) 4096
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/a.qcow2"
	[ "$(bm_flags "$T/a.qcow2")" = "n64:auto n4k:" ]
	[[ "$(qemu-img info "$T/a.qcow2" | grep 'backing file:')" == "backing file: base.qcow2"* ]]
	[ "$(bm_map "$T/a.qcow2" n64 n4k)" = "$(printf '%s\n' \
		"n64 $M+65536 $((5 * M))+65536 $((10 * M))+65536" "n4k $M+4096 $((5 * M))+4096")" ]
	# clear one, enable the other: from then on
	vd_mount "$T/a.qcow2" "$T/view"
	pwrite_at "$T/view" $((3 * M)) 4096
	bm_set "$T/view" clear n64
	bm_set "$T/view" enable n4k
	pwrite_at "$T/view" $((20 * M)) 4096
	vd_umount "$T/view"
	qemu_check "$T/a.qcow2"
	[ "$(bm_flags "$T/a.qcow2")" = "n64:auto n4k:auto" ]
	[ "$(bm_map "$T/a.qcow2" n64 n4k)" = "$(printf '%s\n' \
		"n64 $((20 * M))+65536" "n4k $M+4096 $((5 * M))+4096 $((20 * M))+4096")" ]
	# cleared with nothing written after: empty
	vd_mount "$T/a.qcow2" "$T/view"
	bm_set "$T/view" clear n4k
	vd_umount "$T/view"
	qemu_check "$T/a.qcow2"
	[ "$(bm_map "$T/a.qcow2" n4k)" = "n4k" ]
	# removed: QEMU no longer lists them, the last one takes the extension
	vd_mount "$T/a.qcow2" "$T/view"
	bm_set "$T/view" remove n4k
	[ "$(bm_flags "$T/a.qcow2")" = "n64:auto" ]
	bm_set "$T/view" remove n64
	vd_umount "$T/view"
	qemu_check "$T/a.qcow2"
	run qemu-img info "$T/a.qcow2"
	[[ "$output" != *bitmaps* ]]
	[[ "$output" == *"backing file: base.qcow2"* ]]
}

@test "bitmaps: the control file and vdiskfsctl change them; raw and read-only refuse" {
	require qemu-nbd nbdinfo
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 16M
	truncate -s 16M "$T/src/r.raw"
	vd_mount "$T/src" "$T/mnt"
	ctl() { bash -c 'exec 3<>"$1"; echo "$2" >&3; rc=$?; cat <&3; exit $rc' ctl "$T/mnt/.vdiskfs" "$1"; }
	run ctl "bitmap-add a.qcow2 c1 granularity=128K"
	[ "$status" -eq 0 ] && [ "$output" = ok ] || { echo "$output"; false; }
	run ctl "bitmap-add a.qcow2 c1"
	[ "$status" -ne 0 ] && [[ "$output" == *"error: "*"a bitmap named 'c1' exists"* ]]
	run ctl "bitmap-add a.qcow2 c2 granularity=lots"
	[ "$status" -ne 0 ] && [[ "$output" == *"error: "*"is not granularity=SIZE"* ]]
	run ctl "bitmap-clear a.qcow2 c9"
	[ "$status" -ne 0 ] && [[ "$output" == *"no bitmap named 'c9'"* ]]
	run ctl "bitmap-add r.raw c1"
	[ "$status" -ne 0 ] && [[ "$output" == *"raw images keep no persistent bitmaps"* ]]
	run "$VDISKFSCTL" bitmap "$T/mnt/a.qcow2" add v1 granularity=1M
	[ "$status" -eq 0 ] || { echo "$output"; false; }
	run "$VDISKFSCTL" bitmap "$T/mnt/a.qcow2" add v1
	[ "$status" -eq 1 ] && [[ "$output" == *"File exists: "*"a bitmap named 'v1' exists"* ]]
	run "$VDISKFSCTL" bitmap "$T/mnt/r.raw" add v1
	[ "$status" -eq 1 ] && [[ "$output" == *"Operation not supported"* ]]
	run "$VDISKFSCTL" bitmap "$T/mnt/a.qcow2" remove v1 granularity=1M
	[ "$status" -eq 2 ]
	"$VDISKFSCTL" bitmap "$T/mnt/a.qcow2" disable v1
	pwrite_at "$T/mnt/a.qcow2" 4096 4096
	run ctl "bitmap-disable a.qcow2 c1"
	[ "$status" -eq 0 ]
	"$VDISKFSCTL" bitmap "$T/mnt/a.qcow2" enable v1
	pwrite_at "$T/mnt/a.qcow2" $((8 * 1048576)) 4096
	vd_umount "$T/mnt"
	qemu_check "$T/src/a.qcow2"
	[ "$(bm_flags "$T/src/a.qcow2")" = "c1: v1:auto" ]
	[ "$(bm_map "$T/src/a.qcow2" c1 v1)" = "$(printf '%s\n' "c1 0+131072" "v1 8388608+1048576")" ]
	# a read-only mount refuses
	vd_mount "$T/src" "$T/mnt" -o ro
	run ctl "bitmap-remove a.qcow2 c1"
	[ "$status" -ne 0 ] && [[ "$output" == *"read-only"* ]]
	run setfattr -n user.vdiskfs.bitmap.remove -v c1 "$T/mnt/a.qcow2"
	[ "$status" -ne 0 ] && [[ "$output" == *"Read-only file system"* ]]
	vd_umount "$T/mnt"
	"$VDISKFSCTL" info "$T/src/a.qcow2" >/dev/null
	[ "$(bm_flags "$T/src/a.qcow2")" = "c1: v1:auto" ]
}
