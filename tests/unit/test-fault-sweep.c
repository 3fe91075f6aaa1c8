/* Fault-injection sweep: a fixed write + fsync workload on small qcow2 and
 * vhdx images, run once for every I/O it does (fault.c counts them) with that
 * I/O failing with EIO and with ENOSPC: once (the workload carries on), or
 * from then on (a crash at that point). After each run the image opens,
 * `qemu-img check` finds no corruption (leaks are fine), and every write
 * acknowledged before the last successful fsync reads back, through our
 * driver and through qemu-img. SWEEP_NTH=n runs just I/O n, --verbose shows
 * the driver's messages. */
#include <errno.h>
#include <fcntl.h>
#include <glib.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/endian.h"
#include "util/log.h"
#include "io/fault.h"
#include "testlib.h"
#include "formats/vhdx.h"

#define K (1ull << 10)
#define M (1ull << 20)

#define BASE_SEED 977 /* the backing file's pattern */
#define MAX_OPS	  32

enum op_kind { OP_WRITE, OP_DISCARD, OP_FSYNC };

struct wl_op {
	enum op_kind kind;
	uint64_t off, len;
};

/* clang-format off */
#define W(o, l) {OP_WRITE, (o), (l)}
#define D(o, l) {OP_DISCARD, (o), (l)}
#define F	{OP_FSYNC, 0, 0}
/* clang-format on */

struct sweep {
	const char *fmt;   /* qemu-img format name */
	const char *image; /* the pristine image in the scratch directory */
	void (*make)(void);
	uint64_t backing_size; /* guest bytes below it start as the base pattern */
	struct {
		uint64_t off, len;
	} pre[2]; /* then these ranges as pre_byte (written by qemu-io) */
	uint8_t pre_byte;
	const char *snapshot; /* internal snapshot that must not change, or NULL */
	uint64_t cache_size;  /* metadata cache: small, so tables are evicted and reloaded */
	unsigned kinds;	      /* the I/Os counted and failed (FAULT_*) */
	const struct wl_op *ops;
	unsigned nops;
};

enum op_result { RES_NOTRUN, RES_OK, RES_FAILED };

/* How the I/O fails, and how the run ends. */
enum fault_mode {
	ONCE_CRASH, /* the nth I/O fails, the guest carries on; then a crash (nothing
		     * the close writes lands): catches an fsync that lied */
	ONCE_CLOSE, /* the nth I/O fails, the guest carries on; then a clean close */
	FROM_NTH,   /* every I/O from the nth on fails, the guest stops at the first
		     * error: a full or dead disk, or a crash just before I/O nth */
};

/* One run: how each operation ended. */
struct run {
	unsigned long nth; /* the failing I/O, 0 for none */
	int err;
	enum fault_mode mode;
	enum op_result res[MAX_OPS];
	int last_sync; /* the last fsync that succeeded, or -1 */
};

/* ---- the images ---- */

static void make_base(void)
{
	size_t len = 3 * M;
	char *buf = g_malloc(len), *p = t_path("base.raw");

	t_pattern(buf, len, 0, BASE_SEED);
	g_assert_true(g_file_set_contents(p, buf, len, NULL));
	g_free(buf);
	g_free(p);
}

/* 512-byte clusters: an L2 table maps 32 KiB of guest, a refcount block 128
 * KiB of host. Over a backing file that ends before the image does, with a
 * prefill (its second half compressed) that an internal snapshot shares. */
static void make_qcow2(void)
{
	make_base();
	t_sh("qemu-img create -q -f qcow2 -o cluster_size=512 -b base.raw -F raw sweep.qcow2 "
	     "4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x44 1M 128K' -c 'write -c -P 0x44 1152K 128K' "
	     "sweep.qcow2 && "
	     "qemu-img snapshot -c s1 sweep.qcow2 && "
	     "qemu-img convert -l snapshot.name=s1 -O raw sweep.qcow2 s1.ref");
}

/* clang-format off */
static const struct wl_op qcow2_ops[] = {
	W(100, 1000),			/* COW head and tail from the backing file, new L2 */
	W(40000, 300),			/* another L2 table */
	F,
	W(1 * M + 1000, 700),		/* snapshot-shared: copy the L2 table and the cluster */
	W(3 * M - 700, 1400),		/* across the backing file's end */
	W(400 * K, 64 * K),		/* 128 fresh clusters: a new refcount block */
	W(100 * K + 7, 270 * K),	/* 9 L2 tables: more than the cache holds */
	F,
	W(1 * M + 1064, 100),		/* in place now */
	D(1 * M + 100 * K, 8 * K),	/* drop shared clusters (zero flag), some compressed */
	D(416 * K, 8 * K),		/* free our own clusters (deferred, then punched) */
	F,
	W(3 * M + 512 * K, 2000),	/* may reuse the freed clusters */
	W(600, 2000),			/* in place and fresh */
	F,
	W(1 * M + 200 * K, 3000),	/* COW from shared compressed clusters */
	F,
};
/* clang-format on */

/* 64-bit refcounts: a refcount block maps 32 KiB of host, the one-cluster
 * refcount table 2 MiB. The prefill leaves the host file just under that, so
 * the first allocations replace the table. Finding free space reads every
 * refcount block, so this sweep fails writes and syncs only. */
static void make_qcow2_reftable(void)
{
	t_sh("qemu-img create -q -f qcow2 -o cluster_size=512,refcount_bits=64 grow.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x66 0 1900K' grow.qcow2");
}

/* clang-format off */
static const struct wl_op reftable_ops[] = {
	W(2 * M + 300, 64 * K),		/* past the refcount table's reach */
	F,
	W(3 * M, 100 * K),
	W(100, 1000),			/* in place */
	F,
};
/* clang-format on */

/* Extended L2 entries: 16 KiB clusters of 32 subclusters, over the backing
 * file; the prefill is a whole allocated cluster and one subcluster. */
static void make_qcow2_extl2(void)
{
	make_base();
	t_sh("qemu-img create -q -f qcow2 -o cluster_size=16K,extended_l2=on -b base.raw -F raw "
	     "sub.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x77 64K 16K' -c 'write -P 0x77 96K 512' sub.qcow2");
}

/* clang-format off */
static const struct wl_op extl2_ops[] = {
	W(100, 1000),			/* copy-on-write of the touched subclusters only */
	W(20 * K + 512, 512),		/* one whole subcluster */
	F,
	W(2100, 300),			/* more subclusters of an allocated cluster */
	W(96 * K + 700, 1000),		/* next to the prefilled subcluster */
	D(64 * K + 1024, 2048),		/* subclusters read as zero */
	D(32 * K, 16 * K),		/* a whole cluster */
	F,
	W(3 * M - 100, 200),		/* across the backing file's end */
	W(64 * K + 1500, 100),		/* into a zeroed subcluster */
	F,
};
/* clang-format on */

/* 640 MiB in 1 MiB blocks: the BAT spans two 4 KiB pages, so one fsync can
 * log both. */
static void make_vhdx(void)
{
	t_sh("qemu-img create -q -f vhdx -o block_size=1M,log_size=1M sweep.vhdx 640M && "
	     "qemu-io -f vhdx -c 'write -P 0x55 5M 2M' sweep.vhdx");
}

/* clang-format off */
static const struct wl_op vhdx_ops[] = {
	W(1000, 5000),			/* new block, unaligned */
	W(600 * M + 100, 3000),		/* new block, second BAT page */
	F,
	W(601 * M, 1 * M),		/* a whole block */
	W(1 * M - 100, 200),		/* across a block boundary into a new block */
	W(6 * M - 300, 4096),		/* in place in a qemu-written block */
	F,
	D(600 * M, 1 * M),		/* whole block: ZERO and punched */
	D(5 * M + 4096, 8192),		/* part of a present block */
	F,
	W(600 * M + 4096, 4096),	/* the zeroed block again */
	W(2000, 100),			/* in place */
	W(602 * M + 7, 10),		/* another new block */
	F,
};

static const struct sweep sweeps[] = {
	{
		.fmt = "qcow2",
		.image = "sweep.qcow2",
		.make = make_qcow2,
		.backing_size = 3 * M,
		.pre = {{1 * M, 256 * K}},
		.pre_byte = 0x44,
		.snapshot = "s1",
		.cache_size = 5120,	/* 8 L2 tables, 4 refcount blocks */
		.kinds = FAULT_ALL,
		.ops = qcow2_ops,
		.nops = G_N_ELEMENTS(qcow2_ops),
	},
	{
		.fmt = "qcow2",
		.image = "sub.qcow2",
		.make = make_qcow2_extl2,
		.backing_size = 3 * M,
		.pre = {{64 * K, 16 * K}, {96 * K, 512}},
		.pre_byte = 0x77,
		.kinds = FAULT_ALL,
		.ops = extl2_ops,
		.nops = G_N_ELEMENTS(extl2_ops),
	},
	{
		.fmt = "qcow2",
		.image = "grow.qcow2",
		.make = make_qcow2_reftable,
		.pre = {{0, 1900 * K}},
		.pre_byte = 0x66,
		.kinds = FAULT_WRITE | FAULT_SYNC,
		.ops = reftable_ops,
		.nops = G_N_ELEMENTS(reftable_ops),
	},
	{
		.fmt = "vhdx",
		.image = "sweep.vhdx",
		.make = make_vhdx,
		.pre = {{5 * M, 2 * M}},
		.pre_byte = 0x55,
		.kinds = FAULT_ALL,
		.ops = vhdx_ops,
		.nops = G_N_ELEMENTS(vhdx_ops),
	},
};
/* clang-format on */

/* ---- what the guest may read ---- */

/* Where a byte may come from: the image as made, or operation i. */
#define SRC_INIT (-1)

/* Scratch buffers, reused by every run (allocation is slow under ASan): one
 * for I/O, one per possible source of a byte. No I/O or segment exceeds M. */
static uint8_t *io_buf, *want_buf[MAX_OPS + 1];

static uint8_t *init_buf; /* the image as made, up to init_end; zero after */
static uint64_t init_end;

static void init_prepare(const struct sweep *s)
{
	init_end = s->backing_size;
	for (int k = 0; k < 2; k++)
		init_end = MAX(init_end, s->pre[k].off + s->pre[k].len);
	g_free(init_buf);
	init_buf = g_malloc0(init_end);
	t_pattern(init_buf, s->backing_size, 0, BASE_SEED);
	for (int k = 0; k < 2; k++)
		memset(init_buf + s->pre[k].off, s->pre_byte, s->pre[k].len);
}

static void fill_init(uint8_t *buf, uint64_t off, uint64_t len)
{
	uint64_t n = off < init_end ? MIN(len, init_end - off) : 0;

	if (n)
		memcpy(buf, init_buf + off, n);
	memset(buf + n, 0, len - n);
}

static bool init_is_zero(const struct sweep *s, uint64_t off, uint64_t len)
{
	if (off < s->backing_size)
		return false;
	for (int k = 0; k < 2; k++)
		if (off < s->pre[k].off + s->pre[k].len && off + len > s->pre[k].off)
			return false;
	return true;
}

static void fill_src(const struct sweep *s, int src, uint8_t *buf, uint64_t off, uint64_t len)
{
	if (src == SRC_INIT)
		fill_init(buf, off, len);
	else if (s->ops[src].kind == OP_DISCARD)
		memset(buf, 0, len);
	else
		t_pattern(buf, len, off, src + 1);
}

static bool issued(const struct sweep *s, const struct run *r, unsigned i)
{
	return r->res[i] != RES_NOTRUN && s->ops[i].kind != OP_FSYNC;
}

/* The sources a guest byte in [a, b) may hold (no operation starts or ends
 * inside it): the last write covering it that an fsync made durable, and any
 * issued after it; if none was made durable, the initial bytes too. */
static unsigned sources(const struct sweep *s, const struct run *r, uint64_t a, int *src)
{
	int durable = SRC_INIT;
	unsigned n = 0;

	for (unsigned i = 0; i < s->nops; i++)
		if (issued(s, r, i) && s->ops[i].off <= a && a < s->ops[i].off + s->ops[i].len &&
		    r->res[i] == RES_OK && (int)i < r->last_sync)
			durable = i;
	src[n++] = durable;
	for (unsigned i = durable + 1; i < s->nops; i++)
		if (issued(s, r, i) && s->ops[i].off <= a && a < s->ops[i].off + s->ops[i].len)
			src[n++] = i;
	return n;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
	return x < y ? -1 : x > y;
}

static const char *mode_name(const struct run *r)
{
	static const char *const names[] = {"once, then a crash", "once, then a clean close",
					    "and every I/O after it"};
	return names[r->mode];
}

static void dump_run(const struct sweep *s, const struct run *r)
{
	static const char *const res[] = {"not run", "ok", "failed"};

	for (unsigned i = 0; i < s->nops; i++)
		g_printerr("  op %u: %s 0x%llx+%llu: %s\n", i,
			   s->ops[i].kind == OP_WRITE	  ? "write"
			   : s->ops[i].kind == OP_DISCARD ? "discard"
							  : "fsync",
			   (unsigned long long)s->ops[i].off, (unsigned long long)s->ops[i].len,
			   res[r->res[i]]);
	g_printerr("  last successful fsync: op %d; image kept in %s\n", r->last_sync, t_dir());
}

G_GNUC_NORETURN static void fail(const struct sweep *s, const struct run *r, const char *what)
{
	g_printerr("%s, I/O #%lu fails with %s (%s): %s\n", s->fmt, r->nth, strerror(r->err),
		   mode_name(r), what);
	dump_run(s, r);
	g_error("%s fault sweep failed", s->fmt);
}

/* Check the guest bytes [off, off+len) read back as got (NULL: all zero). */
static void check_range(const struct sweep *s, const struct run *r, const uint8_t *got,
			uint64_t off, uint64_t len)
{
	uint64_t cut[2 * MAX_OPS + 2];
	unsigned ncut = 0;
	uint8_t **want = want_buf;

	cut[ncut++] = off;
	cut[ncut++] = off + len;
	for (unsigned i = 0; i < s->nops; i++) {
		uint64_t e = s->ops[i].off + s->ops[i].len;
		if (!issued(s, r, i))
			continue;
		if (s->ops[i].off > off && s->ops[i].off < off + len)
			cut[ncut++] = s->ops[i].off;
		if (e > off && e < off + len)
			cut[ncut++] = e;
	}
	qsort(cut, ncut, sizeof(cut[0]), cmp_u64);
	for (unsigned c = 0; c + 1 < ncut; c++) {
		uint64_t a = cut[c], n = cut[c + 1] - a;
		int src[MAX_OPS + 1];
		unsigned nsrc;

		if (!n)
			continue;
		nsrc = sources(s, r, a, src);
		if (!got) { /* fast path: a zero source allows everything */
			bool zero_ok = false;
			for (unsigned k = 0; k < nsrc; k++)
				zero_ok |= src[k] == SRC_INIT ? init_is_zero(s, a, n)
							      : s->ops[src[k]].kind == OP_DISCARD;
			if (zero_ok)
				continue;
		}
		for (unsigned k = 0; k < nsrc; k++) {
			if (!want[k])
				want[k] = g_malloc(M);
			fill_src(s, src[k], want[k], a, n);
		}
		if (got && nsrc == 1 && !memcmp(got + (a - off), want[0], n))
			continue;
		for (uint64_t i = 0; i < n; i++) {
			uint8_t v = got ? got[a - off + i] : 0;
			unsigned k = 0;

			while (k < nsrc && want[k][i] != v)
				k++;
			if (k == nsrc) {
				char *msg = g_strdup_printf(
					"guest byte 0x%llx reads 0x%02x, expected 0x%02x from op "
					"%d "
					"(-1: the image as made; %u possible sources)",
					(unsigned long long)(a + i), v, want[0][i], src[0], nsrc);
				fail(s, r, msg);
			}
		}
	}
}

/* ---- running the workload ---- */

static int sweep_open(const struct sweep *s, const char *path, bool ro, struct vd_image **img)
{
	struct vd_open_opts o = {
		.read_only = ro, .backing = VD_BACKING_FOLLOW, .cache_size = s->cache_size};

	return image_open(path, &o, img);
}

static void copy_file(const char *from, const char *to)
{
	char *a = t_path(from), *b = t_path(to);
	int in = open(a, O_RDONLY), out = open(b, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ssize_t n;

	g_assert_cmpint(in, >=, 0);
	g_assert_cmpint(out, >=, 0);
	while ((n = copy_file_range(in, NULL, out, NULL, 1 << 30, 0)) > 0)
		;
	g_assert_cmpint(n, ==, 0);
	close(in);
	close(out);
	g_free(a);
	g_free(b);
}

static int run_op(struct vd_image *img, const struct wl_op *op, unsigned seed)
{
	switch (op->kind) {
	case OP_WRITE:
		t_pattern(io_buf, op->len, op->off, seed);
		return image_pwrite_wait(img, io_buf, op->len, op->off);
	case OP_DISCARD:
		return image_zero_wait(img, op->len, op->off, true);
	default:
		return image_fsync_wait(img);
	}
}

/* Open a fresh copy, arm the fault, run the operations, close. Returns the
 * I/Os counted before the close, and in *total with the close. */
static unsigned long run_workload(const struct sweep *s, struct run *r, unsigned long *total)
{
	char *p = t_path("run.img");
	struct vd_image *img;
	unsigned long counted;

	copy_file(s->image, "run.img");
	g_assert_cmpint(sweep_open(s, p, false, &img), ==, 0);
	r->last_sync = -1;
	fault_set(r->nth ? r->nth : ULONG_MAX, r->err, s->kinds, r->mode == FROM_NTH ? 0 : 1);
	for (unsigned i = 0; i < s->nops; i++) {
		int ret = run_op(img, &s->ops[i], i + 1);

		r->res[i] = ret ? RES_FAILED : RES_OK;
		if (!ret && s->ops[i].kind == OP_FSYNC)
			r->last_sync = i;
		if (ret && r->mode == FROM_NTH)
			break;
	}
	counted = fault_counted();
	if (r->nth && r->mode == ONCE_CRASH)
		fault_set(1, EIO, FAULT_ALL, 0); /* nothing the close writes lands */
	image_unref(img);			 /* flushes; may fail */
	*total = r->nth && r->mode == ONCE_CRASH ? counted : fault_counted();
	fault_set(0, 0, 0, 0);
	g_free(p);
	return counted;
}

/* Read the whole guest through the driver in 1 MiB pieces (skipping what
 * block status calls zero), check each against the model, and write it into
 * view.raw (sparse) for qemu-img compare. */
static void check_view(const struct sweep *s, const struct run *r, struct vd_image *img)
{
	char *vp = t_path("view.raw");
	int fd = open(vp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	uint8_t *buf = io_buf;

	g_assert_cmpint(fd, >=, 0);
	g_assert_cmpint(ftruncate(fd, img->size), ==, 0);
	for (uint64_t off = 0; off < img->size; off += M) {
		uint64_t n = MIN(M, img->size - off), pnum;
		enum vd_bs st;
		int ret = image_block_status(img, off, n, &pnum, &st);

		if (ret)
			fail(s, r, "block status fails after reopening");
		if (st == VD_BS_ZERO && pnum == n) {
			check_range(s, r, NULL, off, n);
			continue;
		}
		ret = image_pread_wait(img, buf, n, off);
		if (ret)
			fail(s, r, "read fails after reopening");
		check_range(s, r, buf, off, n);
		g_assert_cmpint(pwrite(fd, buf, n, off), ==, (ssize_t)n);
	}
	close(fd);
	g_free(vp);
}

static void qemu_expect(const struct sweep *s, const struct run *r, int rc, bool ok,
			const char *cmd)
{
	char *log, *out = NULL, *msg;

	if (ok)
		return;
	log = t_path("qemu.log");
	if (g_file_get_contents(log, &out, NULL, NULL))
		g_printerr("%s", out);
	g_free(out);
	g_free(log);
	msg = g_strdup_printf("%s exits %d", cmd, rc);
	fail(s, r, msg);
}

/* A 256-bit multiply-xor hash: fast, and collisions between images made by
 * one workload are not a concern. */
static void hash_update(uint64_t h[4], const uint8_t *p, size_t n)
{
	uint64_t w[4] = {0, 0, 0, 0};
	size_t i = 0;

	for (;;) {
		if (n - i < sizeof(w)) { /* the tail, zero-padded */
			if (i == n)
				break;
			memset(w, 0, sizeof(w));
			memcpy(w, p + i, n - i);
			i = n;
		} else {
			memcpy(w, p + i, sizeof(w));
			i += sizeof(w);
		}
		for (int k = 0; k < 4; k++) {
			h[k] = (h[k] ^ w[k]) * 0x9E3779B97F4A7C15ull;
			h[k] ^= h[k] >> 29;
		}
	}
}

/* A digest of run.img's bytes (holes skipped), to run qemu-img once per
 * distinct image: many runs end in the same bytes. A vhdx's headers and log
 * are left out: they hold GUIDs that are new in every session. */
static char *run_digest(const struct sweep *s)
{
	char *p = t_path("run.img");
	int fd = open(p, O_RDONLY);
	uint64_t h[4] = {1, 2, 3, 4};
	uint8_t *buf = io_buf, hdr[80];
	uint64_t skip[2][2] = {{0, 0}, {0, 0}};
	off_t data = 0, hole;

	g_assert_cmpint(fd, >=, 0);
	if (!strcmp(s->fmt, "vhdx")) {
		t_pread(p, hdr, sizeof(hdr), t_vhdx_current_header(p));
		skip[0][0] = VHDX_HEADER1_OFF;
		skip[0][1] = VHDX_RT1_OFF;
		skip[1][0] = get_le64(hdr + 72);
		skip[1][1] = skip[1][0] + get_le32(hdr + 68);
	}
	while ((data = lseek(fd, data, SEEK_DATA)) >= 0) {
		hole = lseek(fd, data, SEEK_HOLE);
		g_assert_cmpint(hole, >, data);
		while (data < hole) {
			ssize_t n = pread(fd, buf, MIN((off_t)M, hole - data), data);
			uint64_t at = data;

			g_assert_cmpint(n, >, 0);
			for (int k = 0; k < 2; k++) {
				uint64_t x = MAX(at, skip[k][0]), y = MIN(at + n, skip[k][1]);
				if (x < y)
					memset(buf + (x - at), 0, y - x);
			}
			hash_update(h, (const uint8_t *)&at, sizeof(at));
			hash_update(h, buf, n);
			data += n;
		}
	}
	data = lseek(fd, 0, SEEK_END);
	hash_update(h, (const uint8_t *)&data, sizeof(data));
	close(fd);
	g_free(p);
	return g_strdup_printf("%016llx%016llx%016llx%016llx", (unsigned long long)h[0],
			       (unsigned long long)h[1], (unsigned long long)h[2],
			       (unsigned long long)h[3]);
}

static GHashTable *qemu_seen;

/* qemu-img reads the guest ranges the workload touched (whole MiBs: reading
 * all of a large vhdx takes QEMU seconds) like our view.raw. A window (a raw
 * driver over the format) opens no backing file: those compare everything. */
static void qemu_compare(const struct sweep *s, const struct run *r, const char *image,
			 uint64_t size)
{
	uint64_t win[MAX_OPS + 2][2];
	unsigned n = 0;

	for (unsigned i = 0; i < s->nops + 2; i++) {
		uint64_t a = i < s->nops ? s->ops[i].off : s->pre[i - s->nops].off;
		uint64_t b = a + (i < s->nops ? s->ops[i].len : s->pre[i - s->nops].len);
		if (a == b)
			continue;
		win[n][0] = a / M * M;
		win[n][1] = (b + M - 1) / M * M;
		n++;
	}
	qsort(win, n, sizeof(win[0]), cmp_u64);
	for (unsigned i = 0, j; i < n; i = j) {
		uint64_t a = win[i][0], b = win[i][1];
		int rc;

		for (j = i + 1; j < n && win[j][0] <= b; j++)
			b = MAX(b, win[j][1]);
		if (s->backing_size || (a == 0 && b >= size)) {
			rc = t_sh_rc("qemu-img compare -f %s -F raw %s view.raw >qemu.log 2>&1",
				     s->fmt, image);
			qemu_expect(s, r, rc, rc == 0, "qemu-img compare with our view");
			break;
		}
		rc = t_sh_rc(
			"qemu-img compare --image-opts "
			"driver=raw,offset=%llu,size=%llu,file.driver=%s,file.file.filename=%s "
			"driver=raw,offset=%llu,size=%llu,file.filename=view.raw >qemu.log 2>&1",
			(unsigned long long)a, (unsigned long long)(b - a), s->fmt, image,
			(unsigned long long)a, (unsigned long long)(b - a));
		qemu_expect(s, r, rc, rc == 0, "qemu-img compare with our view");
	}
}

/* After a run: our driver opens the image (replaying a dirty vhdx log
 * read-write first, as a mount would; QEMU replays it on a copy), every
 * acknowledged byte is there, qemu-img check finds no corruption and qemu-img
 * reads what we read. */
static void verify(const struct sweep *s, const struct run *r, bool clean)
{
	char *p = t_path("run.img"), *digest;
	bool replayed = false, seen; /* replayed: by QEMU, into qemu.img */
	uint64_t size;
	struct vd_image *img;
	int rc = sweep_open(s, p, true, &img);

	if (rc == -EPERM && !strcmp(s->fmt, "vhdx")) {
		copy_file("run.img", "qemu.img");
		rc = t_sh_rc("qemu-img check -r all -f vhdx qemu.img >qemu.log 2>&1");
		qemu_expect(s, r, rc, rc == 0, "qemu-img check -r all (log replay)");
		replayed = true;
		if (sweep_open(s, p, false, &img))
			fail(s, r, "the image does not open read-write to replay its log");
		image_unref(img);
		rc = sweep_open(s, p, true, &img);
	}
	if (rc)
		fail(s, r, "the image does not open");
	check_view(s, r, img);
	size = img->size;
	image_unref(img);
	g_free(p);

	/* qemu-img on run.img: once per distinct image */
	digest = run_digest(s);
	seen = g_hash_table_contains(qemu_seen, digest);
	if (seen)
		g_free(digest);
	else
		g_hash_table_add(qemu_seen, digest);
	if (!seen) {
		rc = t_sh_rc("qemu-img check -f %s run.img >qemu.log 2>&1", s->fmt);
		qemu_expect(s, r, rc, rc == 0 || (rc == 3 && !clean), "qemu-img check");
	}
	if (!seen || replayed)
		qemu_compare(s, r, replayed ? "qemu.img" : "run.img", size);
	if (!seen && s->snapshot) {
		rc = t_sh_rc("qemu-img convert -l snapshot.name=%s -O raw run.img snap.raw && "
			     "cmp snap.raw %s.ref >qemu.log 2>&1",
			     s->snapshot, s->snapshot);
		qemu_expect(s, r, rc, rc == 0, "the snapshot changed");
	}
}

static void test_sweep(gconstpointer data)
{
	const struct sweep *s = data;
	static const struct {
		int err;
		enum fault_mode mode;
	} modes[] = {{EIO, ONCE_CRASH}, {EIO, FROM_NTH}, {ENOSPC, ONCE_CLOSE}, {ENOSPC, FROM_NTH}};
	struct run r = {.err = EIO};
	const char *only = g_getenv("SWEEP_NTH"); /* debugging: just this I/O */
	unsigned long only_nth = only ? strtoul(only, NULL, 10) : 0;
	unsigned long total, before_close, runs_failed = 0;
	gint64 t0 = g_get_monotonic_time();

	g_assert_cmpuint(s->nops, <=, MAX_OPS);
	for (unsigned i = 0; i < s->nops; i++)
		g_assert_cmpuint(s->ops[i].len, <=, M);
	g_hash_table_remove_all(qemu_seen);
	init_prepare(s);
	s->make();
	/* Without a fault: count the I/Os; everything must be there and clean. */
	before_close = run_workload(s, &r, &total);
	for (unsigned i = 0; i < s->nops; i++)
		g_assert_cmpint(r.res[i], ==, RES_OK);
	verify(s, &r, true);
	g_assert_cmpuint(before_close, >, 0);

	for (unsigned long n = 1; n <= total; n++) {
		if (only_nth && n != only_nth)
			continue;
		for (unsigned m = 0; m < G_N_ELEMENTS(modes); m++) {
			unsigned long seen, seen_total;

			r = (struct run){.nth = n, .err = modes[m].err, .mode = modes[m].mode};
			seen = run_workload(s, &r, &seen_total);
			/* The same I/Os as without a fault, up to the failing one. */
			if ((r.mode == ONCE_CRASH ? seen : seen_total) < MIN(n, before_close))
				fail(s, &r, "the workload did fewer I/Os than without a fault");
			for (unsigned i = 0; i < s->nops; i++)
				if (r.res[i] == RES_FAILED) {
					runs_failed++;
					break;
				}
			verify(s, &r, false);
		}
	}
	g_test_message("%s: %lu I/Os (%lu in the close), %lu runs (%lu saw an operation fail), "
		       "%u distinct images, %.1f s",
		       s->image, total, total - before_close, total * G_N_ELEMENTS(modes),
		       runs_failed, g_hash_table_size(qemu_seen),
		       (g_get_monotonic_time() - t0) / 1e6);
}

int main(int argc, char **argv)
{
	const char *where = g_getenv("VDISKFS_SWEEP_DIR");
	int ret;

	t_init(&argc, &argv);
	vd_log_quiet(!g_test_verbose());
	/* Thousands of fsyncs: on tmpfs they cost nothing. */
	if (!where && access("/dev/shm", W_OK) == 0)
		where = "/dev/shm";
	if (where)
		g_setenv("VDISKFS_TESTDIR", where, true);
	io_buf = g_malloc(M);
	qemu_seen = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, NULL);
	t_add_qemu_data("/fault-sweep/qcow2", &sweeps[0], test_sweep);
	t_add_qemu_data("/fault-sweep/qcow2-extl2", &sweeps[1], test_sweep);
	t_add_qemu_data("/fault-sweep/qcow2-reftable", &sweeps[2], test_sweep);
	t_add_qemu_data("/fault-sweep/vhdx", &sweeps[3], test_sweep);
	ret = t_run();
	g_hash_table_destroy(qemu_seen);
	g_free(init_buf);
	g_free(io_buf);
	for (unsigned k = 0; k <= MAX_OPS; k++)
		g_free(want_buf[k]);
	return ret;
}
