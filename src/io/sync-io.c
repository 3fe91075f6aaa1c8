/* Synchronous I/O for metadata (headers, tables, logs): full transfers with
 * EINTR and short-transfer handling, counted by the fault hook and recorded
 * by the I/O log like the io_uring data path. */
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/fault.h"
#include "io/iolog.h"
#include "io/sync-io.h"

static int pread_full(int fd, void *buf, size_t len, uint64_t off, bool zfill)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pread(fd, (char *)buf + done, len - done, off + done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0) {
			if (!zfill)
				return -EIO;
			memset((char *)buf + done, 0, len - done);
			break;
		}
		done += n;
	}
	return 0;
}

static int meta_pread_common(int fd, void *buf, size_t len, uint64_t off, bool zfill)
{
	int err = fault_check(FAULT_READ, fd);

	return err ? err : pread_full(fd, buf, len, off, zfill);
}

int meta_pread(int fd, void *buf, size_t len, uint64_t off)
{
	return meta_pread_common(fd, buf, len, off, false);
}

int meta_pread_zfill(int fd, void *buf, size_t len, uint64_t off)
{
	return meta_pread_common(fd, buf, len, off, true);
}

#define TABLE_CHUNK 8192u /* entries */
#define TABLE_PAGE  4096u

int meta_pread_table(int fd, uint64_t *tab, uint64_t n, uint64_t off, bool zfill,
		     int (*each)(void *opaque, uint64_t idx, uint64_t *e), void *opaque)
{
	uint64_t *b, done = 0;
	int ret = fault_check(FAULT_READ, fd); /* one read, as for meta_pread */

	if (ret)
		return ret;
	b = malloc(TABLE_CHUNK * 8);
	if (!b)
		return -ENOMEM;
	while (done < n && !ret) {
		uint64_t cnt = n - done < TABLE_CHUNK ? n - done : TABLE_CHUNK, i = 0;

		ret = pread_full(fd, b, cnt * 8, off + done * 8, zfill);
		while (!ret && i < cnt) {
			/* the entries up to where tab crosses into its next page */
			uintptr_t a = (uintptr_t)(tab + done + i);
			uint64_t k = i + (TABLE_PAGE - (a & (TABLE_PAGE - 1))) / 8, j;
			bool data = false;

			if (k > cnt)
				k = cnt;
			for (j = i; j < k && !ret; j++) {
				if (!b[j])
					continue;
				data = true;
				ret = each(opaque, done + j, &b[j]);
			}
			if (data && !ret)
				memcpy(tab + done + i, b + i, (k - i) * 8);
			i = k;
		}
		done += cnt;
	}
	free(b);
	return ret;
}

static int meta_pwrite_all(int fd, const void *buf, size_t len, uint64_t off)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = pwrite(fd, (const char *)buf + done, len - done, off + done);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (n == 0)
			return -EIO;
		done += n;
	}
	return 0;
}

/* Each helper below: the fault hook decides first (an injected failure is
 * recorded as a failed operation), then the recorder, then the call. */
int meta_pwrite(int fd, const void *buf, size_t len, uint64_t off)
{
	int err = fault_check(FAULT_WRITE, fd);
	uint64_t id = iolog_submit(IOLOG_WRITE, fd, off, len, 0, buf);

	if (!err)
		err = meta_pwrite_all(fd, buf, len, off);
	iolog_complete(id, err);
	return err;
}

int meta_fdatasync(int fd)
{
	int err = fault_check(FAULT_SYNC, fd);
	uint64_t id = iolog_submit(IOLOG_DATASYNC, fd, 0, 0, 0, NULL);

	if (!err)
		err = fdatasync(fd) < 0 ? -errno : 0;
	iolog_complete(id, err);
	return err;
}

static int meta_fallocate_rec(int fd, int mode, uint64_t off, uint64_t len)
{
	uint64_t id = iolog_submit(IOLOG_FALLOCATE, fd, off, len, mode, NULL);
	int err = fallocate(fd, mode, off, len) < 0 ? -errno : 0;

	iolog_complete(id, err);
	return err;
}

int meta_fallocate(int fd, int mode, uint64_t off, uint64_t len)
{
	int err = fault_check(FAULT_WRITE, fd);

	if (err) {
		iolog_complete(iolog_submit(IOLOG_FALLOCATE, fd, off, len, mode, NULL), err);
		return err;
	}
	return meta_fallocate_rec(fd, mode, off, len);
}

int meta_prealloc(int fd, uint64_t off, uint64_t len)
{
	return meta_fallocate_rec(fd, 0, off, len);
}

int meta_ftruncate(int fd, uint64_t size)
{
	int err = fault_check(FAULT_WRITE, fd);
	uint64_t id = iolog_submit(IOLOG_TRUNCATE, fd, size, 0, 0, NULL);

	if (!err)
		err = ftruncate(fd, size) < 0 ? -errno : 0;
	iolog_complete(id, err);
	return err;
}
