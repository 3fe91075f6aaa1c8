/* VHDX guest-to-host mapping: read extents from the BAT and sector bitmaps,
 * allocating writes (new blocks at the end of the file, parent bytes merged
 * into partial sectors) with tickets committed on complete(), the allocation
 * count, block status and discard. All under the image lock. */
#include <errno.h>
#include <linux/falloc.h>
#include <stdlib.h>

#include "util/compiler.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

#define VHDX_DIRTY_MAX 64 /* dirty pages that force a log flush on complete() */

/* ---- map ---- */

/* Runs of a partially present block [pos, end): DATA where the bitmap says
 * this file, UNALLOC (the parent) elsewhere. */
static int map_read_partial(struct vhdx *v, uint64_t b, uint64_t host, uint64_t pos, uint64_t end,
			    struct vd_map *m)
{
	uint64_t bstart = b * v->block_size, bit0 = vhdx_sb_first_bit(v, b);
	uint8_t *bits;
	int ret = vhdx_sb_get(v, b / v->chunk_ratio, false, &bits);

	while (!ret && pos < end) {
		uint64_t sec = (pos - bstart) / v->lss;
		bool here = vhdx_bit_get(bits, bit0 + sec);
		uint64_t run = pos;

		while (run < end && vhdx_bit_get(bits, bit0 + (run - bstart) / v->lss) == here)
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
	int ret = vhdx_alloc_space(v, v->block_size, host);

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
	uint64_t bstart = b * v->block_size, bit0 = vhdx_sb_first_bit(v, b), lss = v->lss;
	uint64_t sec0 = (s - bstart) / lss, sec1 = (e - 1 - bstart) / lss;
	bool need_bits = false;
	uint64_t pos = s;
	int ret = 0;

	while (!ret && pos < e) {
		uint64_t sstart = pos / lss * lss, send = sstart + lss, pend;
		struct vd_extent x = {.src = {.type = VD_EXT_DATA, .fd = v->img->fd}};
		bool here = bits && vhdx_bit_get(bits, bit0 + (sstart - bstart) / lss);

		if (pos == sstart && e >= send) {
			pend = e / lss * lss;
		} else {
			pend = min_u64(e, send);
			if (!here)
				x.cow = (struct vd_cow){.off = sstart,
							.len = lss,
							.n = 1,
							.seg = {{.off = sstart,
								 .len = lss,
								 .src.type = VD_EXT_UNALLOC}}};
		}
		x.off = pos;
		x.len = pend - pos;
		x.src.host_off = host + (pos - bstart);
		ret = vd_map_add(m, &x);
		pos = pend;
	}
	for (uint64_t i = sec0; i <= sec1 && !need_bits; i++)
		need_bits = !bits || !vhdx_bit_get(bits, bit0 + i);
	if (!ret && need_bits) {
		struct vhdx_tblock *tb = ticket_block(w, b);
		if (!tb)
			return -ENOMEM;
		tb->bit_first = sec0;
		tb->bit_n = sec1 - sec0 + 1;
	}
	return ret;
}

static int map_write_block(struct vhdx *v, uint64_t b, uint64_t s, uint64_t e, struct vd_map *m,
			   struct wctx *w)
{
	uint64_t bstart = b * v->block_size, bend = min_u64(bstart + v->block_size, v->disk_size);
	uint64_t ent = v->bat[vhdx_bat_index(v, b)], host;
	unsigned st = VHDX_BAT_STATE(ent);
	uint8_t *bits;
	int ret;

	if (st == VHDX_BAT_FULLY_PRESENT)
		return vd_map_add_data(m, s, e - s, v->img->fd, VHDX_BAT_OFF(ent) + s - bstart);
	if (st == VHDX_BAT_PARTIALLY_PRESENT) {
		ret = vhdx_sb_get(v, b / v->chunk_ratio, false, &bits);
		return ret ? ret : map_write_partial(v, b, VHDX_BAT_OFF(ent), bits, s, e, m, w);
	}
	if (v->has_parent && st == VHDX_BAT_NOT_PRESENT && (s != bstart || e != bend)) {
		/* Part of a block the parent shows through: partially present. */
		ret = vhdx_sb_get(v, b / v->chunk_ratio, true, &bits);
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
	uint64_t c = tb->block / v->chunk_ratio, bit0 = vhdx_sb_first_bit(v, tb->block);
	uint8_t *bits = v->sb ? v->sb[c].bits : NULL;

	if (tb->set_entry && VHDX_BAT_STATE(tb->entry) == VHDX_BAT_PARTIALLY_PRESENT && bits) {
		/* Bits left from an earlier life of the block mean nothing now. */
		vhdx_bits_assign(bits, bit0, v->spb, false);
		vhdx_sb_mark(v, c, bit0, v->spb);
	}
	if (tb->bit_n && bits) {
		vhdx_bits_assign(bits, bit0 + tb->bit_first, tb->bit_n, true);
		vhdx_sb_mark(v, c, bit0 + tb->bit_first, tb->bit_n);
	}
	if (tb->set_entry)
		vhdx_bat_set(v, vhdx_bat_index(v, tb->block), tb->entry);
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
			sum += vhdx_bat_weight(v, idx, v->bat[idx]);
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
	uint64_t e = v->bat[vhdx_bat_index(v, b)], bit0 = vhdx_sb_first_bit(v, b);
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
	ret = vhdx_sb_get(v, b / v->chunk_ratio, false, &bits);
	if (ret)
		return ret;
	here = vhdx_bit_get(bits, bit0 + (pos - bstart) / v->lss);
	*st = here ? VD_BS_DATA : VD_BS_UNALLOC;
	for (uint64_t p = (pos / v->lss + 1) * v->lss; p < end; p += v->lss) {
		if (vhdx_bit_get(bits, bit0 + (p - bstart) / v->lss) != here) {
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
	ret = meta_fallocate(v->img->fd,
			     mode | (v->leave_alloc ? FALLOC_FL_ZERO_RANGE : FALLOC_FL_PUNCH_HOLE),
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
			vhdx_bat_set(v, idx, VHDX_BAT_ZERO);
			return zero_host(v, host, v->block_size);
		}
		if (st == VHDX_BAT_PARTIALLY_PRESENT) {
			/* The sectors now belong to this file and read as zeroes. */
			ret = vhdx_sb_get(v, b / v->chunk_ratio, false, &bits);
			if (ret)
				return ret;
			vhdx_bits_assign(bits, vhdx_sb_first_bit(v, b) + (s - bstart) / v->lss,
					 (e - s) / v->lss, true);
			vhdx_sb_mark(v, b / v->chunk_ratio,
				     vhdx_sb_first_bit(v, b) + (s - bstart) / v->lss,
				     (e - s) / v->lss);
		}
		return zero_host(v, host + (s - bstart), e - s);
	}
	if (v->has_parent && st == VHDX_BAT_NOT_PRESENT)
		vhdx_bat_set(v, idx, VHDX_BAT_ZERO); /* whole block (checked before) */
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
