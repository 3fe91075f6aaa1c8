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

static void job_free(struct mirror_job *job)
{
	if (!job)
		return;
	rangelock_destroy(&job->rl);
	if (job->efd >= 0)
		close(job->efd);
	g_free(job->target);
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
		image_unref(job->dst);
		vd_info("%s: mirror to %s cancelled at shutdown; the source stays the image of "
			"record; the partial destination is left at %s",
			job->src->path, job->target, job->target);
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
		vd_err("%s: mirror to %s failed: %s; the view keeps working on the source",
		       job->src->path, job->target, why);
	mirror_copy_kick(job);
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
		vd_info("%s: mirror to %s is ready (%" PRIu64 " bytes copied)", job->src->path,
			job->target, (uint64_t)atomic_load(&job->copied));
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
	if (r->dst && r->op != IMAGE_FSYNC && r->len) {
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
	if (job && r->op != IMAGE_READ && (job->phase == MP_RUNNING || job->phase == MP_READY)) {
		r->job = job;
		r->dst = job->dst;
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

static void complete_flushed(void *opaque, int err)
{
	struct mirror_job *job = opaque;
	struct mirror *m = job->m;
	struct mirror_req *parked;
	vd_done_fn done;
	void *done_opaque;

	/* Nothing is in flight and new requests are parked, so the source is
	 * made final now, before anyone is told the mirror completed: nothing
	 * writes it after this, not even its close. The destination holds every
	 * byte already, so a source that cannot be written back does not stop
	 * the swap (image_finish() logs why). */
	if (!err)
		image_finish(job->src);
	pthread_mutex_lock(&m->lock);
	done = done_take(&job->op_done, job->op_opaque, &done_opaque);
	if (err) {
		job->phase = MP_FAILED;
		job->stop = true;
		snprintf(job->error, sizeof(job->error),
			 "flushing the destination at complete failed: %s", strerror(-err));
		parked = unquiesce_locked(m);
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: mirror to %s failed: %s; the view stays on the source", job->src->path,
		       job->target, job->error);
		resume_parked(parked);
		done(done_opaque, err);
		return;
	}
	/* Nothing is in flight and new requests are parked: swap. */
	__atomic_store_n(m->slot, job->dst, __ATOMIC_RELEASE);
	job->retired = job->src;
	job->phase = MP_COMPLETED;
	job->exit = true;
	g_free(m->last_target);
	g_free(m->last_format);
	m->last_target = g_strdup(job->target);
	m->last_format = g_strdup(job->dst->fmt->name);
	m->last_total = job->total;
	m->last_phase = MP_COMPLETED;
	parked = job_retire_locked(m, job);
	pthread_mutex_unlock(&m->lock);
	vd_info("%s: mirror complete: the view now reads and writes %s; the source is no "
		"longer used",
		job->src->path, job->target);
	mirror_copy_kick(job);
	resume_parked(parked);
	done(done_opaque, 0);
}

static void complete_drained(struct mirror *m)
{
	struct mirror_job *job = atomic_load(&m->job);

	image_submit(job->dst, IMAGE_FSYNC, NULL, 0, 0, complete_flushed, job);
}

/* Can the verb run in this phase? 0 or -errno with a message. */
static int verb_check(struct mirror *m, struct mirror_job *job, const char *verb)
{
	if (!job) {
		vd_err("%s: mirror %s: no mirror is running", (*m->slot)->path, verb);
		return -ESRCH; /* no such job: not ENOENT, which reads as no such view */
	}
	if (job->phase == MP_COMPLETING || job->phase == MP_CANCELLING) {
		vd_err("%s: mirror %s: the mirror is already %s", job->src->path, verb,
		       phase_names[job->phase]);
		return -EBUSY;
	}
	if (!strcmp(verb, "complete") && job->phase != MP_READY) {
		if (job->phase == MP_FAILED) {
			vd_err("%s: mirror complete: the mirror failed (%s); cancel it",
			       job->src->path, job->error);
			return -EIO;
		}
		vd_err("%s: mirror complete: not ready yet (phase %s, %" PRIu64 " of %" PRIu64
		       " bytes copied)",
		       job->src->path, phase_names[job->phase], (uint64_t)atomic_load(&job->copied),
		       job->total);
		return -EBUSY;
	}
	return 0;
}

/* Start a verb: with m->lock held, move the job to phase and remember who to
 * answer; returns the job with the lock still held. If the verb cannot run,
 * drops the lock, answers done with the errno and returns NULL. */
static struct mirror_job *verb_begin(struct mirror *m, const char *verb, enum mirror_phase phase,
				     vd_done_fn done, void *opaque)
{
	struct mirror_job *job;
	int ret;

	pthread_mutex_lock(&m->lock);
	job = atomic_load(&m->job);
	ret = verb_check(m, job, verb);
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

void mirror_complete(struct mirror *m, vd_done_fn done, void *opaque)
{
	if (verb_begin(m, "complete", MP_COMPLETING, done, opaque))
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
			vd_err("%s: a mirror to %s runs: complete or cancel it first",
			       job->src->path, job->target);
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
static int job_adjust_lock(struct mirror *m, const char *verb, bool live, struct mirror_job **out)
{
	struct mirror_job *job;
	int ret;

	pthread_mutex_lock(&m->lock);
	job = atomic_load(&m->job);
	ret = verb_check(m, job, verb);
	if (!ret && live && job->phase == MP_FAILED) {
		vd_err("%s: mirror %s: the mirror failed (%s); cancel it", job->src->path, verb,
		       job->error);
		ret = -EIO;
	}
	if (ret)
		pthread_mutex_unlock(&m->lock);
	*out = job;
	return ret;
}

int mirror_pause(struct mirror *m, bool pause)
{
	struct mirror_job *job;
	bool was;
	int ret = job_adjust_lock(m, pause ? "pause" : "resume", true, &job);

	if (ret)
		return ret;
	was = job->paused;
	job->paused = pause;
	pthread_mutex_unlock(&m->lock);
	if (was != pause)
		vd_info("%s: mirror to %s %s", job->src->path, job->target,
			pause ? "paused: the copy waits, guest writes still reach both sides"
			      : "resumed");
	mirror_copy_kick(job);
	return 0;
}

int mirror_set_speed(struct mirror *m, uint64_t speed)
{
	struct mirror_job *job;
	int ret = job_adjust_lock(m, "speed", false, &job);

	if (ret)
		return ret;
	atomic_store(&job->speed, speed);
	pthread_mutex_unlock(&m->lock);
	vd_info("%s: mirror to %s: speed limit %" PRIu64 " bytes/s%s", job->src->path, job->target,
		speed, speed ? "" : " (none)");
	mirror_copy_kick(job);
	return 0;
}

/* ---- cancel ---- */

static void cancel_drained(struct mirror *m)
{
	struct mirror_job *job = atomic_load(&m->job);
	struct mirror_req *parked;
	struct vd_image *dst;
	vd_done_fn done;
	void *done_opaque;

	pthread_mutex_lock(&m->lock);
	done = done_take(&job->op_done, job->op_opaque, &done_opaque);
	job->exit = true;
	dst = job->dst;
	job->dst = NULL;
	m->last_phase = MP_NONE;
	parked = job_retire_locked(m, job);
	pthread_mutex_unlock(&m->lock);
	image_unref(dst);
	vd_info("%s: mirror cancelled; the view stays on the source; the destination is left "
		"at %s",
		job->src->path, job->target);
	mirror_copy_kick(job);
	resume_parked(parked);
	done(done_opaque, 0);
}

void mirror_cancel(struct mirror *m, vd_done_fn done, void *opaque)
{
	struct mirror_job *job = verb_begin(m, "cancel", MP_CANCELLING, done, opaque);

	if (!job)
		return;
	job->stop = true;
	mirror_copy_kick(job);
	quiesce_then(m, cancel_drained);
}

/* ---- status ---- */

struct mirror_snap {
	enum mirror_phase phase;
	const char *target, *format;
	uint64_t copied, total, dirty, speed;
	bool paused;
	char error[256];
};

/* Called with m->lock held; strings stay valid while it is. */
static void mirror_snap(struct mirror *m, struct mirror_snap *s)
{
	struct mirror_job *job = atomic_load(&m->job);

	memset(s, 0, sizeof(*s));
	if (job) {
		s->phase = job->phase;
		s->target = job->target;
		s->format = job->dst ? job->dst->fmt->name : "";
		s->copied = atomic_load(&job->copied);
		s->total = job->total;
		s->dirty = s->total - s->copied + job->guest_bytes;
		s->speed = atomic_load(&job->speed);
		s->paused = job->paused;
		snprintf(s->error, sizeof(s->error), "%s", job->error);
	} else if (m->last_phase == MP_COMPLETED) {
		s->phase = MP_COMPLETED;
		s->target = m->last_target;
		s->format = m->last_format;
		s->copied = s->total = m->last_total;
	}
}

void mirror_status_line(struct mirror *m, GString *out)
{
	struct mirror_snap s;

	pthread_mutex_lock(&m->lock);
	mirror_snap(m, &s);
	if (s.phase == MP_NONE)
		g_string_append(out, "phase=none");
	else
		g_string_append_printf(out,
				       "phase=%s target=%s format=%s copied=%" PRIu64
				       " total=%" PRIu64 " dirty=%" PRIu64 " speed=%" PRIu64
				       " paused=%d error=%s",
				       phase_names[s.phase], s.target, s.format, s.copied, s.total,
				       s.dirty, s.speed, s.paused, s.error);
	pthread_mutex_unlock(&m->lock);
}

void mirror_status_json(struct mirror *m, struct json_writer *j)
{
	struct mirror_snap s;

	pthread_mutex_lock(&m->lock);
	mirror_snap(m, &s);
	json_str(j, "phase", phase_names[s.phase]);
	if (s.phase != MP_NONE) {
		json_str(j, "target", s.target);
		json_str(j, "format", s.format);
		json_u64(j, "copied", s.copied);
		json_u64(j, "total", s.total);
		json_u64(j, "dirty", s.dirty);
		json_u64(j, "speed", s.speed);
		json_bool(j, "paused", s.paused);
		json_str(j, "error", s.error[0] ? s.error : NULL);
	}
	pthread_mutex_unlock(&m->lock);
}

/* ---- start ---- */

int mirror_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env)
{
	struct mirror_job *job, *old;
	struct vd_image *src;
	int ret;

	pthread_mutex_lock(&m->lock);
	src = *m->slot;
	if (env->read_only || src->read_only) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: cannot mirror a read-only %s", src->path,
		       env->read_only ? "mount" : "image");
		return -EROFS;
	}
	if (atomic_load(&m->held)) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: cannot mirror an inactive view: activate it first", src->path);
		return -EBUSY;
	}
	job = atomic_load(&m->job);
	if (job || m->starting) {
		pthread_mutex_unlock(&m->lock);
		vd_err("%s: already has a mirror (to %s, phase %s)", src->path,
		       job ? job->target : "?", job ? phase_names[job->phase] : "starting");
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

	ret = -ENOMEM;
	job = calloc(1, sizeof(*job));
	if (!job)
		goto out_unbusy;
	job->m = m;
	job->efd = -1;
	job->src = src;
	job->total = src->size;
	atomic_init(&job->speed, o->speed);
	job->granularity = o->granularity ? o->granularity : MIRROR_DEFAULT_GRANULARITY;
	job->depth = job->granularity <= (1u << 20) ? 8 : 4;
	rangelock_init(&job->rl);
	ret = mirror_open_target(m, o, env, job);
	if (ret)
		goto out_free;
	ret = mirror_copy_init(job);
	if (ret) {
		image_unref(job->dst);
		goto out_free;
	}
	/* Logged before the job is published: from then on a cancel may drop
	 * job->dst at any time. */
	vd_info("%s: mirroring %" PRIu64 " bytes to %s (%s, %s)", src->path, job->total,
		job->target, job->dst->fmt->name, job->dst_zero ? "new" : "existing");

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

out_free:
	job_free(job);
out_unbusy:
	pthread_mutex_lock(&m->lock);
	m->starting = false;
	pthread_mutex_unlock(&m->lock);
	return ret;
}
