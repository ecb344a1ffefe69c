// SPDX-License-Identifier: MIT
/*
 * tern_ctx_stop() from where a server needs it: a SIGTERM handler (run on
 * the loop's thread or on another one) and another thread, while
 * tern_ctx_run(TERN_RUN_DEFAULT) sleeps in event progress or spins in busy
 * and adaptive progress.  The run must return; a watchdog alarm turns a
 * run that never returns into a failure instead of a hung suite.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>
#include <cmocka.h>

#include "fixture.h"

#define M_ECHO	   0x500
#define WATCHDOG_S 120 /* the rdma suite runs under TCG emulation */
#define KEEP_ALIVE 600000

enum how {
	SIGNAL_ON_LOOP_THREAD,	/* the handler interrupts the loop's thread */
	SIGNAL_ON_OTHER_THREAD, /* the handler runs on a thread that is not the loop's */
	OTHER_THREAD,		/* a plain call from another thread */
};

struct stop_case {
	enum tern_progress progress;
	enum how how;
};

static tern_ctx *stop_ctx; /* what the SIGTERM handler stops */
static volatile sig_atomic_t sigterms;
static pthread_t loop_thread;
static pid_t loop_tid;
static atomic_bool turning; /* the loop has run a turn inside the run */

static void on_sigterm(int sig)
{
	(void)sig;
	sigterms++;
	tern_ctx_stop(stop_ctx);
}

static void on_watchdog(int sig)
{
	static const char msg[] = "test_stop: tern_ctx_run() did not return after the stop\n";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

static void handle(int sig, void (*fn)(int))
{
	struct sigaction sa = {.sa_handler = fn};

	sigemptyset(&sa.sa_mask);
	assert_int_equal(sigaction(sig, &sa, NULL), 0);
}

static int on_echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	out->base = (void *)in;
	out->len = n;
	return 0;
}

/* The state of thread @tid, from /proc: 'R' running, 'S' asleep, ... */
static char thread_state(pid_t tid)
{
	char path[64], buf[512], *p;
	FILE *f;
	size_t n;

	snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)tid);
	if (!(f = fopen(path, "r")))
		return '?';
	n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	p = strrchr(buf, ')');
	return p && p[1] == ' ' ? p[2] : '?';
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000};

	nanosleep(&ts, NULL);
}

static void *stopper(void *arg)
{
	const struct stop_case *c = arg;

	/* Inside the run: the loop has turned at least once... */
	while (!atomic_load(&turning))
		sleep_ms(1);
	/* ...and, in event progress, is asleep waiting for the next event
	 * (for up to 10 s, then stop it wherever it is). */
	for (int i = 0; c->progress == TERN_PROGRESS_EVENT && i < 10000; i++) {
		if (thread_state(loop_tid) == 'S')
			break;
		sleep_ms(1);
	}
	sleep_ms(20);
	switch (c->how) {
	case SIGNAL_ON_LOOP_THREAD:
		pthread_kill(loop_thread, SIGTERM);
		break;
	case SIGNAL_ON_OTHER_THREAD:
		raise(SIGTERM); /* this thread's own signal: the handler runs here */
		break;
	case OTHER_THREAD:
		tern_ctx_stop(stop_ctx);
		break;
	}
	return NULL;
}

static void on_first_turn(uv_timer_t *t)
{
	(void)t;
	atomic_store(&turning, true);
}

static void keep_alive_cb(uv_timer_t *t)
{
	(void)t;
}

/* Run the context until the stop @c describes comes; fail if it never does. */
static void run_until_stopped(struct fx *f, const struct stop_case *c)
{
	uv_timer_t first;
	pthread_t th;
	int rc, before = sigterms;

	atomic_store(&turning, false);
	assert_int_equal(uv_timer_init(tern_ctx_loop(f->ctx), &first), 0);
	assert_int_equal(uv_timer_start(&first, on_first_turn, 1, 0), 0);
	assert_int_equal(pthread_create(&th, NULL, stopper, (void *)c), 0);
	alarm(WATCHDOG_S);
	rc = tern_ctx_run(f->ctx, TERN_RUN_DEFAULT);
	alarm(0);
	assert_int_equal(pthread_join(th, NULL), 0);
	/* Stopped, not out of work: the keep-alive timer is still pending. */
	assert_int_not_equal(rc, 0);
	if (c->how != OTHER_THREAD)
		assert_int_equal(sigterms, before + 1);
	uv_close((uv_handle_t *)&first, NULL);
	tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
}

/* A call over the fixture's session: the context still works. */
static void echo_works(struct fx *f)
{
	struct fx_done d = {0};

	assert_int_equal(tern_call(f->cli, M_ECHO, "ping", 4, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(d.status, 0);
	assert_int_equal(d.len, 4);
	assert_memory_equal(d.buf, "ping", 4);
}

static struct fx *start(enum tern_progress progress, uv_timer_t *keep)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	assert_int_equal(fx_setup(f, NULL, progress), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_ECHO, on_echo, NULL), 0);
	stop_ctx = f->ctx;
	loop_thread = pthread_self();
	loop_tid = (pid_t)syscall(SYS_gettid);
	handle(SIGTERM, on_sigterm);
	handle(SIGALRM, on_watchdog);
	/* Something for the loop to wait for, so that only a stop ends the run. */
	assert_int_equal(uv_timer_init(tern_ctx_loop(f->ctx), keep), 0);
	assert_int_equal(uv_timer_start(keep, keep_alive_cb, KEEP_ALIVE, 0), 0);
	return f;
}

static void finish(struct fx *f, uv_timer_t *keep)
{
	uv_close((uv_handle_t *)keep, NULL);
	tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	handle(SIGTERM, SIG_DFL);
	stop_ctx = NULL;
	fx_teardown(f);
	free(f);
}

static void test_stop(void **state)
{
	const struct stop_case *c = *state;
	uv_timer_t keep;
	struct fx *f = start(c->progress, &keep);

	/* Twice: a stop is served once and the next one works as well. */
	for (int i = 0; i < 2; i++) {
		run_until_stopped(f, c);
		echo_works(f);
	}
	finish(f, &keep);
}

static void stop_from_callback(uv_timer_t *t)
{
	bool *fired = t->data;

	*fired = true;
	tern_ctx_stop(stop_ctx);
}

/*
 * A stop that comes while no run is going (a SIGTERM during set-up, or
 * while the loop is driven one turn at a time) ends the next run at once;
 * once served, it does not end the run after that one.
 */
static void stop_is_kept_for_the_next_run(enum tern_progress progress)
{
	uv_timer_t keep, later;
	bool fired = false;
	struct fx *f = start(progress, &keep);
	int before = sigterms;

	raise(SIGTERM);
	assert_int_equal(sigterms, before + 1);
	for (int i = 0; i < 10; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	echo_works(f);
	alarm(WATCHDOG_S);
	assert_int_not_equal(tern_ctx_run(f->ctx, TERN_RUN_DEFAULT), 0);
	alarm(0);

	/* Served: the next run lasts until its own stop, from a callback. */
	assert_int_equal(uv_timer_init(tern_ctx_loop(f->ctx), &later), 0);
	later.data = &fired;
	assert_int_equal(uv_timer_start(&later, stop_from_callback, 50, 0), 0);
	alarm(WATCHDOG_S);
	assert_int_not_equal(tern_ctx_run(f->ctx, TERN_RUN_DEFAULT), 0);
	alarm(0);
	assert_true(fired);
	uv_close((uv_handle_t *)&later, NULL);
	finish(f, &keep);
}

static void test_stop_before_the_run_event(void **state)
{
	(void)state;
	stop_is_kept_for_the_next_run(TERN_PROGRESS_EVENT);
}

static void test_stop_before_the_run_busy(void **state)
{
	(void)state;
	stop_is_kept_for_the_next_run(TERN_PROGRESS_BUSY);
}

#define STOP_CASE(p, h)                                                     \
	{                                                                   \
		.name = "stop_" #p "_" #h, .test_func = test_stop,          \
		.initial_state = &(struct stop_case){TERN_PROGRESS_##p, h}, \
	}

int main(void)
{
	const struct CMUnitTest tests[] = {
		STOP_CASE(EVENT, SIGNAL_ON_LOOP_THREAD),
		STOP_CASE(EVENT, SIGNAL_ON_OTHER_THREAD),
		STOP_CASE(EVENT, OTHER_THREAD),
		STOP_CASE(BUSY, SIGNAL_ON_LOOP_THREAD),
		STOP_CASE(BUSY, SIGNAL_ON_OTHER_THREAD),
		STOP_CASE(BUSY, OTHER_THREAD),
		STOP_CASE(ADAPTIVE, SIGNAL_ON_LOOP_THREAD),
		STOP_CASE(ADAPTIVE, SIGNAL_ON_OTHER_THREAD),
		STOP_CASE(ADAPTIVE, OTHER_THREAD),
		cmocka_unit_test(test_stop_before_the_run_event),
		cmocka_unit_test(test_stop_before_the_run_busy),
	};

	if (!fx_runnable())
		return 77;
	return _cmocka_run_group_tests(fx_transport(), tests, sizeof(tests) / sizeof(tests[0]),
				       NULL, NULL);
}
