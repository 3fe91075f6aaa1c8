/* The job engine's phases and their verbs (mirror, stream, commit): failure,
 * ready, the drain check, complete, pause, resume, speed and cancel, and the
 * view's mirror state from mirror_new() to mirror_free(). The view's data
 * path (gate, fan-out, hold, hooks) is in mirror-gate.c, starting a job in
 * job-start.c, the copier in mirror-copy.c, status in job-status.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "mirror/mirror-int.h"

static const char *const phase_names[] = {
	[MP_NONE] = "none",	      [MP_RUNNING] = "running",
	[MP_READY] = "ready",	      [MP_COMPLETING] = "completing",
	[MP_COMPLETED] = "completed", [MP_CANCELLING] = "cancelling",
	[MP_FAILED] = "failed",
};

static const char *const type_names[] = {
	[JOB_MIRROR] = "mirror",
	[JOB_STREAM] = "stream",
	[JOB_COMMIT] = "commit",
};

const char *job_phase_name(enum mirror_phase p)
{
	return phase_names[p];
}

const char *job_type_name(enum job_type t)
{
	return type_names[t];
}

struct mirror *mirror_new(struct vd_image **slot)
{
	struct mirror *m = calloc(1, sizeof(*m));

	if (!m)
		return NULL;
	pthread_mutex_init(&m->lock, NULL);
	m->slot = slot;
	m->parked_tail = &m->parked;
	return m;
}

/* Drop the job's reference to its destination; a commit's base goes back
 * to read-only first (it stays in the view's chain). */
static void job_drop_dst(struct mirror_job *job)
{
	if (job->type == JOB_COMMIT && job->dst)
		image_reopen(job->dst, false);
	image_unref(job->dst);
}

void mirror_free(struct mirror *m)
{
	struct mirror_job *job, *old;

	if (!m)
		return;
	pthread_mutex_lock(&m->lock);
	job = atomic_load(&m->job);
	if (job) {
		job->phase = MP_CANCELLING;
		job->stop = true;
		job->exit = true;
		job->hurry = true;
	}
	old = m->old;
	m->old = NULL;
	pthread_mutex_unlock(&m->lock);
	if (job) {
		mirror_copy_kick(job);
		mirror_copy_join(job); /* after the copier's last chunk */
		atomic_store(&m->job, NULL);
		job_drop_dst(job);
		vd_info("%s: %s to %s cancelled at shutdown; the source stays the image of "
			"record",
			job->src->path, type_names[job->type], job->target);
		job_free(job);
	}
	while (old) {
		struct mirror_job *next = old->old_next;
		mirror_reap(old);
		old = next;
	}
	g_free(m->last_target);
	g_free(m->last_format);
	pthread_mutex_destroy(&m->lock);
	free(m);
}

bool mirror_busy(struct mirror *m)
{
	return m && atomic_load(&m->job);
}

void mirror_fail(struct mirror_job *job, const char *fmt, ...)
{
	struct mirror *m = job->m;
	char why[256];
	bool now = false;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&m->lock);
	if (job->phase == MP_RUNNING || job->phase == MP_READY) {
		job->phase = MP_FAILED;
		snprintf(job->error, sizeof(job->error), "%s", why);
		now = true;
	}
	job->stop = true;
	pthread_mutex_unlock(&m->lock);
	if (now)
		vd_err("%s: %s to %s failed: %s; the view keeps working on the source",
		       job->src->path, type_names[job->type], job->target, why);
	mirror_copy_kick(job);
}

/* A job that completes on its own: complete_flushed() logged the outcome. */
static void auto_completed(void *opaque, int err)
{
	(void)opaque;
	(void)err;
}

void mirror_copy_ready(struct mirror_job *job)
{
	struct mirror *m = job->m;
	bool now = false;

	pthread_mutex_lock(&m->lock);
	if (job->phase == MP_RUNNING) {
		job->phase = MP_READY;
		now = true;
	}
	pthread_mutex_unlock(&m->lock);
	if (now)
		vd_info("%s: %s to %s is ready (%" PRIu64 " bytes copied)", job->src->path,
			type_names[job->type], job->target, (uint64_t)atomic_load(&job->copied));
	if (now && job->auto_complete)
		job_complete(m, job->type, auto_completed, job);
}

mirror_cont_fn *mirror_drain_check(struct mirror *m)
{
	struct mirror_job *job = atomic_load(&m->job);
	mirror_cont_fn *fn;

	if (!m->quiesce || !m->drained || m->inflight)
		return NULL;
	if ((atomic_load(&m->held) || atomic_load(&m->attaching)) && atomic_load(&m->direct))
		return NULL; /* a hold waits for the requests that passed the gate too */
	if (job && job->copy_inflight)
		return NULL;
	fn = m->drained;
	m->drained = NULL;
	return fn;
}

/* The job leaves the view (complete or cancel, with m->lock held): it waits
 * in m->old until it is reaped (its copier may still be winding down), new
 * requests go straight to the image again, and the parked ones are returned
 * for the caller to resume once it unlocked. */
static struct mirror_req *job_retire_locked(struct mirror *m, struct mirror_job *job)
{
	job->old_next = m->old;
	m->old = job;
	atomic_store(&m->job, NULL);
	return mirror_unquiesce_locked(m);
}

/* ---- complete ---- */

/* A job that keeps the view on its image (stream, intermediate commit) ends
 * here with the view's requests parked: the image above the data copied is
 * relinked below it, and a commit's base goes back to read-only. Returns 0
 * or -errno (logged; the chain is as it was). */
static int complete_relink(struct mirror_job *job)
{
	struct vd_image *upper = job->src;
	bool reopened;
	int ret = 0;

	if (job->type == JOB_COMMIT)
		while (upper && upper->backing != job->rd)
			upper = upper->backing;
	if (!upper)
		return -ENOENT;
	/* An image further down is read-only: writable for the relink only. */
	reopened = upper->read_only && !(ret = image_reopen(upper, true));
	if (!ret)
		ret = image_set_backing(upper, job->base);
	if (reopened)
		image_reopen(upper, false);
	if (job->type == JOB_COMMIT)
		image_reopen(job->dst, false);
	return ret;
}

/* Record what status shows once the job is gone (m->lock held). */
static void job_remember_locked(struct mirror *m, struct mirror_job *job)
{
	g_free(m->last_target);
	g_free(m->last_format);
	m->last_target = g_strdup(job->target);
	m->last_format = g_strdup(job->dst ? job->dst->fmt->name : "");
	m->last_total = atomic_load(&job->copied);
	m->last_type = job->type;
	m->last_phase = MP_COMPLETED;
}

static void complete_flushed(void *opaque, int err)
{
	struct mirror_job *job = opaque;
	struct mirror *m = job->m;
	bool swap = job->rd == job->src && job->dst != job->src;
	struct vd_image *drop = NULL;
	struct mirror_req *parked;
	vd_done_fn done;
	void *done_opaque;

	/* Nothing is in flight and new requests are parked. A swap makes the
	 * source final now, before anyone is told the job completed: nothing
	 * writes it after this, not even its close. The destination holds
	 * every byte already, so a source that cannot be written back does not
	 * stop the swap (image_finish() logs why). */
	if (!err && swap)
		image_finish(job->src);
	else if (!err)
		err = complete_relink(job);
	pthread_mutex_lock(&m->lock);
	done = done_take(&job->op_done, job->op_opaque, &done_opaque);
	if (err) {
		job->phase = MP_FAILED;
		job->stop = true;
		snprintf(job->error, sizeof(job->error), "%s at complete failed: %s",
			 swap ? "flushing the destination" : "relinking the chain", strerror(-err));
		parked = mirror_unquiesce_locked(m);
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: %s to %s failed: %s; the view stays on the source", job->src->path,
		       type_names[job->type], job->target, job->error);
		mirror_resume_parked(parked);
		done(done_opaque, err);
		return;
	}
	if (swap) {
		__atomic_store_n(m->slot, job->dst, __ATOMIC_RELEASE);
		job->retired = job->src;
	} else {
		drop = job->dst; /* the job's own reference */
	}
	job->phase = MP_COMPLETED;
	job->exit = true;
	job_remember_locked(m, job);
	parked = job_retire_locked(m, job);
	pthread_mutex_unlock(&m->lock);
	if (swap)
		vd_info("%s: %s complete: the view now reads and writes %s; the source is no "
			"longer used",
			job->src->path, type_names[job->type], job->target);
	else
		vd_info("%s: %s complete: %s now has %s as its backing file", job->src->path,
			type_names[job->type],
			job->type == JOB_STREAM ? job->src->path : "the image above",
			job->base ? job->base->path : "no file");
	image_unref(drop);
	mirror_copy_kick(job);
	mirror_resume_parked(parked);
	done(done_opaque, 0);
}

void mirror_complete_flush(struct mirror_job *job)
{
	image_submit(job->dst, IMAGE_FSYNC, NULL, 0, 0, complete_flushed, job);
}

static void complete_drained(struct mirror *m)
{
	struct mirror_job *job = atomic_load(&m->job);

	if (job->background) {
		/* The view is parked: what the guest dirtied can now be copied
		 * for good; the copier then flushes and swaps. */
		pthread_mutex_lock(&m->lock);
		job->final_drain = true;
		pthread_mutex_unlock(&m->lock);
		mirror_copy_kick(job);
		return;
	}
	mirror_complete_flush(job);
}

/* Can the verb run in this phase? 0 or -errno with a message. */
static int verb_check(struct mirror *m, struct mirror_job *job, enum job_type type,
		      const char *verb)
{
	const char *t = type_names[type];

	if (!job || job->type != type) {
		vd_err("%s: %s %s: no %s is running%s%s", (*m->slot)->path, t, verb, t,
		       job ? "; a job of another kind runs: " : "",
		       job ? type_names[job->type] : "");
		return -ESRCH; /* no such job: not ENOENT, which reads as no such view */
	}
	if (job->phase == MP_COMPLETING || job->phase == MP_CANCELLING) {
		vd_err("%s: %s %s: the %s is already %s", job->src->path, t, verb, t,
		       phase_names[job->phase]);
		return -EBUSY;
	}
	if (!strcmp(verb, "complete") && job->phase != MP_READY) {
		if (job->phase == MP_FAILED) {
			vd_err("%s: %s complete: the %s failed (%s); cancel it", job->src->path, t,
			       t, job->error);
			return -EIO;
		}
		vd_err("%s: %s complete: not ready yet (phase %s, %" PRIu64 " of %" PRIu64
		       " bytes copied)",
		       job->src->path, t, phase_names[job->phase],
		       (uint64_t)atomic_load(&job->copied), (uint64_t)atomic_load(&job->work));
		return -EBUSY;
	}
	if (!strcmp(verb, "complete") && job->auto_complete && job->op_done) {
		vd_err("%s: %s complete: the %s completes on its own", job->src->path, t, t);
		return -EBUSY;
	}
	return 0;
}

/* Start a verb: with m->lock held, move the job to phase and remember who to
 * answer; returns the job with the lock still held. If the verb cannot run,
 * drops the lock, answers done with the errno and returns NULL. */
static struct mirror_job *verb_begin(struct mirror *m, enum job_type type, const char *verb,
				     enum mirror_phase phase, vd_done_fn done, void *opaque)
{
	struct mirror_job *job;
	int ret;

	pthread_mutex_lock(&m->lock);
	job = atomic_load(&m->job);
	ret = verb_check(m, job, type, verb);
	if (ret) {
		pthread_mutex_unlock(&m->lock);
		done(opaque, ret);
		return NULL;
	}
	job->phase = phase;
	job->op_done = done;
	job->op_opaque = opaque;
	return job;
}

void job_complete(struct mirror *m, enum job_type type, vd_done_fn done, void *opaque)
{
	if (verb_begin(m, type, "complete", MP_COMPLETING, done, opaque))
		mirror_quiesce_then(m, complete_drained);
}

/* ---- pause, resume, speed ---- */

/* The job a verb that adjusts it may act on: 0 with m->lock held, or
 * -errno (logged) with it dropped. */
static int job_adjust_lock(struct mirror *m, enum job_type type, const char *verb, bool live,
			   struct mirror_job **out)
{
	struct mirror_job *job;
	int ret;

	pthread_mutex_lock(&m->lock);
	job = atomic_load(&m->job);
	ret = verb_check(m, job, type, verb);
	if (!ret && live && job->phase == MP_FAILED) {
		vd_err("%s: %s %s: the %s failed (%s); cancel it", job->src->path, type_names[type],
		       verb, type_names[type], job->error);
		ret = -EIO;
	}
	if (ret)
		pthread_mutex_unlock(&m->lock);
	*out = job;
	return ret;
}

int job_pause(struct mirror *m, enum job_type type, bool pause)
{
	struct mirror_job *job;
	bool was;
	int ret = job_adjust_lock(m, type, pause ? "pause" : "resume", true, &job);

	if (ret)
		return ret;
	was = job->paused;
	job->paused = pause;
	pthread_mutex_unlock(&m->lock);
	if (was != pause)
		vd_info("%s: %s to %s %s", job->src->path, type_names[type], job->target,
			pause ? "paused: the copy waits, guest writes go on" : "resumed");
	mirror_copy_kick(job);
	return 0;
}

int job_set_speed(struct mirror *m, enum job_type type, uint64_t speed)
{
	struct mirror_job *job;
	int ret = job_adjust_lock(m, type, "speed", false, &job);

	if (ret)
		return ret;
	atomic_store(&job->speed, speed);
	pthread_mutex_unlock(&m->lock);
	vd_info("%s: %s to %s: speed limit %" PRIu64 " bytes/s%s", job->src->path, type_names[type],
		job->target, speed, speed ? "" : " (none)");
	mirror_copy_kick(job);
	return 0;
}

/* ---- cancel ---- */

static void cancel_drained(struct mirror *m)
{
	struct mirror_job *job = atomic_load(&m->job);
	struct mirror_req *parked;
	vd_done_fn done;
	void *done_opaque;

	job_drop_dst(job); /* nothing uses it now: the view drained */
	pthread_mutex_lock(&m->lock);
	done = done_take(&job->op_done, job->op_opaque, &done_opaque);
	job->exit = true;
	job->dst = NULL;
	m->last_phase = MP_NONE;
	parked = job_retire_locked(m, job);
	pthread_mutex_unlock(&m->lock);
	vd_info("%s: %s cancelled; the view stays on the source%s%s", job->src->path,
		type_names[job->type],
		job->type == JOB_MIRROR ? "; the destination is left at " : "",
		job->type == JOB_MIRROR ? job->target : "");
	mirror_copy_kick(job);
	mirror_resume_parked(parked);
	done(done_opaque, 0);
}

void job_cancel(struct mirror *m, enum job_type type, vd_done_fn done, void *opaque)
{
	struct mirror_job *job = verb_begin(m, type, "cancel", MP_CANCELLING, done, opaque);

	if (!job)
		return;
	job->stop = true;
	mirror_copy_kick(job);
	mirror_quiesce_then(m, cancel_drained);
}
