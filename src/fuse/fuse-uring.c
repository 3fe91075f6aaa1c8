/* FUSE over io_uring (kernel 6.14+, fuse module parameter enable_uring=1).
 *
 * libfuse 3.14 knows nothing of it, so libfuse keeps parsing requests and
 * building replies while this file moves them: the INIT reply is amended to
 * ask for the ring, each event-loop thread then registers ring entries for
 * the per-CPU queues it owns, and a request arrives as a completion on that
 * thread's own io_uring. Its headers are copied in front of the payload so
 * that libfuse sees the usual contiguous request; the reply that libfuse
 * would write to /dev/fuse is caught in the custom-io writev hook and
 * committed through the ring instead (COMMIT_AND_FETCH), which also fetches
 * the entry's next request.
 *
 * The same hooks amend INIT for passthrough.c.
 *
 * What stays on /dev/fuse: INIT itself, FORGET, INTERRUPT and notifications.
 * The kernel routes a request to the queue of the CPU it was issued on, so a
 * VMM thread and the loop thread serving its CPU meet without a cross-CPU
 * hand-off; each queue's entries are shared out among all loop threads, so
 * one busy VMM thread still keeps every loop working. */
#include <errno.h>
#include <fcntl.h>
#include <linux/fuse.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/mman.h>
#include <sys/sysinfo.h>
#include <sys/uio.h>
#include <unistd.h>

#include "util/log.h"
#include "io/uring.h"
#include "fuse/vfs.h"

/* The kernel ABI of protocol 7.42, which Debian 12's headers predate. */
#define FURING_HDR_SZ		    128
#define FURING_OP_SZ		    128
#define FURING_CMD_REGISTER	    1
#define FURING_CMD_COMMIT_AND_FETCH 2
#define FURING_INIT_EXT		    (1u << 30) /* init flags: flags2 is valid */
#define FURING_INIT_OVER_URING	    (1u << 9)  /* init flags2: bit 41 of the 64-bit flags */
#define FURING_FUSE_INIT	    26

struct furing_ent_in_out {
	uint64_t flags;
	uint64_t commit_id;
	uint32_t payload_sz;
	uint32_t padding;
	uint64_t reserved;
};

struct furing_req_header {
	char in_out[FURING_HDR_SZ]; /* fuse_in_header in, fuse_out_header out */
	char op_in[FURING_OP_SZ];   /* the opcode's fixed argument */
	struct furing_ent_in_out ent;
};

struct furing_cmd_req {
	uint64_t flags;
	uint64_t commit_id;
	uint16_t qid;
	uint8_t padding[6];
};

/* Entries per queue: requests a CPU can have at the daemon at once (more wait
 * in the kernel). Payload buffers are reserved, not touched, until used. */
#define FURING_DEPTH 32
/* Room in front of each payload for the in-header and the opcode argument. */
#define FURING_LEAD 4096

struct furing_owner;

/* One ring entry: a request buffer registered with the kernel for queue qid.
 * hdr, payload, iov, qid, idx and owner are set by furing_prepare() and never
 * changed. What the buffers hold passes from hand to hand: the kernel fills them
 * (between a REGISTER or COMMIT_AND_FETCH and its completion), the owner's
 * thread processes the request, whichever thread answers it writes the reply
 * into them (furing_writev()), and only the owner's thread submits op, on its
 * own ring (directly, or handed over through owner->pending). */
struct furing_ent {
	struct uring_op op;
	struct furing_req_header *hdr;
	char *payload; /* page-aligned, furing.payload_sz bytes */
	struct iovec iov[2];
	uint16_t qid;
	unsigned idx; /* in furing.uniques */
	struct furing_owner *owner;
	struct furing_ent *next_commit; /* on owner->pending: under owner->lock */
};

/* One per event-loop thread: commits other threads hand it, so that an
 * entry's next request comes back to the thread that registered it. */
struct furing_owner {
	pthread_mutex_t lock;	    /* guards pending only; a leaf */
	struct furing_ent *pending; /* replied entries to commit, pushed by other threads */
	int efd;		    /* wakes the owner; set by furing_prepare() */
	struct uring_op poll;	    /* the owner thread's own */
};

/*
 * The ring's state, in three lifetimes. Everything here is written on the
 * main thread before the loop threads are created (loop_run(): furing_setup(),
 * the INIT exchange answered synchronously in loop_init(), then
 * furing_prepare()), and only read afterwards, by every thread, without a
 * lock: pthread_create() orders the writes before the loop threads' reads.
 * (The notify thread starts earlier, but reaches the writev hook only with
 * notices that loop threads hand it through its lock.) The exception is
 * uniques, whose elements are atomics.
 */
static struct {
	/* furing_setup(), before the first request. */
	struct fuse_session *se;
	enum furing_mode mode;

	/* The INIT exchange. furing_read() notes INIT's unique and whether the
	 * kernel offered the ring; the writev hook amends INIT's reply and sets
	 * on. Loop threads run furing_read() on every request from /dev/fuse too,
	 * but the kernel sends INIT only once, before they exist. */
	uint64_t init_unique;
	bool init_offered;
	bool on; /* INIT asked the kernel for the ring */

	/* furing_prepare(), after INIT; set only when on. */
	unsigned nqueues, nthreads;
	size_t payload_sz;
	struct furing_ent *ents;     /* nqueues * FURING_DEPTH */
	struct furing_owner *owners; /* nthreads */
	char *mem;		     /* every entry's payload, one mapping (never unmapped) */
	size_t mem_sz;
	/* The request in each entry, 0 when free: stored (release) by the
	 * thread that receives a request and cleared by the one that replies;
	 * furing_find() scans them (acquire) from any thread. */
	_Atomic uint64_t *uniques;
} furing = {.mode = FURING_AUTO};

/* Per thread. my_owner: this loop thread's owner, NULL on other threads (the
 * mirror copier, which answers guest writes it resumed): a reply from there
 * goes to the entry's owner through its pending list and eventfd. cur_ent: the
 * entry whose request this thread is processing right now (set around
 * fuse_session_process_buf()), so that a reply made inside the handler finds
 * its entry without a scan and furing_req_payload() knows the payload. */
static __thread struct furing_owner *my_owner;
static __thread struct furing_ent *cur_ent;

bool furing_active(void)
{
	return furing.on;
}

void *furing_req_payload(void)
{
	return cur_ent ? cur_ent->payload : NULL;
}

/* ---- the INIT exchange ---- */

/* Called with every request read from /dev/fuse before libfuse sees it. */
static void furing_inspect(const void *buf, size_t len)
{
	const struct fuse_in_header *in = buf;
	const struct fuse_init_in *arg = (const void *)(in + 1);

	if (len < sizeof(*in) + offsetof(struct fuse_init_in, flags2) + 4 ||
	    in->opcode != FURING_FUSE_INIT)
		return;
	furing.init_unique = in->unique;
	furing.init_offered =
		(arg->flags & FURING_INIT_EXT) && (arg->flags2 & FURING_INIT_OVER_URING);
	pt_init_request(arg->flags, arg->flags2);
}

static void furing_patch_init(struct iovec *iov, int count)
{
	struct fuse_init_out *out;

	/* max_stack_depth (7.40) is the first of Debian's unused words. */
	if (count < 2 || iov[1].iov_len < offsetof(struct fuse_init_out, unused) + 4)
		return;
	out = iov[1].iov_base;
	pt_init_reply(&out->flags, &out->flags2, &out->unused[0]);
	if (furing.mode == FURING_OFF || !furing.init_offered)
		return;
	out->flags |= FURING_INIT_EXT;
	out->flags2 |= FURING_INIT_OVER_URING;
	furing.on = true;
}

/* ---- requests ---- */

static void furing_on_request(struct uring_op *op, int res);

static void furing_submit(struct furing_ent *e, uint32_t cmd_op, uint64_t commit_id)
{
	struct furing_cmd_req req = {.commit_id = commit_id, .qid = e->qid};

	uring_cmd(&e->op, fuse_session_fd(furing.se), cmd_op, e->iov, 2, &req, sizeof(req),
		  furing_on_request);
}

static void furing_on_request(struct uring_op *op, int res)
{
	struct furing_ent *e = op->data;
	struct fuse_in_header *in = (void *)e->hdr->in_out;
	uint32_t psz = e->hdr->ent.payload_sz;
	struct furing_ent *saved = cur_ent;
	struct fuse_buf buf = {0};
	size_t opsz;
	char *start;

	if (res < 0) {
		/* Unmounted or the daemon is going away: the entry is retired. */
		if (res != -ENOTCONN && res != -ECANCELED && res != -ENODEV)
			vd_warn("fuse ring entry %u: %s", e->idx, strerror(-res));
		return;
	}
	if (loop_stopping())
		return; /* shutting down: the kernel ends it with the connection */
	if (in->len < sizeof(*in) + psz || in->len - sizeof(*in) - psz > FURING_OP_SZ ||
	    psz > furing.payload_sz) {
		vd_err("fuse ring: malformed request (len %u, payload %u)", in->len, psz);
		return;
	}
	opsz = in->len - sizeof(*in) - psz;
	start = e->payload - opsz - sizeof(*in);
	memcpy(start, in, sizeof(*in));
	memcpy(start + sizeof(*in), e->hdr->op_in, opsz);
	atomic_store_explicit(&furing.uniques[e->idx], in->unique, memory_order_release);
	buf.mem = start;
	buf.size = in->len;
	cur_ent = e;
	fuse_session_process_buf(furing.se, &buf);
	cur_ent = saved;
}

static struct furing_ent *furing_find(uint64_t unique)
{
	unsigned i;

	if (!unique)
		return NULL;
	if (cur_ent &&
	    atomic_load_explicit(&furing.uniques[cur_ent->idx], memory_order_acquire) == unique)
		return cur_ent;
	for (i = 0; i < furing.nqueues * FURING_DEPTH; i++)
		if (atomic_load_explicit(&furing.uniques[i], memory_order_acquire) == unique)
			return &furing.ents[i];
	return NULL;
}

static void furing_commit_pending(struct uring_op *op, int res)
{
	struct furing_owner *o = op->data;
	struct furing_ent *e;
	uint64_t v;

	if (read(o->efd, &v, sizeof(v)) < 0 && errno != EAGAIN)
		vd_warn("fuse ring: eventfd: %s", strerror(errno));
	pthread_mutex_lock(&o->lock);
	e = o->pending;
	o->pending = NULL;
	pthread_mutex_unlock(&o->lock);
	while (e) {
		struct furing_ent *next = e->next_commit;

		furing_submit(e, FURING_CMD_COMMIT_AND_FETCH, e->hdr->ent.commit_id);
		e = next;
	}
	if (!op->multishot)
		uring_poll(op, o->efd, POLLIN, true, furing_commit_pending);
}

/* libfuse's reply path: replies to ring requests go back through the ring. */
static ssize_t furing_writev(int fd, struct iovec *iov, int count, void *userdata)
{
	struct fuse_out_header *oh = iov[0].iov_base;
	struct furing_ent *e;
	size_t total = iov[0].iov_len, psz = 0;
	int i;

	if (count < 1 || iov[0].iov_len < sizeof(*oh))
		return writev(fd, iov, count);
	e = furing.on ? furing_find(oh->unique) : NULL;
	if (!e) {
		if (oh->unique && oh->unique == furing.init_unique)
			furing_patch_init(iov, count);
		return writev(fd, iov, count);
	}
	for (i = 1; i < count; i++)
		total += iov[i].iov_len;
	if (total - sizeof(*oh) > furing.payload_sz) {
		/* Cannot happen with libfuse's limits; answer EIO rather than hang. */
		vd_err("fuse ring: reply of %zu bytes does not fit", total);
		oh->error = -EIO;
		count = 1;
		total = sizeof(*oh);
	}
	/* A READ answered from the payload buffer itself needs no copy. */
	for (i = 1; i < count; i++) {
		if (iov[i].iov_base != e->payload + psz)
			memmove(e->payload + psz, iov[i].iov_base, iov[i].iov_len);
		psz += iov[i].iov_len;
	}
	memcpy(e->hdr->in_out, oh, sizeof(*oh));
	e->hdr->ent.payload_sz = psz;
	e->hdr->ent.commit_id = oh->unique;
	atomic_store_explicit(&furing.uniques[e->idx], 0, memory_order_release);
	if (my_owner == e->owner) {
		furing_submit(e, FURING_CMD_COMMIT_AND_FETCH, oh->unique);
	} else {
		uint64_t one = 1;

		pthread_mutex_lock(&e->owner->lock);
		e->next_commit = e->owner->pending;
		e->owner->pending = e;
		pthread_mutex_unlock(&e->owner->lock);
		if (write(e->owner->efd, &one, sizeof(one)) < 0)
			vd_warn("fuse ring: eventfd: %s", strerror(errno));
	}
	return total;
}

static ssize_t furing_read(int fd, void *buf, size_t len, void *userdata)
{
	ssize_t n = read(fd, buf, len);

	if (n > 0)
		furing_inspect(buf, n);
	return n;
}

/* ---- setup ---- */

static unsigned possible_cpus(void)
{
	FILE *f = fopen("/sys/devices/system/cpu/possible", "re");
	unsigned a, b, last = 0;
	int c;

	if (!f)
		return get_nprocs_conf();
	/* "0-3,8-11": the kernel has a queue for every CPU number up to the last. */
	while (fscanf(f, "%u", &a) == 1) {
		b = a;
		c = fgetc(f);
		if (c == '-' && fscanf(f, "%u", &b) == 1)
			c = fgetc(f);
		if (b > last)
			last = b;
		if (c != ',')
			break;
	}
	fclose(f);
	return last + 1;
}

int furing_setup(struct fuse_session *se, enum furing_mode mode)
{
	static const struct fuse_custom_io io = {.writev = furing_writev, .read = furing_read};

	furing.se = se;
	furing.mode = mode;
	if (fuse_session_custom_io(se, &io, fuse_session_fd(se)))
		return -EINVAL;
	return 0;
}

#define FURING_PARAM "/sys/module/fuse/parameters/enable_uring"
#define FURING_NOT_OFFERED                                                                \
	"FUSE over io_uring is not offered by the kernel (needs Linux 6.14+ and: echo 1 " \
	"> " FURING_PARAM ")"

/* Before mounting, so that a daemon about to fork can still fail in front of
 * the user: -o uring=on needs the kernel's switch on. */
int furing_precheck(enum furing_mode mode)
{
	FILE *f;
	int c = 0;

	if (mode != FURING_ON)
		return 0;
	f = fopen(FURING_PARAM, "re");
	if (f) {
		c = fgetc(f);
		fclose(f);
	}
	if (c == 'Y' || c == '1')
		return 0;
	vd_err(FURING_NOT_OFFERED);
	return -EOPNOTSUPP;
}

/* After INIT: the ring was asked for; lay out the entries for nthreads loops. */
int furing_prepare(unsigned nthreads)
{
	size_t stride;
	unsigned q, k, i;

	if (!furing.on) {
		if (furing.mode == FURING_ON) {
			vd_err(FURING_NOT_OFFERED);
			return -EOPNOTSUPP;
		}
		return 0;
	}
	furing.nqueues = possible_cpus();
	furing.nthreads = nthreads;
	/* The kernel wants room for a full max_write (1 MiB with libfuse 3.14). */
	furing.payload_sz = 1024 * 1024 + 4096;
	stride = FURING_LEAD + furing.payload_sz;
	furing.mem_sz = stride * furing.nqueues * FURING_DEPTH;
	furing.mem = mmap(NULL, furing.mem_sz, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (furing.mem == MAP_FAILED)
		return -errno;
	furing.ents = calloc(furing.nqueues * FURING_DEPTH, sizeof(*furing.ents));
	furing.uniques = calloc(furing.nqueues * FURING_DEPTH, sizeof(*furing.uniques));
	furing.owners = calloc(nthreads, sizeof(*furing.owners));
	if (!furing.ents || !furing.uniques || !furing.owners)
		return -ENOMEM;
	for (i = 0; i < nthreads; i++) {
		pthread_mutex_init(&furing.owners[i].lock, NULL);
		furing.owners[i].efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
		if (furing.owners[i].efd < 0)
			return -errno;
	}
	for (q = 0; q < furing.nqueues; q++) {
		for (k = 0; k < FURING_DEPTH; k++) {
			struct furing_ent *e;

			i = q * FURING_DEPTH + k;
			e = &furing.ents[i];
			e->idx = i;
			e->qid = q;
			/* Every thread takes a share of every queue: one issuing
			 * thread (one CPU's queue) still keeps all loops busy. */
			e->owner = &furing.owners[k % nthreads];
			e->payload = furing.mem + i * stride + FURING_LEAD;
			e->hdr = calloc(1, sizeof(*e->hdr));
			if (!e->hdr)
				return -ENOMEM;
			e->iov[0].iov_base = e->hdr;
			e->iov[0].iov_len = sizeof(*e->hdr);
			e->iov[1].iov_base = e->payload;
			e->iov[1].iov_len = furing.payload_sz;
			e->op.data = e;
		}
	}
	vd_info("FUSE over io_uring: %u queues of %u entries on %u threads", furing.nqueues,
		FURING_DEPTH, nthreads);
	return 0;
}

/* On loop thread idx (with a ring from uring_thread_init_cmd()): register its
 * share of every queue's entries. */
void furing_thread_start(unsigned idx)
{
	struct furing_owner *o;
	unsigned q, k;

	if (!furing.on || idx >= furing.nthreads)
		return;
	o = &furing.owners[idx];
	my_owner = o;
	o->poll.data = o;
	uring_poll(&o->poll, o->efd, POLLIN, true, furing_commit_pending);
	for (q = 0; q < furing.nqueues; q++)
		for (k = 0; k < FURING_DEPTH; k++)
			if (furing.ents[q * FURING_DEPTH + k].owner == o)
				furing_submit(&furing.ents[q * FURING_DEPTH + k],
					      FURING_CMD_REGISTER, 0);
}
