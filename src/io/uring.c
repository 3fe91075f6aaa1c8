/* The io_uring engine: a ring per thread, callbacks on completion, short
 * transfers resubmitted until done (reads stop at end of file), the fault
 * hook applied to every operation before it reaches the kernel, and writes
 * and syncs recorded (iolog.c) at submission and at completion. */
#include <errno.h>
#include <liburing.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "io/uring.h"
#include "io/fault.h"
#include "io/iolog.h"

struct uring_ctx {
	struct io_uring ring;
	long poll_ns;	   /* current adaptive polling window before sleeping */
	unsigned inflight; /* data operations not yet completed */
	unsigned queued;   /* SQEs prepared but not submitted */
};

static __thread struct uring_ctx *ctx;
static long poll_max_ns;

void uring_set_poll(unsigned us)
{
	poll_max_ns = us * 1000L;
}

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#elif defined(__aarch64__)
	__asm__ volatile("yield");
#endif
}

/* Wait for a completion, first watching the completion queue for up to
 * poll_ns: in a VM a sleeping thread costs tens of microseconds to wake. The
 * window adapts as QEMU's IOThread polling does: it grows while sleeps end
 * within poll_max_ns and shrinks when they do not. */
static int uring_wait(void)
{
	uint64_t t0;
	long slept;
	int ret;

	if (!poll_max_ns)
		return io_uring_submit_and_wait(&ctx->ring, 1);
	ret = io_uring_submit(&ctx->ring);
	if (ret < 0)
		return ret;
	if (ctx->poll_ns) {
		uint64_t end = vd_now_ns() + ctx->poll_ns;

		do {
			if (io_uring_cq_ready(&ctx->ring))
				return 0;
			/* completions waiting as task work: enter to run them */
			if (IO_URING_READ_ONCE(*ctx->ring.sq.kflags) & IORING_SQ_TASKRUN)
				return io_uring_get_events(&ctx->ring);
			cpu_relax();
		} while (vd_now_ns() < end);
	}
	t0 = vd_now_ns();
	ret = io_uring_submit_and_wait(&ctx->ring, 1);
	slept = (long)(vd_now_ns() - t0);
	if (slept <= poll_max_ns)
		ctx->poll_ns = ctx->poll_ns ? (ctx->poll_ns * 2 < poll_max_ns ? ctx->poll_ns * 2
									      : poll_max_ns)
			       : 4000 < poll_max_ns ? 4000
						    : poll_max_ns;
	else
		ctx->poll_ns /= 2;
	return ret;
}

static int ring_queue_init(unsigned entries, unsigned flags)
{
	struct io_uring_params p;

	memset(&p, 0, sizeof(p));
	p.flags = IORING_SETUP_CQSIZE | flags;
	p.cq_entries = entries * 4;
	return io_uring_queue_init_params(entries, &ctx->ring, &p);
}

static int ring_init(unsigned entries, unsigned flags)
{
	int ret;

	if (ctx)
		return 0;
	ctx = calloc(1, sizeof(*ctx));
	if (!ctx)
		return -ENOMEM;
	/* Completions (task work) never interrupt the thread with an IPI: it
	 * runs them when it next enters the ring, which a loop thread does as
	 * soon as it has queued its work. In A/B runs of 4K random I/O at QD16
	 * on the 2-vCPU machine this gave about 1.3x the IOPS
	 * (docs/performance.md). Kernels before 5.19 refuse the flags: set up
	 * without them. */
	ret = ring_queue_init(entries,
			      IORING_SETUP_COOP_TASKRUN | IORING_SETUP_TASKRUN_FLAG | flags);
	if (ret == -EINVAL)
		ret = ring_queue_init(entries, flags);
	if (ret < 0) {
		free(ctx);
		ctx = NULL;
		return ret;
	}
	return 0;
}

int uring_thread_init(unsigned entries)
{
	return ring_init(entries, 0);
}

int uring_thread_init_cmd(unsigned entries)
{
	return ring_init(entries, IORING_SETUP_SQE128);
}

void uring_thread_exit(void)
{
	if (!ctx)
		return;
	io_uring_queue_exit(&ctx->ring);
	free(ctx);
	ctx = NULL;
}

bool uring_thread_ready(void)
{
	return ctx != NULL;
}

unsigned uring_inflight(void)
{
	return ctx ? ctx->inflight : 0;
}

static struct io_uring_sqe *uring_get_sqe(void)
{
	struct io_uring_sqe *sqe;

	while (!(sqe = io_uring_get_sqe(&ctx->ring))) {
		/* SQ full: hand what we have to the kernel, then retry. */
		io_uring_submit(&ctx->ring);
		ctx->queued = 0;
	}
	ctx->queued++;
	return sqe;
}

/* (Re)issue the remaining part of a read or write. */
static void uring_issue(struct uring_op *op)
{
	struct io_uring_sqe *sqe = uring_get_sqe();
	char *buf = op->buf ? (char *)op->buf + op->done : NULL; /* NULL: fsync */

	if (op->fault) {
		io_uring_prep_nop(sqe);
	} else {
		switch (op->opcode) {
		case IORING_OP_READ:
			io_uring_prep_read(sqe, op->fd, buf, op->len - op->done,
					   op->off + op->done);
			break;
		case IORING_OP_WRITE:
			io_uring_prep_write(sqe, op->fd, buf, op->len - op->done,
					    op->off + op->done);
			break;
		case IORING_OP_FSYNC:
			io_uring_prep_fsync(sqe, op->fd, op->flags);
			break;
		case IORING_OP_URING_CMD:
			io_uring_prep_rw(IORING_OP_URING_CMD, sqe, op->fd, op->buf, op->len, 0);
			sqe->cmd_op = op->flags;
			memset(sqe->cmd, 0, 80);
			memcpy(sqe->cmd, op->cmd, op->cmd_len);
			break;
		case IORING_OP_POLL_ADD:
			if (op->multishot)
				io_uring_prep_poll_multishot(sqe, op->fd, op->flags);
			else
				io_uring_prep_poll_add(sqe, op->fd, op->flags);
			break;
		}
	}
	io_uring_sqe_set_data(sqe, op);
}

/* The fields every operation sets (a counted I/O asks the fault hook next). */
static void uring_op_set(struct uring_op *op, int fd, uint8_t opcode, bool multishot, uring_cb cb)
{
	op->cb = cb;
	op->fd = fd;
	op->opcode = opcode;
	op->multishot = multishot;
	op->fault = 0;
}

static void uring_start(struct uring_op *op, int fd, void *buf, uint32_t len, uint64_t off,
			uint8_t opcode, unsigned kind, uring_cb cb)
{
	uring_op_set(op, fd, opcode, false, cb);
	op->buf = buf;
	op->len = len;
	op->off = off;
	op->done = 0;
	op->fault = fault_check(kind, fd);
	op->iolog = 0;
	if (opcode == IORING_OP_WRITE)
		op->iolog = iolog_submit(IOLOG_WRITE, fd, off, len, 0, buf);
	else if (opcode == IORING_OP_FSYNC)
		op->iolog =
			iolog_submit(op->flags ? IOLOG_DATASYNC : IOLOG_FSYNC, fd, 0, 0, 0, NULL);
	ctx->inflight++;
	uring_issue(op);
}

void uring_read(struct uring_op *op, int fd, void *buf, uint32_t len, uint64_t off, uring_cb cb)
{
	uring_start(op, fd, buf, len, off, IORING_OP_READ, FAULT_READ, cb);
}

void uring_write(struct uring_op *op, int fd, const void *buf, uint32_t len, uint64_t off,
		 uring_cb cb)
{
	uring_start(op, fd, (void *)buf, len, off, IORING_OP_WRITE, FAULT_WRITE, cb);
}

void uring_fsync(struct uring_op *op, int fd, bool datasync, uring_cb cb)
{
	op->flags = datasync ? IORING_FSYNC_DATASYNC : 0;
	uring_start(op, fd, NULL, 0, 0, IORING_OP_FSYNC, FAULT_SYNC, cb);
}

void uring_poll(struct uring_op *op, int fd, unsigned events, bool multishot, uring_cb cb)
{
	uring_op_set(op, fd, IORING_OP_POLL_ADD, multishot, cb);
	op->flags = events;
	uring_issue(op);
}

void uring_cmd(struct uring_op *op, int fd, uint32_t cmd_op, const void *addr, uint32_t len,
	       const void *cmd, size_t cmd_len, uring_cb cb)
{
	uring_op_set(op, fd, IORING_OP_URING_CMD, false, cb);
	op->buf = (void *)addr;
	op->len = len;
	op->flags = cmd_op;
	op->cmd_len = cmd_len < sizeof(op->cmd) ? cmd_len : sizeof(op->cmd);
	memcpy(op->cmd, cmd, op->cmd_len);
	uring_issue(op);
}

/* One completion: finish, resubmit the rest of a short transfer, or report. */
static void uring_complete(struct uring_op *op, int res, unsigned cqe_flags)
{
	if (op->opcode == IORING_OP_URING_CMD) {
		op->cb(op, res);
		return;
	}
	if (op->opcode == IORING_OP_POLL_ADD) {
		if (!(cqe_flags & IORING_CQE_F_MORE))
			op->multishot = false; /* ended: the owner re-arms */
		op->cb(op, res);
		return;
	}
	if (op->fault) {
		res = op->fault;
	} else if (res > 0 && op->opcode != IORING_OP_FSYNC) {
		op->done += res;
		if (op->done < op->len) {
			uring_issue(op);
			return;
		}
		res = op->done;
	} else if (res == 0 && op->opcode == IORING_OP_READ) {
		res = op->done; /* end of file: a short read */
	} else if (res == 0 && op->opcode == IORING_OP_WRITE && op->len) {
		res = -EIO;
	} else if (res == -EAGAIN || res == -EINTR) {
		uring_issue(op);
		return;
	}
	ctx->inflight--;
	iolog_complete(op->iolog, res);
	op->cb(op, res);
}

int uring_run(int wait_ms)
{
	struct io_uring_cqe *cqe;
	unsigned head, n = 0;
	int ret;

	if (!ctx)
		return -EINVAL;
	if (wait_ms < 0) {
		ret = uring_wait();
	} else if (wait_ms > 0) {
		struct __kernel_timespec ts = {.tv_sec = wait_ms / 1000,
					       .tv_nsec = (wait_ms % 1000) * 1000000L};
		ret = io_uring_submit_and_wait_timeout(&ctx->ring, &cqe, 1, &ts, NULL);
		if (ret == -ETIME)
			ret = 0;
	} else {
		ret = io_uring_submit(&ctx->ring);
	}
	ctx->queued = 0;
	if (ret < 0 && ret != -EINTR && ret != -EAGAIN && ret != -EBUSY && ret != -ETIME)
		return ret;
	for (;;) {
		struct uring_op *ops[64];
		int res[64];
		unsigned flags[64], i, got = 0;

		/* Copy out first: callbacks may queue new SQEs and reap nothing. */
		io_uring_for_each_cqe(&ctx->ring, head, cqe)
		{
			ops[got] = io_uring_cqe_get_data(cqe);
			res[got] = cqe->res;
			flags[got] = cqe->flags;
			if (++got == 64)
				break;
		}
		if (!got)
			break;
		io_uring_cq_advance(&ctx->ring, got);
		for (i = 0; i < got; i++)
			if (ops[i])
				uring_complete(ops[i], res[i], flags[i]);
		n += got;
	}
	return n;
}
