/* The monotonic clock in nanoseconds: rate limits, polling windows and
 * timing decisions all read it here. */
#ifndef VD_CLOCK_H
#define VD_CLOCK_H

#include <stdint.h>
#include <time.h>

static inline uint64_t vd_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + ts.tv_nsec;
}

#endif
