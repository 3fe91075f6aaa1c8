/* vhdx structures patched with fresh CRCs, to build what no Linux tool
 * makes: 4K sectors, dirty logs, corrupt copies (see testlib.h). */
#include <string.h>

#include "util/endian.h"
#include "formats/vhdx.h"
#include "testlib.h"
void t_vhdx_fix_crc(const char *path, uint64_t off, size_t len)
{
	uint8_t *buf = g_malloc(len);

	t_pread(path, buf, len, off);
	put_le32(buf + 4, vhdx_checksum(buf, len, 4));
	t_pwrite(path, buf, len, off);
	g_free(buf);
}

uint64_t t_vhdx_region(const char *path, const uint8_t guid[16])
{
	uint8_t rt[4096];

	t_pread(path, rt, sizeof(rt), VHDX_RT1_OFF);
	for (uint32_t i = 0; i < get_le32(rt + 8) && i < 120; i++)
		if (!memcmp(rt + 16 + 32 * i, guid, 16))
			return get_le64(rt + 16 + 32 * i + 16);
	return 0;
}

uint64_t t_vhdx_meta_item(const char *path, const uint8_t guid[16])
{
	uint64_t meta = t_vhdx_region(path, vhdx_guid_meta.b);
	uint8_t t[4096];

	t_pread(path, t, sizeof(t), meta);
	for (unsigned i = 0; i < get_le16(t + 10) && i < 120; i++)
		if (!memcmp(t + 32 + 32 * i, guid, 16))
			return meta + get_le32(t + 32 + 32 * i + 16);
	return 0;
}

uint64_t t_vhdx_current_header(const char *path)
{
	uint8_t a[16], b[16];

	t_pread(path, a, sizeof(a), VHDX_HEADER1_OFF);
	t_pread(path, b, sizeof(b), VHDX_HEADER2_OFF);
	return get_le64(b + 8) > get_le64(a + 8) ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF;
}

static size_t log_entry_build(uint8_t **out, uint64_t pos, uint64_t seq, uint64_t flushed,
			      uint64_t last, const struct t_vhdx_log_desc *d, unsigned n,
			      const uint8_t guid[16])
{
	size_t dsec = (64 + 32 * (size_t)n + 4095) / 4096, ndata = 0, len;
	uint8_t *buf, *s;

	for (unsigned i = 0; i < n; i++)
		ndata += !d[i].zero;
	len = (dsec + ndata) * 4096;
	buf = g_malloc0(len);
	memcpy(buf, "loge", 4);
	put_le32(buf + 8, len);
	put_le32(buf + 12, pos);
	put_le64(buf + 16, seq);
	put_le32(buf + 24, n);
	memcpy(buf + 32, guid, 16);
	put_le64(buf + 48, flushed);
	put_le64(buf + 56, last);
	s = buf + dsec * 4096;
	for (unsigned i = 0; i < n; i++) {
		uint8_t *e = buf + 64 + 32 * i;

		memcpy(e, d[i].zero ? "zero" : "desc", 4);
		put_le64(e + 16, d[i].off);
		put_le64(e + 24, seq);
		if (d[i].zero) {
			put_le64(e + 8, d[i].len);
			continue;
		}
		memcpy(e + 4, (const uint8_t *)d[i].data + 4092, 4);
		memcpy(e + 8, d[i].data, 8);
		memcpy(s, "data", 4);
		put_le32(s + 4, seq >> 32);
		memcpy(s + 8, (const uint8_t *)d[i].data + 8, 4084);
		put_le32(s + 4092, (uint32_t)seq);
		s += 4096;
	}
	put_le32(buf + 4, vhdx_checksum(buf, len, 4));
	*out = buf;
	return len;
}

void t_vhdx_log_entry(const char *path, uint64_t pos, uint64_t seq, uint64_t flushed, uint64_t last,
		      const struct t_vhdx_log_desc *d, unsigned n)
{
	static const uint8_t guid[16] = {0x4c, 0x6f, 0x67, 0x47, 0x75, 0x69, 0x64, 0x40,
					 0x80, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77};
	uint64_t h = t_vhdx_current_header(path);
	uint8_t hdr[4096], *entry;
	size_t len = log_entry_build(&entry, pos, seq, flushed, last, d, n, guid);

	t_pread(path, hdr, sizeof(hdr), h);
	t_pwrite(path, entry, len, get_le64(hdr + 72) + pos);
	memcpy(hdr + 48, guid, 16);
	put_le32(hdr + 4, vhdx_checksum(hdr, sizeof(hdr), 4));
	t_pwrite(path, hdr, sizeof(hdr), h);
	g_free(entry);
}
