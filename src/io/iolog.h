/* I/O recording for tests: every write, fallocate, ftruncate and sync of an
 * image file, for the power-loss simulation (docs/powerloss.md). */
#ifndef VDISKFS_IO_IOLOG_H
#define VDISKFS_IO_IOLOG_H

#include <stdatomic.h>
#include <stdint.h>

enum iolog_kind {
	IOLOG_WRITE = 'w',
	IOLOG_FALLOCATE = 'a', /* arg: the fallocate mode */
	IOLOG_TRUNCATE = 't',  /* off: the new size */
	IOLOG_DATASYNC = 's',
	IOLOG_FSYNC = 'f',
};
extern atomic_bool iolog_armed;
/* Open VDISKFS_IOLOG=FILE (records) and FILE.data (write payloads). */
int iolog_set_from_env(void);
uint64_t iolog_submit_armed(char kind, int fd, uint64_t off, uint64_t len, int arg,
			    const void *buf);
/* Record an operation as it is submitted (a write's bytes are kept now);
 * returns its id for iolog_complete(), 0 when recording is off. */
static inline uint64_t iolog_submit(char kind, int fd, uint64_t off, uint64_t len, int arg,
				    const void *buf)
{
	if (!atomic_load_explicit(&iolog_armed, memory_order_relaxed))
		return 0;
	return iolog_submit_armed(kind, fd, off, len, arg, buf);
}
void iolog_complete_armed(uint64_t id, int res);
/* Record the result of operation id (bytes or -errno); nothing for id 0. */
static inline void iolog_complete(uint64_t id, int res)
{
	if (id)
		iolog_complete_armed(id, res);
}

#endif
