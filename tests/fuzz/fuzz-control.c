/* Fuzz target: one control-file command line through control_parse(), the
 * part of the control file that runs before any node is looked at (words,
 * verb, view name, mirror options, bitmap name and granularity). Any input is
 * either a well-formed command or refused with -EINVAL and an "error: ...\n"
 * reply; nothing else. */
#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz-common.h"
#include "fuse/vfs.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	GString *err = g_string_new(NULL);
	struct control_cmd cmd;
	int ret;

	ret = control_parse((const char *)data, size, &cmd, err);
	if (ret == -EINVAL) {
		/* refused: a reason, nothing left in cmd */
		if (strncmp(err->str, "error: ", 7) || err->str[err->len - 1] != '\n')
			abort();
		if (cmd.verb != CONTROL_NONE || cmd.name || cmd.opts.target)
			abort();
	} else if (ret == 0) {
		if (err->len || cmd.verb == CONTROL_NONE)
			abort();
		if ((cmd.verb == CONTROL_STATUS) != !cmd.name)
			abort();
		bool mirror_start = cmd.verb == CONTROL_JOB_START && cmd.job == JOB_MIRROR;

		if (mirror_start && (!cmd.opts.target || cmd.opts.target[0] != '/'))
			abort();
		if (!mirror_start && (cmd.opts.target || cmd.opts.format))
			abort();
		if (cmd.verb != CONTROL_JOB_START && (cmd.opts.base || cmd.opts.top))
			abort();
		if ((cmd.opts.base && cmd.opts.base[0] != '/') ||
		    (cmd.opts.top && cmd.opts.top[0] != '/'))
			abort();
		if (cmd.verb == CONTROL_BITMAP &&
		    (!cmd.arg || !*cmd.arg || cmd.bitmap > VD_BITMAP_CLEAR))
			abort();
		if (cmd.verb != CONTROL_BITMAP && cmd.granularity)
			abort();
	} else {
		abort();
	}
	control_cmd_free(&cmd);
	g_string_free(err, TRUE);
	return 0;
}
