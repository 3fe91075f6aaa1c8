/* JSON writer: commas, nesting and string escaping. */
#include <inttypes.h>

#include "util/json.h"

void json_init(struct json_writer *j, GString *s)
{
	j->s = s;
	j->need_comma = false;
}

static void json_string_value(struct json_writer *j, const char *val)
{
	g_string_append_c(j->s, '"');
	for (const char *p = val; *p; p++) {
		unsigned char c = (unsigned char)*p;
		if (c == '"' || c == '\\')
			g_string_append_printf(j->s, "\\%c", c);
		else if (c < 0x20)
			g_string_append_printf(j->s, "\\u%04x", c);
		else
			g_string_append_c(j->s, (char)c);
	}
	g_string_append_c(j->s, '"');
}

static void json_key(struct json_writer *j, const char *key)
{
	if (j->need_comma)
		g_string_append_c(j->s, ',');
	j->need_comma = true;
	if (key) {
		json_string_value(j, key);
		g_string_append_c(j->s, ':');
	}
}

static void json_open(struct json_writer *j, const char *key, char c)
{
	json_key(j, key);
	g_string_append_c(j->s, c);
	j->need_comma = false;
}

static void json_close(struct json_writer *j, char c)
{
	g_string_append_c(j->s, c);
	j->need_comma = true;
}

void json_begin_object(struct json_writer *j, const char *key)
{
	json_open(j, key, '{');
}

void json_end_object(struct json_writer *j)
{
	json_close(j, '}');
}

void json_begin_array(struct json_writer *j, const char *key)
{
	json_open(j, key, '[');
}

void json_end_array(struct json_writer *j)
{
	json_close(j, ']');
}

void json_str(struct json_writer *j, const char *key, const char *val)
{
	json_key(j, key);
	if (val)
		json_string_value(j, val);
	else
		g_string_append(j->s, "null");
}

void json_u64(struct json_writer *j, const char *key, uint64_t val)
{
	json_key(j, key);
	g_string_append_printf(j->s, "%" PRIu64, val);
}

void json_i64(struct json_writer *j, const char *key, int64_t val)
{
	json_key(j, key);
	g_string_append_printf(j->s, "%" PRId64, val);
}

void json_bool(struct json_writer *j, const char *key, bool val)
{
	json_key(j, key);
	g_string_append(j->s, val ? "true" : "false");
}
