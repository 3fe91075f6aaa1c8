/* Starting and ending a job's life: job_begin() reserves the view, job_new()
 * makes the job, job_publish() runs it (job_abandon() undoes a begin);
 * job_free() and mirror_reap() end it once its copier is done. mirror_start()
 * is the mirror's start; stream and commit start in job-chain.c, the
 * destination is opened in mirror-start.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "mirror/mirror-int.h"

void job_free(struct mirror_job *job)
{
	if (!job)
		return;
	rangelock_destroy(&job->rl);
	if (job->efd >= 0)
		close(job->efd);
	g_free(job->target);
	free(job->dirty);
	free(job);
}

/* Join and free a finished job's thread (it may still hold the old source
 * for its grace period: hurry tells it to drop it now). */
void mirror_reap(struct mirror_job *job)
{
	pthread_mutex_lock(&job->m->lock);
	job->hurry = true;
	job->exit = true;
	pthread_mutex_unlock(&job->m->lock);
	mirror_copy_kick(job);
	mirror_copy_join(job);
	job_free(job);
}

/* Begin a start on the view: refuse while another job runs or starts or the
 * view is held; reap ended jobs. 0 (m->starting set: finish with
 * job_publish() or job_abandon()), or -errno, logged. */
int job_begin(struct mirror *m, const char *what, bool read_only_mount)
{
	struct mirror_job *job, *old;
	struct vd_image *src;

	pthread_mutex_lock(&m->lock);
	src = *m->slot;
	if (read_only_mount || src->read_only) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: cannot %s a read-only %s", src->path, what,
		       read_only_mount ? "mount" : "image");
		return -EROFS;
	}
	if (atomic_load(&m->held)) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: cannot %s an inactive view: activate it first", src->path, what);
		return -EBUSY;
	}
	if (atomic_load(&m->hook) || m->hook_inflight) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: a backup runs on this view: cancel it or wait for its end", src->path);
		return -EBUSY;
	}
	job = atomic_load(&m->job);
	if (job || m->starting || m->quiesce) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: a job runs already (%s to %s, phase %s)", src->path,
		       job ? job_type_name(job->type) : "a job", job ? job->target : "?",
		       job ? job_phase_name(job->phase) : "starting");
		return -EBUSY;
	}
	/* Take the finished jobs whose threads are done; the others (an old
	 * source in its grace period) stay on the list. */
	old = NULL;
	for (struct mirror_job **pp = &m->old; *pp;) {
		struct mirror_job *o = *pp;
		if (atomic_load(&o->finished)) {
			*pp = o->old_next;
			o->old_next = old;
			old = o;
		} else {
			pp = &o->old_next;
		}
	}
	m->starting = true; /* no second start meanwhile */
	pthread_mutex_unlock(&m->lock);
	while (old) {
		struct mirror_job *next = old->old_next;
		mirror_reap(old);
		old = next;
	}
	return 0;
}

void job_abandon(struct mirror *m, struct mirror_job *job)
{
	if (job)
		job_free(job);
	pthread_mutex_lock(&m->lock);
	m->starting = false;
	pthread_mutex_unlock(&m->lock);
}

struct mirror_job *job_new(struct mirror *m, enum job_type type, uint64_t speed,
			   uint64_t granularity)
{
	struct mirror_job *job = calloc(1, sizeof(*job));

	if (!job)
		return NULL;
	job->m = m;
	job->type = type;
	job->efd = -1;
	job->src = job->rd = *m->slot;
	job->total = job->src->size;
	job->zero_op = IMAGE_ZERO;
	atomic_init(&job->speed, speed);
	job->granularity = granularity ? granularity : MIRROR_DEFAULT_GRANULARITY;
	job->dirty_gran = job->granularity;
	job->depth = job->granularity <= (1u << 20) ? 8 : 4;
	rangelock_init(&job->rl);
	return job;
}

/* Publish a job whose dst is open (the start succeeded: nothing can be
 * undone any more). Returns 0, or -errno before publishing (the caller
 * abandons the job and drops dst). */
int job_publish(struct mirror_job *job)
{
	struct mirror *m = job->m;
	int ret = mirror_copy_init(job);

	if (ret)
		return ret;
	if (job->background) {
		uint64_t n = (job->total + job->dirty_gran - 1) / job->dirty_gran;

		job->dirty = calloc((n + 63) / 64, sizeof(*job->dirty));
		if (!job->dirty)
			return -ENOMEM;
	}
	pthread_mutex_lock(&m->lock);
	job->phase = MP_RUNNING;
	m->last_phase = MP_NONE;
	atomic_store(&m->job, job);
	m->starting = false;
	pthread_mutex_unlock(&m->lock);
	ret = mirror_copy_start(job);
	if (ret) /* guest writes may already go to both sides: fail, not undo */
		mirror_fail(job, "cannot start the copier thread: %s", strerror(-ret));
	return 0;
}

int mirror_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env)
{
	struct mirror_job *job;
	int ret = job_begin(m, "mirror", env->read_only);

	if (ret)
		return ret;
	job = job_new(m, JOB_MIRROR, o->speed, o->granularity);
	if (!job) {
		job_abandon(m, NULL);
		return -ENOMEM;
	}
	job->background = o->background;
	/* What the guest dirties is tracked finer than the first pass copies
	 * (granularity= sets both): a 4K write costs a 64K copy, not 1M. */
	job->dirty_gran = o->granularity ? o->granularity : MIRROR_BACKGROUND_GRANULARITY;
	job->top_only = o->sync_top;
	job->base = o->sync_top ? job->src->backing : NULL;
	job->fan_out = job->lock_guest = !o->background;
	ret = mirror_open_target(m, o, env, job);
	if (ret) {
		job_abandon(m, job);
		return ret;
	}
	job->zero_op = job->dst->backing ? IMAGE_ZERO : IMAGE_DISCARD;
	/* Logged before the job is published: from then on a cancel may drop
	 * job->dst at any time. */
	vd_info("%s: mirroring %s%" PRIu64 " bytes to %s (%s, %s, %s)", job->src->path,
		o->sync_top ? "the top image of " : "", job->total, job->target,
		job->dst->fmt->name, job->dst_zero ? "new" : "existing",
		o->background ? "background" : "write-blocking");
	ret = job_publish(job);
	if (ret) {
		image_unref(job->dst);
		job_abandon(m, job);
	}
	return ret;
}
