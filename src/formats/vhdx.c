/* The VHDX driver: probing, CRC-32C and GUIDs, choosing the current header,
 * the region table (with the second copy as fallback), the metadata table and
 * its items (incl. the parent locator), open/close/info and the ops table.
 * The log lives in vhdx-log.c, the BAT and map in vhdx-bat.c. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/random.h>
#include <sys/stat.h>

#include "util/endian.h"
#include "util/json.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

const vhdx_guid vhdx_guid_bat = {{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64,
				  0x11, 0x5e, 0x9b, 0xfd, 0x4a, 0x08}};
const vhdx_guid vhdx_guid_meta = {{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe,
				   0x57, 0x5f, 0x05, 0x0f, 0x88, 0x6e}};
const vhdx_guid vhdx_guid_file_params = {{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3,
					  0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}};
const vhdx_guid vhdx_guid_disk_size = {{0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2,
					0x11, 0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}};
const vhdx_guid vhdx_guid_page83 = {{0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef,
				     0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}};
const vhdx_guid vhdx_guid_lss = {{0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47,
				  0xf2, 0x33, 0xa8, 0xfa, 0xab, 0x5f}};
const vhdx_guid vhdx_guid_pss = {{0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9,
				  0xe9, 0x88, 0x52, 0x51, 0xc5, 0x56}};
const vhdx_guid vhdx_guid_parent_locator = {{0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45,
					     0xab, 0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c}};
const vhdx_guid vhdx_guid_locator_type = {{0xb7, 0xef, 0x4a, 0xb0, 0x9e, 0xd1, 0x81, 0x4a, 0xb7,
					   0x89, 0x25, 0xb8, 0xe9, 0x44, 0x59, 0x13}};

/* ---- CRC-32C (Castagnoli, reflected 0x82F63B78) and GUIDs ---- */

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void)
{
	for (uint32_t i = 0; i < 256; i++) {
		uint32_t c = i;
		for (int k = 0; k < 8; k++)
			c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
		crc_table[i] = c;
	}
}

uint32_t vhdx_crc32c(uint32_t crc, const void *buf, size_t len)
{
	const uint8_t *p = buf;

	pthread_once(&crc_once, crc_init);
	crc = ~crc;
	while (len--)
		crc = crc_table[(crc ^ *p++) & 0xff] ^ (crc >> 8);
	return ~crc;
}

uint32_t vhdx_checksum(const void *buf, size_t len, size_t csum_off)
{
	static const uint8_t zero[4];
	uint32_t crc = vhdx_crc32c(0, buf, csum_off);

	crc = vhdx_crc32c(crc, zero, 4);
	return vhdx_crc32c(crc, (const uint8_t *)buf + csum_off + 4, len - csum_off - 4);
}

void vhdx_guid_random(vhdx_guid *g)
{
	size_t done = 0;

	while (done < sizeof(g->b)) {
		ssize_t n = getrandom(g->b + done, sizeof(g->b) - done, 0);
		if (n > 0)
			done += n;
	}
	g->b[7] = (g->b[7] & 0x0f) | 0x40; /* version 4 (Data3 is little-endian) */
	g->b[8] = (g->b[8] & 0x3f) | 0x80;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	c |= 0x20;
	return c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

int vhdx_guid_parse(const char *s, vhdx_guid *g)
{
	/* Text order of the 16 bytes: Data1..3 little-endian on disk. */
	static const int order[16] = {3, 2, 1, 0, 5, 4, 7, 6, 8, 9, 10, 11, 12, 13, 14, 15};
	int i = 0;
	bool brace = *s == '{';

	if (brace)
		s++;
	while (i < 16) {
		int hi, lo;
		if (*s == '-' && (i == 4 || i == 6 || i == 8 || i == 10))
			s++;
		hi = hexval(s[0]);
		lo = hi < 0 ? -1 : hexval(s[1]);
		if (lo < 0)
			return -EINVAL;
		g->b[order[i++]] = hi << 4 | lo;
		s += 2;
	}
	if (brace && *s++ != '}')
		return -EINVAL;
	return *s ? -EINVAL : 0;
}

void vhdx_guid_format(const vhdx_guid *g, char out[39])
{
	const uint8_t *b = g->b;

	snprintf(out, 39,
		 "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x}", b[3],
		 b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13],
		 b[14], b[15]);
}

/* ---- headers ---- */

void vhdx_header_parse(const uint8_t *buf, struct vhdx_header *h)
{
	h->seq = get_le64(buf + 8);
	memcpy(h->file_write.b, buf + 16, 16);
	memcpy(h->data_write.b, buf + 32, 16);
	memcpy(h->log_guid.b, buf + 48, 16);
	h->log_version = get_le16(buf + 64);
	h->version = get_le16(buf + 66);
	h->log_length = get_le32(buf + 68);
	h->log_offset = get_le64(buf + 72);
}

/* Fill the 80 defined bytes (reserved bytes of buf are kept) and the CRC. */
void vhdx_header_build(uint8_t *buf, const struct vhdx_header *h)
{
	memcpy(buf, "head", 4);
	put_le64(buf + 8, h->seq);
	memcpy(buf + 16, h->file_write.b, 16);
	memcpy(buf + 32, h->data_write.b, 16);
	memcpy(buf + 48, h->log_guid.b, 16);
	put_le16(buf + 64, h->log_version);
	put_le16(buf + 66, h->version);
	put_le32(buf + 68, h->log_length);
	put_le64(buf + 72, h->log_offset);
	put_le32(buf + 4, vhdx_checksum(buf, VHDX_HEADER_SIZE, 4));
}

static bool header_valid(const uint8_t *buf)
{
	return !memcmp(buf, "head", 4) && get_le32(buf + 4) == vhdx_checksum(buf, 4096, 4) &&
	       get_le16(buf + 66) == 1;
}

static int vhdx_read_headers(struct vhdx *v)
{
	struct vd_image *img = v->img;
	uint8_t *buf = malloc(2 * VHDX_HEADER_SIZE);
	bool ok1, ok2;
	int ret, cur;

	if (!buf)
		return -ENOMEM;
	ret = meta_pread(img->fd, buf, VHDX_HEADER_SIZE, VHDX_HEADER1_OFF);
	if (!ret)
		ret = meta_pread(img->fd, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE,
				 VHDX_HEADER2_OFF);
	if (ret) {
		vd_err("%s: cannot read the VHDX headers at 0x10000: %s", img->path,
		       strerror(-ret));
		goto out;
	}
	ok1 = header_valid(buf);
	ok2 = header_valid(buf + VHDX_HEADER_SIZE);
	if (!ok1 && !ok2) {
		vd_err("%s: no valid VHDX header at 0x10000 or 0x20000 (signature, CRC-32C or "
		       "version)",
		       img->path);
		ret = -EINVAL;
		goto out;
	}
	if (ok1 && ok2) {
		uint64_t s1 = get_le64(buf + 8), s2 = get_le64(buf + VHDX_HEADER_SIZE + 8);
		if (s1 == s2 && memcmp(buf, buf + VHDX_HEADER_SIZE, VHDX_HEADER_SIZE)) {
			vd_err("%s: headers at 0x10000 and 0x20000 have the same sequence number "
			       "%" PRIu64 " but differ",
			       img->path, s1);
			ret = -EINVAL;
			goto out;
		}
		cur = s2 > s1;
	} else {
		cur = ok2;
		vd_warn("%s: header %d at 0x%llx is corrupt; using the other one", img->path,
			cur ? 1 : 2, cur ? VHDX_HEADER1_OFF : VHDX_HEADER2_OFF);
	}
	v->hdr_slot = cur;
	memcpy(v->hdr_raw, buf + cur * VHDX_HEADER_SIZE, VHDX_HEADER_SIZE);
	vhdx_header_parse(v->hdr_raw, &v->hdr);
	ret = 0;
out:
	free(buf);
	return ret;
}

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

static int vhdx_use_range(struct vhdx *v, uint64_t off, uint64_t len, const char *what)
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

static int vhdx_read_region_table(struct vhdx *v)
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
		vd_err("%s: parent locator at 0x%" PRIx64 " has an unknown locator type",
		       img->path, v->meta_off + it->off);
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
				vd_err("%s: metadata entry %u at 0x%" PRIx64 " is an unknown required "
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

static int vhdx_read_metadata(struct vhdx *v)
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

static int vhdx_backing_names(struct vhdx *v)
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

/* ---- open / close ---- */

static int vhdx_probe(const uint8_t *buf, size_t len, const char *path)
{
	return len >= 8 && !memcmp(buf, "vhdxfile", 8) ? 100 : 0;
}

static void vhdx_free(struct vhdx *v)
{
	vhdx_bat_free(v);
	if (v->inflight)
		g_hash_table_destroy(v->inflight);
	g_free(v->loc_relative);
	g_free(v->loc_volume);
	g_free(v->loc_absolute);
	pthread_mutex_destroy(&v->lock);
	free(v);
}

static int vhdx_open_structures(struct vhdx *v, uint64_t file_size)
{
	int ret = vhdx_read_headers(v);

	if (ret)
		return ret;
	ret = vhdx_use_range(v, 0, VHDX_MiB, "header section");
	if (!ret)
		ret = vhdx_log_open(v, file_size);
	if (!ret)
		ret = vhdx_read_region_table(v);
	if (!ret)
		ret = vhdx_log_replay(v, &file_size);
	if (!ret)
		ret = vhdx_read_metadata(v);
	if (!ret)
		ret = vhdx_bat_load(v, file_size);
	return ret;
}

static int vhdx_open(struct vd_image *img)
{
	struct vhdx *v = calloc(1, sizeof(*v));
	uint8_t sig[8];
	struct stat st;
	int ret;

	if (!v)
		return -ENOMEM;
	v->img = img;
	pthread_mutex_init(&v->lock, NULL);
	v->inflight = g_hash_table_new(g_direct_hash, g_direct_equal);
	ret = meta_pread(img->fd, sig, 8, 0);
	if (ret || memcmp(sig, "vhdxfile", 8)) {
		vd_err("%s: no \"vhdxfile\" identifier at offset 0", img->path);
		ret = -EINVAL;
		goto fail;
	}
	if (fstat(img->fd, &st) < 0) {
		ret = -errno;
		goto fail;
	}
	ret = vhdx_open_structures(v, st.st_size);
	if (ret)
		goto fail;
	if (v->has_parent) {
		ret = vhdx_backing_names(v);
		if (ret)
			goto fail;
	}
	img->size = v->disk_size;
	img->cluster_size = v->block_size;
	img->zero_align = v->lss;
	img->priv = v;
	return 0;
fail:
	vhdx_free(v);
	return ret;
}

/* Metadata written back, the log closed in the headers, the file synced. */
static int vhdx_finish(struct vd_image *img)
{
	struct vhdx *v = img->priv;
	int ret;

	pthread_mutex_lock(&v->lock);
	ret = v->session_file_guid ? vhdx_close_log(v) : vhdx_flush_locked(v);
	pthread_mutex_unlock(&v->lock);
	if (!ret)
		ret = meta_fdatasync(img->fd);
	return ret;
}

static void vhdx_close(struct vd_image *img)
{
	struct vhdx *v = img->priv;

	if (!v)
		return;
	pthread_mutex_lock(&v->lock);
	if (img->writable && v->session_file_guid)
		vhdx_close_log(v);
	pthread_mutex_unlock(&v->lock);
	vhdx_free(v);
	img->priv = NULL;
}

static int vhdx_flush(struct vd_image *img)
{
	struct vhdx *v = img->priv;
	int ret;

	pthread_mutex_lock(&v->lock);
	ret = vhdx_flush_locked(v);
	pthread_mutex_unlock(&v->lock);
	return ret;
}

static int vhdx_truncate(struct vd_image *img, uint64_t size)
{
	vd_err("%s: resizing VHDX images is not supported", img->path);
	return -ENOTSUP;
}

static int vhdx_check_backing(struct vd_image *img, struct vd_image *parent)
{
	struct vhdx *v = img->priv, *p = parent->priv;
	char want[39], have[39];

	if (parent->fmt != &vd_format_vhdx || !p) {
		vd_err("%s: parent %s is not a VHDX image", img->path, parent->path);
		return -EINVAL;
	}
	if (!vhdx_guid_eq(&p->hdr.data_write, &v->linkage) &&
	    !(v->has_linkage2 && vhdx_guid_eq(&p->hdr.data_write, &v->linkage2))) {
		vhdx_guid_format(&v->linkage, want);
		vhdx_guid_format(&p->hdr.data_write, have);
		vd_err("%s: parent %s has DataWriteGuid %s, the parent locator wants %s",
		       img->path, parent->path, have, want);
		return -EINVAL;
	}
	if (p->lss != v->lss) {
		vd_err("%s: parent %s has %u-byte logical sectors, this disk %u", img->path,
		       parent->path, p->lss, v->lss);
		return -EINVAL;
	}
	return 0;
}

static void vhdx_info(struct vd_image *img, struct json_writer *j)
{
	struct vhdx *v = img->priv;
	char g[39];

	json_str(j, "type", v->has_parent ? "differencing" : v->leave_alloc ? "fixed" : "dynamic");
	json_u64(j, "block-size", v->block_size);
	json_u64(j, "logical-sector-size", v->lss);
	json_u64(j, "physical-sector-size", v->pss);
	json_str(j, "log", v->replayed ? "replayed at open" : "clean");
	if (v->has_parent) {
		vhdx_guid_format(&v->linkage, g);
		json_str(j, "parent-linkage", g);
		json_str(j, "parent", img->backing ? img->backing->path : img->backing_names[0]);
	}
}

const struct vd_format vd_format_vhdx = {
	.name = "vhdx",
	.probe = vhdx_probe,
	.open = vhdx_open,
	.close = vhdx_close,
	.map = vhdx_map,
	.complete = vhdx_complete,
	.allocated = vhdx_allocated,
	.block_status = vhdx_block_status,
	.discard = vhdx_discard,
	.write_zeroes = vhdx_discard,
	.flush = vhdx_flush,
	.finish = vhdx_finish,
	.truncate = vhdx_truncate,
	.create = vhdx_create,
	.info = vhdx_info,
	.check_backing = vhdx_check_backing,
};
