/* Creating a fresh qcow2 v3 image (mirror destinations, tests): header with
 * the backing-format extension and backing name in cluster 0, then the
 * refcount table, the refcount blocks and the L1 table, each counted once. */
#include <errno.h>
#include <inttypes.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/compiler.h"
#include "util/endian.h"
#include "util/log.h"
#include "formats/qcow2.h"
#include "io/sync-io.h"

#define CREATE_HEADER_LEN 112

struct layout {
	uint32_t cs, cb;
	uint64_t size, l1_size, l1c, rtc, rbc, meta; /* meta: clusters before the L1 */
};

static int layout_plan(const struct vd_create_opts *o, struct layout *l)
{
	uint64_t per_l2, rb_entries, total;

	l->cs = o->cluster_size ? o->cluster_size : 65536;
	if (l->cs < 512 || l->cs > (2u << 20) || (l->cs & (l->cs - 1))) {
		vd_err("qcow2 create: cluster size %u is not a power of two in 512..2M", l->cs);
		return -EINVAL;
	}
	l->cb = __builtin_ctz(l->cs);
	l->size = ALIGN_UP(o->size, 512);
	per_l2 = (uint64_t)l->cs * (l->cs / 8);
	l->l1_size = l->size / per_l2 + !!(l->size % per_l2);
	if (l->l1_size * 8 > QCOW2_MAX_L1_BYTES) {
		vd_err("qcow2 create: %" PRIu64 " bytes is too large for %u-byte clusters", o->size,
		       l->cs);
		return -EFBIG;
	}
	l->l1c = ALIGN_UP(l->l1_size * 8, l->cs) / l->cs;
	rb_entries = l->cs / 2; /* 16-bit refcounts */
	l->rtc = 1;
	l->rbc = 1;
	for (;;) {
		uint64_t rbc, rtc;
		total = 1 + l->rtc + l->rbc + l->l1c;
		rbc = (total + rb_entries - 1) / rb_entries;
		rtc = (rbc * 8 + l->cs - 1) / l->cs;
		if (rbc == l->rbc && rtc == l->rtc)
			break;
		l->rbc = rbc;
		l->rtc = rtc;
	}
	l->meta = 1 + l->rtc + l->rbc;
	return 0;
}

static int header_build(const struct vd_create_opts *o, const struct layout *l, uint8_t *b)
{
	size_t pos = CREATE_HEADER_LEN, blen = o->backing ? strlen(o->backing) : 0;
	size_t flen = o->backing_fmt ? strlen(o->backing_fmt) : 0;

	put_be32(b, QCOW2_MAGIC);
	put_be32(b + 4, 3);
	put_be32(b + 20, l->cb);
	put_be64(b + 24, l->size);
	put_be32(b + 36, l->l1_size);
	put_be64(b + 40, l->l1_size ? l->meta * l->cs : 0);
	put_be64(b + 48, l->cs);
	put_be32(b + 56, l->rtc);
	put_be32(b + 96, 4);
	put_be32(b + 100, CREATE_HEADER_LEN);
	if (o->backing && o->backing_fmt) {
		if (flen >= 16) {
			vd_err("qcow2 create: backing format name \"%s\" too long", o->backing_fmt);
			return -EINVAL;
		}
		put_be32(b + pos, QCOW2_EXT_BACKFMT);
		put_be32(b + pos + 4, flen);
		memcpy(b + pos + 8, o->backing_fmt, flen);
		pos += 8 + ALIGN_UP((uint64_t)flen, 8);
	}
	pos += 8; /* end of extensions */
	if (o->backing) {
		if (blen == 0 || blen > 1023 || pos + blen > l->cs) {
			vd_err("qcow2 create: backing file name \"%s\" does not fit", o->backing);
			return -EINVAL;
		}
		put_be64(b + 8, pos);
		put_be32(b + 16, blen);
		memcpy(b + pos, o->backing, blen);
	}
	return 0;
}

static void tables_build(const struct layout *l, uint8_t *b)
{
	uint64_t total = l->meta + l->l1c, rb_entries = l->cs / 2;
	uint8_t *rt = b + l->cs, *rb = b + (1 + l->rtc) * (uint64_t)l->cs;

	for (uint64_t i = 0; i < l->rbc; i++)
		put_be64(rt + i * 8, (1 + l->rtc + i) * l->cs);
	for (uint64_t c = 0; c < total; c++) {
		uint8_t *p = rb + (c / rb_entries) * l->cs + (c % rb_entries) * 2;
		p[0] = 0;
		p[1] = 1;
	}
}

int qcow2_create(const char *path, const struct vd_create_opts *o)
{
	struct layout l;
	uint64_t bytes, end;
	uint8_t *b;
	int fd, ret;

	ret = layout_plan(o, &l);
	if (ret)
		return ret;
	bytes = l.meta * l.cs;
	b = calloc(1, bytes);
	if (!b)
		return -ENOMEM;
	ret = header_build(o, &l, b);
	if (ret)
		goto out;
	tables_build(&l, b);
	fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC, o->mode ? o->mode : 0644);
	if (fd < 0) {
		ret = -errno;
		vd_err("%s: cannot create: %s", path, strerror(errno));
		goto out;
	}
	/* The L1 table is all zeroes: the file simply ends where it ends. */
	end = l.l1_size ? bytes + l.l1_size * 8 : bytes;
	ret = meta_pwrite(fd, b, bytes, 0);
	if (!ret)
		ret = meta_ftruncate(fd, end);
	if (!ret)
		ret = meta_fdatasync(fd);
	close(fd);
	if (ret) {
		vd_err("%s: cannot write the new image: %s", path, strerror(-ret));
		unlink(path);
	}
out:
	free(b);
	return ret;
}
