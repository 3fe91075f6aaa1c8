/* Fault injection for tests: the engine and the metadata helpers call
 * fault_check() once per I/O, so any one of them can be made to fail. */
#ifndef VDISKFS_IO_FAULT_H
#define VDISKFS_IO_FAULT_H

#include <stdbool.h>

enum fault_kind {
	FAULT_READ = 1 << 0,
	FAULT_WRITE = 1 << 1,
	FAULT_SYNC = 1 << 2,
	FAULT_ALL = 7,
};
/* Count I/Os of the given kinds from now on; fail the nth (1-based) and the
 * count-1 after it (count 0 = every one from nth on). nth 0 disarms. */
void fault_set(unsigned long nth, int err, unsigned kinds, unsigned long count);
/* Count only I/O on files whose path contains substr (NULL: every file). */
void fault_set_path(const char *substr);
/* Parse VDISKFS_FAULT="nth=N,errno=EIO|ENOSPC|number,kinds=rws,count=C,path=SUBSTR". */
int fault_set_from_env(void);
/* Called once per I/O on fd by the engine and the sync helpers: 0 or -errno to inject. */
int fault_check(unsigned kind, int fd);
/* I/Os counted since fault_set (for sweeps). */
unsigned long fault_counted(void);

#endif
