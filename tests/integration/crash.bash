# Crash rounds: SIGKILL the daemon at a random moment while crash-writer.py
# writes and fsyncs through the view, then check the image and verify every
# acknowledged write. Used by qcow2.bats and vhdx.bats (a few rounds) and by
# contrib/crash-test.sh (many). Needs helpers.bash (vd_mount, vd_kill9) and $T.

CRASH_WRITER="$VDISKFS_SRC/tests/integration/crash-writer.py"

# crash_round FORMAT IMAGE ROUND: one round on IMAGE (qcow2 or vhdx, made by
# the caller). Prints one line; on failure says why on stderr, returns 1 and
# leaves the evidence in $T (crash.log.ROUND, crash.after.raw, crash.check).
# $T/crash.base.raw is the guest's content before the round (none: zeroes).
crash_round() {
	local fmt=$1 img=$2 round=$3
	local view="$T/crash.view" log="$T/crash.log.$round" after="$T/crash.after.raw"
	local base="$T/crash.base.raw" qimg=$img wpid ms rc out vmsg vargs
	touch "$view"
	vd_mount "$img" "$view" || return 1
	python3 "$CRASH_WRITER" write "$view" "$log" "$RANDOM$RANDOM" &
	wpid=$!
	# SIGKILL only once the writer has the view open: a writer that opened
	# it later would write into the plain file under the dead mount.
	for _ in $(seq 1 200); do
		grep -q '^[RX]' "$log" 2>/dev/null && break
		kill -0 "$wpid" 2>/dev/null || break
		sleep 0.05
	done
	ms=$((RANDOM % 1400 + 100))
	sleep "$((ms / 1000)).$(printf %03d $((ms % 1000)))"
	vd_kill9 "$view"
	wait "$wpid" || true

	# qemu-img: no corruption (leaks are fine). A vhdx log is replayed by
	# QEMU on a copy, as `qemu-img check` alone refuses a dirty log.
	if [ "$fmt" = vhdx ]; then
		qimg="$T/crash.qemu.vhdx"
		cp "$img" "$qimg" || return 1
		out=$(qemu-img check -r all -f vhdx "$qimg" 2>&1) && rc=0 || rc=$?
	else
		out=$(qemu-img check -f "$fmt" "$img" 2>&1) && rc=0 || rc=$?
	fi
	echo "$out" >"$T/crash.check"
	if [ "$rc" -ne 0 ] && [ "$rc" -ne 3 ]; then
		echo "round $round: qemu-img check exits $rc after the crash:" >&2
		echo "$out" >&2
		return 1
	fi
	qemu-img convert -f "$fmt" -O raw "$qimg" "$after" || return 1
	vargs=("$after" "$log")
	[ -e "$base" ] && vargs+=("$base")
	vmsg=$(python3 "$CRASH_WRITER" verify "${vargs[@]}") || {
		echo "round $round: $vmsg" >&2
		return 1
	}

	# vdiskfs reads the same after the crash (replaying a vhdx log itself);
	# a clean unmount, then leaks repaired, leaves a clean image.
	vd_mount "$img" "$view" || return 1
	if ! cmp "$view" "$after"; then
		echo "round $round: vdiskfs reads differently from qemu-img after the crash" >&2
		vd_umount "$view"
		return 1
	fi
	vd_umount "$view"
	if [ "$VD_STATUS" -ne 0 ]; then
		echo "round $round: vdiskfs exited $VD_STATUS at unmount" >&2
		return 1
	fi
	if [ "$fmt" = qcow2 ]; then
		qemu-img check -q -r leaks -f qcow2 "$img" >/dev/null 2>&1 || true
	fi
	if ! out=$(qemu-img check -f "$fmt" "$img" 2>&1); then
		echo "round $round: qemu-img check after repair:" >&2
		echo "$out" >&2
		return 1
	fi
	mv "$after" "$base"
	echo "round $round: $vmsg; qemu-img check after the crash exited $rc"
}
