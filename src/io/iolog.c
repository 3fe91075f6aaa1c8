/* Recording of image-file writes, fallocates, truncates and syncs for the
 * power-loss simulation (tests/integration/powerloss.py builds crash states
 * from it). Armed from the environment (VDISKFS_IOLOG=FILE); disarmed it
 * costs one relaxed atomic load per operation, like the fault hook. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"
#include "io/iolog.h"

#define IOLOG_MAX_FILES 64

atomic_bool iolog_armed;
static pthread_mutex_t iolog_lock = PTHREAD_MUTEX_INITIALIZER;
static int iolog_fd = -1;      /* text records, one a line */
static int iolog_data_fd = -1; /* FILE.data: write payloads, back to back */
static uint64_t iolog_seq;     /* one counter for submissions and completions */
static uint64_t iolog_data_off;
static char *iolog_files[IOLOG_MAX_FILES]; /* file id - 1 -> path */
static unsigned iolog_nfiles;

static uint64_t iolog_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

static void iolog_line(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void iolog_line(const char *fmt, ...)
{
	char line[4200];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n <= 0)
		return;
	if ((size_t)n >= sizeof(line))
		n = sizeof(line) - 1;
	if (write(iolog_fd, line, n) < 0)
		vd_warn("VDISKFS_IOLOG: cannot write a record: %s", strerror(errno));
}

/* The file id of fd (by its path), announcing a new one with an F record.
 * Called under iolog_lock. 0: not known. */
static unsigned iolog_file_id(int fd)
{
	char link[64], path[4096];
	ssize_t n;
	unsigned i;

	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, path, sizeof(path) - 1);
	if (n < 0)
		return 0;
	path[n] = '\0';
	for (i = 0; i < iolog_nfiles; i++)
		if (!strcmp(iolog_files[i], path))
			return i + 1;
	if (iolog_nfiles == IOLOG_MAX_FILES)
		return 0;
	iolog_files[iolog_nfiles] = strdup(path);
	if (!iolog_files[iolog_nfiles])
		return 0;
	iolog_line("F %u %s\n", iolog_nfiles + 1, path);
	return ++iolog_nfiles;
}

/* Keep a write's bytes now: the buffer may be reused once it completes. */
static uint64_t iolog_keep_data(const void *buf, uint64_t len)
{
	uint64_t at = iolog_data_off;
	uint64_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(iolog_data_fd, (const char *)buf + done, len - done, at + done);
		if (n <= 0) {
			vd_warn("VDISKFS_IOLOG: cannot keep %" PRIu64 " bytes of data: %s", len,
				n < 0 ? strerror(errno) : "short write");
			break;
		}
		done += n;
	}
	iolog_data_off += len;
	return at;
}

uint64_t iolog_submit_armed(char kind, int fd, uint64_t off, uint64_t len, int arg, const void *buf)
{
	uint64_t seq, data = 0;
	unsigned fid;

	pthread_mutex_lock(&iolog_lock);
	fid = iolog_file_id(fd);
	if (kind == IOLOG_WRITE)
		data = iolog_keep_data(buf, len);
	seq = ++iolog_seq;
	iolog_line("S %" PRIu64 " %" PRIu64 " %c %u %" PRIu64 " %" PRIu64 " %d %" PRIu64 "\n", seq,
		   iolog_now_ns(), kind, fid, off, len, arg, data);
	pthread_mutex_unlock(&iolog_lock);
	return seq;
}

void iolog_complete_armed(uint64_t id, int res)
{
	pthread_mutex_lock(&iolog_lock);
	iolog_line("C %" PRIu64 " %" PRIu64 " %" PRIu64 " %d\n", ++iolog_seq, iolog_now_ns(), id,
		   res);
	pthread_mutex_unlock(&iolog_lock);
}

int iolog_set_from_env(void)
{
	const char *env = getenv("VDISKFS_IOLOG");
	char *data;
	int ret;

	if (!env || !*env)
		return 0;
	if (asprintf(&data, "%s.data", env) < 0)
		return -ENOMEM;
	iolog_fd = open(env, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
	iolog_data_fd = open(data, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (iolog_fd < 0 || iolog_data_fd < 0) {
		ret = -errno;
		vd_err("VDISKFS_IOLOG: cannot create %s or %s: %s", env, data, strerror(errno));
		goto out_close;
	}
	vd_info("I/O recording armed: %s (data in %s)", env, data);
	atomic_store(&iolog_armed, true);
	free(data);
	return 0;
out_close:
	if (iolog_fd >= 0)
		close(iolog_fd);
	if (iolog_data_fd >= 0)
		close(iolog_data_fd);
	iolog_fd = iolog_data_fd = -1;
	free(data);
	return ret;
}
