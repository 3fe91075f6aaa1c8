/* TEMPORARY (lead's stand-in until the image-chain branch lands). */
#include <errno.h>

#include <sys/stat.h>
#include <unistd.h>

#include "image/image.h"

int image_block_status_above(struct vd_image *top, struct vd_image *base, uint64_t off,
			     uint64_t len, uint64_t *pnum, enum vd_bs *status)
{
	struct vd_image *img = top;
	int ret;

	for (;;) {
		if (off >= img->size) {
			*pnum = len;
			*status = VD_BS_ZERO;
			return 0;
		}
		if (len > img->size - off)
			len = img->size - off;
		pthread_rwlock_rdlock(&img->active_lock);
		ret = img->fmt->block_status(img, off, len, pnum, status);
		pthread_rwlock_unlock(&img->active_lock);
		if (ret || *status != VD_BS_UNALLOC)
			return ret;
		if (!img->backing || img->backing == base)
			return 0;
		len = *pnum;
		img = img->backing;
	}
}

int image_set_backing(struct vd_image *img, struct vd_image *new_backing)
{
	(void)img;
	(void)new_backing;
	return -ENOTSUP;
}

int image_reopen(struct vd_image *img, bool writable)
{
	(void)img;
	(void)writable;
	return -ENOTSUP;
}

int image_create_overlay(struct vd_image *base, const char *path, unsigned mode,
			 struct vd_image **out)
{
	struct vd_create_opts co = {.size = base->size,
				    .backing = base->path,
				    .backing_fmt = base->fmt->name,
				    .mode = mode};
	struct vd_open_opts oo = {.backing = VD_BACKING_FOLLOW};
	int ret = vd_format_qcow2.create(path, &co);

	if (ret)
		return ret;
	ret = image_open(path, &oo, out);
	if (ret)
		unlink(path);
	return ret;
}

struct vd_image *image_chain_find(struct vd_image *top, const char *path)
{
	struct stat st;

	if (stat(path, &st) < 0)
		return NULL;
	for (struct vd_image *i = top; i; i = i->backing)
		if (i->dev == st.st_dev && i->ino == st.st_ino)
			return i;
	return NULL;
}
