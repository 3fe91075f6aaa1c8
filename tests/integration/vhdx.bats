#!/usr/bin/env bats
# VHDX images through the FUSE view: images from qemu-img read like
# `qemu-img convert -O raw`; fio verify writes leave an image that
# `qemu-img check` passes and that compares equal; a dirty log is replayed;
# SIGKILL during writes + fsync keeps every write acknowledged before the
# last completed fsync (repeated); st_blocks counts the present blocks;
# truncate grows the disk.

load helpers
load crash

# qimg NAME OPTS SIZE [qemu-io commands...]: make $T/NAME and $T/NAME.raw
qimg() {
	local name=$1 opts=$2 size=$3
	shift 3
	qemu-img create -q -f vhdx -o "$opts" "$T/$name" "$size"
	if [ $# -gt 0 ]; then
		qemu-io -f vhdx "$@" "$T/$name" >/dev/null
	fi
	qemu-img convert -f vhdx -O raw "$T/$name" "$T/$name.raw"
}

@test "vhdx: dynamic and fixed images read like qemu-img convert" {
	qimg dyn.vhdx block_size=32M 200M -c 'write -P 0x5a 1M 3M' -c 'write -P 0x5b 100M 40M'
	qimg fix.vhdx subformat=fixed,block_state_zero=off,block_size=1M 64M \
		-c 'write -P 0x6a 0 2M' -c 'write -P 0x6b 63M 1M'
	touch "$T/v1" "$T/v2"
	vd_mount "$T/dyn.vhdx" "$T/v1" -o ro
	vd_mount "$T/fix.vhdx" "$T/v2" -o ro
	cmp "$T/dyn.vhdx.raw" "$T/v1"
	cmp "$T/fix.vhdx.raw" "$T/v2"
	[ "$(stat -c %s "$T/v1")" -eq $((200 << 20)) ]
	# Holes come from the BAT.
	run qemu-img map -f raw --output=json "$T/v1"
	[[ "$output" == *'"data": false'* ]]
}

@test "vhdx: data above 4 GiB in a sparse image" {
	qimg big.vhdx block_size=1M 6G -c 'write -P 0x71 4095M 2M' -c 'write -P 0x72 5G 1M'
	touch "$T/v"
	vd_mount "$T/big.vhdx" "$T/v" -o ro
	cmp <(dd if="$T/big.vhdx.raw" bs=1M skip=4090 count=20 status=none) \
		<(dd if="$T/v" bs=1M skip=4090 count=20 status=none)
	cmp <(dd if="$T/big.vhdx.raw" bs=1M skip=5119 count=3 status=none) \
		<(dd if="$T/v" bs=1M skip=5119 count=3 status=none)
}

@test "vhdx: fio verify writes, then qemu-img check and compare" {
	qemu-img create -q -f vhdx -o block_size=1M "$T/w.vhdx" 128M
	touch "$T/v"
	vd_mount "$T/w.vhdx" "$T/v"
	fio_verify "$T/v" 48M 64M 64k
	cp "$T/v" "$T/ref.raw"
	vd_umount "$T/v"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/w.vhdx"
	run qemu-img compare -f vhdx -F raw "$T/w.vhdx" "$T/ref.raw"
	[ "$status" -eq 0 ]
	vd_mount "$T/w.vhdx" "$T/v" -o ro
	cmp "$T/ref.raw" "$T/v"
}

@test "vhdx: punch hole and zero range" {
	qemu-img create -q -f vhdx -o block_size=1M "$T/z.vhdx" 32M
	touch "$T/v"
	vd_mount "$T/z.vhdx" "$T/v"
	dd if=/dev/urandom of="$T/v" bs=1M count=16 conv=notrunc,fsync status=none
	fallocate --punch-hole -o 2M -l 4M "$T/v"
	fallocate --zero-range -o $((9 << 20)) -l 12345 "$T/v"
	cp "$T/v" "$T/ref.raw"
	cmp <(dd if="$T/ref.raw" bs=1M skip=2 count=4 status=none) <(head -c 4M /dev/zero)
	vd_umount "$T/v"
	qemu_check "$T/z.vhdx"
	run qemu-img compare -f vhdx -F raw "$T/z.vhdx" "$T/ref.raw"
	[ "$status" -eq 0 ]
}

@test "vhdx: truncate grows the view; shrinking and past the BAT region are refused" {
	qimg grow.vhdx block_size=1M 40M -c 'write -P 0x5c 39M 1M'
	cp "$T/grow.vhdx.raw" "$T/ref.raw"
	touch "$T/v"
	vd_mount "$T/grow.vhdx" "$T/v"
	truncate -s 4200M "$T/v"
	[ "$(stat -c %s "$T/v")" -eq $((4200 << 20)) ]
	truncate -s 4200M "$T/ref.raw"
	head -c 1M /dev/urandom >"$T/new.bin"
	for f in "$T/v" "$T/ref.raw"; do
		dd if="$T/new.bin" of="$f" bs=1M seek=4199 conv=notrunc,fsync status=none
		dd if="$T/new.bin" of="$f" bs=4k count=1 seek=$((40 * 256 - 1)) conv=notrunc \
			status=none
	done
	cmp "$T/v" "$T/ref.raw"
	run truncate -s 30M "$T/v"
	[ "$status" -ne 0 ]
	# 1 MiB of BAT region: 131072 entries, a little under 128 GiB in 1 MiB blocks.
	run truncate -s 200G "$T/v"
	[ "$status" -ne 0 ]
	[[ "$output" == *"too large"* ]]
	[ "$(stat -c %s "$T/v")" -eq $((4200 << 20)) ]
	vd_umount "$T/v"
	[ "$VD_STATUS" -eq 0 ]
	grep -q "more BAT entries than the BAT region at 0x" "$T/vdiskfs.log"
	qemu-img info "$T/grow.vhdx" | grep -q "virtual size: 4.1 GiB (4404019200 bytes)"
	qemu_check "$T/grow.vhdx"
	qemu-img compare -f vhdx -F raw "$T/grow.vhdx" "$T/ref.raw"
}

@test "vhdx: SIGKILL during random writes + fsync, three rounds" {
	qemu-img create -q -f vhdx -o block_size=1M "$T/crash.vhdx" 64M
	local round
	for round in 1 2 3; do
		crash_round vhdx "$T/crash.vhdx" "$round" || { cat "$T/vdiskfs.log"; false; }
	done
}

@test "vhdx: st_blocks counts the blocks the BAT marks present, and drops on punch hole" {
	qemu-img create -q -f vhdx -o block_size=1M "$T/d.vhdx" 64M
	qemu-io -f vhdx -c 'write -P 0x42 5M 4k' "$T/d.vhdx" >/dev/null
	touch "$T/view"
	vd_mount "$T/d.vhdx" "$T/view"
	alloc_is "$T/view" $((1 << 20))
	dd if=/dev/urandom of="$T/view" bs=1M seek=10 count=2 conv=notrunc status=none
	dd if=/dev/urandom of="$T/view" bs=4k seek=$((63 * 256 + 3)) count=1 conv=notrunc status=none
	alloc_is "$T/view" $((4 << 20))
	[ "$(du -B1 "$T/view" | cut -f1)" -eq $((4 << 20)) ]
	fallocate --punch-hole --keep-size -o 10M -l 1M "$T/view"
	alloc_is "$T/view" $((3 << 20))
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	vd_mount "$T/d.vhdx" "$T/view"
	alloc_is "$T/view" $((3 << 20))
}

# digest FILE: its size and SHA-256
digest() {
	echo "$(stat -c %s "$1") $(sha256sum <"$1")"
}

@test "vhdx: a log entry naming a 256 MiB zero run or data at 1 TiB is refused, the image untouched" {
	local name d
	for name in vhdx-log-zero-256M vhdx-log-data-at-1T; do
		shared_image "repro/$name.vhdx.xz" "$T/$name.vhdx"
		d=$(digest "$T/$name.vhdx")
		touch "$T/v"
		run timeout 30 "$VDISKFS" -f "$T/$name.vhdx" "$T/v"
		echo "$output"
		[ "$status" -ne 0 ] && [ "$status" -ne 124 ]
		[[ "$output" == *"log entry at 0x0 of the log (file offset 0x100000, sequence 4660): descriptor "*" ends past LastFileOffset 0xf00000"* ]]
		[ "$(digest "$T/$name.vhdx")" = "$d" ]
	done
	[[ "$output" == *"descriptor 0 (data): FileOffset 0x10000000000 ends past"* ]]
}

@test "vhdx: in a directory mount, ls lists a hostile log under errors and does not replay it" {
	mkdir "$T/src" "$T/mnt"
	shared_image repro/vhdx-log-zero-256M.vhdx.xz "$T/src/zero.vhdx"
	shared_image repro/vhdx-log-data-at-1T.vhdx.xz "$T/src/data.vhdx"
	qemu-img create -q -f vhdx "$T/src/good.vhdx" 8M
	local dz dd
	dz=$(digest "$T/src/zero.vhdx")
	dd=$(digest "$T/src/data.vhdx")
	vd_mount "$T/src" "$T/mnt"
	run ls "$T/mnt"
	[ "$output" = "good.vhdx" ]
	run python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(sorted(e["name"] for e in d["errors"] if "LastFileOffset" in e["error"]))' "$T/mnt/.vdiskfs"
	echo "$output"
	[ "$output" = "['data.vhdx', 'zero.vhdx']" ]
	[ "$(digest "$T/src/zero.vhdx")" = "$dz" ]
	[ "$(digest "$T/src/data.vhdx")" = "$dd" ]
}

@test "vhdx: QEMU's dirty-log image replays and reads like qemu-img after check -r all" {
	shared_image foreign/qemu-dirtylog-10G-4M.vhdx.bz2 "$T/d.vhdx"
	cp "$T/d.vhdx" "$T/q.vhdx"
	qemu-img check -q -r all "$T/q.vhdx" || true
	qemu-img convert -f vhdx -O raw "$T/q.vhdx" "$T/q.raw"
	touch "$T/v"
	vd_mount "$T/d.vhdx" "$T/v"
	grep -q "replayed the log" "$T/vdiskfs.log"
	run qemu-img compare -f raw -F raw "$T/v" "$T/q.raw"
	echo "$output"
	[ "$status" -eq 0 ]
	vd_umount "$T/v"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/d.vhdx"
}
