/* qcow2 virtual resize: growing (a larger L1 table written elsewhere, then the
 * header switched in one write; zeroes written or flagged where a longer
 * backing file would show through) and shrinking when the dropped tail holds
 * no allocation. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "util/table-mem.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

static int l1_grow(struct qcow2 *q, uint32_t need)
{
	uint64_t bytes = (uint64_t)need * 8,
		 ncl = ALIGN_UP(bytes, q->cluster_size) >> q->cluster_bits;
	uint64_t old_off = q->l1_offset, old_ncl, noff;
	uint64_t *buf, *nl1 = NULL;
	uint8_t *ndirty = NULL, hdr[12];
	bool fresh;
	int ret;

	if (bytes > QCOW2_MAX_L1_BYTES) {
		vd_err("%s: L1 table would exceed %u bytes", q->img->path, QCOW2_MAX_L1_BYTES);
		return -EFBIG;
	}
	old_ncl = ALIGN_UP((uint64_t)q->l1_size * 8, q->cluster_size) >> q->cluster_bits;
	ret = qcow2_flush_locked(q); /* no dirty L1 entries pointing at unwritten tables */
	if (ret)
		return ret;
	buf = calloc(ncl, q->cluster_size);
	nl1 = table_alloc(need, 8);
	ndirty = calloc((bytes + 511) / 512, 1);
	if (!buf || !nl1 || !ndirty) {
		ret = -ENOMEM;
		goto out;
	}
	ret = qcow2_alloc_clusters(q, ncl, &noff, &fresh);
	if (ret)
		goto out;
	memcpy(nl1, q->l1, (uint64_t)q->l1_size * 8);
	for (uint32_t i = 0; i < need; i++)
		buf[i] = htobe64(nl1[i]);
	ret = qcow2_refcount_sync(q);
	if (!ret)
		ret = meta_pwrite(q->img->fd, buf, ncl << q->cluster_bits, noff);
	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	if (ret) {
		qcow2_alloc_rollback(q, noff, ncl);
		goto out;
	}
	put_be32(hdr, need);
	put_be64(hdr + 4, noff);
	ret = qcow2_write_header_field(q, QCOW2_HDR_L1, hdr, 12);
	if (ret)
		goto out;
	table_free(q->l1);
	free(q->l1_dirty);
	q->l1 = nl1;
	q->l1_dirty = ndirty;
	nl1 = NULL;
	ndirty = NULL;
	q->l1_size = need;
	q->l1_offset = noff;
	for (uint64_t i = 0; i < old_ncl && old_off; i++)
		qcow2_refcount_add(q, qcow2_cl(q, old_off) + i, -1);
out:
	free(buf);
	table_free(nl1);
	free(ndirty);
	return ret;
}

/* Does guest cluster gcl hold a host allocation? */
static int cluster_allocated(struct qcow2 *q, uint64_t gcl, bool *alloc)
{
	struct qcow2_cache_entry *ce;
	uint64_t e;
	unsigned idx;
	int ret = qcow2_l2_get(q, gcl, false, &ce, &idx);

	*alloc = false;
	if (ret || !ce)
		return ret;
	e = get_be64((uint8_t *)ce->buf + ((uint64_t)idx << (q->ext_l2 ? 4 : 3)));
	*alloc = (e & (QCOW2_OFF_MASK | QCOW2_COMPRESSED)) != 0;
	return 0;
}

static int write_size(struct qcow2 *q, uint64_t size)
{
	uint64_t v = htobe64(size);
	int ret = qcow2_write_header_field(q, QCOW2_HDR_SIZE, &v, 8);

	if (!ret) {
		q->size = size;
		q->img->size = size;
	}
	return ret;
}

static int shrink(struct qcow2 *q, uint64_t size)
{
	uint64_t c0 = qcow2_cl(q, size), c1 = qcow2_cl(q, q->size + q->cluster_size - 1);
	bool alloc;
	int ret;

	for (uint64_t c = c0; c < c1; c++) {
		ret = cluster_allocated(q, c, &alloc);
		if (ret)
			return ret;
		if (alloc) {
			vd_err("%s: cannot shrink to %" PRIu64 " bytes: guest offset 0x%" PRIx64
			       " is allocated",
			       q->img->path, size, c << q->cluster_bits);
			return -EBUSY;
		}
	}
	return write_size(q, size);
}

/* Growing over a longer backing file: the new range must read as zeroes, not
 * as the backing file, and must do so before the new size is visible (on disk
 * too). Zero [old, cluster end of min(size, backing size)) through the generic
 * path, as QEMU does: whole clusters get the zero flag (v3), or, on v2 which
 * has none, real clusters filled with written zeroes (1 MiB at a time); the
 * cluster at an unaligned old end gets zeroes past the old end written into
 * it, a copy-on-write if it is not ours yet. That write is needed even when
 * the cluster is allocated: a copy-on-write may have brought backing bytes
 * past the old end into it. Called and returns with the lock held; drops it
 * while the zeroes are written, which q->resizing keeps other resizes out of. */
static int hide_backing(struct qcow2 *q, uint64_t old, uint64_t size)
{
	struct vd_image *b = q->img->backing;
	uint64_t end;
	int ret;

	if (!q->has_backing || !b || b->size <= old)
		return 0;
	end = ALIGN_UP(min_u64(b->size, size), q->cluster_size);
	pthread_mutex_unlock(&q->lock);
	ret = image_zero_grow_wait(q->img, end - old, old);
	pthread_mutex_lock(&q->lock);
	/* The zeroes' data and entries are durable before the header says the
	 * range is part of the disk. */
	if (!ret)
		ret = qcow2_flush_locked(q);
	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	return ret;
}

int qcow2_truncate(struct vd_image *img, uint64_t size)
{
	struct qcow2 *q = img->priv;
	uint64_t per_l2 = (uint64_t)q->cluster_size * q->l2_entries;
	uint64_t need = size / per_l2 + !!(size % per_l2), old;
	int ret;

	if (size % 512) {
		vd_err("%s: cannot resize to %" PRIu64
		       " bytes: a qcow2 size must be a multiple of 512",
		       img->path, size);
		return -EINVAL;
	}
	if (qcow2_has_data_file(q)) {
		/* QEMU resizes the data file along (and fills a raw one's L2
		 * tables): not done here yet */
		vd_err("%s: cannot change the size of an image with an external data file",
		       img->path);
		return -ENOTSUP;
	}
	pthread_mutex_lock(&q->lock);
	if (q->resizing) {
		vd_err("%s: cannot change the size: another resize is running", img->path);
		pthread_mutex_unlock(&q->lock);
		return -EBUSY;
	}
	old = q->size;
	if (size != old && qcow2_bitmaps_block_resize(q)) {
		ret = -ENOTSUP;
		goto out_unlock;
	}
	ret = qcow2_prepare_write(q);
	if (ret || size == old)
		goto out;
	q->resizing = true;
	if (size < old) {
		ret = shrink(q, size);
		goto out;
	}
	if (need > q->l1_size) {
		ret = need > UINT32_MAX ? -EFBIG : l1_grow(q, need);
		if (ret)
			goto out;
	}
	/* Zero clusters first (entries past the size are legal), then the size. */
	ret = hide_backing(q, old, size);
	if (!ret)
		ret = write_size(q, size);
out:
	q->resizing = false;
out_unlock:
	pthread_mutex_unlock(&q->lock);
	return ret;
}
