// SPDX-License-Identifier: MIT
/*
 * Credit accounting, simulated end to end on the host: two accountants
 * exchange headers, and the receive budget (2N + C + 1 per side) must never
 * be exceeded, whatever order things happen in, and every credit must come
 * home once traffic stops.
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
	for (int i = 0; i < TERN_CTRL_CREDITS; i++)
		assert_int_equal(tern_credits_on_recv(&c, &cm, &why), 0);
	assert_int_equal(tern_credits_on_recv(&c, &cm, &why), TERN_EPEER);
	assert_int_equal(c.ctrl_to_return, TERN_CTRL_CREDITS);
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

static void test_control_credits_come_back_in_an_ack_once_all_are_spent(void **state)
{
	struct tern_credits a, b;
	struct tern_hdr cm = msg(TERN_MSG_CREDIT), ack = msg(TERN_MSG_CTRL_ACK);
	const char *why = NULL;

	(void)state;
	tern_credits_init(&a, N);
	tern_credits_init(&b, N);
	/* a spends one: b holds one of two, no ACK yet (a can still send) */
	tern_credits_take_credit_msg(&a);
	tern_credits_stamp(&a, &cm);
	assert_int_equal(tern_credits_on_recv(&b, &cm, &why), 0);
	assert_false(tern_credits_want_ack(&b));
	/* an ACK now would be out of turn */
	ack.ctrl_credits = 1;
	assert_int_equal(tern_credits_on_recv(&a, &ack, &why), TERN_EPEER);
	/* a spends the other: b owes both back, in an ACK */
	cm = msg(TERN_MSG_CREDIT);
	tern_credits_take_credit_msg(&a);
	tern_credits_stamp(&a, &cm);
	assert_int_equal(tern_credits_on_recv(&b, &cm, &why), 0);
	assert_true(tern_credits_want_ack(&b));
	ack = msg(TERN_MSG_CTRL_ACK);
	tern_credits_stamp(&b, &ack);
	assert_false(tern_credits_want_ack(&b));
	assert_int_equal(tern_credits_on_recv(&a, &ack, &why), 0);
	assert_int_equal(a.ctrl_tx, TERN_CTRL_CREDITS);
	/* a second one is out of turn */
	ack = msg(TERN_MSG_CTRL_ACK);
	assert_int_equal(tern_credits_on_recv(&a, &ack, &why), TERN_EPEER);
}

/*
 * Two sides exchange calls, replies and one-way messages at random, with
 * messages in flight (a FIFO per direction, delivered at random times) and
 * credits returned piggybacked, by credit message and by ACK, following the
 * session's rules (src/session.c: tern__session_flush_dirty).  On arrival a
 * message must find a posted receive (no RNR).  Then traffic stops; each
 * side only settles what it owes, and every credit must come home: a side
 * left holding credits it cannot return would hang tern_session_drain().
 */
#define QCAP 1024

struct side {
	struct tern_credits cr;
	int posted;		 /* receives posted */
	int held_requests;	 /* requests received and not yet answered */
	int held_oneway;	 /* one-way messages received, not yet consumed */
	int ack_busy;		 /* the ACK slot is in flight */
	struct tern_hdr q[QCAP]; /* in flight to the peer */
	int qh, ql;
};

static void post(struct side *from, struct tern_hdr h)
{
	tern_credits_stamp(&from->cr, &h);
	assert_true(from->ql < QCAP);
	from->q[(from->qh + from->ql++) % QCAP] = h;
}

static void arrive(struct side *from, struct side *to)
{
	struct tern_hdr h = from->q[from->qh];
	const char *why = NULL;

	from->qh = (from->qh + 1) % QCAP;
	from->ql--;
	if (h.kind == TERN_MSG_CTRL_ACK)
		from->ack_busy = 0;
	assert_true(to->posted > 0); /* never into an empty ring: no RNR */
	to->posted--;
	assert_int_equal(tern_credits_on_recv(&to->cr, &h, &why), 0);
	if (h.kind == TERN_MSG_REQ)
		to->held_requests++;
	else if (h.kind == TERN_MSG_ONEWAY)
		to->held_oneway++;
	else
		to->posted++; /* replies and control messages are re-posted at once */
}

/* tern__session_flush_dirty's choice; @idle: the peer has been quiet 1 ms */
static int settle(struct side *a, bool idle)
{
	if (tern_credits_want_ack(&a->cr)) {
		if (a->ack_busy)
			return 0;
		a->ack_busy = 1;
		post(a, msg(TERN_MSG_CTRL_ACK));
		return 1;
	}
	if (!a->cr.to_return || !a->cr.ctrl_tx)
		return 0;
	if (tern_credits_want_credit_msg(&a->cr) || idle) {
		tern_credits_take_credit_msg(&a->cr);
		post(a, msg(TERN_MSG_CREDIT));
		return 1;
	}
	return 0;
}

static void run_traffic(unsigned seed, int oneway_only_from_0)
{
	static struct side s[2];
	int progress;

	srand(seed);
	for (int i = 0; i < 2; i++) {
		memset(&s[i], 0, sizeof(s[i]));
		tern_credits_init(&s[i].cr, N);
		s[i].posted = 2 * N + TERN_CTRL_SLOTS;
	}
	for (int step = 0; step < 200000; step++) {
		int a = rand() & 1, b = !a;

		if (oneway_only_from_0)
			a = (rand() % 3) ? 0 : 1, b = !a;
		switch (rand() % 6) {
		case 0: /* a calls b */
			if (!oneway_only_from_0 && tern_credits_can_call(&s[a].cr)) {
				tern_credits_take_call(&s[a].cr);
				post(&s[a], msg(TERN_MSG_REQ));
			}
			break;
		case 1: /* a sends b a one-way message */
			if ((!oneway_only_from_0 || a == 0) && tern_credits_can_send(&s[a].cr)) {
				tern_credits_take_send(&s[a].cr);
				post(&s[a], msg(TERN_MSG_ONEWAY));
			}
			break;
		case 2: /* a answers one of b's requests */
			if (s[a].held_requests) {
				s[a].held_requests--;
				s[a].posted++;
				tern_credits_request_done(&s[a].cr);
				post(&s[a], msg(TERN_MSG_REP));
			}
			break;
		case 3: /* a consumes one-way messages (a batch handler returns) */
			while (s[a].held_oneway) {
				s[a].held_oneway--;
				s[a].posted++;
				tern_credits_request_done(&s[a].cr);
			}
			break;
		case 4: /* a settles, as after a batch of completions */
			settle(&s[a], rand() % 8 == 0);
			break;
		case 5: /* the network delivers what a sent */
			if (s[a].ql)
				arrive(&s[a], &s[b]);
			break;
		}
	}
	/* Traffic stops: answer and consume what is held, then settle only. */
	do {
		progress = 0;
		for (int a = 0; a < 2; a++) {
			struct side *me = &s[a], *peer = &s[!a];

			while (me->held_requests) {
				me->held_requests--;
				me->posted++;
				tern_credits_request_done(&me->cr);
				post(me, msg(TERN_MSG_REP));
				progress = 1;
			}
			while (me->held_oneway) {
				me->held_oneway--;
				me->posted++;
				tern_credits_request_done(&me->cr);
				progress = 1;
			}
			progress |= settle(me, true);
			while (me->ql) {
				arrive(me, peer);
				progress = 1;
			}
		}
	} while (progress);
	for (int a = 0; a < 2; a++) {
		assert_int_equal(s[a].cr.tx, N); /* every request credit home */
		assert_int_equal(s[a].cr.to_return, 0);
		assert_int_equal(s[a].cr.replies_expected, 0);
		assert_int_equal(s[a].posted, 2 * N + TERN_CTRL_SLOTS);
	}
}

static void test_random_bidirectional_traffic_never_overruns_receives(void **state)
{
	(void)state;
	for (unsigned seed = 1; seed <= 20; seed++)
		run_traffic(seed, 0);
}

/* The features example's shape: one side streams, the other only consumes. */
static void test_a_one_way_stream_gets_every_credit_back(void **state)
{
	(void)state;
	for (unsigned seed = 1; seed <= 20; seed++)
		run_traffic(seed, 1);
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
		cmocka_unit_test(test_control_credits_come_back_in_an_ack_once_all_are_spent),
		cmocka_unit_test(test_random_bidirectional_traffic_never_overruns_receives),
		cmocka_unit_test(test_a_one_way_stream_gets_every_credit_back),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
