#!/usr/bin/env bats
# The command line: help, version, and every bad-argument case gives a
# one-line error naming the cause, a non-zero status, and mounts nothing.

bats_require_minimum_version 1.5.0 # run !
load helpers

# expect_refusal EXPECTED_TEXT MOUNTPOINT ARGS...: vdiskfs must fail without mounting
expect_refusal() {
	local text=$1 mnt=$2
	shift 2
	run timeout 20 "$VDISKFS" -f "$@"
	echo "status=$status output=$output"
	[ "$status" -ne 0 ]
	[ "$status" -ne 124 ]
	[[ "$output" == *"$text"* ]]
	[ -z "$mnt" ] || ! is_mounted "$mnt"
}

@test "--help and --version succeed" {
	run "$VDISKFS" --help
	[ "$status" -eq 0 ]
	[[ "$output" == *"usage: vdiskfs"* ]]
	run "$VDISKFS" --version
	[ "$status" -eq 0 ]
	[[ "$output" == "vdiskfs "* ]]
}

@test "no arguments: names what is missing" {
	expect_refusal "missing SOURCE and MOUNTPOINT" ""
	truncate -s 1M "$T/a.raw"
	expect_refusal "missing MOUNTPOINT" "" "$T/a.raw"
}

@test "a missing SOURCE is named" {
	touch "$T/view"
	expect_refusal "$T/nope.qcow2" "$T/view" "$T/nope.qcow2" "$T/view"
}

@test "a missing MOUNTPOINT is named" {
	truncate -s 1M "$T/a.raw"
	expect_refusal "$T/nope" "" "$T/a.raw" "$T/nope"
}

@test "an image onto a directory is refused" {
	truncate -s 1M "$T/a.raw"
	mkdir "$T/mnt"
	expect_refusal "must be a regular file" "$T/mnt" "$T/a.raw" "$T/mnt"
}

@test "a directory onto a file is refused" {
	mkdir "$T/src"
	touch "$T/view"
	expect_refusal "must be a directory" "$T/view" "$T/src" "$T/view"
}

@test "a SOURCE that is neither file nor directory is refused" {
	touch "$T/view"
	expect_refusal "neither an image file nor a directory" "$T/view" /dev/null "$T/view"
}

@test "unknown and malformed options are refused" {
	truncate -s 1M "$T/a.raw"
	touch "$T/view"
	expect_refusal "" "$T/view" -o no_such_option "$T/a.raw" "$T/view"
	expect_refusal "threads=0" "$T/view" -o threads=0 "$T/a.raw" "$T/view"
	expect_refusal "backing=sideways" "$T/view" -o backing=sideways "$T/a.raw" "$T/view"
	expect_refusal "cache_size=lots" "$T/view" -o cache_size=lots "$T/a.raw" "$T/view"
	expect_refusal "format=vmdk" "$T/view" -o format=vmdk "$T/a.raw" "$T/view"
	expect_refusal "cache=sometimes" "$T/view" -o cache=sometimes "$T/a.raw" "$T/view"
	expect_refusal "max_read=65536 is not supported" "$T/view" -o max_read=65536 "$T/a.raw" "$T/view"
	expect_refusal "unexpected argument" "$T/view" "$T/a.raw" "$T/view" extra
}

@test "an image that cannot be opened is refused with the reason" {
	printf 'QFI\xfbgarbage' >"$T/bad.qcow2"
	truncate -s 64K "$T/bad.qcow2"
	touch "$T/view"
	expect_refusal "bad.qcow2" "$T/view" -o format=qcow2 "$T/bad.qcow2" "$T/view"
	expect_refusal "cannot serve" "$T/view" -o format=qcow2 "$T/bad.qcow2" "$T/view"
}

@test "without -f it daemonises and the mount works" {
	truncate -s 1M "$T/a.raw"
	touch "$T/view"
	run "$VDISKFS" "$T/a.raw" "$T/view"
	[ "$status" -eq 0 ]
	is_mounted "$T/view"
	[ "$(stat -c %s "$T/view")" -eq 1048576 ]
	findmnt -n -o FSTYPE --mountpoint "$T/view" | grep -qx fuse.vdiskfs
	fusermount3 -u "$T/view"
	run ! is_mounted "$T/view"
}

@test "mount.fuse3 mounts type fuse.vdiskfs (the fstab path)" {
	truncate -s 1M "$T/a.raw"
	touch "$T/view"
	mkdir -p "$T/bin"
	ln -s "$VDISKFS" "$T/bin/vdiskfs"
	# what mount(8) runs for an fstab line of type fuse.vdiskfs
	PATH="$T/bin:$PATH" run mount.fuse3 "$T/a.raw" "$T/view" -t vdiskfs -o ro
	echo "$output"
	[ "$status" -eq 0 ]
	is_mounted "$T/view"
	run sh -c "echo x > '$T/view'"
	[ "$status" -ne 0 ]
	umount "$T/view"
}

@test "an image in use is locked: a second writer is refused" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 8M
	touch "$T/view" "$T/view2"
	vd_mount "$T/a.qcow2" "$T/view"
	run timeout 20 "$VDISKFS" -f "$T/a.qcow2" "$T/view2"
	[ "$status" -ne 0 ]
	[[ "$output" == *"in use by another process"* ]]
	run ! is_mounted "$T/view2"
	# QEMU's own locking sees ours too
	run qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
	[ "$status" -ne 0 ]
	vd_umount "$T/view"
	qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
}

@test "a second vdiskfs on a mountpoint that already is a vdiskfs mount is refused" {
	mkdir "$T/src" "$T/mnt" "$T/other"
	head -c 1M /dev/urandom >"$T/src/a.raw"
	truncate -s 1M "$T/other/b.raw"
	vd_mount "$T/src" "$T/mnt"
	run timeout 20 "$VDISKFS" -f "$T/other" "$T/mnt"
	[ "$status" -eq 1 ]
	[[ "$output" == *"$T/mnt is already a vdiskfs mount (of $T/src); unmount it first"* ]]
	# the first mount is still the one that answers
	[ "$(ls "$T/mnt")" = a.raw ]
	cmp "$T/mnt/a.raw" "$T/src/a.raw"
	# a single-image view too, even when the image is the mountpoint itself
	truncate -s 1M "$T/other/c.raw"
	vd_mount "$T/other/c.raw" "$T/other/c.raw"
	run timeout 20 "$VDISKFS" -f "$T/other/b.raw" "$T/other/c.raw"
	[ "$status" -eq 1 ]
	[[ "$output" == *"is already a vdiskfs mount"* ]]
}

@test "-o log=FILE and log_level: time-stamped lines in the file, filtered by level" {
	truncate -s 1M "$T/a.raw"
	touch "$T/view"
	"$VDISKFS" -o log="$T/vd.log" "$T/a.raw" "$T/view"
	is_mounted "$T/view"
	run truncate -s 0 "$T/view" # refused: an error line
	[ "$status" -ne 0 ]
	fusermount3 -u "$T/view"
	local i
	for i in $(seq 1 100); do grep -q unmounting "$T/vd.log" && break; sleep 0.05; done
	cat "$T/vd.log"
	grep -Eq "^[0-9]{4}-[0-9]{2}-[0-9]{2} [0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{3} vdiskfs: serving $T/a.raw on $T/view$" "$T/vd.log"
	grep -q "vdiskfs: $T/a.raw: refusing to shrink" "$T/vd.log"
	# errors only
	sleep 0.5
	: >"$T/vd.log"
	vd_mount "$T/a.raw" "$T/view" -o log="$T/vd.log",log_level=error
	run truncate -s 0 "$T/view"
	vd_umount "$T/view"
	[ "$(grep -c . "$T/vd.log")" -eq 1 ]
	grep -q "refusing to shrink" "$T/vd.log"
	# and nothing on stderr when the log goes to a file
	[ ! -s "$T/vdiskfs.log" ]
	run "$VDISKFS" -f -o log_level=loud "$T/a.raw" "$T/view"
	[ "$status" -eq 2 ]
	[[ "$output" == *"log_level=loud: want error, warning, info or debug"* ]]
	run "$VDISKFS" -f -o log="$T/no/dir/x.log" "$T/a.raw" "$T/view"
	[ "$status" -eq 2 ]
	[[ "$output" == *"log=$T/no/dir/x.log: No such file or directory"* ]]
}

@test "info level logs every image opened and closed" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
	touch "$T/view"
	vd_mount "$T/a.qcow2" "$T/view"
	vd_umount "$T/view"
	grep -q "vdiskfs: $T/a.qcow2: opened (qcow2, read-write, 67108864 bytes)$" "$T/vdiskfs.log"
	grep -q "vdiskfs: $T/a.qcow2: closed$" "$T/vdiskfs.log"
	: >"$T/vdiskfs.log"
	vd_mount "$T/a.qcow2" "$T/view" -o log_level=warning
	vd_umount "$T/view"
	run grep -c "opened\|closed" "$T/vdiskfs.log"
	[ "$output" = 0 ]
}
