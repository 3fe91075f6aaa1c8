/* Parsing one control-file command line: words split as by a shell, the verb,
 * the view name and the mirror options. Pure text in, struct control_cmd out:
 * it touches no node and no image, so the fuzzer calls it without a mount. */
#include <errno.h>
#include <string.h>

#include "util/log.h"
#include "util/size.h"
#include "fuse/vfs.h"

static const struct {
	const char *word;
	enum control_verb verb;
	int min_args, max_args; /* words after the verb */
	const char *usage;
	enum job_type job; /* the job verbs' kind of job */
} control_verbs[] = {
	/* clang-format off */
	{"status", CONTROL_STATUS, 0, 0, ""},
	{"mirror-start", CONTROL_JOB_START, 2, -1, " NAME TARGET [key=value...]", JOB_MIRROR},
	{"mirror-complete", CONTROL_JOB_COMPLETE, 1, 1, " NAME", JOB_MIRROR},
	{"mirror-cancel", CONTROL_JOB_CANCEL, 1, 1, " NAME", JOB_MIRROR},
	{"mirror-status", CONTROL_JOB_STATUS, 1, 1, " NAME", JOB_MIRROR},
	{"mirror-pause", CONTROL_JOB_PAUSE, 1, 1, " NAME", JOB_MIRROR},
	{"mirror-resume", CONTROL_JOB_RESUME, 1, 1, " NAME", JOB_MIRROR},
	{"mirror-speed", CONTROL_JOB_SPEED, 2, 2, " NAME RATE", JOB_MIRROR},
	{"stream-start", CONTROL_JOB_START, 1, -1, " NAME [base=PATH] [speed=RATE]", JOB_STREAM},
	{"stream-cancel", CONTROL_JOB_CANCEL, 1, 1, " NAME", JOB_STREAM},
	{"stream-status", CONTROL_JOB_STATUS, 1, 1, " NAME", JOB_STREAM},
	{"stream-pause", CONTROL_JOB_PAUSE, 1, 1, " NAME", JOB_STREAM},
	{"stream-resume", CONTROL_JOB_RESUME, 1, 1, " NAME", JOB_STREAM},
	{"stream-speed", CONTROL_JOB_SPEED, 2, 2, " NAME RATE", JOB_STREAM},
	{"commit-start", CONTROL_JOB_START, 1, -1, " NAME [top=PATH] [base=PATH] [speed=RATE]",
	 JOB_COMMIT},
	{"commit-complete", CONTROL_JOB_COMPLETE, 1, 1, " NAME", JOB_COMMIT},
	{"commit-cancel", CONTROL_JOB_CANCEL, 1, 1, " NAME", JOB_COMMIT},
	{"commit-status", CONTROL_JOB_STATUS, 1, 1, " NAME", JOB_COMMIT},
	{"commit-pause", CONTROL_JOB_PAUSE, 1, 1, " NAME", JOB_COMMIT},
	{"commit-resume", CONTROL_JOB_RESUME, 1, 1, " NAME", JOB_COMMIT},
	{"commit-speed", CONTROL_JOB_SPEED, 2, 2, " NAME RATE", JOB_COMMIT},
	{"activate", CONTROL_ACTIVATE, 1, 1, " NAME"},
	{"inactivate", CONTROL_INACTIVATE, 1, 1, " NAME"},
	{"bitmap-add", CONTROL_BITMAP, 2, 3, " NAME BITMAP [granularity=SIZE]"},
	{"bitmap-remove", CONTROL_BITMAP, 2, 2, " NAME BITMAP"},
	{"bitmap-enable", CONTROL_BITMAP, 2, 2, " NAME BITMAP"},
	{"bitmap-disable", CONTROL_BITMAP, 2, 2, " NAME BITMAP"},
	{"bitmap-clear", CONTROL_BITMAP, 2, 2, " NAME BITMAP"},
	{"backup-start", CONTROL_BACKUP_START, 2, -1, " NAME target=PATH [key=value...]"},
	{"backup-cancel", CONTROL_BACKUP_CANCEL, 1, 1, " NAME"},
	{"backup-end", CONTROL_BACKUP_END, 1, 1, " NAME"},
	{"backup-status", CONTROL_BACKUP_STATUS, 1, 1, " NAME"},
	{"backup-pause", CONTROL_BACKUP_PAUSE, 1, 1, " NAME"},
	{"backup-resume", CONTROL_BACKUP_RESUME, 1, 1, " NAME"},
	{"backup-speed", CONTROL_BACKUP_SPEED, 2, 2, " NAME RATE"},
	/* clang-format on */
};

void control_cmd_free(struct control_cmd *cmd)
{
	g_free(cmd->name);
	g_free(cmd->arg);
	mirror_opts_free(&cmd->opts);
	backup_opts_free(&cmd->bopts);
	memset(cmd, 0, sizeof(*cmd));
}

void control_error(GString *out, int err)
{
	const char *msg = vd_log_last_error();

	g_string_append_printf(out, "error: %s\n", *msg ? msg : strerror(-err));
}

int bitmap_granularity_parse(const char *word, uint32_t *gran)
{
	uint64_t v;

	if (strncmp(word, "granularity=", strlen("granularity=")) ||
	    parse_size(word + strlen("granularity="), &v) || !v || v > UINT32_MAX) {
		vd_err("bitmap: \"%s\" is not granularity=SIZE (512 .. 2G)", word);
		return -EINVAL;
	}
	*gran = v;
	return 0;
}

int bitmap_add_parse(const char *value, char **name, uint32_t *gran)
{
	gchar **kv;
	int ret = 0;

	*name = NULL;
	*gran = 0;
	if (strncmp(value, "name=", strlen("name="))) {
		*name = g_strdup(value);
		return 0;
	}
	kv = g_strsplit(value, ",", -1);
	for (int i = 0; kv[i] && !ret; i++) {
		if (!strncmp(kv[i], "name=", strlen("name=")) && !*name) {
			*name = g_strdup(kv[i] + strlen("name="));
		} else if (!strncmp(kv[i], "granularity=", strlen("granularity="))) {
			ret = bitmap_granularity_parse(kv[i], gran);
		} else {
			vd_err("bitmap: \"%s\": want name=NAME[,granularity=SIZE]", kv[i]);
			ret = -EINVAL;
		}
	}
	g_strfreev(kv);
	if (ret) {
		g_free(*name);
		*name = NULL;
	}
	return ret;
}

/* The start options: for a mirror TARGET (a path or "target=...,..."),
 * then one key=value per word. Errors are logged by the option parsers; the
 * reply quotes it. */
static int control_parse_start(struct control_cmd *cmd, int argc, gchar **argv, GString *err)
{
	int ret = 0, i = 2;

	vd_log_clear_error();
	if (cmd->job == JOB_MIRROR)
		ret = mirror_opts_parse(&cmd->opts, argv[i++]);
	for (; i < argc && !ret; i++) {
		char *eq = strchr(argv[i], '=');

		if (!eq || eq == argv[i]) {
			vd_err("%s: \"%s\" is not key=value", job_type_name(cmd->job), argv[i]);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		ret = job_opts_set(&cmd->opts, cmd->job, argv[i], eq + 1);
	}
	if (ret)
		control_error(err, ret);
	return ret;
}

/* The backup-start options: one key=value (or "k=v,k=v") per word. */
static int control_parse_backup(struct control_cmd *cmd, int argc, gchar **argv, GString *err)
{
	int ret = 0;

	vd_log_clear_error();
	for (int i = 2; i < argc && !ret; i++)
		ret = backup_opts_parse(&cmd->bopts, argv[i]);
	if (!ret)
		ret = backup_opts_check(&cmd->bopts);
	if (ret)
		control_error(err, ret);
	return ret;
}

int control_parse(const char *buf, size_t len, struct control_cmd *cmd, GString *err)
{
	gchar **argv = NULL;
	char *line;
	size_t i;
	int argc, ret = -EINVAL;

	memset(cmd, 0, sizeof(*cmd));
	mirror_opts_init(&cmd->opts);
	backup_opts_init(&cmd->bopts);
	if (memchr(buf, '\0', len)) {
		g_string_append(err, "error: a command must not contain NUL bytes\n");
		return -EINVAL;
	}
	line = g_strndup(buf, len);
	g_strchomp(line); /* the trailing newline of `echo` */
	if (strchr(line, '\n')) {
		g_string_append(err, "error: one command per write\n");
		goto out;
	}
	if (!g_shell_parse_argv(line, &argc, &argv, NULL) || argc < 1) {
		g_string_append(err, "error: empty or unparsable command\n");
		goto out;
	}
	for (i = 0; i < G_N_ELEMENTS(control_verbs); i++)
		if (!strcmp(argv[0], control_verbs[i].word))
			break;
	if (i == G_N_ELEMENTS(control_verbs)) {
		g_string_append_printf(err,
				       "error: unknown command \"%s\" (known: status, "
				       "mirror-, stream- and commit-start, -complete (mirror, "
				       "commit), -cancel, -status, -pause, -resume, -speed, "
				       "activate, inactivate, bitmap-add, "
				       "bitmap-remove, bitmap-enable, bitmap-disable, "
				       "bitmap-clear, backup-start, backup-cancel, "
				       "backup-end, backup-status, backup-pause, "
				       "backup-resume, backup-speed)\n",
				       argv[0]);
		goto out;
	}
	if (argc - 1 < control_verbs[i].min_args ||
	    (control_verbs[i].max_args >= 0 && argc - 1 > control_verbs[i].max_args)) {
		g_string_append_printf(err, "error: usage: %s%s\n", control_verbs[i].word,
				       control_verbs[i].usage);
		goto out;
	}
	cmd->verb = control_verbs[i].verb;
	cmd->job = control_verbs[i].job;
	if (argc > 1)
		cmd->name = g_strdup(argv[1]);
	if (cmd->verb == CONTROL_JOB_SPEED || cmd->verb == CONTROL_BITMAP ||
	    cmd->verb == CONTROL_BACKUP_SPEED)
		cmd->arg = g_strdup(argv[2]);
	ret = 0;
	if (cmd->verb == CONTROL_JOB_START)
		ret = control_parse_start(cmd, argc, argv, err);
	if (cmd->verb == CONTROL_BACKUP_START)
		ret = control_parse_backup(cmd, argc, argv, err);
	if (cmd->verb == CONTROL_BITMAP) {
		vd_bitmap_cmd_parse(argv[0] + strlen("bitmap-"), &cmd->bitmap);
		vd_log_clear_error();
		if (argc > 3)
			ret = bitmap_granularity_parse(argv[3], &cmd->granularity);
		if (!ret && !*cmd->arg) {
			vd_err("bitmap: the bitmap name is empty");
			ret = -EINVAL;
		}
		if (ret)
			control_error(err, ret);
	}
out:
	if (ret)
		control_cmd_free(cmd);
	g_strfreev(argv);
	g_free(line);
	return ret;
}
