#!/usr/bin/env bash
# Scale with the number of images: a directory of N qcow2 images (1 GiB each,
# every tenth with 1 MiB of data) mounted as a directory mount. For each N it
# measures the time from starting the daemon to the first `ls -l` done, the
# daemon's memory after that listing, after reading 64 KiB of every image, and
# after the images have been idle; it prints a table and writes JSON.
#
#   contrib/bench/scale.sh [--vdiskfs PATH] [--counts 10,100,1000,10000]
#                          [--size SIZE] [--format qcow2|vhdx] [--idle SEC]
#                          [--dir DIR] [--out FILE.json] [--opts OPTIONS]
#                          [--quick]
#
# --quick: 10 and 100 images, 2 s of idling (well under a minute).
# Needs root (FUSE mounts) and qemu-img, qemu-io (package qemu-utils).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
top=$(cd "$here/../.." && pwd)
vdiskfs=$top/build/vdiskfs
counts=10,100,1000,10000
size=1G
format=qcow2
idle=12
dir=/var/tmp/vdiskfs-scale
out=
opts=

while [ $# -gt 0 ]; do
	case $1 in
	--vdiskfs) vdiskfs=$2; shift ;;
	--counts) counts=$2; shift ;;
	--size) size=$2; shift ;;
	--format) format=$2; shift ;;
	--idle) idle=$2; shift ;;
	--dir) dir=$2; shift ;;
	--out) out=$2; shift ;;
	--opts) opts=$2; shift ;;
	--quick) counts=10,100 idle=2 ;;
	-h|--help) sed -n '2,13p' "$0"; exit 0 ;;
	*) echo "scale.sh: unknown argument $1" >&2; exit 2 ;;
	esac
	shift
done
case $format in qcow2|vhdx) ;; *) echo "scale.sh: --format qcow2|vhdx" >&2; exit 2 ;; esac
for t in qemu-img qemu-io python3 findmnt; do
	command -v "$t" >/dev/null || { echo "scale.sh: $t is missing (apt-get install qemu-utils)" >&2; exit 2; }
done
[ -x "$vdiskfs" ] || { echo "scale.sh: no vdiskfs binary at $vdiskfs (build it or pass --vdiskfs)" >&2; exit 2; }
[ -n "$out" ] || out=$dir/scale-$format.json

mkdir -p "$dir"
work=$(mktemp -d "$dir/run.XXXXXX")
pid=

cleanup() {
	if [ -n "$pid" ]; then
		fusermount3 -u "$work/mnt" 2>/dev/null || umount -l "$work/mnt" 2>/dev/null || true
		kill "$pid" 2>/dev/null || true
	fi
	rm -rf "$work"
}
trap cleanup EXIT

now_ms() { echo $(($(date +%s%N) / 1000000)); }
mem_kb() { awk -v f="$1:" '$1 == f {print $2}' "/proc/$pid/status"; }

# Two templates, copied sparsely: an empty image and one with 1 MiB of data.
qemu-img create -q -f "$format" "$work/empty.$format" "$size"
cp --sparse=always "$work/empty.$format" "$work/data.$format"
qemu-io -f "$format" -c "write -q -P 0x5a 0 1M" "$work/data.$format"

# make_dir N: SOURCE with N images, every tenth with data
make_dir() {
	local n=$1 i
	rm -rf "$work/src"
	mkdir -p "$work/src" "$work/mnt"
	for ((i = 0; i < n; i++)); do
		if ((i % 10 == 0)); then
			cp --sparse=always "$work/data.$format" "$work/src/img$i.$format"
		else
			cp --sparse=always "$work/empty.$format" "$work/src/img$i.$format"
		fi
	done
}

results=$work/results.jsonl
: >"$results"
IFS=, read -r -a list <<<"$counts"
for n in "${list[@]}"; do
	echo "scale.sh: $n images..." >&2
	make_dir "$n"
	sync
	echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
	# raise the descriptor limit as far as allowed: 2 per image
	ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
	t0=$(now_ms)
	"$vdiskfs" -f ${opts:+-o "$opts"} "$work/src" "$work/mnt" 2>>"$work/vdiskfs.log" &
	pid=$!
	until findmnt -n --mountpoint "$work/mnt" >/dev/null 2>&1; do
		kill -0 "$pid" 2>/dev/null || { cat "$work/vdiskfs.log" >&2; exit 1; }
		sleep 0.005
	done
	t_mount=$(now_ms)
	listed=$(ls -l "$work/mnt" | grep -c "\.$format$")
	t_ls=$(now_ms)
	[ "$listed" -eq "$n" ] || { echo "scale.sh: listed $listed of $n" >&2; exit 1; }
	rss_listed=$(mem_kb VmRSS)
	t1=$(now_ms)
	python3 - "$work/mnt" <<'PY'
import os, sys
for name in os.listdir(sys.argv[1]):
    if name.startswith("."):
        continue
    fd = os.open(os.path.join(sys.argv[1], name), os.O_RDONLY)
    assert len(os.pread(fd, 65536, 0)) == 65536
    os.close(fd)
PY
	t_touch=$(now_ms)
	rss_touched=$(mem_kb VmRSS)
	hwm=$(mem_kb VmHWM)
	sleep "$idle"
	rss_idle=$(mem_kb VmRSS)
	fusermount3 -u "$work/mnt"
	wait "$pid" || { echo "scale.sh: vdiskfs exited with $?" >&2; exit 1; }
	pid=
	printf '{"images": %d, "mount_ms": %d, "mount_ls_ms": %d, "touch_ms": %d, "rss_listed_kb": %d, "rss_touched_kb": %d, "hwm_kb": %d, "rss_idle_kb": %d, "idle_s": %s}\n' \
		"$n" $((t_mount - t0)) $((t_ls - t0)) $((t_touch - t1)) "$rss_listed" "$rss_touched" \
		"$hwm" "$rss_idle" "$idle" >>"$results"
done

python3 - "$results" "$out" "$format" "$size" "$opts" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
doc = {"format": sys.argv[3], "size": sys.argv[4], "opts": sys.argv[5], "runs": rows}
with open(sys.argv[2], "w") as f:
    json.dump(doc, f, indent=1)
print("| images | mount | mount + ls -l | touch all | RSS listed | RSS touched | peak | RSS idle | per image, touched | per image, idle |")
print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    n = r["images"]
    print(f"| {n} | {r['mount_ms'] / 1000:.2f} s | {r['mount_ls_ms'] / 1000:.2f} s | "
          f"{r['touch_ms'] / 1000:.2f} s | {r['rss_listed_kb'] / 1024:.1f} MiB | "
          f"{r['rss_touched_kb'] / 1024:.1f} MiB | {r['hwm_kb'] / 1024:.1f} MiB | "
          f"{r['rss_idle_kb'] / 1024:.1f} MiB | {r['rss_touched_kb'] / n:.0f} KiB | "
          f"{r['rss_idle_kb'] / n:.0f} KiB |")
print(json.dumps(doc))
PY
echo "scale.sh: JSON in $out" >&2
