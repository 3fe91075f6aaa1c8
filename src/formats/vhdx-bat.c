/* The VHDX BAT and sector bitmaps: loading and validating the table (with the
 * sector-bitmap interleave), setting entries and bits with their dirty pages,
 * and allocating space at the end of the file. Dirty pages reach the disk
 * through the log (vhdx-log.c); the map that uses all this is vhdx-map.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "util/compiler.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

#define BAT_PAGE_ENTRIES (VHDX_LOG_SECTOR / 8)

uint64_t vhdx_bat_index(const struct vhdx *v, uint64_t block)
{
	return block + block / v->chunk_ratio;
}

uint64_t vhdx_sb_index(const struct vhdx *v, uint64_t chunk)
{
	return chunk * (v->chunk_ratio + 1) + v->chunk_ratio;
}

uint64_t vhdx_bat_mem_entries(const struct vhdx *v, uint64_t nchunks)
{
	return ALIGN_UP(nchunks * (v->chunk_ratio + 1), BAT_PAGE_ENTRIES);
}

/* ---- loading ---- */

struct span {
	uint64_t off, len, entry;
};

static int span_cmp(const void *a, const void *b)
{
	const struct span *x = a, *y = b;

	return x->off < y->off ? -1 : x->off > y->off;
}

static int bat_check_entry(struct vhdx *v, uint64_t idx, uint64_t len, bool sb, uint64_t file_size,
			   bool last)
{
	uint64_t e = v->bat[idx], off = VHDX_BAT_OFF(e);
	unsigned st = VHDX_BAT_STATE(e);
	const char *what = sb ? "sector bitmap" : "payload block", *o;
	const char *why = NULL;

	if (VHDX_BAT_RESERVED(e))
		why = "reserved bits set";
	else if (sb && st != 0 && st != VHDX_SB_PRESENT)
		why = "invalid state";
	else if (!sb && (st == 4 || (st == VHDX_BAT_PARTIALLY_PRESENT && !v->has_parent)))
		why = "invalid state";
	else if (st < VHDX_BAT_FULLY_PRESENT)
		return 0;
	else if (off < VHDX_MiB)
		why = "offset inside the header section";
	else if (off >= file_size || (!last && off + len > file_size))
		why = "data past the end of the file";
	else if ((o = vhdx_overlaps(v, off, len)))
		why = o;
	if (!why)
		return 1;
	vd_err("%s: BAT entry %" PRIu64 " at 0x%" PRIx64 " (%s, 0x%016" PRIx64 "): %s",
	       v->img->path, idx, v->bat_off + idx * 8, what, e, why);
	return -EINVAL;
}

/* Check every payload block and sector bitmap entry; returns how many point
 * into the file (and stores them in s, when given) or -errno. */
static int64_t bat_spans(struct vhdx *v, uint64_t file_size, struct span *s)
{
	int64_t n = 0;
	int ret = 0;

	for (uint64_t b = 0; b < v->nblocks && ret >= 0; b++) {
		uint64_t idx = vhdx_bat_index(v, b);
		ret = bat_check_entry(v, idx, v->block_size, false, file_size, b == v->nblocks - 1);
		if (ret > 0 && s)
			s[n] = (struct span){VHDX_BAT_OFF(v->bat[idx]), v->block_size, idx};
		n += ret > 0;
	}
	for (uint64_t c = 0; v->has_parent && c < v->nchunks && ret >= 0; c++) {
		uint64_t idx = vhdx_sb_index(v, c);
		ret = bat_check_entry(v, idx, VHDX_SB_SIZE, true, file_size, false);
		if (ret > 0 && s)
			s[n] = (struct span){VHDX_BAT_OFF(v->bat[idx]), VHDX_SB_SIZE, idx};
		n += ret > 0;
	}
	return ret < 0 ? ret : n;
}

static int bat_validate(struct vhdx *v, uint64_t file_size)
{
	/* Counted first: sized by the entries that point into the file, not
	 * by the disk (24 bytes a block, three times the BAT, even if empty). */
	int64_t n = bat_spans(v, file_size, NULL);
	uint64_t end = file_size;
	struct span *s;
	int ret = 0;

	if (n < 0)
		return n;
	s = malloc((n ? n : 1) * sizeof(*s));
	if (!s)
		return -ENOMEM;
	bat_spans(v, file_size, s); /* the same entries, checked above */
	qsort(s, n, sizeof(*s), span_cmp);
	for (int64_t i = 0; i < n; i++) {
		if (i + 1 < n && s[i].off + s[i].len > s[i + 1].off) {
			vd_err("%s: BAT entries %" PRIu64 " and %" PRIu64 " at 0x%" PRIx64
			       " share file space at 0x%" PRIx64,
			       v->img->path, s[i].entry, s[i + 1].entry, v->bat_off, s[i + 1].off);
			ret = -EINVAL;
			break;
		}
		if (s[i].off + s[i].len > end)
			end = s[i].off + s[i].len;
	}
	for (int i = 0; i < v->nused; i++)
		if (v->used[i].off + v->used[i].len > end)
			end = v->used[i].off + v->used[i].len;
	v->file_end = ALIGN_UP(end, VHDX_MiB);
	free(s);
	return ret;
}

uint64_t vhdx_bat_need(const struct vhdx *v, uint64_t nblocks)
{
	uint64_t nchunks = (nblocks + v->chunk_ratio - 1) / v->chunk_ratio;

	/* A dynamic disk's region may end after its last payload entry; a
	 * differencing disk's holds every chunk's sector bitmap entry. */
	if (v->has_parent)
		return nchunks * (v->chunk_ratio + 1);
	return nblocks + (nblocks - 1) / v->chunk_ratio;
}

static int bat_geometry(struct vhdx *v)
{
	uint64_t need;

	v->spb = v->block_size / v->lss;
	v->chunk_ratio = ((1ull << 23) * v->lss) / v->block_size;
	v->nblocks = (v->disk_size + v->block_size - 1) / v->block_size;
	v->nchunks = (v->nblocks + v->chunk_ratio - 1) / v->chunk_ratio;
	if (v->nchunks * (v->chunk_ratio + 1) * 8 > VHDX_MAX_BAT_BYTES) {
		vd_err("%s: BAT of %" PRIu64 " bytes (a %" PRIu64 "-byte disk in %u-byte blocks) "
		       "is larger than the limit of %llu MiB held in memory",
		       v->img->path, v->nchunks * (v->chunk_ratio + 1) * 8, v->disk_size,
		       v->block_size, VHDX_MAX_BAT_BYTES >> 20);
		return -EINVAL;
	}
	need = vhdx_bat_need(v, v->nblocks);
	if ((uint64_t)v->bat_len < need * 8) {
		vd_err("%s: BAT region at 0x%" PRIx64 " holds %u entries, the disk needs %" PRIu64,
		       v->img->path, v->bat_off, v->bat_len / 8, need);
		return -EINVAL;
	}
	v->bat_entries = vhdx_bat_mem_entries(v, v->nchunks);
	return 0;
}

int vhdx_bat_load(struct vhdx *v, uint64_t file_size)
{
	uint64_t nread;
	int ret = bat_geometry(v);

	if (ret)
		return ret;
	v->bat = calloc(v->bat_entries, 8);
	v->bat_dirty = calloc(v->bat_entries / BAT_PAGE_ENTRIES, 1);
	if (v->has_parent)
		v->sb = calloc(v->nchunks, sizeof(*v->sb));
	if (!v->bat || !v->bat_dirty || (v->has_parent && !v->sb))
		return -ENOMEM;
	nread = min_u64(v->bat_entries, v->bat_len / 8);
	ret = meta_pread_zfill(v->img->fd, v->bat, nread * 8, v->bat_off);
	if (ret) {
		vd_err("%s: cannot read the BAT at 0x%" PRIx64 ": %s", v->img->path, v->bat_off,
		       strerror(-ret));
		return ret;
	}
	for (uint64_t i = 0; i < nread; i++)
		v->bat[i] = le64toh(v->bat[i]);
	return bat_validate(v, file_size);
}

void vhdx_bat_free(struct vhdx *v)
{
	for (uint64_t c = 0; v->sb && c < v->nchunks; c++)
		free(v->sb[c].bits);
	free(v->sb);
	free(v->bat);
	free(v->bat_dirty);
	v->sb = NULL;
	v->bat = NULL;
	v->bat_dirty = NULL;
}

/* ---- dirty pages ---- */

/* The bytes BAT entry idx counts in st_blocks: a payload block marked fully or
 * partially present whole (up to the end of the disk); sector bitmap blocks
 * and blocks that are absent, zero or unmapped nothing. */
uint64_t vhdx_bat_weight(const struct vhdx *v, uint64_t idx, uint64_t entry)
{
	unsigned st = VHDX_BAT_STATE(entry);
	uint64_t b, start;

	if (idx % (v->chunk_ratio + 1) == v->chunk_ratio)
		return 0; /* a sector bitmap block */
	if (st != VHDX_BAT_FULLY_PRESENT && st != VHDX_BAT_PARTIALLY_PRESENT)
		return 0;
	b = idx - idx / (v->chunk_ratio + 1);
	start = b * v->block_size;
	return start >= v->disk_size ? 0 : min_u64(v->block_size, v->disk_size - start);
}

void vhdx_bat_set(struct vhdx *v, uint64_t idx, uint64_t entry)
{
	uint64_t page = idx / BAT_PAGE_ENTRIES;

	if (v->alloc_known)
		v->alloc_bytes +=
			vhdx_bat_weight(v, idx, entry) - vhdx_bat_weight(v, idx, v->bat[idx]);
	v->bat[idx] = entry;
	if (!v->bat_dirty[page]) {
		v->bat_dirty[page] = 1;
		v->ndirty++;
	}
}

void vhdx_sb_mark(struct vhdx *v, uint64_t chunk, uint64_t bit_first, uint64_t n)
{
	struct vhdx_sb *sb = &v->sb[chunk];
	uint64_t p0 = bit_first / 8 / VHDX_LOG_SECTOR,
		 p1 = (bit_first + n - 1) / 8 / VHDX_LOG_SECTOR;

	for (uint64_t p = p0; p <= p1; p++) {
		if (!(sb->dirty[p / 8] & (1u << (p % 8)))) {
			sb->dirty[p / 8] |= 1u << (p % 8);
			v->ndirty++;
		}
	}
}

void vhdx_bits_assign(uint8_t *bits, uint64_t first, uint64_t n, bool val)
{
	for (uint64_t i = first; i < first + n; i++) {
		if (val)
			bits[i / 8] |= 1u << (i % 8);
		else
			bits[i / 8] &= ~(1u << (i % 8));
	}
}

int vhdx_dirty_pages(struct vhdx *v,
		     int (*fn)(struct vhdx *v, uint64_t file_off, const uint8_t *page, void *arg),
		     void *arg)
{
	uint64_t page[BAT_PAGE_ENTRIES];
	int ret = 0;

	/* Bitmaps first: a block state never points at bits not yet written. */
	for (uint64_t c = 0; v->sb && c < v->nchunks && !ret; c++) {
		struct vhdx_sb *sb = &v->sb[c];
		uint64_t base = VHDX_BAT_OFF(v->bat[vhdx_sb_index(v, c)]);

		for (unsigned p = 0; p < VHDX_SB_SIZE / VHDX_LOG_SECTOR && !ret; p++)
			if (sb->dirty[p / 8] & (1u << (p % 8)))
				ret = fn(v, base + p * VHDX_LOG_SECTOR,
					 sb->bits + p * VHDX_LOG_SECTOR, arg);
	}
	for (uint64_t p = 0; p < v->bat_entries / BAT_PAGE_ENTRIES && !ret; p++) {
		if (!v->bat_dirty[p])
			continue;
		for (unsigned i = 0; i < BAT_PAGE_ENTRIES; i++)
			page[i] = htole64(v->bat[p * BAT_PAGE_ENTRIES + i]);
		ret = fn(v, v->bat_off + p * VHDX_LOG_SECTOR, (const uint8_t *)page, arg);
	}
	/* Last: a grow's new size after the BAT entries its blocks need. */
	if (v->meta_dirty && !ret)
		ret = fn(v, ALIGN_DOWN(v->size_item_off, VHDX_LOG_SECTOR), v->meta_page, arg);
	return ret;
}

void vhdx_dirty_clear(struct vhdx *v)
{
	memset(v->bat_dirty, 0, v->bat_entries / BAT_PAGE_ENTRIES);
	for (uint64_t c = 0; v->sb && c < v->nchunks; c++)
		memset(v->sb[c].dirty, 0, sizeof(v->sb[c].dirty));
	v->meta_dirty = false;
	v->ndirty = 0;
}

/* ---- sector bitmaps ---- */

int vhdx_sb_get(struct vhdx *v, uint64_t chunk, bool alloc, uint8_t **out)
{
	struct vhdx_sb *sb = &v->sb[chunk];
	uint64_t idx = vhdx_sb_index(v, chunk), e = v->bat[idx], off;
	int ret;

	if (sb->bits) {
		*out = sb->bits;
		return 0;
	}
	if (VHDX_BAT_STATE(e) != VHDX_SB_PRESENT && !alloc) {
		vd_err("%s: partially present block in chunk %" PRIu64 " but its sector bitmap "
		       "(BAT entry %" PRIu64 ") is not present",
		       v->img->path, chunk, idx);
		image_mark_broken(v->img, "sector bitmap missing");
		return -EIO;
	}
	sb->bits = calloc(1, VHDX_SB_SIZE);
	if (!sb->bits)
		return -ENOMEM;
	if (VHDX_BAT_STATE(e) == VHDX_SB_PRESENT) {
		ret = meta_pread_zfill(v->img->fd, sb->bits, VHDX_SB_SIZE, VHDX_BAT_OFF(e));
	} else {
		ret = vhdx_alloc_space(v, VHDX_SB_SIZE, &off);
		if (!ret)
			vhdx_bat_set(v, idx, off | VHDX_SB_PRESENT);
	}
	if (ret) {
		free(sb->bits);
		sb->bits = NULL;
		return ret;
	}
	*out = sb->bits;
	return 0;
}

/* ---- allocation ---- */

int vhdx_alloc_space(struct vhdx *v, uint64_t len, uint64_t *out)
{
	uint64_t off = v->file_end;
	int ret;

	if (off < VHDX_MiB || off % VHDX_MiB)
		return -EIO;
	/* Extending the file makes the new space read as zeroes. */
	ret = meta_ftruncate(v->img->fd, off + len);
	if (ret) {
		vd_err("%s: cannot extend the file to 0x%" PRIx64 " for a new block: %s",
		       v->img->path, off + len, strerror(-ret));
		return ret;
	}
	v->file_end = off + len;
	*out = off;
	return 0;
}
