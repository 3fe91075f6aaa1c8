/* qcow2 refcount rebuild for images left with the dirty bit (lazy refcounts or
 * a crash of such a writer): count every reference the way `qemu-img check`
 * does (header, active and snapshot L1/L2 tables and data, compressed ranges,
 * snapshot table, refcount structures, bitmaps), write the counts, fix COPIED
 * flags of the active tables, then clear the dirty bit. Runs at open. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

struct rebuild {
	struct qcow2 *q;
	uint32_t *cnt;
	uint64_t n;
	uint8_t *buf; /* one cluster */
};

static int count(struct rebuild *r, uint64_t off, uint64_t len, const char *what)
{
	struct qcow2 *q = r->q;
	uint64_t c0, c1;

	if (!len)
		return 0;
	c0 = qcow2_cl(q, off);
	c1 = qcow2_cl(q, off + len - 1);
	if (c1 >= r->n) {
		vd_err("%s: %s at 0x%" PRIx64 " lies past the end of the file", q->img->path, what,
		       off);
		return -EINVAL;
	}
	for (uint64_t c = c0; c <= c1; c++)
		r->cnt[c]++;
	return 0;
}

static int count_l2(struct rebuild *r, uint64_t l2off)
{
	struct qcow2 *q = r->q;
	unsigned step = q->ext_l2 ? 16 : 8;
	int ret = meta_pread(q->img->fd, r->buf, q->cluster_size, l2off);

	for (uint32_t i = 0; !ret && i < q->l2_entries; i++) {
		uint64_t e = get_be64(r->buf + i * step), off, len;
		switch (qcow2_classify(q, e)) {
		case QC_COMPRESSED:
			qcow2_compressed_range(q, e, &off, &len);
			ret = count(r, off, len, "compressed cluster");
			break;
		case QC_NORMAL:
		case QC_ZERO_ALLOC:
			/* not counted in an external data file (as qemu-img check) */
			if (!qcow2_has_data_file(q))
				ret = count(r, e & QCOW2_OFF_MASK, q->cluster_size, "data cluster");
			break;
		default:
			break;
		}
	}
	return ret;
}

static int count_l1(struct rebuild *r, uint64_t off, uint32_t size, const uint64_t *mem)
{
	struct qcow2 *q = r->q;
	uint64_t *l1 = NULL;
	int ret = count(r, off, (uint64_t)size * 8, "L1 table");

	if (ret || !size)
		return ret;
	if (!mem) {
		l1 = malloc((uint64_t)size * 8);
		if (!l1)
			return -ENOMEM;
		ret = meta_pread(q->img->fd, l1, (uint64_t)size * 8, off);
		for (uint32_t i = 0; i < size; i++)
			l1[i] = be64toh(l1[i]);
		mem = l1;
	}
	for (uint32_t i = 0; !ret && i < size; i++) {
		uint64_t l2 = mem[i] & QCOW2_OFF_MASK;
		if (!l2)
			continue;
		ret = count(r, l2, q->cluster_size, "L2 table");
		if (!ret)
			ret = count_l2(r, l2);
	}
	free(l1);
	return ret;
}

static int count_bitmaps(struct rebuild *r)
{
	struct qcow2 *q = r->q;
	uint64_t pos = 0, n = q->bm_dir_size;
	uint8_t *dir;
	int ret;

	if (!q->has_bitmaps)
		return 0;
	ret = count(r, q->bm_dir_offset, n, "bitmap directory");
	dir = malloc(n ? n : 1);
	if (!dir)
		return -ENOMEM;
	if (!ret)
		ret = meta_pread(q->img->fd, dir, n, q->bm_dir_offset);
	for (uint32_t i = 0; !ret && i < q->nb_bitmaps && pos + 24 <= n; i++) {
		uint64_t toff = get_be64(dir + pos);
		uint32_t tsize = get_be32(dir + pos + 8);
		uint64_t *tab = calloc(tsize ? tsize : 1, 8);

		if (!tab) {
			ret = -ENOMEM;
			break;
		}
		ret = count(r, toff, (uint64_t)tsize * 8, "bitmap table");
		if (!ret)
			ret = meta_pread(q->img->fd, tab, (uint64_t)tsize * 8, toff);
		for (uint32_t j = 0; !ret && j < tsize; j++) {
			uint64_t d = be64toh(tab[j]) & QCOW2_OFF_MASK;
			if (d)
				ret = count(r, d, q->cluster_size, "bitmap data");
		}
		free(tab);
		pos += ALIGN_UP(
			(uint64_t)(24 + get_be32(dir + pos + 20) + get_be16(dir + pos + 18)), 8);
	}
	free(dir);
	return ret;
}

static int count_all(struct rebuild *r)
{
	struct qcow2 *q = r->q;
	int ret = count(r, 0, q->cluster_size, "header");

	if (!ret)
		ret = count_l1(r, q->l1_offset, q->l1_size, q->l1);
	for (uint32_t i = 0; !ret && i < q->nb_snapshots; i++)
		ret = count_l1(r, q->snaps[i].l1_offset, q->snaps[i].l1_size, NULL);
	if (!ret)
		ret = count(r, q->snapshots_offset, q->snapshots_bytes, "snapshot table");
	if (!ret)
		ret = count(r, q->rt_offset, (uint64_t)q->rt_clusters * q->cluster_size,
			    "refcount table");
	for (uint64_t i = 0; !ret && i < q->rt_entries; i++)
		if (q->rt[i] & QCOW2_RT_OFF_MASK)
			ret = count(r, q->rt[i] & QCOW2_RT_OFF_MASK, q->cluster_size,
				    "refcount block");
	if (!ret)
		ret = count_bitmaps(r);
	return ret;
}

/* COPIED in the active tables must say "refcount is exactly 1". */
static int fix_copied(struct rebuild *r)
{
	struct qcow2 *q = r->q;
	unsigned step = q->ext_l2 ? 16 : 8;
	int ret;

	for (uint32_t i = 0; i < q->l1_size; i++) {
		uint64_t l2 = q->l1[i] & QCOW2_OFF_MASK, want;
		struct qcow2_cache_entry *ce;

		if (!l2)
			continue;
		want = r->cnt[qcow2_cl(q, l2)] == 1 ? QCOW2_COPIED : 0;
		if ((q->l1[i] & QCOW2_COPIED) != want) {
			q->l1[i] = (q->l1[i] & ~QCOW2_COPIED) | want;
			q->l1_dirty[i / 64] = 1;
		}
		ret = qcow2_cache_get(&q->l2c, l2, &ce);
		if (ret)
			return ret;
		for (uint32_t j = 0; j < q->l2_entries; j++) {
			uint8_t *p = (uint8_t *)ce->buf + j * step;
			uint64_t e = get_be64(p), ne = e & ~QCOW2_COPIED;
			enum qcow2_ctype t = qcow2_classify(q, e);

			/* an external data file's clusters count as 1 */
			if ((t == QC_NORMAL || t == QC_ZERO_ALLOC) &&
			    (qcow2_has_data_file(q) ||
			     r->cnt[qcow2_cl(q, e & QCOW2_OFF_MASK)] == 1))
				ne |= QCOW2_COPIED;
			if (ne != e) {
				put_be64(p, ne);
				qcow2_cache_dirty(&q->l2c, ce);
			}
		}
	}
	return 0;
}

static int write_counts(struct rebuild *r)
{
	struct qcow2 *q = r->q;
	uint64_t rc;
	int ret = 0;

	q->rebuild_counts = r->cnt;
	q->rebuild_n = r->n;
	for (uint64_t c = 0; c < r->n && !ret; c++) {
		if (r->cnt[c] > q->refcount_max) {
			vd_err("%s: cluster at 0x%" PRIx64 " has %u references, more than %u-bit "
			       "refcounts hold",
			       q->img->path, c << q->cluster_bits, r->cnt[c], q->refcount_bits);
			ret = -EINVAL;
			break;
		}
		ret = qcow2_refcount_get(q, c, &rc);
		if (!ret && rc != r->cnt[c])
			ret = qcow2_refcount_set(q, c, r->cnt[c]);
	}
	q->rebuild_counts = NULL;
	q->rebuild_n = 0;
	return ret;
}

int qcow2_rebuild_refcounts(struct qcow2 *q)
{
	struct rebuild r = {.q = q, .n = q->host_end + 1};
	uint64_t v;
	int ret = -ENOMEM;

	r.cnt = calloc(r.n, sizeof(*r.cnt));
	r.buf = malloc(q->cluster_size);
	if (!r.cnt || !r.buf)
		goto out;
	ret = count_all(&r);
	if (!ret)
		ret = write_counts(&r);
	if (!ret)
		ret = fix_copied(&r);
	if (!ret)
		ret = qcow2_flush_locked(q);
	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	if (ret)
		goto out;
	v = htobe64(q->incompat & ~QCOW2_INCOMPAT_DIRTY);
	ret = qcow2_write_header_field(q, QCOW2_HDR_INCOMPAT, &v, 8);
	if (!ret) {
		q->incompat &= ~QCOW2_INCOMPAT_DIRTY;
		vd_info("%s: refcounts rebuilt, dirty bit cleared", q->img->path);
	}
	q->free_hint = 1;
out:
	free(r.cnt);
	free(r.buf);
	return ret;
}
