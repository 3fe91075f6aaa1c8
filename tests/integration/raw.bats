#!/usr/bin/env bats
# Raw images through the view: contents, fio verify writes (O_DIRECT and
# buffered, two jobs at once), sparseness, punch hole, read-only, sizes;
# direct writes from several threads reach the daemon together.

load helpers

mount_raw() {
	truncate -s "${1:-64M}" "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view" "${@:2}"
}

@test "the view reads like the image" {
	head -c 3M /dev/urandom >"$T/disk.raw"
	truncate -s 16M "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	cmp "$T/disk.raw" "$T/view"
	[ "$(stat -c %s "$T/view")" -eq $((16 << 20)) ]
	# An odd-sized tail reads short at the end.
	run dd if="$T/view" bs=1M skip=15 count=4 status=none of=/dev/null
	[ "$status" -eq 0 ]
}

@test "mounting onto the image's own path" {
	head -c 1M /dev/urandom >"$T/disk.raw"
	cp "$T/disk.raw" "$T/copy"
	vd_mount "$T/disk.raw" "$T/disk.raw"
	cmp "$T/copy" "$T/disk.raw"
	vd_umount "$T/disk.raw"
	[ "$VD_STATUS" -eq 0 ]
	cmp "$T/copy" "$T/disk.raw"
}

@test "fio verify: random writes, iodepth 16, O_DIRECT and buffered, two jobs, then after remount" {
	mount_raw 256M
	fio --name=direct --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=io_uring --direct=1 --size=96M --offset=0 --verify=crc32c \
		--verify_fatal=1 --verify_state_save=0 --randrepeat=1 --do_verify=1 \
		--name=buffered --filename="$T/view" --rw=randwrite --bs=16k --iodepth=16 \
		--ioengine=io_uring --direct=0 --size=96M --offset=128M --verify=crc32c \
		--verify_fatal=1 --verify_state_save=0 --do_verify=1 >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	vd_mount "$T/disk.raw" "$T/view"
	fio --name=direct --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=io_uring --direct=1 --size=96M --offset=0 --verify=crc32c \
		--verify_fatal=1 --verify_state_save=0 --randrepeat=1 --verify_only=1 \
		>"$T/fio2.log" 2>&1 || { cat "$T/fio2.log"; false; }
	cmp "$T/disk.raw" "$T/view"
}

@test "1 MiB requests and large sequential I/O match the image" {
	mount_raw 64M
	dd if=/dev/urandom of="$T/data" bs=1M count=32 status=none
	dd if="$T/data" of="$T/view" bs=4M oflag=direct conv=notrunc status=none
	dd if="$T/view" of="$T/back" bs=4M count=8 iflag=direct status=none
	cmp "$T/data" "$T/back"
}

@test "SEEK_DATA and SEEK_HOLE follow the image's allocation" {
	truncate -s 64M "$T/disk.raw"
	dd if=/dev/urandom of="$T/disk.raw" bs=64K count=1 seek=16 conv=notrunc status=none
	dd if=/dev/urandom of="$T/disk.raw" bs=64K count=2 seek=512 conv=notrunc status=none
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	run python3 - "$T/view" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
d = os.lseek(fd, 0, os.SEEK_DATA); h = os.lseek(fd, d, os.SEEK_HOLE)
d2 = os.lseek(fd, h, os.SEEK_DATA); h2 = os.lseek(fd, d2, os.SEEK_HOLE)
try:
    os.lseek(fd, h2, os.SEEK_DATA); tail = "data"
except OSError as e:
    tail = e.errno
print(d, h, d2, h2, tail, os.lseek(fd, 60 << 20, os.SEEK_HOLE))
PY
	echo "$output"
	[ "$output" = "1048576 1114112 33554432 33685504 6 62914560" ]
	cp --sparse=always "$T/view" "$T/copy"
	cmp "$T/disk.raw" "$T/copy"
	[ "$(du -k "$T/copy" | cut -f1)" -lt 1024 ]
}

@test "punch hole reads back zeroes and lowers st_blocks; zero range zeroes" {
	head -c 8M /dev/urandom >"$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	before=$(stat -c %b "$T/view")
	fallocate --punch-hole --keep-size -o 1M -l 2M "$T/view"
	# attributes are cached: ask for fresh ones through a new lookup
	after=$(stat -c %b "$T/disk.raw")
	[ "$after" -lt "$before" ]
	cmp -n 2M <(dd if="$T/view" bs=1M skip=1 count=2 status=none) /dev/zero
	fallocate --zero-range -o 5000 -l 10000 "$T/view"
	cmp -n 10000 <(dd if="$T/view" bs=1 skip=5000 count=10000 status=none) /dev/zero
	cmp -n 5000 "$T/view" "$T/disk.raw"
	run fallocate --collapse-range -o 0 -l 1M "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Operation not supported"* ]]
}

@test "a read-only mount refuses writes with EROFS" {
	mount_raw 4M -o ro
	run dd if=/dev/zero of="$T/view" bs=4k count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Read-only file system"* ]]
	run fallocate --punch-hole -o 0 -l 4096 "$T/view"
	[ "$status" -ne 0 ]
	run truncate -s 8M "$T/view"
	[ "$status" -ne 0 ]
	cmp "$T/disk.raw" "$T/view"
}

@test "writes past the end fail with ENOSPC; truncate resizes a raw image" {
	mount_raw 4M
	run dd if=/dev/zero of="$T/view" bs=4k count=1 seek=1024 conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"No space left on device"* ]]
	truncate -s 8M "$T/view"
	[ "$(stat -c %s "$T/view")" -eq $((8 << 20)) ]
	[ "$(stat -c %s "$T/disk.raw")" -eq $((8 << 20)) ]
	dd if=/dev/urandom of="$T/view" bs=4k count=1 seek=2000 conv=notrunc status=none
	cmp "$T/view" "$T/disk.raw"
}

@test "O_DIRECT opens work and statfs reports the host filesystem" {
	mount_raw 16M
	dd if=/dev/urandom of="$T/view" bs=64k count=4 oflag=direct conv=notrunc status=none
	dd if="$T/view" of="$T/back" bs=64k count=4 iflag=direct status=none
	cmp -n 262144 "$T/back" "$T/disk.raw"
	[ "$(stat -f -c %b "$T/view")" -eq "$(stat -f -c %b "$T")" ]
}

@test "an I/O error reaches the caller as its errno (fault hook)" {
	truncate -s 4M "$T/disk.raw"
	touch "$T/view"
	VDISKFS_FAULT="nth=1,errno=EIO,kinds=w" vd_mount "$T/disk.raw" "$T/view"
	run dd if=/dev/zero of="$T/view" bs=4k count=1 oflag=direct conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Input/output error"* ]]
	dd if=/dev/zero of="$T/view" bs=4k count=1 oflag=direct conv=notrunc status=none
}

@test "cache=writeback and cache=none both read back what was written, unaligned too" {
	for mode in writeback none; do
		truncate -s 8M "$T/disk-$mode.raw"
		touch "$T/view-$mode"
		vd_mount "$T/disk-$mode.raw" "$T/view-$mode" -o cache=$mode,direct_io
		head -c 1M /dev/urandom >"$T/data"
		dd if="$T/data" of="$T/view-$mode" bs=1M seek=1 conv=notrunc status=none
		dd if="$T/data" of="$T/view-$mode" bs=1000 count=3 seek=7 conv=notrunc status=none
		cmp -n 1M "$T/data" <(dd if="$T/view-$mode" bs=1M skip=1 count=1 status=none)
		cmp -n 3000 "$T/data" <(dd if="$T/view-$mode" bs=1000 skip=7 count=3 status=none)
		vd_umount "$T/view-$mode"
		cmp -n 1M "$T/data" <(dd if="$T/disk-$mode.raw" bs=1M skip=1 count=1 status=none)
	done
}

# Writers that wait for each write (pwrite, as thread-pool VMMs do) reach the
# daemon together: the kernel serializes direct writes on the inode lock
# unless OPEN answers FOPEN_PARALLEL_DIRECT_WRITES. libfuse's debug log shows
# each request as it arrives and each reply before it is sent.
@test "O_DIRECT writes from several threads are in the daemon at once" {
	mount_raw 64M -d
	fio --name=par --filename="$T/view" --rw=randwrite --bs=4k --ioengine=psync \
		--direct=1 --numjobs=4 --size=64M --time_based --runtime=1 \
		--group_reporting >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	local most
	most=$(awk '/opcode: WRITE/ { w[$2] = 1; n++ }
		/^   unique: .*, success/ { if (w[$2]) { n--; delete w[$2] } }
		{ if (n > most) most = n } END { print most + 0 }' "$T/vdiskfs.log")
	echo "most WRITEs in the daemon at once: $most"
	[ "$most" -ge 2 ]
}

@test "shrinking a view is refused (EPERM, logged) unless the mount allows it" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
	qemu-io -f qcow2 -c 'write -P 0x44 10M 1M' "$T/a.qcow2" >/dev/null
	mount_raw 8M
	dd if=/dev/urandom of="$T/view" bs=1M count=8 conv=notrunc status=none
	cp "$T/disk.raw" "$T/ref"
	run truncate -s 0 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Operation not permitted"* ]]
	[ "$(stat -c %s "$T/disk.raw")" -eq $((8 << 20)) ]
	cmp "$T/disk.raw" "$T/ref"
	grep -q "disk.raw: refusing to shrink the disk from 8388608 to 0 bytes: what lies past the new end would be lost (mount with -o allow_shrink to allow it)" "$T/vdiskfs.log"
	# growing works as before, and is logged
	truncate -s 12M "$T/view"
	grep -q "disk.raw: resized from 8388608 to 12582912 bytes" "$T/vdiskfs.log"
	vd_umount "$T/view"
	# a qcow2 view the same; with allow_shrink both shrink
	touch "$T/qview"
	vd_mount "$T/a.qcow2" "$T/qview"
	run truncate -s 32M "$T/qview"
	[ "$status" -ne 0 ]
	[ "$(stat -c %s "$T/qview")" -eq $((64 << 20)) ]
	vd_umount "$T/qview"
	vd_mount "$T/a.qcow2" "$T/qview" -o allow_shrink
	truncate -s 32M "$T/qview"
	[ "$(stat -c %s "$T/qview")" -eq $((32 << 20)) ]
	vd_umount "$T/qview"
	[ "$(qemu-img info --output=json "$T/a.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["virtual-size"])')" -eq $((32 << 20)) ]
	qemu_check "$T/a.qcow2"
	vd_mount "$T/disk.raw" "$T/view" -o allow_shrink
	truncate -s 4M "$T/view"
	vd_umount "$T/view"
	[ "$(stat -c %s "$T/disk.raw")" -eq $((4 << 20)) ]
	cmp -n $((4 << 20)) "$T/disk.raw" "$T/ref"
}

@test "cache=none: sector-aligned writes bypass the host page cache (no buffered write beside an O_DIRECT one)" {
	require fincore
	mount_raw 8M
	# drop whatever the page cache holds of the image, then write 512-byte
	# aligned sectors that are not 4 KiB aligned, as a guest does
	vd_umount "$T/view"
	dd if="$T/disk.raw" iflag=direct of=/dev/null bs=1M status=none
	python3 -c 'import os,sys; fd=os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$T/disk.raw"
	vd_mount "$T/disk.raw" "$T/view"
	local i before after
	before=$(fincore --bytes --noheadings --output RES "$T/disk.raw") # the probe's read
	for i in 9 11 13 17 33 65 129 1025; do
		head -c 512 /dev/urandom | dd of="$T/view" bs=512 seek=$i oflag=direct conv=notrunc status=none
	done
	after=$(fincore --bytes --noheadings --output RES "$T/disk.raw")
	echo "page cache of the image: $before before the writes, $after after"
	[ "$after" -le "$before" ] # O_DIRECT writes only drop pages; a buffered one would add its page
}
