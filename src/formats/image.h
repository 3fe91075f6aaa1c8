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

#include "format.h"

enum vd_backing_policy {
	VD_BACKING_FOLLOW,	  /* open whatever the image names */
	VD_BACKING_DENY,	  /* refuse images that have a backing file */
	VD_BACKING_WITHIN_SOURCE, /* only files under a given directory */
};

#define VD_BACKING_MAX_DEPTH 16
#define VD_BACKING_MAX_NAMES 4

struct vd_open_opts {
	bool read_only;
	const char *format; /* force a driver by name, or NULL to probe */
	enum vd_backing_policy backing;
	const char *within; /* directory for VD_BACKING_WITHIN_SOURCE */
	uint64_t cache_size; /* metadata cache bytes per image; 0 = driver default */
	const char *vhdx_parent; /* override for a vhdx differencing parent path */
	bool raw_by_default; /* no magic matched: raw (single-image mounts) */
	bool cache_direct;   /* aligned data I/O bypasses the host page cache */
	bool nofollow;	     /* the path is resolved: no symbolic link anywhere in it */
	bool force_share;    /* read-only: share every permission, like qemu-img -U */
};

struct vd_image {
	char *path; /* as given (absolute for backing files) */
	char *name; /* base name, for messages */
	int fd;
	int dio_fd; /* O_DIRECT twin of fd for aligned data I/O, or -1 */
	/* What dio_fd needs (the file system's own, from statx; else 4096):
	 * offset and length, and buffer address, alignment. */
	uint32_t dio_align, dio_mem_align;
	dev_t dev;
	ino_t ino;
	const struct vd_format *fmt;
	void *priv; /* the driver's state */
	bool read_only; /* new writes fail with EROFS */
	/* Opened for writing (after the driver's open). Stays set when read_only
	 * is set later, because the image became another image's backing file:
	 * fsync and close still write back what the earlier writes left dirty. */
	bool writable;
	const struct vd_open_opts *opts; /* valid during open only */

	uint64_t size;	       /* virtual size in bytes */
	uint32_t cluster_size; /* cluster / block size; 0 for raw */
	uint32_t zero_align;   /* discard/write_zeroes granularity (>= 512) */

	/* Backing file: drivers fill the names at open; image.c opens it. */
	char *backing_names[VD_BACKING_MAX_NAMES]; /* candidates, first match wins */
	char *backing_fmt;
	struct vd_image *backing;
	int depth;

	/* A runtime inconsistency (EIO from a driver) marks the image broken. */
	atomic_bool broken;
	atomic_int refs;

	/* fsync coalescing (image-io.c) */
	pthread_mutex_t sync_lock;
	struct img_sync *sync_running, *sync_next;
	/* direct fdatasync calls: their average time, and none before (ns) */
	_Atomic uint64_t sync_inline_avg, sync_inline_after;
};

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
/* Mark broken after a runtime inconsistency; logs once. */
void image_mark_broken(struct vd_image *img, const char *why);

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

void image_read(struct vd_image *img, void *buf, uint64_t len, uint64_t off, vd_done_fn done,
		void *opaque);
void image_write(struct vd_image *img, const void *buf, uint64_t len, uint64_t off,
		 vd_done_fn done, void *opaque);
/* Zero a range; with unmap, deallocate where the format can (punch hole). */
void image_zero(struct vd_image *img, uint64_t len, uint64_t off, bool unmap, vd_done_fn done,
		void *opaque);
/* Metadata flush in the safe order, then IORING_OP_FSYNC (datasync) on the data
 * file; concurrent calls are coalesced. */
void image_fsync(struct vd_image *img, vd_done_fn done, void *opaque);

/* Status of the whole chain at off: DATA or ZERO (UNALLOC resolved through the
 * backing images; past the backing's end reads as ZERO). */
int image_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       enum vd_bs *status);
int image_truncate(struct vd_image *img, uint64_t size);

/* Blocking wrappers for tests, tools and start-up: run the calling thread's ring
 * until the request is done, and until the parked writes of other threads that
 * it resumed meanwhile (their I/O is on this ring) are done too. Return 0 or
 * -errno. */
int image_pread_sync(struct vd_image *img, void *buf, uint64_t len, uint64_t off);
int image_pwrite_sync(struct vd_image *img, const void *buf, uint64_t len, uint64_t off);
int image_zero_sync(struct vd_image *img, uint64_t len, uint64_t off, bool unmap);
int image_fsync_sync(struct vd_image *img);

/* For a driver's truncate() while it grows the view: zero [off, off+len), which
 * may lie past img->size since the new size is not visible yet, through the
 * same paths as image_zero() (the driver's write_zeroes for aligned parts, or
 * written zeroes). Called without the driver's lock; blocks like the above. */
int image_zero_grow_sync(struct vd_image *img, uint64_t len, uint64_t off);

/* Decompress one cluster (compress.c). Returns 0 or -EIO. */
int vd_decompress(enum vd_compress algo, const void *in, size_t inlen, void *out, size_t outlen);

#endif
