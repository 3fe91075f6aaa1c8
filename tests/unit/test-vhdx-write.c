/* VHDX writes through image_pwrite_wait / image_zero_wait: workloads on
 * images from qemu-img and from our own create, then `qemu-img check` and
 * `qemu-img compare` against a raw file that received the same writes;
 * header GUIDs, concurrent allocation, a crash without close, discard on
 * dynamic and fixed disks, 4K sectors. Injected I/O errors: test-fault-sweep. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "util/endian.h"
#include "io/uring.h"
#include "testlib.h"
#include "formats/vhdx.h"

#define M (1ull << 20)

/* Apply the same writes to img and to the raw reference. */
struct twin {
	struct vd_image *img;
	int raw;
};

static void twin_write(struct twin *t, uint64_t off, uint64_t len, unsigned seed)
{
	char *buf = g_malloc(len);

	t_pattern(buf, len, off, seed);
	g_assert_cmpint(image_pwrite_wait(t->img, buf, len, off), ==, 0);
	g_assert_cmpint(pwrite(t->raw, buf, len, off), ==, (ssize_t)len);
	g_free(buf);
}

static void twin_zero(struct twin *t, uint64_t off, uint64_t len, bool unmap)
{
	char *buf = g_malloc0(len);

	g_assert_cmpint(image_zero_wait(t->img, len, off, unmap), ==, 0);
	g_assert_cmpint(pwrite(t->raw, buf, len, off), ==, (ssize_t)len);
	g_free(buf);
}

static void twin_open(struct twin *t, const char *img, const char *raw, uint64_t size)
{
	char *p = t_path(img), *r = t_path(raw);

	g_assert_cmpint(t_open(p, false, &t->img), ==, 0);
	t->raw = open(r, O_RDWR | O_CREAT | O_TRUNC, 0644);
	g_assert_cmpint(t->raw, >=, 0);
	g_assert_cmpint(ftruncate(t->raw, size ? size : t->img->size), ==, 0);
	g_free(p);
	g_free(r);
}

static void twin_close(struct twin *t)
{
	image_unref(t->img);
	close(t->raw);
}

/* A mixed workload: unaligned writes into fresh and present blocks, block and
 * BAT-page boundaries, zeroing, fsyncs. */
static void workload(struct twin *t, unsigned seed)
{
	uint64_t size = t->img->size, bs = t->img->cluster_size;
	GRand *r = g_rand_new_with_seed(seed);

	twin_write(t, 0, 4096, seed);
	twin_write(t, bs - 100, 300, seed + 1);			       /* across a block boundary */
	twin_write(t, (3 * bs + 777) % (size - 5000), 5000, seed + 2); /* inside a fresh block */
	twin_write(t, size - 1000, 1000, seed + 3);		       /* the very end */
	for (int i = 0; i < 40; i++) {
		uint64_t len = g_rand_int_range(r, 1, 3 * M);
		uint64_t off = (uint64_t)g_rand_double_range(r, 0, size - len);
		if (i % 4 == 0)
			off &= ~4095ull;
		if (i % 9 == 8)
			twin_zero(t, off / 512 * 512,
				  (len + 511) / 512 * 512 < size - off / 512 * 512
					  ? (len + 511) / 512 * 512
					  : 512,
				  i % 2);
		else
			twin_write(t, off, len, seed + 10 + i);
		if (i % 10 == 0)
			g_assert_cmpint(image_fsync_wait(t->img), ==, 0);
	}
	g_rand_free(r);
}

static void check_with_qemu(const char *img, const char *raw)
{
	g_assert_cmpint(t_sh_rc("qemu-img check -q %s", img), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img compare -q -f vhdx -F raw %s %s", img, raw), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img info %s | grep -q 'file format: vhdx'", img), ==, 0);
}

static void run_qemu_image(const char *name, const char *opts, const char *size, unsigned seed)
{
	struct twin t;
	char raw[64];

	g_snprintf(raw, sizeof(raw), "%s.ref", name);
	t_sh("qemu-img create -q -f vhdx -o %s %s %s", opts, name, size);
	twin_open(&t, name, raw, 0);
	workload(&t, seed);
	twin_close(&t);
	check_with_qemu(name, raw);
}

static void test_qemu_dynamic(void)
{
	run_qemu_image("w-dyn1.vhdx", "block_size=1M", "48M", 1);
	run_qemu_image("w-dyn32.vhdx", "block_size=32M,block_state_zero=off", "100M", 2);
}

static void test_qemu_fixed(void)
{
	char *p;
	uint8_t before[4096], after[4096];

	run_qemu_image("w-fix.vhdx", "subformat=fixed,block_state_zero=off,block_size=8M", "64M",
		       3);
	/* Fixed disks never change block states: the BAT is unchanged. */
	t_sh("qemu-img create -q -f vhdx -o subformat=fixed,block_state_zero=off,block_size=1M "
	     "w-fix2.vhdx 16M");
	p = t_path("w-fix2.vhdx");
	t_pread(p, before, sizeof(before), t_vhdx_region(p, vhdx_guid_bat.b));
	{
		struct twin t;
		twin_open(&t, "w-fix2.vhdx", "w-fix2.ref", 0);
		twin_write(&t, 5 * M + 3, 2 * M, 9);
		twin_zero(&t, 2 * M, 4 * M, true);
		twin_zero(&t, 9 * M + 512, 4096, false);
		twin_close(&t);
	}
	t_pread(p, after, sizeof(after), t_vhdx_region(p, vhdx_guid_bat.b));
	g_assert_cmpmem(before, sizeof(before), after, sizeof(after));
	check_with_qemu("w-fix2.vhdx", "w-fix2.ref");
	g_free(p);
}

/* BAT pages hold 512 entries: change the first and last of a page (QEMU
 * once shifted a page by one entry here), and blocks past 4 GiB. */
static void test_bat_pages_and_4g(void)
{
	struct twin t;

	t_sh("qemu-img create -q -f vhdx -o block_size=1M w-big.vhdx 5G");
	twin_open(&t, "w-big.vhdx", "w-big.ref", 0);
	twin_write(&t, 511 * M + 10, 100, 21);
	twin_write(&t, 512 * M, 4096, 22);
	twin_write(&t, 1023 * M + M - 4096, 8192, 23);
	twin_write(&t, 4 * 1024 * M - 4096, 2 * M, 24); /* across the first chunk */
	twin_write(&t, 4500 * M + 12345, 3 * M, 25);
	twin_close(&t);
	g_assert_cmpint(t_sh_rc("qemu-img check -q w-big.vhdx"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img compare -q -f vhdx -F raw w-big.vhdx w-big.ref"), ==, 0);
}

static void test_own_create(void)
{
	struct vd_create_opts o = {.size = 40 * M + 512, .cluster_size = 2 * M};
	char *p = t_path("c-dyn.vhdx"), *q = t_path("c-fix.vhdx");
	struct twin t;

	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, 0);
	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, -EEXIST);
	g_assert_cmpint(t_sh_rc("qemu-img info c-dyn.vhdx | grep -q 'cluster_size: 2097152'"), ==,
			0);
	g_assert_cmpint(t_sh_rc("qemu-img check -q c-dyn.vhdx"), ==, 0);
	twin_open(&t, "c-dyn.vhdx", "c-dyn.ref", 0);
	workload(&t, 31);
	twin_close(&t);
	check_with_qemu("c-dyn.vhdx", "c-dyn.ref");
	o.fixed = true;
	o.cluster_size = 0;
	g_assert_cmpint(vd_format_vhdx.create(q, &o), ==, 0);
	twin_open(&t, "c-fix.vhdx", "c-fix.ref", 0);
	workload(&t, 32);
	twin_close(&t);
	check_with_qemu("c-fix.vhdx", "c-fix.ref");
	g_free(p);
	g_free(q);
}

static void test_own_4k(void)
{
	struct vd_create_opts o = {.size = 64 * M, .cluster_size = M, .sector_size = 4096};
	char *p = t_path("c-4k.vhdx"), *r = t_path("c-4k.ref");
	struct vd_image *img;
	struct twin t;

	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, 0);
	twin_open(&t, "c-4k.vhdx", "c-4k.ref", 0);
	workload(&t, 41);
	twin_close(&t);
	/* QEMU refuses 4K sectors: read back through our own driver. */
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	t_compare(img, r, 0, img->size);
	image_unref(img);
	g_free(p);
	g_free(r);
}

/* ---- header GUIDs ---- */

static void test_guids(void)
{
	char *p;
	uint8_t h0[2][4096], h1[2][4096];
	struct vd_image *img;
	uint8_t buf[512] = {1};
	uint64_t cur;

	t_sh("qemu-img create -q -f vhdx -o block_size=1M g.vhdx 8M");
	p = t_path("g.vhdx");
	t_pread(p, h0[0], 4096, VHDX_HEADER1_OFF);
	t_pread(p, h0[1], 4096, VHDX_HEADER2_OFF);
	/* Read-only and read-write opens without writes leave the headers alone. */
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	image_unref(img);
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	g_assert_cmpint(image_pread_wait(img, buf, 512, 0), ==, 0);
	image_unref(img);
	t_pread(p, h1[0], 4096, VHDX_HEADER1_OFF);
	t_pread(p, h1[1], 4096, VHDX_HEADER2_OFF);
	g_assert_cmpmem(h0, sizeof(h0), h1, sizeof(h1));
	/* A write: new FileWriteGuid and DataWriteGuid, LogGuid clear after close. */
	cur = t_vhdx_current_header(p);
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, 512, 4096), ==, 0);
	image_unref(img);
	t_pread(p, h1[0], 4096, t_vhdx_current_header(p));
	g_assert_cmpmem(h0[cur == VHDX_HEADER2_OFF], 4, h1[0], 4); /* signature */
	g_assert_true(memcmp(h0[cur == VHDX_HEADER2_OFF] + 16, h1[0] + 16, 16));
	g_assert_true(memcmp(h0[cur == VHDX_HEADER2_OFF] + 32, h1[0] + 32, 16));
	for (int i = 48; i < 64; i++)
		g_assert_cmpint(h1[0][i], ==, 0);
	g_assert_cmpuint(get_le64(h1[0] + 8), >, get_le64(h0[cur == VHDX_HEADER2_OFF] + 8));
	g_free(p);
}

/* ---- concurrency ---- */

struct racer {
	struct vd_image *img;
	int id;
};

static void *race_thread(void *arg)
{
	struct racer *r = arg;
	char buf[4096];

	g_assert_cmpint(uring_thread_init(64), ==, 0);
	/* Every thread writes its own 4 KiB slot of the same fresh blocks. */
	for (int b = 0; b < 16; b++) {
		memset(buf, 'A' + r->id, sizeof(buf));
		g_assert_cmpint(
			image_pwrite_wait(r->img, buf, sizeof(buf), b * M + r->id * 8192 + 512), ==,
			0);
	}
	uring_thread_exit();
	return NULL;
}

static void test_concurrent_alloc(void)
{
	char *p, *expect = g_malloc0(16 * M), *got = g_malloc(16 * M);
	struct racer r[4];
	pthread_t th[4];
	struct vd_image *img;
	struct stat st;

	t_sh("qemu-img create -q -f vhdx -o block_size=1M race.vhdx 16M");
	p = t_path("race.vhdx");
	g_assert_cmpint(t_open(p, false, &img), ==, 0);
	for (int i = 0; i < 4; i++) {
		r[i] = (struct racer){img, i};
		pthread_create(&th[i], NULL, race_thread, &r[i]);
	}
	for (int i = 0; i < 4; i++)
		pthread_join(th[i], NULL);
	for (int b = 0; b < 16; b++)
		for (int i = 0; i < 4; i++)
			memset(expect + b * M + i * 8192 + 512, 'A' + i, 4096);
	g_assert_cmpint(image_pread_wait(img, got, 16 * M, 0), ==, 0);
	g_assert_cmpmem(expect, 16 * M, got, 16 * M);
	image_unref(img);
	/* One allocation per block: the file grew by 16 blocks, not more. */
	g_assert_cmpint(stat(p, &st), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img check -q race.vhdx"), ==, 0);
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	g_assert_cmpint(image_pread_wait(img, got, 16 * M, 0), ==, 0);
	g_assert_cmpmem(expect, 16 * M, got, 16 * M);
	g_assert_cmpuint(st.st_size, <=, ((struct vhdx *)img->priv)->file_end);
	g_assert_cmpuint(st.st_size, ==, 8 * M + 16 * M);
	image_unref(img);
	g_free(p);
	g_free(expect);
	g_free(got);
}

/* ---- crash: the process dies without closing ---- */

static void test_crash_without_close(void)
{
	char *p;
	pid_t pid;
	int status;

	t_sh("qemu-img create -q -f vhdx -o block_size=1M crash.vhdx 64M && "
	     "truncate -s 64M crash.ref");
	p = t_path("crash.vhdx");
	pid = fork();
	if (pid == 0) {
		struct twin t;
		uring_thread_exit();
		uring_thread_init(64);
		twin_open(&t, "crash.vhdx", "crash.ref", 0);
		workload(&t, 51);
		image_fsync_wait(t.img);
		close(t.raw);
		/* Unsynced writes after the last fsync may or may not survive. */
		{
			char buf[4096] = {0x7f};
			image_pwrite_wait(t.img, buf, sizeof(buf), 60 * M);
		}
		_exit(0);
	}
	g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
	g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	t_sh("cp crash.vhdx crash2.vhdx");
	/* QEMU repairs (replays) it, and so do we; data before the fsync intact. */
	g_assert_cmpint(t_sh_rc("qemu-img check -q -r all crash2.vhdx"), ==, 0);
	g_assert_cmpint(t_sh_rc("qemu-img compare -q -f vhdx -F raw crash2.vhdx crash.ref"), ==,
			1); /* 60M was written after the fsync... */
	{
		struct vd_image *img;
		char *ref = t_path("crash.ref");
		g_assert_cmpint(t_open(p, false, &img), ==, 0);
		t_compare(img, ref, 0, 60 * M);
		image_unref(img);
		g_free(ref);
	}
	g_assert_cmpint(t_sh_rc("qemu-img check -q crash.vhdx"), ==, 0);
	g_free(p);
}

/* ---- discard ---- */

static void test_discard(void)
{
	struct twin t;
	struct stat a, b;
	uint64_t pnum;
	enum vd_bs st;
	char *p = t_path("disc.vhdx");

	t_sh("qemu-img create -q -f vhdx -o block_size=1M disc.vhdx 32M");
	twin_open(&t, "disc.vhdx", "disc.ref", 0);
	twin_write(&t, 0, 16 * M, 61);
	g_assert_cmpint(image_fsync_wait(t.img), ==, 0);
	g_assert_cmpint(stat(p, &a), ==, 0);
	twin_zero(&t, 2 * M, 4 * M, true);	   /* whole blocks */
	twin_zero(&t, 8 * M + 4096, 8192, true);   /* part of a block */
	twin_zero(&t, 10 * M + 512, 3 * M, false); /* write zeroes, unaligned ends */
	g_assert_cmpint(image_block_status(t.img, 2 * M, 4 * M, &pnum, &st), ==, 0);
	g_assert_cmpint(st, ==, VD_BS_ZERO);
	g_assert_cmpuint(pnum, ==, 4 * M);
	g_assert_cmpint(image_fsync_wait(t.img), ==, 0);
	g_assert_cmpint(stat(p, &b), ==, 0);
	g_assert_cmpuint(b.st_blocks, <, a.st_blocks - 4 * M / 512 + 1);
	twin_close(&t);
	check_with_qemu("disc.vhdx", "disc.ref");
	g_free(p);
}

/* ---- growing ---- */

static void raw_grow(struct twin *t, uint64_t size)
{
	g_assert_cmpint(ftruncate(t->raw, size), ==, 0);
}

/* A qemu-img disk grown across a chunk (4 GiB at 1 MiB blocks: the sector
 * bitmap entry of chunk 0 sits between the old and the new entries), written
 * past the old end, reopened; shrinking, growing past what the BAT region
 * holds and fixed disks are refused. */
static void test_grow(void)
{
	struct twin t;
	struct vd_image *img;
	char *p = t_path("g-dyn.vhdx"), *r = t_path("g-dyn.ref");

	t_sh("qemu-img create -q -f vhdx -o block_size=1M g-dyn.vhdx 48M");
	twin_open(&t, "g-dyn.vhdx", "g-dyn.ref", 0);
	twin_write(&t, 48 * M - 1000, 1000, 71);
	g_assert_cmpint(image_truncate(t.img, 5ull << 30), ==, 0);
	g_assert_cmpuint(t.img->size, ==, 5ull << 30);
	raw_grow(&t, 5ull << 30);
	twin_write(&t, 48 * M - 10, 4096, 72);		/* across the old end */
	twin_write(&t, (4ull << 30) - 4096, 2 * M, 73); /* across the new chunk */
	twin_write(&t, (5ull << 30) - 3000, 3000, 74);	/* the new end */
	/* 1 MiB of BAT region holds 131072 entries: 128 GiB less 32 blocks. */
	g_assert_cmpint(image_truncate(t.img, 200ull << 30), ==, -EFBIG);
	g_assert_cmpint(image_truncate(t.img, 128ull << 30), ==, -EFBIG);
	g_assert_cmpint(image_truncate(t.img, 4ull << 30), ==, -ENOTSUP);
	g_assert_cmpint(image_truncate(t.img, (5ull << 30) + 100), ==, -EINVAL);
	g_assert_cmpuint(t.img->size, ==, 5ull << 30);
	twin_close(&t);
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	g_assert_cmpuint(img->size, ==, 5ull << 30);
	t_compare(img, r, 0, img->size);
	image_unref(img);
	g_assert_cmpint(t_sh_rc("qemu-img info g-dyn.vhdx | grep -q 'virtual size: 5 GiB'"), ==, 0);
	check_with_qemu("g-dyn.vhdx", "g-dyn.ref");

	t_sh("qemu-img create -q -f vhdx -o subformat=fixed,block_size=1M g-fix.vhdx 8M");
	g_assert_cmpint(t_open("g-fix.vhdx", false, &img), ==, 0);
	g_assert_cmpint(image_truncate(img, 16 * M), ==, -ENOTSUP);
	g_assert_cmpuint(img->size, ==, 8 * M);
	image_unref(img);
	g_free(p);
	g_free(r);
}

/* Our own disk whose size ends inside a block: what a writer left past the
 * old end of that block reads as zeroes after the grow; the grow survives a
 * process that dies without closing. */
static void test_grow_partial_block(void)
{
	struct vd_create_opts o = {.size = 40 * M + 512, .cluster_size = 2 * M};
	char *p = t_path("g-part.vhdx"), *r = t_path("g-part.ref");
	uint8_t ent[8], junk[4096];
	struct vd_image *img;
	struct twin t;
	uint64_t host;
	pid_t pid;
	int fd, status;

	g_assert_cmpint(vd_format_vhdx.create(p, &o), ==, 0);
	twin_open(&t, "g-part.vhdx", "g-part.ref", 0);
	twin_write(&t, 40 * M, 512, 81);
	twin_close(&t);
	/* Block 20 (entry 20: 2048 blocks a chunk): junk past the old end. */
	t_pread(p, ent, 8, t_vhdx_region(p, vhdx_guid_bat.b) + 20 * 8);
	host = get_le64(ent) & ~(M - 1);
	g_assert_cmpuint(get_le64(ent) & 7, ==, VHDX_BAT_FULLY_PRESENT);
	memset(junk, 0xa5, sizeof(junk));
	fd = open(p, O_RDWR);
	g_assert_cmpint(pwrite(fd, junk, sizeof(junk), host + 512), ==, sizeof(junk));
	close(fd);
	pid = fork();
	if (pid == 0) {
		uring_thread_exit();
		uring_thread_init(64);
		if (t_open(p, false, &img) || image_truncate(img, 50 * M))
			_exit(1);
		_exit(0); /* no close: the log's LogGuid stays set */
	}
	g_assert_cmpint(waitpid(pid, &status, 0), ==, pid);
	g_assert_true(WIFEXITED(status) && WEXITSTATUS(status) == 0);
	g_assert_cmpint(t_open(p, false, &t.img), ==, 0); /* the reference kept */
	t.raw = open(r, O_RDWR);
	g_assert_cmpint(t.raw, >=, 0);
	g_assert_cmpuint(t.img->size, ==, 50 * M);
	raw_grow(&t, 50 * M);
	twin_write(&t, 50 * M - 512, 512, 82);
	twin_close(&t);
	g_assert_cmpint(t_open(p, true, &img), ==, 0);
	t_compare(img, r, 0, img->size);
	image_unref(img);
	check_with_qemu("g-part.vhdx", "g-part.ref");
	g_free(p);
	g_free(r);
}

/* A differencing disk as large as its parent grows across a chunk (the new
 * range reads as zeroes: it lies past the parent's end). */
static void test_grow_diff(void)
{
	struct vd_create_opts o = {.backing = "g-par.vhdx", .cluster_size = M};
	char *c = t_path("g-ch.vhdx"), *r = t_path("g-par.raw");
	struct vd_image *img;
	char buf[4096];

	t_sh("qemu-img create -q -f raw g-par.raw 24M && "
	     "qemu-io -f raw -c 'write -P 0x5a 0 24M' g-par.raw >/dev/null && "
	     "qemu-img convert -f raw -O vhdx -o block_size=1M g-par.raw g-par.vhdx");
	g_assert_cmpint(vd_format_vhdx.create(c, &o), ==, 0);
	g_assert_cmpint(t_open(c, false, &img), ==, 0);
	memset(buf, 0x33, sizeof(buf));
	g_assert_cmpint(image_pwrite_wait(img, buf, 512, 24 * M - 512), ==, 0);
	g_assert_cmpint(image_truncate(img, 4200 * M), ==, 0);
	g_assert_cmpint(image_pwrite_wait(img, buf, 4096, 4200 * M - 4096), ==, 0);
	image_unref(img);
	t_sh("truncate -s 4200M g-par.raw && "
	     "printf '\\063%%.0s' $(seq 512) | dd of=g-par.raw bs=512 seek=49151 conv=notrunc "
	     "status=none && "
	     "printf '\\063%%.0s' $(seq 4096) | dd of=g-par.raw bs=4096 seek=1075199 "
	     "conv=notrunc status=none");
	g_assert_cmpint(t_open(c, true, &img), ==, 0);
	g_assert_cmpuint(img->size, ==, 4200 * M);
	t_compare(img, r, 0, img->size);
	image_unref(img);

	g_free(c);
	g_free(r);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	t_add_qemu("/vhdx/write/qemu-dynamic", test_qemu_dynamic);
	t_add_qemu("/vhdx/write/qemu-fixed", test_qemu_fixed);
	t_add_qemu("/vhdx/write/bat-pages-and-4g", test_bat_pages_and_4g);
	t_add_qemu("/vhdx/write/own-create", test_own_create);
	g_test_add_func("/vhdx/write/own-4k", test_own_4k);
	t_add_qemu("/vhdx/write/guids", test_guids);
	t_add_qemu("/vhdx/write/concurrent-alloc", test_concurrent_alloc);
	t_add_qemu("/vhdx/write/crash-without-close", test_crash_without_close);
	t_add_qemu("/vhdx/write/discard", test_discard);
	t_add_qemu("/vhdx/write/grow", test_grow);
	t_add_qemu("/vhdx/write/grow-partial-block", test_grow_partial_block);
	t_add_qemu("/vhdx/write/grow-differencing", test_grow_diff);
	return t_run();
}
