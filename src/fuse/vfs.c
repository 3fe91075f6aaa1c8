/* The low-level FUSE operations. Data requests are handed to the image I/O
 * layer and answered from its completion callback; metadata-only requests are
 * answered at once. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <linux/fuse.h>
#include <stdlib.h>
#include <string.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "util/log.h"
#include "mirror/mirror.h"

#include "fuse/vfs.h"

#define VFS_TIMEOUT	   86400.0 /* sizes only change through us */
#define VFS_DIR_TIMEOUT	   1.0	   /* directory mounts notice added and removed images */
#define VFS_WRITE_COPY_MAX (128 * 1024)

/* Root and the user who mounted: they alone run mirrors and use the control
 * file, whoever else the mount admits. */
bool vfs_req_by_owner(fuse_req_t req)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);

	return c->uid == 0 || c->uid == vfs_cfg.owner;
}

static bool vfs_writable(struct vnode *n)
{
	return !vfs_cfg.read_only && !n->img->read_only && n->kind != VN_FROZEN;
}

static void vfs_init(void *userdata, struct fuse_conn_info *conn)
{
	/* Async O_DIRECT and readahead are background requests: the kernel's
	 * default of 12 would cap the queue depth a VMM can reach. */
	conn->max_background = 512;
	conn->congestion_threshold = 384;
	conn->want &= ~FUSE_CAP_AUTO_INVAL_DATA; /* we are the only writer */
	conn->want &= ~(FUSE_CAP_SPLICE_READ | FUSE_CAP_SPLICE_WRITE | FUSE_CAP_SPLICE_MOVE);
	if (conn->capable & FUSE_CAP_ASYNC_DIO)
		conn->want |= FUSE_CAP_ASYNC_DIO;
}

static void vfs_reply_entry(fuse_req_t req, struct vnode *n)
{
	struct fuse_entry_param e;

	memset(&e, 0, sizeof(e));
	e.ino = n->ino;
	e.generation = 1;
	vnode_stat(n, &e.attr);
	e.attr_timeout = VFS_DIR_TIMEOUT;
	e.entry_timeout = VFS_DIR_TIMEOUT;
	fuse_reply_entry(req, &e);
}

static void vfs_lookup(fuse_req_t req, fuse_ino_t parent, const char *name)
{
	struct vnode *n;
	int err;

	if (parent != VFS_ROOT_INO) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	n = tree_lookup(name, &err);
	if (!n) {
		fuse_reply_err(req, -err);
		return;
	}
	vfs_reply_entry(req, n);
}

static void vfs_forget(fuse_req_t req, fuse_ino_t ino, uint64_t nlookup)
{
	tree_forget(ino, nlookup);
	fuse_reply_none(req);
}

static void vfs_forget_multi(fuse_req_t req, size_t count, struct fuse_forget_data *forgets)
{
	for (size_t i = 0; i < count; i++)
		tree_forget(forgets[i].ino, forgets[i].nlookup);
	fuse_reply_none(req);
}

static struct vnode *vfs_node(fuse_req_t req, fuse_ino_t ino)
{
	struct vnode *n = tree_get(ino);

	if (!n)
		fuse_reply_err(req, ESTALE);
	return n;
}

static void vfs_getattr(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct vnode *n = vfs_node(req, ino);
	struct stat st;

	if (!n)
		return;
	if (n->kind == VN_IMAGE && pt_opens(n))
		pt_sync_size(n);
	vnode_stat(n, &st);
	fuse_reply_attr(req, &st, n->kind == VN_IMAGE ? VFS_TIMEOUT : VFS_DIR_TIMEOUT);
}

static void vfs_setattr(fuse_req_t req, fuse_ino_t ino, struct stat *attr, int to_set,
			struct fuse_file_info *fi)
{
	struct vnode *n = vfs_node(req, ino);
	struct stat st;
	int ret;

	if (!n)
		return;
	if (to_set & (FUSE_SET_ATTR_MODE | FUSE_SET_ATTR_UID | FUSE_SET_ATTR_GID)) {
		fuse_reply_err(req, EPERM);
		return;
	}
	if ((to_set & FUSE_SET_ATTR_SIZE) && n->kind == VN_IMAGE) {
		if (!vfs_writable(n)) {
			fuse_reply_err(req, EROFS);
			return;
		}
		if ((uint64_t)attr->st_size != n->img->size &&
		    (mirror_busy(n->mirror) || backup_busy(n->backup))) {
			vd_err("%s: cannot change the size while a mirror or backup runs",
			       n->img->path);
			fuse_reply_err(req, EBUSY);
			return;
		}
		if ((uint64_t)attr->st_size < n->img->size && !vfs_cfg.allow_shrink) {
			vd_err("%s: refusing to shrink the disk from %" PRIu64 " to %" PRIu64
			       " bytes: what lies past the new end would be lost (mount with "
			       "-o allow_shrink to allow it)",
			       n->img->path, n->img->size, (uint64_t)attr->st_size);
			fuse_reply_err(req, EPERM);
			return;
		}
		if ((uint64_t)attr->st_size != n->img->size) {
			uint64_t old = n->img->size;

			ret = image_truncate(n->img, attr->st_size);
			if (ret) {
				fuse_reply_err(req, ret == -ENOTSUP ? EOPNOTSUPP : -ret);
				return;
			}
			vd_info("%s: resized from %" PRIu64 " to %" PRIu64 " bytes", n->img->path,
				old, (uint64_t)attr->st_size);
		}
	} else if (to_set & FUSE_SET_ATTR_SIZE) {
		fuse_reply_err(req, n->kind == VN_DIR ? EISDIR : EPERM);
		return;
	}
	/* Times: accepted and not stored (the view's times are the image's). */
	vnode_stat(n, &st);
	fuse_reply_attr(req, &st, n->kind == VN_IMAGE ? VFS_TIMEOUT : VFS_DIR_TIMEOUT);
}

/* struct fuse_open_out of protocol 7.40 (Debian 12's headers call the
 * backing id padding), and its flag for a passthrough open. */
struct vfs_open_out {
	uint64_t fh;
	uint32_t open_flags;
	int32_t backing_id;
};
#define VFS_FOPEN_PASSTHROUGH (1u << 7)

/* fuse_reply_open() with FOPEN_PARALLEL_DIRECT_WRITES, which libfuse 3.14
 * cannot set: without it the kernel holds the inode lock exclusively around
 * every direct write, so the writes of a VMM's several I/O threads reach the
 * daemon one at a time. The image layer takes concurrent writes already.
 * With backing_id, the kernel serves the open from that file (passthrough.c). */
static void vfs_reply_open(fuse_req_t req, const struct fuse_file_info *fi, int backing_id)
{
	struct vfs_open_out out = {
		.fh = fi->fh,
		.open_flags = (fi->direct_io ? FOPEN_DIRECT_IO | FOPEN_PARALLEL_DIRECT_WRITES : 0) |
			      (fi->keep_cache ? FOPEN_KEEP_CACHE : 0) |
			      (fi->noflush ? FOPEN_NOFLUSH : 0) |
			      (backing_id ? VFS_FOPEN_PASSTHROUGH : 0),
		.backing_id = backing_id,
	};

	_Static_assert(sizeof(out) == sizeof(struct fuse_open_out), "fuse_open_out");
	fuse_reply_buf(req, (const char *)&out, sizeof(out));
}

static void vfs_open(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct vnode *n = vfs_node(req, ino);

	if (!n)
		return;
	if (n->kind == VN_DIR) {
		fuse_reply_err(req, EISDIR);
		return;
	}
	if (n->kind == VN_CONTROL) {
		control_open(req, fi);
		return;
	}
	if ((fi->flags & O_ACCMODE) != O_RDONLY && !vfs_writable(n)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if (vfs_cfg.direct_io || (fi->flags & O_DIRECT))
		fi->direct_io = 1;
	else
		fi->keep_cache = 1;
	fi->noflush = 1;
	fi->fh = (uint64_t)(uintptr_t)n;
	tree_open(n);
	vfs_reply_open(req, fi, pt_open(n, fi));
}

static void vfs_release(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	struct vnode *n = tree_get(ino);

	if (n && n->kind == VN_CONTROL) {
		control_release(req, fi);
		return;
	}
	if (n) {
		pt_release(n, fi->fh);
		tree_release(n);
	}
	fuse_reply_err(req, 0);
}

/* ---- data requests, answered on completion ---- */

/* Data buffers are page-aligned so that the image's O_DIRECT fd can take them. */
static void *vfs_alloc(size_t size)
{
	void *p;

	return posix_memalign(&p, 4096, size ? size : 1) ? NULL : p;
}

struct vfs_io {
	fuse_req_t req;
	char *buf;    /* read buffer, or the request buffer a WRITE arrived in */
	bool own_buf; /* free buf at the end (not a FUSE ring payload buffer) */
	size_t len;
	struct mirror_call call; /* the mirror layer's, for the request's way */
};

static struct vfs_io *vfs_io_new(fuse_req_t req, char *buf, size_t len)
{
	struct vfs_io *io = malloc(sizeof(*io));
	bool own = buf && buf != furing_req_payload();

	if (!io) {
		if (own)
			free(buf);
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	io->req = req;
	io->buf = buf;
	io->own_buf = own;
	io->len = len;
	loop_req_begin();
	return io;
}

static void vfs_io_end(struct vfs_io *io)
{
	if (io->own_buf)
		free(io->buf);
	free(io);
	loop_req_end();
}

/* Hand a data request to the view's mirror layer, which sends it to the image
 * (or, while a job runs, to both sides). */
static void vfs_submit(struct vnode *n, struct vfs_io *io, enum image_op op, void *buf,
		       uint64_t len, uint64_t off, vd_done_fn done)
{
	if (n->kind == VN_FROZEN) /* a pull backup's frozen file: reads only */
		backup_read(n->origin->backup, buf, op == IMAGE_READ ? len : 0, off, done, io);
	else
		mirror_submit(n->mirror, &io->call, op, buf, len, off, done, io);
}

static void vfs_read_done(void *opaque, int err)
{
	struct vfs_io *io = opaque;

	if (err)
		fuse_reply_err(io->req, -err);
	else
		fuse_reply_buf(io->req, io->buf, io->len);
	vfs_io_end(io);
}

static void vfs_read(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
		     struct fuse_file_info *fi)
{
	struct vnode *n;
	struct vfs_io *io;
	char *buf;

	if (ino == VFS_CONTROL_INO) {
		control_read(req, size, off, fi);
		return;
	}
	n = vfs_fh_node(fi->fh);
	if ((uint64_t)off >= n->img->size) {
		fuse_reply_buf(req, NULL, 0); /* end of file */
		return;
	}
	if (size > n->img->size - off)
		size = n->img->size - off; /* a short read at the end */
	/* Over the FUSE ring, read straight into the reply's payload buffer. */
	buf = furing_req_payload();
	if (!buf)
		buf = vfs_alloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	io = vfs_io_new(req, buf, size);
	if (io)
		vfs_submit(n, io, IMAGE_READ, buf, size, off, vfs_read_done);
}

static void vfs_write_done(void *opaque, int err)
{
	struct vfs_io *io = opaque;

	if (err)
		fuse_reply_err(io->req, -err);
	else
		fuse_reply_write(io->req, io->len);
	vfs_io_end(io);
}

static void vfs_write(fuse_req_t req, fuse_ino_t ino, const char *buf, size_t size, off_t off,
		      struct fuse_file_info *fi)
{
	struct vnode *n;
	struct vfs_io *io;

	if (ino == VFS_CONTROL_INO) {
		control_write(req, buf, size, fi);
		return;
	}
	n = vfs_fh_node(fi->fh);
	if (!vfs_writable(n)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if ((uint64_t)off > n->img->size || size > n->img->size - off) {
		fuse_reply_err(req, ENOSPC); /* a disk does not grow by writing past its end */
		return;
	}
	/* The payload lives in the loop's receive buffer, which the next request
	 * reuses: small payloads are copied, large ones keep the whole buffer. A
	 * FUSE ring payload buffer stays ours until the reply. */
	if (furing_req_payload()) {
		io = vfs_io_new(req, (char *)buf, size);
	} else if (size <= VFS_WRITE_COPY_MAX) {
		char *copy = vfs_alloc(size);
		if (!copy) {
			fuse_reply_err(req, ENOMEM);
			return;
		}
		memcpy(copy, buf, size);
		buf = copy;
		io = vfs_io_new(req, copy, size);
	} else {
		io = vfs_io_new(req, loop_take_buffer(), size);
	}
	if (io)
		vfs_submit(n, io, IMAGE_WRITE, (void *)buf, size, off, vfs_write_done);
}

static void vfs_flush(fuse_req_t req, fuse_ino_t ino, struct fuse_file_info *fi)
{
	fuse_reply_err(req, 0); /* close is not a barrier: fsync is */
}

static void vfs_err_done(void *opaque, int err)
{
	struct vfs_io *io = opaque;

	fuse_reply_err(io->req, -err);
	vfs_io_end(io);
}

static void vfs_fsync(fuse_req_t req, fuse_ino_t ino, int datasync, struct fuse_file_info *fi)
{
	struct vnode *n = vfs_fh_node(fi->fh);
	struct vfs_io *io;

	if (ino == VFS_CONTROL_INO || n->kind == VN_FROZEN) {
		fuse_reply_err(req, 0);
		return;
	}
	io = vfs_io_new(req, NULL, 0);
	if (io)
		vfs_submit(n, io, IMAGE_FSYNC, NULL, 0, 0, vfs_err_done);
}

static void vfs_fallocate(fuse_req_t req, fuse_ino_t ino, int mode, off_t off, off_t len,
			  struct fuse_file_info *fi)
{
	struct vnode *n = vfs_fh_node(fi->fh);
	struct vfs_io *io;
	bool unmap;

	if (ino == VFS_CONTROL_INO) {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (off < 0 || len <= 0) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE)) {
		unmap = true;
	} else if (mode == FALLOC_FL_ZERO_RANGE ||
		   mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE)) {
		unmap = false;
	} else if (mode == 0 || mode == FALLOC_FL_KEEP_SIZE) {
		/* Space inside the disk is the image's business: nothing to do. */
		if ((uint64_t)off + len > n->img->size && mode == 0)
			fuse_reply_err(req, EOPNOTSUPP);
		else
			fuse_reply_err(req, vfs_writable(n) ? 0 : EROFS);
		return;
	} else {
		fuse_reply_err(req, EOPNOTSUPP);
		return;
	}
	if (!vfs_writable(n)) {
		fuse_reply_err(req, EROFS);
		return;
	}
	if ((uint64_t)off >= n->img->size) {
		fuse_reply_err(req, unmap ? 0 : ENOSPC);
		return;
	}
	if ((uint64_t)len > n->img->size - off) {
		if (!unmap && !(mode & FALLOC_FL_KEEP_SIZE)) {
			fuse_reply_err(req, ENOSPC);
			return;
		}
		len = n->img->size - off;
	}
	io = vfs_io_new(req, NULL, 0);
	if (io)
		vfs_submit(n, io, unmap ? IMAGE_DISCARD : IMAGE_ZERO, NULL, len, off, vfs_err_done);
}

static void vfs_lseek(fuse_req_t req, fuse_ino_t ino, off_t off, int whence,
		      struct fuse_file_info *fi)
{
	struct vnode *n = tree_get(ino);
	uint64_t pos = off, size, pnum;
	enum vd_bs st;
	int ret;

	if (!n || (n->kind != VN_IMAGE && n->kind != VN_FROZEN) ||
	    (whence != SEEK_DATA && whence != SEEK_HOLE)) {
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (n->kind == VN_FROZEN) { /* what the pull backup hands out */
		ret = backup_seek(n->origin->backup, pos, whence, &pos);
		if (ret)
			fuse_reply_err(req, -ret);
		else
			fuse_reply_lseek(req, pos);
		return;
	}
	size = n->img->size;
	if (off < 0 || pos >= size) {
		fuse_reply_err(req, ENXIO);
		return;
	}
	while (pos < size) {
		ret = image_block_status(n->img, pos, size - pos, &pnum, &st);
		if (ret) {
			fuse_reply_err(req, -ret);
			return;
		}
		if ((whence == SEEK_DATA) == (st == VD_BS_DATA))
			break;
		pos += pnum;
	}
	if (pos >= size) {
		if (whence == SEEK_DATA) {
			fuse_reply_err(req, ENXIO);
			return;
		}
		pos = size; /* the end of the disk is a hole */
	}
	fuse_reply_lseek(req, pos);
}

static void vfs_statfs(fuse_req_t req, fuse_ino_t ino)
{
	struct statvfs sv;
	char *dir = vfs_cfg.single ? g_path_get_dirname(vfs_cfg.source) : g_strdup(vfs_cfg.source);

	if (statvfs(dir, &sv) < 0)
		fuse_reply_err(req, errno);
	else
		fuse_reply_statfs(req, &sv);
	g_free(dir);
}

/* ---- directory ---- */

struct dir_fill {
	fuse_req_t req;
	char *buf;
	size_t size, used;
	off_t want, pos;
};

static void dir_add(struct dir_fill *d, const char *name, fuse_ino_t ino, mode_t mode)
{
	struct stat st = {.st_ino = ino, .st_mode = mode};
	size_t need;

	d->pos++;
	if (d->pos <= d->want || !d->buf)
		return;
	need = fuse_add_direntry(d->req, d->buf + d->used, d->size - d->used, name, &st, d->pos);
	if (need > d->size - d->used) {
		d->buf = NULL; /* full: the kernel asks again from here */
		return;
	}
	d->used += need;
}

static void dir_add_node(struct vnode *n, void *opaque)
{
	dir_add(opaque, n->name, n->ino, S_IFREG);
}

static void vfs_readdir(fuse_req_t req, fuse_ino_t ino, size_t size, off_t off,
			struct fuse_file_info *fi)
{
	struct dir_fill d = {.req = req, .size = size, .want = off};
	char *buf;

	if (ino != VFS_ROOT_INO || vfs_cfg.single) {
		fuse_reply_err(req, ENOTDIR);
		return;
	}
	buf = d.buf = malloc(size);
	if (!buf) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	dir_add(&d, ".", VFS_ROOT_INO, S_IFDIR);
	dir_add(&d, "..", VFS_ROOT_INO, S_IFDIR);
	dir_add(&d, VFS_CONTROL_NAME, VFS_CONTROL_INO, S_IFREG);
	tree_foreach(dir_add_node, &d, off == 0);
	fuse_reply_buf(req, buf, d.used);
	free(buf);
}

/* ---- xattrs ---- */

static void vfs_getxattr(fuse_req_t req, fuse_ino_t ino, const char *name, size_t size)
{
	struct vnode *n = vfs_node(req, ino);

	if (n)
		xattr_get(req, n, name, size);
}

static void vfs_listxattr(fuse_req_t req, fuse_ino_t ino, size_t size)
{
	struct vnode *n = vfs_node(req, ino);

	if (n)
		xattr_list(req, n, size);
}

static void vfs_setxattr(fuse_req_t req, fuse_ino_t ino, const char *name, const char *value,
			 size_t size, int flags)
{
	struct vnode *n = vfs_node(req, ino);

	if (n)
		xattr_set(req, n, name, value, size, flags);
}

static void vfs_removexattr(fuse_req_t req, fuse_ino_t ino, const char *name)
{
	fuse_reply_err(req, strncmp(name, "user.vdiskfs.", 13) ? ENODATA : EPERM);
}

const struct fuse_lowlevel_ops vfs_ops = {
	.init = vfs_init,
	.lookup = vfs_lookup,
	.forget = vfs_forget,
	.forget_multi = vfs_forget_multi,
	.getattr = vfs_getattr,
	.setattr = vfs_setattr,
	.open = vfs_open,
	.release = vfs_release,
	.read = vfs_read,
	.write = vfs_write,
	.flush = vfs_flush,
	.fsync = vfs_fsync,
	.fallocate = vfs_fallocate,
	.lseek = vfs_lseek,
	.statfs = vfs_statfs,
	.readdir = vfs_readdir,
	.getxattr = vfs_getxattr,
	.listxattr = vfs_listxattr,
	.setxattr = vfs_setxattr,
	.removexattr = vfs_removexattr,
};
