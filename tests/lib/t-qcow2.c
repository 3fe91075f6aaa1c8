/* The qcow2 fixtures: tests/fixtures/qcow2-fixtures.sh run once per program
 * into the scratch directory (see testlib.h). */
#include <stdlib.h>

#include "testlib.h"

void t_qcow2_fixtures(void)
{
	const char *src = g_getenv("G_TEST_SRCDIR");
	char *script, *log;

	if (!t_have_tool("qemu-img") || !t_have_tool("qemu-io"))
		return;
	script = g_build_filename(src ? src : "tests/unit", "..", "fixtures", "qcow2-fixtures.sh",
				  NULL);
	if (!g_path_is_absolute(script)) {
		char *cwd = g_get_current_dir(), *abs = g_build_filename(cwd, script, NULL);

		g_free(script);
		g_free(cwd);
		script = abs;
	}
	if (t_sh_rc("bash '%s' '%s' >fixtures.log 2>&1", script, t_dir()) != 0) {
		log = t_path("fixtures.log");
		g_printerr("fixture script failed, see %s\n", log);
		exit(1);
	}
	g_free(script);
}
