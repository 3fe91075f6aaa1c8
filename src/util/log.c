/* Logging to stderr, a file or syslog, with a level; remembers the calling
 * thread's last error so that xattr and control-file replies can show the
 * reason. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "util/log.h"

static bool log_syslog;
static bool log_quiet;
static int log_fd = -1; /* -o log=FILE */
static bool log_stamps; /* a time stamp before each line */
static enum vd_log_level log_max = VD_LOG_INFO;
static const char *log_prog = "vdiskfs";
static __thread char last_error[1024];

void vd_log_init(const char *prog, bool to_syslog, bool debug)
{
	log_prog = prog;
	log_syslog = to_syslog && log_fd < 0;
	if (debug)
		log_max = VD_LOG_DEBUG;
	/* systemd's journal stamps each line itself */
	log_stamps = log_fd >= 0 || !getenv("JOURNAL_STREAM");
	if (log_syslog)
		openlog(prog, LOG_PID, LOG_DAEMON);
}

void vd_log_set_level(enum vd_log_level max)
{
	log_max = max;
}

int vd_log_to_file(const char *path)
{
	int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC | O_NOCTTY, 0640);

	if (fd < 0)
		return -errno;
	if (log_fd >= 0)
		close(log_fd);
	log_fd = fd;
	log_syslog = false;
	log_stamps = true;
	return 0;
}

void vd_log_quiet(bool quiet)
{
	log_quiet = quiet;
}

void vd_log(enum vd_log_level lvl, const char *fmt, ...)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char msg[1024], stamp[64] = "";
	va_list ap;

	if (lvl > log_max && lvl != VD_LOG_ERR)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (lvl == VD_LOG_ERR)
		snprintf(last_error, sizeof(last_error), "%s", msg);
	if (log_quiet || lvl > log_max)
		return;
	if (log_syslog) {
		syslog(prio[lvl], "%s", msg);
		return;
	}
	if (log_stamps) {
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		localtime_r(&ts.tv_sec, &tm);
		size_t n = strftime(stamp, sizeof(stamp), "%Y-%m-%d %H:%M:%S", &tm);

		snprintf(stamp + n, sizeof(stamp) - n, ".%03d ", (int)(ts.tv_nsec / 1000000));
	}
	dprintf(log_fd >= 0 ? log_fd : STDERR_FILENO, "%s%s: %s\n", stamp, log_prog, msg);
}

const char *vd_log_last_error(void)
{
	return last_error;
}

void vd_log_clear_error(void)
{
	last_error[0] = '\0';
}
