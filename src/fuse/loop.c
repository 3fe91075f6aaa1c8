/* The event loops: each thread owns an io_uring, polls the shared /dev/fuse fd
 * (non-blocking) through it, runs the handler, and reaps the data I/O of the
 * requests it started, so a request is never handed between threads. */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/log.h"
#include "util/mountinfo.h"
#include "io/uring.h"
#include "fuse/vfs.h"

/* libfuse 3.14 reads at most 256 pages plus a 4 KiB header. */
#define LOOP_BUFSIZE ((256 + 16) * 4096)

/* A WRITE's payload follows fuse_in_header and fuse_write_in (80 bytes): the
 * receive buffer starts that far before a page boundary, so the payload is
 * page-aligned and can go to an O_DIRECT fd as it is. */
#define LOOP_PAYLOAD_SKEW 80

struct loop_thread {
	pthread_t tid;
	unsigned idx;
	struct fuse_session *se;
	struct fuse_buf buf;
	void *buf_base; /* what to free: buf.mem is LOOP_PAYLOAD_SKEW before a page */
	bool buf_taken;
	struct uring_op poll_fuse, poll_stop;
};

static __thread struct loop_thread *cur_loop;
static atomic_bool stopping;
static atomic_long requests_out; /* answered later, not yet answered */
static int stop_fd = -1;

void loop_req_begin(void)
{
	atomic_fetch_add(&requests_out, 1);
}

void loop_req_end(void)
{
	atomic_fetch_sub(&requests_out, 1);
}

bool loop_stopping(void)
{
	return atomic_load(&stopping);
}

void *loop_take_buffer(void)
{
	cur_loop->buf_taken = true;
	return cur_loop->buf_base;
}

void loop_stop(void)
{
	uint64_t one = 1;

	atomic_store(&stopping, true);
	if (stop_fd >= 0 && write(stop_fd, &one, sizeof(one)) < 0)
		vd_warn("cannot wake the event loops: %s", strerror(errno));
}

static void loop_on_stop(struct uring_op *op, int res)
{
	/* Nothing to do: the loop condition reads the flag. */
}

static void loop_on_fuse(struct uring_op *op, int res)
{
	struct loop_thread *t = op->data;

	if (res > 0 && (res & (POLLERR | POLLHUP | POLLNVAL))) {
		/* The kernel side is gone: unmounted. */
		fuse_session_exit(t->se);
		loop_stop();
		return;
	}
	/* Drain until EAGAIN: the poll fires on new arrivals, not on what is left.
	 * Once stopping, take nothing new: what is in flight is answered, what
	 * waits is ended by the kernel when the connection goes. */
	while (!fuse_session_exited(t->se) && !atomic_load(&stopping)) {
		int n;

		if (t->buf_taken || !t->buf_base) {
			t->buf_taken = false;
			if (posix_memalign(&t->buf_base, 4096, LOOP_BUFSIZE + 4096)) {
				t->buf_base = NULL;
				break;
			}
			t->buf.mem = (char *)t->buf_base + 4096 - LOOP_PAYLOAD_SKEW;
			t->buf.size = LOOP_BUFSIZE;
		}
		t->buf.flags = 0;
		n = fuse_session_receive_buf(t->se, &t->buf);
		if (n == -EAGAIN || n == -EINTR)
			break;
		if (n <= 0) {
			fuse_session_exit(t->se);
			loop_stop();
			return;
		}
		fuse_session_process_buf(t->se, &t->buf);
	}
	if (fuse_session_exited(t->se)) {
		loop_stop();
		return;
	}
	if (!op->multishot && !atomic_load(&stopping))
		uring_poll(op, fuse_session_fd(t->se), POLLIN, true, loop_on_fuse);
}

static void *loop_thread_main(void *arg)
{
	struct loop_thread *t = arg;
	int ret;

	cur_loop = t;
	ret = furing_active() ? uring_thread_init_cmd(512) : uring_thread_init(256);
	if (ret) {
		vd_err("cannot set up io_uring: %s", strerror(-ret));
		fuse_session_exit(t->se);
		loop_stop();
		return NULL;
	}
	t->poll_fuse.data = t;
	t->poll_stop.data = t;
	uring_poll(&t->poll_fuse, fuse_session_fd(t->se), POLLIN, true, loop_on_fuse);
	uring_poll(&t->poll_stop, stop_fd, POLLIN, true, loop_on_stop);
	furing_thread_start(t->idx);
	while (!atomic_load(&stopping)) {
		ret = uring_run(-1);
		if (ret < 0 && ret != -EINTR) {
			vd_err("io_uring wait failed: %s", strerror(-ret));
			break;
		}
	}
	/* Finish what was started: every request in flight gets its answer. */
	while (uring_inflight() || atomic_load(&requests_out) > 0)
		uring_run(20);
	uring_run(0); /* hand the kernel the last replies still queued as SQEs */
	uring_thread_exit();
	if (!t->buf_taken)
		free(t->buf_base);
	return NULL;
}

/* The first request is INIT: answer it here, before the loops start, so they
 * know whether to serve FUSE over io_uring. */
static int loop_init(struct fuse_session *se, unsigned nthreads)
{
	struct fuse_buf buf = {0};
	int n, ret;

	ret = furing_setup(se, vfs_cfg.ring);
	if (ret)
		return ret;
	do {
		n = fuse_session_receive_buf(se, &buf);
	} while (n == -EINTR);
	if (n <= 0) {
		free(buf.mem);
		return n ? n : -ENODEV;
	}
	fuse_session_process_buf(se, &buf);
	free(buf.mem);
	if (fuse_session_exited(se))
		return -ENODEV;
	ret = furing_prepare(nthreads);
	return ret ? ret : pt_prepare(fuse_session_fd(se));
}

/* Buffered sequential reads of a view come in readahead-sized requests: the
 * kernel starts the mount's bdi at 128 KiB and INIT can only lower it. Raise
 * it to 1 MiB (one request at max_pages) through sysfs, where we may (root). */
static bool ours_note(const struct mountinfo_entry *m, void *opaque)
{
	if (!strcmp(m->mountpoint, vfs_cfg.mountpoint))
		snprintf(opaque, 64, "%u:%u", m->major, m->minor); /* the last one is ours */
	return false;
}

static void loop_tune_readahead(void)
{
	char path[128], dev[64] = "";
	FILE *f;

	mountinfo_each(ours_note, dev);
	if (!*dev)
		return;
	snprintf(path, sizeof(path), "/sys/class/bdi/%s/read_ahead_kb", dev);
	f = fopen(path, "we");
	if (!f) {
		vd_debug("readahead stays at the kernel's default: %s: %s", path, strerror(errno));
		return;
	}
	fputs("1024\n", f);
	if (fclose(f))
		vd_debug("readahead stays at the kernel's default: %s: %s", path, strerror(errno));
}

int loop_run(struct fuse_session *se, unsigned nthreads)
{
	struct loop_thread *threads;
	int fd = fuse_session_fd(se);
	unsigned i, started = 0;
	int ret;

	ret = loop_init(se, nthreads);
	if (ret)
		return ret;
	loop_tune_readahead();
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK) < 0)
		return -errno;
	stop_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (stop_fd < 0)
		return -errno;
	threads = calloc(nthreads, sizeof(*threads));
	if (!threads)
		return -ENOMEM;
	for (i = 0; i < nthreads; i++) {
		threads[i].se = se;
		threads[i].idx = i;
		if (pthread_create(&threads[i].tid, NULL, loop_thread_main, &threads[i]))
			break;
		started++;
	}
	if (!started) {
		free(threads);
		return -EAGAIN;
	}
	for (i = 0; i < started; i++)
		pthread_join(threads[i].tid, NULL);
	free(threads);
	close(stop_fd);
	stop_fd = -1;
	return 0;
}
