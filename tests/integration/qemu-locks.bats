#!/usr/bin/env bats
# vdiskfs and the QEMU tools on one image: both sides speak QEMU's byte-range
# lock protocol (byte 100 + i holds permission i, 200 + i does not share it),
# so a writer on either side keeps the other side's writers and consistent
# readers out, force-share readers (qemu-img -U, -o force_share) read beside
# a writer, and the locks are gone when the daemon has exited.

load helpers

# locks_of FILE: "TYPE START-END;..." of the OFD locks held on FILE, sorted
locks_of() {
	local ino
	ino=$(stat -c %i "$1")
	awk -v ino=":$ino" '$6 ~ ino"$" {print $2, $4, $7 "-" $8}' /proc/locks | sort -t' ' -k3 | tr '\n' ';'
}

# qemu_hold ARGS...: qemu-io on an image in the background until qemu_release
qemu_hold() {
	mkfifo "$T/qio.ctl"
	qemu-io "$@" <"$T/qio.ctl" >"$T/qio.out" 2>&1 &
	QIO_PID=$!
	exec 7>"$T/qio.ctl"
	local i
	for i in $(seq 1 100); do
		[ -n "$(locks_of "${@: -1}")" ] && return 0
		kill -0 "$QIO_PID" 2>/dev/null || { cat "$T/qio.out" >&2; return 1; }
		sleep 0.05
	done
	echo "qemu-io took no lock" >&2
	return 1
}

qemu_release() {
	echo quit >&7
	exec 7>&-
	wait "$QIO_PID"
	rm -f "$T/qio.ctl"
}

@test "a read-write view takes exactly a QEMU writer's locks, a read-only view a reader's" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
	qemu-img create -q -f raw "$T/b.raw" 16M
	touch "$T/view"
	local img writer reader
	for img in a.qcow2 b.raw; do
		qemu_hold -f qcow2 "$T/a.qcow2"
		writer=$(locks_of "$T/a.qcow2")
		qemu_release
		qemu_hold -r -f qcow2 "$T/a.qcow2"
		reader=$(locks_of "$T/a.qcow2")
		qemu_release
		echo "qemu writer: $writer reader: $reader"
		[ "$writer" = "OFDLCK READ 100-101;OFDLCK READ 103-103;OFDLCK READ 201-201;OFDLCK READ 203-203;" ]
		vd_mount "$T/$img" "$T/view"
		[ "$(locks_of "$T/$img")" = "$writer" ]
		vd_umount "$T/view"
		vd_mount "$T/$img" "$T/view" -o ro
		[ "$(locks_of "$T/$img")" = "$reader" ]
		vd_umount "$T/view"
		vd_mount "$T/$img" "$T/view" -o ro,force_share
		[ "$(locks_of "$T/$img")" = "OFDLCK READ 100-100;" ]
		vd_umount "$T/view"
		# gone once the daemon has exited
		[ -z "$(locks_of "$T/$img")" ]
	done
}

@test "beside a vdiskfs writer: QEMU writers and consistent readers are refused, -U readers work" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
	touch "$T/view" "$T/view2"
	vd_mount "$T/a.qcow2" "$T/view"
	head -c 1M /dev/urandom >"$T/data"
	dd if="$T/data" of="$T/view" bs=1M conv=notrunc,fsync status=none
	run qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
	[ "$status" -ne 0 ]
	[[ "$output" == *'Failed to get "write" lock'* ]]
	run qemu-img info "$T/a.qcow2"
	[ "$status" -ne 0 ]
	[[ "$output" == *'Failed to get shared "write" lock'* ]]
	# the usual way to look at or copy a live disk
	qemu-img info -U "$T/a.qcow2"
	qemu-img map -U "$T/a.qcow2"
	qemu-img check -U "$T/a.qcow2"
	qemu-img convert -U -O raw "$T/a.qcow2" "$T/copy.raw"
	cmp -n 1048576 "$T/copy.raw" "$T/data"
	qemu-img compare -U -f qcow2 -F raw "$T/a.qcow2" "$T/copy.raw"
	# another vdiskfs: neither a writer nor a consistent reader, but force_share
	run timeout 20 "$VDISKFS" -f "$T/a.qcow2" "$T/view2"
	[ "$status" -ne 0 ]
	[[ "$output" == *"in use by another process: it does not share the write permission (QEMU's image locks, byte 201); not opened for writing"* ]]
	run timeout 20 "$VDISKFS" -f -o ro "$T/a.qcow2" "$T/view2"
	[ "$status" -ne 0 ]
	[[ "$output" == *"it holds the write permission (QEMU's image locks, byte 101); not opened for reading"* ]]
	vd_mount "$T/a.qcow2" "$T/view2" -o ro,force_share
	cmp -n 1048576 "$T/view2" "$T/data"
	vd_umount "$T/view2"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	qemu-io -f qcow2 -c 'write 0 4k' "$T/a.qcow2"
}

@test "beside a QEMU writer: vdiskfs writers and readers are refused, force_share reads" {
	require qemu-storage-daemon
	qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 0x5a 0 1M' "$T/a.qcow2" >/dev/null
	touch "$T/view"
	rm -f "$T/qsd.sock"
	qemu-storage-daemon --blockdev driver=file,node-name=f,filename="$T/a.qcow2" \
		--blockdev driver=qcow2,node-name=q,file=f \
		--nbd-server addr.type=unix,addr.path="$T/qsd.sock" \
		--export type=nbd,id=e,node-name=q,writable=on \
		--pidfile "$T/qsd.pid" >"$T/qsd.log" 2>&1 &
	local qsd=$! i
	for i in $(seq 1 100); do
		[ -n "$(locks_of "$T/a.qcow2")" ] && [ -s "$T/qsd.pid" ] && break
		sleep 0.05
	done
	run timeout 20 "$VDISKFS" -f "$T/a.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"in use by another process"*"not opened for writing"* ]]
	run timeout 20 "$VDISKFS" -f -o ro "$T/a.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"it holds the write permission (QEMU's image locks, byte 101); not opened for reading"* ]]
	run ! is_mounted "$T/view"
	vd_mount "$T/a.qcow2" "$T/view" -o ro,force_share
	cmp -n 1048576 "$T/view" <(head -c 1M /dev/zero | tr '\0' '\132')
	run sh -c "echo x >'$T/view'"
	[ "$status" -ne 0 ]
	vd_umount "$T/view"
	kill "$qsd"
	wait "$qsd" || true
	# with the writer gone, vdiskfs writes
	vd_mount "$T/a.qcow2" "$T/view"
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
}

@test "beside a QEMU reader: a vdiskfs writer is refused, a vdiskfs reader is not" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
	touch "$T/view"
	qemu_hold -r -f qcow2 "$T/a.qcow2"
	run timeout 20 "$VDISKFS" -f "$T/a.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"it does not share the write permission (QEMU's image locks, byte 201); not opened for writing"* ]]
	vd_mount "$T/a.qcow2" "$T/view" -o ro
	vd_umount "$T/view"
	qemu_release
}

@test "force_share needs ro" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 16M
	touch "$T/view"
	run "$VDISKFS" -f -o force_share "$T/a.qcow2" "$T/view"
	[ "$status" -eq 2 ]
	[[ "$output" == *"force_share needs ro"* ]]
}

@test "a directory mount lists an image QEMU holds under errors and serves it once QEMU lets go" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 16M
	qemu-io -f qcow2 -c 'write -P 0x33 0 64k' "$T/src/a.qcow2" >/dev/null
	truncate -s 1M "$T/src/b.raw"
	qemu_hold -f qcow2 "$T/src/a.qcow2"
	vd_mount "$T/src" "$T/mnt"
	[ "$(ls "$T/mnt")" = b.raw ]
	run python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([(e["name"], e["error"]) for e in d["errors"]])' "$T/mnt/.vdiskfs"
	echo "$output"
	[[ "$output" == *"('a.qcow2', "*"in use by another process"* ]]
	qemu_release
	# looked at again on a lookup or listing after a short back-off
	local i
	for i in $(seq 1 50); do
		[ -e "$T/mnt/a.qcow2" ] && break
		sleep 0.1
	done
	[ "$(ls "$T/mnt" | tr '\n' ' ')" = "a.qcow2 b.raw " ]
	cmp -n 65536 "$T/mnt/a.qcow2" <(head -c 64k /dev/zero | tr '\0' '\063')
	run python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["errors"])' "$T/mnt/.vdiskfs"
	[ "$output" = "[]" ]
}
