#!/usr/bin/env bash
# Repeated crash test: rounds of SIGKILL at a random moment while a writer does
# random writes + fdatasync through a vdiskfs mount; after each, qemu-img check
# must find no corruption and every write acknowledged by an fsync must read
# back (qemu-img convert, then through vdiskfs again). Builds nothing.
#   contrib/crash-test.sh [--format qcow2|vhdx|both] [--rounds N] [--vdiskfs PATH]
#                         [--size SIZE]
# Defaults: both formats, 50 rounds, build/vdiskfs, a 64M image. Needs root (or
# fuse access), qemu-img and python3. Scratch under $VDISKFS_TESTDIR (/var/tmp);
# on a failure it is kept with the image, the writer's logs and vdiskfs.log.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
formats=(qcow2 vhdx)
rounds=50
size=64M
VDISKFS=$top/build/vdiskfs
while [ $# -gt 0 ]; do
	case $1 in
	--format) [ "$2" = both ] && formats=(qcow2 vhdx) || formats=("$2"); shift ;;
	--rounds) rounds=$2; shift ;;
	--vdiskfs) VDISKFS=$2; shift ;;
	--size) size=$2; shift ;;
	-h|--help) sed -n '2,10p' "$0"; exit 0 ;;
	*) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
for f in "${formats[@]}"; do
	case $f in qcow2|vhdx) ;; *) echo "--format: qcow2, vhdx or both" >&2; exit 2 ;; esac
done
[ -x "$VDISKFS" ] || { echo "no vdiskfs binary at $VDISKFS (build it, or --vdiskfs PATH)" >&2; exit 2; }
VDISKFS=$(cd "$(dirname "$VDISKFS")" && pwd)/$(basename "$VDISKFS")
export VDISKFS VDISKFS_SRC=$top
# shellcheck source-path=SCRIPTDIR/..
# shellcheck source=tests/integration/helpers.bash
. "$top/tests/integration/helpers.bash"
# shellcheck source=tests/integration/crash.bash
. "$top/tests/integration/crash.bash"

scratch=$(mktemp -d "${VDISKFS_TESTDIR:-/var/tmp}/vdiskfs-crash.XXXXXX")
failed=0
start_all=$SECONDS
for fmt in "${formats[@]}"; do
	T=$scratch/$fmt
	mkdir -p "$T"
	img=$T/crash.$fmt
	if [ "$fmt" = qcow2 ]; then
		qemu-img create -q -f qcow2 -o cluster_size=64k "$img" "$size"
	else
		qemu-img create -q -f vhdx -o block_size=1M "$img" "$size"
	fi
	start=$SECONDS
	for r in $(seq 1 "$rounds"); do
		t0=$(date +%s%N)
		if ! crash_round "$fmt" "$img" "$r" >"$T/round.out"; then
			echo "$fmt round $r/$rounds FAILED; kept: $T (image, crash.log.$r, vdiskfs.log)" >&2
			for m in "${VD_MOUNTS[@]}"; do vd_umount "$m" 2>/dev/null; done
			failed=1
			break
		fi
		ms=$((($(date +%s%N) - t0) / 1000000))
		line=$(cat "$T/round.out")
		printf '%s %s/%s (%d.%d s): %s\n' "$fmt" "$r" "$rounds" $((ms / 1000)) \
			$((ms % 1000 / 100)) "${line#round "$r": }"
		rm -f "$T/crash.log.$r"
	done
	[ "$failed" -eq 0 ] || break
	echo "$fmt: $rounds rounds passed in $((SECONDS - start)) s"
done
if [ "$failed" -ne 0 ]; then
	exit 1
fi
rm -rf "$scratch"
echo "crash test passed: ${formats[*]}, $rounds rounds each, $((SECONDS - start_all)) s"
