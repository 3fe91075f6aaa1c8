/* The FUSE front: configuration, the node tree (single image or directory of
 * images plus the control file), the low-level operations and the event loop.
 * It knows images only through image/image.h, never a format's internals. */
#ifndef VDISKFS_VFS_H
#define VDISKFS_VFS_H

#define FUSE_USE_VERSION 34
#include <fuse_lowlevel.h>
#include <glib.h>
#include <stdbool.h>

#include "image/image.h"
#include "util/json.h"
#include "mirror/backup.h"
#include "mirror/mirror.h"

#define VFS_ROOT_INO	 1
#define VFS_CONTROL_INO	 2
#define VFS_CONTROL_NAME ".vdiskfs"

/* -o uring=: FUSE over io_uring when the kernel offers it, required, or never. */
enum furing_mode { FURING_AUTO, FURING_ON, FURING_OFF };
/* -o passthrough=: raw views passed through to the kernel (passthrough.c). */
enum pt_mode { PT_OFF, PT_AUTO, PT_ON };

struct vfs_config {
	char *source;	  /* absolute path of the image or directory */
	char *mountpoint; /* absolute path */
	bool single;	  /* SOURCE is one image; the mountpoint is the view */
	bool read_only;
	bool direct_io;
	bool allow_shrink; /* a view may be made smaller (data past the end is lost) */
	bool allow_other;
	unsigned threads;
	enum furing_mode ring;	  /* -o uring= */
	enum pt_mode passthrough; /* -o passthrough= */
	uid_t owner;		  /* who mounted: may use the control file and mirror verbs */
	unsigned inactive_wait_s; /* how long data waits for an inactive view */
	struct vd_open_opts open;
};

extern struct vfs_config vfs_cfg;

/* The request comes from root or the user who mounted. */
bool vfs_req_by_owner(fuse_req_t req);

/* VN_FROZEN: a pull backup's read-only file, the disk of its origin view at
 * the backup's point in time (vdiskfs-jobs(7)). */
enum vnode_kind { VN_DIR, VN_IMAGE, VN_CONTROL, VN_FROZEN };

/*
 * A node: the root, the control file or one view. ino, kind, name, mirror
 * (until tree_shutdown()), sdev and sino are fixed once the node exists
 * (tree.c). nlookup, opens and gone are under tree.c's tree_lock, which frees
 * the node once all three say nobody refers to it: so a node reached through
 * tree_get() or fi->fh stays valid while the kernel holds a lookup or an open
 * on it. Locks: docs/design.md "Locks".
 */
struct vnode {
	fuse_ino_t ino;
	enum vnode_kind kind;
	char *name;
	/* The view's image. Swapped by mirror completion (the mirror keeps
	 * &img as its slot: an atomic release store under the mirror's lock,
	 * while the view's data requests are parked). The I/O of data requests
	 * goes through the mirror, which loads it with acquire at its gate
	 * (while a job runs it uses the job's images instead). Everything else
	 * (bounds checks against its size, getattr, truncate, lseek, xattrs,
	 * the control file, the rescan's identity check) reads it with a plain
	 * load, without a lock or a reference: the old image stays open two
	 * seconds after the swap, meant to outlast such a request
	 * (docs/mirror.md "The old source after complete"), and closes at once
	 * only when no request can be in flight (unmount, the node freed). */
	struct vd_image *img;
	struct mirror *mirror; /* images: the view's mirror slot (mirror.h) */
	struct backup *backup; /* images: the view's backup slot (backup.h) */
	/* A pull backup's frozen file and the view it freezes, each pointing
	 * to the other while both exist (tree_lock). The frozen file holds an
	 * open count and an image reference of its origin. */
	struct vnode *frozen, *origin;
	dev_t sdev; /* the source file's identity, to notice replacement */
	ino_t sino;
	uint64_t nlookup; /* tree_lock */
	unsigned opens;	  /* tree_lock */
	bool gone;	  /* removed from the source directory (tree_lock) */
	char *last_error; /* why the last refused verb was refused (xattr.c's lock) */
	/* Passthrough (passthrough.c's pt_lock): opens the kernel serves from
	 * the image file, opens through its page cache, verbs starting that
	 * must see every write, and the backing id while pt_opens. */
	unsigned pt_opens, pt_cached, pt_blocks;
	int pt_id;
	bool pt_warned; /* the kernel refused the image once: said in the log */
};

/* What fi->fh holds for a view's open: the node, with two flag bits. */
#define VFS_FH_PT     1u /* the open passes through (passthrough.c) */
#define VFS_FH_CACHED 2u /* the open uses the kernel's page cache */
static inline struct vnode *vfs_fh_node(uint64_t fh)
{
	return (struct vnode *)(uintptr_t)(fh & ~(uint64_t)(VFS_FH_PT | VFS_FH_CACHED));
}

/* ---- tree.c ---- */
int tree_init(void);	  /* open the single image, or scan the directory */
void tree_shutdown(void); /* flush and close every image */
/* Look a name up in the root directory (rescanning it); takes a lookup ref. */
struct vnode *tree_lookup(const char *name, int *err);
struct vnode *tree_get(fuse_ino_t ino);
void tree_forget(fuse_ino_t ino, uint64_t n);
void tree_open(struct vnode *n);
void tree_release(struct vnode *n);
/* Rescan the source directory; call fn for each visible image in name order. */
void tree_foreach(void (*fn)(struct vnode *n, void *opaque), void *opaque, bool rescan);
/* Images that failed to open: fn(name, error message). */
void tree_foreach_error(void (*fn)(const char *name, const char *err, void *opaque), void *opaque);
void vnode_stat(struct vnode *n, struct stat *st);
/* A directory mount's view completed a mirror: SOURCE/name becomes the new
 * image, so that the name serves it after a remount too (vdiskfs-mirror(7),
 * DIRECTORY MOUNTS). Logs what it did; nothing for a single-image mount. */
void tree_mirror_completed(struct vnode *n);
/* A pull backup's frozen file NAME in the root of a directory mount:
 * check that the name is free (0, -EINVAL in a single-image mount or for a
 * hidden name, -EEXIST, logged), show it for origin's backup, and take it
 * away again (nothing if there is none). */
int tree_frozen_check(const char *name);
int tree_frozen_add(struct vnode *origin, const char *name);
void tree_frozen_remove(struct vnode *origin);
/* Free the views whose last reference went on a mirror's own thread (the
 * handover thread calls it; tree_shutdown() too). */
void tree_reap(void);

/* ---- vfs.c ---- */
extern const struct fuse_lowlevel_ops vfs_ops;

/* ---- xattr.c ---- */
void xattr_get(fuse_req_t req, struct vnode *n, const char *name, size_t size);
void xattr_list(fuse_req_t req, struct vnode *n, size_t size);
void xattr_set(fuse_req_t req, struct vnode *n, const char *name, const char *value, size_t size,
	       int flags);
/* Everything about one image as a JSON object (used by .info and the control file). */
void view_info_json(struct vnode *n, struct json_writer *j, bool mirror);
/* After a verb on the view: remember why it was refused (err < 0: the
 * thread's last logged error, or strerror), or forget it (err == 0). */
void vnode_note_verb(struct vnode *n, int err);
/* Start a job of the view with this mount's settings: 0 or -errno (logged). */
int xattr_job_start(struct vnode *n, enum job_type type, const struct mirror_opts *o);
/* Complete the view's job (job_complete()), and in a directory mount make
 * SOURCE/name the new image once the view moved (tree_mirror_completed()). */
void xattr_job_complete(struct vnode *n, enum job_type type, vd_done_fn done, void *opaque);
/* A live snapshot of the view (snapshot_take()); single-image mounts only. */
void xattr_snapshot(struct vnode *n, const char *path, vd_done_fn done, void *opaque);
/* A view's asynchronous verb in progress: who to answer once it is done. */
struct vnode_call {
	struct vnode *n;
	struct vd_image *before; /* the view's image when the verb began */
	vd_done_fn done;
	void *opaque;
};
/* NULL (with done(opaque, -ENOMEM) called) when out of memory. */
struct vnode_call *vnode_call_new(struct vnode *n, vd_done_fn done, void *opaque);
/* The same with the view's passthrough blocked first (pt_block(n, verb));
 * NULL with done called (the error, or -ENOMEM) and nothing blocked. The
 * verb unblocks once it is done. */
struct vnode_call *vnode_call_blocked(struct vnode *n, const char *verb, vd_done_fn done,
				      void *opaque);
/* The verbs that adjust a running job: "pause", "resume", or "speed" with
 * value a rate (like speed= of start). 0 or -errno, logged. */
int xattr_job_adjust(struct vnode *n, enum job_type type, const char *verb, const char *value);
/* The same for the view's running push backup. */
int xattr_backup_adjust(struct vnode *n, const char *verb, const char *value);
/* A command on a persistent bitmap of the view's image (image_bitmap()), the
 * mount's read-only state checked first. 0 or -errno, logged. */
int xattr_bitmap(struct vnode *n, enum vd_bitmap_cmd cmd, const char *name, uint32_t gran);
/* Start a backup (options checked first); done(opaque, err) once its point
 * in time is fixed or it was refused (logged). */
void xattr_backup_start(struct vnode *n, const struct backup_opts *o, vd_done_fn done,
			void *opaque);
/* End (end) or cancel the view's backup; a pull backup's frozen file goes
 * once it is done. */
void xattr_backup_stop(struct vnode *n, bool end, vd_done_fn done, void *opaque);

/* ---- control-parse.c ---- */
enum control_verb {
	CONTROL_NONE,
	CONTROL_STATUS,
	CONTROL_JOB_START, /* the job verbs: TYPE-VERB, cmd->job the type */
	CONTROL_JOB_COMPLETE,
	CONTROL_JOB_CANCEL,
	CONTROL_JOB_STATUS,
	CONTROL_JOB_PAUSE,
	CONTROL_JOB_RESUME,
	CONTROL_JOB_SPEED,
	CONTROL_ACTIVATE,
	CONTROL_INACTIVATE,
	CONTROL_BITMAP, /* bitmap-add, -remove, -enable, -disable, -clear */
	CONTROL_BACKUP_START,
	CONTROL_BACKUP_CANCEL,
	CONTROL_BACKUP_END,
	CONTROL_BACKUP_STATUS,
	CONTROL_BACKUP_PAUSE,
	CONTROL_BACKUP_RESUME,
	CONTROL_BACKUP_SPEED,
};

struct control_cmd {
	enum control_verb verb;
	enum job_type job;	  /* the job verbs' kind of job */
	char *name;		  /* the view: every verb but status */
	struct mirror_opts opts;  /* *-start of mirror, stream, commit */
	struct backup_opts bopts; /* backup-start only */
	char *arg;		  /* *-speed: the rate; bitmap-*: the bitmap */
	enum vd_bitmap_cmd bitmap;
	uint32_t granularity; /* bitmap-add: bytes, 0 for the default */
};

/* Parse one command line as written to the control file (len bytes, a
 * trailing newline allowed). 0 with cmd filled (free with control_cmd_free),
 * or -EINVAL with cmd empty and "error: REASON\n" appended to err. Needs no
 * mount: it looks at no node and no image. */
int control_parse(const char *buf, size_t len, struct control_cmd *cmd, GString *err);
void control_cmd_free(struct control_cmd *cmd);
/* granularity=SIZE (K/M/G suffixes) into *gran: 0, or -EINVAL logged. */
int bitmap_granularity_parse(const char *word, uint32_t *gran);
/* The value of user.vdiskfs.bitmap.add: NAME, or name=NAME,granularity=SIZE
 * (a value that starts with "name=" is options). 0 with *name (g_free) and
 * *gran (0: the default), or -EINVAL logged. */
int bitmap_add_parse(const char *value, char **name, uint32_t *gran);
/* Append "error: " and the last logged error (or strerror(-err)) to out. */
void control_error(GString *out, int err);

/* ---- control.c ---- */
struct control_fh {
	GString *text; /* what a read returns: status JSON or the last command's reply */
	size_t cursor; /* where the next sequential read continues */
	bool fresh;    /* a command just ran: the next read starts its reply */
};
void control_open(fuse_req_t req, struct fuse_file_info *fi);
void control_read(fuse_req_t req, size_t size, off_t off, struct fuse_file_info *fi);
void control_write(fuse_req_t req, const char *buf, size_t size, struct fuse_file_info *fi);
void control_release(fuse_req_t req, struct fuse_file_info *fi);

/* ---- fuse-uring.c: FUSE over io_uring (see the file's header) ---- */
/* Before the first request: hook libfuse's I/O so INIT can ask for the ring. */
int furing_setup(struct fuse_session *se, enum furing_mode mode);
/* Before mounting: -EOPNOTSUPP (logged) if mode is FURING_ON and the kernel's
 * enable_uring switch is off. */
int furing_precheck(enum furing_mode mode);
/* After INIT: lay out the ring for nthreads loops (-EOPNOTSUPP if FURING_ON and
 * the kernel did not offer it). */
int furing_prepare(unsigned nthreads);
bool furing_active(void);
/* On loop thread idx, whose io_uring came from uring_thread_init_cmd(). */
void furing_thread_start(unsigned idx);
/* The current request's ring payload buffer (page-aligned, 1 MiB, valid until
 * the reply), or NULL when it came through /dev/fuse. */
void *furing_req_payload(void);

/* ---- passthrough.c: FUSE passthrough for raw views (see the file's header) ---- */
/* INIT, from fuse-uring.c's hooks: what the kernel offered, and our reply
 * amended to ask for passthrough (with -o passthrough=auto|on). */
void pt_init_request(uint32_t flags, uint32_t flags2);
void pt_init_reply(uint32_t *flags, uint32_t *flags2, uint32_t *max_stack_depth);
/* After INIT: did the kernel grant it? -EOPNOTSUPP (logged) if not and
 * -o passthrough=on; otherwise 0, the outcome logged. */
int pt_prepare(int fuse_fd);
bool pt_active(void);
/* An open of view n (fi->fh set to n, direct_io and keep_cache chosen): the
 * backing id to answer with FOPEN_PASSTHROUGH, or 0 for an open served by
 * the daemon. Sets fi->fh's VFS_FH_* bits; pt_release() takes them back. */
int pt_open(struct vnode *n, struct fuse_file_info *fi);
void pt_release(struct vnode *n, uint64_t fh);
unsigned pt_opens(struct vnode *n);
/* The image file grew by passthrough writes past its end: the view follows. */
void pt_sync_size(struct vnode *n);
/* Before a verb that must see every write of the view (mirror start,
 * inactivate): 0 with new opens kept from passing through until
 * pt_unblock(), or -EBUSY (logged, naming verb) while passthrough opens exist. */
int pt_block(struct vnode *n, const char *verb);
void pt_unblock(struct vnode *n);

/* ---- handover.c: inactive and active views (hand-over between hosts) ---- */
/* Hold the view's requests, then write the image back, leave it clean and
 * release its locks; done(opaque, err) then (perhaps at once). A failure
 * leaves the view active. */
void handover_inactivate(struct vnode *n, vd_done_fn done, void *opaque);
/* Take the locks and read the image anew, then let the held requests go on.
 * 0, or -errno (logged) with the view still inactive. */
int handover_activate(struct vnode *n);
/* A new view whose image was opened inactive starts holding its requests. */
void handover_view_new(struct vnode *n);
/* The thread that fails requests held longer than inactive_wait (and all of
 * them once the loops stop). */
int handover_start(void);
void handover_stop(void);

/* ---- notify.c ---- */
/* Start the thread that tells the kernel about vanished names (directory
 * mounts, once mounted). 0 or -errno. */
int notify_start(struct fuse_session *se);
/* Drop the kernel's cached pages and attributes of ino (never blocks). */
void notify_inval(fuse_ino_t ino);
/* The view ino, known to the kernel as name in the root, is gone (never blocks). */
void notify_gone(fuse_ino_t ino, const char *name);
/* Stop the thread; false if a notice is stuck in the kernel (then the session
 * must not be destroyed under it). */
bool notify_stop(void);

/* ---- loop.c ---- */
/* Run nthreads event loops (each its own io_uring, /dev/fuse polled through
 * it) until the session ends or loop_stop(); returns once all requests in
 * flight have been answered. */
int loop_run(struct fuse_session *se, unsigned nthreads);
void loop_stop(void);
/* loop_stop() was called: no new request is taken. */
bool loop_stopping(void);
/* Keep the buffer the current request arrived in until the caller frees it
 * with free() (WRITE payloads answered later). */
void *loop_take_buffer(void);
/* Count requests answered asynchronously, so shutdown can wait for them. */
void loop_req_begin(void);
void loop_req_end(void);

#endif
