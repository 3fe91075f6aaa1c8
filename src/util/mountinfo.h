/* The mount table of this process (/proc/self/mountinfo), one mount at a
 * time, with the octal escapes of its paths undone. Shared by the command
 * line (a mountpoint already served), the mirror (a target inside a vdiskfs
 * mount) and the event loop (the mount's readahead). */
#ifndef VDISKFS_MOUNTINFO_H
#define VDISKFS_MOUNTINFO_H

#include <stdbool.h>

struct mountinfo_entry {
	unsigned major, minor;	/* st_dev of the mount */
	const char *mountpoint; /* unescaped */
	const char *fstype;	/* "fuse.vdiskfs", "ext4", ... */
	const char *source;	/* unescaped; may be NULL */
};

/* Call fn for every mount, in the table's order, until it returns true.
 * Returns true if fn did, false at the end or when the table cannot be read. */
bool mountinfo_each(bool (*fn)(const struct mountinfo_entry *m, void *opaque), void *opaque);

#endif
