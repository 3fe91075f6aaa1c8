# Shared helpers for the bats integration tests: a scratch directory per test,
# mounting and unmounting vdiskfs for real, and waiting with time limits.
# Each test file does: load helpers

: "${VDISKFS:?VDISKFS must name the vdiskfs binary (meson test sets it)}"
: "${VDISKFS_SRC:=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}"
# The project's shared folder (images that broke vdiskfs, images from other
# writers) sits beside the source tree, as in CI; it is read, never written.
: "${VDISKFS_SHARED:=$VDISKFS_SRC/../shared}"

# A fresh scratch directory for each test, on the same filesystem as the build
# (not tmpfs: tests rely on SEEK_HOLE, punch hole and O_DIRECT of a real fs).
setup_scratch() {
	T=$(mktemp -d "${VDISKFS_TESTDIR:-/var/tmp}/vdiskfs-test.XXXXXX")
	export T
	cd "$T" # whatever a tool leaves in its working directory goes with the scratch
}

# Unmount what the test mounted, then fail on any sanitizer report a daemon
# wrote to its log on the way out (ASan/UBSan builds).
teardown_scratch() {
	local i bad=0
	# Newest first, and only what is still mounted: vd_umount waits for the
	# newest daemon (VD_PID), which an older, already unmounted path would
	# wait on for nothing until it is killed.
	for ((i = ${#VD_MOUNTS[@]} - 1; i >= 0; i--)); do
		is_mounted "${VD_MOUNTS[i]}" && { vd_umount "${VD_MOUNTS[i]}" 2>/dev/null || true; }
	done
	vd_wait_exit
	VD_MOUNTS=()
	cd /
	if [ -n "${T:-}" ] && grep -hE "Sanitizer|runtime error" "$T"/vdiskfs*.log >&2 2>/dev/null; then
		bad=1
	fi
	[ -n "${T:-}" ] && rm -rf "$T"
	[ "$bad" -eq 0 ]
}

# require TOOL...: skip the test (honestly, as bats' skip) when a tool beyond
# the base set (vdiskfs, qemu-img, qemu-io, fio, attr, python3) is missing.
require() {
	local t
	for t in "$@"; do
		command -v "$t" >/dev/null 2>&1 || skip "$t not found"
	done
}

setup() { setup_scratch; }
teardown() { teardown_scratch; }

VD_MOUNTS=()

# is_mounted PATH: true while a vdiskfs (fuse) mount sits on PATH
is_mounted() {
	findmnt -n -t fuse.vdiskfs --mountpoint "$1" >/dev/null 2>&1 ||
		findmnt -n -t fuse --mountpoint "$1" >/dev/null 2>&1
}

# vd_mount SOURCE MOUNTPOINT [vdiskfs args...]
# Starts the daemon in the foreground in the background (so tests see its pid
# in VD_PID and its log in $T/vdiskfs.log) and waits until the mount is up.
vd_mount() {
	local src=$1 mnt=$2
	shift 2
	"$VDISKFS" -f "$@" "$src" "$mnt" >>"$T/vdiskfs.log" 2>&1 &
	VD_PID=$!
	VD_MOUNTS+=("$mnt")
	local i
	for i in $(seq 1 200); do
		if is_mounted "$mnt"; then
			return 0
		fi
		if ! kill -0 "$VD_PID" 2>/dev/null; then
			echo "vdiskfs exited before mounting; log:" >&2
			cat "$T/vdiskfs.log" >&2
			return 1
		fi
		sleep 0.05
	done
	echo "vdiskfs did not mount $mnt within 10 s; log:" >&2
	cat "$T/vdiskfs.log" >&2
	return 1
}

# vd_umount MOUNTPOINT: unmount and wait for the daemon to exit (status in VD_STATUS)
vd_umount() {
	local mnt=$1
	if is_mounted "$mnt"; then
		fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt"
	fi
	vd_wait_exit
}

# vd_wait_exit: wait (up to 30 s) for the daemon started by vd_mount to exit
vd_wait_exit() {
	VD_STATUS=0
	[ -n "${VD_PID:-}" ] || return 0
	local i
	for i in $(seq 1 600); do
		kill -0 "$VD_PID" 2>/dev/null || break
		sleep 0.05
	done
	if kill -0 "$VD_PID" 2>/dev/null; then
		echo "vdiskfs $VD_PID did not exit" >&2
		kill -9 "$VD_PID"
		VD_STATUS=124
	else
		wait "$VD_PID" 2>/dev/null && VD_STATUS=0 || VD_STATUS=$?
	fi
	VD_PID=
	return 0
}

# vd_kill9 MOUNTPOINT: SIGKILL the daemon (crash tests), then lazily unmount
vd_kill9() {
	kill -9 "$VD_PID" 2>/dev/null || true
	wait "$VD_PID" 2>/dev/null || true
	VD_PID=
	umount -l "$1" 2>/dev/null || fusermount3 -uz "$1" 2>/dev/null || true
}

# qemu_check IMAGE: qemu-img check, failing the test with its output on errors
qemu_check() {
	run qemu-img check "$@"
	if [ "$status" -ne 0 ]; then
		echo "qemu-img check $* exited $status:" >&2
		echo "$output" >&2
		return 1
	fi
}

# alloc_is VIEW BYTES: st_blocks * 512 of VIEW and its allocated xattr both
# say BYTES (waiting up to 3 s for the kernel's attribute cache to expire)
alloc_is() {
	local i b=
	for i in $(seq 1 30); do
		b=$(($(stat -c %b "$1") * 512))
		[ "$b" -eq "$2" ] && break
		sleep 0.1
	done
	if [ "$b" -ne "$2" ]; then
		echo "$1: st_blocks * 512 is $b, expected $2" >&2
		return 1
	fi
	[ "$(getfattr --only-values -n user.vdiskfs.allocated "$1")" -eq "$2" ]
}

# shared_image REL DEST: a scratch copy of shared/REL at DEST, decompressed
# (.xz, .gz, .bz2). Fails, never skips, when the image is missing.
shared_image() {
	local src=$VDISKFS_SHARED/$1
	if [ ! -r "$src" ]; then
		echo "missing $src (shared/ must sit beside the source tree)" >&2
		return 1
	fi
	case $src in
	*.xz) xz -dc "$src" >"$2" ;;
	*.gz) gzip -dc "$src" >"$2" ;;
	*.bz2) bzip2 -dc "$src" >"$2" ;;
	*) cp "$src" "$2" ;;
	esac
}

# seek_runs VIEW MAP_JSON: the data runs SEEK_DATA/SEEK_HOLE find in VIEW are
# the runs qemu-img map --output=json marks "data" (merged where they touch).
seek_runs() {
	python3 - "$1" "$2" <<'PY'
import errno, json, os, sys
want = []
for e in json.load(open(sys.argv[2])):
    if not e["data"]:
        continue
    if want and want[-1][1] == e["start"]:
        want[-1][1] += e["length"]
    else:
        want.append([e["start"], e["start"] + e["length"]])
fd = os.open(sys.argv[1], os.O_RDONLY)
size = os.fstat(fd).st_size
got, pos = [], 0
while pos < size:
    try:
        d = os.lseek(fd, pos, os.SEEK_DATA)
    except OSError as e:
        assert e.errno == errno.ENXIO, e
        break
    pos = os.lseek(fd, d, os.SEEK_HOLE)
    got.append([d, pos])
    # from inside a run: data stays where it is, the hole is the run's end
    assert os.lseek(fd, d + 1, os.SEEK_DATA) == d + 1
    assert os.lseek(fd, d + 1, os.SEEK_HOLE) == pos
assert got == want, ("seek finds", got, "qemu-img map says", want)
PY
}

# fio_verify VIEW SIZE OFFSET BS: two fio jobs at once, each writing with
# crc32c verification: O_DIRECT 4 KiB random writes (iodepth 16) on
# [0, SIZE) and buffered BS random writes (iodepth 8) on [OFFSET,
# OFFSET+SIZE); the log is shown when fio fails.
fio_verify() {
	fio --name=direct --filename="$1" --rw=randwrite --bs=4k --iodepth=16 \
		--ioengine=io_uring --direct=1 --size="$2" --offset=0 --verify=crc32c \
		--verify_fatal=1 --do_verify=1 \
		--name=buffered --filename="$1" --rw=randwrite --bs="$4" --iodepth=8 \
		--ioengine=io_uring --direct=0 --size="$2" --offset="$3" --verify=crc32c \
		--verify_fatal=1 --do_verify=1 >"$T/fio.log" 2>&1 || { cat "$T/fio.log"; false; }
}
