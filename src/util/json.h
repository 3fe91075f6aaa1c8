/* A small JSON writer into a GString: the info xattr and the control file
 * both describe images as JSON. */
#ifndef VDISKFS_JSON_H
#define VDISKFS_JSON_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

struct json_writer {
	GString *s;
	bool need_comma;
};

void json_init(struct json_writer *j, GString *s);
void json_begin_object(struct json_writer *j, const char *key); /* key NULL inside arrays */
void json_end_object(struct json_writer *j);
void json_begin_array(struct json_writer *j, const char *key);
void json_end_array(struct json_writer *j);
void json_str(struct json_writer *j, const char *key, const char *val); /* NULL -> null */
void json_u64(struct json_writer *j, const char *key, uint64_t val);
void json_i64(struct json_writer *j, const char *key, int64_t val);
void json_bool(struct json_writer *j, const char *key, bool val);

#endif
