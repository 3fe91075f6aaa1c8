/* Logging to stderr or syslog; remembers the calling thread's last error so
 * that xattr and control-file replies can show the reason. */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>

#include "log.h"

static bool log_syslog;
static bool log_debug;
static bool log_quiet;
static const char *log_prog = "vdiskfs";
static __thread char last_error[1024];

void vd_log_init(const char *prog, bool to_syslog, bool debug)
{
	log_prog = prog;
	log_syslog = to_syslog;
	log_debug = debug;
	if (to_syslog)
		openlog(prog, LOG_PID, LOG_DAEMON);
}

void vd_log_quiet(bool quiet)
{
	log_quiet = quiet;
}

void vd_log(enum vd_log_level lvl, const char *fmt, ...)
{
	static const int prio[] = {LOG_ERR, LOG_WARNING, LOG_INFO, LOG_DEBUG};
	char msg[1024];
	va_list ap;

	if (lvl == VD_LOG_DEBUG && !log_debug)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (lvl == VD_LOG_ERR)
		snprintf(last_error, sizeof(last_error), "%s", msg);
	if (log_quiet)
		return;
	if (log_syslog)
		syslog(prio[lvl], "%s", msg);
	else
		fprintf(stderr, "%s: %s\n", log_prog, msg);
}

const char *vd_log_last_error(void)
{
	return last_error;
}

void vd_log_clear_error(void)
{
	last_error[0] = '\0';
}
