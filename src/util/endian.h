/* Loads and stores of big- and little-endian integers at any address, for
 * on-disk structures: qcow2 is big-endian, VHDX little-endian.
 * get_be16/32/64, put_be16/32/64, get_le16/32/64, put_le16/32/64. */
#ifndef VDISKFS_UTIL_ENDIAN_H
#define VDISKFS_UTIL_ENDIAN_H

#include <endian.h>
#include <stdint.h>
#include <string.h>

#define VD_ENDIAN_ACCESS(order, bits)                                   \
	static inline uint##bits##_t get_##order##bits(const void *p)   \
	{                                                               \
		uint##bits##_t v;                                       \
		memcpy(&v, p, sizeof(v));                               \
		return order##bits##toh(v);                             \
	}                                                               \
	static inline void put_##order##bits(void *p, uint##bits##_t v) \
	{                                                               \
		v = hto##order##bits(v);                                \
		memcpy(p, &v, sizeof(v));                               \
	}

VD_ENDIAN_ACCESS(be, 16)
VD_ENDIAN_ACCESS(be, 32)
VD_ENDIAN_ACCESS(be, 64)
VD_ENDIAN_ACCESS(le, 16)
VD_ENDIAN_ACCESS(le, 32)
VD_ENDIAN_ACCESS(le, 64)

#undef VD_ENDIAN_ACCESS

#endif
