/* Hand-over between hosts (QEMU's inactive and active nodes): a view is
 * inactivated on one host (its data requests held, its image written back
 * and left clean, every lock released) so that another host sharing the
 * storage can activate the same image and go on writing it. A view
 * activated takes the locks and reads the image's metadata anew. Requests
 * that arrive while a view is inactive wait for the activation, at most
 * inactive_wait seconds (then EIO); a thread of its own ends those (and
 * frees the views whose last reference went on a mirror's copier thread). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "fuse/vfs.h"
#include "mirror/mirror.h"
#include "util/log.h"

static void inactivate_drained(void *opaque, int err)
{
	struct vnode_call *w = opaque;
	struct vnode *n = w->n;
	int ret = image_inactivate(n->img);

	pt_unblock(n); /* inactive now, or failed: opens may pass through again */
	if (ret) {
		mirror_release(n->mirror); /* still active: the held requests go on */
	} else {
		/* Pages the kernel cached must not answer reads once another
		 * host writes the image. */
		notify_inval(n->ino);
	}
	w->done(w->opaque, ret);
	free(w);
}

void handover_inactivate(struct vnode *n, vd_done_fn done, void *opaque)
{
	struct vnode_call *w;
	int ret;

	if (atomic_load(&n->img->inactive)) {
		done(opaque, 0);
		return;
	}
	if (backup_busy(n->backup)) { /* its copier reads the image to the end */
		vd_err("%s: a backup runs: cancel it or wait for its end first", n->img->path);
		done(opaque, -EBUSY);
		return;
	}
	/* Another host is about to write the file: the kernel must not. */
	w = vnode_call_blocked(n, "inactivate the view", done, opaque);
	if (!w)
		return;
	ret = mirror_hold(n->mirror, inactivate_drained, w);
	if (ret) {
		pt_unblock(n);
		free(w);
		done(opaque, ret);
	}
}

int handover_activate(struct vnode *n)
{
	int ret;

	if (!atomic_load(&n->img->inactive))
		return 0;
	ret = image_activate(n->img, &vfs_cfg.open);
	if (ret)
		return ret;
	notify_inval(n->ino); /* what was cached before may have changed */
	mirror_release(n->mirror);
	return 0;
}

void handover_view_new(struct vnode *n)
{
	/* Opened inactive (-o inactive): data waits from the first request. */
	if (atomic_load(&n->img->inactive))
		mirror_hold(n->mirror, NULL, NULL);
}

/* ---- the thread that ends requests held too long ---- */

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	pthread_t thread;
	bool running, stop;
} ho = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
};

static void expire_view(struct vnode *n, void *opaque)
{
	uint64_t max_ns = *(uint64_t *)opaque;
	unsigned count;

	if (n->kind != VN_IMAGE || !n->mirror || !mirror_held(n->mirror))
		return;
	count = mirror_expire_held(n->mirror, max_ns);
	if (count && max_ns)
		vd_warn("%s: %u request%s waited %u s for the view to be activated: failed with "
			"EIO",
			n->img->path, count, count == 1 ? "" : "s", vfs_cfg.inactive_wait_s);
}

static void *handover_thread(void *arg)
{
	pthread_mutex_lock(&ho.lock);
	while (!ho.stop) {
		struct timespec until;
		/* Once the loops stop (unmount), nobody will activate: held
		 * requests are answered at once so that the loops can finish. */
		uint64_t max_ns = loop_stopping() ? 0 : vfs_cfg.inactive_wait_s * 1000000000ull;

		pthread_mutex_unlock(&ho.lock);
		tree_foreach(expire_view, &max_ns, false);
		tree_reap();
		pthread_mutex_lock(&ho.lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += 250000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		if (!ho.stop)
			pthread_cond_timedwait(&ho.cond, &ho.lock, &until);
	}
	pthread_mutex_unlock(&ho.lock);
	return NULL;
}

int handover_start(void)
{
	int ret;

	pthread_mutex_lock(&ho.lock);
	ho.stop = false;
	ret = -pthread_create(&ho.thread, NULL, handover_thread, NULL);
	ho.running = !ret;
	pthread_mutex_unlock(&ho.lock);
	return ret;
}

void handover_stop(void)
{
	pthread_mutex_lock(&ho.lock);
	if (!ho.running) {
		pthread_mutex_unlock(&ho.lock);
		return;
	}
	ho.stop = true;
	pthread_cond_broadcast(&ho.cond);
	pthread_mutex_unlock(&ho.lock);
	pthread_join(ho.thread, NULL);
	ho.running = false;
}
