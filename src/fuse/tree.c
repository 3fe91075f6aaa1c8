/* The node tree: in a single-image mount the root is the view; in a directory
 * mount the root lists every image of SOURCE (qcow2/vhdx by magic, raw by
 * extension) plus the control file, rescanned on lookup and readdir so that
 * images added to or removed from SOURCE appear or vanish. */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <pthread.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/log.h"
#include "mirror/mirror.h"
#include "util/path.h"
#include "fuse/vfs.h"

struct vfs_config vfs_cfg;

static pthread_mutex_t tree_lock = PTHREAD_MUTEX_INITIALIZER;
static GHashTable *by_ino;  /* fuse_ino_t -> struct vnode */
static GHashTable *by_name; /* name -> struct vnode (visible images only) */
static GHashTable *failed;  /* name -> struct failed_file */
static fuse_ino_t next_ino = 3;
static struct vnode root_node = {.ino = VFS_ROOT_INO, .kind = VN_DIR, .nlookup = 1};
static struct vnode control_node = {.ino = VFS_CONTROL_INO, .kind = VN_CONTROL, .nlookup = 1};

/* A file that is not served: not an image (err NULL), or an image that failed.
 * It is looked at again when it changes; an image that failed also on the
 * first lookup or listing after its back-off (1 s, doubling up to a minute:
 * another process may hold it locked, or it may be repaired in place), and,
 * if it failed for want of file descriptors or memory (transient), once an
 * image has been closed. */
#define RETRY_FIRST_NS 1000000000ull
#define RETRY_MAX_NS   60000000000ull
struct failed_file {
	dev_t dev;
	ino_t ino;
	struct timespec mtime;
	off_t size;
	char *err;
	bool transient;
	uint64_t backoff_ns, retry_at_ns;
};
static bool retry_transient; /* an image was closed since the last scan */

static bool err_transient(int err)
{
	return err == -EMFILE || err == -ENFILE || err == -ENOMEM;
}

static gboolean failed_is_transient(gpointer key, gpointer val, gpointer opaque)
{
	return ((struct failed_file *)val)->transient;
}

/* Once an image was closed, look at transient failures again. With tree_lock. */
static void failed_retry(void)
{
	if (retry_transient)
		g_hash_table_foreach_remove(failed, failed_is_transient, NULL);
	retry_transient = false;
}

static void failed_free(gpointer p)
{
	struct failed_file *f = p;

	g_free(f->err);
	g_free(f);
}

/* Views freed on a mirror's copier thread wait here (under tree_lock):
 * freeing the mirror joins that very thread. */
static GSList *free_later;

static void vnode_free(struct vnode *n);
static void vnode_unlink(struct vnode *n);

/* A frozen file lets go of its origin view (tree_lock held), which goes too
 * if nothing else refers to it. */
static void frozen_release(struct vnode *f)
{
	struct vnode *o = f->origin;

	if (o->frozen == f)
		o->frozen = NULL;
	o->opens--;
	if (!o->nlookup && !o->opens && o->gone) {
		g_hash_table_remove(by_ino, &o->ino);
		vnode_free(o);
	}
}

static void vnode_free(struct vnode *n)
{
	if (n->kind == VN_FROZEN)
		frozen_release(n);
	else if ((n->mirror && mirror_on_own_thread(n->mirror)) ||
		 (n->backup && backup_on_own_thread(n->backup))) {
		/* A verb's answer (a control-file complete or cancel) dropped the
		 * last reference on the copier thread: tree_reap() frees it. */
		free_later = g_slist_prepend(free_later, n);
		return;
	}
	backup_free(n->backup); /* cancels a backup: the bitmap gets its bits back */
	mirror_free(n->mirror); /* cancels a job: the source stays the image */
	image_unref(n->img);
	retry_transient = true;
	g_free(n->last_error);
	g_free(n->name);
	g_free(n);
}

/* ---- a pull backup's frozen file ---- */

int tree_frozen_check(const char *name)
{
	struct stat st;
	char *path;
	int ret = 0;

	if (vfs_cfg.single) {
		vd_err("backup: view=%s: a pull backup needs a directory mount", name);
		return -EINVAL;
	}
	path = g_build_filename(vfs_cfg.source, name, NULL);
	pthread_mutex_lock(&tree_lock);
	if (g_hash_table_lookup(by_name, name) || lstat(path, &st) == 0) {
		vd_err("backup: view=%s: the name is taken in %s", name, vfs_cfg.source);
		ret = -EEXIST;
	}
	pthread_mutex_unlock(&tree_lock);
	g_free(path);
	return ret;
}

int tree_frozen_add(struct vnode *origin, const char *name)
{
	struct vnode *f;
	int ret = tree_frozen_check(name);

	if (ret)
		return ret;
	pthread_mutex_lock(&tree_lock);
	if (g_hash_table_lookup(by_name, name) || origin->frozen || origin->gone) {
		pthread_mutex_unlock(&tree_lock);
		vd_err("backup: view=%s: the name was taken meanwhile", name);
		return -EEXIST;
	}
	f = g_new0(struct vnode, 1);
	f->ino = next_ino++;
	f->kind = VN_FROZEN;
	f->name = g_strdup(name);
	f->img = origin->img;
	image_ref(f->img);
	f->origin = origin;
	origin->opens++;
	origin->frozen = f;
	g_hash_table_insert(by_ino, &f->ino, f);
	g_hash_table_insert(by_name, f->name, f);
	pthread_mutex_unlock(&tree_lock);
	return 0;
}

void tree_frozen_remove(struct vnode *origin)
{
	pthread_mutex_lock(&tree_lock);
	if (origin->frozen)
		vnode_unlink(origin->frozen); /* freed once the kernel let go */
	pthread_mutex_unlock(&tree_lock);
}

void tree_reap(void)
{
	GSList *list;

	pthread_mutex_lock(&tree_lock);
	list = free_later;
	free_later = NULL;
	pthread_mutex_unlock(&tree_lock);
	for (GSList *l = list; l; l = l->next)
		vnode_free(l->data);
	g_slist_free(list);
}

/* Drop a node from the name table; free it once the kernel forgot it. */
static void vnode_unlink(struct vnode *n)
{
	if (n->gone)
		return;
	n->gone = true;
	g_hash_table_remove(by_name, n->name);
	if (n->nlookup)
		notify_gone(n->ino, n->name); /* so that the kernel forgets it */
	if (!n->nlookup && !n->opens) {
		g_hash_table_remove(by_ino, &n->ino);
		vnode_free(n);
	}
}

static struct vnode *vnode_new(const char *name, struct vd_image *img, const struct stat *st)
{
	struct vnode *n = g_new0(struct vnode, 1);

	n->ino = next_ino++;
	n->kind = VN_IMAGE;
	n->name = g_strdup(name);
	n->img = img;
	n->mirror = mirror_new(&n->img);
	n->backup = n->mirror ? backup_new(n->mirror, &n->img) : NULL;
	n->sdev = st->st_dev;
	n->sino = st->st_ino;
	if (n->mirror)
		handover_view_new(n);
	g_hash_table_insert(by_ino, &n->ino, n);
	if (name)
		g_hash_table_insert(by_name, n->name, n);
	return n;
}

static bool failed_same(const struct failed_file *f, const struct stat *st)
{
	return f->dev == st->st_dev && f->ino == st->st_ino && f->size == st->st_size &&
	       f->mtime.tv_sec == st->st_mtim.tv_sec && f->mtime.tv_nsec == st->st_mtim.tv_nsec;
}

static void failed_note(const char *name, const struct stat *st, const char *err, bool transient)
{
	struct failed_file *old = g_hash_table_lookup(failed, name);
	struct failed_file *f = g_new0(struct failed_file, 1);

	f->backoff_ns = RETRY_FIRST_NS;
	if (old && old->err && failed_same(old, st))
		f->backoff_ns =
			old->backoff_ns * 2 > RETRY_MAX_NS ? RETRY_MAX_NS : old->backoff_ns * 2;
	f->retry_at_ns = vd_now_ns() + f->backoff_ns;

	f->dev = st->st_dev;
	f->ino = st->st_ino;
	f->size = st->st_size;
	f->mtime = st->st_mtim;
	f->err = err ? g_strdup(err) : NULL;
	f->transient = transient;
	g_hash_table_replace(failed, g_strdup(name), f);
}

/* Does path lead into our own mount? Looking at it would ask this daemon, whose
 * thread is the one asking: a mount inside its own source directory, or a
 * symlink there pointing into the mount, must not be stat()ed. */
static bool tree_is_own_mount(const char *path)
{
	char *target, *abs;
	bool own;

	if (!strcmp(path, vfs_cfg.mountpoint))
		return true;
	target = g_file_read_link(path, NULL);
	if (!target)
		return false;
	abs = g_path_is_absolute(target) ? g_strdup(target)
					 : g_build_filename(vfs_cfg.source, target, NULL);
	own = path_within(abs, vfs_cfg.mountpoint);
	g_free(target);
	g_free(abs);
	return own;
}

/* Open SOURCE/name. Under backing=within-source a symbolic link there must
 * lead to a file in SOURCE, like a backing file, and the file is then opened
 * by its resolved path with no link followed (none can be swapped in since). */
static int tree_open_image(const char *path, struct vd_image **img)
{
	struct vd_open_opts o = vfs_cfg.open;
	char *real;
	int ret;

	if (o.backing != VD_BACKING_WITHIN_SOURCE)
		return image_open(path, &o, img);
	real = realpath(path, NULL);
	if (!real) {
		ret = -errno;
		vd_err("%s: cannot resolve: %s", path, strerror(errno));
		return ret;
	}
	if (!path_within(real, vfs_cfg.source)) {
		vd_err("%s: a symbolic link to %s, outside %s: refused by backing=within-source",
		       path, real, vfs_cfg.source);
		free(real);
		return -EPERM;
	}
	o.nofollow = true;
	ret = image_open(real, &o, img);
	free(real);
	return ret;
}

/* Bring the node for name up to date with SOURCE/name. Called with tree_lock. */
static struct vnode *tree_scan_name(const char *name, int *err)
{
	struct vnode *n = g_hash_table_lookup(by_name, name);
	struct failed_file *f;
	struct vd_image *img;
	struct stat st;
	char *path;
	int fd, ret;

	*err = -ENOENT;
	if (name[0] == '.' || strchr(name, '/'))
		return NULL;
	if (n && n->kind == VN_FROZEN) { /* shown for its backup, not for a file */
		*err = 0;
		return n;
	}
	if (n && (n->img->dev != n->sdev || n->img->ino != n->sino)) {
		/* A completed mirror moved this view to another file: the name now
		 * stands for that image, whatever becomes of the source file. */
		*err = 0;
		return n;
	}
	path = g_build_filename(vfs_cfg.source, name, NULL);
	if (tree_is_own_mount(path) || stat(path, &st) < 0 || !S_ISREG(st.st_mode)) {
		if (n)
			vnode_unlink(n);
		g_hash_table_remove(failed, name);
		g_free(path);
		return NULL;
	}
	if (n && n->sdev == st.st_dev && n->sino == st.st_ino) {
		g_free(path);
		*err = 0;
		return n;
	}
	if (n)
		vnode_unlink(n); /* replaced by another file */
	f = g_hash_table_lookup(failed, name);
	if (f && failed_same(f, &st) && (!f->err || vd_now_ns() < f->retry_at_ns)) {
		g_free(path);
		return NULL;
	}
	/* O_NONBLOCK: a FIFO slipped in since the stat() must not hang us. */
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	if (fd < 0) {
		ret = -errno;
		if (err_transient(ret)) {
			vd_err("%s: cannot open: %s", path, strerror(-ret));
			failed_note(name, &st, vd_log_last_error(), true);
		}
		g_free(path);
		return NULL;
	}
	if (!image_probe(fd, path, false)) {
		close(fd);
		failed_note(name, &st, NULL, false);
		g_free(path);
		return NULL;
	}
	close(fd);
	vd_log_clear_error();
	ret = tree_open_image(path, &img);
	g_free(path);
	if (ret) {
		const char *msg = vd_log_last_error();
		failed_note(name, &st, *msg ? msg : strerror(-ret), err_transient(ret));
		vd_err("%s: not served: %s", name, strerror(-ret));
		return NULL;
	}
	g_hash_table_remove(failed, name);
	*err = 0;
	return vnode_new(name, img, &st);
}

/* SOURCE/name becomes a second name of the new image: a hard link to it on
 * the same file system, else a symbolic link. It is made beside, under a
 * hidden name, and exchanged with SOURCE/name in one step, so that the name
 * never vanishes; the old source then keeps the hidden name with the time of
 * the swap, out of the views, until the operator deletes it. */
static int tree_relink(const char *path, const char *name, const char *target, char **kept,
		       bool *symbolic)
{
	char *tmp = g_strdup_printf("%s/.%s.vdiskfs-swap", vfs_cfg.source, name);
	GDateTime *now = g_date_time_new_now_local();
	char *stamp = g_date_time_format(now, "%Y%m%d-%H%M%S");
	int ret = 0;

	g_date_time_unref(now);
	*kept = NULL;
	unlink(tmp); /* left by a daemon killed here */
	*symbolic = link(target, tmp) < 0;
	if (*symbolic) {
		if (symlink(target, tmp) < 0) {
			ret = -errno;
			goto out;
		}
	}
	if (renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RENAME_EXCHANGE) < 0) {
		ret = -errno;
		if (ret == -ENOENT && rename(tmp, path) == 0)
			ret = 0; /* the source file was deleted already */
		else
			unlink(tmp);
		goto out;
	}
	*kept = g_strdup_printf("%s/.%s.before-mirror-%s", vfs_cfg.source, name, stamp);
	if (rename(tmp, *kept) < 0) {
		g_free(*kept);
		*kept = tmp;
		tmp = NULL;
	}
out:
	g_free(stamp);
	g_free(tmp);
	return ret;
}

void tree_mirror_completed(struct vnode *n)
{
	char *path, *kept;
	bool symbolic;
	int ret;

	if (vfs_cfg.single)
		return;
	path = g_build_filename(vfs_cfg.source, n->name, NULL);
	ret = tree_relink(path, n->name, n->img->path, &kept, &symbolic);
	if (ret) {
		vd_err("%s: the view now serves %s, but %s could not be made to name it (%s): "
		       "after a remount the name serves the old source unless you replace it "
		       "with %s",
		       n->name, n->img->path, path, strerror(-ret), n->img->path);
		g_free(path);
		return;
	}
	vd_info("%s: %s is now a %s link to %s%s%s%s", n->name, path,
		symbolic ? "symbolic" : "hard", n->img->path,
		kept ? "; the old source is kept as " : "", kept ? kept : "",
		kept ? " (not served; delete it when it is no longer needed)" : "");
	if (symbolic && vfs_cfg.open.backing == VD_BACKING_WITHIN_SOURCE &&
	    !path_within(n->img->path, vfs_cfg.source))
		vd_warn("%s: %s is outside %s: after a remount backing=within-source refuses the "
			"link (mount with backing=follow, or move the image into %s)",
			n->name, n->img->path, vfs_cfg.source, vfs_cfg.source);
	/* The node keeps the old source's identity: while this mount lives the
	 * name stands for the new image whatever becomes of SOURCE/name
	 * (tree_scan_name()); the link is for the next mount. */
	g_free(kept);
	g_free(path);
}

static void tree_rescan(void)
{
	DIR *d = opendir(vfs_cfg.source);
	GHashTableIter it;
	struct dirent *de;
	GPtrArray *names;
	gpointer key, val;
	int err;

	if (!d) {
		vd_err("%s: cannot read directory: %s", vfs_cfg.source, strerror(errno));
		return;
	}
	failed_retry();
	while ((de = readdir(d)))
		tree_scan_name(de->d_name, &err);
	closedir(d);
	/* Names no longer in the directory. */
	names = g_ptr_array_new_with_free_func(g_free);
	g_hash_table_iter_init(&it, by_name);
	while (g_hash_table_iter_next(&it, &key, &val))
		g_ptr_array_add(names, g_strdup(key));
	g_hash_table_iter_init(&it, failed);
	while (g_hash_table_iter_next(&it, &key, &val))
		g_ptr_array_add(names, g_strdup(key));
	for (guint i = 0; i < names->len; i++)
		tree_scan_name(names->pdata[i], &err);
	g_ptr_array_free(names, TRUE);
}

int tree_init(void)
{
	by_ino = g_hash_table_new(g_int64_hash, g_int64_equal);
	by_name = g_hash_table_new(g_str_hash, g_str_equal);
	failed = g_hash_table_new_full(g_str_hash, g_str_equal, g_free, failed_free);
	if (vfs_cfg.single) {
		struct vd_image *img;
		struct stat st;
		int ret = image_open(vfs_cfg.source, &vfs_cfg.open, &img);

		if (ret)
			return ret;
		if (fstat(img->fd, &st) < 0) {
			image_unref(img);
			return -errno;
		}
		root_node.kind = VN_IMAGE;
		root_node.img = img;
		root_node.mirror = mirror_new(&root_node.img);
		root_node.backup =
			root_node.mirror ? backup_new(root_node.mirror, &root_node.img) : NULL;
		if (root_node.mirror)
			handover_view_new(&root_node);
		root_node.sdev = st.st_dev;
		root_node.sino = st.st_ino;
		g_hash_table_insert(by_ino, &root_node.ino, &root_node);
		return 0;
	}
	g_hash_table_insert(by_ino, &root_node.ino, &root_node);
	g_hash_table_insert(by_ino, &control_node.ino, &control_node);
	control_node.name = VFS_CONTROL_NAME;
	root_node.name = "";
	pthread_mutex_lock(&tree_lock);
	tree_rescan();
	pthread_mutex_unlock(&tree_lock);
	return 0;
}

void tree_shutdown(void)
{
	GHashTableIter it;
	gpointer key, val;

	if (!by_ino)
		return;
	tree_reap();
	pthread_mutex_lock(&tree_lock);
	/* Frozen files first: they hold their origins. */
	g_hash_table_iter_init(&it, by_ino);
	while (g_hash_table_iter_next(&it, &key, &val)) {
		struct vnode *n = val;

		if (n->kind != VN_FROZEN)
			continue;
		if (!n->gone)
			g_hash_table_remove(by_name, n->name);
		g_hash_table_iter_remove(&it);
		vnode_free(n);
	}
	g_hash_table_iter_init(&it, by_ino);
	while (g_hash_table_iter_next(&it, &key, &val)) {
		struct vnode *n = val;
		/* Cancel jobs first: the source stays the image of record. */
		backup_free(n->backup);
		n->backup = NULL;
		mirror_free(n->mirror);
		n->mirror = NULL;
		if (n->img) {
			int ret = image_fsync_wait(n->img);
			if (ret)
				vd_err("%s: flush at unmount failed: %s", n->img->path,
				       strerror(-ret));
		}
		if (n == &root_node) {
			image_unref(n->img);
			n->img = NULL;
		} else if (n != &control_node) {
			g_hash_table_iter_remove(&it);
			vnode_free(n);
		}
	}
	pthread_mutex_unlock(&tree_lock);
	g_hash_table_destroy(by_ino);
	g_hash_table_destroy(by_name);
	g_hash_table_destroy(failed);
	by_ino = NULL;
}

struct vnode *tree_lookup(const char *name, int *err)
{
	struct vnode *n;

	if (vfs_cfg.single) {
		*err = -ENOTDIR;
		return NULL;
	}
	pthread_mutex_lock(&tree_lock);
	if (!strcmp(name, VFS_CONTROL_NAME)) {
		n = &control_node;
		*err = 0;
	} else {
		failed_retry();
		n = tree_scan_name(name, err);
	}
	if (n)
		n->nlookup++;
	pthread_mutex_unlock(&tree_lock);
	return n;
}

struct vnode *tree_get(fuse_ino_t ino)
{
	struct vnode *n;

	pthread_mutex_lock(&tree_lock);
	n = g_hash_table_lookup(by_ino, &ino);
	pthread_mutex_unlock(&tree_lock);
	return n;
}

void tree_forget(fuse_ino_t ino, uint64_t count)
{
	struct vnode *n;

	pthread_mutex_lock(&tree_lock);
	n = g_hash_table_lookup(by_ino, &ino);
	if (n && n->ino > VFS_CONTROL_INO) {
		n->nlookup = count > n->nlookup ? 0 : n->nlookup - count;
		if (!n->nlookup && !n->opens && n->gone) {
			g_hash_table_remove(by_ino, &n->ino);
			vnode_free(n);
		}
	}
	pthread_mutex_unlock(&tree_lock);
}

void tree_open(struct vnode *n)
{
	pthread_mutex_lock(&tree_lock);
	n->opens++;
	pthread_mutex_unlock(&tree_lock);
}

void tree_release(struct vnode *n)
{
	pthread_mutex_lock(&tree_lock);
	n->opens--;
	if (!n->nlookup && !n->opens && n->gone) {
		g_hash_table_remove(by_ino, &n->ino);
		vnode_free(n);
	}
	pthread_mutex_unlock(&tree_lock);
}

static gint name_cmp(gconstpointer a, gconstpointer b)
{
	const struct vnode *x = *(struct vnode *const *)a, *y = *(struct vnode *const *)b;

	return strcmp(x->name, y->name);
}

void tree_foreach(void (*fn)(struct vnode *n, void *opaque), void *opaque, bool rescan)
{
	GPtrArray *nodes = g_ptr_array_new();
	GHashTableIter it;
	gpointer key, val;

	pthread_mutex_lock(&tree_lock);
	if (vfs_cfg.single) {
		fn(&root_node, opaque);
		pthread_mutex_unlock(&tree_lock);
		g_ptr_array_free(nodes, TRUE);
		return;
	}
	if (rescan)
		tree_rescan();
	g_hash_table_iter_init(&it, by_name);
	while (g_hash_table_iter_next(&it, &key, &val))
		g_ptr_array_add(nodes, val);
	g_ptr_array_sort(nodes, name_cmp);
	for (guint i = 0; i < nodes->len; i++)
		fn(nodes->pdata[i], opaque);
	pthread_mutex_unlock(&tree_lock);
	g_ptr_array_free(nodes, TRUE);
}

void tree_foreach_error(void (*fn)(const char *name, const char *err, void *opaque), void *opaque)
{
	GHashTableIter it;
	gpointer key, val;

	pthread_mutex_lock(&tree_lock);
	g_hash_table_iter_init(&it, failed);
	while (g_hash_table_iter_next(&it, &key, &val)) {
		struct failed_file *f = val;
		if (f->err)
			fn(key, f->err, opaque);
	}
	pthread_mutex_unlock(&tree_lock);
}

void vnode_stat(struct vnode *n, struct stat *st)
{
	struct stat host;

	memset(st, 0, sizeof(*st));
	st->st_ino = n->ino;
	st->st_nlink = 1;
	st->st_uid = getuid();
	st->st_gid = getgid();
	st->st_blksize = 4096;
	switch (n->kind) {
	case VN_DIR:
		/* The source directory's owner and permissions: what a user may
		 * not reach in SOURCE, the mount must not hand out (allow_other).
		 * If it cannot be seen, nobody but root and the owner gets in. */
		host.st_mode = 0700;
		if (stat(vfs_cfg.source, &host) == 0) {
			*st = host;
			st->st_ino = n->ino;
		}
		st->st_mode = S_IFDIR | (host.st_mode & 0777);
		st->st_nlink = 2;
		break;
	case VN_CONTROL:
		st->st_mode = S_IFREG | 0600;
		st->st_uid = vfs_cfg.owner;
		st->st_size = 0;
		break;
	case VN_FROZEN:
	case VN_IMAGE:
		if (fstat(n->img->fd, &host) == 0) {
			st->st_uid = host.st_uid;
			st->st_gid = host.st_gid;
			st->st_mode = S_IFREG | (host.st_mode & 0777);
			st->st_atim = host.st_atim;
			st->st_mtim = host.st_mtim;
			st->st_ctim = host.st_ctim;
		}
		/* What the image allocates for guest data, not the host file's
		 * metadata and preallocation: du shows the disk's real use. */
		st->st_blocks = (image_allocated(n->img) + 511) / 512;
		if (n->img->read_only || vfs_cfg.read_only || n->kind == VN_FROZEN)
			st->st_mode &= ~0222;
		st->st_size = n->img->size;
		st->st_blksize = 4096;
		break;
	}
}
