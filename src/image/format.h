/* The format-driver interface: every image format (raw, qcow2, vhdx) is one
 * table of operations behind which its metadata lives. A driver maps guest
 * ranges to extents; the generic image I/O code (image-io.c) turns extents into
 * io_uring requests, so drivers never do data I/O themselves. */
#ifndef VDISKFS_FORMAT_H
#define VDISKFS_FORMAT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

struct vd_image;
struct json_writer;

/* What one piece of a guest range is, as a driver maps it. */
enum vd_ext_type {
	VD_EXT_DATA,	   /* bytes live in a host file: fd @ host_off */
	VD_EXT_ZERO,	   /* reads as zeroes, no I/O */
	VD_EXT_UNALLOC,	   /* read from the backing image at the same guest offset */
	VD_EXT_COMPRESSED, /* read csize bytes @ host_off, inflate a whole cluster */
};

enum vd_compress { VD_COMPRESS_DEFLATE, VD_COMPRESS_ZSTD };

/* Where the bytes of one guest run come from, for a read extent and for a
 * copy-on-write segment alike. */
struct vd_src {
	enum vd_ext_type type;
	int fd;		   /* DATA, COMPRESSED */
	uint64_t host_off; /* DATA: the run's first byte; COMPRESSED: the blob */
	/* COMPRESSED only: the blob is csize bytes (may reach past EOF: short reads are fine)
	 * and inflates to cluster_size bytes holding guest bytes from cluster_off on. */
	uint32_t csize;
	enum vd_compress algo;
	uint64_t cluster_off;
	uint32_t cluster_size;
};

/* One run of old bytes for a copy-on-write: guest [off, off+len) reads from
 * src (DATA: the old host copy, ZERO, UNALLOC, COMPRESSED). */
struct vd_cow_seg {
	uint64_t off, len;
	struct vd_src src;
};

#define VD_COW_SEGS 4

/* A write that covers only part of a newly placed cluster or block writes the
 * whole [off, off+len) guest range at src.host_off - (extent off - cow.off) in
 * one I/O: old bytes with the guest's bytes merged in. The old bytes may come from
 * several sources (an extended-L2 cluster mixes old host data, backing data and
 * zeroes): seg[0..n) are in guest order, do not overlap, lie inside the cow
 * range and together with the extent cover it. Only their bytes outside the
 * extent are read, so one segment may span the extent. */
struct vd_cow {
	uint64_t off, len; /* guest range written as a whole (contains the extent) */
	unsigned n;
	struct vd_cow_seg seg[VD_COW_SEGS];
};

/* Append a segment after the last one (joined with it when it continues the
 * same source). Returns 0, or -EINVAL if out of order or full (a driver bug). */
int vd_cow_add(struct vd_cow *c, const struct vd_cow_seg *s);

struct vd_extent {
	uint64_t off, len; /* guest range */
	struct vd_src src;
	/* Writes only: non-zero cow.len means merge-and-write the whole cow range. */
	struct vd_cow cow;
};

/* A request blocked on another request's allocation (see VD_MAP_WAIT below). The
 * driver queues it under its lock; after it drops the lock on complete() it calls
 * wake() once for each waiter it queued. */
struct vd_waiter {
	struct vd_waiter *next;
	void (*wake)(struct vd_waiter *w);
};

#define VD_MAP_INLINE 4

/* The result of one map call: extents covering the whole range in order, and
 * a driver ticket completed once all data I/O for them has finished. */
struct vd_map {
	struct vd_extent *ext;
	unsigned n, cap;
	void *ticket;		  /* driver state to pass to complete(); NULL if none */
	struct vd_waiter *waiter; /* set by the caller; queued by the driver with -EAGAIN */
	struct vd_extent inline_ext[VD_MAP_INLINE];
};

void vd_map_init(struct vd_map *m);
void vd_map_reset(struct vd_map *m);
void vd_map_free(struct vd_map *m);
/* Append an extent (merged with the previous one when contiguous and alike).
 * Returns 0 or -ENOMEM. */
int vd_map_add(struct vd_map *m, const struct vd_extent *e);
/* vd_map_add() of guest [off, off+len) stored at fd @ host_off (DATA), and of
 * a run with no bytes in this layer's files (type ZERO or UNALLOC). */
int vd_map_add_data(struct vd_map *m, uint64_t off, uint64_t len, int fd, uint64_t host_off);
int vd_map_add_hole(struct vd_map *m, uint64_t off, uint64_t len, enum vd_ext_type type);

/* What block status reports for a run of guest bytes. */
enum vd_bs {
	VD_BS_DATA,    /* allocated in this layer, reads as data */
	VD_BS_ZERO,    /* reads as zeroes (allocated or not) in this layer */
	VD_BS_UNALLOC, /* not in this layer: the backing image decides */
};

enum vd_map_flags {
	VD_MAP_WRITE = 1 << 0, /* allocate; return DATA extents only (with cow where needed) */
};

/* Commands on a persistent dirty bitmap (vd_format.bitmap). */
enum vd_bitmap_cmd {
	VD_BITMAP_ADD,	   /* a new enabled, empty, persistent bitmap */
	VD_BITMAP_REMOVE,  /* the bitmap and its clusters go */
	VD_BITMAP_ENABLE,  /* writes are recorded again */
	VD_BITMAP_DISABLE, /* writes are no longer recorded */
	VD_BITMAP_CLEAR,   /* every bit zero */
};

/* A copy of a persistent bitmap's bits: bit i (words[i / 64] >> i % 64 & 1)
 * covers guest bytes [i << gbits, (i + 1) << gbits); nbits covers the disk.
 * words is malloc'd (vd_bitmap_bits_free()). */
struct vd_bitmap_bits {
	uint64_t *words;
	uint64_t nbits;
	unsigned gbits;
};

void vd_bitmap_bits_free(struct vd_bitmap_bits *b);

/* "add", "remove", "enable", "disable", "clear"; the command by that name:
 * 0 or -EINVAL. */
const char *vd_bitmap_cmd_name(enum vd_bitmap_cmd cmd);
int vd_bitmap_cmd_parse(const char *word, enum vd_bitmap_cmd *cmd);

/* Options for creating a new image (mirror destinations, tests). */
struct vd_create_opts {
	uint64_t size;
	uint32_t cluster_size; /* qcow2 cluster / vhdx block size; 0 = format default */
	uint32_t sector_size;  /* vhdx logical sector size; 0 = 512 */
	const char *backing;   /* backing file / parent, or NULL */
	const char *backing_fmt;
	bool fixed;    /* vhdx fixed / fully preallocated */
	unsigned mode; /* permission bits of the new file; 0 = 0644 (less umask) */
};

/* ---- the image as a driver sees it ---- */

#include <pthread.h>
#include <stdatomic.h>

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
	const char *within;	 /* directory for VD_BACKING_WITHIN_SOURCE */
	uint64_t cache_size;	 /* metadata cache bytes per image; 0 = driver default */
	uint64_t cache_budget;	 /* metadata cache bytes of all images together; 0 = default */
	const char *vhdx_parent; /* override for a vhdx differencing parent path */
	bool raw_by_default;	 /* no magic matched: raw (single-image mounts) */
	bool cache_direct;	 /* aligned data I/O bypasses the host page cache */
	bool nofollow;		 /* the path is resolved: no symbolic link anywhere in it */
	bool force_share;	 /* read-only: share every permission, like qemu-img -U */
	bool inactive;		 /* the top image starts inactive (image_activate()) */
};

struct vd_image {
	/* Fixed after open (image_open_chain() and the driver's open, before
	 * the image is registered and shared): read by every thread without a
	 * lock. Locks: docs/design.md "Locks". */
	char *path; /* as given (absolute for backing files) */
	char *name; /* base name, for messages */
	/* The numbers are fixed; image_reopen() puts another open file
	 * description of the same file behind them (dup3()). */
	int fd;
	int dio_fd; /* O_DIRECT twin of fd for aligned data I/O, or -1 */
	/* What dio_fd needs (the file system's own, from statx; else 4096):
	 * offset and length, and buffer address, alignment. */
	uint32_t dio_align, dio_mem_align;
	dev_t dev;
	ino_t ino;
	const struct vd_format *fmt;
	void *priv; /* the driver's state */
	/* Set at open; later set when the image becomes a backing file (under
	 * the registry's lock) and by image_finish(); changed both ways only by
	 * image_reopen(), with the image's requests held. Read without a lock:
	 * a write past the check when it changes still runs. */
	bool read_only; /* new writes fail with EROFS */
	/* Opened for writing (after the driver's open). Stays set when read_only
	 * is set later, because the image became another image's backing file:
	 * fsync and close still write back what the earlier writes left dirty.
	 * Cleared by image_finish(); image_reopen() sets and clears it. */
	bool writable;
	const struct vd_open_opts *opts; /* valid during open only */
	/* The options of the open that made it (format and inactive cleared,
	 * strings owned): the driver's open again in image_reopen(), an
	 * overlay's in image_create_overlay(). Fixed after open. */
	struct vd_open_opts saved_opts;

	/* size changes with the driver's truncate (qcow2: under its lock) and
	 * is read without a lock; the other two are fixed after open. */
	uint64_t size;	       /* virtual size in bytes */
	uint32_t cluster_size; /* cluster / block size; 0 for raw */
	uint32_t zero_align;   /* discard/write_zeroes granularity (>= 512) */

	/* Backing file: drivers fill the names at open; image.c opens it.
	 * Fixed after open, but for image_set_backing() (image-chain.c), which
	 * changes all four while the caller holds every request of the image,
	 * with active_lock held for writing; a metadata call that follows
	 * backing outside a request holds active_lock for reading
	 * (image_block_status(), image_facts_json()). */
	char *backing_names[VD_BACKING_MAX_NAMES]; /* candidates, first match wins */
	char *backing_fmt;
	struct vd_image *backing;
	int depth;

	/* A runtime inconsistency (EIO from a driver) marks the image broken.
	 * Atomics. refs drops to zero only under the registry's lock
	 * (image_unref()), so a registry lookup never revives a dying image. */
	atomic_bool broken;
	atomic_int refs;

	/* Hand-over (image.c): while inactive the driver is closed (priv is
	 * NULL), no lock is held and nothing is cached. The image layer's
	 * metadata calls hold active_lock for reading; image_activate() and
	 * image_inactivate() change the state with it held for writing. */
	pthread_rwlock_t active_lock;
	atomic_bool inactive;

	/* The image layer's own (image-io.c): fsync batches. Drivers do not
	 * touch these. sync_lock guards sync_running and sync_next; it is a
	 * leaf, never held across fmt->flush() or a waiter's done(). */
	pthread_mutex_t sync_lock;
	struct fsync_batch *sync_running, *sync_next;
	/* direct fdatasync calls: their average time, and none before (ns).
	 * Atomics, no lock: only the running batch updates them, one at a
	 * time per image, but successive batches may run on other threads. */
	_Atomic uint64_t sync_inline_avg, sync_inline_after;
};

/* Mark broken after a runtime inconsistency; logs once. */
void image_mark_broken(struct vd_image *img, const char *why);

/* The first of two calls from a driver back up into the image layer: a driver's
 * truncate() while it grows the view may zero [off, off+len), which
 * may lie past img->size since the new size is not visible yet, through the
 * same paths as IMAGE_ZERO (the driver's write_zeroes for aligned parts, or
 * written zeroes). Called without the driver's lock; blocks until done like
 * image_submit_wait(). */
int image_zero_grow_wait(struct vd_image *img, uint64_t len, uint64_t off);

/* The second up-call, for a file an image names besides its backing file
 * (qcow2's external data file; what says which, for messages): only during
 * the driver's open(), while img->opts is set. The name is resolved like a
 * backing name (relative to the image's directory) and obeys the same policy
 * (backing=deny refuses it, within-source wants it inside the source and
 * opens it without following links); the file must be a regular file other
 * than the image itself. It counts in the descriptor budget and gets the
 * locks QEMU takes on a data file for the way the image is opened (those of
 * the image, but sharing write; none while it opens inactive).
 * flags: O_RDONLY, or O_RDWR (a read-only file system: read-only, and
 * *read_only is set). Returns the descriptor or -errno, logged. The driver
 * owns it and gives it back with image_close_aux_file() when it closes. */
int image_open_aux_file(struct vd_image *img, const char *name, const char *what, int flags,
			bool *read_only);
void image_close_aux_file(int fd);

/*
 * One format. Every function returns 0 or a negative errno. Drivers log a message
 * naming the image, offset and structure (vd_err() in util/log.h) before
 * returning an error a user must understand.
 */
struct vd_format {
	const char *name;

	/* Score how well the first bytes of a file (len >= 4096 unless the file is
	 * shorter) match this format: 0 = not at all, 100 = magic matched. */
	int (*probe)(const uint8_t *buf, size_t len, const char *path);

	/* Open img->fd (already open, O_RDWR unless img->read_only) and fill
	 * img->size, img->cluster_size, img->backing_name/backing_fmt, img->priv.
	 * May set img->read_only with a logged reason (corrupt bit, ...). */
	int (*open)(struct vd_image *img);
	/* Optional: make the file final while the image stays open for reading:
	 * write and sync everything close would write (metadata, the clean mark,
	 * the trimmed tail). NULL: flush, then fdatasync. image_finish() calls it
	 * once and then clears img->writable. */
	int (*finish)(struct vd_image *img);
	/* Free priv, first writing back what finish would when img->writable is
	 * still set; writes nothing to a finished image. Does not close img->fd. */
	void (*close)(struct vd_image *img);

	/* Map [off, off+len) (within img->size). Reads may return any extent type;
	 * with VD_MAP_WRITE only DATA extents (allocating as needed, under the
	 * driver's lock, never holding it across data I/O). A write that must wait
	 * for another request's allocation queues m->waiter and returns -EAGAIN
	 * without having changed anything; the caller retries on wake. */
	int (*map)(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags,
		   struct vd_map *m);
	/* Called once for every map that returned a ticket, after all its data
	 * I/O finished: err == 0 links new allocations, err < 0 rolls them back.
	 * Returns 0, or -errno when the allocations could not be linked (rolled
	 * back as far as they were not): the request then fails with it. A read
	 * may get a ticket too (host space it holds until its I/O is done, so
	 * that nothing frees and reuses that space under it). */
	int (*complete)(struct vd_image *img, void *ticket, int err);

	/* Optional: the bytes of the clusters / blocks in which this layer holds
	 * guest data (st_blocks, the allocated xattr), cheap enough for every
	 * stat. NULL: the host file's allocation. */
	int (*allocated)(struct vd_image *img, uint64_t *bytes);

	/* Status of the run starting at off: *pnum (1..len) bytes of one kind. */
	int (*block_status)(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
			    enum vd_bs *status);

	/* Deallocate / zero [off, off+len), both multiples of img->zero_align
	 * (the generic code writes zeroes for unaligned heads and tails). After
	 * discard the range reads as zeroes. NULL = not supported. */
	int (*discard)(struct vd_image *img, uint64_t off, uint64_t len);
	int (*write_zeroes)(struct vd_image *img, uint64_t off, uint64_t len);

	/* Make all metadata for completed writes durable in the safe order
	 * (including the syncs that order it). The caller then fsyncs the data
	 * files through io_uring. */
	int (*flush)(struct vd_image *img);

	/* Change the virtual size; -ENOTSUP / -EBUSY with a logged reason. */
	int (*truncate)(struct vd_image *img, uint64_t size);

	/* Write a fresh image at path (which must not exist). */
	int (*create)(const char *path, const struct vd_create_opts *o);

	/* Extra facts for the info JSON (already inside an object). Optional. */
	void (*info)(struct vd_image *img, struct json_writer *j);

	/* Optional: a command on the persistent dirty bitmap name, on a
	 * writable, active image; granularity (bytes) only for ADD, 0 for the
	 * driver's default. Done and durable when it returns. -EEXIST,
	 * -ENOENT, -EINVAL, -ENOSPC, -EFBIG, -ENOTSUP with a logged reason.
	 * NULL: the format has no bitmaps. */
	int (*bitmap)(struct vd_image *img, enum vd_bitmap_cmd cmd, const char *name,
		      uint32_t granularity);

	/* Optional: make the file name name (NULL: no backing file), of format
	 * fmt (NULL: not recorded), as img's backing file, on a writable,
	 * active image whose guest data reads the same either way (the caller
	 * copied it). Crash-safe: after a power cut at any point the file names
	 * the old or the new one, consistently; durable when it returns.
	 * -ENOTSUP with a logged reason where that cannot be done safely.
	 * Changes nothing in struct vd_image (the image layer does). NULL: the
	 * format cannot change its backing file here (raw, vhdx). */
	int (*set_backing)(struct vd_image *img, const char *name, const char *fmt);
	/* Optional (with bitmap): a copy of the enabled bitmap name's bits,
	 * and with clear the bitmap cleared in the same step under the
	 * driver's lock, so that no write falls between (durable when it
	 * returns; a failed call changes nothing). bitmap_merge ORs bits of
	 * the same granularity and size back into it, durably. 0 or -errno
	 * with a logged reason. */
	int (*bitmap_take)(struct vd_image *img, const char *name, bool clear,
			   struct vd_bitmap_bits *out);
	int (*bitmap_merge)(struct vd_image *img, const char *name,
			    const struct vd_bitmap_bits *in);

	/* Optional: is parent the right backing for img (vhdx linkage GUID)? */
	int (*check_backing)(struct vd_image *img, struct vd_image *parent);
};

extern const struct vd_format vd_format_raw;
extern const struct vd_format vd_format_qcow2;
extern const struct vd_format vd_format_vhdx;

/* All formats in probing order (NULL-terminated). */
extern const struct vd_format *const vd_formats[];
const struct vd_format *vd_format_by_name(const char *name);

#endif
