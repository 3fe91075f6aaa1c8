/* The backing chain while images are open: block status through it (whole,
 * or down to a base), and the live changes the snapshot, stream and commit
 * jobs make: an overlay created over an open image, a backing link
 * rewritten, an image reopened read-write or read-only in place. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/image-int.h"
#include "io/sync-io.h"
#include "util/log.h"

/* ---- block status through the chain ---- */

/* One run from off (inside img, len clipped to it) of the layers from img
 * down to base, base excluded: UNALLOC where none of them allocates it.
 * Each layer's active_lock is held for reading while its backing pointer is
 * followed, so image_set_backing() cannot free what the walk is in. */
static int status_above(struct vd_image *img, struct vd_image *base, uint64_t off, uint64_t len,
			uint64_t *pnum, enum vd_bs *status)
{
	struct vd_image *b;
	int ret = 0;

	if (img == base) {
		*pnum = len;
		*status = VD_BS_UNALLOC;
		return 0;
	}
	pthread_rwlock_rdlock(&img->active_lock);
	if (atomic_load(&img->inactive)) {
		/* Nothing known while another host may write: all of it may be data. */
		*pnum = len;
		*status = VD_BS_DATA;
	} else {
		ret = img->fmt->block_status(img, off, len, pnum, status);
		if (!ret && (*pnum == 0 || *pnum > len)) {
			image_mark_broken(img, "format driver returned an invalid block status");
			ret = -EIO;
		}
	}
	b = img->backing;
	if (ret || *status != VD_BS_UNALLOC || !b || b == base)
		goto out;
	if (off >= b->size)
		*status = VD_BS_ZERO; /* zeroes here, whatever lies further down */
	else
		ret = status_above(b, base, off, MIN(*pnum, b->size - off), pnum, status);
out:
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

int image_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       enum vd_bs *status)
{
	int ret;

	if (off >= img->size)
		return -EINVAL;
	ret = status_above(img, NULL, off, MIN(len, img->size - off), pnum, status);
	if (!ret && *status == VD_BS_UNALLOC)
		*status = VD_BS_ZERO; /* no backing image: zeroes */
	return ret;
}

/* Is img top or below it? The chain must not change meanwhile (the callers
 * set up jobs that hold the requests of the images they relink). */
static bool chain_has(struct vd_image *top, struct vd_image *img)
{
	for (struct vd_image *b = top; b; b = b->backing)
		if (b == img)
			return true;
	return false;
}

int image_block_status_above(struct vd_image *top, struct vd_image *base, uint64_t off,
			     uint64_t len, uint64_t *pnum, enum vd_bs *status)
{
	if (off >= top->size || (base && !chain_has(top, base)))
		return -EINVAL;
	return status_above(top, base, off, MIN(len, top->size - off), pnum, status);
}

struct vd_image *image_chain_find(struct vd_image *top, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return NULL;
	for (struct vd_image *b = top; b; b = b->backing)
		if (b->dev == st.st_dev && b->ino == st.st_ino)
			return b;
	return NULL;
}

char *image_backing_path(struct vd_image *img)
{
	char *p;

	pthread_rwlock_rdlock(&img->active_lock);
	p = img->backing ? g_strdup(img->backing->path) : NULL;
	pthread_rwlock_unlock(&img->active_lock);
	return p;
}

/* ---- snapshot: a new overlay ---- */

/* fdatasync of the directory that holds path: its new or removed entry. */
static int sync_dir_of(const char *path)
{
	char *copy = g_strdup(path);
	int fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC), ret;

	ret = fd < 0 ? -errno : meta_fdatasync(fd);
	if (fd >= 0)
		close(fd);
	g_free(copy);
	return ret;
}

int image_create_overlay(struct vd_image *base, const char *path, unsigned mode,
			 struct vd_image **out)
{
	struct vd_create_opts co = {.size = base->size,
				    .backing = base->path,
				    .backing_fmt = base->fmt->name,
				    .mode = mode};
	struct vd_open_opts o = base->saved_opts;
	int ret;

	if (path[0] != '/') {
		vd_err("%s: not created: an overlay needs an absolute path", path);
		return -EINVAL;
	}
	if (atomic_load(&base->inactive)) {
		vd_err("%s: no overlay created: the image is inactive", base->path);
		return -EBUSY;
	}
	/* What the guest wrote so far lies below the overlay's fsync from now on. */
	ret = base->writable ? image_flush_sync(base) : 0;
	if (ret) {
		vd_err("%s: no overlay created: cannot flush the image: %s", base->path,
		       strerror(-ret));
		return ret;
	}
	ret = vd_format_qcow2.create(path, &co); /* written and synced, or removed */
	if (ret)
		return ret;
	ret = sync_dir_of(path);
	if (ret) {
		vd_err("%s: cannot sync its directory: %s", path, strerror(-ret));
		goto out_remove;
	}
	o.read_only = false;
	o.format = vd_format_qcow2.name;
	o.nofollow = false;
	o.force_share = false;
	o.raw_by_default = false;
	ret = image_open_over(path, &o, base, out);
	if (!ret) {
		vd_info("%s: snapshot: new overlay %s takes the writes", base->path, path);
		return 0;
	}
out_remove:
	unlink(path);
	sync_dir_of(path);
	return ret;
}

/* ---- stream and commit: a new backing link ---- */

int image_set_backing(struct vd_image *img, struct vd_image *nb)
{
	const char *name = nb ? nb->path : NULL, *fmt = nb ? nb->fmt->name : NULL;
	char *nname = NULL, *nfmt = NULL;
	struct vd_image *old = NULL;
	int ret = 0;

	if (nb && chain_has(nb, img)) {
		vd_err("%s: backing file not changed: %s is the image or has it in its chain",
		       img->path, nb->path);
		return -EINVAL;
	}
	if (!img->fmt->set_backing) {
		vd_err("%s: backing file not changed: not supported for %s images", img->path,
		       img->fmt->name);
		return -ENOTSUP;
	}
	if (img->read_only) {
		vd_err("%s: backing file not changed: the image is read-only", img->path);
		return -EROFS;
	}
	if (nb && (!(nname = strdup(name)) || !(nfmt = strdup(fmt)))) {
		free(nname);
		return -ENOMEM;
	}
	pthread_rwlock_wrlock(&img->active_lock);
	if (atomic_load(&img->inactive)) {
		vd_err("%s: backing file not changed: the image is inactive", img->path);
		ret = -EBUSY;
	} else {
		ret = img->fmt->set_backing(img, name, fmt);
	}
	if (!ret) {
		for (int i = 0; i < VD_BACKING_MAX_NAMES; i++) {
			free(img->backing_names[i]);
			img->backing_names[i] = NULL;
		}
		free(img->backing_fmt);
		img->backing_names[0] = nname;
		img->backing_fmt = nfmt;
		nname = nfmt = NULL;
		old = img->backing;
		if (nb)
			image_ref(nb);
		img->backing = nb;
	}
	pthread_rwlock_unlock(&img->active_lock);
	free(nname);
	free(nfmt);
	if (ret)
		return ret;
	vd_info("%s: backing file now %s (was %s)", img->path, name ? name : "none",
		old ? old->path : "none");
	image_unref(old);
	return 0;
}

/* ---- commit: reopened in another mode ---- */

/* The new descriptions (fd and its O_DIRECT twin) of img's file, opened
 * through /proc/self/fd (the very file, wherever its name now leads), and
 * dups of the old ones to go back to. */
struct reopen {
	int fd, dio, keep_fd, keep_dio;
	bool from_ro; /* the old description is read-only (and locked so) */
};

static int reopen_files(struct vd_image *img, bool writable, struct reopen *r)
{
	int flags = writable ? O_RDWR : O_RDONLY;
	char proc[40];
	int ret;

	snprintf(proc, sizeof(proc), "/proc/self/fd/%d", img->fd);
	r->from_ro = (fcntl(img->fd, F_GETFL) & O_ACCMODE) == O_RDONLY;
	ret = image_fd_budget(img->path);
	if (ret)
		return ret;
	r->fd = image_open_same(img, proc, flags, 0);
	if (r->fd < 0)
		return r->fd;
	if (img->dio_fd >= 0) {
		r->dio = image_open_same(img, proc, flags | O_DIRECT, 0);
		if (r->dio < 0)
			return r->dio;
		r->keep_dio = dup(img->dio_fd);
		if (r->keep_dio < 0)
			return -errno;
	}
	r->keep_fd = dup(img->fd);
	return r->keep_fd < 0 ? -errno : 0;
}

static void reopen_close(struct reopen *r)
{
	int *fds[] = {&r->fd, &r->dio, &r->keep_fd, &r->keep_dio};

	for (unsigned i = 0; i < G_N_ELEMENTS(fds); i++) {
		if (*fds[i] >= 0)
			close(*fds[i]);
		*fds[i] = -1;
	}
}

/* Put the descriptions of from (fd, dio) behind img's descriptor numbers. */
static void reopen_swap(struct vd_image *img, int fd, int dio)
{
	dup3(fd, img->fd, O_CLOEXEC);
	if (dio >= 0)
		dup3(dio, img->dio_fd, O_CLOEXEC);
}

/* The driver could not open the file in the new mode: the old descriptions,
 * their locks and the driver as it was. If even that fails, the image is
 * left inactive (requests fail with EIO, metadata calls see all data). */
static void reopen_back(struct vd_image *img, struct reopen *r, bool was_ro, bool was_writable)
{
	int ret;

	image_unlock_fd(img->fd);
	reopen_swap(img, r->keep_fd, r->keep_dio);
	image_lock_restore(img->fd, r->from_ro, img->saved_opts.force_share);
	img->read_only = !was_writable;
	ret = image_driver_open(img, &img->saved_opts);
	img->read_only = img->read_only || was_ro;
	if (!ret)
		return;
	image_mark_broken(img, "the driver could not be opened again after a failed reopen");
	atomic_store(&img->inactive, true);
}

int image_reopen(struct vd_image *img, bool writable)
{
	struct reopen r = {.fd = -1, .dio = -1, .keep_fd = -1, .keep_dio = -1};
	bool was_ro = img->read_only, was_writable = img->writable;
	const char *mode = writable ? "read-write" : "read-only";
	int ret = 0;

	pthread_rwlock_wrlock(&img->active_lock);
	if (atomic_load(&img->inactive)) {
		vd_err("%s: not reopened %s: the image is inactive", img->path, mode);
		ret = -EBUSY;
		goto out;
	}
	if (writable == img->writable) {
		/* Open that way already; a demoted image takes writes again. */
		if (img->read_only == writable)
			vd_info("%s: %s again", img->path, mode);
		img->read_only = !writable;
		goto out;
	}
	ret = reopen_files(img, writable, &r);
	if (ret) {
		vd_err("%s: not reopened %s: %s", img->path, mode, strerror(-ret));
		goto out;
	}
	ret = image_lock_move(img->fd, r.fd, img->path, r.from_ro, !writable,
			      img->saved_opts.force_share);
	if (ret)
		goto out;
	ret = image_driver_close(img);
	if (ret) {
		vd_err("%s: not reopened %s: cannot write the image back: %s", img->path, mode,
		       strerror(-ret));
		image_unlock_fd(r.fd);
		image_lock_restore(img->fd, r.from_ro, img->saved_opts.force_share);
		goto out;
	}
	reopen_swap(img, r.fd, r.dio);
	img->read_only = !writable;
	ret = image_driver_open(img, &img->saved_opts);
	if (!ret && writable && img->read_only) {
		image_driver_close(img); /* the driver refused writing (logged); writes nothing */
		ret = -EROFS;
	}
	if (ret) {
		vd_err("%s: not reopened %s: the driver could not open it so (%s); it stays as "
		       "it was",
		       img->path, mode, strerror(-ret));
		reopen_back(img, &r, was_ro, was_writable);
		goto out;
	}
	vd_info("%s: reopened %s", img->path, mode);
out:
	reopen_close(&r);
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}
