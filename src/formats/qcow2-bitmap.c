/* qcow2 persistent dirty bitmaps (the bitmaps extension): the directory read
 * and checked at open, enabled bitmaps kept in memory and given the bits of
 * every written, zeroed or discarded range, the in_use mark before the first
 * write, and the store at close in QEMU's order (data, tables, a new
 * directory, the header extension; the old clusters freed after). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/json.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

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

/* ---- the directory ---- */

static uint64_t entry_size(const uint8_t *e)
{
	return ALIGN_UP(24 + (uint64_t)get_be32(e + 20) + get_be16(e + 18), 8);
}

static int bad_entry(struct qcow2 *q, uint32_t i, uint64_t pos, const char *why)
{
	vd_err("%s: bitmap directory at 0x%" PRIx64 ": entry %u (offset %" PRIu64 ") %s",
	       q->img->path, q->bm_dir_offset, i, pos, why);
	return -EINVAL;
}

/* Bytes of a bitmap's serialized form and the table entries it needs. */
static uint64_t bitmap_nbits(const struct qcow2 *q, unsigned gbits)
{
	return (q->size + (1ull << gbits) - 1) >> gbits;
}

static uint64_t bitmap_tsize(const struct qcow2 *q, unsigned gbits)
{
	uint64_t bytes = (bitmap_nbits(q, gbits) + 7) / 8;

	return (bytes + q->cluster_size - 1) >> q->cluster_bits;
}

static int check_entry(struct qcow2 *q, uint32_t i, uint64_t pos, uint64_t file_size)
{
	const uint8_t *e = q->bm_dir + pos;
	struct qcow2_bitmap *b = &q->bms[i];
	uint16_t nlen;

	if (pos + 24 > q->bm_dir_size || pos + entry_size(e) > q->bm_dir_size)
		return bad_entry(q, i, pos, "runs past the end of the directory");
	b->pos = pos;
	b->table_off = get_be64(e);
	b->table_size = get_be32(e + 8);
	b->flags = get_be32(e + 12);
	b->gbits = e[17];
	nlen = get_be16(e + 18);
	if (e[16] != BME_TYPE_DIRTY)
		return bad_entry(q, i, pos, "has an unknown bitmap type");
	if (b->gbits < BME_MIN_GBITS || b->gbits > BME_MAX_GBITS)
		return bad_entry(q, i, pos, "has a granularity outside 2^9..2^31");
	if (b->flags & ~(BME_IN_USE | BME_AUTO | BME_EXTRA_COMPAT))
		return bad_entry(q, i, pos, "has reserved flags set");
	if (!nlen || nlen > BME_MAX_NAME)
		return bad_entry(q, i, pos, "has a name of 0 or more than 1023 bytes");
	if (!b->table_size || b->table_size > BME_MAX_TABLE ||
	    (uint64_t)b->table_size * q->cluster_size > BME_MAX_PHYS)
		return bad_entry(q, i, pos, "has a bitmap table of bad size");
	if (!b->table_off || b->table_off & (q->cluster_size - 1) || b->table_off > file_size ||
	    (uint64_t)b->table_size * 8 > file_size - b->table_off ||
	    qcow2_hits_fixed_metadata(q, b->table_off, (uint64_t)b->table_size * 8))
		return bad_entry(q, i, pos,
				 "has a bitmap table unaligned, past the end of the file or on "
				 "the header, L1 or refcount table");
	b->name = strndup((const char *)e + 24 + get_be32(e + 20), nlen);
	if (!b->name)
		return -ENOMEM;
	/* Exact now and understood: its in_use mark is cleared again at store. */
	b->kept = !(b->flags & BME_IN_USE) && !get_be32(e + 20) &&
		  b->table_size == bitmap_tsize(q, b->gbits);
	return 0;
}

static int load_table(struct qcow2 *q, struct qcow2_bitmap *b, uint64_t file_size)
{
	int ret;

	b->table = calloc(b->table_size, 8);
	if (!b->table)
		return -ENOMEM;
	ret = meta_pread(q->img->fd, b->table, (uint64_t)b->table_size * 8, b->table_off);
	if (ret) {
		vd_err("%s: cannot read the table of bitmap '%s' at 0x%" PRIx64 ": %s",
		       q->img->path, b->name, b->table_off, strerror(-ret));
		return ret;
	}
	for (uint32_t j = 0; j < b->table_size; j++) {
		uint64_t t = be64toh(b->table[j]), off = t & QCOW2_OFF_MASK;

		b->table[j] = t;
		if ((t & BME_ENTRY_RESERVED) || (off && (t & BME_ENTRY_ALL_ONES)) ||
		    (off & (q->cluster_size - 1)) || off >= file_size ||
		    (off && qcow2_hits_fixed_metadata(q, off, q->cluster_size))) {
			vd_err("%s: bitmap '%s': table entry %u at 0x%" PRIx64
			       " is invalid (0x%" PRIx64 ")",
			       q->img->path, b->name, j, b->table_off + 8 * (uint64_t)j, t);
			return -EINVAL;
		}
	}
	return 0;
}

/* ---- the bits in memory ---- */

static void set_bits(uint64_t *w, uint64_t a, uint64_t b)
{
	uint64_t wa = a / 64, wb = b / 64;
	uint64_t ma = ~0ull << (a % 64), mb = ~0ull >> (63 - b % 64);

	if (wa == wb) {
		w[wa] |= ma & mb;
		return;
	}
	w[wa] |= ma;
	for (uint64_t i = wa + 1; i < wb; i++)
		w[i] = ~0ull;
	w[wb] |= mb;
}

static int load_bits(struct qcow2 *q, struct qcow2_bitmap *b, uint8_t *buf)
{
	uint64_t per = (uint64_t)q->cluster_size * 8; /* bits one table entry holds */
	int ret;

	b->nbits = bitmap_nbits(q, b->gbits);
	b->bits = calloc(b->table_size, q->cluster_size);
	if (!b->bits)
		return -ENOMEM;
	for (uint32_t j = 0; j < b->table_size; j++) {
		uint64_t t = b->table[j], off = t & QCOW2_OFF_MASK, *w = b->bits + j * per / 64;
		uint64_t last = (j + 1) * per < b->nbits ? (j + 1) * per : b->nbits;

		if (!off) {
			if (t & BME_ENTRY_ALL_ONES)
				set_bits(b->bits, j * per, last - 1);
			continue;
		}
		ret = meta_pread(q->img->fd, buf, q->cluster_size, off);
		if (ret) {
			vd_err("%s: cannot read bitmap '%s' data at 0x%" PRIx64 ": %s",
			       q->img->path, b->name, off, strerror(-ret));
			return ret;
		}
		for (uint32_t k = 0; k < q->cluster_size / 8; k++)
			w[k] = le64toh(((uint64_t *)buf)[k]);
	}
	/* Bits past the disk's end are not part of the bitmap. */
	if (b->nbits % 64)
		b->bits[b->nbits / 64] &= ~0ull >> (64 - b->nbits % 64);
	memset(b->bits + (b->nbits + 63) / 64, 0,
	       (uint64_t)b->table_size * q->cluster_size - (b->nbits + 63) / 64 * 8);
	return 0;
}

/* Enabled, exact bitmaps are loaded for a writable image, within a bound. */
static int load_enabled(struct qcow2 *q)
{
	uint64_t total = 0;
	uint8_t *buf;
	int ret = 0;

	for (uint32_t i = 0; i < q->nb_bitmaps; i++)
		if (q->bms[i].kept && q->bms[i].flags & BME_AUTO)
			total += (uint64_t)q->bms[i].table_size * q->cluster_size;
	if (total > QCOW2_BITMAP_MEM_MAX) {
		vd_err("%s: enabled persistent bitmaps need %" PRIu64
		       " bytes of memory, more than the "
		       "limit of %" PRIu64 ": use a larger granularity",
		       q->img->path, total, (uint64_t)QCOW2_BITMAP_MEM_MAX);
		return -EFBIG;
	}
	buf = malloc(q->cluster_size);
	if (!buf)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->nb_bitmaps && !ret; i++)
		if (q->bms[i].kept && q->bms[i].flags & BME_AUTO)
			ret = load_bits(q, &q->bms[i], buf);
	free(buf);
	return ret;
}

int qcow2_bitmaps_open(struct qcow2 *q, uint64_t file_size)
{
	uint64_t pos = 0;
	int ret;

	if (!q->has_bitmaps)
		return 0;
	if (q->bm_dir_offset > file_size || q->bm_dir_size > file_size - q->bm_dir_offset ||
	    !q->bm_dir_offset || qcow2_hits_fixed_metadata(q, q->bm_dir_offset, q->bm_dir_size)) {
		vd_err("%s: bitmap directory at 0x%" PRIx64 " (%" PRIu64
		       " bytes) lies past the end of the "
		       "file or on the header, L1 or refcount table",
		       q->img->path, q->bm_dir_offset, q->bm_dir_size);
		return -EINVAL;
	}
	q->bm_dir = malloc(q->bm_dir_size ? q->bm_dir_size : 1);
	q->bms = calloc(q->nb_bitmaps, sizeof(*q->bms));
	if (!q->bm_dir || !q->bms)
		return -ENOMEM;
	ret = meta_pread(q->img->fd, q->bm_dir, q->bm_dir_size, q->bm_dir_offset);
	for (uint32_t i = 0; !ret && i < q->nb_bitmaps; i++) {
		ret = check_entry(q, i, pos, file_size);
		if (!ret && q->bms[i].kept)
			ret = load_table(q, &q->bms[i], file_size);
		pos += entry_size(q->bm_dir + pos);
	}
	if (!ret && !q->img->read_only)
		ret = load_enabled(q);
	return ret;
}

void qcow2_bitmaps_free(struct qcow2 *q)
{
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		free(q->bms[i].name);
		free(q->bms[i].table);
		free(q->bms[i].bits);
	}
	free(q->bms);
	free(q->bm_dir);
}

/* Every write, zeroing and discard of [off, off+len), under the driver lock. */
void qcow2_bitmaps_dirty(struct qcow2 *q, uint64_t off, uint64_t len)
{
	if (!len)
		return;
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		struct qcow2_bitmap *b = &q->bms[i];

		if (b->bits)
			set_bits(b->bits, off >> b->gbits, (off + len - 1) >> b->gbits);
	}
}

/* ---- in_use before the first write ---- */

static void set_flags(uint8_t *dir, const struct qcow2_bitmap *b, uint32_t flags)
{
	uint32_t v = htobe32(flags);

	memcpy(dir + b->pos + 12, &v, 4);
}

/* As QEMU while it has the image open: every bitmap in_use, in place. */
int qcow2_bitmaps_mark_in_use(struct qcow2 *q)
{
	int ret;

	for (uint32_t i = 0; i < q->nb_bitmaps; i++)
		set_flags(q->bm_dir, &q->bms[i], q->bms[i].flags | BME_IN_USE);
	ret = meta_pwrite(q->img->fd, q->bm_dir, q->bm_dir_size, q->bm_dir_offset);
	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	if (ret)
		vd_err("%s: cannot mark the persistent bitmaps in use in the directory at "
		       "0x%" PRIx64 ": "
		       "%s",
		       q->img->path, q->bm_dir_offset, strerror(-ret));
	return ret;
}

/* ---- the store at close ---- */

/* Clusters allocated by one store, given back if it fails. */
struct bm_store {
	struct qcow2 *q;
	uint64_t *off, *n;
	size_t cnt, cap;
	uint8_t *buf;
	uint64_t **tables; /* the new table of each maintained bitmap */
};

static int store_alloc(struct bm_store *s, uint64_t bytes, uint64_t *off)
{
	struct qcow2 *q = s->q;
	uint64_t n = ALIGN_UP(bytes, q->cluster_size) >> q->cluster_bits;
	bool fresh;
	int ret;

	if (s->cnt == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 16;
		uint64_t *o = realloc(s->off, cap * 8), *c;
		if (!o)
			return -ENOMEM;
		s->off = o;
		c = realloc(s->n, cap * 8);
		if (!c)
			return -ENOMEM;
		s->n = c;
		s->cap = cap;
	}
	ret = qcow2_alloc_clusters(q, n, off, &fresh);
	if (ret)
		return ret;
	s->off[s->cnt] = *off;
	s->n[s->cnt++] = n;
	return 0;
}

static bool words_are(const uint64_t *w, size_t n, uint64_t v)
{
	for (size_t i = 0; i < n; i++)
		if (w[i] != v)
			return false;
	return true;
}

/* One bitmap's data clusters and table; *tab gets the table (host order). */
static int store_bits(struct bm_store *s, struct qcow2_bitmap *b, uint64_t *tab)
{
	struct qcow2 *q = s->q;
	uint64_t per = q->cluster_size / 8, off;
	int ret;

	for (uint32_t j = 0; j < b->table_size; j++) {
		const uint64_t *w = b->bits + j * per;
		bool whole = (j + 1) * per * 64 <= b->nbits;

		if (words_are(w, per, 0)) {
			tab[j] = 0;
			continue;
		}
		if (whole && words_are(w, per, ~0ull)) {
			tab[j] = BME_ENTRY_ALL_ONES;
			continue;
		}
		ret = store_alloc(s, q->cluster_size, &off);
		if (ret)
			return ret;
		for (uint64_t k = 0; k < per; k++)
			((uint64_t *)s->buf)[k] = htole64(w[k]);
		ret = meta_pwrite(q->img->fd, s->buf, q->cluster_size, off);
		if (ret)
			return ret;
		tab[j] = off;
	}
	return 0;
}

static int store_table(struct bm_store *s, const uint64_t *tab, uint32_t n, uint64_t *off)
{
	uint64_t *be = calloc(n, 8);
	int ret = -ENOMEM;

	if (!be)
		return ret;
	for (uint32_t j = 0; j < n; j++)
		be[j] = htobe64(tab[j]);
	ret = store_alloc(s, (uint64_t)n * 8, off);
	if (!ret)
		ret = meta_pwrite(s->q->img->fd, be, (uint64_t)n * 8, *off);
	free(be);
	return ret;
}

/* Data and tables of every maintained bitmap, then the new directory (with
 * in_use cleared on every bitmap that was exact at open) at *dir_off. */
static int store_new(struct bm_store *s, uint8_t *dir, uint64_t *dir_off)
{
	struct qcow2 *q = s->q;
	int ret = 0;

	for (uint32_t i = 0; i < q->nb_bitmaps && !ret; i++) {
		struct qcow2_bitmap *b = &q->bms[i];
		uint64_t toff = 0;

		if (!b->kept)
			continue;
		set_flags(dir, b, b->flags & ~BME_IN_USE);
		if (!b->bits)
			continue;
		s->tables[i] = calloc(b->table_size, 8);
		if (!s->tables[i])
			return -ENOMEM;
		ret = store_bits(s, b, s->tables[i]);
		if (!ret)
			ret = store_table(s, s->tables[i], b->table_size, &toff);
		put_be64(dir + b->pos, toff);
	}
	if (!ret)
		ret = store_alloc(s, q->bm_dir_size, dir_off);
	if (!ret)
		ret = meta_pwrite(q->img->fd, dir, q->bm_dir_size, *dir_off);
	return ret;
}

/* The new structures are referenced: drop the old ones (deferred frees). */
static int store_switched(struct bm_store *s, uint8_t *dir, uint64_t dir_off)
{
	struct qcow2 *q = s->q;
	int ret = qcow2_defer_free(q, q->bm_dir_offset, q->bm_dir_size);

	for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
		struct qcow2_bitmap *b = &q->bms[i];

		if (s->tables[i]) {
			for (uint32_t j = 0; j < b->table_size && !ret; j++)
				if (b->table[j] & QCOW2_OFF_MASK)
					ret = qcow2_defer_free(q, b->table[j] & QCOW2_OFF_MASK,
							       q->cluster_size);
			if (!ret)
				ret = qcow2_defer_free(q, b->table_off,
						       (uint64_t)b->table_size * 8);
			free(b->table);
			b->table = s->tables[i];
			s->tables[i] = NULL;
			b->table_off = get_be64(dir + b->pos);
		}
		if (b->kept)
			b->flags &= ~BME_IN_USE;
	}
	free(q->bm_dir);
	q->bm_dir = dir;
	q->bm_dir_offset = dir_off;
	return ret;
}

static int store_header(struct qcow2 *q, uint64_t dir_off)
{
	uint64_t v = htobe64(dir_off);

	/* Count and size are unchanged: only the directory offset moves. */
	return qcow2_write_header_field(q, q->bm_ext_off + 16, &v, 8);
}

/* Write the maintained bitmaps back, exact and not in use. A crash before the
 * header switch leaves the old directory (bitmaps in_use) and leaked clusters;
 * after it, the new directory and leaked old clusters. Under the driver lock,
 * with no write in flight. */
int qcow2_bitmaps_store(struct qcow2 *q)
{
	struct bm_store s = {.q = q};
	uint8_t *dir = NULL;
	uint64_t dir_off = 0;
	bool any = false;
	int ret = -ENOMEM;

	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++)
		any |= q->bms[i].kept;
	if (!any || !q->write_ready)
		return 0;
	dir = malloc(q->bm_dir_size);
	s.buf = malloc(q->cluster_size);
	s.tables = calloc(q->nb_bitmaps, sizeof(*s.tables));
	if (!dir || !s.buf || !s.tables)
		goto out;
	memcpy(dir, q->bm_dir, q->bm_dir_size);
	ret = store_new(&s, dir, &dir_off);
	/* refcounts of the new clusters and their contents durable first */
	if (!ret)
		ret = qcow2_refcount_sync(q);
	if (!ret)
		ret = store_header(q, dir_off);
	if (ret) {
		vd_err("%s: cannot store the persistent bitmaps (they stay in use): %s",
		       q->img->path, strerror(-ret));
		for (size_t i = 0; i < s.cnt; i++)
			qcow2_alloc_rollback(q, s.off[i], s.n[i]);
		goto out;
	}
	ret = store_switched(&s, dir, dir_off);
	dir = NULL;
	/* a later write marks them in use again */
	q->write_ready = false;
out:
	for (uint32_t i = 0; s.tables && i < q->nb_bitmaps; i++)
		free(s.tables[i]);
	free(s.tables);
	free(s.buf);
	free(s.off);
	free(s.n);
	free(dir);
	return ret;
}

/* A resize would leave the bitmaps kept exact with tables of the old size. */
bool qcow2_bitmaps_block_resize(struct qcow2 *q)
{
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		if (q->bms[i].kept) {
			vd_err("%s: cannot resize an image with persistent bitmaps (bitmap '%s')",
			       q->img->path, q->bms[i].name);
			return true;
		}
	}
	return false;
}

/* ---- info ---- */

static uint64_t dirty_bytes(const struct qcow2 *q, const struct qcow2_bitmap *b)
{
	uint64_t n = 0, g = 1ull << b->gbits, bytes;

	for (uint64_t i = 0; i < (b->nbits + 63) / 64; i++)
		n += __builtin_popcountll(b->bits[i]);
	bytes = n * g;
	/* the last granule ends with the disk */
	if (b->nbits && (b->bits[(b->nbits - 1) / 64] >> ((b->nbits - 1) % 64)) & 1)
		bytes -= b->nbits * g - q->size;
	return bytes;
}

void qcow2_bitmaps_info(struct qcow2 *q, struct json_writer *j)
{
	json_begin_array(j, "persistent_bitmaps");
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		const struct qcow2_bitmap *b = &q->bms[i];

		json_begin_object(j, NULL);
		json_str(j, "name", b->name);
		json_u64(j, "granularity", 1ull << b->gbits);
		json_bool(j, "enabled", b->flags & BME_AUTO);
		/* on disk now: every bitmap is in use from the first write to the store */
		json_bool(j, "in_use", (b->flags & BME_IN_USE) || q->write_ready);
		json_bool(j, "inconsistent", !b->kept);
		if (b->bits)
			json_u64(j, "dirty_bytes", dirty_bytes(q, b));
		json_end_object(j);
	}
	json_end_array(j);
}
