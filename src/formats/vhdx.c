/* The VHDX driver: probing, CRC-32C and GUIDs, choosing the current header,
 * open/close/info and the ops table. The region and metadata tables live in
 * vhdx-meta.c, the log in vhdx-log.c, the BAT in vhdx-bat.c, the map in
 * vhdx-map.c. */
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

const vhdx_guid vhdx_guid_bat = {{0x66, 0x77, 0xc2, 0x2d, 0x23, 0xf6, 0x00, 0x42, 0x9d, 0x64, 0x11,
				  0x5e, 0x9b, 0xfd, 0x4a, 0x08}};
const vhdx_guid vhdx_guid_meta = {{0x06, 0xa2, 0x7c, 0x8b, 0x90, 0x47, 0x9a, 0x4b, 0xb8, 0xfe, 0x57,
				   0x5f, 0x05, 0x0f, 0x88, 0x6e}};
const vhdx_guid vhdx_guid_file_params = {{0x37, 0x67, 0xa1, 0xca, 0x36, 0xfa, 0x43, 0x4d, 0xb3,
					  0xb6, 0x33, 0xf0, 0xaa, 0x44, 0xe7, 0x6b}};
const vhdx_guid vhdx_guid_disk_size = {{0x24, 0x42, 0xa5, 0x2f, 0x1b, 0xcd, 0x76, 0x48, 0xb2, 0x11,
					0x5d, 0xbe, 0xd8, 0x3b, 0xf4, 0xb8}};
const vhdx_guid vhdx_guid_page83 = {{0xab, 0x12, 0xca, 0xbe, 0xe6, 0xb2, 0x23, 0x45, 0x93, 0xef,
				     0xc3, 0x09, 0xe0, 0x00, 0xc7, 0x46}};
const vhdx_guid vhdx_guid_lss = {{0x1d, 0xbf, 0x41, 0x81, 0x6f, 0xa9, 0x09, 0x47, 0xba, 0x47, 0xf2,
				  0x33, 0xa8, 0xfa, 0xab, 0x5f}};
const vhdx_guid vhdx_guid_pss = {{0xc7, 0x48, 0xa3, 0xcd, 0x5d, 0x44, 0x71, 0x44, 0x9c, 0xc9, 0xe9,
				  0x88, 0x52, 0x51, 0xc5, 0x56}};
const vhdx_guid vhdx_guid_parent_locator = {{0x2d, 0x5f, 0xd3, 0xa8, 0x0b, 0xb3, 0x4d, 0x45, 0xab,
					     0xf7, 0xd3, 0xd8, 0x48, 0x34, 0xab, 0x0c}};
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

	snprintf(out, 39, "{%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x}",
		 b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12],
		 b[13], b[14], b[15]);
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
		vd_err("%s: parent %s has DataWriteGuid %s, the parent locator wants %s", img->path,
		       parent->path, have, want);
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
