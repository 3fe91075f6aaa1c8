/* Opening images and comparing what the driver reads with a raw reference
 * file, and raw access for patching (see testlib.h). */
#include <errno.h>
#include <fcntl.h>
#include <string.h>
#include <unistd.h>

#include "testlib.h"

int t_open(const char *name, bool ro, struct vd_image **img)
{
	static const struct vd_open_opts rw_opts = {.backing = VD_BACKING_FOLLOW};
	static const struct vd_open_opts ro_opts = {.backing = VD_BACKING_FOLLOW,
						    .read_only = true};
	char *p = t_path(name);
	int ret = image_open(p, ro ? &ro_opts : &rw_opts, img);

	g_free(p);
	return ret;
}

struct vd_image *t_open_ok(const char *name, bool ro)
{
	struct vd_image *img = NULL;
	int ret = t_open(name, ro, &img);

	if (ret)
		g_printerr("open %s: %s\n", name, strerror(-ret));
	g_assert_cmpint(ret, ==, 0);
	return img;
}

void t_compare_fd(struct vd_image *img, int fd, uint64_t off, uint64_t len)
{
	uint8_t *a = g_malloc(len), *b = g_malloc0(len);
	ssize_t n;

	g_assert_cmpint(image_pread_wait(img, a, len, off), ==, 0);
	n = pread(fd, b, len, off);
	g_assert_cmpint(n, >=, 0);
	if (memcmp(a, b, len)) {
		size_t i = 0;

		while (a[i] == b[i])
			i++;
		g_error("%s: first difference at guest offset 0x%llx: 0x%02x, expected 0x%02x",
			img->path, (unsigned long long)(off + i), a[i], b[i]);
	}
	g_free(a);
	g_free(b);
}

/* An fd of the file name (see t_path()), opened with flags. */
static int open_name(const char *name, int flags)
{
	char *p = t_path(name);
	int fd = open(p, flags);

	if (fd < 0)
		g_error("%s: %s", p, strerror(errno));
	g_free(p);
	return fd;
}

void t_compare(struct vd_image *img, const char *raw, uint64_t off, uint64_t len)
{
	const uint64_t chunk = 4 << 20;
	int fd = open_name(raw, O_RDONLY);

	for (uint64_t done = 0; done < len; done += chunk)
		t_compare_fd(img, fd, off + done, MIN(chunk, len - done));
	close(fd);
}

void t_compare_raw(struct vd_image *img, const char *raw)
{
	const uint64_t chunk = 1 << 20;
	int fd = open_name(raw, O_RDONLY);

	for (uint64_t off = 0; off < img->size; off += chunk)
		t_compare_fd(img, fd, off, MIN(chunk, img->size - off));
	for (int i = 0; i < 16; i++) {
		uint64_t off = g_random_int_range(0, img->size - 1);
		uint64_t len = g_random_int_range(1, 300000);

		t_compare_fd(img, fd, off, MIN(len, img->size - off));
	}
	close(fd);
}

void t_pread(const char *name, void *buf, size_t len, uint64_t off)
{
	int fd = open_name(name, O_RDONLY);

	g_assert_cmpint(pread(fd, buf, len, off), ==, (ssize_t)len);
	close(fd);
}

void t_pwrite(const char *name, const void *buf, size_t len, uint64_t off)
{
	int fd = open_name(name, O_WRONLY);

	g_assert_cmpint(pwrite(fd, buf, len, off), ==, (ssize_t)len);
	close(fd);
}

uint64_t t_get_be64(const char *name, uint64_t off)
{
	uint64_t v;

	t_pread(name, &v, sizeof(v), off);
	return GUINT64_FROM_BE(v);
}

void t_pattern(void *buf, size_t len, uint64_t off, unsigned seed)
{
	uint8_t *p = buf;

	for (size_t i = 0; i < len; i++) {
		uint64_t x = (off + i) / 8 * 0x9E3779B97F4A7C15ull + seed;
		p[i] = (uint8_t)(x >> (8 * ((off + i) % 8)) ^ seed);
	}
}
