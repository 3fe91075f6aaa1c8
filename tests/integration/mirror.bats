#!/usr/bin/env bats
# The live mirror (DESIGN §1, issue 5): start, ready, complete and cancel
# while a guest writes, failures, refusals, sparseness and the speed limit.

load helpers
load mirror-helpers


FIO_ARGS=(--name=w --rw=randwrite --bs=4k --iodepth=16 --ioengine=io_uring --direct=1
	--size=16M --verify=crc32c --randrepeat=1 --verify_state_save=0 --output-format=terse)

@test "raw to raw under load: start, ready, complete; destination equals the reference" {
	make_image "$T/src.raw" raw 64 32
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,speed=8M" "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=running target=$T/dst.raw format=raw "* ]]
	# fio on [0, 16M) (verified later through the destination), the writer
	# with writes, punches and zero-ranges on [32M, 64M) the whole time
	fio "${FIO_ARGS[@]}" --filename="$T/view" --do_verify=0 --rate_iops=1000 >"$T/fio.out" &
	FIO_PID=$!
	start_writer "$T/view" 32 32
	run setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Device or resource busy"* ]]
	wait_phase "$T/view" ready 30
	[[ "$(mstatus "$T/view")" == *"copied=67108864 total=67108864"* ]]
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=completed target=$T/dst.raw"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/dst.raw" ]
	sleep 0.5
	stop_writer
	wait "$FIO_PID"
	# every fio block reads back through the view, now the destination
	fio "${FIO_ARGS[@]}" --filename="$T/view" --verify_only >"$T/fio-verify.out"
	dd if="$T/view" of="$T/ref.raw" bs=1M count=16 conv=notrunc status=none
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu-img compare -q -f raw -F raw "$T/ref.raw" "$T/dst.raw"
	grep -q "mirror complete" "$T/vdiskfs.log"
}

@test "cancel while running and while ready: the view stays on the source" {
	make_image "$T/src.raw" raw 64 32
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	start_writer "$T/view" 32 32
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d1.raw,speed=4M" "$T/view"
	sleep 1
	[[ "$(mstatus "$T/view")" == "phase=running"* ]]
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[ "$(mstatus "$T/view")" = "phase=none" ]
	[ -f "$T/d1.raw" ]
	grep -q "destination is left at $T/d1.raw" "$T/vdiskfs.log"
	# again, cancelled once ready
	setfattr -n user.vdiskfs.mirror.start -v "$T/d2.raw" "$T/view"
	wait_phase "$T/view" ready 30
	sleep 0.5
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[ "$(mstatus "$T/view")" = "phase=none" ]
	run setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[[ "$output" == *"No such process"* ]] # ESRCH: no such job, unlike a missing view
	[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" = "$T/src.raw: mirror cancel: no mirror is running" ]
	sleep 0.5
	stop_writer
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/src.raw" ]
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	qemu-img compare -q -f raw -F raw "$T/ref.raw" "$T/src.raw"
}

@test "a failing destination: phase=failed, guest writes intact on the source, cancel" {
	make_image "$T/src.raw" raw 64 32
	touch "$T/view"
	# the 5th counted write fails: the copier's, as nothing else writes yet
	VDISKFS_FAULT="nth=5,kinds=w,errno=EIO" vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,granularity=64K" "$T/view"
	wait_phase "$T/view" failed 30
	[[ "$(mstatus "$T/view")" == *"error=writing"*"Input/output error"* ]]
	run setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$status" -ne 0 ]
	start_writer "$T/view" 0 64
	sleep 1
	stop_writer
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[ "$(mstatus "$T/view")" = "phase=none" ]
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	qemu-img compare -q -f raw -F raw "$T/ref.raw" "$T/src.raw"
}

@test "every refused start returns its errno and changes nothing" {
	qemu-img create -q -f raw "$T/base.raw" 16M
	make_image "$T/src.raw" raw 16 4
	truncate -s 8M "$T/small.raw"
	touch "$T/exists.raw" "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "$T/exists.raw" "$T/view"
	[[ "$output" == *"File exists"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "$T/src.raw" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/src.raw,existing=1" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/small.raw,existing=1" "$T/view"
	[[ "$output" == *"No space left on device"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/new.raw,colour=blue" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/new.raw,speed=fast" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/new.raw,format=vmdk" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "relative.raw" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	# inside this mount, and inside another vdiskfs mount
	run setfattr -n user.vdiskfs.mirror.start -v "$T/view/x.raw" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	mkdir "$T/dir" "$T/mnt2"
	truncate -s 1M "$T/dir/a.raw"
	"$VDISKFS" -f "$T/dir" "$T/mnt2" >>"$T/vdiskfs2.log" 2>&1 &
	local pid2=$!
	for i in $(seq 1 100); do is_mounted "$T/mnt2" && break; sleep 0.05; done
	run setfattr -n user.vdiskfs.mirror.start -v "$T/mnt2/x.raw" "$T/view"
	fusermount3 -u "$T/mnt2"; wait "$pid2" || true
	[[ "$output" == *"Invalid argument"* ]]
	[ "$(mstatus "$T/view")" = "phase=none" ]
	[ ! -e "$T/new.raw" ]
	[ ! -e "$T/x.raw" ]
	[ "$(stat -c %s "$T/small.raw")" -eq $((8 << 20)) ]
	# a second mirror of the same image
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d1.raw,speed=1M" "$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "$T/d2.raw" "$T/view"
	[[ "$output" == *"Device or resource busy"* ]]
	[ ! -e "$T/d2.raw" ]
	run truncate -s 32M "$T/view"
	[ "$status" -ne 0 ]
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	vd_umount "$T/view"
	grep -q "exists (use existing=1" "$T/vdiskfs.log"
	grep -q "unknown option \"colour\"" "$T/vdiskfs.log"
	# a read-only mount
	vd_mount "$T/src.raw" "$T/view" -o ro
	run setfattr -n user.vdiskfs.mirror.start -v "$T/d3.raw" "$T/view"
	[[ "$output" == *"Read-only file system"* ]]
	[ ! -e "$T/d3.raw" ]
}

@test "the speed limit holds within 20%" {
	make_image "$T/src.raw" raw 24 24
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	local t0 t1
	t0=$(date +%s.%N)
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,speed=6M,granularity=256K" \
		"$T/view"
	wait_phase "$T/view" ready 30
	t1=$(date +%s.%N)
	python3 -c "
import sys
rate = 24 / ($t1 - $t0)
print('rate', rate, 'MiB/s')
sys.exit(0 if 6 * 0.8 <= rate <= 6 * 1.2 else 1)"
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	cmp "$T/src.raw" "$T/dst.raw"
}

@test "a sparse source stays sparse on raw and qcow2 destinations" {
	truncate -s 256M "$T/src.raw"
	for i in 0 7 19 40 77 130 200 250; do
		dd if=/dev/urandom of="$T/src.raw" bs=1M count=1 seek=$i conv=notrunc status=none
	done
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "$T/dst.raw" "$T/view"
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.qcow2,format=qcow2" "$T/view"
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	vd_umount "$T/view"
	local src dst dstq
	src=$(($(stat -c %b "$T/src.raw") * 512))
	dst=$(($(stat -c %b "$T/dst.raw") * 512))
	dstq=$(($(stat -c %b "$T/dst.qcow2") * 512))
	echo "src $src raw $dst qcow2 $dstq"
	[ "$dst" -le $((src * 11 / 10)) ]
	[ "$dst" -ge $((src * 9 / 10)) ]
	[ "$dstq" -le $((src * 11 / 10)) ]
	qemu-img compare -q -f raw -F raw "$T/src.raw" "$T/dst.raw"
	qemu-img compare -q -f raw -F qcow2 "$T/src.raw" "$T/dst.qcow2"
	qemu_check "$T/dst.qcow2"
}

@test "unmount and SIGTERM during a mirror cancel it; the source stays the image" {
	make_image "$T/src.raw" raw 64 32
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d1.raw,speed=2M" "$T/view"
	start_writer "$T/view" 32 32
	sleep 1
	stop_writer
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	grep -q "cancelled at shutdown" "$T/vdiskfs.log"
	qemu-img compare -q -f raw -F raw "$T/ref.raw" "$T/src.raw"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d2.raw,speed=2M" "$T/view"
	start_writer "$T/view" 32 32
	sleep 1
	stop_writer
	kill -TERM "$VD_PID"
	vd_wait_exit
	[ "$VD_STATUS" -eq 0 ]
	[ "$(grep -c "cancelled at shutdown" "$T/vdiskfs.log")" -eq 2 ]
	qemu-img compare -q -f raw -F raw "$T/ref.raw" "$T/src.raw"
}

@test "the control file runs mirror commands and shows the mirror in its JSON" {
	mkdir "$T/src" "$T/mnt"
	make_image "$T/src/a.raw" raw 16 8
	vd_mount "$T/src" "$T/mnt"
	python3 - "$T/mnt/.vdiskfs" "$T/dst.raw" <<'PY'
import errno, json, os, sys, time
ctl, dst = sys.argv[1], sys.argv[2]
fd = os.open(ctl, os.O_RDWR)
def cmd(line):
    os.write(fd, line.encode() + b"\n")
    return os.pread(fd, 1 << 20, 0).decode()
try:
    cmd("mirror-start nosuch.raw " + dst)
    raise SystemExit("unknown image accepted")
except OSError as e:
    assert e.errno == errno.ENOENT, e
print(cmd("mirror-start a.raw " + dst + " speed=64M granularity=64K"))
for _ in range(200):
    if cmd("mirror-status a.raw").startswith("phase=ready"):
        break
    time.sleep(0.05)
st = json.loads(cmd("status"))
m = st["images"][0]["mirror"]
assert m["phase"] == "ready" and m["target"] == dst and m["copied"] == 16 << 20, m
print(cmd("mirror-complete a.raw"))
assert cmd("mirror-status a.raw").startswith("phase=completed"), cmd("mirror-status a.raw")
assert json.loads(cmd("status"))["images"][0]["image"] == dst
try:
    cmd("mirror-cancel a.raw")
    raise SystemExit("cancel after complete accepted")
except OSError as e:
    assert e.errno == errno.ESRCH, e
PY
	cmp "$T/mnt/a.raw" "$T/ref.raw"
	# the old source (kept hidden) and the name's link may go: the name
	# stays while mounted, now the destination's
	rm "$T/src/a.raw" "$T/src/.a.raw.before-mirror-"*
	sleep 1.1
	[ "$(ls "$T/mnt")" = a.raw ]
	cmp "$T/mnt/a.raw" "$T/ref.raw"
	vd_umount "$T/mnt"
	cmp "$T/dst.raw" "$T/ref.raw"
}

@test "existing=1 writes over a larger existing image, holes included" {
	make_image "$T/src.raw" raw 32 8
	head -c 40M /dev/urandom >"$T/old.raw" # junk where the source has holes
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/old.raw,existing=1,format=raw" "$T/view"
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.virtual-size "$T/view")" -eq $((40 << 20)) ]
	vd_umount "$T/view"
	cmp -n $((32 << 20)) "$T/old.raw" "$T/ref.raw"
}

@test "a second mirror right after complete moves the disk again" {
	make_image "$T/src.raw" raw 16 8
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "$T/d1.raw" "$T/view"
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/d2.qcow2,format=qcow2" "$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/d1.raw,existing=1" "$T/view"
	[[ "$output" == *"Device or resource busy"* ]]
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/d2.qcow2" ]
	[ "$(getfattr --only-values -n user.vdiskfs.format "$T/view")" = qcow2 ]
	rm "$T/src.raw" "$T/d1.raw" # neither is used any more
	dd if=/dev/urandom of="$T/ref.raw" bs=64k count=4 seek=3 conv=notrunc status=none
	dd if="$T/ref.raw" of="$T/view" bs=64k count=4 skip=3 seek=3 conv=notrunc oflag=direct status=none
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$T/d2.qcow2"
	qemu_check "$T/d2.qcow2"
}

@test "guest writes racing the copier's chunks never leave stale data behind" {
	make_image "$T/src.raw" raw 32 32
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	local i
	for i in 1 2 3; do
		fio --name=race --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 \
			--ioengine=io_uring --direct=1 --size=32M --time_based --runtime=30 \
			--verify_state_save=0 --output=/dev/null &
		local fpid=$!
		sleep 0.3
		setfattr -n user.vdiskfs.mirror.start -v "target=$T/d$i.raw,granularity=64K" "$T/view"
		wait_phase "$T/view" ready 30
		sleep 0.3
		kill "$fpid"; wait "$fpid" || true
		# quiet now: both sides must be identical
		cmp "$T/src.raw" "$T/d$i.raw"
		setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	done
}

@test "a source write error reaches the guest as its errno during a mirror" {
	truncate -s 8M "$T/src.raw"
	touch "$T/view"
	VDISKFS_FAULT="nth=1,errno=EIO,kinds=w,count=0,path=/src.raw" vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "$T/dst.raw" "$T/view"
	run dd if=/dev/zero of="$T/view" bs=4k count=1 oflag=direct conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Input/output error"* ]]
	# reads still work, from the source
	dd if="$T/view" of=/dev/null bs=1M status=none
}

# complete_in_dir NAME TARGET: mirror SOURCE's view NAME to TARGET while it
# keeps its name, write after complete, and check the name serves the new
# image across a remount, the old source kept under a hidden name.
complete_in_dir() {
	local name=$1 target=$2
	mkdir -p "$T/srcdir" "$T/mnt"
	make_image "$T/srcdir/$name" qcow2 16 8
	cp "$T/ref.raw" "$T/old.raw"
	vd_mount "$T/srcdir" "$T/mnt"
	setfattr -n user.vdiskfs.mirror.start -v "target=$target" "$T/mnt/$name"
	wait_phase "$T/mnt/$name" ready 30
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/mnt/$name"
	dd if=/dev/urandom of="$T/ref.raw" bs=64k count=4 seek=5 conv=notrunc status=none
	dd if="$T/ref.raw" of="$T/mnt/$name" bs=64k count=4 skip=5 seek=5 conv=notrunc \
		oflag=direct status=none
	cmp "$T/mnt/$name" "$T/ref.raw"
	grep -q "$T/srcdir/$name is now a" "$T/vdiskfs.log"
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
	# the old source, untouched, under a hidden name the mount does not show
	local kept=("$T/srcdir/.$name.before-mirror-"*)
	[ "${#kept[@]}" -eq 1 ] && [ -f "${kept[0]}" ]
	qemu-img compare -q -f raw -F qcow2 "$T/old.raw" "${kept[0]}"
	vd_mount "$T/srcdir" "$T/mnt"
	[ "$(ls "$T/mnt")" = "$name" ]
	cmp "$T/mnt/$name" "$T/ref.raw"
	# and it is the target that the view writes now
	dd if=/dev/urandom of="$T/ref.raw" bs=64k count=2 seek=40 conv=notrunc status=none
	dd if="$T/ref.raw" of="$T/mnt/$name" bs=64k count=2 skip=40 seek=40 conv=notrunc \
		oflag=direct status=none
	vd_umount "$T/mnt"
	qemu-img compare -q -f raw -F qcow2 "$T/ref.raw" "$target"
	qemu_check "$target"
}

@test "directory mount: after complete the name serves the new image across a remount (same file system: hard link)" {
	mkdir -p "$T/elsewhere"
	complete_in_dir vm1.qcow2 "$T/elsewhere/vm1-moved.qcow2"
	# one file with two names, the operator's target still where it was put
	[ "$(stat -c %i "$T/srcdir/vm1.qcow2")" = "$(stat -c %i "$T/elsewhere/vm1-moved.qcow2")" ]
	[ ! -L "$T/srcdir/vm1.qcow2" ]
}

@test "directory mount: after complete to another file system the name is a symbolic link to it" {
	local other
	other=$(mktemp -d /dev/shm/vdiskfs-test.XXXXXX)
	complete_in_dir vm2.qcow2 "$other/vm2.qcow2"
	[ "$(readlink "$T/srcdir/vm2.qcow2")" = "$other/vm2.qcow2" ]
	rm -rf "$other"
}

@test "pause, resume and a new speed limit, by xattr, control file and vdiskfsctl" {
	mkdir -p "$T/src" "$T/mnt"
	make_image "$T/src/a.raw" raw 32 32
	vd_mount "$T/src" "$T/mnt"
	local v="$T/mnt/a.raw" c1 c2
	run setfattr -n user.vdiskfs.mirror.pause -v 1 "$v"
	[[ "$output" == *"No such process"* ]] # no job
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,speed=4M,granularity=256K" "$v"
	setfattr -n user.vdiskfs.mirror.pause -v 1 "$v"
	[[ "$(mstatus "$v")" == "phase=running "*" speed=4194304 paused=1 error=" ]]
	sleep 0.3 # chunks already issued land
	c1=$(mstatus "$v" | sed 's/.*copied=\([0-9]*\).*/\1/')
	sleep 1
	c2=$(mstatus "$v" | sed 's/.*copied=\([0-9]*\).*/\1/')
	[ "$c1" = "$c2" ] # nothing copied while paused
	[ "$c2" -lt $((32 << 20)) ]
	# guest writes still reach both sides while paused
	dd if=/dev/urandom of="$T/ref.raw" bs=64k count=4 seek=100 conv=notrunc status=none
	dd if="$T/ref.raw" of="$v" bs=64k count=4 skip=100 seek=100 conv=notrunc oflag=direct \
		status=none
	# the control file: lift the limit, resume; the rest takes well under 8 s at 4M
	python3 - "$T/mnt/.vdiskfs" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for line in ("mirror-speed a.raw 0", "mirror-resume a.raw"):
    os.write(fd, line.encode() + b"\n")
    out = os.pread(fd, 1 << 16, 0).decode()
    assert out.startswith("ok: phase=running"), out
try:
    os.write(fd, b"mirror-speed a.raw fast\n")
    raise SystemExit("a bad rate accepted")
except OSError as e:
    assert "bad value \"fast\" for speed" in os.pread(fd, 1 << 16, 0).decode()
PY
	wait_phase "$v" ready 4
	[[ "$(mstatus "$v")" == *" speed=0 paused=0 error=" ]]
	# vdiskfsctl: pause and a new speed in ready, then complete
	"$VDISKFSCTL" pause "$v"
	"$VDISKFSCTL" set-speed "$v" 8M
	[[ "$(mstatus "$v")" == "phase=ready "*" speed=8388608 paused=1 error=" ]]
	"$VDISKFSCTL" resume "$v"
	run "$VDISKFSCTL" set-speed "$v" 12Q
	[ "$status" -eq 1 ]
	"$VDISKFSCTL" complete "$v"
	cmp "$v" "$T/ref.raw"
	run "$VDISKFSCTL" pause "$v"
	[ "$status" -eq 1 ]
	[[ "$output" == *"no mirror is running"* ]]
	vd_umount "$T/mnt"
	cmp "$T/dst.raw" "$T/ref.raw"
}
