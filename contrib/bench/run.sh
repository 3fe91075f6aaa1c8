#!/usr/bin/env bash
# Benchmark vdiskfs against the host raw file (the limit) and
# qemu-storage-daemon's FUSE export (the peer), interleaved in one run
# (A B C A B C ...), and print medians and ratios.
#
#   contrib/bench/run.sh [--vdiskfs PATH] [--format qcow2|vhdx|raw] [--quick]
#                        [--reps N] [--runtime SEC] [--size SIZE] [--dir DIR]
#                        [--out FILE.json] [--only WORKLOAD[,WORKLOAD...]]
#                        [--transport dev|ring|both] [--passthrough on|off]
#                        [--opts VDISKFS_MOUNT_OPTIONS]
#
# --transport names the FUSE transports measured, each as its own target:
# vdiskfs-dev is vdiskfs over /dev/fuse (-o uring=off: what a user gets while
# the kernel's enable_uring switch is off, its default), vdiskfs-ring is FUSE
# over io_uring (-o uring=on). both (the default where the kernel has FUSE
# over io_uring) measures the two in the same run; ring and both turn the
# fuse module's enable_uring switch on for the run (and back afterwards).
# --passthrough on (the default with --format raw) adds vdiskfs-pt: vdiskfs
# with -o passthrough=on over /dev/fuse.
#
# The *-4j workloads run four fio threads (numjobs=4) at a quarter of the
# queue depth each, so that the client, like a VMM's vCPUs and I/O threads,
# can use every CPU.
#
# Needs root (FUSE mounts, dropping caches), fio, qemu-img and
# qemu-storage-daemon (packages fio qemu-utils qemu-system-common).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
vdiskfs=$top/build/vdiskfs
format=qcow2
reps=3
runtime=10
size=1G
dir=/var/tmp/vdiskfs-bench
out=
only=
quick=0
uring_param=/sys/module/fuse/parameters/enable_uring
transport=$([ -w "$uring_param" ] && echo both || echo dev)
opts=
passthrough=

while [ $# -gt 0 ]; do
	case $1 in
	--vdiskfs) vdiskfs=$2; shift ;;
	--format) format=$2; shift ;;
	--reps) reps=$2; shift ;;
	--runtime) runtime=$2; shift ;;
	--size) size=$2; shift ;;
	--dir) dir=$2; shift ;;
	--out) out=$2; shift ;;
	--only) only=$2; shift ;;
	--quick) quick=1 ;;
	--transport) transport=$2; shift ;;
	--passthrough) passthrough=$2; shift ;;
	--opts) opts=,$2; shift ;;
	-h|--help) sed -n '2,28p' "$0"; exit 0 ;;
	*) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
ramp=1
if [ "$quick" = 1 ]; then
	# one-second runs (3 reps, 14 workloads, 4 or 5 targets): six to eight minutes
	reps=3 runtime=1 size=256M ramp=0
fi
case $format in qcow2|vhdx|raw) ;; *) echo "run.sh: --format qcow2|vhdx|raw" >&2; exit 2 ;; esac
case $transport in dev|ring|both) ;; *) echo "run.sh: --transport dev|ring|both" >&2; exit 2 ;; esac
[ -n "$passthrough" ] || passthrough=$([ "$format" = raw ] && echo on || echo off)
case $passthrough in on|off) ;; *) echo "run.sh: --passthrough on|off" >&2; exit 2 ;; esac
if [ "$passthrough" = on ] && [ "$format" != raw ]; then
	echo "run.sh: --passthrough on needs --format raw (only raw views pass through)" >&2
	exit 2
fi
if [ "$transport" != dev ] && [ ! -w "$uring_param" ]; then
	echo "run.sh: --transport $transport needs FUSE over io_uring in the kernel ($uring_param)" >&2
	exit 2
fi
for t in fio qemu-img qemu-storage-daemon python3; do
	command -v "$t" >/dev/null || { echo "run.sh: $t is missing (apt-get install fio qemu-utils qemu-system-common)" >&2; exit 2; }
done
[ -x "$vdiskfs" ] || { echo "run.sh: no vdiskfs binary at $vdiskfs (build it or pass --vdiskfs)" >&2; exit 2; }
[ -n "$out" ] || out=$dir/results-$format.json

mkdir -p "$dir"
work=$(mktemp -d "$dir/run.XXXXXX")
results=$work/results.jsonl
: >"$results"
pids=()

cleanup() {
	for m in "$work"/mnt-*; do
		[ -e "$m" ] && { fusermount3 -u "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true; }
	done
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	rm -rf "$work"
	[ -z "${uring_saved:-}" ] || echo "$uring_saved" >"$uring_param"
}
trap cleanup EXIT
if [ "$transport" != dev ]; then
	uring_saved=$(cat "$uring_param")
	echo 1 >"$uring_param"
fi

# workload name -> fio arguments (O_DIRECT unless noted)
declare -A wl=(
	[randread-qd1]="--rw=randread --bs=4k --iodepth=1"
	[randwrite-qd1]="--rw=randwrite --bs=4k --iodepth=1"
	[randread-qd16]="--rw=randread --bs=4k --iodepth=16"
	[randwrite-qd16]="--rw=randwrite --bs=4k --iodepth=16"
	[randwrite-qd16-empty]="--rw=randwrite --bs=4k --iodepth=16"
	[randrw-70-30-qd16]="--rw=randrw --rwmixread=70 --bs=4k --iodepth=16"
	[seqread-1m-qd8]="--rw=read --bs=1M --iodepth=8"
	[seqwrite-1m-qd8]="--rw=write --bs=1M --iodepth=8"
	[fdatasync-4k]="--rw=randwrite --bs=4k --iodepth=1 --fdatasync=1"
	[buffered-seqread]="--rw=read --bs=1M --iodepth=1 --direct=0"
	[randread-qd1-4j]="--rw=randread --bs=4k --iodepth=1 --numjobs=4"
	[randread-qd16-4j]="--rw=randread --bs=4k --iodepth=4 --numjobs=4"
	[randwrite-qd16-4j]="--rw=randwrite --bs=4k --iodepth=4 --numjobs=4"
	[fdatasync-4k-4j]="--rw=randwrite --bs=4k --iodepth=1 --fdatasync=1 --numjobs=4"
)
order=(randread-qd1 randwrite-qd1 randread-qd16 randwrite-qd16 randwrite-qd16-empty randrw-70-30-qd16
       seqread-1m-qd8 seqwrite-1m-qd8 fdatasync-4k buffered-seqread
       randread-qd1-4j randread-qd16-4j randwrite-qd16-4j fdatasync-4k-4j)
if [ -n "$only" ]; then
	IFS=, read -r -a order <<<"$only"
fi
targets=(host)
[ "$transport" = ring ] || targets+=(vdiskfs-dev)
[ "$transport" = dev ] || targets+=(vdiskfs-ring)
[ "$passthrough" = off ] || targets+=(vdiskfs-pt)
targets+=(qsd)

# fill_image FILE FORMAT: write zeroes as data (not as holes) over all of it
fill_image() {
	local bytes chunk=$((64 << 20)) off=0 cmds=()
	bytes=$(numfmt --from=iec "$size")
	while [ "$off" -lt "$bytes" ]; do
		cmds+=(-c "write -q -P 0 $off $(( bytes - off < chunk ? bytes - off : chunk ))")
		off=$((off + chunk))
	done
	qemu-io -f "$2" "${cmds[@]}" "$1" >/dev/null
}

# make_image NAME full|empty: NAME.raw for the host target, else an image of
# $format (each target gets its own file: two writers never share an image)
make_image() {
	local name=$1 kind=$2
	rm -f "$work/$name".*
	case $name-$format in
	*host-*|*-raw)
		if [ "$kind" = full ]; then
			# written blocks, not unwritten extents that read without I/O
			dd if=/dev/zero of="$work/$name.raw" bs=1M count=$(( $(numfmt --from=iec "$size") >> 20 )) \
				conv=fsync status=none
		else
			truncate -s "$size" "$work/$name.raw"
		fi ;;
	*-qcow2)
		qemu-img create -q -f qcow2 -o preallocation=$([ "$kind" = full ] && echo full || echo off) \
			"$work/$name.qcow2" "$size" ;;
	*-vhdx)
		qemu-img create -q -f vhdx -o subformat=$([ "$kind" = full ] && echo fixed || echo dynamic) \
			"$work/$name.vhdx" "$size"
		# a fixed vhdx is created sparse: write its blocks, as dd does for
		# the host file, so that reads reach the disk on every target
		[ "$kind" != full ] || fill_image "$work/$name.vhdx" vhdx ;;
	esac
}

image_path() { # NAME
	if [ "$format" = raw ]; then echo "$work/$1.raw"; else echo "$work/$1.$format"; fi
}

wait_mounted() {
	local i
	for i in $(seq 1 200); do
		findmnt -n --mountpoint "$1" >/dev/null 2>&1 && return 0
		sleep 0.05
	done
	echo "run.sh: $1 did not mount" >&2
	return 1
}

# mount_target TARGET NAME: prints the file fio should use; sets tpid
mount_target() {
	local t=$1 name=$2 img mnt
	img=$(image_path "$name")
	mnt=$work/mnt-$t-$name
	case $t in
	host)
		tpid=
		echo "$work/$name.raw"
		return
		;;
	vdiskfs-*)
		local o=uring=off
		case $t in
		vdiskfs-ring) o=uring=on ;;
		vdiskfs-pt) o=uring=off,passthrough=on ;;
		esac
		touch "$mnt"
		"$vdiskfs" -f -o "$o$opts" "$img" "$mnt" >>"$work/vdiskfs.log" 2>&1 &
		tpid=$!
		;;
	qsd)
		touch "$mnt"
		qemu-storage-daemon \
			--blockdev driver=file,node-name=file0,filename="$img",cache.direct=on,aio=io_uring \
			--blockdev driver=$format,node-name=fmt0,file=file0 \
			--export type=fuse,id=exp0,node-name=fmt0,mountpoint="$mnt",writable=on \
			>>"$work/qsd.log" 2>&1 &
		tpid=$!
		;;
	esac
	pids+=("$tpid")
	wait_mounted "$mnt"
	echo "$mnt"
}

unmount_target() { # TARGET NAME PID
	local mnt=$work/mnt-$1-$2
	[ "$1" = host ] && return 0
	fusermount3 -u "$mnt" 2>/dev/null || umount "$mnt" 2>/dev/null || true
	kill "$3" 2>/dev/null || true
	wait "$3" 2>/dev/null || true
}

cpu_ticks() { # PID -> utime+stime in clock ticks (0 for none)
	[ -n "$1" ] && [ -r "/proc/$1/stat" ] || { echo 0; return; }
	awk '{print $14 + $15}' "/proc/$1/stat"
}

# run_fio TARGET WORKLOAD FILE PID REP
run_fio() {
	local t=$1 w=$2 file=$3 pid=$4 rep=$5 c0 c1 json nj
	json=$work/$w-$t-$rep.json
	sync
	echo 3 >/proc/sys/vm/drop_caches
	c0=$(cpu_ticks "$pid")
	# shellcheck disable=SC2086
	fio --name="$w" --filename="$file" --ioengine=io_uring --direct=1 ${wl[$w]} \
		--thread --group_reporting --size="$size" --time_based --runtime="$runtime" --ramp_time="$ramp" \
		--randrepeat=0 --norandommap --lat_percentiles=1 --output-format=json --output="$json" >/dev/null
	c1=$(cpu_ticks "$pid")
	nj=1
	[[ ${wl[$w]} =~ numjobs=([0-9]+) ]] && nj=${BASH_REMATCH[1]}
	python3 - "$json" "$t" "$w" "$rep" "$((c1 - c0))" "$(getconf CLK_TCK)" "$nj" >>"$results" <<'PY'
import json, sys
path, target, wl, rep, ticks, hz, numjobs = sys.argv[1:]
job = json.load(open(path))["jobs"][0]
r, w, s = job["read"], job["write"], job.get("sync", {})
iops = r["iops"] + w["iops"]
bw = (r["bw_bytes"] + w["bw_bytes"]) / 2**20
# total latency (submission + completion): a host file pays its device
# doorbell at submission, a FUSE file at completion
lat = (r if r["iops"] else w)["lat_ns"]
pct = lat.get("percentile", {})
sp = s.get("lat_ns", {}).get("percentile", {})
cpu = int(ticks) / int(hz)
print(json.dumps({
    "target": target, "workload": wl, "rep": int(rep), "iops": iops, "mib_s": bw,
    "lat_mean_us": lat["mean"] / 1000, "lat_p50_us": pct.get("50.000000", 0) / 1000,
    "sync_p50_us": sp.get("50.000000", 0) / 1000, "sync_p99_us": sp.get("99.000000", 0) / 1000,
    # job_runtime of a group of numjobs threads is the sum of theirs
    "cpu_s": cpu,
    "iops_per_cpu_s": (iops * job["job_runtime"] / int(numjobs) / 1000 / cpu) if cpu else None,
}))
PY
}

echo "== vdiskfs benchmark: format=$format size=$size runtime=${runtime}s reps=$reps targets=${targets[*]} options=${opts#,}"
echo "== vdiskfs: $vdiskfs ($("$vdiskfs" --version))"
echo "== $(qemu-storage-daemon --version | head -1)"
echo "== work dir $work ($(findmnt -n -o FSTYPE --target "$work"))"

declare -A file pid
for t in "${targets[@]}"; do
	make_image "full-$t" full
	mount_target "$t" "full-$t" >"$work/file"
	file[$t]=$(cat "$work/file")
	pid[$t]=$tpid
done

for rep in $(seq 1 "$reps"); do
	for w in "${order[@]}"; do
		[ -n "${wl[$w]:-}" ] || { echo "run.sh: unknown workload $w" >&2; exit 2; }
		for t in "${targets[@]}"; do
			echo "-- rep $rep $w $t" >&2
			if [ "$w" = randwrite-qd16-empty ]; then
				make_image "empty-$t" empty
				mount_target "$t" "empty-$t" >"$work/file"
				f=$(cat "$work/file")
				p=$tpid
				run_fio "$t" "$w" "$f" "$p" "$rep"
				unmount_target "$t" "empty-$t" "$p"
			else
				run_fio "$t" "$w" "${file[$t]}" "${pid[$t]}" "$rep"
			fi
		done
	done
done

python3 "$here/report.py" "$results" "$out" "$format" "$size" "$runtime" "$reps"
