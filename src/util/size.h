/* Parsing sizes with K/M/G/T suffixes (binary multiples), as options and
 * mirror parameters take them. */
#ifndef VDISKFS_SIZE_H
#define VDISKFS_SIZE_H

#include <stdint.h>

/* "512", "64K", "1M", "2g": 0 or -EINVAL (also on overflow or junk). */
int parse_size(const char *s, uint64_t *out);

#endif
