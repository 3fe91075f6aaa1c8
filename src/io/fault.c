/* Fault injection for tests: fail the Nth counted I/O (and optionally the
 * ones after it) with a chosen errno. Armed from the environment
 * (VDISKFS_FAULT) or by unit tests; costs one relaxed atomic when disarmed. */
#include <errno.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "io/fault.h"

static atomic_ulong fault_nth;	 /* 0 = disarmed */
static atomic_ulong fault_seen;	 /* I/Os counted */
static atomic_ulong fault_count; /* how many to fail from nth on; 0 = all */
static atomic_int fault_err;
static atomic_uint fault_kinds;
static char *fault_path; /* set before arming, read while armed */

void fault_set(unsigned long nth, int err, unsigned kinds, unsigned long count)
{
	atomic_store(&fault_nth, 0);
	atomic_store(&fault_seen, 0);
	atomic_store(&fault_err, err > 0 ? err : EIO);
	atomic_store(&fault_kinds, kinds ? kinds : FAULT_ALL);
	atomic_store(&fault_count, count);
	atomic_store(&fault_nth, nth);
}

void fault_set_path(const char *substr)
{
	free(fault_path);
	fault_path = substr ? strdup(substr) : NULL;
}

/* Is fd a file whose path contains the filter? */
static bool fault_path_matches(int fd)
{
	char link[64], target[4096];
	ssize_t n;

	if (!fault_path)
		return true;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, target, sizeof(target) - 1);
	if (n < 0)
		return false;
	target[n] = '\0';
	return strstr(target, fault_path) != NULL;
}

unsigned long fault_counted(void)
{
	return atomic_load(&fault_seen);
}

int fault_check(unsigned kind, int fd)
{
	unsigned long nth = atomic_load_explicit(&fault_nth, memory_order_relaxed);
	unsigned long n, count;

	if (!nth || !(atomic_load(&fault_kinds) & kind) || !fault_path_matches(fd))
		return 0;
	n = atomic_fetch_add(&fault_seen, 1) + 1;
	count = atomic_load(&fault_count);
	if (n < nth || (count && n >= nth + count))
		return 0;
	return -atomic_load(&fault_err);
}

/* A whole decimal number, or false. */
static bool fault_parse_num(const char *v, unsigned long *out)
{
	char *end;

	if (!*v)
		return false;
	errno = 0;
	*out = strtoul(v, &end, 10);
	return !errno && !*end;
}

static int fault_parse_errno(const char *v)
{
	unsigned long n;

	if (!strcmp(v, "EIO"))
		return EIO;
	if (!strcmp(v, "ENOSPC"))
		return ENOSPC;
	if (!strcmp(v, "EDQUOT"))
		return EDQUOT;
	if (!strcmp(v, "EROFS"))
		return EROFS;
	return fault_parse_num(v, &n) && n > 0 && n < 4096 ? (int)n : -1;
}

int fault_set_from_env(void)
{
	const char *env = getenv("VDISKFS_FAULT");
	unsigned long nth = 0, count = 1;
	unsigned kinds = 0;
	int err = EIO;
	char *s, *tok, *save = NULL;

	if (!env || !*env)
		return 0;
	s = strdup(env);
	if (!s)
		return -ENOMEM;
	for (tok = strtok_r(s, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		char *eq = strchr(tok, '=');
		if (!eq)
			goto bad;
		*eq++ = '\0';
		if (!strcmp(tok, "nth")) {
			if (!fault_parse_num(eq, &nth) || !nth)
				goto bad;
		} else if (!strcmp(tok, "errno")) {
			err = fault_parse_errno(eq);
			if (err < 0)
				goto bad;
		} else if (!strcmp(tok, "count")) {
			if (!fault_parse_num(eq, &count))
				goto bad;
		} else if (!strcmp(tok, "path")) {
			if (!*eq)
				goto bad;
			fault_set_path(eq);
		} else if (!strcmp(tok, "kinds")) {
			for (const char *k = eq; *k; k++)
				kinds |= *k == 'r'   ? FAULT_READ
					 : *k == 'w' ? FAULT_WRITE
					 : *k == 's' ? FAULT_SYNC
						     : 0;
		} else {
			goto bad;
		}
	}
	free(s);
	if (!nth)
		goto bad_nofree;
	vd_info("fault injection armed: I/O #%lu fails with %s (count %lu)", nth, strerror(err),
		count);
	fault_set(nth, err, kinds, count);
	return 0;
bad:
	free(s);
bad_nofree:
	vd_err("VDISKFS_FAULT: cannot parse \"%s\" (want nth=N,errno=EIO,kinds=rws,count=C,"
	       "path=SUBSTR)",
	       env);
	return -EINVAL;
}
