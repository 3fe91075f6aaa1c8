/* The mirror's copier against guest writes: a zero run of the source whose
 * status the copier read while a guest write to it was in flight (not yet
 * linked in the source's metadata) must not zero the destination after that
 * write has landed on both sides. */
#include <fcntl.h>
#include <glib.h>
#include <glib/gstdio.h>
#include <string.h>
#include <unistd.h>

#include "image/image.h"
#include "mirror/mirror-int.h"
#include "io/uring.h"
#include "testlib.h"

static const struct vd_open_opts rw_opts = {.backing = VD_BACKING_FOLLOW};

struct flag {
	int err;
	bool done;
};

static void flag_done(void *opaque, int err)
{
	struct flag *f = opaque;

	f->err = err;
	f->done = true;
}

static void run_until(struct flag *f)
{
	for (int i = 0; i < 3000 && !f->done; i++)
		g_assert_cmpint(uring_run(10), >=, 0);
	g_assert_true(f->done);
}

static unsigned rl_waiting(struct rangelock *rl)
{
	unsigned n;

	pthread_mutex_lock(&rl->lock);
	n = rl->nwaiting;
	pthread_mutex_unlock(&rl->lock);
	return n;
}

static bool phase_is(struct mirror *m, const char *phase)
{
	GString *s = g_string_new(NULL);
	bool yes;

	job_status_line(m, JOB_MIRROR, s);
	yes = g_str_has_prefix(s->str, phase);
	g_string_free(s, TRUE);
	return yes;
}

/* The source has data in [0, 1M) and nothing after; the destination exists
 * and holds garbage. The copier copies [0, 1M), then its 512 KiB/s budget
 * keeps it waiting two seconds: meanwhile a guest write to [2M, 2M+64K) is
 * mapped and queued on this thread's ring, holding its range. The copier
 * reads the rest as unallocated and waits for the range; only then does the
 * write go. The destination must end up with the write's bytes. */
static void test_zero_run_under_write(void)
{
	char *dir = g_dir_make_tmp("vdiskfs-mirror-copy-XXXXXX", NULL);
	char *src = g_build_filename(dir, "src.qcow2", NULL);
	char *dst = g_build_filename(dir, "dst.raw", NULL);
	char *val =
		g_strdup_printf("target=%s,existing=1,format=raw,speed=512k,granularity=1M", dst);
	struct vd_create_opts co = {.size = 4 << 20, .cluster_size = 65536};
	struct mirror_env env = {.mountpoint = "/nonexistent", .open = &rw_opts};
	uint8_t *buf = g_malloc(1 << 20), *w = g_malloc(65536);
	struct mirror_opts o;
	struct vd_image *img;
	struct mirror *m;
	struct mirror_call call;
	struct flag f = {0};
	int fd;

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	g_assert_cmpint(vd_format_qcow2.create(src, &co), ==, 0);
	g_assert_cmpint(image_open(src, &rw_opts, &img), ==, 0);
	memset(buf, 0x5a, 1 << 20);
	g_assert_cmpint(image_pwrite_wait(img, buf, 1 << 20, 0), ==, 0);
	fd = open(dst, O_RDWR | O_CREAT | O_TRUNC, 0644);
	g_assert_cmpint(fd, >=, 0);
	memset(buf, 0xee, 1 << 20);
	for (int i = 0; i < 4; i++)
		g_assert_cmpint(pwrite(fd, buf, 1 << 20, (off_t)i << 20), ==, 1 << 20);

	m = mirror_new(&img);
	mirror_opts_init(&o);
	g_assert_cmpint(mirror_opts_parse(&o, val), ==, 0);
	g_assert_cmpint(mirror_start(m, &o, &env), ==, 0);
	memset(w, 0xcc, 65536);
	mirror_submit(m, &call, IMAGE_WRITE, w, 65536, 2 << 20, flag_done, &f);
	g_assert_false(f.done);
	for (int i = 0; i < 2000 && !rl_waiting(&atomic_load(&m->job)->rl); i++)
		g_usleep(10000);
	g_assert_cmpuint(rl_waiting(&atomic_load(&m->job)->rl), ==, 1);
	run_until(&f);
	g_assert_cmpint(f.err, ==, 0);
	for (int i = 0; i < 2000 && phase_is(m, "phase=running"); i++)
		g_usleep(10000);
	g_assert_true(phase_is(m, "phase=ready"));

	g_assert_cmpint(pread(fd, buf, 65536, 2 << 20), ==, 65536);
	for (int i = 0; i < 65536; i++)
		if (buf[i] != 0xcc)
			g_error("destination byte 0x%x is 0x%02x, the guest wrote 0xcc",
				(2 << 20) + i, buf[i]);
	g_assert_cmpint(pread(fd, buf, 1 << 20, 3 << 20), ==, 1 << 20);
	for (int i = 0; i < 1 << 20; i++)
		if (buf[i])
			g_error("destination byte 0x%x is 0x%02x, not zero", (3 << 20) + i, buf[i]);

	f.done = false;
	job_cancel(m, JOB_MIRROR, flag_done, &f);
	run_until(&f);
	mirror_free(m);
	image_unref(img);
	mirror_opts_free(&o);
	close(fd);
	g_unlink(src);
	g_unlink(dst);
	g_rmdir(dir);
	g_free(val);
	g_free(src);
	g_free(dst);
	g_free(dir);
	g_free(buf);
	g_free(w);
}

/* A guest-write hook: a write waits in before() until the hook lets it go,
 * never reaches the image before, runs after() once done; reads pass the
 * hook; detach waits for the write inside it. */
struct test_hook {
	struct mirror_hook h;
	struct mirror_hook_req *held;
	unsigned before, after;
};

static void th_before(struct mirror_hook *h, struct mirror_hook_req *hr)
{
	struct test_hook *t = (struct test_hook *)h;

	t->before++;
	t->held = hr;
}

static void th_after(struct mirror_hook *h, struct mirror_hook_req *hr)
{
	struct test_hook *t = (struct test_hook *)h;

	g_assert_true(hr == t->held);
	t->after++;
}

static void test_hook(void)
{
	char *dir = g_dir_make_tmp("vdiskfs-mirror-hook-XXXXXX", NULL);
	char *src = g_build_filename(dir, "src.qcow2", NULL);
	struct vd_create_opts co = {.size = 4 << 20};
	struct test_hook t = {.h = {th_before, th_after}};
	uint8_t *w = g_malloc(65536), *r = g_malloc(65536);
	struct mirror_call cw, cr;
	struct flag fa = {0}, fw = {0}, fr = {0}, fd = {0};
	struct vd_image *img;
	struct mirror *m;

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	g_assert_cmpint(vd_format_qcow2.create(src, &co), ==, 0);
	g_assert_cmpint(image_open(src, &rw_opts, &img), ==, 0);
	m = mirror_new(&img);
	mirror_hook_attach(m, &t.h, flag_done, &fa);
	run_until(&fa);
	g_assert_cmpint(fa.err, ==, 0);
	fa.done = false;
	mirror_hook_attach(m, &t.h, flag_done, &fa); /* one hook per view */
	g_assert_true(fa.done);
	g_assert_cmpint(fa.err, ==, -EBUSY);

	memset(w, 0xab, 65536);
	mirror_submit(m, &cw, IMAGE_WRITE, w, 65536, 1 << 20, flag_done, &fw);
	g_assert_cmpuint(t.before, ==, 1);
	g_assert_nonnull(t.held);
	g_assert_cmpuint(t.held->off, ==, 1 << 20);
	g_assert_cmpuint(t.held->len, ==, 65536);
	mirror_submit(m, &cr, IMAGE_READ, r, 65536, 1 << 20, flag_done, &fr);
	run_until(&fr);
	g_assert_cmpint(fr.err, ==, 0);
	for (int i = 0; i < 65536; i++)
		g_assert_cmpint(r[i], ==, 0); /* the held write has not reached the image */
	mirror_hook_detach(m, flag_done, &fd);
	g_assert_false(fd.done); /* a write is inside the hook */
	t.held->go(t.held);
	run_until(&fw);
	g_assert_cmpint(fw.err, ==, 0);
	g_assert_cmpuint(t.after, ==, 1);
	g_assert_true(fd.done);
	g_assert_cmpint(image_pread_wait(img, r, 65536, 1 << 20), ==, 0);
	g_assert_cmpmem(r, 65536, w, 65536);
	fw.done = false; /* after detach writes pass without the hook */
	mirror_submit(m, &cw, IMAGE_WRITE, w, 65536, 0, flag_done, &fw);
	run_until(&fw);
	g_assert_cmpuint(t.before, ==, 1);

	mirror_free(m);
	image_unref(img);
	g_unlink(src);
	g_rmdir(dir);
	g_free(src);
	g_free(dir);
	g_free(w);
	g_free(r);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/mirror/copy/zero-run-under-write", test_zero_run_under_write);
	g_test_add_func("/mirror/copy/hook", test_hook);
	return t_run();
}
