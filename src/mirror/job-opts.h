/* The start values' parsing that the engine's jobs (mirror-opts.c) and the
 * backup (backup-opts.c) share; in mirror-opts.c. who names the job in every
 * message ("mirror", "stream", "backup"). */
#ifndef VDISKFS_JOB_OPTS_H
#define VDISKFS_JOB_OPTS_H

#include <stdint.h>

/* Log that val is refused for key, and why: returns -EINVAL. */
int job_opt_bad(const char *who, const char *key, const char *val, const char *why);
/* format=: raw, qcow2 or vhdx, into *slot (replacing what it held). */
int job_opt_format(const char *who, const char *key, const char *val, char **slot);
/* speed=: a rate (mirror_parse_speed()). */
int job_opt_speed(const char *who, const char *key, const char *val, uint64_t *out);

typedef int job_opt_set_fn(void *ctx, const char *key, const char *val);
/* Split value at commas and hand each key=value item to set(), up to the
 * first error. An item without '=' is refused as neither plain (what a bare
 * value would be, e.g. "an absolute path") nor key=value. 0 or -errno. */
int job_opts_split(const char *who, const char *plain, const char *value, job_opt_set_fn *set,
		   void *ctx);

#endif
