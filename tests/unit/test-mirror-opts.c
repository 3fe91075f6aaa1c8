/* The mirror start value: plain paths, key=value lists, every rejected
 * option and value. */
#include <errno.h>
#include <glib.h>

#include "mirror/mirror.h"
#include "testlib.h"

static int parse(const char *v, struct mirror_opts *o)
{
	mirror_opts_init(o);
	return mirror_opts_parse(o, v);
}

static void test_plain_path(void)
{
	struct mirror_opts o;

	g_assert_cmpint(parse("/nfs2/vm1,old.qcow2", &o), ==, 0);
	g_assert_cmpstr(o.target, ==, "/nfs2/vm1,old.qcow2"); /* commas belong to the path */
	g_assert_null(o.format);
	g_assert_cmpuint(o.speed, ==, 0);
	g_assert_cmpuint(o.granularity, ==, 0);
	g_assert_false(o.existing);
	mirror_opts_free(&o);
}

static void test_key_values(void)
{
	struct mirror_opts o;

	g_assert_cmpint(parse("target=/a/b.vhdx,format=vhdx,speed=200M,granularity=64K,"
			      "existing=1,mode=write-blocking",
			      &o),
			==, 0);
	g_assert_cmpstr(o.target, ==, "/a/b.vhdx");
	g_assert_cmpstr(o.format, ==, "vhdx");
	g_assert_cmpuint(o.speed, ==, 200u << 20);
	g_assert_cmpuint(o.granularity, ==, 64u << 10);
	g_assert_true(o.existing);
	mirror_opts_free(&o);

	g_assert_cmpint(parse("speed=1G/s,target=/x", &o), ==, 0);
	g_assert_cmpuint(o.speed, ==, 1ull << 30);
	g_assert_cmpstr(o.target, ==, "/x");
	mirror_opts_free(&o);
}

static void test_rejected(void)
{
	static const char *const bad[] = {
		"",
		"relative/path.raw",
		"format=qcow2", /* no target */
		"target=relative.raw",
		"target=/x,format=vmdk",
		"target=/x,speed=fast",
		"target=/x,speed=-1",
		"target=/x,granularity=3M",   /* not a power of two */
		"target=/x,granularity=2K",   /* too small */
		"target=/x,granularity=128M", /* too large */
		"target=/x,existing=yes",
		"target=/x,mode=lazy",
		"target=/x,sync=none",
		"target=/x,base=/y",	 /* a stream's or commit's option */
		"target=/x,colour=blue", /* unknown option */
		"target=/x,speed",	 /* no value */
		"target=/x,=1",
	};

	for (size_t i = 0; i < G_N_ELEMENTS(bad); i++) {
		struct mirror_opts o;

		g_test_message("value \"%s\"", bad[i]);
		g_assert_cmpint(parse(bad[i], &o), ==, -EINVAL);
		mirror_opts_free(&o);
	}
}

static void test_modes(void)
{
	struct mirror_opts o;

	g_assert_cmpint(parse("target=/x,mode=background,sync=top", &o), ==, 0);
	g_assert_true(o.background);
	g_assert_true(o.sync_top);
	mirror_opts_free(&o);
	g_assert_cmpint(parse("target=/x,mode=write-blocking,sync=full", &o), ==, 0);
	g_assert_false(o.background);
	g_assert_false(o.sync_top);
	mirror_opts_free(&o);
}

/* Stream and commit take "1" or their own keys only. */
static void test_job_opts(void)
{
	static const struct {
		enum job_type t;
		const char *v;
		int ret;
	} cases[] = {
		{JOB_STREAM, "1", 0},
		{JOB_STREAM, "", 0},
		{JOB_STREAM, "base=/b,speed=10M", 0},
		{JOB_STREAM, "top=/t", -EINVAL},
		{JOB_STREAM, "target=/t", -EINVAL},
		{JOB_STREAM, "base=relative", -EINVAL},
		{JOB_STREAM, "2", -EINVAL},
		{JOB_COMMIT, "top=/t,base=/b,speed=1M", 0},
		{JOB_COMMIT, "granularity=1M", -EINVAL},
		{JOB_COMMIT, "base", -EINVAL},
	};

	for (size_t i = 0; i < G_N_ELEMENTS(cases); i++) {
		struct mirror_opts o;

		g_test_message("%s \"%s\"", job_type_name(cases[i].t), cases[i].v);
		mirror_opts_init(&o);
		g_assert_cmpint(job_opts_parse(&o, cases[i].t, cases[i].v), ==, cases[i].ret);
		mirror_opts_free(&o);
	}
	{
		struct mirror_opts o;

		mirror_opts_init(&o);
		g_assert_cmpint(job_opts_parse(&o, JOB_COMMIT, "top=/t,base=/b,speed=1M"), ==, 0);
		g_assert_cmpstr(o.top, ==, "/t");
		g_assert_cmpstr(o.base, ==, "/b");
		g_assert_cmpuint(o.speed, ==, 1u << 20);
		mirror_opts_free(&o);
	}
}

static void test_set_one(void)
{
	struct mirror_opts o;

	mirror_opts_init(&o);
	g_assert_cmpint(mirror_opts_set(&o, "granularity", "1M"), ==, 0);
	g_assert_cmpuint(o.granularity, ==, 1u << 20);
	g_assert_cmpint(mirror_opts_set(&o, "existing", "0"), ==, 0);
	g_assert_false(o.existing);
	g_assert_cmpint(mirror_opts_set(&o, "nonsense", "1"), ==, -EINVAL);
	mirror_opts_free(&o);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/mirror-opts/plain-path", test_plain_path);
	g_test_add_func("/mirror-opts/key-values", test_key_values);
	g_test_add_func("/mirror-opts/rejected", test_rejected);
	g_test_add_func("/mirror-opts/set-one", test_set_one);
	g_test_add_func("/mirror-opts/modes", test_modes);
	g_test_add_func("/mirror-opts/job-opts", test_job_opts);
	return t_run();
}
