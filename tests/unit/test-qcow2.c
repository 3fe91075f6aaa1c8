/* qcow2 reads against qemu-img's own answer (`qemu-img convert -O raw`) for
 * every fixture, and hostile or broken images: each refused at open with a
 * message or answered with EIO, never a crash. */
#include "test-qcow2-common.c"

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
	struct vd_image *img = img_open("big.qcow2", true);
	char *p = tpath("big.raw");
	int fd = open(p, O_RDONLY);
	uint64_t g = 1ull << 30;

	g_assert_cmpuint(img->size, ==, 6 * g);
	compare_range(img, fd, 0, 1 << 20);
	compare_range(img, fd, 5 * g - 65536, (1 << 20) + 131072);
	compare_range(img, fd, 4 * g - 65536, 131072);
	compare_range(img, fd, 6 * g - (1 << 20), 1 << 20);
	close(fd);
	g_free(p);
	image_unref(img);
}

static void test_info_block_status(void)
{
	struct vd_image *img = img_open("top.qcow2", true);
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
	char *p = tpath(name);
	int fd = open(p, O_RDWR);

	v = GUINT64_TO_BE(v);
	g_assert_cmpint(pwrite(fd, &v, 8, off), ==, 8);
	close(fd);
	g_free(p);
}

static void put_be32(const char *name, uint64_t off, uint32_t v)
{
	char *p = tpath(name);
	int fd = open(p, O_RDWR);

	v = GUINT32_TO_BE(v);
	g_assert_cmpint(pwrite(fd, &v, 4, off), ==, 4);
	close(fd);
	g_free(p);
}

static uint64_t get_be64(const char *name, uint64_t off)
{
	char *p = tpath(name);
	int fd = open(p, O_RDONLY);
	uint64_t v = 0;

	g_assert_cmpint(pread(fd, &v, 8, off), ==, 8);
	close(fd);
	g_free(p);
	return GUINT64_FROM_BE(v);
}

static const char *fresh_copy(const char *from)
{
	static char name[64];
	static int n;

	snprintf(name, sizeof(name), "bad%d.qcow2", n++);
	g_assert_cmpint(sh("cp '%s' '%s'", from, name), ==, 0);
	return name;
}

static void test_bad_headers(void)
{
	const char *b;

	b = fresh_copy("c65536.qcow2");
	g_assert_cmpint(sh("truncate -s 100 %s", b), ==, 0);
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	g_assert_cmpint(sh("truncate -s 196608 %s", b), ==, 0); /* L1 cut off */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 40, 0x40000000); /* L1 past EOF */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

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
	put_be64(b, 40, get_be64(b, 48)); /* L1 on top of the refcount table */
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
	g_assert_cmpint(img_open_err(b, true), ==, -ENOTSUP);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 72, 1ull << 20); /* unknown incompatible feature */
	g_assert_cmpint(img_open_err(b, false), ==, -ENOTSUP);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, 72, 1ull << 2); /* external data file (named in the feature table) */
	g_assert_cmpint(img_open_err(b, true), ==, -ENOTSUP);
}

static void test_bad_tables(void)
{
	const char *b = fresh_copy("c65536.qcow2");
	uint64_t l1 = get_be64(b, 40);
	struct vd_image *img;
	uint8_t buf[4096];

	put_be64(b, l1, 0x8000000010000000ull); /* L2 table past EOF */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	b = fresh_copy("c65536.qcow2");
	put_be64(b, l1, 0x8000000000010000ull | get_be64(b, 48)); /* L2 = refcount table */
	g_assert_cmpint(img_open_err(b, true), ==, -EINVAL);

	/* A data cluster pointer past EOF inside an L2 table: EIO on read. */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, get_be64(b, l1) & 0x00fffffffffffe00ull, 0x8000000100000000ull);
	img = img_open(b, true);
	g_assert_cmpint(image_pread_sync(img, buf, sizeof(buf), 0), ==, -EIO);
	image_unref(img);

	/* A data cluster pointer that is not cluster aligned. */
	b = fresh_copy("c65536.qcow2");
	put_be64(b, get_be64(b, l1) & 0x00fffffffffffe00ull, 0x8000000000050200ull);
	img = img_open(b, true);
	g_assert_cmpint(image_pread_sync(img, buf, sizeof(buf), 0), ==, -EIO);
	image_unref(img);
}

/* A compressed descriptor whose data lies far past the end of the file. */
static void test_bad_compressed(void)
{
	const char *b = fresh_copy("zlib.qcow2");
	uint64_t l2 = get_be64(b, get_be64(b, 40)) & 0x00fffffffffffe00ull, e = 0, at = 0;
	struct vd_image *img;
	uint8_t buf[4096];

	for (unsigned i = 0; i < 64; i++) {
		e = get_be64(b, l2 + i * 8);
		if (e & (1ull << 62)) {
			at = l2 + i * 8;
			break;
		}
	}
	g_assert_cmpuint(at, !=, 0);
	put_be64(b, at, (e & ~((1ull << 54) - 1)) | 0x3fffffffffffull);
	img = img_open(b, true);
	g_assert_cmpint(image_pread_sync(img, buf, sizeof(buf), ((at - l2) / 8) << 16), ==, -EIO);
	image_unref(img);

	/* Garbage where the compressed bytes should be: EIO, not a crash. */
	b = fresh_copy("zlib.qcow2");
	put_be64(b, at, (e & ~((1ull << 54) - 1)) | 0x30000ull);
	img = img_open(b, true);
	g_assert_cmpint(image_pread_sync(img, buf, sizeof(buf), ((at - l2) / 8) << 16), ==, -EIO);
	image_unref(img);
}

static void test_corrupt_bit(void)
{
	const char *b = fresh_copy("c65536.qcow2");
	struct vd_image *img;

	put_be64(b, 72, 1ull << 1);
	img = img_open(b, false);
	g_assert_true(img->read_only);
	compare_raw(img, "c65536.raw");
	image_unref(img);
}

static void test_backing_loop(void)
{
	g_assert_cmpint(sh("qemu-img create -q -f qcow2 -u -b loop-b.qcow2 -F qcow2 loop-a.qcow2 1M"
			   " && qemu-img create -q -f qcow2 -u -b loop-a.qcow2 -F qcow2 "
			   "loop-b.qcow2 1M"),
			==, 0);
	g_assert_cmpint(img_open_err("loop-a.qcow2", true), ==, -ELOOP);
}

int main(int argc, char **argv)
{
	int ret;

	common_init(&argc, &argv);
	g_test_add_func("/qcow2/read/cluster-sizes", test_cluster_sizes);
	g_test_add_func("/qcow2/read/refcount-widths", test_refcount_widths);
	g_test_add_data_func("/qcow2/read/v2", "v2", test_fixture);
	g_test_add_data_func("/qcow2/read/zlib", "zlib", test_fixture);
	g_test_add_data_func("/qcow2/read/zlib-4k", "zlib4k", test_fixture);
	g_test_add_data_func("/qcow2/read/zstd", "zstd", test_fixture);
	g_test_add_data_func("/qcow2/read/extended-l2", "extl2", test_fixture);
	g_test_add_data_func("/qcow2/read/chain-mid", "mid", test_fixture);
	g_test_add_data_func("/qcow2/read/chain-top", "top", test_fixture);
	g_test_add_data_func("/qcow2/read/snapshots", "snap", test_fixture);
	g_test_add_data_func("/qcow2/read/lazy-dirty", "lazy", test_fixture);
	g_test_add_data_func("/qcow2/read/bitmaps", "bitmap", test_fixture);
	g_test_add_func("/qcow2/read/preallocation", test_prealloc);
	g_test_add_func("/qcow2/read/big-6g", test_big);
	g_test_add_func("/qcow2/read/block-status", test_info_block_status);
	g_test_add_func("/qcow2/bad/headers", test_bad_headers);
	g_test_add_func("/qcow2/bad/tables", test_bad_tables);
	g_test_add_func("/qcow2/bad/compressed", test_bad_compressed);
	g_test_add_func("/qcow2/bad/corrupt-bit", test_corrupt_bit);
	g_test_add_func("/qcow2/bad/backing-loop", test_backing_loop);
	ret = g_test_run();
	fixtures_remove();
	return ret;
}
