#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: install what is
# missing, build a normal and an AddressSanitizer+UBSan build (warnings are
# errors), and run every unit and integration test in both.
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

pkgs=(meson ninja-build pkg-config gcc libfuse3-dev liburing-dev zlib1g-dev libzstd-dev
      libglib2.0-dev fuse3 bats qemu-utils fio attr fdisk e2fsprogs python3)
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "== installing: ${missing[*]}"
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
fi
[ -e /dev/fuse ] || modprobe fuse

export VDISKFS_TESTDIR=${VDISKFS_TESTDIR:-/var/tmp}
jobs=$(nproc)
summary=()
total_pass=0
total_fail=0

run_build() {
	local dir=$1
	shift
	echo "== build $dir"
	if [ -d "$dir" ]; then
		meson setup --reconfigure "$dir" --werror "$@" >/dev/null
	else
		meson setup "$dir" --werror "$@" >/dev/null
	fi
	meson compile -C "$dir"
	echo "== test $dir"
	local rc=0
	meson test -C "$dir" --print-errorlogs --num-processes "$jobs" || rc=$?
	local counts
	counts=$(python3 - "$dir/meson-logs/testlog.json" <<'PY'
import json, sys
p = f = s = 0
for line in open(sys.argv[1]):
    r = json.loads(line).get("result")
    if r in ("OK", "EXPECTEDFAIL"): p += 1
    elif r == "SKIP": s += 1
    else: f += 1
print(p, f, s)
PY
)
	read -r p f s <<<"$counts"
	summary+=("$dir: $p passed, $f failed, $s skipped")
	total_pass=$((total_pass + p))
	total_fail=$((total_fail + f))
	[ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || total_fail=$((total_fail + 1))
}

run_build build-ci
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$top/tests/lsan.supp:print_suppressions=0} \
	run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false

echo
printf '%s\n' "${summary[@]}"
echo "tests: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
