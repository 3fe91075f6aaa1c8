/* VHDX reads: images qemu-img makes (dynamic and fixed, block sizes 1 to
 * 256 MiB, block_state_zero on and off, sparse > 4 GiB with data above 4 GiB)
 * read like `qemu-img convert -O raw`; header and region-table choice; a
 * QEMU log left dirty is replayed; a hostile log is refused before anything
 * is written; 4K-sector images; bad images refused. */
#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/stat.h>

#include "util/compiler.h"
#include "util/endian.h"
#include "util/log.h"

#include "testlib.h"
#include "formats/vhdx.h"

/* Make NAME with qemu-img, write patterns with qemu-io, convert to NAME.raw. */
static char *qemu_image(const char *name, const char *opts, const char *size, const char *io)
{
	t_sh("qemu-img create -q -f vhdx -o %s %s %s", opts, name, size);
	if (io)
		t_sh("qemu-io -f vhdx %s %s", io, name);
	t_sh("qemu-img convert -f vhdx -O raw %s %s.raw", name, name);
	return t_path(name);
}

static void compare_whole(const char *path)
{
	struct vd_image *img;
	char *raw = g_strdup_printf("%s.raw", path);

	g_assert_cmpint(t_open(path, true, &img), ==, 0);
	g_assert_cmpstr(img->fmt->name, ==, "vhdx");
	t_compare(img, raw, 0, img->size);
	image_unref(img);
	g_free(raw);
}

static const char *patterns =
	"-c 'write -P 0xa1 0 4k' -c 'write -P 0xb2 1000k 2M' -c 'write -P 0xc3 20M 300k' "
	"-c 'write -P 0xd4 63M 1M'";

static void test_block_sizes(void)
{
	static const char *const bs[] = {"1M", "8M", "32M", "256M"};

	for (unsigned i = 0; i < G_N_ELEMENTS(bs); i++) {
		char name[64], opts[128];
		char *p;

		g_snprintf(name, sizeof(name), "dyn-%s.vhdx", bs[i]);
		g_snprintf(opts, sizeof(opts), "block_size=%s", bs[i]);
		p = qemu_image(name, opts, "64M", patterns);
		compare_whole(p);
		g_free(p);
		g_snprintf(name, sizeof(name), "fixed-%s.vhdx", bs[i]);
		g_snprintf(opts, sizeof(opts), "subformat=fixed,block_state_zero=off,block_size=%s",
			   bs[i]);
		p = qemu_image(name, opts, "64M", patterns);
		compare_whole(p);
		g_free(p);
	}
}

static void test_block_state_zero(void)
{
	char *a = qemu_image("bsz-on.vhdx", "block_size=1M,block_state_zero=on", "16M",
			     "-c 'write -P 0x11 3M 1536k'");
	char *b = qemu_image("bsz-off.vhdx", "block_size=1M,block_state_zero=off", "16M",
			     "-c 'write -P 0x22 3M 1536k'");
	char *c = qemu_image("fixed-zero.vhdx", "subformat=fixed,block_size=1M", "16M",
			     "-c 'write -P 0x33 5M 4k'");

	compare_whole(a);
	compare_whole(b);
	compare_whole(c);
	g_free(a);
	g_free(b);
	g_free(c);
}

/* Past 4 GiB the BAT interleaves a sector-bitmap entry every chunk. */
static void test_above_4g(void)
{
	char *p = qemu_image("big.vhdx", "block_size=1M", "9G",
			     "-c 'write -P 0x5a 4095M 2M' -c 'write -P 0x5b 5G 1M' "
			     "-c 'write -P 0x5c 8200M 3M' -c 'write -P 0x5d 9215M 1M'");
	char *raw = g_strdup_printf("%s.raw", p);
	struct vd_image *img;
	uint64_t G = 1ull << 30, M = 1 << 20;

	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	t_compare(img, raw, 0, 8 * M);
	t_compare(img, raw, 4 * G - 8 * M, 16 * M);
	t_compare(img, raw, 5 * G - 4 * M, 8 * M);
	t_compare(img, raw, 8200 * M - 2 * M, 8 * M);
	t_compare(img, raw, 9 * G - 16 * M, 16 * M);
	image_unref(img);
	g_free(raw);
	g_free(p);
}

static void test_block_status(void)
{
	char *p = qemu_image("bs.vhdx", "block_size=1M", "16M", "-c 'write -P 0x44 2M 1M'");
	struct vd_image *img;
	uint64_t pnum;
	enum vd_bs st;

	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	g_assert_cmpint(image_block_status(img, 0, img->size, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	g_assert_cmpuint(pnum, ==, 2 << 20);
	g_assert_cmpint(image_block_status(img, 2 << 20, img->size - (2 << 20), &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpuint(pnum, ==, 1 << 20);
	image_unref(img);
	g_free(p);
}

/* ---- headers and region tables ---- */

static void corrupt(const char *path, uint64_t off)
{
	uint8_t b;

	t_pread(path, &b, 1, off);
	b ^= 0xff;
	t_pwrite(path, &b, 1, off);
}

static void test_one_bad_header(void)
{
	char *p = qemu_image("h1.vhdx", "block_size=1M", "8M", "-c 'write -P 0x61 1M 64k'");

	uint64_t cur = t_vhdx_current_header(p);

	corrupt(p, cur + 100);
	compare_whole(p);
	/* Both bad: refused. */
	corrupt(p, cur == VHDX_HEADER1_OFF ? VHDX_HEADER2_OFF + 100 : VHDX_HEADER1_OFF + 100);
	{
		struct vd_image *img;
		g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	}
	g_free(p);
}

static void test_identical_headers(void)
{
	char *p = qemu_image("same.vhdx", "block_size=1M", "8M", "-c 'write -P 0x62 1M 64k'");
	uint8_t h[4096];
	struct vd_image *img;

	t_pread(p, h, sizeof(h), t_vhdx_current_header(p));
	t_pwrite(p, h, sizeof(h), VHDX_HEADER1_OFF);
	t_pwrite(p, h, sizeof(h), VHDX_HEADER2_OFF);
	compare_whole(p);
	/* Same sequence number but different contents: refused. */
	h[200] ^= 1;
	put_le32(h + 4, vhdx_checksum(h, sizeof(h), 4));
	t_pwrite(p, h, sizeof(h), VHDX_HEADER2_OFF);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	g_free(p);
}

static void test_region_table_fallback(void)
{
	char *p = qemu_image("rt.vhdx", "block_size=1M", "8M", "-c 'write -P 0x63 2M 64k'");
	struct vd_image *img;

	corrupt(p, VHDX_RT1_OFF + 20);
	compare_whole(p);
	corrupt(p, VHDX_RT2_OFF + 20);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	g_free(p);
}

static void add_region(const char *p, bool required)
{
	uint8_t rt[VHDX_RT_SIZE];
	uint32_t n;

	t_pread(p, rt, sizeof(rt), VHDX_RT1_OFF);
	n = get_le32(rt + 8);
	memset(rt + 16 + 32 * n, 0x7e, 16);
	put_le64(rt + 16 + 32 * n + 16, 100ull << 20);
	put_le32(rt + 16 + 32 * n + 24, 1 << 20);
	put_le32(rt + 16 + 32 * n + 28, required);
	put_le32(rt + 8, n + 1);
	put_le32(rt + 4, vhdx_checksum(rt, sizeof(rt), 4));
	t_pwrite(p, rt, sizeof(rt), VHDX_RT1_OFF);
}

static void test_unknown_regions(void)
{
	char *p = qemu_image("ur.vhdx", "block_size=1M", "8M", "-c 'write -P 0x64 0 64k'");
	struct vd_image *img;

	add_region(p, false);
	compare_whole(p);
	g_free(p);
	p = qemu_image("ur2.vhdx", "block_size=1M", "8M", NULL);
	add_region(p, true);
	g_assert_cmpint(t_open(p, true, &img), ==, -ENOTSUP);
	g_free(p);
}

static void add_meta_item(const char *p, uint32_t flags)
{
	uint64_t meta = t_vhdx_region(p, vhdx_guid_meta.b);
	uint8_t t[4096];
	uint16_t n;

	t_pread(p, t, sizeof(t), meta);
	n = get_le16(t + 10);
	memset(t + 32 + 32 * n, 0x5c, 16);
	put_le32(t + 32 + 32 * n + 16, 128 << 10);
	put_le32(t + 32 + 32 * n + 20, 8);
	put_le32(t + 32 + 32 * n + 24, flags);
	put_le16(t + 10, n + 1);
	t_pwrite(p, t, sizeof(t), meta);
}

static void test_unknown_metadata(void)
{
	char *p = qemu_image("um.vhdx", "block_size=1M", "8M", "-c 'write -P 0x65 0 64k'");
	struct vd_image *img;

	add_meta_item(p, 2); /* optional: ignored and kept */
	compare_whole(p);
	g_free(p);
	p = qemu_image("um2.vhdx", "block_size=1M", "8M", NULL);
	add_meta_item(p, 4); /* required */
	g_assert_cmpint(t_open(p, true, &img), ==, -ENOTSUP);
	g_free(p);
}

static void test_bad_params(void)
{
	struct {
		const uint8_t *guid;
		uint32_t off, val;
	} cases[] = {
		{vhdx_guid_file_params.b, 0, 3 << 20},	 /* block size not a power of two */
		{vhdx_guid_file_params.b, 0, 512 << 20}, /* too large */
		{vhdx_guid_file_params.b, 4, 8},	 /* reserved flag */
		{vhdx_guid_lss.b, 0, 1024},
		{vhdx_guid_pss.b, 0, 0},
		{vhdx_guid_disk_size.b, 0, 1000}, /* not a multiple of 512 */
	};

	for (unsigned i = 0; i < G_N_ELEMENTS(cases); i++) {
		char name[32];
		char *p;
		uint8_t v[4];
		struct vd_image *img;

		g_snprintf(name, sizeof(name), "bp%u.vhdx", i);
		p = qemu_image(name, "block_size=1M", "8M", NULL);
		put_le32(v, cases[i].val);
		t_pwrite(p, v, 4, t_vhdx_meta_item(p, cases[i].guid) + cases[i].off);
		g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
		g_free(p);
	}
}

static void test_bat_past_eof(void)
{
	char *p = qemu_image("eof.vhdx", "block_size=1M", "8M",
			     "-c 'write -P 0x66 0 1M' -c 'write -P 0x67 5M 1M'");
	struct vd_image *img;
	uint8_t e[8];
	uint64_t bat = t_vhdx_region(p, vhdx_guid_bat.b);
	struct stat st;

	/* A block pointing into the log, then one past the end of the file. */
	t_pread(p, e, 8, bat);
	put_le64(e, (1ull << 20) | VHDX_BAT_FULLY_PRESENT);
	t_pwrite(p, e, 8, bat);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	g_assert_cmpint(stat(p, &st), ==, 0);
	put_le64(e, ALIGN_UP((uint64_t)(st.st_size + 1), 1 << 20) | VHDX_BAT_FULLY_PRESENT);
	t_pwrite(p, e, 8, bat);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	/* Reserved bits. */
	put_le64(e, VHDX_BAT_ZERO | 0x100);
	t_pwrite(p, e, 8, bat);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	/* Truncated file: the second block is cut off. */
	put_le64(e, VHDX_BAT_ZERO);
	t_pwrite(p, e, 8, bat);
	g_assert_cmpint(truncate(p, st.st_size - (3 << 20)), ==, 0);
	g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
	g_free(p);
}

static void test_garbage(void)
{
	struct vd_image *img;

	/* Random bytes after the identifier: no valid header, refused cleanly. */
	t_sh("{ printf vhdxfile; head -c 4M /dev/urandom; } > junk.vhdx");
	{
		char *p = t_path("junk.vhdx");
		g_assert_cmpint(t_open(p, true, &img), ==, -EINVAL);
		g_free(p);
	}
}

/* ---- a log QEMU left behind ---- */

/* QEMU leaves its last log entry in the ring: point the header at its GUID
 * and put the BAT page back as it was before the entry, as after a crash
 * between the log write and its application. */
static char *dirty_image(void)
{
	char *p = qemu_image("dirty.vhdx", "block_size=1M", "16M", NULL);
	uint64_t bat = t_vhdx_region(p, vhdx_guid_bat.b), h = t_vhdx_current_header(p);
	uint8_t page[4096], hdr[4096], log[4096];

	t_pread(p, page, sizeof(page), bat);
	t_sh("qemu-io -f vhdx -c 'write -P 0xa5 3M 512k' -c 'write -P 0xa6 7M 4k' dirty.vhdx");
	t_sh("qemu-img convert -f vhdx -O raw dirty.vhdx dirty.vhdx.raw");
	h = t_vhdx_current_header(p);
	t_pread(p, hdr, sizeof(hdr), h);
	/* The second write's entry follows the first one in the ring. */
	for (uint64_t off = 0;; off += 4096) {
		g_assert_cmpuint(off, <, 1 << 20);
		t_pread(p, log, sizeof(log), get_le64(hdr + 72) + off);
		if (!memcmp(log, "loge", 4) && get_le64(log + 16) == 2)
			break;
	}
	memcpy(hdr + 48, log + 32, 16); /* LogGuid of that entry */
	put_le64(hdr + 8, get_le64(hdr + 8) + 1);
	put_le32(hdr + 4, vhdx_checksum(hdr, sizeof(hdr), 4));
	t_pwrite(p, hdr, sizeof(hdr), h == VHDX_HEADER1_OFF ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF);
	t_pwrite(p, page, sizeof(page), bat);
	return p;
}

static void test_dirty_log(void)
{
	char *p = dirty_image();
	char *raw = g_strdup_printf("%s.raw", p);
	struct vd_image *img;

	/* Read-only: refused with a hint. */
	g_assert_cmpint(t_open(p, true, &img), ==, -EPERM);
	/* Read-write: replayed at open, the data shows. */
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	t_compare(img, raw, 0, img->size);
	image_unref(img);
	g_assert_cmpint(t_sh_rc("qemu-img check -q dirty.vhdx"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img compare -q dirty.vhdx dirty.vhdx.raw"), ==, 0);
	compare_whole(p);
	g_free(raw);
	g_free(p);
}

/* ---- hostile logs: every target checked before anything is written ---- */

static uint64_t file_size(const char *path)
{
	struct stat st;

	g_assert_cmpint(stat(path, &st), ==, 0);
	return st.st_size;
}

/* Size and SHA-256 of a file (the size first: a runaway replay makes it huge). */
static char *file_digest(const char *path)
{
	uint64_t size = file_size(path);
	gchar *buf, *sum, *d;
	gsize len;

	g_assert_cmpuint(size, <, 64 << 20);
	g_assert_true(g_file_get_contents(path, &buf, &len, NULL));
	sum = g_compute_checksum_for_data(G_CHECKSUM_SHA256, (const guchar *)buf, len);
	d = g_strdup_printf("%" G_GSIZE_FORMAT " %s", len, sum);
	g_free(buf);
	g_free(sum);
	return d;
}

struct log_image {
	char *path;
	uint64_t size, bat, meta, log; /* file size, BAT, metadata and log offsets */
};

/* A fresh copy of a small dynamic image with data in blocks 0 and 3. */
static void log_image(struct log_image *li, const char *name)
{
	uint8_t hdr[4096];

	if (t_sh_rc("test -e logbase.vhdx"))
		qemu_image("logbase.vhdx", "block_size=1M", "16M",
			   "-c 'write -P 0x31 0 64k' -c 'write -P 0x32 3M 1M'");
	t_sh("cp logbase.vhdx %s", name);
	li->path = t_path(name);
	li->size = file_size(li->path);
	li->bat = t_vhdx_region(li->path, vhdx_guid_bat.b);
	li->meta = t_vhdx_region(li->path, vhdx_guid_meta.b);
	t_pread(li->path, hdr, sizeof(hdr), t_vhdx_current_header(li->path));
	li->log = get_le64(hdr + 72);
}

/* The offsets of the image log_image() copies (no copy kept). */
static void log_layout(struct log_image *li)
{
	log_image(li, "probe.vhdx");
	g_free(li->path);
	li->path = NULL;
}

/* The image with this log entry is refused, read-only or not, with a message
 * that has want in it, and the file is left as it was. */
static void log_refused(const char *name, uint64_t flushed, uint64_t last,
			const struct t_vhdx_log_desc *d, unsigned n, const char *want)
{
	struct log_image li;
	struct vd_image *img = NULL;
	char *before, *after;

	log_image(&li, name);
	t_vhdx_log_entry(li.path, 0, 7, flushed, last, d, n);
	before = file_digest(li.path);
	for (int ro = 1; ro >= 0; ro--) {
		g_assert_cmpint(t_open(li.path, ro, &img), ==, -EINVAL);
		if (!strstr(vd_log_last_error(), want))
			g_error("%s: message \"%s\" lacks \"%s\"", name, vd_log_last_error(), want);
		g_assert_nonnull(strstr(vd_log_last_error(), "log entry at 0x0 of the log"));
	}
	after = file_digest(li.path);
	g_assert_cmpstr(before, ==, after);
	g_free(before);
	g_free(after);
	g_free(li.path);
}

static uint8_t log_page[4096];

/* A data descriptor writing log_page at off, a zero run of len at off. */
static struct t_vhdx_log_desc data_at(uint64_t off)
{
	return (struct t_vhdx_log_desc){.off = off, .data = log_page};
}

static struct t_vhdx_log_desc zero_at(uint64_t off, uint64_t len)
{
	return (struct t_vhdx_log_desc){.zero = true, .off = off, .len = len};
}

static void test_log_targets(void)
{
	struct log_image li;
	uint64_t s, b;

	log_layout(&li);
	s = li.size;
	b = li.bat;
	memset(log_page, 0x5a, sizeof(log_page));
	/* As in the two repro images: a 256 MiB zero run, a data sector at 1 TiB. */
	log_refused("zero256m.vhdx", s, s,
		    (struct t_vhdx_log_desc[]){data_at(b), zero_at(b + 4096, 256 << 20)}, 2,
		    "descriptor 1 (zero): FileOffset 0x");
	log_refused("data1t.vhdx", s, s, (struct t_vhdx_log_desc[]){data_at(1ull << 40)}, 1,
		    "descriptor 0 (data): FileOffset 0x10000000000 ends past LastFileOffset");
	/* Past the entry's LastFileOffset, though inside the file. */
	log_refused("pastlast.vhdx", li.meta, li.meta, (struct t_vhdx_log_desc[]){data_at(li.meta)},
		    1, "ends past LastFileOffset");
	/* Wrapping around 2^64. */
	log_refused("wrap.vhdx", s, s, (struct t_vhdx_log_desc[]){zero_at(-4096ull * 2, 8192 * 2)},
		    1, "ends past LastFileOffset");
	/* The header section: a region table, a header. */
	log_refused("rt.vhdx", s, s, (struct t_vhdx_log_desc[]){data_at(b), data_at(VHDX_RT1_OFF)},
		    2, "descriptor 1 (data): FileOffset 0x30000 lies in the header section");
	log_refused("hdr.vhdx", s, s, (struct t_vhdx_log_desc[]){zero_at(0, 1 << 20)}, 1,
		    "lies in the header section");
	/* The log itself. */
	log_refused("log.vhdx", s, s, (struct t_vhdx_log_desc[]){data_at(li.log + (64 << 10))}, 1,
		    "lies in the log at 0x100000");
	/* Across the end of the BAT region into the next MiB. */
	log_refused("straddle.vhdx", s, s,
		    (struct t_vhdx_log_desc[]){zero_at(b + (1 << 20) - 4096, 8192)}, 1,
		    "straddles the edge of the BAT region");
	/* Outside the regions: one 1 MiB block (a sector bitmap) at most. */
	log_refused("span.vhdx", s, s + (4 << 20), (struct t_vhdx_log_desc[]){zero_at(s, 2 << 20)},
		    1, "spans more than one 1 MiB block outside the regions");
	log_refused("empty.vhdx", s, s, (struct t_vhdx_log_desc[]){zero_at(b, 0)}, 1,
		    "descriptor 0 (zero): FileOffset 0x200000 + ZeroLength 0x0 is empty");
}

static void test_log_sizes(void)
{
	struct t_vhdx_log_desc *d = g_new0(struct t_vhdx_log_desc, 1025);
	struct log_image li;

	log_layout(&li);
	d[0] = data_at(li.bat);
	log_refused("flushed.vhdx", li.size, li.size - (1 << 20), d, 1, "is past LastFileOffset");
	log_refused("grow.vhdx", li.size, li.size + (4ull << 30) + (1 << 20), d, 1,
		    "is more than 4 GiB past FlushedFileOffset");
	log_refused("short.vhdx", li.size + (1 << 20), li.size + (1 << 20), d, 1,
		    "shorter than its FlushedFileOffset");
	/* 1025 zero runs of 1 MiB over the BAT: more than 1 GiB to write. */
	for (unsigned i = 0; i < 1025; i++)
		d[i] = zero_at(li.bat, 1 << 20);
	log_refused("budget.vhdx", li.size, li.size, d, 1025,
		    "descriptor 1024 (zero): the sequence writes more than 1024 MiB");
	g_free(d);
}

/* A log that extends the file to its LastFileOffset: a crash after a block
 * was allocated and its first 4 KiB written, before the end of the block and
 * the BAT entry were stable. The replay extends the file to 2 MiB past the
 * block (a zero run past the end of the file is not written), the block
 * reads back, and QEMU agrees. */
static void test_log_extends_file(void)
{
	char *p = qemu_image("ext.vhdx", "block_size=1M", "16M", "-c 'write -P 0x44 5M 4k'");
	uint64_t bat = t_vhdx_region(p, vhdx_guid_bat.b), blk;
	uint8_t page[4096], old[4096];
	struct t_vhdx_log_desc d[2];
	struct vd_image *img;
	char *raw;

	t_pread(p, page, sizeof(page), bat);
	blk = VHDX_BAT_OFF(get_le64(page + 5 * 8));
	g_assert_cmpuint(blk + (1 << 20), ==, file_size(p));
	memcpy(old, page, sizeof(old));
	put_le64(old + 5 * 8, VHDX_BAT_ZERO);
	t_pwrite(p, old, sizeof(old), bat);
	g_assert_cmpint(truncate(p, blk + 4096), ==, 0);
	d[0] = (struct t_vhdx_log_desc){.off = bat, .data = page};
	d[1] = (struct t_vhdx_log_desc){.zero = true, .off = blk + (1 << 20), .len = 1 << 20};
	t_vhdx_log_entry(p, 0, 3, blk, blk + (2 << 20), d, 2);
	g_assert_cmpint(t_open(p, true, &img), ==, -EPERM);
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	raw = t_path("ext.vhdx.raw");
	t_compare(img, raw, 0, img->size);
	image_unref(img);
	g_free(raw);
	g_assert_cmpuint(file_size(p), ==, blk + (2 << 20));
	g_assert_cmpint(t_sh_rc("qemu-img check -q ext.vhdx"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img compare -q -f vhdx -F raw ext.vhdx ext.vhdx.raw"), ==, 0);
	g_free(p);
}

/* The log is read whole at open: one over 1 GiB is refused. */
static void test_log_limit(void)
{
	char *p = qemu_image("biglog.vhdx", "block_size=1M,log_size=1025M", "16M", NULL);
	uint64_t h = t_vhdx_current_header(p);
	uint8_t hdr[4096];
	struct vd_image *img;

	t_pread(p, hdr, sizeof(hdr), h);
	memset(hdr + 48, 0x4c, 16); /* a LogGuid: the log must be replayed */
	put_le32(hdr + 4, vhdx_checksum(hdr, sizeof(hdr), 4));
	t_pwrite(p, hdr, sizeof(hdr), h);
	g_assert_cmpint(t_open(p, false, &img), ==, -ENOTSUP);
	g_assert_nonnull(strstr(vd_log_last_error(), "larger than the limit of 1024 MiB"));
	g_free(p);
}

/* ---- 4K logical sectors ---- */

static void test_4k_patched(void)
{
	char *p = qemu_image("4k.vhdx", "block_size=1M,block_state_zero=off", "6G", NULL);
	uint8_t v[4], *buf = g_malloc(3 << 20), *back = g_malloc(3 << 20);
	struct vd_image *img;

	put_le32(v, 4096);
	t_pwrite(p, v, 4, t_vhdx_meta_item(p, vhdx_guid_lss.b));
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	g_assert_cmpuint(img->zero_align, ==, 4096);
	t_pattern(buf, 3 << 20, 0, 7);
	g_assert_cmpint(image_pwrite_wait(img, buf, 3 << 20, (5ull << 30) + 12345), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, 4096, 0), ==, 0);
	image_unref(img);
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	g_assert_cmpint(image_pread_wait(img, back, 3 << 20, (5ull << 30) + 12345), ==, 0);
	g_assert_cmpmem(buf, 3 << 20, back, 3 << 20);
	g_assert_cmpint(image_pread_wait(img, back, 8192, 0), ==, 0);
	g_assert_cmpmem(buf, 4096, back, 4096);
	g_assert_cmpint(back[4096] | back[8191], ==, 0);
	image_unref(img);
	g_free(buf);
	g_free(back);
	g_free(p);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	t_add_qemu("/vhdx/read/block-sizes", test_block_sizes);
	t_add_qemu("/vhdx/read/block-state-zero", test_block_state_zero);
	t_add_qemu("/vhdx/read/above-4g", test_above_4g);
	t_add_qemu("/vhdx/read/block-status", test_block_status);
	t_add_qemu("/vhdx/read/one-bad-header", test_one_bad_header);
	t_add_qemu("/vhdx/read/identical-headers", test_identical_headers);
	t_add_qemu("/vhdx/read/region-table-fallback", test_region_table_fallback);
	t_add_qemu("/vhdx/read/unknown-regions", test_unknown_regions);
	t_add_qemu("/vhdx/read/unknown-metadata", test_unknown_metadata);
	t_add_qemu("/vhdx/read/bad-params", test_bad_params);
	t_add_qemu("/vhdx/read/bat-past-eof", test_bat_past_eof);
	g_test_add_func("/vhdx/read/garbage", test_garbage);
	t_add_qemu("/vhdx/read/dirty-log", test_dirty_log);
	t_add_qemu("/vhdx/read/log-targets", test_log_targets);
	t_add_qemu("/vhdx/read/log-sizes", test_log_sizes);
	t_add_qemu("/vhdx/read/log-extends-file", test_log_extends_file);
	t_add_qemu("/vhdx/read/log-limit", test_log_limit);
	t_add_qemu("/vhdx/read/4k-sectors", test_4k_patched);
	return t_run();
}
