/* A job's destination image (mirror-start.c): the checks that can refuse a
 * start (absolute, outside every vdiskfs mount, no link, no file of the
 * source's chain), creation with the source's size and permissions, and the
 * open. Shared by the mirror and the backup. */
#ifndef VDISKFS_JOB_TARGET_H
#define VDISKFS_JOB_TARGET_H

#include <stdbool.h>
#include <stdint.h>

#include "mirror/mirror.h"

struct job_target {
	const char *who;	 /* "mirror", "backup": the messages' prefix */
	const char *path;	 /* as given: absolute */
	const char *format;	 /* NULL: the source's (new) or probed (existing) */
	bool existing;		 /* open an existing file instead of creating one */
	const char *exists_hint; /* appended to "target exists", or NULL */
	const char *backing;	 /* a new file's backing file and its format, or NULL */
	const char *backing_fmt;
};

/* Check, create (unless existing) and open t for writing. 0 with *dst, its
 * resolved path *target (g_free) and *fresh (created here: reads as zeroes
 * until written), or -errno with a logged message and nothing left behind. */
int job_target_open(const struct job_target *t, struct vd_image *src, const struct mirror_env *env,
		    struct vd_image **dst, char **target, bool *fresh);

#endif
