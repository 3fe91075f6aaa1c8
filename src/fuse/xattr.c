/* Extended attributes of a raw view: read-only facts about the image under
 * user.vdiskfs.* (and the whole set as one JSON object in .info). The mirror
 * verbs join them here. */
#include <errno.h>
#include <inttypes.h>
#include <string.h>

#include "log.h"
#include "vfs.h"

#define XATTR_PREFIX "user.vdiskfs."

static const char *const xattr_names[] = {
	"format", "virtual-size", "cluster-size", "backing", "allocated", "image", "info",
};

void image_info_json(struct vnode *n, struct json_writer *j)
{
	struct vd_image *img = n->img;

	json_str(j, "name", n->name ? n->name : img->name);
	json_str(j, "image", img->path);
	json_str(j, "format", img->fmt->name);
	json_u64(j, "virtual-size", img->size);
	json_u64(j, "cluster-size", img->cluster_size);
	json_u64(j, "allocated", image_allocated(img));
	json_bool(j, "read-only", img->read_only || vfs_cfg.read_only);
	json_bool(j, "broken", atomic_load(&img->broken));
	json_str(j, "backing", img->backing ? img->backing->path : NULL);
	if (img->backing) {
		json_begin_array(j, "backing-chain");
		for (struct vd_image *b = img->backing; b; b = b->backing) {
			json_begin_object(j, NULL);
			json_str(j, "image", b->path);
			json_str(j, "format", b->fmt->name);
			json_u64(j, "virtual-size", b->size);
			json_end_object(j);
		}
		json_end_array(j);
	}
	if (img->fmt->info) {
		json_begin_object(j, img->fmt->name);
		img->fmt->info(img, j);
		json_end_object(j);
	}
}

/* The value of one attribute, or NULL if there is no such attribute. */
static GString *xattr_value(struct vnode *n, const char *key)
{
	struct vd_image *img = n->img;
	GString *s = g_string_new(NULL);

	if (!strcmp(key, "format")) {
		g_string_append(s, img->fmt->name);
	} else if (!strcmp(key, "virtual-size")) {
		g_string_append_printf(s, "%" PRIu64, img->size);
	} else if (!strcmp(key, "cluster-size")) {
		g_string_append_printf(s, "%" PRIu32, img->cluster_size);
	} else if (!strcmp(key, "backing")) {
		g_string_append(s, img->backing ? img->backing->path : "");
	} else if (!strcmp(key, "allocated")) {
		g_string_append_printf(s, "%" PRIu64, image_allocated(img));
	} else if (!strcmp(key, "image")) {
		g_string_append(s, img->path);
	} else if (!strcmp(key, "info")) {
		struct json_writer j;
		json_init(&j, s);
		json_begin_object(&j, NULL);
		image_info_json(n, &j);
		json_end_object(&j);
	} else {
		g_string_free(s, TRUE);
		return NULL;
	}
	return s;
}

static void xattr_reply(fuse_req_t req, const char *data, size_t len, size_t size)
{
	if (size == 0)
		fuse_reply_xattr(req, len);
	else if (size < len)
		fuse_reply_err(req, ERANGE);
	else
		fuse_reply_buf(req, data, len);
}

void xattr_get(fuse_req_t req, struct vnode *n, const char *name, size_t size)
{
	GString *v;

	if (n->kind != VN_IMAGE || strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX))) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	v = xattr_value(n, name + strlen(XATTR_PREFIX));
	if (!v) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	xattr_reply(req, v->str, v->len, size);
	g_string_free(v, TRUE);
}

void xattr_list(fuse_req_t req, struct vnode *n, size_t size)
{
	GString *s = g_string_new(NULL);

	if (n->kind == VN_IMAGE) {
		for (size_t i = 0; i < G_N_ELEMENTS(xattr_names); i++) {
			g_string_append(s, XATTR_PREFIX);
			g_string_append(s, xattr_names[i]);
			g_string_append_c(s, '\0');
		}
	}
	xattr_reply(req, s->str, s->len, size);
	g_string_free(s, TRUE);
}

void xattr_set(fuse_req_t req, struct vnode *n, const char *name, const char *value,
	       size_t size, int flags)
{
	const char *key;

	if (n->kind != VN_IMAGE || strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX))) {
		fuse_reply_err(req, ENOTSUP); /* no arbitrary attributes on a view */
		return;
	}
	key = name + strlen(XATTR_PREFIX);
	for (size_t i = 0; i < G_N_ELEMENTS(xattr_names); i++) {
		if (!strcmp(key, xattr_names[i])) {
			vd_err("%s: %s is read-only", n->img->path, name);
			fuse_reply_err(req, EPERM);
			return;
		}
	}
	vd_err("%s: unknown attribute %s", n->img->path, name);
	fuse_reply_err(req, EINVAL);
}
