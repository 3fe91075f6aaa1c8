# Helpers shared by the mirror bats files.

WRITER="$BATS_TEST_DIRNAME/mirror-writer.py"

mstatus() { getfattr --only-values -n user.vdiskfs.mirror.status "$1"; }

# wait_phase VIEW PHASE [SECONDS]
wait_phase() {
	local i
	for i in $(seq 1 $((${3:-30} * 20))); do
		[[ "$(mstatus "$1")" == "phase=$2"* ]] && return 0
		sleep 0.05
	done
	echo "phase $2 not reached within ${3:-30} s: $(mstatus "$1")" >&2
	cat "$T/vdiskfs.log" >&2
	return 1
}
