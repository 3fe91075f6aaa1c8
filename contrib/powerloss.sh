#!/usr/bin/env bash
# Power-loss campaign (docs/powerloss.md): for each scenario, recorded runs of
# the writer through vdiskfs, then many crash states built from each record
# and checked (qemu-img check, vhdx log replay by vdiskfs and by QEMU, every
# write acknowledged by a completed fdatasync reads back, no data from
# another offset). Builds nothing.
#   contrib/powerloss.sh [--scenario NAME|all] [--runs R] [--states N]
#                        [--seed S] [--vdiskfs PATH]
# Defaults: every scenario (empty backing snapshot compressed c512 evict
# vhdx commit backup), 2 runs of 500 states each, seed from the clock,
# build/vdiskfs. Needs root (or fuse access), qemu-img and python3. Scratch under
# $VDISKFS_TESTDIR (/var/tmp); failing states are kept there, each with a
# one-line command that checks it again; the rest is removed.
set -uo pipefail
top=$(cd "$(dirname "$0")/.." && pwd)
scenarios=all
runs=2
states=500
seed=$(date +%s)
VDISKFS=$top/build/vdiskfs
while [ $# -gt 0 ]; do
	case $1 in
	--scenario) scenarios=$2; shift ;;
	--runs) runs=$2; shift ;;
	--states) states=$2; shift ;;
	--seed) seed=$2; shift ;;
	--vdiskfs) VDISKFS=$2; shift ;;
	-h|--help) sed -n '2,14p' "$0"; exit 0 ;;
	*) echo "unknown argument: $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
[ -x "$VDISKFS" ] || { echo "no vdiskfs binary at $VDISKFS (build it, or --vdiskfs PATH)" >&2; exit 2; }
VDISKFS=$(cd "$(dirname "$VDISKFS")" && pwd)/$(basename "$VDISKFS")
export VDISKFS VDISKFS_SRC=$top
# shellcheck source=tests/integration/helpers.bash
. "$top/tests/integration/helpers.bash"
# shellcheck source=tests/integration/powerloss.bash
. "$top/tests/integration/powerloss.bash"
[ "$scenarios" = all ] && scenarios=$PL_SCENARIOS

T=$(mktemp -d "${VDISKFS_TESTDIR:-/var/tmp}/vdiskfs-powerloss.XXXXXX")
failed=0
start_all=$SECONDS
echo "seed $seed, scratch $T"
for name in $scenarios; do
	for r in $(seq 1 "$runs"); do
		d=$T/$name.$r
		s=$((seed + r))
		start=$SECONDS
		if ! pl_run "$name" "$d" "$s" >"$d.out" 2>&1; then
			echo "$name run $r (seed $s): the recorded run failed; kept $d, $d.out" >&2
			failed=1
			continue
		fi
		info=$(tail -1 "$d.out")
		if pl_states "$name" "$d" "$states" "$s" --keep "$d/failed" >"$d.states" 2>&1; then
			echo "$name run $r (seed $s): $info; $(tail -1 "$d.states" | sed 's/.*: //')" \
				"in $((SECONDS - start)) s"
			rm -rf "$d" "$d.out" "$d.states"
		else
			echo "$name run $r (seed $s): $info; FAILED, kept $d:" >&2
			grep -v ': ok$' "$d.states" >&2
			failed=1
		fi
	done
done
echo "power-loss campaign: $((SECONDS - start_all)) s, $([ $failed -eq 0 ] && echo passed ||
	echo "FAILED (kept $T)")"
[ "$failed" -eq 0 ] && rm -rf "$T"
exit "$failed"
