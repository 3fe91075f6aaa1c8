/* The VHDX driver's private state and the seams between its files: vhdx.c
 * (headers, region table, metadata, open/close), vhdx-log.c (log replay and
 * log writes, header updates), vhdx-bat.c (BAT, sector bitmaps, map and
 * allocation) and vhdx-create.c (new images). On-disk layout: MS-VHDX v1. */
#ifndef VDISKFS_VHDX_H
#define VDISKFS_VHDX_H

#include <endian.h>
#include <glib.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>

#include "image/format.h"

#define VHDX_MiB (1ull << 20)
#define VHDX_KiB 1024ull
#define VHDX_HEADER1_OFF (64 * VHDX_KiB)
#define VHDX_HEADER2_OFF (128 * VHDX_KiB)
#define VHDX_RT1_OFF (192 * VHDX_KiB)
#define VHDX_RT2_OFF (256 * VHDX_KiB)
#define VHDX_HEADER_SIZE 4096
#define VHDX_RT_SIZE (64 * VHDX_KiB)
#define VHDX_META_TABLE_SIZE (64 * VHDX_KiB)
#define VHDX_LOG_SECTOR 4096
#define VHDX_SB_SIZE VHDX_MiB  /* one sector-bitmap block */
#define VHDX_MAX_SIZE (64ull << 40)
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
#define VHDX_BAT_STATE(e) ((unsigned)((e)&7))
#define VHDX_BAT_OFF(e) ((e)&0xFFFFFFFFFFF00000ull)
#define VHDX_BAT_RESERVED(e) ((e)&0xFFFF8ull)

typedef struct {
	uint8_t b[16];
} vhdx_guid;

extern const vhdx_guid vhdx_guid_bat, vhdx_guid_meta, vhdx_guid_file_params,
	vhdx_guid_disk_size, vhdx_guid_page83, vhdx_guid_lss, vhdx_guid_pss,
	vhdx_guid_parent_locator, vhdx_guid_locator_type;

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
	uint64_t entry;	  /* new BAT entry when set_entry */
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
	int hdr_slot;			    /* 0: header 1 current, 1: header 2 */
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
	uint64_t disk_size;
	bool has_parent, leave_alloc;
	vhdx_guid page83;
	vhdx_guid linkage, linkage2;
	bool has_linkage2;
	char *loc_relative, *loc_volume, *loc_absolute;

	/* geometry */
	uint64_t nblocks, nchunks;
	uint64_t chunk_ratio;
	uint32_t spb; /* sectors per block */

	/* BAT, whole in memory (host order), dirty 4 KiB pages. The arrays and
	 * bat_entries are fixed; their contents and the rest under lock. */
	uint64_t *bat;
	uint64_t bat_entries; /* in memory (whole pages) */
	uint8_t *bat_dirty;
	uint64_t ndirty;
	/* Bytes of the blocks the BAT marks present (st_blocks): counted on
	 * first need, then kept by bat_set(). */
	bool alloc_known;
	uint64_t alloc_bytes;

	/* sector bitmaps: the array is fixed, each chunk's bits and dirty
	 * flags (loaded on demand) under lock */
	struct vhdx_sb *sb;

	/* allocation and writes in flight: under lock */
	uint64_t file_end; /* next free 1 MiB-aligned offset */
	GHashTable *inflight; /* block + 1 -> struct vhdx_ticket */

	/* log writer: under lock */
	bool log_active; /* LogGuid set in the header this session */
	uint64_t log_seq, log_head;
};

/* little-endian field access */
static inline uint16_t vhdx_get16(const void *p)
{
	uint16_t v;
	memcpy(&v, p, 2);
	return le16toh(v);
}
static inline uint32_t vhdx_get32(const void *p)
{
	uint32_t v;
	memcpy(&v, p, 4);
	return le32toh(v);
}
static inline uint64_t vhdx_get64(const void *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
	return le64toh(v);
}
static inline void vhdx_put16(void *p, uint16_t v)
{
	v = htole16(v);
	memcpy(p, &v, 2);
}
static inline void vhdx_put32(void *p, uint32_t v)
{
	v = htole32(v);
	memcpy(p, &v, 4);
}
static inline void vhdx_put64(void *p, uint64_t v)
{
	v = htole64(v);
	memcpy(p, &v, 8);
}

static inline uint64_t vhdx_align_up(uint64_t x, uint64_t a)
{
	return (x + a - 1) / a * a;
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
/* Does [off, off+len) overlap a structure of the file? Returns its name or NULL. */
const char *vhdx_overlaps(const struct vhdx *v, uint64_t off, uint64_t len);

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
uint64_t vhdx_sb_index(const struct vhdx *v, uint64_t chunk);
int vhdx_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags, struct vd_map *m);
int vhdx_complete(struct vd_image *img, void *ticket, int err);
int vhdx_allocated(struct vd_image *img, uint64_t *bytes);
int vhdx_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		      enum vd_bs *status);
int vhdx_discard(struct vd_image *img, uint64_t off, uint64_t len);
/* Collect the dirty metadata pages (BAT, sector bitmaps): calls fn for each. */
int vhdx_dirty_pages(struct vhdx *v,
		     int (*fn)(struct vhdx *v, uint64_t file_off, const uint8_t *page, void *arg),
		     void *arg);
void vhdx_dirty_clear(struct vhdx *v);

/* vhdx-create.c */
int vhdx_create(const char *path, const struct vd_create_opts *o);

#endif
