/* qcow2 writes: random workloads (writes, zeroing, discard, fsync) on fresh and
 * qemu-made images of every kind, mirrored into a raw file; after close
 * `qemu-img check` must be clean (exit 0) and `qemu-img compare` equal.
 * Also snapshots kept intact, dirty-image repair, autoclear bits, resize,
 * discard shrinking the host file, and concurrent writers on one cluster. */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/uring.h"
#include "testlib.h"

static int qemu_check(const char *name)
{
	return t_qemu_img("check -f qcow2 '%s' >check.log 2>&1", name);
}

static int qemu_compare(const char *qcow2, const char *raw)
{
	return t_qemu_img("compare -f qcow2 -F raw '%s' '%s' >/dev/null 2>&1", qcow2, raw);
}

/* A write through the driver, mirrored into a raw reference file. */
static void both_write(struct vd_image *img, int rawfd, const void *buf, uint64_t len, uint64_t off)
{
	g_assert_cmpint(image_pwrite_wait(img, buf, len, off), ==, 0);
	g_assert_cmpint(pwrite(rawfd, buf, len, off), ==, (ssize_t)len);
}

/* A sparse copy of the scratch file raw, open for writing. */
static int raw_open_copy(const char *raw, const char *copy)
{
	char *p = t_path(copy);
	int fd;

	t_sh("cp --sparse=always '%s' '%s'", raw, copy);
	fd = open(p, O_RDWR);
	g_assert_cmpint(fd, >=, 0);
	g_free(p);
	return fd;
}

static void fill_pattern(uint8_t *buf, size_t len, unsigned seed)
{
	for (size_t i = 0; i < len; i++)
		buf[i] = (uint8_t)(seed * 131 + i * 7 + (i >> 9));
}

static void zero_both(struct vd_image *img, int rawfd, uint64_t len, uint64_t off, bool unmap)
{
	uint8_t *z = g_malloc0(len);

	g_assert_cmpint(image_zero_wait(img, len, off, unmap), ==, 0);
	g_assert_cmpint(pwrite(rawfd, z, len, off), ==, (ssize_t)len);
	g_free(z);
}

/* nops random operations, byte-granular, crossing clusters and tables. */
/* qemu-img check clean (its log shown if not), and equal to the raw reference. */
static void check_and_compare(const char *q, const char *r)
{
	if (qemu_check(q) != 0) {
		char *log = t_path("check.log"), *out = NULL;

		if (g_file_get_contents(log, &out, NULL, NULL))
			g_printerr("%s", out);
		g_assert_not_reached();
	}
	g_assert_cmpint(qemu_compare(q, r), ==, 0);
}

static void workload(struct vd_image *img, int rawfd, unsigned seed, int nops, uint64_t maxlen)
{
	GRand *r = g_rand_new_with_seed(seed);
	uint8_t *buf = g_malloc(maxlen);

	for (int i = 0; i < nops; i++) {
		uint64_t len = g_rand_int_range(r, 1, maxlen);
		uint64_t off = (uint64_t)g_rand_double_range(r, 0, img->size - 1);
		int op = g_rand_int_range(r, 0, 100);

		len = MIN(len, img->size - off);
		if (op < 70) {
			fill_pattern(buf, len, seed + i);
			both_write(img, rawfd, buf, len, off);
		} else if (op < 85) {
			zero_both(img, rawfd, len, off, false);
		} else if (op < 97) {
			zero_both(img, rawfd, len, off, true);
		} else {
			g_assert_cmpint(image_fsync_wait(img), ==, 0);
		}
	}
	g_free(buf);
	g_rand_free(r);
}

/* Copy a fixture, run a workload, close, check, compare. */
static void write_fixture(const char *name, int nops)
{
	char *q = g_strdup_printf("w-%s.qcow2", name), *r = g_strdup_printf("w-%s.raw", name);
	char *src = g_strdup_printf("%s.qcow2", name), *srcraw = g_strdup_printf("%s.raw", name);
	struct vd_image *img;
	int fd;

	t_sh("cp '%s' '%s'", src, q);
	fd = raw_open_copy(srcraw, r);
	img = t_open_ok(q, false);
	g_assert_false(img->read_only);
	workload(img, fd, g_str_hash(name), nops, 3 * img->cluster_size + 1000);
	t_compare_raw(img, r);
	image_unref(img);
	close(fd);
	check_and_compare(q, r);
	g_free(q);
	g_free(r);
	g_free(src);
	g_free(srcraw);
}

static void test_fixture_workload(gconstpointer name)
{
	write_fixture(name, 150);
}

static void test_create(void)
{
	static const uint32_t cs[] = {512, 4096, 65536, 2 << 20};

	for (unsigned i = 0; i < G_N_ELEMENTS(cs); i++) {
		struct vd_create_opts o = {.size = 24 << 20, .cluster_size = cs[i]};
		char *q = g_strdup_printf("new%u.qcow2", cs[i]),
		     *r = g_strdup_printf("new%u.raw", cs[i]);
		char *p = t_path(q), *rp = t_path(r);
		struct vd_image *img;
		int fd;

		g_assert_cmpint(vd_format_qcow2.create(p, &o), ==, 0);
		g_assert_cmpint(qemu_check(q), ==, 0);
		fd = open(rp, O_RDWR | O_CREAT | O_TRUNC, 0644);
		g_assert_cmpint(ftruncate(fd, o.size), ==, 0);
		img = t_open_ok(q, false);
		workload(img, fd, cs[i], 120, MIN(4 * cs[i] + 3000, 1 << 20));
		image_unref(img);
		close(fd);
		check_and_compare(q, r);
		g_free(q);
		g_free(r);
		g_free(p);
		g_free(rp);
	}
}

/* 512-byte clusters over many MiB: new refcount blocks and a larger refcount table. */
static void test_reftable_growth(void)
{
	struct vd_create_opts o = {.size = 64 << 20, .cluster_size = 512};
	char *p = t_path("grow.qcow2"), *rp = t_path("grow.raw");
	struct vd_image *img;
	uint8_t *buf = g_malloc(1 << 20);
	int fd = open(rp, O_RDWR | O_CREAT | O_TRUNC, 0644);

	g_assert_cmpint(ftruncate(fd, o.size), ==, 0);
	g_assert_cmpint(vd_format_qcow2.create(p, &o), ==, 0);
	img = t_open_ok("grow.qcow2", false);
	for (int i = 0; i < 20; i++) {
		fill_pattern(buf, 1 << 20, i);
		both_write(img, fd, buf, 1 << 20, (uint64_t)i * (3 << 20) % o.size);
	}
	image_unref(img);
	close(fd);
	g_assert_cmpint(qemu_check("grow.qcow2"), ==, 0);
	g_assert_cmpint(qemu_compare("grow.qcow2", "grow.raw"), ==, 0);
	g_free(buf);
	g_free(p);
	g_free(rp);
}

static void test_create_backing(void)
{
	struct vd_create_opts o = {.size = 6 << 20,
				   .cluster_size = 65536,
				   .backing = "top.qcow2",
				   .backing_fmt = "qcow2"};
	char *p = t_path("ov.qcow2");
	struct vd_image *img;
	uint8_t buf[100];
	int fd;

	g_assert_cmpint(vd_format_qcow2.create(p, &o), ==, 0);
	g_assert_cmpint(qemu_check("ov.qcow2"), ==, 0);
	fd = raw_open_copy("top.raw", "ov.raw");
	img = t_open_ok("ov.qcow2", false);
	t_compare_raw(img, "top.raw");
	/* one byte into clusters over backing data: the rest comes from the chain */
	memset(buf, 0xee, sizeof(buf));
	both_write(img, fd, buf, 1, 70000);
	both_write(img, fd, buf, 100, 5 * 65536 - 50);
	t_compare_raw(img, "ov.raw");
	image_unref(img);
	close(fd);
	g_assert_cmpint(qemu_check("ov.qcow2"), ==, 0);
	g_assert_cmpint(qemu_compare("ov.qcow2", "ov.raw"), ==, 0);
	g_free(p);
}

/* Writes into clusters shared with snapshots leave the snapshots as they were. */
static void test_snapshots_kept(void)
{
	t_sh("cp snap.qcow2 ws.qcow2 && qemu-img snapshot -l ws.qcow2 >s-before && "
	     "qemu-img convert -l snapshot.name=s1 -O raw ws.qcow2 s1-before.raw && "
	     "qemu-img convert -l snapshot.name=s2 -O raw ws.qcow2 s2-before.raw");
	t_sh("cp snap.raw ws.raw");
	{
		struct vd_image *img = t_open_ok("ws.qcow2", false);
		char *rp = t_path("ws.raw");
		int fd = open(rp, O_RDWR);
		uint8_t buf[5000];

		memset(buf, 0xab, sizeof(buf));
		both_write(img, fd, buf, 10, 65536 + 100);	  /* shared data, shared L2 */
		both_write(img, fd, buf, 5000, (3 << 20) + 4000); /* shared with s2 only */
		zero_both(img, fd, 65536 * 2, 0, true);		  /* discard shared clusters */
		zero_both(img, fd, 65536, 512 << 10, false);
		workload(img, fd, 7, 60, 200000);
		image_unref(img);
		close(fd);
		g_free(rp);
	}
	g_assert_cmpint(qemu_check("ws.qcow2"), ==, 0);
	g_assert_cmpint(qemu_compare("ws.qcow2", "ws.raw"), ==, 0);
	t_sh("qemu-img snapshot -l ws.qcow2 >s-after && cmp s-before s-after && "
	     "qemu-img convert -l snapshot.name=s1 -O raw ws.qcow2 s1-after.raw && "
	     "qemu-img convert -l snapshot.name=s2 -O raw ws.qcow2 s2-after.raw && "
	     "cmp s1-before.raw s1-after.raw && cmp s2-before.raw s2-after.raw");
}

/* Partial writes into clusters of an extended-L2 image that a snapshot shares:
 * the new cluster takes allocated subclusters from the old host cluster and the
 * rest of a partly written unallocated subcluster from the backing file (or
 * zeroes past its end, or zeroes for a zero subcluster). Checked against the
 * same writes done by qemu-io on a copy; subclusters the writes do not touch
 * keep their state, and the snapshot keeps its data. */
static void extl2_shared_case(const char *name, const char *backing)
{
	/* guest offset, length: 64 KiB clusters, 2 KiB subclusters */
	static const uint64_t w[][2] = {
		{1000, 100},		    /* cl 0: unallocated sc 0, backing */
		{65536 + 1000, 3000},	    /* cl 1: unallocated sc 0 and 1 */
		{131072 + 2048, 100},	    /* cl 2: all allocated, head of a subcluster */
		{196608 + 3000, 6000},	    /* cl 3: unallocated sc 1 and 4 around whole ones */
		{262144 + 5000, 100},	    /* cl 4: zero sc 2 */
		{262144 + 9000, 40000},	    /* cl 4 again: now its own, in place */
		{327680 - 1000, 2000},	    /* cl 4 / cl 5 (never allocated) */
		{(3 << 20) + 100, 10},	    /* cl 48: past the 3 MiB backing file */
		{(3 << 20) + 65536 - 5, 5}, /* cl 48: the end of its last subcluster */
	};
	char *q = g_strdup_printf("%s.qcow2", name), *qq = g_strdup_printf("%s-qemu.qcow2", name);
	char *r = g_strdup_printf("%s.raw", name), *rp = t_path(r);
	GString *cmds = g_string_new(NULL);
	struct vd_image *img;
	uint8_t buf[40000];
	uint64_t pnum;
	enum vd_bs st;
	int fd;

	t_sh("qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=64k %s%s "
	     "%s 4M",
	     backing ? "-F raw -b " : "", backing ? backing : "", q);
	t_sh("qemu-io -f qcow2 -c 'write -P 0x41 8k 4k' -c 'write -z 20k 4k' "
	     "-c 'write -P 0x42 94k 2k' -c 'write -P 0x43 128k 64k' "
	     "-c 'write -P 0x44 202k 2k' -c 'write -P 0x45 256k 2k' "
	     "-c 'write -z 260k 4k' -c 'write -P 0x46 3080k 2k' %s >/dev/null && "
	     "qemu-img snapshot -c s1 %s && "
	     "qemu-img convert -l snapshot.name=s1 -O raw %s %s-s1.raw && "
	     "qemu-img convert -O raw %s %s && cp %s %s && cp %s %s-wl.qcow2 && "
	     "cp %s %s-wl.raw",
	     q, q, q, name, q, r, q, qq, q, name, r, name);
	fd = open(rp, O_RDWR);
	g_assert_cmpint(fd, >=, 0);
	img = t_open_ok(q, false);
	for (unsigned i = 0; i < G_N_ELEMENTS(w); i++) {
		uint8_t pat = 0x60 + i;

		memset(buf, pat, w[i][1]);
		both_write(img, fd, buf, w[i][1], w[i][0]);
		g_string_append_printf(cmds, " -c 'write -P %u %llu %llu'", pat,
				       (unsigned long long)w[i][0], (unsigned long long)w[i][1]);
	}
	t_compare_raw(img, r);
	/* untouched subclusters keep their state: unallocated, zero, allocated */
	g_assert_cmpint(img->fmt->block_status(img, 30 << 10, 2048, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_UNALLOC);
	g_assert_cmpint(img->fmt->block_status(img, 22 << 10, 2048, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	g_assert_cmpint(img->fmt->block_status(img, 202 << 10, 2048, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_DATA);
	g_assert_cmpint(img->fmt->block_status(img, 206 << 10, 2048, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_UNALLOC);
	image_unref(img);
	close(fd);
	check_and_compare(q, r);
	t_sh("qemu-io -f qcow2%s %s >/dev/null && qemu-img compare %s %s >/dev/null", cmds->str, qq,
	     q, qq);
	t_sh("qemu-img convert -l snapshot.name=s1 -O raw %s %s-s1-after.raw && "
	     "cmp %s-s1.raw %s-s1-after.raw",
	     q, name, name, name);
	g_string_free(cmds, true);
	g_free(q);
	g_free(qq);
	g_free(r);
	g_free(rp);

	/* Random byte-granular writes, zeroing and discards over the same start. */
	q = g_strdup_printf("%s-wl.qcow2", name);
	r = g_strdup_printf("%s-wl.raw", name);
	rp = t_path(r);
	fd = open(rp, O_RDWR);
	img = t_open_ok(q, false);
	workload(img, fd, g_str_hash(name), 150, 70000);
	t_compare_raw(img, r);
	image_unref(img);
	close(fd);
	check_and_compare(q, r);
	t_sh("qemu-img convert -l snapshot.name=s1 -O raw %s %s-s1-wl.raw && "
	     "cmp %s-s1.raw %s-s1-wl.raw",
	     q, name, name, name);
	g_free(q);
	g_free(r);
	g_free(rp);
}

static void test_extl2_shared_cow(void)
{
	extl2_shared_case("xs-backing", "base.raw");
	extl2_shared_case("xs-alone", NULL);
}

/* The snapshot s1 of the lazysnap fixture is listed and reads as before. */
static void assert_lazysnap_s1(const char *q)
{
	t_sh("qemu-img snapshot -l %s | cmp - lazysnap.snapshots && "
	     "qemu-img convert -l snapshot.name=s1 -O raw %s s1-now.raw && "
	     "cmp lazysnap-s1.raw s1-now.raw",
	     q, q);
}

/* The lazy-refcounts images left dirty by qemu-io abort: repaired at open,
 * also with an internal snapshot and compressed clusters (shared with it). */
static void test_dirty_rebuild(void)
{
	struct vd_image *img;

	t_sh("cp lazy.qcow2 wl.qcow2");
	g_assert_cmpint(qemu_check("wl.qcow2"), ==, 2);
	write_fixture("lazy", 40);
	t_sh("qemu-img info w-lazy.qcow2 | grep -q 'corrupt: false'");
	t_sh("! od -An -tx1 -j72 -N8 w-lazy.qcow2 | grep -q '01 *$'");

	/* the rebuild alone (open, close) leaves a clean image */
	t_sh("cp lazysnap.qcow2 wls.qcow2");
	g_assert_cmpint(qemu_check("wls.qcow2"), ==, 2);
	img = t_open_ok("wls.qcow2", false);
	g_assert_false(img->read_only);
	t_compare_raw(img, "lazysnap.raw");
	image_unref(img);
	g_assert_cmpint(qemu_check("wls.qcow2"), ==, 0);
	t_sh("grep -q 'compressed clusters' check.log && "
	     "! grep -q ' 0.00%% compressed' check.log");
	g_assert_cmpint(qemu_compare("wls.qcow2", "lazysnap.raw"), ==, 0);
	assert_lazysnap_s1("wls.qcow2");
	/* and writes after it */
	write_fixture("lazysnap", 60);
	t_sh("! od -An -tx1 -j72 -N8 w-lazysnap.qcow2 | grep -q '01 *$'");
	assert_lazysnap_s1("w-lazysnap.qcow2");
}

/* A v3 header of 104 bytes (no compression type byte), its extensions and
 * backing file name moved down to match: read, written, grown; qemu-img check
 * clean, and the header keeps its length (fields are rewritten one by one). */
static void test_header_length_104(void)
{
	char *p = t_path("h104.qcow2"), *rp = t_path("h104.raw");
	uint8_t c0[4096];
	struct vd_image *img;
	uint64_t bo;
	int fd;

	t_sh("qemu-img create -q -f qcow2 -o compat=1.1 -b base.raw -F raw "
	     "h104.qcow2 4M && qemu-io -f qcow2 -c 'write -P 0x5c 64k 100k' "
	     "h104.qcow2 >/dev/null");
	fd = open(p, O_RDWR);
	g_assert_cmpint(pread(fd, c0, sizeof(c0), 0), ==, sizeof(c0));
	g_assert_cmpuint(GUINT32_FROM_BE(*(uint32_t *)(c0 + 100)), ==, 112);
	g_assert_cmpuint(c0[104], ==, 0);
	memcpy(&bo, c0 + 8, 8);
	bo = GUINT64_FROM_BE(bo);
	g_assert_cmpuint(bo, >, 112);
	memmove(c0 + 104, c0 + 112, sizeof(c0) - 112);
	memset(c0 + sizeof(c0) - 8, 0, 8);
	*(uint32_t *)(c0 + 100) = GUINT32_TO_BE(104);
	bo = GUINT64_TO_BE(bo - 8);
	memcpy(c0 + 8, &bo, 8);
	g_assert_cmpint(pwrite(fd, c0, sizeof(c0), 0), ==, sizeof(c0));
	close(fd);
	/* QEMU takes it as it is */
	g_assert_cmpint(qemu_check("h104.qcow2"), ==, 0);
	t_sh("qemu-img info h104.qcow2 | grep -q 'backing file format: raw' && "
	     "qemu-img convert -O raw h104.qcow2 h104.raw");
	fd = open(rp, O_RDWR);
	img = t_open_ok("h104.qcow2", false);
	g_assert_nonnull(img->backing);
	t_compare_raw(img, "h104.raw");
	workload(img, fd, 104, 80, 200000);
	g_assert_cmpint(image_truncate(img, 5 << 20), ==, 0);
	g_assert_cmpint(ftruncate(fd, 5 << 20), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, "end", 3, (5 << 20) - 3), ==, 0);
	g_assert_cmpint(pwrite(fd, "end", 3, (5 << 20) - 3), ==, 3);
	t_compare_raw(img, "h104.raw");
	image_unref(img);
	close(fd);
	check_and_compare("h104.qcow2", "h104.raw");
	g_assert_cmpuint(t_get_be64("h104.qcow2", 96) & 0xffffffff, ==, 104);
	g_assert_cmpuint(t_get_be64("h104.qcow2", 104) >> 32, ==, 0xe2792aca); /* backing format */
	g_free(p);
	g_free(rp);
}

/* v2 has no zero flag. Discard and zero-range (punch hole, FALLOC_FL_ZERO_RANGE)
 * read as zeroes afterwards: without a backing file the clusters are dropped
 * (a snapshot keeps its own), over a backing file real zeroes are written. */
static void v2_zero_case(const char *name, bool backing)
{
	char *q = g_strdup_printf("%s.qcow2", name), *r = g_strdup_printf("%s.raw", name);
	struct vd_image *img;
	uint64_t pnum;
	enum vd_bs st;
	int fd;

	t_sh("qemu-img create -q -f qcow2 -o compat=0.10 %s %s 4M && qemu-io -f "
	     "qcow2 -c 'write -P 0x71 0 256k' -c 'write -P 0x72 1M 128k' %s "
	     ">/dev/null && qemu-img convert -O raw %s %s",
	     backing ? "-b base.raw -F raw" : "", q, q, q, r);
	if (!backing)
		t_sh("qemu-img snapshot -c s1 %s && qemu-img convert -l "
		     "snapshot.name=s1 -O raw %s %s-s1.raw",
		     q, q, name);
	fd = raw_open_copy(r, "v2z-ref.raw");
	img = t_open_ok(q, false);
	zero_both(img, fd, 128 << 10, 64 << 10, true);		  /* whole clusters of data */
	zero_both(img, fd, 200000, 200000 + 123, true);		  /* unaligned, data and not */
	zero_both(img, fd, 128 << 10, 2 << 20, true);		  /* backing data only */
	zero_both(img, fd, 65536 + 1000, (1 << 20) + 500, false); /* zero range, unaligned */
	zero_both(img, fd, 128 << 10, 1536 << 10, false);	  /* zero range, aligned */
	zero_both(img, fd, 64 << 10, (3 << 20) + 65536, true);	  /* past the backing file */
	t_compare_raw(img, "v2z-ref.raw");
	g_assert_cmpint(img->fmt->block_status(img, 2 << 20, 65536, &pnum, &st), ==, 0);
	if (backing)
		g_assert_cmpint(st, ==, VD_BS_DATA); /* zeroes written over the backing data */
	else
		g_assert_cmpint(st, !=, VD_BS_DATA);
	image_unref(img);
	close(fd);
	check_and_compare(q, "v2z-ref.raw");
	if (!backing)
		t_sh("qemu-img convert -l snapshot.name=s1 -O raw %s %s-s1-after.raw "
		     "&& cmp %s-s1.raw %s-s1-after.raw",
		     q, name, name, name);
	g_free(q);
	g_free(r);
}

static void test_v2_discard_zero(void)
{
	v2_zero_case("v2z-alone", false);
	v2_zero_case("v2z-backing", true);
}

static void test_feature_bits(void)
{
	struct vd_image *img;
	uint8_t b = 1;
	char *p;
	int fd;

	/* unknown autoclear bit 5 and compatible bit 5: the first is cleared on the
	 * first write, the second kept */
	t_sh("cp c65536.qcow2 fb.qcow2 && printf '\\040' | dd of=fb.qcow2 bs=1 "
	     "seek=95 conv=notrunc status=none && printf '\\040' | dd of=fb.qcow2 "
	     "bs=1 seek=87 conv=notrunc status=none");
	g_assert_cmpuint(t_get_be64("fb.qcow2", 88), ==, 32);
	img = t_open_ok("fb.qcow2", false);
	g_assert_cmpuint(t_get_be64("fb.qcow2", 88), ==, 32); /* opening alone changes nothing */
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 12345), ==, 0);
	image_unref(img);
	g_assert_cmpuint(t_get_be64("fb.qcow2", 88), ==, 0);
	g_assert_cmpuint(t_get_be64("fb.qcow2", 80), ==, 32);
	g_assert_cmpint(qemu_check("fb.qcow2"), ==, 0);

	/* bitmaps: flagged in use from the first write until they are stored at
	 * close, exact and not in use; a resize is refused meanwhile */
	t_sh("cp bitmap.qcow2 bm.qcow2");
	img = t_open_ok("bm.qcow2", false);
	g_assert_cmpint(t_sh_rc("qemu-img info -U bm.qcow2 | grep -q in-use"), !=, 0);
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 0), ==, 0);
	t_sh("qemu-img info -U bm.qcow2 | grep -q in-use");
	g_assert_cmpint(image_truncate(img, 8 << 20), ==, -ENOTSUP);
	image_unref(img);
	g_assert_cmpint(qemu_check("bm.qcow2"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img info bm.qcow2 | grep -q in-use"), !=, 0);

	/* header_length 120 with an unknown trailing field: kept */
	p = t_path("hl.qcow2");
	t_sh("qemu-img create -q -f qcow2 -o cluster_size=65536 hl.qcow2 1M");
	fd = open(p, O_RDWR);
	{
		uint32_t hl = GUINT32_TO_BE(120);
		uint64_t junk = GUINT64_TO_BE(0x1122334455667788ull);
		uint8_t ext[8] = {0};
		g_assert_cmpint(pwrite(fd, &hl, 4, 100), ==, 4);
		g_assert_cmpint(pwrite(fd, &junk, 8, 112), ==, 8);
		g_assert_cmpint(pwrite(fd, ext, 8, 120), ==, 8);
	}
	close(fd);
	img = t_open_ok("hl.qcow2", false);
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 70000), ==, 0);
	g_assert_cmpint(image_truncate(img, 3 << 20), ==, 0);
	image_unref(img);
	g_assert_cmpuint(t_get_be64("hl.qcow2", 112), ==, 0x1122334455667788ull);
	g_assert_cmpint(qemu_check("hl.qcow2"), ==, 0);
	g_free(p);
}

/* Bitmap commands: add (a first extension in an overlay, whose backing file
 * name moves to make room), refusals, disable, enable, clear, remove; QEMU
 * sees each state clean, and the last remove takes the extension away. */
static void test_bitmap_commands(void)
{
	struct vd_image *img;
	uint8_t b = 0x5a;

	t_sh("qemu-img create -q -f qcow2 bmc-base.qcow2 4M");
	t_sh("qemu-img create -q -f qcow2 -b bmc-base.qcow2 -F qcow2 bmc.qcow2");
	img = t_open_ok("bmc.qcow2", false);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b1", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b1", 0), ==, -EEXIST);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b2", 1000), ==, -EINVAL);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b2", 256), ==, -EINVAL);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "", 0), ==, -EINVAL);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_REMOVE, "nope", 0), ==, -ENOENT);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_CLEAR, "nope", 0), ==, -ENOENT);
	/* stored at once: QEMU sees it, not in use, before any write */
	t_sh("qemu-img info -U bmc.qcow2 | grep -q 'name: b1'");
	t_sh("qemu-img info -U bmc.qcow2 | grep -q 'backing file: bmc-base.qcow2'");
	g_assert_cmpint(t_sh_rc("qemu-img info -U bmc.qcow2 | grep -q in-use"), !=, 0);
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 70000), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b2", 4096), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 2 << 20), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_DISABLE, "b1", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_DISABLE, "b1", 0), ==, 0);
	image_unref(img);
	g_assert_cmpint(qemu_check("bmc.qcow2"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img info bmc.qcow2 | grep -q in-use"), !=, 0);
	t_sh("qemu-img info bmc.qcow2 | grep -q 'granularity: 4096'");
	g_assert_cmpint(t_sh_rc("qemu-img compare -f qcow2 bmc.qcow2 bmc.qcow2"), ==, 0);

	img = t_open_ok("bmc.qcow2", false);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ENABLE, "b1", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_CLEAR, "b2", 0), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, &b, 1, 3 << 20), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_REMOVE, "b1", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ENABLE, "b1", 0), ==, -ENOENT);
	image_unref(img);
	g_assert_cmpint(qemu_check("bmc.qcow2"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img info bmc.qcow2 | grep -q 'name: b1'"), !=, 0);

	img = t_open_ok("bmc.qcow2", false);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_REMOVE, "b2", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b3", 0), ==, 0);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_REMOVE, "b3", 0), ==, 0);
	image_unref(img);
	g_assert_cmpint(qemu_check("bmc.qcow2"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img info bmc.qcow2 | grep -q bitmaps"), !=, 0);
	t_sh("qemu-img info bmc.qcow2 | grep -q 'backing file: bmc-base.qcow2'");

	/* refused: read-only, and formats without bitmaps */
	img = t_open_ok("bmc.qcow2", true);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b4", 0), ==, -EROFS);
	image_unref(img);
	t_sh("qemu-img create -q -f raw bmc.raw 1M");
	img = t_open_ok("bmc.raw", false);
	g_assert_cmpint(image_bitmap(img, VD_BITMAP_ADD, "b4", 0), ==, -ENOTSUP);
	image_unref(img);
}

static void test_discard_shrinks_file(void)
{
	struct vd_create_opts o = {.size = 16 << 20};
	char *p = t_path("d.qcow2");
	struct vd_image *img;
	uint8_t *buf = g_malloc(4 << 20);
	struct stat a, b;
	uint64_t pnum;
	enum vd_bs st;

	g_assert_cmpint(vd_format_qcow2.create(p, &o), ==, 0);
	img = t_open_ok("d.qcow2", false);
	fill_pattern(buf, 4 << 20, 3);
	g_assert_cmpint(image_pwrite_wait(img, buf, 4 << 20, 1 << 20), ==, 0);
	g_assert_cmpint(image_fsync_wait(img), ==, 0);
	g_assert_cmpint(stat(p, &a), ==, 0);
	g_assert_cmpint(image_zero_wait(img, 3 << 20, 1 << 20, true), ==, 0);
	g_assert_cmpint(stat(p, &b), ==, 0);
	g_assert_cmpint(b.st_blocks, <, a.st_blocks - (2 << 20) / 512);
	g_assert_cmpint(img->fmt->block_status(img, 1 << 20, 1 << 20, &pnum, &st), ==, 0);
	g_assert_cmpint(st, !=, VD_BS_DATA);
	g_assert_cmpint(image_pread_wait(img, buf, 1 << 20, 2 << 20), ==, 0);
	for (int i = 0; i < 1 << 20; i++)
		g_assert_cmpint(buf[i], ==, 0);
	/* freed clusters are reused and their stale bytes never show */
	g_assert_cmpint(image_pwrite_wait(img, "x", 1, 10 << 20), ==, 0);
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 10 << 20), ==, 0);
	g_assert_cmpint(buf[0], ==, 'x');
	for (int i = 1; i < 65536; i++)
		g_assert_cmpint(buf[i], ==, 0);
	image_unref(img);
	g_assert_cmpint(qemu_check("d.qcow2"), ==, 0);
	g_free(buf);
	g_free(p);
}

static void test_resize(void)
{
	struct vd_image *img;
	uint8_t buf[4096];

	/* grow an overlay over a longer backing file: the new range reads zero */
	t_sh("qemu-img create -q -f qcow2 -b base.raw -F raw rs.qcow2 1M");
	img = t_open_ok("rs.qcow2", false);
	g_assert_cmpint(image_truncate(img, 4ull << 30), ==, 0); /* L1 grows too */
	g_assert_cmpuint(img->size, ==, 4ull << 30);
	g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), 2 << 20), ==, 0);
	for (unsigned i = 0; i < sizeof(buf); i++)
		g_assert_cmpint(buf[i], ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, "abc", 3, (3ull << 30) + 5), ==, 0);
	/* shrink over allocated data: refused; over an unallocated tail: fine */
	g_assert_cmpint(image_truncate(img, 1ull << 30), ==, -EBUSY);
	g_assert_cmpint(image_truncate(img, (3ull << 30) + 65536), ==, 0);
	image_unref(img);
	g_assert_cmpint(qemu_check("rs.qcow2"), ==, 0);
	t_sh("qemu-img info rs.qcow2 | grep -q 'virtual size: 3 GiB (3221291008 "
	     "bytes)'");
	t_sh("qemu-io -f qcow2 -c 'read -P 0 2M 1M' -c 'read -P 0x61 3G+5 1' "
	     "rs.qcow2 | grep -q -v Pattern");
}

/* Grow an overlay of base.raw (3 MiB) from old to 4 MiB + 1024 through the
 * driver after the qemu-io commands prep (may be "") and, with snap, an
 * internal snapshot s1: the old bytes stay, the new range reads as zeroes, not
 * backing data, through vdiskfs and qemu-img; qemu-img check is clean; s1
 * keeps its data. */
static void grow_case(const char *name, const char *opts, uint64_t old, const char *prep, bool snap)
{
	uint64_t size = (4 << 20) + 1024; /* whole sectors (QEMU's rule), not clusters */
	char *q = g_strdup_printf("%s.qcow2", name), *r = g_strdup_printf("%s.raw", name);
	struct vd_image *img;

	t_sh("qemu-img create -q -f qcow2 -o %s -b base.raw -F raw %s %llu", opts, q,
	     (unsigned long long)old);
	if (*prep)
		t_sh("qemu-io -f qcow2 %s %s >/dev/null", prep, q);
	if (snap)
		t_sh("qemu-img snapshot -c s1 %s && qemu-img convert -l "
		     "snapshot.name=s1 -O raw %s %s-s1.raw",
		     q, q, name);
	t_sh("qemu-img convert -O raw %s %s && truncate -s %llu %s", q, r, (unsigned long long)size,
	     r);
	img = t_open_ok(q, false);
	g_assert_cmpint(image_truncate(img, size + 1000), ==, -EINVAL); /* not whole sectors */
	g_assert_cmpuint(img->size, ==, old);
	g_assert_cmpint(image_truncate(img, size), ==, 0);
	g_assert_cmpuint(img->size, ==, size);
	t_compare_raw(img, r);
	image_unref(img);
	check_and_compare(q, r);
	if (snap)
		/* (convert shows a snapshot at the current size: compare its own bytes) */
		t_sh("qemu-img convert -l snapshot.name=s1 -O raw %s %s-s1-after.raw "
		     "&& cmp -n %llu %s-s1.raw %s-s1-after.raw",
		     q, name, (unsigned long long)old, name, name);
	/* and once more, from the new unaligned end */
	img = t_open_ok(q, false);
	g_assert_cmpint(image_truncate(img, size + 70144), ==, 0);
	image_unref(img);
	t_sh("truncate -s %llu %s", (unsigned long long)size + 70144, r);
	g_assert_cmpint(qemu_check(q), ==, 0);
	g_assert_cmpint(qemu_compare(q, r), ==, 0);
	g_free(q);
	g_free(r);
}

/* The old end is not cluster aligned and its cluster holds no data (or data
 * that a copy-on-write filled past the old end with backing bytes). */
static void test_grow_unaligned(void)
{
	uint64_t old = 999936; /* 15 clusters + 16896 bytes */

	grow_case("gu-unalloc", "compat=1.1", old, "", false);
	grow_case("gu-cow", "compat=1.1", old, "-c 'write -P 0x61 983040 100'", false);
	grow_case("gu-full", "compat=1.1", old, "-c 'write -P 0x62 983040 16896'", false);
	grow_case("gu-zero", "compat=1.1", old, "-c 'write -z 983040 16896'", false);
	grow_case("gu-small", "cluster_size=4096", 1000448, "", false);
	grow_case("gu-snap", "compat=1.1", old,
		  "-c 'write -P 0x63 983040 100' -c 'write -P 0x64 900000 5000'", true);
	grow_case("gu-extl2", "extended_l2=on", old, "", false);
	grow_case("gu-extl2-snap", "extended_l2=on", old,
		  "-c 'write -P 0x65 983040 3000' -c 'write -z 990000 2000'", true);
}

/* v2 has no zero flag: the new range over the backing file gets real clusters
 * of zeroes; past the backing file's end it stays unallocated. */
static void test_grow_v2(void)
{
	grow_case("gv-aligned", "compat=0.10", 1 << 20, "", false);
	grow_case("gv-unaligned", "compat=0.10", 999936, "-c 'write -P 0x66 983040 10'", false);
	grow_case("gv-snap", "compat=0.10", 999936, "-c 'write -P 0x67 983040 10'", true);
	/* allocated up to the backing file's end, nothing past it */
	t_sh("qemu-img map --output=json gv-aligned.qcow2 | grep -q '\"start\": "
	     "1048576, \"length\": 2097152, \"depth\": 0, \"present\": true, "
	     "\"zero\": false, \"data\": true'");
	t_sh("qemu-img map --output=json gv-aligned.qcow2 | grep -q '\"start\": "
	     "3145728, [^}]*\"present\": false'");
}

/* A cache of 4 tables: dirty L2 tables and refcount blocks are evicted and
 * written back (after the refcount sync) all the time. */
static void test_small_cache(void)
{
	struct vd_open_opts o = {.backing = VD_BACKING_FOLLOW, .cache_size = 4096};
	struct vd_image *img;
	char *p = t_path("sc.qcow2");
	int fd;

	t_sh("cp c512.qcow2 sc.qcow2");
	fd = raw_open_copy("c512.raw", "sc.raw");
	g_assert_cmpint(image_open(p, &o, &img), ==, 0);
	workload(img, fd, 99, 200, 20000);
	t_compare_raw(img, "sc.raw");
	image_unref(img);
	close(fd);
	g_assert_cmpint(qemu_check("sc.qcow2"), ==, 0);
	g_assert_cmpint(qemu_compare("sc.qcow2", "sc.raw"), ==, 0);
	g_free(p);
}

/* ---- concurrency: several threads, each with its own ring ---- */

struct writer {
	struct vd_image *img;
	int idx;
	uint64_t base;
};

static void *writer_main(void *arg)
{
	struct writer *w = arg;
	uint8_t buf[4096];

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	for (int round = 0; round < 8; round++) {
		memset(buf, 0x10 + w->idx, sizeof(buf));
		/* every writer hits the same fresh cluster of each round, its own slice */
		g_assert_cmpint(image_pwrite_wait(w->img, buf, sizeof(buf),
						  w->base + round * 65536 + w->idx * 4096),
				==, 0);
	}
	uring_thread_exit();
	return NULL;
}

static void test_concurrent_one_cluster(void)
{
	struct vd_create_opts o = {.size = 8 << 20};
	char *p = t_path("cc.qcow2");
	struct writer w[4];
	pthread_t th[4];
	struct vd_image *img;
	uint8_t buf[65536];

	t_sh("qemu-img create -q -f qcow2 -b base.raw -F raw cc.qcow2 8M");
	(void)o;
	img = t_open_ok("cc.qcow2", false);
	for (int i = 0; i < 4; i++) {
		w[i] = (struct writer){.img = img, .idx = i, .base = 1 << 20};
		pthread_create(&th[i], NULL, writer_main, &w[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (int round = 0; round < 8; round++) {
		g_assert_cmpint(image_pread_wait(img, buf, sizeof(buf), (1 << 20) + round * 65536),
				==, 0);
		for (int i = 0; i < 4; i++)
			for (int j = 0; j < 4096; j++)
				g_assert_cmpint(buf[i * 4096 + j], ==, 0x10 + i);
	}
	image_unref(img);
	g_assert_cmpint(qemu_check("cc.qcow2"), ==, 0);
	t_sh("qemu-img map --output=json cc.qcow2 | grep -c '\"data\": true, "
	     "\"offset\"' >/dev/null");
	g_free(p);
}

/* ---- discard against I/O in flight on the host cluster it frees ---- */

/* What another thread does while this thread's request is mapped, its I/O
 * queued on this thread's ring but not yet submitted: discard one guest
 * cluster, write another unless pat is 0 (an allocating write: the
 * allocator hands out the lowest free cluster, so a cluster the discard
 * freed comes back at once), and fsync (deferred frees are applied). */
struct racer {
	struct vd_image *img;
	uint64_t discard_off, write_off;
	uint8_t pat;
};

static void *racer_main(void *arg)
{
	struct racer *r = arg;
	uint32_t cs = r->img->cluster_size;
	uint8_t *buf = g_malloc(cs);

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	memset(buf, r->pat, cs);
	g_assert_cmpint(image_zero_wait(r->img, cs, r->discard_off, true), ==, 0);
	if (r->pat)
		g_assert_cmpint(image_pwrite_wait(r->img, buf, cs, r->write_off), ==, 0);
	g_assert_cmpint(image_fsync_wait(r->img), ==, 0);
	uring_thread_exit();
	g_free(buf);
	return NULL;
}

static void race_done(void *opaque, int err)
{
	int *res = opaque;

	*res = err;
}

/* Run r on another thread while a request of ours waits on our ring. */
static void race_with(struct racer *r, int *res)
{
	pthread_t th;

	g_assert_cmpint(*res, ==, 1); /* queued, not done */
	g_assert_cmpint(pthread_create(&th, NULL, racer_main, r), ==, 0);
	g_assert_cmpint(pthread_join(th, NULL), ==, 0);
	while (*res == 1)
		g_assert_cmpint(uring_run(100), >=, 0);
	g_assert_cmpint(*res, ==, 0);
}

static void assert_filled(const uint8_t *buf, size_t len, uint8_t v, const char *what)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != v)
			g_error("%s: byte %zu is 0x%02x, expected 0x%02x", what, i, buf[i], v);
}

/* A read of guest cluster A is mapped (host cluster H) and queued; meanwhile A
 * is discarded and guest cluster B written. Without a hold on H for the
 * read, H is freed and punched at once, B gets H, and the read returns B's
 * bytes (or, for a compressed A, fails to inflate them). The read may see
 * A's old bytes or zeroes, never B's. */
static void test_discard_under_read(gconstpointer compressed)
{
	struct vd_image *img;
	struct racer r;
	uint8_t *buf = g_malloc(65536);
	int res = 1;

	t_sh("qemu-img create -q -f qcow2 -o cluster_size=64k dr.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write %s -P 0xaa 0 64k' dr.qcow2 >/dev/null",
	     compressed ? "-c" : "");
	img = t_open_ok("dr.qcow2", false);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
	image_submit(img, IMAGE_READ, buf, 65536, 0, race_done, &res);
	r = (struct racer){.img = img, .discard_off = 0, .write_off = 1 << 20, .pat = 0xbb};
	race_with(&r, &res);
	if (buf[0])
		assert_filled(buf, 65536, 0xaa, "read racing a discard");
	else
		assert_filled(buf, 65536, 0, "read racing a discard");
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 1 << 20), ==, 0);
	assert_filled(buf, 65536, 0xbb, "cluster written after the discard");
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 0), ==, 0);
	assert_filled(buf, 65536, 0, "discarded cluster");
	image_unref(img);
	g_assert_cmpint(qemu_check("dr.qcow2"), ==, 0);
	g_free(buf);
}

/* The same with an in-place write of guest cluster A queued: it must land in
 * a cluster nobody else owns, so B (written after the discard) keeps its
 * bytes, and so does C, written after the fsync that applies the free once
 * the write has landed (a punch of H then must not hit C either). */
static void test_discard_under_write(void)
{
	struct vd_create_opts o = {.size = 4 << 20, .cluster_size = 65536};
	char *p = t_path("dw.qcow2");
	struct racer r;
	struct vd_image *img;
	uint8_t *buf = g_malloc(65536), *w = g_malloc(65536);
	int res = 1;

	g_assert_cmpint(vd_format_qcow2.create(p, &o), ==, 0);
	img = t_open_ok("dw.qcow2", false);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
	memset(w, 0xaa, 65536);
	g_assert_cmpint(image_pwrite_wait(img, w, 65536, 0), ==, 0);
	g_assert_cmpint(image_fsync_wait(img), ==, 0);
	memset(w, 0xcc, 65536);
	image_submit(img, IMAGE_WRITE, w, 65536, 0, race_done, &res);
	r = (struct racer){.img = img, .discard_off = 0, .write_off = 1 << 20, .pat = 0xbb};
	race_with(&r, &res);
	r = (struct racer){.img = img, .discard_off = 2 << 20, .write_off = 3 << 20, .pat = 0xdd};
	racer_main(&r);
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 1 << 20), ==, 0);
	assert_filled(buf, 65536, 0xbb, "cluster written after the discard");
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 3 << 20), ==, 0);
	assert_filled(buf, 65536, 0xdd, "cluster written after the free");
	image_unref(img);
	g_assert_cmpint(qemu_check("dw.qcow2"), ==, 0);
	g_free(buf);
	g_free(w);
	g_free(p);
}

/* A partial write into a cluster the backing file shows through is queued
 * (a new cluster, the rest of it copied from the backing file); meanwhile the
 * cluster is discarded. Linked afterwards, the write would bring back backing
 * bytes around its own: the discard must win or lose as a whole, so the rest
 * of the cluster reads zeroes. */
static void test_discard_under_cow_write(void)
{
	struct vd_image *img;
	struct racer r = {.discard_off = 65536};
	uint8_t *buf = g_malloc(65536), *w = g_malloc(4096);
	int res = 1;

	t_sh("qemu-img create -q -f qcow2 -o cluster_size=64k -b base.raw -F raw "
	     "dc.qcow2 4M");
	img = t_open_ok("dc.qcow2", false);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
	memset(w, 0xcc, 4096);
	image_submit(img, IMAGE_WRITE, w, 4096, 65536 + 8192, race_done, &res);
	r.img = img;
	race_with(&r, &res);
	g_assert_cmpint(image_pread_wait(img, buf, 65536, 65536), ==, 0);
	assert_filled(buf, 8192, 0, "discarded cluster before the racing write");
	assert_filled(buf + 12288, 65536 - 12288, 0, "discarded cluster after the racing write");
	if (buf[8192])
		assert_filled(buf + 8192, 4096, 0xcc, "the racing write");
	else
		assert_filled(buf + 8192, 4096, 0, "the racing write");
	image_unref(img);
	g_assert_cmpint(qemu_check("dc.qcow2"), ==, 0);
	g_free(buf);
	g_free(w);
}

int main(int argc, char **argv)
{
	static const char *fx[] = {"c512",
				   "c4096",
				   "c65536",
				   "c2097152",
				   "v2",
				   "rc1",
				   "rc2",
				   "rc4",
				   "rc8",
				   "rc32",
				   "rc64",
				   "zlib",
				   "zstd",
				   "zlib4k",
				   "extl2",
				   "top",
				   "mid",
				   "bitmap",
				   "big",
				   "prealloc-metadata",
				   "prealloc-falloc",
				   "prealloc-full"};

	t_init(&argc, &argv);
	t_qcow2_fixtures();
	for (unsigned i = 0; i < G_N_ELEMENTS(fx); i++) {
		char *n = g_strdup_printf("/qcow2/write/fixture/%s", fx[i]);
		t_add_qemu_data(n, fx[i], test_fixture_workload);
		g_free(n);
	}
	t_add_qemu("/qcow2/write/create", test_create);
	t_add_qemu("/qcow2/write/reftable-growth", test_reftable_growth);
	t_add_qemu("/qcow2/write/create-backing", test_create_backing);
	t_add_qemu("/qcow2/write/snapshots-kept", test_snapshots_kept);
	t_add_qemu("/qcow2/write/extl2-shared-cow", test_extl2_shared_cow);
	t_add_qemu("/qcow2/write/dirty-rebuild", test_dirty_rebuild);
	t_add_qemu("/qcow2/write/feature-bits", test_feature_bits);
	t_add_qemu("/qcow2/write/header-length-104", test_header_length_104);
	t_add_qemu("/qcow2/write/bitmap-commands", test_bitmap_commands);
	t_add_qemu("/qcow2/write/v2-discard-zero", test_v2_discard_zero);
	t_add_qemu("/qcow2/write/discard-shrinks-file", test_discard_shrinks_file);
	t_add_qemu("/qcow2/write/resize", test_resize);
	t_add_qemu("/qcow2/write/grow-unaligned", test_grow_unaligned);
	t_add_qemu("/qcow2/write/grow-v2", test_grow_v2);
	t_add_qemu("/qcow2/write/concurrent-one-cluster", test_concurrent_one_cluster);
	t_add_qemu("/qcow2/write/small-cache", test_small_cache);
	t_add_qemu_data("/qcow2/write/discard-under-read", NULL, test_discard_under_read);
	t_add_qemu_data("/qcow2/write/discard-under-read-compressed", "", test_discard_under_read);
	t_add_qemu("/qcow2/write/discard-under-write", test_discard_under_write);
	t_add_qemu("/qcow2/write/discard-under-cow-write", test_discard_under_cow_write);
	return t_run();
}
