#!/usr/bin/env bash
# Quick start on a fresh Debian 12 machine, as root: install what is missing,
# build vdiskfs into build/, then either mount a demo directory of images
# (no arguments) or mount SOURCE on MOUNTPOINT, and show the views with
# ls -ls, getfattr, fdisk -l and the control file.
#
#   contrib/quickstart.sh                       # demo in /var/tmp/vdiskfs-demo
#   contrib/quickstart.sh SOURCE MOUNTPOINT     # your image or directory
#
# VDISKFS_DEMO=DIR puts the demo somewhere else. Running it again reuses the
# build, the demo images and remounts.
set -euo pipefail

die() {
	echo "quickstart: $*" >&2
	exit 1
}

usage() {
	sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
}

case "${1:-}" in
-h | --help)
	usage
	exit 0
	;;
esac
[ $# -eq 0 ] || [ $# -eq 2 ] || {
	usage >&2
	exit 2
}
[ "$(id -u)" -eq 0 ] || die "run me as root (I install packages and mount)"

# Resolve the arguments before leaving the caller's directory.
src="" mnt=""
if [ $# -eq 2 ]; then
	[ -e "$1" ] || die "$1: no such file or directory"
	src=$(realpath -- "$1")
	mnt=$(realpath -m -- "$2")
fi

cd "$(dirname "$0")/.."
top=$(pwd)

# ---- packages: only what is missing; no apt at all if nothing is ----
pkgs=(meson ninja-build pkg-config gcc libfuse3-dev liburing-dev zlib1g-dev libzstd-dev
	libglib2.0-dev fuse3 qemu-utils attr fdisk)
bash "$top/contrib/install-missing.sh" "${pkgs[@]}"
[ -e /dev/fuse ] || modprobe fuse || die "no /dev/fuse and cannot load the fuse module"

# ---- build (reusing build/ when it is there) ----
echo "== building into $top/build"
if [ ! -f build/build.ninja ]; then
	meson setup build >/dev/null
fi
meson compile -C build vdiskfs >/dev/null
vdiskfs=$top/build/vdiskfs
"$vdiskfs" --version

# Unmount MOUNTPOINT if a vdiskfs is mounted there (a previous run).
unmount_previous() {
	local m=$1 type
	type=$(findmnt -rn -o FSTYPE --mountpoint "$m" 2>/dev/null | tail -n 1 || true)
	[ -n "$type" ] || return 0
	[ "$type" = fuse.vdiskfs ] || die "$m: something else ($type) is mounted there"
	echo "== unmounting the previous mount on $m"
	fusermount3 -u "$m" || umount "$m" || die "$m: cannot unmount (busy?)"
}

# show VIEW: what ordinary tools see in one raw view.
show_view() {
	local v=$1
	echo
	echo "\$ getfattr -d -m - $v"
	getfattr -d -m - "$v" || true
	echo "\$ fdisk -l $v"
	fdisk -l "$v" || true
}

# ---- the demo images (made once, reused afterwards) ----
# The same GPT disk as qcow2 and vhdx: partitioned raw, then qemu-img convert.
make_gpt_images() {
	local dir=$1 img=$2 tmp
	tmp=$(mktemp "$dir/.gpt.XXXXXX.tmp")
	# A 1 GiB disk with a GPT: an EFI system partition and a Linux one.
	truncate -s 1G "$tmp"
	sfdisk --quiet "$tmp" <<-'EOF'
		label: gpt
		size=64MiB, type=uefi, name=esp
		type=linux, name=root
	EOF
	if [ ! -e "$img/disk.qcow2" ]; then
		echo "== creating $img/disk.qcow2 (GPT, converted by qemu-img)"
		qemu-img convert -q -f raw -O qcow2 "$tmp" "$img/disk.qcow2"
	fi
	if [ ! -e "$img/disk.vhdx" ]; then
		echo "== creating $img/disk.vhdx (the same disk, qemu-img convert -O vhdx)"
		qemu-img convert -q -f raw -O vhdx "$tmp" "$img/disk.vhdx"
	fi
	rm -f "$tmp"
}

make_demo() {
	local dir=$1 img=$1/images
	mkdir -p "$img"
	if [ ! -e "$img/disk.qcow2" ] || [ ! -e "$img/disk.vhdx" ]; then
		make_gpt_images "$dir" "$img"
	fi
	if [ ! -e "$img/data.raw" ]; then
		echo "== creating $img/data.raw (256 MiB, sparse, 4 MiB of data at 16 MiB)"
		truncate -s 256M "$img/data.raw"
		head -c 4M /dev/urandom | dd of="$img/data.raw" bs=1M seek=16 conv=notrunc \
			status=none iflag=fullblock
	fi
	if [ ! -e "$img/README.txt" ]; then
		echo "not an image: vdiskfs does not show this file" >"$img/README.txt"
	fi
}

if [ -z "$src" ]; then
	demo=${VDISKFS_DEMO:-/var/tmp/vdiskfs-demo}
	src=$demo/images
	mnt=$demo/mnt
	mkdir -p "$demo"
	unmount_previous "$mnt"
	make_demo "$demo"
	mkdir -p "$mnt"
else
	unmount_previous "$mnt"
	if [ -d "$src" ]; then
		[ -e "$mnt" ] || mkdir -p "$mnt"
		[ -d "$mnt" ] || die "$mnt: SOURCE is a directory, so MOUNTPOINT must be one too"
	else
		[ -e "$mnt" ] || {
			mkdir -p "$(dirname "$mnt")"
			touch "$mnt"
		}
		[ -f "$mnt" ] || die "$mnt: SOURCE is an image, so MOUNTPOINT must be a regular file"
	fi
fi

echo "== $vdiskfs $src $mnt"
"$vdiskfs" "$src" "$mnt"

echo
if [ -d "$mnt" ]; then
	echo "\$ ls -ls $mnt"
	ls -ls "$mnt"
	# One view to look at: the qcow2 disk of the demo, else the first one.
	view=""
	[ -e "$mnt/disk.qcow2" ] && view=$mnt/disk.qcow2
	if [ -z "$view" ]; then
		for f in "$mnt"/*; do
			[ -f "$f" ] && view=$f && break
		done
	fi
	if [ -n "$view" ]; then
		show_view "$view"
	else
		echo "(no image is served: see \"errors\" below)"
	fi
	echo
	echo "\$ cat $mnt/.vdiskfs"
	cat "$mnt/.vdiskfs"
else
	echo "\$ ls -ls $mnt"
	ls -ls "$mnt"
	show_view "$mnt"
fi

cat <<EOF

vdiskfs serves $src on $mnt.
Unmount with:   fusermount3 -u $mnt
Manual page:    man -l $top/man/vdiskfs.1
EOF
