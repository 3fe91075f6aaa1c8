/* The list of format drivers and the extent-list helpers they share. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "image/format.h"

/* Probing order: formats with magic first; raw last (it matches by name). */
const struct vd_format *const vd_formats[] = {
	&vd_format_qcow2,
	&vd_format_vhdx,
	&vd_format_raw,
	NULL,
};

const struct vd_format *vd_format_by_name(const char *name)
{
	for (int i = 0; vd_formats[i]; i++)
		if (!strcmp(vd_formats[i]->name, name))
			return vd_formats[i];
	return NULL;
}

void vd_map_init(struct vd_map *m)
{
	/* Not the inline extents: every slot is written whole before use. */
	m->ext = m->inline_ext;
	m->n = 0;
	m->cap = VD_MAP_INLINE;
	m->ticket = NULL;
	m->waiter = NULL;
}

void vd_map_reset(struct vd_map *m)
{
	m->n = 0;
	m->ticket = NULL;
}

void vd_map_free(struct vd_map *m)
{
	if (m->ext != m->inline_ext)
		free(m->ext);
	m->ext = m->inline_ext;
	m->cap = VD_MAP_INLINE;
	m->n = 0;
}

/* Can e continue p without changing what either means? */
static bool vd_extent_joins(const struct vd_extent *p, const struct vd_extent *e)
{
	if (p->type != e->type || p->off + p->len != e->off || p->cow.len || e->cow.len)
		return false;
	switch (e->type) {
	case VD_EXT_ZERO:
	case VD_EXT_UNALLOC:
		return true;
	case VD_EXT_DATA:
		return p->fd == e->fd && p->host_off + p->len == e->host_off;
	default:
		return false;
	}
}

int vd_map_add(struct vd_map *m, const struct vd_extent *e)
{
	if (m->n && vd_extent_joins(&m->ext[m->n - 1], e)) {
		m->ext[m->n - 1].len += e->len;
		return 0;
	}
	if (m->n == m->cap) {
		unsigned cap = m->cap * 2;
		struct vd_extent *n = malloc(cap * sizeof(*n));
		if (!n)
			return -ENOMEM;
		memcpy(n, m->ext, m->n * sizeof(*n));
		if (m->ext != m->inline_ext)
			free(m->ext);
		m->ext = n;
		m->cap = cap;
	}
	m->ext[m->n++] = *e;
	return 0;
}

/* Does s read on from where p ends, from the same source? */
static bool vd_cow_seg_joins(const struct vd_cow_seg *p, const struct vd_cow_seg *s)
{
	if (p->type != s->type || p->off + p->len != s->off)
		return false;
	switch (s->type) {
	case VD_EXT_ZERO:
	case VD_EXT_UNALLOC:
		return true;
	case VD_EXT_DATA:
		return p->fd == s->fd && p->host_off + p->len == s->host_off;
	case VD_EXT_COMPRESSED:
		return p->fd == s->fd && p->host_off == s->host_off && p->csize == s->csize &&
		       p->algo == s->algo && p->cluster_off == s->cluster_off &&
		       p->cluster_size == s->cluster_size;
	}
	return false;
}

int vd_cow_add(struct vd_cow *c, const struct vd_cow_seg *s)
{
	struct vd_cow_seg *p = c->n ? &c->seg[c->n - 1] : NULL;

	if (!s->len)
		return 0;
	if (p && s->off < p->off + p->len)
		return -EINVAL;
	if (p && vd_cow_seg_joins(p, s)) {
		p->len += s->len;
		return 0;
	}
	if (c->n == VD_COW_SEGS)
		return -EINVAL;
	c->seg[c->n++] = *s;
	return 0;
}
