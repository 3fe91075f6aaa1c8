/* The backup job: start (checks, the target, the store, the hook and the
 * point in time), the copy-before-write hook every guest write of the view
 * passes, cancel and status. The copier thread and the job's end are in
 * backup-copy.c. vdiskfs-jobs(7) "BACKUP"; docs/backup.md. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/compiler.h"
#include "util/log.h"
#include "mirror/backup-int.h"
#include "mirror/job-target.h"

#define BACKUP_CHUNK (64u << 10) /* the least chunk; larger for larger clusters */

static const char *const phase_names[] = {
	[BP_NONE] = "none",	      [BP_STARTING] = "starting", [BP_RUNNING] = "running",
	[BP_COMPLETED] = "completed", [BP_FAILED] = "failed",	  [BP_CANCELLED] = "cancelled",
};

static void hook_before(struct mirror_hook *h, struct mirror_hook_req *hr);
static void hook_after(struct mirror_hook *h, struct mirror_hook_req *hr);

struct backup *backup_new(struct mirror *m, struct vd_image **slot)
{
	struct backup *b = calloc(1, sizeof(*b));

	if (!b)
		return NULL;
	pthread_mutex_init(&b->lock, NULL);
	b->m = m;
	b->slot = slot;
	b->hook.before = hook_before;
	b->hook.after = hook_after;
	b->last = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, g_free);
	return b;
}

static void job_free(struct backup_job *job)
{
	if (!job)
		return;
	backup_copy_join(job);
	rangelock_destroy(&job->rl);
	if (job->efd >= 0)
		close(job->efd);
	if (job->store.index)
		cbw_store_close(&job->store);
	vd_bitmap_bits_free(&job->taken);
	free(job->need);
	free(job->done);
	free(job->seek);
	g_free(job->view);
	g_free(job->target);
	g_free(job->bitmap);
	g_free(job->format);
	free(job);
}

/* From start until the copier thread has ended the job. Under b->lock. */
static bool job_active(const struct backup_job *job)
{
	return job && !atomic_load(&job->finished);
}

bool backup_busy(struct backup *b)
{
	bool busy;

	if (!b)
		return false;
	pthread_mutex_lock(&b->lock);
	busy = b->starting || job_active(b->job);
	pthread_mutex_unlock(&b->lock);
	return busy;
}

void backup_kick(struct backup_job *job)
{
	copy_kick(job->efd, "backup");
}

void backup_fail(struct backup_job *job, const char *fmt, ...)
{
	struct backup *b = job->b;
	char why[256];
	bool now = false;
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&b->lock);
	if (job->phase == BP_RUNNING && !job->stop) {
		job->phase = BP_FAILED;
		snprintf(job->error, sizeof(job->error), "%s", why);
		now = true;
	}
	job->stop = true;
	pthread_mutex_unlock(&b->lock);
	if (now)
		vd_err("%s: backup to %s failed: %s; the guest keeps writing", job->src->path,
		       job->target, why);
	backup_kick(job);
}

/* ---- the copy-before-write hook ---- */

struct cbw_read {
	struct backup_job *job;
	struct mirror_hook_req *hr;
	uint64_t first, off, len; /* chunks first.. covering [off, off+len) */
	void *buf;
};

/* The chunks [*first, *last] of hr's range that must be saved now, false if
 * none. Under b->lock. */
static bool cbw_span(struct backup_job *job, const struct mirror_hook_req *hr, uint64_t *first,
		     uint64_t *last)
{
	uint64_t a = hr->off / job->chunk, z = (hr->off + hr->len - 1) / job->chunk;
	bool any = false;

	if (z >= job->nchunks)
		z = job->nchunks - 1;
	for (uint64_t i = a; i <= z && a < job->nchunks; i++) {
		uint64_t slot;

		if (!bits_test(job->need, i) || bits_test(job->done, i) ||
		    cbw_store_lookup(&job->store, i, &slot))
			continue;
		if (!any)
			*first = i;
		*last = i;
		any = true;
	}
	return any;
}

static void cbw_read_done(void *opaque, int err)
{
	struct cbw_read *r = opaque;
	struct backup_job *job = r->job;
	struct mirror_hook_req *hr = r->hr;
	int ret = 0;

	if (err) {
		backup_fail(job,
			    "reading %" PRIu64 " bytes at offset %" PRIu64
			    " of the image to save them before a guest write: %s",
			    r->len, r->off, strerror(-err));
		goto out;
	}
	for (uint64_t i = r->first; i * job->chunk < r->off + r->len; i++) {
		uint64_t at = i * job->chunk - r->off, slot;
		uint32_t n = min_u64(r->off + r->len - i * job->chunk, job->chunk);
		bool skip, stop;

		pthread_mutex_lock(&job->b->lock);
		stop = job->stop;
		skip = !bits_test(job->need, i) || bits_test(job->done, i) ||
		       cbw_store_lookup(&job->store, i, &slot);
		if (!stop && !skip)
			slot = cbw_store_reserve(&job->store);
		pthread_mutex_unlock(&job->b->lock);
		if (stop)
			break;
		if (skip)
			continue;
		/* The range is held: the slot and the chunk's state are ours. */
		ret = cbw_store_write(&job->store, slot, (char *)r->buf + at, n);
		pthread_mutex_lock(&job->b->lock);
		if (ret) {
			cbw_store_unreserve(&job->store, slot);
		} else {
			cbw_store_commit(&job->store, i, slot);
			job->saved_bytes += n;
		}
		pthread_mutex_unlock(&job->b->lock);
		if (ret)
			break;
	}
	if (ret)
		backup_fail(job, "the copy-before-write store: %s", strerror(-ret));
out:
	free(r->buf);
	free(r);
	hr->go(hr); /* the guest write goes on whatever became of the save */
}

/* hr holds its chunks' range: save what it is about to change, then go. */
static void cbw_locked(struct backup_job *job, struct mirror_hook_req *hr)
{
	uint64_t first, last, end;
	struct cbw_read *r;
	bool any;

	pthread_mutex_lock(&job->b->lock);
	any = !job->stop && cbw_span(job, hr, &first, &last);
	pthread_mutex_unlock(&job->b->lock);
	if (!any) {
		hr->go(hr);
		return;
	}
	end = (last + 1) * job->chunk < job->size ? (last + 1) * job->chunk : job->size;
	r = calloc(1, sizeof(*r));
	if (!r || posix_memalign(&r->buf, 4096, end - first * job->chunk)) {
		free(r);
		backup_fail(job, "out of memory for a copy-before-write");
		hr->go(hr);
		return;
	}
	r->job = job;
	r->hr = hr;
	r->first = first;
	r->off = first * job->chunk;
	r->len = end - r->off;
	image_submit(job->src, IMAGE_READ, r->buf, r->len, r->off, cbw_read_done, r);
}

static void cbw_wake(struct rl_range *range)
{
	struct mirror_hook_req *hr = container_of(range, struct mirror_hook_req, range);

	cbw_locked(hr->priv, hr);
}

/* Take hr's chunks in the range lock (priv then names the job, for after()),
 * or let it by when the job no longer needs to see writes. */
static void cbw_begin(struct backup_job *job, struct mirror_hook_req *hr)
{
	uint64_t a, z;

	if (!job || hr->off >= job->size) {
		hr->priv = NULL;
		hr->go(hr);
		return;
	}
	a = hr->off / job->chunk * job->chunk;
	z = hr->off + hr->len > job->size ? job->size : hr->off + hr->len;
	z = (z + job->chunk - 1) / job->chunk * job->chunk;
	hr->priv = job;
	if (rangelock_lock(&job->rl, &hr->range, a, z - a, cbw_wake))
		cbw_locked(job, hr);
}

static void hook_before(struct mirror_hook *h, struct mirror_hook_req *hr)
{
	struct backup *b = container_of(h, struct backup, hook);
	struct backup_job *job;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	if (job && job->phase == BP_STARTING) {
		/* Not yet at the point in time: wait for the bitmap to be taken. */
		hr->priv = job->parked;
		job->parked = hr;
		pthread_mutex_unlock(&b->lock);
		return;
	}
	if (job && (job->stop || job->phase != BP_RUNNING))
		job = NULL;
	pthread_mutex_unlock(&b->lock);
	cbw_begin(job, hr);
}

static void hook_after(struct mirror_hook *h, struct mirror_hook_req *hr)
{
	struct backup_job *job = hr->priv;

	(void)h;
	if (job)
		rangelock_unlock(&job->rl, &hr->range);
}

/* ---- start ---- */

uint64_t backup_chunk_len(const struct backup_job *job, uint64_t i)
{
	uint64_t off = i * job->chunk;

	return job->size - off < job->chunk ? job->size - off : job->chunk;
}

/* The needed chunks at the point in time (writes held): the allocated data
 * for sync=full, the bitmap's bits for incremental. A pull job saves every
 * chunk a write changes (its frozen view shows the whole disk) and hands
 * out the plan through SEEK_DATA. */
static int job_plan(struct backup_job *job)
{
	uint64_t *plan = job->pull ? job->seek : job->need;

	uint64_t pnum;
	enum vd_bs st;
	int ret;

	if (job->sync == BACKUP_INCREMENTAL) {
		for (uint64_t bit = 0; bit < job->taken.nbits; bit++) {
			if (bits_test(job->taken.words, bit))
				bits_set(plan, (bit << job->taken.gbits) / job->chunk);
		}
	} else {
		for (uint64_t pos = 0; pos < job->size; pos += pnum) {
			ret = image_block_status(job->src, pos, job->size - pos, &pnum, &st);
			if (ret) {
				vd_err("%s: backup: block status at offset %" PRIu64 ": %s",
				       job->src->path, pos, strerror(-ret));
				return ret;
			}
			if (!pnum)
				return -EIO;
			if (st != VD_BS_DATA)
				continue;
			for (uint64_t i = pos / job->chunk; i * job->chunk < pos + pnum; i++)
				bits_set(plan, i);
		}
	}
	job->total = 0;
	for (uint64_t i = 0; i < job->nchunks; i++)
		if (bits_test(plan, i))
			job->total += backup_chunk_len(job, i);
	if (job->pull)
		memset(job->need, 0xff, (job->nchunks + 63) / 64 * 8);
	return 0;
}

static void start_answer(struct backup *b, int err)
{
	vd_done_fn done;
	void *opaque;

	pthread_mutex_lock(&b->lock);
	done = b->start_done;
	opaque = b->start_opaque;
	b->start_done = NULL;
	b->starting = false;
	pthread_mutex_unlock(&b->lock);
	done(opaque, err);
}

/* A start that failed after the target was made: nothing of it stays. */
static void start_undo(struct backup_job *job)
{
	image_unref(job->dst);
	job->dst = NULL;
	if (job->target && unlink(job->target) < 0)
		vd_warn("backup: cannot remove %s again: %s", job->target, strerror(errno));
}

struct start_fail {
	struct backup_job *job;
	int err;
};

static void start_detached(void *opaque, int err)
{
	struct start_fail *f = opaque;
	struct backup_job *job = f->job;
	struct backup *b = job->b;

	(void)err;
	if (job->took && image_bitmap_merge(job->src, job->bitmap, &job->taken))
		vd_err("%s: backup: the bits of bitmap %s could not be given back", job->src->path,
		       job->bitmap);
	start_undo(job);
	pthread_mutex_lock(&b->lock);
	b->job = NULL;
	pthread_mutex_unlock(&b->lock);
	job_free(job);
	start_answer(b, f->err);
	free(f);
}

/* Let the writes parked while starting go: through the save (running) or
 * by (stopped). */
static void start_release(struct backup_job *job)
{
	struct mirror_hook_req *list, *next;
	bool run;

	pthread_mutex_lock(&job->b->lock);
	list = job->parked;
	job->parked = NULL;
	run = job->phase == BP_RUNNING && !job->stop;
	pthread_mutex_unlock(&job->b->lock);
	for (; list; list = next) {
		next = list->priv;
		cbw_begin(run ? job : NULL, list);
	}
}

/* The hook is in place and every write that passed without it is done:
 * this is the job's point in time. The writes since wait in the hook while
 * the bitmap is taken and the plan made. */
static void start_attached(void *opaque, int err)
{
	struct backup_job *job = opaque;
	struct backup *b = job->b;
	struct start_fail *f;

	if (err) {
		pthread_mutex_lock(&b->lock);
		b->job = NULL;
		pthread_mutex_unlock(&b->lock);
		start_undo(job);
		job_free(job);
		start_answer(b, err);
		return;
	}
	if (mirror_busy(b->m)) { /* a mirror published since the check at start */
		vd_err("%s: a mirror job runs on this view: complete or cancel it first",
		       job->src->path);
		err = -EBUSY;
	}
	if (!err && job->bitmap) {
		err = image_bitmap_take(job->src, job->bitmap, true, &job->taken);
		job->took = !err;
	}
	if (!err)
		err = job_plan(job);
	pthread_mutex_lock(&b->lock);
	job->phase = err ? BP_FAILED : BP_RUNNING;
	job->stop = !!err;
	job->start_ns = vd_now_ns();
	pthread_mutex_unlock(&b->lock);
	if (!err && !job->pull)
		err = backup_copy_start(job);
	if (err) {
		pthread_mutex_lock(&b->lock);
		job->stop = true;
		pthread_mutex_unlock(&b->lock);
		start_release(job);
		f = malloc(sizeof(*f));
		if (!f)
			abort(); /* a few bytes; nothing sane is left to do */
		f->job = job;
		f->err = err;
		mirror_hook_detach(b->m, start_detached, f);
		return;
	}
	vd_info("%s: %s backup (%s%s%s) %s %s started: %" PRIu64 " bytes of data", job->src->path,
		job->pull ? "pull" : "push", job->sync == BACKUP_FULL ? "full" : "incremental",
		job->bitmap ? ", bitmap " : "", job->bitmap ? job->bitmap : "",
		job->pull ? "as" : "to", job->pull ? job->view : job->target, job->total);
	start_release(job);
	start_answer(b, 0);
}

/* The backing format of base=: probed like any image. */
static int base_format(const char *base, const char **fmt)
{
	const struct vd_format *f;
	int fd = open(base, O_RDONLY | O_CLOEXEC);

	if (fd < 0) {
		int err = errno;

		vd_err("backup: base %s: %s", base, strerror(err));
		return -err;
	}
	f = image_probe(fd, base, true);
	close(fd);
	if (!f) {
		vd_err("backup: base %s: not an image", base);
		return -EINVAL;
	}
	*fmt = f->name;
	return 0;
}

/* Everything that can refuse the start before the hook goes in. */
static int start_prepare(struct backup_job *job, const struct backup_opts *o,
			 const struct mirror_env *env)
{
	struct vd_image *src = job->src;
	struct job_target t = {.who = "backup", .path = o->target, .format = o->format};
	struct vd_bitmap_bits probe = {0};
	g_autofree char *last = NULL;
	char *dir;
	uint64_t words;
	int ret;

	ret = backup_opts_check(o);
	if (ret)
		return ret;
	if (o->bitmap) {
		pthread_mutex_lock(&job->b->lock);
		last = g_strdup(g_hash_table_lookup(job->b->last, o->bitmap));
		pthread_mutex_unlock(&job->b->lock);
	}
	if (o->bitmap) { /* it exists, is enabled, the format keeps bitmaps */
		ret = image_bitmap_take(src, o->bitmap, false, &probe);
		if (ret)
			return ret;
		job->chunk = max_u64(job->chunk, 1ull << probe.gbits);
		vd_bitmap_bits_free(&probe);
	}
	if (o->sync == BACKUP_INCREMENTAL && !job->pull) {
		t.format = "qcow2";
		t.backing = o->base ? o->base : last;
		if (!t.backing) {
			vd_err("backup: sync=incremental needs base=PATH: no backup with bitmap %s "
			       "completed in this mount yet (name the previous one)",
			       o->bitmap);
			return -EINVAL;
		}
		ret = base_format(t.backing, &t.backing_fmt);
		if (ret)
			return ret;
	}
	if (job->pull) { /* the store goes beside the view's image */
		dir = g_path_get_dirname(src->path);
	} else {
		ret = job_target_open(&t, src, env, &job->dst, &job->target, &job->fresh);
		if (ret)
			return ret;
		/* Whole clusters: an incremental target never reads its base. */
		if (o->sync == BACKUP_INCREMENTAL)
			job->chunk = max_u64(job->chunk, job->dst->cluster_size);
		dir = g_path_get_dirname(job->target);
	}
	ret = cbw_store_open(&job->store, dir, job->chunk);
	g_free(dir);
	if (ret)
		goto out_undo;
	job->nchunks = (job->size + job->chunk - 1) / job->chunk;
	words = (job->nchunks + 63) / 64;
	job->need = calloc(words ? words : 1, 8);
	job->done = calloc(words ? words : 1, 8);
	job->seek = job->pull ? calloc(words ? words : 1, 8) : NULL;
	job->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!job->need || !job->done || (job->pull && !job->seek) || job->efd < 0) {
		ret = job->efd < 0 ? -errno : -ENOMEM;
		goto out_undo;
	}
	return 0;
out_undo:
	start_undo(job);
	return ret;
}

void backup_start(struct backup *b, const struct backup_opts *o, const struct mirror_env *env,
		  vd_done_fn done, void *opaque)
{
	struct vd_image *src = *b->slot;
	struct backup_job *job, *old = NULL;
	int ret;

	pthread_mutex_lock(&b->lock);
	if (b->starting || job_active(b->job)) {
		pthread_mutex_unlock(&b->lock);
		vd_err("%s: a backup runs already (to %s): cancel it or wait for its end",
		       src->path, b->job ? b->job->target : "?");
		done(opaque, -EBUSY);
		return;
	}
	if (mirror_busy(b->m)) {
		pthread_mutex_unlock(&b->lock);
		vd_err("%s: a mirror job runs on this view: complete or cancel it first",
		       src->path);
		done(opaque, -EBUSY);
		return;
	}
	b->starting = true; /* an ended job stays in b->job for its status until
			     * the new one replaces it */
	pthread_mutex_unlock(&b->lock);

	ret = -ENOMEM;
	job = calloc(1, sizeof(*job));
	if (!job)
		goto out;
	job->b = b;
	job->src = src;
	job->size = src->size;
	job->sync = o->sync;
	atomic_init(&job->speed, o->speed);
	job->efd = -1;
	job->store.fd = -1;
	job->chunk = BACKUP_CHUNK;
	job->bitmap = g_strdup(o->bitmap);
	job->pull = o->view != NULL;
	job->view = g_strdup(o->view);
	rangelock_init(&job->rl);
	ret = start_prepare(job, o, env);
	if (ret) {
		job_free(job);
		goto out;
	}
	job->format = g_strdup(job->dst ? job->dst->fmt->name : "");
	pthread_mutex_lock(&b->lock);
	job->phase = BP_STARTING;
	old = b->job;
	b->job = job;
	b->start_done = done;
	b->start_opaque = opaque;
	pthread_mutex_unlock(&b->lock);
	job_free(old); /* its thread has ended */
	mirror_hook_attach(b->m, &b->hook, start_attached, job);
	return;
out:
	pthread_mutex_lock(&b->lock);
	b->starting = false;
	pthread_mutex_unlock(&b->lock);
	done(opaque, ret);
}

/* ---- cancel, free ---- */

void backup_cancel(struct backup *b, vd_done_fn done, void *opaque)
{
	struct backup_job *job;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	if (job && job->pull) {
		pthread_mutex_unlock(&b->lock);
		if (backup_pull_end(b, true, done, opaque, false))
			done(opaque, -ESRCH);
		return;
	}
	if (!job || job->phase != BP_RUNNING || job->stop || job->end_done) {
		pthread_mutex_unlock(&b->lock);
		vd_err("%s: no backup is running", (*b->slot)->path);
		done(opaque, -ESRCH);
		return;
	}
	job->stop = true;
	job->cancel = true;
	job->end_done = done;
	job->end_opaque = opaque;
	pthread_mutex_unlock(&b->lock);
	backup_kick(job);
}

/* The running push backup a pause, resume or speed acts on: with b->lock
 * held, or NULL (unlocked, -errno logged in *err). */
static struct backup_job *backup_adjust_lock(struct backup *b, const char *verb, int *err)
{
	struct backup_job *job;

	pthread_mutex_lock(&b->lock);
	job = b->job;
	*err = 0;
	if (!job || job->phase != BP_RUNNING || job->stop || job->end_done)
		*err = -ESRCH;
	else if (job->pull)
		*err = -EINVAL; /* no copier: the reader sets the pace */
	if (!*err)
		return job;
	pthread_mutex_unlock(&b->lock);
	vd_err("%s: backup %s: %s", (*b->slot)->path, verb,
	       *err == -ESRCH ? "no backup is running"
			      : "a pull backup has no copy to pause or to limit");
	return NULL;
}

int backup_pause(struct backup *b, bool pause)
{
	struct backup_job *job;
	int err;
	bool was;

	job = backup_adjust_lock(b, pause ? "pause" : "resume", &err);
	if (!job)
		return err;
	was = job->paused;
	job->paused = pause;
	pthread_mutex_unlock(&b->lock);
	if (was != pause)
		vd_info("%s: backup to %s %s", (*b->slot)->path, job->target,
			pause ? "paused: the copy waits, guest writes go on (copied before "
				"they land where the backup still needs the old data)"
			      : "resumed");
	backup_kick(job);
	return 0;
}

int backup_set_speed(struct backup *b, uint64_t speed)
{
	struct backup_job *job;
	int err;

	job = backup_adjust_lock(b, "speed", &err);
	if (!job)
		return err;
	atomic_store(&job->speed, speed);
	pthread_mutex_unlock(&b->lock);
	vd_info("%s: backup to %s: speed limit %" PRIu64 " bytes/s%s", (*b->slot)->path,
		job->target, speed, speed ? "" : " (none)");
	backup_kick(job);
	return 0;
}

void backup_free(struct backup *b)
{
	struct backup_job *job;

	if (!b)
		return;
	/* A pull job ends here: nothing is in flight any more, so the hook
	 * goes at once. */
	if (backup_pull_end(b, true, NULL, NULL, true) == 0) {
		for (int i = 0; i < 3000 && !atomic_load(&b->job->finished); i++)
			usleep(1000);
	}
	pthread_mutex_lock(&b->lock);
	job = b->job;
	b->job = NULL;
	if (job && !job->pull) {
		if (!job->stop)
			job->cancel = true;
		job->stop = true;
	}
	pthread_mutex_unlock(&b->lock);
	if (job) {
		backup_kick(job);
		job_free(job); /* joins the copier after the job's end */
	}
	g_hash_table_destroy(b->last);
	pthread_mutex_destroy(&b->lock);
	free(b);
}

/* ---- status ---- */

struct backup_snap {
	enum backup_phase phase;
	const char *target, *sync, *bitmap, *format, *view;
	uint64_t copied, total, percent, rate, speed;
	int64_t eta; /* seconds, -1: unknown (as every job's status) */
	bool paused;
	char error[256];
};

/* Under b->lock. */
static void backup_snap(struct backup *b, struct backup_snap *s)
{
	struct backup_job *job = b->job;
	uint64_t ns, end;

	memset(s, 0, sizeof(*s));
	if (!job)
		return;
	s->phase = job->phase;
	s->target = job->target ? job->target : "";
	s->view = job->view ? job->view : "";
	s->format = job->format;
	s->sync = job->sync == BACKUP_FULL ? "full" : "incremental";
	s->bitmap = job->bitmap ? job->bitmap : "";
	s->copied = atomic_load(&job->copied);
	s->speed = atomic_load(&job->speed);
	s->paused = job->paused;
	s->total = job->total;
	s->percent = s->total ? s->copied * 100 / s->total : 100;
	end = job->end_ns ? job->end_ns : vd_now_ns();
	ns = job->start_ns && end > job->start_ns ? end - job->start_ns : 0;
	s->rate = ns ? (uint64_t)((double)s->copied * 1e9 / ns) : 0;
	if (s->copied >= s->total)
		s->eta = 0;
	else
		s->eta = s->rate ? (int64_t)((s->total - s->copied + s->rate - 1) / s->rate) : -1;
	snprintf(s->error, sizeof(s->error), "%s", job->error);
}

void backup_status_line(struct backup *b, GString *out)
{
	struct backup_snap s;

	pthread_mutex_lock(&b->lock);
	backup_snap(b, &s);
	if (s.phase == BP_NONE)
		g_string_append(out, "phase=none");
	else
		g_string_append_printf(
			out,
			"phase=%s target=%s format=%s sync=%s bitmap=%s copied=%" PRIu64
			" total=%" PRIu64 " percent=%" PRIu64 " rate=%" PRIu64 " eta=%" PRId64
			" speed=%" PRIu64 " paused=%d view=%s type=backup error=%s",
			phase_names[s.phase], s.target, s.format, s.sync, s.bitmap, s.copied,
			s.total, s.percent, s.rate, s.eta, s.speed, s.paused, s.view, s.error);
	pthread_mutex_unlock(&b->lock);
}

static void snap_json(const struct backup_snap *s, struct json_writer *j)
{
	json_str(j, "phase", phase_names[s->phase]);
	if (s->phase == BP_NONE)
		return;
	json_str(j, "target", s->target[0] ? s->target : NULL);
	json_str(j, "view", s->view[0] ? s->view : NULL);
	json_str(j, "format", s->format);
	json_str(j, "sync", s->sync);
	json_str(j, "bitmap", s->bitmap[0] ? s->bitmap : NULL);
	job_progress_json(j, s->copied, s->total, s->percent, s->rate, s->eta);
	json_u64(j, "speed", s->speed);
	json_bool(j, "paused", s->paused);
	json_str(j, "error", s->error[0] ? s->error : NULL);
}

void backup_status_json(struct backup *b, struct json_writer *j)
{
	struct backup_snap s;

	pthread_mutex_lock(&b->lock);
	backup_snap(b, &s);
	snap_json(&s, j);
	pthread_mutex_unlock(&b->lock);
}

bool backup_any_json(struct backup *b, struct json_writer *j)
{
	struct backup_snap s;

	pthread_mutex_lock(&b->lock);
	backup_snap(b, &s);
	if (s.phase != BP_NONE) {
		json_begin_object(j, NULL);
		json_str(j, "type", "backup");
		snap_json(&s, j);
		json_end_object(j);
	}
	pthread_mutex_unlock(&b->lock);
	return s.phase != BP_NONE;
}
