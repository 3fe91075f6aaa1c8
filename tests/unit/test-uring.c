/* The io_uring engine: reads, writes, fsync, short reads at end of file, the
 * fault hook failing exactly the Nth I/O with the chosen errno, and the I/O
 * recorder (VDISKFS_IOLOG). */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <linux/falloc.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/uring.h"
#include "io/fault.h"
#include "io/iolog.h"
#include "io/sync-io.h"
#include "testlib.h"

struct result {
	int res;
	int calls;
};

static void op_done(struct uring_op *op, int res)
{
	struct result *r = op->data;

	r->res = res;
	r->calls++;
}

static int tmpfile_with(size_t len)
{
	char path[] = "/var/tmp/vdiskfs-uring-XXXXXX";
	int fd = mkstemp(path);
	char *buf = malloc(len);

	g_assert_cmpint(fd, >=, 0);
	unlink(path);
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(i * 7 + 3);
	g_assert_cmpint(pwrite(fd, buf, len, 0), ==, (ssize_t)len);
	free(buf);
	return fd;
}

static void run_until(struct result *r, int calls)
{
	while (r->calls < calls)
		g_assert_cmpint(uring_run(-1), >=, 0);
}

static void test_read_write(void)
{
	int fd = tmpfile_with(8192);
	struct uring_op op = {.data = NULL};
	struct result r = {0};
	char buf[4096], back[4096];

	op.data = &r;
	memset(buf, 0xab, sizeof(buf));
	uring_write(&op, fd, buf, sizeof(buf), 4096, op_done);
	run_until(&r, 1);
	g_assert_cmpint(r.res, ==, 4096);
	uring_read(&op, fd, back, sizeof(back), 4096, op_done);
	run_until(&r, 2);
	g_assert_cmpint(r.res, ==, 4096);
	g_assert_cmpmem(buf, sizeof(buf), back, sizeof(back));
	uring_fsync(&op, fd, true, op_done);
	run_until(&r, 3);
	g_assert_cmpint(r.res, ==, 0);
	g_assert_cmpuint(uring_inflight(), ==, 0);
	close(fd);
}

static void test_short_read_at_eof(void)
{
	int fd = tmpfile_with(100);
	struct uring_op op;
	struct result r = {0};
	char buf[4096];

	op.data = &r;
	uring_read(&op, fd, buf, sizeof(buf), 50, op_done);
	run_until(&r, 1);
	g_assert_cmpint(r.res, ==, 50);
	g_assert_cmpint(buf[0], ==, (char)(50 * 7 + 3));
	uring_read(&op, fd, buf, sizeof(buf), 200, op_done);
	run_until(&r, 2);
	g_assert_cmpint(r.res, ==, 0);
	close(fd);
}

static void test_many_in_flight(void)
{
	int fd = tmpfile_with(1 << 20);
	struct uring_op ops[512];
	struct result r = {0};
	static char bufs[512][2048];

	/* More than the ring holds: a full SQ is submitted, never dropped. */
	for (int i = 0; i < 512; i++) {
		ops[i].data = &r;
		uring_read(&ops[i], fd, bufs[i], 2048, (uint64_t)i * 2048, op_done);
	}
	run_until(&r, 512);
	for (int i = 0; i < 512; i++)
		g_assert_cmpint(bufs[i][0], ==, (char)((i * 2048) * 7 + 3));
	close(fd);
}

static void test_fault_nth(void)
{
	int fd = tmpfile_with(8192);
	struct uring_op op;
	struct result r = {0};
	char buf[512];

	op.data = &r;
	fault_set(2, ENOSPC, FAULT_WRITE, 1);
	uring_read(&op, fd, buf, sizeof(buf), 0, op_done); /* reads are not counted */
	run_until(&r, 1);
	g_assert_cmpint(r.res, ==, 512);
	uring_write(&op, fd, buf, sizeof(buf), 0, op_done);
	run_until(&r, 2);
	g_assert_cmpint(r.res, ==, 512);
	uring_write(&op, fd, buf, sizeof(buf), 0, op_done);
	run_until(&r, 3);
	g_assert_cmpint(r.res, ==, -ENOSPC);
	uring_write(&op, fd, buf, sizeof(buf), 0, op_done);
	run_until(&r, 4);
	g_assert_cmpint(r.res, ==, 512);
	g_assert_cmpuint(fault_counted(), ==, 3);
	/* The synchronous metadata helpers count too. */
	fault_set(1, EIO, FAULT_ALL, 0);
	g_assert_cmpint(meta_pread(fd, buf, sizeof(buf), 0), ==, -EIO);
	g_assert_cmpint(meta_fdatasync(fd), ==, -EIO);
	fault_set(0, 0, 0, 0);
	g_assert_cmpint(meta_pread(fd, buf, sizeof(buf), 0), ==, 0);
	g_assert_cmpint(meta_pread(fd, buf, sizeof(buf), 8000), ==, -EIO);
	g_assert_cmpint(meta_pread_zfill(fd, buf, sizeof(buf), 8000), ==, 0);
	g_assert_cmpint(buf[511], ==, 0);
	close(fd);
}

static void test_fault_path(void)
{
	int a = tmpfile_with(4096);
	int b = open("/proc/self/exe", O_RDONLY);
	char buf[16];

	/* Only files whose path contains the filter count: here the temp file. */
	fault_set_path("vdiskfs-uring-");
	fault_set(1, EIO, FAULT_READ, 0);
	g_assert_cmpint(meta_pread(b, buf, sizeof(buf), 0), ==, 0);
	g_assert_cmpint(meta_pread(a, buf, sizeof(buf), 0), ==, -EIO);
	g_assert_cmpuint(fault_counted(), ==, 1);
	fault_set(0, 0, 0, 0);
	fault_set_path(NULL);
	close(a);
	close(b);
}

static void test_fault_env(void)
{
	g_setenv("VDISKFS_FAULT", "nth=3,errno=ENOSPC,kinds=w,count=2", TRUE);
	g_assert_cmpint(fault_set_from_env(), ==, 0);
	g_assert_cmpint(fault_check(FAULT_READ, 0), ==, 0);
	g_assert_cmpint(fault_check(FAULT_WRITE, 0), ==, 0);
	g_assert_cmpint(fault_check(FAULT_WRITE, 0), ==, 0);
	g_assert_cmpint(fault_check(FAULT_WRITE, 0), ==, -ENOSPC);
	g_assert_cmpint(fault_check(FAULT_WRITE, 0), ==, -ENOSPC);
	g_assert_cmpint(fault_check(FAULT_WRITE, 0), ==, 0);
	g_setenv("VDISKFS_FAULT", "nth=x=y", TRUE);
	g_assert_cmpint(fault_set_from_env(), ==, -EINVAL);
	g_setenv("VDISKFS_FAULT", "bogus=1", TRUE);
	g_assert_cmpint(fault_set_from_env(), ==, -EINVAL);
	fault_set(0, 0, 0, 0);
	g_unsetenv("VDISKFS_FAULT");
}

/* Record line i (0-based) of the log, as text. */
static char *iolog_line_at(char **lines, unsigned i)
{
	g_assert_nonnull(lines[i]);
	return lines[i];
}

/* "S seq time kind file off len arg data": check all but the time. */
static void assert_submit(const char *line, unsigned long seq, char kind, unsigned long off,
			  unsigned long len, int arg, unsigned long data)
{
	unsigned long sq, t, f, o, l, d;
	char k;
	int a;

	g_assert_cmpint(
		sscanf(line, "S %lu %lu %c %lu %lu %lu %d %lu", &sq, &t, &k, &f, &o, &l, &a, &d),
		==, 8);
	g_assert_cmpuint(sq, ==, seq);
	g_assert_cmpint(k, ==, kind);
	g_assert_cmpuint(f, ==, 1);
	g_assert_cmpuint(o, ==, off);
	g_assert_cmpuint(l, ==, len);
	g_assert_cmpint(a, ==, arg);
	g_assert_cmpuint(d, ==, data);
}

static void assert_complete(const char *line, unsigned long seq, unsigned long of, int res)
{
	unsigned long sq, t, o;
	int r;

	g_assert_cmpint(sscanf(line, "C %lu %lu %lu %d", &sq, &t, &o, &r), ==, 4);
	g_assert_cmpuint(sq, ==, seq);
	g_assert_cmpuint(o, ==, of);
	g_assert_cmpint(r, ==, res);
}

/* Writes (the io_uring one with its bytes as they were at submission, though
 * the buffer changes before it completes), syncs, truncates and fallocates
 * are recorded with their results, an injected failure too; reads are not. */
static void test_iolog(void)
{
	char *dir = g_dir_make_tmp("vdiskfs-iolog-XXXXXX", NULL);
	char *log = g_build_filename(dir, "log", NULL),
	     *data_path = g_strconcat(log, ".data", NULL);
	int fd = tmpfile_with(16384);
	struct uring_op op = {.data = NULL};
	struct result r = {0};
	char buf[4096], small[512], *text, *data, **lines;
	gsize n;

	op.data = &r;
	g_setenv("VDISKFS_IOLOG", log, TRUE);
	g_assert_cmpint(iolog_set_from_env(), ==, 0);
	memset(buf, 0xab, sizeof(buf));
	uring_write(&op, fd, buf, sizeof(buf), 0, op_done);
	memset(buf, 0xcd, sizeof(buf)); /* reused before it completes */
	run_until(&r, 1);
	uring_read(&op, fd, buf, sizeof(buf), 0, op_done);
	run_until(&r, 2);
	memset(small, 0x11, sizeof(small));
	g_assert_cmpint(meta_pwrite(fd, small, sizeof(small), 8192), ==, 0);
	g_assert_cmpint(meta_ftruncate(fd, 32768), ==, 0);
	g_assert_cmpint(meta_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 4096, 4096),
			==, 0);
	fault_set(1, EIO, FAULT_WRITE, 1);
	g_assert_cmpint(meta_pwrite(fd, small, sizeof(small), 0), ==, -EIO);
	fault_set(0, 0, 0, 0);
	uring_fsync(&op, fd, true, op_done);
	run_until(&r, 3);
	atomic_store(&iolog_armed, false);
	g_unsetenv("VDISKFS_IOLOG");

	g_assert_true(g_file_get_contents(log, &text, &n, NULL));
	lines = g_strsplit(text, "\n", -1);
	g_assert_true(g_str_has_prefix(iolog_line_at(lines, 0), "F 1 /var/tmp/vdiskfs-uring-"));
	assert_submit(iolog_line_at(lines, 1), 1, 'w', 0, 4096, 0, 0);
	assert_complete(iolog_line_at(lines, 2), 2, 1, 4096);
	assert_submit(iolog_line_at(lines, 3), 3, 'w', 8192, 512, 0, 4096);
	assert_complete(iolog_line_at(lines, 4), 4, 3, 0);
	assert_submit(iolog_line_at(lines, 5), 5, 't', 32768, 0, 0, 0);
	assert_complete(iolog_line_at(lines, 6), 6, 5, 0);
	assert_submit(iolog_line_at(lines, 7), 7, 'a', 4096, 4096,
		      FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 0);
	assert_complete(iolog_line_at(lines, 8), 8, 7, 0);
	assert_submit(iolog_line_at(lines, 9), 9, 'w', 0, 512, 0, 4608);
	assert_complete(iolog_line_at(lines, 10), 10, 9, -EIO);
	assert_submit(iolog_line_at(lines, 11), 11, 's', 0, 0, 0, 0);
	assert_complete(iolog_line_at(lines, 12), 12, 11, 0);
	g_assert_cmpstr(lines[13], ==, "");
	g_assert_true(g_file_get_contents(data_path, &data, &n, NULL));
	g_assert_cmpuint(n, ==, 4096 + 512 + 512);
	for (gsize i = 0; i < 4096; i++)
		g_assert_cmpint((unsigned char)data[i], ==, 0xab);
	for (gsize i = 4096; i < n; i++)
		g_assert_cmpint(data[i], ==, 0x11);

	g_strfreev(lines);
	g_free(text);
	g_free(data);
	unlink(log);
	unlink(data_path);
	rmdir(dir);
	g_free(log);
	g_free(data_path);
	g_free(dir);
	close(fd);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/uring/read-write-fsync", test_read_write);
	g_test_add_func("/uring/short-read-at-eof", test_short_read_at_eof);
	g_test_add_func("/uring/many-in-flight", test_many_in_flight);
	g_test_add_func("/uring/fault-nth", test_fault_nth);
	g_test_add_func("/uring/fault-path", test_fault_path);
	g_test_add_func("/uring/fault-env", test_fault_env);
	g_test_add_func("/uring/iolog", test_iolog);
	return t_run();
}
