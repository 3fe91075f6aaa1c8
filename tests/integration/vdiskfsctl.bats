#!/usr/bin/env bats
# vdiskfsctl, the operator's client: info offline (against qemu-img info),
# status and jobs of a view and a mount, a mirror followed with --wait to
# ready and completed, refusals with their reasons and exit codes.

load helpers
load mirror-helpers

: "${VDISKFSCTL:?VDISKFSCTL must name the vdiskfsctl binary (meson test sets it)}"

json() { python3 -c "import json,sys; d=json.load(sys.stdin); print($1)"; }

@test "info reads an image offline like qemu-img info" {
	qemu-img create -q -f qcow2 "$T/base.qcow2" 64M
	qemu-io -f qcow2 -c 'write 0 1M' "$T/base.qcow2" >/dev/null
	qemu-img create -q -f qcow2 -o cluster_size=128k,lazy_refcounts=on -b base.qcow2 -F qcow2 "$T/top.qcow2"
	qemu-io -f qcow2 -c 'write 4M 256k' "$T/top.qcow2" >/dev/null
	qemu-img snapshot -c s1 "$T/top.qcow2"
	run "$VDISKFSCTL" info "$T/top.qcow2" --json
	[ "$status" -eq 0 ]
	local info=$output
	[ "$(json 'd["format"], d["virtual-size"], d["cluster-size"], d["allocated"]' <<<"$info")" = "qcow2 67108864 131072 262144" ]
	[ "$(json 'd["backing"], d["backing-chain"][0]["format"]' <<<"$info")" = "$T/base.qcow2 qcow2" ]
	[ "$(json 'd["qcow2"]["snapshots"], d["qcow2"]["lazy_refcounts"], d["qcow2"]["dirty"]' <<<"$info")" = "1 True False" ]
	[ "$(json 'd["disk-size"]' <<<"$info")" = "$(qemu-img info --output=json "$T/top.qcow2" | json 'd["actual-size"]')" ]
	run "$VDISKFSCTL" info "$T/top.qcow2"
	[ "$status" -eq 0 ]
	[[ "$output" == *"format: qcow2"* ]]
	[[ "$output" == *"virtual size: 64.0 MiB (67108864 bytes)"* ]]
	[[ "$output" == *"backing file: $T/base.qcow2 (qcow2)"* ]]
	[[ "$output" == *"qcow2 snapshots: 1"* ]]
	# an image in use: refused like qemu-img, read with -U like qemu-img -U
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	run "$VDISKFSCTL" info "$T/top.qcow2"
	[ "$status" -eq 1 ]
	[[ "$output" == *"in use by another process"* ]]
	"$VDISKFSCTL" info -U "$T/top.qcow2" >/dev/null
	vd_umount "$T/view"
	run "$VDISKFSCTL" info "$T/nothing.qcow2"
	[ "$status" -eq 1 ]
	run "$VDISKFSCTL" info
	[ "$status" -eq 2 ]
	run "$VDISKFSCTL" frobnicate x
	[ "$status" -eq 2 ]
}

@test "status and jobs of a view and of a directory mount" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 "$T/src/a.qcow2" 32M
	truncate -s 16M "$T/src/b.raw"
	vd_mount "$T/src" "$T/mnt"
	run "$VDISKFSCTL" status "$T/mnt"
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "a.qcow2: qcow2 32.0 MiB, 0 B of guest data, image $T/src/a.qcow2" ]
	[ "${lines[1]}" = "b.raw: raw 16.0 MiB, 0 B of guest data, image $T/src/b.raw" ]
	[ "$("$VDISKFSCTL" status "$T/mnt" --json | json '[i["name"] for i in d["images"]]')" = "['a.qcow2', 'b.raw']" ]
	[ "$("$VDISKFSCTL" status "$T/mnt/b.raw" --json | json 'd["format"]')" = raw ]
	[ -z "$("$VDISKFSCTL" jobs "$T/mnt")" ]
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/b2.raw,speed=1M" "$T/mnt/b.raw"
	dd if=/dev/urandom of="$T/mnt/b.raw" bs=1M count=4 conv=notrunc status=none
	run "$VDISKFSCTL" jobs "$T/mnt"
	echo "$output"
	[[ "$output" == "b.raw: mirror "*"% to $T/b2.raw" ]]
	"$VDISKFSCTL" cancel "$T/mnt/b.raw"
	run "$VDISKFSCTL" status "$T/nothing"
	[ "$status" -eq 1 ]
}

@test "mirror --wait --complete follows the copy to ready and swaps it in; refusals say why" {
	truncate -s 24M "$T/src.raw"
	dd if=/dev/urandom of="$T/src.raw" bs=1M count=16 conv=notrunc status=none
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	run "$VDISKFSCTL" mirror "$T/view" "$T/dst.qcow2" format=qcow2 speed=8M --wait --complete
	echo "$output"
	[ "$status" -eq 0 ]
	# not a terminal: one line per phase change and per tenth of the copy;
	# the hole at the end is no work
	[[ "$output" == *"running "*"% "*" of 16.0 MiB, "*"/s, eta "* ]]
	[[ "$output" == *"ready 100.0% 16.0 MiB of 16.0 MiB"* ]]
	[[ "$output" == *"completed: $T/view now reads and writes $T/dst.qcow2"* ]]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/dst.qcow2" ]
	cmp "$T/view" "$T/src.raw"
	# refusals: exit 1 with the errno and vdiskfs's reason
	touch "$T/exists.raw"
	run "$VDISKFSCTL" mirror "$T/view" "$T/exists.raw"
	[ "$status" -eq 1 ]
	[[ "$output" == *"mirror.start $T/view: File exists: "*"$T/exists.raw"* ]]
	run "$VDISKFSCTL" complete "$T/view"
	[ "$status" -eq 1 ]
	[[ "$output" == *"No such process: $T/dst.qcow2: mirror complete: no mirror is running"* ]]
	# a mirror that fails makes --wait exit 1 with the job's error
	mkdir "$T/full"
	mount -t tmpfs -o size=4m tmpfs "$T/full"
	run "$VDISKFSCTL" mirror "$T/view" "$T/full/dst.raw" --wait
	"$VDISKFSCTL" cancel "$T/view"
	umount "$T/full"
	echo "$output"
	[ "$status" -eq 1 ]
	[[ "$output" == *"the mirror of $T/view failed: "* ]]
	vd_umount "$T/view"
	[ "$VD_STATUS" -eq 0 ]
}

@test "bash completion offers the commands and each command's options" {
	run bash -c '
		source "$VDISKFS_SRC/contrib/bash-completion/vdiskfsctl"
		COMP_WORDS=(vdiskfsctl m); COMP_CWORD=1; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl mirror /v /t --w); COMP_CWORD=4; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl info -); COMP_CWORD=2; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl bitmap /v d); COMP_CWORD=3; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl bitmap /v add b g); COMP_CWORD=5; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl commit /v t); COMP_CWORD=3; _vdiskfsctl; echo "${COMPREPLY[*]}"
		COMP_WORDS=(vdiskfsctl s); COMP_CWORD=1; _vdiskfsctl; echo "${COMPREPLY[*]}"'
	[ "$status" -eq 0 ]
	[ "${lines[5]}" = top= ]
	[ "${lines[6]}" = "status stream snapshot set-speed" ]
	[ "${lines[0]}" = mirror ]
	[ "${lines[1]}" = --wait ]
	[ "${lines[2]}" = "--json -U --force-share" ]
	[ "${lines[3]}" = disable ]
	[ "${lines[4]}" = granularity= ]
}
