/* The raw driver through image_open: probing by name, block status from
 * SEEK_DATA/SEEK_HOLE, punch hole, zero range, resize, create. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/image.h"
#include "testlib.h"

static char *make_sparse(const char *name, uint64_t size)
{
	char *path = t_path(name);
	int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0644);
	char buf[65536];

	g_assert_cmpint(fd, >=, 0);
	g_assert_cmpint(ftruncate(fd, size), ==, 0);
	memset(buf, 0x77, sizeof(buf));
	/* Data at 1 MiB and at 3 MiB; holes elsewhere. */
	g_assert_cmpint(pwrite(fd, buf, sizeof(buf), 1 << 20), ==, sizeof(buf));
	g_assert_cmpint(pwrite(fd, buf, sizeof(buf), 3 << 20), ==, sizeof(buf));
	close(fd);
	return path;
}

static const struct vd_open_opts opts = {.backing = VD_BACKING_FOLLOW};

static void test_probe_by_name(void)
{
	char *a = make_sparse("disk.img", 1 << 20), *b = make_sparse("notes.txt", 4096);
	int fa = open(a, O_RDONLY), fb = open(b, O_RDONLY);

	g_assert_true(image_probe(fa, a, false) == &vd_format_raw);
	g_assert_null(image_probe(fb, b, false));
	g_assert_true(image_probe(fb, b, true) == &vd_format_raw);
	close(fa);
	close(fb);
	g_free(a);
	g_free(b);
}

static void test_block_status(void)
{
	char *path = make_sparse("bs.raw", 4 << 20);
	struct vd_image *img;
	uint64_t pnum;
	enum vd_bs st;

	g_assert_cmpint(image_open(path, &opts, &img), ==, 0);
	g_assert_cmpstr(img->fmt->name, ==, "raw");
	g_assert_cmpuint(img->size, ==, 4 << 20);
	g_assert_cmpint(image_block_status(img, 0, img->size, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	g_assert_cmpuint(pnum, ==, 1 << 20);
	g_assert_cmpint(image_block_status(img, 1 << 20, img->size - (1 << 20), &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpuint(pnum, ==, 65536);
	g_assert_cmpint(image_block_status(img, (3 << 20) + 65536, 65536, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	image_unref(img);
	g_free(path);
}

static void test_discard_and_zero(void)
{
	char *path = make_sparse("dz.raw", 4 << 20);
	struct vd_image *img;
	struct stat before, after;
	char buf[65536];

	g_assert_cmpint(image_open(path, &opts, &img), ==, 0);
	g_assert_cmpint(stat(path, &before), ==, 0);
	g_assert_cmpint(image_zero_wait(img, 65536, 1 << 20, true), ==, 0);
	g_assert_cmpint(stat(path, &after), ==, 0);
	g_assert_cmpint(after.st_blocks, <, before.st_blocks);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), 1 << 20), ==, 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		g_assert_cmpint(buf[i], ==, 0);
	/* Zeroing an odd range leaves the bytes around it alone. */
	g_assert_cmpint(image_zero_wait(img, 1000, (3 << 20) + 10, false), ==, 0);
	g_assert_cmpint(image_pread_wait(img, buf, 2000, 3 << 20), ==, 0);
	for (int i = 0; i < 2000; i++)
		g_assert_cmpint(buf[i], ==, (i >= 10 && i < 1010) ? 0 : 0x77);
	image_unref(img);
	g_free(path);
}

static void test_resize_and_readonly(void)
{
	char *path = make_sparse("rs.raw", 4 << 20);
	struct vd_open_opts ro = opts;
	struct vd_image *img;
	char buf[16] = "0123456789abcdef";

	g_assert_cmpint(image_open(path, &opts, &img), ==, 0);
	g_assert_cmpint(image_truncate(img, 8 << 20), ==, 0);
	g_assert_cmpuint(img->size, ==, 8 << 20);
	g_assert_cmpint(image_pwrite_wait(img, buf, sizeof(buf), (8 << 20) - 16), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, sizeof(buf), (8 << 20) - 8), ==, -ENOSPC);
	g_assert_cmpint(image_fsync_wait(img), ==, 0);
	image_unref(img);
	ro.read_only = true;
	g_assert_cmpint(image_open(path, &ro, &img), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, sizeof(buf), 0), ==, -EROFS);
	g_assert_cmpint(image_truncate(img, 1 << 20), ==, -EROFS);
	image_unref(img);
	g_free(path);
}

static void test_create(void)
{
	char *path = t_path("new.raw");
	struct vd_create_opts o = {.size = 3 << 20};
	struct vd_image *img;

	g_assert_cmpint(vd_format_raw.create(path, &o), ==, 0);
	g_assert_cmpint(vd_format_raw.create(path, &o), ==, -EEXIST);
	g_assert_cmpint(image_open(path, &opts, &img), ==, 0);
	g_assert_cmpuint(img->size, ==, 3 << 20);
	g_assert_cmpuint(image_allocated(img), ==, 0);
	image_unref(img);
	g_free(path);
}

static void test_open_errors(void)
{
	char *path = t_path("missing.raw");
	struct vd_image *img;

	g_assert_cmpint(image_open(path, &opts, &img), ==, -ENOENT);
	g_assert_cmpint(image_open(t_dir(), &opts, &img), ==, -EISDIR);
	g_free(path);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/raw/probe-by-name", test_probe_by_name);
	g_test_add_func("/raw/block-status", test_block_status);
	g_test_add_func("/raw/discard-and-zero", test_discard_and_zero);
	g_test_add_func("/raw/resize-and-readonly", test_resize_and_readonly);
	g_test_add_func("/raw/create", test_create);
	g_test_add_func("/raw/open-errors", test_open_errors);
	return t_run();
}
