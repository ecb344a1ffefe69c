/* SPDX-License-Identifier: MIT */
/*
 * credit_pool.h - credits granted out of a shared receive pool (an SRQ per
 * context): no RNR by construction for any number of sessions, whatever the
 * peer's receive side is.  Pure accounting, no I/O; docs/credit-pool.md has
 * the same argument in prose, the wire change and the memory arithmetic.
 *
 * credit.h's argument is for one session with its own 2N + C + 1 receives.
 * With a pool, a message from any peer lands in any posted receive, so the
 * reservations credit.h makes per session (N for the peer's requests, N for
 * replies to our calls, C + 1 for control messages) become claims on one
 * count, and request credits move between sessions.
 *
 * Roles.  On a session each side is a grantor (of permission to send into
 * its own receives) and a holder (of the peer's permission to send into the
 * peer's).  Only the grantor's receive side decides what it grants; the
 * holder obeys what it is given.  So a side with a pool and a side with
 * per-session rings interoperate in either direction, and nothing needs
 * agreeing but the two numbers of the handshake: the initial grant and the
 * guaranteed minimum.  A ring is the pool of one session with cap
 * 2N + C + 1 and its target pinned at N (tern_pool_ring_params()): what
 * follows holds for it unchanged, and reduces to credit.h's count.
 *
 * What a peer may send into our receives without asking again, session s:
 *
 *   peer_tx           request and one-way credits stamped to it, not yet
 *                     used or given back;
 *   replies_expected  replies to our calls.  A call claims one receive of
 *                     the pool when it is made (tern_pool_take_call), as
 *                     credit.h reserves one of the ring's: with a shared
 *                     pool the reservation is pool-wide, because a reply
 *                     lands in any posted receive;
 *   peer_ctrl_tx      credit messages, C per session as in credit.h;
 *   ack_ready         one ACK (credit.h's +1).  The peer sends it only
 *                     once we spent our last control credit, and we spend
 *                     that only while ack_ready is 1 (its receive posted).
 *
 * The pool also owes what it promised and has not stamped yet (to_return,
 * ctrl_to_return).  With claimed the sum of all six over the sessions:
 *
 *   INVARIANT   claimed + guard <= posted, at every instant.
 *
 * Every step keeps it:
 *   - an arrival takes one posted receive and one unit of exactly one term
 *     (the header's kind names it; a kind with no unit left is a protocol
 *     error, found before anything else is read);
 *   - a receive posted again adds one to posted, and only then may it be
 *     promised again (tern_pool_request_done(), tern_pool_msg_done()): a
 *     credit exists only for a receive that is actually posted;
 *   - stamping a header turns promises into permissions: claimed unchanged;
 *   - a give-back (the header's back field) lowers peer_tx: claimed falls;
 *   - anything new (a call's reply, a grant beyond what re-posts restore, a
 *     session's admission) is taken only from headroom = posted - claimed -
 *     guard, and posting new receives (tern_pool_grown()) only adds to it;
 *   - a session's claims go only once its QP can deliver nothing more
 *     (IBV_EVENT_QP_LAST_WQE_REACHED, or the QP destroyed).
 * A peer can send at most what was stamped to it, and an ACK only after we
 * spent our last control credit, so what it may send is at most what the
 * terms count, and no message ever finds the pool empty.  rnr_retry stays 0.
 *
 * Guard.  guard receives stay posted and are never claimed.  The NIC takes
 * a receive before we poll its completion, and every honest message still
 * in the CQ holds a claim we have not yet subtracted, so the SRQ's own
 * count of posted receives never falls below guard while peers are honest.
 * Armed as the SRQ limit (ibv_modify_srq, IBV_SRQ_LIMIT),
 * IBV_EVENT_SRQ_LIMIT_REACHED therefore fires only when some peer sent
 * without a credit.  That matters because a pool is shared: an uncredited
 * message takes a receive that backs an honest peer's credit, which a ring
 * never allowed.  The event makes the context poll now, fail the offender
 * (tern_pool_on_recv() names it) and re-post; until then the guard absorbs
 * up to guard such messages before an honest peer could meet an RNR.
 *
 * Sharing.  Session s's request credits in circulation are
 *   g = peer_tx + to_return + inproc
 * (inproc: its messages received whose receive is not posted again yet).
 * The pool keeps g at a target t, min <= t <= N:
 *   - the floor.  min + C + 1 receives are claimed at admission and the
 *     pool never asks a session below min: a request done restores g to t
 *     with the receive it re-posts (no headroom needed), and a give-back
 *     stops at the announced limit, which is never below min.  So g >= min
 *     always, by construction, however the pool is pressed;
 *   - borrowing.  A holder with work waiting and no credit says so (WANT,
 *     a header flag, on a credit message when it has nothing else to
 *     send).  WANT counts when the holder has spent all it was given; then
 *     with g at t the pool doubles t (up to N) and grants what headroom
 *     allows above reserve; an unmet WANT stays recorded (want, wanting)
 *     and is granted as headroom comes back.  WANT is a level, not an
 *     event: every header says whether work waits, and one that says not
 *     withdraws an unmet WANT (the holder got on with what came back);
 *   - returning.  A session whose peer sent no request for idle time goes
 *     back to t = min.  Credits over the target are not returned when its
 *     requests are done, and every header stamps the limit (= t); a holder
 *     above the limit gives back the excess it holds (credits_back).  A
 *     lowered limit is worth a credit message of its own, and so is a
 *     give-back, so an idle pair settles in a few messages;
 *   - hysteresis.  t rises only on WANT and only once g has reached it (at
 *     most a doubling per round trip); it falls only after idle time
 *     without requests, or when the pool is pressed: what waits (accepts,
 *     unmet WANTs, calls waiting for a reply receive) exceeds headroom and
 *     what growing to cap can add (tern_pool_pressed()).  Then the caller
 *     lowers the largest borrowers, those not wanting first, each at most
 *     once per idle time, until what they return covers the shortfall
 *     (tern_pool_lower()).
 *
 * Admission.  A session needs min + C + 1 of headroom (its floor; base is
 * the sum of floors).  The initial grant, announced in the handshake
 * (tern_pool_hello()), is init instead of min only when headroom is above
 * high_water besides: a fast start paid from room the pool would otherwise
 * retire, never a reason to grow, so a storm of idle clients costs floors
 * only.  The pool grows (tern_pool_grow_want()) in chunks up to cap; at
 * cap the caller lowers borrowers and queues the accept; an accept that
 * could never fit, base + min + C + 1 + guard + reserve > cap, is refused
 * at once.  So cap - base - guard >= reserve at all times.
 *
 * Shrinking.  A posted receive of an SRQ cannot be taken back, so a pool
 * shrinks by not re-posting: while headroom is above high_water and nobody
 * wants, a receive whose message is done is retired instead.
 *
 * Liveness (no deadlock for honest peers): serving a request never waits
 * (its reply was reserved by the caller, its credit comes back with the
 * receive it re-posts); a give-back never waits (control credits come back
 * in an ACK, which needs nothing); so headroom, which only calls, borrowing
 * and admissions wait for, comes back as replies arrive, limits are obeyed
 * and handlers finish.  With nothing lent and no call of ours out, all of
 * cap posted, headroom is cap - base - guard >= reserve >= 1: a call can
 * always go once lent credits are reclaimed, which pressing does.  The
 * engine serves calls waiting for headroom in one FIFO per context, so no
 * session's calls wait behind another's forever.  A handler that holds
 * requests (deferred) holds their receives: more than min held on one
 * session relies on borrowing, hence on room in the pool.
 *
 * Everything a peer says about credits is checked (tern_pool_on_recv()):
 * a message it had no credit for, credits it never held, a give-back of
 * more than it holds, a limit under its minimum: a protocol error.
 */
#ifndef TERN_CREDIT_POOL_H
#define TERN_CREDIT_POOL_H

#include <errno.h>
#include <stdbool.h>
#include <stdint.h>

#include "tern.h"
#include "credit.h" /* TERN_CTRL_CREDITS */
#include "wire.h"   /* TERN_MSG_* */

/* What admission claims beyond the request credits: control, and the ACK. */
#define TERN_POOL_CTRL_CLAIM (TERN_CTRL_CREDITS + 1)

/*
 * The defaults for a context's pool.  Its size is in bytes, so that a pool
 * of small slots holds more of them: at the default 8 KiB slot, cap is 8192
 * receives and a chunk 256.  cap bounds the registered receive memory of a
 * context whatever the load or its history (docs/credit-pool.md).
 */
#define TERN_POOL_DEFAULT_BYTES	      (64u << 20) /* cap: registered receive memory */
#define TERN_POOL_DEFAULT_CHUNK_BYTES (2u << 20)  /* one registration */
#define TERN_POOL_DEFAULT_MIN	      2u
#define TERN_POOL_DEFAULT_INIT	      8u
#define TERN_POOL_DEFAULT_GUARD	      16u
#define TERN_POOL_DEFAULT_LOW	      64u
#define TERN_POOL_DEFAULT_IDLE_NS     100000000ull /* 100 ms */

struct tern_pool_params {
	uint32_t cap;	     /* most receives, posted or holding a message */
	uint32_t min;	     /* request credits every session keeps, >= 1 */
	uint32_t init;	     /* granted at admission from room to spare, >= min */
	uint32_t guard;	     /* posted and never claimed: the SRQ limit */
	uint32_t chunk;	     /* receives posted at a time when growing */
	uint32_t low_water;  /* grow while headroom is below */
	uint32_t high_water; /* retire done receives while headroom is above */
	uint32_t reserve;    /* headroom borrowing leaves, admissions keep; >= 1 shared */
	uint64_t idle;	     /* a borrower quiet this long goes back to min */
	bool fixed;	     /* a ring: the target is N, nothing moves */
};

struct tern_pool {
	struct tern_pool_params pp;
	uint32_t posted;   /* receives posted */
	uint32_t in_use;   /* receives holding a message, not posted again yet */
	uint32_t claimed;  /* see the invariant */
	uint32_t base;	   /* sum of floors (min + C + 1): never lent */
	uint32_t sessions; /* admitted and not left */
	uint32_t wanting;  /* sessions with an unmet WANT */
};

/* The credit fields of a header (wire version 3, docs/credit-pool.md). */
struct tern_pool_stamp {
	uint16_t credits;      /* request credits granted to the receiver */
	uint16_t ctrl_credits; /* control credits returned to the receiver */
	uint16_t limit;	       /* the most request credits the receiver may hold */
	uint16_t back;	       /* request credits the sender gives back, unused */
	bool want;	       /* flag: the sender has work waiting for a credit */
};

/* One session's credits, both roles. */
struct tern_pool_credits {
	uint32_t n; /* slot_count: nobody holds or grants more */
	/* grantor: the peer's messages into our receives */
	uint32_t min;		   /* the floor we announced */
	uint32_t target;	   /* request credits the peer should have in circulation */
	uint32_t limit_sent;	   /* the limit last stamped */
	uint32_t peer_tx;	   /* stamped to the peer, not used or given back */
	uint32_t to_return;	   /* promised (a receive is posted for each), not stamped */
	uint32_t inproc;	   /* its requests received, receive not posted again */
	uint32_t replies_expected; /* pool receives claimed for replies to our calls */
	uint32_t peer_ctrl_tx;	   /* control credits the peer holds */
	uint32_t ctrl_to_return;   /* control credits promised, not stamped */
	uint32_t ctrl_inproc;	   /* its credit messages received, not posted again */
	uint32_t ack_ready;	   /* 1: a receive is claimed for the peer's ACK */
	uint64_t last_rx;	   /* when its last request or one-way arrived */
	uint64_t last_lower;	   /* when its target was last lowered */
	bool want;		   /* it said WANT and is not yet at its target */
	bool gone;		   /* left: what is still in use goes back to the pool */
	/* holder: our messages into the peer's receives */
	uint32_t tx;	     /* request credits we hold */
	uint32_t ctrl_tx;    /* control credits we hold */
	uint32_t peer_min;   /* the peer's floor for us */
	uint32_t peer_limit; /* the peer's last limit */
	uint32_t back;	     /* given back, not stamped yet */
	bool starved;	     /* work is waiting for a request credit */
	bool want_sent;	     /* ...and we said so since the last grant */
};

static inline uint32_t tern_pool_min_u32(uint32_t a, uint32_t b)
{
	return a < b ? a : b;
}

/*
 * tern_pool_default_params - defaults for a context's shared pool
 * @pp: filled
 * @slot_size: the pool's receive size in bytes (every session on the pool
 *	receives into slots of this size), > 0
 *
 * reserve is one floor, so one admission can always go through while the
 * rest is lent; high_water leaves two chunks above low_water before done
 * receives are retired, so a pool does not shrink and grow by turns.
 */
static inline void tern_pool_default_params(struct tern_pool_params *pp, uint32_t slot_size)
{
	uint32_t cap = TERN_POOL_DEFAULT_BYTES / slot_size;
	uint32_t chunk = TERN_POOL_DEFAULT_CHUNK_BYTES / slot_size;

	pp->cap = cap ? cap : 1;
	pp->chunk = tern_pool_min_u32(chunk ? chunk : 1, pp->cap);
	pp->min = TERN_POOL_DEFAULT_MIN;
	pp->init = TERN_POOL_DEFAULT_INIT;
	pp->guard = TERN_POOL_DEFAULT_GUARD;
	pp->low_water = TERN_POOL_DEFAULT_LOW;
	pp->high_water = TERN_POOL_DEFAULT_LOW + 2 * pp->chunk;
	pp->reserve = TERN_POOL_DEFAULT_MIN + TERN_POOL_CTRL_CLAIM;
	pp->idle = TERN_POOL_DEFAULT_IDLE_NS;
	pp->fixed = false;
}

/*
 * A session's own ring as a pool: 2N + C + 1 receives posted at once, the
 * target pinned at N.  Admission claims N + C + 1, leaving exactly N of
 * headroom for replies to our calls: credit.h's count.  No guard: a peer
 * that cheats can only overrun its own ring.
 */
static inline void tern_pool_ring_params(struct tern_pool_params *pp, uint32_t n)
{
	pp->cap = 2 * n + TERN_POOL_CTRL_CLAIM;
	pp->min = n;
	pp->init = n;
	pp->guard = 0;
	pp->chunk = pp->cap;
	pp->low_water = 0;
	pp->high_water = UINT32_MAX;
	pp->reserve = 0;
	pp->idle = UINT64_MAX;
	pp->fixed = true;
}

static inline void tern_pool_init(struct tern_pool *p, const struct tern_pool_params *pp)
{
	*p = (struct tern_pool){.pp = *pp};
}

/* Receives posted and not claimed: what new claims may take. */
static inline uint32_t tern_pool_headroom(const struct tern_pool *p)
{
	uint32_t used = p->claimed + p->pp.guard;

	return p->posted > used ? p->posted - used : 0;
}

/* Receives the pool holds, posted or in use: its registered size. */
static inline uint32_t tern_pool_buffers(const struct tern_pool *p)
{
	return p->posted + p->in_use;
}

/*
 * How many receives to post now (0: none) so that headroom reaches
 * low_water + @need: whole chunks, within cap.  @need is what waits:
 * a floor for a queued accept, a shortfall for wanting sessions, one for a
 * call waiting for a reply receive.  The caller registers and posts them
 * (the free buffers of registered chunks first), then tern_pool_grown().
 */
static inline uint32_t tern_pool_grow_want(const struct tern_pool *p, uint32_t need)
{
	/* 64 bits: the sum of the caller's figures must not wrap into "enough" */
	uint64_t want = (uint64_t)p->claimed + p->pp.guard + p->pp.low_water + need, k;
	uint32_t room;

	if (p->posted >= want || tern_pool_buffers(p) >= p->pp.cap)
		return 0;
	k = (want - p->posted + p->pp.chunk - 1) / p->pp.chunk * p->pp.chunk;
	room = p->pp.cap - tern_pool_buffers(p);
	return k < room ? (uint32_t)k : room;
}

/*
 * Is the pool pressed: does what waits (@need, as for tern_pool_grow_want()
 * but without low_water) exceed the headroom even once the pool has grown
 * to cap?  Then the caller lowers borrowers (tern_pool_lower()): their
 * credits are the only claims that come back without anyone finishing.
 */
static inline bool tern_pool_pressed(const struct tern_pool *p, uint32_t need)
{
	uint32_t room = p->pp.cap > tern_pool_buffers(p) ? p->pp.cap - tern_pool_buffers(p) : 0;

	return (uint64_t)tern_pool_headroom(p) + room < need;
}

/* @k new receives are posted. */
static inline void tern_pool_grown(struct tern_pool *p, uint32_t k)
{
	p->posted += k;
}

/* What admission claims for good (the floor) and at first (with init). */
static inline uint32_t tern_pool_floor(const struct tern_pool_credits *c)
{
	return c->min + TERN_POOL_CTRL_CLAIM;
}

/*
 * tern_pool_admit - claim a new session's floor, before the handshake
 * announces it (the peer may send as soon as it hears)
 * @p: the pool
 * @c: the session's credits, all set here (holder side: tern_pool_peer())
 * @n: the session's slot count
 * @now: the caller's clock, in the unit of params.idle
 *
 * The initial grant (announced in the handshake, tern_pool_hello()) is init
 * when headroom covers it, reserve and high_water besides, else min.
 *
 * Return: 0; -EAGAIN when headroom is short now (grow, lower borrowers and
 * try again, or refuse after a while); -ENOSPC when the floors would not
 * fit even with nothing lent: refuse at once.
 */
static inline int tern_pool_admit(struct tern_pool *p, struct tern_pool_credits *c, uint32_t n,
				  uint64_t now)
{
	uint32_t min = tern_pool_min_u32(p->pp.min, n);
	uint32_t init = tern_pool_min_u32(p->pp.init > min ? p->pp.init : min, n);
	uint32_t floor = min + TERN_POOL_CTRL_CLAIM, head = tern_pool_headroom(p);

	if ((uint64_t)p->base + floor + p->pp.guard + p->pp.reserve > p->pp.cap)
		return -ENOSPC;
	if (head < floor)
		return -EAGAIN;
	/*
	 * A fast start is paid only from room the pool would otherwise retire
	 * (headroom above high_water).  Taken from any less, it would be the
	 * reason the next accept makes the pool grow, and a posted receive of
	 * an SRQ cannot be taken back: a storm of idle clients would leave the
	 * pool at init + C + 1 receives per session instead of min + C + 1.
	 */
	if ((uint64_t)head <
	    (uint64_t)init + TERN_POOL_CTRL_CLAIM + p->pp.reserve + p->pp.high_water)
		init = min;
	*c = (struct tern_pool_credits){
		.n = n,
		.min = min,
		.target = init,
		.limit_sent = init,
		.peer_tx = init,
		.peer_ctrl_tx = TERN_CTRL_CREDITS,
		.ack_ready = 1,
		.last_rx = now,
		.ctrl_tx = TERN_CTRL_CREDITS,
	};
	p->claimed += init + TERN_POOL_CTRL_CLAIM;
	p->base += floor;
	p->sessions++;
	return 0;
}

/*
 * tern_pool_hello - what the handshake announces: the initial grant and the
 * floor.  The grant is what has been stamped to the peer so far (peer_tx),
 * not the target: a target lowered before the hello went out (the pool was
 * pressed while the connection was set up) reaches the peer as the limit on
 * its first header, and the credits over it come back as a give-back.
 */
static inline void tern_pool_hello(const struct tern_pool_credits *c, uint32_t *init, uint32_t *min)
{
	*init = c->peer_tx;
	*min = c->min;
}

/*
 * tern_pool_peer - take the peer's handshake: its initial grant and floor
 * Return: 0, or TERN_EPEER with @why set when they make no sense.
 */
static inline int tern_pool_peer(struct tern_pool_credits *c, uint32_t peer_init, uint32_t peer_min,
				 const char **why)
{
	if (peer_min < 1 || peer_min > peer_init || peer_init > c->n) {
		*why = "peer's initial credits or minimum outside 1..slot_count";
		return TERN_EPEER;
	}
	c->tx = peer_init;
	c->peer_min = peer_min;
	c->peer_limit = peer_init;
	return 0;
}

/*
 * The session's QP can deliver nothing more: its claims go back.  What it
 * still has in use (requests held by handlers, messages not yet done) goes
 * back to the pool when done, promised to nobody.
 */
static inline void tern_pool_leave(struct tern_pool *p, struct tern_pool_credits *c)
{
	p->claimed -= c->peer_tx + c->to_return + c->replies_expected + c->peer_ctrl_tx +
		      c->ctrl_to_return + c->ack_ready;
	p->base -= tern_pool_floor(c);
	p->sessions--;
	if (c->want)
		p->wanting--;
	c->peer_tx = c->to_return = c->replies_expected = 0;
	c->peer_ctrl_tx = c->ctrl_to_return = c->ack_ready = 0;
	c->want = false;
	c->gone = true;
}

/* The session's request credits in circulation. */
static inline uint32_t tern_pool_circulating(const struct tern_pool_credits *c)
{
	return c->peer_tx + c->to_return + c->inproc;
}

/* What the session claims now (the invariant's per-session sum). */
static inline uint32_t tern_pool_claim_of(const struct tern_pool_credits *c)
{
	return c->peer_tx + c->to_return + c->replies_expected + c->peer_ctrl_tx +
	       c->ctrl_to_return + c->ack_ready;
}

/* ---- the holder: sending into the peer's receives ----------------------- */

/*
 * A call needs a request credit, a call slot's worth of replies, and a
 * receive of our own pool claimed for its reply.  Calls may use the last
 * of the headroom (reserve is kept from borrowing for them).
 */
static inline bool tern_pool_can_call(const struct tern_pool *p, const struct tern_pool_credits *c)
{
	return c->tx > 0 && c->replies_expected < c->n && tern_pool_headroom(p) > 0;
}

static inline void tern_pool_take_call(struct tern_pool *p, struct tern_pool_credits *c)
{
	c->tx--;
	c->replies_expected++;
	p->claimed++;
}

/* An acquired call that was never sent gives both back. */
static inline void tern_pool_untake_call(struct tern_pool *p, struct tern_pool_credits *c)
{
	c->tx++;
	c->replies_expected--;
	p->claimed--;
}

/* A one-way message needs a credit only: nothing comes back. */
static inline bool tern_pool_can_send(const struct tern_pool_credits *c)
{
	return c->tx > 0;
}

static inline void tern_pool_take_send(struct tern_pool_credits *c)
{
	c->tx--;
}

static inline void tern_pool_untake_send(struct tern_pool_credits *c)
{
	c->tx++;
}

/*
 * Work is (or is no longer) waiting because we hold no request credit
 * (not for our own headroom: that is no business of the peer's).  While
 * it is, every header says WANT; with no message to say it on, a credit
 * message does, once per grant (tern_pool_want_credit_msg()).
 */
static inline void tern_pool_set_starved(struct tern_pool_credits *c, bool starved)
{
	c->starved = starved;
}

/*
 * A credit message spends a control credit.  The last one provokes the
 * peer's ACK, so it may go only while the ACK's receive is posted
 * (ack_ready): that is what lets the pool claim one ACK per session, not
 * one per credit message.
 */
static inline bool tern_pool_can_credit_msg(const struct tern_pool_credits *c)
{
	return c->ctrl_tx > 1 || (c->ctrl_tx == 1 && c->ack_ready);
}

static inline void tern_pool_take_credit_msg(struct tern_pool_credits *c)
{
	c->ctrl_tx--;
}

/* We hold all of the peer's control credits: they go back in an ACK. */
static inline bool tern_pool_want_ack(const struct tern_pool_credits *c)
{
	return c->ctrl_to_return == TERN_CTRL_CREDITS;
}

/*
 * Is a credit message worth sending now (nothing else is going out)?  At
 * once when something waits on it: the peer reclaims (a give-back), we
 * reclaim (a lowered limit), we are stuck (WANT not said), or the peer is
 * low on credits we owe.  Owed credits otherwise wait until enough pile up
 * or, with @idle (the peer has been quiet a while), go back anyway, so the
 * tail of a one-way stream comes home.
 */
static inline bool tern_pool_want_credit_msg(const struct tern_pool_credits *c, bool idle)
{
	uint32_t quarter = c->target / 4 ? c->target / 4 : 1;

	if (!tern_pool_can_credit_msg(c))
		return false;
	if (c->back || c->target < c->limit_sent || (c->starved && !c->tx && !c->want_sent))
		return true;
	return c->to_return > 0 && (c->to_return >= quarter || c->peer_tx <= quarter || idle);
}

/*
 * Stamp an outgoing header (any kind) with everything owed and said: from
 * here on the peer may use what it carries.
 */
static inline void tern_pool_stamp(struct tern_pool_credits *c, struct tern_pool_stamp *f)
{
	f->credits = (uint16_t)c->to_return;
	f->ctrl_credits = (uint16_t)c->ctrl_to_return;
	f->limit = (uint16_t)c->target;
	f->back = (uint16_t)c->back;
	f->want = c->starved;
	c->peer_tx += c->to_return;
	c->peer_ctrl_tx += c->ctrl_to_return;
	c->to_return = 0;
	c->ctrl_to_return = 0;
	c->limit_sent = c->target;
	c->back = 0;
	if (c->starved)
		c->want_sent = true;
}

/* ---- the grantor: messages into our receives ------------------------------ */

/*
 * tern_pool_on_recv - account for a received header, before anything else
 * reads the message
 * @p: the pool the message landed in
 * @c: its session's credits
 * @kind: the header's kind (already checked to be one of TERN_MSG_*)
 * @f: the header's credit fields
 * @now: the caller's clock
 * @why: set to a static description on failure
 *
 * The receive is now in use until tern_pool_request_done() (requests and
 * one-way messages) or tern_pool_msg_done() (the rest).  Nothing changes on
 * failure.
 *
 * Return: 0, or TERN_EPEER when the peer sent without a credit, returned or
 * gave back credits it never had, replied to nothing, sent an ACK out of
 * turn or a limit under its minimum.
 */
static inline int tern_pool_on_recv(struct tern_pool *p, struct tern_pool_credits *c, uint8_t kind,
				    const struct tern_pool_stamp *f, uint64_t now, const char **why)
{
	bool req = kind == TERN_MSG_REQ || kind == TERN_MSG_ONEWAY;

	switch (kind) {
	case TERN_MSG_REQ:
	case TERN_MSG_ONEWAY:
		if (!c->peer_tx) {
			*why = "peer sent a request without a credit";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		if (!c->replies_expected) {
			*why = "peer sent a reply to no call";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_CREDIT:
		if (!c->peer_ctrl_tx) {
			*why = "peer sent a credit message without a control credit";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_CTRL_ACK:
		/* only once we spent them all, and it returns them all */
		if (c->ctrl_tx || f->ctrl_credits != TERN_CTRL_CREDITS || !c->ack_ready) {
			*why = "peer sent a control ACK out of turn";
			return TERN_EPEER;
		}
		break;
	default:
		*why = "message of no known kind";
		return TERN_EPEER;
	}
	if (f->back > c->peer_tx - req) {
		*why = "peer gave back more request credits than it held";
		return TERN_EPEER;
	}
	/* Loose (we do not know which of our requests it still holds), but
	 * an honest grantor keeps its whole circulation within n. */
	if (c->tx + c->back + f->credits > c->n) {
		*why = "peer returned more request credits than it held";
		return TERN_EPEER;
	}
	if (c->ctrl_tx + f->ctrl_credits > TERN_CTRL_CREDITS) {
		*why = "peer returned more control credits than it held";
		return TERN_EPEER;
	}
	if (f->limit < c->peer_min || f->limit > c->n) {
		*why = "peer's credit limit is under its minimum or over the slot count";
		return TERN_EPEER;
	}
	if (!p->posted) {
		/* Cannot be: an arrival's receive is still counted until now. */
		*why = "message into an empty pool";
		return -EPROTO;
	}

	p->posted--;
	p->in_use++;
	switch (kind) {
	case TERN_MSG_REQ:
	case TERN_MSG_ONEWAY:
		c->peer_tx--;
		c->inproc++;
		c->last_rx = now;
		break;
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		c->replies_expected--;
		break;
	case TERN_MSG_CREDIT:
		c->peer_ctrl_tx--;
		c->ctrl_inproc++;
		break;
	case TERN_MSG_CTRL_ACK:
		c->ack_ready = 0;
		break;
	}
	p->claimed--;
	/* The grantor side: what it gives back unused is free again. */
	c->peer_tx -= f->back;
	p->claimed -= f->back;
	/*
	 * WANT counts only from a holder that has seen and spent every credit
	 * we gave it (none in its hands, on the way or promised): one that
	 * has not yet heard of a grant is not starved, and one doubling per
	 * grant used is the most a target rises per round trip.
	 */
	if (f->want && !c->want && !p->pp.fixed && !c->peer_tx && !c->to_return) {
		c->want = true;
		p->wanting++;
	} else if (!f->want && c->want) {
		/* Every header says whether work waits: this one says none
		 * does (it was done with the credits it got back), so there is
		 * nothing to grant, and an idle session can go back to min. */
		c->want = false;
		p->wanting--;
	}
	/* The holder side. */
	c->tx += f->credits;
	c->ctrl_tx += f->ctrl_credits;
	if (f->credits)
		c->want_sent = false;
	c->peer_limit = f->limit;
	if (c->tx > c->peer_limit) {
		/* The peer reclaims: give back what we hold over its limit. */
		c->back += c->tx - c->peer_limit;
		c->tx = c->peer_limit;
	}
	return 0;
}

/*
 * A done receive the session needs for nothing: post it again, unless the
 * pool has more headroom than it wants and nobody is waiting for it; then
 * retire it (the pool shrinks: its buffer goes back to its chunk).
 */
static inline bool tern_pool_keep(struct tern_pool *p)
{
	if (!p->wanting && tern_pool_headroom(p) >= p->pp.high_water)
		return false;
	p->posted++;
	return true;
}

/*
 * tern_pool_request_done - a request or one-way message is done with (its
 * handler returned, replied, or released it)
 *
 * Return: true when the caller must post its receive again before it
 * stamps another header (the accounting counts it posted from here), false
 * when it is retired.  A session under its target gets the credit back on
 * that receive; over its target (it was lowered) the credit stays in the pool.
 */
static inline bool tern_pool_request_done(struct tern_pool *p, struct tern_pool_credits *c)
{
	p->in_use--;
	c->inproc--;
	if (!c->gone && tern_pool_circulating(c) < c->target) {
		p->posted++;
		c->to_return++;
		p->claimed++;
		return true;
	}
	return tern_pool_keep(p);
}

/*
 * tern_pool_msg_done - a reply, credit message or ACK is done with
 * Return: as tern_pool_request_done().  A credit message's control credit
 * and the ACK's claim come back with the receive posted again.
 */
static inline bool tern_pool_msg_done(struct tern_pool *p, struct tern_pool_credits *c,
				      uint8_t kind)
{
	p->in_use--;
	if (kind == TERN_MSG_CREDIT)
		c->ctrl_inproc--;
	if (!c->gone && (kind == TERN_MSG_CREDIT || kind == TERN_MSG_CTRL_ACK)) {
		p->posted++;
		p->claimed++;
		if (kind == TERN_MSG_CREDIT)
			c->ctrl_to_return++;
		else
			c->ack_ready = 1;
		return true;
	}
	return tern_pool_keep(p);
}

/*
 * tern_pool_grant - serve a session's WANT from headroom
 *
 * If it already has its target, the target doubles (up to n): at most once
 * per target reached.  It then gets what headroom allows above reserve;
 * its WANT stays recorded until it reaches the target, so call this again
 * for wanting sessions when headroom comes back.  Return: credits granted.
 */
static inline uint32_t tern_pool_grant(struct tern_pool *p, struct tern_pool_credits *c)
{
	uint32_t g = tern_pool_circulating(c), head = tern_pool_headroom(p), give;

	if (!c->want)
		return 0;
	/* Over its target it is being trimmed: no doubling until it is back. */
	if (g == c->target && c->target < c->n)
		c->target = tern_pool_min_u32(2 * c->target, c->n);
	give = g < c->target ? c->target - g : 0;
	give = tern_pool_min_u32(give, head > p->pp.reserve ? head - p->pp.reserve : 0);
	c->to_return += give;
	p->claimed += give;
	if (g + give >= c->target) {
		c->want = false;
		p->wanting--;
	}
	return give;
}

/*
 * tern_pool_lower - lower a session's target (at least to its floor)
 *
 * For a borrower gone quiet (tern_pool_idle()), or to make room when the
 * pool is pressed (an accept waits, or tern_pool_pressed()): the caller
 * picks the largest borrowers, those not wanting first, each at most once
 * per idle time (last_lower), until they cover the shortfall.  An unmet WANT stays: the
 * holder may have nothing left to say it again with (its requests held),
 * and it is granted once the session is back at its target and headroom
 * allows.  The lowered limit goes out on the next header; credits over it
 * come back as requests are done and as the holder gives back.  Return:
 * true if the target moved.
 */
static inline bool tern_pool_lower(struct tern_pool *p, struct tern_pool_credits *c, uint32_t to,
				   uint64_t now)
{
	if (p->pp.fixed || c->gone || to >= c->target)
		return false;
	c->target = to > c->min ? to : c->min;
	c->last_lower = now;
	return true;
}

/* Has the session borrowed and then sent nothing for idle time?  Then its
 * target goes back to its floor. */
static inline bool tern_pool_idle(struct tern_pool *p, struct tern_pool_credits *c, uint64_t now)
{
	if (c->want || c->target <= c->min || now - c->last_rx < p->pp.idle)
		return false;
	return tern_pool_lower(p, c, c->min, now);
}

#endif /* TERN_CREDIT_POOL_H */
