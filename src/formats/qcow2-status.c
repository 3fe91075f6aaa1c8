/* qcow2 block status (runs of data, zeroes and unallocated clusters, scanning
 * a loaded L2 table without a lookup per cluster) and the allocation count
 * behind st_blocks. All under the image lock. */
#include <errno.h>
#include <stdlib.h>

#include "util/compiler.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

/* ---- block status ---- */

static enum vd_bs bs_of(enum vd_ext_type t)
{
	return t == VD_EXT_DATA ? VD_BS_DATA : t == VD_EXT_ZERO ? VD_BS_ZERO : VD_BS_UNALLOC;
}

/* Status of cluster bytes [in, cluster end) under entry e: *n bytes of one kind
 * from in (extended L2: a run of subclusters alike). */
static int entry_status(struct qcow2 *q, uint64_t gcl, uint64_t e, uint64_t bm, uint64_t in,
			uint64_t *n, enum vd_bs *st)
{
	enum vd_ext_type t, t2;
	int ret;

	*n = q->cluster_size - in;
	switch (qcow2_classify(q, e)) {
	case QC_ZERO_PLAIN:
	case QC_ZERO_ALLOC:
		*st = VD_BS_ZERO;
		return 0;
	case QC_COMPRESSED:
		*st = VD_BS_DATA;
		return 0;
	case QC_NORMAL:
	case QC_UNALLOC:
		if (!q->ext_l2) {
			*st = qcow2_classify(q, e) == QC_NORMAL ? VD_BS_DATA : VD_BS_UNALLOC;
			return 0;
		}
		break;
	}
	ret = qcow2_subcluster_type(q, gcl, e, bm, in >> q->sc_bits, &t);
	if (ret)
		return ret;
	*st = bs_of(t);
	for (uint64_t p = ((in >> q->sc_bits) + 1) << q->sc_bits; p < q->cluster_size;
	     p += q->sc_size) {
		ret = qcow2_subcluster_type(q, gcl, e, bm, p >> q->sc_bits, &t2);
		if (ret)
			return ret;
		if (t2 != t) {
			*n = p - in;
			break;
		}
	}
	return 0;
}

/* Status of the run from off up to max bytes, inside the guest range one L2
 * table covers: an empty L1 entry is one run, a loaded table is scanned
 * without looking it up again for every cluster. */
static int table_status(struct qcow2 *q, uint64_t off, uint64_t max, uint64_t *n, enum vd_bs *st)
{
	uint64_t gcl = qcow2_cl(q, off), in = off & (q->cluster_size - 1), e, bm, k;
	uint64_t span = ((uint64_t)q->l2_entries << q->cluster_bits) -
			(off & (((uint64_t)q->l2_entries << q->cluster_bits) - 1));
	struct qcow2_cache_entry *ce;
	enum vd_bs s = VD_BS_UNALLOC;
	unsigned idx;
	int ret;

	max = min_u64(max, span);
	ret = qcow2_l2_get(q, gcl, false, &ce, &idx);
	if (ret)
		return ret;
	if (!ce) {
		*n = max;
		*st = VD_BS_UNALLOC;
		return 0;
	}
	*n = 0;
	for (; *n < max; idx++, gcl++, in = 0) {
		qcow2_l2_read(q, ce, idx, &e, &bm);
		ret = entry_status(q, gcl, e, bm, in, &k, &s);
		if (ret)
			return ret;
		if (*n && s != *st)
			break;
		*st = s;
		*n += k;
		if (k < q->cluster_size - in)
			break; /* the run ends inside this cluster */
	}
	*n = min_u64(*n, max);
	return 0;
}

int qcow2_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
		       enum vd_bs *status)
{
	struct qcow2 *q = img->priv;
	uint64_t done = 0, n;
	enum vd_bs st = VD_BS_UNALLOC;
	int ret = 0;

	pthread_mutex_lock(&q->lock);
	while (done < len) {
		ret = table_status(q, off + done, len - done, &n, &st);
		if (ret)
			break;
		if (done && st != *status)
			break;
		*status = st;
		done += n;
	}
	pthread_mutex_unlock(&q->lock);
	*pnum = done;
	return done ? 0 : ret;
}

/* ---- allocation count (st_blocks) ---- */

/* The bytes an entry counts in st_blocks: a cluster holding guest data (with
 * extended L2: at least one allocated subcluster) whole, a compressed one by
 * the host sectors it occupies; zero and unallocated clusters nothing. */
uint64_t qcow2_entry_weight(const struct qcow2 *q, uint64_t e, uint64_t bm)
{
	uint64_t nsect;

	switch (qcow2_classify(q, e)) {
	case QC_NORMAL:
		return !q->ext_l2 || (bm & QCOW2_EXTL2_ALL_ALLOC) ? q->cluster_size : 0;
	case QC_COMPRESSED:
		/* the 512-byte host sectors the compressed bytes touch */
		nsect = ((e >> q->csize_shift) & q->csize_mask) + 1;
		return nsect * 512;
	default:
		return 0;
	}
}

/* Sum the weights of every active L2 table once: tables in the cache as they
 * are there (they may be newer than on disk), the others read with plain
 * reads that do not disturb the cache. Only allocated tables are read. */
static int alloc_count(struct qcow2 *q)
{
	uint64_t sum = 0, e, bm;
	struct qcow2_cache_entry tmp = {0};
	int ret = 0;

	for (uint32_t i = 0; i < q->l1_size && !ret; i++) {
		uint64_t off = q->l1[i] & QCOW2_OFF_MASK;
		struct qcow2_cache_entry *ce;

		if (!off)
			continue;
		ret = qcow2_l2_table_check(q, i, off);
		if (ret)
			break;
		ce = qcow2_cache_peek(&q->l2c, off);
		if (!ce) {
			if (!tmp.buf && !(tmp.buf = malloc(q->cluster_size))) {
				ret = -ENOMEM;
				break;
			}
			ret = meta_pread_zfill(q->img->fd, tmp.buf, q->cluster_size, off);
			ce = &tmp;
		}
		for (uint32_t k = 0; k < q->l2_entries && !ret; k++) {
			qcow2_l2_read(q, ce, k, &e, &bm);
			sum += qcow2_entry_weight(q, e, bm);
		}
	}
	free(tmp.buf);
	if (!ret) {
		q->alloc_bytes = sum;
		q->alloc_known = true;
	}
	return ret;
}

int qcow2_allocated(struct vd_image *img, uint64_t *bytes)
{
	struct qcow2 *q = img->priv;
	int ret = 0;

	pthread_mutex_lock(&q->lock);
	if (!q->alloc_known)
		ret = alloc_count(q);
	*bytes = q->alloc_bytes;
	pthread_mutex_unlock(&q->lock);
	return ret;
}
