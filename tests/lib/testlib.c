/* The unit programs' shared setup (see testlib.h): t_init() and t_run()
 * around the g_test_add_func() list, the scratch directory, shell and
 * qemu-img runners, and the skips for a missing tool. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>

#include "io/uring.h"
#include "testlib.h"
#include "util/log.h"

static char *prog;    /* the program's name, for the log and the scratch directory */
static char *scratch; /* made by the first t_dir() */

void t_init(int *argc, char ***argv)
{
	g_test_init(argc, argv, NULL);
	prog = g_path_get_basename((*argv)[0]);
	vd_log_init(prog, false, false);
	g_assert_cmpint(uring_thread_init(64), ==, 0);
}

int t_run(void)
{
	int ret = g_test_run();

	if (!scratch)
		return ret;
	if (ret || g_getenv("VDISKFS_TEST_KEEP"))
		g_printerr("# scratch files kept in %s\n", scratch);
	else if (t_sh_rc("rm -rf '%s'", scratch) != 0)
		ret = 1;
	g_free(scratch);
	scratch = NULL;
	return ret;
}

bool t_have_tool(const char *name)
{
	char *p = g_find_program_in_path(name);

	g_free(p);
	return p != NULL;
}

bool t_require_tool(const char *name)
{
	if (t_have_tool(name))
		return true;
	g_test_skip_printf("%s not found", name);
	return false;
}

bool t_require_qemu(void)
{
	return t_require_tool("qemu-img") && t_require_tool("qemu-io");
}

struct qemu_case {
	void (*fn)(void);
	void (*data_fn)(gconstpointer);
	gconstpointer data;
};

static void qemu_case_run(gconstpointer p)
{
	const struct qemu_case *c = p;

	if (!t_require_qemu())
		return;
	if (c->fn)
		c->fn();
	else
		c->data_fn(c->data);
}

void t_add_qemu(const char *path, void (*fn)(void))
{
	struct qemu_case *c = g_new0(struct qemu_case, 1);

	c->fn = fn;
	g_test_add_data_func_full(path, c, qemu_case_run, g_free);
}

void t_add_qemu_data(const char *path, gconstpointer data, void (*fn)(gconstpointer))
{
	struct qemu_case *c = g_new0(struct qemu_case, 1);

	c->data_fn = fn;
	c->data = data;
	g_test_add_data_func_full(path, c, qemu_case_run, g_free);
}

const char *t_dir(void)
{
	const char *base = g_getenv("VDISKFS_TESTDIR");

	if (scratch)
		return scratch;
	scratch = g_strdup_printf("%s/%s.XXXXXX", base ? base : "/var/tmp", prog ? prog : "test");
	g_assert_nonnull(g_mkdtemp(scratch));
	return scratch;
}

char *t_path(const char *name)
{
	if (g_path_is_absolute(name))
		return g_strdup(name);
	return g_build_filename(t_dir(), name, NULL);
}

/* The exit status of cmd, run by sh in the scratch directory; its output in
 * *out (g_free() it), stdout then stderr. */
static int sh_run(const char *cmd, char **out)
{
	char *full = g_strdup_printf("cd '%s' && ( %s )", t_dir(), cmd);
	char *argv[] = {"/bin/sh", "-c", full, NULL};
	char *o = NULL, *e = NULL;
	GError *err = NULL;
	int status = 255;

	if (!g_spawn_sync(NULL, argv, NULL, 0, NULL, NULL, &o, &e, &status, &err)) {
		*out = g_strdup(err->message);
		g_error_free(err);
		g_free(full);
		return 255;
	}
	status = WIFEXITED(status) ? WEXITSTATUS(status) : 255;
	*out = g_strconcat(o, e, NULL);
	if (status && g_test_verbose())
		g_printerr("%s -> %d\n%s", cmd, status, *out);
	g_free(o);
	g_free(e);
	g_free(full);
	return status;
}

static int sh_v(const char *prefix, const char *fmt, va_list ap, char **out)
{
	char *args = g_strdup_vprintf(fmt, ap);
	char *cmd = g_strconcat(prefix, args, NULL);
	int status = sh_run(cmd, out);

	g_free(args);
	g_free(cmd);
	return status;
}

/* The exit status of prefix + the formatted command, its output dropped. */
static int sh_rc_v(const char *prefix, const char *fmt, va_list ap)
{
	char *out;
	int status = sh_v(prefix, fmt, ap, &out);

	g_free(out);
	return status;
}

int t_sh_rc(const char *fmt, ...)
{
	va_list ap;
	int status;

	va_start(ap, fmt);
	status = sh_rc_v("", fmt, ap);
	va_end(ap);
	return status;
}

void t_sh(const char *fmt, ...)
{
	va_list ap;
	char *out, *cmd;
	int status;

	va_start(ap, fmt);
	status = sh_v("", fmt, ap, &out);
	va_end(ap);
	if (status) {
		va_start(ap, fmt);
		cmd = g_strdup_vprintf(fmt, ap);
		va_end(ap);
		g_error("command failed (%d): %s\n%s", status, cmd, out);
	}
	g_free(out);
}

int t_qemu_img(const char *fmt, ...)
{
	va_list ap;
	int status;

	va_start(ap, fmt);
	status = sh_rc_v("qemu-img ", fmt, ap);
	va_end(ap);
	return status;
}
