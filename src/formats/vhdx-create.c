/* Creating VHDX images: dynamic, fixed and differencing (over a VHDX parent),
 * with a chosen block size and logical sector size. Layout: header section,
 * 1 MiB log at 1 MiB, metadata region at 2 MiB, BAT at 3 MiB, then data. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <unistd.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "io/fault.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

#define C_LOG_OFF	VHDX_MiB
#define C_LOG_LEN	VHDX_MiB
#define C_META_OFF	(2 * VHDX_MiB)
#define C_META_LEN	VHDX_MiB
#define C_BAT_OFF	(3 * VHDX_MiB)
#define C_DEFAULT_BLOCK (32u << 20)

struct cparams {
	uint64_t size;
	uint32_t bs, lss;
	bool fixed;
	/* differencing */
	bool diff;
	vhdx_guid linkage;
	char *rel, *abs;
};

static int put_utf16(GByteArray *a, const char *s, uint16_t *len)
{
	glong n;
	gunichar2 *w = g_utf8_to_utf16(s, -1, NULL, &n, NULL);

	if (!w || n * 2 > 0xffff) {
		g_free(w);
		return -EINVAL;
	}
	for (glong i = 0; i < n; i++)
		w[i] = GUINT16_TO_LE(w[i]);
	g_byte_array_append(a, (const guint8 *)w, n * 2);
	*len = n * 2;
	g_free(w);
	return 0;
}

/* The parent locator item: header, key/value entries, UTF-16LE strings. */
static GByteArray *build_locator(const struct cparams *p)
{
	char linkage[39];
	const char *kv[3][2] = {{"parent_linkage", linkage},
				{"relative_path", p->rel},
				{"absolute_win32_path", p->abs}};
	GByteArray *a = g_byte_array_new();
	uint8_t hdr[20] = {0}, ent[3][12] = {{0}};

	vhdx_guid_format(&p->linkage, linkage);
	memcpy(hdr, vhdx_guid_locator_type.b, 16);
	put_le16(hdr + 18, 3);
	g_byte_array_append(a, hdr, sizeof(hdr));
	g_byte_array_append(a, &ent[0][0], sizeof(ent));
	for (int i = 0; i < 3; i++) {
		uint16_t kl, vl;
		uint32_t ko = a->len, vo;
		if (put_utf16(a, kv[i][0], &kl))
			goto fail;
		vo = a->len;
		if (put_utf16(a, kv[i][1], &vl))
			goto fail;
		put_le32(ent[i], ko);
		put_le32(ent[i] + 4, vo);
		put_le16(ent[i] + 8, kl);
		put_le16(ent[i] + 10, vl);
	}
	memcpy(a->data + 20, ent, sizeof(ent));
	return a;
fail:
	g_byte_array_free(a, TRUE);
	return NULL;
}

static void meta_entry(uint8_t *t, int i, const vhdx_guid *id, uint32_t off, uint32_t len,
		       uint32_t flags)
{
	uint8_t *e = t + 32 + 32 * i;

	memcpy(e, id->b, 16);
	put_le32(e + 16, off);
	put_le32(e + 20, len);
	put_le32(e + 24, flags);
}

static int write_metadata(int fd, const struct cparams *p)
{
	uint8_t *m = calloc(1, C_META_LEN);
	uint32_t o = VHDX_META_TABLE_SIZE;
	vhdx_guid page83;
	GByteArray *loc = NULL;
	int ret, n = 5;

	if (!m)
		return -ENOMEM;
	memcpy(m, "metadata", 8);
	put_le32(m + o, p->bs);
	put_le32(m + o + 4, p->diff ? 2 : p->fixed ? 1 : 0);
	meta_entry(m, 0, &vhdx_guid_file_params, o, 8, 4);
	put_le64(m + o + 8, p->size);
	meta_entry(m, 1, &vhdx_guid_disk_size, o + 8, 8, 6);
	vhdx_guid_random(&page83);
	memcpy(m + o + 16, page83.b, 16);
	meta_entry(m, 2, &vhdx_guid_page83, o + 16, 16, 6);
	put_le32(m + o + 32, p->lss);
	meta_entry(m, 3, &vhdx_guid_lss, o + 32, 4, 6);
	put_le32(m + o + 36, 4096);
	meta_entry(m, 4, &vhdx_guid_pss, o + 36, 4, 6);
	if (p->diff) {
		loc = build_locator(p);
		if (!loc || loc->len > C_META_LEN - o - 40) {
			ret = -EINVAL;
			goto out;
		}
		memcpy(m + o + 40, loc->data, loc->len);
		meta_entry(m, n++, &vhdx_guid_parent_locator, o + 40, loc->len, 4);
	}
	put_le16(m + 10, n);
	ret = meta_pwrite(fd, m, C_META_LEN, C_META_OFF);
out:
	if (loc)
		g_byte_array_free(loc, TRUE);
	free(m);
	return ret;
}

static int write_bat(int fd, const struct cparams *p, uint64_t bat_len, uint64_t data_off)
{
	uint64_t cr = ((1ull << 23) * p->lss) / p->bs;
	uint64_t nblocks = (p->size + p->bs - 1) / p->bs;
	uint64_t *bat = calloc(1, bat_len);
	int ret;

	if (!bat)
		return -ENOMEM;
	for (uint64_t b = 0; b < nblocks && !p->diff; b++) {
		uint64_t e =
			p->fixed ? (data_off + b * p->bs) | VHDX_BAT_FULLY_PRESENT : VHDX_BAT_ZERO;
		bat[b + b / cr] = htole64(e);
	}
	ret = meta_pwrite(fd, bat, bat_len, C_BAT_OFF);
	free(bat);
	return ret;
}

static int write_headers(int fd)
{
	uint8_t *buf = calloc(1, VHDX_MiB);
	struct vhdx_header h = {
		.seq = 1, .version = 1, .log_length = C_LOG_LEN, .log_offset = C_LOG_OFF};
	const char *creator = "vdiskfs " VDISKFS_VERSION;
	int ret;

	if (!buf)
		return -ENOMEM;
	memcpy(buf, "vhdxfile", 8);
	for (size_t i = 0; creator[i]; i++)
		buf[8 + 2 * i] = creator[i];
	vhdx_guid_random(&h.file_write);
	vhdx_guid_random(&h.data_write);
	vhdx_header_build(buf + VHDX_HEADER1_OFF, &h);
	h.seq = 2;
	vhdx_header_build(buf + VHDX_HEADER2_OFF, &h);
	ret = meta_pwrite(fd, buf, VHDX_MiB, 0);
	free(buf);
	return ret;
}

static int write_region_tables(int fd, uint64_t bat_len)
{
	uint8_t *rt = calloc(1, VHDX_RT_SIZE);
	int ret;

	if (!rt)
		return -ENOMEM;
	memcpy(rt, "regi", 4);
	put_le32(rt + 8, 2);
	memcpy(rt + 16, vhdx_guid_bat.b, 16);
	put_le64(rt + 32, C_BAT_OFF);
	put_le32(rt + 40, bat_len);
	put_le32(rt + 44, 1);
	memcpy(rt + 48, vhdx_guid_meta.b, 16);
	put_le64(rt + 64, C_META_OFF);
	put_le32(rt + 72, C_META_LEN);
	put_le32(rt + 76, 1);
	put_le32(rt + 4, vhdx_checksum(rt, VHDX_RT_SIZE, 4));
	ret = meta_pwrite(fd, rt, VHDX_RT_SIZE, VHDX_RT1_OFF);
	if (!ret)
		ret = meta_pwrite(fd, rt, VHDX_RT_SIZE, VHDX_RT2_OFF);
	free(rt);
	return ret;
}

static int write_image(int fd, const struct cparams *p)
{
	uint64_t cr = ((1ull << 23) * p->lss) / p->bs;
	uint64_t nblocks = (p->size + p->bs - 1) / p->bs;
	uint64_t nchunks = (nblocks + cr - 1) / cr;
	uint64_t bat_len = ALIGN_UP(nchunks * (cr + 1) * 8, VHDX_MiB);
	uint64_t data_off = C_BAT_OFF + bat_len;
	uint64_t end = p->fixed ? data_off + nblocks * p->bs : data_off;
	int ret;

	if (bat_len > UINT32_MAX)
		return -EFBIG;
	ret = meta_ftruncate(fd, end);
	if (!ret)
		ret = write_headers(fd);
	if (!ret)
		ret = write_region_tables(fd, bat_len);
	if (!ret)
		ret = write_metadata(fd, p);
	if (!ret)
		ret = write_bat(fd, p, bat_len, data_off);
	if (!ret)
		ret = meta_fdatasync(fd);
	return ret;
}

/* Path of target relative to the directory dir (both absolute), '\'-separated. */
static char *relative_win(const char *dir, const char *target)
{
	char **d = g_strsplit(dir, "/", -1), **t = g_strsplit(target, "/", -1);
	GString *s = g_string_new(NULL);
	int i = 0;

	while (d[i] && t[i] && !strcmp(d[i], t[i]))
		i++;
	for (int k = i; d[k]; k++)
		if (*d[k])
			g_string_append(s, "..\\");
	if (!s->len)
		g_string_append(s, ".\\");
	for (int k = i; t[k]; k++) {
		g_string_append(s, t[k]);
		if (t[k + 1])
			g_string_append_c(s, '\\');
	}
	g_strfreev(d);
	g_strfreev(t);
	return g_string_free(s, FALSE);
}

static void image_names_free(struct vd_image *img)
{
	for (int i = 0; i < VD_BACKING_MAX_NAMES; i++)
		g_free(img->backing_names[i]);
	g_free(img->backing_fmt);
}

/* Read what a child needs from its parent: size, sector size, block size,
 * DataWriteGuid; dir is the child's directory, absolute. */
static int parent_facts(const char *path, const char *dir, const char *ppath, struct cparams *p)
{
	struct vd_image img = {.path = (char *)ppath, .name = (char *)ppath, .read_only = true};
	char *s;
	struct vhdx *v;
	int ret;

	img.fd = open(ppath, O_RDONLY | O_CLOEXEC);
	if (img.fd < 0) {
		ret = -errno;
		vd_err("%s: cannot open the parent %s: %s", path, ppath, strerror(errno));
		goto out;
	}
	ret = vd_format_vhdx.open(&img);
	if (ret) {
		vd_err("%s: the parent %s is not a usable VHDX image", path, ppath);
		goto out;
	}
	v = img.priv;
	if (!p->size)
		p->size = v->disk_size;
	if (p->lss && p->lss != v->lss) {
		vd_err("%s: parent %s has %u-byte sectors, %u asked", path, ppath, v->lss, p->lss);
		ret = -EINVAL;
	}
	p->lss = v->lss;
	if (!p->bs)
		p->bs = v->block_size;
	p->linkage = v->hdr.data_write;
	vd_format_vhdx.close(&img);
	image_names_free(&img);
	p->rel = relative_win(dir, ppath);
	s = g_strdup_printf("\\\\?\\%s", ppath);
	g_strdelimit(s + 4, "/", '\\');
	p->abs = s;
out:
	if (img.fd >= 0)
		close(img.fd);
	return ret;
}

static int check_params(const char *path, struct cparams *p)
{
	if (!p->lss)
		p->lss = 512;
	if (!p->bs)
		p->bs = C_DEFAULT_BLOCK;
	if (p->bs < VHDX_MiB || p->bs > 256 * VHDX_MiB || (p->bs & (p->bs - 1)) ||
	    (p->lss != 512 && p->lss != 4096)) {
		vd_err("%s: block size %u (power of two, 1-256 MiB) or sector size %u (512, 4096) "
		       "invalid",
		       path, p->bs, p->lss);
		return -EINVAL;
	}
	p->size = ALIGN_UP(p->size, p->lss);
	if (!p->size || p->size > VHDX_MAX_SIZE) {
		vd_err("%s: size %" PRIu64 " invalid (1 byte to 64 TiB)", path, p->size);
		return -EINVAL;
	}
	return 0;
}

int vhdx_create(const char *path, const struct vd_create_opts *o)
{
	struct cparams p = {
		.size = o->size, .bs = o->cluster_size, .lss = o->sector_size, .fixed = o->fixed};
	char *ppath = NULL, *d, *dir;
	int fd, ret = 0;

	if (o->backing) {
		if (o->backing_fmt && strcmp(o->backing_fmt, "vhdx")) {
			vd_err("%s: a VHDX differencing disk needs a VHDX parent", path);
			return -ENOTSUP;
		}
		/* a relative parent is relative to the child's directory, which
		 * may itself be relative to the working directory */
		d = g_path_get_dirname(path);
		dir = g_canonicalize_filename(d, NULL);
		ppath = g_canonicalize_filename(o->backing, dir);
		p.diff = true;
		p.fixed = false;
		ret = parent_facts(path, dir, ppath, &p);
		g_free(d);
		g_free(dir);
	}
	if (!ret)
		ret = check_params(path, &p);
	if (ret)
		goto out;
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, o->mode ? o->mode : 0644);
	if (fd < 0) {
		ret = -errno;
		vd_err("%s: cannot create: %s", path, strerror(errno));
		goto out;
	}
	ret = write_image(fd, &p);
	close(fd);
	if (ret) {
		vd_err("%s: writing the new VHDX image failed: %s", path, strerror(-ret));
		unlink(path);
	}
out:
	g_free(ppath);
	g_free(p.rel);
	g_free(p.abs);
	return ret;
}
