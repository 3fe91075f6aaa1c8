/* FUSE passthrough (Linux 6.9+, -o passthrough=) for raw views: an open of a
 * raw view hands the kernel the image file itself, and the kernel then reads,
 * writes and maps it without a round trip through the daemon. libfuse 3.14
 * knows nothing of it: INIT is amended in fuse-uring.c's hooks (the
 * pt_init_*() calls), the image is registered with an ioctl on /dev/fuse and
 * vfs.c puts the backing id into the open reply.
 *
 * The kernel takes one backing file per inode, and refuses (EIO to the
 * opener) a passthrough open while page-cached opens exist and any other
 * open while passthrough opens exist. So a view registers its image once for
 * all its passthrough opens, closes the id with the last one, and gives no
 * passthrough to a new open while cached opens remain. The daemon sees no
 * data request of those opens: a mirror start and an inactivation are
 * refused with EBUSY while they exist, and no open passes through while a
 * job runs or the view is inactive (docs/design.md "Raw passthrough"). */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/log.h"
#include "mirror/mirror.h"
#include "fuse/vfs.h"

/* The kernel ABI of protocol 7.40, which Debian 12's headers predate. */
#define PT_INIT_EXT	    (1u << 30) /* init flags: flags2 is valid */
#define PT_INIT_PASSTHROUGH (1u << 5)  /* init flags2: bit 37 of the 64-bit flags */
#define PT_INIT_KILLPRIV_V2 (1u << 28) /* init flags */
/* Backing files on a plain file system (depth 0) only: the mount itself is
 * depth 1, so an overlayfs may still sit on top of it. */
#define PT_MAX_STACK_DEPTH 1

struct pt_backing_map {
	int32_t fd;
	uint32_t flags;
	uint64_t padding;
};

#define PT_IOC_BACKING_OPEN  _IOW(229, 1, struct pt_backing_map)
#define PT_IOC_BACKING_CLOSE _IOW(229, 2, uint32_t)

/* Written on the main thread before the loop threads exist (the INIT
 * exchange in loop_init(), then pt_prepare()); only read afterwards. */
static struct {
	bool offered; /* the kernel's INIT offered passthrough */
	bool killpriv_offered;
	bool asked; /* our INIT reply asked for it */
	bool on;    /* the kernel granted it: opens may pass through */
	int fuse_fd;
} pt = {.fuse_fd = -1};

/* Each view's pt_* fields (struct vnode); a leaf. */
static pthread_mutex_t pt_lock = PTHREAD_MUTEX_INITIALIZER;

bool pt_active(void)
{
	return pt.on;
}

/* ---- INIT ---- */

void pt_init_request(uint32_t flags, uint32_t flags2)
{
	pt.offered = (flags & PT_INIT_EXT) && (flags2 & PT_INIT_PASSTHROUGH);
	pt.killpriv_offered = flags & PT_INIT_KILLPRIV_V2;
}

void pt_init_reply(uint32_t *flags, uint32_t *flags2, uint32_t *max_stack_depth)
{
	if (vfs_cfg.passthrough == PT_OFF || !pt.offered)
		return;
	*flags |= PT_INIT_EXT;
	*flags2 |= PT_INIT_PASSTHROUGH;
	*max_stack_depth = PT_MAX_STACK_DEPTH;
	pt.asked = true;
	/* Else the kernel asks us for security.capability before every write
	 * of a view, passed through or not (a round trip that passthrough is
	 * meant to save): with it, the kernel looks once per inode. Views
	 * carry no set-id bits and no capabilities, so there is nothing for
	 * us to clear on write. */
	if (pt.killpriv_offered)
		*flags |= PT_INIT_KILLPRIV_V2;
}

/* The kernel says nothing about what it made of the reply: it ignores the
 * request without CONFIG_FUSE_PASSTHROUGH or with the writeback cache. A
 * registration tells: only a connection without passthrough (or a daemon
 * without CAP_SYS_ADMIN) answers EPERM. */
static int pt_probe(void)
{
	struct pt_backing_map map = {0};
	int fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC);
	int id, err;

	if (fd < 0)
		return -errno;
	map.fd = fd;
	id = ioctl(pt.fuse_fd, PT_IOC_BACKING_OPEN, &map);
	err = id < 0 ? -errno : 0;
	close(fd);
	if (id > 0) {
		uint32_t u = id;

		if (ioctl(pt.fuse_fd, PT_IOC_BACKING_CLOSE, &u) < 0)
			vd_warn("passthrough: backing id %d: close: %s", id, strerror(errno));
	}
	return err == -EPERM ? err : 0;
}

int pt_prepare(int fuse_fd)
{
	const char *why = NULL;

	pt.fuse_fd = fuse_fd;
	if (vfs_cfg.passthrough == PT_OFF)
		return 0;
	if (!pt.offered)
		why = "the kernel does not offer FUSE passthrough (needs Linux 6.9+ built with "
		      "CONFIG_FUSE_PASSTHROUGH)";
	else if (!pt.asked || pt_probe())
		why = "the kernel did not grant FUSE passthrough (the daemon needs "
		      "CAP_SYS_ADMIN)";
	if (why && vfs_cfg.passthrough == PT_ON) {
		vd_err("passthrough=on: %s", why);
		return -EOPNOTSUPP;
	}
	if (why) {
		vd_info("passthrough: not used: %s", why);
		return 0;
	}
	pt.on = true;
	vd_info("passthrough: raw views are read and written by the kernel directly");
	return 0;
}

/* ---- opens ---- */

/* May a new open of n pass through? Under pt_lock. */
static bool pt_usable(struct vnode *n)
{
	struct vd_image *img = n->img;

	return pt.on && n->kind == VN_IMAGE && !strcmp(img->fmt->name, "raw") && !img->backing &&
	       !atomic_load(&img->inactive) && !n->pt_blocks && !n->pt_cached &&
	       !mirror_busy(n->mirror);
}

/* Register the image file for n's passthrough opens: n->pt_id, or -errno
 * (logged once per view). Under pt_lock. */
static int pt_register(struct vnode *n)
{
	struct pt_backing_map map = {.fd = n->img->fd};
	int id = ioctl(pt.fuse_fd, PT_IOC_BACKING_OPEN, &map);

	if (id > 0) {
		n->pt_id = id;
		return id;
	}
	id = id < 0 ? -errno : -EIO;
	if (!n->pt_warned)
		vd_warn("%s: passthrough refused by the kernel (%s%s): this view's I/O goes "
			"through the daemon",
			n->img->path, strerror(-id),
			id == -ELOOP ? ": the image lies on a stacked file system" : "");
	n->pt_warned = true;
	return id;
}

int pt_open(struct vnode *n, struct fuse_file_info *fi)
{
	int id = 0;

	pthread_mutex_lock(&pt_lock);
	/* Once one open passes through, the kernel wants all of them to. */
	if (n->pt_opens || pt_usable(n))
		id = n->pt_opens ? n->pt_id : pt_register(n);
	if (id > 0) {
		n->pt_opens++;
		fi->fh |= VFS_FH_PT;
		fi->direct_io = 0;
		/* The kernel refuses it with passthrough; without it, the open
		 * drops the view's cached pages, which passthrough writes would
		 * leave stale (no page-cached open can exist meanwhile). */
		fi->keep_cache = 0;
	} else {
		id = 0;
		if (!fi->direct_io) {
			n->pt_cached++;
			fi->fh |= VFS_FH_CACHED;
		}
	}
	pthread_mutex_unlock(&pt_lock);
	return id;
}

void pt_release(struct vnode *n, uint64_t fh)
{
	bool last = false;

	pthread_mutex_lock(&pt_lock);
	if (fh & VFS_FH_CACHED)
		n->pt_cached--;
	if ((fh & VFS_FH_PT) && !--n->pt_opens) {
		uint32_t id = n->pt_id;

		if (ioctl(pt.fuse_fd, PT_IOC_BACKING_CLOSE, &id) < 0)
			vd_warn("%s: passthrough backing id %u: close: %s", n->img->path, id,
				strerror(errno));
		n->pt_id = 0;
		last = true;
	}
	pthread_mutex_unlock(&pt_lock);
	if (last)
		pt_sync_size(n);
}

unsigned pt_opens(struct vnode *n)
{
	unsigned c;

	pthread_mutex_lock(&pt_lock);
	c = n->pt_opens;
	pthread_mutex_unlock(&pt_lock);
	return c;
}

/* Writes past the end that passed through made the file longer: the view
 * follows the file (a raw image is the whole file). */
void pt_sync_size(struct vnode *n)
{
	struct vd_image *img = n->img;
	uint64_t old = img->size;
	struct stat st;

	if (fstat(img->fd, &st) < 0 || (uint64_t)st.st_size <= old)
		return;
	if (!image_truncate(img, st.st_size))
		vd_info("%s: grew from %" PRIu64 " to %" PRIu64
			" bytes by writes past the end (passthrough)",
			img->path, old, (uint64_t)st.st_size);
}

/* ---- verbs that must see every write ---- */

int pt_block(struct vnode *n, const char *verb)
{
	unsigned opens;

	pthread_mutex_lock(&pt_lock);
	opens = n->pt_opens;
	if (!opens)
		n->pt_blocks++;
	pthread_mutex_unlock(&pt_lock);
	if (!opens)
		return 0;
	vd_err("%s: cannot %s: %u open%s of the view pass%s I/O straight to the image file "
	       "(-o passthrough); close %s first",
	       n->img->path, verb, opens, opens == 1 ? "" : "s", opens == 1 ? "es" : "",
	       opens == 1 ? "it" : "them");
	return -EBUSY;
}

void pt_unblock(struct vnode *n)
{
	pthread_mutex_lock(&pt_lock);
	n->pt_blocks--;
	pthread_mutex_unlock(&pt_lock);
}
