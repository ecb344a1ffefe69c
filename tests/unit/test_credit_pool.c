// SPDX-License-Identifier: MIT
/*
 * Credits out of a shared receive pool (src/credit_pool.h), first rule by
 * rule, then simulated end to end: many sessions between a few contexts,
 * each context receiving into one shared pool or into per-session rings,
 * random traffic both ways on every session, and a check at every step
 * that what the peers may still send into a pool is at most what the NIC
 * has posted there, less the guard.  That count is taken from the peers'
 * own state and the messages on the wire, not from the pool's books, so a
 * wrong book cannot vouch for itself.
 *
 * A failure prints its seed; TERN_POOL_SEED=<seed> replays just that one,
 * TERN_POOL_SEEDS=<k> runs k seeds per simulation test instead of the few
 * ./tools/test runs.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "credit_pool.h"

#define C TERN_CTRL_CREDITS

/* ---- rule by rule ----------------------------------------------------------- */

/* A pool with room for @cap receives, all posted. */
static void pool_up(struct tern_pool *p, const struct tern_pool_params *pp)
{
	tern_pool_init(p, pp);
	tern_pool_grown(p, pp->cap);
}

/* A pool small enough to count by hand; it never retires a receive. */
static void small_params(struct tern_pool_params *pp)
{
	*pp = (struct tern_pool_params){
		.cap = 64,
		.min = 2,
		.init = 4,
		.guard = 2,
		.chunk = 8,
		.low_water = 0,
		.high_water = UINT32_MAX,
		.reserve = 2 + TERN_POOL_CTRL_CLAIM,
		.idle = 100,
	};
}

/* Two ends of one session, a (client) and b (server), with their pools. */
struct pair {
	struct tern_pool pa, pb;
	struct tern_pool_credits a, b;
};

static void pair_up(struct pair *x, const struct tern_pool_params *ppa,
		    const struct tern_pool_params *ppb, uint32_t n)
{
	const char *why = NULL;
	uint32_t init, min;

	pool_up(&x->pa, ppa);
	pool_up(&x->pb, ppb);
	/* both pools count as having room to spare, so both get the fast start */
	x->pa.pp.high_water = x->pb.pp.high_water = 0;
	assert_int_equal(tern_pool_admit(&x->pa, &x->a, n, 0), 0);
	assert_int_equal(tern_pool_admit(&x->pb, &x->b, n, 0), 0);
	x->pa.pp.high_water = ppa->high_water;
	x->pb.pp.high_water = ppb->high_water;
	tern_pool_hello(&x->b, &init, &min);
	assert_int_equal(tern_pool_peer(&x->a, init, min, &why), 0);
	tern_pool_hello(&x->a, &init, &min);
	assert_int_equal(tern_pool_peer(&x->b, init, min, &why), 0);
}

/* @from sends @kind to @to, which receives it into @p (no loss, no delay). */
static int hop(struct tern_pool_credits *from, struct tern_pool *p, struct tern_pool_credits *to,
	       uint8_t kind, uint64_t now)
{
	struct tern_pool_stamp f;
	const char *why = NULL;
	int rc;

	tern_pool_stamp(from, &f);
	rc = tern_pool_on_recv(p, to, kind, &f, now, &why);
	if (rc)
		assert_non_null(why);
	return rc;
}

/* A pair on two small pools (small_params()), both with the fast start. */
static void small_pair(struct pair *x, uint32_t n)
{
	struct tern_pool_params pp;

	small_params(&pp);
	pair_up(x, &pp, &pp, n);
}

/* a sends b a one-way message at time @now. */
static void send_one(struct pair *x, uint64_t now)
{
	tern_pool_take_send(&x->a);
	assert_int_equal(hop(&x->a, &x->pb, &x->b, TERN_MSG_ONEWAY, now), 0);
}

/* a sends b all the one-way messages it has credits for; @starved: it has more. */
static void spend_all(struct pair *x, bool starved)
{
	while (x->a.tx) {
		tern_pool_set_starved(&x->a, starved && x->a.tx == 1);
		send_one(x, 1);
	}
}

static void test_a_ring_is_credit_h_count(void **state)
{
	struct tern_pool_params pp;
	struct tern_pool p;
	struct tern_pool_credits c;
	const char *why;

	(void)state;
	tern_pool_ring_params(&pp, 8);
	pool_up(&p, &pp);
	assert_int_equal(p.posted, 2 * 8 + C + 1);
	assert_int_equal(tern_pool_admit(&p, &c, 8, 0), 0);
	/* the peer may send N requests; N receives are left for replies */
	assert_int_equal(c.target, 8);
	assert_int_equal(c.peer_tx, 8);
	assert_int_equal(tern_pool_headroom(&p), 8);
	assert_int_equal(tern_pool_peer(&c, 8, 8, &why), 0);
	for (int i = 0; i < 8; i++) {
		assert_true(tern_pool_can_call(&p, &c));
		tern_pool_take_call(&p, &c);
	}
	assert_false(tern_pool_can_call(&p, &c));
	assert_int_equal(p.claimed, p.posted);
	/* and nothing more fits: a second session is refused for good */
	{
		struct tern_pool_credits d;
		assert_int_equal(tern_pool_admit(&p, &d, 8, 0), -ENOSPC);
	}
}

static void test_admission_claims_a_floor_and_refuses_what_cannot_fit(void **state)
{
	struct tern_pool_params pp;
	struct tern_pool p;
	struct tern_pool_credits c[16];
	uint32_t floor = 2 + TERN_POOL_CTRL_CLAIM;
	int admitted = 0, rc;

	(void)state;
	small_params(&pp);
	tern_pool_init(&p, &pp);
	/* nothing posted yet: wait, and grow by whole chunks */
	assert_int_equal(tern_pool_admit(&p, &c[0], 8, 0), -EAGAIN);
	assert_int_equal(tern_pool_grow_want(&p, floor), 8);
	tern_pool_grown(&p, 8);
	assert_int_equal(tern_pool_admit(&p, &c[0], 8, 0), 0);
	/* 8 posted - guard 2 = 6: the floor (5) fits, init (4 + 3) does not */
	assert_int_equal(c[0].target, 2);
	admitted = 1;
	for (;;) {
		rc = tern_pool_admit(&p, &c[admitted], 8, 0);
		if (rc == -EAGAIN) {
			uint32_t k = tern_pool_grow_want(&p, floor);
			if (!k)
				break;
			tern_pool_grown(&p, k);
			continue;
		}
		if (rc)
			break;
		admitted++;
	}
	/* cap 64 = guard 2 + reserve 5 + 11 floors of 5 + 2 */
	assert_int_equal(rc, -ENOSPC);
	assert_int_equal(admitted, 11);
	assert_int_equal(p.base, 11 * floor);
	assert_true(p.claimed + pp.guard <= p.posted);
	assert_true(tern_pool_buffers(&p) <= pp.cap);
	/* one leaves: there is room for one more */
	tern_pool_leave(&p, &c[3]);
	assert_int_equal(tern_pool_admit(&p, &c[3], 8, 0), 0);
}

/*
 * Admit @count sessions of @n slots into @p as a server would: growing the
 * pool by whole chunks when an accept finds too little headroom.  Return
 * how many were admitted before the first refusal.
 */
static uint32_t admit_storm(struct tern_pool *p, struct tern_pool_credits *c, uint32_t count,
			    uint32_t n)
{
	uint32_t floor = tern_pool_min_u32(p->pp.min, n) + TERN_POOL_CTRL_CLAIM;

	for (uint32_t k = 0; k < count; k++) {
		int rc = tern_pool_admit(p, &c[k], n, 0);

		if (rc == -EAGAIN) {
			uint32_t grow = tern_pool_grow_want(p, floor);

			if (!grow)
				return k;
			tern_pool_grown(p, grow);
			rc = tern_pool_admit(p, &c[k], n, 0);
		}
		if (rc)
			return k;
	}
	return count;
}

/*
 * The target: 1,000 idle sessions at the default slot size in at
 * most 64 MiB of registered receive memory on the server.  Each keeps its
 * floor, min + C + 1 = 5 receives; a storm of accepts gets no fast start
 * (it would come from growing), so the pool is 5,000 receives plus guard
 * and low water, in 2 MiB chunks.
 */
static void test_a_thousand_idle_sessions_fit_in_64_mib(void **state)
{
	static struct tern_pool_credits c[1000];
	struct tern_pool_params pp;
	struct tern_pool p;
	uint64_t bytes, rings;

	(void)state;
	tern_pool_default_params(&pp, 8192);
	tern_pool_init(&p, &pp);
	assert_int_equal(admit_storm(&p, c, 1000, 64), 1000);
	for (int k = 0; k < 1000; k++)
		assert_int_equal(c[k].target, TERN_POOL_DEFAULT_MIN);
	assert_int_equal(p.claimed, 1000 * (TERN_POOL_DEFAULT_MIN + TERN_POOL_CTRL_CLAIM));
	assert_int_equal(p.claimed, p.base);
	bytes = (uint64_t)tern_pool_buffers(&p) * 8192;
	rings = 1000ull * (2 * 64 + TERN_CTRL_SLOTS) * 8192;
	print_message("1000 idle sessions, 8 KiB slots: %u receives = %.1f MiB registered "
		      "(per-session rings of 2N + C + 1 at N = 64: %.0f MiB)\n",
		      tern_pool_buffers(&p), bytes / 1048576.0, rings / 1048576.0);
	assert_true(bytes <= 64ull << 20);
	assert_true(p.claimed + pp.guard <= p.posted);
}

/* At the defaults a context takes (cap - guard - reserve) / floor sessions, then refuses. */
static void test_a_default_pool_refuses_the_session_whose_floor_cannot_fit(void **state)
{
	static struct tern_pool_credits c[2000];
	struct tern_pool_params pp;
	struct tern_pool p;
	uint32_t floor = TERN_POOL_DEFAULT_MIN + TERN_POOL_CTRL_CLAIM, most, k;

	(void)state;
	tern_pool_default_params(&pp, 8192);
	tern_pool_init(&p, &pp);
	most = (pp.cap - pp.guard - pp.reserve) / floor;
	assert_int_equal(most, 1634);
	k = admit_storm(&p, c, 2000, 64);
	assert_int_equal(k, most);
	assert_int_equal(tern_pool_admit(&p, &c[k], 64, 0), -ENOSPC);
	assert_true(tern_pool_buffers(&p) <= pp.cap);
}

static void test_the_initial_grant_comes_only_from_room_to_spare(void **state)
{
	struct tern_pool_params pp;
	struct tern_pool p;
	struct tern_pool_credits c;
	uint32_t init, min;

	(void)state;
	small_params(&pp);
	pp.low_water = 4;
	pp.high_water = 12;
	tern_pool_init(&p, &pp);
	/* one short of guard + init + control + reserve + high water */
	tern_pool_grown(&p, pp.guard + 4 + TERN_POOL_CTRL_CLAIM + pp.reserve + 12 - 1);
	assert_int_equal(tern_pool_admit(&p, &c, 8, 0), 0);
	assert_int_equal(c.target, 2);
	tern_pool_leave(&p, &c);
	tern_pool_grown(&p, 1);
	assert_int_equal(tern_pool_admit(&p, &c, 8, 0), 0);
	assert_int_equal(c.target, 4);
	assert_int_equal(c.limit_sent, 4);
	assert_int_equal(p.claimed, 4 + TERN_POOL_CTRL_CLAIM);
	tern_pool_hello(&c, &init, &min);
	assert_int_equal(init, 4);
	assert_int_equal(min, 2);
}

/* A target lowered before the hello went out: the hello says what was granted. */
static void test_the_hello_announces_what_was_granted_not_the_target(void **state)
{
	struct tern_pool_params pp;
	struct tern_pool p;
	struct tern_pool_credits c;
	uint32_t init, min;

	(void)state;
	small_params(&pp);
	pp.high_water = 0;
	pool_up(&p, &pp);
	assert_int_equal(tern_pool_admit(&p, &c, 8, 0), 0);
	assert_int_equal(c.target, 4);
	assert_true(tern_pool_lower(&p, &c, 2, 1));
	tern_pool_hello(&c, &init, &min);
	assert_int_equal(init, 4);
	/* ...and the lowered limit is worth a message of its own */
	assert_true(tern_pool_want_credit_msg(&c, false));
}

static void test_a_reply_needs_a_pool_receive_claimed_by_its_call(void **state)
{
	struct pair x;
	uint32_t head;

	(void)state;
	small_pair(&x, 8);
	head = tern_pool_headroom(&x.pa);
	assert_true(tern_pool_can_call(&x.pa, &x.a));
	tern_pool_take_call(&x.pa, &x.a);
	assert_int_equal(tern_pool_headroom(&x.pa), head - 1);
	assert_int_equal(hop(&x.a, &x.pb, &x.b, TERN_MSG_REQ, 1), 0);
	assert_int_equal(x.b.inproc, 1);
	/* b answers; its reply takes the receive a claimed */
	assert_int_equal(hop(&x.b, &x.pa, &x.a, TERN_MSG_REP, 1), 0);
	assert_int_equal(x.a.replies_expected, 0);
	assert_true(tern_pool_msg_done(&x.pa, &x.a, TERN_MSG_REP));
	assert_int_equal(tern_pool_headroom(&x.pa), head);
	/* b's receive is posted again: a gets its credit back */
	assert_true(tern_pool_request_done(&x.pb, &x.b));
	assert_int_equal(x.b.to_return, 1);
	assert_int_equal(hop(&x.b, &x.pa, &x.a, TERN_MSG_CREDIT, 2), 0);
	assert_int_equal(x.a.tx, 4);
	/* a pool with no headroom left makes no call, whatever credits it has */
	x.pa.posted = x.pa.claimed + x.pb.pp.guard;
	assert_false(tern_pool_can_call(&x.pa, &x.a));
}

static void test_a_lowered_limit_makes_the_holder_give_back(void **state)
{
	struct pair x;
	uint32_t claimed;

	(void)state;
	small_pair(&x, 8);
	assert_int_equal(x.a.tx, 4);
	assert_true(tern_pool_lower(&x.pb, &x.b, 1, 5)); /* never under min */
	assert_int_equal(x.b.target, 2);
	assert_true(tern_pool_want_credit_msg(&x.b, false)); /* worth a message */
	tern_pool_take_credit_msg(&x.b);
	assert_int_equal(hop(&x.b, &x.pa, &x.a, TERN_MSG_CREDIT, 5), 0);
	assert_int_equal(x.a.tx, 2);
	assert_int_equal(x.a.back, 2);
	assert_true(tern_pool_want_credit_msg(&x.a, false));
	claimed = x.pb.claimed;
	tern_pool_take_credit_msg(&x.a);
	assert_int_equal(hop(&x.a, &x.pb, &x.b, TERN_MSG_CREDIT, 6), 0);
	/* two back, and one claim moved from the control credit to its message */
	assert_int_equal(x.pb.claimed, claimed - 2 - 1);
	assert_int_equal(x.b.peer_tx, 2);
	assert_int_equal(tern_pool_circulating(&x.b), 2);
	assert_false(tern_pool_want_credit_msg(&x.a, false));
}

static void test_credits_over_the_target_stay_in_the_pool(void **state)
{
	struct pair x;
	uint32_t head;

	(void)state;
	small_pair(&x, 8);
	for (int i = 0; i < 3; i++) {
		tern_pool_take_call(&x.pa, &x.a);
		assert_int_equal(hop(&x.a, &x.pb, &x.b, TERN_MSG_REQ, 1), 0);
	}
	tern_pool_lower(&x.pb, &x.b, 2, 2);
	head = tern_pool_headroom(&x.pb);
	/* circulation 4, target 2: the first two credits stay, the third goes back */
	assert_true(tern_pool_request_done(&x.pb, &x.b));
	assert_true(tern_pool_request_done(&x.pb, &x.b));
	assert_int_equal(x.b.to_return, 0);
	assert_int_equal(tern_pool_headroom(&x.pb), head + 2);
	assert_true(tern_pool_request_done(&x.pb, &x.b));
	assert_int_equal(x.b.to_return, 1);
	assert_int_equal(tern_pool_circulating(&x.b), 2);
}

static void test_want_doubles_the_target_once_per_grant_spent(void **state)
{
	struct pair x;

	(void)state;
	small_pair(&x, 16);
	/* a spends its 4 credits and has more to send */
	spend_all(&x, true);
	assert_true(x.b.want);
	assert_int_equal(x.pb.wanting, 1);
	assert_int_equal(tern_pool_grant(&x.pb, &x.b), 4); /* 4 -> 8 */
	assert_int_equal(x.b.target, 8);
	assert_false(x.b.want);
	/* a WANT said again before a heard of that grant does not double again */
	assert_true(tern_pool_can_credit_msg(&x.a));
	assert_true(x.a.starved);
	tern_pool_take_credit_msg(&x.a);
	assert_int_equal(hop(&x.a, &x.pb, &x.b, TERN_MSG_CREDIT, 1), 0);
	assert_false(x.b.want);
	assert_int_equal(tern_pool_grant(&x.pb, &x.b), 0);
	/* the grant arrives; a may say WANT again once it has spent it */
	assert_int_equal(hop(&x.b, &x.pa, &x.a, TERN_MSG_CREDIT, 1), 0);
	assert_int_equal(x.a.tx, 4);
	assert_false(x.a.want_sent);
	assert_false(tern_pool_want_credit_msg(&x.a, false)); /* it has credits */
}

static void test_an_unmet_want_waits_for_headroom(void **state)
{
	struct pair x;

	(void)state;
	small_pair(&x, 16);
	spend_all(&x, true);
	/* the pool is lent out down to its reserve: nothing to give */
	x.pb.posted = x.pb.claimed + x.pb.pp.guard + x.pb.pp.reserve;
	assert_int_equal(tern_pool_grant(&x.pb, &x.b), 0);
	assert_true(x.b.want);
	assert_int_equal(x.b.target, 8);
	x.pb.posted += 3;
	assert_int_equal(tern_pool_grant(&x.pb, &x.b), 3);
	assert_true(x.b.want);
	x.pb.posted += 5;
	assert_int_equal(tern_pool_grant(&x.pb, &x.b), 1);
	assert_false(x.b.want);
	assert_int_equal(x.pb.wanting, 0);
}

static void test_an_idle_borrower_goes_back_to_its_floor(void **state)
{
	struct pair x;

	(void)state;
	small_pair(&x, 8);
	send_one(&x, 10);
	assert_false(tern_pool_idle(&x.pb, &x.b, 10 + x.pb.pp.idle - 1));
	assert_true(tern_pool_idle(&x.pb, &x.b, 10 + x.pb.pp.idle));
	assert_int_equal(x.b.target, 2);
	assert_false(tern_pool_idle(&x.pb, &x.b, 10 + 2 * x.pb.pp.idle)); /* at its floor */
}

static void test_the_last_control_credit_waits_for_the_ack_receive(void **state)
{
	struct pair x;

	(void)state;
	small_pair(&x, 8);
	/* a spends both control credits; b owes both back in an ACK */
	for (int i = 0; i < C; i++) {
		assert_true(tern_pool_can_credit_msg(&x.a));
		tern_pool_take_credit_msg(&x.a);
		assert_int_equal(hop(&x.a, &x.pb, &x.b, TERN_MSG_CREDIT, 1), 0);
		assert_true(tern_pool_msg_done(&x.pb, &x.b, TERN_MSG_CREDIT));
	}
	assert_false(tern_pool_can_credit_msg(&x.a));
	assert_true(tern_pool_want_ack(&x.b));
	assert_int_equal(hop(&x.b, &x.pa, &x.a, TERN_MSG_CTRL_ACK, 1), 0);
	assert_int_equal(x.a.ctrl_tx, C);
	/* the ACK's receive is not posted again yet: one credit may go, not two */
	assert_int_equal(x.a.ack_ready, 0);
	tern_pool_take_credit_msg(&x.a);
	assert_false(tern_pool_can_credit_msg(&x.a));
	assert_true(tern_pool_msg_done(&x.pa, &x.a, TERN_MSG_CTRL_ACK));
	assert_true(tern_pool_can_credit_msg(&x.a));
}

static void test_a_pool_with_room_to_spare_retires_done_receives(void **state)
{
	struct pair x;
	uint32_t posted;

	(void)state;
	small_pair(&x, 8);
	x.pb.pp.high_water = 8;
	send_one(&x, 1);
	tern_pool_lower(&x.pb, &x.b, 2, 1);
	posted = x.pb.posted;
	/* over its target and the pool far above high water: not posted again */
	assert_false(tern_pool_request_done(&x.pb, &x.b));
	assert_int_equal(x.pb.posted, posted);
	assert_int_equal(tern_pool_buffers(&x.pb), x.pb.pp.cap - 1);
	/* ...unless someone is waiting for room */
	x.pb.wanting = 1;
	assert_true(tern_pool_keep(&x.pb));
}

static void test_a_session_leaving_frees_its_claims_and_later_its_buffers(void **state)
{
	struct pair x;
	uint32_t head;

	(void)state;
	small_pair(&x, 8);
	head = tern_pool_headroom(&x.pb) + x.pb.claimed;
	send_one(&x, 1);
	tern_pool_leave(&x.pb, &x.b);
	assert_int_equal(x.pb.claimed, 0);
	assert_int_equal(x.pb.base, 0);
	/* the held message's receive comes back, promised to nobody */
	assert_true(tern_pool_request_done(&x.pb, &x.b));
	assert_int_equal(x.b.to_return, 0);
	assert_int_equal(tern_pool_headroom(&x.pb), head);
}

static void test_credit_lies_are_protocol_errors(void **state)
{
	struct pair x;
	struct tern_pool_stamp f = {.limit = 4};
	const char *why = NULL;

	(void)state;
	small_pair(&x, 8);
	/* more requests than credits */
	for (int i = 0; i < 4; i++)
		assert_int_equal(tern_pool_on_recv(&x.pb, &x.b, TERN_MSG_REQ, &f, 1, &why), 0);
	assert_int_equal(tern_pool_on_recv(&x.pb, &x.b, TERN_MSG_REQ, &f, 1, &why), TERN_EPEER);
	/* a reply to no call */
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_REP, &f, 1, &why), TERN_EPEER);
	/* giving back more than it holds (it holds none now) */
	f.back = 1;
	assert_int_equal(tern_pool_on_recv(&x.pb, &x.b, TERN_MSG_CREDIT, &f, 1, &why), TERN_EPEER);
	f.back = 0;
	/* a grant past the slot count */
	f.credits = 5;
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_CREDIT, &f, 1, &why), TERN_EPEER);
	f.credits = 0;
	/* a limit under the minimum it announced, or over the slot count */
	f.limit = 1;
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_CREDIT, &f, 1, &why), TERN_EPEER);
	f.limit = 9;
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_CREDIT, &f, 1, &why), TERN_EPEER);
	f.limit = 4;
	/* an ACK while we still hold control credits */
	f.ctrl_credits = C;
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_CTRL_ACK, &f, 1, &why),
			 TERN_EPEER);
	/* control credits it never had */
	f.ctrl_credits = 1;
	assert_int_equal(tern_pool_on_recv(&x.pa, &x.a, TERN_MSG_CREDIT, &f, 1, &why), TERN_EPEER);
	/* a handshake's nonsense */
	assert_int_equal(tern_pool_peer(&x.a, 2, 0, &why), TERN_EPEER);
	assert_int_equal(tern_pool_peer(&x.a, 2, 3, &why), TERN_EPEER);
	assert_int_equal(tern_pool_peer(&x.a, 9, 2, &why), TERN_EPEER);
}

/* ---- the simulation ---------------------------------------------------------- */

#define MAX_CTX	  6
#define MAX_N	  16
#define QCAP	  64 /* one direction carries at most 2N + C + 1 */
#define MAX_SLOTS 640

static uint64_t rng;

static uint64_t rnd64(void)
{
	uint64_t z = (rng += 0x9e3779b97f4a7c15ull);

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

static uint32_t rnd(uint32_t n)
{
	return n ? (uint32_t)(rnd64() % n) : 0;
}

static bool chance(uint32_t one_in)
{
	return rnd(one_in) == 0;
}

static unsigned sim_seed;
static long sim_step;
static const char *sim_phase;

#define SIM_CHECK(c)                                                                            \
	do {                                                                                    \
		if (!(c)) {                                                                     \
			print_message("credit_pool sim: seed %u, %s, step %ld: %s (line %d)\n", \
				      sim_seed, sim_phase, sim_step, #c, __LINE__);             \
			fail();                                                                 \
		}                                                                               \
	} while (0)

struct msg {
	uint8_t kind;
	struct tern_pool_stamp f;
};

/* What one stretch of a direction holds, by what it may become. */
struct span {
	uint32_t reqs;	  /* requests and one-way messages */
	uint32_t calls;	  /* requests alone: each will be answered */
	uint32_t reps;	  /* replies */
	uint32_t cmsgs;	  /* credit messages */
	uint32_t acks;	  /* control ACKs */
	uint32_t credits; /* request credits they carry */
	uint32_t back;	  /* request credits they give back */
	uint32_t ctrl;	  /* control credits they carry */
};

/* A simulated receive side: a pool as the accounting sees it and as the NIC does. */
struct spool {
	struct tern_pool p;
	uint32_t hw;	/* receives the NIC holds posted */
	uint32_t incq;	/* taken by the NIC, not polled */
	int64_t truth;	/* what the peers may still send in (sum over its ends) */
	int64_t claims; /* sum of tern_pool_claim_of() over its ends */
	uint32_t peak;	/* most buffers it ever held */
};

struct end {
	struct tern_pool_credits cr;
	struct spool *sp;
	struct spool ring; /* when its context receives into rings */
	uint32_t queued;   /* work waiting: calls and one-ways */
	uint32_t queued_ow;
	uint64_t held[MAX_N]; /* the peer's calls being served, each until when */
	uint32_t nheld;
	uint32_t ow_held; /* one-way messages not consumed yet */
	bool admitted, left;
	int64_t truth_c, claim_c; /* what it last added to its spool */
};

/* One direction: from e[i] to e[!i]; the wire, then the receiver's CQ. */
struct dir {
	struct msg q[QCAP];
	uint32_t head, len;
	struct span chan, cq;
};

enum { S_FREE, S_PENDING, S_LIVE, S_CLOSING, S_DEAD };

struct sess {
	int state;
	int x[2]; /* contexts of its ends */
	uint32_t n;
	uint64_t since;
	bool busy;
	struct end e[2];
	struct dir d[2];
};

/* A completion, or a receive done with: of session s, at end i. */
struct qent {
	uint16_t s;
	uint8_t i;
	struct msg m;
};

/* A growable FIFO of them. */
struct fifo {
	struct qent *q;
	uint32_t head, len, cap;
};

struct ctx {
	bool pooled;
	struct spool pool;
	struct fifo cq;	  /* completions the NIC made, not polled */
	struct fifo rp;	  /* receives done with, not yet posted again */
	uint32_t blocked; /* calls that waited for headroom lately */
	uint32_t pending; /* accepts waiting for room */
};

struct cand {
	struct sess *s;
	int i;
	uint32_t score;
};

struct sim_cfg {
	int nctx, nservers;
	int max_live, slots;
	long steps;
	bool rings_only, pools_only;
	bool long_holds;
	bool defaults; /* pools with tern_pool_default_params() at 8 KiB */
};

static struct world {
	struct sim_cfg cfg;
	struct ctx x[MAX_CTX];
	struct sess *s;
	int used; /* session slots handed out */
	int *live;
	int nlive;
	struct cand *cand; /* press()'s scratch: two per session slot */
	uint64_t now;
	uint64_t inflight;
	uint64_t accept_wait;
	/* what happened */
	uint64_t calls, replies, failed, ow, ow_got, ow_lost;
	uint64_t joins, refused, trims, grants, cmsgs, giveback_msgs, acks;
	uint32_t drain_rounds, idle_rounds;
} w;

/* Totals over every seed run, for the summary line. */
static struct {
	uint64_t runs, steps, calls, ow, joins, refused, trims, grants, cmsgs, giveback_msgs, acks;
	uint32_t max_sessions, max_drain_rounds, max_idle_rounds;
	uint32_t max_server_pool; /* most buffers a server context's pool held */
	unsigned first_seed, last_seed;
} tot;

static void fifo_push(struct fifo *f, struct qent e)
{
	if (f->len == f->cap) {
		uint32_t ncap = f->cap ? 2 * f->cap : 256;
		struct qent *n = malloc(ncap * sizeof(*n));

		assert_non_null(n);
		for (uint32_t k = 0; k < f->len; k++)
			n[k] = f->q[(f->head + k) % f->cap];
		free(f->q);
		f->q = n;
		f->head = 0;
		f->cap = ncap;
	}
	f->q[(f->head + f->len++) % f->cap] = e;
}

/* Take the entry @skip places behind the head (it swaps places with the head). */
static struct qent fifo_take(struct fifo *f, uint32_t skip)
{
	uint32_t j = (f->head + skip) % f->cap;
	struct qent e = f->q[j];

	f->q[j] = f->q[f->head];
	f->head = (f->head + 1) % f->cap;
	f->len--;
	return e;
}

static void span_add(struct span *sp, const struct msg *m, int sign)
{
	int req = m->kind == TERN_MSG_REQ || m->kind == TERN_MSG_ONEWAY;

	sp->reqs += sign * req;
	sp->calls += sign * (m->kind == TERN_MSG_REQ);
	sp->reps += sign * (m->kind == TERN_MSG_REP);
	sp->cmsgs += sign * (m->kind == TERN_MSG_CREDIT);
	sp->acks += sign * (m->kind == TERN_MSG_CTRL_ACK);
	sp->credits += sign * m->f.credits;
	sp->ctrl += sign * m->f.ctrl_credits;
	sp->back += sign * m->f.back;
}

/*
 * What the peer of end @i may still send into its receives, from the
 * peer's state and the wire alone: credits in its hands or on their way to
 * it, requests on the way, replies it owes (our calls on the way, in its
 * CQ, being served, answered on the way), its control credits likewise,
 * and an ACK once we spent our last control credit and it is not yet sent.
 */
static int64_t truth_of(struct sess *s, int i)
{
	struct end *e = &s->e[i], *f = &s->e[!i];
	struct dir *in = &s->d[!i], *out = &s->d[i];
	int64_t req, rep, ctrl, ack;

	if (s->state != S_LIVE)
		return 0; /* not accepted yet, or its QP can deliver nothing more */
	req = f->cr.tx + out->chan.credits + out->cq.credits + in->chan.reqs;
	rep = out->chan.calls + out->cq.calls + f->nheld + in->chan.reps;
	ctrl = f->cr.ctrl_tx + out->chan.ctrl + out->cq.ctrl + in->chan.cmsgs;
	ack = in->chan.acks + (!e->cr.ctrl_tx && !in->chan.acks && !in->cq.acks);
	return req + rep + ctrl + ack;
}

static void check_spool(struct spool *sp)
{
	struct tern_pool *p = &sp->p;

	SIM_CHECK(sp->claims == p->claimed);
	SIM_CHECK(p->claimed + p->pp.guard <= p->posted);
	SIM_CHECK(p->posted == sp->hw + sp->incq);
	/* no RNR, and the guard untouched: the SRQ limit event never fires */
	SIM_CHECK(sp->truth + p->pp.guard <= sp->hw);
	SIM_CHECK(tern_pool_buffers(p) <= p->pp.cap);
	if (tern_pool_buffers(p) > sp->peak)
		sp->peak = tern_pool_buffers(p);
}

/*
 * The grantor's books of end @i against the holder's state and the wire,
 * exactly: every credit it counts as the peer's is in the peer's hands, on
 * its way there, spent on a message on its way back, or given back on one.
 * A credit lost between them would be a leak no bound catches.
 */
static void check_books(struct sess *s, int i)
{
	struct tern_pool_credits *g = &s->e[i].cr, *h = &s->e[!i].cr;
	struct dir *out = &s->d[i], *in = &s->d[!i];

	SIM_CHECK(g->peer_tx == h->tx + h->back + out->chan.credits + out->cq.credits +
					in->chan.reqs + in->cq.reqs + in->chan.back + in->cq.back);
	SIM_CHECK(g->peer_ctrl_tx ==
		  h->ctrl_tx + out->chan.ctrl + out->cq.ctrl + in->chan.cmsgs + in->cq.cmsgs);
	SIM_CHECK(g->replies_expected ==
		  out->chan.calls + out->cq.calls + s->e[!i].nheld + in->chan.reps + in->cq.reps);
	/* one ACK claimed per session: on its way, in the CQ, or due (we spent our last) */
	SIM_CHECK(in->chan.acks + in->cq.acks + (!g->ctrl_tx && !in->chan.acks && !in->cq.acks) <=
		  g->ack_ready);
}

/* Session @s changed: bring its ends' sums up to date and check both pools. */
static void touch(struct sess *s)
{
	for (int i = 0; i < 2; i++) {
		struct end *e = &s->e[i];
		int64_t t, c;

		if (!e->sp)
			continue;
		t = truth_of(s, i);
		c = e->admitted && !e->left ? tern_pool_claim_of(&e->cr) : 0;
		e->sp->truth += t - e->truth_c;
		e->sp->claims += c - e->claim_c;
		e->truth_c = t;
		e->claim_c = c;
		if (e->admitted && !e->left) {
			/* the floor holds at every instant, however the pool is pressed */
			SIM_CHECK(tern_pool_circulating(&e->cr) >= e->cr.min);
			SIM_CHECK(tern_pool_circulating(&e->cr) <= e->cr.n);
			SIM_CHECK(e->cr.min <= e->cr.target && e->cr.target <= e->cr.n);
		}
		SIM_CHECK(e->cr.tx <= s->n);
		if (s->state == S_LIVE) {
			struct span *cq = &s->d[!i].cq;

			check_books(s, i);
			/*
			 * Session by session, not only pool-wide: what the peer may
			 * still send, and what the NIC took and we have not polled,
			 * is all claimed.  A pool with slack would hide a session
			 * that overdraws by one until the day the pool is tight.
			 */
			SIM_CHECK(t + cq->reqs + cq->reps + cq->cmsgs + cq->acks <= c);
		}
		check_spool(e->sp);
	}
}

static struct sess *sess_of(int k)
{
	return &w.s[k];
}

static void emit(struct sess *s, int i, uint8_t kind)
{
	struct dir *d = &s->d[i];
	struct msg m = {.kind = kind};

	SIM_CHECK(s->state == S_LIVE);
	tern_pool_stamp(&s->e[i].cr, &m.f);
	w.cmsgs += kind == TERN_MSG_CREDIT;
	w.giveback_msgs += kind == TERN_MSG_CREDIT && m.f.back;
	w.acks += kind == TERN_MSG_CTRL_ACK;
	SIM_CHECK(d->len < QCAP);
	d->q[(d->head + d->len++) % QCAP] = m;
	span_add(&d->chan, &m, 1);
	w.inflight++;
}

/* The NIC of end !i takes the next message from e[i]: it needs a posted receive. */
static void deliver(struct sess *s, int i)
{
	struct dir *d = &s->d[i];
	struct end *to = &s->e[!i];
	struct msg m = d->q[d->head];

	d->head = (d->head + 1) % QCAP;
	d->len--;
	w.inflight--;
	/* no RNR: and honest traffic never reaches into the guard */
	SIM_CHECK(to->sp->hw > to->sp->p.pp.guard);
	to->sp->hw--;
	to->sp->incq++;
	span_add(&d->chan, &m, -1);
	span_add(&d->cq, &m, 1);
	fifo_push(&w.x[s->x[!i]].cq,
		  (struct qent){.s = (uint16_t)(s - w.s), .i = (uint8_t)!i, .m = m});
}

static void repost_later(struct sess *s, int i, uint8_t kind)
{
	fifo_push(&w.x[s->x[i]].rp,
		  (struct qent){.s = (uint16_t)(s - w.s), .i = (uint8_t)i, .m.kind = kind});
}

/* Poll one completion of context @x. */
static void poll_one(struct ctx *x)
{
	struct qent c = fifo_take(&x->cq, 0);
	struct sess *s = sess_of(c.s);
	struct end *e = &s->e[c.i];
	const char *why = NULL;
	int rc;

	span_add(&s->d[!c.i].cq, &c.m, -1);
	e->sp->incq--;
	rc = tern_pool_on_recv(&e->sp->p, &e->cr, c.m.kind, &c.m.f, w.now, &why);
	if (rc)
		print_message("on_recv: %s\n", why);
	SIM_CHECK(rc == 0); /* honest peers never break a rule */
	switch (c.m.kind) {
	case TERN_MSG_REQ:
		SIM_CHECK(e->nheld < MAX_N);
		/* most are answered soon; some are held (deferred, long-poll) */
		e->held[e->nheld++] = w.now + (chance(6) ? rnd(w.cfg.long_holds ? 400 : 60) : 0);
		break;
	case TERN_MSG_ONEWAY:
		e->ow_held++;
		w.ow_got++;
		break;
	case TERN_MSG_REP:
		w.replies++;
		repost_later(s, c.i, c.m.kind);
		break;
	default:
		repost_later(s, c.i, c.m.kind);
		break;
	}
	touch(s);
}

/* A done receive is posted again (or retired): the engine's batch at the end of a poll. */
static void repost_one(struct ctx *x)
{
	/* now and then one jumps the queue, so others wait long: late reposts */
	struct qent r = fifo_take(&x->rp, chance(4) ? rnd(x->rp.len) : 0);
	struct sess *s = sess_of(r.s);
	struct end *e = &s->e[r.i];
	bool post;

	if (r.m.kind == TERN_MSG_REQ || r.m.kind == TERN_MSG_ONEWAY)
		post = tern_pool_request_done(&e->sp->p, &e->cr);
	else
		post = tern_pool_msg_done(&e->sp->p, &e->cr, r.m.kind);
	if (post)
		e->sp->hw++;
	touch(s);
}

/* Answer the calls of end @i whose time has come (@all: every one). */
static void serve(struct sess *s, int i, bool all)
{
	struct end *e = &s->e[i];

	for (uint32_t k = 0; k < e->nheld;) {
		if (e->held[k] > w.now && !all) {
			k++;
			continue;
		}
		if (!all && chance(3)) {
			k++;
			continue;
		}
		e->held[k] = e->held[--e->nheld];
		/* the reply needs no credit: the caller claimed its receive */
		if (s->state == S_LIVE)
			emit(s, i, TERN_MSG_REP);
		repost_later(s, i, TERN_MSG_REQ);
	}
	touch(s);
}

static void consume(struct sess *s, int i)
{
	struct end *e = &s->e[i];

	while (e->ow_held) {
		e->ow_held--;
		repost_later(s, i, TERN_MSG_ONEWAY);
	}
}

/* Send what end @i has waiting, as far as credits and headroom allow. */
static void send_work(struct sess *s, int i, uint32_t most)
{
	struct end *e = &s->e[i];

	if (s->state != S_LIVE)
		return;
	while (e->queued && most--) {
		bool ow = e->queued_ow && (e->queued_ow == e->queued || chance(2));

		if (ow) {
			if (!tern_pool_can_send(&e->cr))
				break;
			tern_pool_take_send(&e->cr);
			e->queued--;
			e->queued_ow--;
			tern_pool_set_starved(&e->cr, e->queued && !e->cr.tx);
			emit(s, i, TERN_MSG_ONEWAY);
			w.ow++;
		} else {
			if (!tern_pool_can_call(&e->sp->p, &e->cr)) {
				if (e->cr.tx && e->cr.replies_expected < e->cr.n)
					w.x[s->x[i]].blocked++;
				break;
			}
			tern_pool_take_call(&e->sp->p, &e->cr);
			e->queued--;
			tern_pool_set_starved(&e->cr, e->queued && !e->cr.tx);
			emit(s, i, TERN_MSG_REQ);
			w.calls++;
		}
	}
	tern_pool_set_starved(&e->cr, e->queued && !e->cr.tx);
	touch(s);
}

/* tern__session_flush_dirty's choice: an ACK, a credit message, or nothing. */
static bool settle(struct sess *s, int i, bool idle, bool eager)
{
	struct end *e = &s->e[i];

	if (s->state != S_LIVE)
		return false;
	if (tern_pool_want_ack(&e->cr)) {
		/* the peer spent all it had since our last ACK arrived */
		SIM_CHECK(!s->d[i].chan.acks && !s->d[i].cq.acks);
		emit(s, i, TERN_MSG_CTRL_ACK);
		touch(s);
		return true;
	}
	/*
	 * @eager: a credit message whenever the rules allow one, wanted or
	 * not.  An engine may be that eager; the accounting must hold anyway,
	 * and it runs the peer out of control credits into ACKs far more often.
	 */
	if (tern_pool_want_credit_msg(&e->cr, idle) ||
	    (eager && tern_pool_can_credit_msg(&e->cr))) {
		tern_pool_take_credit_msg(&e->cr);
		emit(s, i, TERN_MSG_CREDIT);
		touch(s);
		return true;
	}
	return false;
}

/* Serve the unmet WANTs of context @x's pool from its headroom. */
static void grant_pass(struct ctx *x, int xi)
{
	if (!x->pooled || !x->pool.p.wanting)
		return;
	for (int k = 0; k < w.used && x->pool.p.wanting; k++) {
		struct sess *s = sess_of(k);
		for (int i = 0; i < 2; i++) {
			if (s->x[i] == xi && s->e[i].admitted && !s->e[i].left && s->e[i].cr.want) {
				w.grants += tern_pool_grant(&x->pool.p, &s->e[i].cr) > 0;
				touch(s);
			}
		}
	}
}

/* What context @x's pool waits for: queued accepts, wanting sessions, blocked calls. */
static uint32_t pool_need(struct ctx *x)
{
	struct tern_pool *p = &x->pool.p;
	uint32_t floor = tern_pool_min_u32(p->pp.min, MAX_N) + TERN_POOL_CTRL_CLAIM;

	return x->pending * floor + (p->wanting ? p->pp.reserve + 2 * p->wanting : 0) + x->blocked;
}

static void grow(struct ctx *x)
{
	uint32_t k;

	if (!x->pooled)
		return;
	k = tern_pool_grow_want(&x->pool.p, pool_need(x));
	if (k) {
		tern_pool_grown(&x->pool.p, k);
		x->pool.hw += k;
	}
	check_spool(&x->pool);
}

static int cand_cmp(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;

	return x->score < y->score ? 1 : x->score > y->score ? -1 : 0;
}

/*
 * The pool is pressed (accepts wait, or what wanting sessions and blocked
 * calls need exceeds what headroom and growing can give): lower borrowers,
 * largest first and those not wanting before those wanting, each at most
 * once per idle time, until what they return covers the shortfall.
 */
static void press(struct ctx *x, int xi)
{
	struct tern_pool *p = &x->pool.p;
	uint32_t need, have, short_by, got = 0;
	int n = 0;

	if (!x->pooled)
		return;
	need = pool_need(x);
	x->blocked = 0;
	if (!x->pending && !tern_pool_pressed(p, need))
		return;
	have = tern_pool_headroom(p) + (p->pp.cap - tern_pool_buffers(p));
	short_by = need > have ? need - have : 1;
	for (int k = 0; k < w.used; k++) {
		struct sess *s = sess_of(k);
		for (int i = 0; i < 2; i++) {
			struct tern_pool_credits *c = &s->e[i].cr;

			if (s->x[i] != xi || !s->e[i].admitted || s->e[i].left ||
			    c->target <= c->min || w.now - c->last_lower < p->pp.idle)
				continue;
			w.cand[n++] = (struct cand){s, i, 2 * (c->target - c->min) + !c->want};
		}
	}
	qsort(w.cand, (size_t)n, sizeof(*w.cand), cand_cmp);
	for (int j = 0; j < n && got < short_by; j++) {
		struct tern_pool_credits *c = &w.cand[j].s->e[w.cand[j].i].cr;
		uint32_t before = c->target;

		if (tern_pool_lower(p, c, c->target / 2, w.now)) {
			got += before - c->target;
			w.trims++;
		}
		touch(w.cand[j].s);
	}
}

static void idle_sweep(int xi)
{
	for (int k = 0; k < w.used; k++) {
		struct sess *s = sess_of(k);
		for (int i = 0; i < 2; i++) {
			if (s->x[i] == xi && s->e[i].admitted && !s->e[i].left &&
			    tern_pool_idle(&s->e[i].sp->p, &s->e[i].cr, w.now))
				touch(s);
		}
	}
}

static void random_params(struct tern_pool_params *pp, int sessions_here)
{
	uint32_t min = 1 + rnd(3), floor = min + TERN_POOL_CTRL_CLAIM;

	tern_pool_default_params(pp, 8192);
	pp->min = min;
	pp->init = min + rnd(8);
	pp->guard = rnd(3) ? rnd(9) : 0;
	pp->chunk = 4 << rnd(5);
	pp->low_water = rnd(17);
	pp->high_water = chance(4) ? UINT32_MAX : pp->low_water + 2 * pp->chunk + rnd(32);
	pp->reserve = chance(3) ? 1 : floor;
	pp->idle = 20 + rnd(200);
	/* from too small for everyone (refusals, pressure) to roomy */
	pp->cap = pp->guard + pp->reserve + floor +
		  (uint32_t)sessions_here * (floor / 2 + rnd(floor + 2 * MAX_N));
}

/* An end's receive side: its context's pool, or a ring of its own. */
static int end_admit(struct sess *s, int i)
{
	struct end *e = &s->e[i];
	struct ctx *x = &w.x[s->x[i]];
	int rc;

	if (x->pooled) {
		e->sp = &x->pool;
		rc = tern_pool_admit(&x->pool.p, &e->cr, s->n, w.now);
		if (rc == -EAGAIN) {
			grow(x);
			rc = tern_pool_admit(&x->pool.p, &e->cr, s->n, w.now);
		}
	} else {
		struct tern_pool_params pp;

		tern_pool_ring_params(&pp, s->n);
		memset(&e->ring, 0, sizeof(e->ring));
		tern_pool_init(&e->ring.p, &pp);
		tern_pool_grown(&e->ring.p, pp.cap);
		e->ring.hw = pp.cap;
		e->sp = &e->ring;
		rc = tern_pool_admit(&e->ring.p, &e->cr, s->n, w.now);
		SIM_CHECK(rc == 0);
	}
	if (!rc)
		e->admitted = true;
	return rc;
}

static void live_add(int k)
{
	w.live[w.nlive++] = k;
}

static void live_del(int k)
{
	for (int j = 0; j < w.nlive; j++) {
		if (w.live[j] == k) {
			w.live[j] = w.live[--w.nlive];
			return;
		}
	}
}

/* The accept went through: each end learns the other's grant and floor. */
static void go_live(struct sess *s)
{
	const char *why = NULL;

	for (int i = 0; i < 2; i++) {
		uint32_t init, min;

		tern_pool_hello(&s->e[!i].cr, &init, &min);
		SIM_CHECK(tern_pool_peer(&s->e[i].cr, init, min, &why) == 0);
	}
	s->state = S_LIVE;
	s->busy = !chance(3);
	live_add((int)(s - w.s));
	w.joins++;
	touch(s);
}

/* The connection is refused: the client's floor, if it claimed one, goes back. */
static void refuse(struct sess *s)
{
	if (s->e[0].admitted) {
		tern_pool_leave(&s->e[0].sp->p, &s->e[0].cr);
		s->e[0].left = true;
	}
	s->state = S_DEAD;
	w.refused++;
	touch(s);
}

/* A client (end 0) connects to a server (end 1). */
static void join(void)
{
	struct sess *s;
	int rc;

	if (w.used == w.cfg.slots || w.nlive >= w.cfg.max_live)
		return;
	s = &w.s[w.used++];
	memset(s, 0, sizeof(*s));
	s->n = 1 + rnd(MAX_N);
	s->x[1] = (int)rnd((uint32_t)w.cfg.nservers);
	s->x[0] = w.cfg.nctx > w.cfg.nservers
			  ? w.cfg.nservers + (int)rnd((uint32_t)(w.cfg.nctx - w.cfg.nservers))
			  : (s->x[1] + 1) % w.cfg.nctx;
	if (chance(8)) /* now and then the other way round */
		s->x[0] ^= s->x[1], s->x[1] ^= s->x[0], s->x[0] ^= s->x[1];
	s->since = w.now;
	/* the connecting side claims its floor before its hello announces it */
	if (end_admit(s, 0)) {
		refuse(s);
		return;
	}
	rc = end_admit(s, 1);
	if (rc == -EAGAIN) {
		s->state = S_PENDING;
		w.x[s->x[1]].pending++;
		touch(s);
		return;
	}
	if (rc) {
		refuse(s);
		return;
	}
	go_live(s);
}

/* Accepts waiting for room: admitted once it is there, refused after a while. */
static void admit_pending(void)
{
	for (int k = 0; k < w.used; k++) {
		struct sess *s = sess_of(k);
		int rc;

		if (s->state != S_PENDING)
			continue;
		rc = end_admit(s, 1);
		if (rc == -EAGAIN && w.now - s->since < w.accept_wait)
			continue;
		w.x[s->x[1]].pending--;
		if (rc) {
			refuse(s);
			continue;
		}
		go_live(s);
	}
}

/*
 * Close a session: the QP goes to error.  What the NIC took is still
 * polled; of what is on the wire, a random prefix was taken, the rest is
 * lost.  Its claims go once nothing of it is left in a CQ (the last WQE).
 */
static void close_sess(struct sess *s)
{
	for (int i = 0; i < 2; i++) {
		struct dir *d = &s->d[i];
		uint32_t take = rnd(d->len + 1);

		while (take--)
			deliver(s, i);
		while (d->len) {
			struct msg m = d->q[d->head];
			d->head = (d->head + 1) % QCAP;
			d->len--;
			w.inflight--;
			w.ow_lost += m.kind == TERN_MSG_ONEWAY;
			span_add(&d->chan, &m, -1);
		}
		s->e[i].queued = s->e[i].queued_ow = 0;
	}
	s->state = S_CLOSING;
	live_del((int)(s - w.s));
	touch(s);
}

static void reap(void)
{
	for (int k = 0; k < w.used; k++) {
		struct sess *s = sess_of(k);

		if (s->state != S_CLOSING ||
		    s->d[0].cq.reqs + s->d[0].cq.reps + s->d[0].cq.cmsgs + s->d[0].cq.acks +
			    s->d[1].cq.reqs + s->d[1].cq.reps + s->d[1].cq.cmsgs + s->d[1].cq.acks)
			continue;
		for (int i = 0; i < 2; i++) {
			/* calls still unanswered fail */
			w.failed += s->e[i].cr.replies_expected;
			tern_pool_leave(&s->e[i].sp->p, &s->e[i].cr);
			s->e[i].left = true;
		}
		s->state = S_DEAD;
		touch(s);
	}
}

static struct sess *pick_live(void)
{
	return w.nlive ? sess_of(w.live[rnd((uint32_t)w.nlive)]) : NULL;
}

/* @k more calls and one-way messages wait at end @i, up to 4N. */
static void add_work(struct sess *s, int i, uint32_t k)
{
	struct end *e = &s->e[i];

	while (k-- && e->queued < 4 * s->n) {
		e->queued++;
		e->queued_ow += chance(3);
	}
}

/* Many sessions get much to do at once: every one short of credits, the pool pressed. */
static void burst(void)
{
	for (uint32_t k = 1 + rnd(64); k--;) {
		struct sess *s = pick_live();

		if (s)
			add_work(s, (int)rnd(2), 1 + rnd(2 * s->n));
	}
}

static void step(void)
{
	struct sess *s = pick_live();
	int i = (int)rnd(2), xi = (int)rnd((uint32_t)w.cfg.nctx);
	struct ctx *x = &w.x[xi];
	uint32_t a = rnd(100);

	if (a < 12 && chance(64)) {
		burst();
	} else if (a < 12) { /* work arrives (busy sessions far more often) */
		if (s && (s->busy || chance(8)))
			add_work(s, i, 1);
	} else if (a < 24) {
		if (s)
			send_work(s, i, 1 + rnd(s->n));
	} else if (a < 44) { /* the wire: any session, FIFO within one direction */
		for (int t = 0; t < 16 && w.inflight; t++) {
			struct sess *c = pick_live();
			if (c && c->d[i].len) {
				deliver(c, i);
				touch(c);
				break;
			}
			i = !i;
		}
	} else if (a < 56) {
		for (uint32_t k = 1 + rnd(8); k-- && x->cq.len;)
			poll_one(x);
	} else if (a < 65) {
		if (s)
			serve(s, i, false);
	} else if (a < 68) {
		if (s)
			consume(s, i), touch(s);
	} else if (a < 76) {
		for (uint32_t k = 1 + rnd(16); k-- && x->rp.len;)
			repost_one(x);
	} else if (a < 84) {
		if (s)
			settle(s, i, chance(8), chance(8));
	} else if (a < 87) {
		grant_pass(x, xi);
	} else if (a < 92) { /* time passes */
		w.now++;
		if (chance(4))
			idle_sweep(xi);
		press(x, xi);
	} else if (a < 94) {
		grow(x);
	} else if (a < 96) {
		admit_pending();
		if (chance(2))
			join();
	} else if (a < 97) {
		if (s && chance(12))
			close_sess(s);
		reap();
	} else {
		if (s && chance(4))
			s->busy = !s->busy; /* idle periods, and back */
		/* closing sessions' handlers finish too */
		for (int k = 0; k < 4 && w.used; k++) {
			struct sess *c = sess_of((int)rnd((uint32_t)w.used));
			if (c->state == S_CLOSING || c->state == S_DEAD) {
				serve(c, 0, true), serve(c, 1, true);
				consume(c, 0), consume(c, 1);
			}
		}
	}
}

/* Recompute every sum from scratch: the incremental ones must agree. */
static void full_check(void)
{
	for (int xi = 0; xi < w.cfg.nctx; xi++) {
		int64_t t = 0, c = 0;
		for (int k = 0; k < w.used; k++) {
			struct sess *s = sess_of(k);
			for (int i = 0; i < 2; i++) {
				if (s->x[i] != xi || !s->e[i].sp)
					continue;
				SIM_CHECK(s->e[i].truth_c == truth_of(s, i));
				if (s->state == S_LIVE)
					check_books(s, i);
				if (s->e[i].sp == &w.x[xi].pool) {
					t += s->e[i].truth_c;
					c += s->e[i].claim_c;
				}
			}
		}
		if (w.x[xi].pooled) {
			SIM_CHECK(t == w.x[xi].pool.truth);
			SIM_CHECK(c == w.x[xi].pool.claims);
			check_spool(&w.x[xi].pool);
		}
	}
}

/* One fair round of everything, for the drain: returns whether anything moved. */
static bool round_all(bool idle_time)
{
	bool moved = false;

	for (int xi = 0; xi < w.cfg.nctx; xi++) {
		moved |= w.x[xi].cq.len > 0;
		while (w.x[xi].cq.len)
			poll_one(&w.x[xi]);
	}
	for (int k = 0; k < w.used; k++) {
		struct sess *s = sess_of(k);
		for (int i = 0; s->state != S_FREE && i < 2; i++) {
			moved |= s->e[i].nheld || s->e[i].ow_held;
			serve(s, i, true);
			consume(s, i);
		}
	}
	for (int xi = 0; xi < w.cfg.nctx; xi++) {
		moved |= w.x[xi].rp.len > 0;
		while (w.x[xi].rp.len)
			repost_one(&w.x[xi]);
		if (idle_time)
			idle_sweep(xi);
		grant_pass(&w.x[xi], xi);
		grow(&w.x[xi]);
		press(&w.x[xi], xi);
	}
	admit_pending();
	reap();
	for (int j = 0; j < w.nlive; j++) {
		struct sess *s = sess_of(w.live[j]);
		for (int i = 0; i < 2; i++) {
			uint64_t before = w.inflight;
			send_work(s, i, UINT32_MAX);
			while (settle(s, i, true, false))
				;
			moved |= w.inflight != before || s->e[i].queued;
		}
	}
	for (int j = 0; j < w.nlive; j++) {
		struct sess *s = sess_of(w.live[j]);
		for (int i = 0; i < 2; i++)
			while (s->d[i].len)
				deliver(s, i);
		touch(s);
	}
	for (int k = 0; k < w.used; k++)
		moved |= sess_of(k)->state == S_PENDING || sess_of(k)->state == S_CLOSING;
	w.now++;
	return moved;
}

/* The drain is stuck: say where (the pools, and the first sessions with work left). */
static void dump_stuck(void)
{
	int shown = 0;

	for (int xi = 0; xi < w.cfg.nctx; xi++) {
		struct tern_pool *p = &w.x[xi].pool.p;

		if (!w.x[xi].pooled)
			continue;
		print_message("ctx %d: posted %u in_use %u claimed %u base %u headroom %u cap %u "
			      "wanting %u pending %u\n",
			      xi, p->posted, p->in_use, p->claimed, p->base, tern_pool_headroom(p),
			      p->pp.cap, p->wanting, w.x[xi].pending);
	}
	for (int k = 0; k < w.used && shown < 20; k++) {
		struct sess *s = sess_of(k);

		for (int i = 0; i < 2 && s->state == S_LIVE; i++) {
			struct end *e = &s->e[i];
			struct tern_pool_credits *c = &e->cr;

			if (!e->queued && !e->nheld)
				continue;
			shown++;
			print_message(
				"session %d end %d: queued %u held %u tx %u replies_expected %u "
				"starved %d | grants target %u peer_tx %u want %d\n",
				k, i, e->queued, e->nheld, c->tx, c->replies_expected, c->starved,
				c->target, c->peer_tx, c->want);
		}
	}
}

static void world_free(void)
{
	for (int xi = 0; xi < MAX_CTX; xi++) {
		free(w.x[xi].cq.q);
		free(w.x[xi].rp.q);
	}
	free(w.s);
	free(w.live);
	free(w.cand);
	memset(&w, 0, sizeof(w));
}

/* Every live session's credits are back at its floor (a ring's at N). */
static bool all_home(void)
{
	for (int j = 0; j < w.nlive; j++) {
		struct sess *s = sess_of(w.live[j]);
		for (int i = 0; i < 2; i++) {
			struct tern_pool_credits *c = &s->e[i].cr;
			if (c->target != c->min || tern_pool_circulating(c) != c->min ||
			    s->e[!i].cr.tx != c->min || s->e[!i].cr.back)
				return false;
		}
	}
	return true;
}

static void run_sim(unsigned seed, const struct sim_cfg *cfg)
{
	uint32_t bound, max_queue = 4 * MAX_N, max_idle = 0;

	world_free();
	sim_seed = seed;
	sim_phase = "traffic";
	rng = seed * 0x2545f4914f6cdd1dull + 1;
	w.cfg = *cfg;
	w.s = calloc((size_t)cfg->slots, sizeof(*w.s));
	w.live = calloc((size_t)cfg->slots, sizeof(*w.live));
	w.cand = calloc(2 * (size_t)cfg->slots, sizeof(*w.cand));
	assert_non_null(w.cand);
	assert_non_null(w.s);
	assert_non_null(w.live);
	w.accept_wait = 100;
	for (int xi = 0; xi < cfg->nctx; xi++) {
		struct ctx *x = &w.x[xi];
		struct tern_pool_params pp;
		/* servers carry most sessions; clients a share of them */
		int here = xi < cfg->nservers ? cfg->max_live / cfg->nservers
					      : cfg->max_live / (cfg->nctx - cfg->nservers) + 1;

		x->pooled = cfg->pools_only || (!cfg->rings_only && !chance(3));
		if (cfg->defaults) {
			tern_pool_default_params(&pp, 8192);
			pp.idle = 100; /* the simulation's clock */
		} else {
			random_params(&pp, here);
		}
		tern_pool_init(&x->pool.p, &pp);
		/* the initial post: the guard and a chunk's worth (or all of a smaller pool) */
		x->pool.hw = tern_pool_grow_want(&x->pool.p, 1);
		tern_pool_grown(&x->pool.p, x->pool.hw);
		if (!x->pooled)
			x->pool.p.posted = x->pool.hw = 0;
	}
	for (int k = 0; k < cfg->max_live / 2 + 1; k++)
		join();
	for (sim_step = 0; sim_step < cfg->steps; sim_step++) {
		step();
		if ((sim_step & 4095) == 0)
			full_check();
	}
	full_check();

	/*
	 * The drain: no new work, no joins or closes.  Every honest workload
	 * must complete within a bounded number of fair rounds: each session
	 * keeps at least its floor, so each moves at least one message per
	 * round trip (a few rounds) whatever the others do; a call that waits
	 * for headroom waits at most for the borrowers to be lowered, each
	 * once per idle time, from N down to min in log2(N) = 4 halvings; an
	 * accept waits at most accept_wait.
	 */
	sim_phase = "drain";
	for (int xi = 0; xi < cfg->nctx; xi++) {
		if (w.x[xi].pooled && w.x[xi].pool.p.pp.idle > max_idle)
			max_idle = (uint32_t)w.x[xi].pool.p.pp.idle;
	}
	bound = 40 + 8 * max_queue + 4 * max_idle + (uint32_t)w.accept_wait;
	for (w.drain_rounds = 0; round_all(false); w.drain_rounds++) {
		if (w.drain_rounds >= bound)
			dump_stuck();
		SIM_CHECK(w.drain_rounds < bound);
	}
	full_check();
	SIM_CHECK(w.calls == w.replies + w.failed);
	SIM_CHECK(w.ow == w.ow_got + w.ow_lost);
	for (int j = 0; j < w.nlive; j++) {
		struct sess *s = sess_of(w.live[j]);
		for (int i = 0; i < 2; i++) {
			SIM_CHECK(!s->e[i].queued);
			SIM_CHECK(!s->e[i].cr.replies_expected);
			SIM_CHECK(!s->e[i].cr.inproc);
		}
	}
	/*
	 * Idle: once idle time has passed with no request, every borrower's
	 * credits are back at its floor within a few rounds (the limit goes
	 * out, the holder gives back, an ACK if control credits ran out).
	 */
	sim_phase = "idle";
	w.now += 250; /* over any params.idle */
	for (w.idle_rounds = 0;; w.idle_rounds++) {
		SIM_CHECK(w.idle_rounds < 8);
		sim_step = w.idle_rounds;
		if (!round_all(true) && all_home())
			break;
	}
	for (int xi = 0; xi < cfg->nctx; xi++) {
		struct ctx *x = &w.x[xi];
		if (!x->pooled)
			continue;
		SIM_CHECK(x->pool.p.claimed == x->pool.p.base);
		SIM_CHECK(x->pool.p.wanting == 0);
		SIM_CHECK(x->pool.p.in_use == 0);
		SIM_CHECK(x->cq.len == 0 && x->rp.len == 0);
	}
	full_check();
	tot.runs++;
	tot.steps += (uint64_t)cfg->steps;
	tot.calls += w.calls;
	tot.ow += w.ow;
	tot.joins += w.joins;
	tot.refused += w.refused;
	tot.trims += w.trims;
	tot.grants += w.grants;
	tot.cmsgs += w.cmsgs;
	tot.giveback_msgs += w.giveback_msgs;
	tot.acks += w.acks;
	if ((uint32_t)cfg->max_live > tot.max_sessions)
		tot.max_sessions = (uint32_t)cfg->max_live;
	if (w.drain_rounds > tot.max_drain_rounds)
		tot.max_drain_rounds = w.drain_rounds;
	if (w.idle_rounds > tot.max_idle_rounds)
		tot.max_idle_rounds = w.idle_rounds;
	for (int xi = 0; xi < cfg->nservers; xi++) {
		if (w.x[xi].pooled && w.x[xi].pool.peak > tot.max_server_pool)
			tot.max_server_pool = w.x[xi].pool.peak;
	}
	world_free();
}

static unsigned env_uint(const char *name, unsigned dflt)
{
	const char *v = getenv(name);
	return v && *v ? (unsigned)strtoul(v, NULL, 0) : dflt;
}

/* Run @cfg_of's configurations over the seeds (or the one TERN_POOL_SEED names). */
static void run_seeds(void (*cfg_of)(unsigned seed, struct sim_cfg *cfg), unsigned dflt,
		      const char *what)
{
	unsigned one = env_uint("TERN_POOL_SEED", 0), n = env_uint("TERN_POOL_SEEDS", dflt);
	unsigned base = env_uint("TERN_POOL_SEED_BASE", 1);
	struct sim_cfg cfg;

	memset(&tot, 0, sizeof(tot));
	tot.first_seed = one ? one : base;
	tot.last_seed = one ? one : base + n - 1;
	for (unsigned k = 0; k < (one ? 1 : n); k++) {
		unsigned seed = one ? one : base + k;
		rng = seed;
		cfg_of(seed, &cfg);
		run_sim(seed, &cfg);
	}
	print_message("%s: seeds %u..%u (TERN_POOL_SEED=<seed> replays one), %llu steps, up to %u "
		      "sessions: %llu calls, %llu one-way, %llu joins (%llu refused), %llu grants, "
		      "%llu trims, %llu credit messages (%llu giving back), %llu ACKs; drain <= %u "
		      "rounds, idle credits home <= %u rounds; a server's pool at most %u "
		      "receives\n",
		      what, tot.first_seed, tot.last_seed, (unsigned long long)tot.steps,
		      tot.max_sessions, (unsigned long long)tot.calls, (unsigned long long)tot.ow,
		      (unsigned long long)tot.joins, (unsigned long long)tot.refused,
		      (unsigned long long)tot.grants, (unsigned long long)tot.trims,
		      (unsigned long long)tot.cmsgs, (unsigned long long)tot.giveback_msgs,
		      (unsigned long long)tot.acks, tot.max_drain_rounds, tot.max_idle_rounds,
		      tot.max_server_pool);
}

static const int sizes[] = {1, 2, 5, 12, 40, 100, 300, 1000};

/* @sessions at most live, and the steps and session slots for them. */
static void cfg_size(struct sim_cfg *cfg, int sessions)
{
	cfg->max_live = sessions;
	cfg->slots = sessions * 2 + 8;
	cfg->steps = 6000 + 150L * sessions;
}

/* One server context and many clients, everyone receiving into pools. */
static void cfg_fan_in(unsigned seed, struct sim_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->nctx = 2 + (int)rnd(4);
	cfg->nservers = 1;
	cfg_size(cfg, sizes[seed % 8]);
	cfg->pools_only = true;
}

/* Pools and rings mixed at random, two servers, sessions both ways. */
static void cfg_mixed(unsigned seed, struct sim_cfg *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->nctx = 2 + (int)rnd(MAX_CTX - 1);
	cfg->nservers = cfg->nctx > 2 ? 2 : 1;
	cfg_size(cfg, sizes[seed % 8]);
}

/* Deferred handlers holding requests long (more than the floor): borrowing. */
static void cfg_long_holds(unsigned seed, struct sim_cfg *cfg)
{
	cfg_mixed(seed, cfg);
	cfg->long_holds = true;
}

/*
 * A thousand sessions on one server context whose pool has the defaults at
 * the default 8 KiB slot: cap is 64 MiB of receives, and bursts from many
 * clients press it.
 */
static void cfg_defaults(unsigned seed, struct sim_cfg *cfg)
{
	cfg_fan_in(seed, cfg);
	cfg_size(cfg, 1000);
	cfg->defaults = true;
}

/* The degenerate pool: rings only, credit.h's world. */
static void cfg_rings(unsigned seed, struct sim_cfg *cfg)
{
	cfg_mixed(seed, cfg);
	cfg->rings_only = true;
}

static void test_sim_fan_in_to_one_shared_pool(void **state)
{
	(void)state;
	run_seeds(cfg_fan_in, 14, "fan-in");
}

static void test_sim_pools_and_rings_mixed_both_ways(void **state)
{
	(void)state;
	run_seeds(cfg_mixed, 14, "mixed");
}

static void test_sim_long_held_requests_borrow_and_complete(void **state)
{
	(void)state;
	run_seeds(cfg_long_holds, 7, "long holds");
}

static void test_sim_a_thousand_sessions_on_the_default_pool(void **state)
{
	(void)state;
	run_seeds(cfg_defaults, 2, "defaults, 1000 sessions");
	assert_true((uint64_t)tot.max_server_pool * 8192 <= TERN_POOL_DEFAULT_BYTES);
}

static void test_sim_rings_only_is_credit_h(void **state)
{
	(void)state;
	run_seeds(cfg_rings, 7, "rings");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_a_ring_is_credit_h_count),
		cmocka_unit_test(test_admission_claims_a_floor_and_refuses_what_cannot_fit),
		cmocka_unit_test(test_a_thousand_idle_sessions_fit_in_64_mib),
		cmocka_unit_test(test_a_default_pool_refuses_the_session_whose_floor_cannot_fit),
		cmocka_unit_test(test_the_initial_grant_comes_only_from_room_to_spare),
		cmocka_unit_test(test_the_hello_announces_what_was_granted_not_the_target),
		cmocka_unit_test(test_a_reply_needs_a_pool_receive_claimed_by_its_call),
		cmocka_unit_test(test_a_lowered_limit_makes_the_holder_give_back),
		cmocka_unit_test(test_credits_over_the_target_stay_in_the_pool),
		cmocka_unit_test(test_want_doubles_the_target_once_per_grant_spent),
		cmocka_unit_test(test_an_unmet_want_waits_for_headroom),
		cmocka_unit_test(test_an_idle_borrower_goes_back_to_its_floor),
		cmocka_unit_test(test_the_last_control_credit_waits_for_the_ack_receive),
		cmocka_unit_test(test_a_pool_with_room_to_spare_retires_done_receives),
		cmocka_unit_test(test_a_session_leaving_frees_its_claims_and_later_its_buffers),
		cmocka_unit_test(test_credit_lies_are_protocol_errors),
		cmocka_unit_test(test_sim_fan_in_to_one_shared_pool),
		cmocka_unit_test(test_sim_pools_and_rings_mixed_both_ways),
		cmocka_unit_test(test_sim_long_held_requests_borrow_and_complete),
		cmocka_unit_test(test_sim_a_thousand_sessions_on_the_default_pool),
		cmocka_unit_test(test_sim_rings_only_is_credit_h),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
