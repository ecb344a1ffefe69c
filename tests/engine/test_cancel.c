// SPDX-License-Identifier: MIT
/*
 * Timeouts and cancels, on every provider (TERN_TEST_TRANSPORT): issue 13,
 * defect 3.  A call whose deadline passes may still be in the server's
 * hands.  It must never end an honest session, never let a handler run on
 * bytes the caller reused, and never leave a session that cannot call
 * again without saying why.
 *
 * - A server that holds a whole window and never answers: after 2N calls
 *   time out, the session either works again or closes with a clear
 *   reason (here: -ECONNABORTED, after cancel_timeout_ms).
 * - A server that answers the cancels (tern_req_cancelled()): the window
 *   comes back and the session works again.
 * - A large request in the caller's registered memory, pulled after the
 *   caller's deadline: the handler never sees a reused byte, the session
 *   survives.
 * - A large reply pushed into the caller's registered reply buffer after
 *   its deadline: never into a buffer the caller has back, the session
 *   survives.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "fixture.h"

#define M_HOLD	0x600 /* deferred: held until the test lets go */
#define M_PLAIN 0x601 /* raw: the request back */
#define M_CHECK 0x602 /* raw: checks every byte of a large request, replies 8 bytes */

#define STUCK_MS 60000

static struct fx_held held;

/* The request's bytes as the handler saw them: runs, and wrong ones. */
static uint32_t check_runs, check_wrong;

static int check(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	const uint8_t *p = in;

	(void)r, (void)u;
	check_runs++;
	for (size_t i = 0; i < n; i++)
		if (p[i] != (uint8_t)(i * 7 + 1)) {
			check_wrong++;
			break;
		}
	out->base = "checked!";
	out->len = 8;
	return 0;
}

static void fill(uint8_t *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		p[i] = (uint8_t)(i * 7 + 1);
}

/* How each session ended, if it did. */
struct ends {
	tern_session *cli;
	bool cli_closed, srv_closed;
	int cli_reason, srv_reason;
	char why[256];
	bool why_at_abort; /* read when a call failed with -ECONNABORTED */
};
static struct ends ends;

static void on_close(tern_session *s, int reason)
{
	if (s == ends.cli) {
		ends.cli_closed = true;
		ends.cli_reason = reason;
		if (!ends.why[0])
			snprintf(ends.why, sizeof(ends.why), "%s",
				 tern_ctx_last_error(tern_session_ctx(s)));
	} else {
		ends.srv_closed = true;
		ends.srv_reason = reason;
		if (!ends.why[0])
			snprintf(ends.why, sizeof(ends.why), "%s",
				 tern_ctx_last_error(tern_session_ctx(s)));
	}
}

/* Both ends still open (their handles are freed once they close). */
static void still_open(void)
{
	if (ends.cli_closed || ends.srv_closed)
		fail_msg("an honest session ended (client %s, server %s): %s",
			 ends.cli_closed ? tern_strerror(ends.cli_reason) : "open",
			 ends.srv_closed ? tern_strerror(ends.srv_reason) : "open", ends.why);
}

/* A call's outcome, and the context's last error when it failed. */
static void probe_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	fx_done_cb(s, status, reply, len, user);
	/* both ends share the context: read it before the server's end adds its own */
	if (status == -ECONNABORTED) {
		snprintf(ends.why, sizeof(ends.why), "%s",
			 tern_ctx_last_error(tern_session_ctx(s)));
		ends.why_at_abort = true;
	}
}

static struct fx *fx_new(uint32_t slots, uint32_t cancel_timeout_ms)
{
	struct tern_session_opts o = {.size = sizeof(o),
				      .slot_count = slots,
				      .slot_size = 1024,
				      .on_close = on_close,
				      .cancel_timeout_ms = cancel_timeout_ms};
	struct fx *f = calloc(1, sizeof(*f));

	memset(&ends, 0, sizeof(ends));
	assert_int_equal(fx_setup(f, &o, TERN_PROGRESS_BUSY), 0);
	ends.cli = f->cli;
	assert_int_equal(tern_register_deferred(f->ctx, M_HOLD, fx_hold, &held), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_PLAIN, fx_echo, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_CHECK, check, NULL), 0);
	held.n = 0;
	check_runs = check_wrong = 0;
	return f;
}

static void fx_free(struct fx *f)
{
	fx_teardown(f);
	free(f);
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* A plain call that must succeed: the session works. */
static void plain_call_works(struct fx *f)
{
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = STUCK_MS};
	struct fx_done d = {0};
	uint32_t v = 0x5eed;

	assert_int_equal(tern_call(f->cli, M_PLAIN, &v, sizeof(v), fx_done_cb, &d, &o), 0);
	if (fx_run_until(f, &d.done, STUCK_MS))
		fail_msg("a plain call never completed");
	if (d.status)
		fail_msg("a plain call failed: %s (%s)", tern_strerror(d.status),
			 tern_ctx_last_error(f->ctx));
	assert_int_equal(d.len, sizeof(v));
	assert_memory_equal(d.buf, &v, sizeof(v));
}

/* 2N calls with a short deadline to a server that holds (and answers nothing). */
static void time_out_two_windows(struct fx *f, uint32_t n, struct fx_done *d)
{
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = 30};

	for (uint32_t i = 0; i < 2 * n; i++)
		assert_int_equal(tern_call(f->cli, M_HOLD, &i, sizeof(i), fx_done_cb, &d[i], &o),
				 0);
	for (uint32_t i = 0; i < 2 * n; i++) {
		if (fx_run_until(f, &d[i].done, STUCK_MS))
			fail_msg("call %u of %u never completed", i, 2 * n);
		/* -ECONNABORTED: the session already gave up on the first
		 * window's cancels (cancel_timeout_ms passed: a loaded machine) */
		if (d[i].status != -ETIMEDOUT && d[i].status != -ECONNABORTED)
			fail_msg("call %u of %u: %s", i, 2 * n, tern_strerror(d[i].status));
	}
	assert_int_equal(held.n, (int)n); /* the first window reached the handler */
}

/*
 * The server holds a whole window and never answers: the 2N calls time
 * out, and the session cannot stay silently dead: it closes, saying why,
 * once the server has ignored the cancels for cancel_timeout_ms.
 */
static void unanswered(uint32_t n)
{
	struct fx *f = fx_new(n, 300);
	struct fx_done *d = calloc(2 * n, sizeof(*d)), p = {0};
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = 30};

	time_out_two_windows(f, n, d);
	/* a call now either goes through or the session ends, with its reason */
	for (int tries = 0; tries < 100 && !ends.cli_closed; tries++) {
		int rc;

		memset(&p, 0, sizeof(p));
		rc = tern_call(f->cli, M_PLAIN, &tries, sizeof(tries), probe_cb, &p, &o);
		if (rc == -ENOTCONN)
			break;
		assert_int_equal(rc, 0);
		assert_int_equal(fx_run_until(f, &p.done, STUCK_MS), 0);
		if (p.status == 0 || p.status == -ECONNABORTED)
			break; /* it works, or the session gave up (below) */
		assert_int_equal(p.status, -ETIMEDOUT);
	}
	if (p.status == -ECONNABORTED) /* closing: on_close follows */
		assert_int_equal(fx_run_until(f, &ends.cli_closed, STUCK_MS), 0);
	if (!ends.cli_closed && p.status != 0) {
		struct tern_session_counters c;

		tern_session_counters(f->cli, &c);
		fail_msg("silently dead: no call went through for 100 deadlines, and the "
			 "session is still open (calls sent %llu, timeouts %llu, late replies "
			 "%llu; %d held by the server; last error: %s)",
			 (unsigned long long)c.calls_sent, (unsigned long long)c.timeouts,
			 (unsigned long long)c.late_replies, held.n, tern_ctx_last_error(f->ctx));
	}
	if (ends.cli_closed) {
		assert_int_equal(ends.cli_reason, -ECONNABORTED);
		/*
		 * The message is checked where it was read at the abort itself
		 * (a probe in flight failed with it).  When the session had
		 * already closed before any probe went (a loaded machine: the
		 * abort fell inside time_out_two_windows()), on_close read the
		 * context's last error, which the server's end of the same
		 * context may have replaced by then ("the peer hung up").
		 */
		if (ends.why_at_abort && !strstr(ends.why, "cancel"))
			fail_msg("the reason does not say what happened: \"%s\"", ends.why);
		printf("%s: closed, as it should: %s\n", tern_strerror(ends.cli_reason), ends.why);
		/* the server heard of it too */
		assert_int_equal(fx_run_until(f, &ends.srv_closed, STUCK_MS), 0);
	}
	/* the held requests go (their replies have nowhere to go) */
	for (int i = 0; i < held.n; i++)
		tern_reply_error(held.req[i], -ECANCELED, NULL);
	held.n = 0;
	free(d);
	fx_free(f);
}

static void test_a_server_that_never_answers_8_slots(void **state)
{
	(void)state;
	unanswered(8);
}

static void test_a_server_that_never_answers_64_slots(void **state)
{
	(void)state;
	unanswered(64);
}

/*
 * The server's handler answers what the caller cancelled: every
 * reservation comes back, and the session works as before.
 */
static void test_a_server_that_answers_cancels_gives_the_window_back(void **state)
{
	const uint32_t n = 8;
	struct fx *f = fx_new(n, 60000);
	struct fx_done *d = calloc(2 * n, sizeof(*d));
	uint32_t answered = 0;

	(void)state;
	time_out_two_windows(f, n, d);
	for (int i = 0; i < 10000000 && answered < n; i++) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		for (int k = 0; k < held.n; k++) {
			if (held.req[k] && tern_req_cancelled(held.req[k])) {
				assert_int_equal(tern_reply_error(held.req[k], -ECANCELED, NULL),
						 0);
				held.req[k] = NULL;
				answered++;
			}
		}
	}
	assert_int_equal(answered, n);
	held.n = 0;
	/* everything back: nothing in flight, every credit home */
	assert_int_equal(tern_session_drain(f->cli, STUCK_MS), 0);
	for (uint32_t i = 0; i < 2 * n; i++)
		plain_call_works(f);
	assert_false(ends.cli_closed);
	assert_false(ends.srv_closed);
	free(d);
	fx_free(f);
}

/* The deadline passes before the loop runs again: the timer comes first. */
static void miss_the_deadline(struct fx *f)
{
	(void)f;
	sleep_ms(20);
}

/*
 * A large request in the caller's registered memory, whose deadline has
 * passed before the server pulled it.  Its callback runs only once the
 * server has let go, and the caller reuses the buffer there: the handler,
 * if it ran at all, saw the bytes of the call, and the session goes on.
 */
static void test_a_late_pull_never_sees_reused_bytes(void **state)
{
	struct fx *f = fx_new(8, 60000);
	size_t size = 256 * 1024;
	uint8_t *req = malloc(size);
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = 2};
	struct tern_session_counters c;
	struct fx_done d = {0};
	tern_mr *mr;

	(void)state;
	fill(req, size);
	assert_int_equal(tern_mem_register(f->ctx, req, size, &mr), 0);
	for (int round = 0; round < 20; round++) {
		memset(&d, 0, sizeof(d));
		fill(req, size);
		assert_int_equal(tern_call(f->cli, M_CHECK, req, size, fx_done_cb, &d, &o), 0);
		miss_the_deadline(f);
		assert_int_equal(fx_run_until(f, &d.done, STUCK_MS), 0);
		/* the callback ran: the buffer is ours again, and we reuse it */
		memset(req, 0xee, size);
		assert_int_equal(d.status, -ETIMEDOUT);
		for (int i = 0; i < 1000; i++)
			tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		still_open();
	}
	plain_call_works(f);
	assert_int_equal(check_wrong, 0);
	printf("%s: %u of 20 late requests reached the handler, none reused\n", fx_transport(),
	       check_runs);
	assert_false(ends.cli_closed);
	assert_false(ends.srv_closed);
	tern_session_counters(f->srv, &c);
	assert_int_equal(c.protocol_errors, 0);
	assert_int_equal(tern_session_drain(f->cli, STUCK_MS), 0);
	assert_int_equal(tern_mem_deregister(mr), 0);
	free(req);
	fx_free(f);
}

/*
 * A deferred handler holds a call with a registered reply buffer past its
 * deadline, then replies large: the reply must not land in a buffer the
 * caller has back, and the session must go on.
 */
static void test_a_late_large_reply_never_lands_in_a_buffer_given_back(void **state)
{
	struct fx *f = fx_new(8, 60000);
	size_t size = 256 * 1024;
	uint8_t *rep = malloc(size);
	struct tern_call_opts o = {
		.size = sizeof(o), .timeout_ms = 5, .reply_buf = rep, .reply_cap = size};
	struct fx_done d = {0};
	tern_mr *mr;

	(void)state;
	memset(rep, 0xab, size);
	assert_int_equal(tern_mem_register(f->ctx, rep, size, &mr), 0);
	assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, fx_done_cb, &d, &o), 0);
	for (int i = 0; i < 10000000 && held.n < 1; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(held.n, 1);
	/* past the deadline, and the cancel has had time to arrive */
	for (int i = 0; i < 50; i++) {
		sleep_ms(1);
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
	for (int i = 0; i < 10000 && !d.done; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	if (!d.done) {
		/* the buffer is still the server's: the handler replies now */
		void *out;
		size_t cap;

		assert_true(tern_req_cancelled(held.req[0]));
		assert_int_equal(tern_reply_acquire(held.req[0], &out, &cap), 0);
		assert_true(cap >= size);
		memset(out, 0xcd, size);
		tern_reply_commit(held.req[0], size);
		assert_int_equal(fx_run_until(f, &d.done, STUCK_MS), 0);
		/* cancelled: answered without a push */
		for (size_t i = 0; i < size; i++)
			if (rep[i] != 0xab)
				fail_msg("byte %zu of a cancelled call's reply buffer was written",
					 i);
	} else {
		/* the callback ran at the deadline: the server must not write now */
		void *out;
		size_t cap;

		memset(rep, 0x11, size);
		if (tern_reply_acquire(held.req[0], &out, &cap) == 0) {
			memset(out, 0xcd, cap < size ? cap : size);
			tern_reply_commit(held.req[0], cap < size ? cap : size);
		}
		for (int i = 0; i < 10000; i++)
			tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		for (size_t i = 0; i < size; i++)
			if (rep[i] != 0x11)
				fail_msg("byte %zu of a reply buffer given back was written", i);
	}
	held.n = 0;
	assert_int_equal(d.status, -ETIMEDOUT);
	still_open();
	plain_call_works(f);
	assert_false(ends.cli_closed);
	assert_false(ends.srv_closed);
	assert_int_equal(tern_session_drain(f->cli, STUCK_MS), 0);
	assert_int_equal(tern_mem_deregister(mr), 0);
	free(rep);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_server_that_never_answers_8_slots),
		cmocka_unit_test(test_a_server_that_never_answers_64_slots),
		cmocka_unit_test(test_a_server_that_answers_cancels_gives_the_window_back),
		cmocka_unit_test(test_a_late_pull_never_sees_reused_bytes),
		cmocka_unit_test(test_a_late_large_reply_never_lands_in_a_buffer_given_back),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: %s cannot run here (rdma: no device with an IPv4 address; "
		       "set TERN_RDMA_ADDR)\n",
		       fx_transport());
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
