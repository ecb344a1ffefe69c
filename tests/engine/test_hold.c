// SPDX-License-Identifier: MIT
/*
 * tern_req_hold() on every provider: one-way messages and one-way batch
 * items kept past their handler keep their bytes and their credits (the
 * sender waits, loses nothing), come back with tern_req_release(), and a
 * session going down under held messages neither frees them (the
 * provider leaves the slots to the engine: keep_rx) nor leaks.
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
#include "internal.h"

#define M_ONEWAY  0x400
#define M_OWBATCH 0x401
#define M_RAW	  0x402
#define MSG	  64
#define SLOTS	  4

static tern_req *held[SLOTS * 2];
static const uint8_t *held_in[SLOTS * 2];
static uint32_t held_seq[SLOTS * 2];
static int nheld, nrecv, bad;
static uint32_t next_seq;
static bool hold_on, raw_hold_refused;

static void fill(uint8_t *b, uint32_t seq)
{
	for (int i = 0; i < MSG; i++)
		b[i] = (uint8_t)(seq * 7 + (uint32_t)i);
	memcpy(b, &seq, 4);
}

static bool intact(const uint8_t *b, uint32_t seq)
{
	uint8_t e[MSG];

	fill(e, seq);
	return memcmp(b, e, MSG) == 0;
}

/* Check order and bytes; hold it when asked to. */
static void take(tern_req *r, const void *in, size_t n)
{
	uint32_t seq;
	tern_req *h;

	if (n != MSG) {
		bad++;
		return;
	}
	memcpy(&seq, in, 4);
	if (seq != next_seq || !intact(in, seq))
		bad++;
	next_seq = seq + 1;
	nrecv++;
	if (!hold_on)
		return;
	if (!(h = tern_req_hold(r)) || nheld == SLOTS * 2) {
		bad++;
		return;
	}
	held[nheld] = h;
	held_in[nheld] = in;
	held_seq[nheld] = seq;
	nheld++;
}

static void on_oneway(tern_req *r, const void *in, size_t n, void *u)
{
	(void)u;
	take(r, in, n);
}

static void on_owbatch(struct tern_batch_item *it, size_t n, void *u)
{
	(void)u;
	for (size_t i = 0; i < n; i++)
		take(it[i].req, it[i].in, it[i].in_len);
}

static int on_raw(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)in, (void)n, (void)out, (void)u;
	raw_hold_refused = tern_req_hold(r) == NULL;
	return 0;
}

static struct fx *start_in(enum tern_progress progress)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = SLOTS, .nonblock = 1};
	struct tern_batch_opts bo = {.size = sizeof(bo), .max = 2, .wait_us = 1000, .oneway = 1};

	assert_non_null(f);
	assert_int_equal(fx_setup(f, &o, progress), 0);
	assert_int_equal(tern_register_oneway(f->ctx, M_ONEWAY, on_oneway, NULL), 0);
	assert_int_equal(tern_register_batch(f->ctx, M_OWBATCH, &bo, on_owbatch, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_RAW, on_raw, NULL), 0);
	nheld = nrecv = bad = 0;
	next_seq = 0;
	hold_on = true;
	return f;
}

static struct fx *start(void)
{
	return start_in(TERN_PROGRESS_BUSY);
}

/* Run the loop for @ms. */
static void idle(struct fx *f, int ms)
{
	bool never = false;

	assert_int_equal(fx_run_until(f, &never, ms), -ETIMEDOUT);
}

/* Send message @seq, waiting for a credit as long as it takes (10 s). */
static void send_wait(struct fx *f, uint32_t method, uint32_t seq)
{
	uint8_t b[MSG];
	int rc;

	fill(b, seq);
	for (int i = 0; i < 10000; i++) {
		rc = tern_send(f->cli, method, b, MSG, NULL, NULL);
		if (rc != -EAGAIN)
			break;
		idle(f, 1);
	}
	assert_int_equal(rc, 0);
}

/* Send until every credit is held; return how many went. */
static uint32_t fill_all_credits(struct fx *f, uint32_t method)
{
	uint8_t b[MSG];
	uint32_t sent = 0;
	int rc;

	for (int spins = 0; spins < 2000 && nheld < SLOTS; spins++) {
		fill(b, sent);
		rc = tern_send(f->cli, method, b, MSG, NULL, NULL);
		if (rc == 0)
			sent++;
		else
			assert_int_equal(rc, -EAGAIN);
		idle(f, 1);
	}
	assert_int_equal(nheld, SLOTS);
	assert_int_equal(sent, SLOTS);
	return sent;
}

static void held_messages_keep_bytes_and_credits(uint32_t method)
{
	struct fx *f = start();
	struct tern_session_counters c;
	uint8_t b[MSG];
	uint32_t sent;

	sent = fill_all_credits(f, method);
	/* Every credit is held: the sender waits, nothing is dropped. */
	for (int i = 0; i < 20; i++) {
		fill(b, sent);
		assert_int_equal(tern_send(f->cli, method, b, MSG, NULL, NULL), -EAGAIN);
		idle(f, 5);
	}
	assert_int_equal(nrecv, SLOTS);
	for (int i = 0; i < nheld; i++)
		assert_true(intact(held_in[i], held_seq[i]));

	/* Give two back: the next messages cycle through those two slots
	 * while the other two stay as they were. */
	hold_on = false;
	assert_int_equal(tern_req_release(held[0]), 0);
	assert_int_equal(tern_req_release(held[1]), 0);
	for (int i = 0; i < 200; i++)
		send_wait(f, method, sent++);
	assert_int_equal(fx_run_until_count(f, &nrecv, (int)sent, 10000), 0);
	for (int i = 2; i < nheld; i++)
		assert_true(intact(held_in[i], held_seq[i]));

	/* The rest back: the full window again, nothing lost. */
	for (int i = 2; i < nheld; i++)
		assert_int_equal(tern_req_release(held[i]), 0);
	for (int i = 0; i < 200; i++)
		send_wait(f, method, sent++);
	assert_int_equal(fx_run_until_count(f, &nrecv, (int)sent, 10000), 0);
	assert_int_equal(bad, 0);
	assert_int_equal(tern_session_counters(f->srv, &c), 0);
	assert_int_equal(c.oneway_received, sent);
	assert_int_equal(c.oneway_dropped, 0);
	fx_teardown(f);
	free(f);
}

static void test_held_oneway_messages_keep_their_bytes_and_credits(void **state)
{
	(void)state;
	held_messages_keep_bytes_and_credits(M_ONEWAY);
}

static void test_held_oneway_batch_items_keep_their_bytes_and_credits(void **state)
{
	(void)state;
	held_messages_keep_bytes_and_credits(M_OWBATCH);
}

static void test_a_call_cannot_be_held(void **state)
{
	struct fx *f = start();
	struct fx_done d = {0};

	(void)state;
	raw_hold_refused = false;
	assert_int_equal(tern_call(f->cli, M_RAW, "x", 1, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, 0);
	assert_true(raw_hold_refused);
	assert_null(tern_req_hold(NULL));
	assert_int_equal(tern_req_release(NULL), -EINVAL);
	fx_teardown(f);
	free(f);
}

/*
 * Event progress, every credit held, the loop quiet: messages released
 * from the application's own code (not a tern callback: a worker's
 * result, say) give their credits back by themselves.  Nothing else will
 * come to carry them: the sender has no credit left to send with.
 */
static void released_outside_a_callback(uint32_t method)
{
	struct fx *f = start_in(TERN_PROGRESS_EVENT);
	uint32_t sent;

	sent = fill_all_credits(f, method);
	idle(f, 50); /* nothing pending: no timer left to flush anything */
	assert_int_equal(f->cli->cr.tx, 0);
	hold_on = false;
	for (int i = 0; i < nheld; i++)
		assert_int_equal(tern_req_release(held[i]), 0);
	for (int i = 0; i < 2000 && f->cli->cr.tx < SLOTS; i++)
		idle(f, 1);
	assert_int_equal(f->cli->cr.tx, SLOTS);
	/* and the window works again */
	for (int i = 0; i < 20; i++)
		send_wait(f, method, sent++);
	assert_int_equal(fx_run_until_count(f, &nrecv, (int)sent, 10000), 0);
	assert_int_equal(bad, 0);
	fx_teardown(f);
	free(f);
}

static void test_oneway_released_outside_a_callback_returns_its_credit(void **state)
{
	(void)state;
	released_outside_a_callback(M_ONEWAY);
}

static void test_batch_item_released_outside_a_callback_returns_its_credit(void **state)
{
	(void)state;
	released_outside_a_callback(M_OWBATCH);
}

/* Hold every credit, then let the session go down under them. */
static void held_across_close(uint32_t method, bool release_all)
{
	struct fx *f = start();
	tern_session *srv;

	fill_all_credits(f, method);
	srv = f->srv;
	assert_int_equal(tern_session_close(f->cli, NULL), 0);
	for (int i = 0; i < 1000 && srv->state != TERN_S_CLOSED; i++)
		idle(f, 5);
	assert_int_equal(srv->state, TERN_S_CLOSED);
	/* Only the held messages keep the session's memory now. */
	assert_int_equal(srv->refs, SLOTS);
	/* The connection is gone, its slots are not: the held bytes read as
	 * they arrived (freed or unmapped slots would fail here under ASan,
	 * or fault). */
	for (int i = 0; i < nheld; i++)
		assert_true(intact(held_in[i], held_seq[i]));
	for (int i = 0; i < SLOTS - 1; i++)
		assert_int_equal(tern_req_release(held[i]), 0);
	assert_int_equal(srv->refs, 1);
	/* The last release frees it; or the context's end does. */
	if (release_all)
		assert_int_equal(tern_req_release(held[SLOTS - 1]), 0);
	assert_int_equal(bad, 0);
	fx_teardown(f);
	free(f);
}

static void test_held_oneway_messages_outlive_their_session(void **state)
{
	(void)state;
	held_across_close(M_ONEWAY, true);
}

static void test_held_batch_items_outlive_their_session_until_the_context_ends(void **state)
{
	(void)state;
	held_across_close(M_OWBATCH, false);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_held_oneway_messages_keep_their_bytes_and_credits),
		cmocka_unit_test(test_held_oneway_batch_items_keep_their_bytes_and_credits),
		cmocka_unit_test(test_a_call_cannot_be_held),
		cmocka_unit_test(test_oneway_released_outside_a_callback_returns_its_credit),
		cmocka_unit_test(test_batch_item_released_outside_a_callback_returns_its_credit),
		cmocka_unit_test(test_held_oneway_messages_outlive_their_session),
		cmocka_unit_test(
			test_held_batch_items_outlive_their_session_until_the_context_ends),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: %s\n",
		       fx_is("rdma") ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
		return 77;
	}
	return _cmocka_run_group_tests(fx_transport(), tests, sizeof(tests) / sizeof(tests[0]),
				       NULL, NULL);
}
