/* Logging: one line per event, to stderr in the foreground and to syslog once
 * daemonised, or to a file; time-stamped except in syslog and the journal.
 * Messages name the image, the offset and the structure. */
#ifndef VDISKFS_LOG_H
#define VDISKFS_LOG_H

#include <stdbool.h>

enum vd_log_level { VD_LOG_ERR, VD_LOG_WARN, VD_LOG_INFO, VD_LOG_DEBUG };

void vd_log_init(const char *prog, bool to_syslog, bool debug);
/* Lines above max are dropped (errors are always logged). */
void vd_log_set_level(enum vd_log_level max);
/* Append to a file instead of stderr or syslog (after daemonising too). */
int vd_log_to_file(const char *path);
/* Print nothing (fuzzing); the last error is still kept. */
void vd_log_quiet(bool quiet);
void vd_log(enum vd_log_level lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* The last error message logged on this thread (for control-file replies). */
const char *vd_log_last_error(void);
void vd_log_clear_error(void);

#define vd_err(...)   vd_log(VD_LOG_ERR, __VA_ARGS__)
#define vd_warn(...)  vd_log(VD_LOG_WARN, __VA_ARGS__)
#define vd_info(...)  vd_log(VD_LOG_INFO, __VA_ARGS__)
#define vd_debug(...) vd_log(VD_LOG_DEBUG, __VA_ARGS__)

#endif
