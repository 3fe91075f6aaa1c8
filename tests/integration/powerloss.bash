# Power-loss scenarios (docs/powerloss.md): build a fixture, run the writer of
# powerloss.py through a vdiskfs mount that records its image I/O
# (VDISKFS_IOLOG), then build and check crash states from the record. Used by
# powerloss.bats (a few states) and contrib/powerloss.sh (many). Needs
# helpers.bash (vd_mount, vd_umount).

PL_TOOL="$VDISKFS_SRC/tests/integration/powerloss.py"
PL_SCENARIOS="empty backing snapshot compressed c512 evict vhdx commit backup"

# pl_fixture NAME DIR: DIR/img.FMT and DIR/base.raw (what the guest sees
# before the run); sets PL_FMT, PL_OPS (writer operations), PL_WRITER (its
# threads, sync percentage, discard unit and percentage, write alignment:
# $PL_ALIGN, default 512), PL_OPTS (mount options), PL_JOB (a job's
# attribute and value, started on the view before the writer), PL_STATES_ARGS
# (more arguments of the state builder).
pl_fixture() {
	local name=$1 d=$2 q
	PL_FMT=qcow2 PL_OPS=300 PL_OPTS=() PL_WRITER=(4 8 512 12 "${PL_ALIGN:-512}") PL_JOB=()
	PL_STATES_ARGS=()
	q=$d/img.qcow2
	case $name in
	empty)
		qemu-img create -q -f qcow2 "$q" 16M
		;;
	backing)
		python3 "$PL_TOOL" stamp "$d/backing.raw" 16777216 3
		qemu-img create -q -f qcow2 -b "$d/backing.raw" -F raw "$q" 16M
		;;
	snapshot)
		python3 "$PL_TOOL" stamp "$d/data.raw" 16777216 2
		qemu-img convert -f raw -O qcow2 "$d/data.raw" "$q"
		qemu-img snapshot -c before "$q"
		;;
	compressed)
		python3 "$PL_TOOL" stamp "$d/data.raw" 16777216 5
		qemu-img convert -c -f raw -O qcow2 "$d/data.raw" "$q"
		;;
	c512) # 512 B clusters: the refcount table (64 blocks of 128 KiB) must grow
		qemu-img create -q -f qcow2 -o cluster_size=512 "$q" 24M
		PL_OPS=700
		;;
	evict) # 4 KiB clusters, 32 L2 tables, 4 of them cached
		qemu-img create -q -f qcow2 -o cluster_size=4096 "$q" 64M
		PL_OPTS=(-o cache_size=16K)
		;;
	commit) # an active commit into lower.qcow2 runs while the guest writes
		python3 "$PL_TOOL" stamp "$d/lower.raw" 16777216 2
		qemu-img convert -f raw -O qcow2 "$d/lower.raw" "$d/lower.qcow2"
		qemu-img create -q -f qcow2 -b "$d/lower.qcow2" -F qcow2 "$q" 16M
		qemu-io -f qcow2 -c "write -P 0x33 0 6M" "$q" >/dev/null
		PL_JOB=(commit.start speed=4M)
		# the commit writes the backing file too: it crashes with the image
		cp "$d/lower.qcow2" "$d/init-lower.qcow2"
		PL_STATES_ARGS=(--backing-state "$d/lower.qcow2" "$d/init-lower.qcow2")
		;;
	backup) # a push backup with a persistent bitmap, copy-before-write
		python3 "$PL_TOOL" stamp "$d/data.raw" 16777216 2
		qemu-img convert -f raw -O qcow2 "$d/data.raw" "$q"
		qemu-img bitmap --add "$q" b0
		PL_JOB=(backup.start "target=$d/bk.qcow2,bitmap=b0,speed=4M")
		;;
	vhdx) # 1 MiB log, 1 MiB blocks: frequent flushes of BAT updates (blocks
		# discarded whole and written again) wrap the log
		PL_FMT=vhdx
		qemu-img create -q -f vhdx -o subformat=dynamic,block_size=1M,log_size=1M \
			"$d/img.vhdx" 32M
		PL_OPS=1000 PL_WRITER=(4 50 1048576 45 "${PL_ALIGN:-512}")
		;;
	*)
		echo "unknown power-loss scenario $name" >&2
		return 1
		;;
	esac
	qemu-img convert -f "$PL_FMT" -O raw "$d/img.$PL_FMT" "$d/base.raw"
}

# pl_run NAME DIR SEED: fixture, a recorded run of the writer, a clean
# unmount and qemu-img check of the result. DIR/init.FMT is the image before.
pl_run() {
	local name=$1 d=$2 seed=$3 view
	mkdir -p "$d"
	pl_fixture "$name" "$d" || return 1
	cp "$d/img.$PL_FMT" "$d/init.$PL_FMT"
	view=$d/view
	touch "$view"
	VDISKFS_IOLOG=$d/iolog vd_mount "$d/img.$PL_FMT" "$view" "${PL_OPTS[@]}" || return 1
	if [ ${#PL_JOB[@]} -gt 0 ] && ! setfattr -n "user.vdiskfs.${PL_JOB[0]}" -v "${PL_JOB[1]}" "$view"; then
		vd_umount "$view"
		return 1
	fi
	if ! python3 "$PL_TOOL" write "$view" "$d/wlog" "$seed" "$PL_OPS" "${PL_WRITER[@]}"; then
		vd_umount "$view"
		return 1
	fi
	vd_umount "$view"
	if [ "$VD_STATUS" -ne 0 ]; then
		echo "$name: vdiskfs exited $VD_STATUS at unmount" >&2
		return 1
	fi
	qemu-img check -q -f "$PL_FMT" "$d/img.$PL_FMT" || {
		echo "$name: qemu-img check fails after a clean unmount" >&2
		return 1
	}
	python3 "$PL_TOOL" scenario "$name" "$d/init.$PL_FMT" "$d/img.$PL_FMT" "$d/iolog" \
		"$d/focus"
}

# pl_states NAME DIR N SEED [KEEPDIR] [--control KIND]: build and check N
# crash states of the run pl_run left in DIR.
pl_states() {
	local name=$1 d=$2 n=$3 seed=$4
	shift 4
	python3 "$PL_TOOL" states --fmt "$PL_FMT" --image "$d/img.$PL_FMT" \
		--init "$d/init.$PL_FMT" --iolog "$d/iolog" --wlog "$d/wlog" --base "$d/base.raw" \
		--vdiskfs "$VDISKFS" --work "$d/work" --states "$n" --seed "$seed" \
		--focus "$d/focus" "${PL_STATES_ARGS[@]}" "$@"
}
