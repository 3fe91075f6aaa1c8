#!/usr/bin/env bats
# Power-loss simulation (docs/powerloss.md): a writer with several requests in
# flight writes, discards, zeroes and fdatasyncs through a mount that records
# its image I/O; crash states built from the record (unflushed operations
# kept, dropped or torn) must pass qemu-img check, replay (vhdx), and read
# back every acknowledged write and nothing from another offset. Two
# hand-made wrong states prove the check fails when it should.

load helpers
load powerloss

# States per scenario, kept few as the suite runs this file four times
# (normal and ASan builds, each with and without FUSE over io_uring): 3 in
# the first pass of the normal build, 1 in the others (the recorded run, what
# the sanitizers and the other transport are for, is the same; the states are
# checked offline). contrib/powerloss.sh runs thousands.
pl_count() {
	if ldd "$VDISKFS" 2>/dev/null | grep -q libasan ||
		grep -qs Y /sys/module/fuse/parameters/enable_uring; then
		echo 1
	else
		echo 3
	fi
}

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

@test "powerloss: dynamic vhdx, the log wraps; a state without an fsync'd write is caught" {
	pl_scenario vhdx drop-acked
}

# The vhdx log is a ring of entries that share the header's LogGuid. Entry 129
# of 8 KiB lands at the start of a 1 MiB log still full of entries 2-128, all
# applied; a crash then (SIGKILL leaves the same file) must still replay in
# QEMU, whose replay chains entries by sequence number alone and refuses a
# chain that goes all the way round. Found by the power-loss simulation.
@test "powerloss: vhdx log wrapped onto a full ring replays in qemu-img" {
	qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M,log_size=1M \
		"$T/ring.vhdx" 160M
	touch "$T/v"
	vd_mount "$T/ring.vhdx" "$T/v"
	# One new block, hence one BAT log entry, per fdatasync.
	python3 - "$T/v" <<'PY'
import os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
for i in range(129):
    os.pwrite(fd, b"%08d" % i * 512, i << 20)
    os.fdatasync(fd)
PY
	vd_kill9 "$T/v"
	cp "$T/ring.vhdx" "$T/qemu.vhdx"
	run qemu-img check -r all -f vhdx "$T/qemu.vhdx"
	echo "$output"
	[ "$status" -eq 0 ]
	vd_mount "$T/ring.vhdx" "$T/v" # replays the log too
	qemu-img compare -f raw -F vhdx "$T/v" "$T/qemu.vhdx"
}
