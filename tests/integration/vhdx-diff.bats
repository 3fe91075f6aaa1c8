#!/usr/bin/env bats
# VHDX images no Linux tool makes, built with our own create (tests/tools/mkimage)
# and checked through FUSE against expected bytes: differencing disks over a
# qemu-img parent, and 4096-byte logical sectors.

bats_require_minimum_version 1.5.0 # run !
load helpers

MKIMAGE=${VDISKFS_BUILD:?}/tests/tools/mkimage

make_parent() {
	qemu-img create -q -f vhdx -o block_size=1M "$T/parent.vhdx" 16M
	qemu-io -f vhdx -c 'write -P 0x5a 0 3M' -c 'write -P 0x6b 9M 1M' "$T/parent.vhdx" >/dev/null
	qemu-img convert -f vhdx -O raw "$T/parent.vhdx" "$T/expect.raw"
	cp "$T/expect.raw" "$T/parent-before.raw"
}

@test "a differencing disk reads through to its parent and writes only itself" {
	make_parent
	"$MKIMAGE" vhdx "$T/child.vhdx" 16M backing=parent.vhdx
	touch "$T/view"
	vd_mount "$T/child.vhdx" "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "$T/parent.vhdx" ]
	cmp "$T/expect.raw" "$T/view"
	# partial sectors and blocks: the parent's bytes around them must stay
	head -c 70000 /dev/urandom >"$T/data"
	dd if="$T/data" of="$T/view" bs=1 seek=1000123 conv=notrunc status=none
	dd if="$T/data" of="$T/expect.raw" bs=1 seek=1000123 conv=notrunc status=none
	dd if="$T/data" of="$T/view" bs=4k seek=3000 conv=notrunc,fsync status=none
	dd if="$T/data" of="$T/expect.raw" bs=4k seek=3000 conv=notrunc status=none
	cmp "$T/expect.raw" "$T/view"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	# the parent is untouched, and the child reads the same after a remount
	qemu-img compare -q -f vhdx -F raw "$T/parent.vhdx" "$T/parent-before.raw"
	vd_mount "$T/child.vhdx" "$T/view"
	cmp "$T/expect.raw" "$T/view"
}

@test "a differencing disk created by a relative path finds its parent beside it" {
	make_parent
	mkdir "$T/sub"
	(cd "$T" && "$MKIMAGE" vhdx sub/child.vhdx 16M backing=../parent.vhdx)
	touch "$T/view"
	vd_mount "$T/sub/child.vhdx" "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "$T/sub/../parent.vhdx" ]
	cmp "$T/expect.raw" "$T/view"
}

@test "in a directory mount the parent of a differencing disk is served read-only" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f vhdx "$T/src/base.vhdx" 8M
	qemu-io -f vhdx -c 'write -P 0x11 0 1M' "$T/src/base.vhdx" >/dev/null
	"$MKIMAGE" vhdx "$T/src/top.vhdx" 8M backing=base.vhdx
	vd_mount "$T/src" "$T/mnt"
	cmp "$T/mnt/base.vhdx" "$T/mnt/top.vhdx"
	run dd if=/dev/zero of="$T/mnt/base.vhdx" bs=4k count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	dd if=/dev/zero of="$T/mnt/top.vhdx" bs=4k count=1 conv=notrunc status=none
	run ! cmp -s "$T/mnt/base.vhdx" "$T/mnt/top.vhdx"
}

@test "a moved parent is found with -o vhdx_parent=, and refused when missing" {
	make_parent
	"$MKIMAGE" vhdx "$T/child.vhdx" 16M backing=parent.vhdx
	mkdir "$T/elsewhere"
	mv "$T/parent.vhdx" "$T/elsewhere/"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f "$T/child.vhdx" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *parent* ]]
	run ! is_mounted "$T/view"
	vd_mount "$T/child.vhdx" "$T/view" -o vhdx_parent="$T/elsewhere/parent.vhdx"
	cmp "$T/expect.raw" "$T/view"
}

@test "4096-byte logical sectors: fio verify, then read back after remount" {
	"$MKIMAGE" vhdx "$T/d4k.vhdx" 64M sector=4096 cluster=2M
	touch "$T/view"
	vd_mount "$T/d4k.vhdx" "$T/view"
	[ "$(stat -c %s "$T/view")" -eq $((64 << 20)) ]
	fio --name=w --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring \
		--direct=1 --size=48M --verify=crc32c --verify_fatal=1 --verify_state_save=0 \
		--randrepeat=1 --do_verify=1 >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
	cp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	vd_mount "$T/d4k.vhdx" "$T/view"
	cmp "$T/ref.raw" "$T/view"
}
