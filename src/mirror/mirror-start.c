/* Checking and opening a mirror destination: everything that can refuse a
 * start is checked before anything is created, and a destination created
 * here is removed again if opening it fails. */
#include <errno.h>
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
static int target_check_mount(const char *target, const char *real, const char *realdir,
			      const struct mirror_env *env)
{
	struct statfs sf;

	if (env->mountpoint && (path_within(target, env->mountpoint) ||
				path_within(real, env->mountpoint))) {
		vd_err("mirror: target %s is inside this vdiskfs mount (%s)", target,
		       env->mountpoint);
		return -EINVAL;
	}
	if (statfs(realdir, &sf) == 0 && sf.f_type == FUSE_SUPER_MAGIC &&
	    mount_is_vdiskfs(real)) {
		vd_err("mirror: target %s is inside a vdiskfs mount", target);
		return -EINVAL;
	}
	if (mount_is_vdiskfs(real)) { /* a single-image view mounted on the file */
		vd_err("mirror: target %s is a vdiskfs view", target);
		return -EINVAL;
	}
	return 0;
}

int mirror_open_target(struct mirror *m, const struct mirror_opts *o,
		       const struct mirror_env *env, struct mirror_job *job)
{
	struct vd_image *src = job->src, *dst = NULL;
	const struct vd_format *fmt = NULL;
	char *canon = NULL, *dir = NULL, *base = NULL, *real = NULL;
	char realdir[PATH_MAX];
	struct vd_open_opts oo;
	struct stat st, sst;
	bool exists, created = false;
	int ret;

	if (!o->target || o->target[0] != '/') {
		vd_err("mirror: the target must be an absolute path");
		return -EINVAL;
	}
	canon = g_canonicalize_filename(o->target, "/");
	dir = g_path_get_dirname(canon);
	base = g_path_get_basename(canon);
	ret = -EINVAL;
	if (env->mountpoint && path_within(canon, env->mountpoint)) {
		vd_err("mirror: target %s is inside this vdiskfs mount (%s)", o->target,
		       env->mountpoint);
		goto out;
	}
	if (!realpath(dir, realdir)) {
		ret = -errno;
		vd_err("mirror: directory of target %s: %s", o->target, strerror(errno));
		goto out;
	}
	real = g_build_filename(realdir, base, NULL);
	ret = target_check_mount(o->target, real, realdir, env);
	if (ret)
		goto out;

	exists = lstat(real, &st) == 0;
	if (exists) {
		for (struct vd_image *i = src; i; i = i->backing) {
			if (i->dev == st.st_dev && i->ino == st.st_ino) {
				vd_err("mirror: target %s is %s", o->target,
				       i == src ? "the source itself"
						: "a file of the source's backing chain");
				ret = -EINVAL;
				goto out;
			}
		}
	}
	/* The destination is the file named, never where a link points: a link
	 * planted at the target path must not redirect the copy (with or without
	 * existing=1). Links among the target's directories are followed. */
	if (exists && S_ISLNK(st.st_mode)) {
		vd_err("mirror: target %s is a symbolic link: refused (name the file itself)",
		       o->target);
		ret = -EINVAL;
		goto out;
	}
	if (exists && !o->existing) {
		vd_err("mirror: target %s exists (use existing=1 to write over an existing image)",
		       o->target);
		ret = -EEXIST;
		goto out;
	}
	if (!exists && o->existing) {
		vd_err("mirror: target %s does not exist (existing=1)", o->target);
		ret = -ENOENT;
		goto out;
	}
	if (exists && !S_ISREG(st.st_mode)) {
		vd_err("mirror: target %s is not a regular file", o->target);
		ret = -EINVAL;
		goto out;
	}
	if (o->format) {
		fmt = vd_format_by_name(o->format);
	} else if (!exists) {
		fmt = src->fmt;
	}
	if (o->format && !fmt) {
		vd_err("mirror: unknown format %s", o->format);
		ret = -EINVAL;
		goto out;
	}
	if (fmt && (!fmt->open || (!exists && !fmt->create))) {
		vd_err("mirror: the %s driver cannot %s images yet", fmt->name,
		       exists ? "open" : "create");
		ret = -ENOTSUP;
		goto out;
	}

	if (fstat(src->fd, &sst) < 0) {
		ret = -errno;
		goto out;
	}
	if (!exists) {
		struct vd_create_opts co = {
			.size = src->size,
			/* Block sizes carry over only within a format (a qcow2
			 * cluster is no vhdx block size). */
			.cluster_size = fmt == src->fmt ? src->cluster_size : 0,
			/* Born with the source's permissions: a private disk's
			 * copy must not be readable by others even for a moment. */
			.mode = sst.st_mode & 0777,
		};

		ret = fmt->create(real, &co);
		if (ret) {
			vd_err("mirror: cannot create %s image %s: %s", fmt->name, o->target,
			       strerror(-ret));
			goto out;
		}
		created = true;
	}

	oo = *env->open;
	oo.read_only = false;
	oo.format = fmt ? fmt->name : NULL;
	oo.raw_by_default = true;
	oo.nofollow = true; /* no link slipped in since the checks above */
	if (created)
		oo.backing = VD_BACKING_DENY;
	ret = image_open(real, &oo, &dst);
	if (ret) {
		vd_err("mirror: cannot open target %s: %s", o->target, strerror(-ret));
		goto out_unlink;
	}
	/* And the source's owner where we may give it (root), so that the view
	 * keeps its owner after complete. */
	if (created && fchown(dst->fd, sst.st_uid, sst.st_gid) < 0 && errno != EPERM)
		vd_warn("mirror: cannot give %s the source's owner: %s", o->target, strerror(errno));
	if (dst->read_only) {
		vd_err("mirror: target %s can only be opened read-only", o->target);
		ret = -EROFS;
		goto out_close;
	}
	if (atomic_load(&dst->refs) > 1) {
		vd_err("mirror: target %s is in use by another view or chain", o->target);
		ret = -EBUSY;
		goto out_close;
	}
	if (dst->size < src->size) {
		vd_err("mirror: target %s is smaller (%llu bytes) than the source (%llu bytes)",
		       o->target, (unsigned long long)dst->size, (unsigned long long)src->size);
		ret = -ENOSPC;
		goto out_close;
	}
	job->dst = dst;
	job->target = g_strdup(real);
	job->dst_zero = created;
	ret = 0;
	goto out;

out_close:
	image_unref(dst);
out_unlink:
	if (created)
		unlink(real);
out:
	g_free(real);
	g_free(base);
	g_free(dir);
	g_free(canon);
	return ret;
}
