/* The qcow2 driver's private state and the functions its files share:
 * qcow2.c (open, header, ops table), qcow2-cache.c (L2 / refcount block cache),
 * qcow2-refcount.c (refcounts, allocation, deferred frees, flush order),
 * qcow2-rebuild.c (refcounts rebuilt after an unclean close), qcow2-map.c (map,
 * complete, discard, zeroing), qcow2-status.c (block status, allocation count),
 * qcow2-resize.c (truncate), qcow2-bitmap.c (persistent bitmaps; their live commands
 * in qcow2-bitmap-cmd.c), qcow2-backing.c (the header's extensions, the backing
 * link rewritten), qcow2-create.c. */
#ifndef VDISKFS_QCOW2_H
#define VDISKFS_QCOW2_H

#include <endian.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "image/format.h"

#define QCOW2_MAGIC 0x514649fbu

#define QCOW2_INCOMPAT_DIRTY	 (1ull << 0)
#define QCOW2_INCOMPAT_CORRUPT	 (1ull << 1)
#define QCOW2_INCOMPAT_DATA_FILE (1ull << 2)
#define QCOW2_INCOMPAT_COMPRESS	 (1ull << 3)
#define QCOW2_INCOMPAT_EXTL2	 (1ull << 4)
#define QCOW2_INCOMPAT_KNOWN                                                        \
	(QCOW2_INCOMPAT_DIRTY | QCOW2_INCOMPAT_CORRUPT | QCOW2_INCOMPAT_DATA_FILE | \
	 QCOW2_INCOMPAT_COMPRESS | QCOW2_INCOMPAT_EXTL2)
#define QCOW2_COMPAT_LAZY	 (1ull << 0)
#define QCOW2_AUTOCLEAR_BITMAPS	 (1ull << 0)
#define QCOW2_AUTOCLEAR_DATA_RAW (1ull << 1)

#define QCOW2_EXT_END	    0x00000000u
#define QCOW2_EXT_BACKFMT   0xe2792acau
#define QCOW2_EXT_FEATURES  0x6803f857u
#define QCOW2_EXT_BITMAPS   0x23852875u
#define QCOW2_EXT_CRYPTO    0x0537be77u
#define QCOW2_EXT_DATA_FILE 0x44415441u

#define QCOW2_OFF_MASK	      0x00fffffffffffe00ull
#define QCOW2_COPIED	      (1ull << 63)
#define QCOW2_COMPRESSED      (1ull << 62)
#define QCOW2_ZERO	      1ull
#define QCOW2_RT_OFF_MASK     0xfffffffffffffe00ull
#define QCOW2_EXTL2_ALL_ALLOC 0xffffffffull
#define QCOW2_EXTL2_ALL_ZERO  0xffffffff00000000ull

/* Header field offsets for field-sized rewrites. */
#define QCOW2_HDR_SIZE	    24
#define QCOW2_HDR_L1	    36
#define QCOW2_HDR_RT	    48
#define QCOW2_HDR_INCOMPAT  72
#define QCOW2_HDR_AUTOCLEAR 88

/* Limits QEMU enforces at open. */
#define QCOW2_MAX_L1_BYTES  (32u << 20)
#define QCOW2_MAX_RT_BYTES  (8u << 20)
#define QCOW2_MAX_SNAPSHOTS 65536

enum qcow2_ctype { QC_UNALLOC, QC_ZERO_PLAIN, QC_ZERO_ALLOC, QC_NORMAL, QC_COMPRESSED };

struct qcow2_cache_entry {
	uint64_t off; /* host offset of the table; 0 = empty slot */
	uint64_t lru;
	bool dirty;
	void *buf; /* NULL until the slot is first used, and again once trimmed */
};

struct qcow2;

/* A small write-back cache of one-cluster tables. Its n slots get their
 * buffers on first use; the buffers of every image's caches count against
 * one daemon-wide budget (qcow2-cache.c), and the clean ones of caches not
 * used lately are freed when a cache needs a buffer over that budget. */
struct qcow2_cache {
	struct qcow2 *q;
	const char *what;
	unsigned n, last;
	unsigned nbuf; /* slots with a buffer */
	uint64_t tick;
	struct qcow2_cache_entry *e;
	/* Ordering: called before a dirty entry is written back on eviction. */
	int (*before_writeback)(struct qcow2 *q);
	/* On the daemon-wide list once the image is open (qcow2_cache_share()),
	 * under the list's lock; used: the trim epoch of the last lookup
	 * (written under q->lock, read by a trim without it). */
	struct qcow2_cache *snext, **sprev;
	_Atomic uint64_t used;
};

/* One guest cluster a write touches. */
enum qcow2_item_kind {
	QI_INPLACE,	 /* COPIED cluster, no metadata change */
	QI_INPLACE_META, /* COPIED cluster whose entry changes (zero flag, subclusters) */
	QI_NEW,		 /* a freshly allocated cluster replaces the entry */
	QI_READ,	 /* host bytes a read reads (src_off/src_len only) */
};

struct qcow2_item {
	enum qcow2_item_kind kind;
	uint64_t gcl;		   /* guest cluster index */
	uint64_t host;		   /* host cluster written */
	uint32_t set_alloc;	   /* extended L2: subclusters the write makes allocated */
	uint64_t src_off, src_len; /* host bytes read for copy-on-write (busy) */
	bool dropped;		   /* zeroed or discarded while in flight: not linked */
};

struct qcow2_ticket {
	struct qcow2_ticket *next, **pprev; /* on q->inflight or q->readers */
	uint64_t meta_first, meta_last;	    /* guest clusters whose entries change */
	bool has_meta;
	struct vd_waiter *waiters;
	unsigned n, cap;
	struct qcow2_item *items;
};

/* A reference dropped in memory whose refcount decrement waits until the
 * metadata that stopped referencing it is on disk. Bytes [off, off+len): every
 * host cluster they touch loses one reference. */
struct qcow2_free {
	uint64_t off, len;
};

struct qcow2_snapshot {
	uint64_t l1_offset;
	uint32_t l1_size;
};

/* Memory the enabled persistent bitmaps of one image may take. */
#define QCOW2_BITMAP_MEM_MAX (256ull << 20)

/* One entry of the bitmap directory. */
struct qcow2_bitmap {
	char *name;
	uint64_t pos;	/* of its entry in the directory */
	uint32_t flags; /* on disk at open (after a store: as stored) */
	uint8_t gbits;
	uint64_t table_off;
	uint32_t table_size;
	/* Exact at open and understood: in_use is cleared again at store. */
	bool kept;
	uint64_t *table; /* kept bitmaps: the table, host order */
	uint64_t nbits;
	uint64_t *bits; /* enabled kept bitmaps of a writable image: whole table clusters
			 * (a command's store also writes a disabled one's from here) */
	bool is_new;	/* added, not stored yet: no entry in the old directory */
	bool removing;	/* left out of the directory the store writes */
};

/*
 * Locking (docs/design.md "Locks"; docs/qcow2.md "Locking and tickets"): one
 * mutex, lock, guards everything that changes after open. Every operation on
 * an open image takes it (info only around the bitmaps); the helpers in
 * qcow2-*.c run under it, or in open before the image is shared. Metadata
 * I/O is synchronous under it, data I/O never is, and waiters are woken only
 * after it is dropped. It is a leaf: nothing else is locked while it is held
 * (the I/O log's own lock aside, when armed); truncate drops it while the
 * generic path writes zeroes (see resizing).
 *
 * Fixed after open: set by qcow2_open() (the dirty bit in incompat is cleared
 * by the refcount rebuild there) and read without the lock; but size (truncate)
 * and autoclear (qcow2_prepare_write()) are under lock.
 */
struct qcow2 {
	struct vd_image *img;
	pthread_mutex_t lock;

	uint32_t version, header_length;
	uint32_t cluster_bits, cluster_size;
	uint64_t size;
	uint64_t incompat, compat, autoclear;
	uint32_t refcount_order, refcount_bits;
	uint64_t refcount_max;
	uint8_t compression;
	bool ext_l2;
	uint32_t l2_entries, l2_bits, sc_size, sc_bits;
	uint32_t rb_entries, rb_bits;
	uint32_t csize_shift;
	uint64_t csize_mask, coff_mask;
	bool has_backing;

	/* External data file (incompatible bit 2; docs/qcow2.md "External data
	 * files"), fixed after open. data_fd is -1 without one. With one, every
	 * data cluster lies in it at its guest offset (host == guest), is not
	 * reference-counted, and no compressed cluster may exist. data_raw: the
	 * autoclear bit 1 is set and kept, the data file reads like the disk. */
	char *data_name;
	int data_fd;
	bool data_raw;

	/* Under lock from here on, unless marked fixed. The L1 table moves and
	 * grows with truncate, the refcount table with allocation. */
	uint64_t l1_offset;
	uint32_t l1_size;
	uint64_t *l1;	   /* host order */
	uint8_t *l1_dirty; /* one flag per 512-byte sector of the table */

	uint64_t rt_offset;
	uint32_t rt_clusters;
	uint64_t rt_entries;
	uint64_t *rt; /* host order */

	/* Fixed after open: snapshots are read, never written. */
	uint32_t nb_snapshots;
	uint64_t snapshots_offset, snapshots_bytes;
	struct qcow2_snapshot *snaps;

	/* Under lock (the store and the bitmap commands rewrite them): the
	 * extension (has_bitmaps, bm_ext_off), the directory (nb_bitmaps,
	 * bm_dir, bm_dir_offset, bm_dir_size) and the bms array with each
	 * bitmap's flags, table and bits. */
	bool has_bitmaps;
	uint32_t nb_bitmaps;
	uint64_t bm_dir_offset, bm_dir_size;
	uint64_t bm_ext_off; /* the bitmaps extension's data in the header cluster */
	uint8_t *bm_dir;
	struct qcow2_bitmap *bms;

	/* Allocation and write state: under lock. */
	bool write_ready;  /* autoclear bits handled for writing */
	bool resizing;	   /* a truncate runs (it drops the lock while zeroing) */
	uint64_t host_end; /* clusters: everything at or past is never-written host space */
	uint64_t free_hint;
	/* Bytes: the file's size as far as allocation knows, grown ahead of it
	 * (see prealloc() in qcow2-refcount.c): only that makes it larger than
	 * host_end's clusters. prealloc_off once the filesystem refused. */
	uint64_t file_size;
	bool prealloc_off;
	uint32_t *rebuild_counts; /* during a refcount rebuild */
	uint64_t rebuild_n;

	/* Bytes of the clusters the active L2 tables give guest data (see
	 * entry_weight() in qcow2-map.c), counted on first need, then kept by l2_write(). */
	bool alloc_known;
	uint64_t alloc_bytes;

	/* Under lock: both caches, the tickets on both lists (and the waiters
	 * queued on them), the deferred frees. A ticket taken off its list by
	 * complete() belongs to the completing thread. */
	struct qcow2_cache l2c, rbc;
	struct qcow2_ticket *inflight; /* writes: their clusters and COW sources */
	struct qcow2_ticket *readers;  /* reads: the host bytes they read */
	struct qcow2_free *frees;
	size_t nfrees, cap_frees;
};

static inline uint64_t qcow2_cl(const struct qcow2 *q, uint64_t off)
{
	return off >> q->cluster_bits;
}

/* The file data clusters live in: the external data file or the image. */
static inline int qcow2_data_fd(const struct qcow2 *q)
{
	return q->data_fd >= 0 ? q->data_fd : q->img->fd;
}

/* Known from the header on (the data file itself is opened last). */
static inline bool qcow2_has_data_file(const struct qcow2 *q)
{
	return q->incompat & QCOW2_INCOMPAT_DATA_FILE;
}

/* qcow2.c */
int qcow2_write_header_field(struct qcow2 *q, unsigned off, const void *buf, unsigned len);
bool qcow2_hits_fixed_metadata(struct qcow2 *q, uint64_t off, uint64_t len);
int qcow2_prepare_write(struct qcow2 *q);

/* qcow2-cache.c */
/* Bytes of table buffers all images' caches together keep, unless a cache
 * holds fewer than its minimum; every open sets it from its options (the
 * same for every image of a daemon). */
#define QCOW2_CACHE_BUDGET_DEFAULT (64ull << 20)
void qcow2_cache_set_budget(uint64_t bytes);
int qcow2_cache_init(struct qcow2_cache *c, struct qcow2 *q, unsigned n, const char *what);
/* Put an open image's cache on the daemon-wide list that trims take from:
 * only once every later use is under q->lock. */
void qcow2_cache_share(struct qcow2_cache *c);
void qcow2_cache_destroy(struct qcow2_cache *c);
int qcow2_cache_get(struct qcow2_cache *c, uint64_t off, struct qcow2_cache_entry **out);
int qcow2_cache_get_new(struct qcow2_cache *c, uint64_t off, struct qcow2_cache_entry **out);
void qcow2_cache_dirty(struct qcow2_cache *c, struct qcow2_cache_entry *e);
int qcow2_cache_flush(struct qcow2_cache *c, bool *wrote);
bool qcow2_cache_has_dirty(const struct qcow2_cache *c);
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t off);
struct qcow2_cache_entry *qcow2_cache_peek(struct qcow2_cache *c, uint64_t off);

/* qcow2-refcount.c */
int qcow2_refcount_get(struct qcow2 *q, uint64_t cl, uint64_t *rc);
int qcow2_refcount_add(struct qcow2 *q, uint64_t cl, int delta);
int qcow2_refcount_set(struct qcow2 *q, uint64_t cl, uint64_t v);
int qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *off, bool *fresh);
void qcow2_alloc_rollback(struct qcow2 *q, uint64_t off, uint64_t n);
void qcow2_prealloc_trim(struct qcow2 *q);
int qcow2_defer_free(struct qcow2 *q, uint64_t off, uint64_t len);
int qcow2_free_entry(struct qcow2 *q, uint64_t entry);
int qcow2_refcount_sync(struct qcow2 *q);
int qcow2_data_sync(struct qcow2 *q);
int qcow2_flush_locked(struct qcow2 *q);
void qcow2_compressed_range(const struct qcow2 *q, uint64_t entry, uint64_t *off, uint64_t *len);

/* qcow2-rebuild.c */
int qcow2_rebuild_refcounts(struct qcow2 *q);

/* qcow2-map.c */
enum qcow2_ctype qcow2_classify(const struct qcow2 *q, uint64_t entry);
int qcow2_l2_get(struct qcow2 *q, uint64_t gcl, bool write, struct qcow2_cache_entry **e,
		 unsigned *idx);
/* Entry idx of a loaded L2 table: the entry and (extended L2) its bitmap. */
void qcow2_l2_read(const struct qcow2 *q, const struct qcow2_cache_entry *ce, unsigned idx,
		   uint64_t *e, uint64_t *bm);
/* Is the L2 table of L1 entry l1i at off aligned and in the file? 0 or -EIO. */
int qcow2_l2_table_check(const struct qcow2 *q, uint64_t l1i, uint64_t off);
/* What subcluster sc of an extended entry reads as; -EIO if inconsistent. */
int qcow2_subcluster_type(struct qcow2 *q, uint64_t gcl, uint64_t e, uint64_t bm, unsigned sc,
			  enum vd_ext_type *t);
int qcow2_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags, struct vd_map *m);
int qcow2_complete(struct vd_image *img, void *ticket, int err);
int qcow2_discard(struct vd_image *img, uint64_t off, uint64_t len);
int qcow2_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len);

/* qcow2-status.c */
/* The bytes an entry counts in st_blocks. */
uint64_t qcow2_entry_weight(const struct qcow2 *q, uint64_t e, uint64_t bm);
int qcow2_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       enum vd_bs *status);
int qcow2_allocated(struct vd_image *img, uint64_t *bytes);

/* qcow2-resize.c */
int qcow2_truncate(struct vd_image *img, uint64_t size);

/* qcow2-bitmap.c */
struct json_writer;
int qcow2_bitmaps_open(struct qcow2 *q, uint64_t file_size);
void qcow2_bitmaps_free(struct qcow2 *q);
void qcow2_bitmaps_dirty(struct qcow2 *q, uint64_t off, uint64_t len);
int qcow2_bitmaps_mark_in_use(struct qcow2 *q);
int qcow2_bitmaps_store(struct qcow2 *q);
bool qcow2_bitmaps_block_resize(struct qcow2 *q);
int qcow2_bitmap(struct vd_image *img, enum vd_bitmap_cmd cmd, const char *name, uint32_t gran);
int qcow2_bitmap_take(struct vd_image *img, const char *name, bool clear,
		      struct vd_bitmap_bits *out);
int qcow2_bitmap_merge(struct vd_image *img, const char *name, const struct vd_bitmap_bits *in);
void qcow2_bitmaps_info(struct qcow2 *q, struct json_writer *j);

/* qcow2-backing.c */
/* Read the header cluster into c0 and walk its extensions: *end the end
 * marker (or where the area ends), *at the last extension of this type or
 * 0, *limit where the area must end (the backing file name, else the
 * cluster's end). 0 or -errno. */
int qcow2_ext_scan(struct qcow2 *q, uint8_t *c0, uint32_t type, uint64_t *end, uint64_t *at,
		   uint64_t *limit);
int qcow2_set_backing(struct vd_image *img, const char *name, const char *fmt);

/* qcow2-create.c */
int qcow2_create(const char *path, const struct vd_create_opts *o);

#endif
