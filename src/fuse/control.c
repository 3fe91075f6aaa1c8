/* The control file .vdiskfs at the root of a directory mount: reading gives
 * the JSON status of every image; writing one command line runs it, and the
 * reply text is then what the same open file reads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "vfs.h"

static void status_image(struct vnode *n, void *opaque)
{
	struct json_writer *j = opaque;

	json_begin_object(j, NULL);
	image_info_json(n, j);
	json_end_object(j);
}

static void status_error(const char *name, const char *err, void *opaque)
{
	struct json_writer *j = opaque;

	json_begin_object(j, NULL);
	json_str(j, "name", name);
	json_str(j, "error", err);
	json_end_object(j);
}

static GString *control_status(void)
{
	GString *s = g_string_new(NULL);
	struct json_writer j;

	json_init(&j, s);
	json_begin_object(&j, NULL);
	json_str(&j, "version", VDISKFS_VERSION);
	json_str(&j, "source", vfs_cfg.source);
	json_str(&j, "mountpoint", vfs_cfg.mountpoint);
	json_bool(&j, "read-only", vfs_cfg.read_only);
	json_begin_array(&j, "images");
	tree_foreach(status_image, &j, true);
	json_end_array(&j);
	json_begin_array(&j, "errors");
	tree_foreach_error(status_error, &j);
	json_end_array(&j);
	json_end_object(&j);
	g_string_append_c(s, '\n');
	return s;
}

static bool control_allowed(fuse_req_t req)
{
	const struct fuse_ctx *c = fuse_req_ctx(req);

	return c->uid == 0 || c->uid == vfs_cfg.owner;
}

void control_open(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_fh *fh;

	if (!control_allowed(req)) {
		fuse_reply_err(req, EACCES);
		return;
	}
	fh = calloc(1, sizeof(*fh));
	if (!fh) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	fh->text = control_status();
	fi->fh = (uint64_t)(uintptr_t)fh;
	fi->direct_io = 1; /* the size is not known in advance */
	fi->nonseekable = 0;
	fuse_reply_open(req, fi);
}

void control_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;

	if (off == 0 && !fh->text) {
		fh->text = control_status();
	}
	if (!fh->text || (size_t)off >= fh->text->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > fh->text->len - off)
		size = fh->text->len - off;
	fuse_reply_buf(req, fh->text->str + off, size);
}

/* Run one command line; returns 0 or -errno with the reply in out. */
static int control_run(const char *line, GString *out)
{
	gchar **argv = NULL;
	int argc, ret;

	if (!g_shell_parse_argv(line, &argc, &argv, NULL) || argc < 1) {
		g_string_append(out, "error: empty or unparsable command\n");
		g_strfreev(argv);
		return -EINVAL;
	}
	if (!strcmp(argv[0], "status")) {
		GString *s = control_status();
		g_string_append(out, s->str);
		g_string_free(s, TRUE);
		ret = 0;
	} else {
		g_string_append_printf(out, "error: unknown command \"%s\" (known: status)\n",
				       argv[0]);
		ret = -EINVAL;
	}
	g_strfreev(argv);
	return ret;
}

void control_write(fuse_req_t req, const char *buf, size_t size, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;
	char *line = g_strndup(buf, size);
	int ret;

	g_strchomp(line);
	if (fh->text)
		g_string_truncate(fh->text, 0);
	else
		fh->text = g_string_new(NULL);
	ret = control_run(line, fh->text);
	if (ret)
		vd_err("control: \"%s\": %s", line, fh->text->str);
	g_free(line);
	if (ret)
		fuse_reply_err(req, -ret);
	else
		fuse_reply_write(req, size);
}

void control_release(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;

	if (fh->text)
		g_string_free(fh->text, TRUE);
	free(fh);
	fuse_reply_err(req, 0);
}
