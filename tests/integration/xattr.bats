#!/usr/bin/env bats
# Extended attributes on the raw view and the control file of a directory mount.

load helpers

@test "the read-only facts are there and true" {
	truncate -s 8M "$T/disk.raw"
	dd if=/dev/urandom of="$T/disk.raw" bs=64k count=2 conv=notrunc status=none
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	[ "$(getfattr --only-values -n user.vdiskfs.format "$T/view")" = raw ]
	[ "$(getfattr --only-values -n user.vdiskfs.virtual-size "$T/view")" = 8388608 ]
	[ "$(getfattr --only-values -n user.vdiskfs.image "$T/view")" = "$T/disk.raw" ]
	alloc=$(getfattr --only-values -n user.vdiskfs.allocated "$T/view")
	[ "$alloc" -eq $(( $(stat -c %b "$T/disk.raw") * 512 )) ]
	run getfattr -d -m - "$T/view"
	for k in format virtual-size cluster-size backing allocated image info; do
		[[ "$output" == *"user.vdiskfs.$k="* ]]
	done
	getfattr --only-values -n user.vdiskfs.info "$T/view" | python3 -c '
import json, sys
d = json.load(sys.stdin)
assert d["format"] == "raw" and d["virtual-size"] == 8388608, d
assert d["read-only"] is False and d["backing"] is None, d'
}

@test "setting attributes is refused with the right errno and changes nothing" {
	truncate -s 1M "$T/disk.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	run setfattr -n user.vdiskfs.format -v qcow2 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Operation not permitted"* ]]
	run setfattr -n user.vdiskfs.nonsense -v 1 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Invalid argument"* ]]
	run setfattr -n user.other -v 1 "$T/view"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Operation not supported"* ]]
	run getfattr -n user.vdiskfs.nonsense "$T/view"
	[ "$status" -ne 0 ]
	[ "$(getfattr --only-values -n user.vdiskfs.format "$T/view")" = raw ]
	grep -q "user.vdiskfs.nonsense" "$T/vdiskfs.log"
}

@test "a refused verb leaves its reason in user.vdiskfs.last-error" {
	truncate -s 1M "$T/disk.raw" "$T/exists.raw"
	touch "$T/view"
	vd_mount "$T/disk.raw" "$T/view"
	last() { getfattr --only-values -n user.vdiskfs.last-error "$T/view"; }
	[ "$(last)" = "" ]
	run setfattr -n user.vdiskfs.format -v qcow2 "$T/view"
	[ "$(last)" = "$T/disk.raw: user.vdiskfs.format is read-only" ]
	# six causes of EINVAL, each in words
	run setfattr -n user.vdiskfs.mirror.start -v "relative.raw" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	[[ "$(last)" == *"relative.raw"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "target=$T/x.raw,speed=fast" "$T/view"
	[[ "$output" == *"Invalid argument"* ]]
	[[ "$(last)" == *"speed"* ]]
	run setfattr -n user.vdiskfs.mirror.start -v "$T/exists.raw" "$T/view"
	[[ "$output" == *"File exists"* ]]
	[[ "$(last)" == *"$T/exists.raw"*"exists"* ]]
	# no job is not no such view
	run setfattr -n user.vdiskfs.mirror.complete -v 1 "$T/view"
	[[ "$output" == *"No such process"* ]]
	[ "$(last)" = "$T/disk.raw: mirror complete: no mirror is running" ]
	# a verb that works clears it
	setfattr -n user.vdiskfs.mirror.start -v "$T/dst.raw" "$T/view"
	[ "$(last)" = "" ]
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$T/view"
	[[ "$(getfattr -d -m - "$T/view")" == *"user.vdiskfs.last-error"* ]]
}

@test "the control file reads as JSON status and runs commands" {
	mkdir "$T/src" "$T/mnt"
	truncate -s 1M "$T/src/a.raw"
	truncate -s 2M "$T/src/b.img"
	vd_mount "$T/src" "$T/mnt"
	python3 - "$T/mnt/.vdiskfs" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
names = [i["name"] for i in d["images"]]
assert names == ["a.raw", "b.img"], names
assert d["images"][1]["virtual-size"] == 2 << 20
assert d["errors"] == []
PY
	# a command and its reply through one open file
	python3 - "$T/mnt/.vdiskfs" <<'PY'
import errno, json, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
os.write(fd, b"status\n")
reply = os.pread(fd, 1 << 20, 0)
assert json.loads(reply)["images"], reply
try:
    os.write(fd, b"frobnicate a.raw\n")
    raise SystemExit("unknown command accepted")
except OSError as e:
    assert e.errno == errno.EINVAL, e
reply = os.pread(fd, 1 << 20, 0).decode()
assert "unknown command" in reply, reply
# one command per write, with exactly its words
for bad, why in [(b"status\nmirror-cancel a.raw\n", "one command"),
                 (b"mirror-status a.raw\0junk\n", "NUL"),
                 (b"status now\n", "usage: status"),
                 (b"mirror-status\n", "usage: mirror-status NAME"),
                 (b"mirror-start a.raw /x.raw speed\n", "not key=value")]:
    try:
        os.write(fd, bad)
        raise SystemExit("accepted: %r" % bad)
    except OSError as e:
        assert e.errno == errno.EINVAL, (bad, e)
    reply = os.pread(fd, 1 << 20, 0).decode()
    assert reply.startswith("error: ") and why in reply, (bad, reply)
PY
}

@test "with allow_other, permissions are checked and only the owner uses the control file" {
	chmod 755 "$T"
	mkdir "$T/src" "$T/mnt"
	head -c 1M /dev/urandom >"$T/src/a.raw"
	chmod 644 "$T/src/a.raw"
	vd_mount "$T/src" "$T/mnt" -o allow_other
	as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }
	# others may read a 0644 image's view, not write it
	as_nobody cmp "$T/src/a.raw" "$T/mnt/a.raw"
	run as_nobody dd if=/dev/zero of="$T/mnt/a.raw" bs=4k count=1 conv=notrunc status=none
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	run as_nobody cat "$T/mnt/.vdiskfs"
	[ "$status" -ne 0 ]
	[[ "$output" == *"Permission denied"* ]]
	python3 -c 'import json,sys; json.load(open(sys.argv[1]))' "$T/mnt/.vdiskfs"
}

@test "the control file reply reads back on the same descriptor from the shell" {
	mkdir "$T/src" "$T/mnt"
	truncate -s 1M "$T/src/a.raw"
	vd_mount "$T/src" "$T/mnt"
	exec 5<>"$T/mnt/.vdiskfs"
	echo status >&5
	reply=$(cat <&5)
	exec 5>&-
	echo "$reply" | python3 -c 'import json,sys; assert json.load(sys.stdin)["images"][0]["name"] == "a.raw"'
}
