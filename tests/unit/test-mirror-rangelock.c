/* The mirror's range lock: overlapping ranges wait and are woken on unlock,
 * touching ones do not conflict, waiters are granted in arrival order, and
 * many threads hammering overlapping ranges never deadlock or overlap. */
#include <glib.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#include "mirror/rangelock.h"
#include "testlib.h"

static struct rangelock rl;
static GPtrArray *woken;

static void record_wake(struct rl_range *r)
{
	g_ptr_array_add(woken, r);
}

static void test_overlap_waits(void)
{
	struct rl_range a, b, c, d;

	rangelock_init(&rl);
	woken = g_ptr_array_new();
	g_assert_true(rangelock_lock(&rl, &a, 0, 4096, record_wake));
	g_assert_true(rangelock_lock(&rl, &b, 4096, 4096, record_wake)); /* touching */
	g_assert_false(rangelock_lock(&rl, &c, 4000, 200, record_wake)); /* overlaps a and b */
	g_assert_false(rangelock_lock(&rl, &d, 8000, 100, record_wake)); /* overlaps b */
	rangelock_unlock(&rl, &a);
	g_assert_cmpuint(woken->len, ==, 0); /* c still overlaps b */
	rangelock_unlock(&rl, &b);
	/* Both granted in one unlock: they do not overlap each other. */
	g_assert_cmpuint(woken->len, ==, 2);
	g_assert_true(woken->pdata[0] == &c && woken->pdata[1] == &d);
	g_assert_true(c.held && d.held);
	rangelock_unlock(&rl, &c);
	rangelock_unlock(&rl, &d);
	g_assert_false(rangelock_busy(&rl));
	g_ptr_array_free(woken, TRUE);
	rangelock_destroy(&rl);
}

static void test_fifo_no_overtaking(void)
{
	struct rl_range a, big, small;

	rangelock_init(&rl);
	woken = g_ptr_array_new();
	g_assert_true(rangelock_lock(&rl, &a, 0, 1 << 20, record_wake));
	g_assert_false(rangelock_lock(&rl, &big, 0, 4 << 20, record_wake));
	/* Free of held ranges but behind an overlapping waiter: waits. */
	g_assert_false(rangelock_lock(&rl, &small, 2 << 20, 4096, record_wake));
	rangelock_unlock(&rl, &a);
	g_assert_cmpuint(woken->len, ==, 1);
	g_assert_true(woken->pdata[0] == &big);
	rangelock_unlock(&rl, &big);
	g_assert_cmpuint(woken->len, ==, 2);
	g_assert_true(woken->pdata[1] == &small);
	rangelock_unlock(&rl, &small);
	g_assert_false(rangelock_busy(&rl));
	g_ptr_array_free(woken, TRUE);
	rangelock_destroy(&rl);
}

/* A woken owner that finishes at once (unlocks inside wake) must not break
 * the unlock that woke it. */
static struct rl_range chain[8];

static void unlock_at_once(struct rl_range *r)
{
	rangelock_unlock(&rl, r);
}

static void test_unlock_inside_wake(void)
{
	rangelock_init(&rl);
	g_assert_true(rangelock_lock(&rl, &chain[0], 0, 100, unlock_at_once));
	for (int i = 1; i < 8; i++)
		g_assert_false(rangelock_lock(&rl, &chain[i], i, 100, unlock_at_once));
	rangelock_unlock(&rl, &chain[0]);
	g_assert_false(rangelock_busy(&rl));
	rangelock_destroy(&rl);
}

/* Threads take random overlapping ranges; a holder checks that nobody else
 * holds an overlapping byte (a shared map of owners), then releases. A
 * parked waiter is released by a helper thread, as the mirror does. */
#define STRESS_THREADS 4
#define STRESS_ROUNDS  5000
#define STRESS_SPACE   64

static atomic_int owner[STRESS_SPACE];
static atomic_int violations;

struct stress_req {
	struct rl_range r;
	atomic_bool granted;
};

static void stress_wake(struct rl_range *r)
{
	atomic_store(&((struct stress_req *)r)->granted, true);
}

static void *stress_thread(void *arg)
{
	int id = GPOINTER_TO_INT(arg);
	unsigned seed = id * 7919u;

	for (int i = 0; i < STRESS_ROUNDS; i++) {
		struct stress_req q = {.granted = false};
		unsigned off = rand_r(&seed) % STRESS_SPACE;
		unsigned len = 1 + rand_r(&seed) % 8;

		if (off + len > STRESS_SPACE)
			len = STRESS_SPACE - off;
		if (rangelock_lock(&rl, &q.r, off, len, stress_wake))
			atomic_store(&q.granted, true);
		while (!atomic_load(&q.granted))
			sched_yield(); /* the unlocking thread grants it */
		for (unsigned b = off; b < off + len; b++) {
			int expect = 0;
			if (!atomic_compare_exchange_strong(&owner[b], &expect, id + 1))
				atomic_fetch_add(&violations, 1);
		}
		for (unsigned b = off; b < off + len; b++)
			atomic_store(&owner[b], 0);
		rangelock_unlock(&rl, &q.r);
	}
	return NULL;
}

static void test_stress_threads(void)
{
	pthread_t t[STRESS_THREADS];

	rangelock_init(&rl);
	for (int i = 0; i < STRESS_THREADS; i++)
		pthread_create(&t[i], NULL, stress_thread, GINT_TO_POINTER(i));
	for (int i = 0; i < STRESS_THREADS; i++)
		pthread_join(t[i], NULL);
	g_assert_cmpint(atomic_load(&violations), ==, 0);
	g_assert_false(rangelock_busy(&rl));
	rangelock_destroy(&rl);
}

int main(int argc, char **argv)
{
	t_init(&argc, &argv);
	g_test_add_func("/mirror-rangelock/overlap-waits", test_overlap_waits);
	g_test_add_func("/mirror-rangelock/fifo", test_fifo_no_overtaking);
	g_test_add_func("/mirror-rangelock/unlock-inside-wake", test_unlock_inside_wake);
	g_test_add_func("/mirror-rangelock/stress", test_stress_threads);
	return t_run();
}
