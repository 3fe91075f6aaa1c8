#!/usr/bin/env bash
# What a running job costs the guest, and how fast the mirror copies.
#
#   contrib/bench/jobs.sh [--vdiskfs PATH] [--size SIZE] [--runtime SEC] [--reps N]
#                         [--dir DIR] [--out FILE.json] [--quick]
#
# On one qcow2 view (half of it data), interleaved per repetition:
#   idle        fio 4K random writes at QD16 (O_DIRECT), no job
#   mirror-wb   the same with a write-blocking mirror in ready
#   mirror-bg   the same with a background mirror (mode=background) in ready
#   backup      the same while a push backup runs (speed-limited so that it
#               lasts the whole run)
# reports IOPS and p99 latency, and their ratio to idle (medians). Then the
# copy: the time a mirror of the idle view takes to reach ready against
# `cp --sparse=always` of the same image file into the same directory.
#
# Needs root (FUSE mounts), fio, qemu-img, qemu-io, attr.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
vdiskfs=$top/build/vdiskfs
size=1G
runtime=10
reps=3
dir=/var/tmp/vdiskfs-bench
out=
quick=0

while [ $# -gt 0 ]; do
	case $1 in
	--vdiskfs) vdiskfs=$2; shift ;;
	--size) size=$2; shift ;;
	--runtime) runtime=$2; shift ;;
	--reps) reps=$2; shift ;;
	--dir) dir=$2; shift ;;
	--out) out=$2; shift ;;
	--quick) quick=1 ;;
	-h|--help) sed -n '2,17p' "$0"; exit 0 ;;
	*) echo "jobs.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
if [ "$quick" = 1 ]; then
	size=128M runtime=2 reps=1
fi
for t in fio qemu-img qemu-io setfattr python3; do
	command -v "$t" >/dev/null || { echo "jobs.sh: $t is missing (apt-get install fio qemu-utils attr)" >&2; exit 2; }
done
[ -x "$vdiskfs" ] || { echo "jobs.sh: no vdiskfs binary at $vdiskfs (build it or pass --vdiskfs)" >&2; exit 2; }
bytes=$(numfmt --from=iec "$size")
mkdir -p "$dir"
work=$(mktemp -d "$dir/jobs.XXXXXX")
[ -n "$out" ] || out=$dir/results-jobs.json
results=$work/results.jsonl
: >"$results"
view=$work/view
vpid=

cleanup() {
	[ -e "$view" ] && { fusermount3 -u "$view" 2>/dev/null || umount -l "$view" 2>/dev/null || true; }
	[ -z "$vpid" ] || { kill "$vpid" 2>/dev/null || true; wait "$vpid" 2>/dev/null || true; }
	rm -rf "$work"
}
trap cleanup EXIT

status() { getfattr --absolute-names --only-values -n "user.vdiskfs.$1.status" "$view"; }

wait_phase() { # JOB PHASE SECONDS
	local i
	for i in $(seq 1 $(($3 * 20))); do
		[[ "$(status "$1")" == "phase=$2"* ]] && return 0
		sleep 0.05
	done
	echo "jobs.sh: $1 did not reach $2: $(status "$1")" >&2
	return 1
}

# A qcow2 image with data in its first half (written, not preallocated).
qemu-img create -q -f qcow2 "$work/src.qcow2" "$size"
qemu-io -f qcow2 -c "write -q -P 0x5a 0 $((bytes / 2))" "$work/src.qcow2" >/dev/null
touch "$view"
"$vdiskfs" -f "$work/src.qcow2" "$view" >>"$work/vdiskfs.log" 2>&1 &
vpid=$!
for i in $(seq 1 200); do
	findmnt -n --mountpoint "$view" >/dev/null 2>&1 && break
	sleep 0.05
done

# start_job SCENARIO: the job the scenario runs beside fio
start_job() {
	rm -f "$work/dst".*
	case $1 in
	idle) ;;
	mirror-wb)
		setfattr -n user.vdiskfs.mirror.start -v "target=$work/dst.qcow2" "$view"
		wait_phase mirror ready 600 ;;
	mirror-bg)
		setfattr -n user.vdiskfs.mirror.start -v "target=$work/dst.qcow2,mode=background" "$view"
		wait_phase mirror ready 600 ;;
	backup)
		# at most half the image per run: it is still copying when fio ends
		setfattr -n user.vdiskfs.backup.start \
			-v "target=$work/dst.qcow2,speed=$((bytes / 2 / runtime))" "$view" ;;
	esac
}

stop_job() {
	case $1 in
	mirror-*) setfattr -n user.vdiskfs.mirror.cancel -v 1 "$view" ;;
	backup)
		[[ "$(status backup)" == phase=running* ]] || {
			echo "jobs.sh: the backup ended before fio did: $(status backup)" >&2
			return 1
		}
		setfattr -n user.vdiskfs.backup.cancel -v 1 "$view" ;;
	esac
	rm -f "$work/dst".*
}

run_fio() { # SCENARIO REP
	local json=$work/$1-$2.json
	fio --name="$1" --filename="$view" --ioengine=io_uring --direct=1 --rw=randwrite --bs=4k \
		--iodepth=16 --size="$size" --time_based --runtime="$runtime" --randrepeat=0 \
		--norandommap --lat_percentiles=1 --output-format=json --output="$json" >/dev/null
	python3 - "$json" "$1" "$2" >>"$results" <<'PY'
import json, sys
path, scenario, rep = sys.argv[1:]
w = json.load(open(path))["jobs"][0]["write"]
pct = w["lat_ns"].get("percentile", {})
print(json.dumps({"scenario": scenario, "rep": int(rep), "iops": w["iops"],
                  "p99_us": pct.get("99.000000", 0) / 1000}))
PY
}

echo "== vdiskfs jobs benchmark: qcow2 size=$size (half data) runtime=${runtime}s reps=$reps"
echo "== vdiskfs: $vdiskfs ($("$vdiskfs" --version))"
echo "== work dir $work ($(findmnt -n -o FSTYPE --target "$work"))"
# vdiskfs mounts with -o uring=auto: FUSE over io_uring where the switch is on
echo "== transport: $([ "$(cat /sys/module/fuse/parameters/enable_uring 2>/dev/null)" = Y ] &&
	echo "FUSE over io_uring (enable_uring on)" || echo "/dev/fuse")"
scenarios=(idle mirror-wb mirror-bg backup)
for rep in $(seq 1 "$reps"); do
	for s in "${scenarios[@]}"; do
		echo "-- rep $rep $s" >&2
		start_job "$s"
		run_fio "$s" "$rep"
		stop_job "$s"
	done
	# the copy: mirror of the idle view to ready, against cp of the file
	sync
	t0=$(date +%s.%N)
	setfattr -n user.vdiskfs.mirror.start -v "target=$work/dst.qcow2" "$view"
	wait_phase mirror ready 600
	t1=$(date +%s.%N)
	setfattr -n user.vdiskfs.mirror.cancel -v 1 "$view"
	rm -f "$work/dst.qcow2"
	sync
	t2=$(date +%s.%N)
	cp --sparse=always "$work/src.qcow2" "$work/dst.qcow2"
	sync
	t3=$(date +%s.%N)
	rm -f "$work/dst.qcow2"
	python3 -c 'import json,sys; print(json.dumps({"scenario": "copy", "rep": int(sys.argv[1]),
		"mirror_s": float(sys.argv[3]) - float(sys.argv[2]), "cp_s": float(sys.argv[5]) - float(sys.argv[4])}))' \
		"$rep" "$t0" "$t1" "$t2" "$t3" >>"$results"
done

python3 - "$results" "$out" "$bytes" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
data = int(sys.argv[3]) // 2
med = lambda xs: statistics.median(xs) if xs else 0
res = {}
for s in ("idle", "mirror-wb", "mirror-bg", "backup"):
    r = [x for x in rows if x["scenario"] == s]
    res[s] = {"iops": med([x["iops"] for x in r]), "p99_us": med([x["p99_us"] for x in r])}
idle = res["idle"]
print(f"{'scenario':<10} {'IOPS':>9} {'x idle':>7} {'p99 us':>9} {'x idle':>7}")
for s, v in res.items():
    v["iops_ratio"] = v["iops"] / idle["iops"] if idle["iops"] else 0
    v["p99_ratio"] = v["p99_us"] / idle["p99_us"] if idle["p99_us"] else 0
    print(f"{s:<10} {v['iops']:>9.0f} {v['iops_ratio']:>7.2f} {v['p99_us']:>9.0f} {v['p99_ratio']:>7.2f}")
c = [x for x in rows if x["scenario"] == "copy"]
m, cp = med([x["mirror_s"] for x in c]), med([x["cp_s"] for x in c])
res["copy"] = {"data_bytes": data, "mirror_s": m, "cp_s": cp,
               "mirror_mib_s": data / m / 2**20 if m else 0, "cp_mib_s": data / cp / 2**20 if cp else 0,
               "mirror_vs_cp": cp / m if m else 0}
print(f"copy of {data >> 20} MiB of data: mirror to ready {m:.2f} s ({res['copy']['mirror_mib_s']:.0f} MiB/s), "
      f"cp --sparse=always {cp:.2f} s ({res['copy']['cp_mib_s']:.0f} MiB/s): mirror {res['copy']['mirror_vs_cp']:.2f}x cp")
json.dump(res, open(sys.argv[2], "w"), indent=1)
print(f"== results in {sys.argv[2]}")
PY
