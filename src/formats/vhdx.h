/* The VHDX driver's private state and the seams between its files: vhdx.c
 * (headers, open/close), vhdx-meta.c (region table, metadata, parent locator),
 * vhdx-log.c (log replay and log writes, header updates), vhdx-bat.c (BAT,
 * sector bitmaps, dirty pages, allocation), vhdx-map.c (map, complete, block
 * status, discard), vhdx-resize.c (growing) and vhdx-create.c (new images). On-disk layout: MS-VHDX
 * v1. */
#ifndef VDISKFS_VHDX_H
#define VDISKFS_VHDX_H

#include <endian.h>
#include <glib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "image/format.h"

#define VHDX_MiB	     (1ull << 20)
#define VHDX_KiB	     1024ull
#define VHDX_HEADER1_OFF     (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF     (128 * VHDX_KiB)
#define VHDX_RT1_OFF	     (192 * VHDX_KiB)
#define VHDX_RT2_OFF	     (256 * VHDX_KiB)
#define VHDX_HEADER_SIZE     4096
#define VHDX_RT_SIZE	     (64 * VHDX_KiB)
#define VHDX_META_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_LOG_SECTOR	     4096
#define VHDX_SB_SIZE	     VHDX_MiB /* one sector-bitmap block */
#define VHDX_MAX_SIZE	     (64ull << 40)
/* The BAT is held whole in memory: 64 MiB is a 64 TiB disk in blocks of
 * 16 MiB or more (qemu-img and Hyper-V make 32 MiB blocks at that size), or
 * 8 TiB less a bit in the smallest, 1 MiB, blocks. */
#define VHDX_MAX_BAT_BYTES (64ull << 20)

/* BAT entry states */
enum {
	VHDX_BAT_NOT_PRESENT = 0,
	VHDX_BAT_UNDEFINED = 1,
	VHDX_BAT_ZERO = 2,
	VHDX_BAT_UNMAPPED = 3,
	VHDX_BAT_UNMAPPED_V095 = 5,
	VHDX_BAT_FULLY_PRESENT = 6,
	VHDX_BAT_PARTIALLY_PRESENT = 7,
	VHDX_SB_PRESENT = 6,
};
#define VHDX_BAT_STATE(e)    ((unsigned)((e)&7))
#define VHDX_BAT_OFF(e)	     ((e)&0xFFFFFFFFFFF00000ull)
#define VHDX_BAT_RESERVED(e) ((e)&0xFFFF8ull)

typedef struct {
	uint8_t b[16];
} vhdx_guid;

extern const vhdx_guid vhdx_guid_bat, vhdx_guid_meta, vhdx_guid_file_params, vhdx_guid_disk_size,
	vhdx_guid_page83, vhdx_guid_lss, vhdx_guid_pss, vhdx_guid_parent_locator,
	vhdx_guid_locator_type;

struct vhdx_header {
	uint64_t seq;
	vhdx_guid file_write, data_write, log_guid;
	uint16_t log_version, version;
	uint32_t log_length;
	uint64_t log_offset;
};

/* One in-use range of the file (header section, log, regions) for overlap checks. */
struct vhdx_range {
	uint64_t off, len;
	const char *what;
};

/* A chunk's sector bitmap, loaded on demand (differencing disks only). */
struct vhdx_sb {
	uint8_t *bits;	   /* VHDX_SB_SIZE bytes, or NULL when not loaded */
	uint8_t dirty[32]; /* one bit per 4 KiB page */
};

/* Per-block change carried by a write ticket from map() to complete(). */
struct vhdx_tblock {
	uint64_t block;
	uint64_t entry; /* new BAT entry when set_entry */
	bool set_entry;
	uint32_t bit_first, bit_n; /* sectors within the block to mark present */
};

struct vhdx_ticket {
	struct vd_waiter *waiters;
	unsigned n, cap;
	struct vhdx_tblock b[];
};

/*
 * Locking (docs/design.md "Locks"): one mutex, lock, guards everything that
 * changes after open, as in qcow2. map, complete, discard, block status,
 * allocated, flush, finish and close take it; metadata I/O (BAT and sector
 * bitmap pages, the log, headers) is synchronous under it; waiters are woken
 * only after it is dropped. It is a leaf (the I/O log's own lock aside, when
 * armed). Fields are fixed after open (set by vhdx_open(), read without the
 * lock) unless a comment says "under lock".
 */
struct vhdx {
	struct vd_image *img;
	pthread_mutex_t lock;

	/* headers: under lock (rewritten at the session's first write, when the
	 * log starts and at close); replayed is fixed */
	uint8_t hdr_raw[VHDX_HEADER_SIZE]; /* the current header as on disk */
	struct vhdx_header hdr;
	int hdr_slot; /* 0: header 1 current, 1: header 2 */
	bool session_file_guid, session_data_guid;
	vhdx_guid file_guid, data_guid; /* this session's GUIDs */
	bool replayed;			/* a log was replayed at open */

	/* regions */
	uint64_t bat_off, meta_off;
	uint32_t bat_len, meta_len;
	struct vhdx_range used[16];
	int nused;

	/* metadata */
	uint32_t block_size, lss, pss;
	uint64_t disk_size;	/* under lock (a grow changes it) */
	uint64_t size_item_off; /* file offset of VirtualDiskSize */
	bool has_parent, leave_alloc;
	vhdx_guid page83;
	vhdx_guid linkage, linkage2;
	bool has_linkage2;
	char *loc_relative, *loc_volume, *loc_absolute;

	/* geometry: nblocks and nchunks under lock (a grow changes them) */
	uint64_t nblocks, nchunks;
	uint64_t chunk_ratio;
	uint32_t spb; /* sectors per block */

	/* BAT, whole in memory (host order), dirty 4 KiB pages; all under lock
	 * (a grow reallocates the arrays). */
	uint64_t *bat;
	uint64_t bat_entries; /* in memory (whole pages) */
	uint8_t *bat_dirty;
	uint64_t ndirty;
	/* Bytes of the blocks the BAT marks present (st_blocks): counted on
	 * first need, then kept by bat_set(). */
	bool alloc_known;
	uint64_t alloc_bytes;

	/* sector bitmaps: the array (nchunks, a grow reallocates it), each
	 * chunk's bits and dirty flags (loaded on demand) under lock */
	struct vhdx_sb *sb;

	/* The metadata page holding VirtualDiskSize while a grow writes it
	 * through the log (written after the BAT and bitmap pages): under lock */
	bool meta_dirty;
	uint8_t meta_page[VHDX_LOG_SECTOR];

	/* allocation and writes in flight: under lock */
	uint64_t file_end;    /* next free 1 MiB-aligned offset */
	GHashTable *inflight; /* block + 1 -> struct vhdx_ticket */

	/* log writer: under lock */
	bool log_active; /* LogGuid set in the header this session */
	uint64_t log_seq, log_head;
};

static inline bool vhdx_bit_get(const uint8_t *bits, uint64_t i)
{
	return bits[i / 8] >> (i % 8) & 1;
}

/* First bit of block b in its chunk's sector bitmap. */
static inline uint64_t vhdx_sb_first_bit(const struct vhdx *v, uint64_t b)
{
	return (b % v->chunk_ratio) * v->spb;
}

static inline bool vhdx_guid_eq(const vhdx_guid *a, const vhdx_guid *b)
{
	return !memcmp(a->b, b->b, 16);
}

static inline bool vhdx_guid_zero(const vhdx_guid *g)
{
	static const vhdx_guid z;
	return vhdx_guid_eq(g, &z);
}

/* vhdx.c */
uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len);
/* CRC-32C of buf with the 4-byte checksum field at csum_off taken as zero. */
uint32_t vhdx_checksum(const void *buf, size_t len, size_t csum_off);
void vhdx_guid_random(vhdx_guid *g);
/* "{xxxxxxxx-xxxx-...}" (braces optional) to on-disk bytes; 0 or -EINVAL. */
int vhdx_guid_parse(const char *s, vhdx_guid *g);
void vhdx_guid_format(const vhdx_guid *g, char out[39]);
void vhdx_header_parse(const uint8_t *buf, struct vhdx_header *h);
void vhdx_header_build(uint8_t *buf, const struct vhdx_header *h);

/* vhdx-meta.c */
/* Does [off, off+len) overlap a structure of the file? Returns its name or NULL. */
const char *vhdx_overlaps(const struct vhdx *v, uint64_t off, uint64_t len);
/* Record [off, off+len) as the structure what; -EINVAL if it overlaps one. */
int vhdx_use_range(struct vhdx *v, uint64_t off, uint64_t len, const char *what);
int vhdx_read_region_table(struct vhdx *v);
int vhdx_read_metadata(struct vhdx *v);
/* Fill the image's backing names from the parent locator (or -o vhdx_parent). */
int vhdx_backing_names(struct vhdx *v);

/* vhdx-log.c */
int vhdx_log_open(struct vhdx *v, uint64_t file_size);
int vhdx_log_replay(struct vhdx *v, uint64_t *file_size);
int vhdx_header_update(struct vhdx *v, bool new_data_guid, const vhdx_guid *log_guid);
int vhdx_begin_write(struct vhdx *v, bool data);
int vhdx_flush_locked(struct vhdx *v);
int vhdx_close_log(struct vhdx *v);

/* vhdx-bat.c */
int vhdx_bat_load(struct vhdx *v, uint64_t file_size);
void vhdx_bat_free(struct vhdx *v);
uint64_t vhdx_bat_index(const struct vhdx *v, uint64_t block);
/* Entries the BAT region must hold for nblocks payload blocks. */
uint64_t vhdx_bat_need(const struct vhdx *v, uint64_t nblocks);
/* Entries held in memory for nchunks chunks (whole 4 KiB pages). */
uint64_t vhdx_bat_mem_entries(const struct vhdx *v, uint64_t nchunks);
uint64_t vhdx_sb_index(const struct vhdx *v, uint64_t chunk);
/* The bytes BAT entry idx counts in st_blocks. */
uint64_t vhdx_bat_weight(const struct vhdx *v, uint64_t idx, uint64_t entry);
/* Set BAT entry idx, marking its page dirty. */
void vhdx_bat_set(struct vhdx *v, uint64_t idx, uint64_t entry);
/* Mark the pages of bits [bit_first, bit_first+n) of a chunk's bitmap dirty. */
void vhdx_sb_mark(struct vhdx *v, uint64_t chunk, uint64_t bit_first, uint64_t n);
void vhdx_bits_assign(uint8_t *bits, uint64_t first, uint64_t n, bool val);
/* Collect the dirty metadata pages (BAT, sector bitmaps): calls fn for each. */
int vhdx_dirty_pages(struct vhdx *v,
		     int (*fn)(struct vhdx *v, uint64_t file_off, const uint8_t *page, void *arg),
		     void *arg);
void vhdx_dirty_clear(struct vhdx *v);
/* The bitmap of a chunk, loaded on first use; with alloc, a chunk without
 * one gets a fresh zeroed 1 MiB block at the end of the file. */
int vhdx_sb_get(struct vhdx *v, uint64_t chunk, bool alloc, uint8_t **out);
/* len bytes at the end of the file (extended to hold them): *out. */
int vhdx_alloc_space(struct vhdx *v, uint64_t len, uint64_t *out);

/* vhdx-map.c */
int vhdx_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags, struct vd_map *m);
int vhdx_complete(struct vd_image *img, void *ticket, int err);
int vhdx_allocated(struct vd_image *img, uint64_t *bytes);
int vhdx_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		      enum vd_bs *status);
int vhdx_discard(struct vd_image *img, uint64_t off, uint64_t len);

/* vhdx-resize.c */
int vhdx_truncate(struct vd_image *img, uint64_t size);

/* vhdx-create.c */
int vhdx_create(const char *path, const struct vd_create_opts *o);

#endif
