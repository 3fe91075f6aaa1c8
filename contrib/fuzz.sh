#!/usr/bin/env bash
# Run the libFuzzer targets for as long as asked.
#   contrib/fuzz.sh [TARGET...] [-t SECONDS] [-j JOBS]
# TARGET: qcow2, vhdx, mirror-opts, control (default: all). Builds build-fuzz with clang first.
# qcow2 and vhdx open each input read-write in a directory in /dev/shm (log
# replay, dirty-bit rebuild, backing files, a small write), walk and read it
# (tests/fuzz/fuzz-image.c); one input in three also gets an injected I/O
# failure (docs/fuzzing.md). Their inputs are images or packed sparse images:
# tests/fuzz/pack-image.py unpack turns one into the image file it stands for.
# A crash leaves its input in build-fuzz/fuzz-artifacts/TARGET/: copy it to
# tests/fuzz/regressions/TARGET/ (every build replays that folder) and fix it.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=600
jobs=1
targets=()
while [ $# -gt 0 ]; do
	case $1 in
	-t) seconds=$2; shift ;;
	-j) jobs=$2; shift ;;
	-h|--help) sed -n '2,11p' "$0"; exit 0 ;;
	*) targets+=("$1") ;;
	esac
	shift
done
[ ${#targets[@]} -gt 0 ] || targets=(qcow2 vhdx mirror-opts control)
if [ ! -d build-fuzz ]; then
	CC=clang-14 meson setup build-fuzz -Dfuzz=true -Db_sanitize=address,undefined \
		-Db_lundef=false
fi
meson compile -C build-fuzz
# Undefined behaviour is a crash too (libFuzzer keeps the input).
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
rc=0
for t in "${targets[@]}"; do
	corpus=build-fuzz/fuzz-corpus/$t
	art=build-fuzz/fuzz-artifacts/$t/
	mkdir -p "$corpus" "$art"
	cp -n tests/fuzz/corpus/"$t"/* "$corpus"/ 2>/dev/null || true
	echo "== fuzz-$t for ${seconds}s"
	build-fuzz/tests/fuzz/fuzz-"$t" -max_total_time="$seconds" -jobs="$jobs" -workers="$jobs" \
		-rss_limit_mb=2048 -timeout=10 -artifact_prefix="$art" "$corpus" \
		tests/fuzz/regressions/"$t" || { rc=1; echo "fuzz-$t: crash, see $art" >&2; }
done
exit $rc
