#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: install what is
# missing, build a normal and an AddressSanitizer+UBSan build (warnings are
# errors), and run every unit and integration test in both; a clang build
# (warnings are errors too) runs the unit tests and the fuzz replays; then the
# fuzzing slices, and last the Debian package (tests/package.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
top=$(pwd)

pkgs=(meson ninja-build pkg-config gcc libfuse3-dev liburing-dev zlib1g-dev libzstd-dev
      libglib2.0-dev fuse3 bats qemu-utils qemu-system-common libnbd-bin fio attr fdisk
      e2fsprogs util-linux-extra python3 xz-utils bzip2 gzip
      clang-14 libclang-rt-14-dev clang-format-14)
bash "$top/contrib/install-missing.sh" --no-install-recommends "${pkgs[@]}"
[ -e /dev/fuse ] || modprobe fuse

export VDISKFS_TESTDIR=${VDISKFS_TESTDIR:-/var/tmp}
jobs=$(nproc)
summary=()
total_pass=0
total_fail=0

# run_tests DIR LABEL [meson test args...]: one meson test pass, counted.
run_tests() {
	local dir=$1 label=$2
	shift 2
	echo "== test $label"
	local rc=0
	meson test -C "$dir" --print-errorlogs --num-processes "$jobs" --logbase "$label" "$@" || rc=$?
	local counts
	counts=$(python3 - "$dir/meson-logs/$label.json" <<'PY'
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
	summary+=("$label: $p passed, $f failed, $s skipped")
	total_pass=$((total_pass + p))
	total_fail=$((total_fail + f))
	[ "$rc" -eq 0 ] || [ "$f" -gt 0 ] || total_fail=$((total_fail + 1))
}

# FUSE over io_uring is a kernel switch (off by default): the first pass runs
# with it off, then every mount test runs once more with it on, so both
# transports are covered; the switch is put back as it was.
uring_param=/sys/module/fuse/parameters/enable_uring
uring_saved=$( [ -r "$uring_param" ] && cat "$uring_param" || true)
set_uring() { [ ! -w "$uring_param" ] || echo "$1" >"$uring_param"; }
trap 'set_uring "${uring_saved:-N}"' EXIT

# setup_build DIR [meson setup args...]: configure (again) and compile DIR.
setup_build() {
	local dir=$1
	shift
	echo "== build $dir"
	if [ -d "$dir" ]; then
		meson setup --reconfigure "$dir" --werror "$@" >/dev/null
	else
		meson setup "$dir" --werror "$@" >/dev/null
	fi
	meson compile -C "$dir"
}

run_build() {
	local dir=$1
	setup_build "$@"
	set_uring 0
	run_tests "$dir" "$dir"
	if [ -w "$uring_param" ]; then
		set_uring 1
		run_tests "$dir" "$dir-ring" --suite integration --no-suite transport-independent
		set_uring 0
	else
		echo "== no FUSE over io_uring in this kernel: the ring pass is skipped"
	fi
}

run_build build-ci
# clang's warnings and code generation on the whole tree; the integration
# tests stay with the two gcc builds (the suite's time on 2 CPUs).
CC=clang-14 setup_build build-clang
run_tests build-clang build-clang --suite unit --suite fuzz --no-suite sweep
ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:detect_stack_use_after_return=0} \
UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1} \
LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$top/tests/lsan.supp:print_suppressions=0} \
	run_build build-asan -Db_sanitize=address,undefined -Db_lundef=false

# Whole-daemon mutation fuzzing (contrib/fuzz-mount.sh), a fixed slice: the
# same mutated images every run (FUZZ_MOUNT_ROUNDS, seed FUZZ_MOUNT_SEED);
# a crash, hang, escape or difference from qemu-img fails the run.
echo "== fuzz-mount: ${FUZZ_MOUNT_ROUNDS:-90} mutated images"
if contrib/fuzz-mount.sh --vdiskfs build-asan/vdiskfs --rounds "${FUZZ_MOUNT_ROUNDS:-90}" \
	--seed "${FUZZ_MOUNT_SEED:-20261206}" --out build-asan/fuzz-mount-out; then
	summary+=("fuzz-mount: 1 passed, 0 failed")
	total_pass=$((total_pass + 1))
else
	summary+=("fuzz-mount: 0 passed, 1 failed (cases kept in build-asan/fuzz-mount-out)")
	total_fail=$((total_fail + 1))
fi

# The libFuzzer targets, each for a bounded time (FUZZ_SECONDS, default 45),
# from the committed seeds; a crash fails the run and keeps its input.
fuzz_seconds=${FUZZ_SECONDS:-45}
echo "== fuzz build"
if [ -d build-fuzz ]; then
	CC=clang-14 meson setup --reconfigure build-fuzz -Dfuzz=true \
		-Db_sanitize=address,undefined -Db_lundef=false >/dev/null
else
	CC=clang-14 meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false >/dev/null
fi
meson compile -C build-fuzz
fp=0 ff=0
for t in qcow2 vhdx mirror-opts control; do
	corpus=$(mktemp -d)
	art=build-fuzz/fuzz-artifacts/$t/
	mkdir -p "$art"
	cp tests/fuzz/corpus/"$t"/* "$corpus"/
	echo "== fuzz-$t for ${fuzz_seconds}s"
	if UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
		build-fuzz/tests/fuzz/fuzz-"$t" -max_total_time="$fuzz_seconds" -rss_limit_mb=2048 \
		-timeout=10 -artifact_prefix="$art" -print_final_stats=1 "$corpus" \
		>build-fuzz/fuzz-"$t".log 2>&1; then
		fp=$((fp + 1))
		tail -n 3 build-fuzz/fuzz-"$t".log
	else
		ff=$((ff + 1))
		echo "fuzz-$t found a crash (input kept in $art):"
		grep -A30 "ERROR:" build-fuzz/fuzz-"$t".log | head -60 || tail -40 build-fuzz/fuzz-"$t".log
	fi
	rm -rf "$corpus"
done
summary+=("build-fuzz: $fp passed, $ff failed")
total_pass=$((total_pass + fp))
total_fail=$((total_fail + ff))

# The Debian package (tests/package.sh): built from the tracked files with
# dpkg-buildpackage, unpacked and installed into scratch roots, checked.
echo "== package: build the .deb and install it into a scratch root"
if tests/package.sh; then
	summary+=("package: 1 passed, 0 failed")
	total_pass=$((total_pass + 1))
else
	summary+=("package: 0 passed, 1 failed")
	total_fail=$((total_fail + 1))
fi

echo
printf '%s\n' "${summary[@]}"
echo "tests: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
