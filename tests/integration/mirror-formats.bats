#!/usr/bin/env bats
# The mirror across formats (raw, qcow2, vhdx) under a writer, and a source
# with a backing chain: the destination gets the full content.

load helpers
load mirror-helpers

# mirror_under_load SRCFMT DSTFMT
mirror_under_load() {
	local sf=$1 df=$2
	truncate -s 48M "$T/ref.raw"
	dd if=/dev/urandom of="$T/ref.raw" bs=1M count=12 conv=notrunc status=none
	dd if=/dev/urandom of="$T/ref.raw" bs=1M count=4 seek=30 conv=notrunc status=none
	qemu-img convert -f raw -O "$sf" "$T/ref.raw" "$T/src.$sf"
	touch "$T/view"
	vd_mount "$T/src.$sf" "$T/view"
	rm -f "$T/stop"
	python3 "$WRITER" "$T/view" "$T/ref.raw" 0 $((48 << 20)) "$T/stop" >"$T/writer.out" 2>&1 &
	local wpid=$!
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.$df,format=$df,speed=16M" "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=running target=$T/dst.$df format=$df "* ]]
	wait_phase "$T/view" ready 60
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[[ "$(mstatus "$T/view")" == "phase=completed"* ]]
	# completed means the source file is final: not one byte changes after,
	# not when the writer goes on, not when the old source is closed (2 s later)
	local final
	final=$(stat -c %s "$T/src.$sf"; sha256sum <"$T/src.$sf")
	[ "$(getfattr --only-values -n user.vdiskfs.format "$T/view")" = "$df" ]
	sleep 0.5
	touch "$T/stop"
	wait "$wpid" || { cat "$T/writer.out" >&2; return 1; }
	cmp "$T/view" "$T/ref.raw"
	sleep 2.5
	[ "$(stat -c %s "$T/src.$sf"; sha256sum <"$T/src.$sf")" = "$final" ]
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
	[ "$(stat -c %s "$T/src.$sf"; sha256sum <"$T/src.$sf")" = "$final" ]
	if [ "$sf" != raw ]; then
		qemu_check "$T/src.$sf"
	fi
	qemu-img compare -q -f raw -F "$df" "$T/ref.raw" "$T/dst.$df"
	if [ "$df" = qcow2 ]; then
		qemu_check "$T/dst.$df"
		# created with the source's cluster size when the formats match
		if [ "$sf" = qcow2 ]; then
			[ "$(qemu-img info --output=json "$T/dst.qcow2" |
				python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')" \
				= "$(qemu-img info --output=json "$T/src.qcow2" |
				python3 -c 'import json,sys; print(json.load(sys.stdin)["cluster-size"])')" ]
		fi
	fi
}

@test "raw to qcow2 under load" {
	mirror_under_load raw qcow2
}

@test "qcow2 to qcow2 under load" {
	mirror_under_load qcow2 qcow2
}

@test "qcow2 to vhdx under load" {
	mirror_under_load qcow2 vhdx
}

@test "vhdx to qcow2 under load" {
	mirror_under_load vhdx qcow2
}

@test "a source with a backing chain: the destination gets the full content" {
	truncate -s 32M "$T/ref.raw"
	dd if=/dev/urandom of="$T/ref.raw" bs=1M count=8 conv=notrunc status=none
	qemu-img convert -f raw -O qcow2 "$T/ref.raw" "$T/base.qcow2"
	qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 "$T/top.qcow2"
	qemu-io -f qcow2 -c "write -P 0x5a 4M 8M" "$T/top.qcow2" >/dev/null
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/base.qcow2,existing=1" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	setfattr -n user.vdiskfs.mirror.start -v "$T/dst.qcow2" "$T/view"
	wait_phase "$T/view" ready 30
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	vd_umount "$T/view"
	qemu-img compare -q "$T/top.qcow2" "$T/dst.qcow2"
	qemu_check "$T/dst.qcow2"
	run qemu-img info "$T/dst.qcow2"
	[ "$status" -eq 0 ]
	[[ "$output" != *"backing file"* ]]
}
