/* qcow2 reads against qemu-img's own answer (`qemu-img convert -O raw`) for
 * every fixture, and hostile or broken images: each refused at open with a
 * message or answered with EIO, never a crash. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "testlib.h"
#include "util/log.h"

/* image_open's answer for name: 0 (the image closed again) or -errno. */
static int img_open_err(const char *name, bool ro)
{
	struct vd_image *img = NULL;
	int ret = t_open(name, ro, &img);

	if (!ret)
		image_unref(img);
	return ret;
}

/* The qemu-made name.qcow2 reads as its reference name.raw. */
static void check_fixture(const char *name)
{
	char *q = g_strdup_printf("%s.qcow2", name), *r = g_strdup_printf("%s.raw", name);
	struct vd_image *img = t_open_ok(q, true);

	t_compare_raw(img, r);
	image_unref(img);
	g_free(q);
	g_free(r);
}

static void test_cluster_sizes(void)
{
	for (int cb = 9; cb <= 21; cb++) {
		char *n = g_strdup_printf("c%d", 1 << cb);
		check_fixture(n);
		g_free(n);
	}
}

static void test_refcount_widths(void)
{
	static const int w[] = {1, 2, 4, 8, 32, 64};

	for (unsigned i = 0; i < G_N_ELEMENTS(w); i++) {
		char *n = g_strdup_printf("rc%d", w[i]);
		check_fixture(n);
		g_free(n);
	}
}

static void test_fixture(gconstpointer name)
{
	check_fixture(name);
}

static void test_prealloc(void)
{
	check_fixture("prealloc-off");
	check_fixture("prealloc-metadata");
	check_fixture("prealloc-falloc");
	check_fixture("prealloc-full");
}

/* 6 GiB: the regions with data, and the ends, not every byte. */
static void test_big(void)
{
	struct vd_image *img = t_open_ok("big.qcow2", true);
	char *p = t_path("big.raw");
	int fd = open(p, O_RDONLY);
	uint64_t g = 1ull << 30;

	g_assert_cmpuint(img->size, ==, 6 * g);
	t_compare_fd(img, fd, 0, 1 << 20);
	t_compare_fd(img, fd, 5 * g - 65536, (1 << 20) + 131072);
	t_compare_fd(img, fd, 4 * g - 65536, 131072);
	t_compare_fd(img, fd, 6 * g - (1 << 20), 1 << 20);
	close(fd);
	g_free(p);
	image_unref(img);
}

static void test_info_block_status(void)
{
	struct vd_image *img = t_open_ok("top.qcow2", true);
	uint64_t pnum;
	enum vd_bs st;

	/* 4k..8k written in top: data; 0..4k from mid -> base: data through the chain */
	g_assert_cmpint(image_block_status(img, 4096, 4096, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpint(img->fmt->block_status(img, 0, 65536, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA); /* the whole 64k cluster is allocated in top */
	g_assert_cmpint(img->fmt->block_status(img, 2560 << 10, 65536, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	g_assert_cmpint(img->fmt->block_status(img, 3 << 20, 65536, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_UNALLOC);
	/* past the 3 MiB raw base and the 4 MiB mid: zeroes */
	g_assert_cmpint(image_block_status(img, (4 << 20) + 65536, 65536, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	image_unref(img);
}

/* ---- broken images ---- */

static void put_be64(const char *name, uint64_t off, uint64_t v)
{
	char *p = t_path(name);
	int fd = open(p, O_RDWR);

	v = GUINT64_TO_BE(v);
	g_assert_cmpint(pwrite(fd, &v, 8, off), ==, 8);
	close(fd);
	g_free(p);
}

static void put_be32(const char *name, uint64_t off, uint32_t v)
{
	char *p = t_path(name);
	int fd = open(p, O_RDWR);

	v = GUINT32_TO_BE(v);
	g_assert_cmpint(pwrite(fd, &v, 4, off), ==, 4);
	close(fd);
	g_free(p);
}

static const char *fresh_copy(const char *from)
{
	static char name[64];
	static int n;

	snprintf(name, sizeof(name), "bad%d.qcow2", n++);
	t_sh("cp '%s' '%s'", from, name);
	return name;
}

/* Refused at open with err, and the error logged names the problem. */
static void refused(const char *name, int err, const char *msg)
{
	vd_log_clear_error();
	g_assert_cmpint(img_open_err(name, true), ==, err);
	if (!strstr(vd_log_last_error(), msg)) {
		g_printerr("%s: logged \"%s\", expected it to contain \"%s\"\n", name,
			   vd_log_last_error(), msg);
		g_assert_not_reached();
	}
}

/* The offset of the first header extension of type type (its 8-byte header). */
static uint64_t find_ext(const char *name, uint32_t type)
{
	uint64_t pos = t_get_be64(name, 96) & 0xffffffff; /* header_length */

	for (int i = 0; i < 64; i++) {
		uint64_t h = t_get_be64(name, pos);
		if (h >> 32 == type)
			return pos;
		g_assert_cmpuint(h >> 32, !=, 0);
		pos += 8 + (((h & 0xffffffff) + 7) & ~7ull);
	}
	g_assert_not_reached();
}

/* A damaged bitmap directory or table is refused at open, naming the entry. */
static void test_bitmap_dir_damage(void)
{
	const char *b = fresh_copy("bitmap.qcow2");
	uint64_t dir = t_get_be64(b, find_ext(b, 0x23852875) + 24);
	uint64_t w = t_get_be64(b, dir + 16) >> 32; /* type, granularity_bits, name_size */

	put_be32(b, dir + 16, (w & 0xff00ffff) | 40u << 16);
	refused(b, -EINVAL, "bitmap directory at 0x");
	g_assert_cmpstr(strstr(vd_log_last_error(), "entry 0 (offset 0) has a granularity outside"),
			!=, NULL);

	b = fresh_copy("bitmap.qcow2");
	put_be32(b, dir + 16, (w & 0x00ffffff) | 2u << 24);
	refused(b, -EINVAL, "entry 0 (offset 0) has an unknown bitmap type");

	b = fresh_copy("bitmap.qcow2");
	put_be64(b, t_get_be64(b, dir), 1ull << 60); /* reserved bits in table entry 0 */
	refused(b, -EINVAL, "table entry 0 at 0x");
}

static void test_bad_headers(void)
{
	const char *b;

	b = fresh_copy("c65536.qcow2");
	t_sh("truncate -s 100 %s", b);
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	t_sh("truncate -s 196608 %s", b); /* L1 cut off */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 40, 0x40000000); /* L1 past EOF */
	refused(b, -EINVAL, "L1 table at 0x40000000 (8 bytes) runs past the end of the file");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 40, 0x30008); /* L1 unaligned */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 48, 0x7fff0000); /* refcount table past EOF */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 48, 0x10200); /* refcount table unaligned */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 40, t_get_be64(b, 48)); /* L1 on top of the refcount table */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 24, 1ull << 62); /* absurd size: L1 too small */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be32(b, 36, 0xffffffff); /* absurd L1 size */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be32(b, 56, 0x7fffffff); /* absurd refcount table */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be32(b, 20, 30); /* cluster_bits */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be32(b, 4, 4); /* version */
	g_assert_cmpint(img_open_err(b, true), ==, -ENOTSUP);

	b = fresh_copy("c65536.qcow2");
	put_be32(b, 32, 1); /* AES encryption */
	refused(b, -ENOTSUP, "encrypted images (method 1) are not supported");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 72, 1ull << 20); /* unknown incompatible feature */
	g_assert_cmpint(img_open_err(b, false), ==, -ENOTSUP);
	refused(b, -ENOTSUP,
		"unsupported incompatible features: unknown incompatible feature "
		"0x100000");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 72, 1ull << 2); /* an external data file the header does not name */
	refused(b, -EINVAL, "does not name it (header extension 0x44415441)");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 88, 1ull << 1); /* raw external data without an external data file */
	refused(b, -EINVAL, "raw external data (autoclear bit 1) without an external data file");

	/* with its autoclear bit set, the bitmaps extension is checked */
	b = fresh_copy("bitmap.qcow2");
	put_be32(b, find_ext(b, 0x23852875) + 12, 1);
	refused(b, -EINVAL, "bitmaps header extension at 0x");
	g_assert_cmpstr(strstr(vd_log_last_error(), ": reserved field is not zero"), !=, NULL);
	test_bitmap_dir_damage();
}

/* Without its autoclear bit (a program without bitmap support wrote the image)
 * the bitmaps extension is ignored as QEMU does, even a broken one, and kept
 * byte for byte; the bitmaps are not touched by a write. */
static void test_bitmaps_autoclear_clear(void)
{
	const char *b = fresh_copy("bitmap.qcow2");
	uint64_t ext = find_ext(b, 0x23852875), dir = t_get_be64(b, ext + 24);
	uint64_t e0, e1, e2, d0 = t_get_be64(b, dir + 8); /* table size, flags */
	struct vd_image *img;
	char *q = g_strdup(b);

	put_be64(b, 88, t_get_be64(b, 88) & ~1ull);
	put_be32(b, ext + 8, 0);	  /* no bitmaps... */
	put_be32(b, ext + 12, 7);	  /* ...a reserved field set... */
	put_be64(b, ext + 24, dir + 512); /* ...and an unaligned directory */
	e0 = t_get_be64(b, ext + 8);
	e1 = t_get_be64(b, ext + 16);
	e2 = t_get_be64(b, ext + 24);
	img = t_open_ok(q, false);
	t_compare_raw(img, "bitmap.raw");
	g_assert_cmpint(image_pwrite_wait(img, "x", 1, 70000), ==, 0);
	g_assert_cmpint(image_zero_wait(img, 65536, 0, true), ==, 0);
	image_unref(img);
	g_assert_cmpuint(t_get_be64(q, ext + 8), ==, e0);
	g_assert_cmpuint(t_get_be64(q, ext + 16), ==, e1);
	g_assert_cmpuint(t_get_be64(q, ext + 24), ==, e2);
	g_assert_cmpuint(t_get_be64(q, 88) & 1, ==, 0);
	g_assert_cmpuint(t_get_be64(q, dir + 8), ==, d0); /* not flagged in use */
	/* QEMU ignores the extension too: no errors (its clusters show as leaks) */
	t_sh("qemu-img check %s >bmc.log 2>&1; [ $? = 3 ] && "
	     "grep -q 'leaked clusters' bmc.log && ! grep -q ERROR bmc.log",
	     q);
	g_free(q);
}

/* A raw backing file whose first bytes are a qcow2 header (a whole qcow2
 * image, or the magic and garbage) is read as raw: the backing format
 * extension decides, not probing, as in QEMU. */
static void test_backing_format_raw(void)
{
	static const char *const src[] = {"cp c65536.qcow2 qlike.raw",
					  "{ printf 'QFI\\373\\0\\0\\0\\3'; head -c 2M "
					  "/dev/urandom; } >qlike.raw"};

	for (unsigned i = 0; i < G_N_ELEMENTS(src); i++) {
		struct vd_image *img;

		t_sh("%s && qemu-img create -q -f qcow2 -b qlike.raw -F raw "
		     "qlike.qcow2 4M && qemu-io -f qcow2 -c 'write -P 0x61 64k 4k' "
		     "qlike.qcow2 >/dev/null && qemu-img convert -O raw qlike.qcow2 "
		     "qlike-top.raw && od -An -c -N4 qlike.raw | grep -q 'Q   F   I'",
		     src[i]);
		img = t_open_ok("qlike.qcow2", true);
		g_assert_nonnull(img->backing);
		g_assert_cmpstr(img->backing->fmt->name, ==, "raw");
		t_compare_raw(img, "qlike-top.raw");
		image_unref(img);
	}
}

static void test_bad_tables(void)
{
	const char *b = fresh_copy("c65536.qcow2");
	uint64_t l1 = t_get_be64(b, 40);
	struct vd_image *img;
	uint8_t buf[4096];

	put_be64(b, l1, 0x8000000010000000ull); /* L2 table past EOF */
	refused(b, -EINVAL, "L1 entry 0 (0x10000000) points past the end of the file");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, l1, 0x8000000000010000ull | t_get_be64(b, 48)); /* L2 = refcount table */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	/* L1 entry with an unaligned L2 table offset */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, l1, t_get_be64(b, l1) + 0x200);
	refused(b, -EINVAL, "L1 entry 0 (0x40200) is not cluster aligned");

	/* refcount table entries: past EOF, unaligned, on the L1 or refcount table */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, 48), 0x10000000);
	refused(b, -EINVAL, "refcount table entry 0 (0x10000000) points past the end of the file");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, 48), t_get_be64(b, t_get_be64(b, 48)) + 0x200);
	refused(b, -EINVAL, "refcount table entry 0 (0x20200) is not cluster aligned");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, 48), l1);
	refused(b, -EINVAL, "refcount table entry 0 (0x30000) overlaps the header, the L1 table");

	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, 48) + 8, t_get_be64(b, 48));
	refused(b, -EINVAL, "refcount table entry 1 (0x10000) overlaps the header, the L1 table");

	/* No refcount block for the clusters holding the header and the tables:
	 * they read as free, but a write must never be placed over them. */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, 48), 0);
	img = t_open_ok(b, false);
	t_compare_raw(img, "c65536.raw");
	t_sh("cp %s rt0-before.qcow2", b);
	memset(buf, 0x5a, sizeof(buf));
	vd_log_clear_error();
	g_assert_cmpint(image_pwrite_wait(img, buf, sizeof(buf), 3584 << 10), ==, -EIO);
	g_assert_cmpstr(strstr(vd_log_last_error(), "the cluster at 0x10000 holds the header, "
						    "the L1 table or the refcount table but its "
						    "refcount is 0"),
			!=, NULL);
	image_unref(img);
	t_sh("cmp %s rt0-before.qcow2", b);

	/* A data cluster pointer past EOF inside an L2 table: EIO on read. */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, l1) & 0x00fffffffffffe00ull, 0x8000000100000000ull);
	img = t_open_ok(b, true);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), 0), ==, -EIO);
	image_unref(img);

	/* A data cluster pointer that is not cluster aligned. */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, t_get_be64(b, l1) & 0x00fffffffffffe00ull, 0x8000000000050200ull);
	img = t_open_ok(b, true);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), 0), ==, -EIO);
	image_unref(img);
}

/* The snapshot table: past the end of the file, unaligned, or on top of the
 * refcount table (whose entries then parse as two empty snapshots). */
static void test_bad_snapshot_table(void)
{
	const char *b;
	struct vd_image *img;

	/* but a table that ends the file without its last entry's padding is fine */
	t_sh("qemu-img create -q -f qcow2 se.qcow2 1M && qemu-img snapshot -c s1 "
	     "se.qcow2 && [ $(( $(stat -c %%s se.qcow2) %% 8 )) != 0 ]");
	img = t_open_ok("se.qcow2", false);
	g_assert_cmpint(image_pwrite_wait(img, "x", 1, 0), ==, 0);
	image_unref(img);
	g_assert_cmpint(t_qemu_img("check -f qcow2 se.qcow2 >check.log 2>&1"), ==, 0);

	b = fresh_copy("snap.qcow2");
	put_be64(b, 64, 0x40000000);
	refused(b, -EINVAL, "snapshot table entry 0 at 0x40000000 is past the end of the file");

	b = fresh_copy("snap.qcow2");
	put_be64(b, 64, t_get_be64(b, 64) + 8);
	refused(b, -EINVAL, "snapshot table at 0x");
	g_assert_cmpstr(strstr(vd_log_last_error(), "is not cluster aligned"), !=, NULL);

	/* the table moved to a new last cluster, the second entry's name made
	 * 65535 bytes long: it runs past the end of the file */
	b = fresh_copy("snap.qcow2");
	{
		char *path = t_path(b);
		struct stat st;
		uint64_t from = t_get_be64(b, 64), to, p, e;

		g_assert_cmpint(stat(path, &st), ==, 0);
		g_free(path);
		to = (st.st_size + 65535) & ~65535ull;

		t_sh("truncate -s %llu %s && dd if=snap.qcow2 of=%s bs=1 skip=%llu "
		     "seek=%llu count=4096 conv=notrunc status=none",
		     (unsigned long long)to + 65536, b, b, (unsigned long long)from,
		     (unsigned long long)to);
		put_be64(b, 64, to);
		e = t_get_be64(b, to + 8); /* l1_size, id_str_size, name_size */
		p = to + ((40 + (t_get_be64(b, to + 32) & 0xffffffff) + (e >> 16 & 0xffff) +
			   (e & 0xffff) + 7) &
			  ~7ull);
		put_be32(b, p + 12, (t_get_be64(b, p + 8) & 0xffff0000) | 0xffff);
	}
	refused(b, -EINVAL, "runs past the end of the file");
	g_assert_cmpstr(strstr(vd_log_last_error(), "snapshot table at 0x"), !=, NULL);

	b = fresh_copy("snap.qcow2");
	put_be64(b, 64, t_get_be64(b, 48));
	refused(b, -EINVAL, "metadata overlap: snapshot table at 0x10000");
}

/* A compressed descriptor whose data lies far past the end of the file. */
static void test_bad_compressed(void)
{
	const char *b = fresh_copy("zlib.qcow2");
	uint64_t l2 = t_get_be64(b, t_get_be64(b, 40)) & 0x00fffffffffffe00ull, e = 0, at = 0;
	struct vd_image *img;
	uint8_t buf[4096];

	for (unsigned i = 0; i < 64; i++) {
		e = t_get_be64(b, l2 + i * 8);
		if (e & (1ull << 62)) {
			at = l2 + i * 8;
			break;
		}
	}
	g_assert_cmpuint(at, !=, 0);
	put_be64(b, at, (e & ~((1ull << 54) - 1)) | 0x3fffffffffffull);
	img = t_open_ok(b, true);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), ((at - l2) / 8) << 16), ==, -EIO);
	image_unref(img);

	/* Garbage where the compressed bytes should be: EIO, not a crash. */
	b = fresh_copy("zlib.qcow2");
	put_be64(b, at, (e & ~((1ull << 54) - 1)) | 0x30000ull);
	img = t_open_ok(b, true);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), ((at - l2) / 8) << 16), ==, -EIO);
	image_unref(img);
}

static void test_corrupt_bit(void)
{
	const char *b = fresh_copy("c65536.qcow2");
	struct vd_image *img;

	put_be64(b, 72, 1ull << 1);
	img = t_open_ok(b, false);
	g_assert_true(img->read_only);
	t_compare_raw(img, "c65536.raw");
	image_unref(img);
}

static void test_backing_loop(void)
{
	t_sh("qemu-img create -q -f qcow2 -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2 1M"
	     " && qemu-img create -q -f qcow2 -u -b loop-a.qcow2 -F qcow2 "
	     "loop-b.qcow2 1M");
	g_assert_cmpint(img_open_err("loop-a.qcow2", true), ==, -ELOOP);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	t_qcow2_fixtures();
	t_add_qemu("/qcow2/read/cluster-sizes", test_cluster_sizes);
	t_add_qemu("/qcow2/read/refcount-widths", test_refcount_widths);
	t_add_qemu_data("/qcow2/read/v2", "v2", test_fixture);
	t_add_qemu_data("/qcow2/read/zlib", "zlib", test_fixture);
	t_add_qemu_data("/qcow2/read/zlib-4k", "zlib4k", test_fixture);
	t_add_qemu_data("/qcow2/read/zstd", "zstd", test_fixture);
	t_add_qemu_data("/qcow2/read/extended-l2", "extl2", test_fixture);
	t_add_qemu_data("/qcow2/read/chain-mid", "mid", test_fixture);
	t_add_qemu_data("/qcow2/read/chain-top", "top", test_fixture);
	t_add_qemu_data("/qcow2/read/snapshots", "snap", test_fixture);
	t_add_qemu_data("/qcow2/read/lazy-dirty", "lazy", test_fixture);
	t_add_qemu_data("/qcow2/read/lazy-dirty-snapshot", "lazysnap", test_fixture);
	t_add_qemu_data("/qcow2/read/bitmaps", "bitmap", test_fixture);
	t_add_qemu("/qcow2/read/preallocation", test_prealloc);
	t_add_qemu("/qcow2/read/big-6g", test_big);
	t_add_qemu("/qcow2/read/block-status", test_info_block_status);
	t_add_qemu("/qcow2/bad/headers", test_bad_headers);
	t_add_qemu("/qcow2/bad/tables", test_bad_tables);
	t_add_qemu("/qcow2/bad/snapshot-table", test_bad_snapshot_table);
	t_add_qemu("/qcow2/read/bitmaps-autoclear-clear", test_bitmaps_autoclear_clear);
	t_add_qemu("/qcow2/read/backing-format-raw", test_backing_format_raw);
	t_add_qemu("/qcow2/bad/compressed", test_bad_compressed);
	t_add_qemu("/qcow2/bad/corrupt-bit", test_corrupt_bit);
	t_add_qemu("/qcow2/bad/backing-loop", test_backing_loop);
	return t_run();
}
