/* What the image layer's own files share and nobody else sees. */
#ifndef VDISKFS_IMAGE_INT_H
#define VDISKFS_IMAGE_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image/image.h"
#include "util/compiler.h"

/* Decompress one cluster (compress.c). Returns 0 or -EIO. */
int vd_decompress(enum vd_compress algo, const void *in, size_t inlen, void *out, size_t outlen);

/* Join the image's next fsync batch (image-sync.c): IMAGE_FSYNC. */
void fsync_batch_join(struct vd_image *img, vd_done_fn done, void *opaque);

/* A blocking call's wait (image-sync.c): init, submit with image_wait_done,
 * then image_wait() runs the calling thread's ring until it is done. */
struct image_wait {
	atomic_bool done;
	int err;
};
void image_wait_init(struct image_wait *w);
void image_wait_done(void *opaque, int err);
int image_wait(struct image_wait *w);

/* Above this average (ns), an image's flushes leave the event loop for a
 * second (image-sync.c; a test moves it to stay clear of a loaded
 * machine's timing). */
extern uint64_t fsync_inline_max_ns;

/* Requests of other threads that this thread resumed and that are not
 * finished (image-io.c): image_wait() runs the ring until they are. */
extern __thread unsigned image_adopted;

/* ---- for image-chain.c (reopen, overlays) ---- */

/* QEMU's lock protocol (image-lock.c). image_lock(): take the bytes for the
 * way fd is opened (data: qcow2's external data file, which shares write)
 * and test the conflicting ones: 0, -EBUSY (logged, nothing held) or
 * -errno. image_unlock_fd(): every lock of fd's open file description goes.
 * image_lock_move(): the locks of from's description (opened read-only or
 * not) move to to's, a description of the same file opened the other way:
 * 0, or -EBUSY logged with from's locks as they were. */
int image_lock(int fd, const char *path, bool read_only, bool force_share, bool data);
void image_unlock_fd(int fd);
int image_lock_move(int from, int to, const char *path, bool from_ro, bool to_ro, bool force_share);
/* The bytes an image opened this way holds taken again on fd (no test: for
 * giving back what fd's description held before). */
void image_lock_restore(int fd, bool read_only, bool force_share);

/* image.c. image_open_file(): open an image file (no FIFO, no device;
 * resolve 0 or RESOLVE_NO_SYMLINKS); image_open_same(): the same, and
 * refused (-EXDEV) unless it is img's file. Both return the fd or -errno.
 * image_fd_budget(): may another image's descriptors be opened? 0 or
 * -EMFILE, logged. */
int image_open_file(const char *path, int flags, uint64_t resolve);
int image_open_same(struct vd_image *img, const char *opath, int flags, uint64_t resolve);
int image_fd_budget(const char *path);
/* The driver's flush, then an fdatasync of the image file. */
int image_flush_sync(struct vd_image *img);
/* Close the driver, everything written back first if it writes: 0, or
 * -errno with the driver still open. Open it again on img->fd, read-only as
 * img->read_only says, with o during the open (writable follows). */
int image_driver_close(struct vd_image *img);
int image_driver_open(struct vd_image *img, const struct vd_open_opts *o);
/* image_open() of the absolute path of a new overlay of base, which must
 * come out as its backing image (-ESTALE otherwise); base is demoted to
 * read-only only once the open succeeded. */
int image_open_over(const char *path, const struct vd_open_opts *o, struct vd_image *base,
		    struct vd_image **out);
/* Serve a writable image read-only as a backing file, flushed (logged). */
void image_demote(struct vd_image *img);

#endif
