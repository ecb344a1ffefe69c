// SPDX-License-Identifier: MIT
/*
 * tern_ctx_post(): work handed to a context from other threads.  Many
 * threads post while the context runs in each progress mode: every post
 * runs exactly once, on the context's thread, in each thread's order, and
 * a context asleep in event progress wakes for them.  A deferred request
 * answered by a worker thread through a post.  Posts queued when the
 * context is destroyed run once with -ECANCELED, and posts made while it
 * is destroyed fail with -ESHUTDOWN.  Built under TSan too (tools/test's
 * tsan lane runs this program on mem://).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>
#include <cmocka.h>

#include "fixture.h"

#define THREADS	   8
#define PER_THREAD 10000
#define WATCHDOG_S 300 /* TSan and the VM's TCG are slow; a hang is what this catches */
#define M_WORK	   0x700
#define CALLS	   48

static void on_watchdog(int sig)
{
	static const char msg[] = "test_post: a run did not end: a post was lost or not woken\n";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

/* ---- many threads ---------------------------------------------------------- */

struct many {
	tern_ctx *ctx;
	pthread_t loop_thread;	/* the context's thread: every post runs there */
	unsigned next[THREADS]; /* the sequence number each thread's next post must carry */
	unsigned ran;		/* posts run (loop thread only) */
	unsigned misordered;
	unsigned wrong_thread;
	unsigned cancelled;
	atomic_int refused;
};

static struct many many;

static void *post_arg(unsigned thread, unsigned seq)
{
	return (void *)(uintptr_t)((uint64_t)thread << 32 | seq);
}

static void count_post(tern_ctx *ctx, void *arg, int status)
{
	unsigned thread = (unsigned)((uintptr_t)arg >> 32), seq = (unsigned)(uintptr_t)arg;

	if (status) {
		many.cancelled++;
		return;
	}
	if (ctx != many.ctx || !pthread_equal(pthread_self(), many.loop_thread))
		many.wrong_thread++;
	if (thread >= THREADS || seq != many.next[thread])
		many.misordered++;
	else
		many.next[thread]++;
	if (++many.ran == THREADS * PER_THREAD)
		tern_ctx_stop(ctx);
}

static void *poster(void *p)
{
	unsigned t = (unsigned)(uintptr_t)p;

	for (unsigned i = 0; i < PER_THREAD; i++) {
		int rc = tern_ctx_post(many.ctx, count_post, post_arg(t, i));

		if (rc) {
			atomic_fetch_add(&many.refused, 1);
			break;
		}
		/* Now and then let the loop catch up and fall asleep (event progress). */
		if (i % 1000 == 999)
			usleep(1000);
	}
	return NULL;
}

static void never(uv_timer_t *t)
{
	(void)t;
}

static void run_many(enum tern_progress progress)
{
	pthread_t th[THREADS];
	uv_timer_t keep;
	struct fx f;

	memset(&many, 0, sizeof(many));
	assert_int_equal(fx_setup(&f, NULL, progress), 0);
	many.ctx = f.ctx;
	many.loop_thread = pthread_self();
	for (unsigned t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, poster, (void *)(uintptr_t)t), 0);
	/*
	 * Runs until the last post stops it.  In event progress the loop
	 * sleeps in epoll_wait(): only the posts' wake-up gets it to run
	 * them.  A post does not keep the loop alive (tern.h), and mem://
	 * has no fd to: a timer that never fires does.
	 */
	uv_timer_init(tern_ctx_loop(f.ctx), &keep);
	uv_timer_start(&keep, never, 1000u * WATCHDOG_S * 2, 0);
	alarm(WATCHDOG_S);
	tern_ctx_run(f.ctx, TERN_RUN_DEFAULT);
	alarm(0);
	uv_close((uv_handle_t *)&keep, NULL);
	for (unsigned t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	assert_int_equal(atomic_load(&many.refused), 0);
	assert_int_equal(many.ran, THREADS * PER_THREAD);
	assert_int_equal(many.misordered, 0);
	assert_int_equal(many.wrong_thread, 0);
	for (unsigned t = 0; t < THREADS; t++)
		assert_int_equal(many.next[t], PER_THREAD);
	fx_teardown(&f);
	assert_int_equal(many.cancelled, 0);
}

static void test_posts_from_many_threads_busy(void **state)
{
	(void)state;
	run_many(TERN_PROGRESS_BUSY);
}

static void test_posts_from_many_threads_event(void **state)
{
	(void)state;
	run_many(TERN_PROGRESS_EVENT);
}

static void test_posts_from_many_threads_adaptive(void **state)
{
	(void)state;
	run_many(TERN_PROGRESS_ADAPTIVE);
}

/* ---- a deferred reply from a worker thread --------------------------------- */

struct job {
	struct job *next;
	tern_req *req;
	size_t len;
	uint8_t in[64];
	uint8_t out[64];
};

static struct {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head;
	bool quit;
	tern_ctx *ctx;
	pthread_t loop_thread;
	int answered;
	int wrong_thread;
	int post_failed;
} work = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* On the context's thread: the worker's result goes out as the reply. */
static void answer(tern_ctx *ctx, void *arg, int status)
{
	struct job *j = arg;
	void *out;
	size_t cap;

	(void)ctx;
	if (!pthread_equal(pthread_self(), work.loop_thread))
		work.wrong_thread++;
	if (status) {
		tern_reply_error(j->req, status, "cancelled");
	} else if (tern_reply_acquire(j->req, &out, &cap) == 0 && cap >= j->len) {
		memcpy(out, j->out, j->len);
		tern_reply_commit(j->req, j->len);
		work.answered++;
	} else {
		tern_reply_error(j->req, -EIO, "no slot");
	}
	free(j);
}

static void *worker(void *p)
{
	(void)p;
	pthread_mutex_lock(&work.lock);
	for (;;) {
		struct job *j;

		while (!work.head && !work.quit)
			pthread_cond_wait(&work.cond, &work.lock);
		if (!work.head)
			break;
		j = work.head;
		work.head = j->next;
		pthread_mutex_unlock(&work.lock);
		/* The work: the request's bytes reversed, each plus one. */
		for (size_t i = 0; i < j->len; i++)
			j->out[i] = (uint8_t)(j->in[j->len - 1 - i] + 1);
		if (tern_ctx_post(work.ctx, answer, j) != 0) {
			work.post_failed++; /* only this thread writes it until the join */
			free(j);
		}
		pthread_mutex_lock(&work.lock);
	}
	pthread_mutex_unlock(&work.lock);
	return NULL;
}

/* The deferred handler: hand the request to the worker and return. */
static int defer_to_worker(tern_req *req, const void *in, size_t n, void *u)
{
	struct job *j;

	(void)u;
	if (n > sizeof(j->in))
		return -EMSGSIZE;
	j = calloc(1, sizeof(*j));
	if (!j)
		return -ENOMEM;
	j->req = req;
	j->len = n;
	memcpy(j->in, in, n);
	pthread_mutex_lock(&work.lock);
	j->next = work.head;
	work.head = j;
	pthread_cond_signal(&work.cond);
	pthread_mutex_unlock(&work.lock);
	return 0;
}

static void run_deferred(enum tern_progress progress)
{
	static struct fx_done done[CALLS];
	uint8_t req[CALLS][16];
	pthread_t th;
	uv_timer_t keep;
	struct fx f;

	memset(done, 0, sizeof(done));
	work.head = NULL;
	work.quit = false;
	work.answered = work.wrong_thread = work.post_failed = 0;
	assert_int_equal(fx_setup(&f, NULL, progress), 0);
	work.ctx = f.ctx;
	work.loop_thread = pthread_self();
	assert_int_equal(tern_register_deferred(f.ctx, M_WORK, defer_to_worker, NULL), 0);
	assert_int_equal(pthread_create(&th, NULL, worker, NULL), 0);
	/* mem:// in event progress has no fd to keep the loop alive (see run_many()). */
	uv_timer_init(tern_ctx_loop(f.ctx), &keep);
	uv_timer_start(&keep, never, 1000u * WATCHDOG_S * 2, 0);
	for (int i = 0; i < CALLS; i++) {
		for (int b = 0; b < 16; b++)
			req[i][b] = (uint8_t)(i * 16 + b);
		assert_int_equal(tern_call(f.cli, M_WORK, req[i], sizeof(req[i]), fx_done_cb,
					   &done[i], NULL),
				 0);
	}
	for (int i = 0; i < CALLS; i++)
		assert_int_equal(fx_run_until(&f, &done[i].done, 60000), 0);
	for (int i = 0; i < CALLS; i++) {
		assert_int_equal(done[i].status, 0);
		assert_int_equal(done[i].len, 16);
		for (int b = 0; b < 16; b++)
			assert_int_equal(done[i].buf[b], (uint8_t)(req[i][15 - b] + 1));
	}
	pthread_mutex_lock(&work.lock);
	work.quit = true;
	pthread_cond_signal(&work.cond);
	pthread_mutex_unlock(&work.lock);
	pthread_join(th, NULL);
	uv_close((uv_handle_t *)&keep, NULL);
	assert_int_equal(work.answered, CALLS);
	assert_int_equal(work.wrong_thread, 0);
	assert_int_equal(work.post_failed, 0);
	fx_teardown(&f);
}

static void test_deferred_reply_from_a_worker_busy(void **state)
{
	(void)state;
	run_deferred(TERN_PROGRESS_BUSY);
}

static void test_deferred_reply_from_a_worker_event(void **state)
{
	(void)state;
	run_deferred(TERN_PROGRESS_EVENT);
}

/* ---- destroy --------------------------------------------------------------- */

static struct {
	int calls[16];
	int status[16];
	int repost_rc;
	int order_ok;
	int last;
} dead;

static void note(tern_ctx *ctx, void *arg, int status)
{
	int i = (int)(intptr_t)arg;

	dead.calls[i]++;
	dead.status[i] = status;
	if (i != dead.last + 1)
		dead.order_ok = 0;
	dead.last = i;
	/* The queue is closed: a post from here is refused, and never runs. */
	dead.repost_rc = tern_ctx_post(ctx, note, (void *)(intptr_t)15);
	/* Nor may a post destroy the context under its own feet. */
	assert_int_equal(tern_ctx_destroy(ctx), -EBUSY);
}

static void test_destroy_cancels_what_is_queued(void **state)
{
	struct tern_ctx_opts o = {.size = sizeof(o), .progress = TERN_PROGRESS_EVENT};
	tern_ctx *ctx;

	(void)state;
	memset(&dead, 0, sizeof(dead));
	dead.order_ok = 1;
	dead.last = -1;
	assert_int_equal(tern_ctx_create(&o, &ctx), 0);
	assert_int_equal(tern_ctx_post(NULL, note, NULL), -EINVAL);
	assert_int_equal(tern_ctx_post(ctx, NULL, NULL), -EINVAL);
	for (int i = 0; i < 10; i++)
		assert_int_equal(tern_ctx_post(ctx, note, (void *)(intptr_t)i), 0);
	/* A stopped context keeps its posts for the next run. */
	tern_ctx_stop(ctx);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	for (int i = 0; i < 10; i++) {
		assert_int_equal(dead.calls[i], 1);
		assert_int_equal(dead.status[i], -ECANCELED);
	}
	assert_int_equal(dead.calls[15], 0);
	assert_int_equal(dead.repost_rc, -ESHUTDOWN);
	assert_true(dead.order_ok);
}

/* Threads post while the context is destroyed: every post accepted runs once. */
static struct {
	tern_ctx *ctx;
	atomic_int accepted;
	atomic_int shut;  /* threads that got -ESHUTDOWN */
	atomic_int other; /* any other failure */
	int ran, cancelled;
} race;

static void race_post(tern_ctx *ctx, void *arg, int status)
{
	(void)ctx;
	if (status == 0) {
		race.ran++;
		return;
	}
	assert_int_equal(status, -ECANCELED);
	race.cancelled++;
	/*
	 * The first cancelled post (the main thread's, queued just before
	 * the destroy) holds the destroy until every poster has been
	 * refused: after that none touches the context again, and the
	 * test may let tern_ctx_destroy() free it.
	 */
	if (arg == &race)
		while (atomic_load(&race.shut) < THREADS)
			usleep(100);
}

static void *race_poster(void *p)
{
	unsigned mine = 0;

	(void)p;
	for (;;) {
		int rc = tern_ctx_post(race.ctx, race_post, NULL);

		if (rc == -ESHUTDOWN)
			break;
		if (rc) {
			atomic_fetch_add(&race.other, 1);
			break;
		}
		/* Bounded, so that the queue stays small under ASan and TSan:
		 * past 20,000 posts a thread only checks now and then. */
		if (++mine > 20000)
			usleep(1000);
		else if (mine % 100 == 0)
			usleep(10);
		atomic_fetch_add(&race.accepted, 1);
	}
	atomic_fetch_add(&race.shut, 1);
	return NULL;
}

static void test_posts_racing_destroy(void **state)
{
	pthread_t th[THREADS];
	struct fx f;

	(void)state;
	memset(&race, 0, sizeof(race));
	assert_int_equal(fx_setup(&f, NULL, TERN_PROGRESS_BUSY), 0);
	race.ctx = f.ctx;
	for (unsigned t = 0; t < THREADS; t++)
		assert_int_equal(pthread_create(&th[t], NULL, race_poster, NULL), 0);
	/* Let them get going, and run some of their posts. */
	for (int i = 0; i < 200; i++)
		tern_ctx_run(f.ctx, TERN_RUN_NOWAIT);
	assert_int_equal(tern_ctx_post(f.ctx, race_post, &race), 0);
	alarm(WATCHDOG_S);
	fx_teardown(&f);
	alarm(0);
	for (unsigned t = 0; t < THREADS; t++)
		pthread_join(th[t], NULL);
	assert_int_equal(atomic_load(&race.other), 0);
	assert_int_equal(race.ran + race.cancelled, atomic_load(&race.accepted) + 1);
	assert_true(race.cancelled >= 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_posts_from_many_threads_busy),
		cmocka_unit_test(test_posts_from_many_threads_event),
		cmocka_unit_test(test_posts_from_many_threads_adaptive),
		cmocka_unit_test(test_deferred_reply_from_a_worker_busy),
		cmocka_unit_test(test_deferred_reply_from_a_worker_event),
		cmocka_unit_test(test_destroy_cancels_what_is_queued),
		cmocka_unit_test(test_posts_racing_destroy),
	};

	if (!fx_runnable())
		return 77;
	signal(SIGALRM, on_watchdog);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
