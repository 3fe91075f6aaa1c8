#!/usr/bin/env bats
# qcow2 through the FUSE view: every fixture reads like `qemu-img convert -O
# raw`; fio verify writes then a clean `qemu-img check` and `qemu-img compare`;
# overlapping writers; partial writes into snapshot-shared extended-L2
# clusters against qemu-io; growing over a longer backing file (v3, v2);
# SIGKILL during random writes + fsync never corrupts (check exits 0 or 3) and
# loses no write acknowledged before an fsync; an image written through its
# view and then opened as a backing file is flushed; the file grown ahead of
# allocation is cut back at unmount; SEEK_DATA/SEEK_HOLE agree
# with qemu-img map; st_blocks counts the clusters the image holds; images
# whose refcounts make allocation fail (shared/repro, and hostile ones made
# here) fail the request with EIO or are refused at open, never crash the
# daemon, and leave no corruption qemu-img check did not see before.

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
	fio_verify "$T/view" 96M 128M 12k
	cp --sparse=always "$T/view" "$T/ref.raw"
	# the image file grows ahead of allocation while mounted (8 MiB steps)
	local grown
	grown=$(stat -c %s "$T/img.qcow2")
	[ $((grown % (8 << 20))) -eq 0 ]
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/img.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/img.qcow2" "$T/ref.raw"
	# and is cut back to where the image ends when it closes
	local end
	end=$(qemu-img check --output=json "$T/img.qcow2" | python3 -c 'import json,sys; print(json.load(sys.stdin)["image-end-offset"])')
	echo "grown $grown, end $end, now $(stat -c %s "$T/img.qcow2")"
	[ "$end" -lt "$grown" ]
	[ "$(stat -c %s "$T/img.qcow2")" -eq "$end" ]
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

# pwrite_view VIEW PATTERN OFFSET LENGTH: one write of LENGTH bytes of PATTERN
pwrite_view() {
	python3 -c 'import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY)
os.pwrite(fd, bytes([int(sys.argv[2], 0)]) * int(sys.argv[4]), int(sys.argv[3]))
os.close(fd)' "$@"
}

@test "qcow2: partial writes into unallocated subclusters shared with a snapshot" {
	head -c 3M /dev/urandom >"$T/base.raw"
	qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k -b base.raw -F raw \
		"$T/ov.qcow2" 4M
	qemu-io -f qcow2 -c 'write -P 0x11 8k 4k' -c 'write -z 20k 4k' -c 'write -P 0x12 94k 2k' \
		-c 'write -P 0x13 200k 2k' -c 'write -P 0x15 256k 2k' -c 'write -z 260k 4k' \
		-c 'write -P 0x14 3080k 2k' "$T/ov.qcow2" >/dev/null
	qemu-img snapshot -c s1 "$T/ov.qcow2"
	qemu-img convert -l snapshot.name=s1 -O raw "$T/ov.qcow2" "$T/s1.raw"
	cp "$T/ov.qcow2" "$T/ref.qcow2"
	touch "$T/view"
	# direct_io: the writes reach vdiskfs with their own offsets and lengths
	vd_mount "$T/ov.qcow2" "$T/view" -o direct_io
	local w cmds=()
	# pattern offset length: backed, two subclusters, around whole ones,
	# a zero subcluster, past the backing file, across two clusters
	for w in "0x61 1000 100" "0x62 66536 3000" "0x63 199608 6000" "0x64 267144 100" \
		"0x65 3146828 10" "0x66 326680 2000"; do
		set -- $w
		pwrite_view "$T/view" "$1" "$2" "$3"
		cmds+=(-c "write -P $1 $2 $3")
	done
	cp "$T/view" "$T/view.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/ov.qcow2"
	qemu-io -f qcow2 "${cmds[@]}" "$T/ref.qcow2" >/dev/null
	qemu-img compare "$T/ov.qcow2" "$T/ref.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/ov.qcow2" "$T/view.raw"
	qemu-img convert -l snapshot.name=s1 -O raw "$T/ov.qcow2" "$T/s1-after.raw"
	cmp "$T/s1.raw" "$T/s1-after.raw"
}

# concurrent_chunks FILE WRITERS: WRITERS processes write 3000-byte chunks,
# 5000 bytes apart, over the first 3 MiB of FILE (so neighbouring chunks of
# different writers share clusters); chunk i holds byte (i * 7 + 1) % 256
concurrent_chunks() {
	python3 - "$@" <<'PY'
import os, sys
path, writers = sys.argv[1], int(sys.argv[2])
def run(k):
    fd = os.open(path, os.O_WRONLY)
    for i in range(k, (3 << 20) // 5000, writers):
        os.pwrite(fd, bytes([(i * 7 + 1) % 256]) * 3000, i * 5000)
    os.close(fd)
pids = []
for k in range(writers):
    pid = os.fork()
    if pid == 0:
        run(k)
        os._exit(0)
    pids.append(pid)
sys.exit(max(os.waitpid(p, 0)[1] for p in pids) != 0)
PY
}

@test "qcow2: concurrent partial writes over snapshot-shared, backing and compressed clusters match a reference" {
	head -c 4M /dev/urandom >"$T/base.raw"
	qemu-img create -q -f qcow2 -b base.raw -F raw "$T/ov.qcow2" 4M
	# [0, 1M) data shared with a snapshot, [1M, 2M) backing data only,
	# [2M, 3M) compressed clusters
	qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' -c 'write -c -P 0x3c 2M 1M' "$T/ov.qcow2" >/dev/null
	qemu-img snapshot -c s1 "$T/ov.qcow2"
	# compressed clusters have no host offset in qemu-img map
	qemu-img map --output=json "$T/ov.qcow2" | grep '"start": 2097152,' | grep -vq '"offset"'
	qemu-img convert -O raw "$T/ov.qcow2" "$T/expect.raw"
	cp "$T/expect.raw" "$T/s1.raw"
	touch "$T/view"
	vd_mount "$T/ov.qcow2" "$T/view" -o direct_io
	concurrent_chunks "$T/view" 4
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	concurrent_chunks "$T/expect.raw" 1
	qemu_check "$T/ov.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/ov.qcow2" "$T/expect.raw"
	qemu-img convert -l snapshot.name=s1 -O raw "$T/ov.qcow2" "$T/s1-after.raw"
	cmp "$T/s1.raw" "$T/s1-after.raw"
}

@test "qcow2: truncate grows over a longer backing file: the new range reads zeroes" {
	mkdir "$T/src" "$T/mnt"
	head -c 3M /dev/urandom >"$T/src/base.raw"
	local v old=999936 new=$((4 << 20))
	# v3 and v2 overlays whose old end is inside a cluster the guest wrote
	for v in 1.1 0.10; do
		qemu-img create -q -f qcow2 -o compat=$v -b base.raw -F raw "$T/src/v$v.qcow2" $old
		qemu-io -f qcow2 -c 'write -P 0x71 983040 100' "$T/src/v$v.qcow2" >/dev/null
		qemu-img convert -O raw "$T/src/v$v.qcow2" "$T/v$v.ref"
		truncate -s $new "$T/v$v.ref"
	done
	vd_mount "$T/src" "$T/mnt"
	for v in 1.1 0.10; do
		truncate -s $new "$T/mnt/v$v.qcow2"
		[ "$(stat -c %s "$T/mnt/v$v.qcow2")" -eq $new ]
		cmp "$T/mnt/v$v.qcow2" "$T/v$v.ref"
	done
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
	for v in 1.1 0.10; do
		qemu_check "$T/src/v$v.qcow2"
		qemu-img compare -f qcow2 -F raw "$T/src/v$v.qcow2" "$T/v$v.ref"
	done
}

@test "qcow2: a virtual size that is not a multiple of 512 is served in whole sectors, like QEMU" {
	shared_image repro/qcow2-size-0xffffff.qcow2.xz "$T/odd.qcow2"
	qemu-img convert -f qcow2 -O raw "$T/odd.qcow2" "$T/odd.ref"
	[ "$(stat -c %s "$T/odd.ref")" -eq 16776704 ]
	touch "$T/view"
	vd_mount "$T/odd.qcow2" "$T/view" -o ro
	[ "$(stat -c %s "$T/view")" -eq 16776704 ]
	[ "$(getfattr --only-values -n user.vdiskfs.virtual-size "$T/view")" -eq 16776704 ]
	cmp "$T/view" "$T/odd.ref"
	vd_umount "$T/view"
	grep -q "virtual size 16777215 is not a multiple of 512; served as 16776704 bytes" "$T/vdiskfs.log"
	# read-write: the view ends at the same sector, writes to its last sector land,
	# and a resize to a size QEMU would refuse is refused
	vd_mount "$T/odd.qcow2" "$T/view"
	[ "$(stat -c %s "$T/view")" -eq 16776704 ]
	printf 'last sector' | dd of="$T/view" bs=512 seek=$((16776704 / 512 - 1)) conv=notrunc status=none
	printf 'last sector' | dd of="$T/odd.ref" bs=512 seek=$((16776704 / 512 - 1)) conv=notrunc status=none
	run truncate -s 20000001 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Invalid argument"* ]]
	[ "$(stat -c %s "$T/view")" -eq 16776704 ]
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	grep -q "cannot resize to 20000001 bytes: a qcow2 size must be a multiple of 512" "$T/vdiskfs.log"
	qemu_check "$T/odd.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/odd.qcow2" "$T/odd.ref"
}

@test "qcow2: SIGKILL during random writes + fsync, three rounds" {
	qemu-img create -q -f qcow2 -o cluster_size=64k "$T/crash.qcow2" 64M
	local round
	for round in 1 2 3; do
		crash_round qcow2 "$T/crash.qcow2" "$round" || { cat "$T/vdiskfs.log"; false; }
	done
}

@test "qcow2: an image written through its view, then made a backing file, is flushed" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/base.qcow2" 64M
	vd_mount "$T/src" "$T/mnt"
	# no fsync: the new L2 entries and refcounts sit dirty in the metadata cache
	head -c 3M /dev/urandom >"$T/data"
	dd if="$T/data" of="$T/mnt/base.qcow2" bs=64k seek=17 conv=notrunc status=none
	qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 "$T/top.qcow2" 64M
	mv "$T/top.qcow2" "$T/src/"
	# opening the overlay opens base.qcow2 as its backing file: now read-only
	cmp "$T/mnt/base.qcow2" "$T/mnt/top.qcow2"
	run dd if=/dev/zero of="$T/mnt/base.qcow2" bs=64k count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/src/base.qcow2"
	qemu-img convert -f qcow2 -O raw "$T/src/base.qcow2" "$T/base.raw"
	cmp "$T/data" <(dd if="$T/base.raw" bs=64k skip=17 count=48 status=none)
}

@test "qcow2: SEEK_DATA/SEEK_HOLE follow the L2 tables and the backing file like qemu-img map" {
	mkdir "$T/src" "$T/mnt"
	cd "$T/src"
	qemu-img create -q -f qcow2 base.qcow2 4M
	qemu-io -f qcow2 -c 'write -P 0x22 64k 192k' -c 'write -P 0x23 3M 64k' base.qcow2 >/dev/null
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 top.qcow2 4M
	# data, a zero cluster over backing data, backing data, a compressed
	# cluster, a zero cluster over more backing data, unallocated everywhere
	qemu-io -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -z 64k 64k' -c 'write -P 0x12 1M 64k' \
		-c 'write -c -P 0x13 2M 64k' -c 'write -z 3M 64k' top.qcow2 >/dev/null
	# extended L2: runs of subclusters inside clusters
	qemu-img create -q -f qcow2 -o extended_l2=on ext.qcow2 1M
	qemu-io -f qcow2 -c 'write -P 1 8k 4k' -c 'write -P 2 100k 2k' -c 'write -z 128k 64k' \
		-c 'write -P 3 130k 2k' ext.qcow2 >/dev/null
	local f
	for f in top ext base; do
		qemu-img map --output=json "$f.qcow2" >"$T/$f.map"
	done
	cd "$T"
	vd_mount "$T/src" "$T/mnt"
	for f in top ext base; do
		seek_runs "$T/mnt/$f.qcow2" "$T/$f.map"
	done
}

@test "qcow2: st_blocks counts the clusters the image allocates, and drops on punch hole" {
	qemu-img create -q -f qcow2 -o cluster_size=64k "$T/img.qcow2" 1G
	touch "$T/view"
	vd_mount "$T/img.qcow2" "$T/view"
	alloc_is "$T/view" 0
	# five clusters, two of them with one partial write each
	dd if=/dev/urandom of="$T/view" bs=64k seek=3 count=3 conv=notrunc status=none
	dd if=/dev/urandom of="$T/view" bs=1k seek=$((100 * 64 + 7)) count=2 conv=notrunc status=none
	dd if=/dev/urandom of="$T/view" bs=1k seek=$((16384 * 64 - 1)) count=1 conv=notrunc status=none
	alloc_is "$T/view" $((5 * 65536))
	[ "$(du -B1 "$T/view" | cut -f1)" -eq $((5 * 65536)) ]
	fallocate --punch-hole --keep-size -o $((3 * 65536)) -l $((2 * 65536)) "$T/view"
	alloc_is "$T/view" $((3 * 65536))
	# zeroed clusters hold no data either
	fallocate --zero-range --keep-size -o $((100 * 65536)) -l 65536 "$T/view"
	alloc_is "$T/view" $((2 * 65536))
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	# counted afresh from the L2 tables at the next mount
	vd_mount "$T/img.qcow2" "$T/view"
	alloc_is "$T/view" $((2 * 65536))
}

@test "qcow2: du on a compressed image shows the compressed size, not the host file's" {
	yes "vdiskfs compresses well" | head -c 8M >"$T/text.raw"
	head -c 1M /dev/urandom >>"$T/text.raw"
	qemu-img convert -q -c -f raw -O qcow2 "$T/text.raw" "$T/c.qcow2"
	touch "$T/view"
	vd_mount "$T/c.qcow2" "$T/view"
	local b
	b=$(($(stat -c %b "$T/view") * 512))
	# the random MiB stays about its size, the text shrinks to almost nothing
	[ "$b" -gt $((1 << 20)) ]
	[ "$b" -lt $((3 << 19)) ]
	[ "$(getfattr --only-values -n user.vdiskfs.allocated "$T/view")" -eq "$b" ]
	# a write replaces a compressed cluster by a whole one
	dd if=/dev/urandom of="$T/view" bs=64k seek=2 count=1 conv=notrunc status=none
	local i b2=$b
	for i in $(seq 1 30); do
		b2=$(($(stat -c %b "$T/view") * 512))
		[ "$b2" -ne "$b" ] && break
		sleep 0.1
	done
	[ "$b2" -gt "$b" ]
	[ "$b2" -lt $((b + 65536)) ]
}

# check_state IMAGE OUT: qemu-img check's corruption count, then its error
# lines (sorted, each once), into OUT
check_state() {
	local n
	n=$(qemu-img check --output=json "$1" 2>/dev/null | sed -n 's/.*"corruptions": \([0-9]*\).*/\1/p')
	echo "${n:-0}" >"$2"
	qemu-img check "$1" 2>&1 | grep '^ERROR' | sort -u >>"$2" || true
}

# not_worse IMAGE BEFORE: no more corruptions than check_state saw in BEFORE,
# and none it did not list there
not_worse() {
	local now new
	check_state "$1" "$T/check-now"
	now=$(head -n1 "$T/check-now")
	new=$(comm -13 <(tail -n +2 "$2") <(tail -n +2 "$T/check-now"))
	if [ "$now" -gt "$(head -n1 "$2")" ] || [ -n "$new" ]; then
		echo "$1: corruptions $(head -n1 "$2") before, $now after; new: $new" >&2
		return 1
	fi
}

# ok_or_eio CMD...: the command succeeds or fails with EIO, nothing else
ok_or_eio() {
	run "$@"
	[ "$status" -eq 0 ] || [[ "$output" == *"Input/output error"* ]] ||
		{ echo "$*: exit $status: $output" >&2; return 1; }
}

@test "qcow2: refused allocations in unaligned punch holes fail the request, not the daemon" {
	shared_image repro/zero-pump-refused-alloc.qcow2.xz "$T/img.qcow2"
	qemu-img convert -O raw "$T/img.qcow2" "$T/before.raw"
	check_state "$T/img.qcow2" "$T/check-before"
	touch "$T/view"
	vd_mount "$T/img.qcow2" "$T/view"
	local i
	for i in 0 1 2 3; do
		# 4 KiB inside an unallocated cluster: its edges are written as
		# zeroes into a new cluster, and the first one the refcounts call
		# free holds the refcount table: refused, EIO for this request
		run fallocate -p -o $((6553600 + i * 65536)) -l 4096 "$T/view"
		[ "$status" -eq 1 ]
		[[ "$output" == *"Input/output error"* ]]
	done
	kill -0 "$VD_PID"
	cmp "$T/view" "$T/before.raw"
	grep -q "refcount is 0: refcounts are inconsistent, not allocating it" "$T/vdiskfs.log"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	not_worse "$T/img.qcow2" "$T/check-before"
}

# hostile_qcow2 SRC DIR KIND...: copies DIR/KIND.qcow2 of a fresh qemu-img
# image (one L2 table, 16-bit refcounts) made hostile: l2-rc0 (the refcount
# of its L2 table cleared), swap (L1 points at the refcount block, the
# refcount table at the L2 table), cb15/cb17 (cluster_bits changed)
hostile_qcow2() {
	python3 - "$@" <<'PY'
import struct, sys
src, out = sys.argv[1:3]
for kind in sys.argv[3:]:
    b = bytearray(open(src, "rb").read())
    q = lambda o: struct.unpack(">Q", b[o:o + 8])[0]
    l1, rt = q(40), q(48)
    rb, l2 = q(rt) & ~0x1ff, q(l1) & 0x00fffffffffffe00
    if kind == "l2-rc0":
        c = l2 >> 16
        b[rb + 2 * c:rb + 2 * c + 2] = b"\0\0"
    elif kind == "swap":
        b[l1:l1 + 8] = struct.pack(">Q", (1 << 63) | rb)
        b[rt:rt + 8] = struct.pack(">Q", l2)
    else:
        b[20:24] = struct.pack(">I", int(kind[2:]))
    open("%s/%s.qcow2" % (out, kind), "wb").write(b)
PY
}

@test "qcow2: hostile refcounts, a swapped L2 table, changed cluster_bits: EIO or refusal, no new corruption" {
	qemu-img create -q -f qcow2 -o cluster_size=64k "$T/base.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 0x11 0 192k' -c 'write -P 0x22 4M 64k' "$T/base.qcow2" >/dev/null
	local k
	hostile_qcow2 "$T/base.qcow2" "$T" l2-rc0 swap cb15 cb17
	for k in l2-rc0 swap cb15 cb17; do
		rm -f "$T/view"
		touch "$T/view"
		if [ $k = cb17 ]; then
			# the tables are not aligned to 128 KiB clusters (qemu-img
			# does not open it either)
			run "$VDISKFS" -f "$T/$k.qcow2" "$T/view"
			[ "$status" -ne 0 ]
			[[ "$output" == *"refcount table at 0x10000 is not cluster aligned"* ]]
			continue
		fi
		check_state "$T/$k.qcow2" "$T/check-before"
		vd_mount "$T/$k.qcow2" "$T/view"
		ok_or_eio dd if=/dev/urandom of="$T/view" bs=64k seek=128 count=1 conv=notrunc,fsync status=none
		ok_or_eio dd if=/dev/urandom of="$T/view" bs=4k seek=1 count=1 conv=notrunc,fsync status=none
		ok_or_eio fallocate -p -o $(((8 << 20) + 4096)) -l 4096 "$T/view"
		ok_or_eio fallocate -z -o $((9 << 20)) -l 200000 "$T/view"
		ok_or_eio fallocate -p -o 0 -l 65536 "$T/view"
		ok_or_eio sync "$T/view"
		ok_or_eio dd if="$T/view" of=/dev/null bs=1M status=none
		kill -0 "$VD_PID"
		vd_umount "$T/view"
		[ "$VD_STATUS" -eq 0 ]
		not_worse "$T/$k.qcow2" "$T/check-before" || { cat "$T/vdiskfs.log"; false; }
	done
	# what each was refused for is named
	grep -q "the cluster at 0x40000 holds an L2 table but its refcount is 0" "$T/vdiskfs.log"
	grep -q "points to 0x1000100010000: unaligned or past the end of the file" "$T/vdiskfs.log"
}

@test "qcow2: discards and zeroing race allocating writes and reads on reused clusters" {
	# 4 KiB clusters over 2 MiB: every discard frees clusters that the next
	# allocating write of any process takes again at once
	qemu-img create -q -f qcow2 -o cluster_size=4k "$T/race.qcow2" 2M
	truncate -s 2M "$T/ref.raw"
	touch "$T/view"
	vd_mount "$T/race.qcow2" "$T/view"
	python3 "$VDISKFS_SRC/tests/integration/discard-race.py" "$T/view" "$T/ref.raw" 4 300 1
	cmp "$T/view" "$T/ref.raw"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu_check "$T/race.qcow2"
	qemu-img compare -f qcow2 -F raw "$T/race.qcow2" "$T/ref.raw"
}
