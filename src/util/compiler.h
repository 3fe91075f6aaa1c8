/* Small idioms every layer uses: the enclosing struct of a member, rounding
 * to a power-of-two alignment, division rounding up, the smaller and the
 * larger of two offsets. */
#ifndef VDISKFS_UTIL_COMPILER_H
#define VDISKFS_UTIL_COMPILER_H

#include <stddef.h>
#include <stdint.h>

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* x rounded up / down to a multiple of a, a power of two. */
#define ALIGN_UP(x, a)	   (((x) + (a)-1) & ~((__typeof__(x))(a)-1))
#define ALIGN_DOWN(x, a)   ((x) & ~((__typeof__(x))(a)-1))
#define DIV_ROUND_UP(n, d) (((n) + (d)-1) / (d))

/* Typed, so both sides are 64-bit (and not glib's MIN/MAX). */
static inline uint64_t min_u64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static inline uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

#endif
