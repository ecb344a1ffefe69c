// SPDX-License-Identifier: MIT
/*
 * client.c - calls: the slot + generation table, the wait queue, deadlines.
 *
 * Call slot i owns send slot i.  A call is named on the wire by (slot,
 * generation); the generation changes every time the slot is reused, so a
 * reply to a call that already timed out can never complete a newer call
 * in the same slot: it is counted as late and dropped.
 *
 * A slot is reusable when its call is finished *and* the provider has
 * released its send slot; the two can happen in either order.
 *
 * A provider may release send slots late (verbs asks for a completion
 * every few sends): a finished call whose request is still unreported
 * keeps its slot.  With N - 1 calls held by a long-polling server and the
 * last slot's request unreported, the call that would release them could
 * wait for good.  So the engine asks the provider to report every send
 * posted so far (tern__session_report_sends()) whenever a call or message
 * finds no slot (stalled()), which covers every slot sent before, and
 * whenever a slot becomes finished-but-unreported while the queue is not
 * empty (release_slot(), issue_oneway()), which covers the rest: every
 * slot is then either a call waiting for its reply or free in bounded
 * time.  Nothing is asked while nobody waits.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "rpc.h"

static uint64_t deadline_for(tern_session *s, const struct tern_call_opts *opts)
{
	uint32_t ms = s->call_timeout_ms;

	if (opts && opts->timeout_ms)
		ms = opts->timeout_ms;
	return ms ? tern__now_ns() + (uint64_t)ms * 1000000ull : 0;
}

static bool can_issue(const tern_session *s)
{
	return tern__rpc_const(s)->nfree_calls > 0 && tern_credits_can_call(&s->cr);
}

/* A one-way message needs a slot and a credit, no reply receive. */
static bool can_send(const tern_session *s)
{
	return tern__rpc_const(s)->nfree_calls > 0 && tern_credits_can_send(&s->cr);
}

/* No slot or credit for a call or message: someone waits (see the top). */
static void stalled(tern_session *s)
{
	s->cnt.credit_stalls++;
	tern__session_report_sends(s);
}

static void release_slot(tern_session *s, tern_callslot *c)
{
	struct tern_rpc_session *r = tern__rpc(s);

	c->state = TERN_CALL_FREE;
	if (!c->send_busy)
		r->free_calls[r->nfree_calls++] = c->idx;
	else if (r->q_len)
		tern__session_report_sends(s); /* queued calls need it back */
}

/*
 * The metrics of call @c end (before its slot is reused: a start time
 * still owed by the turn is taken off the context's list here).
 * @in_turn: a reply delivered in a turn of the loop, whose clock reading
 * the metrics may take and share (a timeout or a failure may come between
 * turns, where a reading kept would go stale).
 */
static inline void metrics_end(tern_session *s, tern_callslot *c, int status, size_t len,
			       bool in_turn)
{
	if (c->mx) {
		tern__metrics_end(c->mx, tern__turn_elapsed(s->ctx, &c->mx_t0, in_turn), status,
				  len);
		c->mx = NULL;
	}
}

/* Finish call @c: free its slot first, so the callback may call again. */
static void complete(tern_session *s, tern_callslot *c, int status, const void *reply, size_t len,
		     bool in_turn)
{
	tern_call_cb cb = c->cb;
	void *user = c->user;

	release_slot(s, c);
	metrics_end(s, c, status, len, in_turn);
	s->cnt.calls_completed++;
	if (status < 0)
		s->cnt.errors++;
	TERN_CALLBACK(s->ctx, cb(s, status, reply, len, user));
}

static void issue(tern_session *s, tern_callslot *c, uint32_t method, size_t len, tern_call_cb cb,
		  void *user, uint64_t deadline_ns, uint8_t flags)
{
	struct tern_hdr h = {.kind = TERN_MSG_REQ, .flags = flags};

	c->gen++;
	c->state = TERN_CALL_INFLIGHT;
	c->send_busy = true;
	c->cb = cb;
	c->user = user;
	c->method = method;
	c->deadline_ns = deadline_ns;
	h.call_slot = (uint16_t)c->idx;
	h.call_gen = c->gen;
	h.method = method;
	h.len = (uint32_t)len;
	s->cnt.calls_sent++;
	c->mx = NULL;
	if (tern__rpc_ctx(s->ctx)->mx &&
	    (c->mx = tern__metrics_begin(tern__rpc_ctx(s->ctx)->mx, TERN_METRICS_ISSUED, method,
					 true, len)))
		tern__turn_stamp_between(s->ctx, &c->mx_t0);
	if (tern__session_send(s, c->idx, &h) == 0)
		tern__deadline_arm(s->ctx, deadline_ns);
}

static tern_callslot *take_slot(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);
	tern_callslot *c = &r->calls[r->free_calls[--r->nfree_calls]];

	tern_credits_take_call(&s->cr);
	c->acq_oneway = false;
	c->reply_buf = NULL;
	c->reply_offer = 0;
	return c;
}

/* Wait mode: keep the caller's pointer until a slot and credit are free. */
static int enqueue(tern_session *s, uint32_t method, const void *buf, size_t len, tern_call_cb cb,
		   tern_send_cb scb, void *user, uint64_t deadline_ns)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct tern_pending *e;

	if (r->q_len == r->q_cap)
		return -ENOBUFS;
	e = &r->queue[(r->q_head + r->q_len) % r->q_cap];
	e->method = method;
	e->buf = buf;
	e->len = len;
	e->cb = cb;
	e->scb = scb;
	e->user = user;
	e->deadline_ns = deadline_ns;
	r->q_len++;
	tern__deadline_arm(s->ctx, deadline_ns);
	return 0;
}

/*
 * Send a one-way message from slot @c.  The slot stays busy only until the
 * provider releases it: nothing comes back for it.
 */
static void issue_oneway(tern_session *s, tern_callslot *c, uint32_t method, size_t len)
{
	struct tern_hdr h = {.kind = TERN_MSG_ONEWAY, .method = method, .len = (uint32_t)len};

	c->gen++;
	c->state = TERN_CALL_FREE;
	c->send_busy = true;
	s->cnt.oneway_sent++;
	tern__session_send(s, c->idx, &h);
	if (tern__rpc(s)->q_len)
		tern__session_report_sends(s); /* queued calls need it back */
}

static tern_callslot *take_send_slot(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);
	tern_callslot *c = &r->calls[r->free_calls[--r->nfree_calls]];

	tern_credits_take_send(&s->cr);
	c->acq_oneway = true;
	return c;
}

/*
 * Hand a send slot to the user to build a message in: for a call (a credit
 * and a reply receive reserved) or a one-way message (a credit only).
 * Queued messages go first, so both fail fast while anything waits.
 */
static int acquire(tern_session *s, void **buf, size_t *cap, tern_callslot **out, bool oneway)
{
	tern_callslot *c;

	if (!s || !buf || !cap || !out)
		return -EINVAL;
	if (!tern__session_usable(s))
		return -ENOTCONN;
	if (tern__rpc(s)->q_len || !(oneway ? can_send(s) : can_issue(s))) {
		stalled(s);
		return -EAGAIN;
	}
	c = oneway ? take_send_slot(s) : take_slot(s);
	c->state = TERN_CALL_ACQUIRED;
	*buf = tern__send_slot(s, c->idx) + TERN_HDR_SIZE;
	*cap = s->max_payload;
	*out = c;
	return 0;
}

int tern_send(tern_session *s, uint32_t method_id, const void *msg, size_t len, tern_send_cb cb,
	      void *user)
{
	int rc;

	if (!s || method_id == 0 || (len && !msg))
		return -EINVAL;
	if (!tern__session_usable(s))
		return -ENOTCONN;
	if (tern__rpc(s)->nmissing && (rc = tern__services_missing(s, method_id)))
		return rc;
	if (len > s->max_payload) {
		tern__set_error(s->ctx, "%s: message of %zu bytes exceeds the slot payload %u",
				s->peer, len, s->max_payload);
		return -EMSGSIZE;
	}
	if (tern__rpc(s)->q_len == 0 && can_send(s)) {
		tern_callslot *c = take_send_slot(s);

		if (len)
			memcpy(tern__send_slot(s, c->idx) + TERN_HDR_SIZE, msg, len);
		s->copy_bytes += len;
		issue_oneway(s, c, method_id, len);
		return 0;
	}
	stalled(s);
	if (s->nonblock || !cb)
		return -EAGAIN;
	rc = enqueue(s, method_id, msg, len, NULL, cb, user, deadline_for(s, NULL));
	return rc ? rc : TERN_QUEUED;
}

int tern_send_acquire(tern_session *s, void **buf, size_t *cap, tern_callslot **out)
{
	return acquire(s, buf, cap, out, true);
}

/* An acquired slot about to be committed: still sendable?  Aborts it if not. */
static int commit_check(tern_callslot *c, uint32_t method, size_t len)
{
	int rc = 0;

	if (!tern__session_usable(c->s))
		rc = -ENOTCONN;
	else if (tern__rpc(c->s)->nmissing)
		rc = tern__services_missing(c->s, method);
	if (!rc && len > c->s->max_payload)
		rc = -EMSGSIZE;
	if (rc)
		tern_call_abort(c);
	return rc;
}

int tern_send_commit(tern_callslot *c, uint32_t method_id, size_t len)
{
	int rc;

	if (!c || c->state != TERN_CALL_ACQUIRED || !c->acq_oneway || method_id == 0)
		return -EINVAL;
	if ((rc = commit_check(c, method_id, len)))
		return rc;
	issue_oneway(c->s, c, method_id, len);
	return 0;
}

static bool writable(const tern_session *s)
{
	return tern__rpc_const(s)->q_len == 0 && can_send(s);
}

static bool drained(const tern_session *s)
{
	return tern__rpc_const(s)->q_len == 0 && s->cr.tx == s->n && s->cr.replies_expected == 0;
}

/*
 * Drained, and every send this side posted for its calls and messages, and
 * its control messages, reported done: the whole window is free again (a
 * provider that reports sends late, verbs, would otherwise leave up to
 * sig_every - 1 call slots taken until someone waited for one).
 */
static bool drained_home(const tern_session *s)
{
	return drained(s) && tern__rpc_const(s)->nfree_calls == s->n && !s->ctrl_busy;
}

/* Run the loop until @done(s), the session fails, or @timeout_ms passes;
 * once @report(s), ask the provider to report what it sent, before waiting. */
static int run_until(tern_session *s, bool (*done)(const tern_session *),
		     bool (*report)(const tern_session *), uint32_t timeout_ms)
{
	uint64_t end;

	if (!s)
		return -EINVAL;
	if (s->ctx->cb_depth > 0)
		return -EBUSY;
	end = timeout_ms ? tern__now_ns() + (uint64_t)timeout_ms * 1000000ull : 0;
	/* the deadline timer wakes the loop even in event mode */
	tern__deadline_arm(s->ctx, end);
	for (;;) {
		if (!tern__session_usable(s))
			return -ENOTCONN;
		if (done(s))
			return 0;
		if (end && tern__now_ns() >= end)
			return -ETIMEDOUT;
		if (report && report(s))
			tern__session_report_sends(s);
		uv_run(s->ctx->loop, UV_RUN_ONCE);
	}
}

int tern_session_wait_writable(tern_session *s, uint32_t timeout_ms)
{
	return run_until(s, writable, NULL, timeout_ms);
}

int tern_session_drain(tern_session *s, uint32_t timeout_ms)
{
	return run_until(s, drained_home, drained, timeout_ms);
}

/* Copy a request into a fresh slot and send it: the copy path's one copy. */
static void issue_copy(tern_session *s, uint32_t method, const void *buf, size_t len,
		       tern_call_cb cb, void *user, uint64_t deadline_ns)
{
	tern_callslot *c = take_slot(s);

	if (len)
		memcpy(tern__send_slot(s, c->idx) + TERN_HDR_SIZE, buf, len);
	s->copy_bytes += len;
	issue(s, c, method, len, cb, user, deadline_ns, 0);
}

/*
 * Hand a call's staging back, now that the server cannot touch it.
 * @flags: TERN_UNEXPORT_ANSWERED once the server has answered the call.
 */
static void release_stages(tern_session *s, tern_callslot *c, unsigned flags)
{
	/* A call that fit in its slot has neither: every small call comes by. */
	if (c->nx) {
		tern__bulk_unexport(s, c->xd, c->nx, flags);
		c->nx = 0;
	}
	if (c->req_stage || c->rep_stage) {
		tern__session_stage_put(s, c->req_stage);
		tern__session_stage_put(s, c->rep_stage);
		c->req_stage = c->rep_stage = NULL;
	}
}

/* Is @d the export of one of @c's staging buffers (not of the user's memory)? */
static bool exports_staging(const tern_callslot *c, const struct tern_bulk_desc *d)
{
	return (c->req_stage && d->addr == (uintptr_t)c->req_stage->mr.addr) ||
	       (c->rep_stage && d->addr == (uintptr_t)c->rep_stage->mr.addr);
}

/*
 * Deadlines.  A call whose deadline passes may still be in the server's
 * hands: waiting for a reply slot, its request being pulled, in a handler,
 * its reply being pushed.  Withdrawing its exports then would make an
 * honest server's transfer fail (on verbs a remote access error, which
 * ends the connection), and forgetting its reply's reservation would leak
 * it for good.  So a timed-out call becomes an orphan: it keeps its
 * exports, its staging and its reservation, and a cancel (wire.h) asks the
 * server to let go of it.  The server answers with the call's one reply
 * (its handler's, or -ECANCELED when none ran), and only then does the
 * orphan give everything back.  The server never touches the caller's
 * memory after it saw the cancel, but it may before: so the callback of a
 * call that lent the server the user's own memory (a large request or a
 * reply buffer in a tern_mem_register()ed region) waits for the answer;
 * any other call's runs at the deadline (its staging is the engine's).
 * Either way a server that does not answer within cancel_timeout_ms of
 * the deadline closes the session: a reservation never leaks silently.
 */

/* Does call @c expose memory of the user's own (not staging) to the peer? */
static bool lends_user_memory(const tern_callslot *c)
{
	for (uint8_t i = 0; i < c->nx; i++)
		if (!exports_staging(c, &c->xd[i]))
			return true;
	return false;
}

/*
 * Move @c's exports and staging into an orphan record.  There is always
 * one free: calls in flight and orphans each hold a reply's reservation,
 * and there are at most n of those (credit.h).
 */
static struct tern_orphan *orphan_take(tern_session *s, tern_callslot *c)
{
	struct tern_rpc_session *r = tern__rpc(s);

	for (uint32_t i = 0; i < s->n; i++) {
		struct tern_orphan *o = &r->orphans[i];

		if (o->used)
			continue;
		memset(o, 0, sizeof(*o));
		o->used = true;
		o->slot = (uint16_t)c->idx;
		o->gen = c->gen;
		o->st[0] = c->req_stage;
		o->st[1] = c->rep_stage;
		c->req_stage = c->rep_stage = NULL;
		memcpy(o->xd, c->xd, sizeof(o->xd));
		o->nx = c->nx;
		c->nx = 0;
		r->norphans++;
		return o;
	}
	return NULL; /* not reached: see above */
}

/* The server let go of orphan @o: give everything back, run a waiting callback. */
static void orphan_release(tern_session *s, struct tern_orphan *o)
{
	struct tern_rpc_session *r = tern__rpc(s);
	tern_call_cb cb = o->cb;
	void *user = o->user;

	/* the server answered the call, or its cancel: it saw the request */
	tern__bulk_unexport(s, o->xd, o->nx, TERN_UNEXPORT_ANSWERED);
	tern__session_stage_put(s, o->st[0]);
	tern__session_stage_put(s, o->st[1]);
	if (o->cancel_due)
		r->ncancel_due--;
	o->used = false;
	r->norphans--;
	if (cb) {
		s->cnt.calls_completed++;
		s->cnt.errors++;
		TERN_CALLBACK(s->ctx, cb(s, -ETIMEDOUT, "", 0, user));
	}
}

static struct tern_orphan *orphan_find(tern_session *s, uint16_t slot, uint32_t gen)
{
	struct tern_rpc_session *r = tern__rpc(s);

	for (uint32_t i = 0; r->norphans && i < s->n; i++) {
		struct tern_orphan *o = &r->orphans[i];

		if (o->used && o->slot == slot && o->gen == gen)
			return o;
	}
	return NULL;
}

/* Call @c's deadline passed at @now_ns: orphan it, cancel it, tell its user. */
static void time_out(tern_session *s, tern_callslot *c, uint64_t now_ns)
{
	struct tern_rpc_session *r = tern__rpc(s);
	bool lent = lends_user_memory(c);
	struct tern_orphan *o = orphan_take(s, c);

	s->cnt.timeouts++;
	o->cancel_due = true;
	r->ncancel_due++;
	o->give_up_ns = now_ns + (uint64_t)r->cancel_timeout_ms * 1000000ull;
	if (lent) {
		/* the user's memory stays the server's until it answers; the
		 * call is over for the metrics now, at its deadline, and its
		 * slot may be taken again before the callback runs */
		o->cb = c->cb;
		o->user = c->user;
		metrics_end(s, c, -ETIMEDOUT, 0, false);
		release_slot(s, c);
	} else {
		complete(s, c, -ETIMEDOUT, "", 0, false);
	}
}

void tern__client_send_cancels(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	while (r->ncancel_due && tern__session_usable(s)) {
		uint32_t cap, idx, len = 0;
		uint8_t *p = tern__session_ctrl_acquire(s, &cap, &idx);

		if (!p)
			return; /* no control credit or slot: the credits upcall calls again */
		for (uint32_t i = 0; i < s->n && r->ncancel_due; i++) {
			struct tern_orphan *o = &r->orphans[i];

			if (!o->used || !o->cancel_due)
				continue;
			if (len + TERN_CANCEL_ENTRY_SIZE > cap)
				break;
			tern_cancel_entry_encode(p + len, o->slot, o->gen);
			len += TERN_CANCEL_ENTRY_SIZE;
			o->cancel_due = false;
			r->ncancel_due--;
		}
		tern__session_ctrl_commit(s, idx, TERN_MSG_CANCEL, len);
	}
}

/*
 * Orphans the server has held past cancel_timeout_ms end the session.
 * Return: the earliest give-up time left (0: none), or UINT64_MAX when the
 * session failed.
 */
static uint64_t orphans_due(tern_session *s, uint64_t now_ns)
{
	struct tern_rpc_session *r = tern__rpc(s);
	uint64_t next = 0;
	char why[160];

	for (uint32_t i = 0; r->norphans && i < s->n; i++) {
		struct tern_orphan *o = &r->orphans[i];

		if (!o->used)
			continue;
		if (o->give_up_ns <= now_ns) {
			snprintf(why, sizeof(why),
				 "the peer answered neither call %u.%u, which timed out, nor its "
				 "cancel within %u ms (cancel_timeout_ms)",
				 o->slot, o->gen, r->cancel_timeout_ms);
			tern__session_fail(s, -ECONNABORTED, why);
			return UINT64_MAX;
		}
		if (!next || o->give_up_ns < next)
			next = o->give_up_ns;
	}
	return next;
}

/*
 * The session went down: the peer may reach no orphan's exports now.
 * Their staging stays until the session is freed (see
 * tern__client_fail_all()); callbacks that waited run now.
 */
static void orphans_down(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	r->ncancel_due = 0;
	for (uint32_t i = 0; r->norphans && i < s->n; i++) {
		struct tern_orphan *o = &r->orphans[i];
		tern_call_cb cb = o->cb;

		if (!o->used)
			continue;
		tern__bulk_unexport(s, o->xd, o->nx, TERN_UNEXPORT_CLOSING);
		o->nx = 0;
		o->cancel_due = false;
		o->cb = NULL;
		if (cb) {
			s->cnt.calls_completed++;
			s->cnt.errors++;
			TERN_CALLBACK(s->ctx, cb(s, -ETIMEDOUT, "", 0, o->user));
		}
	}
}

static uint64_t reply_offer(const tern_session *s, size_t reply_cap)
{
	return reply_cap < tern__reply_max(s) ? reply_cap : tern__reply_max(s);
}

/* Does a reply buffer of @reply_cap bytes go to the server as a descriptor? */
static bool offers_desc(const tern_session *s, const void *reply_buf, size_t reply_cap)
{
	return reply_buf && reply_offer(s, reply_cap) > s->max_payload && s->conn->ops->bulk_export;
}

/*
 * Offer the caller's reply buffer to the server: the reply lands there
 * (tern__client_reply() copies a short one, and refuses one over
 * @reply_cap).  A reply that may be larger than a slot needs the buffer
 * exported, up to tern__reply_max() only (the server refuses a request
 * that names more, and no reply can be longer): its descriptor goes first
 * in the payload, at @p.  Return the bytes that takes (0 or
 * TERN_BULK_DESC_SIZE), or a negative errno.
 */
static int offer_reply(tern_session *s, tern_callslot *c, void *reply_buf, size_t reply_cap,
		       uint8_t *p, uint8_t *flags)
{
	uint64_t offer = reply_offer(s, reply_cap);
	struct tern_bulk_desc d;
	int rc;

	c->reply_buf = reply_buf;
	c->reply_cap = reply_cap;
	if (!offers_desc(s, reply_buf, reply_cap))
		return 0;
	rc = tern__bulk_export(s, reply_buf, (size_t)offer, 1, &d, &c->rep_stage);
	if (rc)
		return rc;
	c->xd[c->nx++] = d;
	c->reply_offer = offer;
	tern_bulk_desc_encode(p, &d);
	*flags |= TERN_F_REPLY_DESC;
	return TERN_BULK_DESC_SIZE;
}

/* Export a request larger than what its slot has left; its descriptor goes at @p. */
static int offer_request(tern_session *s, tern_callslot *c, const void *req, size_t len, uint8_t *p,
			 uint8_t *flags)
{
	struct tern_bulk_desc d;
	int rc;

	rc = tern__bulk_export(s, req, len, 0, &d, &c->req_stage);
	if (rc)
		return rc;
	c->xd[c->nx++] = d;
	tern_bulk_desc_encode(p, &d);
	*flags |= TERN_F_BULK;
	return TERN_BULK_DESC_SIZE;
}

/* A call could not be offered: undo what was, and say why. */
static void offer_failed(tern_session *s, tern_callslot *c, int rc, size_t exposing)
{
	release_stages(s, c, 0);
	c->reply_buf = NULL;
	c->reply_offer = 0;
	if (rc == -ENOBUFS)
		tern__set_error(s->ctx,
				"%s: staging %zu bytes for the peer would exceed the session's "
				"max_staging (%" PRIu64 " bytes, %" PRIu64 " held)",
				s->peer, exposing, s->max_staging, s->staged);
	else
		tern__set_error(s->ctx, "%s: cannot expose a %zu-byte buffer to the peer: %s",
				s->peer, exposing, tern_strerror(rc));
}

/*
 * A call with a reply buffer, or a request larger than a slot: the payload
 * starts with the reply buffer's descriptor (if the reply may not fit a
 * slot), then carries the request, or the descriptor the server pulls it
 * through.
 */
static int issue_bulk(tern_session *s, uint32_t method, const void *req, size_t len,
		      void *reply_buf, size_t reply_cap, tern_call_cb cb, void *user,
		      uint64_t deadline_ns)
{
	tern_callslot *c = take_slot(s);
	uint8_t *p = tern__send_slot(s, c->idx) + TERN_HDR_SIZE;
	uint8_t flags = 0;
	size_t off, exposing = (size_t)reply_offer(s, reply_cap);
	int rc;

	if ((rc = offer_reply(s, c, reply_buf, reply_cap, p, &flags)) < 0)
		goto fail;
	off = (size_t)rc;
	if (len > s->max_payload - off) {
		exposing = len;
		if ((rc = offer_request(s, c, req, len, p + off, &flags)) < 0)
			goto fail;
		off += (size_t)rc;
	} else {
		if (len)
			memcpy(p + off, req, len);
		s->copy_bytes += len;
		off += len;
	}
	issue(s, c, method, off, cb, user, deadline_ns, flags);
	return 0;
fail:
	offer_failed(s, c, rc, exposing);
	tern_credits_untake_call(&s->cr);
	release_slot(s, c);
	switch (rc) {
	case -ENOTCONN:
	case -ECONNRESET:
	case -ECONNABORTED:
	case -EPIPE:
	case -EIO:
	case -ETIMEDOUT:
		/* the connection failed under the export (verbs: its QP died
		 * during a window's bind): the session goes, as tern_call()
		 * says, not a transport's code for this one call */
		return tern__session_gone(s, rc, "the connection failed while exposing a buffer");
	default:
		return rc;
	}
}

/* Issue a call now: the plain copy path, or the bulk one. */
static int issue_any(tern_session *s, uint32_t method, const void *req, size_t len, void *reply_buf,
		     size_t reply_cap, tern_call_cb cb, void *user, uint64_t deadline_ns)
{
	if (len > s->max_payload || reply_buf)
		return issue_bulk(s, method, req, len, reply_buf, reply_cap, cb, user, deadline_ns);
	issue_copy(s, method, req, len, cb, user, deadline_ns);
	return 0;
}

/* The reply buffer of @opts, if any (and its size in *@cap). */
static void *opts_reply_buf(const struct tern_call_opts *opts, size_t *cap)
{
	/* callers built against the first tern_call_opts pass a smaller size */
	void *buf = opts && (!opts->size || opts->size >= sizeof(*opts)) ? opts->reply_buf : NULL;

	*cap = buf ? opts->reply_cap : 0;
	return buf;
}

int tern_call(tern_session *s, uint32_t method_id, const void *req, size_t len, tern_call_cb cb,
	      void *user, const struct tern_call_opts *opts)
{
	size_t reply_cap;
	void *reply_buf = opts_reply_buf(opts, &reply_cap);
	int rc;

	if (!s || !cb || method_id == 0 || (len && !req))
		return -EINVAL;
	if (!tern__session_usable(s))
		return -ENOTCONN;
	/* A method the server said it lacks: no round trip to hear it again. */
	if (tern__rpc(s)->nmissing && (rc = tern__services_missing(s, method_id)))
		return rc;
	if (len > s->peer_max_msg) {
		tern__set_error(
			s->ctx,
			len > s->max_payload && s->peer_max_msg == s->max_payload
				? "%s: request of %zu bytes exceeds the slot payload %u, and "
				  "this transport moves no larger messages"
				: "%s: request of %zu bytes exceeds the %u the peer accepts",
			s->peer, len, s->peer_max_msg);
		return -EMSGSIZE;
	}
	if (tern__rpc(s)->q_len == 0 && can_issue(s))
		return issue_any(s, method_id, req, len, reply_buf, reply_cap, cb, user,
				 deadline_for(s, opts));
	stalled(s);
	if (s->nonblock)
		return -EAGAIN;
	rc = enqueue(s, method_id, req, len, cb, NULL, user, deadline_for(s, opts));
	if (!rc) {
		struct tern_rpc_session *r = tern__rpc(s);
		struct tern_pending *e = &r->queue[(r->q_head + r->q_len - 1) % r->q_cap];

		e->reply_buf = reply_buf;
		e->reply_cap = reply_cap;
	}
	return rc;
}

int tern__client_call_internal(tern_session *s, uint32_t method, const void *buf, size_t len,
			       tern_call_cb cb, uint32_t timeout_ms)
{
	if (!can_issue(s) || len > s->max_payload)
		return -EAGAIN;
	issue_copy(s, method, buf, len, cb, NULL,
		   timeout_ms ? tern__now_ns() + (uint64_t)timeout_ms * 1000000ull : 0);
	return 0;
}

/* Send queued calls while slots and credits last. */
void tern__client_kick(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	while (r->q_len && tern__session_usable(s)) {
		struct tern_pending e = r->queue[r->q_head];

		/* Strict arrival order: a head that cannot go blocks the rest. */
		if ((e.cb && !can_issue(s)) || (e.scb && !can_send(s)))
			break;
		r->q_head = (r->q_head + 1) % r->q_cap;
		r->q_len--;
		if (e.cb) {
			int rc = issue_any(s, e.method, e.buf, e.len, e.reply_buf, e.reply_cap,
					   e.cb, e.user, e.deadline_ns);
			if (rc == -ENOTCONN && s->fail_soon) {
				/* the connection went under its export: back at
				 * the head, it fails with the session, for the
				 * session's reason, like every call queued */
				r->q_head = (r->q_head + r->q_cap - 1) % r->q_cap;
				r->q_len++;
				break;
			}
			if (rc) {
				s->cnt.calls_completed++;
				s->cnt.errors++;
				TERN_CALLBACK(s->ctx, e.cb(s, rc, "", 0, e.user));
			}
		} else if (e.scb) {
			tern_callslot *c = take_send_slot(s);

			if (e.len)
				memcpy(tern__send_slot(s, c->idx) + TERN_HDR_SIZE, e.buf, e.len);
			s->copy_bytes += e.len;
			issue_oneway(s, c, e.method, e.len);
			TERN_CALLBACK(s->ctx, e.scb(s, 0, e.user));
		} /* neither: it timed out while queued */
	}
}

int tern_call_acquire(tern_session *s, void **buf, size_t *cap, tern_callslot **out)
{
	return acquire(s, buf, cap, out, false);
}

void tern_call_abort(tern_callslot *c)
{
	if (!c || c->state != TERN_CALL_ACQUIRED)
		return;
	if (c->acq_oneway)
		tern_credits_untake_send(&c->s->cr);
	else
		tern_credits_untake_call(&c->s->cr);
	release_slot(c->s, c);
	tern__client_kick(c->s);
}

/*
 * An acquired call's reply buffer, offered as tern_call() offers one.  The
 * request is in the slot already, and a reply buffer larger than a slot
 * puts its descriptor first: the request moves up behind it, or, when the
 * slot has no room left for both, goes as a large request, through staging
 * (copied out before the slot is rewritten).  *@plen becomes the payload's
 * length.  On failure the caller aborts the call.
 */
static int commit_offer(tern_session *s, tern_callslot *c, void *reply_buf, size_t reply_cap,
			size_t *plen, uint8_t *flags)
{
	uint8_t *p = tern__send_slot(s, c->idx) + TERN_HDR_SIZE;
	size_t len = *plen;
	int rc;

	if (!offers_desc(s, reply_buf, reply_cap))
		return offer_reply(s, c, reply_buf, reply_cap, p, flags); /* 0: no descriptor */
	if (len > s->max_payload - TERN_BULK_DESC_SIZE) {
		if ((rc = offer_request(s, c, p, len, p + TERN_BULK_DESC_SIZE, flags)) < 0) {
			offer_failed(s, c, rc, len);
			return rc;
		}
		*plen = 2 * TERN_BULK_DESC_SIZE;
	} else {
		memmove(p + TERN_BULK_DESC_SIZE, p, len);
		s->copy_bytes += len;
		*plen = TERN_BULK_DESC_SIZE + len;
	}
	if ((rc = offer_reply(s, c, reply_buf, reply_cap, p, flags)) < 0) {
		offer_failed(s, c, rc, (size_t)reply_offer(s, reply_cap));
		return rc;
	}
	return 0;
}

int tern_call_commit(tern_callslot *c, uint32_t method_id, size_t len, tern_call_cb cb, void *user,
		     const struct tern_call_opts *opts)
{
	tern_session *s;
	void *reply_buf;
	size_t reply_cap;
	uint8_t flags = 0;
	int rc;

	if (!c || c->state != TERN_CALL_ACQUIRED || c->acq_oneway || !cb || method_id == 0)
		return -EINVAL;
	if ((rc = commit_check(c, method_id, len)))
		return rc;
	s = c->s;
	reply_buf = opts_reply_buf(opts, &reply_cap);
	if (reply_buf && (rc = commit_offer(s, c, reply_buf, reply_cap, &len, &flags))) {
		tern_call_abort(c);
		return rc;
	}
	issue(s, c, method_id, len, cb, user, deadline_for(s, opts), flags);
	return 0;
}

void tern__client_reply(tern_session *s, const struct tern_hdr *h, const void *payload)
{
	tern_callslot *c = &tern__rpc(s)->calls[h->call_slot];

	if (c->state != TERN_CALL_INFLIGHT || c->gen != h->call_gen) {
		/* The answer to a call that timed out (its receive was still
		 * reserved, see credit.h): count it, never deliver it; the
		 * server has let go of the call's memory now. */
		struct tern_orphan *o = orphan_find(s, h->call_slot, h->call_gen);

		if (!o) {
			tern__session_fail(
				s, TERN_EPEER,
				"reply to a call that is neither in flight nor cancelled");
			return;
		}
		s->cnt.late_replies++;
		orphan_release(s, o);
		return;
	}
	if (h->kind == TERN_MSG_ERR) {
		char msg[TERN_ERRMSG_MAX + 1];
		tern_ctx *ctx = s->ctx;
		struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);
		int outer = rctx->remote_depth;

		memcpy(msg, payload, h->len);
		msg[h->len] = 0;
		release_stages(s, c, TERN_UNEXPORT_ANSWERED);
		/* The status is the peer's: tern_call_status_remote() says so to
		 * this callback, and to no callback nested in it. */
		rctx->remote_depth = ctx->cb_depth + 1;
		complete(s, c, h->status, msg, h->len, true);
		rctx->remote_depth = outer;
	} else if (h->flags & TERN_F_BULK) {
		uint64_t n;

		/* The server wrote the reply into our buffer (or its staging):
		 * no more than we offered, and only what a slot could not hold. */
		memcpy(&n, payload, 8);
		n = le64toh(n);
		if (n > c->reply_offer || n <= s->max_payload) {
			tern__session_fail(s, TERN_EPEER,
					   "bulk reply that no reply buffer can hold");
			return;
		}
		if (c->rep_stage) {
			memcpy(c->reply_buf, c->rep_stage->mr.addr, n);
			s->copy_bytes += n;
		}
		release_stages(s, c, TERN_UNEXPORT_ANSWERED);
		complete(s, c, 0, c->reply_buf, n, true);
	} else if (c->reply_buf) {
		release_stages(s, c, TERN_UNEXPORT_ANSWERED);
		if (h->len > c->reply_cap) {
			complete(s, c, -EMSGSIZE, "reply larger than the reply buffer", 34, true);
			return;
		}
		memcpy(c->reply_buf, payload, h->len);
		complete(s, c, 0, c->reply_buf, h->len, true);
	} else {
		/* a large request's staging, if any */
		release_stages(s, c, TERN_UNEXPORT_ANSWERED);
		complete(s, c, 0, payload, h->len, true);
	}
}

int tern_call_status_remote(tern_session *s)
{
	int depth = s ? tern__rpc_ctx(s->ctx)->remote_depth : 0;

	return depth && depth == s->ctx->cb_depth;
}

void tern__client_send_done(tern_session *s, uint32_t idx)
{
	struct tern_rpc_session *r = tern__rpc(s);
	tern_callslot *c = &r->calls[idx];

	c->send_busy = false;
	if (c->state == TERN_CALL_FREE) {
		r->free_calls[r->nfree_calls++] = idx;
		tern__client_kick(s);
	}
}

void tern__client_fail_all(tern_session *s, int err)
{
	struct tern_rpc_session *r = tern__rpc(s);

	for (uint32_t i = 0; i < s->n; i++) {
		tern_callslot *c = &r->calls[i];
		if (c->state == TERN_CALL_INFLIGHT) {
			/*
			 * The connection failed: the peer may reach this
			 * call's exports no more (withdrawn before the
			 * callback runs), but it may still be inside a copy
			 * it started (shm's split copies run in the peer's
			 * process), so their staging is kept until the
			 * session is freed, after the provider's closed().
			 */
			tern__bulk_unexport(s, c->xd, c->nx, TERN_UNEXPORT_CLOSING);
			c->nx = 0;
			if (c->req_stage || c->rep_stage)
				orphan_take(s, c);
			complete(s, c, err, "", 0, false);
		}
	}
	orphans_down(s);
	while (r->q_len) {
		struct tern_pending e = r->queue[r->q_head];
		r->q_head = (r->q_head + 1) % r->q_cap;
		r->q_len--;
		if (e.cb) {
			s->cnt.calls_completed++;
			s->cnt.errors++;
			TERN_CALLBACK(s->ctx, e.cb(s, err, "", 0, e.user));
		} else if (e.scb) {
			TERN_CALLBACK(s->ctx, e.scb(s, err, e.user));
		}
	}
}

uint64_t tern__client_expire(tern_session *s, uint64_t now_ns)
{
	struct tern_rpc_session *r = tern__rpc(s);
	uint64_t next = 0;

	if (s->state != TERN_S_READY)
		return 0;
	if (r->norphans && (next = orphans_due(s, now_ns)) == UINT64_MAX)
		return 0; /* the session failed */
	for (uint32_t i = 0; i < s->n && s->state == TERN_S_READY; i++) {
		tern_callslot *c = &r->calls[i];
		uint64_t give_up = now_ns + (uint64_t)r->cancel_timeout_ms * 1000000ull;

		if (c->state != TERN_CALL_INFLIGHT || !c->deadline_ns)
			continue;
		if (c->deadline_ns <= now_ns) {
			/* The reply may still come: its receive stays reserved
			 * (replies_expected) and the generation catches it. */
			time_out(s, c, now_ns);
			if (!next || give_up < next)
				next = give_up;
		} else if (!next || c->deadline_ns < next) {
			next = c->deadline_ns;
		}
	}
	tern__client_send_cancels(s);
	for (uint32_t k = 0; k < r->q_len && s->state == TERN_S_READY; k++) {
		struct tern_pending *e = &r->queue[(r->q_head + k) % r->q_cap];

		if ((!e->cb && !e->scb) || !e->deadline_ns)
			continue;
		if (e->deadline_ns <= now_ns) {
			tern_call_cb cb = e->cb;
			tern_send_cb scb = e->scb;

			/* left in place; tern__client_kick skips it */
			e->cb = NULL;
			e->scb = NULL;
			s->cnt.timeouts++;
			s->cnt.errors++;
			if (cb) {
				s->cnt.calls_completed++;
				TERN_CALLBACK(s->ctx, cb(s, -ETIMEDOUT, "", 0, e->user));
			} else {
				TERN_CALLBACK(s->ctx, scb(s, -ETIMEDOUT, e->user));
			}
		} else if (!next || e->deadline_ns < next) {
			next = e->deadline_ns;
		}
	}
	return next;
}

/* ---- synchronous helper ------------------------------------------------------ */

struct sync_call {
	bool done;
	int status;
	struct tern_sync_reply *rep;
};

static void sync_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct sync_call *sc = user;
	struct tern_sync_reply *rep = sc->rep;

	(void)s;
	sc->done = true;
	sc->status = status;
	if (!rep)
		return;
	rep->len = len;
	rep->errmsg[0] = 0;
	if (status < 0) {
		snprintf(rep->errmsg, sizeof(rep->errmsg), "%.*s", (int)len, (const char *)reply);
		rep->len = 0;
	} else if (len > rep->cap && !rep->prefix) {
		sc->status = -EMSGSIZE;
	} else if (len && reply != rep->buf) {
		/* prefix: a newer peer's longer message, read as far as ours goes */
		memcpy(rep->buf, reply, len < rep->cap ? len : rep->cap);
	}
}

int tern_call_sync(tern_session *s, uint32_t method_id, const void *req, size_t len,
		   struct tern_sync_reply *rep, uint32_t timeout_ms)
{
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = timeout_ms};
	struct sync_call sc = {.rep = rep};
	int rc;

	if (!s)
		return -EINVAL;
	if (s->ctx->cb_depth > 0)
		return -EBUSY;
	/* Asked for: the buffer is the call's reply buffer (large replies land
	 * in it directly; an inplace handler then writes into staging). */
	if (rep && rep->buf && rep->direct) {
		o.reply_buf = rep->buf;
		o.reply_cap = rep->cap;
	}
	rc = tern_call(s, method_id, req, len, sync_cb, &sc, &o);
	if (rc)
		return rc;
	while (!sc.done)
		uv_run(s->ctx->loop, UV_RUN_ONCE);
	return sc.status;
}
