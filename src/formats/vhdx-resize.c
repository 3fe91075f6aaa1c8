/* VHDX virtual resize: growing dynamic and differencing disks within the
 * capacity of the existing BAT region. The new range's BAT entries are made
 * NOT_PRESENT and written through the log first; then VirtualDiskSize is
 * written through the log as one entry of its own, so a crash leaves either
 * the old size or the new one, each with a BAT that fits it. Shrinking,
 * fixed disks and moving the BAT region are refused. */
#include <errno.h>
#include <linux/falloc.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

/* The largest disk the BAT region holds entries for (block granular). */
static uint64_t bat_capacity(const struct vhdx *v)
{
	uint64_t e = v->bat_len / 8, cr = v->chunk_ratio, nb;

	if (v->has_parent)
		nb = e / (cr + 1) * cr;
	else
		nb = e / (cr + 1) * cr + min_u64(e % (cr + 1), cr);
	return min_u64(nb * v->block_size, VHDX_MAX_SIZE);
}

static int refuse(struct vhdx *v, int err, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static int refuse(struct vhdx *v, int err, const char *fmt, ...)
{
	va_list ap;
	char *why;

	va_start(ap, fmt);
	why = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	vd_err("%s: cannot resize the VHDX disk from %" PRIu64 " bytes: %s", v->img->path,
	       v->disk_size, why);
	g_free(why);
	return err;
}

static int check_grow(struct vhdx *v, uint64_t size)
{
	struct vd_image *parent = v->img->backing;
	uint64_t cap, nchunks;

	if (size < v->disk_size)
		return refuse(v, -ENOTSUP,
			      "shrinking is not supported (only growing; the BAT region "
			      "and the blocks past the new end would stay)");
	if (size % v->lss)
		return refuse(v, -EINVAL, "%" PRIu64 " is not a multiple of the %u-byte sector",
			      size, v->lss);
	if (v->leave_alloc)
		return refuse(v, -ENOTSUP,
			      "growing a fixed disk is not supported (its blocks are "
			      "allocated in full; convert it to a dynamic disk first)");
	if (v->has_parent && (!parent || parent->size > v->disk_size))
		return refuse(v, -ENOTSUP,
			      "the parent %s is larger than this differencing disk and would "
			      "show through the new range",
			      parent ? parent->path : "(not open)");
	if (size > VHDX_MAX_SIZE)
		return refuse(v, -EFBIG, "%" PRIu64 " bytes is past the format's 64 TiB", size);
	cap = bat_capacity(v);
	if (size > cap)
		return refuse(v, -EFBIG,
			      "%" PRIu64 " bytes need more BAT entries than the BAT region at "
			      "0x%" PRIx64 " holds (%u bytes: at most %" PRIu64
			      " bytes in %u-byte blocks); moving the BAT is not supported",
			      size, v->bat_off, v->bat_len, cap, v->block_size);
	/* size <= 64 TiB here */
	nchunks =
		((size + v->block_size - 1) / v->block_size + v->chunk_ratio - 1) / v->chunk_ratio;
	if (nchunks * (v->chunk_ratio + 1) * 8 > VHDX_MAX_BAT_BYTES)
		return refuse(v, -EFBIG,
			      "%" PRIu64 " bytes in %u-byte blocks need a BAT larger than the "
			      "limit of %llu MiB held in memory",
			      size, v->block_size, VHDX_MAX_BAT_BYTES >> 20);
	return 0;
}

/* The in-memory BAT and bitmap arrays sized for nchunks chunks; the
 * entries added are read from the BAT region (zeroes past its end). */
static int arrays_grow(struct vhdx *v, uint64_t nchunks)
{
	uint64_t n = vhdx_bat_mem_entries(v, nchunks), old = v->bat_entries;
	uint64_t ondisk = v->bat_len / 8;
	uint64_t *bat;
	uint8_t *dirty;
	int ret;

	if (v->has_parent && nchunks > v->nchunks) {
		struct vhdx_sb *sb = realloc(v->sb, nchunks * sizeof(*sb));
		if (!sb)
			return -ENOMEM;
		memset(sb + v->nchunks, 0, (nchunks - v->nchunks) * sizeof(*sb));
		v->sb = sb;
	}
	if (n <= old)
		return 0;
	bat = realloc(v->bat, n * 8);
	if (!bat)
		return -ENOMEM;
	v->bat = bat;
	dirty = realloc(v->bat_dirty, n / (VHDX_LOG_SECTOR / 8));
	if (!dirty)
		return -ENOMEM;
	v->bat_dirty = dirty;
	memset(dirty + old / (VHDX_LOG_SECTOR / 8), 0, (n - old) / (VHDX_LOG_SECTOR / 8));
	memset(bat + old, 0, (n - old) * 8);
	if (ondisk > old) {
		uint64_t cnt = min_u64(n, ondisk) - old;

		ret = meta_pread_zfill(v->img->fd, bat + old, cnt * 8, v->bat_off + old * 8);
		if (ret) {
			vd_err("%s: cannot read the BAT at 0x%" PRIx64 ": %s", v->img->path,
			       v->bat_off + old * 8, strerror(-ret));
			memset(bat + old, 0, (n - old) * 8);
			return ret;
		}
		for (uint64_t i = old; i < old + cnt; i++)
			bat[i] = le64toh(bat[i]);
	}
	v->bat_entries = n;
	return 0;
}

/* Every entry the new blocks (and their chunks' sector bitmaps) use, NOT_PRESENT:
 * whatever a BAT region holds past the entries a disk needs was never checked.
 * The bitmap entries of chunks the disk already had stay. */
static void entries_clear(struct vhdx *v, uint64_t nblocks)
{
	uint64_t start = min_u64(vhdx_bat_need(v, v->nblocks), vhdx_bat_index(v, v->nblocks));
	uint64_t end = vhdx_bat_need(v, nblocks), cr = v->chunk_ratio;

	for (uint64_t idx = start; idx < end; idx++) {
		bool sb = idx % (cr + 1) == cr;

		if (sb && v->has_parent && idx / (cr + 1) < v->nchunks)
			continue;
		if (v->bat[idx])
			vhdx_bat_set(v, idx, 0);
	}
}

/* The old last block, when the old size ended inside it, becomes whole: the
 * file reaches its end (the last block may be short, no other) and its bytes
 * past the old size are punched, so the new range reads as zeroes whatever
 * a writer left there. */
static int last_block_fill(struct vhdx *v)
{
	uint64_t b = v->nblocks - 1, bstart = b * v->block_size;
	uint64_t e = v->bat[vhdx_bat_index(v, b)], host = VHDX_BAT_OFF(e);
	unsigned st = VHDX_BAT_STATE(e);
	uint64_t from = v->disk_size - bstart;
	struct stat sb;
	int ret;

	if (!(v->disk_size % v->block_size) ||
	    (st != VHDX_BAT_FULLY_PRESENT && st != VHDX_BAT_PARTIALLY_PRESENT))
		return 0;
	if (fstat(v->img->fd, &sb) < 0)
		return -errno;
	if ((uint64_t)sb.st_size < host + v->block_size) {
		ret = meta_ftruncate(v->img->fd, host + v->block_size);
		if (ret)
			return ret;
	}
	if ((uint64_t)sb.st_size <= host + from)
		return 0; /* the extension reads as zeroes */
	ret = meta_fallocate(v->img->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, host + from,
			     v->block_size - from);
	if (ret == -EOPNOTSUPP) {
		uint8_t *z = calloc(1, v->block_size - from);

		if (!z)
			return -ENOMEM;
		ret = meta_pwrite(v->img->fd, z, v->block_size - from, host + from);
		free(z);
	}
	return ret;
}

/* VirtualDiskSize through the log: its 4 KiB page read, changed, logged. */
static int size_write(struct vhdx *v, uint64_t size)
{
	uint64_t page = ALIGN_DOWN(v->size_item_off, VHDX_LOG_SECTOR);
	int ret = meta_pread(v->img->fd, v->meta_page, VHDX_LOG_SECTOR, page);

	if (ret)
		return ret;
	put_le64(v->meta_page + (v->size_item_off - page), size);
	v->meta_dirty = true;
	v->ndirty++;
	ret = vhdx_flush_locked(v);
	if (ret && v->meta_dirty) {
		/* Not retried by a later flush: the size in memory stays the old one. */
		v->meta_dirty = false;
		v->ndirty--;
	}
	return ret;
}

static int grow_locked(struct vhdx *v, uint64_t size)
{
	uint64_t nblocks = (size + v->block_size - 1) / v->block_size;
	uint64_t nchunks = (nblocks + v->chunk_ratio - 1) / v->chunk_ratio;
	int ret = check_grow(v, size);

	/* Data first (a new DataWriteGuid: the disk a child links to changes),
	 * everything dirty so far out, so the entries below are the resize's. */
	if (!ret)
		ret = vhdx_begin_write(v, true);
	if (!ret)
		ret = vhdx_flush_locked(v);
	if (!ret)
		ret = arrays_grow(v, nchunks);
	if (ret)
		return ret;
	entries_clear(v, nblocks);
	ret = last_block_fill(v);
	if (ret) {
		vd_err("%s: cannot zero the last block past the old end 0x%" PRIx64 ": %s",
		       v->img->path, v->disk_size, strerror(-ret));
		return ret;
	}
	/* Durable entries (and the punched tail: the flush syncs data first)
	 * before the size that makes them part of the disk. */
	ret = vhdx_flush_locked(v);
	if (ret || (ret = size_write(v, size)))
		return ret;
	v->disk_size = size;
	v->nblocks = nblocks;
	v->nchunks = nchunks;
	v->alloc_known = false; /* the old last block counts whole now */
	v->img->size = size;
	return 0;
}

int vhdx_truncate(struct vd_image *img, uint64_t size)
{
	struct vhdx *v = img->priv;
	int ret = 0;

	pthread_mutex_lock(&v->lock);
	if (size != v->disk_size)
		ret = grow_locked(v, size);
	pthread_mutex_unlock(&v->lock);
	return ret;
}
