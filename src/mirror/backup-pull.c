/* A pull backup: no target and no copier. The disk at the job's point in
 * time is read on demand (the FUSE layer's frozen file): each read holds its
 * chunks in the job's range lock and takes every chunk from the
 * copy-before-write store where a guest write saved it, else from the image,
 * which nobody changed there since. SEEK_DATA and SEEK_HOLE show the plan:
 * the allocated data (sync=full) or the bitmap's changes (incremental). The
 * job ends when told (end: the bitmap stays cleared; cancel: it gets its
 * bits back). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/compiler.h"
#include "util/log.h"
#include "mirror/backup-int.h"

struct pull_read {
	struct backup_job *job;
	char *buf;
	uint64_t off, len;
	uint64_t pos, n; /* filled so far; the image read in flight */
	int err;
	vd_done_fn done;
	void *opaque;
	struct rl_range range;
};

bool backup_is_pull(struct backup *b)
{
	bool pull;

	pthread_mutex_lock(&b->lock);
	pull = b->job && b->job->pull && !atomic_load(&b->job->finished);
	pthread_mutex_unlock(&b->lock);
	return pull;
}

/* The last of the hook and the reads is gone: end the job. */
static void pull_done(struct backup_job *job)
{
	struct backup *b = job->b;
	vd_done_fn done;
	void *opaque;
	bool ok;

	pthread_mutex_lock(&b->lock);
	ok = !job->cancel && job->phase == BP_RUNNING;
	pthread_mutex_unlock(&b->lock);
	if (!ok)
		backup_bitmap_return(job);
	pthread_mutex_lock(&b->lock);
	cbw_store_close(&job->store);
	job->end_ns = vd_now_ns();
	job->phase = ok ? BP_COMPLETED : job->cancel ? BP_CANCELLED : BP_FAILED;
	done = job->end_done;
	opaque = job->end_opaque;
	job->end_done = NULL;
	atomic_store(&job->finished, true);
	pthread_mutex_unlock(&b->lock);
	vd_info("%s: pull backup %s %s", job->src->path, job->view,
		ok	      ? "ended"
		: job->cancel ? "cancelled"
			      : "ended after a failure");
	if (done)
		done(opaque, 0);
}

static void pull_detached(void *opaque, int err)
{
	struct backup_job *job = opaque;
	bool fin;

	(void)err;
	pthread_mutex_lock(&job->b->lock);
	job->detached = true;
	fin = !job->reads;
	pthread_mutex_unlock(&job->b->lock);
	if (fin)
		pull_done(job);
}

void backup_pull_finish(struct backup_job *job)
{
	mirror_hook_detach(job->b->m, pull_detached, job);
}

int backup_pull_end(struct backup *b, bool cancel, vd_done_fn done, void *opaque, bool quiet)
{
	struct backup_job *job;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	if (!job || !job->pull || job->ending || atomic_load(&job->finished) ||
	    job->phase == BP_STARTING) {
		pthread_mutex_unlock(&b->lock);
		if (!quiet)
			vd_err("%s: no pull backup is running", (*b->slot)->path);
		return -ESRCH;
	}
	job->ending = true;
	job->cancel = cancel;
	job->stop = true; /* new reads fail, the hook lets writes by */
	job->end_done = done;
	job->end_opaque = opaque;
	pthread_mutex_unlock(&b->lock);
	backup_pull_finish(job);
	return 0;
}

void backup_end(struct backup *b, vd_done_fn done, void *opaque)
{
	bool push;

	pthread_mutex_lock(&b->lock);
	push = b->job && !b->job->pull && !atomic_load(&b->job->finished);
	pthread_mutex_unlock(&b->lock);
	if (push) {
		vd_err("%s: a push backup completes on its own (cancel stops it)",
		       (*b->slot)->path);
		done(opaque, -EINVAL);
		return;
	}
	if (backup_pull_end(b, false, done, opaque, false))
		done(opaque, -ESRCH);
}

static void pull_read_end(struct pull_read *r)
{
	struct backup_job *job = r->job;
	bool fin;

	rangelock_unlock(&job->rl, &r->range);
	pthread_mutex_lock(&job->b->lock);
	fin = !--job->reads && job->detached;
	pthread_mutex_unlock(&job->b->lock);
	r->done(r->opaque, r->err);
	free(r);
	if (fin)
		pull_done(job);
}

static void pull_step(struct pull_read *r);

static void pull_image_read(void *opaque, int err)
{
	struct pull_read *r = opaque;

	if (err)
		r->err = err;
	else
		r->pos += r->n;
	pull_step(r);
}

/* Is chunk i saved (*slot)? Under the job's lock. */
static bool pull_saved(struct backup_job *job, uint64_t i, uint64_t *slot)
{
	bool saved;

	pthread_mutex_lock(&job->b->lock);
	saved = cbw_store_lookup(&job->store, i, slot);
	pthread_mutex_unlock(&job->b->lock);
	return saved;
}

/* Fill the rest of r: saved chunks from the store, runs of the others from
 * the image (asynchronously; the read comes back here). */
static void pull_step(struct pull_read *r)
{
	struct backup_job *job = r->job;
	uint64_t chunk = job->chunk, slot;

	while (r->pos < r->len && !r->err) {
		uint64_t at = r->off + r->pos, i = at / chunk;
		uint64_t n = min_u64(r->len - r->pos, (i + 1) * chunk - at);

		if (pull_saved(job, i, &slot)) {
			ssize_t got = pread(job->store.fd, r->buf + r->pos, n,
					    slot * chunk + (at - i * chunk));

			if (got != (ssize_t)n)
				r->err = got < 0 ? -errno : -EIO;
			else
				r->pos += n;
			continue;
		}
		while (r->pos + n < r->len && !pull_saved(job, (at + n) / chunk, &slot))
			n += min_u64(r->len - r->pos - n, chunk);
		r->n = n;
		image_submit(job->src, IMAGE_READ, r->buf + r->pos, n, at, pull_image_read, r);
		return;
	}
	if (r->err)
		vd_err("%s: pull backup %s: reading %" PRIu64 " bytes at offset %" PRIu64 ": %s",
		       job->src->path, job->view, r->len, r->off, strerror(-r->err));
	pull_read_end(r);
}

static void pull_wake(struct rl_range *range)
{
	pull_step(container_of(range, struct pull_read, range));
}

void backup_read(struct backup *b, void *buf, uint64_t len, uint64_t off, vd_done_fn done,
		 void *opaque)
{
	struct backup_job *job;
	struct pull_read *r;
	uint64_t a, z;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	if (!job || !job->pull || job->stop || job->phase != BP_RUNNING) {
		pthread_mutex_unlock(&b->lock);
		done(opaque, -EIO);
		return;
	}
	job->reads++;
	pthread_mutex_unlock(&b->lock);
	r = calloc(1, sizeof(*r));
	if (!r || !len || off >= job->size) {
		int err = r ? 0 : -ENOMEM;
		bool fin;

		free(r);
		pthread_mutex_lock(&b->lock);
		fin = !--job->reads && job->detached;
		pthread_mutex_unlock(&b->lock);
		done(opaque, err);
		if (fin)
			pull_done(job);
		return;
	}
	r->job = job;
	r->buf = buf;
	r->off = off;
	r->len = min_u64(len, job->size - off);
	r->done = done;
	r->opaque = opaque;
	a = off / job->chunk * job->chunk;
	z = (off + r->len + job->chunk - 1) / job->chunk * job->chunk;
	if (rangelock_lock(&job->rl, &r->range, a, z - a, pull_wake))
		pull_step(r);
}

int backup_seek(struct backup *b, uint64_t off, int whence, uint64_t *pos)
{
	struct backup_job *job;
	uint64_t i;
	int ret = 0;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	if (!job || !job->pull || job->stop) {
		ret = -EIO;
	} else if (off >= job->size) {
		ret = -ENXIO;
	} else {
		for (i = off / job->chunk; i < job->nchunks; i++)
			if (bits_test(job->seek, i) == (whence == SEEK_DATA))
				break;
		if (i < job->nchunks)
			*pos = max_u64(off, i * job->chunk);
		else if (whence == SEEK_DATA)
			ret = -ENXIO;
		else
			*pos = job->size; /* the end of the disk is a hole */
	}
	pthread_mutex_unlock(&b->lock);
	return ret;
}
