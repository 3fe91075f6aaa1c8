/* The backup's copy-before-write store: chunk-sized slots in an unlinked
 * temporary file plus an in-memory index (backup-int.h). Writes are plain
 * pwrite() calls into the page cache of a local file: the store needs no
 * durability (after a crash nothing reads it), and a guest write waits for
 * the save anyway. */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util/log.h"
#include "mirror/backup-int.h"

int cbw_store_open(struct cbw_store *s, const char *dir, uint32_t chunk)
{
	memset(s, 0, sizeof(*s));
	s->fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
	if (s->fd < 0) {
		int err = errno;

		vd_err("backup: cannot make a copy-before-write store in %s: %s", dir,
		       strerror(err));
		return -err;
	}
	s->chunk = chunk;
	s->index = g_hash_table_new_full(g_int64_hash, g_int64_equal, g_free, NULL);
	return 0;
}

void cbw_store_close(struct cbw_store *s)
{
	if (s->fd >= 0)
		close(s->fd);
	if (s->index)
		g_hash_table_destroy(s->index);
	free(s->free_slots);
	memset(s, 0, sizeof(*s));
	s->fd = -1;
}

uint64_t cbw_store_reserve(struct cbw_store *s)
{
	return s->nfree ? s->free_slots[--s->nfree] : s->next_slot++;
}

void cbw_store_unreserve(struct cbw_store *s, uint64_t slot)
{
	if (s->nfree == s->cap) {
		size_t cap = s->cap ? s->cap * 2 : 64;
		uint64_t *n = realloc(s->free_slots, cap * sizeof(*n));

		if (!n)
			return; /* the slot is lost, not reused: the file only grows */
		s->free_slots = n;
		s->cap = cap;
	}
	s->free_slots[s->nfree++] = slot;
}

int cbw_store_write(const struct cbw_store *s, uint64_t slot, const void *buf, uint32_t len)
{
	uint64_t off = slot * s->chunk;

	for (uint32_t done = 0; done < len;) {
		ssize_t n = pwrite(s->fd, (const char *)buf + done, len - done, off + done);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return n < 0 ? -errno : -EIO;
		done += n;
	}
	return 0;
}

void cbw_store_commit(struct cbw_store *s, uint64_t idx, uint64_t slot)
{
	gint64 *key = g_new(gint64, 1);

	*key = (gint64)idx;
	g_hash_table_insert(s->index, key, GSIZE_TO_POINTER(slot + 1));
	s->nsaved++;
}

bool cbw_store_lookup(struct cbw_store *s, uint64_t idx, uint64_t *slot)
{
	gint64 key = (gint64)idx;
	gpointer v = g_hash_table_lookup(s->index, &key);

	if (!v)
		return false;
	*slot = GPOINTER_TO_SIZE(v) - 1;
	return true;
}

void cbw_store_drop(struct cbw_store *s, uint64_t idx)
{
	gint64 key = (gint64)idx;
	uint64_t slot;

	if (!cbw_store_lookup(s, idx, &slot))
		return;
	g_hash_table_remove(s->index, &key);
	s->nsaved--;
	if (fallocate(s->fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, slot * s->chunk,
		      s->chunk) < 0 &&
	    errno != EOPNOTSUPP)
		vd_warn("backup: cannot free a copy-before-write slot: %s", strerror(errno));
	cbw_store_unreserve(s, slot);
}
