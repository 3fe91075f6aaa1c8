#!/usr/bin/env bash
# Whole-daemon mutation fuzzing: mutated qcow2 and vhdx images mounted with
# the AddressSanitizer+UBSan build, read, written, unmounted and compared with
# qemu-img (tests/fuzz/fuzz-mount.py; docs/fuzzing.md says what and why).
#   contrib/fuzz-mount.sh [--rounds N | --seconds S] [--seed N] [--out DIR]
#                         [--vdiskfs PATH] [--format qcow2|vhdx|both] [-v]
#   contrib/fuzz-mount.sh --replay DIR      # a kept case again (DIR/REPRODUCE)
# Builds build-asan and the seeds (tests/fuzz/make-seeds.sh --mount) first.
# Every failing case (crash, hang, escape, mismatch) is kept in --out
# (default fuzz-mount-out/) with its log and a one-line reproduction; the
# last line counts the cases per class; exit status 1 if any failed.
set -euo pipefail
cd "$(dirname "$0")/.."
args=()
vdiskfs=
while [ $# -gt 0 ]; do
	case $1 in
	--vdiskfs) vdiskfs=$(realpath "$2"); shift ;;
	-h|--help) sed -n '2,12p' "$0"; exit 0 ;;
	*) args+=("$1") ;;
	esac
	shift
done
if [ -z "$vdiskfs" ]; then
	if [ ! -d build-asan ]; then
		meson setup build-asan --werror -Db_sanitize=address,undefined -Db_lundef=false
	fi
	meson compile -C build-asan >/dev/null
	vdiskfs=$PWD/build-asan/vdiskfs
fi
build=$(realpath --relative-to=. "$(dirname "$vdiskfs")")
seeds=$build/fuzz-mount-seeds
if [ ! -d "$seeds" ] || [ tests/fuzz/make-seeds.sh -nt "$seeds" ]; then
	rm -rf "$seeds" "$seeds.new"
	if ! tests/fuzz/make-seeds.sh --mount "$seeds.new" "$build" >"$seeds.log" 2>&1; then
		cat "$seeds.log" >&2
		exit 1
	fi
	mv "$seeds.new" "$seeds"
fi
exec python3 tests/fuzz/fuzz-mount.py --vdiskfs "$vdiskfs" --seeds "$seeds" "${args[@]}"
