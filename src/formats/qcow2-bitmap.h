/* What the two halves of the qcow2 bitmaps code share: qcow2-bitmap.c (the
 * directory, the bits in memory, the store) and qcow2-bitmap-cmd.c (the live
 * commands). Private to them. */
#ifndef VDISKFS_FORMATS_QCOW2_BITMAP_H
#define VDISKFS_FORMATS_QCOW2_BITMAP_H

#include <stddef.h>
#include <stdint.h>

#include "formats/qcow2.h"

#define BME_IN_USE	   (1u << 0)
#define BME_AUTO	   (1u << 1)
#define BME_EXTRA_COMPAT   (1u << 2)
#define BME_TYPE_DIRTY	   1
#define BME_MIN_GBITS	   9
#define BME_MAX_GBITS	   31
#define BME_MAX_NAME	   1023
#define BME_MAX_TABLE	   0x8000000u
#define BME_MAX_PHYS	   (512ull << 20)
#define BME_ENTRY_RESERVED 0xff000000000001feull
#define BME_ENTRY_ALL_ONES 1ull

/* Where a first bitmaps extension goes in the header cluster: at the end
 * marker, the backing file name moved further out first if it is in the way. */
struct ext_place {
	uint64_t end;  /* the end marker (or the end of the extension area) */
	uint8_t *name; /* the backing file name, when it moves */
	uint32_t name_len;
	uint64_t new_name_off; /* where it moves; 0: it stays */
};

/* Bits of a bitmap of granularity 2^gbits over the disk, and the bytes of
 * its serialized form's table. */
uint64_t qcow2_bm_nbits(const struct qcow2 *q, unsigned gbits);
uint64_t qcow2_bm_tsize(const struct qcow2 *q, unsigned gbits);
/* The size of a directory entry with a name of nlen bytes. */
uint64_t qcow2_bm_entry_size_for(size_t nlen);
/* Read a bitmap's table (checked) and its bits into memory (buf: one
 * cluster of scratch). 0 or -errno, logged. */
int qcow2_bm_load_table(struct qcow2 *q, struct qcow2_bitmap *b, uint64_t file_size);
int qcow2_bm_load_bits(struct qcow2 *q, struct qcow2_bitmap *b, uint8_t *buf);
/* Set bits a..b (inclusive) of w. */
void qcow2_bm_set_bits(uint64_t *w, uint64_t a, uint64_t b);

/* The store of every bitmap held in memory: at close with pl NULL, and by
 * every command (pl: where a first extension goes). 0 or -errno. */
int qcow2_bm_store(struct qcow2 *q, const struct ext_place *pl);

#endif
