#!/usr/bin/env bats
# FUSE over io_uring (-o uring=auto|on|off). The whole integration suite also
# runs a second time with the kernel's enable_uring on (tests/run.sh); these
# cases pin down the option itself and the paths only the ring has.

bats_require_minimum_version 1.5.0 # run !
load helpers

PARAM=/sys/module/fuse/parameters/enable_uring

setup() {
	setup_scratch
	[ -w "$PARAM" ] || skip "this kernel has no FUSE over io_uring ($PARAM)"
	SAVED_PARAM=$(cat "$PARAM")
}

teardown() {
	teardown_scratch
	[ -z "${SAVED_PARAM:-}" ] || echo "$SAVED_PARAM" >"$PARAM"
}

uring() { echo "$1" >"$PARAM"; }

@test "uring=on serves through the ring: fio verify, O_DIRECT and buffered, two jobs" {
	uring 1
	qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
	touch "$T/view"
	vd_mount "$T/a.qcow2" "$T/view" -o uring=on
	grep -q "FUSE over io_uring: .* queues" "$T/vdiskfs.log"
	fio --name=d --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio \
		--direct=1 --size=32M --numjobs=2 --offset_increment=32M --verify=crc32c \
		--output-format=terse >/dev/null
	fio --name=b --filename="$T/view" --rw=write --bs=1M --size=16M --offset=8M \
		--verify=md5 --output-format=terse >/dev/null
	# 1 MiB requests fill a whole ring payload buffer, both ways
	dd if=/dev/urandom of="$T/big" bs=1M count=8 status=none
	dd if="$T/big" of="$T/view" bs=1M seek=40 oflag=direct conv=notrunc status=none
	cmp <(dd if="$T/view" bs=1M skip=40 count=8 iflag=direct status=none) "$T/big"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu-img check -q "$T/a.qcow2"
	qemu-img convert -O raw "$T/a.qcow2" "$T/a.raw"
	cmp <(dd if="$T/a.raw" bs=1M skip=40 count=8 status=none) "$T/big"
}

@test "metadata, xattrs and the control file over the ring" {
	uring 1
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 8M
	truncate -s 4M "$T/src/b.img"
	vd_mount "$T/src" "$T/mnt" -o uring=on
	[ "$(ls "$T/mnt" | sort | tr '\n' ' ')" = "a.qcow2 b.img " ]
	[ "$(stat -c %s "$T/mnt/a.qcow2")" -eq $((8 << 20)) ]
	[ "$(getfattr --only-values -n user.vdiskfs.format "$T/mnt/a.qcow2")" = qcow2 ]
	grep -q '"a.qcow2"' "$T/mnt/.vdiskfs"
	truncate -s 16M "$T/mnt/a.qcow2"
	[ "$(stat -c %s "$T/mnt/a.qcow2")" -eq $((16 << 20)) ]
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
}

@test "uring=auto takes the ring when offered; uring=off and a kernel that does not offer it keep /dev/fuse" {
	truncate -s 4M "$T/a.img"
	touch "$T/view"
	uring 1
	vd_mount "$T/a.img" "$T/view"
	grep -q "FUSE over io_uring" "$T/vdiskfs.log"
	vd_umount "$T/view"
	: >"$T/vdiskfs.log"
	vd_mount "$T/a.img" "$T/view" -o uring=off
	dd if=/dev/zero of="$T/view" bs=4k count=4 conv=notrunc status=none
	run ! grep -q "FUSE over io_uring" "$T/vdiskfs.log"
	vd_umount "$T/view"
	uring 0
	vd_mount "$T/a.img" "$T/view"
	dd if=/dev/zero of="$T/view" bs=4k count=4 conv=notrunc status=none
	run ! grep -q "FUSE over io_uring" "$T/vdiskfs.log"
	vd_umount "$T/view"
}

@test "uring=on without the kernel's offer: a clear error, exit 1, nothing left mounted" {
	uring 0
	truncate -s 4M "$T/a.img"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o uring=on "$T/a.img" "$T/view"
	[ "$status" -eq 1 ]
	[[ "$output" == *"enable_uring"* ]]
	run ! is_mounted "$T/view"
	# without -f too: the error comes before the daemon leaves the terminal
	run timeout 20 "$VDISKFS" -o uring=on "$T/a.img" "$T/view"
	[ "$status" -eq 1 ]
	[[ "$output" == *"enable_uring"* ]]
	run ! is_mounted "$T/view"
	run "$VDISKFS" -f -o uring=sometimes "$T/a.img" "$T/view"
	[ "$status" -eq 2 ]
	[[ "$output" == *"uring=sometimes: want auto, on or off"* ]]
}

@test "SIGTERM and unmount with ring requests in flight: every request answered, clean exit" {
	uring 1
	qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
	touch "$T/view"
	local how
	for how in term umount; do
		vd_mount "$T/a.qcow2" "$T/view" -o uring=on
		fio --name=w --filename="$T/view" --rw=randrw --bs=4k --iodepth=32 --ioengine=libaio \
			--direct=1 --size=64M --time_based --runtime=30 --output-format=terse \
			>/dev/null 2>&1 &
		local fpid=$!
		sleep 1
		if [ "$how" = term ]; then
			kill -TERM "$VD_PID"
		else
			umount -l "$T/view"
		fi
		vd_wait_exit
		[ "$VD_STATUS" -eq 0 ]
		wait "$fpid" || true
		run ! is_mounted "$T/view"
		qemu-img check -q "$T/a.qcow2"
	done
}

@test "a live mirror over the ring: guest writes finished by the copier thread are answered" {
	uring 1
	qemu-img create -q -f qcow2 "$T/src.qcow2" 64M
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view" -o uring=on
	fio --name=w --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 --ioengine=libaio \
		--direct=1 --size=64M --verify=crc32c --do_verify=0 --randrepeat=1 \
		--verify_state_save=0 --time_based --runtime=3 --output-format=terse >/dev/null &
	local fpid=$!
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.qcow2,speed=32M" "$T/view"
	wait "$fpid"
	local i
	for i in $(seq 1 600); do
		[[ "$(getfattr --only-values -n user.vdiskfs.mirror.status "$T/view")" == phase=ready* ]] && break
		sleep 0.05
	done
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/dst.qcow2" ]
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu-img check -q "$T/dst.qcow2"
	qemu-img compare -q "$T/src.qcow2" "$T/dst.qcow2"
}
