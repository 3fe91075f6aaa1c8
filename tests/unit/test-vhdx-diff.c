/* VHDX differencing disks (no Linux tool makes them: we create them with our
 * own create over qemu-img parents): reads through the parent, partially
 * present blocks and sector bitmaps, sub-sector writes merged with parent
 * bytes, chains, the linkage GUID, the vhdx_parent override, 4K sectors,
 * discard, block status. The expected bytes come from a raw copy of the
 * parent that received the same writes. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"
#include "formats/vhdx.h"

#define M (1ull << 20)

static void expect_write(const char *ref, uint64_t off, uint64_t len, unsigned seed,
			 struct vd_image *img)
{
	char *buf = g_malloc(len), *r = t_path(ref);

	t_pattern(buf, len, off, seed);
	g_assert_cmpint(image_pwrite_wait(img, buf, len, off), ==, 0);
	t_pwrite(r, buf, len, off);
	g_free(buf);
	g_free(r);
}

static void create_child(const char *child, const char *parent, uint32_t bs)
{
	struct vd_create_opts o = {.backing = parent, .cluster_size = bs};
	char *p = t_path(child);

	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, 0);
	g_free(p);
}

static void compare(const char *name, const char *ref)
{
	char *p = t_path(name), *r = t_path(ref);
	struct vd_image *img;

	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	t_compare(img, r, 0, img->size);
	image_unref(img);
	g_free(p);
	g_free(r);
}

static void make_parent(void)
{
	t_sh("qemu-img create -q -f vhdx -o block_size=1M parent.vhdx 24M && "
	     "qemu-io -f vhdx -c 'write -P 0x11 0 24M' -c 'write -P 0x22 5M 3M' parent.vhdx && "
	     "qemu-img convert -O raw parent.vhdx parent.raw && cp parent.raw child.ref");
}

static void test_read_write(void)
{
	char *p = t_path("child.vhdx");
	struct vd_image *img;

	make_parent();
	create_child("child.vhdx", "parent.vhdx", M);
	compare("child.vhdx", "parent.raw"); /* a new child shows its parent */
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	g_assert_nonnull(img->backing);
	expect_write("child.ref", M + 100, 1000, 1, img);    /* sub-sector head and tail */
	expect_write("child.ref", M + 5000, 10, 2, img);     /* inside one sector */
	expect_write("child.ref", M + 4096, 512, 3, img);    /* whole sector */
	expect_write("child.ref", 3 * M, M, 4, img);	     /* whole block */
	expect_write("child.ref", 6 * M - 300, 700, 5, img); /* across two blocks */
	expect_write("child.ref", M + 150, 20, 6, img);	     /* into a present sector */
	expect_write("child.ref", 23 * M + 511, 2, 7, img);
	t_compare(img, t_path("child.ref"), 0, img->size);
	image_unref(img);
	compare("child.vhdx", "child.ref");
	/* The parent is untouched. */
	g_assert_cmpint(t_sh_rc("qemu-img compare -q parent.vhdx parent.raw"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img check -q parent.vhdx"), ==, 0);
	g_free(p);
}

static void test_block_status(void)
{
	char *p;
	struct vd_image *img;
	uint64_t pnum;
	enum vd_bs st;
	char buf[512] = {1};

	make_parent();
	create_child("bs.vhdx", "parent.vhdx", M);
	p = t_path("bs.vhdx");
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, 512, 2 * M + 1024), ==, 0);
	g_assert_cmpint(img->fmt->block_status(img, 0, img->size, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_UNALLOC);
	g_assert_cmpuint(pnum, ==, 2 * M + 1024);
	g_assert_cmpint(img->fmt->block_status(img, 2 * M + 1024, M, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpuint(pnum, ==, 512);
	/* Through the chain the parent's data shows. */
	g_assert_cmpint(image_block_status(img, 0, M, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	image_unref(img);
	g_free(p);
}

static void test_chain(void)
{
	char *p = t_path("gchild.vhdx");
	struct vd_image *img;

	char *mid = t_path("mid.vhdx");

	make_parent();
	create_child("mid.vhdx", "parent.vhdx", 2 * M);
	g_assert_cmpint(t_open(mid, false, &img), ==, 0);
	g_free(mid);
	expect_write("child.ref", 7 * M + 33, 4000, 11, img);
	image_unref(img);
	t_sh("mkdir -p sub");
	{
		struct vd_create_opts o = {.backing = "../mid.vhdx", .cluster_size = M};
		char *q = t_path("sub/gchild.vhdx");
		g_assert_cmpint(vd_format_vhdx.create(q, &o), ==, 0);
		g_assert_cmpint(t_open(q, false, &img), ==, 0);
		g_free(q);
	}
	g_assert_nonnull(img->backing);
	g_assert_nonnull(img->backing->backing);
	expect_write("child.ref", 7 * M + 1000, 9000, 12, img);
	expect_write("child.ref", 20 * M, 3 * M, 13, img);
	image_unref(img);
	compare("sub/gchild.vhdx", "child.ref");
	g_free(p);
}

static void test_linkage_and_override(void)
{
	struct vd_image *img;
	char *c = t_path("lk.vhdx"), *moved = t_path("elsewhere/parent-moved.vhdx");
	struct vd_open_opts o = {.backing = VD_BACKING_FOLLOW, .read_only = true};

	make_parent();
	create_child("lk.vhdx", "parent.vhdx", M);
	/* Parent moved: not found, unless named with vhdx_parent. */
	t_sh("mkdir -p elsewhere && mv parent.vhdx elsewhere/parent-moved.vhdx");
	g_assert_cmpint(t_open(c, true, &img), !=, 0);
	o.vhdx_parent = moved;
	g_assert_cmpint(image_open(c, &o, &img), ==, 0);
	t_compare(img, t_path("parent.raw"), 0, img->size);
	image_unref(img);
	/* A parent written since (new DataWriteGuid) no longer matches. */
	t_sh("qemu-io -f vhdx -c 'write -P 0x33 0 512' elsewhere/parent-moved.vhdx");
	g_assert_cmpint(image_open(c, &o, &img), ==, -EINVAL);
	g_free(c);
	g_free(moved);
}

static void test_4k(void)
{
	struct vd_create_opts o = {.size = 16 * M, .cluster_size = M, .sector_size = 4096};
	char *p = t_path("p4k.vhdx"), *c = t_path("c4k.vhdx");
	struct vd_image *img;

	t_sh("rm -f p4k.vhdx c4k.vhdx && truncate -s 0 c4k.ref && truncate -s 16M c4k.ref");
	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, 0);
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	expect_write("c4k.ref", 0, 16 * M, 21, img);
	image_unref(img);
	create_child("c4k.vhdx", "p4k.vhdx", 0);
	g_assert_cmpint(t_open(c, false, &img), ==, 0);
	g_assert_cmpuint(img->zero_align, ==, 4096);
	expect_write("c4k.ref", 2 * M + 100, 1000, 22, img);  /* inside one 4K sector */
	expect_write("c4k.ref", 2 * M + 8000, 9000, 23, img); /* across three */
	expect_write("c4k.ref", 9 * M, 4096, 24, img);
	image_unref(img);
	compare("c4k.vhdx", "c4k.ref");
	/* The parent must have the same sector size. */
	o.sector_size = 512;
	o.backing = "p4k.vhdx";
	g_assert_cmpint(vd_format_vhdx.create(t_path("bad.vhdx"), &o), ==, -EINVAL);
	g_free(p);
	g_free(c);
}

static void test_discard(void)
{
	char *p = t_path("dc.vhdx");
	struct vd_image *img;
	char *z = g_malloc0(4 * M), *r = t_path("child.ref");

	make_parent();
	create_child("dc.vhdx", "parent.vhdx", M);
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	expect_write("child.ref", 4 * M + 512, 1024, 31, img);
	/* Whole blocks read as zeroes afterwards, not as the parent. */
	g_assert_cmpint(image_zero_wait(img, 2 * M, M, true), ==, 0);
	t_pwrite(r, z, 2 * M, M);
	/* Part of a partially present block and part of an absent one. */
	g_assert_cmpint(image_zero_wait(img, 4096, 4 * M, true), ==, 0);
	t_pwrite(r, z, 4096, 4 * M);
	g_assert_cmpint(image_zero_wait(img, 8192, 10 * M + 4096, false), ==, 0);
	t_pwrite(r, z, 8192, 10 * M + 4096);
	t_compare(img, r, 0, img->size);
	image_unref(img);
	compare("dc.vhdx", "child.ref");
	g_free(p);
	g_free(z);
	g_free(r);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	t_add_qemu("/vhdx/diff/read-write", test_read_write);
	t_add_qemu("/vhdx/diff/block-status", test_block_status);
	t_add_qemu("/vhdx/diff/chain", test_chain);
	t_add_qemu("/vhdx/diff/linkage-and-override", test_linkage_and_override);
	g_test_add_func("/vhdx/diff/4k", test_4k);
	t_add_qemu("/vhdx/diff/discard", test_discard);
	return t_run();
}
