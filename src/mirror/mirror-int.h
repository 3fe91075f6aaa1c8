/* Inside the mirror: the job, its phases and the copier's state, shared by
 * mirror.c (phases and verbs), mirror-gate.c (the gate, the guest-write
 * fan-out, hold and hooks), job-start.c (starting a job), mirror-copy.c (the
 * copier thread), mirror-start.c (destination checks and creation),
 * job-chain.c (stream and commit) and job-status.c. */
#ifndef VDISKFS_MIRROR_INT_H
#define VDISKFS_MIRROR_INT_H

#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>

#include "mirror/job-copy.h"
#include "mirror/job-target.h"
#include "mirror/mirror.h"
#include "mirror/rangelock.h"
#include "io/uring.h"
#include "util/compiler.h"

enum mirror_phase {
	MP_NONE,
	MP_RUNNING,
	MP_READY,
	MP_COMPLETING,
	MP_COMPLETED,
	MP_CANCELLING,
	MP_FAILED,
};

/* What one run of the job's source is to the copier. */
enum copy_kind {
	COPY_SKIP, /* nothing to do (not the job's data) */
	COPY_DATA, /* read from rd, write to dst */
	COPY_ZERO, /* zero the destination (see job->zero_op) */
};

struct mirror_chunk;
struct mirror_req;
struct mirror;

/* What runs once a quiesced view has drained (mirror_drain_check()). */
typedef void mirror_cont_fn(struct mirror *m);

/* One job, from start to complete/cancel; afterwards on m->old until its
 * copier thread is joined. Locks: docs/design.md "Locks". */
struct mirror_job {
	/* Set by mirror_start() and mirror_open_target() before the job is
	 * published in m->job, then only read (without a lock). dst is the
	 * exception: cancel clears it under m->lock once everything that used
	 * it has drained. */
	struct mirror *m;
	enum job_type type;
	/* src: the view's image when the job started; rd: what the copier
	 * reads (src, or for an intermediate commit the image committed);
	 * dst: where it writes (a mirror's destination, the commit's base,
	 * the stream's src itself); base: the first image below the job's
	 * data (NULL: the whole chain is the job's). References: src is the
	 * view's, dst one of the job's own (dropped by cancel), rd and base
	 * belong to src's chain. */
	struct vd_image *src, *rd, *dst, *base;
	char *target;
	uint64_t total, granularity;
	unsigned depth;	       /* copier chunks in flight */
	bool dst_zero;	       /* a fresh destination: reads as zeroes until written */
	bool fan_out;	       /* guest writes go to dst too (write-blocking) */
	bool lock_guest;       /* guest writes take the range lock */
	bool background;       /* guest writes mark dirty; the copier converges */
	bool top_only;	       /* a mirror of the top image only (sync=top) */
	bool auto_complete;    /* completes on its own once copied (stream, commit) */
	enum image_op zero_op; /* how a COPY_ZERO run is written to dst */
	atomic_ullong copied;  /* data bytes copied (any thread adds) */
	atomic_ullong work;    /* data bytes to copy: counted, then re-dirtied */
	atomic_bool counted;   /* work holds the first pass's whole count */
	atomic_ullong speed;   /* copy limit in bytes/s, 0: none (set-speed stores it) */
	atomic_ullong rate;    /* measured copy rate in bytes/s (the copier's) */
	struct rangelock rl;   /* has its own lock */
	/* Background mode: one bit per dirty_gran bytes written by the guest
	 * since the copier last took it (atomic words), and their count. */
	uint64_t dirty_gran;
	_Atomic uint64_t *dirty;
	atomic_ullong ndirty;
	uint64_t dirty_pos; /* the copier's scan position (chunks) */
	bool final_drain;   /* complete: copy what is dirty, then swap (under lock) */

	/* Under m->lock. */
	enum mirror_phase phase;
	char error[256];
	uint64_t guest_bytes; /* guest writes in flight to both sides */
	unsigned copy_inflight;
	struct mirror_chunk *ready; /* chunks granted their range by another thread */
	bool stop;		    /* copier: issue nothing more */
	bool exit;		    /* copier thread: leave once idle */
	bool hurry;		    /* no grace period before closing the old source */
	bool paused;		    /* copier: issue nothing more until resumed */
	struct vd_image *retired;   /* the old source after complete */
	vd_done_fn op_done;	    /* the complete / cancel waiting for drain */
	void *op_opaque;
	struct mirror_job *old_next; /* on m->old once ended */

	/* The copier thread's own (mirror-copy.c): pos, bucket, flushing and
	 * poll are used only there. thread and thread_started
	 * are written by mirror_copy_start() on the starting thread and used by
	 * whoever joins; efd is made by mirror_copy_init() before the job is published
	 * and written by mirror_copy_kick() from any thread. */
	pthread_t thread;
	int efd;
	struct uring_op poll;
	uint64_t pos;
	struct copy_bucket bucket;
	uint64_t rate_ns, rate_copied; /* the last rate sample */
	/* Background mode in ready: the dirty count a second ago, and whether
	 * it did not fall (the guest dirties faster than the copier copies). */
	uint64_t lag_ns, lag_dirty, lag_next_ns;
	bool lagging;
	bool flushing;
	bool thread_started;
	atomic_bool finished; /* the copier thread has returned (or never ran) */
};

/* One per view, for the view's whole life. */
struct mirror {
	/* Guards the fields marked "under lock" here and in the job. A leaf:
	 * nothing else is locked while it is held; the range lock, image
	 * calls, drain continuations and done callbacks all come after it is
	 * dropped. */
	pthread_mutex_t lock;
	/* Fixed: &vnode->img. The mirror stores *slot (release) only in
	 * complete, under lock, with the view's requests parked. */
	struct vd_image **slot;
	/* Stored under lock (and by mirror_free() once nothing is in flight);
	 * loaded without it by the gate and mirror_busy(). */
	struct mirror_job *_Atomic job; /* non-NULL from start to the end of complete/cancel */
	atomic_long direct;		/* requests in flight that bypassed the mirror */

	/* Under lock. */
	long inflight; /* requests in flight through the fan-out */
	bool quiesce;  /* park new requests until the drain finishes */
	bool starting; /* a start is opening the destination */
	mirror_cont_fn *drained;
	struct mirror_req *parked, **parked_tail;
	/* Ended jobs whose copier threads are closing down (one may hold an
	 * old source for its grace period); joined and freed by a later start. */
	struct mirror_job *old;
	/* Hand-over (mirror_hold()): requests wait in parked until released.
	 * held is stored under lock and loaded without it by the gate (paired
	 * with direct like job); hold_done and hold_opaque are under lock. */
	atomic_bool held;
	vd_done_fn hold_done;
	void *hold_opaque;
	/* The guest-write hook (mirror_hook_attach()): stored under lock,
	 * loaded without it by the gate. attaching is set (under lock) while
	 * an attach waits for the writes that passed the gate without it;
	 * the gate's leavers then run the drain check like a hold's. The rest
	 * is under lock: writes inside the hook, and who waits for a detach. */
	struct mirror_hook *_Atomic hook;
	atomic_bool attaching;
	long hook_inflight;
	vd_done_fn hook_done;
	void *hook_opaque;
	/* What status shows after a job ended. */
	enum mirror_phase last_phase;
	enum job_type last_type;
	char *last_target, *last_format;
	uint64_t last_total;
};

/* The name of a phase, for status and messages. */
const char *job_phase_name(enum mirror_phase p);

/* mirror.c */
void mirror_fail(struct mirror_job *job, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
/* Called with m->lock held after inflight or copy_inflight dropped: runs the
 * drain continuation (returned, to be called after unlocking) when idle. */
mirror_cont_fn *mirror_drain_check(struct mirror *m);
void mirror_copy_ready(struct mirror_job *job); /* phase running -> ready */
/* A background mirror's final drain is done: flush dst, then swap. */
void mirror_complete_flush(struct mirror_job *job);

/* mirror-copy.c */
/* The copier's eventfd, made before the job is published (kicks may come
 * from any thread once it is); then its thread. */
int mirror_copy_init(struct mirror_job *job);
int mirror_copy_start(struct mirror_job *job);

void mirror_copy_kick(struct mirror_job *job);
/* What the run at off is to the job: *pnum bytes of one kind. 0 or -errno. */
int copy_status(struct mirror_job *job, uint64_t off, uint64_t len, uint64_t *pnum,
		enum copy_kind *kind);
/* Join a copier thread that has been told to exit. */
void mirror_copy_join(struct mirror_job *job);

/* Background mode: the guest wrote [off, off+len). */
void mirror_mark_dirty(struct mirror_job *job, uint64_t off, uint64_t len);

/* job-start.c: job_begin() refuses or reserves the view, job_new() makes
 * the job on the view's image, job_publish() runs it; job_abandon() undoes
 * a begin (and frees a job not published). */
int job_begin(struct mirror *m, const char *what, bool read_only_mount);
struct mirror_job *job_new(struct mirror *m, enum job_type type, uint64_t speed,
			   uint64_t granularity);
int job_publish(struct mirror_job *job);
void job_abandon(struct mirror *m, struct mirror_job *job);
/* Free a job whose copier thread is joined (or never ran). */
void job_free(struct mirror_job *job);
/* Join and free an ended job's thread (it may still hold the old source for
 * its grace period: hurry tells it to drop it now). Takes m->lock. */
void mirror_reap(struct mirror_job *job);

/* mirror-gate.c: the parked requests of a quiesced view. */
/* Quiesce the view and run fn once nothing is in flight (m->lock held on
 * entry, dropped on return). */
void mirror_quiesce_then(struct mirror *m, mirror_cont_fn *fn);
/* Take the parked requests and end the quiesce (with m->lock held); resume
 * them with mirror_resume_parked() once the lock is dropped. */
struct mirror_req *mirror_unquiesce_locked(struct mirror *m);
void mirror_resume_parked(struct mirror_req *list);

/* Take who waits for a verb (with m->lock held): it is answered once. */
static inline vd_done_fn done_take(vd_done_fn *slot, void *slot_opaque, void **opaque)
{
	vd_done_fn done = *slot;

	*slot = NULL;
	*opaque = slot_opaque;
	return done;
}

/* mirror-start.c (the shared part: mirror/job-target.h) */
int mirror_open_target(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env,
		       struct mirror_job *job);

#endif
