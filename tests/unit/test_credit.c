// SPDX-License-Identifier: MIT
/*
 * Credit accounting, simulated end to end on the host: two accountants
 * exchange headers, and the receive budget (2N + C per side) must never be
 * exceeded, whatever order things happen in.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "credit.h"

#define N 8

static struct tern_hdr msg(uint8_t kind)
{
	struct tern_hdr h = {.kind = kind};
	return h;
}

static void test_a_fresh_session_may_make_n_calls_and_no_more(void **state)
{
	struct tern_credits c;

	(void)state;
	tern_credits_init(&c, N);
	for (int i = 0; i < N; i++) {
		assert_true(tern_credits_can_call(&c));
		tern_credits_take_call(&c);
	}
	assert_false(tern_credits_can_call(&c));
	assert_int_equal(c.replies_expected, N);
}

static void test_a_reply_returns_the_request_credit_it_carries(void **state)
{
	struct tern_credits cli, srv;
	struct tern_hdr req = msg(TERN_MSG_REQ), rep = msg(TERN_MSG_REP);
	const char *why;

	(void)state;
	tern_credits_init(&cli, N);
	tern_credits_init(&srv, N);
	tern_credits_take_call(&cli);
	tern_credits_stamp(&cli, &req);
	assert_int_equal(tern_credits_on_recv(&srv, &req, &why), 0);
	assert_int_equal(srv.peer_tx, N - 1);
	/* the server re-posts the request's receive, then replies */
	tern_credits_request_done(&srv);
	tern_credits_stamp(&srv, &rep);
	assert_int_equal(rep.credits, 1);
	assert_int_equal(srv.peer_tx, N);
	assert_int_equal(tern_credits_on_recv(&cli, &rep, &why), 0);
	assert_int_equal(cli.tx, N);
	assert_int_equal(cli.replies_expected, 0);
}

static void test_a_request_without_a_credit_is_a_protocol_error(void **state)
{
	struct tern_credits srv;
	struct tern_hdr req = msg(TERN_MSG_REQ);
	const char *why = NULL;

	(void)state;
	tern_credits_init(&srv, N);
	for (int i = 0; i < N; i++)
		assert_int_equal(tern_credits_on_recv(&srv, &req, &why), 0);
	assert_int_equal(tern_credits_on_recv(&srv, &req, &why), TERN_EPEER);
	assert_non_null(why);
}

static void test_credits_never_owed_are_a_protocol_error(void **state)
{
	struct tern_credits c;
	struct tern_hdr rep = msg(TERN_MSG_REP);
	const char *why = NULL;

	(void)state;
	tern_credits_init(&c, N);
	tern_credits_take_call(&c);
	rep.credits = 2; /* we spent one, so at most one can come back */
	assert_int_equal(tern_credits_on_recv(&c, &rep, &why), TERN_EPEER);
}

static void test_a_reply_to_nothing_is_a_protocol_error(void **state)
{
	struct tern_credits c;
	struct tern_hdr rep = msg(TERN_MSG_ERR);
	const char *why = NULL;

	(void)state;
	tern_credits_init(&c, N);
	assert_int_equal(tern_credits_on_recv(&c, &rep, &why), TERN_EPEER);
}

static void test_credit_messages_have_their_own_bounded_credits(void **state)
{
	struct tern_credits c;
	struct tern_hdr cm = msg(TERN_MSG_CREDIT);
	const char *why = NULL;

	(void)state;
	tern_credits_init(&c, N);
	for (int i = 0; i < TERN_CTRL_SLOTS; i++)
		assert_int_equal(tern_credits_on_recv(&c, &cm, &why), 0);
	assert_int_equal(tern_credits_on_recv(&c, &cm, &why), TERN_EPEER);
	assert_int_equal(c.ctrl_to_return, TERN_CTRL_SLOTS);
}

static void test_credit_message_wanted_only_when_owed_and_useful(void **state)
{
	struct tern_credits c;
	struct tern_hdr req = msg(TERN_MSG_REQ);
	const char *why;

	(void)state;
	tern_credits_init(&c, N);
	assert_false(tern_credits_want_credit_msg(&c)); /* nothing owed */
	assert_int_equal(tern_credits_on_recv(&c, &req, &why), 0);
	tern_credits_request_done(&c);
	/* one owed, peer still holds 7 of 8: not worth a message yet */
	assert_false(tern_credits_want_credit_msg(&c));
	assert_int_equal(tern_credits_on_recv(&c, &req, &why), 0);
	tern_credits_request_done(&c);
	assert_true(tern_credits_want_credit_msg(&c)); /* 2 owed = N/4 */
	c.ctrl_tx = 0;
	assert_false(tern_credits_want_credit_msg(&c)); /* no control credit */
}

/*
 * Two sides call each other at random, reply in random order, and return
 * credits both piggybacked and by credit message.  After every step, the
 * messages a side may still receive never exceed its 2N + C receives.
 */
struct side {
	struct tern_credits cr;
	int posted;	   /* receives posted */
	int held_requests; /* requests received and not yet answered */
	int in_flight_to_peer;
};

static void deliver(struct side *from, struct side *to, struct tern_hdr h)
{
	const char *why = NULL;

	tern_credits_stamp(&from->cr, &h);
	assert_true(to->posted > 0); /* never into an empty ring: no RNR */
	to->posted--;
	assert_int_equal(tern_credits_on_recv(&to->cr, &h, &why), 0);
	if (h.kind == TERN_MSG_REQ)
		to->held_requests++;
	else
		to->posted++; /* replies and credit messages are re-posted at once */
}

static void test_random_bidirectional_traffic_never_overruns_receives(void **state)
{
	struct side s[2];

	(void)state;
	srand(12345);
	for (int i = 0; i < 2; i++) {
		memset(&s[i], 0, sizeof(s[i]));
		tern_credits_init(&s[i].cr, N);
		s[i].posted = 2 * N + TERN_CTRL_SLOTS;
	}
	for (int step = 0; step < 200000; step++) {
		int a = rand() & 1, b = !a;
		switch (rand() % 3) {
		case 0: /* a calls b */
			if (tern_credits_can_call(&s[a].cr)) {
				tern_credits_take_call(&s[a].cr);
				deliver(&s[a], &s[b], msg(TERN_MSG_REQ));
			}
			break;
		case 1: /* a answers one of b's requests */
			if (s[a].held_requests) {
				s[a].held_requests--;
				s[a].posted++;
				tern_credits_request_done(&s[a].cr);
				deliver(&s[a], &s[b], msg(TERN_MSG_REP));
			}
			break;
		case 2: /* a settles credits by message, if it wants to */
			if (tern_credits_want_credit_msg(&s[a].cr)) {
				tern_credits_take_credit_msg(&s[a].cr);
				deliver(&s[a], &s[b], msg(TERN_MSG_CREDIT));
			}
			break;
		}
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_fresh_session_may_make_n_calls_and_no_more),
		cmocka_unit_test(test_a_reply_returns_the_request_credit_it_carries),
		cmocka_unit_test(test_a_request_without_a_credit_is_a_protocol_error),
		cmocka_unit_test(test_credits_never_owed_are_a_protocol_error),
		cmocka_unit_test(test_a_reply_to_nothing_is_a_protocol_error),
		cmocka_unit_test(test_credit_messages_have_their_own_bounded_credits),
		cmocka_unit_test(test_credit_message_wanted_only_when_owed_and_useful),
		cmocka_unit_test(test_random_bidirectional_traffic_never_overruns_receives),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
