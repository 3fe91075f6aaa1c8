#!/usr/bin/env bats
# FUSE passthrough (-o passthrough=): opens of a raw view are served by the
# kernel from the image file. Checks that the bytes are right, that the
# daemon really sees no READ or WRITE (its debug log), that fsync still
# reaches the file, and that the verbs which must see every write (mirror
# start, inactivate) are refused with EBUSY while such opens exist; and that
# passthrough=on refuses to start where the kernel does not grant it.

bats_require_minimum_version 1.5.0 # run !
load helpers
load mirror-helpers

PARAM=/sys/module/fuse/parameters/enable_uring

teardown() {
	exec 7>&- 8>&-
	teardown_scratch
	[ -z "${SAVED_PARAM:-}" ] || echo "$SAVED_PARAM" >"$PARAM"
}

# pt_opens VIEW: the view's passthrough opens, as its info JSON says
pt_opens() {
	getfattr --only-values -n user.vdiskfs.info "$1" |
		python3 -c 'import json, sys; print(json.load(sys.stdin)["passthrough-opens"])'
}

# wait_pt_opens VIEW N: the kernel answers close before the daemon sees RELEASE
wait_pt_opens() {
	local i
	for i in $(seq 1 100); do
		[ "$(pt_opens "$1")" -eq "$2" ] && return 0
		sleep 0.05
	done
	echo "$1: $(pt_opens "$1") passthrough opens, expected $2" >&2
	return 1
}

# data_requests: READ and WRITE requests in the daemon's debug log
data_requests() { grep -cE "opcode: (READ|WRITE) \(" "$T/vdiskfs.log" || true; }

mount_pt() {
	truncate -s "${1:-64M}" "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view" -d -o passthrough=on "${@:2}" || return 1
	grep -q "passthrough: raw views are read and written by the kernel" "$T/vdiskfs.log"
}

@test "passthrough=on: fio verify and dd through the view, no READ or WRITE reaches the daemon" {
	mount_pt 256M
	fio_verify "$T/view" 96M 128M 16k
	dd if=/dev/urandom of="$T/data" bs=1M count=8 status=none
	dd if="$T/data" of="$T/view" bs=1M seek=40 oflag=direct conv=notrunc status=none
	cmp <(dd if="$T/view" bs=1M skip=40 count=8 iflag=direct status=none) "$T/data"
	cmp "$T/disk.raw" "$T/view"
	[ "$(data_requests)" -eq 0 ]
	grep -q "opcode: OPEN" "$T/vdiskfs.log"
	exec 7<>"$T/view"
	[ "$(pt_opens "$T/view")" -eq 1 ]
	exec 8<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 2 ] # one backing file for both
	exec 7>&- 8<&-
	wait_pt_opens "$T/view" 0
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	cmp <(dd if="$T/disk.raw" bs=1M skip=40 count=8 status=none) "$T/data"
}

@test "passthrough=off (the default): the daemon serves the data" {
	truncate -s 16M "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view" -d
	dd if=/dev/urandom of="$T/data" bs=64k count=16 status=none
	dd if="$T/data" of="$T/view" bs=64k oflag=direct conv=notrunc status=none
	cmp <(dd if="$T/view" bs=64k count=16 iflag=direct status=none) "$T/data"
	[ "$(data_requests)" -ge 32 ]
	exec 7<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 0 ]
	! grep -q "passthrough" "$T/vdiskfs.log"
	run "$VDISKFS" -o passthrough=maybe "$T/disk.raw" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"passthrough=maybe: want auto, on or off"* ]]
}

@test "fsync of passed-through writes reaches the image file" {
	truncate -s 16M "$T/disk.raw"
	touch "$T/view"
	VDISKFS_IOLOG=$T/iolog vd_mount "$T/disk.raw" "$T/view" -o passthrough=on
	dd if=/dev/urandom of="$T/data" bs=64k count=32 status=none
	dd if="$T/data" of="$T/view" bs=64k conv=notrunc,fsync status=none
	# the daemon wrote nothing itself, and synced the file
	! grep -qE "^S [0-9]+ [0-9]+ w " "$T/iolog"
	grep -qE "^S [0-9]+ [0-9]+ [sf] " "$T/iolog"
	# nothing of the file is dirty: every page can be dropped from the cache
	python3 -c 'import os, sys; fd = os.open(sys.argv[1], os.O_RDONLY); os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)' "$T/disk.raw"
	[ "$(fincore -nb -o RES "$T/disk.raw")" -eq 0 ]
	cmp <(dd if="$T/disk.raw" bs=64k count=32 iflag=direct status=none) "$T/data"
}

@test "mirror start is refused with EBUSY while a passthrough open exists; a running job stops new ones" {
	mount_pt 16M
	dd if=/dev/urandom of="$T/view" bs=1M count=16 conv=notrunc status=none
	exec 7<>"$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "$T/dst.raw" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Device or resource busy"* ]]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" == *"1 open of the view passes I/O straight to the image file"* ]]
	[ ! -e "$T/dst.raw" ]
	[[ "$(mstatus "$T/view")" == "phase=none"* ]]
	exec 7>&-
	wait_pt_opens "$T/view" 0
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,speed=4M" "$T/view"
	# while the job runs, an open goes through the daemon (and the mirror)
	exec 7<>"$T/view"
	[ "$(pt_opens "$T/view")" -eq 0 ]
	before=$(data_requests)
	dd if=/dev/urandom of="$T/view" bs=64k count=8 seek=3 conv=notrunc status=none
	[ "$(data_requests)" -gt "$before" ]
	exec 7>&-
	setfattr -n user.vdiskfs.mirror.speed -v 0 "$T/view"
	wait_phase "$T/view" ready
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	cmp "$T/dst.raw" "$T/view"
	# the job is over: the new raw image passes through again
	exec 7<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 1 ]
	[[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" == "$T/dst.raw" ]]
}

@test "a snapshot is refused with EBUSY while a passthrough open exists, then moves the view off raw" {
	mount_pt 16M
	exec 7<>"$T/view"
	run setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Device or resource busy"* ]]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" == *"passes I/O straight to the image file"* ]]
	[ ! -e "$T/ov.qcow2" ]
	exec 7>&-
	wait_pt_opens "$T/view" 0
	setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/view"
	# the view is a qcow2 overlay now: its opens stay with the daemon
	exec 7<>"$T/view"
	[ "$(pt_opens "$T/view")" -eq 0 ]
	dd if=/dev/urandom of="$T/view" bs=64k count=4 conv=notrunc status=none
	exec 7>&-
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "$T/disk.raw" ]
}

@test "inactivate is refused with EBUSY while a passthrough open exists; an inactive view passes nothing through" {
	mount_pt 16M
	exec 7<>"$T/view"
	run setfattr -n user.vdiskfs.active -v 0 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Device or resource busy"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.active "$T/view")" = 1 ]
	exec 7>&-
	wait_pt_opens "$T/view" 0
	setfattr -n user.vdiskfs.active -v 0 "$T/view"
	exec 7<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 0 ]
	exec 7<&-
	setfattr -n user.vdiskfs.active -v 1 "$T/view"
	exec 7<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 1 ]
}

@test "truncate, and writes past the end, with passthrough opens" {
	mount_pt 8M
	exec 7<>"$T/view"
	truncate -s 12M "$T/view"
	[ "$(stat -c %s "$T/disk.raw")" -eq $((12 << 20)) ]
	[ "$(stat -c %s "$T/view")" -eq $((12 << 20)) ]
	dd if=/dev/urandom of="$T/data" bs=1M count=2 status=none
	dd if="$T/data" of="$T/view" bs=1M seek=10 conv=notrunc status=none
	cmp <(dd if="$T/disk.raw" bs=1M skip=10 status=none) "$T/data"
	# past the end: the file grows like any file, and the view follows it
	dd if="$T/data" of="$T/view" bs=1M seek=12 conv=notrunc status=none
	[ "$(stat -c %s "$T/disk.raw")" -eq $((14 << 20)) ]
	exec 7>&-
	wait_pt_opens "$T/view" 0
	[ "$(getfattr --only-values -n user.vdiskfs.virtual-size "$T/view")" -eq $((14 << 20)) ]
	cmp "$T/disk.raw" "$T/view"
}

@test "a page-cached open after passthrough writes does not read stale pages" {
	mount_pt 8M
	head -c 1M /dev/urandom >"$T/old"
	head -c 1M /dev/urandom >"$T/new"
	dd if="$T/old" of="$T/view" bs=1M conv=notrunc status=none
	# while a job runs, opens use the kernel's page cache: cache the old bytes
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d1.raw,speed=64K" "$T/view"
	cmp <(head -c 1M "$T/view") "$T/old"
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	wait_pt_opens "$T/view" 0
	dd if="$T/new" of="$T/view" bs=1M conv=notrunc status=none # passes through
	grep -q "passthrough-opens" <(getfattr -n user.vdiskfs.info "$T/view")
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d2.raw,speed=64K" "$T/view"
	cmp <(head -c 1M "$T/view") "$T/new"
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
}

@test "directory mount: only raw views pass through, the qcow2 stays with the daemon" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 16M
	truncate -s 16M "$T/src/b.raw"
	vd_mount "$T/src" "$T/mnt" -o passthrough=on
	exec 7<>"$T/mnt/a.qcow2" 8<>"$T/mnt/b.raw"
	[ "$(pt_opens "$T/mnt/a.qcow2")" -eq 0 ]
	[ "$(pt_opens "$T/mnt/b.raw")" -eq 1 ]
	dd if=/dev/urandom of="$T/data" bs=1M count=4 status=none
	dd if="$T/data" of="$T/mnt/a.qcow2" bs=1M seek=2 oflag=direct conv=notrunc status=none
	dd if="$T/data" of="$T/mnt/b.raw" bs=1M seek=2 oflag=direct conv=notrunc status=none
	exec 7>&- 8>&-
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
	qemu-img check -q "$T/src/a.qcow2"
	qemu-img compare -q -f qcow2 -F raw "$T/src/a.qcow2" "$T/src/b.raw"
	cmp <(dd if="$T/src/b.raw" bs=1M skip=2 count=4 status=none) "$T/data"
}

@test "passthrough over FUSE over io_uring" {
	[ -w "$PARAM" ] || skip "this kernel has no FUSE over io_uring ($PARAM)"
	SAVED_PARAM=$(cat "$PARAM")
	echo 1 >"$PARAM"
	mount_pt 64M -o uring=on
	grep -q "FUSE over io_uring: .* queues" "$T/vdiskfs.log"
	fio_verify "$T/view" 24M 32M 16k
	cmp "$T/disk.raw" "$T/view"
	[ "$(data_requests)" -eq 0 ]
	exec 7<"$T/view"
	[ "$(pt_opens "$T/view")" -eq 1 ]
}

@test "passthrough=on refuses to start when the kernel does not grant it; auto goes on without" {
	require unshare
	# a user namespace's root lacks CAP_SYS_ADMIN where the kernel checks it
	unshare -Urm true 2>/dev/null || skip "no user namespaces"
	head -c 4M /dev/urandom >"$T/disk.raw"
	touch "$T/view"
	run unshare -Urm "$VDISKFS" -f -o passthrough=on "$T/disk.raw" "$T/view"
	[ "$status" -eq 1 ]
	[[ "$output" == *"passthrough=on: the kernel did not grant FUSE passthrough"* ]]
	run unshare -Urm sh -c '"$1" -f -o passthrough=auto "$2" "$3" & i=0
		until findmnt -n --mountpoint "$3" >/dev/null; do
			i=$((i + 1)); [ $i -lt 200 ] || exit 9; sleep 0.05
		done
		cmp "$2" "$3"; r=$?; umount "$3"; wait; exit $r' sh "$VDISKFS" "$T/disk.raw" "$T/view"
	[ "$status" -eq 0 ]
	[[ "$output" == *"passthrough: not used: the kernel did not grant FUSE passthrough"* ]]
}
