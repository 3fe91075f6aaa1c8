/* Parsing the backup start value: key=value pairs (or a plain target path).
 * Every rejected option is named in the log; the caller starts nothing
 * unless the whole value parsed and the options fit together. */
#include <errno.h>
#include <string.h>

#include "util/log.h"
#include "mirror/backup.h"

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
	vd_err("backup: bad value \"%s\" for %s: %s", val, key, why);
	return -EINVAL;
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
		if (strcmp(val, "raw") && strcmp(val, "qcow2") && strcmp(val, "vhdx"))
			return opts_bad(key, val, "want raw, qcow2 or vhdx");
		opts_str(&o->format, val);
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
		if (mirror_parse_speed(val, &o->speed))
			return opts_bad(key, val, "want bytes per second, e.g. 200M or 200M/s");
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
	if (o->sync == BACKUP_INCREMENTAL && !o->base) {
		vd_err("backup: sync=incremental needs base=PATH (the previous backup made "
		       "with bitmap %s)",
		       o->bitmap);
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

int backup_opts_parse(struct backup_opts *o, const char *value)
{
	gchar **items;
	int ret = 0;

	if (!value || !*value) {
		vd_err("backup: empty start value (want target=PATH,...)");
		return -EINVAL;
	}
	if (value[0] == '/') {
		opts_str(&o->target, value);
		return 0;
	}
	items = g_strsplit(value, ",", -1);
	for (gchar **it = items; *it && !ret; it++) {
		char *eq = strchr(*it, '=');

		if (!eq || eq == *it) {
			vd_err("backup: \"%s\" is neither an absolute path nor key=value", *it);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		ret = backup_opts_set(o, *it, eq + 1);
	}
	g_strfreev(items);
	return ret;
}
