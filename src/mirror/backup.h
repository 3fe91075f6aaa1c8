/* Point-in-time push backup of a view: the target receives the disk as it
 * was when the job started while the guest keeps writing. A guest-write hook
 * (mirror.h) saves the old data of every range a write is about to change
 * into a copy-before-write store of the job's own before the write goes on;
 * a copier thread walks the disk and writes each chunk from that store where
 * it was saved, else from the image. vdiskfs-jobs(7) "BACKUP". */
#ifndef VDISKFS_BACKUP_H
#define VDISKFS_BACKUP_H

#include <glib.h>
#include <stdbool.h>
#include <stdint.h>

#include "image/image.h"
#include "mirror/mirror.h"
#include "util/json.h"

/* ---- options (backup-opts.c) ---- */
enum backup_sync { BACKUP_FULL, BACKUP_INCREMENTAL };

struct backup_opts {
	char *target;	       /* absolute path of a new file */
	char *format;	       /* "qcow2", "raw", "vhdx"; NULL: the source's (full), qcow2 */
	enum backup_sync sync; /* full: the allocated data; incremental: the bitmap's */
	char *bitmap;	       /* full: cleared at start; incremental: what to copy */
	char *base;	       /* incremental: the target's backing file (absolute) */
	uint64_t speed;	       /* bytes/s of copied data; 0 = unlimited */
	char *view;	       /* a pull backup: the frozen file's name instead of a target */
};

void backup_opts_init(struct backup_opts *o);
void backup_opts_free(struct backup_opts *o);
/* One key=value option. 0 or -EINVAL with a logged message naming it. */
int backup_opts_set(struct backup_opts *o, const char *key, const char *val);
/* "target=PATH,format=...,sync=...,bitmap=...,base=...,speed=..." (or a plain
 * absolute path), checked as a whole: 0 or -EINVAL, logged. */
int backup_opts_parse(struct backup_opts *o, const char *value);
/* The checks that need every option (incremental wants bitmap= and base=,
 * a qcow2 target). 0 or -EINVAL, logged. */
int backup_opts_check(const struct backup_opts *o);

/* ---- the per-view backup (backup.c) ---- */
struct backup;

/* m is the view's gate (the hook attaches there), slot where the view keeps
 * its image. NULL without memory. */
struct backup *backup_new(struct mirror *m, struct vd_image **slot);
/* Cancel a job synchronously (unmount, view removed) and free: the bitmap
 * gets its bits back. Call before mirror_free() of the same view. */
void backup_free(struct backup *b);

/* Start: done(opaque, 0) once the job's point in time is fixed (the hook is
 * in place, the bitmap taken), or done(opaque, -errno) with a logged reason
 * and nothing changed (perhaps before the call returns). */
void backup_start(struct backup *b, const struct backup_opts *o, const struct mirror_env *env,
		  vd_done_fn done, void *opaque);
/* Cancel a running job: done(opaque, 0) once it ended (the target closed,
 * the bitmap's bits merged back), or -ESRCH (no job running), logged. */
void backup_cancel(struct backup *b, vd_done_fn done, void *opaque);
/* Pause or resume the copy of a running push backup (guest writes go on,
 * through the copy-before-write), or change its speed limit (bytes/s, 0:
 * none). 0, or -ESRCH (none running), -EINVAL (a pull backup), logged. */
int backup_pause(struct backup *b, bool pause);
int backup_set_speed(struct backup *b, uint64_t speed);
/* Is a job starting or running (a mirror, a truncate must wait)? */
bool backup_busy(struct backup *b);
/* Is the calling thread the copier of b's job (backup_free() must then run
 * on another thread)? */
bool backup_on_own_thread(struct backup *b);

/* ---- pull backups (backup-pull.c) ----
 * A job started with view=NAME has no target and no copier: the disk at its
 * point in time is read through backup_read() (the frozen file NAME the
 * FUSE layer shows), with the same copy-before-write hook. */
bool backup_is_pull(struct backup *b);
/* Read [off, off+len) of the disk at the point in time; done(opaque, 0), or
 * -EIO once the job failed or ended. */
void backup_read(struct backup *b, void *buf, uint64_t len, uint64_t off, vd_done_fn done,
		 void *opaque);
/* SEEK_DATA / SEEK_HOLE over what the job hands out: the allocated data at
 * the point in time (sync=full), the bitmap's changes (incremental). 0 with
 * *pos, -ENXIO (no data from off on, or off past the end), -EIO (ended). */
int backup_seek(struct backup *b, uint64_t off, int whence, uint64_t *pos);
/* End a pull job as done: the bitmap stays cleared (the client has the
 * data). done(opaque, 0) once no read or write is inside the job any more;
 * -ESRCH (no pull job), logged. backup_cancel() ends one as failed: the
 * bitmap gets its bits back. */
void backup_end(struct backup *b, vd_done_fn done, void *opaque);

/* "phase=... target=... sync=... bitmap=... copied=N total=N percent=N
 * rate=N eta=N view=... error=..." (phase=none before the first job). */
void backup_status_line(struct backup *b, GString *s);
/* The same as members of the current JSON object. */
void backup_status_json(struct backup *b, struct json_writer *j);
/* The job (or the last one) as one JSON object, with "type": "backup",
 * inside an open array, as job_any_json(); false (nothing written) when
 * there is none. */
bool backup_any_json(struct backup *b, struct json_writer *j);

#endif
