#!/usr/bin/env bats
# Who may do what on a mount with allow_other, and where a mirror may write:
# the control file and the mirror attributes (verbs and status) stay with
# root and the mounting user, also when that user is not root; the mount
# hands out no more than SOURCE does; and a symbolic link at a mirror's
# target never redirects the copy.

load helpers
load mirror-helpers

as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

setup() {
	setup_scratch
	chmod 755 "$T" # others must reach the mount to be refused by it
}

@test "allow_other: others cannot use the control file or the mirror verbs; they start nothing" {
	mkdir "$T/src" "$T/mnt"
	mkdir -m 777 "$T/out" # a mirror could create its destination here
	head -c 4M /dev/urandom >"$T/src/mine.raw"   # nobody's own disk, writable by nobody
	chown nobody:nogroup "$T/src/mine.raw"
	chmod 600 "$T/src/mine.raw"
	head -c 4M /dev/urandom >"$T/src/shared.raw" # readable by all, writable by root
	chmod 644 "$T/src/shared.raw"
	head -c 4M /dev/urandom >"$T/src/private.raw"
	chmod 600 "$T/src/private.raw"
	vd_mount "$T/src" "$T/mnt" -o allow_other

	# the control file: neither read nor written
	run as_nobody cat "$T/mnt/.vdiskfs"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody python3 -c 'import os,sys; fd = os.open(sys.argv[1], os.O_WRONLY); os.write(fd, sys.argv[2].encode())' \
		"$T/mnt/.vdiskfs" "mirror-start mine.raw $T/out/ctl.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]

	# the mirror verbs: refused by vdiskfs on a view nobody may write, by the
	# kernel on one they may not
	run as_nobody setfattr -n user.vdiskfs.mirror.start -v "$T/out/x.raw" "$T/mnt/mine.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	grep -q "only the owner of the mount may run mirrors" "$T/vdiskfs.log"
	run as_nobody setfattr -n user.vdiskfs.mirror.start -v "target=$T/out/y.raw,format=qcow2" \
		"$T/mnt/mine.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody setfattr -n user.vdiskfs.mirror.start -v "$T/out/z.raw" "$T/mnt/shared.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	[ -z "$(ls "$T/out")" ]
	[ "$(mstatus "$T/mnt/mine.raw")" = "phase=none" ]

	# a mirror root started: others can neither complete nor cancel it
	setfattr -n user.vdiskfs.mirror.start -v "target=$T/out/root.raw,speed=1M" "$T/mnt/mine.raw"
	for verb in complete cancel; do
		run as_nobody setfattr -n "user.vdiskfs.mirror.$verb" -v 1 "$T/mnt/mine.raw"
		[ "$status" -ne 0 ]
		[[ "$output" == *"Permission denied"* ]]
	done
	[[ "$(mstatus "$T/mnt/mine.raw")" == phase=running* ]]

	# the mirror's attributes stay with root and the owner even on a view
	# others may read and write: its status names the target
	run as_nobody getfattr --only-values -n user.vdiskfs.mirror.status "$T/mnt/mine.raw"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody setfattr -n user.vdiskfs.mirror.status -v x "$T/mnt/mine.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody getfattr -d -m - "$T/mnt/mine.raw"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *"user.vdiskfs.format="* ]]
	[[ "$output" != *"mirror"* ]] # neither listed nor inside .info
	[[ "$output" != *"last-error"* ]]
	run as_nobody getfattr -n user.vdiskfs.last-error "$T/mnt/mine.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	[[ "$(getfattr -d -m - "$T/mnt/mine.raw")" == *"user.vdiskfs.mirror.status=\"phase=running"* ]]
	[[ "$(getfattr --only-values -n user.vdiskfs.info "$T/mnt/mine.raw")" == *'"mirror":'* ]]

	# the read-only facts follow the view's read permission
	[ "$(as_nobody getfattr --only-values -n user.vdiskfs.format "$T/mnt/shared.raw")" = raw ]
	run as_nobody getfattr -n user.vdiskfs.mirror.status "$T/mnt/private.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody getfattr -n user.vdiskfs.info "$T/mnt/private.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]

	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/mnt/mine.raw"
	[ "$(mstatus "$T/mnt/mine.raw")" = "phase=none" ]
	cmp "$T/src/mine.raw" "$T/mnt/mine.raw"
}

@test "allow_other: the mount root has the source directory's permissions" {
	mkdir -m 700 "$T/src"
	mkdir "$T/mnt"
	head -c 1M /dev/urandom >"$T/src/a.raw"
	chmod 644 "$T/src/a.raw"
	vd_mount "$T/src" "$T/mnt" -o allow_other
	[ "$(stat -c %a "$T/mnt")" = 700 ]
	run as_nobody cat "$T/mnt/a.raw"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody ls "$T/mnt"
	[ "$status" -ne 0 ]
	chmod 755 "$T/src"
	sleep 1.1 # the kernel keeps attributes for a second
	as_nobody cmp "$T/src/a.raw" "$T/mnt/a.raw"
}

@test "a symbolic link at the mirror target is never followed, with or without existing=1" {
	head -c 8M /dev/urandom >"$T/src.raw"
	head -c 8M /dev/urandom >"$T/victim"
	cp "$T/victim" "$T/victim.orig"
	ln -s "$T/victim" "$T/link.raw"
	ln -s "$T/victim" "$T/link.qcow2"
	ln -s "$T/not-yet" "$T/dangling.raw"
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	for v in "$T/link.raw" "target=$T/link.raw,existing=1" "target=$T/link.raw,existing=1,format=raw" \
		"target=$T/link.qcow2,format=qcow2" "$T/dangling.raw" "target=$T/dangling.raw,existing=1"; do
		run setfattr -n user.vdiskfs.mirror.start -v "$v" "$T/view"
		echo "$v: $output"
		[ "$status" -ne 0 ]
		[[ "$output" == *"Invalid argument"* ]]
		[ "$(mstatus "$T/view")" = "phase=none" ]
	done
	grep -q "target $T/link.raw is a symbolic link: refused" "$T/vdiskfs.log"
	cmp "$T/victim" "$T/victim.orig"
	[ -L "$T/link.raw" ]
	[ -L "$T/dangling.raw" ]
	[ ! -e "$T/not-yet" ]
}

@test "a mirror target through a symlinked directory is allowed and lands in the real one" {
	head -c 8M /dev/urandom >"$T/src.raw"
	mkdir "$T/realdir"
	ln -s realdir "$T/linkdir"
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	setfattr -n user.vdiskfs.mirror.start -v "$T/linkdir/dst.raw" "$T/view"
	wait_phase "$T/view" ready 30
	[[ "$(mstatus "$T/view")" == *"target=$T/realdir/dst.raw"* ]]
	setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/realdir/dst.raw" ]
	vd_umount "$T/view"
	[ -f "$T/realdir/dst.raw" ]
	[ ! -L "$T/realdir/dst.raw" ]
	cmp "$T/src.raw" "$T/realdir/dst.raw"
}

@test "a new mirror destination has the source's permissions and owner from the start" {
	head -c 8M /dev/urandom >"$T/src.raw"
	chown nobody:nogroup "$T/src.raw"
	chmod 600 "$T/src.raw"
	touch "$T/view"
	vd_mount "$T/src.raw" "$T/view"
	local fmt
	for fmt in raw qcow2 vhdx; do
		setfattr -n user.vdiskfs.mirror.start -v "target=$T/dst.$fmt,format=$fmt,speed=1M" "$T/view"
		[ "$(stat -c '%a %U:%G' "$T/dst.$fmt")" = "600 nobody:nogroup" ]
		setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	done
}

# owner_ns SCRIPT: run bash -ex SCRIPT in a private mount namespace where an
# unprivileged user can mount FUSE: /dev/fuse open to all (containers often
# make it 0600; distributions ship it 0666) and user_allow_other in
# /etc/fuse.conf, both bound over the originals for this namespace only.
owner_ns() {
	printf 'user_allow_other\n' >"$T/fuse.conf"
	mknod -m 666 "$T/fuse" c 10 229 || skip "cannot make a /dev/fuse node here"
	unshare -m --propagation private true || skip "no private mount namespace (unshare -m)"
	unshare -m --propagation private bash -c \
		'mount --bind "$T/fuse.conf" /etc/fuse.conf && mount --bind "$T/fuse" /dev/fuse &&
		exec bash -ex "$1"' owner_ns "$1"
}

@test "a mount owned by an unprivileged user: the owner and root run mirrors and the control file, others cannot" {
	mkdir "$T/src" "$T/mnt" "$T/out"
	head -c 4M /dev/urandom >"$T/src/mine.raw"
	chmod 666 "$T/src/mine.raw" # open to all: only vdiskfs refuses others
	chown nobody:nogroup "$T/src" "$T/src/mine.raw" "$T/mnt" "$T/out"
	cat >"$T/owner.sh" <<'SH'
owner() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; } # nobody, the mount's owner
other() { setpriv --reuid=65533 --regid=65533 --clear-groups "$@"; } # anyone else
mounted() { findmnt -n --mountpoint "$T/mnt" >/dev/null; }
ctl() { bash -c 'exec 3<>"$1"; echo "$2" >&3; cat <&3' ctl "$T/mnt/.vdiskfs" "$1"; }
status() { getfattr --only-values -n user.vdiskfs.mirror.status "$T/mnt/mine.raw"; }
refused() { # CMD...: fails with "Permission denied"
	if out=$("$@" 2>&1); then echo "not refused: $*: $out"; exit 1; fi
	[[ "$out" == *"Permission denied"* ]]
}
serve() { # OPTION: nobody mounts $T/src on $T/mnt
	owner "$VDISKFS" -f -o "$1" "$T/src" "$T/mnt" >>"$T/vdiskfs.log" 2>&1 &
	pid=$!
	for i in $(seq 1 200); do mounted && return 0; sleep 0.05; done
	cat "$T/vdiskfs.log"; exit 1
}
unserve() { owner fusermount3 -u "$T/mnt"; wait "$pid"; }
trap 'mounted && umount -l "$T/mnt"; wait' EXIT

serve allow_other
[ "$(stat -c %U "$T/mnt/.vdiskfs")" = nobody ]
# the owner: attributes and control file
owner cat "$T/mnt/.vdiskfs" | grep -q '"name":"mine.raw"'
owner setfattr -n user.vdiskfs.mirror.start -v "target=$T/out/a.raw,speed=1M" "$T/mnt/mine.raw"
[[ "$(owner bash -c "$(declare -f status); status")" == "phase=running target=$T/out/a.raw "* ]]
[ "$(stat -c %U "$T/out/a.raw")" = nobody ]
owner setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/mnt/mine.raw"
[[ "$(owner bash -c "$(declare -f ctl); T=$T ctl 'mirror-start mine.raw $T/out/b.raw speed=1M'")" == ok* ]]
[[ "$(owner bash -c "$(declare -f ctl); T=$T ctl 'mirror-status mine.raw'")" == "phase=running target=$T/out/b.raw "* ]]
[[ "$(owner bash -c "$(declare -f ctl); T=$T ctl 'mirror-cancel mine.raw'")" == "ok: phase=none"* ]]
# anyone else: the view reads, the mirror and the control file are refused
other cmp "$T/src/mine.raw" "$T/mnt/mine.raw"
refused other cat "$T/mnt/.vdiskfs"
refused other getfattr -n user.vdiskfs.mirror.status "$T/mnt/mine.raw"
refused other setfattr -n user.vdiskfs.mirror.start -v "$T/out/c.raw" "$T/mnt/mine.raw"
# root
setfattr -n user.vdiskfs.mirror.start -v "target=$T/out/d.raw,speed=1M" "$T/mnt/mine.raw"
refused other setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/mnt/mine.raw"
[[ "$(status)" == "phase=running target=$T/out/d.raw "* ]]
[[ "$(ctl 'mirror-cancel mine.raw')" == "ok: phase=none"* ]]
[[ "$(ctl 'mirror-start mine.raw '"$T/out/e.raw"' speed=1M')" == ok* ]]
[[ "$(owner bash -c "$(declare -f ctl); T=$T ctl 'mirror-cancel mine.raw'")" == "ok: phase=none"* ]]
[ ! -e "$T/out/c.raw" ]
unserve

# allow_root: root as above, everyone else is kept out of the whole mount
serve allow_root
grep -q '"name":"mine.raw"' "$T/mnt/.vdiskfs"
[ "$(status)" = phase=none ]
refused other cat "$T/mnt/mine.raw"
refused other cat "$T/mnt/.vdiskfs"
unserve
SH
	run owner_ns "$T/owner.sh"
	echo "$output"
	[ "$status" -eq 0 ]
	grep -q "only the owner of the mount may run mirrors" "$T/vdiskfs.log"
}

@test "a symbolic link at the target of the control file's mirror-start is never followed" {
	mkdir "$T/src" "$T/mnt"
	head -c 8M /dev/urandom >"$T/src/a.raw"
	head -c 8M /dev/urandom >"$T/victim"
	cp "$T/victim" "$T/victim.orig"
	ln -s "$T/victim" "$T/link.raw"
	ln -s "$T/not-yet" "$T/dangling.raw"
	vd_mount "$T/src" "$T/mnt"
	local t
	for t in "$T/link.raw" "$T/link.raw existing=1" "$T/link.raw format=qcow2" \
		"$T/dangling.raw" "$T/dangling.raw existing=1"; do
		run bash -c 'exec 3<>"$1"; echo "mirror-start a.raw $2" >&3; rc=$?; cat <&3; exit $rc' ctl \
			"$T/mnt/.vdiskfs" "$t"
		echo "$t: $output"
		[ "$status" -ne 0 ]
		[[ "$output" == *"Invalid argument"* ]]
		[[ "$output" == *"is a symbolic link: refused"* ]]
		[ "$(mstatus "$T/mnt/a.raw")" = "phase=none" ]
	done
	cmp "$T/victim" "$T/victim.orig"
	[ -L "$T/link.raw" ]
	[ -L "$T/dangling.raw" ]
	[ ! -e "$T/not-yet" ]
}
