/* What the image layer's own files share and nobody else sees. */
#ifndef VDISKFS_IMAGE_INT_H
#define VDISKFS_IMAGE_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "image/image.h"
#include "util/compiler.h"

/* Decompress one cluster (compress.c). Returns 0 or -EIO. */
int vd_decompress(enum vd_compress algo, const void *in, size_t inlen, void *out, size_t outlen);

/* Join the image's next fsync batch (image-sync.c): IMAGE_FSYNC. */
void fsync_batch_join(struct vd_image *img, vd_done_fn done, void *opaque);

/* A blocking call's wait (image-sync.c): init, submit with image_wait_done,
 * then image_wait() runs the calling thread's ring until it is done. */
struct image_wait {
	atomic_bool done;
	int err;
};
void image_wait_init(struct image_wait *w);
void image_wait_done(void *opaque, int err);
int image_wait(struct image_wait *w);

/* Above this average (ns), an image's flushes leave the event loop for a
 * second (image-sync.c; a test moves it to stay clear of a loaded
 * machine's timing). */
extern uint64_t fsync_inline_max_ns;

/* Requests of other threads that this thread resumed and that are not
 * finished (image-io.c): image_wait() runs the ring until they are. */
extern __thread unsigned image_adopted;

#endif
