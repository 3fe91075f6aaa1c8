/* The unit tests' library (prefix t_): the GTest setup every program shares,
 * a scratch directory, shell and qemu-img runners with honest skips when a
 * tool is missing, opening images and comparing them with a raw reference,
 * and the qcow2 and vhdx fixtures (qemu-made images, patched structures). */
#ifndef VDISKFS_TESTLIB_H
#define VDISKFS_TESTLIB_H

#include <glib.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image/image.h"

/* ---- the program (testlib.c) ---- */

/* g_test_init, the daemon's log on stderr under the program's name, and an
 * io_uring for the calling thread. */
void t_init(int *argc, char ***argv);
/* g_test_run, then the scratch directory is removed (kept, and named, when a
 * case failed or VDISKFS_TEST_KEEP is set); the exit status. */
int t_run(void);

/* g_test_add_func / g_test_add_data_func for a case that works on qemu-made
 * images: it skips (t_require_qemu()) when qemu-img or qemu-io is missing. */
void t_add_qemu(const char *path, void (*fn)(void));
void t_add_qemu_data(const char *path, gconstpointer data, void (*fn)(gconstpointer));

/* True when name is on PATH; otherwise the running case skips ("NAME not
 * found", g_test_skip) and false: `if (!t_require_tool("qemu-img")) return;` */
bool t_require_tool(const char *name);
/* t_require_tool() of qemu-img and qemu-io. */
bool t_require_qemu(void);
bool t_have_tool(const char *name);

/* The scratch directory, made on first use under $VDISKFS_TESTDIR (default
 * /var/tmp); t_path() names a file in it (relative names) or returns an
 * absolute one as it is; g_free() it. */
const char *t_dir(void);
char *t_path(const char *name);

/* Run a shell command in the scratch directory; its exit status (255 when it
 * did not exit). --verbose shows the output of a command that failed. */
int t_sh_rc(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* The same for a command that must succeed: a failure fails the case. */
void t_sh(const char *fmt, ...) G_GNUC_PRINTF(1, 2);
/* `qemu-img ARGS` in the scratch directory; its exit status. */
int t_qemu_img(const char *fmt, ...) G_GNUC_PRINTF(1, 2);

/* ---- images and raw references (t-image.c) ---- */

/* image_open of name (see t_path()) with backing files followed; 0 or -errno. */
int t_open(const char *name, bool ro, struct vd_image **img);
/* The same for an image that must open. */
struct vd_image *t_open_ok(const char *name, bool ro);
/* Guest bytes [off, off+len) of img, read in one request, against the same
 * range of the file fd (zeroes past its end); a difference fails the case. */
void t_compare_fd(struct vd_image *img, int fd, uint64_t off, uint64_t len);
/* [off, off+len) against the file raw, in 4 MiB reads. */
void t_compare(struct vd_image *img, const char *raw, uint64_t off, uint64_t len);
/* The whole image against raw in 1 MiB reads, then 16 unaligned reads at
 * random places (up to 300000 bytes) across clusters and tables. */
void t_compare_raw(struct vd_image *img, const char *raw);
/* Whole-file access to a file of the scratch directory (or absolute). */
void t_pread(const char *name, void *buf, size_t len, uint64_t off);
void t_pwrite(const char *name, const void *buf, size_t len, uint64_t off);
/* The big-endian 64-bit field at off of the file name. */
uint64_t t_get_be64(const char *name, uint64_t off);
/* Fill buf with a pattern that differs per byte offset and seed. */
void t_pattern(void *buf, size_t len, uint64_t off, unsigned seed);

/* ---- qcow2 fixtures (t-qcow2.c) ---- */

/* Build the qemu-made fixtures (tests/fixtures/qcow2-fixtures.sh: each
 * NAME.qcow2 beside NAME.raw, its `qemu-img convert -O raw`) into the scratch
 * directory; nothing when qemu-img or qemu-io is missing (the cases, added
 * with t_add_qemu(), skip). A script that fails ends the program. */
void t_qcow2_fixtures(void);

/* ---- vhdx structures (t-vhdx.c), to build what no Linux tool makes ---- */

/* Recompute the CRC-32C at off+4 of the len-byte structure at off. */
void t_vhdx_fix_crc(const char *path, uint64_t off, size_t len);
/* File offset of the metadata item with this GUID (16 on-disk bytes), or 0. */
uint64_t t_vhdx_meta_item(const char *path, const uint8_t guid[16]);
/* File offset of the region with this GUID, or 0. */
uint64_t t_vhdx_region(const char *path, const uint8_t guid[16]);
/* Offset of the current header (0x10000 or 0x20000). */
uint64_t t_vhdx_current_header(const char *path);
/* One descriptor of a crafted log entry: a data sector (the 4096 bytes at
 * data) or a zero run of len bytes, written to file offset off. */
struct t_vhdx_log_desc {
	bool zero;
	uint64_t off, len;
	const void *data;
};
/* Write a log entry (its own sequence, valid CRC-32C) of n descriptors at
 * byte pos of the log of path, and put its LogGuid into the current header,
 * as a writer that crashed before applying it would leave the image. */
void t_vhdx_log_entry(const char *path, uint64_t pos, uint64_t seq, uint64_t flushed, uint64_t last,
		      const struct t_vhdx_log_desc *d, unsigned n);

#endif
