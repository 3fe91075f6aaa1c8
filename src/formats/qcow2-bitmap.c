/* qcow2 persistent dirty bitmaps (the bitmaps extension): the directory read
 * and checked at open, enabled bitmaps kept in memory and given the bits of
 * every written, zeroed or discarded range, the in_use mark before the first
 * write, and the store at close in QEMU's order (data, tables, a new
 * directory, the header extension; the old clusters freed after). The live
 * commands, which store the same way, are in qcow2-bitmap-cmd.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/json.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "formats/qcow2-bitmap.h"
#include "io/sync-io.h"

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
uint64_t qcow2_bm_nbits(const struct qcow2 *q, unsigned gbits)
{
	return (q->size + (1ull << gbits) - 1) >> gbits;
}

uint64_t qcow2_bm_tsize(const struct qcow2 *q, unsigned gbits)
{
	uint64_t bytes = (qcow2_bm_nbits(q, gbits) + 7) / 8;

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
		  b->table_size == qcow2_bm_tsize(q, b->gbits);
	return 0;
}

int qcow2_bm_load_table(struct qcow2 *q, struct qcow2_bitmap *b, uint64_t file_size)
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

void qcow2_bm_set_bits(uint64_t *w, uint64_t a, uint64_t b)
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

int qcow2_bm_load_bits(struct qcow2 *q, struct qcow2_bitmap *b, uint8_t *buf)
{
	uint64_t per = (uint64_t)q->cluster_size * 8; /* bits one table entry holds */
	int ret;

	b->nbits = qcow2_bm_nbits(q, b->gbits);
	b->bits = calloc(b->table_size, q->cluster_size);
	if (!b->bits)
		return -ENOMEM;
	for (uint32_t j = 0; j < b->table_size; j++) {
		uint64_t t = b->table[j], off = t & QCOW2_OFF_MASK, *w = b->bits + j * per / 64;
		uint64_t last = (j + 1) * per < b->nbits ? (j + 1) * per : b->nbits;

		if (!off) {
			if (t & BME_ENTRY_ALL_ONES)
				qcow2_bm_set_bits(b->bits, j * per, last - 1);
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
			ret = qcow2_bm_load_bits(q, &q->bms[i], buf);
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
		if (ret)
			break; /* the entry may not even fit: pos stays where it is */
		if (q->bms[i].kept)
			ret = qcow2_bm_load_table(q, &q->bms[i], file_size);
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

/* Every write, zeroing and discard of [off, off+len), under the driver lock:
 * in each enabled bitmap (a disabled one keeps its bits until the store). */
void qcow2_bitmaps_dirty(struct qcow2 *q, uint64_t off, uint64_t len)
{
	if (!len)
		return;
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		struct qcow2_bitmap *b = &q->bms[i];

		if (b->bits && b->flags & BME_AUTO)
			qcow2_bm_set_bits(b->bits, off >> b->gbits, (off + len - 1) >> b->gbits);
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

/* ---- the store: at close, and by every command ---- */

/* Clusters allocated by one store, given back if it fails. */
struct bm_store {
	struct qcow2 *q;
	const struct ext_place *place; /* a first bitmap's extension */
	uint64_t *off, *n;
	size_t cnt, cap;
	uint8_t *buf;
	uint64_t **tables; /* the new table of each bitmap held in memory */
	uint64_t *pos;	   /* each bitmap's entry in the new directory */
	uint8_t *dir;	   /* the new directory; NULL when no bitmap is left */
	uint64_t dir_size, dir_off;
	uint32_t nb;
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

uint64_t qcow2_bm_entry_size_for(size_t nlen)
{
	return ALIGN_UP(24 + (uint64_t)nlen, 8);
}

static uint64_t entry_bytes(const struct qcow2 *q, const struct qcow2_bitmap *b)
{
	return b->is_new ? qcow2_bm_entry_size_for(strlen(b->name))
			 : entry_size(q->bm_dir + b->pos);
}

/* A kept bitmap is stored exact (in_use clear); the others stay in use, as
 * they were marked before the first write. */
static uint32_t stored_flags(const struct qcow2_bitmap *b)
{
	return b->kept ? b->flags & ~BME_IN_USE : b->flags | BME_IN_USE;
}

/* b's entry at e: a copy of its old one (extra data and name as they are),
 * or a new one, with the table and flags given. */
static void put_entry(const struct qcow2 *q, uint8_t *e, const struct qcow2_bitmap *b,
		      uint64_t toff)
{
	if (b->is_new) {
		size_t nlen = strlen(b->name);

		e[16] = BME_TYPE_DIRTY;
		e[17] = b->gbits;
		put_be16(e + 18, nlen);
		put_be32(e + 20, 0);
		memcpy(e + 24, b->name, nlen);
	} else {
		memcpy(e, q->bm_dir + b->pos, entry_size(q->bm_dir + b->pos));
	}
	put_be64(e, toff);
	put_be32(e + 8, b->table_size);
	put_be32(e + 12, stored_flags(b));
}

/* Data and tables of every bitmap held in memory, then the new directory
 * (without the bitmaps being removed) at s->dir_off. */
static int store_new(struct bm_store *s)
{
	struct qcow2 *q = s->q;
	uint64_t pos = 0;
	int ret = 0;

	for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
		if (!q->bms[i].removing) {
			s->dir_size += entry_bytes(q, &q->bms[i]);
			s->nb++;
		}
	}
	if (!s->nb)
		return 0;
	s->dir = calloc(1, s->dir_size);
	if (!s->dir)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->nb_bitmaps && !ret; i++) {
		struct qcow2_bitmap *b = &q->bms[i];
		uint64_t toff = b->table_off;

		if (b->removing)
			continue;
		if (b->bits) {
			s->tables[i] = calloc(b->table_size, 8);
			if (!s->tables[i])
				return -ENOMEM;
			ret = store_bits(s, b, s->tables[i]);
			if (!ret)
				ret = store_table(s, s->tables[i], b->table_size, &toff);
		}
		put_entry(q, s->dir + pos, b, toff);
		s->pos[i] = pos;
		pos += entry_bytes(q, b);
	}
	if (!ret)
		ret = store_alloc(s, s->dir_size, &s->dir_off);
	if (!ret)
		ret = meta_pwrite(q->img->fd, s->dir, s->dir_size, s->dir_off);
	return ret;
}

/* A first bitmaps extension, each step leaving a valid header (the commit is
 * the last, an aligned 8-byte write): the backing file name at its new place
 * and the header pointing there; the extension's data and an end marker after
 * it, in bytes nothing reads yet; the autoclear bit (harmless without the
 * extension); the extension's type and length over the old end marker. */
static int ext_insert(struct qcow2 *q, const struct ext_place *pl, const uint8_t *v)
{
	uint8_t buf[32] = {0}, hdr[8];
	int ret = 0;

	if (pl->new_name_off) {
		ret = qcow2_write_header_field(q, pl->new_name_off, pl->name, pl->name_len);
		put_be64(hdr, pl->new_name_off);
		if (!ret)
			ret = qcow2_write_header_field(q, 8, hdr, 8);
	}
	memcpy(buf, v, 24);
	if (!ret)
		ret = qcow2_write_header_field(q, pl->end + 8, buf, sizeof(buf));
	if (!ret && !(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
		put_be64(hdr, q->autoclear | QCOW2_AUTOCLEAR_BITMAPS);
		ret = qcow2_write_header_field(q, QCOW2_HDR_AUTOCLEAR, hdr, 8);
		if (!ret)
			q->autoclear |= QCOW2_AUTOCLEAR_BITMAPS;
	}
	put_be32(hdr, QCOW2_EXT_BITMAPS);
	put_be32(hdr + 4, 24);
	if (!ret)
		ret = qcow2_write_header_field(q, pl->end, hdr, 8);
	if (!ret) {
		q->has_bitmaps = true;
		q->bm_ext_off = pl->end + 8;
	}
	return ret;
}

/* The switch to the new directory: one write. Only the offset when count and
 * size stay (8 aligned bytes); else the extension's 24 bytes, which lie in
 * one sector (ext_field_check()); a new extension; or, for the last bitmap
 * removed, an end marker over the extension, which is the last one. */
static int store_header(struct bm_store *s)
{
	struct qcow2 *q = s->q;
	uint8_t v[24] = {0};

	put_be32(v, s->nb);
	put_be64(v + 8, s->dir_size);
	put_be64(v + 16, s->dir_off);
	if (!q->has_bitmaps)
		return s->place ? ext_insert(q, s->place, v) : -EINVAL;
	if (!s->nb) {
		memset(v, 0, 8);
		return qcow2_write_header_field(q, q->bm_ext_off - 8, v, 8);
	}
	if (s->nb == q->nb_bitmaps && s->dir_size == q->bm_dir_size)
		return qcow2_write_header_field(q, q->bm_ext_off + 16, v + 16, 8);
	return qcow2_write_header_field(q, q->bm_ext_off, v, sizeof(v));
}

static int free_clusters(struct qcow2 *q, const struct qcow2_bitmap *b)
{
	int ret = 0;

	for (uint32_t j = 0; j < b->table_size && !ret; j++)
		if (b->table[j] & QCOW2_OFF_MASK)
			ret = qcow2_defer_free(q, b->table[j] & QCOW2_OFF_MASK, q->cluster_size);
	if (!ret)
		ret = qcow2_defer_free(q, b->table_off, (uint64_t)b->table_size * 8);
	return ret;
}

/* The new structures are referenced: drop the old ones (deferred frees) and
 * the removed bitmaps; a disabled bitmap's bits are on disk now, exact. */
static int store_switched(struct bm_store *s)
{
	struct qcow2 *q = s->q;
	uint32_t n = 0;
	int ret = 0;

	if (q->bm_dir_size)
		ret = qcow2_defer_free(q, q->bm_dir_offset, q->bm_dir_size);
	for (uint32_t i = 0; i < q->nb_bitmaps; i++) {
		struct qcow2_bitmap *b = &q->bms[i];

		if ((b->removing || s->tables[i]) && b->table && !ret)
			ret = free_clusters(q, b);
		if (b->removing) {
			free(b->name);
			free(b->table);
			free(b->bits);
			continue;
		}
		if (s->tables[i]) {
			free(b->table);
			b->table = s->tables[i];
			s->tables[i] = NULL;
			b->table_off = get_be64(s->dir + s->pos[i]);
		}
		b->pos = s->pos[i];
		b->flags = stored_flags(b);
		b->is_new = false;
		if (b->bits && !(b->flags & BME_AUTO)) {
			free(b->bits);
			b->bits = NULL;
		}
		q->bms[n++] = *b;
	}
	q->nb_bitmaps = n;
	q->has_bitmaps = n > 0;
	free(q->bm_dir);
	q->bm_dir = s->dir;
	s->dir = NULL;
	q->bm_dir_offset = s->dir_off;
	q->bm_dir_size = s->dir_size;
	return ret;
}

/* Write the bitmaps as the list in memory says: the data and table of every
 * bitmap held in memory, a new directory, refcounts and data synced, then the
 * header switch (store_header()); only then are the old directory, tables
 * and data clusters and the removed bitmaps freed through the deferred frees.
 * A crash before the switch leaves the old directory (bitmaps in use) and
 * leaked clusters; after it, the new directory and leaked old clusters.
 * Under the driver lock. Writes in flight are no harm: their bits were set
 * when they were mapped, and the next write marks the bitmaps in use again. */
int qcow2_bm_store(struct qcow2 *q, const struct ext_place *pl)
{
	struct bm_store s = {.q = q, .place = pl};
	size_t nb = q->nb_bitmaps ? q->nb_bitmaps : 1;
	int ret = -ENOMEM;

	s.buf = malloc(q->cluster_size);
	s.tables = calloc(nb, sizeof(*s.tables));
	s.pos = calloc(nb, sizeof(*s.pos));
	if (!s.buf || !s.tables || !s.pos)
		goto out;
	ret = store_new(&s);
	/* refcounts of the new clusters and their contents durable first */
	if (!ret)
		ret = qcow2_refcount_sync(q);
	if (!ret)
		ret = store_header(&s);
	if (ret) {
		vd_err("%s: cannot store the persistent bitmaps (they stay in use): %s",
		       q->img->path, strerror(-ret));
		for (size_t i = 0; i < s.cnt; i++)
			qcow2_alloc_rollback(q, s.off[i], s.n[i]);
		goto out;
	}
	ret = store_switched(&s);
	/* a later write marks them in use again */
	q->write_ready = false;
out:
	for (uint32_t i = 0; s.tables && i < q->nb_bitmaps; i++)
		free(s.tables[i]);
	free(s.tables);
	free(s.pos);
	free(s.buf);
	free(s.off);
	free(s.n);
	free(s.dir);
	return ret;
}

/* At close and finish: the maintained bitmaps written back, exact and not in
 * use, if anything was written. */
int qcow2_bitmaps_store(struct qcow2 *q)
{
	bool any = false;

	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++)
		any |= q->bms[i].kept;
	if (!any || !q->write_ready)
		return 0;
	return qcow2_bm_store(q, NULL);
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
