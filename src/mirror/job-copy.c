/* What the job engine's copier and the backup's share: the token bucket of
 * the speed limit, the zero test that spares the copy of zeroes, the
 * eventfd wake-up of a copier thread and the progress in their JSON status
 * (job-copy.h). */
#include <errno.h>
#include <string.h>
#include <unistd.h>

#include "util/clock.h"
#include "util/json.h"
#include "util/log.h"
#include "mirror/job-copy.h"

void copy_bucket_init(struct copy_bucket *b)
{
	b->tokens = 0;
	b->last_ns = vd_now_ns();
}

int copy_bucket_wait(struct copy_bucket *b, uint64_t speed, uint64_t burst)
{
	uint64_t now = vd_now_ns();

	if (!speed) {
		b->last_ns = now;
		b->tokens = 0;
		return 0;
	}
	b->tokens += (double)(now - b->last_ns) * speed / 1e9;
	b->last_ns = now;
	if (b->tokens > burst)
		b->tokens = burst;
	if (b->tokens >= 0)
		return 0;
	return (int)(-b->tokens * 1000 / speed) + 1;
}

void copy_bucket_take(struct copy_bucket *b, uint64_t speed, uint64_t len)
{
	if (speed)
		b->tokens -= len;
}

bool buf_is_zero(const void *buf, size_t len)
{
	const uint64_t *p = buf;
	size_t n = len / 8;

	for (size_t i = 0; i < n; i++)
		if (p[i])
			return false;
	return !memcmp((const char *)buf + n * 8, "\0\0\0\0\0\0\0", len % 8);
}

void copy_kick(int efd, const char *who)
{
	uint64_t one = 1;

	if (efd >= 0 && write(efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		vd_warn("%s: cannot wake the copier: %s", who, strerror(errno));
}

void job_progress_json(struct json_writer *j, uint64_t copied, uint64_t total, uint64_t percent,
		       uint64_t rate, int64_t eta)
{
	json_u64(j, "copied", copied);
	json_u64(j, "total", total);
	json_u64(j, "percent", percent);
	json_u64(j, "rate", rate);
	if (eta >= 0)
		json_u64(j, "eta", (uint64_t)eta);
	else
		json_str(j, "eta", NULL); /* unknown */
}
