/* Parsing the mirror start value: a plain path, or key=value pairs. Every
 * rejected option is named in the log, and nothing is half-applied: the
 * caller starts nothing unless the whole value parsed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "mirror/mirror.h"
#include "util/size.h"

void mirror_opts_init(struct mirror_opts *o)
{
	memset(o, 0, sizeof(*o));
}

void mirror_opts_free(struct mirror_opts *o)
{
	g_free(o->target);
	g_free(o->format);
	g_free(o->base);
	g_free(o->top);
	mirror_opts_init(o);
}

static int opts_bad(const char *key, const char *val, const char *why)
{
	vd_err("mirror: bad value \"%s\" for %s: %s", val, key, why);
	return -EINVAL;
}

int mirror_parse_speed(const char *val, uint64_t *out)
{
	size_t n = strlen(val);
	char *copy;
	int ret;

	if (n > 2 && !strcmp(val + n - 2, "/s"))
		n -= 2;
	copy = g_strndup(val, n);
	ret = parse_size(copy, out);
	g_free(copy);
	return ret;
}

int mirror_opts_set(struct mirror_opts *o, const char *key, const char *val)
{
	uint64_t v;

	if (!strcmp(key, "target")) {
		if (val[0] != '/')
			return opts_bad(key, val, "the target must be an absolute path");
		g_free(o->target);
		o->target = g_strdup(val);
	} else if (!strcmp(key, "format")) {
		if (strcmp(val, "raw") && strcmp(val, "qcow2") && strcmp(val, "vhdx"))
			return opts_bad(key, val, "want raw, qcow2 or vhdx");
		g_free(o->format);
		o->format = g_strdup(val);
	} else if (!strcmp(key, "speed")) {
		if (mirror_parse_speed(val, &v))
			return opts_bad(key, val, "want bytes per second, e.g. 200M or 200M/s");
		o->speed = v;
	} else if (!strcmp(key, "granularity")) {
		if (parse_size(val, &v))
			return opts_bad(key, val, "want a size, e.g. 1M");
		if (v < MIRROR_MIN_GRANULARITY || v > MIRROR_MAX_GRANULARITY || (v & (v - 1)))
			return opts_bad(key, val, "want a power of two from 4K to 64M");
		o->granularity = v;
	} else if (!strcmp(key, "existing")) {
		if (strcmp(val, "0") && strcmp(val, "1"))
			return opts_bad(key, val, "want 0 or 1");
		o->existing = val[0] == '1';
	} else if (!strcmp(key, "mode")) {
		if (strcmp(val, "write-blocking") && strcmp(val, "background"))
			return opts_bad(key, val, "want write-blocking or background");
		o->background = !strcmp(val, "background");
	} else if (!strcmp(key, "sync")) {
		if (strcmp(val, "full") && strcmp(val, "top"))
			return opts_bad(key, val, "want full or top");
		o->sync_top = !strcmp(val, "top");
	} else if (!strcmp(key, "base") || !strcmp(key, "top")) {
		if (val[0] != '/')
			return opts_bad(key, val, "want an absolute path");
		g_free(key[0] == 'b' ? o->base : o->top);
		*(key[0] == 'b' ? &o->base : &o->top) = g_strdup(val);
	} else {
		vd_err("mirror: unknown option \"%s\" (known: target, format, speed, "
		       "granularity, existing, mode, sync)",
		       key);
		return -EINVAL;
	}
	return 0;
}

int mirror_opts_parse(struct mirror_opts *o, const char *value)
{
	gchar **items;
	int ret = 0;

	if (!value || !*value) {
		vd_err("mirror: empty start value (want a target path)");
		return -EINVAL;
	}
	if (value[0] == '/') {
		g_free(o->target);
		o->target = g_strdup(value);
		return 0;
	}
	items = g_strsplit(value, ",", -1);
	for (gchar **it = items; *it && !ret; it++) {
		char *eq = strchr(*it, '=');

		if (!eq || eq == *it) {
			vd_err("mirror: \"%s\" is neither an absolute path nor key=value", *it);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		ret = job_opts_set(o, JOB_MIRROR, *it, eq + 1);
	}
	g_strfreev(items);
	if (!ret && !o->target) {
		vd_err("mirror: no target given (want target=PATH)");
		ret = -EINVAL;
	}
	return ret;
}

/* The keys each kind of job takes. */
static const char *const job_keys[] = {
	[JOB_MIRROR] = ",target,format,speed,granularity,existing,mode,sync,",
	[JOB_STREAM] = ",base,speed,",
	[JOB_COMMIT] = ",top,base,speed,",
};

int job_opts_set(struct mirror_opts *o, enum job_type type, const char *key, const char *val)
{
	char *k = g_strdup_printf(",%s,", key);
	bool known = strstr(job_keys[type], k) != NULL;

	g_free(k);
	if (!known) {
		g_autofree char *list = g_strndup(job_keys[type] + 1, strlen(job_keys[type]) - 2);

		vd_err("%s: unknown option \"%s\" (known: %s)", job_type_name(type), key, list);
		return -EINVAL;
	}
	return mirror_opts_set(o, key, val);
}

int job_opts_parse(struct mirror_opts *o, enum job_type type, const char *value)
{
	gchar **items;
	int ret = 0;

	if (type == JOB_MIRROR)
		return mirror_opts_parse(o, value);
	if (!value || !*value || !strcmp(value, "1"))
		return 0;
	items = g_strsplit(value, ",", -1);
	for (gchar **it = items; *it && !ret; it++) {
		char *eq = strchr(*it, '=');

		if (!eq || eq == *it) {
			vd_err("%s: \"%s\" is neither 1 nor key=value", job_type_name(type), *it);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		ret = job_opts_set(o, type, *it, eq + 1);
	}
	g_strfreev(items);
	return ret;
}
