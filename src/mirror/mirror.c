/* The mirror job: the I/O gate every data request of a view passes, the
 * guest-request fan-out to source and destination (acknowledged when both
 * are done, under the job's range lock), the phases and their verbs, and the
 * status. The copier is in mirror-copy.c, destination checks in
 * mirror-start.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
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

struct mirror_req {
	struct mirror *m;
	struct mirror_job *job; /* set when the request also goes to the destination */
	enum image_op op;
	void *buf;
	uint64_t len, off;
	vd_done_fn done;
	void *opaque;
	struct vd_image *src, *dst;
	atomic_int pending;
	int src_err, dst_err;
	bool locked;
	struct rl_range range;
	struct mirror_hook *hook; /* a guest write the view's hook sees */
	struct mirror_hook_req hr;
	bool lock;		 /* take the job's range lock */
	struct mirror_req *next; /* parked while the view drains */
	uint64_t parked_ns;	 /* when it was parked */
};

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

/* Take who waits for a verb (with m->lock held): it is answered once. */
static vd_done_fn done_take(vd_done_fn *slot, void *slot_opaque, void **opaque)
{
	vd_done_fn done = *slot;

	*slot = NULL;
	*opaque = slot_opaque;
	return done;
}

/* Drop the job's reference to its destination; a commit's base goes back
 * to read-only first (it stays in the view's chain). */
static void job_drop_dst(struct mirror_job *job)
{
	if (job->type == JOB_COMMIT && job->dst)
		image_reopen(job->dst, false);
	image_unref(job->dst);
}

static void job_free(struct mirror_job *job)
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
static void mirror_reap(struct mirror_job *job)
{
	pthread_mutex_lock(&job->m->lock);
	job->hurry = true;
	job->exit = true;
	pthread_mutex_unlock(&job->m->lock);
	mirror_copy_kick(job);
	mirror_copy_join(job);
	job_free(job);
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

/* ---- the gate and the fan-out ---- */

/* Without a job a request goes straight to the image, counted in m->direct
 * so that a starting job can wait for the ones in flight. Pairs with start
 * storing the job and then waiting for direct == 0: either start sees this
 * request, or this request sees the job. */
static bool op_is_write(enum image_op op)
{
	return op == IMAGE_WRITE || op == IMAGE_ZERO || op == IMAGE_DISCARD;
}

static bool gate_enter(struct mirror *m, enum image_op op, struct vd_image **img)
{
	atomic_fetch_add(&m->direct, 1);
	if (atomic_load(&m->job) || atomic_load(&m->held) ||
	    (op_is_write(op) && atomic_load(&m->hook))) {
		atomic_fetch_sub(&m->direct, 1);
		return false;
	}
	*img = __atomic_load_n(m->slot, __ATOMIC_ACQUIRE);
	return true;
}

static void gate_done(void *opaque, int err)
{
	struct mirror_call *c = opaque;
	struct mirror *m = c->m;

	/* The image's I/O is over: leave before the answer, which may let
	 * the view go away. A hold waits for the last one to leave. */
	if (atomic_fetch_sub(&m->direct, 1) == 1 &&
	    (atomic_load(&m->held) || atomic_load(&m->attaching))) {
		mirror_cont_fn *cont;

		pthread_mutex_lock(&m->lock);
		cont = mirror_drain_check(m);
		pthread_mutex_unlock(&m->lock);
		if (cont)
			cont(m);
	}
	c->done(c->opaque, err);
}

static void mreq_finish(struct mirror_req *r)
{
	struct mirror *m = r->m;
	struct mirror_job *job = r->job;
	vd_done_fn detached = NULL;
	void *detached_opaque = NULL;
	mirror_cont_fn *cont;

	if (job) {
		if (r->dst_err)
			mirror_fail(job,
				    "destination %s of %" PRIu64 " bytes at offset %" PRIu64
				    " failed: %s",
				    image_op_name(r->op), r->len, r->off, strerror(-r->dst_err));
		else if (r->src_err)
			mirror_fail(job,
				    "source %s at offset %" PRIu64 " failed (%s): the two "
				    "sides may differ",
				    image_op_name(r->op), r->off, strerror(-r->src_err));
		if (r->locked)
			rangelock_unlock(&job->rl, &r->range);
	}
	if (job && job->background && op_is_write(r->op))
		mirror_mark_dirty(job, r->off, r->len);
	if (r->hook)
		r->hook->after(r->hook, &r->hr);
	r->done(r->opaque, r->src_err);
	pthread_mutex_lock(&m->lock);
	m->inflight--;
	if (job && r->op != IMAGE_FSYNC)
		job->guest_bytes -= r->len;
	if (r->hook && !--m->hook_inflight && !atomic_load(&m->hook))
		detached = done_take(&m->hook_done, m->hook_opaque, &detached_opaque);
	cont = mirror_drain_check(m);
	pthread_mutex_unlock(&m->lock);
	free(r);
	if (detached)
		detached(detached_opaque, 0);
	if (cont)
		cont(m);
}

static void mreq_put(struct mirror_req *r)
{
	if (atomic_fetch_sub(&r->pending, 1) == 1)
		mreq_finish(r);
}

static void mreq_src_done(void *opaque, int err)
{
	struct mirror_req *r = opaque;

	r->src_err = err;
	mreq_put(r);
}

static void mreq_dst_done(void *opaque, int err)
{
	struct mirror_req *r = opaque;

	r->dst_err = err;
	mreq_put(r);
}

static void mreq_submit(struct mirror_req *r, struct vd_image *img, vd_done_fn cb)
{
	image_submit(img, r->op, r->op == IMAGE_READ || r->op == IMAGE_WRITE ? r->buf : NULL,
		     r->len, r->off, cb, r);
}

static void mreq_go(struct mirror_req *r)
{
	atomic_store(&r->pending, r->dst ? 3 : 2); /* one for this function */
	mreq_submit(r, r->src, mreq_src_done);
	if (r->dst)
		mreq_submit(r, r->dst, mreq_dst_done);
	mreq_put(r);
}

static void mreq_wake(struct rl_range *range)
{
	mreq_go(container_of(range, struct mirror_req, range));
}

/* Past the hook: take the job's range where the write goes to both sides. */
static void mreq_lock_and_go(struct mirror_req *r)
{
	if (r->lock) {
		r->locked = true;
		if (!rangelock_lock(&r->job->rl, &r->range, r->off, r->len, mreq_wake))
			return; /* parked: resumed by whoever releases the range */
	}
	mreq_go(r);
}

static void mreq_hooked(struct mirror_hook_req *hr)
{
	mreq_lock_and_go(container_of(hr, struct mirror_req, hr));
}

static void mreq_dispatch(struct mirror_req *r)
{
	struct mirror *m = r->m;
	struct mirror_job *job;

	pthread_mutex_lock(&m->lock);
	if (m->quiesce) {
		r->parked_ns = vd_now_ns();
		r->next = NULL;
		*m->parked_tail = r;
		m->parked_tail = &r->next;
		pthread_mutex_unlock(&m->lock);
		return;
	}
	m->inflight++;
	job = atomic_load(&m->job);
	r->job = NULL;
	r->dst = NULL;
	r->src = job ? job->src : *m->slot;
	r->lock = false;
	if (job && r->op != IMAGE_READ && (job->phase == MP_RUNNING || job->phase == MP_READY)) {
		r->job = job;
		r->dst = job->fan_out ? job->dst : NULL;
		r->lock = job->lock_guest && op_is_write(r->op) && r->len;
		if (r->op != IMAGE_FSYNC)
			job->guest_bytes += r->len;
	}
	r->hook = op_is_write(r->op) && r->len ? atomic_load(&m->hook) : NULL;
	if (r->hook)
		m->hook_inflight++;
	pthread_mutex_unlock(&m->lock);
	if (r->hook) {
		r->hr.off = r->off;
		r->hr.len = r->len;
		r->hr.go = mreq_hooked;
		r->hook->before(r->hook, &r->hr);
		return; /* goes on in mreq_hooked() */
	}
	mreq_lock_and_go(r);
}

void mirror_submit(struct mirror *m, struct mirror_call *c, enum image_op op, void *buf,
		   uint64_t len, uint64_t off, vd_done_fn done, void *opaque)
{
	struct vd_image *img;
	struct mirror_req *r;

	if (gate_enter(m, op, &img)) {
		c->m = m;
		c->done = done;
		c->opaque = opaque;
		image_submit(img, op, buf, len, off, gate_done, c);
		return;
	}
	r = calloc(1, sizeof(*r));
	if (!r) {
		done(opaque, -ENOMEM);
		return;
	}
	r->m = m;
	r->op = op;
	r->buf = buf;
	r->len = len;
	r->off = off;
	r->done = done;
	r->opaque = opaque;
	mreq_dispatch(r);
}

/* Take the parked requests and end the quiesce (with m->lock held). */
static struct mirror_req *unquiesce_locked(struct mirror *m)
{
	struct mirror_req *list = m->parked;

	m->parked = NULL;
	m->parked_tail = &m->parked;
	m->quiesce = false;
	m->drained = NULL;
	return list;
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
	return unquiesce_locked(m);
}

static void resume_parked(struct mirror_req *list)
{
	struct mirror_req *next;

	for (; list; list = next) {
		next = list->next;
		mreq_dispatch(list);
	}
}

/* Quiesce the view and run fn once nothing is in flight (m->lock held on
 * entry, dropped on return). */
static void quiesce_then(struct mirror *m, mirror_cont_fn *fn)
{
	mirror_cont_fn *cont;

	m->quiesce = true;
	m->drained = fn;
	cont = mirror_drain_check(m);
	pthread_mutex_unlock(&m->lock);
	if (cont)
		cont(m);
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
		parked = unquiesce_locked(m);
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: %s to %s failed: %s; the view stays on the source", job->src->path,
		       type_names[job->type], job->target, job->error);
		resume_parked(parked);
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
	resume_parked(parked);
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
		quiesce_then(m, complete_drained);
}

/* ---- holding the view's requests (hand-over) ---- */

static void hold_drained(struct mirror *m)
{
	vd_done_fn done;
	void *opaque;

	pthread_mutex_lock(&m->lock);
	done = done_take(&m->hold_done, m->hold_opaque, &opaque);
	pthread_mutex_unlock(&m->lock);
	if (done)
		done(opaque, 0);
}

int mirror_hold(struct mirror *m, vd_done_fn drained, void *opaque)
{
	pthread_mutex_lock(&m->lock);
	if (atomic_load(&m->job) || m->starting || m->quiesce || atomic_load(&m->held)) {
		struct mirror_job *job = atomic_load(&m->job);

		pthread_mutex_unlock(&m->lock);
		if (job)
			vd_err("%s: a %s to %s runs: complete or cancel it first", job->src->path,
			       type_names[job->type], job->target);
		else
			vd_err("%s: the view is busy (a mirror starting, or already held)",
			       (*m->slot)->path);
		return -EBUSY;
	}
	/* Pairs with gate_enter(): either it sees held, or the drain check
	 * sees its request in direct. */
	atomic_store(&m->held, true);
	m->hold_done = drained;
	m->hold_opaque = opaque;
	quiesce_then(m, hold_drained);
	return 0;
}

void mirror_release(struct mirror *m)
{
	struct mirror_req *parked;

	pthread_mutex_lock(&m->lock);
	if (!atomic_load(&m->held)) {
		pthread_mutex_unlock(&m->lock);
		return;
	}
	atomic_store(&m->held, false);
	m->hold_done = NULL;
	parked = unquiesce_locked(m);
	pthread_mutex_unlock(&m->lock);
	resume_parked(parked);
}

bool mirror_held(struct mirror *m)
{
	return atomic_load(&m->held);
}

unsigned mirror_expire_held(struct mirror *m, uint64_t max_ns)
{
	struct mirror_req *expired = NULL, **pp, *r;
	uint64_t now = vd_now_ns();
	unsigned n = 0;

	pthread_mutex_lock(&m->lock);
	if (!atomic_load(&m->held)) {
		pthread_mutex_unlock(&m->lock);
		return 0;
	}
	for (pp = &m->parked; (r = *pp);) {
		if (now - r->parked_ns < max_ns) {
			pp = &r->next;
			continue;
		}
		*pp = r->next;
		r->next = expired;
		expired = r;
	}
	m->parked_tail = &m->parked;
	while (*m->parked_tail)
		m->parked_tail = &(*m->parked_tail)->next;
	pthread_mutex_unlock(&m->lock);
	for (; expired; expired = r, n++) {
		r = expired->next;
		expired->done(expired->opaque, -EIO);
		free(expired);
	}
	return n;
}

/* ---- guest-write hooks ---- */

static void attach_drained(struct mirror *m)
{
	struct mirror_req *parked;
	vd_done_fn done;
	void *opaque;

	pthread_mutex_lock(&m->lock);
	atomic_store(&m->attaching, false);
	done = done_take(&m->hook_done, m->hook_opaque, &opaque);
	parked = unquiesce_locked(m);
	pthread_mutex_unlock(&m->lock);
	resume_parked(parked);
	done(opaque, 0);
}

void mirror_hook_attach(struct mirror *m, struct mirror_hook *h, vd_done_fn done, void *opaque)
{
	pthread_mutex_lock(&m->lock);
	if (atomic_load(&m->hook) || m->hook_inflight || m->quiesce || atomic_load(&m->held)) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: the view is busy (%s)", (*m->slot)->path,
		       atomic_load(&m->hook) || m->hook_inflight
			       ? "another job watches its writes"
			       : "held, or a job is completing or cancelling");
		done(opaque, -EBUSY);
		return;
	}
	/* Pairs with gate_enter(): either it sees the hook, or the drain check
	 * sees its write in direct. */
	atomic_store(&m->hook, h);
	atomic_store(&m->attaching, true);
	m->hook_done = done;
	m->hook_opaque = opaque;
	quiesce_then(m, attach_drained);
}

void mirror_hook_detach(struct mirror *m, vd_done_fn done, void *opaque)
{
	bool now;

	pthread_mutex_lock(&m->lock);
	atomic_store(&m->hook, NULL);
	now = !m->hook_inflight;
	if (!now) {
		m->hook_done = done;
		m->hook_opaque = opaque;
	}
	pthread_mutex_unlock(&m->lock);
	if (now)
		done(opaque, 0);
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
	resume_parked(parked);
	done(done_opaque, 0);
}

void job_cancel(struct mirror *m, enum job_type type, vd_done_fn done, void *opaque)
{
	struct mirror_job *job = verb_begin(m, type, "cancel", MP_CANCELLING, done, opaque);

	if (!job)
		return;
	job->stop = true;
	mirror_copy_kick(job);
	quiesce_then(m, cancel_drained);
}

/* ---- start ---- */

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
		       job ? type_names[job->type] : "a job", job ? job->target : "?",
		       job ? phase_names[job->phase] : "starting");
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
