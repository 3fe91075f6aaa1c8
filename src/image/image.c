/* Opening images: probing the format, the driver's open, and the backing
 * chain (resolution relative to the image, the backing policy, the depth limit
 * and loop detection). Images are shared by (device, inode): a file that is
 * another open image's backing file is one image, served read-only. */
#include <errno.h>
#include <inttypes.h>
#include <glib.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <linux/openat2.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "image/image-int.h"
#include "util/json.h"
#include "util/log.h"
#include "util/path.h"
#include "io/sync-io.h"

/* The registry of open images by (dev, ino): registry, registry_n,
 * registry_cap. Held from registry_find() through the image_ref() (and a
 * demotion to read-only) or the image_lock() that follows, and in
 * image_unref() across the last reference's drop and registry_del(), so a
 * lookup never revives an image being closed. A leaf: nothing else is
 * locked under it (image_lock()'s fcntl() calls do not wait).
 * image_open_chain() drops it between registry_find() and registry_add(),
 * because in between the driver opens the file (disk I/O, perhaps a refcount
 * rebuild) and the backing chain is opened, which takes this lock itself:
 * holding it would stall every open and close behind one open, and deadlock
 * on the recursion. Two opens of one file racing in that window both miss;
 * the QEMU-protocol locks the first took under this lock then refuse the
 * second (EBUSY) unless both only read, and two read-only images of one file
 * write nothing (on a file system without those locks, nothing stops two
 * writers). */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct vd_image **registry;
static size_t registry_n, registry_cap;

/* Descriptors the open images hold (fd and O_DIRECT twin). An image is not
 * opened when that would leave fewer than VD_FD_RESERVE of RLIMIT_NOFILE for
 * the rest of the daemon (rings, /dev/fuse, mirror jobs, directory scans):
 * one image too many is refused with EMFILE instead of starving the daemon. */
#define VD_FD_RESERVE 128
static atomic_uint image_nfds;

int image_fd_budget(const char *path)
{
	unsigned n = atomic_load(&image_nfds);
	struct rlimit rl;

	if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur == RLIM_INFINITY ||
	    n + 2 + VD_FD_RESERVE <= rl.rlim_cur)
		return 0;
	vd_err("%s: cannot open: open images already hold %u of the %llu file descriptors this "
	       "process may have (%d are kept for the rest); raise the limit (ulimit -n, "
	       "LimitNOFILE=)",
	       path, n, (unsigned long long)rl.rlim_cur, VD_FD_RESERVE);
	return -EMFILE;
}

static struct vd_image *registry_find(dev_t dev, ino_t ino)
{
	for (size_t i = 0; i < registry_n; i++)
		if (registry[i]->dev == dev && registry[i]->ino == ino)
			return registry[i];
	return NULL;
}

static int registry_add(struct vd_image *img)
{
	if (registry_n == registry_cap) {
		size_t cap = registry_cap ? registry_cap * 2 : 16;
		struct vd_image **n = realloc(registry, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		registry = n;
		registry_cap = cap;
	}
	registry[registry_n++] = img;
	return 0;
}

static void registry_del(struct vd_image *img)
{
	for (size_t i = 0; i < registry_n; i++) {
		if (registry[i] == img) {
			registry[i] = registry[--registry_n];
			return;
		}
	}
}

const struct vd_format *image_probe(int fd, const char *path, bool raw_by_default)
{
	uint8_t buf[4096];
	const struct vd_format *best = NULL;
	int best_score = 0;
	ssize_t n = pread(fd, buf, sizeof(buf), 0);

	if (n < 0)
		return NULL;
	for (int i = 0; vd_formats[i]; i++) {
		int score = vd_formats[i]->probe(buf, n, path);
		if (score > best_score) {
			best = vd_formats[i];
			best_score = score;
		}
	}
	if (!best && raw_by_default)
		best = &vd_format_raw;
	return best;
}

uint64_t image_allocated(struct vd_image *img)
{
	struct stat st;
	uint64_t bytes;
	int ret = -ENOTSUP;

	pthread_rwlock_rdlock(&img->active_lock);
	if (img->fmt->allocated && !atomic_load(&img->inactive))
		ret = img->fmt->allocated(img, &bytes);
	pthread_rwlock_unlock(&img->active_lock);
	if (!ret)
		return bytes;
	if (fstat(img->fd, &st) < 0)
		return 0;
	return (uint64_t)st.st_blocks * 512;
}

void image_mark_broken(struct vd_image *img, const char *why)
{
	bool was = atomic_exchange(&img->broken, true);

	if (!was)
		vd_err("%s: %s; further I/O to this image fails with EIO", img->path, why);
}

static void image_free(struct vd_image *img)
{
	for (int i = 0; i < VD_BACKING_MAX_NAMES; i++)
		free(img->backing_names[i]);
	free(img->backing_fmt);
	free((char *)img->saved_opts.within);
	free((char *)img->saved_opts.vhdx_parent);
	if (img->fd >= 0) {
		/* Unlock explicitly: io_uring may hold the file a little longer than
		 * the fd, and the lock lives as long as the file does. */
		image_unlock_fd(img->fd);
		close(img->fd);
		atomic_fetch_sub(&image_nfds, 1);
	}
	if (img->dio_fd >= 0) {
		close(img->dio_fd);
		atomic_fetch_sub(&image_nfds, 1);
	}
	pthread_mutex_destroy(&img->sync_lock);
	pthread_rwlock_destroy(&img->active_lock);
	free(img->path);
	free(img);
}

/* The O_DIRECT alignment the file system asks for (statx, Linux 6.1+), so
 * that sector-aligned guest I/O takes the O_DIRECT twin: an I/O aligned to
 * 512 but not 4096 used to go through the page cache, and a buffered write
 * in flight on a page while an O_DIRECT write covers it makes the kernel's
 * page cache invalidation fail, which it reports as EIO at the next
 * fdatasync ("Page cache invalidation failure on direct I/O"). */
static void image_dio_align(struct vd_image *img)
{
	struct statx sx;

	img->dio_align = img->dio_mem_align = 4096;
	if (statx(img->dio_fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &sx) < 0 ||
	    !(sx.stx_mask & STATX_DIOALIGN) || !sx.stx_dio_offset_align)
		return;
	if (sx.stx_dio_offset_align <= 4096 && !(sx.stx_dio_offset_align & 511))
		img->dio_align = sx.stx_dio_offset_align;
	if (sx.stx_dio_mem_align && sx.stx_dio_mem_align <= 4096)
		img->dio_mem_align = sx.stx_dio_mem_align;
}

int image_flush_sync(struct vd_image *img)
{
	int ret = img->fmt->flush ? img->fmt->flush(img) : 0;

	return ret ? ret : meta_fdatasync(img->fd);
}

/* An image open for writing just became another image's backing file: what
 * its writes left dirty is made durable now, before the overlay reads it as a
 * base. Writes still in flight link their metadata later; fsync and close
 * write that back too (img->writable stays set). */
static void image_flush_demoted(struct vd_image *img)
{
	int ret = image_flush_sync(img);

	if (ret)
		vd_err("%s: cannot flush it before serving it read-only: %s (fsync and close "
		       "try again)",
		       img->path, strerror(-ret));
}

/* Under registry_lock: serve a writable image read-only from now on, as
 * another image's backing file; true if it was not already. */
static bool image_demote_locked(struct vd_image *img)
{
	if (img->read_only)
		return false;
	vd_warn("%s: is the backing file of another image: now served read-only", img->path);
	img->read_only = true;
	return true;
}

void image_demote(struct vd_image *img)
{
	bool demoted;

	pthread_mutex_lock(&registry_lock);
	demoted = image_demote_locked(img);
	pthread_mutex_unlock(&registry_lock);
	if (demoted)
		image_flush_demoted(img);
}

struct open_chain {
	const char *top; /* the image asked for, for messages */
	/* image_open_over(): this backing file is demoted by the caller once
	 * the whole open succeeded, not when it is found */
	struct vd_image *keep;
	dev_t dev[VD_BACKING_MAX_DEPTH + 1];
	ino_t ino[VD_BACKING_MAX_DEPTH + 1];
	int n;
};

static int image_open_chain(const char *path, const char *real, const struct vd_open_opts *o,
			    bool read_only, const char *force_fmt, struct open_chain *chain,
			    struct vd_image **out);

/* Resolve a backing name as the format stores it: relative to the image. */
static char *backing_resolve(struct vd_image *img, const char *name)
{
	char *dir, *copy, *res;

	if (name[0] == '/')
		return strdup(name);
	copy = strdup(img->path);
	if (!copy)
		return NULL;
	dir = dirname(copy);
	res = g_strdup_printf("%s/%s", dir, name);
	free(copy);
	return res;
}

/* May img open path, its backing file (or what else it names)? Under
 * backing=within-source, *real is then its resolved path (free it), which is
 * what gets opened. */
static int backing_allowed(struct vd_image *img, const char *path, const char *what,
			   const struct vd_open_opts *o, char **real)
{
	char r[PATH_MAX], within[PATH_MAX];

	*real = NULL;
	if (o->backing == VD_BACKING_DENY) {
		vd_err("%s: %s %s refused by backing=deny", img->path, what, path);
		return -EPERM;
	}
	if (o->backing != VD_BACKING_WITHIN_SOURCE)
		return 0;
	if (!realpath(path, r))
		return -errno;
	if (!o->within || !realpath(o->within, within))
		return -EPERM;
	if (!path_within(r, within)) {
		vd_err("%s: %s %s resolves to %s, outside %s: refused by "
		       "backing=within-source",
		       img->path, what, path, r, within);
		return -EPERM;
	}
	*real = strdup(r);
	return *real ? 0 : -ENOMEM;
}

static int image_open_backing(struct vd_image *img, const struct vd_open_opts *o,
			      struct open_chain *chain)
{
	int ret = -ENOENT;

	if (!img->backing_names[0])
		return 0;
	if (chain->n > VD_BACKING_MAX_DEPTH) {
		vd_err("%s: backing chain deeper than the limit of %d backing files: %s, at level "
		       "%d, names one more",
		       chain->top, VD_BACKING_MAX_DEPTH, img->path, chain->n - 1);
		return -ELOOP;
	}
	for (int i = 0; i < VD_BACKING_MAX_NAMES && img->backing_names[i]; i++) {
		char *path = backing_resolve(img, img->backing_names[i]), *real = NULL;
		struct vd_image *b = NULL;

		if (!path)
			return -ENOMEM;
		if (access(path, F_OK) < 0) {
			ret = -errno;
			g_free(path);
			continue;
		}
		ret = backing_allowed(img, path, "backing file", o, &real);
		if (!ret)
			ret = image_open_chain(path, real, o, true, img->backing_fmt, chain, &b);
		free(real);
		g_free(path);
		if (ret == -ELOOP || ret == -EPERM)
			return ret;
		if (ret)
			continue;
		if (img->fmt->check_backing) {
			ret = img->fmt->check_backing(img, b);
			if (ret) {
				image_unref(b);
				continue;
			}
		}
		img->backing = b;
		return 0;
	}
	vd_err("%s: cannot open backing file %s: %s", img->path, img->backing_names[0],
	       strerror(-ret));
	return ret;
}

/* Open an image file: never blocking (a FIFO named as an image must not hang
 * the daemon), never anything but a regular file. resolve is 0, or
 * RESOLVE_NO_SYMLINKS for a path already resolved and checked, which must not
 * be redirected through a symbolic link planted since. Returns the fd or
 * -errno. */
int image_open_file(const char *path, int flags, uint64_t resolve)
{
	struct open_how how = {.flags = flags | O_CLOEXEC | O_NOCTTY | O_NONBLOCK,
			       .resolve = resolve};
	struct stat st;
	int fd, ret;

	/* Not even opened if it is no regular file: a device must not see an open. */
	if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
		return S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
	fd = -1;
	if (resolve) {
		fd = syscall(SYS_openat2, AT_FDCWD, path, &how, sizeof(how));
		if (fd < 0 && errno == ENOSYS)
			how.flags |= O_NOFOLLOW; /* before Linux 5.6: the last component only */
	}
	if (fd < 0 && (!resolve || errno == ENOSYS))
		fd = open(path, how.flags);
	if (fd < 0)
		return -errno;
	if (fstat(fd, &st) < 0)
		st.st_mode = 0;
	if (!S_ISREG(st.st_mode)) {
		ret = S_ISDIR(st.st_mode) ? -EISDIR : -EINVAL;
		close(fd);
		return ret;
	}
	if (fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) & ~O_NONBLOCK) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	return fd;
}

int image_open_aux_file(struct vd_image *img, const char *name, const char *what, int flags,
			bool *read_only)
{
	const struct vd_open_opts *o = img->opts;
	char *path = backing_resolve(img, name), *real = NULL;
	bool ro = flags == O_RDONLY;
	/* opening inactive (not activating): another host may hold the file */
	bool unlocked = o->inactive && !img->depth && !atomic_load(&img->inactive);
	struct stat st;
	int fd, ret;

	if (!path)
		return -ENOMEM;
	ret = backing_allowed(img, path, what, o, &real);
	if (!ret)
		ret = image_fd_budget(path);
	if (ret)
		goto out;
	fd = image_open_file(real ? real : path, flags, real ? RESOLVE_NO_SYMLINKS : 0);
	if (fd == -EROFS && !ro) {
		ro = true;
		fd = image_open_file(real ? real : path, O_RDONLY, real ? RESOLVE_NO_SYMLINKS : 0);
	}
	if (fd < 0) {
		ret = fd;
		vd_err("%s: cannot open its %s %s: %s", img->path, what, path,
		       ret == -ELOOP && real ? "it now goes through a symbolic link"
					     : strerror(-ret));
		goto out;
	}
	if (fstat(fd, &st) < 0 || (st.st_dev == img->dev && st.st_ino == img->ino)) {
		ret = -EINVAL;
		vd_err("%s: its %s %s is the image itself", img->path, what, path);
		close(fd);
		goto out;
	}
	ret = unlocked ? 0 : image_lock(fd, path, ro, o->force_share, true);
	if (ret) {
		close(fd);
		goto out;
	}
	atomic_fetch_add(&image_nfds, 1);
	if (ro && flags != O_RDONLY) {
		vd_warn("%s: its %s %s is on a read-only file system: serving the image read-only",
			img->path, what, path);
		*read_only = true;
	}
	ret = fd;
out:
	free(real);
	g_free(path);
	return ret;
}

void image_close_aux_file(int fd)
{
	if (fd < 0)
		return;
	image_unlock_fd(fd); /* see image_free() */
	close(fd);
	atomic_fetch_sub(&image_nfds, 1);
}

/* The driver closed, what it read at open forgotten (it reads it again). */
static void image_forget_driver(struct vd_image *img)
{
	for (int i = 0; i < VD_BACKING_MAX_NAMES; i++) {
		free(img->backing_names[i]);
		img->backing_names[i] = NULL;
	}
	free(img->backing_fmt);
	img->backing_fmt = NULL;
	img->priv = NULL;
}

/* Open the file of one chain member (step 1 of image_open_chain()): within
 * the fd budget, read-write unless read-only or the file system is, and not
 * an image already in the chain. Each refusal is logged. Returns the fd (its
 * stat in *st; *read_only set when it fell back) or -errno. */
static int image_open_fd(const char *path, const char *real, const char *opath, uint64_t resolve,
			 bool top_nofollow, struct open_chain *chain, bool *read_only,
			 struct stat *st)
{
	int fd, ret = image_fd_budget(path);

	if (ret)
		return ret;
	fd = image_open_file(opath, *read_only ? O_RDONLY : O_RDWR, resolve);
	if (fd == -EROFS && !*read_only) {
		*read_only = true;
		fd = image_open_file(opath, O_RDONLY, resolve);
	}
	if (fd < 0) {
		if (fd == -ELOOP && real) {
			vd_err("%s: backing file %s now goes through a symbolic link (it resolved "
			       "to %s): refused by backing=within-source",
			       chain->top, path, real);
			return -EPERM;
		}
		if (fd == -ELOOP && top_nofollow)
			vd_err("%s: is or goes through a symbolic link: refused", path);
		else if (fd == -EINVAL)
			vd_err("%s: not a regular file", path);
		else
			vd_err("%s: cannot open: %s", path, strerror(-fd));
		return fd;
	}
	if (fstat(fd, st) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	for (int i = 0; i < chain->n; i++) {
		if (chain->dev[i] == st->st_dev && chain->ino[i] == st->st_ino) {
			vd_err("%s: backing chain loops back to an image already in it", path);
			close(fd);
			return -ELOOP;
		}
	}
	return fd;
}

/* Step 2: an image this daemon has open already is shared (one set of
 * caches and tickets per file), not deeper than it could be opened alone; a
 * writable one that becomes a backing file is served read-only from now on.
 * Otherwise the file gets QEMU's locks for the way we open it. Returns 1 with
 * *out referenced (fd closed), 0 (fd locked, ours to use), or -errno (fd
 * closed). The registry lock is not held while the caller opens the driver
 * (which reads the file): a second open of the same new file meanwhile does
 * not find it and opens it on its own, which QEMU's locks taken here refuse
 * when either side writes; two readers just do not share. */
static int image_share(int fd, const char *path, const struct vd_open_opts *o,
		       const struct open_chain *chain, bool read_only, const struct stat *st,
		       struct vd_image **out)
{
	struct vd_image *found;
	bool demote;
	int len = 0, ret;

	pthread_mutex_lock(&registry_lock);
	found = registry_find(st->st_dev, st->st_ino);
	if (!found) {
		/* An image opened inactive holds no lock until it is activated. */
		ret = o->inactive && !chain->n
			      ? 0
			      : image_lock(fd, path, read_only, o->force_share, false);
		pthread_mutex_unlock(&registry_lock);
		if (ret)
			close(fd);
		return ret;
	}
	for (struct vd_image *b = found; b->backing; b = b->backing)
		len++;
	if (chain->n + len > VD_BACKING_MAX_DEPTH) {
		pthread_mutex_unlock(&registry_lock);
		close(fd);
		vd_err("%s: backing chain deeper than the limit of %d backing files: %s, "
		       "at level %d, has %d more",
		       chain->top, VD_BACKING_MAX_DEPTH, path, chain->n, len);
		return -ELOOP;
	}
	image_ref(found);
	demote = chain->n && found != chain->keep && image_demote_locked(found);
	pthread_mutex_unlock(&registry_lock);
	close(fd);
	if (demote)
		image_flush_demoted(found);
	*out = found;
	return 1;
}

/* With cache=none, data bypasses the host page cache where the file system
 * allows it, through a second, O_DIRECT descriptor that must be the very file
 * img->fd is. Without one, data goes through the page cache. */
int image_open_same(struct vd_image *img, const char *opath, int flags, uint64_t resolve)
{
	struct stat st;
	int fd = image_open_file(opath, flags, resolve);

	if (fd >= 0 && (fstat(fd, &st) < 0 || st.st_dev != img->dev || st.st_ino != img->ino)) {
		close(fd);
		fd = -EXDEV;
	}
	return fd;
}

static void image_open_dio_twin(struct vd_image *img, const char *opath, uint64_t resolve)
{
	int dfd = image_open_same(img, opath, (img->read_only ? O_RDONLY : O_RDWR) | O_DIRECT,
				  resolve);

	if (dfd < 0) {
		vd_debug("%s: no O_DIRECT (%s): data goes through the page cache", img->path,
			 strerror(-dfd));
		return;
	}
	img->dio_fd = dfd;
	atomic_fetch_add(&image_nfds, 1);
	image_dio_align(img);
}

/* Step 3: the driver, named (format=) or probed. */
static int image_pick_format(struct vd_image *img, const char *force_fmt, bool raw_by_default)
{
	if (force_fmt) {
		img->fmt = vd_format_by_name(force_fmt);
		if (!img->fmt) {
			vd_err("%s: unknown format \"%s\"", img->path, force_fmt);
			return -EINVAL;
		}
	} else {
		img->fmt = image_probe(img->fd, img->path, raw_by_default);
		if (!img->fmt) {
			vd_err("%s: not a qcow2, vhdx or raw image", img->path);
			return -EMEDIUMTYPE;
		}
	}
	if (!img->fmt->open) {
		vd_err("%s: the %s driver is not available", img->path, img->fmt->name);
		return -ENOTSUP;
	}
	return 0;
}

/* Open path (or real, its checked resolved path, without following links;
 * o->nofollow: path itself is resolved already, follow no link in it): the
 * file, a share of an image already open, or a new image with its driver and
 * its backing chain, registered. */
static int image_open_chain(const char *path, const char *real, const struct vd_open_opts *o,
			    bool read_only, const char *force_fmt, struct open_chain *chain,
			    struct vd_image **out)
{
	struct vd_image *img;
	const char *opath = real ? real : path;
	bool top_nofollow = !chain->n && o->nofollow;
	uint64_t resolve = real || top_nofollow ? RESOLVE_NO_SYMLINKS : 0;
	bool inactive = o->inactive && !chain->n;
	struct stat st;
	int fd, ret;

	fd = image_open_fd(path, real, opath, resolve, top_nofollow, chain, &read_only, &st);
	if (fd < 0)
		return fd;
	ret = image_share(fd, path, o, chain, read_only, &st, out);
	if (ret)
		return ret < 0 ? ret : 0;

	img = calloc(1, sizeof(*img));
	if (!img) {
		close(fd);
		return -ENOMEM;
	}
	img->fd = fd;
	atomic_fetch_add(&image_nfds, 1);
	img->dio_fd = -1;
	img->path = strdup(path);
	img->name = strrchr(img->path, '/') ? strrchr(img->path, '/') + 1 : img->path;
	img->dev = st.st_dev;
	img->ino = st.st_ino;
	img->read_only = read_only;
	img->depth = chain->n;
	img->zero_align = 512;
	img->saved_opts = *o;
	img->saved_opts.format = NULL;
	img->saved_opts.inactive = false;
	img->saved_opts.within = o->within ? strdup(o->within) : NULL;
	img->saved_opts.vhdx_parent = o->vhdx_parent ? strdup(o->vhdx_parent) : NULL;
	atomic_init(&img->refs, 1);
	pthread_mutex_init(&img->sync_lock, NULL);
	pthread_rwlock_init(&img->active_lock, NULL);
	if (o->cache_direct)
		image_open_dio_twin(img, opath, resolve);

	ret = -ENOMEM;
	if ((o->within && !img->saved_opts.within) ||
	    (o->vhdx_parent && !img->saved_opts.vhdx_parent))
		goto out_free;
	ret = image_pick_format(img, force_fmt, chain->n > 0 || o->raw_by_default);
	if (ret)
		goto out_free;
	/* Opened inactive, the driver only reads (the size, the backing file):
	 * another host may be writing the image. */
	if (inactive)
		img->read_only = true;
	img->opts = o;
	ret = img->fmt->open(img);
	if (ret)
		goto out_free;
	img->writable = !img->read_only;

	chain->dev[chain->n] = st.st_dev;
	chain->ino[chain->n] = st.st_ino;
	chain->n++;
	ret = image_open_backing(img, o, chain);
	chain->n--;
	if (ret)
		goto out_close;
	img->opts = NULL;

	if (inactive) {
		img->fmt->close(img); /* read-only: writes nothing */
		image_forget_driver(img);
		img->read_only = read_only;
		img->writable = false;
		atomic_store(&img->inactive, true);
	}

	pthread_mutex_lock(&registry_lock);
	ret = registry_add(img);
	pthread_mutex_unlock(&registry_lock);
	if (ret)
		goto out_close;
	*out = img;
	return 0;

out_close:
	if (img->backing)
		image_unref(img->backing);
	if (!atomic_load(&img->inactive))
		img->fmt->close(img);
out_free:
	image_free(img);
	return ret;
}

/* image_open() of an absolute path; keep: see struct open_chain. */
static int image_open_top(const char *abs, const struct vd_open_opts *o, struct vd_image *keep,
			  struct vd_image **out)
{
	struct open_chain chain = {.top = abs, .keep = keep};
	int ret = image_open_chain(abs, NULL, o, o->read_only, o->format, &chain, out);

	if (!ret)
		vd_info("%s: opened (%s, %s, %" PRIu64 " bytes%s%s)", abs, (*out)->fmt->name,
			(*out)->read_only ? "read-only" : "read-write", (*out)->size,
			(*out)->backing ? ", backing file " : "",
			(*out)->backing ? (*out)->backing->path : "");
	return ret;
}

int image_open(const char *path, const struct vd_open_opts *o, struct vd_image **out)
{
	char *cwd, *abs;
	int ret;

	if (path[0] == '/') {
		abs = g_strdup(path);
	} else {
		cwd = g_get_current_dir();
		abs = g_build_filename(cwd, path, NULL);
		g_free(cwd);
	}
	ret = image_open_top(abs, o, NULL, out);
	g_free(abs);
	return ret;
}

int image_open_over(const char *path, const struct vd_open_opts *o, struct vd_image *base,
		    struct vd_image **out)
{
	int ret = image_open_top(path, o, base, out);

	if (ret)
		return ret;
	if ((*out)->backing != base) {
		vd_err("%s: its backing file %s is not the image open as %s (the name now leads "
		       "to another file)",
		       path, (*out)->backing ? (*out)->backing->path : "(none)", base->path);
		image_unref(*out);
		*out = NULL;
		return -ESTALE;
	}
	image_demote(base);
	return 0;
}

void image_ref(struct vd_image *img)
{
	atomic_fetch_add(&img->refs, 1);
}

void image_facts_json(struct vd_image *img, bool read_only, struct json_writer *j)
{
	json_str(j, "image", img->path);
	json_str(j, "format", img->fmt->name);
	json_u64(j, "virtual-size", img->size);
	json_u64(j, "cluster-size", img->cluster_size);
	json_u64(j, "allocated", image_allocated(img));
	json_bool(j, "read-only", img->read_only || read_only);
	json_bool(j, "broken", atomic_load(&img->broken));
	pthread_rwlock_rdlock(&img->active_lock); /* the chain: see image_set_backing() */
	json_str(j, "backing", img->backing ? img->backing->path : NULL);
	if (img->backing) {
		json_begin_array(j, "backing-chain");
		for (struct vd_image *b = img->backing; b; b = b->backing) {
			json_begin_object(j, NULL);
			json_str(j, "image", b->path);
			json_str(j, "format", b->fmt->name);
			json_u64(j, "virtual-size", b->size);
			json_end_object(j);
		}
		json_end_array(j);
	}
	json_bool(j, "active", !atomic_load(&img->inactive));
	if (img->fmt->info && !atomic_load(&img->inactive)) {
		json_begin_object(j, img->fmt->name);
		img->fmt->info(img, j);
		json_end_object(j);
	}
	pthread_rwlock_unlock(&img->active_lock);
}

/* Everything close would write, written and synced (the driver's finish, or
 * a flush and an fdatasync). */
static int image_write_back(struct vd_image *img)
{
	int ret;

	if (img->fmt->finish)
		return img->fmt->finish(img);
	ret = img->fmt->flush ? img->fmt->flush(img) : 0;
	return ret ? ret : meta_fdatasync(img->fd);
}

int image_finish(struct vd_image *img)
{
	int ret;

	if (!img->writable)
		return 0;
	img->read_only = true;
	ret = image_write_back(img);
	img->writable = false;
	if (ret)
		vd_err("%s: cannot write back the image before leaving it: %s", img->path,
		       strerror(-ret));
	return ret;
}

/* ---- the driver closed and opened again: hand-over, reopen ---- */

int image_driver_close(struct vd_image *img)
{
	int ret = img->writable ? image_write_back(img) : 0;

	if (ret)
		return ret;
	img->fmt->close(img); /* writes nothing more: everything is written back */
	image_forget_driver(img);
	img->writable = false;
	return 0;
}

int image_driver_open(struct vd_image *img, const struct vd_open_opts *o)
{
	int ret;

	img->opts = o;
	ret = img->fmt->open(img);
	img->opts = NULL;
	if (ret) {
		image_forget_driver(img);
		return ret;
	}
	img->writable = !img->read_only;
	return 0;
}

int image_inactivate(struct vd_image *img)
{
	int ret = 0;

	pthread_rwlock_wrlock(&img->active_lock);
	if (atomic_load(&img->inactive))
		goto out;
	ret = image_driver_close(img);
	if (ret) {
		vd_err("%s: not inactivated: cannot write the image back: %s", img->path,
		       strerror(-ret));
		goto out;
	}
	image_unlock_fd(img->fd);
	atomic_store(&img->inactive, true);
	vd_info("%s: inactive: written back and left clean, locks released; another host "
		"may activate it now",
		img->path);
out:
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

int image_activate(struct vd_image *img, const struct vd_open_opts *o)
{
	uint64_t size = img->size;
	int ret = 0;

	pthread_rwlock_wrlock(&img->active_lock);
	if (!atomic_load(&img->inactive))
		goto out;
	ret = image_lock(img->fd, img->path, img->read_only, o->force_share, false);
	if (ret) {
		if (ret == -EBUSY)
			vd_err("%s: not activated: another host or process still has it "
			       "(inactivate it there first)",
			       img->path);
		else
			vd_err("%s: not activated: cannot take its locks: %s", img->path,
			       strerror(-ret));
		goto out;
	}
	ret = image_driver_open(img, o); /* every piece of metadata read again */
	if (ret) {
		image_unlock_fd(img->fd);
		vd_err("%s: not activated: the image could not be opened (%s); it stays inactive",
		       img->path, strerror(-ret));
		goto out;
	}
	atomic_store(&img->inactive, false);
	vd_info("%s: active: metadata read from the file, %s%s", img->path,
		img->read_only ? "read-only" : "read-write",
		img->size != size ? " (its size changed meanwhile)" : "");
out:
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

void image_unref(struct vd_image *img)
{
	struct vd_image *backing;

	if (!img)
		return;
	pthread_mutex_lock(&registry_lock);
	if (atomic_fetch_sub(&img->refs, 1) != 1) {
		pthread_mutex_unlock(&registry_lock);
		return;
	}
	registry_del(img);
	pthread_mutex_unlock(&registry_lock);

	backing = img->backing;
	if (!atomic_load(&img->inactive))
		img->fmt->close(img);
	vd_info("%s: closed", img->path);
	image_free(img);
	image_unref(backing);
}
