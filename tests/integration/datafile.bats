#!/usr/bin/env bats
# qcow2 images whose data lives in an external data file (qemu-img create -o
# data_file=NAME[,data_file_raw=on]): the view reads what qemu-io wrote;
# writes, discards and zeroing through it leave `qemu-img check` clean and
# `qemu-img compare` equal to a raw reference, a raw data file identical to
# the view; SEEK_DATA/SEEK_HOLE agree with qemu-img map; relative names
# resolve against the image's directory, absolute ones are taken as they are;
# backing=deny refuses such images, backing=within-source a data file outside
# the source; a SIGKILL during writes + fsync never corrupts. QEMU 7.2 opens
# a relative data-file name against its working directory, so the qemu tools
# run in the image's directory here.

load helpers
load crash

# fill IMAGE: data qemu-io writes, including guest cluster 0 (host offset 0
# in the data file, told from unallocated by its COPIED flag)
fill() {
	qemu-io -f qcow2 -c 'write -P 0xab 0 100k' -c 'write -P 0xcd 1M 64k' \
		-c 'write -P 0xef 5M 8k' -c 'write -z 6M 64k' "$1" >/dev/null
}

# write_through VIEW: writes into new, partly written and allocated clusters,
# a discard and a zeroing, all fsynced
write_through() {
	python3 - "$1" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.pwrite(fd, b"\x11" * 5000, 3 * 2**20 + 100)   # new cluster, partly
os.pwrite(fd, b"\x22" * 4096, 65536)             # inside cluster 1 (qemu-io's)
os.pwrite(fd, b"\x33" * 3 * 2**20, 8 * 2**20 + 512)  # whole clusters and edges
os.fsync(fd)
os.close(fd)
PY
	fallocate --punch-hole --keep-size -o 1M -l 64k "$1"
	fallocate --zero-range --keep-size -o 0 -l 64k "$1"
	fallocate --punch-hole --keep-size -o $((9 << 20)) -l 200k "$1"
}

@test "data file: read, write, discard, zero; check and compare clean; raw stays the disk" {
	local raw opt
	for raw in off on; do
		rm -rf "$T/src" && mkdir "$T/src" && cd "$T/src"
		opt=data_file=img.data
		[ "$raw" = on ] && opt+=,data_file_raw=on
		qemu-img create -q -f qcow2 -o "$opt" img.qcow2 16M
		fill img.qcow2
		qemu-img convert -f qcow2 -O raw img.qcow2 "$T/ref.raw"
		qemu-img map --output=json img.qcow2 >"$T/before.map"
		cd "$T"
		touch "$T/view"
		vd_mount "$T/src/img.qcow2" "$T/view"
		cmp "$T/view" "$T/ref.raw"
		seek_runs "$T/view" "$T/before.map"
		write_through "$T/view"
		cp "$T/view" "$T/after.raw"
		vd_umount "$T/view"
		[ "$VD_STATUS" -eq 0 ]
		cd "$T/src"
		qemu_check -f qcow2 img.qcow2
		qemu-img compare -f qcow2 -F raw img.qcow2 "$T/after.raw"
		qemu-img map --output=json img.qcow2 >"$T/after.map"
		if [ "$raw" = on ]; then
			cmp img.data "$T/after.raw"
			qemu-img info img.qcow2 | grep -q 'data file raw: true'
		fi
		# nothing of the data went into the qcow2 file
		[ "$(stat -c %s img.qcow2)" -lt $((1 << 20)) ]
		cd "$T"
		# the next session reads the same and finds the same runs
		vd_mount "$T/src/img.qcow2" "$T/view" -o ro
		cmp "$T/view" "$T/after.raw"
		seek_runs "$T/view" "$T/after.map"
		vd_umount "$T/view"
	done
}

@test "data file: fio verify through the view, then check and compare clean" {
	cd "$T"
	qemu-img create -q -f qcow2 -o data_file=img.data,cluster_size=64k img.qcow2 64M
	touch "$T/view"
	vd_mount "$T/img.qcow2" "$T/view"
	fio_verify "$T/view" 24M 32M 12k
	cp --sparse=always "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check -f qcow2 img.qcow2
	qemu-img compare -f qcow2 -F raw img.qcow2 "$T/ref.raw"
}

@test "data file: relative names resolve against the image's directory, absolute ones as named" {
	mkdir "$T/src" "$T/elsewhere" "$T/cwd"
	cd "$T/src"
	qemu-img create -q -f qcow2 -o data_file=rel.data rel.qcow2 16M
	fill rel.qcow2
	qemu-img create -q -f qcow2 -o data_file="$T/elsewhere/abs.data" abs.qcow2 16M
	fill abs.qcow2
	qemu-img convert -f qcow2 -O raw rel.qcow2 "$T/ref.raw"
	# from another working directory, and through a directory mount
	cd "$T/cwd"
	mkdir "$T/mnt"
	vd_mount "$T/src" "$T/mnt"
	cmp "$T/mnt/rel.qcow2" "$T/ref.raw"
	cmp "$T/mnt/abs.qcow2" "$T/ref.raw"
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
}

@test "data file: backing=deny refuses it, within-source refuses one outside the source" {
	mkdir "$T/src" "$T/outside"
	cd "$T/src"
	qemu-img create -q -f qcow2 -o data_file=in.data in.qcow2 4M
	qemu-img create -q -f qcow2 -o data_file="$T/outside/out.data" out.qcow2 4M
	ln -s "$T/outside/out.data" "$T/src/link.data"
	qemu-img create -q -f qcow2 -o data_file=link.data link.qcow2 4M
	cd "$T"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o backing=deny "$T/src/in.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"external data file $T/src/in.data refused by backing=deny"* ]]
	run ! is_mounted "$T/view"
	local img
	for img in out link; do
		run timeout 20 "$VDISKFS" -f -o backing=within-source "$T/src/$img.qcow2" "$T/view"
		echo "$output"
		[ "$status" -ne 0 ]
		[[ "$output" == *"external data file"*"outside"*"refused by backing=within-source"* ]]
		run ! is_mounted "$T/view"
	done
	# inside the source it is served
	vd_mount "$T/src/in.qcow2" "$T/view" -o backing=within-source
	cmp "$T/view" <(head -c 4M /dev/zero)
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
}

@test "data file: SIGKILL during random writes + fsync, three rounds" {
	cd "$T"
	qemu-img create -q -f qcow2 -o data_file=crash.data,cluster_size=64k "$T/crash.qcow2" 64M
	local round
	for round in 1 2 3; do
		crash_round qcow2 "$T/crash.qcow2" "$round" || { cat "$T/vdiskfs.log"; false; }
	done
}

# data_locks FILE: the lock bytes held on FILE, sorted
data_locks() {
	local ino
	ino=$(stat -c %i "$1")
	awk -v ino=":$ino" '$6 ~ ino"$" {print $7 "-" $8}' /proc/locks | sort | tr '\n' ' '
}

@test "data file: it carries the locks QEMU takes on a data file (write shared)" {
	cd "$T"
	qemu-img create -q -f qcow2 -o data_file=img.data img.qcow2 16M
	local mode want got
	touch "$T/view"
	for mode in rw ro; do
		# what qemu-io holds on the data file, opened the same way
		if [ "$mode" = rw ]; then
			(sleep 2 | qemu-io img.qcow2 >/dev/null 2>&1) &
		else
			(sleep 2 | qemu-io -r img.qcow2 >/dev/null 2>&1) &
		fi
		for _ in $(seq 1 40); do
			want=$(data_locks img.data)
			[ -n "$want" ] && break
			sleep 0.05
		done
		wait
		vd_mount "$T/img.qcow2" "$T/view" $([ "$mode" = ro ] && echo -o ro)
		got=$(data_locks img.data)
		vd_umount "$T/view"
		echo "$mode: vdiskfs $got, qemu-io $want"
		[ -n "$want" ] && [ "$got" = "$want" ]
	done
	# another writer of the raw data file is let in, as QEMU lets it
	vd_mount "$T/img.qcow2" "$T/view"
	qemu-io -f raw -c 'write 0 4k' img.data >/dev/null
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
}
