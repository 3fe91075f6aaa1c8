/* The live mirror: copies a view's image to a destination while the guest
 * keeps writing (every write goes to both sides under a shared range lock),
 * then swaps the destination in. One struct mirror lives with each view for
 * the view's whole life; a job exists in it from start to complete/cancel. */
#ifndef VDISKFS_MIRROR_H
#define VDISKFS_MIRROR_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "image/image.h"
#include "mirror/rangelock.h"
#include "util/json.h"

#define MIRROR_DEFAULT_GRANULARITY    (1u << 20)
#define MIRROR_BACKGROUND_GRANULARITY (64u << 10) /* mode=background's dirty bitmap */
#define MIRROR_MIN_GRANULARITY	      (4u << 10)
#define MIRROR_MAX_GRANULARITY	      (64u << 20)

/* What a job is. One job runs on a view at a time; the verbs below name the
 * kind they mean and refuse (-ESRCH) when the view's job is of another. */
enum job_type {
	JOB_MIRROR, /* copy the view to a destination, then swap it in */
	JOB_STREAM, /* copy the backing chain's data into the view's image */
	JOB_COMMIT, /* merge an image of the chain into a lower one */
};

/* "mirror", "stream", "commit". */
const char *job_type_name(enum job_type t);

/* ---- options (mirror-opts.c) ---- */
struct mirror_opts {
	char *target;	      /* absolute path */
	char *format;	      /* "raw", "qcow2", "vhdx"; NULL = the source's */
	uint64_t speed;	      /* bytes/s of copied data; 0 = unlimited */
	uint64_t granularity; /* copy chunk; 0 = MIRROR_DEFAULT_GRANULARITY */
	bool existing;	      /* open an existing destination instead of creating */
	bool background;      /* mode=background: guest writes marked dirty, copied later */
	bool sync_top;	      /* sync=top: only the top image; the target shares its backing */
	char *base;	      /* stream, commit: the image below the data (absolute) */
	char *top;	      /* commit: the image committed (absolute); NULL: the view's */
};

void mirror_opts_init(struct mirror_opts *o);
void mirror_opts_free(struct mirror_opts *o);
/* One key=value option. 0 or -EINVAL with a logged message naming it. */
int mirror_opts_set(struct mirror_opts *o, const char *key, const char *val);
/* An xattr value: a plain absolute path, or "target=PATH,format=...,speed=...,
 * granularity=...,existing=0|1". 0 or -EINVAL with a logged message. */
int mirror_opts_parse(struct mirror_opts *o, const char *value);
/* The same for a job of any type: a mirror's value as above; a stream's or
 * commit's "1" (the defaults) or key=value pairs among base, speed (and top
 * for a commit). Options of another kind of job are refused. */
int job_opts_parse(struct mirror_opts *o, enum job_type type, const char *value);
int job_opts_set(struct mirror_opts *o, enum job_type type, const char *key, const char *val);
/* A rate: "200M", "200M/s", "1048576" (bytes/s). 0 or -EINVAL. */
int mirror_parse_speed(const char *val, uint64_t *out);

/* ---- the per-view mirror (mirror.c, job-start.c, mirror-gate.c) ---- */
struct mirror;

/* What start needs to know about the mount it runs in. */
struct mirror_env {
	const char *mountpoint;		 /* our own mount: no destination inside it */
	bool read_only;			 /* the mount is read-only */
	const struct vd_open_opts *open; /* for existing destinations */
};

/* slot is where the view keeps its image (node->img): complete swaps it. */
struct mirror *mirror_new(struct vd_image **slot);
/* Cancel a job synchronously (unmount, view removed) and free. Call with no
 * request in flight on the view. */
void mirror_free(struct mirror *m);

/* Start a job. 0, or -errno with a logged message and nothing changed.
 * A stream copies what the backing chain holds above o->base (NULL: all of
 * it) into the view's image, then makes o->base its backing file, and ends
 * on its own. A commit merges o->top (NULL: the view's image) and what lies
 * between it and o->base (NULL: its backing file) into o->base: for the
 * view's own image it reaches ready and complete moves the view onto the
 * base; for an image further down it ends on its own with the image above
 * relinked to the base. */
int mirror_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env);
int stream_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env);
int commit_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env);
/* Live external snapshot: a new qcow2 image at path (absolute, not existing)
 * whose backing file is the view's image, and the view moved onto it while
 * its requests are held; the old image is read-only from then on. done(opaque,
 * err) runs once it is done or refused (-EBUSY a job runs or the view is
 * held, -EROFS, -EEXIST, ...: logged, nothing changed). */
void snapshot_take(struct mirror *m, const char *path, const struct mirror_env *env,
		   vd_done_fn done, void *opaque);
/* Complete (from ready only) or cancel; done(opaque, err) runs once the swap
 * or the drop is done, possibly before the call returns. */
void job_complete(struct mirror *m, enum job_type type, vd_done_fn done, void *opaque);
void job_cancel(struct mirror *m, enum job_type type, vd_done_fn done, void *opaque);
/* Pause or resume the copy of a running or ready job (guest writes keep
 * going on), or change its speed limit (bytes/s, 0: none). 0, or -ESRCH (no
 * such job), -EBUSY (completing or cancelling), -EIO (failed), logged. */
int job_pause(struct mirror *m, enum job_type type, bool pause);
int job_set_speed(struct mirror *m, enum job_type type, uint64_t speed);
/* Hand-over: hold the view's data requests (new ones wait) and run
 * drained(opaque, 0) once none is in flight (perhaps at once). 0, or -EBUSY
 * (logged) while a job exists or the view is held already. Release lets the
 * held requests go on in order; expire fails those held longer than max_ns
 * with EIO and returns how many. */
int mirror_hold(struct mirror *m, vd_done_fn drained, void *opaque);
void mirror_release(struct mirror *m);
bool mirror_held(struct mirror *m);
unsigned mirror_expire_held(struct mirror *m, uint64_t max_ns);
/* Is the calling thread the copier of one of m's jobs (mirror_free() must
 * then wait for another thread)? */
bool mirror_on_own_thread(struct mirror *m);
/* Is a job running (truncate and the like must wait)? */
bool mirror_busy(struct mirror *m);

/* Status of the view's job of that type (else of the last one completed):
 * "phase=... target=... format=... copied=N total=N percent=N rate=N eta=N
 * dirty=N speed=N paused=0|1 type=... error=..." (copied and total count
 * data bytes only; rate in bytes/s as measured; eta in seconds, -1 unknown),
 * or "phase=none". */
void job_status_line(struct mirror *m, enum job_type type, GString *s);
/* The same as members of the current JSON object. */
void job_status_json(struct mirror *m, enum job_type type, struct json_writer *j);
/* The view's job (or the last completed) as one JSON object inside an open
 * array; false (nothing written) when there is none. */
bool job_any_json(struct mirror *m, struct json_writer *j);

/* ---- guest-write hooks ----
 * A job that must act before a guest write reaches the view's image (a
 * backup's copy-before-write, a pull backup's frozen view) attaches a hook.
 * Every guest WRITE, ZERO and DISCARD of the view then calls before() first
 * and waits until it calls hr->go(hr) (perhaps inside before(), perhaps from
 * another thread); once the write is done on the image (whatever its result)
 * and before it is answered, after() runs with the same hr. hr->off and
 * hr->len name the guest range; hr->range and hr->priv are the hook's to
 * use. Reads, fsync and requests of length 0 do not call the hook. */
struct mirror_hook_req {
	uint64_t off, len;
	void (*go)(struct mirror_hook_req *hr);
	struct rl_range range;
	void *priv;
};
struct mirror_hook {
	void (*before)(struct mirror_hook *h, struct mirror_hook_req *hr);
	void (*after)(struct mirror_hook *h, struct mirror_hook_req *hr);
};
/* Attach h (one hook per view): new requests are parked while the writes in
 * flight without it drain; done(opaque, 0) runs once every later write calls
 * it (perhaps before the call returns), or done(opaque, -EBUSY) at once
 * (logged) when a hook is attached already or the view is held. Detach runs
 * done(opaque, 0) once no write is inside the hook any more. */
void mirror_hook_attach(struct mirror *m, struct mirror_hook *h, vd_done_fn done, void *opaque);
void mirror_hook_detach(struct mirror *m, vd_done_fn done, void *opaque);

/* ---- the view's data path ----
 * Every data request of a view comes here. Without a job it goes straight to
 * the view's image; with one, writes go to both sides under the job's range
 * lock (mirror-gate.c). done(opaque, err) runs once, with the source's result; c is
 * the caller's and must stay valid until then. */
struct mirror_call {
	struct mirror *m;
	vd_done_fn done;
	void *opaque;
};
void mirror_submit(struct mirror *m, struct mirror_call *c, enum image_op op, void *buf,
		   uint64_t len, uint64_t off, vd_done_fn done, void *opaque);

#endif
