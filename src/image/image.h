/* An open image: one host file, its format driver and its backing chain, plus
 * the generic asynchronous I/O on guest ranges (image-io.c) that every format
 * shares: map, submit through io_uring, copy-on-write merge, backing reads,
 * decompression, fsync coalescing. */
#ifndef VDISKFS_IMAGE_H
#define VDISKFS_IMAGE_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "image/format.h"

/* Open an image and its backing chain. On failure logs one line naming the
 * cause and returns -errno. */
int image_open(const char *path, const struct vd_open_opts *o, struct vd_image **out);
void image_ref(struct vd_image *img);
/* Drop a reference; the last one flushes and closes the whole chain. */
void image_unref(struct vd_image *img);
/* Make a writable image's file final (everything close would write is
 * written and synced) and refuse its writes from now on (EROFS); reads go on,
 * and close writes nothing more. For an image that is retired while requests
 * may still read it (the mirror's old source). Logs and returns -errno when
 * the file could not be made final. */
int image_finish(struct vd_image *img);
/* Hand-over between hosts sharing the image's storage (QEMU's inactive and
 * active nodes). Inactivate: everything written back and the image left
 * clean, the driver closed, every lock released. Activate: QEMU's locks
 * taken again and the driver opened anew, reading every piece of metadata
 * from the file. The caller holds the image's data requests meanwhile (the
 * image refuses them with EIO while inactive); metadata calls see the image
 * as all data while inactive. Both log what they did; 0 or -errno, and a
 * failed call leaves the state as it was. */
int image_inactivate(struct vd_image *img);
int image_activate(struct vd_image *img, const struct vd_open_opts *o);
/* ---- the backing chain changed live (image-chain.c): the primitives of
 * the snapshot, stream and commit jobs ----
 *
 * Each logs what it did or why it failed and returns 0 or -errno; a failed
 * call leaves every image as it was. The caller holds the requests that
 * could reach the images it changes (the view's), and runs on a thread with
 * an io_uring context. */

/* A snapshot: a new qcow2 file at the absolute path (which must not exist:
 * -EEXIST) over base: base's virtual size, the default cluster size, the
 * permission bits mode (0: 0644 less umask), backing file base->path of
 * format base->fmt->name. base is flushed first; the new file and its
 * directory are synced before it is opened, read-write, through the normal
 * open (base's backing policy, locks), with base itself as its backing image
 * (-ESTALE if base->path now names another file). base is then served
 * read-only (writes fail with EROFS) and stays so; on failure the new file
 * is removed and base keeps its mode. *out holds the reference. */
int image_create_overlay(struct vd_image *base, const char *path, unsigned mode,
			 struct vd_image **out);
/* Stream and commit: img's backing link, on disk and in memory, becomes
 * new_backing (its absolute path and format; NULL: no backing file). The
 * caller made img read the same either way (it copied the data first). The
 * link is durable when it returns, and crash-safe: a power cut at any point
 * leaves the old link or the new one. img takes a reference to new_backing
 * and drops the one to its old backing image. -EROFS read-only, -EBUSY
 * inactive, -EINVAL new_backing is img or has img below it, -ENOTSUP the
 * format cannot (raw, vhdx) or not safely here (the driver says why). */
int image_set_backing(struct vd_image *img, struct vd_image *new_backing);
/* Commit: an open image (typically a read-only backing file) made writable
 * in place, and read-only again afterwards: the same struct vd_image, its
 * file opened again in the new mode (the same file, checked), QEMU's locks
 * moved to what the new mode takes (-EBUSY if another process refuses), the
 * driver written back, closed and opened again. An image demoted to
 * read-only as a backing file is still open for writing: made writable, it
 * only takes writes again. Failed (-EBUSY, -EACCES, -EPERM, -EROFS, ...), it
 * stays open as it was. */
int image_reopen(struct vd_image *img, bool writable);
/* Block status of the layers from top down to base, base excluded (NULL:
 * the whole chain): *pnum bytes from off (at most len) of one kind: DATA
 * or ZERO as the topmost of those layers that allocates the run says,
 * UNALLOC where none does (then the layers below decide). A run past the
 * end of a layer's backing image, which reads as zeroes there, is ZERO
 * unless that backing image is base (or there is none). -EINVAL: off past
 * top's end, or base not in top's chain. */
int image_block_status_above(struct vd_image *top, struct vd_image *base, uint64_t off,
			     uint64_t len, uint64_t *pnum, enum vd_bs *status);
/* The member of top's chain (top included) that is the file path (same
 * device and inode after stat()), or NULL. No reference is taken. */
struct vd_image *image_chain_find(struct vd_image *top, const char *path);
/* The path of img's backing image, or NULL (g_free() it): for readers
 * outside a request, which image_set_backing() may race. */
char *image_backing_path(struct vd_image *img);

/* The image's facts as JSON members (inside an open object): path, format,
 * sizes, allocation, read-only (or forced so), broken, the backing chain and
 * an object named after the format with the driver's own facts. */
struct json_writer;
void image_facts_json(struct vd_image *img, bool read_only, struct json_writer *j);
/* Probe a file: the driver whose magic matches, or NULL. */
const struct vd_format *image_probe(int fd, const char *path, bool raw_by_default);
/* Bytes the image allocates for guest data in its own layer (the driver's
 * count: qcow2 L2 tables, vhdx BAT), or the host file's st_blocks * 512 where
 * the driver keeps none (raw). The backing chain is not counted. */
uint64_t image_allocated(struct vd_image *img);

/* ---- asynchronous I/O on guest ranges (image-io.c) ----
 * Each call completes exactly once through done(opaque, err), possibly before it
 * returns, on the calling thread or on the thread whose completion finished it.
 * The calling thread must have an io_uring context (uring_thread_init()).
 *
 * Completions. done() may run inside the call: for a refused check, ENOMEM, a
 * map or allocation the driver refused (a hostile image), a read of zeroes
 * only. A write parked behind another request's allocation completes on the
 * thread that finished that request, perhaps while its submitter is still in
 * the call. So whoever hands state to these calls (or to a driver's map()
 * with a waiter) touches it no more once the call can have finished it, and
 * a loop that submits several parts of one job guards the job: it holds a
 * count of its own while it loops and drops it last (req_start(), the COW
 * merge, the mirror's fan-out), or only its outermost frame may finish the
 * job (zero_pump_locked()); a count that another thread's completion also
 * changes is atomic or under a lock. */
typedef void (*vd_done_fn)(void *opaque, int err);

/* The requests of the data path: one vocabulary for the view, the mirror and
 * every job. buf is read into (READ) or written from (WRITE); the others take
 * none. */
enum image_op {
	IMAGE_READ,
	IMAGE_WRITE,
	IMAGE_ZERO,    /* write zeroes, keeping the allocation where the format can */
	IMAGE_DISCARD, /* zero, deallocating where the format can (punch hole) */
	IMAGE_FSYNC,   /* metadata flush in the safe order, then IORING_OP_FSYNC
			* (datasync) of the data file; concurrent calls share one */
};
const char *image_op_name(enum image_op op);

void image_submit(struct vd_image *img, enum image_op op, void *buf, uint64_t len, uint64_t off,
		  vd_done_fn done, void *opaque);

/* Status of the whole chain at off: DATA or ZERO (UNALLOC resolved through the
 * backing images; past the backing's end reads as ZERO). */
int image_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       enum vd_bs *status);
int image_truncate(struct vd_image *img, uint64_t size);

/* A command on the image's persistent dirty bitmap name (granularity in
 * bytes for VD_BITMAP_ADD, 0 for the format's default): 0 once it is done
 * and durable, or -errno with a logged reason: -EROFS read-only, -EBUSY
 * inactive, -ENOTSUP the format keeps no bitmaps (raw, vhdx). */
int image_bitmap(struct vd_image *img, enum vd_bitmap_cmd cmd, const char *name,
		 uint32_t granularity);
/* A backup's use of a persistent bitmap (the driver's bitmap_take and
 * bitmap_merge, format.h): take a copy of its bits (and clear it in the same
 * step), or OR bits back into it after a failed backup. Same errors as
 * image_bitmap(). */
int image_bitmap_take(struct vd_image *img, const char *name, bool clear,
		      struct vd_bitmap_bits *out);
int image_bitmap_merge(struct vd_image *img, const char *name, const struct vd_bitmap_bits *in);

/* The blocking form of image_submit(), for tests, tools and start-up: runs
 * the calling thread's ring until the request is done, and until the parked
 * writes of other threads that it resumed meanwhile (their I/O is on this
 * ring) are done too. Returns 0 or -errno. */
int image_submit_wait(struct vd_image *img, enum image_op op, void *buf, uint64_t len,
		      uint64_t off);

static inline int image_pread_wait(struct vd_image *img, void *buf, uint64_t len, uint64_t off)
{
	return image_submit_wait(img, IMAGE_READ, buf, len, off);
}

static inline int image_pwrite_wait(struct vd_image *img, const void *buf, uint64_t len,
				    uint64_t off)
{
	return image_submit_wait(img, IMAGE_WRITE, (void *)buf, len, off);
}

static inline int image_zero_wait(struct vd_image *img, uint64_t len, uint64_t off, bool unmap)
{
	return image_submit_wait(img, unmap ? IMAGE_DISCARD : IMAGE_ZERO, NULL, len, off);
}

static inline int image_fsync_wait(struct vd_image *img)
{
	return image_submit_wait(img, IMAGE_FSYNC, NULL, 0, 0);
}

#endif
