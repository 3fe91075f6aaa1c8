/* The control file .vdiskfs at the root of a directory mount: reading gives
 * the JSON status of every image; writing one command line runs it, and the
 * reply text is then what the same open file reads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "mirror.h"
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
	size_t pos;

	/* The reply is read from its start at offset 0, and by the first read
	 * after a command whatever the file position (`echo cmd >&3; cat <&3`);
	 * later reads continue where the previous one stopped. */
	if (off == 0 && !fh->text)
		fh->text = control_status();
	pos = off == 0 || fh->fresh ? 0 : fh->cursor;
	fh->fresh = false;
	if (!fh->text || pos >= fh->text->len) {
		fuse_reply_buf(req, NULL, 0);
		return;
	}
	if (size > fh->text->len - pos)
		size = fh->text->len - pos;
	fh->cursor = pos + size;
	fuse_reply_buf(req, fh->text->str + pos, size);
}

/* A command answered when a mirror verb finishes. */
struct control_wait {
	fuse_req_t req;
	struct control_fh *fh;
	struct vnode *n;
	size_t size;
};

static void control_reply(struct control_wait *w, int err)
{
	if (err)
		vd_err("control: %s", w->fh->text->str);
	if (err)
		fuse_reply_err(w->req, -err);
	else
		fuse_reply_write(w->req, w->size);
}

static void control_verb_done(void *opaque, int err)
{
	struct control_wait *w = opaque;

	if (err) {
		g_string_append_printf(w->fh->text, "error: %s\n", strerror(-err));
	} else {
		g_string_append(w->fh->text, "ok: ");
		mirror_status_line(w->n->mirror, w->fh->text);
		g_string_append_c(w->fh->text, '\n');
	}
	tree_forget(w->n->ino, 1);
	control_reply(w, err);
	free(w);
	loop_req_end();
}

/* The error text for a failed command: the logged reason, if any. */
static void control_error(GString *out, int err)
{
	const char *msg = vd_log_last_error();

	g_string_append_printf(out, "error: %s\n", *msg ? msg : strerror(-err));
}

/* mirror-start NAME TARGET [k=v...], mirror-complete NAME, mirror-cancel NAME,
 * mirror-status NAME. Returns 1 when w is answered later, else 0 or -errno. */
static int control_mirror(int argc, gchar **argv, struct control_wait *w)
{
	const char *cmd = argv[0] + strlen("mirror-");
	GString *out = w->fh->text;
	struct vnode *n;
	int err, ret = 0;

	if (argc < 2 || (!strcmp(cmd, "start") ? argc < 3 : argc != 2)) {
		g_string_append_printf(out, "error: usage: %s NAME%s\n", argv[0],
				       !strcmp(cmd, "start") ? " TARGET [key=value...]" : "");
		return -EINVAL;
	}
	n = tree_lookup(argv[1], &err);
	if (!n || n->kind != VN_IMAGE || !n->mirror) {
		g_string_append_printf(out, "error: no image named \"%s\"\n", argv[1]);
		if (n)
			tree_forget(n->ino, 1);
		return -ENOENT;
	}
	vd_log_clear_error();
	if (!strcmp(cmd, "start")) {
		struct mirror_opts o;

		mirror_opts_init(&o);
		ret = mirror_opts_parse(&o, argv[2]);
		for (int i = 3; i < argc && !ret; i++) {
			char *eq = strchr(argv[i], '=');
			if (!eq) {
				vd_err("mirror: \"%s\" is not key=value", argv[i]);
				ret = -EINVAL;
				break;
			}
			*eq = '\0';
			ret = mirror_opts_set(&o, argv[i], eq + 1);
		}
		if (!ret)
			ret = xattr_mirror_start(n, &o);
		mirror_opts_free(&o);
	} else if (!strcmp(cmd, "status")) {
		mirror_status_line(n->mirror, out);
		g_string_append_c(out, '\n');
	} else if (!strcmp(cmd, "complete") || !strcmp(cmd, "cancel")) {
		w->n = n; /* the lookup reference is dropped when the verb is done */
		loop_req_begin();
		if (!strcmp(cmd, "complete"))
			mirror_complete(n->mirror, control_verb_done, w);
		else
			mirror_cancel(n->mirror, control_verb_done, w);
		return 1;
	} else {
		ret = -EINVAL;
		vd_err("control: unknown mirror command \"%s\"", argv[0]);
	}
	if (ret)
		control_error(out, ret);
	else if (!strcmp(cmd, "start"))
		g_string_append(out, "ok\n");
	tree_forget(n->ino, 1);
	return ret;
}

/* Run one command line; returns 0 or -errno with the reply in the fh's text,
 * or 1 if the reply comes later (w is then answered and freed). */
static int control_run(const char *line, struct control_wait *w)
{
	GString *out = w->fh->text;
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
	} else if (!strcmp(argv[0], "mirror-start") || !strcmp(argv[0], "mirror-complete") ||
		   !strcmp(argv[0], "mirror-cancel") || !strcmp(argv[0], "mirror-status")) {
		ret = control_mirror(argc, argv, w);
	} else {
		g_string_append_printf(out,
				       "error: unknown command \"%s\" (known: status, "
				       "mirror-start, mirror-complete, mirror-cancel, "
				       "mirror-status)\n",
				       argv[0]);
		ret = -EINVAL;
	}
	g_strfreev(argv);
	return ret;
}

void control_write(fuse_req_t req, const char *buf, size_t size, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;
	struct control_wait *w = calloc(1, sizeof(*w));
	char *line = g_strndup(buf, size);
	int ret;

	if (!w) {
		g_free(line);
		fuse_reply_err(req, ENOMEM);
		return;
	}
	g_strchomp(line);
	if (fh->text)
		g_string_truncate(fh->text, 0);
	else
		fh->text = g_string_new(NULL);
	fh->fresh = true;
	fh->cursor = 0;
	w->req = req;
	w->fh = fh;
	w->size = size;
	ret = control_run(line, w);
	g_free(line);
	if (ret == 1)
		return; /* answered by control_verb_done */
	control_reply(w, ret);
	free(w);
}

void control_release(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;

	if (fh->text)
		g_string_free(fh->text, TRUE);
	free(fh);
	fuse_reply_err(req, 0);
}
