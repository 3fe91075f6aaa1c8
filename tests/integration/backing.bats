#!/usr/bin/env bats
# The backing-file policy: an image must not expose a file such as /etc/shadow
# through its backing reference unless the operator says backing=follow.

load helpers

secret_image() { # NAME BACKING: a qcow2 whose backing file is BACKING (raw)
	qemu-img create -q -f qcow2 -b "$2" -F raw "$T/$1" 1M
}

@test "backing=deny refuses any image with a backing file" {
	truncate -s 1M "$T/base.raw"
	secret_image top.qcow2 "$T/base.raw"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o backing=deny "$T/top.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"backing=deny"* ]]
	! is_mounted "$T/view"
}

@test "backing=within-source refuses a backing file outside the source, also through a symlink" {
	secret_image abs.qcow2 /etc/shadow
	ln -s /etc/shadow "$T/innocent.raw"
	secret_image link.qcow2 innocent.raw
	touch "$T/view"
	for img in abs.qcow2 link.qcow2; do
		run timeout 20 "$VDISKFS" -f -o backing=within-source "$T/$img" "$T/view"
		echo "$output"
		[ "$status" -ne 0 ]
		[[ "$output" == *"outside"* ]]
		! is_mounted "$T/view"
	done
}

@test "allow_other defaults to within-source; directory mounts hide such images" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 -b /etc/shadow -F raw "$T/src/evil.qcow2" 1M
	truncate -s 1M "$T/src/base.raw"
	qemu-img create -q -f qcow2 -b base.raw -F raw "$T/src/good.qcow2" 1M
	vd_mount "$T/src" "$T/mnt" -o allow_other
	[ -e "$T/mnt/good.qcow2" ]
	[ ! -e "$T/mnt/evil.qcow2" ]
	grep -q "evil.qcow2" "$T/mnt/.vdiskfs"
}

@test "backing=follow (the default without allow_other) follows the reference" {
	head -c 1M /dev/urandom >"$T/base.raw"
	mkdir "$T/other"
	mv "$T/base.raw" "$T/other/"
	secret_image top.qcow2 "$T/other/base.raw"
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	cmp "$T/other/base.raw" "$T/view"
}

@test "a backing loop is refused" {
	qemu-img create -q -f qcow2 "$T/a.qcow2" 1M
	qemu-img create -q -f qcow2 -b a.qcow2 -F qcow2 "$T/b.qcow2" 1M
	qemu-img rebase -q -u -f qcow2 -b b.qcow2 -F qcow2 "$T/a.qcow2"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f "$T/b.qcow2" "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"loop"* ]]
}
