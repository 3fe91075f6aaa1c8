/* The control file .vdiskfs at the root of a directory mount: reading gives
 * the JSON status of every image; writing one command line runs it, and the
 * reply text is then what the same open file reads. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "mirror/mirror.h"
#include "fuse/vfs.h"

static void status_image(struct vnode *n, void *opaque)
{
	struct json_writer *j = opaque;

	if (n->kind != VN_IMAGE)
		return; /* a pull backup's frozen file shows in its view's backup */
	json_begin_object(j, NULL);
	view_info_json(n, j, true); /* root and the owner only */
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

void control_open(fuse_req_t req, struct fuse_file_info *fi)
{
	struct control_fh *fh;

	if (!vfs_req_by_owner(req)) {
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
	char *copy;
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
	/* From a copy: once the reader has the bytes it may close the file, and
	 * the release on another thread frees fh->text while this one is still
	 * inside the reply call (the sanitizers check the iovec after writev). */
	copy = g_memdup2(fh->text->str + pos, size);
	fuse_reply_buf(req, copy, size);
	g_free(copy);
}

/* What a verb's success answers: "ok", or "ok: " and a status line, a job
 * type's (>= 0) or the backup's. */
enum { ANSWER_OK = -1, ANSWER_BACKUP = -2 };

static void answer_status(struct vnode *n, int answer, GString *out)
{
	g_string_append(out, "ok: ");
	if (answer == ANSWER_BACKUP)
		backup_status_line(n->backup, out);
	else
		job_status_line(n->mirror, answer, out);
	g_string_append_c(out, '\n');
}

/* A command answered when a verb finishes. */
struct control_wait {
	fuse_req_t req;
	struct control_fh *fh;
	struct vnode *n;
	size_t size;
	int answer; /* ANSWER_OK, ANSWER_BACKUP or a job type */
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

	vnode_note_verb(w->n, err);
	if (err) {
		g_string_append_printf(w->fh->text, "error: %s\n", strerror(-err));
	} else if (atomic_load(&w->n->img->inactive)) {
		g_string_append(w->fh->text, "ok: inactive\n");
	} else if (w->answer != ANSWER_OK) {
		answer_status(w->n, w->answer, w->fh->text);
	} else {
		g_string_append(w->fh->text, "ok\n");
	}
	tree_forget(w->n->ino, 1);
	control_reply(w, err);
	free(w);
	loop_req_end();
}

/* A verb's answer: noted on the view, and "error: ..." or ok (the text ok
 * for ANSWER_OK, else the status line answer names) in out. Returns err. */
static int control_result(struct vnode *n, GString *out, int err, int answer, const char *ok)
{
	vnode_note_verb(n, err);
	if (err) {
		control_error(out, err);
	} else if (answer != ANSWER_OK) {
		answer_status(n, answer, out);
	} else {
		g_string_append(out, ok);
	}
	return err;
}

/* The verbs on the view cmd->name. Returns 1 when w is answered
 * later, else 0 or -errno. */
static int control_mirror(struct control_cmd *cmd, struct control_wait *w)
{
	GString *out = w->fh->text;
	struct vnode *n;
	int err, ret = 0;

	n = tree_lookup(cmd->name, &err);
	if (!n || n->kind != VN_IMAGE || !n->mirror || !n->backup) {
		g_string_append_printf(out, "error: no image named \"%s\"\n", cmd->name);
		if (n)
			tree_forget(n->ino, 1);
		return -ENOENT;
	}
	vd_log_clear_error();
	switch (cmd->verb) {
	case CONTROL_JOB_START:
		ret = xattr_job_start(n, cmd->job, &cmd->opts);
		ret = control_result(n, out, ret, ANSWER_OK, "ok\n");
		break;
	case CONTROL_JOB_STATUS:
		job_status_line(n->mirror, cmd->job, out);
		g_string_append_c(out, '\n');
		break;
	case CONTROL_JOB_PAUSE:
	case CONTROL_JOB_RESUME:
	case CONTROL_JOB_SPEED:
		ret = xattr_job_adjust(n, cmd->job,
				       cmd->verb == CONTROL_JOB_PAUSE	 ? "pause"
				       : cmd->verb == CONTROL_JOB_RESUME ? "resume"
									 : "speed",
				       cmd->arg);
		ret = control_result(n, out, ret, cmd->job, NULL);
		break;
	case CONTROL_ACTIVATE:
		ret = control_result(n, out, handover_activate(n), ANSWER_OK, "ok: active\n");
		break;
	case CONTROL_BITMAP:
		ret = xattr_bitmap(n, cmd->bitmap, cmd->arg, cmd->granularity);
		ret = control_result(n, out, ret, ANSWER_OK, "ok\n");
		break;
	case CONTROL_BACKUP_PAUSE:
	case CONTROL_BACKUP_RESUME:
	case CONTROL_BACKUP_SPEED:
		ret = xattr_backup_adjust(n,
					  cmd->verb == CONTROL_BACKUP_PAUSE    ? "pause"
					  : cmd->verb == CONTROL_BACKUP_RESUME ? "resume"
									       : "speed",
					  cmd->arg);
		ret = control_result(n, out, ret, ANSWER_BACKUP, NULL);
		break;
	case CONTROL_BACKUP_STATUS:
		backup_status_line(n->backup, out);
		g_string_append_c(out, '\n');
		break;
	case CONTROL_BACKUP_START:
	case CONTROL_BACKUP_CANCEL:
	case CONTROL_BACKUP_END:
		w->n = n; /* the lookup reference is dropped when the verb is done */
		w->answer = ANSWER_BACKUP;
		loop_req_begin();
		if (cmd->verb == CONTROL_BACKUP_START)
			xattr_backup_start(n, &cmd->bopts, control_verb_done, w);
		else
			xattr_backup_stop(n, cmd->verb == CONTROL_BACKUP_END, control_verb_done, w);
		return 1;
	case CONTROL_INACTIVATE:
		w->n = n; /* the lookup reference is dropped when the verb is done */
		loop_req_begin();
		handover_inactivate(n, control_verb_done, w);
		return 1;
	case CONTROL_JOB_COMPLETE:
	case CONTROL_JOB_CANCEL:
		w->n = n; /* the lookup reference is dropped when the verb is done */
		w->answer = cmd->job;
		loop_req_begin();
		if (cmd->verb == CONTROL_JOB_COMPLETE)
			xattr_job_complete(n, cmd->job, control_verb_done, w);
		else
			job_cancel(n->mirror, cmd->job, control_verb_done, w);
		return 1;
	default:
		break;
	}
	tree_forget(n->ino, 1);
	return ret;
}

/* Run one command line; returns 0 or -errno with the reply in the fh's text,
 * or 1 if the reply comes later (w is then answered and freed). */
static int control_run(const char *buf, size_t size, struct control_wait *w)
{
	GString *out = w->fh->text;
	struct control_cmd cmd;
	int ret;

	ret = control_parse(buf, size, &cmd, out);
	if (ret)
		return ret;
	if (cmd.verb == CONTROL_STATUS) {
		GString *s = control_status();
		g_string_append(out, s->str);
		g_string_free(s, TRUE);
	} else {
		ret = control_mirror(&cmd, w);
	}
	control_cmd_free(&cmd);
	return ret;
}

void control_write(fuse_req_t req, const char *buf, size_t size, struct fuse_file_info *fi)
{
	struct control_fh *fh = (struct control_fh *)(uintptr_t)fi->fh;
	struct control_wait *w = calloc(1, sizeof(*w));
	int ret;

	if (!w) {
		fuse_reply_err(req, ENOMEM);
		return;
	}
	if (fh->text)
		g_string_truncate(fh->text, 0);
	else
		fh->text = g_string_new(NULL);
	fh->fresh = true;
	fh->cursor = 0;
	w->req = req;
	w->answer = ANSWER_OK;
	w->fh = fh;
	w->size = size;
	ret = control_run(buf, size, w);
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
