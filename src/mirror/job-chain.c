/* The jobs on a view's backing chain: stream (the chain's data into the
 * top image), commit (an image into one below it) and the live external
 * snapshot (a new overlay on top). Stream and commit run on the copier
 * (mirror-copy.c) and gate (mirror-gate.c) of the mirror; the snapshot needs
 * no copy, only the view's requests held while the overlay is stacked on its
 * image. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/log.h"
#include "util/path.h"
#include "mirror/mirror-int.h"

/* The member of chain (from top down) that is the file path, or NULL
 * (logged: what names it for the message). */
static struct vd_image *chain_member(struct vd_image *top, const char *path, const char *what,
				     const char *view)
{
	struct vd_image *i = image_chain_find(top, path);

	if (!i)
		vd_err("%s: %s %s is not in the image's backing chain%s", view, what, path,
		       top->backing ? "" : " (it has no backing file)");
	return i;
}

/* Can the image's backing link be rewritten (stream, intermediate commit)? */
static int relink_supported(struct vd_image *img, const char *what)
{
	if (!img->fmt->set_backing) {
		vd_err("%s: %s: the %s format's backing link cannot be rewritten (qcow2 only)",
		       img->path, what, img->fmt->name);
		return -ENOTSUP;
	}
	return 0;
}

int stream_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env)
{
	struct mirror_job *job;
	struct vd_image *src, *base = NULL;
	int ret = job_begin(m, "stream", env->read_only);

	if (ret)
		return ret;
	src = *m->slot;
	if (!src->backing) {
		vd_err("%s: stream: the image has no backing file", src->path);
		ret = -EINVAL;
	} else if (o->base && !(base = chain_member(src->backing, o->base, "base", src->path))) {
		ret = -EINVAL;
	} else {
		ret = relink_supported(src, "stream");
	}
	job = ret ? NULL : job_new(m, JOB_STREAM, o->speed, 0);
	if (!ret && !job)
		ret = -ENOMEM;
	if (ret) {
		job_abandon(m, NULL);
		return ret;
	}
	job->base = base;
	job->dst = src;
	image_ref(src);
	job->lock_guest = true; /* the copier writes the guest's own image */
	job->auto_complete = true;
	job->target = g_strdup(base ? base->path : "");
	vd_info("%s: streaming the backing chain%s%s into the image", src->path,
		base ? " above " : "", base ? base->path : "");
	ret = job_publish(job);
	if (ret) {
		image_unref(src);
		job_abandon(m, job);
	}
	return ret;
}

/* The commit's top and base from the options (defaults: the view's image
 * and its backing file). 0 or -errno, logged. */
static int commit_pick(struct vd_image *src, const struct mirror_opts *o, struct vd_image **top,
		       struct vd_image **base)
{
	*top = o->top ? chain_member(src, o->top, "top", src->path) : src;
	if (!*top)
		return -EINVAL;
	if (!(*top)->backing) {
		vd_err("%s: commit: %s has no backing file to commit into", src->path,
		       (*top)->path);
		return -EINVAL;
	}
	*base = o->base ? chain_member((*top)->backing, o->base, "base", src->path)
			: (*top)->backing;
	if (!*base)
		return -EINVAL;
	if ((*base)->size < (*top)->size) {
		vd_err("%s: commit: base %s (%" PRIu64 " bytes) is smaller than %s (%" PRIu64
		       " bytes)",
		       src->path, (*base)->path, (*base)->size, (*top)->path, (*top)->size);
		return -ENOSPC;
	}
	if (*top != src) {
		struct vd_image *upper = src;

		while (upper->backing != *top)
			upper = upper->backing;
		if (upper->size > (*top)->size && (*base)->size > (*top)->size) {
			/* The image above reads zeroes past top's end, where it
			 * would read the base's data once it backs onto it. */
			vd_err("%s: commit: %s is shorter than %s above it and than base %s: "
			       "the chain would read differently past its end (stream into %s "
			       "instead)",
			       src->path, (*top)->path, upper->path, (*base)->path, upper->path);
			return -ENOTSUP;
		}
		return relink_supported(upper, "commit");
	}
	return 0;
}

int commit_start(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env)
{
	struct mirror_job *job = NULL;
	struct vd_image *src, *top, *base;
	int ret = job_begin(m, "commit", env->read_only);

	if (ret)
		return ret;
	src = *m->slot;
	ret = commit_pick(src, o, &top, &base);
	if (!ret) {
		job = job_new(m, JOB_COMMIT, o->speed, 0);
		if (!job)
			ret = -ENOMEM;
	}
	/* The base is written from now on: it is opened for writing in place
	 * (every image above reads it as before). */
	if (!ret)
		ret = image_reopen(base, true);
	if (ret) {
		job_abandon(m, job);
		return ret;
	}
	image_ref(base);
	job->rd = top;
	job->total = top->size; /* an image further down may be smaller than the view */
	job->base = base;
	job->dst = base;
	job->fan_out = job->lock_guest = top == src; /* guest writes reach the base too */
	job->auto_complete = top != src;
	job->target = g_strdup(base->path);
	vd_info("%s: committing %s into %s (%s)", src->path, top->path, base->path,
		top == src ? "active: complete moves the view onto the base" : "ends on its own");
	ret = job_publish(job);
	if (ret) {
		image_reopen(base, false);
		image_unref(base);
		job_abandon(m, job);
	}
	return ret;
}

/* ---- snapshot ---- */

struct snapshot_call {
	struct mirror *m;
	char *path;
	unsigned mode;
	vd_done_fn done;
	void *opaque;
};

/* The view's requests are held and none is in flight: stack the overlay. */
static void snapshot_drained(void *opaque, int err)
{
	struct snapshot_call *c = opaque;
	struct mirror *m = c->m;
	struct vd_image *old = *m->slot, *ov = NULL;

	if (!err)
		err = image_create_overlay(old, c->path, c->mode, &ov);
	/* The old image is final from now on: not even its close writes it
	 * (the overlay only reads it). A failure here leaves it written back by
	 * the overlay's open and merely not marked final (logged). */
	if (!err)
		image_finish(old);
	if (!err) {
		pthread_mutex_lock(&m->lock);
		__atomic_store_n(m->slot, ov, __ATOMIC_RELEASE);
		pthread_mutex_unlock(&m->lock);
		image_unref(old); /* the overlay holds it as its backing file */
		vd_info("%s: snapshot: the view now writes %s; %s is its read-only backing file",
			old->path, ov->path, old->path);
	}
	mirror_release(m);
	c->done(c->opaque, err);
	g_free(c->path);
	free(c);
}

void snapshot_take(struct mirror *m, const char *path, const struct mirror_env *env,
		   vd_done_fn done, void *opaque)
{
	struct snapshot_call *c;
	struct vd_image *src;
	struct stat st;
	int ret;

	if (!path || path[0] != '/') {
		vd_err("snapshot: want the absolute path of the new overlay");
		done(opaque, -EINVAL);
		return;
	}
	ret = job_begin(m, "snapshot", env->read_only);
	if (ret) {
		done(opaque, ret);
		return;
	}
	src = *m->slot;
	if (env->mountpoint && (path_within(path, env->mountpoint))) {
		vd_err("%s: snapshot: %s is inside this vdiskfs mount", src->path, path);
		ret = -EINVAL;
	} else if (lstat(path, &st) == 0) {
		vd_err("%s: snapshot: %s exists", src->path, path);
		ret = -EEXIST;
	} else if (fstat(src->fd, &st) < 0) {
		ret = -errno;
	}
	c = ret ? NULL : calloc(1, sizeof(*c));
	if (!ret && !c)
		ret = -ENOMEM;
	if (ret) {
		job_abandon(m, NULL);
		done(opaque, ret);
		return;
	}
	/* The checks are done; the hold keeps any job from starting now. */
	job_abandon(m, NULL);
	c->m = m;
	c->path = g_strdup(path);
	c->mode = st.st_mode & 0777;
	c->done = done;
	c->opaque = opaque;
	ret = mirror_hold(m, snapshot_drained, c);
	if (ret) {
		g_free(c->path);
		free(c);
		done(opaque, ret);
	}
}
