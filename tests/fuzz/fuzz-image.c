/* Fuzz target: open a hostile image of one format (FUZZ_FORMAT) read-only,
 * walk its block status and read through it (every kind of extent the driver
 * maps), with backing files denied. Nothing may crash, hang or read outside
 * the image; refusals are fine. */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "image.h"
#include "log.h"
#include "uring.h"

#ifndef FUZZ_FORMAT
#error "FUZZ_FORMAT must name the driver"
#endif

#define READ_CHUNK  (64 * 1024)
#define MAX_READS   48
#define MAX_STATUS  256

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
	vd_log_init("fuzz", false, false);
	vd_log_quiet(true);
	return uring_thread_init(64);
}

static void fuzz_walk(struct vd_image *img)
{
	static char buf[READ_CHUNK];
	uint64_t off = 0, pnum;
	enum vd_bs st;

	for (int i = 0; i < MAX_STATUS && off < img->size; i++) {
		if (image_block_status(img, off, img->size - off, &pnum, &st))
			break;
		off += pnum;
	}
	/* The start, the end, and spots spread over the whole disk. */
	for (int i = 0; i < MAX_READS && img->size; i++) {
		uint64_t at = i < MAX_READS / 2 ? (uint64_t)i * READ_CHUNK
						: img->size / (MAX_READS / 2) * (i - MAX_READS / 2);
		uint64_t len = READ_CHUNK;

		if (at >= img->size)
			continue;
		if (len > img->size - at)
			len = img->size - at;
		image_pread_sync(img, buf, len, at);
	}
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct vd_open_opts o = {
		.read_only = true,
		.format = FUZZ_FORMAT,
		.backing = VD_BACKING_DENY,
		.cache_size = 1 << 20,
	};
	struct vd_image *img;
	char path[64];
	int fd = memfd_create("fuzz-image", MFD_CLOEXEC);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) == (ssize_t)size) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		if (image_open(path, &o, &img) == 0) {
			fuzz_walk(img);
			image_unref(img);
		}
	}
	close(fd);
	return 0;
}
