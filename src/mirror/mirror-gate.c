/* The view's data path: the gate every data request passes (straight to the
 * image without a job), the fan-out of guest requests to source and
 * destination while a job runs (acknowledged when both are done, under the
 * job's range lock), the quiesce that parks requests, holding the view
 * (hand-over) and the guest-write hooks (the backup's). The job's phases are
 * in mirror.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "util/log.h"
#include "mirror/mirror-int.h"

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

struct mirror_req *mirror_unquiesce_locked(struct mirror *m)
{
	struct mirror_req *list = m->parked;

	m->parked = NULL;
	m->parked_tail = &m->parked;
	m->quiesce = false;
	m->drained = NULL;
	return list;
}

void mirror_resume_parked(struct mirror_req *list)
{
	struct mirror_req *next;

	for (; list; list = next) {
		next = list->next;
		mreq_dispatch(list);
	}
}

void mirror_quiesce_then(struct mirror *m, mirror_cont_fn *fn)
{
	mirror_cont_fn *cont;

	m->quiesce = true;
	m->drained = fn;
	cont = mirror_drain_check(m);
	pthread_mutex_unlock(&m->lock);
	if (cont)
		cont(m);
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
			       job_type_name(job->type), job->target);
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
	mirror_quiesce_then(m, hold_drained);
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
	parked = mirror_unquiesce_locked(m);
	pthread_mutex_unlock(&m->lock);
	mirror_resume_parked(parked);
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
	parked = mirror_unquiesce_locked(m);
	pthread_mutex_unlock(&m->lock);
	mirror_resume_parked(parked);
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
	mirror_quiesce_then(m, attach_drained);
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
