/* The VHDX metadata an open reads after the headers: the region table (with
 * the second copy as fallback) and the ranges the file's structures use, the
 * metadata table and its items (file parameters, sizes, the parent locator),
 * and the parent path candidates the locator names. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>

#include "util/endian.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

/* ---- region table ---- */

const char *vhdx_overlaps(const struct vhdx *v, uint64_t off, uint64_t len)
{
	for (int i = 0; i < v->nused; i++) {
		const struct vhdx_range *r = &v->used[i];
		if (off < r->off + r->len && r->off < off + len)
			return r->what;
	}
	return NULL;
}

int vhdx_use_range(struct vhdx *v, uint64_t off, uint64_t len, const char *what)
{
	const char *o = vhdx_overlaps(v, off, len);

	if (o) {
		vd_err("%s: %s at 0x%" PRIx64 " (0x%" PRIx64 " bytes) overlaps the %s",
		       v->img->path, what, off, len, o);
		return -EINVAL;
	}
	if (v->nused == (int)G_N_ELEMENTS(v->used)) {
		vd_err("%s: too many regions in the region table", v->img->path);
		return -ENOTSUP;
	}
	v->used[v->nused++] = (struct vhdx_range){off, len, what};
	return 0;
}

static bool region_table_valid(const uint8_t *rt)
{
	return !memcmp(rt, "regi", 4) && get_le32(rt + 4) == vhdx_checksum(rt, VHDX_RT_SIZE, 4) &&
	       get_le32(rt + 8) <= 2047;
}

static int vhdx_parse_region_table(struct vhdx *v, const uint8_t *rt, uint64_t rt_off)
{
	struct vd_image *img = v->img;
	uint32_t n = get_le32(rt + 8);
	bool have_bat = false, have_meta = false;
	int ret;

	for (uint32_t i = 0; i < n; i++) {
		const uint8_t *e = rt + 16 + 32 * i;
		vhdx_guid g;
		uint64_t off = get_le64(e + 16);
		uint32_t len = get_le32(e + 24), req = get_le32(e + 28);
		const char *what = "unknown region";

		memcpy(g.b, e, 16);
		if (vhdx_guid_eq(&g, &vhdx_guid_bat))
			what = "BAT region";
		else if (vhdx_guid_eq(&g, &vhdx_guid_meta))
			what = "metadata region";
		if (!strcmp(what, "unknown region") && (req & 1)) {
			vd_err("%s: region table at 0x%" PRIx64 ": entry %u is an unknown required "
			       "region",
			       img->path, rt_off, i);
			return -ENOTSUP;
		}
		if (off % VHDX_MiB || off < VHDX_MiB || len % VHDX_MiB || !len) {
			vd_err("%s: region table at 0x%" PRIx64 ": %s at 0x%" PRIx64 " length 0x%x "
			       "is not 1 MiB aligned",
			       img->path, rt_off, what, off, len);
			return -EINVAL;
		}
		if ((what[0] == 'B' && have_bat) || (what[0] == 'm' && have_meta)) {
			vd_err("%s: region table at 0x%" PRIx64 ": %s listed twice", img->path,
			       rt_off, what);
			return -EINVAL;
		}
		ret = vhdx_use_range(v, off, len, what);
		if (ret)
			return ret;
		if (what[0] == 'B') {
			have_bat = true;
			v->bat_off = off;
			v->bat_len = len;
		} else if (what[0] == 'm') {
			have_meta = true;
			v->meta_off = off;
			v->meta_len = len;
		}
	}
	if (!have_bat || !have_meta) {
		vd_err("%s: region table at 0x%" PRIx64 " lacks the %s region", img->path, rt_off,
		       have_bat ? "metadata" : "BAT");
		return -EINVAL;
	}
	return 0;
}

int vhdx_read_region_table(struct vhdx *v)
{
	struct vd_image *img = v->img;
	uint8_t *rt = malloc(VHDX_RT_SIZE);
	int nused = v->nused, ret;

	if (!rt)
		return -ENOMEM;
	for (int copy = 0; copy < 2; copy++) {
		uint64_t off = copy ? VHDX_RT2_OFF : VHDX_RT1_OFF;

		ret = meta_pread(img->fd, rt, VHDX_RT_SIZE, off);
		if (ret) {
			vd_err("%s: cannot read the region table at 0x%" PRIx64 ": %s", img->path,
			       off, strerror(-ret));
			break;
		}
		if (!region_table_valid(rt)) {
			vd_warn("%s: region table %d at 0x%" PRIx64 " is corrupt (signature, "
				"CRC-32C or entry count)%s",
				img->path, copy + 1, off, copy ? "" : "; trying the second copy");
			ret = -EINVAL;
			continue;
		}
		v->nused = nused;
		ret = vhdx_parse_region_table(v, rt, off);
		break;
	}
	if (ret == -EINVAL && !v->bat_len)
		vd_err("%s: no usable region table at 0x30000 or 0x40000", img->path);
	free(rt);
	return ret;
}

/* ---- metadata ---- */

struct meta_item {
	const vhdx_guid *id;
	uint32_t off, len;
	bool found;
};

static int meta_read_item(struct vhdx *v, struct meta_item *it, void *buf, uint32_t want)
{
	if (!it->found)
		return -ENOENT;
	if (it->len < want) {
		vd_err("%s: metadata item at 0x%" PRIx64 " is %u bytes, want %u", v->img->path,
		       v->meta_off + it->off, it->len, want);
		return -EINVAL;
	}
	return meta_pread(v->img->fd, buf, want, v->meta_off + it->off);
}

static int utf16_value(const uint8_t *p, uint16_t len, char **out)
{
	gunichar2 *w = g_malloc(len + 2);
	char *s;

	memcpy(w, p, len);
	for (unsigned i = 0; i < len / 2u; i++)
		w[i] = GUINT16_FROM_LE(w[i]);
	s = g_utf16_to_utf8(w, len / 2, NULL, NULL, NULL);
	g_free(w);
	if (!s)
		return -EINVAL;
	*out = s;
	return 0;
}

static int locator_kv(struct vhdx *v, const char *key, char *val)
{
	if (!strcmp(key, "parent_linkage") || !strcmp(key, "parent_linkage2")) {
		bool two = key[14] == '2';
		int ret = vhdx_guid_parse(val, two ? &v->linkage2 : &v->linkage);
		g_free(val);
		if (two)
			v->has_linkage2 = !ret;
		return two ? 0 : ret;
	}
	if (!strcmp(key, "relative_path") && !v->loc_relative)
		v->loc_relative = val;
	else if (!strcmp(key, "volume_path") && !v->loc_volume)
		v->loc_volume = val;
	else if (!strcmp(key, "absolute_win32_path") && !v->loc_absolute)
		v->loc_absolute = val;
	else
		g_free(val);
	return 0;
}

static int vhdx_parse_locator(struct vhdx *v, struct meta_item *it)
{
	struct vd_image *img = v->img;
	uint8_t *buf;
	uint16_t n;
	bool linkage = false;
	int ret = -EINVAL;

	if (!it->found || it->len < 20) {
		vd_err("%s: differencing disk without a valid parent locator in the metadata "
		       "region at 0x%" PRIx64,
		       img->path, v->meta_off);
		return -EINVAL;
	}
	buf = malloc(it->len);
	if (!buf)
		return -ENOMEM;
	ret = meta_pread(img->fd, buf, it->len, v->meta_off + it->off);
	if (ret)
		goto out;
	ret = -EINVAL;
	if (memcmp(buf, vhdx_guid_locator_type.b, 16)) {
		vd_err("%s: parent locator at 0x%" PRIx64 " has an unknown locator type", img->path,
		       v->meta_off + it->off);
		ret = -ENOTSUP;
		goto out;
	}
	n = get_le16(buf + 18);
	if (!n || 20 + 12ull * n > it->len)
		goto bad;
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *kv = buf + 20 + 12 * i;
		uint32_t ko = get_le32(kv), vo = get_le32(kv + 4);
		uint16_t kl = get_le16(kv + 8), vl = get_le16(kv + 10);
		char *key, *val;

		if (!ko || !vo || !kl || !vl || (kl | vl) & 1 || (uint64_t)ko + kl > it->len ||
		    (uint64_t)vo + vl > it->len)
			goto bad;
		if (utf16_value(buf + ko, kl, &key))
			goto bad;
		if (utf16_value(buf + vo, vl, &val)) {
			g_free(key);
			goto bad;
		}
		if (!strcmp(key, "parent_linkage"))
			linkage = true;
		ret = locator_kv(v, key, val);
		g_free(key);
		if (ret)
			goto bad;
	}
	if (!linkage || !(v->loc_relative || v->loc_volume || v->loc_absolute)) {
		vd_err("%s: parent locator at 0x%" PRIx64 " lacks parent_linkage or a path",
		       img->path, v->meta_off + it->off);
		ret = -EINVAL;
		goto out;
	}
	ret = 0;
	goto out;
bad:
	vd_err("%s: parent locator at 0x%" PRIx64 " is malformed", img->path,
	       v->meta_off + it->off);
	ret = -EINVAL;
out:
	free(buf);
	return ret;
}

static int vhdx_meta_table(struct vhdx *v, struct meta_item *items, int nitems)
{
	struct vd_image *img = v->img;
	uint8_t *t = malloc(VHDX_META_TABLE_SIZE);
	uint16_t n;
	int ret;

	if (!t)
		return -ENOMEM;
	ret = meta_pread(img->fd, t, VHDX_META_TABLE_SIZE, v->meta_off);
	if (ret)
		goto out;
	n = get_le16(t + 10);
	ret = -EINVAL;
	if (memcmp(t, "metadata", 8) || n > 2047) {
		vd_err("%s: metadata table at 0x%" PRIx64 " has a bad signature or entry count",
		       img->path, v->meta_off);
		goto out;
	}
	for (unsigned i = 0; i < n; i++) {
		const uint8_t *e = t + 32 + 32 * i;
		uint32_t off = get_le32(e + 16), len = get_le32(e + 20);
		uint32_t flags = get_le32(e + 24);
		int k;

		if (len && (off < VHDX_META_TABLE_SIZE || (uint64_t)off + len > v->meta_len ||
			    len > VHDX_MiB)) {
			vd_err("%s: metadata entry %u at 0x%" PRIx64 " lies outside the metadata "
			       "region",
			       img->path, i, v->meta_off + 32 + 32 * i);
			goto out;
		}
		if (flags & 1) /* user metadata: kept, never interpreted */
			continue;
		for (k = 0; k < nitems; k++)
			if (!memcmp(e, items[k].id->b, 16))
				break;
		if (k == nitems) {
			if (flags & 4) {
				vd_err("%s: metadata entry %u at 0x%" PRIx64
				       " is an unknown required "
				       "item",
				       img->path, i, v->meta_off + 32 + 32 * i);
				ret = -ENOTSUP;
				goto out;
			}
			continue;
		}
		if (items[k].found) {
			vd_err("%s: metadata item listed twice in the table at 0x%" PRIx64,
			       img->path, v->meta_off);
			goto out;
		}
		items[k].found = true;
		items[k].off = off;
		items[k].len = len;
	}
	ret = 0;
out:
	free(t);
	return ret;
}

static int vhdx_check_params(struct vhdx *v, uint32_t flags)
{
	struct vd_image *img = v->img;
	uint32_t bs = v->block_size;

	if (bs < VHDX_MiB || bs > 256 * VHDX_MiB || (bs & (bs - 1)) || (flags & ~3u)) {
		vd_err("%s: file parameters at 0x%" PRIx64 ": block size %u or flags 0x%x invalid",
		       img->path, v->meta_off, bs, flags);
		return -EINVAL;
	}
	if ((v->lss != 512 && v->lss != 4096) || (v->pss != 512 && v->pss != 4096)) {
		vd_err("%s: metadata at 0x%" PRIx64 ": sector sizes %u/%u (want 512 or 4096)",
		       img->path, v->meta_off, v->lss, v->pss);
		return -EINVAL;
	}
	if (!v->disk_size || v->disk_size % v->lss || v->disk_size > VHDX_MAX_SIZE) {
		vd_err("%s: metadata at 0x%" PRIx64 ": virtual disk size %" PRIu64 " invalid",
		       img->path, v->meta_off, v->disk_size);
		return -EINVAL;
	}
	return 0;
}

int vhdx_read_metadata(struct vhdx *v)
{
	struct meta_item items[] = {
		{&vhdx_guid_file_params}, {&vhdx_guid_disk_size}, {&vhdx_guid_page83},
		{&vhdx_guid_lss},	  {&vhdx_guid_pss},	  {&vhdx_guid_parent_locator},
	};
	uint8_t fp[8], ds[8], lss[4], pss[4];
	uint32_t flags;
	int ret = vhdx_meta_table(v, items, G_N_ELEMENTS(items));

	if (ret)
		return ret;
	if ((ret = meta_read_item(v, &items[0], fp, 8)) ||
	    (ret = meta_read_item(v, &items[1], ds, 8)) ||
	    (ret = meta_read_item(v, &items[2], v->page83.b, 16)) ||
	    (ret = meta_read_item(v, &items[3], lss, 4)) ||
	    (ret = meta_read_item(v, &items[4], pss, 4))) {
		if (ret == -ENOENT) {
			vd_err("%s: metadata table at 0x%" PRIx64 " lacks a required item",
			       v->img->path, v->meta_off);
			ret = -EINVAL;
		}
		return ret;
	}
	v->block_size = get_le32(fp);
	flags = get_le32(fp + 4);
	v->has_parent = flags & 2;
	v->leave_alloc = (flags & 1) && !v->has_parent;
	v->disk_size = get_le64(ds);
	v->size_item_off = v->meta_off + items[1].off;
	v->lss = get_le32(lss);
	v->pss = get_le32(pss);
	ret = vhdx_check_params(v, flags);
	if (ret)
		return ret;
	if (v->has_parent)
		return vhdx_parse_locator(v, &items[5]);
	return 0;
}

/* ---- parent candidates ---- */

/* A Windows path from the locator as a Linux path, or NULL if unusable. */
static char *win_path(const char *p, bool relative)
{
	char *s = g_strdup(p), *q;

	g_strdelimit(s, "\\", '/');
	if (relative) {
		q = s;
		while (!strncmp(q, "./", 2))
			q += 2;
		q = g_strdup(q);
		g_free(s);
		return q;
	}
	q = s;
	if (!strncmp(q, "//?/", 4))
		q += 4;
	if (!strncmp(q, "UNC/", 4)) {
		g_free(s);
		return NULL;
	}
	if (!strncmp(q, "Volume{", 7)) {
		q = strchr(q, '/');
	} else if (g_ascii_isalpha(q[0]) && q[1] == ':') {
		q += 2;
	}
	q = q && q[0] == '/' ? g_strdup(q) : NULL;
	g_free(s);
	return q;
}

int vhdx_backing_names(struct vhdx *v)
{
	struct vd_image *img = v->img;
	const char *over = img->opts && img->depth == 0 ? img->opts->vhdx_parent : NULL;
	const char *cand[3] = {v->loc_relative, v->loc_volume, v->loc_absolute};
	int n = 0;

	if (over) {
		img->backing_names[n++] = g_canonicalize_filename(over, NULL);
	} else {
		for (int i = 0; i < 3 && n < VD_BACKING_MAX_NAMES; i++) {
			char *p = cand[i] ? win_path(cand[i], i == 0) : NULL;
			if (p && *p)
				img->backing_names[n++] = p;
			else
				g_free(p);
		}
	}
	if (!n) {
		vd_err("%s: parent locator has no path usable here; give one with "
		       "-o vhdx_parent=PATH",
		       img->path);
		return -ENOENT;
	}
	img->backing_fmt = g_strdup("vhdx");
	return 0;
}
