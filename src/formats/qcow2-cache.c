/* The qcow2 metadata cache: a fixed number of one-cluster tables (L2 tables in
 * one cache, refcount blocks in another), least recently used evicted, dirty
 * tables written back on eviction (after the ordering hook) or on flush.
 * Callers hold the image lock; an L2 miss is loaded here with a sync pread. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

int qcow2_cache_init(struct qcow2_cache *c, struct qcow2 *q, unsigned n, const char *what)
{
	memset(c, 0, sizeof(*c));
	c->q = q;
	c->what = what;
	c->n = n;
	c->e = calloc(n, sizeof(*c->e));
	if (!c->e)
		return -ENOMEM;
	for (unsigned i = 0; i < n; i++) {
		c->e[i].buf = aligned_alloc(512, q->cluster_size);
		if (!c->e[i].buf) {
			qcow2_cache_destroy(c);
			return -ENOMEM;
		}
	}
	return 0;
}

void qcow2_cache_destroy(struct qcow2_cache *c)
{
	if (!c->e)
		return;
	for (unsigned i = 0; i < c->n; i++)
		free(c->e[i].buf);
	free(c->e);
	c->e = NULL;
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

/* A free slot, or the least recently used one written back and emptied. */
static int cache_victim(struct qcow2_cache *c, struct qcow2_cache_entry **out)
{
	struct qcow2_cache_entry *v = NULL;
	int ret;

	for (unsigned i = 0; i < c->n; i++) {
		struct qcow2_cache_entry *e = &c->e[i];
		if (!e->off) {
			v = e;
			break;
		}
		if (!v || e->lru < v->lru)
			v = e;
	}
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
	e->lru = ++c->tick;
	c->last = e - c->e;
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
