/* The backup's copy-before-write store (slots in an unlinked file, an index,
 * freed slots punched and reused) and its start options (each rejected
 * option, and the combinations incremental needs). */
#include <errno.h>
#include <glib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mirror/backup-int.h"
#include "testlib.h"

#define CHUNK 65536

/* The three steps of a save, as the hook takes them. */
static int cbw_store_put(struct cbw_store *s, uint64_t idx, const void *buf, uint32_t len)
{
	uint64_t slot = cbw_store_reserve(s);
	int ret = cbw_store_write(s, slot, buf, len);

	if (ret)
		cbw_store_unreserve(s, slot);
	else
		cbw_store_commit(s, idx, slot);
	return ret;
}

static void fill(char *buf, char c)
{
	memset(buf, c, CHUNK);
}

static void check_slot(struct cbw_store *s, uint64_t idx, char c, uint32_t len)
{
	char *got = g_malloc(CHUNK);
	uint64_t slot;

	g_assert_true(cbw_store_lookup(s, idx, &slot));
	g_assert_cmpint(pread(s->fd, got, len, slot * CHUNK), ==, len);
	for (uint32_t i = 0; i < len; i++)
		g_assert_cmpint(got[i], ==, c);
	g_free(got);
}

static void test_store(void)
{
	struct cbw_store s;
	char *buf = g_malloc(CHUNK);
	uint64_t slot, first;
	struct stat st;

	g_assert_cmpint(cbw_store_open(&s, t_dir(), CHUNK), ==, 0);
	g_assert_false(cbw_store_lookup(&s, 7, &slot));
	fill(buf, 'a');
	g_assert_cmpint(cbw_store_put(&s, 7, buf, CHUNK), ==, 0);
	fill(buf, 'b');
	g_assert_cmpint(cbw_store_put(&s, 1000000, buf, 4096), ==, 0); /* a short last chunk */
	g_assert_cmpuint(s.nsaved, ==, 2);
	check_slot(&s, 7, 'a', CHUNK);
	check_slot(&s, 1000000, 'b', 4096);
	/* the file holds two slots whatever the chunk numbers */
	g_assert_cmpint(fstat(s.fd, &st), ==, 0);
	g_assert_cmpint(st.st_size, <=, 2 * CHUNK);
	g_assert_cmpuint(st.st_nlink, ==, 0); /* nobody else sees it */

	/* a dropped chunk's slot is punched and reused first */
	g_assert_true(cbw_store_lookup(&s, 7, &first));
	cbw_store_drop(&s, 7);
	g_assert_false(cbw_store_lookup(&s, 7, &slot));
	g_assert_cmpuint(s.nsaved, ==, 1);
	cbw_store_drop(&s, 7); /* dropping twice is nothing */
	fill(buf, 'c');
	g_assert_cmpint(cbw_store_put(&s, 3, buf, CHUNK), ==, 0);
	g_assert_true(cbw_store_lookup(&s, 3, &slot));
	g_assert_cmpuint(slot, ==, first);
	check_slot(&s, 3, 'c', CHUNK);
	check_slot(&s, 1000000, 'b', 4096);
	g_assert_cmpuint(s.next_slot, ==, 2);
	cbw_store_close(&s);
	g_free(buf);
}

static void test_store_no_dir(void)
{
	struct cbw_store s;

	g_assert_cmpint(cbw_store_open(&s, "/nonexistent-vdiskfs-dir", CHUNK), ==, -ENOENT);
}

static int parse(const char *v, struct backup_opts *o)
{
	backup_opts_init(o);
	return backup_opts_parse(o, v);
}

static void test_opts(void)
{
	struct backup_opts o;

	g_assert_cmpint(parse("target=/b/f.qcow2,format=vhdx,sync=full,bitmap=bm,speed=20M/s", &o),
			==, 0);
	g_assert_cmpstr(o.target, ==, "/b/f.qcow2");
	g_assert_cmpstr(o.format, ==, "vhdx");
	g_assert_cmpstr(o.bitmap, ==, "bm");
	g_assert_cmpint(o.sync, ==, BACKUP_FULL);
	g_assert_cmpuint(o.speed, ==, 20u << 20);
	g_assert_cmpint(backup_opts_check(&o), ==, 0);
	backup_opts_free(&o);

	g_assert_cmpint(parse("target=/b/i.qcow2,sync=incremental,bitmap=bm,base=/b/f.qcow2", &o),
			==, 0);
	g_assert_cmpint(o.sync, ==, BACKUP_INCREMENTAL);
	g_assert_cmpint(backup_opts_check(&o), ==, 0);
	backup_opts_free(&o);

	g_assert_cmpint(parse("/b/plain.raw", &o), ==, 0);
	g_assert_cmpstr(o.target, ==, "/b/plain.raw");
	backup_opts_free(&o);
}

static void test_opts_rejected(void)
{
	static const char *const bad_parse[] = {
		"",
		"target=rel.qcow2",
		"target=/a,format=vmdk",
		"target=/a,sync=diff",
		"target=/a,bitmap=",
		"target=/a,speed=fast",
		"target=/a,colour=blue",
		"target=/a,base=rel",
		"justaword",
	};
	static const char *const bad_check[] = {
		"sync=full",
		"target=/a,sync=incremental,base=/b",
		"target=/a,sync=incremental,bitmap=bm,base=/b,format=raw",
		"target=/a,base=/b",
	};
	struct backup_opts o;

	for (size_t i = 0; i < G_N_ELEMENTS(bad_parse); i++) {
		g_assert_cmpint(parse(bad_parse[i], &o), ==, -EINVAL);
		backup_opts_free(&o);
	}
	for (size_t i = 0; i < G_N_ELEMENTS(bad_check); i++) {
		g_assert_cmpint(parse(bad_check[i], &o), ==, 0);
		g_assert_cmpint(backup_opts_check(&o), ==, -EINVAL);
		backup_opts_free(&o);
	}
	/* Without base= an incremental is well formed: its start takes the
	 * last backup with that bitmap in this mount, or refuses (backup.bats). */
	g_assert_cmpint(parse("target=/a,sync=incremental,bitmap=bm", &o), ==, 0);
	g_assert_cmpint(backup_opts_check(&o), ==, 0);
	backup_opts_free(&o);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/backup/store", test_store);
	g_test_add_func("/backup/store-no-dir", test_store_no_dir);
	g_test_add_func("/backup/opts", test_opts);
	g_test_add_func("/backup/opts-rejected", test_opts_rejected);
	return t_run();
}
