/* The qcow2 metadata cache: a fixed number of one-cluster tables (L2 tables in
 * one cache, refcount blocks in another), least recently used evicted, dirty
 * tables written back on eviction (after the ordering hook) or on flush.
 * Callers hold the image lock; an L2 miss is loaded here with a sync pread.
 * Buffers are allocated on first use and count against a daemon-wide budget:
 * over it, the clean tables of the caches used least lately are freed (never a
 * dirty one: only its own image writes that back, in the safe order). */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

/* A cache below this many buffers takes one even over the budget: callers
 * hold up to two tables of one cache at a time (an L2 table's copy). */
#define CACHE_MIN_BUFS 4

/* Daemon-wide: every open image's caches (share_lock; taken under an image
 * lock, never the other way round: a trim only tries other images' locks),
 * the bytes of all caches' buffers, the budget, and the trim epoch (advanced
 * by each trim; a cache notes it at each lookup, so that a trim frees the
 * caches not used since the trims before first). */
static pthread_mutex_t share_lock = PTHREAD_MUTEX_INITIALIZER;
static struct qcow2_cache *shared;
static _Atomic uint64_t held_bytes;
static _Atomic uint64_t budget = QCOW2_CACHE_BUDGET_DEFAULT;
static _Atomic uint64_t epoch = 1;

void qcow2_cache_set_budget(uint64_t bytes)
{
	budget = bytes;
}

int qcow2_cache_init(struct qcow2_cache *c, struct qcow2 *q, unsigned n, const char *what)
{
	memset(c, 0, sizeof(*c));
	c->q = q;
	c->what = what;
	c->n = n;
	c->e = calloc(n, sizeof(*c->e));
	if (!c->e)
		return -ENOMEM;
	return 0;
}

void qcow2_cache_share(struct qcow2_cache *c)
{
	pthread_mutex_lock(&share_lock);
	c->snext = shared;
	if (shared)
		shared->sprev = &c->snext;
	c->sprev = &shared;
	shared = c;
	pthread_mutex_unlock(&share_lock);
}

static void cache_free_buf(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	free(e->buf);
	e->buf = NULL;
	e->off = 0;
	e->dirty = false;
	c->nbuf--;
	held_bytes -= c->q->cluster_size;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
	if (!c->e)
		return;
	if (c->sprev) {
		pthread_mutex_lock(&share_lock);
		if (c->snext)
			c->snext->sprev = c->sprev;
		*c->sprev = c->snext;
		c->sprev = NULL;
		pthread_mutex_unlock(&share_lock);
	}
	for (unsigned i = 0; i < c->n; i++)
		if (c->e[i].buf)
			cache_free_buf(c, &c->e[i]);
	free(c->e);
	c->e = NULL;
}

struct trim_pick {
	uint64_t used;
	struct qcow2_cache *c;
};

static int trim_pick_cmp(const void *a, const void *b)
{
	const struct trim_pick *x = a, *y = b;

	return x->used < y->used ? -1 : x->used > y->used;
}

/* Free the clean tables of other images' caches, those used least lately
 * first, until all caches hold at most target bytes. An image whose lock is
 * taken is busy and skipped. Called with self's image lock. */
static void cache_trim_others(struct qcow2_cache *self, uint64_t target)
{
	struct trim_pick *v = NULL;
	size_t n = 0, cap = 0;

	pthread_mutex_lock(&share_lock);
	for (struct qcow2_cache *c = shared; c; c = c->snext) {
		if (c->q == self->q)
			continue;
		if (n == cap) {
			struct trim_pick *nv = realloc(v, (cap = cap ? 2 * cap : 64) * sizeof(*v));
			if (!nv)
				break;
			v = nv;
		}
		v[n++] =
			(struct trim_pick){atomic_load_explicit(&c->used, memory_order_relaxed), c};
	}
	qsort(v, n, sizeof(*v), trim_pick_cmp);
	for (size_t i = 0; i < n && held_bytes > target; i++) {
		struct qcow2_cache *c = v[i].c;

		if (pthread_mutex_trylock(&c->q->lock))
			continue;
		for (unsigned k = 0; k < c->n && c->nbuf; k++)
			if (c->e[k].buf && !c->e[k].dirty)
				cache_free_buf(c, &c->e[k]);
		pthread_mutex_unlock(&c->q->lock);
	}
	epoch++;
	pthread_mutex_unlock(&share_lock);
	free(v);
}

/* Give an empty slot without a buffer one, if the budget allows (after
 * trimming other caches) or this cache has fewer than its minimum. */
static bool cache_grow(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	uint64_t cs = c->q->cluster_size, b = budget;

	if (held_bytes + cs > b) {
		/* down to 7/8 of the budget, so that trims stay rare */
		cache_trim_others(c, b - b / 8);
		if (held_bytes + cs > b && c->nbuf >= CACHE_MIN_BUFS)
			return false;
	}
	e->buf = aligned_alloc(512, cs);
	if (!e->buf)
		return false;
	c->nbuf++;
	held_bytes += cs;
	return true;
}

static int cache_writeback(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	struct qcow2 *q = c->q;
	int ret;

	ret = meta_pwrite(q->img->fd, e->buf, q->cluster_size, e->off);
	if (ret) {
		vd_err("%s: cannot write %s at 0x%" PRIx64 ": %s", q->img->path, c->what, e->off,
		       strerror(-ret));
		return ret;
	}
	e->dirty = false;
	return 0;
}

static struct qcow2_cache_entry *cache_find(struct qcow2_cache *c, uint64_t off)
{
	if (c->e[c->last].off == off)
		return &c->e[c->last];
	for (unsigned i = 0; i < c->n; i++) {
		if (c->e[i].off == off) {
			c->last = i;
			return &c->e[i];
		}
	}
	return NULL;
}

/* The cached table at off, or NULL; loads nothing, evicts nothing. */
struct qcow2_cache_entry *qcow2_cache_peek(struct qcow2_cache *c, uint64_t off)
{
	return cache_find(c, off);
}

/* A free slot, or the least recently used one written back and emptied. A
 * slot with no buffer yet gets one if the budget allows, else the least
 * recently used table makes room. */
static int cache_victim(struct qcow2_cache *c, struct qcow2_cache_entry **out)
{
	struct qcow2_cache_entry *v = NULL, *bare = NULL;
	int ret;

	for (unsigned i = 0; i < c->n; i++) {
		struct qcow2_cache_entry *e = &c->e[i];
		if (!e->buf) {
			if (!bare)
				bare = e;
			continue;
		}
		if (!e->off) {
			v = e;
			break;
		}
		if (!v || e->lru < v->lru)
			v = e;
	}
	if ((!v || v->off) && bare && cache_grow(c, bare)) {
		*out = bare;
		return 0;
	}
	if (!v)
		return -ENOMEM;
	if (v->off && v->dirty) {
		if (c->before_writeback) {
			ret = c->before_writeback(c->q);
			if (ret)
				return ret;
		}
		ret = cache_writeback(c, v);
		if (ret)
			return ret;
	}
	v->off = 0;
	*out = v;
	return 0;
}

static void cache_touch(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	uint64_t now = atomic_load_explicit(&epoch, memory_order_relaxed);

	e->lru = ++c->tick;
	c->last = e - c->e;
	if (atomic_load_explicit(&c->used, memory_order_relaxed) != now)
		atomic_store_explicit(&c->used, now, memory_order_relaxed);
}

int qcow2_cache_get(struct qcow2_cache *c, uint64_t off, struct qcow2_cache_entry **out)
{
	struct qcow2 *q = c->q;
	struct qcow2_cache_entry *e = cache_find(c, off);
	int ret;

	if (!e) {
		ret = cache_victim(c, &e);
		if (ret)
			return ret;
		ret = meta_pread(q->img->fd, e->buf, q->cluster_size, off);
		if (ret) {
			vd_err("%s: cannot read %s at 0x%" PRIx64 ": %s", q->img->path, c->what,
			       off, strerror(-ret));
			return ret == -EIO || ret == -EINVAL ? -EIO : ret;
		}
		e->off = off;
		e->dirty = false;
	}
	cache_touch(c, e);
	*out = e;
	return 0;
}

/* A table that does not exist on disk yet: zeroed and dirty. */
int qcow2_cache_get_new(struct qcow2_cache *c, uint64_t off, struct qcow2_cache_entry **out)
{
	struct qcow2_cache_entry *e = cache_find(c, off);
	int ret;

	if (!e) {
		ret = cache_victim(c, &e);
		if (ret)
			return ret;
		e->off = off;
	}
	memset(e->buf, 0, c->q->cluster_size);
	e->dirty = true;
	cache_touch(c, e);
	*out = e;
	return 0;
}

void qcow2_cache_dirty(struct qcow2_cache *c, struct qcow2_cache_entry *e)
{
	e->dirty = true;
}

bool qcow2_cache_has_dirty(const struct qcow2_cache *c)
{
	for (unsigned i = 0; i < c->n; i++)
		if (c->e[i].off && c->e[i].dirty)
			return true;
	return false;
}

/* Write every dirty table (no sync: the caller orders with fdatasync). */
int qcow2_cache_flush(struct qcow2_cache *c, bool *wrote)
{
	int ret;

	for (unsigned i = 0; i < c->n; i++) {
		struct qcow2_cache_entry *e = &c->e[i];
		if (!e->off || !e->dirty)
			continue;
		ret = cache_writeback(c, e);
		if (ret)
			return ret;
		if (wrote)
			*wrote = true;
	}
	return 0;
}

/* The cluster at off stopped being a table: drop it without writing. */
void qcow2_cache_forget(struct qcow2_cache *c, uint64_t off)
{
	for (unsigned i = 0; i < c->n; i++) {
		if (c->e[i].off == off) {
			c->e[i].off = 0;
			c->e[i].dirty = false;
		}
	}
}
