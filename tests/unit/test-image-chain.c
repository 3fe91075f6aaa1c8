/* The backing chain changed live (image-chain.c), with qemu-img as the
 * oracle: an overlay created over an open image and written through, the
 * backing link rewritten after a stream's copy (to none, to a base two
 * levels down) and swept with failing writes and syncs, an image reopened
 * read-write and back against QEMU's locks, and block status above a base
 * against `qemu-img map` of each layer. */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/fault.h"
#include "testlib.h"

#define K (1ull << 10)
#define M (1ull << 20)

/* A write through img, and the same bytes into the raw reference. */
static void write_both(struct vd_image *img, const char *ref, uint64_t off, uint64_t len,
		       unsigned seed)
{
	uint8_t *buf = g_malloc(len);

	t_pattern(buf, len, off, seed);
	g_assert_cmpint(image_pwrite_wait(img, buf, len, off), ==, 0);
	t_pwrite(ref, buf, len, off);
	g_free(buf);
}

/* base.qcow2 (4 MiB, data), mid.qcow2 over it and top.qcow2 over mid, each
 * with data and zero writes of its own; ref.raw reads like top. */
static void make_chain(const char *base_fmt)
{
	t_sh("rm -f base.* mid.qcow2 top.qcow2 ref.raw");
	if (!strcmp(base_fmt, "raw"))
		t_sh("qemu-img create -q -f raw base.raw 4M && "
		     "qemu-io -f raw -c 'write -P 0x11 0 1M' -c 'write -P 0x12 3M 256K' base.raw");
	else
		t_sh("qemu-img create -q -f qcow2 base.qcow2 4M && "
		     "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -z 2M 128K' "
		     "-c 'write -P 0x12 3M 256K' base.qcow2");
	t_sh("qemu-img create -q -f qcow2 -b '%s/base.%s' -F %s mid.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x21 128K 128K' -c 'write -z 512K 64K' "
	     "-c 'write -P 0x22 2M 64K' mid.qcow2 && "
	     "qemu-img create -q -f qcow2 -b '%s/mid.qcow2' -F qcow2 top.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x31 192K 64K' -c 'write -z 3M 64K' "
	     "-c 'write -P 0x32 1M 100K' top.qcow2 && "
	     "qemu-img convert -O raw top.qcow2 ref.raw",
	     t_dir(), base_fmt, base_fmt, t_dir());
}

/* What stream does: the data the layers between top and base (NULL: all)
 * hold, copied into top where top holds none. */
static void stream_copy(struct vd_image *top, struct vd_image *base)
{
	uint8_t *buf = g_malloc(M);
	uint64_t n, m;

	for (uint64_t off = 0; off < top->size; off += n) {
		enum vd_bs st;

		g_assert_cmpint(image_block_status_above(top, top->backing, off, M, &n, &st), ==,
				0);
		if (st != VD_BS_UNALLOC)
			continue;
		/* top allocates none of it: what is above base comes from below top */
		g_assert_cmpint(image_block_status_above(top, base, off, n, &m, &st), ==, 0);
		n = m;
		if (st == VD_BS_DATA) {
			g_assert_cmpint(image_pread_wait(top, buf, n, off), ==, 0);
			g_assert_cmpint(image_pwrite_wait(top, buf, n, off), ==, 0);
		} else if (st == VD_BS_ZERO) {
			g_assert_cmpint(image_zero_wait(top, n, off, false), ==, 0);
		}
	}
	g_assert_cmpint(image_fsync_wait(top), ==, 0);
	g_free(buf);
}

/* Does qemu-img read name's backing link as the file backing (NULL: none)
 * of format fmt (NULL: any)? */
static bool backing_is(const char *name, const char *backing, const char *fmt)
{
	g_assert_cmpint(t_sh_rc("qemu-img info -U --output=json %s > info.json", name), ==, 0);
	if (!backing)
		return t_sh_rc("grep -q backing-filename info.json") == 1;
	if (fmt && t_sh_rc("grep -q '\"backing-filename-format\": \"%s\"' info.json", fmt))
		return false;
	return !t_sh_rc("grep -q '\"backing-filename\": \"%s/%s\"' info.json", t_dir(), backing);
}

static char *abs_path(const char *name)
{
	return g_strdup_printf("%s/%s", t_dir(), name);
}

/* ---- snapshot ---- */

static void test_overlay(void)
{
	char *top_path = abs_path("top.qcow2");
	struct vd_image *base, *top = NULL, *again = NULL;
	uint8_t buf[512] = {0};

	t_sh("rm -f base.qcow2 top.qcow2 && qemu-img create -q -f qcow2 base.qcow2 4M && "
	     "qemu-io -f qcow2 -c 'write -P 0x11 0 1M' -c 'write -z 2M 64K' base.qcow2 && "
	     "qemu-img convert -O raw base.qcow2 ref.raw && ln -sf base.qcow2 link.qcow2 && "
	     "md5sum base.qcow2 > base.md5");
	/* opened through a symbolic link: the overlay still finds this image */
	base = t_open_ok("link.qcow2", false);
	g_assert_cmpint(image_create_overlay(base, top_path, 0600, &top), ==, 0);
	g_assert_true(top->backing == base);
	g_assert_true(base->read_only);
	g_assert_cmpint(image_pwrite_wait(base, buf, sizeof(buf), 0), ==, -EROFS);
	g_assert_cmpint(image_create_overlay(base, top_path, 0, &again), ==, -EEXIST);
	write_both(top, "ref.raw", 100, 5000, 1);
	write_both(top, "ref.raw", 1 * M - 700, 64 * K + 1400, 2);
	write_both(top, "ref.raw", 2 * M + 4 * K, 4 * K, 3);
	g_assert_cmpint(image_fsync_wait(top), ==, 0);
	t_compare_raw(top, "ref.raw");
	image_unref(top);
	image_unref(base);
	g_assert_cmpint(t_qemu_img("check -q top.qcow2"), ==, 0);
	g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw top.qcow2 ref.raw"), ==, 0);
	g_assert_true(backing_is("top.qcow2", "link.qcow2", "qcow2"));
	g_assert_cmpint(t_sh_rc("md5sum -c --quiet base.md5"), ==, 0);
	g_free(top_path);
}

/* A failed open of the new overlay removes it and leaves base writable. */
static void test_overlay_fail(void)
{
	static const struct vd_open_opts deny = {.backing = VD_BACKING_DENY};
	char *top_path = abs_path("top.qcow2"), *base_path = abs_path("base.qcow2");
	struct vd_image *base, *top = NULL;
	uint8_t buf[512] = {0x5a};

	t_sh("rm -f base.qcow2 top.qcow2 && qemu-img create -q -f qcow2 base.qcow2 1M");
	g_assert_cmpint(image_open(base_path, &deny, &base), ==, 0);
	g_assert_cmpint(image_create_overlay(base, top_path, 0, &top), ==, -EPERM);
	g_assert_null(top);
	g_assert_false(base->read_only);
	g_assert_cmpint(access(top_path, F_OK), ==, -1);
	g_assert_cmpint(image_pwrite_wait(base, buf, sizeof(buf), 0), ==, 0);
	g_assert_cmpint(image_create_overlay(base, "rel.qcow2", 0, &top), ==, -EINVAL);
	image_unref(base);
	g_assert_cmpint(t_qemu_img("check -q base.qcow2"), ==, 0);
	g_free(top_path);
	g_free(base_path);
}

/* ---- stream and commit: set_backing ---- */

/* Stream everything into top, then no backing file. */
static void test_set_backing_none(void)
{
	struct vd_image *top;

	make_chain("qcow2");
	top = t_open_ok("top.qcow2", false);
	stream_copy(top, NULL);
	g_assert_cmpint(image_set_backing(top, NULL), ==, 0);
	g_assert_null(top->backing);
	g_assert_null(top->backing_names[0]);
	g_assert_null(top->backing_fmt);
	t_compare_raw(top, "ref.raw");
	image_unref(top);
	g_assert_cmpint(t_qemu_img("check -q top.qcow2"), ==, 0);
	g_assert_true(backing_is("top.qcow2", NULL, NULL));
	g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw top.qcow2 ref.raw"), ==, 0);
	top = t_open_ok("top.qcow2", true);
	g_assert_null(top->backing);
	image_unref(top);
}

/* Stream mid into top, then top over base (raw: the format changes too). */
static void test_set_backing_base(gconstpointer fmt)
{
	char *base_name = g_strdup_printf("base.%s", (const char *)fmt);
	struct vd_image *top, *mid, *base;

	make_chain(fmt);
	top = t_open_ok("top.qcow2", false);
	mid = top->backing;
	base = mid->backing;
	g_assert_cmpint(image_set_backing(mid, base), ==, -EROFS);
	g_assert_cmpint(image_set_backing(base, top), ==, -EINVAL);
	stream_copy(top, base);
	g_assert_cmpint(image_set_backing(top, base), ==, 0);
	g_assert_true(top->backing == base);
	g_assert_cmpstr(top->backing_fmt, ==, fmt);
	t_compare_raw(top, "ref.raw");
	image_unref(top);
	g_assert_cmpint(t_qemu_img("check -q top.qcow2"), ==, 0);
	g_assert_true(backing_is("top.qcow2", base_name, fmt));
	g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw top.qcow2 ref.raw"), ==, 0);
	g_free(base_name);
}

/* Every write and sync of set_backing fails in turn, once (it goes on) or
 * from then on (a crash there): the image passes qemu-img check, reads as
 * before and names the old or the new backing file (the new one if the call
 * succeeded). The last run fails nothing. */
static void sweep_set_backing(const char *image, const char *old, const char *new)
{
	char *path = abs_path("run.qcow2");
	unsigned runs = 0;
	bool hit = true;

	for (unsigned long nth = 1; hit; nth++) {
		for (unsigned long count = 0; count <= 1; count++) {
			struct vd_image *img, *target;
			int ret;

			t_sh("cp %s run.qcow2", image);
			img = t_open_ok(path, false);
			target = new ? t_open_ok(new, true) : NULL;
			fault_set_path("run.qcow2");
			fault_set(nth, EIO, FAULT_WRITE | FAULT_SYNC, count);
			ret = image_set_backing(img, target);
			hit = fault_counted() >= nth;
			if (count == 0)
				fault_set(1, EIO, FAULT_ALL, 0); /* a crash: nothing more lands */
			image_unref(img);
			image_unref(target);
			fault_set(0, 0, 0, 0);
			fault_set_path(NULL);
			runs++;
			g_assert_cmpint(ret == 0, ==, !hit);
			g_assert_cmpint(t_qemu_img("check -q run.qcow2"), ==, 0);
			g_assert_true(backing_is("run.qcow2", new, NULL) ||
				      (ret && backing_is("run.qcow2", old, NULL)));
			g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw run.qcow2 ref.raw"),
					==, 0);
			image_unref(t_open_ok(path, false));
		}
	}
	g_test_message("%s: %u runs", image, runs);
	g_assert_cmpuint(runs, >=, 6);
	g_free(path);
}

static void test_set_backing_crash(void)
{
	char *own_path = abs_path("own.qcow2");
	struct vd_image *mid, *own;

	make_chain("qcow2");
	t_sh("qemu-img rebase -q -u -b '' mid.qcow2 && qemu-img convert -O raw mid.qcow2 ref.raw "
	     "&& "
	     "cp mid.qcow2 mid2.qcow2 && rm -f own.qcow2 && "
	     "qemu-img create -q -f qcow2 -b '%s/mid.qcow2' -F qcow2 over.qcow2 4M",
	     t_dir());
	/* ours: the format extension is the last one and goes with the link */
	mid = t_open_ok("mid.qcow2", false);
	g_assert_cmpint(image_create_overlay(mid, own_path, 0, &own), ==, 0);
	stream_copy(own, NULL);
	image_unref(own);
	image_unref(mid);
	sweep_set_backing("own.qcow2", "mid.qcow2", NULL);
	/* qemu-made: the feature table follows the format extension */
	sweep_set_backing("over.qcow2", "mid.qcow2", "mid2.qcow2");
	g_free(own_path);
}

/* ---- commit: reopen ---- */

/* Hold QEMU's "does not share write" byte on name, like a QEMU reader. */
static int qemu_reader_lock(const char *name)
{
	char *p = abs_path(name);
	int fd = open(p, O_RDONLY);
	struct flock fl = {.l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 201, .l_len = 1};

	g_assert_cmpint(fd, >=, 0);
	g_assert_cmpint(fcntl(fd, F_OFD_SETLK, &fl), ==, 0);
	g_free(p);
	return fd;
}

static void test_reopen(void)
{
	struct vd_image *top, *base;
	uint8_t buf[4096];
	int fd;

	make_chain("qcow2");
	t_sh("qemu-img convert -O raw base.qcow2 base.raw");
	top = t_open_ok("top.qcow2", false);
	base = top->backing->backing;
	g_assert_true(base->read_only);
	for (int round = 0; round < 2; round++) {
		g_assert_cmpint(image_reopen(base, true), ==, 0);
		g_assert_false(base->read_only);
		write_both(base, "base.raw", 4 * K * (round + 1) + 7, 70 * K, 10 + round);
		g_assert_cmpint(image_fsync_wait(base), ==, 0);
		/* QEMU's locks: a writer is refused, a force-share reader is not */
		g_assert_cmpint(t_sh_rc("qemu-io -f qcow2 -c 'write 0 512' base.qcow2"), !=, 0);
		g_assert_cmpint(t_sh_rc("qemu-img check -q base.qcow2"), !=, 0);
		g_assert_cmpint(t_sh_rc("qemu-io -r -U -f qcow2 -c 'read 0 512' base.qcow2"), ==,
				0);
		g_assert_cmpint(image_reopen(base, false), ==, 0);
		g_assert_true(base->read_only);
		g_assert_cmpint(image_pwrite_wait(base, buf, sizeof(buf), 0), ==, -EROFS);
		g_assert_cmpint(t_qemu_img("check -q base.qcow2"), ==, 0);
		g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw base.qcow2 base.raw"), ==,
				0);
		g_assert_cmpint(t_sh_rc("qemu-io -f qcow2 -c 'write 0 512' base.qcow2"), !=, 0);
	}
	t_compare_raw(base, "base.raw");

	/* refused by another process's lock: nothing changes */
	fd = qemu_reader_lock("base.qcow2");
	g_assert_cmpint(image_reopen(base, true), ==, -EBUSY);
	close(fd);
	g_assert_true(base->read_only);
	t_compare_raw(base, "base.raw");
	/* the driver's open fails on the new descriptor: back to the old one */
	fault_set_path("base.qcow2");
	fault_set(1, EIO, FAULT_READ, 1);
	g_assert_cmpint(image_reopen(base, true), !=, 0);
	fault_set(0, 0, 0, 0);
	fault_set_path(NULL);
	g_assert_true(base->read_only);
	g_assert_false(base->writable);
	t_compare_raw(base, "base.raw");
	/* the file may not be written (immutable): EPERM */
	if (t_sh_rc("chattr +i base.qcow2") == 0) {
		g_assert_cmpint(image_reopen(base, true), ==, -EPERM);
		t_sh("chattr -i base.qcow2");
		t_compare_raw(base, "base.raw");
	}
	g_assert_cmpint(image_reopen(base, true), ==, 0);
	g_assert_cmpint(image_reopen(base, false), ==, 0);
	image_unref(top);
	g_assert_cmpint(t_qemu_img("check -q base.qcow2"), ==, 0);
	g_assert_cmpint(t_qemu_img("check -q top.qcow2"), ==, 0);
}

/* A snapshot's old image, demoted, takes writes again once reopened. */
static void test_reopen_demoted(void)
{
	char *top_path = abs_path("top.qcow2");
	struct vd_image *base, *top;

	t_sh("rm -f base.qcow2 top.qcow2 && qemu-img create -q -f qcow2 base.qcow2 1M && "
	     "qemu-img convert -O raw base.qcow2 base.raw");
	base = t_open_ok("base.qcow2", false);
	g_assert_cmpint(image_create_overlay(base, top_path, 0, &top), ==, 0);
	g_assert_true(base->read_only && base->writable);
	g_assert_cmpint(image_reopen(base, true), ==, 0);
	write_both(base, "base.raw", 1000, 3000, 7);
	image_unref(top);
	image_unref(base);
	g_assert_cmpint(t_qemu_img("check -q base.qcow2"), ==, 0);
	g_assert_cmpint(t_qemu_img("compare -q -f qcow2 -F raw base.qcow2 base.raw"), ==, 0);
	g_free(top_path);
}

/* ---- block status above a base ---- */

/* Each layer's own allocation from `qemu-img map` of it alone, per 64 KiB:
 * 'D' data, 'Z' zero, '-' not allocated. */
static void layer_map(const char *name, char *map, unsigned n)
{
	char *out, *path, *line, **lines;

	t_sh("qemu-img map -U --output=json -f qcow2 'json:{\"driver\":\"qcow2\",\"backing\":null,"
	     "\"file\":{\"driver\":\"file\",\"filename\":\"%s\"}}' > map.json",
	     name);
	path = t_path("map.json");
	g_assert_true(g_file_get_contents(path, &out, NULL, NULL));
	lines = g_strsplit(out, "\n", -1);
	for (unsigned i = 0; (line = lines[i]); i++) {
		unsigned long start, len;
		int depth;
		char present[8], zero[8], data[8];

		if (sscanf(line,
			   "%*[[,{ ] \"start\": %lu, \"length\": %lu, \"depth\": %d, "
			   "\"present\": %7[a-z], \"zero\": %7[a-z], \"data\": %7[a-z]",
			   &start, &len, &depth, present, zero, data) != 6)
			continue;
		for (unsigned long g = start / (64 * K); g < (start + len) / (64 * K) && g < n; g++)
			map[g] = strcmp(present, "true") ? '-' : !strcmp(data, "true") ? 'D' : 'Z';
	}
	g_strfreev(lines);
	g_free(out);
	g_free(path);
}

static void test_status_above(void)
{
	static const char *const names[] = {"top.qcow2", "mid.qcow2", "base.qcow2"};
	enum { N = 64 }; /* 4 MiB in 64 KiB */
	char maps[3][N];
	struct vd_image *top, *layer[4];

	make_chain("qcow2");
	for (int l = 0; l < 3; l++)
		layer_map(names[l], maps[l], N);
	top = t_open_ok("top.qcow2", true);
	layer[0] = top;
	layer[1] = top->backing;
	layer[2] = layer[1]->backing;
	layer[3] = NULL;
	/* base = each layer in turn, and none */
	for (int b = 0; b <= 3; b++) {
		char got[N + 1] = {0}, want[N + 1] = {0};
		uint64_t off = 0, pnum;
		enum vd_bs st;

		while (off < top->size) {
			g_assert_cmpint(image_block_status_above(top, layer[b], off,
								 top->size - off, &pnum, &st),
					==, 0);
			g_assert_cmpuint(pnum % (64 * K), ==, 0);
			for (uint64_t g = off / (64 * K); g < (off + pnum) / (64 * K); g++)
				got[g] = st == VD_BS_DATA ? 'D' : st == VD_BS_ZERO ? 'Z' : '-';
			/* a run is of one kind: the next one differs */
			off += pnum;
		}
		for (int g = 0; g < N; g++) {
			want[g] = '-';
			for (int l = 0; l < b && l < 3; l++) {
				if (maps[l][g] != '-') {
					want[g] = maps[l][g];
					break;
				}
			}
		}
		g_test_message("above %s: %s", b < 3 ? names[b] : "none", got);
		g_assert_cmpstr(got, ==, want);
	}
	g_assert_true(image_chain_find(top, t_path("mid.qcow2")) == layer[1]);
	g_assert_null(image_chain_find(top, t_path("ref.raw")));
	image_unref(top);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	t_add_qemu("/chain/overlay", test_overlay);
	t_add_qemu("/chain/overlay-fail", test_overlay_fail);
	t_add_qemu("/chain/set-backing/none", test_set_backing_none);
	t_add_qemu_data("/chain/set-backing/base-qcow2", "qcow2", test_set_backing_base);
	t_add_qemu_data("/chain/set-backing/base-raw", "raw", test_set_backing_base);
	t_add_qemu("/chain/set-backing/crash", test_set_backing_crash);
	t_add_qemu("/chain/reopen", test_reopen);
	t_add_qemu("/chain/reopen-demoted", test_reopen_demoted);
	t_add_qemu("/chain/status-above", test_status_above);
	return t_run();
}
