/* Asynchronous I/O on guest ranges, the same for every format: the driver maps
 * a range to extents, and this file turns them into io_uring operations
 * (backing reads, decompression, copy-on-write merges), commits the driver's
 * ticket once all data landed, and answers the caller once. */
#include <errno.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "util/clock.h"
#include "image/image-int.h"
#include "util/log.h"
#include "io/uring.h"
#include "io/sync-io.h"

#define DIO_ALIGN 4096

/* The fd for a data transfer: the image's O_DIRECT twin when everything is
 * aligned for it, else the buffered fd (the kernel keeps the two coherent). */
static int data_fd(struct vd_image *img, int fd, const void *buf, uint64_t len, uint64_t off)
{
	if (fd != img->fd || img->dio_fd < 0)
		return fd;
	if (((len | off) & (img->dio_align - 1)) || ((uintptr_t)buf & (img->dio_mem_align - 1)))
		return fd;
	return img->dio_fd;
}

/* ---- filling a buffer from one source (used by reads and by COW) ---- */

struct img_fill {
	struct vd_image *img;
	vd_done_fn cb;
	void *opaque;
	struct uring_op op;
	char *dst;
	uint64_t goff, len;
	struct vd_src src;
	char *blob;
};

static void fill_finish(struct img_fill *f, int err)
{
	vd_done_fn cb = f->cb;
	void *opaque = f->opaque;

	free(f->blob);
	free(f);
	cb(opaque, err);
}

static void fill_data_done(struct uring_op *op, int res)
{
	struct img_fill *f = container_of(op, struct img_fill, op);

	if (res >= 0 && (uint64_t)res < f->len)
		memset(f->dst + res, 0, f->len - res); /* past the host file's end */
	fill_finish(f, res < 0 ? res : 0);
}

static void fill_blob_done(struct uring_op *op, int res)
{
	struct img_fill *f = container_of(op, struct img_fill, op);
	uint64_t skip = f->goff - f->src.cluster_off;
	char *out;
	int ret;

	if (res < 0) {
		fill_finish(f, res);
		return;
	}
	if (skip == 0 && f->len == f->src.cluster_size) {
		ret = vd_decompress(f->src.algo, f->blob, res, f->dst, f->len);
	} else {
		out = malloc(f->src.cluster_size);
		if (!out) {
			fill_finish(f, -ENOMEM);
			return;
		}
		ret = vd_decompress(f->src.algo, f->blob, res, out, f->src.cluster_size);
		if (!ret)
			memcpy(f->dst, out + skip, f->len);
		free(out);
	}
	if (ret) {
		vd_err("%s: compressed cluster at host offset 0x%llx (guest 0x%llx) does not "
		       "inflate",
		       f->img->path, (unsigned long long)f->src.host_off,
		       (unsigned long long)f->src.cluster_off);
		ret = -EIO;
	}
	fill_finish(f, ret);
}

static void fill_backing_done(void *opaque, int err)
{
	fill_finish(opaque, err);
}

/* Read guest bytes [goff, goff+len) of img, which src describes, into dst. */
static void img_fill(struct vd_image *img, const struct vd_src *src, uint64_t goff, char *dst,
		     uint64_t len, vd_done_fn cb, void *opaque)
{
	struct img_fill *f;
	struct vd_image *b = img->backing;

	if (src->type == VD_EXT_ZERO || (src->type == VD_EXT_UNALLOC && (!b || goff >= b->size))) {
		memset(dst, 0, len);
		cb(opaque, 0);
		return;
	}
	f = calloc(1, sizeof(*f));
	if (!f) {
		cb(opaque, -ENOMEM);
		return;
	}
	f->img = img;
	f->cb = cb;
	f->opaque = opaque;
	f->dst = dst;
	f->goff = goff;
	f->len = len;
	f->src = *src;
	switch (src->type) {
	case VD_EXT_DATA:
		uring_read(&f->op, data_fd(img, src->fd, dst, len, src->host_off), dst, len,
			   src->host_off, fill_data_done);
		break;
	case VD_EXT_COMPRESSED:
		if (goff < src->cluster_off || goff + len > src->cluster_off + src->cluster_size) {
			fill_finish(f, -EIO);
			return;
		}
		f->blob = malloc(src->csize);
		if (!f->blob) {
			fill_finish(f, -ENOMEM);
			return;
		}
		uring_read(&f->op, src->fd, f->blob, src->csize, src->host_off, fill_blob_done);
		break;
	default: /* UNALLOC with a backing image */
		if (goff + len > b->size) {
			memset(dst + (b->size - goff), 0, goff + len - b->size);
			len = b->size - goff;
		}
		image_submit(b, IMAGE_READ, dst, len, goff, fill_backing_done, f);
		break;
	}
}

/* ---- read and write requests ---- */

struct img_part {
	struct img_req *req;
	struct vd_extent *e;
	struct uring_op op;
	char *bounce;
	int pending;
	int err;
};

struct img_req {
	struct vd_image *img;
	bool write;
	char *buf;
	uint64_t off, len;
	vd_done_fn done;
	void *opaque;
	int pending;
	int err;
	bool adopted; /* resumed by req_wake() on this thread: counted in adopted */
	struct vd_waiter waiter;
	struct img_part *parts;
	/* Large and mostly unused: last, so a new request clears only the above. */
	struct vd_map map;
	struct img_part parts_inline[VD_MAP_INLINE];
};

/* Requests that req_wake() resumed on this thread and that are not finished:
 * their I/O is on this thread's ring, so the thread must keep running it until
 * they are (see image_wait()). A request finishes on the thread that started
 * its I/O, so the count goes up and down on the same thread. */
__thread unsigned image_adopted;

static void req_finish(struct img_req *r)
{
	struct vd_image *img = r->img;

	if (r->adopted)
		image_adopted--;
	if (r->map.ticket) {
		/* A write is answered only once its allocations are linked. */
		int ret = img->fmt->complete(img, r->map.ticket, r->err);
		if (ret && !r->err)
			r->err = ret;
	}
	if (r->parts) {
		for (unsigned i = 0; i < r->map.n; i++)
			free(r->parts[i].bounce);
		if (r->parts != r->parts_inline)
			free(r->parts);
	}
	vd_map_free(&r->map);
	r->done(r->opaque, r->err);
	free(r);
}

static void req_put(struct img_req *r, int err)
{
	if (err && !r->err)
		r->err = err;
	if (--r->pending == 0)
		req_finish(r);
}

static void read_part_done(void *opaque, int err)
{
	req_put(opaque, err);
}

static void write_part_done(struct uring_op *op, int res)
{
	struct img_part *p = container_of(op, struct img_part, op);

	req_put(p->req, res < 0 ? res : 0);
}

/* Every old-byte fill of a COW part is in: merge the guest bytes, write once. */
static void cow_fill_done(void *opaque, int err)
{
	struct img_part *p = opaque;
	struct vd_extent *e = p->e;
	uint64_t head = e->off - e->cow.off, host = e->src.host_off - head;

	if (err && !p->err)
		p->err = err;
	if (--p->pending)
		return;
	if (p->err) {
		req_put(p->req, p->err);
		return;
	}
	memcpy(p->bounce + head, p->req->buf + (e->off - p->req->off), e->len);
	uring_write(&p->op, data_fd(p->req->img, e->src.fd, p->bounce, e->cow.len, host), p->bounce,
		    e->cow.len, host, write_part_done);
}

/* Read guest bytes [from, to) of segment s into their place in the bounce buffer. */
static void cow_fill(struct img_part *p, const struct vd_cow_seg *s, uint64_t from, uint64_t to)
{
	struct vd_extent *e = p->e;
	struct vd_src src = s->src;

	if (from >= to)
		return;
	if (src.type == VD_EXT_DATA)
		src.host_off += from - s->off;
	p->pending++;
	img_fill(p->req->img, &src, from, p->bounce + (from - e->cow.off), to - from, cow_fill_done,
		 p);
}

static void write_part_start(struct img_req *r, struct img_part *p)
{
	struct vd_extent *e = p->e;
	uint64_t end = e->off + e->len;

	if (!e->cow.len) {
		char *buf = r->buf + (e->off - r->off);
		uring_write(&p->op, data_fd(r->img, e->src.fd, buf, e->len, e->src.host_off), buf,
			    e->len, e->src.host_off, write_part_done);
		return;
	}
	if (posix_memalign((void **)&p->bounce, DIO_ALIGN, e->cow.len))
		p->bounce = NULL;
	if (!p->bounce) {
		req_put(r, -ENOMEM);
		return;
	}
	/* Each segment's bytes before and after the guest's; pending holds one
	 * reference of its own so fills that finish at once cannot write early. */
	p->pending = 1;
	for (unsigned i = 0; i < e->cow.n; i++) {
		const struct vd_cow_seg *s = &e->cow.seg[i];
		uint64_t s_end = s->off + s->len;

		cow_fill(p, s, s->off, min_u64(s_end, e->off));
		cow_fill(p, s, max_u64(s->off, end), s_end);
	}
	cow_fill_done(p, 0);
}

/* The cow segments are ordered, inside the cow range, and leave no byte
 * outside the extent without a source. */
static bool cow_valid(const struct vd_extent *e)
{
	const struct vd_cow *c = &e->cow;
	uint64_t pos = c->off, end = c->off + c->len, eend = e->off + e->len;

	if (c->off > e->off || end < eend || e->src.host_off < e->off - c->off ||
	    c->n > VD_COW_SEGS)
		return false;
	for (unsigned i = 0; i <= c->n; i++) {
		const struct vd_cow_seg *s = i < c->n ? &c->seg[i] : NULL;
		uint64_t next = s ? s->off : end;

		/* a gap before the next segment must lie inside the extent */
		if (next < pos || (next > pos && (pos < e->off || next > eend)))
			return false;
		if (!s)
			break;
		if (!s->len || s->len > end - s->off || s->src.type > VD_EXT_COMPRESSED)
			return false;
		pos = s->off + s->len;
	}
	return true;
}

static bool extent_valid(const struct img_req *r, const struct vd_extent *e, uint64_t expect)
{
	if (e->off != expect || !e->len || e->off + e->len > r->off + r->len)
		return false;
	if (r->write && e->src.type != VD_EXT_DATA)
		return false;
	if (e->cow.len && !cow_valid(e))
		return false;
	return true;
}

static void req_start(struct img_req *r)
{
	struct vd_image *img = r->img;
	uint64_t expect = r->off;
	bool write = r->write, was_adopted = r->adopted;
	int ret;

	vd_map_reset(&r->map);
	r->map.waiter = &r->waiter;
	r->adopted = false;
	ret = img->fmt->map(img, r->off, r->len, write ? VD_MAP_WRITE : 0, &r->map);
	if (ret == -EAGAIN && write) {
		/* Parked on another request's allocation: from the moment the
		 * driver dropped its lock, another thread's complete() may resume
		 * and finish r, so r is not touched again here. */
		if (was_adopted)
			image_adopted--;
		return;
	}
	r->adopted = was_adopted;
	r->pending = 1;
	if (ret) {
		req_put(r, ret);
		return;
	}
	for (unsigned i = 0; i < r->map.n; i++) {
		if (!extent_valid(r, &r->map.ext[i], expect)) {
			image_mark_broken(img, "format driver returned an invalid mapping");
			req_put(r, -EIO);
			return;
		}
		expect += r->map.ext[i].len;
	}
	if (expect != r->off + r->len) {
		image_mark_broken(img, "format driver mapped a range only partly");
		req_put(r, -EIO);
		return;
	}
	if (r->map.n <= VD_MAP_INLINE) {
		r->parts = r->parts_inline;
		memset(r->parts, 0, r->map.n * sizeof(*r->parts));
	} else {
		r->parts = calloc(r->map.n, sizeof(*r->parts));
	}
	if (!r->parts) {
		req_put(r, -ENOMEM);
		return;
	}
	for (unsigned i = 0; i < r->map.n; i++) {
		struct img_part *p = &r->parts[i];
		struct vd_extent *e = &r->map.ext[i];

		p->req = r;
		p->e = e;
		r->pending++;
		if (r->write) {
			write_part_start(r, p);
		} else {
			img_fill(img, &e->src, e->off, r->buf + (e->off - r->off), e->len,
				 read_part_done, r);
		}
	}
	req_put(r, 0);
}

/* Runs on the thread whose completion freed the allocation: the request's
 * I/O goes on that thread's ring, whoever started it. */
static void req_wake(struct vd_waiter *w)
{
	struct img_req *r = container_of(w, struct img_req, waiter);

	r->adopted = true;
	image_adopted++;
	req_start(r);
}

/* limit: the end of the guest range a request may touch, img->size except
 * while a truncate() zeroes what a grow is about to show. */
static int img_check(struct vd_image *img, uint64_t len, uint64_t off, bool write, uint64_t limit)
{
	if (atomic_load(&img->broken) || atomic_load(&img->inactive))
		return -EIO;
	if (write && img->read_only)
		return -EROFS;
	if (off > limit || len > limit - off)
		return write ? -ENOSPC : -EINVAL;
	return 0;
}

static void img_rw(struct vd_image *img, char *buf, uint64_t len, uint64_t off, bool write,
		   uint64_t limit, vd_done_fn done, void *opaque)
{
	struct img_req *r;
	int ret = img_check(img, len, off, write, limit);

	if (ret || !len) {
		done(opaque, ret);
		return;
	}
	r = malloc(sizeof(*r));
	if (!r) {
		done(opaque, -ENOMEM);
		return;
	}
	memset(r, 0, offsetof(struct img_req, map));
	r->img = img;
	r->write = write;
	r->buf = buf;
	r->off = off;
	r->len = len;
	r->done = done;
	r->opaque = opaque;
	r->waiter.wake = req_wake;
	vd_map_init(&r->map);
	req_start(r);
}

/* ---- zeroing: the driver for aligned ranges, written zeroes for the rest ---- */

#define ZERO_CHUNK (1u << 20)
#define ZERO_DEPTH 4
static const char zero_buf[ZERO_CHUNK] __attribute__((aligned(DIO_ALIGN)));

struct zero_job {
	/* Chunks may finish on another thread (a parked write resumed there). */
	pthread_mutex_t lock;
	struct vd_image *img;
	uint64_t limit;	       /* see img_check(); 0: img->size when each chunk starts */
	uint64_t ranges[2][2]; /* [off, end) pairs to write zeroes over */
	int nranges, cur;
	uint64_t next;
	int inflight, err;
	bool pumping; /* a zero_pump_locked() frame is in its loop: it alone finishes */
	vd_done_fn done;
	void *opaque;
};

static void zero_pump_locked(struct zero_job *z);

static void zero_job_add(struct zero_job *z, uint64_t off, uint64_t end)
{
	if (off >= end)
		return;
	z->ranges[z->nranges][0] = off;
	z->ranges[z->nranges][1] = end;
	z->nranges++;
}

static void zero_job_free(struct zero_job *z)
{
	pthread_mutex_destroy(&z->lock);
	free(z);
}

static void zero_chunk_done(void *opaque, int err)
{
	struct zero_job *z = opaque;

	pthread_mutex_lock(&z->lock);
	z->inflight--;
	if (err && !z->err)
		z->err = err;
	zero_pump_locked(z);
}

/* The next chunk to write (with z->lock held): false when none may start. */
static bool zero_next_chunk(struct zero_job *z, uint64_t *off, uint64_t *len)
{
	while (!z->err && z->inflight < ZERO_DEPTH && z->cur < z->nranges) {
		uint64_t end = z->ranges[z->cur][1];

		if (z->next >= end) {
			if (++z->cur < z->nranges)
				z->next = z->ranges[z->cur][0];
			continue;
		}
		*off = z->next;
		*len = end - z->next < ZERO_CHUNK ? end - z->next : ZERO_CHUNK;
		z->next += *len;
		z->inflight++;
		return true;
	}
	return false;
}

/* Called with z->lock held, returns without it. Start chunks while there is
 * room, finish the job once none is left. A chunk may finish inside img_rw()
 * (a refused check or allocation, ENOMEM), which calls back in here: that
 * inner frame, or one on another thread, only counts; the frame in the loop
 * starts what may start and alone finishes the job, after its last use of it
 * (see "Completions" in image.h). Counting and this test are one locked step,
 * so no frame looks at the job after another one freed it. */
static void zero_pump_locked(struct zero_job *z)
{
	uint64_t off, len;
	bool finished;

	if (z->pumping) {
		pthread_mutex_unlock(&z->lock);
		return;
	}
	z->pumping = true;
	while (zero_next_chunk(z, &off, &len)) {
		pthread_mutex_unlock(&z->lock);
		img_rw(z->img, (char *)zero_buf, len, off, true, z->limit ? z->limit : z->img->size,
		       zero_chunk_done, z);
		pthread_mutex_lock(&z->lock);
	}
	z->pumping = false;
	finished = z->inflight == 0 && (z->err || z->cur >= z->nranges);
	pthread_mutex_unlock(&z->lock);
	if (finished) {
		vd_done_fn done = z->done;
		void *opaque = z->opaque;
		int err = z->err;

		zero_job_free(z);
		done(opaque, err);
	}
}

static void img_zero(struct vd_image *img, uint64_t len, uint64_t off, bool unmap, uint64_t limit,
		     vd_done_fn done, void *opaque)
{
	const struct vd_format *f = img->fmt;
	uint64_t za = img->zero_align ? img->zero_align : 1;
	uint64_t end = off + len;
	uint64_t a = (off + za - 1) / za * za, b = end / za * za;
	struct zero_job *z;
	int ret = img_check(img, len, off, true, limit ? limit : img->size);

	if (ret || !len) {
		done(opaque, ret);
		return;
	}
	z = calloc(1, sizeof(*z));
	if (!z) {
		done(opaque, -ENOMEM);
		return;
	}
	pthread_mutex_init(&z->lock, NULL);
	z->img = img;
	z->limit = limit;
	z->done = done;
	z->opaque = opaque;
	if (a < b && (f->write_zeroes || (unmap && f->discard))) {
		ret = unmap && f->discard ? f->discard(img, a, b - a)
					  : f->write_zeroes(img, a, b - a);
		if (ret == -ENOTSUP && unmap && f->discard && f->write_zeroes)
			ret = f->write_zeroes(img, a, b - a);
		if (ret && ret != -ENOTSUP) {
			zero_job_free(z);
			done(opaque, ret);
			return;
		}
	} else {
		ret = -ENOTSUP;
	}
	if (ret) { /* no driver help: write zeroes over everything */
		zero_job_add(z, off, end);
	} else {
		zero_job_add(z, off, a);
		zero_job_add(z, b, end);
	}
	if (!z->nranges) {
		zero_job_free(z);
		done(opaque, 0);
		return;
	}
	z->next = z->ranges[0][0];
	pthread_mutex_lock(&z->lock);
	zero_pump_locked(z);
}

const char *image_op_name(enum image_op op)
{
	static const char *const names[] = {
		[IMAGE_READ] = "read",	     [IMAGE_WRITE] = "write", [IMAGE_ZERO] = "write-zeroes",
		[IMAGE_DISCARD] = "discard", [IMAGE_FSYNC] = "fsync",
	};

	return op < sizeof(names) / sizeof(names[0]) && names[op] ? names[op] : "unknown";
}

void image_submit(struct vd_image *img, enum image_op op, void *buf, uint64_t len, uint64_t off,
		  vd_done_fn done, void *opaque)
{
	switch (op) {
	case IMAGE_READ:
	case IMAGE_WRITE:
		img_rw(img, buf, len, off, op == IMAGE_WRITE, img->size, done, opaque);
		return;
	case IMAGE_ZERO:
	case IMAGE_DISCARD:
		img_zero(img, len, off, op == IMAGE_DISCARD, 0, done, opaque);
		return;
	case IMAGE_FSYNC:
		fsync_batch_join(img, done, opaque);
		return;
	}
	done(opaque, -EINVAL);
}

int image_zero_grow_wait(struct vd_image *img, uint64_t len, uint64_t off)
{
	struct image_wait w;

	image_wait_init(&w);
	img_zero(img, len, off, false, off + len, image_wait_done, &w);
	return image_wait(&w);
}

/* ---- truncate, bitmaps (block status: image-chain.c) ---- */

int image_truncate(struct vd_image *img, uint64_t size)
{
	int ret;

	if (img->read_only)
		return -EROFS;
	if (!img->fmt->truncate) {
		vd_err("%s: the %s format cannot change its size", img->path, img->fmt->name);
		return -ENOTSUP;
	}
	pthread_rwlock_rdlock(&img->active_lock);
	if (atomic_load(&img->inactive)) {
		vd_err("%s: not resized: the image is inactive", img->path);
		ret = -EBUSY;
	} else {
		ret = img->fmt->truncate(img, size);
	}
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

/* May a bitmap verb run on img now? 0 with the active lock held for
 * reading, or -errno (logged) without it. */
static int bitmap_enter(struct vd_image *img, const char *verb, const char *name, bool have_op)
{
	if (!img->fmt->bitmap || !have_op) {
		vd_err("%s: bitmap %s %s: %s images keep no persistent bitmaps", img->path, verb,
		       name, img->fmt->name);
		return -ENOTSUP;
	}
	if (img->read_only) {
		vd_err("%s: bitmap %s %s: the image is read-only", img->path, verb, name);
		return -EROFS;
	}
	pthread_rwlock_rdlock(&img->active_lock);
	if (atomic_load(&img->inactive)) {
		pthread_rwlock_unlock(&img->active_lock);
		vd_err("%s: bitmap %s %s: the image is inactive", img->path, verb, name);
		return -EBUSY;
	}
	return 0;
}

int image_bitmap(struct vd_image *img, enum vd_bitmap_cmd cmd, const char *name,
		 uint32_t granularity)
{
	int ret = bitmap_enter(img, vd_bitmap_cmd_name(cmd), name, true);

	if (ret)
		return ret;
	ret = img->fmt->bitmap(img, cmd, name, granularity);
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

int image_bitmap_take(struct vd_image *img, const char *name, bool clear,
		      struct vd_bitmap_bits *out)
{
	int ret = bitmap_enter(img, "take", name, img->fmt->bitmap_take);

	if (ret)
		return ret;
	ret = img->fmt->bitmap_take(img, name, clear, out);
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}

int image_bitmap_merge(struct vd_image *img, const char *name, const struct vd_bitmap_bits *in)
{
	int ret = bitmap_enter(img, "merge", name, img->fmt->bitmap_merge);

	if (ret)
		return ret;
	ret = img->fmt->bitmap_merge(img, name, in);
	pthread_rwlock_unlock(&img->active_lock);
	return ret;
}
