/* Extended attributes of a raw view: read-only facts about the image under
 * user.vdiskfs.* (and the whole set as one JSON object in .info). The mirror
 * and bitmap verbs join them here. The facts follow the view's read
 * permission (the kernel checks it); everything under user.vdiskfs.mirror.
 * (its status names the target) and bitmap., and last-error (the reason the
 * last verb was refused) stay with root and the mount's owner, like the
 * control file. */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/log.h"
#include "mirror/mirror.h"
#include "fuse/vfs.h"

#define XATTR_PREFIX "user.vdiskfs."

static const char *const xattr_names[] = {
	"format",	 "virtual-size",  "cluster-size",  "backing", "allocated",
	"image",	 "info",	  "mirror.status", "jobs",    "stream.status",
	"commit.status", "backup.status", "last-error",	   "active",
};

/* The jobs' attributes: user.vdiskfs.TYPE.VERB. */
static const char *const job_prefixes[] = {
	[JOB_MIRROR] = "mirror.",
	[JOB_STREAM] = "stream.",
	[JOB_COMMIT] = "commit.",
};

/* Is key a job's attribute? Its type and the verb after the prefix. */
static bool job_key(const char *key, enum job_type *type, const char **verb)
{
	for (size_t t = 0; t < G_N_ELEMENTS(job_prefixes); t++) {
		if (!strncmp(key, job_prefixes[t], strlen(job_prefixes[t]))) {
			*type = t;
			*verb = key + strlen(job_prefixes[t]);
			return true;
		}
	}
	return false;
}

static pthread_mutex_t last_error_lock = PTHREAD_MUTEX_INITIALIZER;

void vnode_note_verb(struct vnode *n, int err)
{
	char *msg = NULL;

	if (err) {
		const char *last = vd_log_last_error();

		msg = g_strdup(*last ? last : strerror(-err));
	}
	pthread_mutex_lock(&last_error_lock);
	g_free(n->last_error);
	n->last_error = msg;
	pthread_mutex_unlock(&last_error_lock);
}

/* The view's jobs as objects of an open array: the mirror engine's, then a
 * backup (running, or the last one that ended). */
static void view_jobs_json(struct vnode *n, struct json_writer *j)
{
	if (n->mirror)
		job_any_json(n->mirror, j);
	if (n->backup)
		backup_any_json(n->backup, j);
}

void view_info_json(struct vnode *n, struct json_writer *j, bool mirror)
{
	json_str(j, "name", n->name ? n->name : n->img->name);
	image_facts_json(n->img, vfs_cfg.read_only, j);
	json_u64(j, "passthrough-opens", pt_opens(n));
	if (!mirror)
		return;
	if (n->mirror) {
		json_begin_object(j, "mirror");
		job_status_json(n->mirror, JOB_MIRROR, j);
		json_end_object(j);
	}
	if (n->backup) {
		json_begin_object(j, "backup");
		backup_status_json(n->backup, j);
		json_end_object(j);
	}
	json_begin_array(j, "jobs");
	view_jobs_json(n, j);
	json_end_array(j);
}

/* Only root and the mount's owner may read or set it. */
static bool xattr_owner_only(const char *key)
{
	enum job_type t;
	const char *verb;

	return job_key(key, &t, &verb) || !strncmp(key, "backup.", strlen("backup.")) ||
	       !strncmp(key, "bitmap.", strlen("bitmap.")) || !strcmp(key, "last-error") ||
	       !strcmp(key, "jobs") || !strcmp(key, "snapshot");
}

/* The value of one attribute, or NULL if there is no such attribute. */
static GString *xattr_value(struct vnode *n, const char *key, bool mirror)
{
	struct vd_image *img = n->img;
	GString *s = g_string_new(NULL);
	const char *verb;
	enum job_type t;

	if (!strcmp(key, "format")) {
		g_string_append(s, img->fmt->name);
	} else if (!strcmp(key, "virtual-size")) {
		g_string_append_printf(s, "%" PRIu64, img->size);
	} else if (!strcmp(key, "cluster-size")) {
		g_string_append_printf(s, "%" PRIu32, img->cluster_size);
	} else if (!strcmp(key, "backing")) {
		char *b = image_backing_path(img);

		g_string_append(s, b ? b : "");
		g_free(b);
	} else if (!strcmp(key, "allocated")) {
		g_string_append_printf(s, "%" PRIu64, image_allocated(img));
	} else if (!strcmp(key, "image")) {
		g_string_append(s, img->path);
	} else if (!strcmp(key, "active")) {
		g_string_append(s, atomic_load(&img->inactive) ? "0" : "1");
	} else if (job_key(key, &t, &verb) && !strcmp(verb, "status")) {
		if (n->mirror)
			job_status_line(n->mirror, t, s);
		else
			g_string_append(s, "phase=none");
	} else if (!strcmp(key, "jobs")) {
		struct json_writer j;

		json_init(&j, s);
		json_begin_array(&j, NULL);
		view_jobs_json(n, &j);
		json_end_array(&j);
	} else if (!strcmp(key, "backup.status")) {
		if (n->backup)
			backup_status_line(n->backup, s);
		else
			g_string_append(s, "phase=none");
	} else if (!strcmp(key, "last-error")) {
		pthread_mutex_lock(&last_error_lock);
		g_string_append(s, n->last_error ? n->last_error : "");
		pthread_mutex_unlock(&last_error_lock);
	} else if (!strcmp(key, "info")) {
		struct json_writer j;
		json_init(&j, s);
		json_begin_object(&j, NULL);
		view_info_json(n, &j, mirror);
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
	const char *key;
	bool mirror;
	GString *v;

	if (n->kind != VN_IMAGE || strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX))) {
		fuse_reply_err(req, ENODATA);
		return;
	}
	key = name + strlen(XATTR_PREFIX);
	mirror = vfs_req_by_owner(req);
	if (xattr_owner_only(key) && !mirror) {
		fuse_reply_err(req, EACCES);
		return;
	}
	v = xattr_value(n, key, mirror);
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
		bool mirror = vfs_req_by_owner(req);

		for (size_t i = 0; i < G_N_ELEMENTS(xattr_names); i++) {
			if (xattr_owner_only(xattr_names[i]) && !mirror)
				continue; /* listed only to those who may read it */
			g_string_append(s, XATTR_PREFIX);
			g_string_append(s, xattr_names[i]);
			g_string_append_c(s, '\0');
		}
	}
	xattr_reply(req, s->str, s->len, size);
	g_string_free(s, TRUE);
}

/* What a job's start needs to know about this mount. */
static void view_env(struct mirror_env *env)
{
	env->mountpoint = vfs_cfg.mountpoint;
	env->read_only = vfs_cfg.read_only;
	env->open = &vfs_cfg.open;
}

int xattr_job_start(struct vnode *n, enum job_type type, const struct mirror_opts *o)
{
	struct mirror_env env;
	char verb[32];
	int ret;

	if (!n->mirror)
		return -ENOMEM;
	if (backup_busy(n->backup)) { /* one job per view (the hook is the backup's) */
		vd_err("%s: a backup runs on this view: cancel it or wait for its end",
		       n->img->path);
		return -EBUSY;
	}
	view_env(&env);
	/* The job must see every write: none may pass through. */
	snprintf(verb, sizeof(verb), "start a %s", job_type_name(type));
	ret = pt_block(n, verb);
	if (ret)
		return ret;
	switch (type) {
	case JOB_STREAM:
		ret = stream_start(n->mirror, o, &env);
		break;
	case JOB_COMMIT:
		ret = commit_start(n->mirror, o, &env);
		break;
	default:
		ret = mirror_start(n->mirror, o, &env);
		break;
	}
	pt_unblock(n); /* a running job keeps them from passing through now */
	return ret;
}

/* The rate of a speed verb: 0, or -EINVAL logged naming who. */
static int adjust_speed(const char *who, const char *value, uint64_t *speed)
{
	if (!mirror_parse_speed(value, speed))
		return 0;
	vd_err("%s: bad value \"%s\" for speed: want bytes per second, e.g. 200M or 200M/s", who,
	       value);
	return -EINVAL;
}

int xattr_job_adjust(struct vnode *n, enum job_type type, const char *verb, const char *value)
{
	uint64_t speed;

	if (!n->mirror)
		return -ENOMEM;
	if (!strcmp(verb, "pause") || !strcmp(verb, "resume"))
		return job_pause(n->mirror, type, !strcmp(verb, "pause"));
	if (adjust_speed(job_type_name(type), value, &speed))
		return -EINVAL;
	return job_set_speed(n->mirror, type, speed);
}

int xattr_backup_adjust(struct vnode *n, const char *verb, const char *value)
{
	uint64_t speed;

	if (!n->backup)
		return -ENOMEM;
	if (!strcmp(verb, "pause") || !strcmp(verb, "resume"))
		return backup_pause(n->backup, !strcmp(verb, "pause"));
	if (adjust_speed("backup", value, &speed))
		return -EINVAL;
	return backup_set_speed(n->backup, speed);
}

int xattr_bitmap(struct vnode *n, enum vd_bitmap_cmd cmd, const char *name, uint32_t gran)
{
	if (vfs_cfg.read_only) {
		vd_err("%s: bitmap %s %s: the mount is read-only", n->img->path,
		       vd_bitmap_cmd_name(cmd), name);
		return -EROFS;
	}
	return image_bitmap(n->img, cmd, name, gran);
}

/* user.vdiskfs.bitmap.VERB: the value names the bitmap (add: or options). */
static void xattr_bitmap_set(fuse_req_t req, struct vnode *n, const char *verb, const char *value,
			     size_t size)
{
	char *v = g_strndup(value, size), *name = NULL;
	enum vd_bitmap_cmd cmd;
	uint32_t gran = 0;
	int ret = 0;

	g_strchomp(v);
	if (vd_bitmap_cmd_parse(verb, &cmd)) {
		vd_err("%s: unknown attribute user.vdiskfs.bitmap.%s", n->img->path, verb);
		ret = -EINVAL;
	} else if (cmd == VD_BITMAP_ADD) {
		ret = bitmap_add_parse(v, &name, &gran);
	} else {
		name = g_strdup(v);
	}
	if (!ret && !*name) {
		vd_err("%s: bitmap %s: the value names the bitmap", n->img->path, verb);
		ret = -EINVAL;
	}
	if (!ret)
		ret = xattr_bitmap(n, cmd, name, gran);
	g_free(name);
	g_free(v);
	vnode_note_verb(n, ret);
	fuse_reply_err(req, -ret);
}

struct vnode_call *vnode_call_new(struct vnode *n, vd_done_fn done, void *opaque)
{
	struct vnode_call *c = malloc(sizeof(*c));

	if (!c) {
		done(opaque, -ENOMEM);
		return NULL;
	}
	c->n = n;
	c->before = n->img;
	c->done = done;
	c->opaque = opaque;
	return c;
}

struct vnode_call *vnode_call_blocked(struct vnode *n, const char *verb, vd_done_fn done,
				      void *opaque)
{
	struct vnode_call *c;
	int ret = pt_block(n, verb);

	if (ret) {
		done(opaque, ret);
		return NULL;
	}
	c = vnode_call_new(n, done, opaque);
	if (!c)
		pt_unblock(n);
	return c;
}

/* A verb that may have moved the view onto another image (a mirror's or
 * active commit's complete, a snapshot): in a directory mount SOURCE/name
 * then names the new image. */
static void xattr_moved_done(void *opaque, int err)
{
	struct vnode_call *c = opaque;

	if (!err && c->n->img != c->before)
		tree_mirror_completed(c->n);
	c->done(c->opaque, err);
	free(c);
}

void xattr_job_complete(struct vnode *n, enum job_type type, vd_done_fn done, void *opaque)
{
	struct vnode_call *c = vnode_call_new(n, done, opaque);

	if (c)
		job_complete(n->mirror, type, xattr_moved_done, c);
}

static void xattr_snapshot_done(void *opaque, int err)
{
	struct vnode_call *c = opaque;

	pt_unblock(c->n); /* the view is a qcow2 overlay now: nothing passes through */
	c->done(c->opaque, err);
	free(c);
}

void xattr_snapshot(struct vnode *n, const char *path, vd_done_fn done, void *opaque)
{
	struct vnode_call *c;
	struct mirror_env env;

	if (!vfs_cfg.single) {
		/* SOURCE/name would have to name the overlay, whose backing
		 * file is the very file SOURCE/name names now. */
		vd_err("%s: snapshot: not in a directory mount yet (mount the image on its own)",
		       n->img->path);
		done(opaque, -ENOTSUP);
		return;
	}
	if (backup_busy(n->backup)) { /* it reads the image the snapshot retires */
		vd_err("%s: snapshot: a backup runs on this view: cancel it or wait for its end",
		       n->img->path);
		done(opaque, -EBUSY);
		return;
	}
	/* The old image must see no write from now on: none may pass through. */
	c = vnode_call_blocked(n, "take a snapshot", done, opaque);
	if (!c)
		return;
	view_env(&env);
	snapshot_take(n->mirror, path, &env, xattr_snapshot_done, c);
}

struct xattr_wait {
	fuse_req_t req;
	struct vnode *n; /* kept by the kernel's reference while the request runs */
};

/* A verb answered later (xattr_verb_done()), or NULL with ENOMEM answered. */
static struct xattr_wait *xattr_wait_new(fuse_req_t req, struct vnode *n)
{
	struct xattr_wait *w = n->mirror ? malloc(sizeof(*w)) : NULL;

	if (!w) {
		vnode_note_verb(n, -ENOMEM);
		fuse_reply_err(req, ENOMEM);
		return NULL;
	}
	w->req = req;
	w->n = n;
	loop_req_begin();
	return w;
}

static void xattr_verb_done(void *opaque, int err)
{
	struct xattr_wait *w = opaque;

	vnode_note_verb(w->n, err);
	fuse_reply_err(w->req, -err);
	free(w);
	loop_req_end();
}

/* The job verbs: start (value: options), complete, cancel (answered once
 * done), pause, resume, speed (value: a rate). */
static void xattr_job(fuse_req_t req, struct vnode *n, enum job_type type, const char *verb,
		      const char *value, size_t size)
{
	char *v = g_strndup(value, size);
	struct xattr_wait *w;
	int ret;

	g_strchomp(v);
	if (!strcmp(verb, "start")) {
		struct mirror_opts o;

		mirror_opts_init(&o);
		ret = job_opts_parse(&o, type, v);
		if (!ret)
			ret = xattr_job_start(n, type, &o);
		mirror_opts_free(&o);
	} else if (!strcmp(verb, "pause") || !strcmp(verb, "resume") || !strcmp(verb, "speed")) {
		ret = xattr_job_adjust(n, type, verb, v);
	} else if (!strcmp(verb, "complete") || !strcmp(verb, "cancel")) {
		g_free(v);
		w = xattr_wait_new(req, n); /* answered when the swap or the drop is done */
		if (!w)
			return;
		if (!strcmp(verb, "complete"))
			xattr_job_complete(n, type, xattr_verb_done, w);
		else
			job_cancel(n->mirror, type, xattr_verb_done, w);
		return;
	} else {
		vd_err("%s: unknown attribute user.vdiskfs.%s%s", n->img->path, job_prefixes[type],
		       verb);
		ret = verb[0] && strcmp(verb, "status") ? -EINVAL : -EPERM;
	}
	g_free(v);
	vnode_note_verb(n, ret);
	fuse_reply_err(req, -ret);
}

/* user.vdiskfs.snapshot: the value is the new overlay's path. */
static void xattr_snapshot_set(fuse_req_t req, struct vnode *n, const char *value, size_t size)
{
	char *v = g_strndup(value, size);
	struct xattr_wait *w = xattr_wait_new(req, n);

	g_strchomp(v);
	if (w)
		xattr_snapshot(n, v, xattr_verb_done, w);
	g_free(v);
}

/* A pull backup whose point in time is fixed gets its frozen file. */
struct pull_start {
	struct vnode *n;
	char *view;
	vd_done_fn done;
	void *opaque;
};

static void pull_ignore(void *opaque, int err)
{
	(void)opaque;
	(void)err;
}

static void pull_started(void *opaque, int err)
{
	struct pull_start *p = opaque;

	if (!err) {
		err = tree_frozen_add(p->n, p->view);
		if (err) /* the name went meanwhile: no backup without its file */
			backup_cancel(p->n->backup, pull_ignore, NULL);
	}
	p->done(p->opaque, err);
	g_free(p->view);
	free(p);
}

void xattr_backup_start(struct vnode *n, const struct backup_opts *o, vd_done_fn done, void *opaque)
{
	struct pull_start *p = NULL;
	struct mirror_env env;
	int ret = backup_opts_check(o);

	if (!ret && !n->backup)
		ret = -ENOMEM;
	if (!ret && o->view)
		ret = tree_frozen_check(o->view);
	if (!ret && o->view) {
		p = malloc(sizeof(*p));
		ret = p ? 0 : -ENOMEM;
	}
	if (ret) {
		done(opaque, ret);
		return;
	}
	view_env(&env);
	if (!p) {
		backup_start(n->backup, o, &env, done, opaque);
		return;
	}
	p->n = n;
	p->view = g_strdup(o->view);
	p->done = done;
	p->opaque = opaque;
	backup_start(n->backup, o, &env, pull_started, p);
}

static void backup_stopped(void *opaque, int err)
{
	struct vnode_call *c = opaque;

	if (!err)
		tree_frozen_remove(c->n);
	c->done(c->opaque, err);
	free(c);
}

void xattr_backup_stop(struct vnode *n, bool end, vd_done_fn done, void *opaque)
{
	struct vnode_call *c = vnode_call_new(n, done, opaque);

	if (!c)
		return;
	if (end)
		backup_end(n->backup, backup_stopped, c);
	else
		backup_cancel(n->backup, backup_stopped, c);
}

/* The backup verbs: start (value: options), cancel, end (a pull backup);
 * answered once the job's point in time is fixed, or once it ended. */
static void xattr_backup(fuse_req_t req, struct vnode *n, const char *verb, const char *value,
			 size_t size)
{
	struct xattr_wait *w;

	if (!strcmp(verb, "start")) {
		struct backup_opts o;
		char *v = g_strndup(value, size);
		int ret;

		g_strchomp(v);
		backup_opts_init(&o);
		ret = backup_opts_parse(&o, v);
		g_free(v);
		if (ret) {
			backup_opts_free(&o);
			vnode_note_verb(n, ret);
			fuse_reply_err(req, -ret);
			return;
		}
		w = xattr_wait_new(req, n);
		if (w)
			xattr_backup_start(n, &o, xattr_verb_done, w);
		backup_opts_free(&o);
		return;
	}
	if (!strcmp(verb, "pause") || !strcmp(verb, "resume") || !strcmp(verb, "speed")) {
		char *v = g_strndup(value, size);
		int ret;

		g_strchomp(v);
		ret = xattr_backup_adjust(n, verb, v);
		g_free(v);
		vnode_note_verb(n, ret);
		fuse_reply_err(req, -ret);
		return;
	}
	w = xattr_wait_new(req, n);
	if (w)
		xattr_backup_stop(n, !strcmp(verb, "end"), xattr_verb_done, w);
}

/* user.vdiskfs.active: 1 activates (at once), 0 inactivates (answered once
 * the view's requests drained and the image is written back). */
static void xattr_active(fuse_req_t req, struct vnode *n, const char *value, size_t size)
{
	struct xattr_wait *w;
	int ret;

	if (size != 1 || (value[0] != '0' && value[0] != '1')) {
		vd_err("%s: active: want 1 or 0", n->img->path);
		vnode_note_verb(n, -EINVAL);
		fuse_reply_err(req, EINVAL);
		return;
	}
	if (value[0] == '1') {
		ret = handover_activate(n);
		vnode_note_verb(n, ret);
		fuse_reply_err(req, -ret);
		return;
	}
	w = xattr_wait_new(req, n); /* answered once the image is written back */
	if (w)
		handover_inactivate(n, xattr_verb_done, w);
}

void xattr_set(fuse_req_t req, struct vnode *n, const char *name, const char *value, size_t size,
	       int flags)
{
	const char *key, *verb;
	enum job_type type;

	if (n->kind != VN_IMAGE || strncmp(name, XATTR_PREFIX, strlen(XATTR_PREFIX))) {
		fuse_reply_err(req, ENOTSUP); /* no arbitrary attributes on a view */
		return;
	}
	key = name + strlen(XATTR_PREFIX);
	if ((xattr_owner_only(key) || !strcmp(key, "active")) && !vfs_req_by_owner(req)) {
		vd_err("%s: %s: only the owner of the mount may run mirrors and other jobs, "
		       "change bitmaps or hand views over",
		       n->img->path, name);
		fuse_reply_err(req, EACCES);
		return;
	}
	vd_log_clear_error();
	if (job_key(key, &type, &verb)) {
		xattr_job(req, n, type, verb, value, size);
		return;
	}
	if (!strcmp(key, "snapshot")) {
		xattr_snapshot_set(req, n, value, size);
		return;
	}
	if (!strcmp(key, "backup.start") || !strcmp(key, "backup.cancel") ||
	    !strcmp(key, "backup.end") || !strcmp(key, "backup.pause") ||
	    !strcmp(key, "backup.resume") || !strcmp(key, "backup.speed")) {
		xattr_backup(req, n, key + strlen("backup."), value, size);
		return;
	}
	if (!strcmp(key, "active")) {
		xattr_active(req, n, value, size);
		return;
	}
	if (!strncmp(key, "bitmap.", strlen("bitmap."))) {
		xattr_bitmap_set(req, n, key + strlen("bitmap."), value, size);
		return;
	}
	for (size_t i = 0; i < G_N_ELEMENTS(xattr_names); i++) {
		if (!strcmp(key, xattr_names[i])) {
			vd_err("%s: %s is read-only", n->img->path, name);
			vnode_note_verb(n, -EPERM);
			fuse_reply_err(req, EPERM);
			return;
		}
	}
	vd_err("%s: unknown attribute %s", n->img->path, name);
	vnode_note_verb(n, -EINVAL);
	fuse_reply_err(req, EINVAL);
}
