/* qcow2 guest-to-host mapping: L2 lookups, read extents for every cluster and
 * subcluster type, allocating writes with copy-on-write plans and tickets,
 * linking on completion (the in-flight list makes overlapping writers wait),
 * discard and write-zeroes. All under the image lock. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <linux/falloc.h>
#include <stdlib.h>
#include <string.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

enum qcow2_ctype qcow2_classify(const struct qcow2 *q, uint64_t e)
{
	if (e & QCOW2_COMPRESSED)
		return QC_COMPRESSED;
	if (!q->ext_l2 && (e & QCOW2_ZERO))
		return (e & QCOW2_OFF_MASK) ? QC_ZERO_ALLOC : QC_ZERO_PLAIN;
	/* Offset 0 is guest cluster 0's place in an external data file, whose
	 * clusters all have COPIED set: that tells it from unallocated. */
	if (qcow2_has_data_file(q) && (e & QCOW2_COPIED))
		return QC_NORMAL;
	return (e & QCOW2_OFF_MASK) ? QC_NORMAL : QC_UNALLOC;
}

static int corrupt(struct qcow2 *q, const char *what, uint64_t gcl, uint64_t val)
{
	vd_err("%s: L2 entry for guest offset 0x%" PRIx64 " (0x%" PRIx64 "): %s", q->img->path,
	       gcl << q->cluster_bits, val, what);
	image_mark_broken(q->img, "qcow2 metadata is inconsistent");
	return -EIO;
}

/* A host cluster an entry points at: aligned and inside the file; in an
 * external data file, at the guest offset (QEMU signals corruption too). */
static int check_host(struct qcow2 *q, uint64_t gcl, uint64_t host)
{
	if (host & (q->cluster_size - 1))
		return corrupt(q, "host offset is not cluster aligned", gcl, host);
	if (qcow2_has_data_file(q))
		return host == gcl << q->cluster_bits
			       ? 0
			       : corrupt(q,
					 "external data file offset differs from the guest offset",
					 gcl, host);
	if (qcow2_cl(q, host) >= q->host_end)
		return corrupt(q, "host offset points past the end of the file", gcl, host);
	return 0;
}

void qcow2_l2_read(const struct qcow2 *q, const struct qcow2_cache_entry *ce, unsigned idx,
		   uint64_t *e, uint64_t *bm)
{
	const uint8_t *p = (const uint8_t *)ce->buf + ((uint64_t)idx << (q->ext_l2 ? 4 : 3));

	*e = get_be64(p);
	*bm = q->ext_l2 ? get_be64(p + 8) : 0;
}

static void l2_write(struct qcow2 *q, struct qcow2_cache_entry *ce, unsigned idx, uint64_t e,
		     uint64_t bm)
{
	uint8_t *p = (uint8_t *)ce->buf + ((uint64_t)idx << (q->ext_l2 ? 4 : 3));
	uint64_t oe, obm;

	if (q->alloc_known) {
		qcow2_l2_read(q, ce, idx, &oe, &obm);
		q->alloc_bytes += qcow2_entry_weight(q, e, bm) - qcow2_entry_weight(q, oe, obm);
	}

	put_be64(p, e);
	if (q->ext_l2)
		put_be64(p + 8, bm);
	qcow2_cache_dirty(&q->l2c, ce);
}

/* Give guest cluster range l1i an L2 table this image alone owns. */
static int l2_make_writable(struct qcow2 *q, uint64_t l1i, struct qcow2_cache_entry **out)
{
	uint64_t old = q->l1[l1i] & QCOW2_OFF_MASK, noff;
	struct qcow2_cache_entry *oe, *ne;
	void *copy = NULL;
	bool fresh;
	int ret;

	if (old) {
		ret = qcow2_cache_get(&q->l2c, old, &oe);
		if (ret)
			return ret;
		copy = malloc(q->cluster_size);
		if (!copy)
			return -ENOMEM;
		memcpy(copy, oe->buf, q->cluster_size);
	}
	ret = qcow2_alloc_clusters(q, 1, &noff, &fresh);
	if (!ret)
		ret = qcow2_cache_get_new(&q->l2c, noff, &ne);
	if (ret) {
		free(copy);
		return ret;
	}
	if (copy)
		memcpy(ne->buf, copy, q->cluster_size);
	free(copy);
	q->l1[l1i] = noff | QCOW2_COPIED;
	q->l1_dirty[l1i / 64] = 1;
	if (old)
		qcow2_defer_free(q, old, q->cluster_size);
	*out = ne;
	return 0;
}

/* An L2 table offset from L1 entry l1i must be cluster aligned and inside
 * the file: 0, or -EIO with a message naming the entry. */
int qcow2_l2_table_check(const struct qcow2 *q, uint64_t l1i, uint64_t off)
{
	if (!(off & (q->cluster_size - 1)) && qcow2_cl(q, off) < q->host_end)
		return 0;
	vd_err("%s: L1 entry %" PRIu64 " points to an L2 table at 0x%" PRIx64
	       ": unaligned or past the end of "
	       "the file",
	       q->img->path, l1i, off);
	return -EIO;
}

int qcow2_l2_get(struct qcow2 *q, uint64_t gcl, bool write, struct qcow2_cache_entry **e,
		 unsigned *idx)
{
	uint64_t l1i = gcl >> q->l2_bits, l1e, off;
	int ret;

	*idx = gcl & (q->l2_entries - 1);
	*e = NULL;
	if (l1i >= q->l1_size)
		return corrupt(q, "beyond the L1 table", gcl, l1i);
	l1e = q->l1[l1i];
	off = l1e & QCOW2_OFF_MASK;
	if (write && (!off || !(l1e & QCOW2_COPIED)))
		return l2_make_writable(q, l1i, e);
	if (!off)
		return 0;
	ret = qcow2_l2_table_check(q, l1i, off);
	if (ret) {
		image_mark_broken(q->img, "qcow2 metadata is inconsistent");
		return ret;
	}
	return qcow2_cache_get(&q->l2c, off, e);
}

/* ---- reads ---- */

/* The source of compressed guest cluster gcl, entry e. */
static int compressed_src(struct qcow2 *q, uint64_t gcl, uint64_t e, struct vd_src *s)
{
	uint64_t nsect = ((e >> q->csize_shift) & q->csize_mask) + 1;

	if (qcow2_has_data_file(q))
		return corrupt(q, "compressed cluster in an image with an external data file", gcl,
			       e);
	s->type = VD_EXT_COMPRESSED;
	s->fd = q->img->fd;
	s->algo = q->compression ? VD_COMPRESS_ZSTD : VD_COMPRESS_DEFLATE;
	s->cluster_off = gcl << q->cluster_bits;
	s->cluster_size = q->cluster_size;
	s->host_off = e & q->coff_mask;
	if (s->host_off >> 56 || qcow2_cl(q, s->host_off) >= q->host_end)
		return corrupt(q, "compressed data lies past the end of the file", gcl, e);
	s->csize = nsect * 512 - (s->host_off & 511);
	return 0;
}

static int add_compressed(struct qcow2 *q, struct vd_map *m, uint64_t gcl, uint64_t e, uint64_t off,
			  uint64_t len)
{
	struct vd_extent x = {.off = off, .len = len};
	int ret = compressed_src(q, gcl, e, &x.src);

	return ret ? ret : vd_map_add(m, &x);
}

/* Subcluster sc of an extended entry: what it reads as. */
int qcow2_subcluster_type(struct qcow2 *q, uint64_t gcl, uint64_t e, uint64_t bm, unsigned sc,
			  enum vd_ext_type *t)
{
	bool a = bm >> sc & 1, z = bm >> (32 + sc) & 1;

	if ((bm & QCOW2_EXTL2_ALL_ALLOC) & (bm >> 32))
		return corrupt(q, "subcluster both allocated and zero", gcl, bm);
	if (qcow2_classify(q, e) == QC_UNALLOC && (bm & QCOW2_EXTL2_ALL_ALLOC))
		return corrupt(q, "allocated subclusters without a host cluster", gcl, bm);
	*t = a ? VD_EXT_DATA : z ? VD_EXT_ZERO : VD_EXT_UNALLOC;
	return 0;
}

static int map_read_cluster(struct qcow2 *q, struct vd_map *m, uint64_t off, uint64_t n)
{
	uint64_t gcl = qcow2_cl(q, off), in = off & (q->cluster_size - 1), e, bm, host;
	struct qcow2_cache_entry *ce;
	unsigned idx;
	int ret;

	ret = qcow2_l2_get(q, gcl, false, &ce, &idx);
	if (ret)
		return ret;
	if (!ce)
		return vd_map_add_hole(m, off, n, VD_EXT_UNALLOC);
	qcow2_l2_read(q, ce, idx, &e, &bm);
	host = e & QCOW2_OFF_MASK;
	switch (qcow2_classify(q, e)) {
	case QC_UNALLOC:
		if (!q->ext_l2)
			return vd_map_add_hole(m, off, n, VD_EXT_UNALLOC);
		break;
	case QC_ZERO_PLAIN:
	case QC_ZERO_ALLOC:
		return vd_map_add_hole(m, off, n, VD_EXT_ZERO);
	case QC_COMPRESSED:
		if (q->ext_l2 && bm)
			return corrupt(q, "compressed cluster with a subcluster bitmap", gcl, bm);
		return add_compressed(q, m, gcl, e, off, n);
	case QC_NORMAL:
		ret = check_host(q, gcl, host);
		if (ret)
			return ret;
		if (!q->ext_l2)
			return vd_map_add_data(m, off, n, qcow2_data_fd(q), host + in);
		break;
	}
	/* extended L2: one run per subcluster state */
	while (n) {
		unsigned sc = in >> q->sc_bits;
		uint64_t k = ((uint64_t)(sc + 1) << q->sc_bits) - in;
		enum vd_ext_type t;

		k = min_u64(k, n);
		ret = qcow2_subcluster_type(q, gcl, e, bm, sc, &t);
		if (!ret && t == VD_EXT_DATA)
			ret = vd_map_add_data(m, off, k, qcow2_data_fd(q), host + in);
		else if (!ret)
			ret = vd_map_add_hole(m, off, k, t);
		if (ret)
			return ret;
		off += k;
		in += k;
		n -= k;
	}
	return 0;
}

/* ---- writes: copy-on-write plans ---- */

enum plan_mode {
	PLAN_NONE,   /* nothing to copy */
	PLAN_SRC,    /* the whole cluster comes from one source */
	PLAN_SUBCL,  /* extended L2, own cluster: per subcluster (allocated: none, zero, backing) */
	PLAN_SHARED, /* extended L2, shared cluster copied: see plan_shared() */
};

struct plan {
	enum plan_mode mode;
	uint64_t unit, gbase, host;
	uint64_t ws, we;   /* the cluster bytes the write covers */
	bool fresh;	   /* newly allocated never-written host space: zeroes need no copy */
	struct vd_src src; /* PLAN_SRC: the source; PLAN_SHARED: the old host cluster */
	uint64_t bm;	   /* PLAN_SUBCL, PLAN_SHARED: the bitmap before the write */
};

static enum vd_ext_type subcl_src(const struct plan *p, unsigned sc)
{
	if (p->bm >> sc & 1)
		return VD_EXT_DATA;
	return (p->bm >> (32 + sc) & 1) ? VD_EXT_ZERO : VD_EXT_UNALLOC;
}

/* A shared extended-L2 cluster moves to a new host cluster that keeps the old
 * bitmap plus the written subclusters: allocated subclusters are copied from
 * the old host cluster, a partly written subcluster that was not allocated gets
 * the rest of its bytes from where they read until now (zeroes or the backing
 * file). Unallocated and zero subclusters the write does not touch stay so in
 * the bitmap, so what lands in their bytes does not matter: they come with the
 * old host copy, which keeps the segments few (at most 4). */
static int plan_shared(struct qcow2 *q, const struct plan *p, struct vd_cow *c)
{
	int ret = 0;

	for (uint64_t cs = 0; cs < q->cluster_size && !ret; cs += q->sc_size) {
		uint64_t ce = cs + q->sc_size;
		struct vd_cow_seg s = {.off = p->gbase + cs, .len = q->sc_size, .src = p->src};

		if (cs >= p->ws && ce <= p->we)
			continue; /* written whole */
		if (ce > p->ws && cs < p->we)
			s.src.type = subcl_src(p, cs >> q->sc_bits); /* written in part */
		s.src.host_off += cs;
		ret = vd_cow_add(c, &s);
	}
	return ret;
}

/* The old bytes of the unit at cluster bytes [u, u + p->unit) as a cow range;
 * 0 with c->len == 0 when no copy is needed. */
static int plan_cow(struct qcow2 *q, const struct plan *p, uint64_t u, struct vd_cow *c)
{
	struct vd_cow_seg s = {.src = p->src};

	memset(c, 0, sizeof(*c));
	switch (p->mode) {
	case PLAN_NONE:
		return 0;
	case PLAN_SRC:
		break;
	case PLAN_SUBCL:
		s.src.type = subcl_src(p, u >> q->sc_bits);
		if (s.src.type == VD_EXT_DATA)
			return 0;
		break;
	case PLAN_SHARED:
		c->off = p->gbase + u;
		c->len = p->unit;
		return plan_shared(q, p, c);
	}
	if (p->fresh &&
	    (s.src.type == VD_EXT_ZERO || (s.src.type == VD_EXT_UNALLOC && !q->img->backing)))
		return 0;
	s.off = c->off = p->gbase + u;
	s.len = c->len = p->unit;
	if (s.src.type == VD_EXT_DATA)
		s.src.host_off += u;
	return vd_cow_add(c, &s);
}

static int emit(struct qcow2 *q, struct vd_map *m, const struct plan *p, uint64_t ws, uint64_t we,
		const struct vd_cow *cow)
{
	struct vd_extent x = {
		.off = p->gbase + ws,
		.len = we - ws,
		.src = {.type = VD_EXT_DATA, .fd = qcow2_data_fd(q), .host_off = p->host + ws},
	};

	if (cow)
		x.cow = *cow;
	return vd_map_add(m, &x);
}

/* Extents for cluster bytes [ws, we): plain where whole units are written or no
 * copy is needed, merged with old bytes for partly written units. */
static int plan_emit(struct qcow2 *q, struct vd_map *m, const struct plan *p)
{
	uint64_t u = p->unit, ws = p->ws, we = p->we, hs = ws / u * u, ts = (we - 1) / u * u;
	uint64_t he = hs + u, te = ts + u;
	struct vd_cow hc = {0}, tc = {0};
	int ret = 0;

	if (ws != hs)
		ret = plan_cow(q, p, hs, &hc);
	if (!ret && we != te && (hs != ts || !hc.len))
		ret = plan_cow(q, p, ts, &tc);
	if (ret)
		return ret;
	if (hs == ts)
		return emit(q, m, p, ws, we, hc.len ? &hc : tc.len ? &tc : NULL);
	if (hc.len) {
		ret = emit(q, m, p, ws, he, &hc);
		ws = he;
	}
	if (!ret && tc.len) {
		if (ws < ts)
			ret = emit(q, m, p, ws, ts, NULL);
		if (!ret)
			ret = emit(q, m, p, ts, we, &tc);
	} else if (!ret) {
		ret = emit(q, m, p, ws, we, NULL);
	}
	return ret;
}

static int ticket_add(struct qcow2_ticket *t, const struct qcow2_item *it)
{
	if (t->n == t->cap) {
		unsigned cap = t->cap ? t->cap * 2 : 8;
		struct qcow2_item *n = realloc(t->items, cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		t->items = n;
		t->cap = cap;
	}
	t->items[t->n++] = *it;
	if (it->kind == QI_INPLACE_META || it->kind == QI_NEW) {
		if (!t->has_meta || it->gcl < t->meta_first)
			t->meta_first = it->gcl;
		if (!t->has_meta || it->gcl > t->meta_last)
			t->meta_last = it->gcl;
		t->has_meta = true;
	}
	return 0;
}

static uint32_t touched_mask(const struct qcow2 *q, uint64_t ws, uint64_t we)
{
	unsigned a = ws >> q->sc_bits, b = (we - 1) >> q->sc_bits;

	return (uint32_t)((b == 31 ? ~0ull : (2ull << b) - 1) & ~((1ull << a) - 1));
}

/* Where the old bytes of a cluster that is being replaced come from. */
static int plan_old(struct qcow2 *q, uint64_t gcl, uint64_t e, uint64_t bm, struct plan *p,
		    struct qcow2_item *it)
{
	enum qcow2_ctype t = qcow2_classify(q, e);
	uint64_t host = e & QCOW2_OFF_MASK;
	int ret;

	p->mode = PLAN_SRC;
	p->unit = q->cluster_size;
	switch (t) {
	case QC_UNALLOC:
		if (q->ext_l2) {
			p->mode = PLAN_SUBCL;
			p->unit = q->sc_size;
			p->bm = bm;
		}
		p->src.type = VD_EXT_UNALLOC;
		return 0;
	case QC_ZERO_PLAIN:
	case QC_ZERO_ALLOC:
		p->src.type = VD_EXT_ZERO;
		return 0;
	case QC_COMPRESSED:
		ret = compressed_src(q, gcl, e, &p->src);
		qcow2_compressed_range(q, e, &it->src_off, &it->src_len);
		return ret;
	case QC_NORMAL:
		ret = check_host(q, gcl, host);
		if (q->ext_l2) {
			p->mode = PLAN_SHARED;
			p->bm = bm;
		}
		p->src.type = VD_EXT_DATA;
		p->src.fd = qcow2_data_fd(q);
		p->src.host_off = host;
		it->src_off = host;
		it->src_len = q->cluster_size;
		return ret;
	}
	return 0;
}

/* A new host cluster for guest cluster gcl. In an external data file it is
 * the guest cluster's own place (QEMU's do_alloc_cluster_offset()), counted by
 * no refcount; its old bytes there are unknown (stale data after a discard
 * whose punch was refused, a raw file's contents), so it is never fresh. */
static int data_alloc(struct qcow2 *q, uint64_t gcl, uint64_t *host, bool *fresh)
{
	if (!qcow2_has_data_file(q))
		return qcow2_alloc_clusters(q, 1, host, fresh);
	*host = gcl << q->cluster_bits;
	*fresh = false;
	return 0;
}

/* Give back a cluster data_alloc() took that nothing refers to yet. */
static void data_rollback(struct qcow2 *q, uint64_t host)
{
	if (!qcow2_has_data_file(q))
		qcow2_alloc_rollback(q, host, 1);
}

static int write_cluster(struct qcow2 *q, struct qcow2_ticket *t, struct vd_map *m, uint64_t off,
			 uint64_t n)
{
	uint64_t gcl = qcow2_cl(q, off), ws = off & (q->cluster_size - 1), we = ws + n;
	struct qcow2_item it = {.gcl = gcl};
	struct plan p = {.gbase = gcl << q->cluster_bits, .ws = ws, .we = we};
	struct qcow2_cache_entry *ce;
	enum qcow2_ctype type;
	uint64_t e, bm;
	unsigned idx;
	int ret;

	ret = qcow2_l2_get(q, gcl, true, &ce, &idx);
	if (ret)
		return ret;
	qcow2_l2_read(q, ce, idx, &e, &bm);
	type = qcow2_classify(q, e);
	if (q->ext_l2)
		it.set_alloc = touched_mask(q, ws, we);
	if ((type == QC_NORMAL || type == QC_ZERO_ALLOC) && (e & QCOW2_COPIED)) {
		p.host = it.host = e & QCOW2_OFF_MASK;
		ret = check_host(q, gcl, p.host);
		if (ret)
			return ret;
		it.kind = QI_INPLACE;
		p.mode = PLAN_NONE;
		p.unit = q->cluster_size;
		if (type == QC_ZERO_ALLOC) {
			it.kind = QI_INPLACE_META;
			p.mode = PLAN_SRC;
			p.src.type = VD_EXT_ZERO;
		} else if (q->ext_l2 && (it.set_alloc & ~bm)) {
			it.kind = QI_INPLACE_META;
			p.mode = PLAN_SUBCL;
			p.unit = q->sc_size;
			p.bm = bm;
		}
	} else {
		ret = plan_old(q, gcl, e, bm, &p, &it);
		if (!ret)
			ret = data_alloc(q, gcl, &p.host, &p.fresh);
		if (ret)
			return ret;
		it.kind = QI_NEW;
		it.host = p.host;
	}
	ret = ticket_add(t, &it);
	if (ret) {
		if (it.kind == QI_NEW)
			data_rollback(q, it.host);
		return ret;
	}
	return plan_emit(q, m, &p);
}

static void ticket_free(struct qcow2_ticket *t)
{
	free(t->items);
	free(t);
}

static void ticket_link(struct qcow2_ticket **head, struct qcow2_ticket *t)
{
	t->next = *head;
	if (t->next)
		t->next->pprev = &t->next;
	t->pprev = head;
	*head = t;
}

static void ticket_unlink(struct qcow2_ticket *t)
{
	*t->pprev = t->next;
	if (t->next)
		t->next->pprev = t->pprev;
}

/* Give back the clusters items [first, n) allocated: nothing refers to them. */
static void ticket_rollback(struct qcow2 *q, struct qcow2_ticket *t, unsigned first)
{
	for (unsigned i = first; i < t->n; i++)
		if (t->items[i].kind == QI_NEW)
			data_rollback(q, t->items[i].host);
}

static int map_write(struct qcow2 *q, uint64_t off, uint64_t len, struct vd_map *m)
{
	uint64_t first = qcow2_cl(q, off), last = qcow2_cl(q, off + len - 1);
	struct qcow2_ticket *t;
	int ret;

	for (t = q->inflight; t; t = t->next) {
		if (t->has_meta && t->meta_first <= last && t->meta_last >= first && m->waiter) {
			m->waiter->next = t->waiters;
			t->waiters = m->waiter;
			return -EAGAIN;
		}
	}
	ret = qcow2_prepare_write(q);
	if (ret)
		return ret;
	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	qcow2_bitmaps_dirty(q, off, len);
	while (len) {
		uint64_t n = q->cluster_size - (off & (q->cluster_size - 1));
		n = min_u64(n, len);
		ret = write_cluster(q, t, m, off, n);
		if (ret) {
			ticket_rollback(q, t, 0);
			ticket_free(t);
			return ret;
		}
		off += n;
		len -= n;
	}
	ticket_link(&q->inflight, t);
	m->ticket = t;
	return 0;
}

/* The host bytes of a read's DATA and COMPRESSED extents, held until the read
 * completed: its I/O starts after the lock is dropped, and a discard or a
 * copy-on-write may drop the cluster's last reference meanwhile. The free
 * then stays queued (range_busy() in qcow2-refcount.c), so the cluster is
 * neither punched nor handed to another guest offset under the read, which
 * would return that offset's bytes. An image never opened for writing frees
 * nothing: its reads need no hold. */
static int read_hold(struct qcow2 *q, struct vd_map *m)
{
	struct qcow2_ticket *t = NULL;
	int ret = 0;

	/* An external data file has no frees to hold off: a discard punches
	 * it at once, under the lock, and the cluster stays the guest's. */
	if (!q->img->writable || qcow2_has_data_file(q))
		return 0;
	for (unsigned i = 0; i < m->n && !ret; i++) {
		const struct vd_extent *e = &m->ext[i];
		struct qcow2_item it = {.kind = QI_READ, .src_off = e->src.host_off};

		if (e->src.type == VD_EXT_DATA)
			it.src_len = e->len;
		else if (e->src.type == VD_EXT_COMPRESSED)
			it.src_len = e->src.csize;
		else
			continue;
		if (!t && !(t = calloc(1, sizeof(*t))))
			return -ENOMEM;
		ret = ticket_add(t, &it);
	}
	if (ret) {
		ticket_free(t);
		return ret;
	}
	if (t) {
		ticket_link(&q->readers, t);
		m->ticket = t;
	}
	return 0;
}

int qcow2_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags, struct vd_map *m)
{
	struct qcow2 *q = img->priv;
	int ret = 0;

	if (!len)
		return 0;
	pthread_mutex_lock(&q->lock);
	if (flags & VD_MAP_WRITE) {
		ret = map_write(q, off, len, m);
	} else {
		while (len && !ret) {
			uint64_t n = q->cluster_size - (off & (q->cluster_size - 1));
			n = min_u64(n, len);
			ret = map_read_cluster(q, m, off, n);
			off += n;
			len -= n;
		}
		if (!ret)
			ret = read_hold(q, m);
	}
	pthread_mutex_unlock(&q->lock);
	return ret;
}

/* ---- completion: link what the data writes filled ---- */

/* Point the item's L2 entry at what was written. *linked: the entry changed
 * (a failure after that only leaks the reference it replaced). */
static int link_item(struct qcow2 *q, const struct qcow2_item *it, bool *linked)
{
	struct qcow2_cache_entry *ce;
	uint64_t e, bm, sa = it->set_alloc;
	unsigned idx;
	int ret;

	*linked = false;
	if (it->dropped) {
		if (it->kind == QI_NEW)
			data_rollback(q, it->host);
		return 0;
	}
	ret = qcow2_l2_get(q, it->gcl, true, &ce, &idx); /* may evict and load tables */
	if (ret)
		return ret;
	*linked = true;
	qcow2_l2_read(q, ce, idx, &e, &bm);
	if (it->kind == QI_INPLACE_META) {
		enum qcow2_ctype t = qcow2_classify(q, e);

		if ((e & QCOW2_OFF_MASK) != it->host || (t != QC_NORMAL && t != QC_ZERO_ALLOC))
			return 0; /* discarded while the data was landing */
		l2_write(q, ce, idx, it->host | QCOW2_COPIED, (bm | sa) & ~(sa << 32));
		return 0;
	}
	if (qcow2_classify(q, e) == QC_COMPRESSED)
		bm = QCOW2_EXTL2_ALL_ALLOC;
	else
		bm = (bm | sa) & ~(sa << 32);
	l2_write(q, ce, idx, it->host | QCOW2_COPIED, bm);
	/* in a data file the old cluster is the new one (host == guest) */
	return qcow2_has_data_file(q) ? 0 : qcow2_free_entry(q, e);
}

int qcow2_complete(struct vd_image *img, void *ticket, int err)
{
	struct qcow2 *q = img->priv;
	struct qcow2_ticket *t = ticket;
	struct vd_waiter *w, *next;
	bool linked = false;
	unsigned i = 0;
	int ret = 0;

	pthread_mutex_lock(&q->lock);
	ticket_unlink(t);
	if (err) {
		ticket_rollback(q, t, 0);
	} else {
		for (; i < t->n; i++) {
			if (t->items[i].kind == QI_INPLACE || t->items[i].kind == QI_READ)
				continue;
			ret = link_item(q, &t->items[i], &linked);
			if (ret)
				break;
		}
	}
	if (ret) {
		/* Loading an L2 table failed (say, writing back the one it evicts):
		 * the write fails, and the clusters not linked are given back. */
		vd_err("%s: cannot link the cluster written at guest offset 0x%" PRIx64 ": %s",
		       img->path, t->items[i].gcl << q->cluster_bits, strerror(-ret));
		ticket_rollback(q, t, linked ? i + 1 : i);
	}
	w = t->waiters;
	pthread_mutex_unlock(&q->lock);
	ticket_free(t);
	for (; w; w = next) {
		next = w->next;
		w->wake(w);
	}
	return ret;
}

/* ---- discard and zeroing of whole clusters ---- */

/* The entry a cluster gets (ne, nbm); keep: its allocation stays. */
static void zero_target(struct qcow2 *q, uint64_t e, uint64_t bm, bool discard, uint64_t *ne,
			uint64_t *nbm, bool *keep)
{
	enum qcow2_ctype t = qcow2_classify(q, e);
	bool own = (t == QC_NORMAL || t == QC_ZERO_ALLOC) && (e & QCOW2_COPIED);

	*keep = !discard && own && q->version >= 3;
	if (q->ext_l2) {
		*ne = *keep ? e : 0;
		*nbm = *keep || q->has_backing ? QCOW2_EXTL2_ALL_ZERO : 0;
		return;
	}
	if (*keep)
		*ne = e | QCOW2_ZERO;
	else
		*ne = q->version >= 3 && q->has_backing ? QCOW2_ZERO : 0;
	*nbm = 0;
}

/* Guest cluster gcl of an image with an external data file stopped mapping
 * its data (entry e): no refcount to drop; its bytes in the data file are
 * punched, as QEMU discards them there, at once and under the lock, so that
 * a write mapped afterwards (to the same place) lands after the punch. A
 * raw data file was zeroed before the entries changed (zero_range()). A
 * refused punch only leaves stale bytes no entry maps. */
static int data_file_drop(struct qcow2 *q, uint64_t gcl, uint64_t e)
{
	enum qcow2_ctype t = qcow2_classify(q, e);

	if (q->data_raw || (t != QC_NORMAL && t != QC_ZERO_ALLOC))
		return 0;
	meta_fallocate(q->data_fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
		       gcl << q->cluster_bits, q->cluster_size);
	return 0;
}

static int zero_cluster(struct qcow2 *q, uint64_t gcl, bool discard)
{
	struct qcow2_cache_entry *ce;
	uint64_t e = 0, bm = 0, ne, nbm;
	unsigned idx;
	bool keep;
	int ret;

	ret = qcow2_l2_get(q, gcl, false, &ce, &idx);
	if (ret)
		return ret;
	if (ce)
		qcow2_l2_read(q, ce, idx, &e, &bm);
	zero_target(q, e, bm, discard, &ne, &nbm, &keep);
	if (ne == e && nbm == bm)
		return 0;
	ret = qcow2_l2_get(q, gcl, true, &ce, &idx);
	if (ret)
		return ret;
	l2_write(q, ce, idx, ne, nbm);
	if (keep)
		return 0;
	return qcow2_has_data_file(q) ? data_file_drop(q, gcl, e) : qcow2_free_entry(q, e);
}

/* Writes in flight that change entries of guest clusters [c0, c1) lose those
 * changes: the zeroing is ordered after them. Linking them afterwards instead
 * would mix the zeroing with the old bytes a copy-on-write merged into the
 * write (backing, compressed or snapshot-shared data), which neither order of
 * the two requests gives. A write in place needs nothing: its bytes land in a
 * cluster the entry no longer maps as data. */
static void zero_drop_inflight(struct qcow2 *q, uint64_t c0, uint64_t c1)
{
	for (struct qcow2_ticket *t = q->inflight; t; t = t->next) {
		if (!t->has_meta || t->meta_last < c0 || t->meta_first >= c1)
			continue;
		for (unsigned i = 0; i < t->n; i++) {
			struct qcow2_item *it = &t->items[i];
			if (it->gcl >= c0 && it->gcl < c1 && it->kind != QI_INPLACE)
				it->dropped = true;
		}
	}
}

/* A raw data file must read like the disk: the range is zeroed there first,
 * as QEMU does before it sets zero flags (punched for a discard, zeroed in
 * place otherwise, each the other's fallback). If the file system can do
 * neither, nothing has changed yet and -ENOTSUP lets the generic code write
 * zeroes, which go to the data file like any write. */
static int raw_data_zero(struct qcow2 *q, uint64_t off, uint64_t len, bool discard)
{
	int punch = FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, zero = FALLOC_FL_ZERO_RANGE;
	int ret = meta_fallocate(q->data_fd, discard ? punch : zero, off, len);

	if (ret)
		ret = meta_fallocate(q->data_fd, discard ? zero : punch, off, len);
	return ret ? -ENOTSUP : 0;
}

static int zero_range(struct vd_image *img, uint64_t off, uint64_t len, bool discard)
{
	struct qcow2 *q = img->priv;
	uint64_t c0 = qcow2_cl(q, off), c1 = qcow2_cl(q, off + len), c = c0;
	int ret;

	if ((off | len) & (q->cluster_size - 1))
		return -EINVAL;
	if (q->version == 2 && q->has_backing)
		return -ENOTSUP; /* no zero flag: the generic code writes zeroes */
	pthread_mutex_lock(&q->lock);
	ret = qcow2_prepare_write(q);
	if (!ret && q->data_raw)
		ret = raw_data_zero(q, off, len, discard);
	if (!ret)
		qcow2_bitmaps_dirty(q, off, len);
	while (!ret && c < c1) {
		ret = zero_cluster(q, c, discard);
		if (!ret)
			c++;
	}
	zero_drop_inflight(q, c0, c); /* the clusters zeroed */
	/* Let the host file shrink now: flush, then drop and punch the clusters. */
	if (!ret && discard)
		ret = qcow2_flush_locked(q);
	pthread_mutex_unlock(&q->lock);
	return ret;
}

int qcow2_discard(struct vd_image *img, uint64_t off, uint64_t len)
{
	return zero_range(img, off, len, true);
}

int qcow2_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len)
{
	return zero_range(img, off, len, false);
}
