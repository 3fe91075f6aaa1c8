/* An exclusive lock on byte ranges that never blocks a thread: a caller whose
 * range overlaps a held one is queued and resumed through its wake callback
 * on the thread that releases the conflicting range. The mirror's copier and
 * its guest-write fan-out share one per job. */
#ifndef VDISKFS_RANGELOCK_H
#define VDISKFS_RANGELOCK_H

#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

/* One owner's range. rangelock_lock() sets off, end, wake (and clears held)
 * before it takes the lock; from then on prev, next and held are under the
 * lock. gnext is used only by the unlocking thread, after it dropped the
 * lock, for the ranges that one unlock granted. */
struct rl_range {
	uint64_t off, end;		  /* [off, end) */
	void (*wake)(struct rl_range *r); /* the range is now held by its owner */
	struct rl_range *prev, *next;	  /* on the held or the waiting list */
	struct rl_range *gnext;		  /* granted in one unlock, to wake */
	bool held;
};

struct rangelock {
	/* Guards both lists and the counts. A leaf: wake callbacks run after
	 * it is dropped, and nothing else is locked while it is held. */
	pthread_mutex_t lock;
	struct rl_range *held;			/* unordered */
	struct rl_range *wait_head, *wait_tail; /* FIFO */
	unsigned nheld, nwaiting;
};

void rangelock_init(struct rangelock *rl);
void rangelock_destroy(struct rangelock *rl);

/* Take [off, off+len) (len > 0) for r. Returns true if it is held now;
 * false if r was queued: r->wake(r) then runs once, with r held, from the
 * thread that releases the last conflicting range. A waiter is granted in
 * arrival order against overlapping earlier waiters, so neither the copier
 * nor a guest is starved; each owner holds one range at a time, so the lock
 * cannot deadlock. */
bool rangelock_lock(struct rangelock *rl, struct rl_range *r, uint64_t off, uint64_t len,
		    void (*wake)(struct rl_range *r));
/* Release r and wake every waiter that no longer conflicts. */
void rangelock_unlock(struct rangelock *rl, struct rl_range *r);
/* Is anything held or waiting? (for drain checks and tests) */
bool rangelock_busy(struct rangelock *rl);

#endif
