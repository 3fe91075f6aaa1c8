/* The image layer's two ways of waiting: fsync batches (concurrent fsyncs of
 * one image share one metadata flush and one data-file sync) and the blocking
 * calls that run the calling thread's ring until a request is done. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>

#include "image/image-int.h"
#include "io/sync-io.h"
#include "io/uring.h"
#include "util/clock.h"
#include "util/compiler.h"

/* ---- fsync: metadata in the driver's order, then a data-file fsync; calls
 * that arrive while one runs share the next one ---- */

struct fsync_waiter {
	struct fsync_waiter *next;
	vd_done_fn done;
	void *opaque;
};

struct fsync_batch {
	struct vd_image *img;
	struct fsync_waiter *waiters;
	struct uring_op op;
};

static void fsync_batch_start(struct fsync_batch *s);

static void fsync_batch_finish(struct fsync_batch *s, int err)
{
	struct vd_image *img = s->img;
	struct fsync_waiter *w = s->waiters, *next;
	struct fsync_batch *n;

	pthread_mutex_lock(&img->sync_lock);
	n = img->sync_next;
	img->sync_running = n;
	img->sync_next = NULL;
	pthread_mutex_unlock(&img->sync_lock);
	free(s);
	for (; w; w = next) {
		next = w->next;
		w->done(w->opaque, err);
		free(w);
	}
	if (n)
		fsync_batch_start(n);
}

static void fsync_batch_done(struct uring_op *op, int res)
{
	fsync_batch_finish(container_of(op, struct fsync_batch, op), res < 0 ? res : 0);
}

/* An fdatasync through io_uring is always handed to a kernel worker thread,
 * and its completion back: two wake-ups that cost more than a local disk's
 * cache flush itself. So a thread with no other I/O of its own in flight
 * calls it directly, as long as this image's direct calls have been quick on
 * average (over FSYNC_INLINE_MAX_NS, say on slow or remote storage, the
 * image's flushes go through the ring for a second before it tries again),
 * so that flushes never hold an event loop for long. */
#define FSYNC_INLINE_MAX_NS 2000000ull
uint64_t fsync_inline_max_ns = FSYNC_INLINE_MAX_NS;

static bool fsync_inline(struct vd_image *img, int *err)
{
	uint64_t t0 = vd_now_ns(), t1, avg, after = atomic_load(&img->sync_inline_after);

	if (uring_inflight() || t0 < after)
		return false;
	*err = meta_fdatasync(img->fd);
	t1 = vd_now_ns();
	/* The first call after a back-off judges by itself alone: one long
	 * flush (the journal commit after a burst of writes) must not keep the
	 * average high, and flushes off the loop, for as many seconds as it
	 * takes to decay one sample per second. */
	avg = after ? t1 - t0 : (atomic_load(&img->sync_inline_avg) * 7 + (t1 - t0)) / 8;
	atomic_store(&img->sync_inline_avg, avg);
	atomic_store(&img->sync_inline_after, avg > fsync_inline_max_ns ? t1 + 1000000000ull : 0);
	return true;
}

static void fsync_batch_start(struct fsync_batch *s)
{
	struct vd_image *img = s->img;
	int ret = img->fmt->flush ? img->fmt->flush(img) : 0;

	if (ret || fsync_inline(img, &ret)) {
		fsync_batch_finish(s, ret);
		return;
	}
	uring_fsync(&s->op, img->fd, true, fsync_batch_done);
}

void fsync_batch_join(struct vd_image *img, vd_done_fn done, void *opaque)
{
	struct fsync_waiter *w;
	struct fsync_batch **slot, *start = NULL;

	if (!img->writable) {
		done(opaque, 0);
		return;
	}
	w = calloc(1, sizeof(*w));
	if (!w) {
		done(opaque, -ENOMEM);
		return;
	}
	w->done = done;
	w->opaque = opaque;
	pthread_mutex_lock(&img->sync_lock);
	slot = img->sync_running ? &img->sync_next : &img->sync_running;
	if (!*slot) {
		*slot = calloc(1, sizeof(**slot));
		if (!*slot) {
			pthread_mutex_unlock(&img->sync_lock);
			free(w);
			done(opaque, -ENOMEM);
			return;
		}
		(*slot)->img = img;
		if (slot == &img->sync_running)
			start = *slot; /* ours to start: nobody else finishes it */
	}
	w->next = (*slot)->waiters;
	(*slot)->waiters = w;
	pthread_mutex_unlock(&img->sync_lock);
	if (start)
		fsync_batch_start(start);
}

/* ---- waiting for a request: the blocking calls ---- */

void image_wait_init(struct image_wait *w)
{
	atomic_init(&w->done, false);
	w->err = 0;
}

void image_wait_done(void *opaque, int err)
{
	struct image_wait *w = opaque;

	w->err = err;
	atomic_store(&w->done, true);
}

int image_wait(struct image_wait *w)
{
	/* A request of ours parked on another thread's allocation finishes
	 * there (we poll for it). Requests of other threads that our
	 * completions resumed have their I/O on our ring: we leave only once
	 * they finished, else nobody would reap it (this thread may exit or
	 * block next) and their callers would wait forever. */
	while (!atomic_load(&w->done) || image_adopted) {
		int ret = uring_run(uring_inflight() ? 100 : 10);

		if (ret < 0)
			return ret;
	}
	return w->err;
}

int image_submit_wait(struct vd_image *img, enum image_op op, void *buf, uint64_t len, uint64_t off)
{
	struct image_wait w;
	int ret = uring_thread_init(64);

	if (ret)
		return ret;
	image_wait_init(&w);
	image_submit(img, op, buf, len, off, image_wait_done, &w);
	return image_wait(&w);
}
