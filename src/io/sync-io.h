/* Synchronous I/O for metadata (headers, tables, logs): blocking calls on the
 * calling thread, each counted by the fault hook and recorded by the I/O log
 * like the engine's own I/O. Data goes through io/uring.h instead. */
#ifndef VDISKFS_IO_SYNC_IO_H
#define VDISKFS_IO_SYNC_IO_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Full transfers or -errno; reads past EOF return -EIO unless noted. */
int meta_pread(int fd, void *buf, size_t len, uint64_t off);
/* Like meta_pread, but zero-fills past end of file. */
int meta_pread_zfill(int fd, void *buf, size_t len, uint64_t off);
/* Read a table of n 64-bit entries at off (zfill: past the end of the file
 * reads as zeroes) into tab, which is zeroed already (util/table-mem.h),
 * through a bounce buffer: each non-zero entry goes through each() (which
 * converts it in place to host order, checks it, and may stop the load with
 * -errno), and only the pages of tab that hold a non-zero entry are written.
 * A table that is mostly zeroes thus takes the memory of its entries; its
 * user must not read the rest either (a read may back a page, too). */
int meta_pread_table(int fd, uint64_t *tab, uint64_t n, uint64_t off, bool zfill,
		     int (*each)(void *opaque, uint64_t idx, uint64_t *e), void *opaque);
int meta_pwrite(int fd, const void *buf, size_t len, uint64_t off);
int meta_fdatasync(int fd);
int meta_fallocate(int fd, int mode, uint64_t off, uint64_t len);
int meta_ftruncate(int fd, uint64_t size);
/* fallocate(fd, 0, off, len) to grow a file ahead of writes: recorded, but
 * not counted by the fault hook (a refusal is not an error for the caller). */
int meta_prealloc(int fd, uint64_t off, uint64_t len);

#endif
