#!/usr/bin/env bats
# Many images in one directory mount: contrib/bench/scale.sh runs (its quick
# mode; the benchmark itself stays out of the suite), and the qcow2 metadata
# caches of hundreds of images stay within the daemon-wide budget while every
# image reads and writes the right bytes.

load helpers

# ASan keeps freed memory in quarantine; keep that small where memory is
# measured so that the high-water mark is what the daemon holds.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}quarantine_size_mb=1"

mem_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$VD_PID/status"; }

@test "contrib/bench/scale.sh --quick runs and prints a table and JSON" {
	run timeout 120 "$VDISKFS_SRC/contrib/bench/scale.sh" --quick --vdiskfs "$VDISKFS" \
		--dir "$T" --out "$T/scale.json"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *"| 10 | "* ]]
	[[ "$output" == *"| 100 | "* ]]
	python3 - "$T/scale.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
assert [r["images"] for r in d["runs"]] == [10, 100], d
assert all(r["mount_ls_ms"] > 0 and r["rss_touched_kb"] > 0 for r in d["runs"]), d
PY
}

@test "300 qcow2 images read and written through a 4 MiB cache budget: right bytes, bounded memory" {
	local i
	mkdir "$T/src" "$T/mnt"
	# three templates with data at 0 (one L2 table each), told apart by pattern
	for i in 0 1 2; do
		qemu-img create -q -f qcow2 "$T/t$i.qcow2" 1G
		qemu-io -f qcow2 -c "write -q -P $((0x31 + i)) 0 64k" "$T/t$i.qcow2"
	done
	for i in $(seq 0 299); do
		cp --sparse=always "$T/t$((i % 3)).qcow2" "$T/src/img$i.qcow2"
	done
	vd_mount "$T/src" "$T/mnt" -o cache_budget=4M
	[ "$(ls "$T/mnt" | wc -l)" -eq 300 ]
	local base
	base=$(mem_kb VmRSS)
	# each image: read its data, write a block of its own in a second L2
	# table (new L2 table, new refcounts: dirty metadata) and fsync; then
	# read every image again, after the budget made others' tables go
	python3 - "$T/mnt" <<'PY'
import os, sys
def check(i):
    fd = os.open(f"{sys.argv[1]}/img{i}.qcow2", os.O_RDONLY)
    assert os.pread(fd, 65536, 0) == bytes([0x31 + i % 3]) * 65536, i
    assert os.pread(fd, 4096, 768 << 20) == str(i).encode().ljust(4096, b"."), i
    assert os.pread(fd, 4096, 1 << 20) == bytes(4096), i
    os.close(fd)
for i in range(300):
    fd = os.open(f"{sys.argv[1]}/img{i}.qcow2", os.O_RDWR)
    assert os.pread(fd, 65536, 0) == bytes([0x31 + i % 3]) * 65536, i
    os.pwrite(fd, str(i).encode().ljust(4096, b"."), 768 << 20)
    os.fsync(fd)
    os.close(fd)
for r in range(2):
    for i in range(300):
        check(i)
PY
	local hwm max=64
	hwm=$(mem_kb VmHWM)
	ldd "$VDISKFS" | grep -q libasan && max=192
	# 300 images with two L2 tables and a refcount block each would hold
	# 56 MiB of tables without the budget (and 230 KiB an image before it)
	echo "VmRSS after mount $((base >> 10)) MiB, VmHWM $((hwm >> 10)) MiB, limit $max MiB"
	[ "$hwm" -lt $((max << 10)) ]
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
	for i in 0 1 2 150 299; do
		qemu_check "$T/src/img$i.qcow2"
		qemu-io -f qcow2 -c "read -q -P $((0x31 + i % 3)) 0 64k" -c "read -q -P 0 1M 4k" \
			"$T/src/img$i.qcow2" | (! grep -q "verification failed")
	done
}
