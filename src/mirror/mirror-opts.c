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
		/* Guest writes always reach both sides before they are acknowledged. */
		if (strcmp(val, "write-blocking"))
			return opts_bad(key, val, "the only mode is write-blocking");
	} else {
		vd_err("mirror: unknown option \"%s\" (known: target, format, speed, "
		       "granularity, existing, mode)",
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
		ret = mirror_opts_set(o, *it, eq + 1);
	}
	g_strfreev(items);
	if (!ret && !o->target) {
		vd_err("mirror: no target given (want target=PATH)");
		ret = -EINVAL;
	}
	return ret;
}
