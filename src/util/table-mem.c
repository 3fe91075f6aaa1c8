/* Large zeroed tables from their own anonymous mapping (untouched pages stay
 * unbacked, whatever malloc's thresholds are), small ones from calloc; a
 * 64-byte header in front says which. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#include "util/table-mem.h"

#define TABLE_HDR     64
#define TABLE_MAP_MIN (64u << 10)

struct table_hdr {
	size_t bytes; /* mapped bytes, header included; 0: from calloc */
};

void *table_alloc(size_t n, size_t size)
{
	struct table_hdr *h;
	size_t bytes;

	if (size && n > (SIZE_MAX - TABLE_HDR) / size)
		return NULL;
	bytes = n * size + TABLE_HDR;
	if (bytes < TABLE_MAP_MIN) {
		h = calloc(1, bytes);
		if (!h)
			return NULL;
		h->bytes = 0;
	} else {
		h = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (h == MAP_FAILED)
			return NULL;
		/* a huge page would back a whole 2 MiB for one entry written */
		if (bytes >= (2u << 20))
			madvise(h, bytes, MADV_NOHUGEPAGE);
		h->bytes = bytes;
	}
	return (char *)h + TABLE_HDR;
}

void table_free(void *p)
{
	struct table_hdr *h;

	if (!p)
		return;
	h = (struct table_hdr *)((char *)p - TABLE_HDR);
	if (h->bytes)
		munmap(h, h->bytes);
	else
		free(h);
}
