/* The mirror's range lock: held ranges on an unordered list, waiters on a
 * FIFO list; both stay short (the copier's chunks plus the guest requests in
 * flight), so a linear scan is cheaper than a tree. */
#include <assert.h>

#include "mirror/rangelock.h"

void rangelock_init(struct rangelock *rl)
{
	pthread_mutex_init(&rl->lock, NULL);
	rl->held = NULL;
	rl->wait_head = rl->wait_tail = NULL;
	rl->nheld = rl->nwaiting = 0;
}

void rangelock_destroy(struct rangelock *rl)
{
	assert(!rl->held && !rl->wait_head);
	pthread_mutex_destroy(&rl->lock);
}

static bool rl_overlap(const struct rl_range *a, const struct rl_range *b)
{
	return a->off < b->end && b->off < a->end;
}

static bool rl_conflicts_held(struct rangelock *rl, const struct rl_range *r)
{
	for (struct rl_range *h = rl->held; h; h = h->next)
		if (rl_overlap(h, r))
			return true;
	return false;
}

static void rl_hold(struct rangelock *rl, struct rl_range *r)
{
	r->held = true;
	r->prev = NULL;
	r->next = rl->held;
	if (rl->held)
		rl->held->prev = r;
	rl->held = r;
	rl->nheld++;
}

bool rangelock_lock(struct rangelock *rl, struct rl_range *r, uint64_t off, uint64_t len,
		    void (*wake)(struct rl_range *r))
{
	bool wait = false;

	assert(len > 0);
	r->off = off;
	r->end = off + len < off ? UINT64_MAX : off + len;
	r->wake = wake;
	r->held = false;
	pthread_mutex_lock(&rl->lock);
	if (rl_conflicts_held(rl, r)) {
		wait = true;
	} else {
		for (struct rl_range *w = rl->wait_head; w; w = w->next) {
			if (rl_overlap(w, r)) {
				wait = true; /* do not overtake an earlier waiter */
				break;
			}
		}
	}
	if (wait) {
		r->next = NULL;
		r->prev = rl->wait_tail;
		if (rl->wait_tail)
			rl->wait_tail->next = r;
		else
			rl->wait_head = r;
		rl->wait_tail = r;
		rl->nwaiting++;
	} else {
		rl_hold(rl, r);
	}
	pthread_mutex_unlock(&rl->lock);
	return !wait;
}

void rangelock_unlock(struct rangelock *rl, struct rl_range *r)
{
	struct rl_range *grant = NULL, **gtail = &grant, *w, *next;

	pthread_mutex_lock(&rl->lock);
	assert(r->held);
	if (r->prev)
		r->prev->next = r->next;
	else
		rl->held = r->next;
	if (r->next)
		r->next->prev = r->prev;
	r->held = false;
	rl->nheld--;

	/* Grant, in arrival order, each waiter that overlaps neither a held
	 * range (including those granted just now) nor an earlier waiter. */
	for (w = rl->wait_head; w; w = next) {
		bool blocked = rl_conflicts_held(rl, w);

		next = w->next;
		for (struct rl_range *e = rl->wait_head; !blocked && e != w; e = e->next)
			if (rl_overlap(e, w))
				blocked = true;
		if (blocked)
			continue;
		if (w->prev)
			w->prev->next = w->next;
		else
			rl->wait_head = w->next;
		if (w->next)
			w->next->prev = w->prev;
		else
			rl->wait_tail = w->prev;
		rl->nwaiting--;
		rl_hold(rl, w);
		w->gnext = NULL;
		*gtail = w;
		gtail = &w->gnext;
	}
	pthread_mutex_unlock(&rl->lock);
	/* Outside the lock: a woken owner may finish at once and unlock. */
	for (w = grant; w; w = next) {
		next = w->gnext;
		w->wake(w);
	}
}

bool rangelock_busy(struct rangelock *rl)
{
	bool busy;

	pthread_mutex_lock(&rl->lock);
	busy = rl->held || rl->wait_head;
	pthread_mutex_unlock(&rl->lock);
	return busy;
}
