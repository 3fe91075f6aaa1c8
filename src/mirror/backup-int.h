/* Inside the backup: the job and the copy-before-write store
 * (backup-store.c), shared by backup.c (start, the hook, verbs, status) and
 * backup-copy.c (the copier thread and the job's end). */
#ifndef VDISKFS_BACKUP_INT_H
#define VDISKFS_BACKUP_INT_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#include "io/uring.h"
#include "mirror/backup.h"
#include "mirror/job-copy.h"
#include "mirror/rangelock.h"

/* The old data of the chunks guest writes changed before the copier wrote
 * them to the target: one chunk-sized slot each in an unlinked temporary
 * file (O_TMPFILE in the target's directory), and an index from chunk number
 * to slot. A slot is freed (its space punched out) once its chunk reached
 * the target, and reused first; so the file holds at most the chunks saved
 * and not yet copied, and memory one index entry per such chunk. Not
 * thread-safe: the job's lock guards it. */
struct cbw_store {
	int fd;
	uint32_t chunk;	      /* bytes per slot */
	GHashTable *index;    /* chunk number -> slot + 1 */
	uint64_t *free_slots; /* a stack of freed slots */
	size_t nfree, cap;
	uint64_t next_slot; /* slots below it have been handed out */
	uint64_t nsaved;    /* chunks in the index */
};

/* An empty store in directory dir: 0 or -errno (logged). */
int cbw_store_open(struct cbw_store *s, const char *dir, uint32_t chunk);
void cbw_store_close(struct cbw_store *s);
/* Saving chunk idx (not saved yet) takes three steps, so that the write
 * runs without the job's lock: reserve a slot (under it); write len <=
 * chunk bytes to it (without: whoever saves holds the chunk's range, and no
 * one else knows the slot); then commit it to the index, or give it back
 * if the write failed (under it). */
uint64_t cbw_store_reserve(struct cbw_store *s);
int cbw_store_write(const struct cbw_store *s, uint64_t slot, const void *buf, uint32_t len);
void cbw_store_commit(struct cbw_store *s, uint64_t idx, uint64_t slot);
void cbw_store_unreserve(struct cbw_store *s, uint64_t slot);
/* The slot of a saved chunk: true with *slot (its bytes are at
 * slot * chunk in s->fd), false if idx is not saved. */
bool cbw_store_lookup(struct cbw_store *s, uint64_t idx, uint64_t *slot);
/* Forget a saved chunk: its slot is punched and reused. */
void cbw_store_drop(struct cbw_store *s, uint64_t idx);

enum backup_phase { BP_NONE, BP_STARTING, BP_RUNNING, BP_COMPLETED, BP_FAILED, BP_CANCELLED };

struct backup_chunk;

/* One job, from start to its end; kept afterwards for its status until the
 * next start. The disk is cut in chunks of job->chunk bytes; a chunk is
 * "needed" when the target must get it (allocated data at the point in time
 * for sync=full, the bitmap's bits for sync=incremental), "done" once the
 * target has it. A chunk is saved in the store at most once: when a guest
 * write is about to change it while it is needed and not done. The range
 * lock orders the hook's saves, the guest writes and the copier's chunks:
 * whoever holds a chunk's range sees its state stable. */
struct backup_job {
	/* Fixed once the job is published in b->job. */
	struct backup *b;
	struct vd_image *src;
	char *target, *bitmap, *format;
	enum backup_sync sync;
	bool fresh; /* the target reads as zeroes until written */
	bool pull;  /* no target, no copier: the frozen view reads it */
	char *view;
	uint32_t chunk;
	uint64_t size, nchunks;
	struct rangelock rl;
	atomic_ullong speed; /* bytes/s, 0: none (backup_set_speed() stores it) */
	int efd;	     /* wakes the copier */

	/* Under b->lock. dst is the copier's to close at the end. */
	struct vd_image *dst;
	uint64_t *need, *done; /* one bit per chunk */
	uint64_t *seek;	       /* pull: the chunks SEEK_DATA finds */
	unsigned reads;	       /* pull: frozen reads in flight */
	struct cbw_store store;
	struct vd_bitmap_bits taken; /* the bitmap's bits at the point in time */
	bool took;
	uint64_t total, saved_bytes, start_ns, end_ns;
	enum backup_phase phase;
	char error[256];
	bool stop;   /* the copier issues nothing more; the hook lets writes by */
	bool paused; /* the copier issues nothing more until resumed */
	bool cancel; /* stopped by a cancel (or unmount) */
	bool detached;
	bool ending;			/* pull: an end or cancel is under way */
	unsigned inflight;		/* copier chunks and the final flush */
	struct backup_chunk *ready;	/* granted their range by another thread */
	struct mirror_hook_req *parked; /* writes held while starting (through priv) */
	vd_done_fn end_done;		/* a cancel waiting for the end */
	void *end_opaque;
	atomic_ullong copied; /* bytes of needed chunks the target has */

	/* The copier thread's own (backup-copy.c). */
	pthread_t thread;
	bool thread_started;
	struct uring_op poll;
	uint64_t pos;
	struct copy_bucket bucket;
	bool flushing;
	int flush_err;
	atomic_bool finished; /* the thread returned (or never ran) */
};

/* One per view, for its whole life. lock guards job (the pointer) and every
 * field of the job marked "under b->lock"; a leaf, like the mirror's. */
struct backup {
	pthread_mutex_t lock;
	struct mirror *m;
	struct vd_image **slot;
	struct mirror_hook hook;
	struct backup_job *job;
	bool starting;
	vd_done_fn start_done;
	void *start_opaque;
	/* Under lock: bitmap name -> the target of the last push backup made
	 * with it that completed in this mount (an incremental's default base). */
	GHashTable *last;
};

static inline bool bits_test(const uint64_t *w, uint64_t i)
{
	return w[i / 64] >> (i % 64) & 1;
}

static inline void bits_set(uint64_t *w, uint64_t i)
{
	w[i / 64] |= 1ull << (i % 64);
}

/* backup.c */
uint64_t backup_chunk_len(const struct backup_job *job, uint64_t i);
void backup_fail(struct backup_job *job, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
void backup_kick(struct backup_job *job);

/* backup-pull.c */
/* End a pull job (stop set by the caller, end_done stored): detach the hook,
 * then, once no read is in flight, give the bits back unless ok, close the
 * store and set the final phase. */
void backup_pull_finish(struct backup_job *job);
/* Start ending b's pull job: 0, or -ESRCH (none to end) with nothing done
 * (logged, unless quiet). done may be NULL. */
int backup_pull_end(struct backup *b, bool cancel, vd_done_fn done, void *opaque, bool quiet);

/* backup-copy.c */
int backup_copy_start(struct backup_job *job);
void backup_copy_join(struct backup_job *job);
/* A job that did not complete gives the bits it took back to its bitmap
 * (the next incremental backup then copies them again); logged if it
 * cannot. */
void backup_bitmap_return(struct backup_job *job);

#endif
