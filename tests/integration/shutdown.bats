#!/usr/bin/env bats
# Clean shutdown: fusermount3 -u, umount, SIGTERM and SIGINT flush and exit 0.

bats_require_minimum_version 1.5.0 # run !
load helpers

write_and() {
	head -c 4M /dev/urandom >"$T/data"
	truncate -s 16M "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	dd if="$T/data" of="$T/view" bs=1M conv=notrunc status=none
}

@test "SIGTERM unmounts cleanly with the data on disk" {
	write_and
	kill -TERM "$VD_PID"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	run ! is_mounted "$T/view"
	cmp -n 4M "$T/data" "$T/disk.raw"
}

@test "SIGINT unmounts cleanly" {
	write_and
	kill -INT "$VD_PID"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	run ! is_mounted "$T/view"
	cmp -n 4M "$T/data" "$T/disk.raw"
}

@test "fusermount3 -u and umount end the daemon with status 0" {
	write_and
	fusermount3 -u "$T/view"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	cmp -n 4M "$T/data" "$T/disk.raw"
	vd_mount "$T/disk.raw" "$T/view"
	umount "$T/view"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
}

@test "SIGTERM while I/O is in flight answers it and exits 0" {
	truncate -s 256M "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	fio --name=busy --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=io_uring --direct=1 --size=256M --time_based --runtime=10 \
		>/dev/null 2>&1 &
	fio_pid=$!
	sleep 1
	kill -TERM "$VD_PID"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	wait "$fio_pid" || true
	run ! is_mounted "$T/view"
}

@test "--pid-file: written once the mount is live, removed once the image is free" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 64M
	touch "$T/view"
	# daemonised: the file names the daemon, not the process that started it
	"$VDISKFS" --pid-file "$T/vd.pid" "$T/a.qcow2" "$T/view" 2>"$T/vdiskfs.log"
	is_mounted "$T/view"
	local pid
	pid=$(cat "$T/vd.pid")
	[ "$(cat /proc/"$pid"/comm)" = vdiskfs ]
	dd if=/dev/urandom of="$T/view" bs=1M count=32 oflag=direct status=none
	# the documented wait: the image is free once the file is gone
	fusermount3 -u "$T/view"
	local i
	for i in $(seq 1 200); do
		[ -e "$T/vd.pid" ] || break
		sleep 0.05
	done
	[ ! -e "$T/vd.pid" ]
	qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
	qemu_check "$T/a.qcow2"
	# in the foreground, and as a mount option (fstab); a relative path is
	# taken from where vdiskfs started
	cd "$T"
	vd_mount "$T/a.qcow2" "$T/view" -o pid_file=vd2.pid
	[ "$(cat "$T/vd2.pid")" = "$VD_PID" ]
	vd_umount "$T/view"
	[ ! -e "$T/vd2.pid" ]
	# a pid file that cannot be written: no mount, exit 1
	run "$VDISKFS" -f --pid-file "$T/no/such/dir/vd.pid" "$T/a.qcow2" "$T/view"
	[ "$status" -eq 1 ]
	[[ "$output" == *"cannot write the pid file $T/no/such/dir/vd.pid"* ]]
	run ! is_mounted "$T/view"
}

@test "systemd readiness: READY=1 once the mount is live, STOPPING=1 at unmount" {
	truncate -s 16M "$T/disk.raw"
	touch "$T/view"
	# a stand-in for systemd: a datagram socket that records each notification
	# with whether the view was mounted when it arrived
	python3 - "$T/notify.sock" "$T/view" >"$T/notes" <<'PY' &
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1])
s.settimeout(30)
while True:
    msg = s.recv(4096).decode()
    mounted = any(l.split()[4] == sys.argv[2] for l in open("/proc/self/mountinfo"))
    print(repr(msg), "mounted" if mounted else "unmounted", flush=True)
    if "STOPPING=1" in msg:
        break
PY
	local listener=$! i
	for i in $(seq 1 100); do [ -S "$T/notify.sock" ] && break; sleep 0.05; done
	NOTIFY_SOCKET="$T/notify.sock" vd_mount "$T/disk.raw" "$T/view"
	for i in $(seq 1 100); do [ -s "$T/notes" ] && break; sleep 0.05; done
	local pid=$VD_PID
	vd_umount "$T/view"
	wait "$listener"
	cat "$T/notes"
	[ "$(wc -l <"$T/notes")" -eq 2 ]
	[ "$(sed -n 1p "$T/notes")" = "'READY=1\\nMAINPID=$pid\\nSTATUS=serving $T/disk.raw on $T/view' mounted" ]
	[[ "$(sed -n 2p "$T/notes")" == "'STOPPING=1\\nSTATUS=unmounting $T/view: flushing and closing the images' "* ]]
}
