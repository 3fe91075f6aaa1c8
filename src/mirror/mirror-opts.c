/* Parsing the mirror start value: a plain path, or key=value pairs. Every
 * rejected option is named in the log, and nothing is half-applied: the
 * caller starts nothing unless the whole value parsed. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "util/size.h"
#include "mirror/job-opts.h"
#include "mirror/mirror.h"

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

int job_opt_bad(const char *who, const char *key, const char *val, const char *why)
{
	vd_err("%s: bad value \"%s\" for %s: %s", who, val, key, why);
	return -EINVAL;
}

static int opts_bad(const char *key, const char *val, const char *why)
{
	return job_opt_bad("mirror", key, val, why);
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

int job_opt_format(const char *who, const char *key, const char *val, char **slot)
{
	if (strcmp(val, "raw") && strcmp(val, "qcow2") && strcmp(val, "vhdx"))
		return job_opt_bad(who, key, val, "want raw, qcow2 or vhdx");
	g_free(*slot);
	*slot = g_strdup(val);
	return 0;
}

int job_opt_speed(const char *who, const char *key, const char *val, uint64_t *out)
{
	uint64_t v;

	if (mirror_parse_speed(val, &v))
		return job_opt_bad(who, key, val, "want bytes per second, e.g. 200M or 200M/s");
	*out = v;
	return 0;
}

int job_opts_split(const char *who, const char *plain, const char *value, job_opt_set_fn *set,
		   void *ctx)
{
	gchar **items = g_strsplit(value, ",", -1);
	int ret = 0;

	for (gchar **it = items; *it && !ret; it++) {
		char *eq = strchr(*it, '=');

		if (!eq || eq == *it) {
			vd_err("%s: \"%s\" is neither %s nor key=value", who, *it, plain);
			ret = -EINVAL;
			break;
		}
		*eq = '\0';
		ret = set(ctx, *it, eq + 1);
	}
	g_strfreev(items);
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
		return job_opt_format("mirror", key, val, &o->format);
	} else if (!strcmp(key, "speed")) {
		return job_opt_speed("mirror", key, val, &o->speed);
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

/* The items of one kind of job's start value. */
struct opts_ctx {
	struct mirror_opts *o;
	enum job_type type;
};

static int opts_ctx_set(void *opaque, const char *key, const char *val)
{
	struct opts_ctx *ctx = opaque;

	return job_opts_set(ctx->o, ctx->type, key, val);
}

int mirror_opts_parse(struct mirror_opts *o, const char *value)
{
	struct opts_ctx ctx = {o, JOB_MIRROR};
	int ret;

	if (!value || !*value) {
		vd_err("mirror: empty start value (want a target path)");
		return -EINVAL;
	}
	if (value[0] == '/') {
		g_free(o->target);
		o->target = g_strdup(value);
		return 0;
	}
	ret = job_opts_split("mirror", "an absolute path", value, opts_ctx_set, &ctx);
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
	struct opts_ctx ctx = {o, type};

	if (type == JOB_MIRROR)
		return mirror_opts_parse(o, value);
	if (!value || !*value || !strcmp(value, "1"))
		return 0;
	return job_opts_split(job_type_name(type), "1", value, opts_ctx_set, &ctx);
}
