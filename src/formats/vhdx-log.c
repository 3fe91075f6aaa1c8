/* The VHDX log: header updates (FileWriteGuid / DataWriteGuid / LogGuid),
 * finding the active sequence and replaying it at open, and writing dirty
 * BAT and sector-bitmap pages through the log (data flush, entry, flush,
 * apply, flush). Log space is reused only after an entry was applied. */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>

#include "util/endian.h"
#include "util/compiler.h"
#include "util/log.h"
#include "io/sync-io.h"
#include "formats/vhdx.h"

#define LOG_HDR	       64
#define LOG_DESC       32
#define LOG_MAX	       (1ull << 30) /* a log to replay is read whole */
#define LOG_WRITE_MAX  (1ull << 30) /* data sectors + zero runs one replay writes */
#define LOG_GROW_MAX   (4ull << 30) /* LastFileOffset - FlushedFileOffset */
#define LOG_ZERO_CHUNK VHDX_MiB

/* ---- header updates ---- */

static int header_write_once(struct vhdx *v, struct vhdx_header *h)
{
	int slot = !v->hdr_slot;
	uint8_t buf[VHDX_HEADER_SIZE];
	int ret;

	if (v->hdr.seq == UINT64_MAX) {
		vd_err("%s: header sequence number would overflow", v->img->path);
		return -EINVAL;
	}
	h->seq = v->hdr.seq + 1;
	memcpy(buf, v->hdr_raw, sizeof(buf));
	vhdx_header_build(buf, h);
	ret = meta_pwrite(v->img->fd, buf, sizeof(buf), slot ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF);
	if (!ret)
		ret = meta_fdatasync(v->img->fd);
	if (ret) {
		vd_err("%s: cannot write header %d: %s", v->img->path, slot + 1, strerror(-ret));
		return ret;
	}
	v->hdr_slot = slot;
	memcpy(v->hdr_raw, buf, sizeof(buf));
	v->hdr = *h;
	return 0;
}

/* Write both header slots with this session's FileWriteGuid (and a new
 * DataWriteGuid if asked) and the given LogGuid. */
int vhdx_header_update(struct vhdx *v, bool new_data_guid, const vhdx_guid *log_guid)
{
	struct vhdx_header h = v->hdr;
	int ret;

	if (!v->session_file_guid) {
		vhdx_guid_random(&v->file_guid);
		v->session_file_guid = true;
	}
	if (new_data_guid && !v->session_data_guid) {
		vhdx_guid_random(&v->data_guid);
		v->session_data_guid = true;
	}
	h.file_write = v->file_guid;
	if (v->session_data_guid)
		h.data_write = v->data_guid;
	h.log_guid = *log_guid;
	ret = header_write_once(v, &h);
	if (!ret)
		ret = header_write_once(v, &h);
	return ret;
}

/* Before the first change of the session: a new FileWriteGuid; before the
 * first change a read could see: a new DataWriteGuid as well. */
int vhdx_begin_write(struct vhdx *v, bool data)
{
	/* An image switched to read-only after it was written (it became a
	 * parent) still gets its metadata flushed and its log closed. */
	if (v->session_file_guid && (!data || v->session_data_guid))
		return 0;
	if (v->img->read_only)
		return -EROFS;
	return vhdx_header_update(v, data, &v->hdr.log_guid);
}

/* ---- reading log entries ---- */

struct log_ring {
	uint8_t *buf;
	uint64_t len;
	vhdx_guid guid;
};

struct log_entry {
	uint64_t off, len, seq, flushed, last;
	uint32_t tail, ndesc, ndata;
	uint8_t *data; /* a linear copy of the entry */
};

static void ring_copy(const struct log_ring *r, uint8_t *dst, uint64_t off, uint64_t len)
{
	while (len) {
		uint64_t o = off % r->len, n = r->len - o < len ? r->len - o : len;
		memcpy(dst, r->buf + o, n);
		dst += n;
		off += n;
		len -= n;
	}
}

static bool log_descs_valid(struct log_entry *e)
{
	const uint8_t *d = e->data + LOG_HDR;
	uint64_t dsec;

	e->ndata = 0;
	for (uint32_t i = 0; i < e->ndesc; i++, d += LOG_DESC) {
		bool zero = !memcmp(d, "zero", 4);
		if (!zero && memcmp(d, "desc", 4))
			return false;
		if (get_le64(d + 24) != e->seq || get_le64(d + 16) % VHDX_LOG_SECTOR)
			return false;
		if (zero && get_le64(d + 8) % VHDX_LOG_SECTOR)
			return false;
		e->ndata += !zero;
	}
	dsec = (LOG_HDR + (uint64_t)LOG_DESC * e->ndesc + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
	if ((dsec + e->ndata) * VHDX_LOG_SECTOR > e->len)
		return false;
	for (uint32_t i = 0; i < e->ndata; i++) {
		const uint8_t *s = e->data + (dsec + i) * VHDX_LOG_SECTOR;
		uint64_t seq = (uint64_t)get_le32(s + 4) << 32 | get_le32(s + 4092);
		if (memcmp(s, "data", 4) || seq != e->seq)
			return false;
	}
	return true;
}

/* Is there a valid entry at off? Fills e (e->data owned by the caller). */
static bool log_entry_read(const struct log_ring *r, uint64_t off, struct log_entry *e)
{
	uint8_t h[LOG_HDR];

	free(e->data);
	memset(e, 0, sizeof(*e));
	ring_copy(r, h, off, LOG_HDR);
	e->off = off;
	e->len = get_le32(h + 8);
	e->tail = get_le32(h + 12);
	e->seq = get_le64(h + 16);
	e->ndesc = get_le32(h + 24);
	e->flushed = get_le64(h + 48);
	e->last = get_le64(h + 56);
	if (memcmp(h, "loge", 4) || memcmp(h + 32, r->guid.b, 16) || !e->seq ||
	    e->len < VHDX_LOG_SECTOR || e->len % VHDX_LOG_SECTOR || e->len > r->len ||
	    e->tail % VHDX_LOG_SECTOR || e->tail >= r->len ||
	    LOG_HDR + (uint64_t)LOG_DESC * e->ndesc > e->len)
		return false;
	e->data = malloc(e->len);
	if (!e->data)
		return false;
	ring_copy(r, e->data, off, e->len);
	if (get_le32(e->data + 4) != vhdx_checksum(e->data, e->len, 4))
		return false;
	return log_descs_valid(e);
}

struct log_seq {
	bool valid;
	uint64_t tail, last_seq;
	struct log_entry last; /* header fields of the last entry (data freed) */
};

/* Walk entries from tail while they are valid and consecutive; the run is a
 * valid sequence if the last entry's Tail is the start of one of its entries. */
static uint64_t log_walk(const struct log_ring *r, uint64_t tail, struct log_seq *s)
{
	struct log_entry e = {0};
	uint64_t head = tail, walked = 0, *starts = NULL;
	unsigned n = 0;

	memset(s, 0, sizeof(*s));
	while (walked < r->len && log_entry_read(r, head, &e)) {
		if (n && e.seq != s->last_seq + 1)
			break;
		starts = g_realloc_n(starts, n + 1, sizeof(*starts));
		starts[n++] = head;
		s->last_seq = e.seq;
		s->last = e;
		s->last.data = NULL;
		walked += e.len;
		head = (head + e.len) % r->len;
	}
	free(e.data);
	for (unsigned i = 0; n && i < n; i++)
		if (starts[i] == s->last.tail)
			s->valid = true;
	s->tail = s->last.tail;
	g_free(starts);
	return n ? head : tail;
}

static int log_find_active(const struct log_ring *r, struct log_seq *best)
{
	uint64_t tail = 0, old_tail = 0;
	struct log_seq cur;

	memset(best, 0, sizeof(*best));
	for (;;) {
		uint64_t head = log_walk(r, tail, &cur);

		if (cur.valid && cur.last_seq > best->last_seq)
			*best = cur;
		if (cur.last_seq && head != tail)
			tail = head;
		else
			tail += VHDX_LOG_SECTOR;
		if (tail >= r->len)
			break;
		if (tail < old_tail)
			break;
		old_tail = tail;
	}
	return best->valid ? 0 : -ENOENT;
}

/* ---- checking the active sequence, before anything is written ---- */

/* One descriptor's target: a data sector (4 KiB) or a zero run. */
struct log_desc {
	bool zero;
	uint64_t off, len;
};

static void log_desc_get(const uint8_t *d, struct log_desc *x)
{
	x->zero = !memcmp(d, "zero", 4);
	x->off = get_le64(d + 16);
	x->len = x->zero ? get_le64(d + 8) : VHDX_LOG_SECTOR;
}

typedef int (*log_entry_fn)(struct vhdx *v, const struct log_entry *e, void *arg);

/* Call fn for each entry of the active sequence, tail to head. The entries
 * are copied again from the ring in memory, so what was checked is what is
 * written. */
static int log_seq_foreach(struct vhdx *v, const struct log_ring *r, const struct log_seq *s,
			   log_entry_fn fn, void *arg)
{
	struct log_entry e = {0};
	uint64_t off = s->tail;
	int ret = 0;

	for (uint64_t n = 0; !ret; n++) {
		if (n > r->len / VHDX_LOG_SECTOR || !log_entry_read(r, off, &e)) {
			vd_err("%s: log entry at 0x%" PRIx64 " of the log at 0x%" PRIx64
			       " cannot be read again",
			       v->img->path, off, v->hdr.log_offset);
			ret = -EINVAL;
			break;
		}
		ret = fn(v, &e, arg);
		if (e.seq == s->last_seq)
			break;
		off = (off + e.len) % r->len;
	}
	free(e.data);
	return ret;
}

static int log_refuse(const struct vhdx *v, const struct log_entry *e, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* Refuse the image for what entry e says; returns -EINVAL. */
static int log_refuse(const struct vhdx *v, const struct log_entry *e, const char *fmt, ...)
{
	va_list ap;
	char *why;

	va_start(ap, fmt);
	why = g_strdup_vprintf(fmt, ap);
	va_end(ap);
	vd_err("%s: log entry at 0x%" PRIx64 " of the log (file offset 0x%" PRIx64
	       ", sequence %" PRIu64 "): %s; not replaying the log",
	       v->img->path, e->off, v->hdr.log_offset + e->off, e->seq, why);
	g_free(why);
	return -EINVAL;
}

/* Where may [off, off+len) be written? Below the entry's LastFileOffset
 * (last, rounded up to 1 MiB), never in the header section (headers and
 * region tables: the region table read before the replay stays valid) or
 * the log, either wholly inside one region or outside all of them in one
 * 1 MiB block (a sector bitmap). Fills why and returns false if not. */
static bool log_target_ok(const struct vhdx *v, uint64_t off, uint64_t len, uint64_t last,
			  char *why, size_t n)
{
	bool inside = false;

	if (!len) {
		snprintf(why, n, "is empty");
		return false;
	}
	if (off + len < off || off + len > last) {
		snprintf(why, n, "ends past LastFileOffset 0x%" PRIx64, last);
		return false;
	}
	for (int i = 0; i < v->nused; i++) {
		const struct vhdx_range *u = &v->used[i];
		bool never = u->off < VHDX_MiB || u->off == v->hdr.log_offset;

		if (off >= u->off + u->len || u->off >= off + len)
			continue;
		if (never || off < u->off || off + len > u->off + u->len) {
			snprintf(why, n, "%s the %s at 0x%" PRIx64,
				 never ? "lies in" : "straddles the edge of", u->what, u->off);
			return false;
		}
		inside = true;
	}
	if (!inside && off / VHDX_MiB != (off + len - 1) / VHDX_MiB) {
		snprintf(why, n, "spans more than one 1 MiB block outside the regions");
		return false;
	}
	return true;
}

struct log_check {
	uint64_t file_size;
	uint64_t bytes; /* data sectors and zero runs of the sequence so far */
};

static int log_check_entry(struct vhdx *v, const struct log_entry *e, void *arg)
{
	struct log_check *c = arg;
	const uint8_t *d = e->data + LOG_HDR;
	uint64_t last;
	char why[160], tgt[80];

	if (e->flushed > e->last)
		return log_refuse(v, e,
				  "FlushedFileOffset 0x%" PRIx64 " is past LastFileOffset "
				  "0x%" PRIx64,
				  e->flushed, e->last);
	if (e->last - e->flushed > LOG_GROW_MAX)
		return log_refuse(v, e,
				  "LastFileOffset 0x%" PRIx64 " is more than %llu GiB past "
				  "FlushedFileOffset 0x%" PRIx64,
				  e->last, LOG_GROW_MAX >> 30, e->flushed);
	if (e->flushed > c->file_size)
		return log_refuse(v, e,
				  "the file is 0x%" PRIx64 " bytes, shorter than its "
				  "FlushedFileOffset 0x%" PRIx64 ": truncated",
				  c->file_size, e->flushed);
	last = ALIGN_UP(e->last, VHDX_MiB);
	for (uint32_t i = 0; i < e->ndesc; i++, d += LOG_DESC) {
		struct log_desc x;

		log_desc_get(d, &x);
		if (x.zero)
			snprintf(tgt, sizeof(tgt),
				 "FileOffset 0x%" PRIx64 " + ZeroLength 0x%" PRIx64, x.off, x.len);
		else
			snprintf(tgt, sizeof(tgt), "FileOffset 0x%" PRIx64, x.off);
		if (!log_target_ok(v, x.off, x.len, last, why, sizeof(why)))
			return log_refuse(v, e, "descriptor %u (%s): %s %s", i,
					  x.zero ? "zero" : "data", tgt, why);
		c->bytes += x.len;
		if (c->bytes > LOG_WRITE_MAX)
			return log_refuse(v, e,
					  "descriptor %u (%s): the sequence writes more than "
					  "%llu MiB (data sectors and zero runs)",
					  i, x.zero ? "zero" : "data", LOG_WRITE_MAX >> 20);
	}
	return 0;
}

/* ---- replay ---- */

struct log_apply {
	uint64_t end;  /* the file's size as the replay leaves it so far */
	uint8_t *zero; /* LOG_ZERO_CHUNK zero bytes */
};

/* Zero [off, off+len): only what lies inside the file; past its end the
 * file is extended at the end of the replay and reads as zeroes. */
static int log_apply_zero(struct vhdx *v, struct log_apply *a, uint64_t off, uint64_t len)
{
	uint64_t stop = off + len < a->end ? off + len : a->end;
	int ret = 0;

	for (; off < stop && !ret; off += LOG_ZERO_CHUNK) {
		uint64_t n = stop - off < LOG_ZERO_CHUNK ? stop - off : LOG_ZERO_CHUNK;
		ret = meta_pwrite(v->img->fd, a->zero, n, off);
	}
	return ret;
}

static int log_apply_entry(struct vhdx *v, const struct log_entry *e, void *arg)
{
	uint64_t dsec =
		(LOG_HDR + (uint64_t)LOG_DESC * e->ndesc + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
	const uint8_t *d = e->data + LOG_HDR;
	const uint8_t *s = e->data + dsec * VHDX_LOG_SECTOR;
	struct log_apply *a = arg;
	uint8_t page[VHDX_LOG_SECTOR];
	int ret = 0;

	for (uint32_t i = 0; i < e->ndesc && !ret; i++, d += LOG_DESC) {
		struct log_desc x;

		log_desc_get(d, &x);
		if (x.zero) {
			ret = log_apply_zero(v, a, x.off, x.len);
			continue;
		}
		memcpy(page, d + 8, 8);	       /* leading bytes */
		memcpy(page + 8, s + 8, 4084); /* payload */
		memcpy(page + 4092, d + 4, 4); /* trailing bytes */
		s += VHDX_LOG_SECTOR;
		ret = meta_pwrite(v->img->fd, page, VHDX_LOG_SECTOR, x.off);
		if (!ret && x.off + VHDX_LOG_SECTOR > a->end)
			a->end = x.off + VHDX_LOG_SECTOR;
	}
	return ret;
}

/* Write the checked sequence: new FileWriteGuid first, every entry in order,
 * the file at least the head's LastFileOffset, flush, LogGuid cleared. */
static int log_replay(struct vhdx *v, const struct log_ring *r, const struct log_seq *s,
		      uint64_t *file_size)
{
	static const vhdx_guid zero;
	struct log_apply a = {.end = *file_size};
	uint64_t last = ALIGN_UP(s->last.last, VHDX_MiB);
	int ret;

	a.zero = calloc(1, LOG_ZERO_CHUNK);
	if (!a.zero)
		return -ENOMEM;
	ret = vhdx_header_update(v, false, &v->hdr.log_guid);
	if (!ret)
		ret = log_seq_foreach(v, r, s, log_apply_entry, &a);
	if (!ret && a.end < last) {
		ret = meta_ftruncate(v->img->fd, last);
		a.end = last;
	}
	if (!ret)
		ret = meta_fdatasync(v->img->fd);
	if (!ret)
		ret = vhdx_header_update(v, false, &zero);
	if (ret)
		vd_err("%s: replaying the log at 0x%" PRIx64 " failed: %s", v->img->path,
		       v->hdr.log_offset, strerror(-ret));
	else
		*file_size = a.end;
	free(a.zero);
	return ret;
}

static int log_check_fields(struct vhdx *v, uint64_t file_size)
{
	const struct vhdx_header *h = &v->hdr;

	if (h->log_version != 0 && !vhdx_guid_zero(&h->log_guid)) {
		vd_err("%s: header at 0x%llx: log version %u is not supported", v->img->path,
		       v->hdr_slot ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF, h->log_version);
		return -ENOTSUP;
	}
	if (h->log_offset % VHDX_MiB || h->log_offset < VHDX_MiB || h->log_length % VHDX_MiB ||
	    !h->log_length || h->log_offset + h->log_length > file_size) {
		vd_err("%s: header at 0x%llx: log at 0x%" PRIx64 " length 0x%x is misaligned or "
		       "past the end of the file",
		       v->img->path, v->hdr_slot ? VHDX_HEADER2_OFF : VHDX_HEADER1_OFF,
		       h->log_offset, h->log_length);
		return -EINVAL;
	}
	return 0;
}

static int log_read_and_replay(struct vhdx *v, uint64_t *file_size)
{
	struct vd_image *img = v->img;
	struct log_ring r = {.len = v->hdr.log_length, .guid = v->hdr.log_guid};
	struct log_check c = {.file_size = *file_size};
	struct log_seq s;
	int ret;

	if (r.len > LOG_MAX) {
		vd_err("%s: log of 0x%" PRIx64 " bytes to replay is larger than the limit of "
		       "%llu MiB read whole",
		       img->path, r.len, LOG_MAX >> 20);
		return -ENOTSUP;
	}
	r.buf = malloc(r.len);
	if (!r.buf)
		return -ENOMEM;
	ret = meta_pread(img->fd, r.buf, r.len, v->hdr.log_offset);
	if (ret)
		goto out;
	if (log_find_active(&r, &s)) {
		/* Nothing valid was ever written under this LogGuid (e.g. a torn
		 * first entry): nothing to replay. */
		vd_warn("%s: log at 0x%" PRIx64 " has a LogGuid but no valid entry; ignoring it",
			img->path, v->hdr.log_offset);
		goto out;
	}
	ret = log_seq_foreach(v, &r, &s, log_check_entry, &c);
	if (ret)
		goto out;
	if (img->read_only) {
		vd_err("%s: the log at 0x%" PRIx64
		       " must be replayed before the image can be read; "
		       "open it read-write once or repair it with \"qemu-img check -r all %s\"",
		       img->path, v->hdr.log_offset, img->path);
		ret = -EPERM;
		goto out;
	}
	ret = log_replay(v, &r, &s, file_size);
	if (!ret) {
		v->replayed = true;
		vd_info("%s: replayed the log (sequence up to %" PRIu64 ")", img->path, s.last_seq);
	}
out:
	free(r.buf);
	return ret;
}

/* Validate the log fields and register the log range. */
int vhdx_log_open(struct vhdx *v, uint64_t file_size)
{
	int ret = log_check_fields(v, file_size);

	if (ret)
		return ret;
	v->used[v->nused++] = (struct vhdx_range){v->hdr.log_offset, v->hdr.log_length, "log"};
	return 0;
}

/* Replay a dirty log (after the region table is read: the replay checks its
 * targets against the regions); *file_size is the file's size afterwards. */
int vhdx_log_replay(struct vhdx *v, uint64_t *file_size)
{
	if (vhdx_guid_zero(&v->hdr.log_guid))
		return 0;
	return log_read_and_replay(v, file_size);
}

/* ---- writing through the log ---- */

struct log_pages {
	uint64_t n, cap;
	uint64_t *off;
	uint8_t *data;
};

static int collect_page(struct vhdx *v, uint64_t file_off, const uint8_t *page, void *arg)
{
	struct log_pages *p = arg;

	if (p->n == p->cap) {
		uint64_t cap = p->cap ? p->cap * 2 : 64;
		uint64_t *o = realloc(p->off, cap * sizeof(*o));
		uint8_t *d;
		if (!o)
			return -ENOMEM;
		p->off = o;
		d = realloc(p->data, cap * VHDX_LOG_SECTOR);
		if (!d)
			return -ENOMEM;
		p->data = d;
		p->cap = cap;
	}
	p->off[p->n] = file_off;
	memcpy(p->data + p->n * VHDX_LOG_SECTOR, page, VHDX_LOG_SECTOR);
	p->n++;
	return 0;
}

static uint64_t log_desc_sectors(uint64_t n)
{
	return (LOG_HDR + LOG_DESC * n + VHDX_LOG_SECTOR - 1) / VHDX_LOG_SECTOR;
}

/* Build one entry for pages [first, first+n) into buf (len bytes). */
static void log_build(struct vhdx *v, const struct log_pages *p, uint64_t first, uint64_t n,
		      uint8_t *buf, uint64_t len, uint64_t flushed, uint64_t last)
{
	uint64_t dsec = log_desc_sectors(n);
	uint64_t seq = v->log_seq;

	memset(buf, 0, len);
	memcpy(buf, "loge", 4);
	put_le32(buf + 8, len);
	put_le32(buf + 12, v->log_head); /* every entry is its own sequence */
	put_le64(buf + 16, seq);
	put_le32(buf + 24, n);
	memcpy(buf + 32, v->hdr.log_guid.b, 16);
	put_le64(buf + 48, flushed);
	put_le64(buf + 56, last);
	for (uint64_t i = 0; i < n; i++) {
		uint8_t *d = buf + LOG_HDR + LOG_DESC * i;
		uint8_t *s = buf + (dsec + i) * VHDX_LOG_SECTOR;
		const uint8_t *page = p->data + (first + i) * VHDX_LOG_SECTOR;

		memcpy(d, "desc", 4);
		memcpy(d + 4, page + 4092, 4);
		memcpy(d + 8, page, 8);
		put_le64(d + 16, p->off[first + i]);
		put_le64(d + 24, seq);
		memcpy(s, "data", 4);
		put_le32(s + 4, seq >> 32);
		memcpy(s + 8, page + 8, 4084);
		put_le32(s + 4092, (uint32_t)seq);
	}
	put_le32(buf + 4, vhdx_checksum(buf, len, 4));
}

/* A new LogGuid in the headers: the entries written under the old one (all
 * applied by now) stop being log entries for any reader. */
static int log_new_guid(struct vhdx *v)
{
	vhdx_guid g;
	int ret;

	vhdx_guid_random(&g);
	ret = vhdx_header_update(v, false, &g);
	if (!ret)
		v->log_seq = 1;
	return ret;
}

static int log_write_entry(struct vhdx *v, const struct log_pages *p, uint64_t first, uint64_t n,
			   uint64_t flushed, uint64_t last)
{
	uint64_t len = (log_desc_sectors(n) + n) * VHDX_LOG_SECTOR;
	uint8_t *buf;
	int fd = v->img->fd, ret;

	/* Each lap of the ring under its own LogGuid, and ending two sectors
	 * or more before the ring's end: QEMU's replay chains entries by
	 * sequence number whatever their tail says, fails on a chain that goes
	 * all the way round the ring, and loops for ever when the chain from
	 * the ring's start ends at its last sector or at its end. */
	if (v->log_head + len + 2 * VHDX_LOG_SECTOR > v->hdr.log_length)
		v->log_head = 0;
	if (!v->log_head && v->log_seq > 1) {
		ret = log_new_guid(v);
		if (ret)
			return ret;
	}
	buf = malloc(len);
	if (!buf)
		return -ENOMEM;
	log_build(v, p, first, n, buf, len, flushed, last);
	ret = meta_pwrite(fd, buf, len, v->hdr.log_offset + v->log_head);
	free(buf);
	if (!ret)
		ret = meta_fdatasync(fd);
	for (uint64_t i = 0; i < n && !ret; i++)
		ret = meta_pwrite(fd, p->data + (first + i) * VHDX_LOG_SECTOR, VHDX_LOG_SECTOR,
				  p->off[first + i]);
	if (!ret)
		ret = meta_fdatasync(fd);
	if (!ret) {
		v->log_seq++;
		v->log_head = (v->log_head + len) % v->hdr.log_length;
	}
	return ret;
}

static int log_activate(struct vhdx *v)
{
	int ret;

	if (v->log_active)
		return 0;
	ret = log_new_guid(v);
	if (ret)
		return ret;
	v->log_active = true;
	v->log_head = 0;
	return 0;
}

static int log_write_pages(struct vhdx *v, const struct log_pages *p)
{
	/* An entry takes at most half the log, so the previous (applied) entry
	 * stays intact while the next one is written. */
	uint64_t max_pages = v->hdr.log_length / 2 / VHDX_LOG_SECTOR - 2;
	struct stat st;
	uint64_t flushed, last;
	int ret = 0;

	if (fstat(v->img->fd, &st) < 0)
		return -errno;
	flushed = (uint64_t)st.st_size / VHDX_MiB * VHDX_MiB;
	last = ALIGN_UP((uint64_t)st.st_size, VHDX_MiB);
	if (last < v->file_end)
		last = v->file_end;
	for (uint64_t i = 0; i < p->n && !ret; i += max_pages) {
		uint64_t n = p->n - i < max_pages ? p->n - i : max_pages;
		ret = log_write_entry(v, p, i, n, flushed, last);
	}
	return ret;
}

/* Make the metadata of every completed write durable: flush the data, then
 * log, flush, apply, flush the dirty BAT and sector-bitmap pages. */
int vhdx_flush_locked(struct vhdx *v)
{
	struct log_pages p = {0};
	int ret;

	if (!v->ndirty)
		return 0;
	ret = vhdx_begin_write(v, false);
	if (!ret)
		ret = meta_fdatasync(v->img->fd);
	if (!ret)
		ret = log_activate(v);
	if (!ret)
		ret = vhdx_dirty_pages(v, collect_page, &p);
	if (!ret)
		ret = log_write_pages(v, &p);
	if (!ret)
		vhdx_dirty_clear(v);
	else
		vd_err("%s: writing metadata through the log at 0x%" PRIx64 " failed: %s",
		       v->img->path, v->hdr.log_offset, strerror(-ret));
	free(p.off);
	free(p.data);
	return ret;
}

/* Clean unmount: everything applied, LogGuid cleared. */
int vhdx_close_log(struct vhdx *v)
{
	static const vhdx_guid zero;
	int ret = vhdx_flush_locked(v);

	if (!ret && v->log_active) {
		ret = vhdx_header_update(v, false, &zero);
		v->log_active = false;
	}
	return ret;
}
