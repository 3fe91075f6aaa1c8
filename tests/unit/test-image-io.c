/* The generic image I/O over a fake driver that mixes every extent kind:
 * multi-extent requests answered once, backing reads, copy-on-write merges
 * (one source, several sources, invalid segment lists), tickets (a failed
 * link fails the write), parked writes (also one resumed by another thread's
 * blocking call), error propagation, zeroing and fsync coalescing; and
 * failures that finish a request inside the call that submits it (a refused
 * allocation in a multi-chunk zero job, a part of a split read or write, a
 * COW source, a parked write that another thread resumes and fails at once):
 * each answered once, never touched after it was freed. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "image/image-int.h"
#include "io/uring.h"
#include "io/fault.h"
#include "testlib.h"

#define U     4096
#define UNITS 16
#define VSIZE (UNITS * U)
#define BSIZE (10 * U) /* the backing image is shorter: zeroes past its end */

static struct {
	int completes, complete_err, complete_ret, flushes, zeroes_calls;
	bool park_next, bad_map, mixed_cow;
	bool wake_on_complete; /* complete() wakes the parked write, as drivers do */
	/* A parked write is resumed at once by another thread, whose map of it
	 * is refused: it is finished before the parking map() returned. */
	bool wake_elsewhere;
	struct vd_cow bad_cow; /* used when its len is set */
	struct vd_waiter *_Atomic parked;
	uint64_t zero_off, zero_len;
	atomic_int write_maps; /* write map() calls so far */
	int refuse_from;       /* refuse write maps from this one on (1-based), as qcow2
				* refuses an allocation on inconsistent refcounts */
	unsigned bad_ext;      /* this write extent (1-based) has a COW source that
				* fails at once (a compressed descriptor out of range) */
} fake;

static int host_fd;

static uint64_t unit_host(uint64_t u)
{
	return (UNITS - 1 - u) * U; /* reversed: extents never merge by accident */
}

static enum vd_ext_type unit_type(uint64_t u)
{
	static const enum vd_ext_type t[4] = {VD_EXT_DATA, VD_EXT_ZERO, VD_EXT_UNALLOC,
					      VD_EXT_DATA};
	return t[u % 4];
}

/* The old bytes of unit u from four sources: the first MIXED_A bytes from
 * the host copy of unit 15, then zeroes, then the backing file, then (spanning
 * whatever the write covers) the host copy of unit 14 from its byte 100 on. */
#define MIXED_A 1000
#define MIXED_B 1500
#define MIXED_C 2600

static void mixed_cow(struct vd_cow *c, uint64_t u)
{
	uint64_t b = u * U;
	struct vd_cow_seg s[4] = {
		{.off = b,
		 .len = MIXED_A,
		 .src.type = VD_EXT_DATA,
		 .src.fd = host_fd,
		 .src.host_off = unit_host(15)},
		{.off = b + MIXED_A, .len = MIXED_B - MIXED_A, .src.type = VD_EXT_ZERO},
		{.off = b + MIXED_B, .len = MIXED_C - MIXED_B, .src.type = VD_EXT_UNALLOC},
		{.off = b + MIXED_C,
		 .len = U - MIXED_C,
		 .src.type = VD_EXT_DATA,
		 .src.fd = host_fd,
		 .src.host_off = unit_host(14) + 100},
	};

	*c = (struct vd_cow){.off = b, .len = U};
	for (int i = 0; i < 4; i++)
		g_assert_cmpint(vd_cow_add(c, &s[i]), ==, 0);
}

/* One more byte of old data past the extent, from a compressed cluster that
 * does not contain it: the fill fails inside the COW merge's submission. */
static void bad_cow(struct vd_extent *e)
{
	e->cow = (struct vd_cow){.off = e->off,
				 .len = e->len + 1,
				 .n = 1,
				 .seg = {{.off = e->off + e->len,
					  .len = 1,
					  .src.type = VD_EXT_COMPRESSED,
					  .src.fd = host_fd,
					  .src.csize = 512,
					  .src.cluster_off = e->off + e->len + 1,
					  .src.cluster_size = U}}};
}

static void *wake_main(void *arg)
{
	struct vd_waiter *w = arg;

	w->wake(w);
	return NULL;
}

/* The write map's refusals and parking; 1 when the map goes on. */
static int fake_map_write_gate(struct vd_map *m)
{
	int n = atomic_fetch_add(&fake.write_maps, 1) + 1;
	pthread_t th;

	if (fake.refuse_from && n >= fake.refuse_from)
		return -EIO;
	if (!fake.park_next)
		return 1;
	fake.park_next = false;
	if (!fake.wake_elsewhere) {
		fake.parked = m->waiter;
		return -EAGAIN;
	}
	/* As if the driver had dropped its lock and another thread's complete()
	 * resumed the write at once; its map is refused there. */
	fake.refuse_from = n + 1;
	g_assert_cmpint(pthread_create(&th, NULL, wake_main, m->waiter), ==, 0);
	g_assert_cmpint(pthread_join(th, NULL), ==, 0);
	return -EAGAIN;
}

static int fake_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags,
		    struct vd_map *m)
{
	if (fake.bad_map) {
		struct vd_extent e = {.off = off + 1, .len = len - 1, .src.type = VD_EXT_ZERO};
		return vd_map_add(m, &e);
	}
	if (flags & VD_MAP_WRITE) {
		int ret = fake_map_write_gate(m);
		if (ret <= 0)
			return ret;
	}
	while (len) {
		uint64_t u = off / U, n = MIN(len, (u + 1) * U - off);
		struct vd_extent e = {.off = off,
				      .len = n,
				      .src = {.type = unit_type(u),
					      .fd = host_fd,
					      .host_off = unit_host(u) + off % U}};
		if (flags & VD_MAP_WRITE) {
			e.src.type = VD_EXT_DATA;
			if (fake.bad_cow.len)
				e.cow = fake.bad_cow;
			else if (fake.mixed_cow && n < U)
				mixed_cow(&e.cow, u);
			else if (n < U)
				e.cow = (struct vd_cow){.off = u * U,
							.len = U,
							.n = 1,
							.seg = {{.off = u * U,
								 .len = U,
								 .src.type = unit_type(u),
								 .src.fd = host_fd,
								 .src.host_off = unit_host(u)}}};
			if (m->n + 1 == fake.bad_ext)
				bad_cow(&e);
		}
		if (vd_map_add(m, &e))
			return -ENOMEM;
		off += n;
		len -= n;
	}
	if (flags & VD_MAP_WRITE)
		m->ticket = &fake;
	return 0;
}

static int fake_complete(struct vd_image *img, void *ticket, int err)
{
	struct vd_waiter *w = fake.wake_on_complete ? atomic_exchange(&fake.parked, NULL) : NULL;

	fake.completes++;
	fake.complete_err = err;
	if (w)
		w->wake(w);
	return err ? 0 : fake.complete_ret;
}

static int fake_flush(struct vd_image *img)
{
	fake.flushes++;
	return 0;
}

static int fake_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len)
{
	char z[U] = {0};

	fake.zeroes_calls++;
	fake.zero_off = off;
	fake.zero_len = len;
	for (uint64_t o = off; o < off + len; o += U)
		if (pwrite(host_fd, z, U, unit_host(o / U)) != U)
			return -EIO;
	return 0;
}

static const struct vd_format fake_format = {
	.name = "fake",
	.map = fake_map,
	.complete = fake_complete,
	.flush = fake_flush,
	.write_zeroes = fake_write_zeroes,
};

static struct vd_image *img, *backing;
static char expect[VSIZE];

static int make_file(size_t len, int seed)
{
	char path[] = "/var/tmp/vdiskfs-imgio-XXXXXX";
	int fd = mkstemp(path);
	char *buf = malloc(len);

	g_assert_cmpint(fd, >=, 0);
	unlink(path);
	for (size_t i = 0; i < len; i++)
		buf[i] = (char)(i * 13 + seed);
	g_assert_cmpint(pwrite(fd, buf, len, 0), ==, (ssize_t)len);
	free(buf);
	return fd;
}

static void setup_images(void)
{
	static struct vd_image raw_backing, top;
	char host[VSIZE], back[BSIZE];

	g_assert_cmpint(uring_thread_init(64), ==, 0); /* tests also submit themselves */
	memset(&fake, 0, sizeof(fake));
	host_fd = make_file(VSIZE, 1);
	raw_backing = (struct vd_image){.path = "backing.raw",
					.fmt = &vd_format_raw,
					.fd = make_file(BSIZE, 5),
					.dio_fd = -1,
					.size = BSIZE};
	pthread_mutex_init(&raw_backing.sync_lock, NULL);
	top = (struct vd_image){.path = "fake",
				.fmt = &fake_format,
				.fd = host_fd,
				.dio_fd = -1,
				.size = VSIZE,
				.zero_align = U,
				.writable = true,
				.backing = &raw_backing};
	pthread_mutex_init(&top.sync_lock, NULL);
	img = &top;
	backing = &raw_backing;
	g_assert_cmpint(pread(host_fd, host, VSIZE, 0), ==, VSIZE);
	g_assert_cmpint(pread(raw_backing.fd, back, BSIZE, 0), ==, BSIZE);
	for (uint64_t u = 0; u < UNITS; u++) {
		char *dst = expect + u * U;
		switch (unit_type(u)) {
		case VD_EXT_DATA:
			memcpy(dst, host + unit_host(u), U);
			break;
		case VD_EXT_ZERO:
			memset(dst, 0, U);
			break;
		default:
			if (u * U < BSIZE)
				memcpy(dst, back + u * U, U);
			else
				memset(dst, 0, U);
		}
	}
}

static void teardown_images(void)
{
	close(img->fd);
	close(backing->fd);
	fault_set(0, 0, 0, 0);
}

static void test_read_all_kinds(void)
{
	char buf[VSIZE];

	setup_images();
	g_assert_cmpint(image_pread_wait(img, buf, VSIZE, 0), ==, 0);
	g_assert_cmpmem(buf, VSIZE, expect, VSIZE);
	/* An unaligned range across every kind, and one ending past the backing. */
	g_assert_cmpint(image_pread_wait(img, buf, 50000, 1000), ==, 0);
	g_assert_cmpmem(buf, 50000, expect + 1000, 50000);
	g_assert_cmpint(image_pread_wait(img, buf, 3 * U, 9 * U + 7), ==, 0);
	g_assert_cmpmem(buf, 3 * U, expect + 9 * U + 7, 3 * U);
	g_assert_cmpint(fake.completes, ==, 0);
	teardown_images();
}

static void test_cow_write(void)
{
	char data[5000], buf[VSIZE];

	setup_images();
	memset(data, 0x5a, sizeof(data));
	/* Partial units 2 (backing), 3 (data) and whole none: old bytes merged. */
	g_assert_cmpint(image_pwrite_wait(img, data, sizeof(data), 2 * U + 100), ==, 0);
	g_assert_cmpint(fake.completes, ==, 1);
	g_assert_cmpint(fake.complete_err, ==, 0);
	memcpy(expect + 2 * U + 100, data, sizeof(data));
	/* The fake driver now maps units 2 and 3 to host bytes: read them there. */
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(2)), ==, U);
	g_assert_cmpmem(buf, U, expect + 2 * U, U);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(3)), ==, U);
	g_assert_cmpmem(buf, U, expect + 3 * U, U);
	/* A partial write over a ZERO unit keeps zeroes around the data. */
	g_assert_cmpint(image_pwrite_wait(img, data, 10, 5 * U + 50), ==, 0);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(5)), ==, U);
	for (int i = 0; i < U; i++)
		g_assert_cmpint(buf[i], ==, (i >= 50 && i < 60) ? 0x5a : 0);
	teardown_images();
}

/* One COW range whose old bytes come from several sources; segments that span
 * the guest's bytes are read only around them. */
static void test_cow_mixed_sources(void)
{
	char data[700], host[VSIZE], back[BSIZE], base[U], want[U], buf[U];
	uint64_t u = 6, w = 2000; /* unit 6 is backed: the backing part is real data */
	struct vd_cow c = {.off = 0, .len = U};
	struct vd_cow_seg s = {.off = 0, .len = 10, .src.type = VD_EXT_ZERO};
	static const uint64_t one[] = {MIXED_C, U - 1, 0, MIXED_A};

	setup_images();
	g_assert_cmpint(pread(host_fd, host, VSIZE, 0), ==, VSIZE);
	g_assert_cmpint(pread(backing->fd, back, BSIZE, 0), ==, BSIZE);
	memcpy(base, host + unit_host(15), MIXED_A);
	memset(base + MIXED_A, 0, MIXED_B - MIXED_A);
	memcpy(base + MIXED_B, back + u * U + MIXED_B, MIXED_C - MIXED_B);
	memcpy(base + MIXED_C, host + unit_host(14) + 100, U - MIXED_C);
	memset(data, 0x77, sizeof(data));
	fake.mixed_cow = true;
	/* [2000, 2700): across the boundary of the backing and the last segment */
	memcpy(want, base, U);
	memcpy(want + w, data, sizeof(data));
	g_assert_cmpint(image_pwrite_wait(img, data, sizeof(data), u * U + w), ==, 0);
	g_assert_cmpint(fake.completes, ==, 1);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(u)), ==, U);
	g_assert_cmpmem(buf, U, want, U);
	/* Each write copies from the same old sources again: one byte at the
	 * first and last byte of the cow range and of two segments. */
	for (unsigned i = 0; i < G_N_ELEMENTS(one); i++) {
		memcpy(want, base, U);
		want[one[i]] = 0x77;
		g_assert_cmpint(image_pwrite_wait(img, data, 1, u * U + one[i]), ==, 0);
		g_assert_cmpint(pread(host_fd, buf, U, unit_host(u)), ==, U);
		g_assert_cmpmem(buf, U, want, U);
	}
	teardown_images();

	/* Segments join when they continue one source, and refuse disorder and overflow. */
	g_assert_cmpint(vd_cow_add(&c, &s), ==, 0);
	s.off = 10;
	g_assert_cmpint(vd_cow_add(&c, &s), ==, 0);
	g_assert_cmpuint(c.n, ==, 1);
	g_assert_cmpuint(c.seg[0].len, ==, 20);
	s.off = 15;
	g_assert_cmpint(vd_cow_add(&c, &s), ==, -EINVAL);
	for (int i = 0; i < VD_COW_SEGS - 1; i++) {
		s.off = 100 + 10 * i;
		s.src.type = i % 2 ? VD_EXT_ZERO : VD_EXT_UNALLOC;
		g_assert_cmpint(vd_cow_add(&c, &s), ==, 0);
	}
	s.off = 1000;
	s.src.type = VD_EXT_ZERO;
	g_assert_cmpint(vd_cow_add(&c, &s), ==, -EINVAL);
}

/* A cow range whose segments leave old bytes without a source, overlap, or
 * run outside it: the request fails with EIO and the image is marked broken. */
static void test_cow_invalid(void)
{
	static const struct vd_cow bad[] = {
		/* no source for [0, 100) */
		{.off = 0,
		 .len = U,
		 .n = 1,
		 .seg = {{.off = 100, .len = U - 100, .src.type = VD_EXT_ZERO}}},
		/* a gap after the write */
		{.off = 0,
		 .len = U,
		 .n = 2,
		 .seg = {{.off = 0, .len = 2000, .src.type = VD_EXT_ZERO},
			 {.off = 3000, .len = U - 3000, .src.type = VD_EXT_ZERO}}},
		/* overlapping */
		{.off = 0,
		 .len = U,
		 .n = 2,
		 .seg = {{.off = 0, .len = 2000, .src.type = VD_EXT_ZERO},
			 {.off = 1000, .len = U - 1000, .src.type = VD_EXT_ZERO}}},
		/* past the cow range */
		{.off = 0,
		 .len = U,
		 .n = 1,
		 .seg = {{.off = 0, .len = U + 1, .src.type = VD_EXT_ZERO}}},
		/* an empty segment, and too many */
		{.off = 0,
		 .len = U,
		 .n = 2,
		 .seg = {{.off = 0, .len = 0, .src.type = VD_EXT_ZERO},
			 {.off = 0, .len = U, .src.type = VD_EXT_ZERO}}},
		{.off = 0, .len = U, .n = VD_COW_SEGS + 1},
	};
	char data[10] = {0};

	for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
		setup_images();
		fake.bad_cow = bad[i];
		g_assert_cmpint(image_pwrite_wait(img, data, sizeof(data), 2500), ==, -EIO);
		g_assert_true(atomic_load(&img->broken));
		atomic_store(&img->broken, false);
		teardown_images();
	}
	/* The same shape with the gap inside the written bytes is fine. */
	setup_images();
	fake.bad_cow =
		(struct vd_cow){.off = 0,
				.len = U,
				.n = 2,
				.seg = {{.off = 0, .len = 2501, .src.type = VD_EXT_ZERO},
					{.off = 2509, .len = U - 2509, .src.type = VD_EXT_ZERO}}};
	g_assert_cmpint(image_pwrite_wait(img, data, sizeof(data), 2500), ==, 0);
	teardown_images();
}

struct counter {
	int calls, err;
};

static void count_done(void *opaque, int err)
{
	struct counter *c = opaque;

	c->calls++;
	c->err = err;
}

static void drain(struct counter *c, int want)
{
	for (int i = 0; i < 1000 && (c->calls < want || uring_inflight()); i++)
		uring_run(uring_inflight() ? -1 : 1);
}

static void test_fault_answered_once(void)
{
	struct counter c = {0};
	char buf[VSIZE];

	setup_images();
	fault_set(3, EIO, FAULT_READ, 1);
	image_submit(img, IMAGE_READ, buf, VSIZE, 0, count_done, &c);
	drain(&c, 1);
	g_assert_cmpint(c.calls, ==, 1);
	g_assert_cmpint(c.err, ==, -EIO);
	/* A failed write rolls its ticket back with the error. */
	fault_set(2, ENOSPC, FAULT_WRITE, 1);
	memset(&c, 0, sizeof(c));
	image_submit(img, IMAGE_WRITE, buf, 3 * U, 0, count_done, &c);
	drain(&c, 1);
	g_assert_cmpint(c.calls, ==, 1);
	g_assert_cmpint(c.err, ==, -ENOSPC);
	g_assert_cmpint(fake.completes, ==, 1);
	g_assert_cmpint(fake.complete_err, ==, -ENOSPC);
	teardown_images();
}

/* A write whose allocations the driver cannot link is not acknowledged. */
static void test_complete_fails(void)
{
	char buf[U] = {0};

	setup_images();
	fake.complete_ret = -EIO;
	g_assert_cmpint(image_pwrite_wait(img, buf, U, 0), ==, -EIO);
	fake.complete_ret = 0;
	g_assert_cmpint(fake.completes, ==, 1);
	g_assert_cmpint(fake.complete_err, ==, 0);
	teardown_images();
}

static void test_parked_write(void)
{
	struct counter c = {0};
	char data[U];

	setup_images();
	memset(data, 0x11, sizeof(data));
	fake.park_next = true;
	image_submit(img, IMAGE_WRITE, data, U, 4 * U, count_done, &c);
	drain(&c, 0);
	g_assert_cmpint(c.calls, ==, 0);
	g_assert_nonnull(fake.parked);
	fake.parked->wake(fake.parked);
	drain(&c, 1);
	g_assert_cmpint(c.calls, ==, 1);
	g_assert_cmpint(c.err, ==, 0);
	g_assert_cmpint(fake.completes, ==, 1);
	teardown_images();
}

struct sync_writer {
	char data[U];
	atomic_bool done;
	int ret;
};

static void *sync_writer_main(void *arg)
{
	struct sync_writer *sw = arg;

	sw->ret = image_pwrite_wait(img, sw->data, U, 4 * U);
	atomic_store(&sw->done, true);
	uring_thread_exit();
	return NULL;
}

/* A write parked by another thread is resumed by this thread's completion,
 * inside a blocking call: its I/O goes on this thread's ring, so the call
 * returns only once it finished. Then this thread may stop running its ring
 * (exit, block) without leaving the other caller waiting forever. */
static void test_parked_write_resumed_here(void)
{
	struct sync_writer sw = {.done = false};
	char data[U], buf[U];
	pthread_t th;

	setup_images();
	memset(sw.data, 0x22, sizeof(sw.data));
	memset(data, 0x33, sizeof(data));
	fake.park_next = true;
	g_assert_cmpint(pthread_create(&th, NULL, sync_writer_main, &sw), ==, 0);
	for (int i = 0; i < 5000 && !atomic_load(&fake.parked); i++)
		g_usleep(1000);
	g_assert_nonnull(atomic_load(&fake.parked));
	fake.wake_on_complete = true;
	g_assert_cmpint(image_pwrite_wait(img, data, U, 8 * U), ==, 0);
	/* This thread runs its ring no more: the other write must be done. */
	for (int i = 0; i < 2000 && !atomic_load(&sw.done); i++)
		g_usleep(1000);
	g_assert_true(atomic_load(&sw.done));
	g_assert_cmpint(pthread_join(th, NULL), ==, 0);
	g_assert_cmpint(sw.ret, ==, 0);
	g_assert_cmpint(fake.completes, ==, 2);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(4)), ==, U);
	g_assert_cmpmem(buf, U, sw.data, U);
	teardown_images();
}

static void test_invalid_map(void)
{
	char buf[U];

	setup_images();
	fake.bad_map = true;
	g_assert_cmpint(image_pread_wait(img, buf, U, 0), ==, -EIO);
	g_assert_true(atomic_load(&img->broken));
	fake.bad_map = false;
	g_assert_cmpint(image_pread_wait(img, buf, U, 0), ==, -EIO);
	atomic_store(&img->broken, false);
	teardown_images();
}

static void test_zero_split(void)
{
	char buf[VSIZE];

	setup_images();
	/* Unaligned: the driver zeroes units 1..3, writes cover the edges. */
	g_assert_cmpint(image_zero_wait(img, 3 * U + 200, U - 100, false), ==, 0);
	g_assert_cmpint(fake.zeroes_calls, ==, 1);
	g_assert_cmpuint(fake.zero_off, ==, U);
	g_assert_cmpuint(fake.zero_len, ==, 3 * U);
	memset(expect + U - 100, 0, 3 * U + 200);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(0)), ==, U);
	g_assert_cmpmem(buf, U, expect, U);
	g_assert_cmpint(pread(host_fd, buf, U, unit_host(4)), ==, U);
	g_assert_cmpmem(buf, U, expect + 4 * U, U);
	/* Out of range and read-only requests are refused. */
	g_assert_cmpint(image_zero_wait(img, U, VSIZE, false), ==, -ENOSPC);
	img->read_only = true;
	g_assert_cmpint(image_pwrite_wait(img, buf, 1, 0), ==, -EROFS);
	img->read_only = false;
	teardown_images();
}

static void test_fsync_coalesced(void)
{
	struct counter c = {0};
	char *buf = g_malloc(U);

	setup_images();
	/* With a read of this thread in flight, fsyncs go through the ring. */
	image_submit(img, IMAGE_READ, buf, U, 0, count_done, &c);
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c); /* starts at once */
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done,
		     &c); /* these two share the next one */
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c);
	drain(&c, 4);
	g_assert_cmpint(c.calls, ==, 4);
	g_assert_cmpint(c.err, ==, 0);
	g_assert_cmpint(fake.flushes, ==, 2);
	teardown_images();
	g_free(buf);
}

/* With nothing of its own in flight, a thread syncs the image itself: each
 * call is answered before it returns. */
static void test_fsync_inline(void)
{
	struct counter c = {0};

	setup_images();
	for (int i = 0; i < 3; i++) {
		/* A loaded machine's slow fdatasync must not start the back-off
		 * (tested below) in the middle of this. */
		atomic_store(&img->sync_inline_after, 0);
		image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c);
		g_assert_cmpint(c.calls, ==, i + 1);
	}
	g_assert_cmpint(c.err, ==, 0);
	g_assert_cmpint(fake.flushes, ==, 3);
	g_assert_cmpuint(uring_inflight(), ==, 0);
	/* After a slow one, the image's flushes go through the ring a while. */
	atomic_store(&img->sync_inline_after, UINT64_MAX);
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c);
	g_assert_cmpint(c.calls, ==, 3);
	g_assert_cmpuint(uring_inflight(), ==, 1);
	drain(&c, 4);
	g_assert_cmpint(c.err, ==, 0);
	/* When the back-off ends, one quick flush brings them back to the
	 * thread at once, however slow the average was. "Quick" is under a
	 * second here and the average a hundred times that, so that a loaded
	 * machine's fdatasync (which took over 2 ms in a CI run) still is. */
	uint64_t max_ns = fsync_inline_max_ns;
	fsync_inline_max_ns = 1000000000ull;
	atomic_store(&img->sync_inline_avg, 100 * fsync_inline_max_ns);
	atomic_store(&img->sync_inline_after, 1);
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c);
	g_assert_cmpint(c.calls, ==, 5);
	g_assert_cmpuint(atomic_load(&img->sync_inline_after), ==, 0);
	image_submit(img, IMAGE_FSYNC, NULL, 0, 0, count_done, &c);
	g_assert_cmpint(c.calls, ==, 6);
	g_assert_cmpint(c.err, ==, 0);
	fsync_inline_max_ns = max_ns;
	teardown_images();
}

/* ---- failures that finish a request inside the call that submits it ---- */

/* A flat image larger than a zero chunk whose driver has no write_zeroes:
 * zeroing it is a job of several 1 MiB written-zero chunks, each a write
 * that maps (allocates) on its own. */
#define FLAT_SIZE (5 * 1024 * 1024 + 3 * U)

static int flat_map(struct vd_image *im, uint64_t off, uint64_t len, unsigned flags,
		    struct vd_map *m)
{
	struct vd_extent e = {.off = off,
			      .len = len,
			      .src.type = VD_EXT_DATA,
			      .src.fd = im->fd,
			      .src.host_off = off};

	if (flags & VD_MAP_WRITE) {
		int ret = fake_map_write_gate(m);
		if (ret <= 0)
			return ret;
	}
	return vd_map_add(m, &e);
}

static const struct vd_format flat_format = {
	.name = "flat",
	.map = flat_map,
};

static struct vd_image flat;

static void setup_flat(void)
{
	char path[] = "/var/tmp/vdiskfs-imgio-XXXXXX";

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	memset(&fake, 0, sizeof(fake));
	flat = (struct vd_image){.path = "flat",
				 .fmt = &flat_format,
				 .fd = mkstemp(path),
				 .dio_fd = -1,
				 .size = FLAT_SIZE,
				 .zero_align = U,
				 .writable = true};
	g_assert_cmpint(flat.fd, >=, 0);
	unlink(path);
	g_assert_cmpint(ftruncate(flat.fd, FLAT_SIZE), ==, 0);
	pthread_mutex_init(&flat.sync_lock, NULL);
}

/* Submit, run the ring until answered and idle: exactly one answer. */
static void expect_one_answer(struct counter *c, int err)
{
	drain(c, 1);
	g_assert_cmpint(c->calls, ==, 1);
	g_assert_cmpint(c->err, ==, err);
	g_assert_cmpuint(uring_inflight(), ==, 0);
}

/* Zeroing [100, FLAT_SIZE - 100) is six chunks (four in flight at most):
 * the allocation of the first, a middle and the last is refused, as qcow2
 * does when a refcount says a cluster holding fixed metadata is free. The
 * job ends with that error, once, and starts no chunk after it. */
static void test_zero_job_refused(void)
{
	static const int refuse[] = {1, 3, 6};

	for (unsigned i = 0; i < G_N_ELEMENTS(refuse); i++) {
		struct counter c = {0};

		setup_flat();
		fake.refuse_from = refuse[i];
		image_submit(&flat, IMAGE_DISCARD, NULL, FLAT_SIZE - 200, 100, count_done, &c);
		expect_one_answer(&c, -EIO);
		g_assert_cmpint(atomic_load(&fake.write_maps), ==, refuse[i]);
		close(flat.fd);
	}
	/* The same job with nothing refused writes all six. */
	setup_flat();
	g_assert_cmpint(image_zero_wait(&flat, FLAT_SIZE - 200, 100, true), ==, 0);
	g_assert_cmpint(atomic_load(&fake.write_maps), ==, 6);
	close(flat.fd);
}

/* The first chunk's write parks, and another thread resumes it and fails it
 * before the pumping call returned: the job is answered once, by the frame
 * that pumps, not freed under it. */
static void test_zero_job_resumed_elsewhere(void)
{
	struct counter c = {0};

	setup_flat();
	fake.park_next = true;
	fake.wake_elsewhere = true;
	image_submit(&flat, IMAGE_DISCARD, NULL, 3 * U, 100, count_done, &c);
	expect_one_answer(&c, -EIO);
	g_assert_cmpint(atomic_load(&fake.write_maps), ==, 2);
	close(flat.fd);
}

/* A parked write that another thread resumes and fails before map() has
 * returned to its submitter: answered once, never touched after. */
static void test_parked_write_finished_elsewhere(void)
{
	struct counter c = {0};
	char data[U] = {0};

	setup_images();
	fake.park_next = true;
	fake.wake_elsewhere = true;
	image_submit(img, IMAGE_WRITE, data, U, 4 * U, count_done, &c);
	expect_one_answer(&c, -EIO);
	g_assert_cmpint(fake.completes, ==, 0);
	teardown_images();
}

/* A write of units 0..4 (five extents, partial first and last) whose first,
 * middle or last extent's old bytes cannot be read: the failure comes inside
 * the submission; the write fails once and its ticket is rolled back once. */
static void test_write_split_part_fails(void)
{
	static const unsigned bad[] = {1, 3, 5};
	char *data = g_malloc0(5 * U);

	for (unsigned i = 0; i < G_N_ELEMENTS(bad); i++) {
		struct counter c = {0};

		setup_images();
		fake.bad_ext = bad[i];
		image_submit(img, IMAGE_WRITE, data, 5 * U - 200, 100, count_done, &c);
		expect_one_answer(&c, -EIO);
		g_assert_cmpint(fake.completes, ==, 1);
		g_assert_cmpint(fake.complete_err, ==, -EIO);
		teardown_images();
	}
	g_free(data);
}

/* A COW merge inside one unit whose old bytes come from four sources: the
 * guest's bytes cover the first; zeroes are filled at once, the backing
 * image (marked broken) refuses at once, the last is read from the host. */
static void test_cow_source_fails(void)
{
	struct counter c = {0};
	char data[MIXED_A + 200] = {0};

	setup_images();
	fake.mixed_cow = true;
	atomic_store(&backing->broken, true);
	image_submit(img, IMAGE_WRITE, data, sizeof(data), 6 * U, count_done, &c);
	expect_one_answer(&c, -EIO);
	g_assert_cmpint(fake.completes, ==, 1);
	g_assert_cmpint(fake.complete_err, ==, -EIO);
	teardown_images();
}

/* Reads split into extents with zeroes answered inline and a backing part
 * refused at once, first, in the middle and last. */
static void test_read_split_part_fails(void)
{
	static const uint64_t range[][2] = {{2 * U, 3 * U}, {0, 5 * U}, {0, 3 * U}};
	char *buf = g_malloc(5 * U);

	for (unsigned i = 0; i < G_N_ELEMENTS(range); i++) {
		struct counter c = {0};

		setup_images();
		atomic_store(&backing->broken, true);
		image_submit(img, IMAGE_READ, buf, range[i][1], range[i][0], count_done, &c);
		expect_one_answer(&c, -EIO);
		teardown_images();
	}
	g_free(buf);
}

/* A write parked behind another one is resumed by that write's complete()
 * and refused there: each is answered once, with its own result. */
static void test_resumed_write_refused(void)
{
	struct counter a = {0}, b = {0};
	char data[U] = {0};

	setup_images();
	fake.park_next = true;
	image_submit(img, IMAGE_WRITE, data, U, 4 * U, count_done, &a);
	g_assert_nonnull(fake.parked);
	fake.wake_on_complete = true;
	fake.refuse_from = 3; /* a's first map, b's map, then a's again */
	image_submit(img, IMAGE_WRITE, data, U, 8 * U, count_done, &b);
	expect_one_answer(&b, 0);
	g_assert_cmpint(a.calls, ==, 1);
	g_assert_cmpint(a.err, ==, -EIO);
	g_assert_cmpint(fake.completes, ==, 1);
	teardown_images();
}

static void test_block_status_chain(void)
{
	uint64_t pnum;
	enum vd_bs st;

	setup_images();
	/* The raw backing file is fully written: DATA through the chain. */
	g_assert_cmpint(image_block_status(backing, 0, BSIZE, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpuint(pnum, ==, BSIZE);
	teardown_images();
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/image-io/read-all-kinds", test_read_all_kinds);
	g_test_add_func("/image-io/cow-write", test_cow_write);
	g_test_add_func("/image-io/cow-mixed-sources", test_cow_mixed_sources);
	g_test_add_func("/image-io/cow-invalid", test_cow_invalid);
	g_test_add_func("/image-io/fault-answered-once", test_fault_answered_once);
	g_test_add_func("/image-io/complete-fails", test_complete_fails);
	g_test_add_func("/image-io/parked-write", test_parked_write);
	g_test_add_func("/image-io/parked-write-resumed-here", test_parked_write_resumed_here);
	g_test_add_func("/image-io/invalid-map", test_invalid_map);
	g_test_add_func("/image-io/zero-split", test_zero_split);
	g_test_add_func("/image-io/fsync-coalesced", test_fsync_coalesced);
	g_test_add_func("/image-io/fsync-inline", test_fsync_inline);
	g_test_add_func("/image-io/block-status", test_block_status_chain);
	g_test_add_func("/image-io/sync-fail/zero-job-refused", test_zero_job_refused);
	g_test_add_func("/image-io/sync-fail/zero-job-resumed-elsewhere",
			test_zero_job_resumed_elsewhere);
	g_test_add_func("/image-io/sync-fail/parked-write-finished-elsewhere",
			test_parked_write_finished_elsewhere);
	g_test_add_func("/image-io/sync-fail/write-split-part", test_write_split_part_fails);
	g_test_add_func("/image-io/sync-fail/cow-source", test_cow_source_fails);
	g_test_add_func("/image-io/sync-fail/read-split-part", test_read_split_part_fails);
	g_test_add_func("/image-io/sync-fail/resumed-write-refused", test_resumed_write_refused);
	return t_run();
}
