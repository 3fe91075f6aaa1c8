/* Telling the kernel that a view's name is gone from the root directory, so
 * that it drops the entry and forgets the node (which closes the image and
 * releases the host file) instead of caching it until memory runs short. The
 * kernel takes the directory's lock to do so, and a lookup in progress holds
 * that lock until an event loop answers it: so a thread of its own sends the
 * notices, never an event loop. It also drops a view's cached pages when the
 * image may change behind it (hand-over). */
#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <string.h>
#include <time.h>

#include "util/log.h"
#include "fuse/vfs.h"

struct notice {
	fuse_ino_t ino;
	char name[]; /* empty: invalidate the node's cache */
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	GQueue queue; /* struct notice */
	struct fuse_session *se;
	pthread_t thread;
	bool running, stop, busy;
} nt = {
	.lock = PTHREAD_MUTEX_INITIALIZER,
	.cond = PTHREAD_COND_INITIALIZER,
	.queue = G_QUEUE_INIT,
};

static void *notify_thread(void *arg)
{
	pthread_mutex_lock(&nt.lock);
	for (;;) {
		struct notice *e = g_queue_pop_head(&nt.queue);
		int ret;

		if (!e) {
			if (nt.stop)
				break;
			pthread_cond_wait(&nt.cond, &nt.lock);
			continue;
		}
		nt.busy = true;
		pthread_mutex_unlock(&nt.lock);
		if (e->name[0])
			ret = fuse_lowlevel_notify_delete(nt.se, VFS_ROOT_INO, e->ino, e->name,
							  strlen(e->name));
		else
			ret = fuse_lowlevel_notify_inval_inode(nt.se, e->ino, 0, 0);
		if (ret && ret != -ENOENT)
			vd_debug("node %" PRIu64 " (%s): could not tell the kernel: %s",
				 (uint64_t)e->ino, e->name, strerror(-ret));
		g_free(e);
		pthread_mutex_lock(&nt.lock);
		nt.busy = false;
		pthread_cond_broadcast(&nt.cond);
	}
	pthread_mutex_unlock(&nt.lock);
	return NULL;
}

int notify_start(struct fuse_session *se)
{
	int ret;

	pthread_mutex_lock(&nt.lock);
	nt.se = se;
	nt.stop = false;
	ret = -pthread_create(&nt.thread, NULL, notify_thread, NULL);
	nt.running = !ret;
	pthread_mutex_unlock(&nt.lock);
	return ret;
}

void notify_inval(fuse_ino_t ino)
{
	notify_gone(ino, "");
}

void notify_gone(fuse_ino_t ino, const char *name)
{
	size_t len = strlen(name) + 1;
	struct notice *e;

	pthread_mutex_lock(&nt.lock);
	if (nt.running && !nt.stop) {
		e = g_malloc(sizeof(*e) + len);
		e->ino = ino;
		memcpy(e->name, name, len);
		g_queue_push_tail(&nt.queue, e);
		pthread_cond_broadcast(&nt.cond);
	}
	pthread_mutex_unlock(&nt.lock);
}

bool notify_stop(void)
{
	struct timespec until;
	bool stuck = false;

	pthread_mutex_lock(&nt.lock);
	if (!nt.running) {
		pthread_mutex_unlock(&nt.lock);
		return true;
	}
	nt.stop = true;
	g_queue_clear_full(&nt.queue, g_free);
	pthread_cond_broadcast(&nt.cond);
	/* A notice the kernel holds up behind a lookup nobody will answer any
	 * more (the loops have stopped) would wait until the process exits. */
	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += 2;
	while (nt.busy && !stuck)
		stuck = pthread_cond_timedwait(&nt.cond, &nt.lock, &until) == ETIMEDOUT;
	nt.running = false;
	pthread_mutex_unlock(&nt.lock);
	if (stuck) {
		vd_warn("a notice to the kernel is still pending; not waiting for it");
		pthread_detach(nt.thread);
	} else {
		pthread_join(nt.thread, NULL);
	}
	return !stuck;
}
