/* What the two copiers share, the job engine's (mirror-copy.c) and the
 * backup's (backup-copy.c): the speed limit's token bucket, the test for a
 * chunk of zeroes, the wake-up of a copier thread, and the progress members
 * of their JSON status (job-copy.c). */
#ifndef VDISKFS_JOB_COPY_H
#define VDISKFS_JOB_COPY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The speed limit: bytes that may go now (negative: owed), refilled at the
 * limit's rate. The copier thread's own. */
struct copy_bucket {
	double tokens;
	uint64_t last_ns; /* the last refill */
};

/* Start empty, now (when the copier thread starts). */
void copy_bucket_init(struct copy_bucket *b);
/* Refill at speed bytes/s, holding at most burst bytes: 0 if a chunk may go
 * now, else ms to wait. Without a limit (speed 0) the bucket stays empty, so
 * that a limit set later starts from nothing. */
int copy_bucket_wait(struct copy_bucket *b, uint64_t speed, uint64_t burst);
/* A chunk of len bytes went: it counts against the limit, if there is one. */
void copy_bucket_take(struct copy_bucket *b, uint64_t speed, uint64_t len);

/* Does buf hold only zero bytes? */
bool buf_is_zero(const void *buf, size_t len);

struct json_writer;

/* A job's progress as members of the current JSON object: copied, total,
 * percent, rate (bytes/s) and eta (seconds; null while unknown, eta < 0). */
void job_progress_json(struct json_writer *j, uint64_t copied, uint64_t total, uint64_t percent,
		       uint64_t rate, int64_t eta);

/* Wake the copier thread polling efd (-1: none yet; a wake-up pending
 * already is enough). who names the job in the warning if it fails. */
void copy_kick(int efd, const char *who);

#endif
