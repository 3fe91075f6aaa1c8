/* Checking and opening a job's destination (a mirror's, a backup's target):
 * everything that can refuse a start is checked before anything is created,
 * and a destination created here is removed again if opening it fails. */
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/vfs.h>
#include <unistd.h>

#include "util/log.h"
#include "mirror/mirror-int.h"
#include "util/mountinfo.h"
#include "util/path.h"

#define FUSE_SUPER_MAGIC 0x65735546

struct holder {
	const char *path;
	size_t best_len;
	bool vd;
};

/* The deepest mount holding path decides. */
static bool holder_note(const struct mountinfo_entry *m, void *opaque)
{
	struct holder *h = opaque;
	size_t len = strlen(m->mountpoint);

	if (!path_within(h->path, m->mountpoint) || len < h->best_len)
		return false;
	h->best_len = len;
	h->vd = !strcmp(m->fstype, "fuse.vdiskfs") ||
		(!strncmp(m->fstype, "fuse", 4) && m->source && strstr(m->source, "vdiskfs"));
	return false;
}

/* Is the mount that holds path a vdiskfs mount? */
static bool mount_is_vdiskfs(const char *path)
{
	struct holder h = {.path = path};

	mountinfo_each(holder_note, &h);
	return h.vd;
}

/* Refuse a destination inside any vdiskfs mount: writing it from our own
 * event loop would wait on ourselves. */
static int target_check_mount(const struct job_target *t, const char *target, const char *real,
			      const char *realdir, const struct mirror_env *env)
{
	struct statfs sf;

	if (env->mountpoint &&
	    (path_within(target, env->mountpoint) || path_within(real, env->mountpoint))) {
		vd_err("%s: target %s is inside this vdiskfs mount (%s)", t->who, target,
		       env->mountpoint);
		return -EINVAL;
	}
	if (statfs(realdir, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC && mount_is_vdiskfs(real)) {
		vd_err("%s: target %s is inside a vdiskfs mount", t->who, target);
		return -EINVAL;
	}
	if (mount_is_vdiskfs(real)) { /* a single-image view mounted on the file */
		vd_err("%s: target %s is a vdiskfs view", t->who, target);
		return -EINVAL;
	}
	return 0;
}

/* The target's path as it will be opened: absolute, outside our own mount,
 * its directory resolved (links among the directories are followed, the last
 * component is not). Returns 0 with *real (g_free) or -errno, logged. */
static int target_resolve(const struct job_target *t, const struct mirror_env *env, char **real)
{
	char *canon, *dir, *base;
	char realdir[PATH_MAX];
	int ret = -EINVAL;

	if (!t->path || t->path[0] != '/') {
		vd_err("%s: the target must be an absolute path", t->who);
		return -EINVAL;
	}
	canon = g_canonicalize_filename(t->path, "/");
	dir = g_path_get_dirname(canon);
	base = g_path_get_basename(canon);
	if (env->mountpoint && path_within(canon, env->mountpoint)) {
		vd_err("%s: target %s is inside this vdiskfs mount (%s)", t->who, t->path,
		       env->mountpoint);
		goto out;
	}
	if (!realpath(dir, realdir)) {
		ret = -errno;
		vd_err("%s: directory of target %s: %s", t->who, t->path, strerror(errno));
		goto out;
	}
	*real = g_build_filename(realdir, base, NULL);
	ret = target_check_mount(t, t->path, *real, realdir, env);
	if (ret) {
		g_free(*real);
		*real = NULL;
	}
out:
	g_free(base);
	g_free(dir);
	g_free(canon);
	return ret;
}

/* What is at the target now: nothing (and existing=1 not asked), or with
 * existing=1 a regular file that is no file of the source's chain. The
 * destination is the file named, never where a link points: a link planted
 * at the target path must not redirect the copy (with or without existing=1).
 * Returns 0 with *exists, or -errno, logged. */
static int target_check_file(const struct job_target *t, struct vd_image *src, const char *real,
			     bool *exists)
{
	struct stat st;

	*exists = lstat(real, &st) == 0;
	if (*exists) {
		for (struct vd_image *i = src; i; i = i->backing) {
			if (i->dev == st.st_dev && i->ino == st.st_ino) {
				vd_err("%s: target %s is %s", t->who, t->path,
				       i == src ? "the source itself"
						: "a file of the source's backing chain");
				return -EINVAL;
			}
		}
	}
	if (*exists && S_ISLNK(st.st_mode)) {
		vd_err("%s: target %s is a symbolic link: refused (name the file itself)", t->who,
		       t->path);
		return -EINVAL;
	}
	if (*exists && !t->existing) {
		vd_err("%s: target %s exists%s", t->who, t->path,
		       t->exists_hint ? t->exists_hint : "");
		return -EEXIST;
	}
	if (!*exists && t->existing) {
		vd_err("%s: target %s does not exist (existing=1)", t->who, t->path);
		return -ENOENT;
	}
	if (*exists && !S_ISREG(st.st_mode)) {
		vd_err("%s: target %s is not a regular file", t->who, t->path);
		return -EINVAL;
	}
	return 0;
}

/* The destination's driver: format= if given, else the source's for a new
 * file, else (*fmt NULL) probed when the existing file is opened. */
static int target_pick_format(const struct job_target *t, struct vd_image *src, bool exists,
			      const struct vd_format **fmt)
{
	*fmt = t->format ? vd_format_by_name(t->format) : exists ? NULL : src->fmt;
	if (t->format && !*fmt) {
		vd_err("%s: unknown format %s", t->who, t->format);
		return -EINVAL;
	}
	if (*fmt && (!(*fmt)->open || (!exists && !(*fmt)->create))) {
		vd_err("%s: the %s driver cannot %s images yet", t->who, (*fmt)->name,
		       exists ? "open" : "create");
		return -ENOTSUP;
	}
	return 0;
}

/* A new destination the size of the source, born with the source's
 * permissions: a private disk's copy must not be readable by others even for
 * a moment. Block sizes carry over only within a format (a qcow2 cluster is
 * no vhdx block size). */
static int target_create(const struct job_target *t, struct vd_image *src,
			 const struct vd_format *fmt, const char *real, const struct stat *sst)
{
	struct vd_create_opts co = {
		.size = src->size,
		.cluster_size = fmt == src->fmt ? src->cluster_size : 0,
		.mode = sst->st_mode & 0777,
		.backing = t->backing,
		.backing_fmt = t->backing_fmt,
	};
	int ret;

	if (t->backing && fmt == &vd_format_raw) {
		vd_err("%s: a raw target cannot have a backing file (%s): want qcow2 or vhdx",
		       t->who, t->backing);
		return -EINVAL;
	}
	ret = fmt->create(real, &co);

	if (ret)
		vd_err("%s: cannot create %s image %s: %s", t->who, fmt->name, t->path,
		       strerror(-ret));
	return ret;
}

/* Open the destination (no link slipped in since the checks) and check that
 * it can take the copy: writable, used by nothing else, not smaller. */
static int target_open(const struct job_target *t, const struct mirror_env *env,
		       struct vd_image *src, const struct vd_format *fmt, const char *real,
		       bool created, const struct stat *sst, struct vd_image **out)
{
	struct vd_open_opts oo = *env->open;
	struct vd_image *dst;
	int ret;

	oo.read_only = false;
	oo.format = fmt ? fmt->name : NULL;
	oo.raw_by_default = true;
	oo.nofollow = true;
	oo.inactive = false;
	/* A file we created names only the backing file we were given. */
	if (created)
		oo.backing = t->backing ? VD_BACKING_FOLLOW : VD_BACKING_DENY;
	ret = image_open(real, &oo, &dst);
	if (ret) {
		vd_err("%s: cannot open target %s: %s", t->who, t->path, strerror(-ret));
		return ret;
	}
	/* And the source's owner where we may give it (root), so that the view
	 * keeps its owner after complete. */
	if (created && fchown(dst->fd, sst->st_uid, sst->st_gid) < 0 && errno != EPERM)
		vd_warn("%s: cannot give %s the source's owner: %s", t->who, t->path,
			strerror(errno));
	if (dst->read_only) {
		vd_err("%s: target %s can only be opened read-only", t->who, t->path);
		ret = -EROFS;
	} else if (atomic_load(&dst->refs) > 1) {
		vd_err("%s: target %s is in use by another view or chain", t->who, t->path);
		ret = -EBUSY;
	} else if (dst->size < src->size) {
		vd_err("%s: target %s is smaller (%" PRIu64 " bytes) than the source (%" PRIu64
		       " bytes)",
		       t->who, t->path, dst->size, src->size);
		ret = -ENOSPC;
	}
	if (ret) {
		image_unref(dst);
		return ret;
	}
	*out = dst;
	return 0;
}

int job_target_open(const struct job_target *t, struct vd_image *src, const struct mirror_env *env,
		    struct vd_image **dst, char **target, bool *fresh)
{
	const struct vd_format *fmt;
	char *real = NULL;
	struct stat sst;
	bool exists;
	int ret;

	ret = target_resolve(t, env, &real);
	if (!ret)
		ret = target_check_file(t, src, real, &exists);
	if (!ret)
		ret = target_pick_format(t, src, exists, &fmt);
	if (!ret && fstat(src->fd, &sst) < 0)
		ret = -errno;
	if (!ret && !exists)
		ret = target_create(t, src, fmt, real, &sst);
	if (ret)
		goto out;
	ret = target_open(t, env, src, fmt, real, !exists, &sst, dst);
	if (ret) {
		if (!exists)
			unlink(real);
		goto out;
	}
	*target = g_strdup(real);
	*fresh = !exists;
out:
	g_free(real);
	return ret;
}

int mirror_open_target(struct mirror *m, const struct mirror_opts *o, const struct mirror_env *env,
		       struct mirror_job *job)
{
	struct job_target t = {
		.who = "mirror",
		.path = o->target,
		.format = o->format,
		.existing = o->existing,
		.exists_hint = " (use existing=1 to write over an existing image)",
	};
	int ret;

	(void)m;
	/* sync=top: the copy of the top image shares the source's backing. */
	if (o->sync_top && job->src->backing) {
		t.backing = job->src->backing->path;
		t.backing_fmt = job->src->backing->fmt->name;
	}
	ret = job_target_open(&t, job->src, env, &job->dst, &job->target, &job->dst_zero);
	/* A fresh image with a backing file reads that file, not zeroes. */
	if (!ret && job->dst->backing)
		job->dst_zero = false;
	return ret;
}
