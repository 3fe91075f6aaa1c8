/* QEMU's image lock protocol on the descriptors of images and their data
 * files (image.c takes the locks at open, image-chain.c moves them when an
 * image is reopened in another mode). */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>

#include "image/image-int.h"
#include "util/log.h"

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

void image_unlock_fd(int fd)
{
	struct flock fl = {.l_type = F_UNLCK, .l_whence = SEEK_SET};

	fcntl(fd, F_OFD_SETLK, &fl);
}

/* A failed take or test (ret) as the caller returns it: -EBUSY, logged with
 * the byte another user holds; 0 on a file system without these locks. */
static int lock_refused(const char *path, int ret, off_t byte, const char *what)
{
	if (ret == 1 || ret == -EAGAIN || ret == -EACCES) {
		vd_err("%s: in use by another process: it %s the %s permission (QEMU's image "
		       "locks, byte %d); not %s",
		       path, byte >= LOCK_UNSHARED_BASE ? "does not share" : "holds",
		       lock_perm_names[byte % 100], (int)byte, what);
		return -EBUSY;
	}
	if (ret == -EINVAL || ret == -ENOLCK || ret == -EOPNOTSUPP)
		return 0; /* a file system without locks: nothing to enforce */
	return ret;
}

/* The permissions an image (data: a data file, which shares write) holds
 * and does not share, opened this way. */
static void lock_perms(bool read_only, bool force_share, bool data, unsigned *perm,
		       unsigned *unshared)
{
	*perm = read_only ? PERM_READ : PERM_READ | PERM_WRITE | PERM_RESIZE;
	*unshared = force_share && read_only ? 0 : data ? PERM_RESIZE : PERM_WRITE | PERM_RESIZE;
}

int image_lock(int fd, const char *path, bool read_only, bool force_share, bool data)
{
	unsigned perm, unshared;
	off_t byte = 0;
	int ret;

	lock_perms(read_only, force_share, data, &perm, &unshared);
	ret = lock_take(fd, perm, unshared, &byte);
	if (!ret)
		ret = lock_conflict(fd, perm, unshared, &byte);
	if (!ret)
		return 0;
	image_unlock_fd(fd); /* drop what was taken */
	return lock_refused(path, ret, byte,
			    read_only ? "opened for reading" : "opened for writing");
}

void image_lock_restore(int fd, bool read_only, bool force_share)
{
	unsigned perm, unshared;
	off_t byte;

	lock_perms(read_only, force_share, false, &perm, &unshared);
	lock_take(fd, perm, unshared, &byte); /* shared locks: nobody refuses them */
}

/* Two descriptions of one file in one process conflict like two processes:
 * the new one takes its bytes first (shared locks, which the old one's do
 * not refuse), the old one lets go of everything, and only then are the
 * conflicting bytes tested, so that the file is never unlocked in between
 * and the old bytes do not count against the new mode. A refusal gives the
 * old bytes back before the new ones go. */
int image_lock_move(int from, int to, const char *path, bool from_ro, bool to_ro, bool force_share)
{
	unsigned perm, unshared;
	off_t byte = 0;
	int ret;

	lock_perms(to_ro, force_share, false, &perm, &unshared);
	ret = lock_take(to, perm, unshared, &byte);
	if (!ret) {
		image_unlock_fd(from);
		ret = lock_conflict(to, perm, unshared, &byte);
		if (ret)
			image_lock_restore(from, from_ro, force_share);
	}
	if (!ret)
		return 0;
	image_unlock_fd(to);
	return lock_refused(path, ret, byte,
			    to_ro ? "reopened for reading" : "reopened for writing");
}
