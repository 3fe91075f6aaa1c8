#!/usr/bin/env bats
# qcow2 through the FUSE view: every fixture reads like `qemu-img convert -O
# raw`; fio verify writes then a clean `qemu-img check` and `qemu-img compare`;
# overlapping writers; SIGKILL during random writes + fsync never corrupts
# (check exits 0 or 3) and loses no write acknowledged before an fsync.

load helpers
load crash

fixtures() {
	mkdir -p "$T/fx"
	bash "$VDISKFS_SRC/tests/fixtures/qcow2-fixtures.sh" "$T/fx" >"$T/fx.log" 2>&1 ||
		{ cat "$T/fx.log"; false; }
}

@test "qcow2: every fixture reads like qemu-img convert" {
	fixtures
	mkdir "$T/mnt"
	vd_mount "$T/fx" "$T/mnt" -o ro
	local f n
	for f in "$T"/fx/*.qcow2; do
		n=$(basename "$f" .qcow2)
		[ "$n" = big ] && continue
		cmp "$T/mnt/$n.qcow2" "$T/fx/$n.raw" || { echo "view of $n differs"; false; }
	done
	# the 6 GiB image: size, and the data above 4 GiB
	[ "$(stat -c %s "$T/mnt/big.qcow2")" -eq $((6 << 30)) ]
	cmp <(dd if="$T/mnt/big.qcow2" bs=1M skip=5119 count=3 status=none) \
		<(dd if="$T/fx/big.raw" bs=1M skip=5119 count=3 status=none)
}

@test "qcow2: fio verify through the view, then check and compare clean" {
	qemu-img create -q -f qcow2 "$T/img.qcow2" 256M
	touch "$T/view"
	vd_mount "$T/img.qcow2" "$T/view"
	fio --name=direct --filename="$T/view" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=io_uring --direct=1 --size=96M --offset=0 --verify=crc32c \
		--verify_fatal=1 --do_verify=1 \
		--name=buffered --filename="$T/view" --rw=randwrite --bs=12k --iodepth=8 \
		--ioengine=io_uring --direct=0 --size=96M --offset=128M --verify=crc32c \
		--verify_fatal=1 --do_verify=1 >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
	cp --sparse=always "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/img.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/img.qcow2" "$T/ref.raw"
}

@test "qcow2: overlapping writers over a backing file and a snapshot" {
	head -c 32M /dev/urandom >"$T/base.raw"
	qemu-img create -q -f qcow2 -b base.raw -F raw "$T/ov.qcow2" 32M
	qemu-io -f qcow2 -c 'write -P 0x5 0 8M' "$T/ov.qcow2" >/dev/null
	qemu-img snapshot -c s1 "$T/ov.qcow2"
	qemu-img convert -l snapshot.name=s1 -O raw "$T/ov.qcow2" "$T/s1.raw"
	touch "$T/view"
	vd_mount "$T/ov.qcow2" "$T/view"
	fio --name=w --filename="$T/view" --rw=randwrite --bs=2k --iodepth=8 --numjobs=4 \
		--ioengine=io_uring --direct=1 --size=16M --offset=0 --randrepeat=0 \
		--group_reporting >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
	cp --sparse=always "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/ov.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/ov.qcow2" "$T/ref.raw"
	qemu-img convert -l snapshot.name=s1 -O raw "$T/ov.qcow2" "$T/s1-after.raw"
	cmp "$T/s1.raw" "$T/s1-after.raw"
}

@test "qcow2: SIGKILL during random writes + fsync, three rounds" {
	qemu-img create -q -f qcow2 -o cluster_size=64k "$T/crash.qcow2" 64M
	local round
	for round in 1 2 3; do
		crash_round qcow2 "$T/crash.qcow2" "$round" || { cat "$T/vdiskfs.log"; false; }
	done
}
