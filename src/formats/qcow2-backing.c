/* qcow2 header cluster rewrites beyond single fields: the walk over the
 * header extensions (shared with the bitmap commands), and the backing link
 * (name and backing-format extension) switched crash-consistently for the
 * stream and commit jobs. */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "formats/qcow2.h"
#include "io/sync-io.h"
#include "util/compiler.h"
#include "util/endian.h"
#include "util/log.h"

int qcow2_ext_scan(struct qcow2 *q, uint8_t *c0, uint32_t type, uint64_t *end, uint64_t *at,
		   uint64_t *limit)
{
	uint64_t pos = q->header_length, boff;
	int ret = meta_pread_zfill(q->img->fd, c0, q->cluster_size, 0);

	if (ret)
		return ret;
	boff = get_be64(c0 + 8);
	*limit = boff && boff < q->cluster_size ? boff : q->cluster_size;
	*at = 0;
	while (pos + 8 <= *limit && get_be32(c0 + pos) != QCOW2_EXT_END) {
		if (get_be32(c0 + pos) == type)
			*at = pos;
		pos += 8 + ALIGN_UP((uint64_t)get_be32(c0 + pos + 4), 8);
	}
	*end = pos;
	return 0;
}

/*
 * The new link is planned as a whole new header cluster (nc) beside the old
 * one (oc); then the bytes that differ are written in two steps:
 *
 * 1. those the old header does not read (past its end marker, outside its
 *    backing file name: the new name, an appended extension and its end
 *    marker), then a sync: a crash leaves the old link;
 * 2. the rest (the name's offset and length at bytes 8..19, the backing
 *    format extension) in one write of one 512-byte sector, then a sync: a
 *    power cut leaves the whole sector old or new.
 *
 * A plan whose step 2 spans two sectors is refused (-ENOTSUP). Dropping the
 * link drops the backing-format extension when it is the last one; else it
 * stays, ignored without a backing file (by QEMU too).
 */
struct relink {
	struct qcow2 *q;
	uint8_t *oc, *nc;
	uint64_t end;	 /* the old end marker */
	uint64_t nend;	 /* the new one */
	uint64_t oo, ol; /* the old name */
	uint64_t s0, s1; /* step 2: [s0, s1) */
	const char *why; /* the reason a plan is refused */
};

/* Does the old header read byte i? */
static bool relink_read(const struct relink *r, uint64_t i)
{
	return i < r->end + 8 || (i >= r->oo && i < r->oo + r->ol);
}

/* The backing-format extension in nc for fmt (NULL: dropped if it can be). */
static int relink_fmt(struct relink *r, uint64_t bf, const char *fmt)
{
	uint64_t flen = fmt ? strlen(fmt) : 0, olen = bf ? get_be32(r->oc + bf + 4) : 0;
	uint64_t at = bf;

	r->nend = r->end;
	if (!fmt) {
		if (bf && bf + 8 + ALIGN_UP(olen, 8) == r->end) {
			memset(r->nc + bf, 0, 8); /* an end marker over it */
			r->nend = bf;
		}
		return 0;
	}
	if (flen >= 16) {
		r->why = "the format name is too long";
		return -ENOTSUP;
	}
	if (bf && ALIGN_UP(olen, 8) != ALIGN_UP(flen, 8)) {
		r->why = "the backing format extension would change its size";
		return -ENOTSUP;
	}
	if (!bf) {
		at = r->end; /* appended over the end marker */
		r->nend = at + 8 + ALIGN_UP(flen, 8);
		if (r->nend + 8 > r->q->cluster_size) {
			r->why = "no room for a backing format extension";
			return -ENOTSUP;
		}
		put_be32(r->nc + at, QCOW2_EXT_BACKFMT);
		memset(r->nc + r->nend, 0, 8);
	}
	put_be32(r->nc + at + 4, flen);
	memset(r->nc + at + 8, 0, ALIGN_UP(flen, 8));
	memcpy(r->nc + at + 8, fmt, flen);
	return 0;
}

/* The name in nc: after both end markers, clear of the old name. */
static int relink_name(struct relink *r, const char *name)
{
	uint64_t nlen = name ? strlen(name) : 0, p = 0;

	if (name) {
		p = ALIGN_UP(max_u64(r->end, r->nend) + 8, 8);
		if (r->ol && p < r->oo + r->ol && p + nlen > r->oo)
			p = ALIGN_UP(r->oo + r->ol, 8);
		if (nlen > 1023 || p + nlen > r->q->cluster_size) {
			r->why = nlen > 1023 ? "the name is longer than 1023 bytes"
					     : "no room for the name in the header cluster";
			return -ENOTSUP;
		}
		memcpy(r->nc + p, name, nlen);
	}
	put_be64(r->nc + 8, p);
	put_be32(r->nc + 16, nlen);
	return 0;
}

/* Step 2's span, which must lie in one sector. */
static int relink_span(struct relink *r)
{
	r->s0 = r->s1 = 0;
	for (uint64_t i = 0; i < r->q->cluster_size; i++) {
		if (r->oc[i] == r->nc[i] || !relink_read(r, i))
			continue;
		if (r->s1 == 0)
			r->s0 = i;
		r->s1 = i + 1;
	}
	if (r->s1 && r->s0 / 512 != (r->s1 - 1) / 512) {
		r->why = "the header bytes to switch span two sectors";
		return -ENOTSUP;
	}
	return 0;
}

/* Step 1: every run of changed bytes the old header does not read, synced. */
static int relink_unread(struct relink *r)
{
	uint64_t cs = r->q->cluster_size, i = 0, j;
	bool wrote = false;
	int ret = 0;

	while (i < cs && !ret) {
		if (r->oc[i] == r->nc[i] || relink_read(r, i)) {
			i++;
			continue;
		}
		for (j = i; j < cs && r->oc[j] != r->nc[j] && !relink_read(r, j); j++)
			;
		ret = meta_pwrite(r->q->img->fd, r->nc + i, j - i, i);
		wrote = true;
		i = j;
	}
	if (!ret && wrote)
		ret = meta_fdatasync(r->q->img->fd);
	if (ret)
		vd_err("%s: cannot write the new backing file name into the header cluster: %s",
		       r->q->img->path, strerror(-ret));
	return ret;
}

static int relink(struct qcow2 *q, const char *name, const char *fmt)
{
	struct relink r = {.q = q};
	uint64_t bf, limit;
	int ret = -ENOMEM;

	if (name && q->data_raw) {
		vd_err("%s: cannot take a backing file: its external data file is raw "
		       "(data_file_raw), which excludes one",
		       q->img->path);
		return -ENOTSUP;
	}
	r.oc = malloc(q->cluster_size);
	r.nc = malloc(q->cluster_size);
	if (!r.oc || !r.nc)
		goto out;
	ret = qcow2_ext_scan(q, r.oc, QCOW2_EXT_BACKFMT, &r.end, &bf, &limit);
	if (ret)
		goto out;
	r.oo = get_be64(r.oc + 8);
	r.ol = r.oo ? get_be32(r.oc + 16) : 0;
	memcpy(r.nc, r.oc, q->cluster_size);
	ret = relink_fmt(&r, bf, name ? fmt : NULL);
	if (!ret && name && !fmt && bf && r.nend == r.end) {
		r.why = "a backing format extension that cannot go would name a format";
		ret = -ENOTSUP;
	}
	if (!ret)
		ret = relink_name(&r, name);
	if (!ret)
		ret = relink_span(&r);
	if (ret) {
		vd_err("%s: backing file not changed to %s: %s; use qemu-img rebase -u",
		       q->img->path, name ? name : "none", r.why);
		goto out;
	}
	ret = relink_unread(&r);
	if (!ret && r.s1)
		ret = qcow2_write_header_field(q, r.s0, r.nc + r.s0, r.s1 - r.s0);
	if (!ret)
		q->has_backing = name != NULL;
out:
	free(r.oc);
	free(r.nc);
	return ret;
}

int qcow2_set_backing(struct vd_image *img, const char *name, const char *fmt)
{
	struct qcow2 *q = img->priv;
	int ret;

	pthread_mutex_lock(&q->lock);
	ret = relink(q, name, fmt);
	pthread_mutex_unlock(&q->lock);
	return ret;
}
