/* Helpers shared by the qcow2 test programs (included, not built alone): a
 * scratch directory with the qemu-img fixtures, running qemu-img, opening
 * images and comparing what the driver reads with a raw reference file. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "image/image.h"
#include "util/log.h"
#include "io/uring.h"

static char *dir;

static const struct vd_open_opts ro_opts = {.read_only = true, .backing = VD_BACKING_FOLLOW};
static const struct vd_open_opts rw_opts = {.backing = VD_BACKING_FOLLOW};

static char *tpath(const char *name)
{
	return g_build_filename(dir, name, NULL);
}

/* The big-endian 64-bit field at off in the scratch file name. */
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

/* Run a shell command in the scratch directory; its exit status. */
static int sh(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
static int sh(const char *fmt, ...)
{
	va_list ap;
	char *cmd, *full, *out = NULL, *err = NULL;
	int status = -1;
	GError *e = NULL;

	va_start(ap, fmt);
	cmd = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	full = g_strdup_printf("cd '%s' && %s", dir, cmd);
	if (!g_spawn_sync(NULL, (char *[]){"/bin/sh", "-c", full, NULL}, NULL, 0, NULL, NULL,
			  &out, &err, &status, &e)) {
		g_printerr("%s: %s\n", cmd, e->message);
		g_error_free(e);
	} else if (!WIFEXITED(status)) {
		status = -1;
	} else {
		status = WEXITSTATUS(status);
		if (status && g_test_verbose())
			g_printerr("%s -> %d\n%s%s", cmd, status, out, err);
	}
	if (status && !g_test_verbose() && out && err && status != 1)
		g_test_message("%s -> %d: %s%s", cmd, status, out, err);
	g_free(out);
	g_free(err);
	g_free(cmd);
	g_free(full);
	return status;
}

static void fixtures_build(void)
{
	const char *src = g_getenv("G_TEST_SRCDIR");
	const char *base = g_getenv("VDISKFS_TESTDIR");
	char *tmpl = g_build_filename(base ? base : "/var/tmp", "qcow2-test.XXXXXX", NULL);
	char *script;

	dir = g_mkdtemp(tmpl);
	g_assert_nonnull(dir);
	script = g_build_filename(src ? src : "tests/unit", "..", "fixtures", "qcow2-fixtures.sh",
				  NULL);
	if (!g_path_is_absolute(script)) {
		char *cwd = g_get_current_dir(), *abs = g_build_filename(cwd, script, NULL);
		g_free(script);
		g_free(cwd);
		script = abs;
	}
	if (sh("bash '%s' '%s' >fixtures.log 2>&1", script, dir) != 0) {
		g_printerr("fixture script failed, see %s/fixtures.log\n", dir);
		exit(1);
	}
	g_free(script);
}

static void fixtures_remove(void)
{
	if (!g_getenv("QCOW2_TEST_KEEP"))
		sh("rm -rf '%s'", dir);
}

static struct vd_image *img_open(const char *name, bool ro)
{
	char *p = tpath(name);
	struct vd_image *img = NULL;
	int ret = image_open(p, ro ? &ro_opts : &rw_opts, &img);

	if (ret)
		g_printerr("open %s: %s\n", p, strerror(-ret));
	g_assert_cmpint(ret, ==, 0);
	g_free(p);
	return img;
}

G_GNUC_UNUSED static int img_open_err(const char *name, bool ro)
{
	char *p = tpath(name);
	struct vd_image *img = NULL;
	int ret = image_open(p, ro ? &ro_opts : &rw_opts, &img);

	if (!ret)
		image_unref(img);
	g_free(p);
	return ret;
}

static void assert_same(const char *what, const uint8_t *a, const uint8_t *b, size_t n,
			uint64_t off)
{
	for (size_t i = 0; i < n; i++) {
		if (a[i] != b[i]) {
			g_printerr("%s: first difference at 0x%llx: 0x%02x, expected 0x%02x\n", what,
				   (unsigned long long)(off + i), a[i], b[i]);
			g_assert_not_reached();
		}
	}
}

/* Read [off, off+len) through the driver and from the raw file; compare. */
static void compare_range(struct vd_image *img, int rawfd, uint64_t off, uint64_t len)
{
	uint8_t *a = g_malloc(len), *b = g_malloc0(len);
	ssize_t n;

	g_assert_cmpint(image_pread_wait(img, a, len, off), ==, 0);
	n = pread(rawfd, b, len, off);
	g_assert_cmpint(n, >=, 0);
	assert_same(img->name, a, b, len, off);
	g_free(a);
	g_free(b);
}

/* The whole image in 1 MiB reads, plus unaligned reads across clusters. */
static void compare_raw(struct vd_image *img, const char *rawname)
{
	char *p = tpath(rawname);
	int fd = open(p, O_RDONLY);
	uint64_t chunk = 1 << 20;

	g_assert_cmpint(fd, >=, 0);
	for (uint64_t off = 0; off < img->size; off += chunk)
		compare_range(img, fd, off, MIN(chunk, img->size - off));
	for (int i = 0; i < 16; i++) {
		uint64_t off = g_random_int_range(0, img->size - 1);
		uint64_t len = g_random_int_range(1, 300000);
		compare_range(img, fd, off, MIN(len, img->size - off));
	}
	close(fd);
	g_free(p);
}

G_GNUC_UNUSED static void check_fixture(const char *name)
{
	char *q = g_strdup_printf("%s.qcow2", name), *r = g_strdup_printf("%s.raw", name);
	struct vd_image *img = img_open(q, true);

	compare_raw(img, r);
	image_unref(img);
	g_free(q);
	g_free(r);
}

G_GNUC_UNUSED static int qemu_check(const char *name)
{
	return sh("qemu-img check -f qcow2 '%s' >check.log 2>&1", name);
}

G_GNUC_UNUSED static int qemu_compare(const char *qcow2, const char *raw)
{
	return sh("qemu-img compare -f qcow2 -F raw '%s' '%s' >/dev/null 2>&1", qcow2, raw);
}

/* A write through the driver, mirrored into a raw reference file. */
G_GNUC_UNUSED static void both_write(struct vd_image *img, int rawfd, const void *buf, uint64_t len,
		       uint64_t off)
{
	g_assert_cmpint(image_pwrite_wait(img, buf, len, off), ==, 0);
	g_assert_cmpint(pwrite(rawfd, buf, len, off), ==, (ssize_t)len);
}

G_GNUC_UNUSED static int raw_open_copy(const char *raw, const char *copy)
{
	char *p = tpath(copy);
	int fd;

	g_assert_cmpint(sh("cp --sparse=always '%s' '%s'", raw, copy), ==, 0);
	fd = open(p, O_RDWR);
	g_assert_cmpint(fd, >=, 0);
	g_free(p);
	return fd;
}

G_GNUC_UNUSED static void fill_pattern(uint8_t *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

static void common_init(int *argc, char ***argv)
{
	g_test_init(argc, argv, NULL);
	vd_log_init("test-qcow2", false, false);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
	fixtures_build();
}
