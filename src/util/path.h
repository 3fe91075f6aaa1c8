/* Path arithmetic on strings, shared by the backing policy, the directory
 * scan and the mirror's target checks. Nothing here touches the file system. */
#ifndef VDISKFS_PATH_H
#define VDISKFS_PATH_H

#include <stdbool.h>

/* Is path dir itself or below it? Both absolute and canonical (a trailing
 * slash on dir is allowed); "/" holds everything. */
bool path_within(const char *path, const char *dir);

#endif
