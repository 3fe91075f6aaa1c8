/* The backup's copier: one thread per job with its own io_uring. It walks
 * the needed chunks in order; each holds its range in the job's range lock
 * while it reads the point-in-time bytes (from the copy-before-write store
 * where a guest write saved them, else from the image, which nobody changed
 * there since) and writes them to the target. Once all are done it flushes
 * the target; then, or when the job stopped, it ends the job: the hook goes,
 * a failed or cancelled job gives the bitmap its bits back, the target and
 * the store are closed. */
#include <errno.h>
#include <inttypes.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/compiler.h"
#include "util/log.h"
#include "mirror/backup-int.h"

#define COPY_DEPTH 8

struct backup_chunk {
	struct backup_job *job;
	uint64_t idx, off, len;
	void *buf;
	bool from_store;
	struct uring_op op;
	struct rl_range range;
	struct backup_chunk *next;
};

static __thread struct backup_job *copy_self;

bool backup_on_own_thread(struct backup *b)
{
	return copy_self && copy_self->b == b;
}

static void chunk_end(struct backup_chunk *c, bool copied)
{
	struct backup_job *job = c->job;

	pthread_mutex_lock(&job->b->lock);
	if (copied) {
		bits_set(job->done, c->idx);
		cbw_store_drop(&job->store, c->idx);
	}
	job->inflight--;
	pthread_mutex_unlock(&job->b->lock);
	if (copied)
		atomic_fetch_add(&job->copied, c->len);
	rangelock_unlock(&job->rl, &c->range);
	free(c->buf);
	free(c);
	if (copy_self != job)
		backup_kick(job);
}

static void chunk_written(void *opaque, int err)
{
	struct backup_chunk *c = opaque;

	if (err)
		backup_fail(c->job,
			    "writing %" PRIu64 " bytes at offset %" PRIu64 " of the target: %s",
			    c->len, c->off, strerror(-err));
	chunk_end(c, !err);
}

static void chunk_read(void *opaque, int err)
{
	struct backup_chunk *c = opaque;
	struct backup_job *job = c->job;

	if (err) {
		backup_fail(job, "reading %" PRIu64 " bytes at offset %" PRIu64 " of the %s: %s",
			    c->len, c->off, c->from_store ? "copy-before-write store" : "image",
			    strerror(-err));
		chunk_end(c, false);
		return;
	}
	/* A fresh full target reads as zeroes already; an incremental one
	 * must hide its base there. */
	if (job->fresh && job->sync == BACKUP_FULL && buf_is_zero(c->buf, c->len)) {
		chunk_end(c, true);
		return;
	}
	image_submit(job->dst, IMAGE_WRITE, c->buf, c->len, c->off, chunk_written, c);
}

static void chunk_store_read(struct uring_op *op, int res)
{
	struct backup_chunk *c = op->data;

	if (res >= 0 && (uint64_t)res < c->len)
		res = -EIO; /* the store holds every byte it indexed */
	chunk_read(c, res < 0 ? res : 0);
}

/* On the copier thread, with the chunk's range held. */
static void chunk_go(struct backup_chunk *c)
{
	struct backup_job *job = c->job;
	uint64_t slot = 0;
	bool stop;

	pthread_mutex_lock(&job->b->lock);
	stop = job->stop;
	c->from_store = !stop && cbw_store_lookup(&job->store, c->idx, &slot);
	pthread_mutex_unlock(&job->b->lock);
	if (stop) {
		chunk_end(c, false);
	} else if (c->from_store) {
		c->op.data = c;
		uring_read(&c->op, job->store.fd, c->buf, c->len, slot * job->chunk,
			   chunk_store_read);
	} else {
		image_submit(job->src, IMAGE_READ, c->buf, c->len, c->off, chunk_read, c);
	}
}

static void chunk_wake(struct rl_range *r)
{
	struct backup_chunk *c = container_of(r, struct backup_chunk, range);
	struct backup_job *job = c->job;

	if (copy_self == job) {
		chunk_go(c);
		return;
	}
	pthread_mutex_lock(&job->b->lock);
	c->next = job->ready;
	job->ready = c;
	pthread_mutex_unlock(&job->b->lock);
	backup_kick(job);
}

static void copy_flushed(void *opaque, int err)
{
	struct backup_job *job = opaque;

	pthread_mutex_lock(&job->b->lock);
	job->flush_err = err ? err : 1;
	job->inflight--;
	pthread_mutex_unlock(&job->b->lock);
	if (err)
		backup_fail(job, "flushing the target: %s", strerror(-err));
	if (copy_self != job)
		backup_kick(job);
}

/* Start what may start; ms until the bucket allows more, or -1. */
static int copy_pump(struct backup_job *job)
{
	struct backup *b = job->b;
	struct backup_chunk *ready, *c;
	bool flush = false;

	pthread_mutex_lock(&b->lock);
	ready = job->ready;
	job->ready = NULL;
	pthread_mutex_unlock(&b->lock);
	for (; ready; ready = c) {
		c = ready->next;
		chunk_go(ready);
	}
	for (;;) {
		bool go;
		int wait;

		pthread_mutex_lock(&b->lock);
		while (job->pos < job->nchunks && !bits_test(job->need, job->pos))
			job->pos++;
		go = !job->stop && !job->paused && job->inflight < COPY_DEPTH &&
		     job->pos < job->nchunks;
		pthread_mutex_unlock(&b->lock);
		if (!go)
			break;
		wait = copy_bucket_wait(&job->bucket, atomic_load(&job->speed), job->chunk);
		if (wait)
			return wait;
		c = calloc(1, sizeof(*c));
		if (!c || posix_memalign(&c->buf, 4096, job->chunk)) {
			free(c);
			backup_fail(job, "out of memory for a %u-byte chunk", job->chunk);
			break;
		}
		c->job = job;
		c->idx = job->pos++;
		c->off = c->idx * job->chunk;
		c->len = min_u64(job->chunk, job->size - c->off);
		copy_bucket_take(&job->bucket, atomic_load(&job->speed), c->len);
		pthread_mutex_lock(&b->lock);
		job->inflight++;
		pthread_mutex_unlock(&b->lock);
		if (rangelock_lock(&job->rl, &c->range, c->off, c->len, chunk_wake))
			chunk_go(c);
	}
	pthread_mutex_lock(&b->lock);
	if (!job->stop && job->pos >= job->nchunks && !job->inflight && !job->flushing) {
		job->flushing = true;
		job->inflight++;
		flush = true;
	}
	pthread_mutex_unlock(&b->lock);
	if (flush)
		image_submit(job->dst, IMAGE_FSYNC, NULL, 0, 0, copy_flushed, job);
	return -1;
}

static void copy_on_kick(struct uring_op *op, int res)
{
	struct backup_job *job = op->data;
	uint64_t v;

	(void)res;
	if (read(job->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		vd_warn("backup: copier eventfd: %s", strerror(errno));
	if (!op->multishot)
		uring_poll(op, job->efd, POLLIN, true, copy_on_kick);
}

static void end_detached(void *opaque, int err)
{
	struct backup_job *job = opaque;

	(void)err;
	pthread_mutex_lock(&job->b->lock);
	job->detached = true;
	pthread_mutex_unlock(&job->b->lock);
	backup_kick(job);
}

/* Run the ring (guest writes resumed on this thread complete on it) until
 * done() holds. */
static void copy_run_until(struct backup_job *job, bool (*done)(struct backup_job *job))
{
	for (;;) {
		int wait, ret;

		if (!uring_thread_ready()) { /* the ring failed: nothing runs here */
			if (done(job))
				return;
			usleep(1000);
			continue;
		}
		wait = done(job) ? 0 : copy_pump(job);

		if (done(job) && !uring_inflight())
			return;
		ret = uring_run(wait < 0 || wait > 100 ? 100 : wait);
		if (ret < 0 && ret != -EINTR && ret != -ETIME) {
			vd_err("backup: copier io_uring wait failed: %s", strerror(-ret));
			usleep(1000);
		}
	}
}

static bool copy_finished(struct backup_job *job)
{
	bool fin;

	pthread_mutex_lock(&job->b->lock);
	fin = !job->inflight && (job->stop || job->flush_err);
	pthread_mutex_unlock(&job->b->lock);
	return fin;
}

static bool copy_detached(struct backup_job *job)
{
	bool d;

	pthread_mutex_lock(&job->b->lock);
	d = job->detached;
	pthread_mutex_unlock(&job->b->lock);
	return d;
}

void backup_bitmap_return(struct backup_job *job)
{
	int ret;

	if (!job->took)
		return;
	ret = image_bitmap_merge(job->src, job->bitmap, &job->taken);
	if (ret)
		vd_err("%s: backup: bitmap %s could not get its bits back (%s): the next "
		       "incremental backup must be a full one",
		       job->src->path, job->bitmap, strerror(-ret));
}

/* Everything copied and flushed, or stopped: end the job. */
static void copy_end(struct backup_job *job)
{
	struct backup *b = job->b;
	struct vd_image *dst;
	vd_done_fn done;
	void *opaque;
	bool ok;

	pthread_mutex_lock(&b->lock);
	ok = !job->stop && job->flush_err == 1;
	job->stop = true; /* the hook lets writes by from now on */
	pthread_mutex_unlock(&b->lock);
	mirror_hook_detach(b->m, end_detached, job);
	copy_run_until(job, copy_detached);
	if (!ok)
		backup_bitmap_return(job);
	pthread_mutex_lock(&b->lock);
	dst = job->dst;
	job->dst = NULL;
	pthread_mutex_unlock(&b->lock);
	image_unref(dst);
	pthread_mutex_lock(&b->lock);
	cbw_store_close(&job->store);
	job->end_ns = vd_now_ns();
	if (ok && job->bitmap) /* the base of the next incremental by default */
		g_hash_table_replace(b->last, g_strdup(job->bitmap), g_strdup(job->target));
	if (ok)
		job->phase = BP_COMPLETED;
	else if (job->cancel)
		job->phase = BP_CANCELLED;
	else
		job->phase = BP_FAILED;
	done = job->end_done;
	opaque = job->end_opaque;
	job->end_done = NULL;
	pthread_mutex_unlock(&b->lock);
	if (ok)
		vd_info("%s: backup to %s completed (%" PRIu64 " bytes)", job->src->path,
			job->target, (uint64_t)atomic_load(&job->copied));
	else if (job->cancel)
		vd_info("%s: backup to %s cancelled; the partial target is left at %s",
			job->src->path, job->target, job->target);
	if (done)
		done(opaque, 0);
}

static void *copy_main(void *arg)
{
	struct backup_job *job = arg;
	int ret;

	copy_self = job;
	ret = uring_thread_init(256);
	if (ret) {
		/* Nothing is copied; no chunk ever held a range, so no guest
		 * write resumes here: copy_run_until() just waits. */
		backup_fail(job, "cannot set up the copier's io_uring: %s", strerror(-ret));
	} else {
		copy_bucket_init(&job->bucket);
		job->poll.data = job;
		uring_poll(&job->poll, job->efd, POLLIN, true, copy_on_kick);
	}
	copy_run_until(job, copy_finished);
	copy_end(job);
	if (!ret)
		uring_thread_exit();
	atomic_store(&job->finished, true);
	return NULL;
}

int backup_copy_start(struct backup_job *job)
{
	int ret = pthread_create(&job->thread, NULL, copy_main, job);

	if (ret)
		return -ret;
	pthread_setname_np(job->thread, "vdiskfs-backup");
	job->thread_started = true;
	return 0;
}

void backup_copy_join(struct backup_job *job)
{
	if (job->thread_started)
		pthread_join(job->thread, NULL);
	job->thread_started = false;
}
