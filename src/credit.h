/* SPDX-License-Identifier: MIT */
/*
 * credit.h - credit accounting for one session: no RNR by construction.
 *
 * Each side posts R = 2N + C + 1 receives (N = slot_count, C = TERN_CTRL_CREDITS)
 * and never consumes more of the peer's than it posted:
 *
 *   - requests and one-way messages:  at most N in flight, one credit each.  A credit exists only
 *                for a receive that is actually posted: the peer returns it
 *                after re-posting the receive the request used, piggybacked
 *                on any message's header, or in a credit message.
 *   - replies:   need no credit.  The caller reserved one of its own posted
 *                receives for the reply when it made the call
 *                (replies_expected), so a reply can never find the ring dry.
 *   - control messages (credit messages, and cancels): at most C in
 *                flight, with credits of their own
 *                (ctrl_tx).  Those come back piggybacked on the peer's next
 *                message.  A peer with nothing to send (a one-way stream's
 *                sender, waiting in tern_session_drain) has no next
 *                message, so once a side holds all C of the peer's control
 *                credits (the peer cannot send another credit message) it
 *                returns them in a TERN_MSG_CTRL_ACK.  An ACK needs no
 *                credit and never asks for an answer, so the sides cannot
 *                ping-pong, and at most one is in flight: the next can only
 *                follow C credit messages that spent what this one returned.
 *
 *   N (peer's requests and one-way messages) + N (replies to our calls)
 *   + C (control messages) + 1 (an ACK)
 *   = R receives: the peer can never send into an empty ring.
 *
 * A call that times out keeps its reservation (replies_expected) until
 * the peer answers it: the peer may still be reading its request or
 * writing its reply, and its one reply must find a receive.  So the caller
 * sends a TERN_MSG_CANCEL (on a control credit, like a credit message:
 * the receiver reads it and re-posts at once), and the peer answers every
 * call it still holds with that call's one reply (an error reply,
 * -ECANCELED, when no handler ran; wire.h).  Every reservation thus comes
 * back with a reply, timed out or not.  A peer that holds a cancelled call
 * past the caller's cancel_timeout_ms (a deferred handler that never
 * replies) costs the session: the caller closes it (-ECONNABORTED) rather
 * than keep a reservation, and the credit the peer holds with it, for
 * good (rpc/client.c).  A reply that answers neither a call in flight nor
 * a cancelled one is a protocol error.
 *
 * Everything a peer says about credits is checked: a message it had no
 * credit for, or credits it never owed, is a protocol error.
 */
#ifndef TERN_CREDIT_H
#define TERN_CREDIT_H

#include <stdbool.h>
#include <stdint.h>

#include "tern.h"
#include "wire.h"

/* Control credits (credit messages and cancels in flight), and control slots: one more, for
 * the ACK. */
#define TERN_CTRL_CREDITS 2
#define TERN_CTRL_SLOTS	  (TERN_CTRL_CREDITS + 1)
#define TERN_ACK_SLOT	  TERN_CTRL_CREDITS /* its index among the control slots */

struct tern_credits {
	uint32_t n;		   /* slot_count */
	uint32_t tx;		   /* request credits we hold */
	uint32_t peer_tx;	   /* request credits the peer holds (as far as we know) */
	uint32_t to_return;	   /* receives re-posted but not yet announced */
	uint32_t ctrl_tx;	   /* credit-message credits we hold */
	uint32_t peer_ctrl_tx;	   /* ...the peer holds */
	uint32_t ctrl_to_return;   /* credit-message receives re-posted, not yet announced */
	uint32_t replies_expected; /* our receives reserved for replies to our calls */
};

static inline void tern_credits_init(struct tern_credits *c, uint32_t n)
{
	c->n = n;
	c->tx = n;
	c->peer_tx = n;
	c->to_return = 0;
	c->ctrl_tx = TERN_CTRL_CREDITS;
	c->peer_ctrl_tx = TERN_CTRL_CREDITS;
	c->ctrl_to_return = 0;
	c->replies_expected = 0;
}

/* A call needs a request credit and a receive reserved for its reply. */
static inline bool tern_credits_can_call(const struct tern_credits *c)
{
	return c->tx > 0 && c->replies_expected < c->n;
}

static inline void tern_credits_take_call(struct tern_credits *c)
{
	c->tx--;
	c->replies_expected++;
}

/* A one-way message needs a credit only: nothing comes back. */
static inline bool tern_credits_can_send(const struct tern_credits *c)
{
	return c->tx > 0;
}

static inline void tern_credits_take_send(struct tern_credits *c)
{
	c->tx--;
}

static inline void tern_credits_untake_send(struct tern_credits *c)
{
	c->tx++;
}

/* An acquired call that was never sent gives both back. */
static inline void tern_credits_untake_call(struct tern_credits *c)
{
	c->tx++;
	c->replies_expected--;
}

/*
 * Stamp an outgoing header with everything we owe the peer.  From here on
 * the peer may use those receives.
 */
static inline void tern_credits_stamp(struct tern_credits *c, struct tern_hdr *h)
{
	h->credits = (uint16_t)c->to_return;
	h->ctrl_credits = (uint16_t)c->ctrl_to_return;
	c->peer_tx += c->to_return;
	c->peer_ctrl_tx += c->ctrl_to_return;
	c->to_return = 0;
	c->ctrl_to_return = 0;
}

/*
 * Is an explicit credit message worth sending now?  Only when credits are
 * owed, we hold a control credit, and either enough have piled up to be
 * worth a message or the peer is running low (it may be stalled on us).
 */
static inline bool tern_credits_want_credit_msg(const struct tern_credits *c)
{
	uint32_t quarter = c->n / 4 ? c->n / 4 : 1;

	return c->to_return > 0 && c->ctrl_tx > 0 &&
	       (c->to_return >= quarter || c->peer_tx <= quarter);
}

/* A credit message or a cancel goes: one control credit. */
static inline void tern_credits_take_credit_msg(struct tern_credits *c)
{
	c->ctrl_tx--;
}

/* We hold every control credit the peer has: it cannot send another
 * credit message until they go back, so they go back in an ACK. */
static inline bool tern_credits_want_ack(const struct tern_credits *c)
{
	return c->ctrl_to_return == TERN_CTRL_CREDITS;
}

/* A receive that held a peer's request or one-way message is posted
 * again: one credit owed. */
static inline void tern_credits_request_done(struct tern_credits *c)
{
	c->to_return++;
}

/*
 * tern_credits_on_recv - account for a received header
 *
 * Return: 0, or TERN_EPEER with @why set when the peer sent without a
 * credit, returned credits it never had, or replied to nothing.
 */
static inline int tern_credits_on_recv(struct tern_credits *c, const struct tern_hdr *h,
				       const char **why)
{
	if (c->tx + h->credits > c->n) {
		*why = "peer returned more request credits than it held";
		return TERN_EPEER;
	}
	if (c->ctrl_tx + h->ctrl_credits > TERN_CTRL_CREDITS) {
		*why = "peer returned more control credits than it held";
		return TERN_EPEER;
	}
	switch (h->kind) {
	case TERN_MSG_REQ:
	case TERN_MSG_ONEWAY:
		if (c->peer_tx == 0) {
			*why = "peer sent a request without a credit";
			return TERN_EPEER;
		}
		c->peer_tx--;
		break;
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		if (c->replies_expected == 0) {
			*why = "peer sent a reply to no call";
			return TERN_EPEER;
		}
		c->replies_expected--;
		break;
	case TERN_MSG_CREDIT:
	case TERN_MSG_CANCEL:
		if (c->peer_ctrl_tx == 0) {
			*why = "peer sent a credit message without a control credit";
			return TERN_EPEER;
		}
		c->peer_ctrl_tx--;
		/* re-posted at once by the caller */
		c->ctrl_to_return++;
		break;
	case TERN_MSG_CTRL_ACK:
		/* only once we spent them all, and it returns them all */
		if (c->ctrl_tx != 0 || h->ctrl_credits != TERN_CTRL_CREDITS) {
			*why = "peer sent a control ACK out of turn";
			return TERN_EPEER;
		}
		break;
	}
	c->tx += h->credits;
	c->ctrl_tx += h->ctrl_credits;
	return 0;
}

#endif /* TERN_CREDIT_H */
