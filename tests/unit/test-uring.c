/* The io_uring engine: reads, writes, fsync, short reads at end of file, and
 * the fault hook failing exactly the Nth I/O with the chosen errno. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "uring.h"

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
	g_assert_cmpint(sync_pread(fd, buf, sizeof(buf), 0), ==, -EIO);
	g_assert_cmpint(sync_fdatasync(fd), ==, -EIO);
	fault_set(0, 0, 0, 0);
	g_assert_cmpint(sync_pread(fd, buf, sizeof(buf), 0), ==, 0);
	g_assert_cmpint(sync_pread(fd, buf, sizeof(buf), 8000), ==, -EIO);
	g_assert_cmpint(sync_pread_zfill(fd, buf, sizeof(buf), 8000), ==, 0);
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
	g_assert_cmpint(sync_pread(b, buf, sizeof(buf), 0), ==, 0);
	g_assert_cmpint(sync_pread(a, buf, sizeof(buf), 0), ==, -EIO);
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

int main(int argc, char **argv)
{
	g_test_init(&argc, &argv, NULL);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
	g_test_add_func("/uring/read-write-fsync", test_read_write);
	g_test_add_func("/uring/short-read-at-eof", test_short_read_at_eof);
	g_test_add_func("/uring/many-in-flight", test_many_in_flight);
	g_test_add_func("/uring/fault-nth", test_fault_nth);
	g_test_add_func("/uring/fault-path", test_fault_path);
	g_test_add_func("/uring/fault-env", test_fault_env);
	return g_test_run();
}
