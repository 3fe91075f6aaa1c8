#!/usr/bin/env bats
# Hand-over between hosts (issue 14): two daemons serve one image on shared
# storage, as two hosts would; one inactivates (written back, clean, locks
# released), the other activates (locks taken, metadata read anew).

load helpers

# put VIEW MB_OFFSET COUNT: fresh random 64 KiB blocks into the reference
# and through the view
put() {
	dd if=/dev/urandom of="$T/ref.raw" bs=64k count="$3" seek=$(($2 * 16)) conv=notrunc \
		status=none
	dd if="$T/ref.raw" of="$1" bs=64k count="$3" skip=$(($2 * 16)) seek=$(($2 * 16)) \
		conv=notrunc oflag=direct status=none
}

active() { getfattr --only-values -n user.vdiskfs.active "$1"; }

@test "a writer on A, A inactivates, B activates, the writer goes on on B, and back" {
	qemu-img create -q -f qcow2 "$T/disk.qcow2" 64M
	truncate -s 64M "$T/ref.raw"
	touch "$T/a" "$T/b"
	vd_mount "$T/disk.qcow2" "$T/a" -o inactive_wait=2
	local pa=$VD_PID
	vd_mount "$T/disk.qcow2" "$T/b" -o inactive
	local pb=$VD_PID
	[ "$(active "$T/a")" = 1 ]
	[ "$(active "$T/b")" = 0 ]
	[ "$(stat -c %s "$T/b")" = $((64 << 20)) ] # its size is known while inactive
	put "$T/a" 0 16
	put "$T/a" 20 3
	# the destination opens early: its read waits for the activation
	dd if="$T/b" of="$T/early.out" bs=64k count=16 iflag=direct status=none &
	local early=$!
	sleep 0.5
	kill -0 "$early" # still waiting
	setfattr -n user.vdiskfs.active -v 0 "$T/a"
	[ "$(active "$T/a")" = 0 ]
	# written back and clean: QEMU's check sees no leak and no dirty state
	qemu_check "$T/disk.qcow2"
	run qemu-img info --output=json -U "$T/disk.qcow2"
	[[ "$output" != *'"dirty-flag": true'* ]]
	kill -0 "$early"
	setfattr -n user.vdiskfs.active -v 1 "$T/b"
	wait "$early"
	cmp -n $((1 << 20)) "$T/early.out" "$T/ref.raw"
	# the writer goes on on B, over what A wrote and into new clusters
	put "$T/b" 21 4
	put "$T/b" 40 8
	cmp "$T/b" "$T/ref.raw"
	# A holds its requests now, and ends them after inactive_wait
	run dd if="$T/a" of=/dev/null bs=64k count=1 iflag=direct status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Input/output error"* ]]
	# A cannot activate while B is active: refused, A stays inactive
	run setfattr -n user.vdiskfs.active -v 1 "$T/a"
	[ "$status" -ne 0 ]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/a")" == *"not activated"* ]]
	[ "$(active "$T/a")" = 0 ]
	# and back: B inactivates, A activates and sees B's writes
	setfattr -n user.vdiskfs.active -v 0 "$T/b"
	setfattr -n user.vdiskfs.active -v 1 "$T/a"
	cmp "$T/a" "$T/ref.raw"
	put "$T/a" 50 2
	VD_PID=$pb vd_umount "$T/b"
	[ "$VD_STATUS" -eq 0 ]
	VD_PID=$pa vd_umount "$T/a"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/disk.qcow2"
	qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$T/disk.qcow2"
}

@test "the control file hands views over; an inactive view's held requests end when it stops" {
	mkdir "$T/src" "$T/m1" "$T/m2"
	qemu-img create -q -f qcow2 "$T/src/vm.qcow2" 16M
	truncate -s 16M "$T/ref.raw"
	vd_mount "$T/src" "$T/m1"
	local p1=$VD_PID
	vd_mount "$T/src" "$T/m2" -o inactive
	local p2=$VD_PID
	put "$T/m1/vm.qcow2" 1 4
	python3 - "$T/m1/.vdiskfs" "$T/m2/.vdiskfs" <<'PY'
import errno, json, os, sys
one, two = (os.open(p, os.O_RDWR) for p in sys.argv[1:3])
def cmd(fd, line):
    os.write(fd, line.encode() + b"\n")
    return os.pread(fd, 1 << 20, 0).decode()
def refused(fd, line, err):
    """The command fails with err; its reply is returned."""
    try:
        cmd(fd, line)
    except OSError as e:
        assert e.errno == err, e
        return os.pread(fd, 1 << 20, 0).decode()
    raise SystemExit(line + ": accepted")
assert json.loads(cmd(two, "status"))["images"][0]["active"] is False
# activated while the other side holds the image
assert "not activated" in refused(two, "activate vm.qcow2", errno.EBUSY)
assert cmd(one, "inactivate vm.qcow2") == "ok: inactive\n"
assert cmd(two, "activate vm.qcow2") == "ok: active\n"
assert json.loads(cmd(two, "status"))["images"][0]["active"] is True
refused(one, "inactivate nosuch.qcow2", errno.ENOENT)
PY
	cmp "$T/m2/vm.qcow2" "$T/ref.raw"
	# a read held by the now inactive m1 is answered (EIO) when m1 stops
	# (SIGTERM: the busy mountpoint cannot be unmounted), not after the wait
	dd if="$T/m1/vm.qcow2" of=/dev/null bs=64k count=1 iflag=direct status=none \
		2>"$T/held.err" &
	local held=$!
	sleep 0.5
	kill -0 "$held"
	kill -TERM "$p1"
	VD_PID=$p1 vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	run wait "$held"
	[ "$status" -ne 0 ]
	grep -q "Input/output error" "$T/held.err"
	VD_PID=$p2 vd_umount "$T/m2"
	qemu_check "$T/src/vm.qcow2"
	qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$T/src/vm.qcow2"
}

@test "inactive views refuse what needs the image: mirror, resize; lseek sees all data" {
	qemu-img create -q -f qcow2 "$T/disk.qcow2" 8M
	touch "$T/v"
	vd_mount "$T/disk.qcow2" "$T/v" -o inactive
	run setfattr -n user.vdiskfs.mirror.start -v "$T/dst.qcow2" "$T/v"
	[[ "$output" == *"Device or resource busy"* ]]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/v")" == *"inactive"* ]]
	run truncate -s 16M "$T/v"
	[ "$status" -ne 0 ]
	python3 -c "
import os, sys
fd = os.open('$T/v', os.O_RDONLY)
assert os.lseek(fd, 0, os.SEEK_DATA) == 0
assert os.lseek(fd, 0, os.SEEK_HOLE) == 8 << 20
"
	run setfattr -n user.vdiskfs.active -v 2 "$T/v"
	[ "$status" -ne 0 ]
	setfattr -n user.vdiskfs.active -v 1 "$T/v"
	python3 -c "
import os
fd = os.open('$T/v', os.O_RDONLY)
try:
    os.lseek(fd, 0, os.SEEK_DATA)
    raise SystemExit('data in an empty image')
except OSError:
    pass
"
	truncate -s 16M "$T/v"
	vd_umount "$T/v"
	qemu_check "$T/disk.qcow2"
}
