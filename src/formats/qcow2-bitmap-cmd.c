/* qcow2 persistent dirty bitmaps, the live commands: add, remove, enable,
 * disable and clear, each checked against QEMU's limits and stored in a
 * crash-consistent order by the store of qcow2-bitmap.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2-bitmap.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"
#include "util/compiler.h"
#include "util/endian.h"
#include "util/log.h"

/* ---- commands: add, remove, enable, disable, clear ---- */

static struct qcow2_bitmap *find_bitmap(struct qcow2 *q, const char *name)
{
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++)
		if (!strcmp(q->bms[i].name, name))
			return &q->bms[i];
	return NULL;
}

static uint64_t loaded_bytes(const struct qcow2 *q)
{
	uint64_t n = 0;

	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++)
		if (q->bms[i].bits)
			n += (uint64_t)q->bms[i].table_size * q->cluster_size;
	return n;
}

static int too_much_memory(struct qcow2 *q, const char *name, uint64_t more)
{
	if (loaded_bytes(q) + more <= QCOW2_BITMAP_MEM_MAX)
		return 0;
	vd_err("%s: bitmap '%s': the enabled bitmaps would need more than %" PRIu64
	       " bytes of memory: use a larger granularity",
	       q->img->path, name, (uint64_t)QCOW2_BITMAP_MEM_MAX);
	return -EFBIG;
}

/* The clusters every write in flight writes, dirty in b: their data may land
 * after the command, so they count after it (as QEMU counts a write when it
 * finishes). */
static void mark_inflight(struct qcow2 *q, struct qcow2_bitmap *b)
{
	for (const struct qcow2_ticket *t = q->inflight; t; t = t->next) {
		for (unsigned i = 0; i < t->n; i++) {
			uint64_t off = t->items[i].gcl << q->cluster_bits, end;

			if (t->items[i].kind == QI_READ || off >= q->size)
				continue;
			end = off + q->cluster_size < q->size ? off + q->cluster_size : q->size;
			qcow2_bm_set_bits(b->bits, off >> b->gbits, (end - 1) >> b->gbits);
		}
	}
}

/* Room for a first bitmaps extension (32 bytes and an end marker). */
static int ext_room(struct qcow2 *q, struct ext_place *pl)
{
	uint64_t end, stale, limit, boff;
	uint8_t *c0 = malloc(q->cluster_size);
	int ret = c0 ? qcow2_ext_scan(q, c0, QCOW2_EXT_BITMAPS, &end, &stale, &limit) : -ENOMEM;

	if (ret)
		goto out;
	ret = -ENOTSUP;
	if (stale) {
		vd_err("%s: the bitmaps header extension at 0x%" PRIx64
		       " is stale (its autoclear bit is clear): remove it with QEMU "
		       "(qemu-img check -r all) first",
		       q->img->path, stale);
		goto out;
	}
	pl->end = end;
	ret = 0;
	if (end + 40 <= limit)
		goto out;
	boff = get_be64(c0 + 8);
	pl->name_len = get_be32(c0 + 16);
	pl->new_name_off =
		ALIGN_UP(boff + pl->name_len > end + 40 ? boff + pl->name_len : end + 40, 8);
	if (!boff || pl->new_name_off + pl->name_len > q->cluster_size) {
		vd_err("%s: no room for a bitmaps extension in the header cluster", q->img->path);
		ret = -ENOSPC;
		goto out;
	}
	pl->name = malloc(pl->name_len ? pl->name_len : 1);
	if (!pl->name) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(pl->name, c0 + boff, pl->name_len);
out:
	free(c0);
	return ret;
}

/* Count and directory size change with one write of the extension's 24
 * bytes: that needs them inside one sector. */
static int ext_field_check(struct qcow2 *q)
{
	if (q->bm_ext_off % 512 + 24 <= 512)
		return 0;
	vd_err("%s: the bitmaps header extension at 0x%" PRIx64
	       " crosses a sector boundary: it cannot be "
	       "rewritten atomically; use qemu-img bitmap",
	       q->img->path, q->bm_ext_off - 8);
	return -ENOTSUP;
}

/* Removing the last bitmap replaces the extension by an end marker: it must
 * be the last extension. */
static int ext_last_check(struct qcow2 *q)
{
	uint64_t end, at, limit;
	uint8_t *c0 = malloc(q->cluster_size);
	int ret = c0 ? qcow2_ext_scan(q, c0, QCOW2_EXT_BITMAPS, &end, &at, &limit) : -ENOMEM;

	if (!ret && end != q->bm_ext_off + 24) {
		vd_err("%s: the bitmaps header extension at 0x%" PRIx64
		       " is not the last one: the last bitmap cannot be removed "
		       "here; use qemu-img bitmap --remove",
		       q->img->path, q->bm_ext_off - 8);
		ret = -ENOTSUP;
	}
	free(c0);
	return ret;
}

/* QEMU's default: the cluster size, within 4 KiB .. 64 KiB. */
static uint32_t default_granularity(const struct qcow2 *q)
{
	return q->cluster_size < 4096 ? 4096 : q->cluster_size > 65536 ? 65536 : q->cluster_size;
}

static int add_check(struct qcow2 *q, const char *name, uint32_t gran, struct ext_place *pl)
{
	size_t nlen = strlen(name);
	unsigned gbits = gran ? __builtin_ctz(gran) : 0;
	uint64_t tsize = gran ? qcow2_bm_tsize(q, gbits) : 0;

	if (!nlen || nlen > BME_MAX_NAME) {
		vd_err("%s: a bitmap name has 1 to %u bytes", q->img->path, BME_MAX_NAME);
		return -EINVAL;
	}
	if (find_bitmap(q, name)) {
		vd_err("%s: a bitmap named '%s' exists", q->img->path, name);
		return -EEXIST;
	}
	if (gran & (gran - 1) || gbits < BME_MIN_GBITS || gbits > BME_MAX_GBITS) {
		vd_err("%s: bitmap '%s': granularity %u is not a power of two from 512 bytes "
		       "to 2 GiB",
		       q->img->path, name, gran);
		return -EINVAL;
	}
	if (!tsize || tsize > BME_MAX_TABLE || tsize * q->cluster_size > BME_MAX_PHYS) {
		vd_err("%s: bitmap '%s': %s", q->img->path, name,
		       tsize ? "it would take more than 512 MiB: use a larger granularity"
			     : "the disk is empty");
		return tsize ? -EFBIG : -EINVAL;
	}
	if (too_much_memory(q, name, tsize * q->cluster_size))
		return -EFBIG;
	if (q->nb_bitmaps >= 65535 ||
	    q->bm_dir_size + qcow2_bm_entry_size_for(nlen) > (64u << 20)) {
		vd_err("%s: bitmap '%s': the bitmap directory is full", q->img->path, name);
		return -ENOSPC;
	}
	return q->has_bitmaps ? ext_field_check(q) : ext_room(q, pl);
}

static int remove_check(struct qcow2 *q, struct qcow2_bitmap *b)
{
	int ret = q->nb_bitmaps > 1 ? ext_field_check(q) : ext_last_check(q);

	/* an inconsistent bitmap's table is read now, checked like a kept one's */
	if (!ret && !b->table)
		ret = qcow2_bm_load_table(q, b, q->file_size);
	if (ret && !b->kept) {
		free(b->table);
		b->table = NULL;
	}
	return ret;
}

static int cmd_add(struct qcow2 *q, const char *name, uint32_t gran, const struct ext_place *pl)
{
	struct qcow2_bitmap *bms = realloc(q->bms, (q->nb_bitmaps + 1) * sizeof(*bms)), *b;
	int ret;

	if (!bms)
		return -ENOMEM;
	q->bms = bms;
	b = &bms[q->nb_bitmaps];
	memset(b, 0, sizeof(*b));
	b->gbits = __builtin_ctz(gran);
	b->flags = BME_AUTO;
	b->kept = true;
	b->is_new = true;
	b->table_size = qcow2_bm_tsize(q, b->gbits);
	b->nbits = qcow2_bm_nbits(q, b->gbits);
	b->name = strdup(name);
	b->bits = calloc(b->table_size, q->cluster_size);
	if (!b->name || !b->bits) {
		free(b->name);
		free(b->bits);
		return -ENOMEM;
	}
	mark_inflight(q, b);
	q->nb_bitmaps++;
	ret = qcow2_bm_store(q, pl);
	if (ret) {
		q->nb_bitmaps--;
		free(b->name);
		free(b->bits);
	}
	return ret;
}

static int cmd_enable(struct qcow2 *q, struct qcow2_bitmap *b)
{
	uint8_t *buf;
	int ret = too_much_memory(q, b->name, (uint64_t)b->table_size * q->cluster_size);

	if (ret)
		return ret;
	buf = malloc(q->cluster_size);
	ret = buf ? qcow2_bm_load_bits(q, b, buf) : -ENOMEM;
	free(buf);
	if (!ret) {
		b->flags |= BME_AUTO;
		mark_inflight(q, b);
		ret = qcow2_bm_store(q, NULL);
	}
	if (ret) {
		b->flags &= ~BME_AUTO;
		free(b->bits);
		b->bits = NULL;
	}
	return ret;
}

/* The old bits are kept until the store succeeded: a failed clear changes
 * nothing. */
static int cmd_clear(struct qcow2 *q, struct qcow2_bitmap *b)
{
	uint64_t *old = b->bits;
	int ret;

	b->nbits = qcow2_bm_nbits(q, b->gbits);
	b->bits = calloc(b->table_size, q->cluster_size);
	if (!b->bits) {
		b->bits = old;
		return -ENOMEM;
	}
	if (b->flags & BME_AUTO)
		mark_inflight(q, b);
	ret = qcow2_bm_store(q, NULL);
	if (ret) {
		free(b->bits);
		b->bits = old;
	} else {
		free(old);
	}
	return ret;
}

/* After a store: the old structures' deferred frees, written as at close. */
static void flush_deferred(struct qcow2 *q, const char *name)
{
	if (qcow2_flush_locked(q) || qcow2_flush_locked(q))
		vd_warn("%s: bitmap '%s': the old bitmap clusters are not freed yet (the next "
			"flush retries)",
			q->img->path, name);
}

static int run_cmd(struct qcow2 *q, enum vd_bitmap_cmd cmd, const char *name, uint32_t gran)
{
	struct qcow2_bitmap *b = find_bitmap(q, name);
	struct ext_place pl = {0};
	int ret = 0;

	if (q->version < 3) {
		vd_err("%s: persistent bitmaps need a qcow2 version 3 image", q->img->path);
		return -ENOTSUP;
	}
	if (cmd == VD_BITMAP_ADD) {
		ret = add_check(q, name, gran ? gran : default_granularity(q), &pl);
	} else if (!b) {
		vd_err("%s: no bitmap named '%s'", q->img->path, name);
		return -ENOENT;
	} else if (cmd != VD_BITMAP_REMOVE && !b->kept) {
		vd_err("%s: bitmap '%s' is inconsistent (it was in use when the image was "
		       "opened): it can only be removed",
		       q->img->path, name);
		return -EINVAL;
	} else if (cmd == VD_BITMAP_REMOVE) {
		ret = remove_check(q, b);
	} else if ((cmd == VD_BITMAP_ENABLE) == !!(b->flags & BME_AUTO)) {
		return 0; /* enabled or disabled already */
	}
	if (!ret)
		ret = qcow2_prepare_write(q);
	if (ret)
		goto out;
	/* b stays valid: prepare_write only writes the in_use marks */
	switch (cmd) {
	case VD_BITMAP_ADD:
		ret = cmd_add(q, name, gran ? gran : default_granularity(q), &pl);
		break;
	case VD_BITMAP_REMOVE:
		b->removing = true;
		ret = qcow2_bm_store(q, NULL);
		if (ret)
			b->removing = false;
		break;
	case VD_BITMAP_ENABLE:
		ret = cmd_enable(q, b);
		break;
	case VD_BITMAP_DISABLE:
		b->flags &= ~BME_AUTO;
		ret = qcow2_bm_store(q, NULL);
		if (ret)
			b->flags |= BME_AUTO;
		break;
	case VD_BITMAP_CLEAR:
		ret = cmd_clear(q, b);
		break;
	}
	if (!ret)
		flush_deferred(q, name);
out:
	free(pl.name);
	return ret;
}

int qcow2_bitmap(struct vd_image *img, enum vd_bitmap_cmd cmd, const char *name, uint32_t gran)
{
	struct qcow2 *q = img->priv;
	int ret;

	pthread_mutex_lock(&q->lock);
	ret = run_cmd(q, cmd, name, gran);
	pthread_mutex_unlock(&q->lock);
	if (!ret)
		vd_info("%s: bitmap %s %s: done", img->path, vd_bitmap_cmd_name(cmd), name);
	return ret;
}

/* ---- a backup's take and merge ---- */

static int bits_lookup(struct qcow2 *q, const char *name, struct qcow2_bitmap **out)
{
	struct qcow2_bitmap *b = find_bitmap(q, name);

	if (!b) {
		vd_err("%s: no bitmap named '%s'", q->img->path, name);
		return -ENOENT;
	}
	if (!b->kept || !b->bits || !(b->flags & BME_AUTO)) {
		vd_err("%s: bitmap '%s' is %s: a backup needs an enabled bitmap", q->img->path,
		       name, b->kept ? "disabled" : "inconsistent");
		return -EINVAL;
	}
	*out = b;
	return 0;
}

int qcow2_bitmap_take(struct vd_image *img, const char *name, bool clear,
		      struct vd_bitmap_bits *out)
{
	struct qcow2 *q = img->priv;
	struct qcow2_bitmap *b;
	uint64_t bytes;
	int ret;

	pthread_mutex_lock(&q->lock);
	ret = bits_lookup(q, name, &b);
	if (ret)
		goto out;
	bytes = (b->nbits + 63) / 64 * 8;
	out->words = malloc(bytes ? bytes : 8);
	if (!out->words) {
		ret = -ENOMEM;
		goto out;
	}
	memcpy(out->words, b->bits, bytes);
	out->nbits = b->nbits;
	out->gbits = b->gbits;
	if (clear)
		ret = qcow2_prepare_write(q);
	if (clear && !ret)
		ret = cmd_clear(q, b);
	if (ret)
		vd_bitmap_bits_free(out);
	else if (clear)
		flush_deferred(q, name);
out:
	pthread_mutex_unlock(&q->lock);
	return ret;
}

int qcow2_bitmap_merge(struct vd_image *img, const char *name, const struct vd_bitmap_bits *in)
{
	struct qcow2 *q = img->priv;
	struct qcow2_bitmap *b;
	uint64_t *old = NULL, bytes = 0;
	int ret;

	pthread_mutex_lock(&q->lock);
	ret = bits_lookup(q, name, &b);
	if (!ret && (in->gbits != b->gbits || in->nbits != b->nbits)) {
		vd_err("%s: bitmap '%s' changed its granularity or size: bits not merged",
		       img->path, name);
		ret = -EINVAL;
	}
	if (!ret) {
		bytes = (uint64_t)b->table_size * q->cluster_size;
		old = malloc(bytes);
		ret = old ? qcow2_prepare_write(q) : -ENOMEM;
	}
	if (ret)
		goto out;
	memcpy(old, b->bits, bytes);
	for (uint64_t i = 0; i < (in->nbits + 63) / 64; i++)
		b->bits[i] |= in->words[i];
	ret = qcow2_bm_store(q, NULL);
	if (ret) /* a failed merge changes nothing */
		memcpy(b->bits, old, bytes);
	else
		flush_deferred(q, name);
out:
	free(old);
	pthread_mutex_unlock(&q->lock);
	return ret;
}

/* A resize would leave the bitmaps kept exact with tables of the old size. */
bool qcow2_bitmaps_block_resize(struct qcow2 *q)
{
	for (uint32_t i = 0; q->bms && i < q->nb_bitmaps; i++) {
		if (q->bms[i].kept) {
			vd_err("%s: cannot resize an image with persistent bitmaps (bitmap '%s')",
			       q->img->path, q->bms[i].name);
			return true;
		}
	}
	return false;
}
