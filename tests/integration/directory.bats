#!/usr/bin/env bats
# Directory mounts: every image under its own name, non-images hidden, images
# added or removed appear or vanish, one broken image reported, not fatal.

load helpers

@test "a directory of images: images shown, other files hidden" {
	mkdir "$T/src" "$T/mnt"
	head -c 1M /dev/urandom >"$T/src/a.raw"
	truncate -s 2M "$T/src/b.img"
	echo "hello" >"$T/src/notes.txt"
	mkdir "$T/src/subdir"
	vd_mount "$T/src" "$T/mnt"
	run ls -A "$T/mnt"
	echo "$output"
	[ "$output" = "$(printf '.vdiskfs\na.raw\nb.img')" ]
	cmp "$T/src/a.raw" "$T/mnt/a.raw"
	[ "$(stat -c %s "$T/mnt/b.img")" -eq $((2 << 20)) ]
	[ ! -e "$T/mnt/notes.txt" ]
	[ ! -e "$T/mnt/subdir" ]
	dd if=/dev/urandom of="$T/mnt/b.img" bs=4k count=3 seek=5 conv=notrunc status=none
	cmp "$T/src/b.img" "$T/mnt/b.img"
}

@test "images added to or removed from SOURCE appear or vanish" {
	mkdir "$T/src" "$T/mnt"
	truncate -s 1M "$T/src/a.raw"
	vd_mount "$T/src" "$T/mnt"
	[ ! -e "$T/mnt/new.raw" ]
	head -c 3M /dev/urandom >"$T/src/new.raw"
	run ls "$T/mnt"
	[[ "$output" == *new.raw* ]]
	cmp "$T/src/new.raw" "$T/mnt/new.raw"
	rm "$T/src/a.raw"
	run ls "$T/mnt"
	[[ "$output" != *a.raw* ]]
	sleep 1.1 # the kernel's entry cache
	[ ! -e "$T/mnt/a.raw" ]
	# a file replaced under the same name is the new image
	rm "$T/src/new.raw"
	truncate -s 5M "$T/src/new.raw"
	sleep 1.1
	[ "$(stat -c %s "$T/mnt/new.raw")" -eq $((5 << 20)) ]
}

@test "one broken image does not stop the others and is reported" {
	mkdir "$T/src" "$T/mnt"
	head -c 1M /dev/urandom >"$T/src/good.raw"
	printf 'QFI\xfb\x00\x00\x00\x03' >"$T/src/broken.qcow2"
	truncate -s 4096 "$T/src/broken.qcow2"
	vd_mount "$T/src" "$T/mnt"
	cmp "$T/src/good.raw" "$T/mnt/good.raw"
	[ ! -e "$T/mnt/broken.qcow2" ]
	grep -q "broken.qcow2" "$T/vdiskfs.log"
	run python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([e["name"] for e in d["errors"]], [i["name"] for i in d["images"]])' "$T/mnt/.vdiskfs"
	echo "$output"
	[ "$output" = "['broken.qcow2'] ['good.raw']" ]
}

@test "the control file read and closed by many threads at once (found by fuzz-mount)" {
	# A reader closes the file as soon as it has the bytes; the release (on
	# another loop thread) must not free what a read is still replying from.
	# The AddressSanitizer build saw the reply buffer freed under writev.
	mkdir "$T/src" "$T/mnt"
	truncate -s 1M "$T/src/a.raw"
	vd_mount "$T/src" "$T/mnt" -o threads=4
	run python3 - "$T/mnt/.vdiskfs" <<'PY'
import json, sys, threading
bad = []
def reader():
    for _ in range(100):
        try:
            with open(sys.argv[1], "rb", buffering=0) as f:
                json.loads(f.read(1 << 16))
        except (OSError, ValueError) as e:
            bad.append(repr(e))
            return
ts = [threading.Thread(target=reader) for _ in range(4)]
for t in ts:
    t.start()
for t in ts:
    t.join()
print(bad[:1])
PY
	echo "$output"
	[ "$output" = "[]" ]
	vd_umount "$T/mnt"
	[ "$VD_STATUS" -eq 0 ]
}

@test "the view of an image in use keeps working after the file is removed" {
	mkdir "$T/src" "$T/mnt"
	head -c 1M /dev/urandom >"$T/src/a.raw"
	cp "$T/src/a.raw" "$T/ref"
	vd_mount "$T/src" "$T/mnt"
	python3 - "$T/mnt/a.raw" "$T/src/a.raw" "$T/ref" "$T/mnt" <<'PY'
import os, sys
view, src, ref, mnt = sys.argv[1:]
with open(view, "rb") as f:
    os.unlink(src)
    assert "a.raw" not in os.listdir(mnt)
    assert f.read() == open(ref, "rb").read()
PY
}

@test "a directory mounted on a folder inside itself does not look at its own mount" {
	mkdir "$T/src" "$T/src/mnt"
	truncate -s 1M "$T/src/a.raw"
	ln -s mnt "$T/src/loop.raw"
	vd_mount "$T/src" "$T/src/mnt" -o threads=1
	run timeout -s KILL 10 ls "$T/src/mnt"
	[ "$status" -eq 0 ]
	[ "$output" = "a.raw" ]
	run timeout -s KILL 10 cat "$T/src/mnt/.vdiskfs"
	[ "$status" -eq 0 ]
}
