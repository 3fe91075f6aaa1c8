#!/usr/bin/env bats
# The backing-file policy: an image must not expose a file such as /etc/shadow
# through its backing reference unless the operator says backing=follow.

bats_require_minimum_version 1.5.0 # run !
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
	run ! is_mounted "$T/view"
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
		run ! is_mounted "$T/view"
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

MKIMAGE=${VDISKFS_BUILD:?}/tests/tools/mkimage

@test "backing=within-source: a vhdx parent outside SOURCE is refused, through a symlink or the locator's absolute path" {
	mkdir "$T/src" "$T/outside" "$T/mnt"
	qemu-img create -q -f vhdx "$T/outside/parent.vhdx" 8M
	qemu-io -f vhdx -c 'write -P 0x11 0 1M' "$T/outside/parent.vhdx" >/dev/null
	# the relative locator names a link in SOURCE that points out of it
	ln -s ../outside/parent.vhdx "$T/src/link.vhdx"
	"$MKIMAGE" vhdx "$T/src/via-link.vhdx" 8M backing=link.vhdx
	# made next to the parent, then moved: the relative locator finds
	# nothing, the absolute one names the parent outside
	"$MKIMAGE" vhdx "$T/outside/moved.vhdx" 8M backing=parent.vhdx
	mv "$T/outside/moved.vhdx" "$T/src/"
	# a parent inside SOURCE, also through a link that stays inside, is fine
	qemu-img create -q -f vhdx "$T/src/base.vhdx" 8M
	ln -s base.vhdx "$T/src/base-link.vhdx"
	"$MKIMAGE" vhdx "$T/src/good.vhdx" 8M backing=base-link.vhdx
	touch "$T/view"
	for img in via-link.vhdx moved.vhdx; do
		run timeout 20 "$VDISKFS" -f -o backing=within-source "$T/src/$img" "$T/view"
		echo "$output"
		[ "$status" -ne 0 ]
		[[ "$output" == *"outside $T/src: refused by backing=within-source"* ]]
		run ! is_mounted "$T/view"
	done
	vd_mount "$T/src" "$T/mnt" -o allow_other
	[ -e "$T/mnt/good.vhdx" ]
	[ ! -e "$T/mnt/via-link.vhdx" ]
	[ ! -e "$T/mnt/moved.vhdx" ]
	[ ! -e "$T/mnt/link.vhdx" ] # the link itself leads out of SOURCE too
	[ "$(grep -o 'refused by backing=within-source' "$T/mnt/.vdiskfs" | wc -l)" -eq 3 ]
}

@test "backing=within-source: a qcow2 backing file through a symlinked directory out of SOURCE is refused" {
	mkdir "$T/src" "$T/outside"
	head -c 1M /dev/urandom >"$T/outside/base.raw"
	ln -s ../outside "$T/src/sub"
	qemu-img create -q -f qcow2 -b sub/base.raw -F raw "$T/src/top.qcow2" 1M
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o backing=within-source "$T/src/top.qcow2" "$T/view"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"resolves to $T/outside/base.raw, outside $T/src"* ]]
	run ! is_mounted "$T/view"
}

@test "a FIFO as backing file is refused at once; a directory mount keeps answering" {
	mkdir "$T/src" "$T/mnt"
	truncate -s 1M "$T/src/fifo.raw" "$T/src/ok.raw"
	qemu-img create -q -f qcow2 -b fifo.raw -F raw "$T/src/top.qcow2" 1M
	rm "$T/src/fifo.raw"
	mkfifo "$T/src/fifo.raw"
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f "$T/src/top.qcow2" "$T/view"
	echo "$output"
	[ "$status" -eq 1 ] # not 124: it did not hang
	[[ "$output" == *"fifo.raw: not a regular file"* ]]
	vd_mount "$T/src" "$T/mnt"
	[ "$(timeout 10 ls "$T/mnt")" = ok.raw ]
	timeout 10 grep -q "top.qcow2" "$T/mnt/.vdiskfs"
}

@test "backing=within-source: a symbolic link in SOURCE is served only if it leads to a file in SOURCE" {
	mkdir -m 700 "$T/private"
	mkdir "$T/src" "$T/src/sub" "$T/mnt"
	head -c 1M /dev/urandom >"$T/private/secret.raw"
	chmod 644 "$T/private/secret.raw"
	ln -s ../private/secret.raw "$T/src/out.raw"
	head -c 1M /dev/urandom >"$T/src/sub/disk.raw"
	ln -s sub/disk.raw "$T/src/in.raw"
	vd_mount "$T/src" "$T/mnt" -o allow_other
	[ "$(ls "$T/mnt")" = in.raw ]
	cmp "$T/src/sub/disk.raw" "$T/mnt/in.raw"
	grep -q "out.raw: a symbolic link to $T/private/secret.raw, outside $T/src" "$T/mnt/.vdiskfs"
	vd_umount "$T/mnt"
	# backing=follow (the default without allow_other) serves both
	vd_mount "$T/src" "$T/mnt"
	[ "$(ls "$T/mnt" | tr '\n' ' ')" = "in.raw out.raw " ]
}

@test "the backing format decides: a raw backing file that starts like a qcow2 image is read as raw" {
	qemu-img create -q -f qcow2 "$T/inner.qcow2" 1M
	qemu-io -f qcow2 -c 'write -P 0x33 0 64k' "$T/inner.qcow2" >/dev/null
	cp "$T/inner.qcow2" "$T/base.raw"
	truncate -s 2M "$T/base.raw"
	qemu-img create -q -f qcow2 -b base.raw -F raw "$T/top.qcow2" 2M
	qemu-io -f qcow2 -c 'write -P 0x44 1M 4k' "$T/top.qcow2" >/dev/null
	qemu-img convert -O raw "$T/top.qcow2" "$T/expect.raw"
	touch "$T/view"
	vd_mount "$T/top.qcow2" "$T/view"
	cmp "$T/expect.raw" "$T/view"
	[ "$(head -c 4 "$T/view" | od -An -tx1 | tr -d ' ')" = 514649fb ]
}

@test "backing=deny refuses a vhdx differencing disk, alone and in a directory mount" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f vhdx "$T/src/parent.vhdx" 8M
	"$MKIMAGE" vhdx "$T/src/child.vhdx" 8M backing=parent.vhdx
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o backing=deny "$T/src/child.vhdx" "$T/view"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"child.vhdx"*"backing=deny"* ]]
	run ! is_mounted "$T/view"
	vd_mount "$T/src" "$T/mnt" -o backing=deny
	[ "$(ls "$T/mnt")" = parent.vhdx ]
	grep -q 'child.vhdx.*backing=deny' "$T/mnt/.vdiskfs"
}

@test "allow_root defaults to within-source like allow_other" {
	mkdir "$T/src" "$T/mnt"
	qemu-img create -q -f qcow2 -b /etc/shadow -F raw "$T/src/evil.qcow2" 1M
	truncate -s 1M "$T/src/base.raw"
	qemu-img create -q -f qcow2 -b base.raw -F raw "$T/src/good.qcow2" 1M
	touch "$T/view"
	run timeout 20 "$VDISKFS" -f -o allow_root "$T/src/evil.qcow2" "$T/view"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"refused by backing=within-source"* ]]
	run ! is_mounted "$T/view"
	vd_mount "$T/src" "$T/mnt" -o allow_root
	[ "$(ls "$T/mnt" | tr '\n' ' ')" = "base.raw good.qcow2 " ]
	grep -q 'evil.qcow2.*refused by backing=within-source' "$T/mnt/.vdiskfs"
	vd_umount "$T/mnt"
	# an explicit backing= still wins
	vd_mount "$T/src" "$T/mnt" -o allow_root,backing=follow
	[ -e "$T/mnt/evil.qcow2" ]
}
