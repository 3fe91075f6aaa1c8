/* The VHDX BAT and sector bitmaps: loading and validating the table (with the
 * sector-bitmap interleave), mapping guest ranges for reads and writes,
 * allocating blocks at the end of the file, committing tickets, block status
 * and discard. Dirty pages reach the disk through the log (vhdx-log.c). */
#include <errno.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>

#include "util/compiler.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

#define BAT_PAGE_ENTRIES (VHDX_LOG_SECTOR / 8)
#define VHDX_DIRTY_MAX 64 /* dirty pages that force a log flush on complete() */

uint64_t vhdx_bat_index(const struct vhdx *v, uint64_t block)
{
	return block + block / v->chunk_ratio;
}

uint64_t vhdx_sb_index(const struct vhdx *v, uint64_t chunk)
{
	return chunk * (v->chunk_ratio + 1) + v->chunk_ratio;
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

static int bat_check_entry(struct vhdx *v, uint64_t idx, uint64_t len, bool sb,
			   uint64_t file_size, bool last)
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
	if (v->has_parent)
		need = v->nchunks * (v->chunk_ratio + 1);
	else
		need = v->nblocks + (v->nblocks - 1) / v->chunk_ratio;
	if ((uint64_t)v->bat_len < need * 8) {
		vd_err("%s: BAT region at 0x%" PRIx64 " holds %u entries, the disk needs %" PRIu64,
		       v->img->path, v->bat_off, v->bat_len / 8, need);
		return -EINVAL;
	}
	need = v->nchunks * (v->chunk_ratio + 1);
	v->bat_entries = (need + BAT_PAGE_ENTRIES - 1) / BAT_PAGE_ENTRIES * BAT_PAGE_ENTRIES;
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
static uint64_t bat_weight(const struct vhdx *v, uint64_t idx, uint64_t entry)
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

static void bat_set(struct vhdx *v, uint64_t idx, uint64_t entry)
{
	uint64_t page = idx / BAT_PAGE_ENTRIES;

	if (v->alloc_known)
		v->alloc_bytes += bat_weight(v, idx, entry) - bat_weight(v, idx, v->bat[idx]);
	v->bat[idx] = entry;
	if (!v->bat_dirty[page]) {
		v->bat_dirty[page] = 1;
		v->ndirty++;
	}
}

static void sb_mark(struct vhdx *v, uint64_t chunk, uint64_t bit_first, uint64_t n)
{
	struct vhdx_sb *sb = &v->sb[chunk];
	uint64_t p0 = bit_first / 8 / VHDX_LOG_SECTOR, p1 = (bit_first + n - 1) / 8 / VHDX_LOG_SECTOR;

	for (uint64_t p = p0; p <= p1; p++) {
		if (!(sb->dirty[p / 8] & (1u << (p % 8)))) {
			sb->dirty[p / 8] |= 1u << (p % 8);
			v->ndirty++;
		}
	}
}

static void bits_assign(uint8_t *bits, uint64_t first, uint64_t n, bool val)
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
	return ret;
}

void vhdx_dirty_clear(struct vhdx *v)
{
	memset(v->bat_dirty, 0, v->bat_entries / BAT_PAGE_ENTRIES);
	for (uint64_t c = 0; v->sb && c < v->nchunks; c++)
		memset(v->sb[c].dirty, 0, sizeof(v->sb[c].dirty));
	v->ndirty = 0;
}

/* ---- sector bitmaps ---- */

/* The bitmap of a chunk, loaded on first use; with alloc, a chunk without
 * one gets a fresh zeroed 1 MiB block at the end of the file. */
static int alloc_space(struct vhdx *v, uint64_t len, uint64_t *out);

static int sb_get(struct vhdx *v, uint64_t chunk, bool alloc, uint8_t **out)
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
		ret = alloc_space(v, VHDX_SB_SIZE, &off);
		if (!ret)
			bat_set(v, idx, off | VHDX_SB_PRESENT);
	}
	if (ret) {
		free(sb->bits);
		sb->bits = NULL;
		return ret;
	}
	*out = sb->bits;
	return 0;
}

static inline bool bit_get(const uint8_t *bits, uint64_t i)
{
	return bits[i / 8] >> (i % 8) & 1;
}

/* First bit of block b in its chunk's bitmap. */
static inline uint64_t sb_first_bit(const struct vhdx *v, uint64_t b)
{
	return (b % v->chunk_ratio) * v->spb;
}

/* ---- allocation ---- */

static int alloc_space(struct vhdx *v, uint64_t len, uint64_t *out)
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

/* ---- map ---- */

/* Runs of a partially present block [pos, end): DATA where the bitmap says
 * this file, UNALLOC (the parent) elsewhere. */
static int map_read_partial(struct vhdx *v, uint64_t b, uint64_t host, uint64_t pos,
			    uint64_t end, struct vd_map *m)
{
	uint64_t bstart = b * v->block_size, bit0 = sb_first_bit(v, b);
	uint8_t *bits;
	int ret = sb_get(v, b / v->chunk_ratio, false, &bits);

	while (!ret && pos < end) {
		uint64_t sec = (pos - bstart) / v->lss;
		bool here = bit_get(bits, bit0 + sec);
		uint64_t run = pos;

		while (run < end && bit_get(bits, bit0 + (run - bstart) / v->lss) == here)
			run = min_u64((run / v->lss + 1) * v->lss, end);
		if (here)
			ret = vd_map_add_data(m, pos, run - pos, v->img->fd, host + (pos - bstart));
		else
			ret = vd_map_add_hole(m, pos, run - pos, VD_EXT_UNALLOC);
		pos = run;
	}
	return ret;
}

static int map_read(struct vhdx *v, uint64_t off, uint64_t len, struct vd_map *m)
{
	uint64_t pos = off, end = off + len;
	int ret = 0;

	while (!ret && pos < end) {
		uint64_t b = pos / v->block_size, bstart = b * v->block_size;
		uint64_t bend = min_u64(bstart + v->block_size, end);
		uint64_t e = v->bat[vhdx_bat_index(v, b)];

		switch (VHDX_BAT_STATE(e)) {
		case VHDX_BAT_FULLY_PRESENT:
			ret = vd_map_add_data(m, pos, bend - pos, v->img->fd,
					      VHDX_BAT_OFF(e) + pos - bstart);
			break;
		case VHDX_BAT_PARTIALLY_PRESENT:
			ret = map_read_partial(v, b, VHDX_BAT_OFF(e), pos, bend, m);
			break;
		case VHDX_BAT_NOT_PRESENT:
			ret = vd_map_add_hole(m, pos, bend - pos,
					      v->has_parent ? VD_EXT_UNALLOC : VD_EXT_ZERO);
			break;
		default:
			ret = vd_map_add_hole(m, pos, bend - pos, VD_EXT_ZERO);
			break;
		}
		pos = bend;
	}
	return ret;
}

struct wctx {
	struct vhdx_ticket *t;
	unsigned cap;
};

static struct vhdx_tblock *ticket_block(struct wctx *w, uint64_t b)
{
	struct vhdx_tblock *tb;

	if (!w->t) {
		w->t = calloc(1, sizeof(*w->t) + w->cap * sizeof(w->t->b[0]));
		if (!w->t)
			return NULL;
		w->t->cap = w->cap;
	}
	if (w->t->n && w->t->b[w->t->n - 1].block == b)
		return &w->t->b[w->t->n - 1];
	tb = &w->t->b[w->t->n++];
	tb->block = b;
	return tb;
}

/* Place a new block at the end of the file and record in the ticket that its
 * BAT entry becomes host | state once the data has landed. */
static int new_block(struct vhdx *v, struct wctx *w, uint64_t b, uint64_t state, uint64_t *host)
{
	struct vhdx_tblock *tb;
	int ret = alloc_space(v, v->block_size, host);

	if (ret)
		return ret;
	tb = ticket_block(w, b);
	if (!tb)
		return -ENOMEM;
	tb->set_entry = true;
	tb->entry = *host | state;
	return 0;
}

/* Write [s, e) of a block whose sectors are partly in this file. A partial
 * sector whose bit is clear is written whole, its other bytes read from the
 * parent; the touched sectors get their bits set on complete(). */
static int map_write_partial(struct vhdx *v, uint64_t b, uint64_t host, const uint8_t *bits,
			     uint64_t s, uint64_t e, struct vd_map *m, struct wctx *w)
{
	uint64_t bstart = b * v->block_size, bit0 = sb_first_bit(v, b), lss = v->lss;
	uint64_t sec0 = (s - bstart) / lss, sec1 = (e - 1 - bstart) / lss;
	bool need_bits = false;
	uint64_t pos = s;
	int ret = 0;

	while (!ret && pos < e) {
		uint64_t sstart = pos / lss * lss, send = sstart + lss, pend;
		struct vd_extent x = {.src = {.type = VD_EXT_DATA, .fd = v->img->fd}};
		bool here = bits && bit_get(bits, bit0 + (sstart - bstart) / lss);

		if (pos == sstart && e >= send) {
			pend = e / lss * lss;
		} else {
			pend = min_u64(e, send);
			if (!here)
				x.cow = (struct vd_cow){
					.off = sstart, .len = lss, .n = 1,
					.seg = {{.off = sstart, .len = lss,
						 .src.type = VD_EXT_UNALLOC}}};
		}
		x.off = pos;
		x.len = pend - pos;
		x.src.host_off = host + (pos - bstart);
		ret = vd_map_add(m, &x);
		pos = pend;
	}
	for (uint64_t i = sec0; i <= sec1 && !need_bits; i++)
		need_bits = !bits || !bit_get(bits, bit0 + i);
	if (!ret && need_bits) {
		struct vhdx_tblock *tb = ticket_block(w, b);
		if (!tb)
			return -ENOMEM;
		tb->bit_first = sec0;
		tb->bit_n = sec1 - sec0 + 1;
	}
	return ret;
}

static int map_write_block(struct vhdx *v, uint64_t b, uint64_t s, uint64_t e,
			   struct vd_map *m, struct wctx *w)
{
	uint64_t bstart = b * v->block_size, bend = min_u64(bstart + v->block_size, v->disk_size);
	uint64_t ent = v->bat[vhdx_bat_index(v, b)], host;
	unsigned st = VHDX_BAT_STATE(ent);
	uint8_t *bits;
	int ret;

	if (st == VHDX_BAT_FULLY_PRESENT)
		return vd_map_add_data(m, s, e - s, v->img->fd, VHDX_BAT_OFF(ent) + s - bstart);
	if (st == VHDX_BAT_PARTIALLY_PRESENT) {
		ret = sb_get(v, b / v->chunk_ratio, false, &bits);
		return ret ? ret : map_write_partial(v, b, VHDX_BAT_OFF(ent), bits, s, e, m, w);
	}
	if (v->has_parent && st == VHDX_BAT_NOT_PRESENT && (s != bstart || e != bend)) {
		/* Part of a block the parent shows through: partially present. */
		ret = sb_get(v, b / v->chunk_ratio, true, &bits);
		if (!ret)
			ret = new_block(v, w, b, VHDX_BAT_PARTIALLY_PRESENT, &host);
		if (ret)
			return ret;
		return map_write_partial(v, b, host, NULL, s, e, m, w);
	}
	/* Zeroes (or the whole block) before: a fresh block, the rest reads zero. */
	ret = new_block(v, w, b, VHDX_BAT_FULLY_PRESENT, &host);
	if (ret)
		return ret;
	return vd_map_add_data(m, s, e - s, v->img->fd, host + s - bstart);
}

static void *block_key(uint64_t b)
{
	return GSIZE_TO_POINTER((gsize)b + 1);
}

static int map_write(struct vhdx *v, uint64_t off, uint64_t len, struct vd_map *m)
{
	uint64_t first = off / v->block_size, last = (off + len - 1) / v->block_size;
	struct wctx w = {.cap = last - first + 1};
	int ret = vhdx_begin_write(v, true);

	if (ret)
		return ret;
	for (uint64_t b = first; b <= last; b++) {
		struct vhdx_ticket *t = g_hash_table_lookup(v->inflight, block_key(b));
		if (t) {
			m->waiter->next = t->waiters;
			t->waiters = m->waiter;
			return -EAGAIN;
		}
	}
	for (uint64_t b = first; b <= last && !ret; b++) {
		uint64_t s = b == first ? off : b * v->block_size;
		uint64_t e = min_u64((b + 1) * v->block_size, off + len);
		ret = map_write_block(v, b, s, e, m, &w);
	}
	if (ret) {
		free(w.t); /* space already taken at the end of the file just leaks */
		return ret;
	}
	if (w.t) {
		for (unsigned i = 0; i < w.t->n; i++)
			g_hash_table_insert(v->inflight, block_key(w.t->b[i].block), w.t);
		m->ticket = w.t;
	}
	return 0;
}

int vhdx_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags, struct vd_map *m)
{
	struct vhdx *v = img->priv;
	int ret;

	if (!len)
		return 0;
	pthread_mutex_lock(&v->lock);
	ret = flags & VD_MAP_WRITE ? map_write(v, off, len, m) : map_read(v, off, len, m);
	pthread_mutex_unlock(&v->lock);
	return ret;
}

static void ticket_apply(struct vhdx *v, const struct vhdx_tblock *tb)
{
	uint64_t c = tb->block / v->chunk_ratio, bit0 = sb_first_bit(v, tb->block);
	uint8_t *bits = v->sb ? v->sb[c].bits : NULL;

	if (tb->set_entry && VHDX_BAT_STATE(tb->entry) == VHDX_BAT_PARTIALLY_PRESENT && bits) {
		/* Bits left from an earlier life of the block mean nothing now. */
		bits_assign(bits, bit0, v->spb, false);
		sb_mark(v, c, bit0, v->spb);
	}
	if (tb->bit_n && bits) {
		bits_assign(bits, bit0 + tb->bit_first, tb->bit_n, true);
		sb_mark(v, c, bit0 + tb->bit_first, tb->bit_n);
	}
	if (tb->set_entry)
		bat_set(v, vhdx_bat_index(v, tb->block), tb->entry);
}

int vhdx_complete(struct vd_image *img, void *ticket, int err)
{
	struct vhdx *v = img->priv;
	struct vhdx_ticket *t = ticket;
	struct vd_waiter *w, *next;

	pthread_mutex_lock(&v->lock);
	for (unsigned i = 0; i < t->n; i++) {
		if (!err)
			ticket_apply(v, &t->b[i]);
		g_hash_table_remove(v->inflight, block_key(t->b[i].block));
	}
	w = t->waiters;
	if (!err && v->ndirty >= VHDX_DIRTY_MAX)
		vhdx_flush_locked(v); /* failures are logged; the next flush retries */
	pthread_mutex_unlock(&v->lock);
	free(t);
	for (; w; w = next) {
		next = w->next;
		w->wake(w);
	}
	return 0; /* linking is in memory; the log flush above is retried later */
}

/* ---- allocation count (st_blocks) ---- */

int vhdx_allocated(struct vd_image *img, uint64_t *bytes)
{
	struct vhdx *v = img->priv;

	pthread_mutex_lock(&v->lock);
	if (!v->alloc_known) {
		uint64_t sum = 0, n = v->nblocks ? vhdx_bat_index(v, v->nblocks - 1) + 1 : 0;

		for (uint64_t idx = 0; idx < n; idx++)
			sum += bat_weight(v, idx, v->bat[idx]);
		v->alloc_bytes = sum;
		v->alloc_known = true;
	}
	*bytes = v->alloc_bytes;
	pthread_mutex_unlock(&v->lock);
	return 0;
}

/* ---- block status ---- */

/* Status of the run starting at pos inside one block, up to end. */
static int status_in_block(struct vhdx *v, uint64_t pos, uint64_t end, uint64_t *run,
			   enum vd_bs *st)
{
	uint64_t b = pos / v->block_size, bstart = b * v->block_size;
	uint64_t e = v->bat[vhdx_bat_index(v, b)], bit0 = sb_first_bit(v, b);
	uint8_t *bits;
	bool here;
	int ret;

	end = min_u64(end, bstart + v->block_size);
	*run = end;
	switch (VHDX_BAT_STATE(e)) {
	case VHDX_BAT_FULLY_PRESENT:
		*st = VD_BS_DATA;
		return 0;
	case VHDX_BAT_NOT_PRESENT:
		*st = v->has_parent ? VD_BS_UNALLOC : VD_BS_ZERO;
		return 0;
	case VHDX_BAT_PARTIALLY_PRESENT:
		break;
	default:
		*st = VD_BS_ZERO;
		return 0;
	}
	ret = sb_get(v, b / v->chunk_ratio, false, &bits);
	if (ret)
		return ret;
	here = bit_get(bits, bit0 + (pos - bstart) / v->lss);
	*st = here ? VD_BS_DATA : VD_BS_UNALLOC;
	for (uint64_t p = (pos / v->lss + 1) * v->lss; p < end; p += v->lss) {
		if (bit_get(bits, bit0 + (p - bstart) / v->lss) != here) {
			*run = p;
			break;
		}
	}
	return 0;
}

int vhdx_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		      enum vd_bs *status)
{
	struct vhdx *v = img->priv;
	uint64_t pos = off, end = off + len, run;
	enum vd_bs st;
	int ret;

	pthread_mutex_lock(&v->lock);
	ret = status_in_block(v, pos, end, &run, status);
	pos = run;
	while (!ret && pos < end) {
		ret = status_in_block(v, pos, end, &run, &st);
		if (ret || st != *status)
			break;
		pos = run;
	}
	pthread_mutex_unlock(&v->lock);
	*pnum = pos - off;
	return ret;
}

/* ---- discard / write zeroes ---- */

static int zero_host(struct vhdx *v, uint64_t host, uint64_t len)
{
	int mode = FALLOC_FL_KEEP_SIZE;
	int ret;

	/* Fixed disks keep their space; dynamic ones give it back. */
	ret = meta_fallocate(v->img->fd, mode | (v->leave_alloc ? FALLOC_FL_ZERO_RANGE
								: FALLOC_FL_PUNCH_HOLE),
			     host, len);
	if (ret == -EOPNOTSUPP && v->leave_alloc)
		ret = meta_fallocate(v->img->fd, mode | FALLOC_FL_PUNCH_HOLE, host, len);
	return ret == -EOPNOTSUPP ? -ENOTSUP : ret;
}

/* Can [off, off+len) be discarded without writing data? Differencing blocks
 * the parent shows through cannot be zeroed in part, nor blocks in flight. */
static bool discard_possible(struct vhdx *v, uint64_t off, uint64_t len)
{
	for (uint64_t pos = off; pos < off + len;) {
		uint64_t b = pos / v->block_size, bstart = b * v->block_size;
		uint64_t bend = min_u64(bstart + v->block_size, v->disk_size);
		uint64_t e = min_u64(bend, off + len);
		unsigned st = VHDX_BAT_STATE(v->bat[vhdx_bat_index(v, b)]);

		if (g_hash_table_lookup(v->inflight, block_key(b)))
			return false;
		if (v->has_parent && st == VHDX_BAT_NOT_PRESENT && (pos != bstart || e != bend))
			return false;
		pos = e;
	}
	return true;
}

static int discard_block(struct vhdx *v, uint64_t b, uint64_t s, uint64_t e)
{
	uint64_t bstart = b * v->block_size, bend = min_u64(bstart + v->block_size, v->disk_size);
	uint64_t idx = vhdx_bat_index(v, b), ent = v->bat[idx], host = VHDX_BAT_OFF(ent);
	unsigned st = VHDX_BAT_STATE(ent);
	uint8_t *bits;
	int ret;

	if (st == VHDX_BAT_FULLY_PRESENT || st == VHDX_BAT_PARTIALLY_PRESENT) {
		if (!v->leave_alloc && s == bstart && e == bend) {
			bat_set(v, idx, VHDX_BAT_ZERO);
			return zero_host(v, host, v->block_size);
		}
		if (st == VHDX_BAT_PARTIALLY_PRESENT) {
			/* The sectors now belong to this file and read as zeroes. */
			ret = sb_get(v, b / v->chunk_ratio, false, &bits);
			if (ret)
				return ret;
			bits_assign(bits, sb_first_bit(v, b) + (s - bstart) / v->lss,
				    (e - s) / v->lss, true);
			sb_mark(v, b / v->chunk_ratio, sb_first_bit(v, b) + (s - bstart) / v->lss,
				(e - s) / v->lss);
		}
		return zero_host(v, host + (s - bstart), e - s);
	}
	if (v->has_parent && st == VHDX_BAT_NOT_PRESENT)
		bat_set(v, idx, VHDX_BAT_ZERO); /* whole block (checked before) */
	return 0;
}

int vhdx_discard(struct vd_image *img, uint64_t off, uint64_t len)
{
	struct vhdx *v = img->priv;
	int ret;

	pthread_mutex_lock(&v->lock);
	if (!discard_possible(v, off, len)) {
		ret = -ENOTSUP; /* the generic code writes zeroes instead */
		goto out;
	}
	ret = vhdx_begin_write(v, true);
	for (uint64_t pos = off; !ret && pos < off + len;) {
		uint64_t b = pos / v->block_size;
		uint64_t e = min_u64((b + 1) * v->block_size, off + len);
		ret = discard_block(v, b, pos, e);
		pos = e;
	}
out:
	pthread_mutex_unlock(&v->lock);
	return ret;
}
