#!/usr/bin/env bats
# Point-in-time push backups (issue 15, vdiskfs-jobs(7) BACKUP): while a guest
# writes, the target is the disk at the job's start (the writer is held while
# the view is copied to a raw reference and the job starts, then goes on);
# full and incremental backups with a persistent bitmap form a chain that
# qemu-img compares equal to the reference; a failed target, a cancel and an
# unmount give the bitmap its bits back and never fail a guest write; bad
# starts change nothing; a SIGKILL leaves the image consistent with every
# acknowledged write.

load helpers
load mirror-helpers

bset() { setfattr -n "user.vdiskfs.backup.$2" -v "$3" "$1"; }

# at_start VIEW REF OPTIONS: hold the writer, copy the view to REF, start a
# backup with OPTIONS (its point in time), let the writer go on
at_start() {
	writer_pause
	cp --sparse=always "$1" "$2"
	bset "$1" start "$3" || { writer_resume; return 1; }
	writer_resume
}

# field VIEW NAME: a field of the backup status line
field() { bstatus "$1" 2>/dev/null | tr ' ' '\n' | sed -n "s/^$2=//p"; }

same() {
	run qemu-img compare -U "$1" "$2"
	[ "$status" -eq 0 ] || {
		echo "$output" >&2
		return 1
	}
}

@test "full backup while a guest writes: the target is the disk at the start" {
	make_image "$T/src.qcow2" qcow2 64 24
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	at_start "$T/view" "$T/at-start.raw" "target=$T/full.qcow2,speed=8M"
	[[ "$(bstatus "$T/view")" == "phase=running target=$T/full.qcow2 format=qcow2 sync=full bitmap= "* ]]
	sleep 1
	[ "$(field "$T/view" rate)" -gt 0 ]
	wait_job_phase backup "$T/view" completed 60
	stop_writer
	# holes are no work: only the allocated data (24M, plus what the writer
	# allocated before the start, in 64K chunks) counts
	total=$(field "$T/view" total)
	[ "$(field "$T/view" copied)" = "$total" ]
	[ "$(field "$T/view" percent)" = 100 ]
	[ "$total" -ge $((24 << 20)) ] && [ "$total" -lt $((64 << 20)) ]
	same "$T/full.qcow2" "$T/at-start.raw"
	cmp "$T/view" "$T/ref.raw" # every guest write landed
	vd_umount "$T/view"
	qemu_check "$T/src.qcow2"
	qemu_check "$T/full.qcow2"
	same "$T/src.qcow2" "$T/ref.raw"
}

@test "pause, resume and a new speed of a running backup (xattr, vdiskfsctl); guest writes go on" {
	make_image "$T/src.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	at_start "$T/view" "$T/at-start.raw" "target=$T/full.qcow2,speed=4M"
	bset "$T/view" pause 1
	[ "$(field "$T/view" paused)" = 1 ]
	sleep 0.5
	c1=$(field "$T/view" copied)
	sleep 1
	[ "$(field "$T/view" copied)" = "$c1" ] # nothing copied while paused
	[ "$(field "$T/view" phase)" = running ]
	"$VDISKFSCTL" set-speed "$T/view" 0 # acts on the view's job: the backup
	[ "$(field "$T/view" speed)" = 0 ]
	"$VDISKFSCTL" resume "$T/view"
	[ "$(field "$T/view" paused)" = 0 ]
	wait_job_phase backup "$T/view" completed 60
	stop_writer
	same "$T/full.qcow2" "$T/at-start.raw"
	run bset "$T/view" pause 1
	[[ "$output" == *"No such process"* ]]
	run bset "$T/view" speed fast
	[[ "$output" == *"Invalid argument"* ]]
	vd_umount "$T/view"
	same "$T/src.qcow2" "$T/ref.raw"
}

@test "raw and vhdx targets of a qcow2 disk under writes" {
	make_image "$T/src.qcow2" qcow2 32 12
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	start_writer "$T/view" 0 32
	at_start "$T/view" "$T/a.raw" "target=$T/b.raw,format=raw,speed=8M"
	wait_job_phase backup "$T/view" completed 60
	at_start "$T/view" "$T/a.vhdx.raw" "target=$T/b.vhdx,format=vhdx,speed=8M"
	wait_job_phase backup "$T/view" completed 60
	stop_writer
	cmp "$T/b.raw" "$T/a.raw"
	same "$T/b.vhdx" "$T/a.vhdx.raw"
	qemu_check "$T/b.vhdx"
}

@test "full with a bitmap, then incremental: the chain is the disk at each start" {
	make_image "$T/src.qcow2" qcow2 64 16
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.bitmap.add -v bm "$T/view"
	start_writer "$T/view" 32 16
	at_start "$T/view" "$T/at-full.raw" "target=$T/full.qcow2,sync=full,bitmap=bm,speed=16M"
	wait_job_phase backup "$T/view" completed 60
	[ "$(field "$T/view" bitmap)" = bm ]
	sleep 0.5
	at_start "$T/view" "$T/at-inc.raw" \
		"target=$T/inc.qcow2,sync=incremental,bitmap=bm,base=$T/full.qcow2,speed=4M"
	[[ "$(bstatus "$T/view")" == "phase=running target=$T/inc.qcow2 format=qcow2 sync=incremental bitmap=bm "* ]]
	wait_job_phase backup "$T/view" completed 60
	# only what the writer changed since the full backup, in [32M, 48M)
	total=$(field "$T/view" total)
	[ "$total" -gt 0 ] && [ "$total" -le $((16 << 20)) ]
	stop_writer
	same "$T/full.qcow2" "$T/at-full.raw"
	same "$T/inc.qcow2" "$T/at-inc.raw"
	run qemu-img info -U --output=json "$T/inc.qcow2"
	[[ "$output" == *"\"backing-filename\": \"$T/full.qcow2\""* ]]
	[[ "$output" == *"\"backing-filename-format\": \"qcow2\""* ]]
	# the writes since the incremental's start make the next one (the
	# writer is stopped: the chain is the view); then nothing is left
	bset "$T/view" start "target=$T/inc2.qcow2,sync=incremental,bitmap=bm,base=$T/inc.qcow2"
	wait_job_phase backup "$T/view" completed 30
	[ "$(field "$T/view" total)" -gt 0 ]
	same "$T/inc2.qcow2" "$T/view"
	# without base=: the last backup with that bitmap in this mount (inc2)
	bset "$T/view" start "target=$T/inc3.qcow2,sync=incremental,bitmap=bm"
	wait_job_phase backup "$T/view" completed 30
	[ "$(field "$T/view" total)" = 0 ]
	same "$T/inc3.qcow2" "$T/view"
	run qemu-img info -U --output=json "$T/inc3.qcow2"
	[[ "$output" == *"\"backing-filename\": \"$T/inc2.qcow2\""* ]]
	vd_umount "$T/view"
	qemu_check "$T/src.qcow2"
	qemu_check "$T/full.qcow2"
	qemu_check "$T/inc.qcow2"
	same "$T/src.qcow2" "$T/ref.raw"
}

@test "a target that fills up fails the job (ENOSPC), not the guest; the bitmap keeps its bits" {
	make_image "$T/src.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.bitmap.add -v bm "$T/view"
	bset "$T/view" start "target=$T/full.qcow2,bitmap=bm"
	wait_job_phase backup "$T/view" completed 60
	start_writer "$T/view" 0 16
	sleep 0.5
	stop_writer
	mkdir "$T/small"
	mount -t tmpfs -o size=1M tmpfs "$T/small"
	start_writer "$T/view" 0 16 2
	bset "$T/view" start "target=$T/small/inc.qcow2,sync=incremental,bitmap=bm,base=$T/full.qcow2" ||
		{ umount "$T/small"; false; }
	wait_job_phase backup "$T/view" failed 60 || { umount "$T/small"; false; }
	stop_writer || { umount "$T/small"; false; }
	run bstatus "$T/view"
	umount "$T/small"
	[[ "$output" == *"error="*"No space left on device"* ]]
	cmp "$T/view" "$T/ref.raw" # every guest write landed
	# the failed job gave the bits back: an incremental now has every
	# change since the full backup
	cp --sparse=always "$T/view" "$T/at-inc.raw"
	bset "$T/view" start "target=$T/inc.qcow2,sync=incremental,bitmap=bm,base=$T/full.qcow2"
	wait_job_phase backup "$T/view" completed 60
	same "$T/inc.qcow2" "$T/at-inc.raw"
	vd_umount "$T/view"
	qemu_check "$T/src.qcow2"
}

@test "cancel and unmount end a backup and give the bitmap its bits back" {
	make_image "$T/src.qcow2" qcow2 64 32
	qemu-img create -q -f qcow2 "$T/empty.qcow2" 64M
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.bitmap.add -v bm "$T/view"
	dd if=/dev/urandom of="$T/view" bs=1M seek=4 count=1 conv=notrunc,fsync status=none
	bset "$T/view" start "target=$T/full.qcow2,bitmap=bm,speed=1M"
	[ "$(field "$T/view" phase)" = running ]
	bset "$T/view" cancel 1 # answered once the job ended
	[ "$(field "$T/view" phase)" = cancelled ]
	run bset "$T/view" cancel 1
	[ "$status" -ne 0 ]
	[[ "$output" == *"No such process"* ]]
	# the bits are back: an incremental copies exactly that megabyte
	bset "$T/view" start "target=$T/inc1.qcow2,sync=incremental,bitmap=bm,base=$T/empty.qcow2"
	wait_job_phase backup "$T/view" completed 30
	[ "$(field "$T/view" total)" = $((1 << 20)) ]
	# and an unmount cancels: the bits survive into the next session
	dd if=/dev/urandom of="$T/view" bs=1M seek=8 count=2 conv=notrunc,fsync status=none
	bset "$T/view" start "target=$T/full2.qcow2,bitmap=bm,speed=1M"
	vd_umount "$T/view"
	grep -q "backup to $T/full2.qcow2 cancelled" "$T/vdiskfs.log"
	qemu_check "$T/src.qcow2"
	vd_mount "$T/src.qcow2" "$T/view"
	bset "$T/view" start "target=$T/inc2.qcow2,sync=incremental,bitmap=bm,base=$T/empty.qcow2"
	wait_job_phase backup "$T/view" completed 30
	[ "$(field "$T/view" total)" = $((2 << 20)) ]
}

@test "refused starts return the errno, say why and change nothing" {
	make_image "$T/src.qcow2" qcow2 16 4
	make_image "$T/src.raw" raw 16 4
	touch "$T/view" "$T/rview"
	refused() { # ERRNO-TEXT VIEW VALUE
		run bset "$2" start "$3"
		[ "$status" -ne 0 ]
		[[ "$output" == *"$1"* ]] || {
			echo "$3: $output" >&2
			return 1
		}
		[ -n "$(getfattr --only-values -n user.vdiskfs.last-error "$2")" ]
		[ "$(bstatus "$2")" = "phase=none" ]
	}
	# a raw image keeps no bitmaps (one daemon at a time: vd_umount waits
	# for the newest)
	vd_mount "$T/src.raw" "$T/rview"
	refused "Operation not supported" "$T/rview" "target=$T/t.qcow2,bitmap=bm"
	[ ! -e "$T/t.qcow2" ]
	vd_umount "$T/rview"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.bitmap.add -v bm "$T/view"
	refused "Invalid argument" "$T/view" "target=$T/t.qcow2,colour=blue"
	refused "Invalid argument" "$T/view" "target=t.qcow2"
	refused "Invalid argument" "$T/view" "target=$T/view"
	refused "Invalid argument" "$T/view" "target=$T/t.qcow2,sync=incremental,base=$T/src.qcow2"
	refused "Invalid argument" "$T/view" "target=$T/t.qcow2,sync=incremental,bitmap=bm"
	refused "Invalid argument" "$T/view" "target=$T/t.qcow2,sync=incremental,bitmap=bm,base=$T/src.qcow2,format=raw"
	refused "No such file or directory" "$T/view" "target=$T/t.qcow2,bitmap=nosuch"
	refused "File exists" "$T/view" "target=$T/src.raw"
	refused "Invalid argument" "$T/view" "view=snap" # a pull backup needs a directory mount
	[ ! -e "$T/t.qcow2" ]
	[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" = "backup: view=snap: a pull backup needs a directory mount" ]
	# one job per view: a mirror refuses a backup and the other way round
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/m.qcow2,speed=1M" "$T/view"
	refused "Device or resource busy" "$T/view" "target=$T/t.qcow2"
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	bset "$T/view" start "target=$T/b.qcow2,speed=1M"
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/m2.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Device or resource busy"* ]]
	run bset "$T/view" start "target=$T/b2.qcow2"
	[[ "$output" == *"Device or resource busy"* ]]
	bset "$T/view" cancel 1
	[ ! -e "$T/m2.qcow2" ] && [ ! -e "$T/b2.qcow2" ] && [ ! -e "$T/t.qcow2" ]
	# a refused start keeps the last job's status; so does an inactivate
	run bset "$T/view" start "target=$T/t.qcow2,bitmap=nosuch"
	[ "$status" -ne 0 ]
	[ "$(field "$T/view" phase)" = cancelled ] && [ "$(field "$T/view" target)" = "$T/b.qcow2" ]
	bset "$T/view" start "target=$T/b3.qcow2,speed=1M"
	run setfattr -n user.vdiskfs.active -v 0 "$T/view"
	[[ "$output" == *"Device or resource busy"* ]]
	bset "$T/view" cancel 1
	vd_umount "$T/view"
	qemu_check "$T/src.qcow2"
}

@test "SIGKILL during a backup: the image is consistent and holds every acknowledged write" {
	make_image "$T/src.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.bitmap.add -v bm "$T/view"
	start_writer "$T/view" 0 64
	at_start "$T/view" "$T/at-start.raw" "target=$T/full.qcow2,bitmap=bm,speed=4M"
	sleep 1
	stop_writer # its writes are acknowledged and flushed
	[ "$(field "$T/view" phase)" = running ]
	vd_kill9 "$T/view"
	qemu_check "$T/src.qcow2"
	same "$T/src.qcow2" "$T/ref.raw"
}

@test "control file, JSON and vdiskfsctl run backups in a directory mount" {
	mkdir "$T/src" "$T/mnt"
	make_image "$T/src/a.qcow2" qcow2 16 8
	vd_mount "$T/src" "$T/mnt"
	python3 - "$T/mnt/.vdiskfs" "$T" <<'PY'
import errno, json, os, sys, time
ctl, t = sys.argv[1], sys.argv[2]
fd = os.open(ctl, os.O_RDWR)
def cmd(line):
    os.write(fd, line.encode() + b"\n")
    return os.pread(fd, 1 << 20, 0).decode()
for bad, err in (("backup-start a.qcow2 target=rel", errno.EINVAL),
                 ("backup-start nosuch.qcow2 target=" + t + "/x.raw", errno.ENOENT),
                 ("backup-cancel a.qcow2", errno.ESRCH)):
    try:
        cmd(bad)
        raise SystemExit(bad + ": accepted")
    except OSError as e:
        assert e.errno == err, (bad, e)
out = cmd("backup-start a.qcow2 target=%s/b.raw format=raw" % t)
assert out.startswith("ok: phase="), out
for _ in range(200):
    if cmd("backup-status a.qcow2").startswith("phase=completed"):
        break
    time.sleep(0.05)
b = json.loads(cmd("status"))["images"][0]["backup"]
assert b["phase"] == "completed" and b["target"] == t + "/b.raw" and b["format"] == "raw", b
assert b["copied"] == b["total"] == 8 << 20 and b["percent"] == 100 and b["error"] is None, b
PY
	"$VDISKFSCTL" backup start "$T/mnt/a.qcow2" "target=$T/c.vhdx" format=vhdx --wait
	run "$VDISKFSCTL" backup status "$T/mnt/a.qcow2"
	[[ "$output" == "phase=completed target=$T/c.vhdx format=vhdx "* ]]
	run "$VDISKFSCTL" backup cancel "$T/mnt/a.qcow2"
	[ "$status" -eq 1 ]
	vd_umount "$T/mnt"
	cmp "$T/b.raw" "$T/ref.raw"
	same "$T/c.vhdx" "$T/ref.raw"
}

@test "pull backup: a frozen file of the disk at the start, the delta through SEEK_DATA, end and cancel" {
	mkdir "$T/src" "$T/mnt"
	make_image "$T/src/a.qcow2" qcow2 64 16
	vd_mount "$T/src" "$T/mnt"
	v=$T/mnt/a.qcow2
	setfattr -n user.vdiskfs.bitmap.add -v bm "$v"
	run bset "$v" start "view=a.qcow2,bitmap=bm"
	[[ "$output" == *"File exists"* ]]
	run bset "$v" start "view=snap,target=$T/x.qcow2"
	[[ "$output" == *"Invalid argument"* ]]
	start_writer "$v" 32 16 # the delta stays within [32M, 48M)
	at_start "$v" "$T/at-full.raw" "view=snap,bitmap=bm"
	[[ "$(bstatus "$v")" == "phase=running target= format= sync=full bitmap=bm "*" view=snap type=backup error=" ]]
	run dd if=/dev/zero of="$T/mnt/snap" bs=4k count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	sleep 0.5
	cp --sparse=always "$T/mnt/snap" "$T/full.raw"
	cmp "$T/full.raw" "$T/at-full.raw"
	bset "$v" end 1
	[ ! -e "$T/mnt/snap" ]
	[ "$(field "$v" phase)" = completed ]
	sleep 0.5
	at_start "$v" "$T/at-inc.raw" "view=inc,sync=incremental,bitmap=bm"
	sleep 0.3
	# the frozen file is the whole disk at the start; SEEK_DATA finds only
	# what changed since the full one, and that delta on the full copy
	# rebuilds it
	cmp "$T/mnt/inc" "$T/at-inc.raw"
	python3 - "$T/mnt/inc" "$T/full.raw" "$(field "$v" total)" <<'PY'
import os, sys
src, dst, total = sys.argv[1], sys.argv[2], int(sys.argv[3])
fd, out = os.open(src, os.O_RDONLY), os.open(dst, os.O_WRONLY)
size, pos, got = os.fstat(fd).st_size, 0, 0
while True:
    try:
        pos = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError:
        break
    end = os.lseek(fd, pos, os.SEEK_HOLE)
    os.pwrite(out, os.pread(fd, end - pos, pos), pos)
    got += end - pos
    pos = end
assert got == total and 0 < total <= 16 << 20, (got, total)
PY
	cmp "$T/full.raw" "$T/at-inc.raw"
	# a cancel (control file) takes the file away and gives the bits back
	echo "backup-cancel a.qcow2" >"$T/mnt/.vdiskfs"
	[ ! -e "$T/mnt/inc" ]
	[ "$(field "$v" phase)" = cancelled ]
	inc_total=$(field "$v" total)
	bset "$v" start "view=inc2,sync=incremental,bitmap=bm"
	[ "$(field "$v" total)" -ge "$inc_total" ]
	stop_writer
	# an unmount ends a pull backup too
	vd_umount "$T/mnt"
	grep -q "pull backup inc2 cancelled" "$T/vdiskfs.log"
	qemu_check "$T/src/a.qcow2"
	same "$T/src/a.qcow2" "$T/ref.raw"
}
