/* Parsing the backup start value: key=value pairs (or a plain target path).
 * Every rejected option is named in the log; the caller starts nothing
 * unless the whole value parsed and the options fit together. */
#include <errno.h>
#include <string.h>

#include "util/log.h"
#include "mirror/backup.h"
#include "mirror/job-opts.h"

void backup_opts_init(struct backup_opts *o)
{
	memset(o, 0, sizeof(*o));
}

void backup_opts_free(struct backup_opts *o)
{
	g_free(o->target);
	g_free(o->format);
	g_free(o->bitmap);
	g_free(o->base);
	g_free(o->view);
	backup_opts_init(o);
}

static int opts_bad(const char *key, const char *val, const char *why)
{
	return job_opt_bad("backup", key, val, why);
}

static void opts_str(char **slot, const char *val)
{
	g_free(*slot);
	*slot = g_strdup(val);
}

int backup_opts_set(struct backup_opts *o, const char *key, const char *val)
{
	if (!strcmp(key, "target") || !strcmp(key, "base")) {
		if (val[0] != '/')
			return opts_bad(key, val, "want an absolute path");
		opts_str(!strcmp(key, "target") ? &o->target : &o->base, val);
	} else if (!strcmp(key, "format")) {
		return job_opt_format("backup", key, val, &o->format);
	} else if (!strcmp(key, "sync")) {
		if (strcmp(val, "full") && strcmp(val, "incremental"))
			return opts_bad(key, val, "want full or incremental");
		o->sync = !strcmp(val, "full") ? BACKUP_FULL : BACKUP_INCREMENTAL;
	} else if (!strcmp(key, "bitmap")) {
		if (!*val)
			return opts_bad(key, val, "want a bitmap name");
		opts_str(&o->bitmap, val);
	} else if (!strcmp(key, "view")) {
		if (!*val || val[0] == '.' || strchr(val, '/'))
			return opts_bad(key, val,
					"want a file name (no '/', not starting with '.')");
		opts_str(&o->view, val);
	} else if (!strcmp(key, "speed")) {
		return job_opt_speed("backup", key, val, &o->speed);
	} else {
		vd_err("backup: unknown option \"%s\" (known: target, format, sync, bitmap, "
		       "base, speed, view)",
		       key);
		return -EINVAL;
	}
	return 0;
}

int backup_opts_check(const struct backup_opts *o)
{
	if (o->view) { /* a pull backup: nothing is written anywhere */
		if (o->target || o->format || o->base || o->speed) {
			vd_err("backup: view= (a pull backup) takes no target, format, base or "
			       "speed");
			return -EINVAL;
		}
		if (o->sync == BACKUP_INCREMENTAL && !o->bitmap) {
			vd_err("backup: sync=incremental needs bitmap=NAME");
			return -EINVAL;
		}
		return 0;
	}
	if (!o->target) {
		vd_err("backup: no target given (want target=PATH, or view=NAME)");
		return -EINVAL;
	}
	if (o->sync == BACKUP_INCREMENTAL && !o->bitmap) {
		vd_err("backup: sync=incremental needs bitmap=NAME");
		return -EINVAL;
	}
	if (o->sync == BACKUP_FULL && o->base) {
		vd_err("backup: base= goes with sync=incremental only");
		return -EINVAL;
	}
	if (o->sync == BACKUP_INCREMENTAL && o->format && strcmp(o->format, "qcow2")) {
		vd_err("backup: an incremental target is a qcow2 image (format=%s refused)",
		       o->format);
		return -EINVAL;
	}
	return 0;
}

static int opts_set(void *o, const char *key, const char *val)
{
	return backup_opts_set(o, key, val);
}

int backup_opts_parse(struct backup_opts *o, const char *value)
{

	if (!value || !*value) {
		vd_err("backup: empty start value (want target=PATH,...)");
		return -EINVAL;
	}
	if (value[0] == '/') {
		opts_str(&o->target, value);
		return 0;
	}
	return job_opts_split("backup", "an absolute path", value, opts_set, o);
}
