// SPDX-License-Identifier: MIT
/*
 * Liveness, on every provider (TERN_TEST_TRANSPORT): honest workloads that
 * hold most of the window must never stall the rest of it.
 *
 * Long-poll: a deferred handler parks N - 1 calls until a "wake" call
 * arrives.  Meanwhile plain calls go through the one slot left, one after
 * the other.  A provider that reports sends late (verbs signals only every
 * few) leaves the slot of a sent reply or request unreported: the server's
 * reply slots (parked + stranded = N with a request in the backlog) or the
 * caller's call slots (parked + stranded = N with calls queued) run out
 * and, unless the engine asks the provider to report what it sent, the
 * wake call never goes through.  Both directions, slot_count 8 and 64, and
 * both orders (stranded before the parked calls arrive, and after).
 *
 * And tern_session_drain(): once it returns, the whole window is free, the
 * last few unreported sends' slots included.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fixture.h"

#define M_PARK	0x500 /* deferred: parked until M_WAKE */
#define M_PLAIN 0x501 /* raw: the request back */
#define M_WAKE	0x502 /* raw: answers every parked call, then itself */

/* Generous: a stall is a hang, so this only bounds how long a failure takes. */
#define STUCK_MS 60000

static tern_req *parked[4096];
static uint32_t nparked;

static int park(tern_req *r, const void *in, size_t n, void *u)
{
	(void)in, (void)n, (void)u;
	parked[nparked++] = r;
	return 0;
}

/* Each parked call gets its own index back, so a mixed-up reply shows. */
static int wake(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)in, (void)n, (void)u;
	for (uint32_t i = 0; i < nparked; i++) {
		void *buf;
		size_t cap;

		assert_int_equal(tern_reply_acquire(parked[i], &buf, &cap), 0);
		memcpy(buf, &i, sizeof(i));
		assert_int_equal(tern_reply_commit(parked[i], sizeof(i)), 0);
	}
	nparked = 0;
	out->base = "awake";
	out->len = 5;
	return 0;
}

static struct fx *fx_new(uint32_t slots)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = slots};
	struct fx *f = calloc(1, sizeof(*f));

	assert_int_equal(fx_setup(f, &o, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_deferred(f->ctx, M_PARK, park, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_PLAIN, fx_echo, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_WAKE, wake, NULL), 0);
	nparked = 0;
	return f;
}

static void fx_free(struct fx *f)
{
	fx_teardown(f);
	free(f);
}

/* @k plain calls from @from, one after the other, each answered in full. */
static void plain_calls(struct fx *f, tern_session *from, uint32_t k)
{
	for (uint32_t i = 0; i < k; i++) {
		struct fx_done d = {0};

		assert_int_equal(tern_call(from, M_PLAIN, &i, sizeof(i), fx_done_cb, &d, NULL), 0);
		if (fx_run_until(f, &d.done, STUCK_MS))
			fail_msg("plain call %u of %u never completed (%u parked)", i, k, nparked);
		assert_int_equal(d.status, 0);
		assert_int_equal(d.len, sizeof(i));
		assert_memory_equal(d.buf, &i, sizeof(i));
	}
}

/*
 * N - 1 calls parked by the callee, plain calls through the last slot
 * (before the parked ones arrive when @plain_first, after otherwise), then
 * the wake call: everything completes, each parked call with its index.
 */
static void long_poll(uint32_t slots, bool reverse, bool plain_first)
{
	struct fx *f = fx_new(slots);
	tern_session *from = reverse ? f->srv : f->cli;
	uint32_t n = slots - 1, k = 3 * 16; /* more sends than any signalling interval */
	struct fx_done *d = calloc(n, sizeof(*d)), w = {0};

	if (plain_first)
		plain_calls(f, from, k);
	for (uint32_t i = 0; i < n; i++)
		assert_int_equal(tern_call(from, M_PARK, NULL, 0, fx_done_cb, &d[i], NULL), 0);
	for (int i = 0; i < 1000000 && nparked < n; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	if (nparked != n)
		fail_msg("only %u of %u calls were parked", nparked, n);
	if (!plain_first)
		plain_calls(f, from, k);
	assert_int_equal(tern_call(from, M_WAKE, NULL, 0, fx_done_cb, &w, NULL), 0);
	if (fx_run_until(f, &w.done, STUCK_MS))
		fail_msg("the wake call never completed (%u parked)", nparked);
	assert_int_equal(w.status, 0);
	assert_int_equal(w.len, 5);
	for (uint32_t i = 0; i < n; i++) {
		uint32_t idx;

		if (fx_run_until(f, &d[i].done, STUCK_MS))
			fail_msg("parked call %u was never answered", i);
		assert_int_equal(d[i].status, 0);
		assert_int_equal(d[i].len, sizeof(idx));
		memcpy(&idx, d[i].buf, sizeof(idx));
		assert_int_equal(idx, i); /* answered in arrival order, each its own */
	}
	/* and the session goes on */
	plain_calls(f, from, 4);
	free(d);
	fx_free(f);
}

/*
 * After tern_session_drain() the whole window is free at once: a producer
 * that drained takes every call slot without running the loop.  A provider
 * that reports its sends late (verbs signals every 16th here) left the
 * slots of the last few sends taken, unreported, until someone waited.
 */
static void drain_frees_the_window(bool reverse)
{
	struct fx *f = fx_new(64);
	tern_session *from = reverse ? f->srv : f->cli;
	tern_callslot *cs[64];

	plain_calls(f, from, 3);
	assert_int_equal(tern_session_drain(from, STUCK_MS), 0);
	for (uint32_t i = 0; i < 64; i++) {
		void *buf;
		size_t cap;
		int rc = tern_call_acquire(from, &buf, &cap, &cs[i]);

		if (rc)
			fail_msg("after the drain, call slot %u of 64: %s", i, tern_err_name(rc));
	}
	for (uint32_t i = 0; i < 64; i++)
		tern_call_abort(cs[i]);
	plain_calls(f, from, 2);
	fx_free(f);
}

static void test_drain_frees_the_whole_window(void **state)
{
	(void)state;
	drain_frees_the_window(false);
}

static void test_drain_frees_the_whole_window_reverse(void **state)
{
	(void)state;
	drain_frees_the_window(true);
}

static void test_long_poll_8_slots(void **state)
{
	(void)state;
	long_poll(8, false, false);
}

static void test_long_poll_8_slots_reverse(void **state)
{
	(void)state;
	long_poll(8, true, false);
}

static void test_long_poll_64_slots(void **state)
{
	(void)state;
	long_poll(64, false, false);
}

static void test_long_poll_64_slots_reverse(void **state)
{
	(void)state;
	long_poll(64, true, false);
}

/* Stranded while every slot was free; the parked calls come later. */
static void test_long_poll_after_plain_calls_8_slots(void **state)
{
	(void)state;
	long_poll(8, false, true);
}

static void test_long_poll_after_plain_calls_64_slots_reverse(void **state)
{
	(void)state;
	long_poll(64, true, true);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_long_poll_8_slots),
		cmocka_unit_test(test_long_poll_8_slots_reverse),
		cmocka_unit_test(test_long_poll_64_slots),
		cmocka_unit_test(test_long_poll_64_slots_reverse),
		cmocka_unit_test(test_long_poll_after_plain_calls_8_slots),
		cmocka_unit_test(test_long_poll_after_plain_calls_64_slots_reverse),
		cmocka_unit_test(test_drain_frees_the_whole_window),
		cmocka_unit_test(test_drain_frees_the_whole_window_reverse),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: %s cannot run here (rdma: no device with an IPv4 address; "
		       "set TERN_RDMA_ADDR)\n",
		       fx_transport());
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
