/* Memory for the large tables a driver holds whole (qcow2's L1 and refcount
 * tables, the vhdx BAT): zeroed, and pages never written take no memory, so
 * the mostly empty table of a huge sparse disk costs what it holds. */
#ifndef VDISKFS_UTIL_TABLE_MEM_H
#define VDISKFS_UTIL_TABLE_MEM_H

#include <stddef.h>

/* Zeroed memory for n elements of size bytes, 64-byte aligned, or NULL. */
void *table_alloc(size_t n, size_t size);
void table_free(void *p);

#endif
