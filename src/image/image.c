/* Opening images: probing the format, the driver's open, and the backing
 * chain (resolution relative to the image, the backing policy, the depth limit
 * and loop detection). Images are shared by (device, inode): a file that is
 * another open image's backing file is one image, served read-only. */
#include <errno.h>
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

#include "image/image.h"
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

static int image_fd_budget(const char *path)
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

	if (img->fmt->allocated && img->fmt->allocated(img, &bytes) == 0)
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
	if (img->fd >= 0) {
		/* Unlock explicitly: io_uring may hold the file a little longer than
		 * the fd, and the lock lives as long as the file does. */
		struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
		fcntl(img->fd, F_OFD_SETLK, &fl);
		close(img->fd);
		atomic_fetch_sub(&image_nfds, 1);
	}
	if (img->dio_fd >= 0) {
		close(img->dio_fd);
		atomic_fetch_sub(&image_nfds, 1);
	}
	pthread_mutex_destroy(&img->sync_lock);
	free(img->path);
	free(img);
}

/*
 * QEMU's image locking protocol (block/file-posix.c), so that vdiskfs and the
 * QEMU tools see each other: shared open-file-description locks on single
 * bytes, byte 100 + i while holding permission i and byte 200 + i while not
 * sharing it (i: 0 consistent read, 1 write, 2 write-unchanged, 3 resize).
 * A user first takes its own bytes, then tests that nobody refuses to share a
 * permission it holds (200 + i) and that nobody holds a permission it does not
 * share (100 + i); taking before testing means two users racing both see each
 * other. A view open for writing takes what a QEMU writer of a qcow2 image
 * takes (read, write, resize; sharing neither write nor resize), a reader what
 * a QEMU reader takes (read; sharing neither), a force-share reader only
 * read (like qemu-img -U). The kernel drops the locks when the last fd of the
 * file description closes, even on SIGKILL; image_free() drops them first.
 */
enum { LOCK_PERM_BASE = 100, LOCK_UNSHARED_BASE = 200, LOCK_NPERMS = 4 };
enum { PERM_READ = 1, PERM_WRITE = 2, PERM_RESIZE = 8 };

static const char *const lock_perm_names[LOCK_NPERMS] = {"consistent read", "write",
							 "write unchanged", "resize"};

static int lock_byte(int fd, int type, int cmd, off_t byte, struct flock *fl)
{
	*fl = (struct flock){.l_type = type, .l_whence = SEEK_SET, .l_start = byte, .l_len = 1};
	return fcntl(fd, cmd, fl) < 0 ? -errno : 0;
}

/* Does another file description hold a lock on byte? 1, 0 or -errno. */
static int lock_byte_taken(int fd, off_t byte)
{
	struct flock fl;
	int ret = lock_byte(fd, F_WRLCK, F_OFD_GETLK, byte, &fl);

	return ret ? ret : fl.l_type != F_UNLCK;
}

/* Take our bytes: 0, or -errno with the byte that could not be taken. */
static int lock_take(int fd, unsigned perm, unsigned unshared, off_t *byte)
{
	struct flock fl;
	int ret = 0;

	for (int i = 0; i < LOCK_NPERMS && !ret; i++) {
		*byte = LOCK_PERM_BASE + i;
		if (perm & 1u << i)
			ret = lock_byte(fd, F_RDLCK, F_OFD_SETLK, *byte, &fl);
		*byte = LOCK_UNSHARED_BASE + i;
		if (!ret && unshared & 1u << i)
			ret = lock_byte(fd, F_RDLCK, F_OFD_SETLK, *byte, &fl);
	}
	return ret;
}

/* Test the bytes that conflict with ours: 0, 1 with the byte another file
 * description holds, or -errno. */
static int lock_conflict(int fd, unsigned perm, unsigned unshared, off_t *byte)
{
	int ret = 0;

	for (int i = 0; i < LOCK_NPERMS && !ret; i++) {
		*byte = LOCK_UNSHARED_BASE + i;
		if (perm & 1u << i)
			ret = lock_byte_taken(fd, *byte);
		if (ret)
			break;
		*byte = LOCK_PERM_BASE + i;
		if (unshared & 1u << i)
			ret = lock_byte_taken(fd, *byte);
	}
	return ret;
}

static int image_lock(int fd, const char *path, bool read_only, bool force_share)
{
	unsigned perm = read_only ? PERM_READ : PERM_READ | PERM_WRITE | PERM_RESIZE;
	unsigned unshared = force_share && read_only ? 0 : PERM_WRITE | PERM_RESIZE;
	struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};
	off_t byte = 0;
	int ret;

	ret = lock_take(fd, perm, unshared, &byte);
	if (!ret)
		ret = lock_conflict(fd, perm, unshared, &byte);
	if (!ret)
		return 0;
	fcntl(fd, F_OFD_SETLK, &fl); /* drop what was taken */
	if (ret == 1 || ret == -EAGAIN || ret == -EACCES) {
		vd_err("%s: in use by another process: it %s the %s permission (QEMU's image "
		       "locks, byte %d); not opened %s",
		       path, byte >= LOCK_UNSHARED_BASE ? "does not share" : "holds",
		       lock_perm_names[byte % 100], (int)byte,
		       read_only ? "for reading" : "for writing");
		return -EBUSY;
	}
	if (ret == -EINVAL || ret == -ENOLCK || ret == -EOPNOTSUPP)
		return 0; /* a file system without locks: nothing to enforce */
	return ret;
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

/* An image open for writing just became another image's backing file: what
 * its writes left dirty is made durable now, before the overlay reads it as a
 * base. Writes still in flight link their metadata later; fsync and close
 * write that back too (img->writable stays set). */
static void image_flush_demoted(struct vd_image *img)
{
	int ret = img->fmt->flush ? img->fmt->flush(img) : 0;

	if (!ret)
		ret = meta_fdatasync(img->fd);
	if (ret)
		vd_err("%s: cannot flush it before serving it read-only: %s (fsync and close "
		       "try again)",
		       img->path, strerror(-ret));
}

struct open_chain {
	const char *top; /* the image asked for, for messages */
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

/* May img open its backing file path? Under backing=within-source, *real is
 * then its resolved path (free it), which is what gets opened. */
static int backing_allowed(struct vd_image *img, const char *path, const struct vd_open_opts *o,
			   char **real)
{
	char r[PATH_MAX], within[PATH_MAX];

	*real = NULL;
	if (o->backing == VD_BACKING_DENY) {
		vd_err("%s: has a backing file (%s), refused by backing=deny", img->path, path);
		return -EPERM;
	}
	if (o->backing != VD_BACKING_WITHIN_SOURCE)
		return 0;
	if (!realpath(path, r))
		return -errno;
	if (!o->within || !realpath(o->within, within))
		return -EPERM;
	if (!path_within(r, within)) {
		vd_err("%s: backing file %s resolves to %s, outside %s: refused by "
		       "backing=within-source",
		       img->path, path, r, within);
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
		ret = backing_allowed(img, path, o, &real);
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
static int image_open_file(const char *path, int flags, uint64_t resolve)
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

/* Open path (or real, its checked resolved path, without following links;
 * o->nofollow: path itself is resolved already, follow no link in it). */
static int image_open_chain(const char *path, const char *real, const struct vd_open_opts *o,
			    bool read_only, const char *force_fmt, struct open_chain *chain,
			    struct vd_image **out)
{
	struct vd_image *img, *found;
	const char *opath = real ? real : path;
	bool top_nofollow = !chain->n && o->nofollow;
	uint64_t resolve = real || top_nofollow ? RESOLVE_NO_SYMLINKS : 0;
	struct stat st;
	bool demote;
	int fd, ret;

	ret = image_fd_budget(path);
	if (ret)
		return ret;
	fd = image_open_file(opath, read_only ? O_RDONLY : O_RDWR, resolve);
	if (fd == -EROFS && !read_only) {
		read_only = true;
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
	if (fstat(fd, &st) < 0) {
		ret = -errno;
		close(fd);
		return ret;
	}
	for (int i = 0; i < chain->n; i++) {
		if (chain->dev[i] == st.st_dev && chain->ino[i] == st.st_ino) {
			vd_err("%s: backing chain loops back to an image already in it", path);
			close(fd);
			return -ELOOP;
		}
	}

	pthread_mutex_lock(&registry_lock);
	found = registry_find(st.st_dev, st.st_ino);
	if (!found && (ret = image_lock(fd, path, read_only, o->force_share))) {
		pthread_mutex_unlock(&registry_lock);
		close(fd);
		return ret;
	}
	if (found) {
		int len = 0;

		for (struct vd_image *b = found; b->backing; b = b->backing)
			len++;
		if (chain->n + len > VD_BACKING_MAX_DEPTH) {
			/* shared, but not deeper than it could be opened alone */
			pthread_mutex_unlock(&registry_lock);
			close(fd);
			vd_err("%s: backing chain deeper than the limit of %d backing files: %s, "
			       "at level %d, has %d more",
			       chain->top, VD_BACKING_MAX_DEPTH, path, chain->n, len);
			return -ELOOP;
		}
		image_ref(found);
		demote = chain->n && !found->read_only;
		if (demote) {
			vd_warn("%s: is the backing file of another image: now served read-only",
				found->path);
			found->read_only = true;
		}
		pthread_mutex_unlock(&registry_lock);
		close(fd);
		if (demote)
			image_flush_demoted(found);
		*out = found;
		return 0;
	}
	pthread_mutex_unlock(&registry_lock);

	img = calloc(1, sizeof(*img));
	if (!img) {
		close(fd);
		return -ENOMEM;
	}
	img->fd = fd;
	atomic_fetch_add(&image_nfds, 1);
	img->dio_fd = -1;
	if (o->cache_direct) {
		/* Data bypasses the host page cache where the file system allows it;
		 * the twin must be the very file fd is. */
		struct stat dst;
		int dfd = image_open_file(opath, (read_only ? O_RDONLY : O_RDWR) | O_DIRECT, resolve);

		if (dfd >= 0 &&
		    (fstat(dfd, &dst) < 0 || dst.st_dev != st.st_dev || dst.st_ino != st.st_ino)) {
			close(dfd);
			dfd = -EXDEV;
		}
		if (dfd < 0) {
			vd_debug("%s: no O_DIRECT (%s): data goes through the page cache", path,
				 strerror(-dfd));
		} else {
			img->dio_fd = dfd;
			atomic_fetch_add(&image_nfds, 1);
			image_dio_align(img);
		}
	}
	img->path = strdup(path);
	img->name = strrchr(img->path, '/') ? strrchr(img->path, '/') + 1 : img->path;
	img->dev = st.st_dev;
	img->ino = st.st_ino;
	img->read_only = read_only;
	img->depth = chain->n;
	img->zero_align = 512;
	atomic_init(&img->refs, 1);
	pthread_mutex_init(&img->sync_lock, NULL);

	if (force_fmt) {
		img->fmt = vd_format_by_name(force_fmt);
		if (!img->fmt) {
			vd_err("%s: unknown format \"%s\"", path, force_fmt);
			ret = -EINVAL;
			goto out_free;
		}
	} else {
		img->fmt = image_probe(fd, path, chain->n > 0 || o->raw_by_default);
		if (!img->fmt) {
			vd_err("%s: not a qcow2, vhdx or raw image", path);
			ret = -EMEDIUMTYPE;
			goto out_free;
		}
	}
	img->opts = o;
	if (!img->fmt->open) {
		vd_err("%s: the %s driver is not available", path, img->fmt->name);
		ret = -ENOTSUP;
		goto out_free;
	}
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
	img->fmt->close(img);
out_free:
	image_free(img);
	return ret;
}

int image_open(const char *path, const struct vd_open_opts *o, struct vd_image **out)
{
	struct open_chain chain = {.n = 0};
	char *cwd, *abs;
	int ret;

	if (path[0] == '/') {
		abs = g_strdup(path);
	} else {
		cwd = g_get_current_dir();
		abs = g_build_filename(cwd, path, NULL);
		g_free(cwd);
	}
	chain.top = abs;
	ret = image_open_chain(abs, NULL, o, o->read_only, o->format, &chain, out);
	g_free(abs);
	return ret;
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
	if (img->fmt->info) {
		json_begin_object(j, img->fmt->name);
		img->fmt->info(img, j);
		json_end_object(j);
	}
}

int image_finish(struct vd_image *img)
{
	int ret;

	if (!img->writable)
		return 0;
	img->read_only = true;
	if (img->fmt->finish) {
		ret = img->fmt->finish(img);
	} else {
		ret = img->fmt->flush ? img->fmt->flush(img) : 0;
		if (!ret)
			ret = meta_fdatasync(img->fd);
	}
	img->writable = false;
	if (ret)
		vd_err("%s: cannot write back the image before leaving it: %s", img->path,
		       strerror(-ret));
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
	img->fmt->close(img);
	image_free(img);
	image_unref(backing);
}
