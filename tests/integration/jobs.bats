#!/usr/bin/env bats
# The live jobs beside the mirror (vdiskfs-jobs(7)): a background mirror, a
# mirror of the top image only, the live external snapshot, stream and
# commit, each while a guest writes, checked with qemu-img against a raw
# reference the writer keeps.

load helpers
load mirror-helpers

# chain: base.qcow2 (random data in [0, 16M)), mid.qcow2 over it (data in
# [8M, 24M), zeroes written over [2M, 3M)) and top.qcow2 over that (data in
# [20M, 28M)), all 64M; $T/ref.raw reads like top. Backing names are absolute.
make_chain() {
	make_image "$T/base.qcow2" qcow2 64 16
	qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/mid.qcow2" 64M
	qemu-io -f qcow2 -c "write -P 0x5a 8M 16M" -c "write -z 2M 1M" "$T/mid.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b "$T/mid.qcow2" -F qcow2 "$T/top.qcow2" 64M
	qemu-io -f qcow2 -c "write -P 0xa5 20M 8M" "$T/top.qcow2" >/dev/null
	qemu-img convert -O raw "$T/top.qcow2" "$T/ref.raw"
}

# field LINE KEY: the value of KEY=... in a status line
field() { sed -n "s/.* $2=\([^ ]*\).*/\1/p" <<<"$1"; }

# backing_of IMAGE: the backing file qemu-img names (empty: none)
backing_of() {
	qemu-img info -U --output=json "$1" |
		python3 -c 'import json,sys; print(json.load(sys.stdin).get("backing-filename", ""))'
}

@test "background mirror: the copier converges while the guest writes, complete drains the rest" {
	make_image "$T/src.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	# the guest writes during the first pass (a writer at full speed dirties
	# faster than any copier: background mode converges once it slows down)
	start_writer "$T/view" 0 64
	setfattr -n user.vdiskfs.mirror.start \
		-v "target=$T/dst.qcow2,mode=background,speed=32M,granularity=256K" "$T/view"
	sleep 1
	stop_writer
	wait_phase "$T/view" ready 60
	st=$(mstatus "$T/view")
	[ "$(field "$st" type)" = mirror ]
	[ "$(field "$st" percent)" = 100 ]
	# while ready and at complete the guest keeps writing: complete copies
	# what is dirty then, with the guest's requests parked
	start_writer "$T/view" 0 64
	sleep 0.5
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=completed target=$T/dst.qcow2"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/dst.qcow2" ]
	stop_writer
	vd_umount "$T/view"
	qemu_check "$T/dst.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/dst.qcow2" "$T/ref.raw"
}

@test "background mirror in ready: paced while the guest outruns it, caught up once it stops" {
	make_image "$T/src.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/src.qcow2" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.qcow2,mode=background" "$T/view"
	wait_phase "$T/view" ready 60
	# a writer at full speed over the whole disk dirties every 64 KiB chunk
	# faster than the copier copies: it slows to a chunk every 100 ms...
	start_writer "$T/view" 0 64
	sleep 3
	stop_writer
	st=$(mstatus "$T/view")
	[[ "$st" == "phase=ready"* ]]
	# ...and once the dirty count falls again it copies at full speed, down
	# to what ready allows (16 MiB) within seconds, not minutes
	for i in $(seq 1 150); do
		dirty=$(field "$(mstatus "$T/view")" dirty)
		[ "$dirty" -le $((16 << 20)) ] && break
		sleep 0.1
	done
	echo "dirty after the writer: $(field "$st" dirty), now $dirty" >&2
	[ "$dirty" -le $((16 << 20)) ]
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=completed target=$T/dst.qcow2"* ]]
	vd_umount "$T/view"
	qemu_check "$T/dst.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/dst.qcow2" "$T/ref.raw"
}

@test "background mirror: writes land on the source only until complete" {
	make_image "$T/src.raw" raw 16 8
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,mode=background,speed=1M" "$T/view"
	setfattr -n user.vdiskfs.mirror.pause -v 1 "$T/view"
	# past what the throttled copier has reached: the destination still
	# reads zeroes there while the source has the guest's bytes
	dd if=/dev/urandom of="$T/blk" bs=64K count=1 status=none
	dd if="$T/blk" of="$T/view" bs=64K seek=200 count=1 conv=notrunc oflag=direct status=none
	cmp -n 65536 "$T/blk" <(dd if="$T/src.raw" bs=64K skip=200 count=1 status=none)
	cmp -n 65536 /dev/zero <(dd if="$T/dst.raw" bs=64K skip=200 count=1 status=none)
	[ "$(field "$(mstatus "$T/view")" dirty)" -gt 0 ]
	setfattr -n user.vdiskfs.mirror.resume -v 1 "$T/view"
	setfattr -n user.vdiskfs.mirror.speed -v 0 "$T/view"
	wait_phase "$T/view" ready 60
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	cmp -n 65536 "$T/blk" <(dd if="$T/dst.raw" bs=64K skip=200 count=1 status=none)
	cmp "$T/src.raw" "$T/dst.raw"
}

@test "sync=top: only the top image is copied and the target shares its backing file" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	start_writer "$T/view" 32 16
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.qcow2,sync=top" "$T/view"
	wait_phase "$T/view" ready 60
	st=$(mstatus "$T/view")
	# the top held 8M when the job counted; the writer adds what it wrote first
	[ "$(field "$st" total)" -ge $((8 << 20)) ]
	[ "$(field "$st" total)" -lt $((24 << 20)) ]
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	stop_writer
	vd_umount "$T/view"
	[ "$(backing_of "$T/dst.qcow2")" = "$T/mid.qcow2" ]
	qemu_check "$T/dst.qcow2"
	qemu-img compare -F raw "$T/dst.qcow2" "$T/ref.raw"
	# nothing of the backing chain was copied into the target
	run qemu-io -f qcow2 -c "alloc 0 8M" "$T/dst.qcow2"
	[[ "$output" == *"0/8388608 bytes allocated"* ]]
}

@test "sync=top to a raw target is refused: raw has no backing file" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.raw,format=raw,sync=top" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Invalid argument"* ]]
	[ ! -e "$T/dst.raw" ]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" == *"raw"* ]]
}

@test "snapshot: the view moves onto a new overlay; the old image is never written again" {
	make_image "$T/disk.qcow2" qcow2 64 32
	touch "$T/view"
	vd_mount "$T/disk.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	sleep 0.5
	setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/ov.qcow2" ]
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "$T/disk.qcow2" ]
	qemu-img convert -U -O raw "$T/disk.qcow2" "$T/at-snapshot.raw"
	stat1=$(stat -c %s.%Y "$T/disk.qcow2")
	md1=$(md5sum <"$T/disk.qcow2")
	sleep 1
	stop_writer
	sync
	[ "$(md5sum <"$T/disk.qcow2")" = "$md1" ]
	# refused: an existing file, a relative name; nothing changes
	run setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/view"
	[[ "$output" == *"File exists"* ]]
	run setfattr -n user.vdiskfs.snapshot -v "rel.qcow2" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/ov.qcow2" ]
	vd_umount "$T/view"
	# not even closing it wrote the old image: it was made final at the snapshot
	[ "$(stat -c %s.%Y "$T/disk.qcow2")" = "$stat1" ]
	[ "$(md5sum <"$T/disk.qcow2")" = "$md1" ]
	qemu_check "$T/disk.qcow2"
	qemu-img compare -F raw "$T/disk.qcow2" "$T/at-snapshot.raw"
	! cmp -s "$T/at-snapshot.raw" "$T/ref.raw" # the writer went on in the overlay
	qemu_check "$T/ov.qcow2"
	[ "$(backing_of "$T/ov.qcow2")" = "$T/disk.qcow2" ]
	qemu-img compare -F raw "$T/ov.qcow2" "$T/ref.raw"
}

@test "snapshot of a directory mount's view is refused with the reason" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 16M
	vd_mount "$T/src" "$T/mnt"
	run setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/mnt/a.qcow2"
	[ "$status" -ne 0 ]
	[[ "$output" == *"not supported"* ]]
	[ ! -e "$T/ov.qcow2" ]
}

@test "stream: the backing chain's data moves into the top while the guest writes; the link goes" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	setfattr -n user.vdiskfs.stream.start -v 1 "$T/view"
	wait_phase "$T/view" completed 60 stream
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "" ]
	stop_writer
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "" ]
	qemu_check "$T/top.qcow2"
	qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
}

@test "stream with base=: the data above the base moves up; the top then backs onto the base" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	setfattr -n user.vdiskfs.stream.start -v "base=$T/base.qcow2,speed=64M" "$T/view"
	wait_phase "$T/view" completed 60 stream
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "$T/base.qcow2" ]
	qemu_check "$T/top.qcow2"
	qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
}

@test "stream and commit over a backing file shorter than the view" {
	# base 64M with data everywhere, mid 32M over it, top 64M over mid:
	# past mid's end the view reads zeroes, not base's data
	make_image "$T/base.qcow2" qcow2 64 64
	qemu-img create -q -f qcow2 -b "$T/base.qcow2" -F qcow2 "$T/mid.qcow2" 32M
	qemu-io -f qcow2 -c "write -P 0x11 1M 1M" "$T/mid.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -b "$T/mid.qcow2" -F qcow2 "$T/top.qcow2" 64M
	qemu-io -f qcow2 -c "write -P 0x22 40M 1M" "$T/top.qcow2" >/dev/null
	qemu-img convert -O raw "$T/top.qcow2" "$T/ref.raw"
	cp "$T/top.qcow2" "$T/top2.qcow2"
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	setfattr -n user.vdiskfs.stream.start -v "base=$T/base.qcow2" "$T/view"
	wait_phase "$T/view" completed 60 stream
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "$T/base.qcow2" ]
	qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
	# committing the short image into the long base would change what the
	# image above reads past its end: refused, the chain unchanged
	vd_mount "$T/top2.qcow2" "$T/view"
	run setfattr -n user.vdiskfs.commit.start -v "top=$T/mid.qcow2" "$T/view"
	[[ "$output" == *"not supported"* ]]
	[[ "$(getfattr --only-values -n user.vdiskfs.last-error "$T/view")" == *"shorter than"* ]]
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$(backing_of "$T/top2.qcow2")" = "$T/mid.qcow2" ]
}

@test "commit of the active image: ready, complete moves the view onto the base" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	setfattr -n user.vdiskfs.commit.start -v 1 "$T/view"
	wait_phase "$T/view" ready 60 commit
	setfattr -n user.vdiskfs.commit.complete -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/mid.qcow2" ]
	stop_writer
	vd_umount "$T/view"
	qemu_check "$T/mid.qcow2"
	qemu_check "$T/base.qcow2"
	qemu-img compare -F raw "$T/mid.qcow2" "$T/ref.raw"
}

@test "commit of an intermediate image ends on its own and relinks the chain" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	setfattr -n user.vdiskfs.commit.start -v "top=$T/mid.qcow2,base=$T/base.qcow2" "$T/view"
	wait_phase "$T/view" completed 60 commit
	[ "$(getfattr --only-values -n user.vdiskfs.backing "$T/view")" = "$T/base.qcow2" ]
	stop_writer
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "$T/base.qcow2" ]
	qemu_check "$T/top.qcow2"
	qemu_check "$T/base.qcow2"
	qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
}

@test "commit below a read-only image relinks that image, which stays read-only" {
	make_chain
	qemu-img create -q -f qcow2 -b "$T/top.qcow2" -F qcow2 "$T/act.qcow2" 64M
	touch "$T/view"
	vd_mount "$T/act.qcow2" "$T/view"
	start_writer "$T/view" 0 64
	setfattr -n user.vdiskfs.commit.start -v "top=$T/mid.qcow2" "$T/view"
	wait_phase "$T/view" completed 60 commit
	stop_writer
	# the relinked image is a backing file again: QEMU may read it beside us
	qemu-io -f qcow2 -r -c "read 0 64k" "$T/top.qcow2" >/dev/null
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "$T/base.qcow2" ]
	[ "$(backing_of "$T/act.qcow2")" = "$T/top.qcow2" ]
	for img in act top base; do qemu_check "$T/$img.qcow2"; done
	qemu-img compare -F raw "$T/act.qcow2" "$T/ref.raw"
}

@test "commit cancel leaves the chain as it was and the base read-only again" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	setfattr -n user.vdiskfs.commit.start -v "speed=1M" "$T/view"
	[[ "$(mstatus "$T/view" commit)" == "phase=running target=$T/mid.qcow2"* ]]
	setfattr -n user.vdiskfs.commit.cancel -v 1 "$T/view"
	[[ "$(mstatus "$T/view" commit)" == "phase=none" ]]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/top.qcow2" ]
	# QEMU may read the base again (our write lock is gone)
	qemu-io -f qcow2 -r -c "read 0 64k" "$T/mid.qcow2" >/dev/null
	vd_umount "$T/view"
	[ "$(backing_of "$T/top.qcow2")" = "$T/mid.qcow2" ]
	qemu_check "$T/mid.qcow2"
	qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
}

@test "jobs: refused starts return their errno and change nothing; status and JSON name the job" {
	make_chain
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	run setfattr -n user.vdiskfs.stream.start -v "base=$T/nosuch.qcow2" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.stream.start -v "target=$T/x" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.vdiskfs.commit.start -v "top=$T/base.qcow2" "$T/view"
	[[ "$output" == *"Invalid argument"* ]] # the bottom has nothing to commit into
	run setfattr -n user.vdiskfs.commit.complete -v 1 "$T/view"
	[[ "$output" == *"No such process"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.jobs "$T/view")" = "[]" ]
	setfattr -n user.vdiskfs.commit.start -v "speed=1M" "$T/view"
	# one job at a time
	run setfattr -n user.vdiskfs.stream.start -v 1 "$T/view"
	[[ "$output" == *"Device or resource busy"* ]]
	run setfattr -n user.vdiskfs.snapshot -v "$T/ov.qcow2" "$T/view"
	[[ "$output" == *"Device or resource busy"* ]]
	run setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[[ "$output" == *"No such process"* ]]
	sleep 1.5
	getfattr --only-values -n user.vdiskfs.jobs "$T/view" | python3 -c '
import json, sys
j = json.load(sys.stdin)
assert len(j) == 1 and j[0]["type"] == "commit" and j[0]["phase"] == "running", j
assert 0 < j[0]["copied"] < j[0]["total"] and 0 <= j[0]["percent"] < 100, j
assert 500000 < j[0]["rate"] < 2000000 and j[0]["eta"] > 0, j'
	setfattr -n user.vdiskfs.commit.cancel -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.jobs "$T/view")" = "[]" ]
}

@test "SIGKILL during a commit and a stream: every image of the chain checks clean and reads the same" {
	for job in commit stream; do
		make_chain
		touch "$T/view"
		vd_mount "$T/top.qcow2" "$T/view"
		start_writer "$T/view" 0 64
		sleep 0.3
		stop_writer # written and fsynced
		setfattr -n user.vdiskfs.$job.start -v "speed=4M" "$T/view"
		sleep 1.5
		vd_kill9 "$T/view"
		# no corruption (leaked clusters of the unfinished copy are fine)
		for img in top mid base; do
			run qemu-img check "$T/$img.qcow2"
			[ "$status" -eq 0 ] || [ "$status" -eq 3 ] || { echo "$output" >&2; false; }
		done
		qemu-img compare -F raw "$T/top.qcow2" "$T/ref.raw"
		rm -f "$T"/*.qcow2 "$T/ref.raw"
	done
}
