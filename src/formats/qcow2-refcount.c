/* qcow2 refcounts: reading and changing entries of any width (1..64 bits),
 * cluster allocation (first fit, self-describing refcount blocks, refcount
 * table growth at the end of the file), frees deferred until the metadata that
 * dropped the reference is on disk, and the one metadata flush path. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "util/table-mem.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

/* ---- one entry inside a refcount block ---- */

static uint64_t rb_read(const struct qcow2 *q, const uint8_t *b, uint64_t i)
{
	unsigned bits = q->refcount_bits;

	switch (bits) {
	case 8:
		return b[i];
	case 16:
		return get_be16(b + 2 * i);
	case 32:
		return get_be32(b + 4 * i);
	case 64:
		return get_be64(b + 8 * i);
	default: /* 1, 2, 4 bits: packed LSB first */
		return (b[i * bits / 8] >> (i * bits % 8)) & ((1u << bits) - 1);
	}
}

static void rb_write(const struct qcow2 *q, uint8_t *b, uint64_t i, uint64_t v)
{
	unsigned bits = q->refcount_bits;

	switch (bits) {
	case 8:
		b[i] = v;
		break;
	case 16:
		put_be16(b + 2 * i, v);
		break;
	case 32:
		put_be32(b + 4 * i, v);
		break;
	case 64:
		put_be64(b + 8 * i, v);
		break;
	default: {
		unsigned sh = i * bits % 8, mask = ((1u << bits) - 1) << sh;
		b[i * bits / 8] = (b[i * bits / 8] & ~mask) | ((v << sh) & mask);
	}
	}
}

static int rb_load(struct qcow2 *q, uint64_t rtidx, struct qcow2_cache_entry **e)
{
	uint64_t off = q->rt[rtidx] & QCOW2_RT_OFF_MASK;

	if (off & (q->cluster_size - 1) || qcow2_cl(q, off) >= q->host_end) {
		vd_err("%s: refcount table entry %" PRIu64 " points to 0x%" PRIx64
		       ": unaligned or past the end "
		       "of the file",
		       q->img->path, rtidx, off);
		return -EIO;
	}
	return qcow2_cache_get(&q->rbc, off, e);
}

int qcow2_refcount_get(struct qcow2 *q, uint64_t cl, uint64_t *rc)
{
	uint64_t rtidx = cl >> q->rb_bits;
	struct qcow2_cache_entry *e;
	int ret;

	*rc = 0;
	if (rtidx >= q->rt_entries || !(q->rt[rtidx] & QCOW2_RT_OFF_MASK))
		return 0;
	ret = rb_load(q, rtidx, &e);
	if (ret)
		return ret;
	*rc = rb_read(q, e->buf, cl & (q->rb_entries - 1));
	return 0;
}

/* ---- refcount blocks and table growth ---- */

static int write_sync(struct qcow2 *q, const void *buf, size_t len, uint64_t off, const char *what)
{
	int ret = meta_pwrite(q->img->fd, buf, len, off);

	if (!ret)
		ret = meta_fdatasync(q->img->fd);
	if (ret)
		vd_err("%s: cannot write %s at 0x%" PRIx64 ": %s", q->img->path, what, off,
		       strerror(-ret));
	return ret;
}

static void rebuild_count(struct qcow2 *q, uint64_t cl)
{
	if (q->rebuild_counts && cl < q->rebuild_n)
		q->rebuild_counts[cl]++;
}

static bool rebuild_used(struct qcow2 *q, uint64_t cl)
{
	return q->rebuild_counts && cl < q->rebuild_n && q->rebuild_counts[cl];
}

/* The active metadata in cluster cl, found in the L1 and refcount tables
 * (only a cluster inside the file can hold any), or NULL. */
static const char *metadata_in(struct qcow2 *q, uint64_t cl)
{
	uint64_t off = cl << q->cluster_bits;

	if (qcow2_hits_fixed_metadata(q, off, q->cluster_size))
		return "the header, the L1 table or the refcount table";
	if (cl >= q->host_end)
		return NULL;
	for (uint32_t i = 0; i < q->l1_size; i++)
		if ((q->l1[i] & QCOW2_OFF_MASK) == off)
			return "an L2 table";
	for (uint64_t i = 0; i < q->rt_entries; i++)
		if ((q->rt[i] & QCOW2_RT_OFF_MASK) == off)
			return "a refcount block";
	return NULL;
}

/* A free cluster holding the header, the L1 or the refcount table, an L2
 * table or a refcount block means the refcounts are wrong (a missing
 * refcount block, an entry cleared): never allocate it, or a guest write
 * would overwrite metadata (QEMU's overlap check refuses the same write). */
static int metadata_not_free(struct qcow2 *q, uint64_t cl)
{
	const char *what = metadata_in(q, cl);

	if (!what)
		return 0;
	vd_err("%s: the cluster at 0x%" PRIx64 " holds %s but its refcount is 0: refcounts are "
	       "inconsistent, not allocating it",
	       q->img->path, cl << q->cluster_bits, what);
	return -EIO;
}

/* A new refcount block for table index rtidx (whose range is all free), placed
 * inside its own range and counting itself; on disk before the table points at it. */
static int refblock_create(struct qcow2 *q, uint64_t rtidx)
{
	uint64_t c0 = rtidx << q->rb_bits, c = c0 ? c0 : 1, ent;
	uint8_t *buf;
	int ret;

	while (rebuild_used(q, c))
		c++;
	if (c >= c0 + q->rb_entries)
		return -ENOSPC;
	ret = metadata_not_free(q, c);
	if (ret)
		return ret;
	buf = aligned_alloc(512, q->cluster_size);
	if (!buf)
		return -ENOMEM;
	memset(buf, 0, q->cluster_size);
	rb_write(q, buf, c - c0, 1);
	/* Written space is never fresh again, and never cut off at close,
	 * even if what points to it fails to land. */
	if (c >= q->host_end)
		q->host_end = c + 1;
	ret = write_sync(q, buf, q->cluster_size, c << q->cluster_bits, "refcount block");
	free(buf);
	if (ret)
		return ret;
	ent = htobe64(c << q->cluster_bits);
	ret = write_sync(q, &ent, 8, q->rt_offset + rtidx * 8, "refcount table entry");
	if (ret)
		return ret;
	q->rt[rtidx] = c << q->cluster_bits;
	rebuild_count(q, c);
	return 0;
}

/* The refcount table is full: write a larger one plus the refcount blocks that
 * describe it past the end of the file, then switch the header to it. */
static int reftable_grow(struct qcow2 *q, uint64_t need)
{
	uint64_t per = q->cluster_size / 8, cover = q->rt_entries << q->rb_bits;
	uint64_t T = max_u64(q->host_end, cover);
	uint64_t entries, tc, nb = 1, first, last;
	uint64_t *nrt = NULL;
	uint8_t *blk = NULL, hdr[12];
	uint64_t old_off = q->rt_offset, old_cl = q->rt_clusters;
	int ret = -ENOMEM;

	entries = (need + 1 > q->rt_entries ? need + 1 : q->rt_entries) * 3 / 2;
	for (;;) {
		tc = (entries + per - 1) / per;
		first = T >> q->rb_bits;
		last = (T + tc + nb - 1) >> q->rb_bits;
		if (last - first + 1 == nb && last < tc * per)
			break;
		nb = last - first + 1;
		if (last >= entries)
			entries = last + 1;
	}
	if (tc * q->cluster_size > QCOW2_MAX_RT_BYTES) {
		vd_err("%s: refcount table would exceed %u bytes", q->img->path,
		       QCOW2_MAX_RT_BYTES);
		return -ENOSPC;
	}
	nrt = table_alloc(tc * per, 8);
	blk = aligned_alloc(512, q->cluster_size);
	if (!nrt || !blk)
		goto out;
	for (uint64_t i = 0; i < q->rt_entries; i++)
		nrt[i] = q->rt[i];
	q->host_end = T + tc + nb; /* before writing there: see refblock_create() */
	for (uint64_t b = 0; b < nb; b++) {
		uint64_t bc0 = (first + b) << q->rb_bits;
		memset(blk, 0, q->cluster_size);
		for (uint64_t c = T; c < T + tc + nb; c++)
			if (c >= bc0 && c < bc0 + q->rb_entries)
				rb_write(q, blk, c - bc0, 1);
		ret = meta_pwrite(q->img->fd, blk, q->cluster_size,
				  (T + tc + b) << q->cluster_bits);
		if (ret)
			goto out_err;
		nrt[first + b] = (T + tc + b) << q->cluster_bits;
	}
	for (uint64_t i = 0; i < tc * per; i++)
		nrt[i] = htobe64(nrt[i]);
	ret = meta_fdatasync(q->img->fd);
	if (!ret)
		ret = write_sync(q, nrt, tc * q->cluster_size, T << q->cluster_bits,
				 "refcount table");
	if (ret)
		goto out_err;
	put_be64(hdr, T << q->cluster_bits);
	put_be32(hdr + 8, tc);
	ret = qcow2_write_header_field(q, QCOW2_HDR_RT, hdr, 12);
	if (ret)
		goto out;
	for (uint64_t i = 0; i < tc * per; i++)
		nrt[i] = be64toh(nrt[i]);
	table_free(q->rt);
	q->rt = nrt;
	nrt = NULL;
	q->rt_offset = T << q->cluster_bits;
	q->rt_clusters = tc;
	q->rt_entries = tc * per;
	for (uint64_t i = 0; i < old_cl; i++) {
		ret = qcow2_refcount_add(q, qcow2_cl(q, old_off) + i, -1);
		if (ret)
			break;
	}
	goto out;
out_err:
	vd_err("%s: cannot grow the refcount table: %s", q->img->path, strerror(-ret));
out:
	table_free(nrt);
	free(blk);
	return ret;
}

/* Make sure the refcount block for cluster cl exists. *changed tells whether
 * clusters were taken for it (a caller's free-space scan is then stale). */
static int refblock_ensure(struct qcow2 *q, uint64_t cl, bool *changed)
{
	uint64_t rtidx = cl >> q->rb_bits;
	int ret;

	if (rtidx >= q->rt_entries) {
		ret = reftable_grow(q, rtidx);
		if (ret)
			return ret;
		*changed = true;
	}
	if (!(q->rt[rtidx] & QCOW2_RT_OFF_MASK)) {
		ret = refblock_create(q, rtidx);
		if (ret)
			return ret;
		*changed = true;
	}
	return 0;
}

static int refcount_update(struct qcow2 *q, uint64_t cl, bool absolute, int64_t v)
{
	struct qcow2_cache_entry *e;
	bool changed = false;
	uint64_t old, nv;
	int ret;

	ret = refblock_ensure(q, cl, &changed);
	if (ret)
		return ret;
	ret = rb_load(q, cl >> q->rb_bits, &e);
	if (ret)
		return ret;
	old = rb_read(q, e->buf, cl & (q->rb_entries - 1));
	nv = absolute ? (uint64_t)v : old + v;
	if ((!absolute && v < 0 && old < (uint64_t)-v) || nv > q->refcount_max) {
		vd_err("%s: refcount of cluster at 0x%" PRIx64 " would go from %" PRIu64 " to %s",
		       q->img->path, cl << q->cluster_bits, old,
		       v < 0 ? "below 0" : "past its maximum");
		return -EIO;
	}
	rb_write(q, e->buf, cl & (q->rb_entries - 1), nv);
	qcow2_cache_dirty(&q->rbc, e);
	if (nv == 0) {
		if (cl < q->free_hint)
			q->free_hint = cl;
		qcow2_cache_forget(&q->l2c, cl << q->cluster_bits);
	}
	return 0;
}

int qcow2_refcount_add(struct qcow2 *q, uint64_t cl, int delta)
{
	return refcount_update(q, cl, false, delta);
}

int qcow2_refcount_set(struct qcow2 *q, uint64_t cl, uint64_t v)
{
	return refcount_update(q, cl, true, (int64_t)v);
}

/* ---- allocation ---- */

static int cluster_free(struct qcow2 *q, uint64_t cl, bool *is_free)
{
	uint64_t rc;
	int ret = qcow2_refcount_get(q, cl, &rc);

	*is_free = !ret && rc == 0 && !rebuild_used(q, cl);
	if (*is_free)
		ret = metadata_not_free(q, cl);
	return ret;
}

/* A write past the end of the file extends it, and the filesystem (ext4,
 * xfs) will not start an extending or hole-filling O_DIRECT write without
 * blocking: io_uring hands every such write to a kernel worker thread. So the
 * file grows ahead of allocation, PREALLOC_STEP at a time, as unwritten
 * extents that read as zeroes and take writes without blocking, and is cut
 * back to what allocation used when the image closes (after a crash the tail
 * stays: space no refcount points to, which qcow2 allows). Where fallocate()
 * is refused (some NFS servers) the file grows with each write as before. */
#define PREALLOC_STEP (8ull << 20)

static void prealloc(struct qcow2 *q, uint64_t first, uint64_t n)
{
	uint64_t end = (first + n) << q->cluster_bits, from = q->file_size, to;
	int ret;

	if (q->prealloc_off || end <= from)
		return;
	/* Space skipped over (a refcount table placed past the clusters its
	 * size covers, say in a hostile image) stays a hole: only the new
	 * clusters and the step after them are allocated. */
	if (from < first << q->cluster_bits)
		from = first << q->cluster_bits;
	to = (end + PREALLOC_STEP) & ~(PREALLOC_STEP - 1);
	ret = meta_prealloc(q->img->fd, from, to - from);
	if (ret) {
		vd_debug("%s: no preallocation: %s", q->img->path, strerror(-ret));
		q->prealloc_off = true;
		return;
	}
	q->file_size = to;
}

/* Allocate n contiguous clusters (refcount 0 -> 1). *fresh: they lie past
 * everything ever written in this file, so they read as zeroes. */
int qcow2_alloc_clusters(struct qcow2 *q, uint64_t n, uint64_t *off, bool *fresh)
{
	uint64_t limit = QCOW2_OFF_MASK >> q->cluster_bits;
	uint64_t c, start, run;
	bool changed, f;
	int ret;

again:
	c = q->free_hint ? q->free_hint : 1;
	for (run = 0; run < n; c++) {
		if (c >= limit)
			return -ENOSPC;
		ret = cluster_free(q, c, &f);
		if (ret)
			return ret;
		run = f ? run + 1 : 0;
	}
	start = c - n;
	changed = false;
	for (c = start; c < start + n; c++) {
		ret = refblock_ensure(q, c, &changed);
		if (ret)
			return ret;
	}
	if (changed)
		goto again;
	for (c = start; c < start + n; c++) {
		ret = qcow2_refcount_add(q, c, 1);
		if (ret) {
			while (c-- > start)
				qcow2_refcount_add(q, c, -1);
			return ret;
		}
	}
	*fresh = start >= q->host_end;
	if (start + n > q->host_end)
		q->host_end = start + n;
	prealloc(q, start, n);
	if (n == 1 || q->free_hint == start)
		q->free_hint = start + n;
	*off = start << q->cluster_bits;
	return 0;
}

void qcow2_prealloc_trim(struct qcow2 *q)
{
	uint64_t end = q->host_end << q->cluster_bits;
	int ret;

	if (q->file_size <= end)
		return;
	ret = meta_ftruncate(q->img->fd, end);
	if (!ret)
		q->file_size = end;
	else
		vd_warn("%s: cannot cut the preallocated tail at 0x%" PRIx64 ": %s", q->img->path,
			end, strerror(-ret));
}

/* Undo an allocation nothing refers to yet. */
void qcow2_alloc_rollback(struct qcow2 *q, uint64_t off, uint64_t n)
{
	for (uint64_t i = 0; i < n; i++)
		qcow2_refcount_add(q, qcow2_cl(q, off) + i, -1);
}

/* ---- deferred frees ---- */

int qcow2_defer_free(struct qcow2 *q, uint64_t off, uint64_t len)
{
	if (q->nfrees == q->cap_frees) {
		size_t cap = q->cap_frees ? q->cap_frees * 2 : 64;
		struct qcow2_free *n = realloc(q->frees, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		q->frees = n;
		q->cap_frees = cap;
	}
	q->frees[q->nfrees].off = off;
	q->frees[q->nfrees].len = len;
	q->nfrees++;
	return 0;
}

void qcow2_compressed_range(const struct qcow2 *q, uint64_t entry, uint64_t *off, uint64_t *len)
{
	uint64_t coff = entry & q->coff_mask;
	uint64_t nsect = ((entry >> q->csize_shift) & q->csize_mask) + 1;

	*off = coff & ~511ull;
	*len = nsect * 512;
}

/* Drop the allocation an L2 entry (first word) held, once it is safe. An
 * entry that points outside the file (or, uncompressed, off a cluster
 * boundary) held nothing: its refcount is never looked up, since that could
 * create refcount blocks and tables far past the end of the file. */
int qcow2_free_entry(struct qcow2 *q, uint64_t entry)
{
	uint64_t off, len;

	if (entry & QCOW2_COMPRESSED) {
		qcow2_compressed_range(q, entry, &off, &len);
	} else {
		off = entry & QCOW2_OFF_MASK;
		len = q->cluster_size;
		if (!off)
			return 0;
	}
	if (qcow2_cl(q, off) >= q->host_end ||
	    (!(entry & QCOW2_COMPRESSED) && (off & (q->cluster_size - 1)))) {
		vd_err("%s: L2 entry 0x%" PRIx64
		       " dropped at discard or overwrite points to 0x%" PRIx64 ": "
		       "unaligned or past the end of the file",
		       q->img->path, entry, off);
		image_mark_broken(q->img, "qcow2 metadata is inconsistent");
		return -EIO;
	}
	return qcow2_defer_free(q, off, len);
}

static bool tickets_use(const struct qcow2 *q, const struct qcow2_ticket *t, uint64_t off,
			uint64_t len)
{
	for (; t; t = t->next) {
		for (unsigned i = 0; i < t->n; i++) {
			const struct qcow2_item *it = &t->items[i];
			if (it->kind != QI_READ && off < it->host + q->cluster_size &&
			    it->host < off + len)
				return true;
			if (it->src_len && off < it->src_off + it->src_len &&
			    it->src_off < off + len)
				return true;
		}
	}
	return false;
}

/* Host bytes that a write in flight writes or copies from, or a read in
 * flight reads. */
static bool range_busy(struct qcow2 *q, uint64_t off, uint64_t len)
{
	return tickets_use(q, q->inflight, off, len) || tickets_use(q, q->readers, off, len);
}

static void punch(struct qcow2 *q, uint64_t cl, uint64_t n)
{
	if (n)
		meta_fallocate(q->img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
			       cl << q->cluster_bits, n << q->cluster_bits);
}

/*
 * Apply the decrements whose host clusters no request is still using.
 *
 * The ordering rule: a freed host cluster may be handed out again only after
 * its punch-hole completed and after no in-flight read or write still
 * targets it. Both halves hold here. A free whose bytes an in-flight
 * request uses (range_busy(): a write's target or COW source, a read's
 * extents) stays queued with its reference, so the cluster is not free and
 * nothing can be placed in it; a later flush retries it. The decrement to 0
 * and the punch happen together, synchronously, under q->lock, which
 * qcow2_alloc_clusters() also holds: no allocation can see the cluster free
 * before the punch returned, so a punch never lands on a new owner's data.
 * Never move the punch after the lock is dropped or onto the ring. (A
 * rollback gives back clusters nothing ever referenced, without a punch.)
 */
static int apply_frees(struct qcow2 *q)
{
	size_t keep = 0;
	int ret = 0;

	for (size_t i = 0; i < q->nfrees; i++) {
		struct qcow2_free f = q->frees[i];
		uint64_t c0 = qcow2_cl(q, f.off), c1 = qcow2_cl(q, f.off + f.len - 1);
		uint64_t zstart = 0, zn = 0;

		if (ret || range_busy(q, f.off, f.len)) {
			q->frees[keep++] = f;
			continue;
		}
		for (uint64_t c = c0; c <= c1 && !ret; c++) {
			uint64_t rc;
			ret = qcow2_refcount_add(q, c, -1);
			if (!ret)
				ret = qcow2_refcount_get(q, c, &rc);
			if (ret || rc)
				continue;
			if (zn && zstart + zn == c) {
				zn++;
			} else {
				punch(q, zstart, zn);
				zstart = c;
				zn = 1;
			}
		}
		punch(q, zstart, zn);
	}
	q->nfrees = keep;
	return ret;
}

/* ---- the flush path: refcount blocks, sync, L2 tables, sync, L1 ---- */

/* The external data file's completed writes made durable (nothing to do
 * without one: the image file's own syncs cover its data). */
int qcow2_data_sync(struct qcow2 *q)
{
	int ret;

	if (q->data_fd < 0 || !q->img->writable)
		return 0;
	ret = meta_fdatasync(q->data_fd);
	if (ret)
		vd_err("%s: cannot sync its external data file: %s", q->img->path, strerror(-ret));
	return ret;
}

/* Ordering hook before an L2 table is written: its references are counted
 * on disk and the data it points at is durable. */
int qcow2_refcount_sync(struct qcow2 *q)
{
	int ret = qcow2_data_sync(q);

	if (!ret)
		ret = qcow2_cache_flush(&q->rbc, NULL);
	return ret ? ret : meta_fdatasync(q->img->fd);
}

static bool l1_has_dirty(const struct qcow2 *q)
{
	uint64_t nsect = ((uint64_t)q->l1_size * 8 + 511) / 512;

	for (uint64_t s = 0; s < nsect; s++)
		if (q->l1_dirty[s])
			return true;
	return false;
}

static int l1_flush(struct qcow2 *q)
{
	uint64_t bytes = (uint64_t)q->l1_size * 8, nsect = (bytes + 511) / 512;
	uint64_t buf[64];
	int ret;

	for (uint64_t s = 0; s < nsect; s++) {
		uint64_t n = bytes - s * 512 < 512 ? bytes - s * 512 : 512;
		if (!q->l1_dirty[s])
			continue;
		for (unsigned i = 0; i < n / 8; i++)
			buf[i] = htobe64(q->l1[s * 64 + i]);
		ret = meta_pwrite(q->img->fd, buf, n, q->l1_offset + s * 512);
		if (ret) {
			vd_err("%s: cannot write the L1 table at 0x%" PRIx64 ": %s", q->img->path,
			       q->l1_offset + s * 512, strerror(-ret));
			return ret;
		}
		q->l1_dirty[s] = 0;
	}
	return 0;
}

int qcow2_flush_locked(struct qcow2 *q)
{
	bool l2 = qcow2_cache_has_dirty(&q->l2c), l1 = l1_has_dirty(q);
	int ret;

	/* An external data file first: its data before the L2 entries that
	 * map it, and the data of writes in place, which change no entry,
	 * durable as this flush returns (the caller syncs only the image). */
	ret = qcow2_data_sync(q);
	if (!ret)
		ret = qcow2_cache_flush(&q->rbc, NULL);
	if (!ret && (l2 || l1 || q->nfrees))
		ret = meta_fdatasync(q->img->fd);
	if (!ret && l2) {
		ret = qcow2_cache_flush(&q->l2c, NULL);
		if (!ret && (l1 || q->nfrees))
			ret = meta_fdatasync(q->img->fd);
	}
	if (!ret && l1) {
		ret = l1_flush(q);
		if (!ret && q->nfrees)
			ret = meta_fdatasync(q->img->fd);
	}
	if (!ret && q->nfrees)
		ret = apply_frees(q);
	return ret;
}
