/* The qcow2 driver: probing, opening (header, extensions, every validation
 * QEMU does, L1 and refcount table loading, feature bits), field-sized header
 * rewrites, close, info and the ops table. Mapping lives in qcow2-map.c,
 * refcounts in qcow2-refcount.c, the table cache in qcow2-cache.c. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/table-mem.h"
#include "util/json.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "io/fault.h"
#include "io/sync-io.h"

#define DEFAULT_L2_CACHE (2u << 20) /* 32 tables of 64 KiB: 16 GiB of guest space */
#define DEFAULT_RB_CACHE (512u << 10)

static int qcow2_probe(const uint8_t *buf, size_t len, const char *path)
{
	if (len >= 8 && get_be32(buf) == QCOW2_MAGIC)
		return 100;
	return 0;
}

int qcow2_write_header_field(struct qcow2 *q, unsigned off, const void *buf, unsigned len)
{
	int ret = meta_pwrite(q->img->fd, buf, len, off);

	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	if (ret)
		vd_err("%s: cannot update the qcow2 header at offset %u: %s", q->img->path, off,
		       strerror(-ret));
	return ret;
}

/* Before the first change: handle bitmaps, clear autoclear bits we do not know. */
int qcow2_prepare_write(struct qcow2 *q)
{
	uint64_t known = 0, v;
	int ret;

	if (q->write_ready)
		return 0;
	if (q->img->read_only)
		return -EROFS;
	if (q->has_bitmaps && (q->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
		ret = qcow2_bitmaps_mark_in_use(q);
		if (ret)
			return ret;
		known = QCOW2_AUTOCLEAR_BITMAPS;
	}
	if (q->data_raw)
		known |= QCOW2_AUTOCLEAR_DATA_RAW; /* every write keeps the data file raw */
	if (q->version >= 3 && (q->autoclear & ~known)) {
		v = htobe64(q->autoclear & known);
		ret = qcow2_write_header_field(q, QCOW2_HDR_AUTOCLEAR, &v, 8);
		if (ret)
			return ret;
		q->autoclear &= known;
	}
	q->write_ready = true;
	return 0;
}

/* ---- header and extensions ---- */

struct qcow2_hdr {
	uint64_t backing_off;
	uint32_t backing_len;
	uint32_t crypt;
	const uint8_t *features; /* feature name table in the cluster-0 buffer */
	uint32_t nfeatures;
};

static void unknown_incompat_msg(struct qcow2 *q, const struct qcow2_hdr *h, uint64_t bits)
{
	char names[512] = "";
	size_t n = 0;

	for (uint32_t i = 0; i < h->nfeatures; i++) {
		const uint8_t *f = h->features + i * 48;
		if (f[0] != 0 || f[1] > 63 || !(bits & (1ull << f[1])))
			continue;
		n += snprintf(names + n, sizeof(names) - n, "%s%.46s", n ? ", " : "",
			      (const char *)f + 2);
		bits &= ~(1ull << f[1]);
		if (n >= sizeof(names))
			break;
	}
	if (bits)
		snprintf(names + n, sizeof(names) - n, "%sunknown incompatible feature 0x%" PRIx64,
			 n ? ", " : "", bits);
	vd_err("%s: qcow2 header at offset 72: unsupported incompatible features: %s", q->img->path,
	       names);
}

/* As QEMU: only the length is checked while the bitmaps autoclear bit is clear
 * (a program without bitmap support wrote the image, the bitmaps are stale);
 * the extension is then ignored and kept as it is. */
static int parse_bitmaps_ext(struct qcow2 *q, const uint8_t *p, uint32_t len, uint64_t at)
{
	if (len != 24) {
		vd_err("%s: bitmaps header extension at 0x%" PRIx64 ": length %u, expected 24",
		       q->img->path, at, len);
		return -EINVAL;
	}
	if (!(q->autoclear & QCOW2_AUTOCLEAR_BITMAPS)) {
		vd_warn("%s: bitmaps header extension at 0x%" PRIx64
			" without its autoclear bit: the "
			"bitmaps are inconsistent and ignored",
			q->img->path, at);
		return 0;
	}
	if (get_be32(p + 4) != 0) {
		vd_err("%s: bitmaps header extension at 0x%" PRIx64 ": reserved field is not zero",
		       q->img->path, at);
		return -EINVAL;
	}
	q->nb_bitmaps = get_be32(p);
	q->bm_dir_size = get_be64(p + 8);
	q->bm_dir_offset = get_be64(p + 16);
	q->bm_ext_off = at + 8;
	if (q->nb_bitmaps < 1 || q->nb_bitmaps > 65535 || q->bm_dir_size > (64u << 20) ||
	    q->bm_dir_offset & (q->cluster_size - 1)) {
		vd_err("%s: bitmaps header extension at 0x%" PRIx64
		       ": bad directory (%u bitmaps, %" PRIu64 " "
		       "bytes at 0x%" PRIx64 ")",
		       q->img->path, at, q->nb_bitmaps, q->bm_dir_size, q->bm_dir_offset);
		return -EINVAL;
	}
	q->has_bitmaps = true;
	return 0;
}

/* A name from a header extension (len bytes, no NUL), replacing *out. */
static int ext_name(char **out, const uint8_t *p, uint32_t len)
{
	free(*out);
	*out = strndup((const char *)p, len);
	return *out ? 0 : -ENOMEM;
}

static int parse_extensions(struct qcow2 *q, struct qcow2_hdr *h, const uint8_t *c0)
{
	struct vd_image *img = q->img;
	uint64_t pos = q->header_length;
	uint64_t end = h->backing_off ? h->backing_off : q->cluster_size;
	int ret;

	if (end > q->cluster_size)
		end = q->cluster_size; /* a bad backing offset is refused afterwards */

	while (pos + 8 <= end) {
		uint32_t type = get_be32(c0 + pos), len = get_be32(c0 + pos + 4);
		const uint8_t *p = c0 + pos + 8;

		if (type == QCOW2_EXT_END)
			return 0;
		if (len > end - pos - 8) {
			vd_err("%s: header extension 0x%08x at 0x%" PRIx64
			       ": length %u runs past 0x%" PRIx64,
			       img->path, type, pos, len, end);
			return -EINVAL;
		}
		switch (type) {
		case QCOW2_EXT_BACKFMT:
			if (len >= 16) {
				vd_err("%s: backing format extension at 0x%" PRIx64
				       ": name too long",
				       img->path, pos);
				return -EINVAL;
			}
			ret = ext_name(&img->backing_fmt, p, len);
			if (ret)
				return ret;
			break;
		case QCOW2_EXT_FEATURES:
			h->features = p;
			h->nfeatures = len / 48;
			break;
		case QCOW2_EXT_DATA_FILE:
			if (!len || memchr(p, 0, len)) {
				vd_err("%s: external data file extension at 0x%" PRIx64
				       ": empty name or a NUL byte in it",
				       img->path, pos);
				return -EINVAL;
			}
			ret = ext_name(&q->data_name, p, len);
			if (ret)
				return ret;
			break;
		case QCOW2_EXT_BITMAPS:
			ret = parse_bitmaps_ext(q, p, len, pos);
			if (ret)
				return ret;
			break;
		default: /* kept untouched: the header is only ever rewritten by field */
			break;
		}
		pos += 8 + ALIGN_UP((uint64_t)len, 8);
	}
	return 0;
}

static int parse_header(struct qcow2 *q, struct qcow2_hdr *h, const uint8_t *b)
{
	const char *path = q->img->path;

	if (get_be32(b) != QCOW2_MAGIC) {
		vd_err("%s: qcow2 header at offset 0: bad magic", path);
		return -EINVAL;
	}
	q->version = get_be32(b + 4);
	if (q->version != 2 && q->version != 3) {
		vd_err("%s: qcow2 header at offset 4: version %u is not supported", path,
		       q->version);
		return -ENOTSUP;
	}
	h->backing_off = get_be64(b + 8);
	h->backing_len = get_be32(b + 16);
	q->cluster_bits = get_be32(b + 20);
	if (q->cluster_bits < 9 || q->cluster_bits > 21) {
		vd_err("%s: qcow2 header at offset 20: cluster_bits %u out of range 9..21", path,
		       q->cluster_bits);
		return -EINVAL;
	}
	q->cluster_size = 1u << q->cluster_bits;
	q->size = get_be64(b + 24);
	if (q->size % 512) {
		/* QEMU counts a qcow2 disk in whole sectors and never shows the tail. */
		vd_warn("%s: qcow2 header at offset 24: virtual size %" PRIu64
			" is not a multiple of 512; "
			"served as %" PRIu64 " bytes, as QEMU reads it",
			path, q->size, q->size & ~(uint64_t)511);
		q->size &= ~511ull;
	}
	h->crypt = get_be32(b + 32);
	q->l1_size = get_be32(b + 36);
	q->l1_offset = get_be64(b + 40);
	q->rt_offset = get_be64(b + 48);
	q->rt_clusters = get_be32(b + 56);
	q->nb_snapshots = get_be32(b + 60);
	q->snapshots_offset = get_be64(b + 64);
	if (q->version == 2) {
		q->header_length = 72;
		q->refcount_order = 4;
		return 0;
	}
	q->incompat = get_be64(b + 72);
	q->compat = get_be64(b + 80);
	q->autoclear = get_be64(b + 88);
	q->refcount_order = get_be32(b + 96);
	q->header_length = get_be32(b + 100);
	if (q->header_length < 104 || q->header_length % 8 || q->header_length > q->cluster_size) {
		vd_err("%s: qcow2 header at offset 100: bad header length %u", path,
		       q->header_length);
		return -EINVAL;
	}
	if (q->header_length > 104)
		q->compression = b[104];
	return 0;
}

static int check_features(struct qcow2 *q, const struct qcow2_hdr *h)
{
	struct vd_image *img = q->img;

	if (h->crypt) {
		vd_err("%s: qcow2 header at offset 32: encrypted images (method %u) are not "
		       "supported",
		       img->path, h->crypt);
		return -ENOTSUP;
	}
	if (q->incompat & ~QCOW2_INCOMPAT_KNOWN) {
		unknown_incompat_msg(q, h, q->incompat & ~QCOW2_INCOMPAT_KNOWN);
		return -ENOTSUP;
	}
	if (!!(q->incompat & QCOW2_INCOMPAT_COMPRESS) != (q->compression != 0)) {
		vd_err("%s: qcow2 header at offset 104: compression type %u does not match the "
		       "compression feature bit",
		       img->path, q->compression);
		return -EINVAL;
	}
	if (q->compression > 1) {
		vd_err("%s: qcow2 header at offset 104: unknown compression type %u", img->path,
		       q->compression);
		return -ENOTSUP;
	}
	if (q->refcount_order > 6) {
		vd_err("%s: qcow2 header at offset 96: refcount order %u is larger than 6",
		       img->path, q->refcount_order);
		return -EINVAL;
	}
	if ((q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW) && !qcow2_has_data_file(q)) {
		/* as QEMU: "data-file-raw requires a data file" */
		vd_err("%s: qcow2 header at offset 88: raw external data (autoclear bit 1) "
		       "without an external data file",
		       img->path);
		return -EINVAL;
	}
	if (qcow2_has_data_file(q) && !q->data_name) {
		vd_err("%s: the image keeps its data in an external data file but does not "
		       "name it (header extension 0x%08x)",
		       img->path, QCOW2_EXT_DATA_FILE);
		return -EINVAL;
	}
	q->data_raw = q->autoclear & QCOW2_AUTOCLEAR_DATA_RAW;
	if (q->data_raw && h->backing_off && h->backing_len) {
		vd_err("%s: raw external data (autoclear bit 1) and a backing file exclude "
		       "each other",
		       img->path);
		return -EINVAL;
	}
	q->ext_l2 = q->incompat & QCOW2_INCOMPAT_EXTL2;
	if (q->ext_l2 && q->cluster_bits < 14) {
		vd_err("%s: extended L2 entries need clusters of at least 16 KiB (have %u)",
		       img->path, q->cluster_size);
		return -EINVAL;
	}
	if (h->backing_off) {
		if (h->backing_off > q->cluster_size || h->backing_len > 1023 ||
		    h->backing_len > q->cluster_size - h->backing_off) {
			vd_err("%s: qcow2 header at offset 8: backing file name (%u bytes at "
			       "0x%" PRIx64 ") "
			       "does not fit in the first cluster",
			       img->path, h->backing_len, h->backing_off);
			return -EINVAL;
		}
	}
	return 0;
}

/* A table inside the file, aligned, of sane size, not overflowing. */
static int check_table(struct qcow2 *q, const char *what, uint64_t off, uint64_t bytes,
		       uint64_t max, uint64_t file_size)
{
	if (bytes > max) {
		vd_err("%s: %s is too large (%" PRIu64 " bytes, limit %" PRIu64 ")", q->img->path,
		       what, bytes, max);
		return -EINVAL;
	}
	if (!bytes)
		return 0;
	if (off & (q->cluster_size - 1) || !off) {
		vd_err("%s: %s at 0x%" PRIx64 " is not cluster aligned", q->img->path, what, off);
		return -EINVAL;
	}
	if (off > INT64_MAX - bytes || off + bytes > file_size) {
		vd_err("%s: %s at 0x%" PRIx64 " (%" PRIu64
		       " bytes) runs past the end of the file (%" PRIu64 " bytes)",
		       q->img->path, what, off, bytes, file_size);
		return -EINVAL;
	}
	return 0;
}

static void derive_geometry(struct qcow2 *q)
{
	q->refcount_bits = 1u << q->refcount_order;
	q->refcount_max = q->refcount_bits == 64 ? UINT64_MAX : (1ull << q->refcount_bits) - 1;
	q->l2_bits = q->cluster_bits - (q->ext_l2 ? 4 : 3);
	q->l2_entries = 1u << q->l2_bits;
	q->sc_bits = q->cluster_bits - 5;
	q->sc_size = 1u << q->sc_bits;
	q->rb_bits = q->cluster_bits + 3 - q->refcount_order;
	q->rb_entries = 1u << q->rb_bits;
	q->csize_shift = 62 - (q->cluster_bits - 8);
	q->csize_mask = (1ull << (q->cluster_bits - 8)) - 1;
	q->coff_mask = (1ull << q->csize_shift) - 1;
	q->rt_entries = (uint64_t)q->rt_clusters * q->cluster_size / 8;
}

static bool overlaps(uint64_t a, uint64_t alen, uint64_t b, uint64_t blen)
{
	return alen && blen && a < b + blen && b < a + alen;
}

/* Does [off, off+len), starting on a cluster boundary, share a cluster with
 * the header, the L1 table or the refcount table? */
bool qcow2_hits_fixed_metadata(struct qcow2 *q, uint64_t off, uint64_t len)
{
	uint64_t cs = q->cluster_size;

	return overlaps(0, cs, off, len) ||
	       overlaps(q->l1_offset, (uint64_t)q->l1_size * 8, off, len) ||
	       overlaps(q->rt_offset, (uint64_t)q->rt_clusters * cs, off, len);
}

static int check_layout(struct qcow2 *q, uint64_t file_size)
{
	uint64_t cs = q->cluster_size;
	uint64_t l1b = ALIGN_UP((uint64_t)q->l1_size * 8, cs);
	uint64_t rtb = (uint64_t)q->rt_clusters * cs;
	uint64_t need, per_l2 = (uint64_t)cs * q->l2_entries;
	int ret;

	if (q->rt_clusters == 0) {
		vd_err("%s: qcow2 header at offset 56: the refcount table has no clusters",
		       q->img->path);
		return -EINVAL;
	}
	ret = check_table(q, "refcount table", q->rt_offset, rtb, QCOW2_MAX_RT_BYTES, file_size);
	if (!ret)
		ret = check_table(q, "L1 table", q->l1_offset, (uint64_t)q->l1_size * 8,
				  QCOW2_MAX_L1_BYTES, file_size);
	if (ret)
		return ret;
	need = q->size / per_l2 + !!(q->size % per_l2);
	if (need > q->l1_size) {
		vd_err("%s: L1 table is too small: %u entries for a virtual size of %" PRIu64
		       " bytes "
		       "(needs %" PRIu64 ")",
		       q->img->path, q->l1_size, q->size, need);
		return -EINVAL;
	}
	if (q->nb_snapshots > QCOW2_MAX_SNAPSHOTS) {
		vd_err("%s: qcow2 header at offset 60: %u snapshots is too many", q->img->path,
		       q->nb_snapshots);
		return -EINVAL;
	}
	if (overlaps(0, cs, q->l1_offset, l1b) || overlaps(0, cs, q->rt_offset, rtb) ||
	    overlaps(q->l1_offset, l1b, q->rt_offset, rtb)) {
		vd_err("%s: metadata overlap: header (0x0), L1 table (0x%" PRIx64
		       ") and refcount table "
		       "(0x%" PRIx64 ") share clusters",
		       q->img->path, q->l1_offset, q->rt_offset);
		return -EINVAL;
	}
	return 0;
}

/* Is off (a table pointer) aligned, inside the file and clear of the fixed metadata? */
static int check_pointer(struct qcow2 *q, const char *what, uint64_t idx, uint64_t off,
			 uint64_t file_size)
{
	uint64_t cs = q->cluster_size;
	const char *why = NULL;

	if (off & (cs - 1))
		why = "is not cluster aligned";
	else if (off >= file_size)
		why = "points past the end of the file";
	else if (qcow2_hits_fixed_metadata(q, off, cs))
		why = "overlaps the header, the L1 table or the refcount table";
	if (!why)
		return 0;
	vd_err("%s: %s entry %" PRIu64 " (0x%" PRIx64 ") %s", q->img->path, what, idx, off, why);
	return -EINVAL;
}

struct table_load {
	struct qcow2 *q;
	const char *what;
	uint64_t mask, file_size;
};

/* One non-zero entry of the L1 or refcount table as it is loaded. */
static int table_entry(void *opaque, uint64_t idx, uint64_t *e)
{
	struct table_load *t = opaque;

	*e = be64toh(*e);
	if (!(*e & t->mask))
		return 0;
	return check_pointer(t->q, t->what, idx, *e & t->mask, t->file_size);
}

static int load_tables(struct qcow2 *q, uint64_t file_size)
{
	struct table_load l1 = {q, "L1", QCOW2_OFF_MASK, file_size};
	struct table_load rt = {q, "refcount table", QCOW2_RT_OFF_MASK, file_size};
	uint64_t nsect = ((uint64_t)q->l1_size * 8 + 511) / 512;
	int fd = q->img->fd, ret;

	/* Held whole, but only the pages with entries take memory. */
	q->l1 = table_alloc(q->l1_size ? q->l1_size : 1, 8);
	q->l1_dirty = calloc(nsect ? nsect : 1, 1);
	q->rt = table_alloc(q->rt_entries, 8);
	if (!q->l1 || !q->l1_dirty || !q->rt)
		return -ENOMEM;
	ret = meta_pread_table(fd, q->l1, q->l1_size, q->l1_offset, false, table_entry, &l1);
	if (!ret)
		ret = meta_pread_table(fd, q->rt, q->rt_entries, q->rt_offset, false, table_entry,
				       &rt);
	if (ret == -EINVAL)
		return ret; /* a bad entry, named by check_pointer() */
	if (ret) {
		vd_err("%s: cannot read the L1 or refcount table: %s", q->img->path,
		       strerror(-ret));
		return -EINVAL;
	}
	return 0;
}

/* Walk the snapshot table: its byte size and every snapshot's L1 table. */
static int load_snapshots(struct qcow2 *q, uint64_t file_size)
{
	uint64_t pos = q->snapshots_offset, end = pos;
	uint8_t e[40];
	int ret;

	if (!q->nb_snapshots)
		return 0;
	if (pos & (q->cluster_size - 1) || !pos) {
		vd_err("%s: snapshot table at 0x%" PRIx64 " is not cluster aligned", q->img->path,
		       pos);
		return -EINVAL;
	}
	q->snaps = calloc(q->nb_snapshots, sizeof(*q->snaps));
	if (!q->snaps)
		return -ENOMEM;
	for (uint32_t i = 0; i < q->nb_snapshots; i++) {
		struct qcow2_snapshot *s = &q->snaps[i];
		uint32_t extra, idl, namel;

		ret = meta_pread(q->img->fd, e, sizeof(e), pos);
		if (ret) {
			vd_err("%s: snapshot table entry %u at 0x%" PRIx64
			       " is past the end of the file",
			       q->img->path, i, pos);
			return -EINVAL;
		}
		s->l1_offset = get_be64(e);
		s->l1_size = get_be32(e + 8);
		idl = get_be16(e + 12);
		namel = get_be16(e + 14);
		extra = get_be32(e + 36);
		if (extra > 1024) {
			vd_err("%s: snapshot %u at 0x%" PRIx64 ": extra data too large",
			       q->img->path, i, pos);
			return -EINVAL;
		}
		ret = check_table(q, "snapshot L1 table", s->l1_offset, (uint64_t)s->l1_size * 8,
				  QCOW2_MAX_L1_BYTES, file_size);
		if (ret)
			return ret;
		end = pos + 40 + extra + idl + namel;
		pos = ALIGN_UP(end, 8);
	}
	q->snapshots_bytes = pos - q->snapshots_offset;
	/* QEMU does not write the padding after the last entry: the file may end there */
	ret = check_table(q, "snapshot table", q->snapshots_offset, end - q->snapshots_offset,
			  UINT64_MAX, file_size);
	if (ret)
		return ret;
	if (qcow2_hits_fixed_metadata(q, q->snapshots_offset, q->snapshots_bytes)) {
		vd_err("%s: metadata overlap: snapshot table at 0x%" PRIx64 " (%" PRIu64
		       " bytes) shares "
		       "clusters with the header, the L1 table or the refcount table",
		       q->img->path, q->snapshots_offset, q->snapshots_bytes);
		return -EINVAL;
	}
	return 0;
}

static int setup_caches(struct qcow2 *q)
{
	uint64_t mine = q->img->opts ? q->img->opts->cache_size : 0;
	uint64_t all = q->img->opts ? q->img->opts->cache_budget : 0;
	uint64_t l2b = mine ? mine * 4 / 5 : DEFAULT_L2_CACHE;
	uint64_t rbb = mine ? mine / 5 : DEFAULT_RB_CACHE;
	unsigned nl2 = l2b / q->cluster_size, nrb = rbb / q->cluster_size;
	int ret;

	/* by default, room for at least one image's whole cache */
	if (q->img->opts)
		qcow2_cache_set_budget(all ? all : max_u64(QCOW2_CACHE_BUDGET_DEFAULT, mine));
	nl2 = nl2 < 4 ? 4 : nl2 > 65536 ? 65536 : nl2;
	nrb = nrb < 4 ? 4 : nrb > 16384 ? 16384 : nrb;
	ret = qcow2_cache_init(&q->l2c, q, nl2, "L2 table");
	if (!ret)
		ret = qcow2_cache_init(&q->rbc, q, nrb, "refcount block");
	q->l2c.before_writeback = qcow2_refcount_sync;
	return ret;
}

static void qcow2_free(struct qcow2 *q)
{
	qcow2_cache_destroy(&q->l2c);
	qcow2_cache_destroy(&q->rbc);
	pthread_mutex_destroy(&q->lock);
	table_free(q->l1);
	free(q->l1_dirty);
	table_free(q->rt);
	free(q->snaps);
	free(q->frees);
	free(q->data_name);
	image_close_aux_file(q->data_fd);
	qcow2_bitmaps_free(q);
	free(q);
}

static int read_cluster0(struct qcow2 *q, struct qcow2_hdr *h, uint8_t **out)
{
	uint8_t first[112];
	uint8_t *c0;
	int ret;

	ret = meta_pread_zfill(q->img->fd, first, sizeof(first), 0);
	if (!ret)
		ret = parse_header(q, h, first);
	if (ret)
		return ret;
	c0 = malloc(q->cluster_size);
	if (!c0)
		return -ENOMEM;
	ret = meta_pread_zfill(q->img->fd, c0, q->cluster_size, 0);
	if (ret) {
		free(c0);
		return ret;
	}
	*out = c0;
	return 0;
}

static int open_header(struct qcow2 *q, uint64_t file_size)
{
	struct vd_image *img = q->img;
	struct qcow2_hdr h = {0};
	uint8_t *c0 = NULL;
	int ret;

	ret = read_cluster0(q, &h, &c0);
	if (!ret)
		ret = parse_extensions(q, &h, c0);
	if (!ret)
		ret = check_features(q, &h);
	if (ret)
		goto out;
	derive_geometry(q);
	if (!ret)
		ret = check_layout(q, file_size);
	if (ret)
		goto out;
	if (h.backing_off && h.backing_len) {
		q->has_backing = true;
		img->backing_names[0] = strndup((const char *)c0 + h.backing_off, h.backing_len);
		if (!img->backing_names[0])
			ret = -ENOMEM;
	} else {
		/* a backing format without a backing file is ignored, as QEMU does
		 * (a dropped link may leave one: qcow2-backing.c) */
		free(img->backing_fmt);
		img->backing_fmt = NULL;
	}
out:
	free(c0);
	return ret;
}

static int open_state(struct qcow2 *q)
{
	struct vd_image *img = q->img;
	bool ro = img->read_only;

	if (q->incompat & QCOW2_INCOMPAT_CORRUPT && !ro) {
		vd_warn("%s: the image is marked corrupt: serving it read-only", img->path);
		img->read_only = true;
	}
	if (q->incompat & QCOW2_INCOMPAT_DIRTY && !img->read_only) {
		vd_info("%s: the dirty bit is set: rebuilding refcounts", img->path);
		if (qcow2_rebuild_refcounts(q)) {
			vd_warn("%s: refcount rebuild failed: serving the image read-only",
				img->path);
			img->read_only = true;
		}
	}
	return 0;
}

/* Last in open, once it is known whether the image is written: the data file
 * the header names, through the image layer (resolution, policy, locks). */
static int open_data_file(struct qcow2 *q)
{
	struct vd_image *img = q->img;
	int fd;

	if (!img->opts) {
		vd_err("%s: cannot open its external data file here", img->path);
		return -EINVAL;
	}
	fd = image_open_aux_file(img, q->data_name, "external data file",
				 img->read_only ? O_RDONLY : O_RDWR, &img->read_only);
	if (fd < 0)
		return fd;
	q->data_fd = fd;
	return 0;
}

static int qcow2_open(struct vd_image *img)
{
	struct qcow2 *q = calloc(1, sizeof(*q));
	struct stat st;
	int ret;

	if (!q)
		return -ENOMEM;
	q->img = img;
	q->data_fd = -1;
	pthread_mutex_init(&q->lock, NULL);
	if (fstat(img->fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	if (st.st_size < 72) {
		vd_err("%s: file too short for a qcow2 header (%lld bytes)", img->path,
		       (long long)st.st_size);
		ret = -EINVAL;
		goto fail;
	}
	ret = open_header(q, st.st_size);
	if (!ret)
		ret = load_tables(q, st.st_size);
	if (!ret)
		ret = load_snapshots(q, st.st_size);
	if (!ret)
		ret = setup_caches(q);
	if (!ret)
		ret = qcow2_bitmaps_open(q, st.st_size);
	if (ret)
		goto fail;
	q->host_end = ALIGN_UP((uint64_t)st.st_size, q->cluster_size) >> q->cluster_bits;
	q->file_size = st.st_size;
	q->free_hint = 1;
	img->size = q->size;
	img->cluster_size = q->cluster_size;
	img->zero_align = q->cluster_size;
	img->priv = q;
	ret = open_state(q);
	if (!ret && qcow2_has_data_file(q))
		ret = open_data_file(q);
	if (!ret) {
		qcow2_cache_share(&q->l2c);
		qcow2_cache_share(&q->rbc);
		return 0;
	}
fail:
	img->priv = NULL;
	qcow2_free(q);
	return ret;
}

/* Metadata written back and synced, the preallocated tail cut. */
static int qcow2_finish(struct vd_image *img)
{
	struct qcow2 *q = img->priv;
	int ret;

	pthread_mutex_lock(&q->lock);
	/* The writes' metadata, the bitmaps that describe them, then twice more:
	 * the second pass writes the decrements the first applied. */
	ret = qcow2_flush_locked(q);
	if (!ret)
		ret = qcow2_bitmaps_store(q);
	if (!ret)
		ret = qcow2_flush_locked(q);
	if (!ret)
		ret = qcow2_flush_locked(q);
	if (!ret)
		ret = meta_fdatasync(img->fd);
	if (ret)
		vd_err("%s: metadata flush at close failed: %s", img->path, strerror(-ret));
	qcow2_prealloc_trim(q);
	pthread_mutex_unlock(&q->lock);
	return ret;
}

static void qcow2_close(struct vd_image *img)
{
	struct qcow2 *q = img->priv;

	if (!q)
		return;
	if (img->writable)
		qcow2_finish(img);
	qcow2_free(q);
	img->priv = NULL;
}

static int qcow2_flush(struct vd_image *img)
{
	struct qcow2 *q = img->priv;
	int ret;

	if (!img->writable)
		return 0;
	pthread_mutex_lock(&q->lock);
	ret = qcow2_flush_locked(q);
	pthread_mutex_unlock(&q->lock);
	return ret;
}

static void qcow2_info(struct vd_image *img, struct json_writer *j)
{
	struct qcow2 *q = img->priv;

	json_u64(j, "qcow2_version", q->version);
	json_u64(j, "refcount_bits", q->refcount_bits);
	json_str(j, "compression_type", q->compression ? "zstd" : "zlib");
	json_bool(j, "extended_l2", q->ext_l2);
	json_bool(j, "lazy_refcounts", q->compat & QCOW2_COMPAT_LAZY);
	json_bool(j, "dirty", q->incompat & QCOW2_INCOMPAT_DIRTY);
	json_bool(j, "corrupt", q->incompat & QCOW2_INCOMPAT_CORRUPT);
	json_u64(j, "snapshots", q->nb_snapshots);
	json_str(j, "data_file", q->data_name);
	json_bool(j, "data_file_raw", q->data_raw);
	pthread_mutex_lock(&q->lock);
	json_u64(j, "bitmaps", q->has_bitmaps ? q->nb_bitmaps : 0);
	qcow2_bitmaps_info(q, j);
	json_u64(j, "l1_size", q->l1_size); /* a grow changes it, under the lock */
	pthread_mutex_unlock(&q->lock);
	json_u64(j, "header_length", q->header_length);
}

const struct vd_format vd_format_qcow2 = {
	.name = "qcow2",
	.probe = qcow2_probe,
	.open = qcow2_open,
	.finish = qcow2_finish,
	.close = qcow2_close,
	.map = qcow2_map,
	.complete = qcow2_complete,
	.allocated = qcow2_allocated,
	.block_status = qcow2_block_status,
	.discard = qcow2_discard,
	.write_zeroes = qcow2_write_zeroes,
	.flush = qcow2_flush,
	.truncate = qcow2_truncate,
	.create = qcow2_create,
	.info = qcow2_info,
	.bitmap = qcow2_bitmap,
	.set_backing = qcow2_set_backing,
	.bitmap_take = qcow2_bitmap_take,
	.bitmap_merge = qcow2_bitmap_merge,
};
