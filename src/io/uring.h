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
	uint64_t iolog;	 /* record id of a write or fsync, 0: not recorded */
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

#endif
