#!/usr/bin/env bats
# Power-loss simulation (docs/powerloss.md): a writer with several requests in
# flight writes, discards, zeroes and fdatasyncs through a mount that records
# its image I/O; crash states built from the record (unflushed operations
# kept, dropped or torn) must pass qemu-img check, replay (vhdx), and read
# back every acknowledged write and nothing from another offset. Two
# hand-made wrong states prove the check fails when it should.

load helpers
load powerloss

# States per scenario, kept few as the suite runs this file in the normal and
# the ASan build (not again over FUSE-over-io_uring: what is recorded is the
# daemon's own image-file I/O): 3 in the normal build, 1 under ASan (the
# recorded run, what the sanitizers are for, is the same; the states are
# checked offline), 1 if it is run with the ring on. contrib/powerloss.sh
# runs thousands.
pl_count() {
	if ldd "$VDISKFS" 2>/dev/null | grep -q libasan ||
		grep -qs Y /sys/module/fuse/parameters/enable_uring; then
		echo 1
	else
		echo 3
	fi
}

# Guest writes 4 KiB-aligned here. 512 B-aligned data now goes O_DIRECT like
# the rest, but with 512 B clusters a buffered metadata write can still share
# a page with an O_DIRECT data write, which the kernel answers with EIO at the
# next fdatasync (docs/powerloss.md). contrib/powerloss.sh writes 512 B.
PL_ALIGN=4096

# scenario NAME [CONTROL]: a recorded run, its crash states, and the control
pl_scenario() {
	local name=$1 control=${2:-} d=$T/$1
	pl_run "$name" "$d" "$RANDOM"
	pl_states "$name" "$d" "$(pl_count)" "$RANDOM"
	if [ -n "$control" ]; then
		pl_states "$name" "$d" 1 1 --control "$control"
	fi
}

@test "powerloss: empty qcow2; a state without an fsync'd write is caught" {
	pl_scenario empty drop-acked
}

@test "powerloss: qcow2 over a backing file" {
	pl_scenario backing
}

@test "powerloss: qcow2 with an internal snapshot" {
	pl_scenario snapshot
}

@test "powerloss: compressed qcow2" {
	pl_scenario compressed
}

@test "powerloss: 512 B clusters, the refcount table grows; a refcount dropped under an L2 entry is caught" {
	pl_scenario c512 refcount
}

@test "powerloss: 4 KiB clusters with L2 table eviction" {
	pl_scenario evict
}

@test "powerloss: an active commit runs while the guest writes; the top stays the image of record" {
	pl_scenario commit
}

@test "powerloss: a push backup with a persistent bitmap runs while the guest writes" {
	pl_scenario backup
}

@test "powerloss: dynamic vhdx, the log wraps; a state without an fsync'd write is caught" {
	pl_scenario vhdx drop-acked
}

# The vhdx log is a ring of entries. When 128 entries of 8 KiB fill a 1 MiB
# log under one LogGuid, or the ring wraps, a crash must still replay in QEMU,
# which chains entries by sequence number alone: it looped for ever on a full
# ring whose newest entry was torn (its data sector lost; SIGKILL keeps it
# whole, so it is torn by hand here), and failed on the wrapped ring. Found by
# the power-loss simulation.
@test "powerloss: a vhdx log that filled its ring or wrapped replays in qemu-img, torn or not" {
	local n torn
	# 128 fdatasyncs fill the ring (the newest entry torn: QEMU looped), 129
	# wrap it (QEMU failed)
	for n in 128 129; do
		torn=$((n == 128))
		rm -f "$T/ring.vhdx"
		qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M,log_size=1M \
			"$T/ring.vhdx" 160M
		touch "$T/v"
		vd_mount "$T/ring.vhdx" "$T/v"
		# One new block, hence one BAT log entry, per fdatasync.
		python3 - "$T/v" "$n" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for i in range(int(sys.argv[2])):
    os.pwrite(fd, b"%08d" % i * 512, i << 20)
    os.fdatasync(fd)
PY
		vd_kill9 "$T/v"
		[ "$torn" -eq 0 ] || python3 - "$T/ring.vhdx" <<'PY'
import os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
log = os.pread(fd, 1 << 20, 1 << 20)
heads = [os.pread(fd, 80, at) for at in (64 << 10, 128 << 10)]
guid = max(heads, key=lambda h: struct.unpack_from("<Q", h, 8))[48:64]
ents = [(struct.unpack_from("<Q", log, o + 16)[0], o, struct.unpack_from("<I", log, o + 8)[0])
        for o in range(0, 1 << 20, 4096) if log[o:o + 4] == b"loge" and log[o + 32:o + 48] == guid]
seq, at, ln = max(ents)
os.pwrite(fd, bytes(4096), (1 << 20) + at + ln - 4096)
print("tore entry %d at 0x%x" % (seq, at))
PY
		cp "$T/ring.vhdx" "$T/qemu.vhdx"
		run timeout 120 qemu-img check -r all -f vhdx "$T/qemu.vhdx"
		echo "after $n entries, torn $torn: $output"
		[ "$status" -eq 0 ]
		vd_mount "$T/ring.vhdx" "$T/v" # replays the log too
		qemu-img compare -f raw -F vhdx "$T/v" "$T/qemu.vhdx"
		vd_umount "$T/v"
	done
}
