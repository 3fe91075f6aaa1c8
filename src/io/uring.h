/* The io_uring engine: one ring per thread, operations with completion
 * callbacks, transparent resubmission of short transfers, and the fault hook.
 * Every data read, write and fsync in vdiskfs goes through here. */
#ifndef VDISKFS_URING_H
#define VDISKFS_URING_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

struct uring_op;
/* res: bytes transferred (reads may be short only at end of file) or -errno. */
typedef void (*uring_cb)(struct uring_op *op, int res);

struct uring_op {
	uring_cb cb;
	void *data; /* for the owner */
	int fd;
	uint8_t opcode;
	bool multishot;
	int fault; /* injected error to report instead of doing the I/O */
	void *buf;
	uint32_t len;
	uint32_t done;
	uint64_t off;
	uint32_t flags;
	uint64_t iolog; /* record id of a write or fsync, 0: not recorded */
	uint8_t cmd_len; /* IORING_OP_URING_CMD: command bytes for the SQE */
	uint8_t cmd[32];
};

/* Create the calling thread's ring (entries SQEs). Idempotent. */
int uring_thread_init(unsigned entries);
/* The same, with 128-byte SQEs so the ring can carry uring_cmd(). */
int uring_thread_init_cmd(unsigned entries);
void uring_thread_exit(void);
bool uring_thread_ready(void);

/* Queue an operation on the calling thread's ring; cb runs on this thread from
 * uring_run(). An SQ that is full is submitted first, never dropped. */
void uring_read(struct uring_op *op, int fd, void *buf, uint32_t len, uint64_t off, uring_cb cb);
void uring_write(struct uring_op *op, int fd, const void *buf, uint32_t len, uint64_t off,
		 uring_cb cb);
void uring_fsync(struct uring_op *op, int fd, bool datasync, uring_cb cb);
/* Poll fd for events; multishot keeps firing until cancelled or an error. */
void uring_poll(struct uring_op *op, int fd, unsigned events, bool multishot, uring_cb cb);

/* A driver command (IORING_OP_URING_CMD) on fd: cmd_op, an address and length,
 * and up to 32 bytes of command data. Not counted in uring_inflight(); the
 * ring must come from uring_thread_init_cmd(). */
void uring_cmd(struct uring_op *op, int fd, uint32_t cmd_op, const void *addr, uint32_t len,
	       const void *cmd, size_t cmd_len, uring_cb cb);

/* Submit queued SQEs; then wait up to wait_ms (-1: no limit, 0: not at all)
 * for at least one completion; run all available completion callbacks.
 * Returns completions handled or -errno. */
int uring_run(int wait_ms);
/* Before sleeping in uring_run(-1), watch the completion queue for up to us
 * microseconds (adaptive; 0, the default, sleeps at once). For all threads. */
void uring_set_poll(unsigned us);
/* Operations submitted on this thread and not yet completed (polls excluded). */
unsigned uring_inflight(void);

/* ---- fault injection (tests): fail the Nth counted I/O with err ---- */
enum fault_kind {
	FAULT_READ = 1 << 0,
	FAULT_WRITE = 1 << 1,
	FAULT_SYNC = 1 << 2,
	FAULT_ALL = 7,
};
/* Count I/Os of the given kinds from now on; fail the nth (1-based) and the
 * count-1 after it (count 0 = every one from nth on). nth 0 disarms. */
void fault_set(unsigned long nth, int err, unsigned kinds, unsigned long count);
/* Count only I/O on files whose path contains substr (NULL: every file). */
void fault_set_path(const char *substr);
/* Parse VDISKFS_FAULT="nth=N,errno=EIO|ENOSPC|number,kinds=rws,count=C,path=SUBSTR". */
int fault_set_from_env(void);
/* Called once per I/O on fd by the engine and the sync helpers: 0 or -errno to inject. */
int fault_check(unsigned kind, int fd);
/* I/Os counted since fault_set (for sweeps). */
unsigned long fault_counted(void);

/* ---- I/O recording (tests): every write, fallocate, ftruncate and sync of
 * an image file, for the power-loss simulation (docs/powerloss.md) ---- */
enum iolog_kind {
	IOLOG_WRITE = 'w',
	IOLOG_FALLOCATE = 'a', /* arg: the fallocate mode */
	IOLOG_TRUNCATE = 't',  /* off: the new size */
	IOLOG_DATASYNC = 's',
	IOLOG_FSYNC = 'f',
};
extern atomic_bool iolog_armed;
/* Open VDISKFS_IOLOG=FILE (records) and FILE.data (write payloads). */
int iolog_set_from_env(void);
uint64_t iolog_submit_armed(char kind, int fd, uint64_t off, uint64_t len, int arg,
			    const void *buf);
/* Record an operation as it is submitted (a write's bytes are kept now);
 * returns its id for iolog_complete(), 0 when recording is off. */
static inline uint64_t iolog_submit(char kind, int fd, uint64_t off, uint64_t len, int arg,
				    const void *buf)
{
	if (!atomic_load_explicit(&iolog_armed, memory_order_relaxed))
		return 0;
	return iolog_submit_armed(kind, fd, off, len, arg, buf);
}
void iolog_complete_armed(uint64_t id, int res);
/* Record the result of operation id (bytes or -errno); nothing for id 0. */
static inline void iolog_complete(uint64_t id, int res)
{
	if (id)
		iolog_complete_armed(id, res);
}

/* ---- synchronous helpers for metadata I/O (sync-io.c) ----
 * Full transfers or -errno; reads past EOF return -EIO unless noted. */
int sync_pread(int fd, void *buf, size_t len, uint64_t off);
/* Like sync_pread, but zero-fills past end of file. */
int sync_pread_zfill(int fd, void *buf, size_t len, uint64_t off);
int sync_pwrite(int fd, const void *buf, size_t len, uint64_t off);
int sync_fdatasync(int fd);
int sync_fallocate(int fd, int mode, uint64_t off, uint64_t len);
int sync_ftruncate(int fd, uint64_t size);
/* fallocate(fd, 0, off, len) to grow a file ahead of writes: recorded, but
 * not counted by the fault hook (a refusal is not an error for the caller). */
int sync_prealloc(int fd, uint64_t off, uint64_t len);

#endif
