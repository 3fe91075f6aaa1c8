# Helpers shared by the mirror and backup bats files.

WRITER="$BATS_TEST_DIRNAME/mirror-writer.py"

# mstatus VIEW [JOB]: the status line of the view's mirror (or JOB: stream, commit, backup)
mstatus() { getfattr --absolute-names --only-values -n "user.vdiskfs.${2:-mirror}.status" "$1"; }

# wait_job_phase KIND VIEW PHASE [SECONDS]: KIND.status of VIEW says PHASE
wait_job_phase() {
	local i
	for i in $(seq 1 $((${4:-30} * 20))); do
		[[ "$(mstatus "$2" "$1")" == "phase=$3"* ]] && return 0
		sleep 0.05
	done
	echo "$1 phase $3 not reached within ${4:-30} s: $(mstatus "$2" "$1")" >&2
	cat "$T/vdiskfs.log" >&2
	return 1
}

# wait_phase VIEW PHASE [SECONDS [JOB]]: the mirror's (or JOB's)
wait_phase() { wait_job_phase "${4:-mirror}" "$1" "$2" "${3:-30}"; }

bstatus() { mstatus "$1" backup; }

# make_image FILE FORMAT SIZE_MB DATA_MB: random data in the first DATA_MB,
# the rest a hole; $T/ref.raw gets the same content as a raw oracle.
make_image() {
	local file=$1 fmt=$2 size=$3 data=$4
	truncate -s "${size}M" "$T/ref.raw"
	dd if=/dev/urandom of="$T/ref.raw" bs=1M count="$data" conv=notrunc status=none
	if [ "$fmt" = raw ]; then
		cp --sparse=always "$T/ref.raw" "$file"
	else
		qemu-img convert -f raw -O "$fmt" "$T/ref.raw" "$file"
	fi
}

# start_writer VIEW OFF_MB LEN_MB [SEED]: the python writer on that region,
# mirrored into $T/ref.raw; stop_writer waits for it (and fails the test if
# it failed). writer_pause / writer_resume hold it between two writes.
start_writer() {
	rm -f "$T/stop" "$T/pause"
	python3 "$WRITER" "$1" "$T/ref.raw" $(($2 << 20)) $(($3 << 20)) "$T/stop" "${4:-1}" "$T" \
		>"$T/writer.out" 2>&1 &
	WRITER_PID=$!
}
writer_pause() {
	local i
	touch "$T/pause"
	for i in $(seq 1 600); do
		[ -e "$T/paused" ] && return 0
		sleep 0.05
	done
	echo "the writer did not pause" >&2
	return 1
}
writer_resume() { rm -f "$T/pause"; }
stop_writer() {
	touch "$T/stop"
	wait "$WRITER_PID" || { cat "$T/writer.out" >&2; return 1; }
}
