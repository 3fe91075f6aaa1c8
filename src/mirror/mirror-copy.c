/* The copier: one thread per job with its own io_uring. It walks the
 * source's block status through the backing chain, copies DATA runs in
 * granularity-sized chunks with several in flight, writes ZERO runs as
 * unmapped zeroes only where the destination is not already zero, holds each
 * chunk's range in the job's range lock while reading and writing it, and
 * meters copied data with a token bucket. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/log.h"
#include "mirror/job-copy.h"
#include "mirror/mirror-int.h"

#define COPY_ZERO_MAX (64ull << 20) /* one zeroing op locks at most this much */
#define COPY_GRACE_MS 2000	    /* old source kept open after complete */

struct mirror_chunk {
	struct mirror_job *job;
	uint64_t off, len;
	bool zero;  /* zero the destination rather than copy */
	bool dirty; /* background mode: a chunk the guest wrote */
	void *buf;
	struct rl_range range;
	struct mirror_chunk *next;
};

static __thread struct mirror_job *copy_self;

void mirror_copy_kick(struct mirror_job *job)
{
	copy_kick(job->efd, "mirror");
}

static void chunk_end(struct mirror_chunk *c, bool copied)
{
	struct mirror_job *job = c->job;
	struct mirror *m = job->m;
	mirror_cont_fn *cont;

	rangelock_unlock(&job->rl, &c->range);
	if (copied && !c->zero)
		atomic_fetch_add(&job->copied, c->len);
	pthread_mutex_lock(&m->lock);
	job->copy_inflight--;
	cont = mirror_drain_check(m);
	pthread_mutex_unlock(&m->lock);
	free(c->buf);
	free(c);
	if (copy_self != job)
		mirror_copy_kick(job);
	if (cont)
		cont(m);
}

static void chunk_written(void *opaque, int err)
{
	struct mirror_chunk *c = opaque;

	if (err)
		mirror_fail(c->job,
			    "writing %" PRIu64 " bytes at offset %" PRIu64
			    " of the destination: %s",
			    c->len, c->off, strerror(-err));
	chunk_end(c, !err);
}

static void chunk_read(void *opaque, int err)
{
	struct mirror_chunk *c = opaque;
	struct mirror_job *job = c->job;

	if (err) {
		mirror_fail(job,
			    "reading %" PRIu64 " bytes at offset %" PRIu64 " of the source: %s",
			    c->len, c->off, strerror(-err));
		chunk_end(c, false);
		return;
	}
	if (c->dirty && buf_is_zero(c->buf, c->len)) {
		image_submit(job->dst, job->zero_op, NULL, c->len, c->off, chunk_written, c);
		return;
	}
	if (job->dst_zero && !c->dirty && buf_is_zero(c->buf, c->len)) {
		chunk_end(c, true); /* allocated zeroes: the destination stays sparse */
		return;
	}
	image_submit(job->dst, IMAGE_WRITE, c->buf, c->len, c->off, chunk_written, c);
}

/* A zero chunk's status was read before its range was held: a guest write
 * that held the range meanwhile (or was in flight then, not yet linked in the
 * source's metadata) has since written both sides, and zeroing the
 * destination now would erase it there. Now that no guest request can hold
 * the range, look again: if the source has data in it, the chunk copies. */
static int chunk_recheck(struct mirror_chunk *c)
{
	struct mirror_job *job = c->job;
	uint64_t end = c->off + c->len, pnum;
	enum copy_kind k = COPY_ZERO;
	int ret;

	for (uint64_t pos = c->off; pos < end; pos += pnum) {
		ret = copy_status(job, pos, end - pos, &pnum, &k);
		if (ret) {
			mirror_fail(job, "block status of the source at offset %" PRIu64 ": %s",
				    pos, strerror(-ret));
			return ret;
		}
		if (k == COPY_DATA)
			break;
	}
	if (k != COPY_DATA)
		return 0;
	atomic_fetch_add(&job->work, c->len);
	if (posix_memalign(&c->buf, 4096, c->len)) {
		c->buf = NULL;
		mirror_fail(job, "out of memory for a %" PRIu64 "-byte chunk", c->len);
		return -ENOMEM;
	}
	c->zero = false;
	return 0;
}

/* The chunk holds its range: do its I/O, unless the job stopped meanwhile. */
static void chunk_go(struct mirror_chunk *c)
{
	struct mirror_job *job = c->job;
	bool stop;

	pthread_mutex_lock(&job->m->lock);
	stop = job->stop;
	pthread_mutex_unlock(&job->m->lock);
	if (stop || (c->zero && chunk_recheck(c)))
		chunk_end(c, false);
	else if (c->zero)
		image_submit(job->dst, job->zero_op, NULL, c->len, c->off, chunk_written, c);
	else
		image_submit(job->rd, IMAGE_READ, c->buf, c->len, c->off, chunk_read, c);
}

/* Granted by another thread's unlock: hand it to the copier's own ring. */
static void chunk_wake(struct rl_range *r)
{
	struct mirror_chunk *c = container_of(r, struct mirror_chunk, range);
	struct mirror_job *job = c->job;

	if (copy_self == job) {
		chunk_go(c);
		return;
	}
	pthread_mutex_lock(&job->m->lock);
	c->next = job->ready;
	job->ready = c;
	pthread_mutex_unlock(&job->m->lock);
	mirror_copy_kick(job);
}

static void copy_flushed(void *opaque, int err)
{
	struct mirror_job *job = opaque;
	struct mirror *m = job->m;
	mirror_cont_fn *cont;

	if (err)
		mirror_fail(job, "flushing the destination: %s", strerror(-err));
	else
		mirror_copy_ready(job);
	/* The flush counted as copy work in flight, so that a cancel or complete
	 * drained meanwhile does not drop the destination under it. */
	pthread_mutex_lock(&m->lock);
	job->copy_inflight--;
	cont = mirror_drain_check(m);
	pthread_mutex_unlock(&m->lock);
	if (copy_self != job)
		mirror_copy_kick(job);
	if (cont)
		cont(m);
}

/* What the run at off is to this job: *pnum bytes of one kind.
 * A mirror copies the whole chain (sync=full) or only what the top image
 * holds (sync=top); a commit what rd's chain holds above base; a stream what
 * the backing chain holds above base where the top holds nothing. */
int copy_status(struct mirror_job *job, uint64_t off, uint64_t len, uint64_t *pnum,
		enum copy_kind *kind)
{
	struct vd_image *from = job->rd;
	uint64_t n = len;
	enum vd_bs st;
	int ret;

	if (job->type == JOB_MIRROR && !job->top_only) {
		ret = image_block_status(from, off, len, pnum, &st);
		if (!ret)
			*kind = st == VD_BS_DATA ? COPY_DATA : COPY_ZERO;
		return ret;
	}
	if (job->type == JOB_STREAM) {
		/* What the top holds is the top's own. */
		ret = image_block_status_above(from, from->backing, off, len, &n, &st);
		if (ret)
			return ret;
		if (st != VD_BS_UNALLOC) {
			*pnum = n;
			*kind = COPY_SKIP;
			return 0;
		}
		from = from->backing;
		if (off >= from->size) {
			/* Past a shorter backing file the top reads zeroes: so
			 * must it once it backs onto a longer base. */
			*pnum = n;
			*kind = job->base && off < job->base->size ? COPY_ZERO : COPY_SKIP;
			return 0;
		}
	}
	ret = image_block_status_above(from, job->base, off, n, pnum, &st);
	if (!ret)
		*kind = st == VD_BS_DATA ? COPY_DATA : st == VD_BS_ZERO ? COPY_ZERO : COPY_SKIP;
	return ret;
}

/* The next run to copy from job->pos: DATA coalesced up to the next
 * granularity boundary, or a ZERO or SKIP run. 0 or -errno. */
static int copy_next(struct mirror_job *job, uint64_t *len, enum copy_kind *kind)
{
	uint64_t pos = job->pos, pnum, boundary, n;
	enum copy_kind k;
	int ret;

	ret = copy_status(job, pos, job->total - pos, &pnum, kind);
	if (ret)
		return ret;
	if (*kind != COPY_DATA) {
		*len = job->dst_zero || *kind == COPY_SKIP || pnum <= COPY_ZERO_MAX ? pnum
										    : COPY_ZERO_MAX;
		return 0;
	}
	boundary = (pos / job->granularity + 1) * job->granularity;
	if (boundary > job->total)
		boundary = job->total;
	n = pnum < boundary - pos ? pnum : boundary - pos;
	while (pos + n < boundary) {
		ret = copy_status(job, pos + n, boundary - pos - n, &pnum, &k);
		if (ret)
			return ret;
		if (k != COPY_DATA)
			break;
		n += pnum;
	}
	*len = n;
	return 0;
}

/* The data the first pass will copy (holes are not work), for progress. */
static int copy_count(struct mirror_job *job)
{
	uint64_t pnum, sum = 0;
	enum copy_kind k;
	int ret;

	for (uint64_t pos = 0; pos < job->total; pos += pnum) {
		ret = copy_status(job, pos, job->total - pos, &pnum, &k);
		if (ret)
			return ret;
		if (k == COPY_DATA)
			sum += pnum;
	}
	atomic_fetch_add(&job->work, sum);
	atomic_store(&job->counted, true);
	return 0;
}

/* ---- background mode: the dirty chunks ---- */

void mirror_mark_dirty(struct mirror_job *job, uint64_t off, uint64_t len)
{
	uint64_t first, last;
	bool added = false;

	if (!len || !job->dirty)
		return;
	first = off / job->dirty_gran;
	last = (off + len - 1) / job->dirty_gran;
	for (uint64_t i = first; i <= last; i++) {
		uint64_t bit = 1ull << (i % 64);

		if (!(atomic_fetch_or(&job->dirty[i / 64], bit) & bit)) {
			atomic_fetch_add(&job->ndirty, 1);
			added = true;
		}
	}
	/* A write to chunks dirty already gives the copier no new work: no
	 * wake-up (an eventfd write) on the guest's path for it. */
	if (added && copy_self != job)
		mirror_copy_kick(job);
}

/* Take the next dirty chunk from the scan position on: its index, or -1. */
static int64_t dirty_take(struct mirror_job *job)
{
	uint64_t n;

	if (!job->dirty || !atomic_load(&job->ndirty))
		return -1;
	n = (job->total + job->dirty_gran - 1) / job->dirty_gran;
	for (uint64_t k = 0; k < n; k++) {
		uint64_t i = (job->dirty_pos + k) % n, bit = 1ull << (i % 64);

		if (!(atomic_load(&job->dirty[i / 64]) & bit))
			continue;
		if (atomic_fetch_and(&job->dirty[i / 64], ~bit) & bit) {
			atomic_fetch_sub(&job->ndirty, 1);
			job->dirty_pos = i + 1;
			return (int64_t)i;
		}
	}
	return -1;
}

/* Background mode is ready when what is dirty would take little time. */
static bool dirty_small(struct mirror_job *job)
{
	uint64_t bytes = atomic_load(&job->ndirty) * job->dirty_gran;

	return bytes <= 16 * job->dirty_gran || bytes <= (16ull << 20);
}

/* Update the measured rate about once a second. */
static void copy_rate(struct mirror_job *job)
{
	uint64_t now = vd_now_ns(), copied = atomic_load(&job->copied), r;

	if (!job->rate_ns) {
		job->rate_ns = now;
		job->rate_copied = copied;
		return;
	}
	if (now - job->rate_ns < 1000000000ull)
		return;
	r = (uint64_t)((double)(copied - job->rate_copied) * 1e9 / (double)(now - job->rate_ns));
	/* Smooth, but let a first sample or a long pause count in full. */
	atomic_store(&job->rate, atomic_load(&job->rate) ? (atomic_load(&job->rate) + r) / 2 : r);
	job->rate_ns = now;
	job->rate_copied = copied;
}

/* A background mirror in ready whose dirty count did not fall over the
 * last second is losing to the guest: a chunk it copies is written again
 * before complete drains it, so copying it costs the guest for nothing.
 * Once a second, note whether the count fell (with m->lock held, once per
 * pump); out of ready, forget it. */
static void lag_check(struct mirror_job *job)
{
	uint64_t now, n;

	if (!job->background || job->phase != MP_READY) {
		job->lag_ns = 0;
		job->lagging = false;
		return;
	}
	now = vd_now_ns();
	n = atomic_load(&job->ndirty);
	if (!job->lag_ns) {
		job->lag_ns = now;
		job->lag_dirty = n;
		return;
	}
	if (now - job->lag_ns < 1000000000ull)
		return;
	job->lagging = n >= job->lag_dirty;
	job->lag_ns = now;
	job->lag_dirty = n;
}

/* May the copier start another chunk now (with m->lock held)? The first
 * pass runs while running; background mode copies dirty chunks in ready too,
 * and a complete's final drain copies them even while paused. */
static bool copy_may_go(struct mirror_job *job)
{
	/* In ready a background mirror spares the guest: it copies only once
	 * what is dirty grew past small, two chunks at a time, and while the
	 * guest dirties faster than that, one chunk every 100 ms (still enough
	 * to notice when the guest slows down: the count then falls). */
	bool spare = job->background && job->phase == MP_READY;
	bool copying = job->phase == MP_RUNNING || (spare && !dirty_small(job)) ||
		       (job->final_drain && job->phase == MP_COMPLETING);

	if (spare && job->lagging && (job->copy_inflight || vd_now_ns() < job->lag_next_ns))
		return false;
	return copying && !job->stop && (!job->paused || job->final_drain) &&
	       job->copy_inflight < (spare ? 2 : job->depth) &&
	       (job->pos < job->total || atomic_load(&job->ndirty));
}

/* The next chunk: from the first pass, else a dirty one. Returns 1 with
 * *c made, 0 when nothing is left to take now, -1 when the job failed. */
static int copy_take(struct mirror_job *job, struct mirror_chunk **out)
{
	struct mirror_chunk *c;
	enum copy_kind kind = COPY_DATA;
	uint64_t off, len;
	bool dirty = false;
	int ret;

	for (;;) {
		if (job->pos >= job->total) {
			int64_t i = dirty_take(job);

			if (i < 0)
				return 0;
			off = (uint64_t)i * job->dirty_gran;
			len = job->total - off < job->dirty_gran ? job->total - off
								 : job->dirty_gran;
			atomic_fetch_add(&job->work, len);
			dirty = true;
			break;
		}
		ret = copy_next(job, &len, &kind);
		if (ret) {
			mirror_fail(job, "block status of the source at offset %" PRIu64 ": %s",
				    job->pos, strerror(-ret));
			return -1;
		}
		off = job->pos;
		job->pos += len;
		/* A fresh destination already reads as zeroes here. */
		if (kind == COPY_DATA || (kind == COPY_ZERO && !job->dst_zero))
			break;
	}
	c = calloc(1, sizeof(*c));
	if (!c || (kind == COPY_DATA && posix_memalign(&c->buf, 4096, len))) {
		free(c);
		mirror_fail(job, "out of memory for a %" PRIu64 "-byte chunk", len);
		return -1;
	}
	c->job = job;
	c->off = off;
	c->len = len;
	c->zero = kind == COPY_ZERO;
	c->dirty = dirty;
	*out = c;
	return 1;
}

/* Start what may start; return ms until the bucket allows more, or -1. */
static int copy_pump(struct mirror_job *job)
{
	struct mirror *m = job->m;
	struct mirror_chunk *ready, *c;
	bool flush = false, final = false;

	pthread_mutex_lock(&m->lock);
	ready = job->ready;
	job->ready = NULL;
	lag_check(job);
	pthread_mutex_unlock(&m->lock);
	for (; ready; ready = c) {
		c = ready->next;
		chunk_go(ready);
	}
	copy_rate(job);
	for (;;) {
		bool go, drain;
		int wait;

		pthread_mutex_lock(&m->lock);
		go = copy_may_go(job);
		drain = job->final_drain;
		pthread_mutex_unlock(&m->lock);
		if (!go)
			break;
		wait = drain ? 0
			     : copy_bucket_wait(&job->bucket, atomic_load(&job->speed),
						job->granularity);
		if (wait)
			return wait;
		if (copy_take(job, &c) <= 0)
			break;
		if (!c->zero)
			copy_bucket_take(&job->bucket, atomic_load(&job->speed), c->len);
		pthread_mutex_lock(&m->lock);
		job->copy_inflight++;
		if (job->lagging)
			job->lag_next_ns = vd_now_ns() + 100000000ull;
		pthread_mutex_unlock(&m->lock);
		if (rangelock_lock(&job->rl, &c->range, c->off, c->len, chunk_wake))
			chunk_go(c);
	}
	pthread_mutex_lock(&m->lock);
	if (job->phase == MP_RUNNING && !job->stop && !job->paused && job->pos >= job->total &&
	    !job->copy_inflight && !job->flushing && (!job->background || dirty_small(job))) {
		job->flushing = true;
		job->copy_inflight++; /* until copy_flushed() */
		flush = true;
	}
	if (job->final_drain && job->phase == MP_COMPLETING && !job->copy_inflight &&
	    !atomic_load(&job->ndirty)) {
		job->final_drain = false;
		final = true;
	}
	pthread_mutex_unlock(&m->lock);
	if (flush)
		image_submit(job->dst, IMAGE_FSYNC, NULL, 0, 0, copy_flushed, job);
	if (final)
		mirror_complete_flush(job);
	return -1;
}

static void copy_on_kick(struct uring_op *op, int res)
{
	struct mirror_job *job = op->data;
	uint64_t v;

	if (read(job->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		vd_warn("mirror: copier eventfd: %s", strerror(errno));
	if (!op->multishot)
		uring_poll(op, job->efd, POLLIN, true, copy_on_kick);
}

static void *copy_main(void *arg)
{
	struct mirror_job *job = arg;
	struct mirror *m = job->m;
	struct vd_image *retired;
	int ret;

	copy_self = job;
	ret = uring_thread_init(256);
	if (ret) {
		mirror_fail(job, "cannot set up the copier's io_uring: %s", strerror(-ret));
		/* Nothing can run here; wait to be told to leave. */
		for (;;) {
			bool leave;

			pthread_mutex_lock(&m->lock);
			leave = job->exit && !job->copy_inflight;
			pthread_mutex_unlock(&m->lock);
			if (leave)
				break;
			usleep(10000);
		}
		goto out;
	}
	/* Requests that went straight to the source before the job existed
	 * must land before the copy reads what they wrote. */
	while (atomic_load(&m->direct) > 0)
		usleep(200);
	ret = copy_count(job);
	if (ret)
		mirror_fail(job, "block status of the source: %s", strerror(-ret));
	copy_bucket_init(&job->bucket);
	job->poll.data = job;
	uring_poll(&job->poll, job->efd, POLLIN, true, copy_on_kick);
	for (;;) {
		int wait = copy_pump(job);
		bool leave;

		pthread_mutex_lock(&m->lock);
		leave = job->exit && !job->copy_inflight;
		pthread_mutex_unlock(&m->lock);
		/* Guest requests resumed on this thread complete on its ring. */
		if (leave && !uring_inflight())
			break;
		ret = uring_run(wait < 0 || wait > 100 ? 100 : wait);
		if (ret < 0 && ret != -EINTR && ret != -ETIME) {
			vd_err("mirror: copier io_uring wait failed: %s", strerror(-ret));
			usleep(1000);
		}
	}
	pthread_mutex_lock(&m->lock);
	retired = job->retired;
	job->retired = NULL;
	pthread_mutex_unlock(&m->lock);
	if (retired) {
		/* Metadata requests (stat, lseek, xattrs) that read the view's
		 * image just before the swap finish within the grace period. */
		for (int i = 0; i < COPY_GRACE_MS / 20; i++) {
			bool hurry;

			pthread_mutex_lock(&m->lock);
			hurry = job->hurry;
			pthread_mutex_unlock(&m->lock);
			if (hurry)
				break;
			usleep(20000);
		}
		image_unref(retired);
	}
	uring_thread_exit();
out:
	atomic_store(&job->finished, true);
	return NULL;
}

bool mirror_on_own_thread(struct mirror *m)
{
	return copy_self && copy_self->m == m;
}

int mirror_copy_init(struct mirror_job *job)
{
	job->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	return job->efd < 0 ? -errno : 0;
}

int mirror_copy_start(struct mirror_job *job)
{
	int ret = pthread_create(&job->thread, NULL, copy_main, job);

	if (ret) {
		atomic_store(&job->finished, true);
		return -ret;
	}
	pthread_setname_np(job->thread, "vdiskfs-mirror");
	job->thread_started = true;
	return 0;
}

void mirror_copy_join(struct mirror_job *job)
{
	if (job->thread_started)
		pthread_join(job->thread, NULL);
	job->thread_started = false;
}
