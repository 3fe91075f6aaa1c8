/* The raw driver: guest offset = host offset. Allocation comes from the host
 * file system (SEEK_DATA/SEEK_HOLE), discard punches holes, zeroing uses
 * FALLOC_FL_ZERO_RANGE. */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "image/format.h"
#include "util/json.h"
#include "util/log.h"
#include "io/sync-io.h"

static int raw_probe(const uint8_t *buf, size_t len, const char *path)
{
	const char *dot = strrchr(path, '.');

	/* Raw images have no magic: only the name says so. */
	if (dot && (!strcmp(dot, ".raw") || !strcmp(dot, ".img")))
		return 1;
	return 0;
}

static int raw_open(struct vd_image *img)
{
	struct stat st;

	if (fstat(img->fd, &st) < 0)
		return -errno;
	img->size = st.st_size;
	img->cluster_size = 0;
	img->zero_align = 1;
	return 0;
}

static void raw_close(struct vd_image *img)
{
}

static int raw_map(struct vd_image *img, uint64_t off, uint64_t len, unsigned flags,
		   struct vd_map *m)
{
	return vd_map_add_data(m, off, len, img->fd, off);
}

static int raw_block_status(struct vd_image *img, uint64_t off, uint64_t len, uint64_t *pnum,
			    enum vd_bs *status)
{
	off_t data = lseek(img->fd, off, SEEK_DATA);
	off_t hole;

	if (data < 0 && errno == ENXIO) {
		/* Nothing but a hole up to the end of the file. */
		*status = VD_BS_ZERO;
		*pnum = len;
		return 0;
	}
	if (data < 0) {
		*status = VD_BS_DATA;
		*pnum = len;
		return 0;
	}
	if ((uint64_t)data > off) {
		*status = VD_BS_ZERO;
		*pnum = (uint64_t)data - off < len ? (uint64_t)data - off : len;
		return 0;
	}
	hole = lseek(img->fd, off, SEEK_HOLE);
	*status = VD_BS_DATA;
	if (hole < 0 || (uint64_t)hole <= off || (uint64_t)hole - off > len)
		*pnum = len;
	else
		*pnum = (uint64_t)hole - off;
	return 0;
}

static int raw_discard(struct vd_image *img, uint64_t off, uint64_t len)
{
	return meta_fallocate(img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, off, len);
}

static int raw_write_zeroes(struct vd_image *img, uint64_t off, uint64_t len)
{
	int ret = meta_fallocate(img->fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, off, len);

	if (ret == -EOPNOTSUPP)
		ret = raw_discard(img, off, len);
	return ret == -EOPNOTSUPP ? -ENOTSUP : ret;
}

static int raw_truncate(struct vd_image *img, uint64_t size)
{
	int ret = meta_ftruncate(img->fd, size);

	if (!ret)
		img->size = size;
	return ret;
}

static int raw_create(const char *path, const struct vd_create_opts *o)
{
	int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, o->mode ? o->mode : 0644);
	int ret;

	if (fd < 0)
		return -errno;
	ret = meta_ftruncate(fd, o->size);
	close(fd);
	if (ret)
		unlink(path);
	return ret;
}

const struct vd_format vd_format_raw = {
	.name = "raw",
	.probe = raw_probe,
	.open = raw_open,
	.close = raw_close,
	.map = raw_map,
	.block_status = raw_block_status,
	.discard = raw_discard,
	.write_zeroes = raw_write_zeroes,
	.truncate = raw_truncate,
	.create = raw_create,
};
