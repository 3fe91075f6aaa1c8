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

static const char *const bitmap_cmds[] = {
	[VD_BITMAP_ADD] = "add",       [VD_BITMAP_REMOVE] = "remove",
	[VD_BITMAP_ENABLE] = "enable", [VD_BITMAP_DISABLE] = "disable",
	[VD_BITMAP_CLEAR] = "clear",
};

const char *vd_bitmap_cmd_name(enum vd_bitmap_cmd cmd)
{
	return (unsigned)cmd < sizeof(bitmap_cmds) / sizeof(bitmap_cmds[0]) ? bitmap_cmds[cmd]
									    : "?";
}

int vd_bitmap_cmd_parse(const char *word, enum vd_bitmap_cmd *cmd)
{
	for (unsigned i = 0; i < sizeof(bitmap_cmds) / sizeof(bitmap_cmds[0]); i++) {
		if (!strcmp(word, bitmap_cmds[i])) {
			*cmd = i;
			return 0;
		}
	}
	return -EINVAL;
}

void vd_bitmap_bits_free(struct vd_bitmap_bits *b)
{
	free(b->words);
	b->words = NULL;
	b->nbits = 0;
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

/* Can b, which starts where a's alen bytes end, read on from the same source?
 * Compressed sources join only as the same blob. */
static bool vd_src_joins(const struct vd_src *a, uint64_t alen, const struct vd_src *b)
{
	if (a->type != b->type)
		return false;
	switch (b->type) {
	case VD_EXT_ZERO:
	case VD_EXT_UNALLOC:
		return true;
	case VD_EXT_DATA:
		return a->fd == b->fd && a->host_off + alen == b->host_off;
	case VD_EXT_COMPRESSED:
		return a->fd == b->fd && a->host_off == b->host_off && a->csize == b->csize &&
		       a->algo == b->algo && a->cluster_off == b->cluster_off &&
		       a->cluster_size == b->cluster_size;
	}
	return false;
}

/* Can e continue p without changing what either means? Compressed extents are
 * never joined (copy-on-write segments of the same blob are). */
static bool vd_extent_joins(const struct vd_extent *p, const struct vd_extent *e)
{
	if (p->off + p->len != e->off || p->cow.len || e->cow.len ||
	    e->src.type == VD_EXT_COMPRESSED)
		return false;
	return vd_src_joins(&p->src, p->len, &e->src);
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

int vd_map_add_data(struct vd_map *m, uint64_t off, uint64_t len, int fd, uint64_t host_off)
{
	struct vd_extent e = {.off = off,
			      .len = len,
			      .src = {.type = VD_EXT_DATA, .fd = fd, .host_off = host_off}};

	return vd_map_add(m, &e);
}

int vd_map_add_hole(struct vd_map *m, uint64_t off, uint64_t len, enum vd_ext_type type)
{
	struct vd_extent e = {.off = off, .len = len, .src = {.type = type, .fd = -1}};

	return vd_map_add(m, &e);
}

int vd_cow_add(struct vd_cow *c, const struct vd_cow_seg *s)
{
	struct vd_cow_seg *p = c->n ? &c->seg[c->n - 1] : NULL;

	if (!s->len)
		return 0;
	if (p && s->off < p->off + p->len)
		return -EINVAL;
	if (p && p->off + p->len == s->off && vd_src_joins(&p->src, p->len, &s->src)) {
		p->len += s->len;
		return 0;
	}
	if (c->n == VD_COW_SEGS)
		return -EINVAL;
	c->seg[c->n++] = *s;
	return 0;
}
