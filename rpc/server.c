// SPDX-License-Identifier: MIT
/*
 * server.c - serving requests: dispatch to raw, inplace and deferred
 * handlers, and the replies they make.
 *
 * Request i (i < N) replies from send slot N + i, which it owns from
 * dispatch until the provider reports the reply sent.  A peer can have at
 * most N requests in flight (its credits), but a reply slot is released
 * only at send completion, which may come after the peer already sent the
 * next request on the credit that reply returned; such a request waits in
 * the backlog (bounded by the receive ring) for a reply slot.
 *
 * Sent but unreported: a provider may report send_done() late (verbs asks
 * for a completion every few sends), so a reply slot whose reply is out
 * can stay taken with nothing left to report it: with N - 1 requests held
 * by deferred (long-poll) handlers and the last slot's reply unreported,
 * the request that would release them waits in the backlog for good.  So
 * while a request waits in the backlog, the engine asks the provider to
 * report every send posted so far (tern__session_report_sends()): once
 * when it joins the backlog, which covers every reply posted before, and
 * after every reply posted while the backlog is not empty, which covers
 * the rest.  Every reply slot is then either held by a handler (which
 * answers in its own time) or reported free in bounded time, and the
 * backlog moves whenever one is; nothing is asked while nobody waits.
 *
 * Large messages: a request may name the caller's reply buffer (a bulk
 * descriptor) and may itself be a descriptor, which the server pulls into a
 * staging buffer before the handler runs.  A reply larger than the slot is
 * pushed into the caller's buffer, then a short reply says how long it is.
 *
 * A provider moves a bounded number of transfers at once per connection
 * (verbs 16, shm, tcp and mem 64) and says -EAGAIN past it.  The window
 * (N requests) may be larger, so a transfer the provider refuses waits in
 * bulk_wait, in arrival order, and starts when one of the connection's
 * transfers reports bulk_done(): the provider promises -EAGAIN only while
 * one is in flight (include/tern/transport.h), so every waiting transfer
 * has a completion ahead of it that starts it, or a connection failure
 * that ends it (tern__serve_session_down()).  Nothing waits on a limit
 * that an honest peer can fill.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "rpc.h"

static int clamp_status(int err)
{
	/* Only errno values and TERN_E* codes cross the wire (the client checks). */
	return tern_wire_status_ok(err) ? err : TERN_EREMOTE;
}

/* tern_req_on_reply_sent(): the runtime reads the raw reply's bytes no more. */
static void reply_sent(tern_session *s, tern_reply_sent_cb cb, void *user, int status)
{
	if (cb)
		TERN_CALLBACK(s->ctx, cb(s, status, user));
}

/*
 * Finish a request: give its receive back first (so the credit the reply
 * carries is for a receive that really is posted), then post the reply.
 */
static void finish_flags(tern_req *req, uint8_t kind, int status, uint32_t len, uint8_t flags)
{
	tern_session *s = req->s;
	struct tern_rpc_session *r = tern__rpc(s);
	struct tern_hdr h = {
		.kind = kind,
		.flags = flags,
		.call_slot = req->call_slot,
		.call_gen = req->call_gen,
		.status = status,
		.len = len,
	};
	tern_reply_sent_cb sent = req->sent_cb;

	if (req->mx) {
		/* an inline handler's reply: in the request's turn; a later one may
		 * come from the user's code, between turns */
		tern__metrics_end(req->mx, tern__turn_elapsed(s->ctx, &req->mx_t0, false),
				  kind == TERN_MSG_REP ? 0 : status,
				  flags & TERN_F_BULK ? req->bulk_len : len);
		req->mx = NULL;
	}
	req->sent_cb = NULL;
	req->state = TERN_REQ_FREE;
	req->in = NULL;
	req->out = NULL;
	if (req->in_stage || req->out_stage) { /* a large request's or reply's */
		tern__session_stage_put(s, req->in_stage);
		tern__session_stage_put(s, req->out_stage);
		req->in_stage = req->out_stage = NULL;
	}
	if (s->state != TERN_S_READY) {
		/* The session died while a deferred handler held the request
		 * (or a transfer moved its reply): the reply has nowhere to go. */
		r->free_reqs[r->nfree_reqs++] = req->idx;
		reply_sent(s, sent, req->sent_user, -ECONNRESET);
		tern__session_unref(s);
		return;
	}
	tern__session_repost(s, req->token);
	tern_credits_request_done(&s->cr);
	/* A refusal closes the session once delivered: ask to hear of it. */
	tern__session_send_flags(s, s->n + req->idx, &h, s->refused ? TERN_SEND_CONFIRM : 0);
	/* A request waits for a reply slot: this one must come back. */
	if (r->bl_len)
		tern__session_report_sends(s);
	reply_sent(s, sent, req->sent_user, kind == TERN_MSG_REP ? 0 : status);
}

static void finish(tern_req *req, uint8_t kind, int status, uint32_t len)
{
	finish_flags(req, kind, status, len, 0);
}

static void reply_error(tern_req *req, int err, const char *fallback)
{
	tern_session *s = req->s;
	const char *msg = req->errmsg[0] ? req->errmsg : fallback;
	size_t len = msg ? strnlen(msg, TERN_ERRMSG_MAX) : 0;

	if (s->state == TERN_S_READY && len)
		memcpy(tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE, msg, len);
	finish(req, TERN_MSG_ERR, clamp_status(err), (uint32_t)len);
}

/* Why staging for a request failed, for the caller to read. */
static const char *stage_why(int rc, const char *what)
{
	if (rc == -ENOBUFS)
		return "the server's staging for this session is full (max_staging)";
	return what;
}

/* The client's service check: answer it, then announce or refuse. */
static void check_services(tern_req *req, const void *in, uint32_t len)
{
	tern_session *s = req->s;
	struct tern_rpc_session *r = tern__rpc(s);
	char why[TERN_ERRMSG_MAX];
	uint32_t answer_len = 0;
	int rc;

	if (!s->binding) {
		reply_error(req, TERN_ENOMETHOD, "the service check comes first, once");
		return;
	}
	/* The answer (which of the client's methods are served) is written
	 * straight into the reply slot, which this request owns. */
	rc = tern__services_verify(s->ctx, in, len,
				   tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE,
				   s->max_payload, &answer_len, why, sizeof(why));
	if (rc == TERN_EPEER) {
		/* Nothing will answer it: free the request before the session
		 * goes down, or it would hold the session forever. */
		req->state = TERN_REQ_FREE;
		req->in = NULL;
		r->free_reqs[r->nfree_reqs++] = req->idx;
		tern__session_fail(s, rc, why);
		return;
	}
	if (rc) {
		/* Tell the client why, then close once the answer is out. */
		s->refused = rc;
		s->fail_status = rc;
		snprintf(s->refused_why, sizeof(s->refused_why), "refused a client: %s", why);
		reply_error(req, rc, why);
		return;
	}
	finish(req, TERN_MSG_REP, 0, answer_len);
	if (s->state == TERN_S_READY)
		tern__session_bound(s);
}

/* The slot's room, and no more than the caller's reply buffer holds. */
static size_t slot_cap(const tern_req *req)
{
	size_t cap = req->s->max_payload;

	return req->has_rdesc && req->rdesc.len < cap ? (size_t)req->rdesc.len : cap;
}

/*
 * Where a handler writes its reply: the reply slot, or, when the caller
 * named a reply buffer larger than a slot, a registered staging buffer of
 * that size, from which the reply is pushed with no further copy.
 */
static int reply_target(tern_req *req)
{
	tern_session *s = req->s;
	int rc;

	req->out = tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE;
	req->out_cap = slot_cap(req);
	/* rdesc.len is at most tern__reply_max() (dispatch() checked it) */
	if (req->has_rdesc && req->rdesc.len > s->max_payload && s->conn->ops->bulk_write) {
		if ((rc = tern__session_stage_get(s, req->rdesc.len, &req->out_stage))) {
			req->out = NULL; /* none yet: a later acquire tries again */
			return rc;
		}
		req->out = req->out_stage->mr.addr;
		req->out_cap = req->rdesc.len;
	}
	return 0;
}

/* Why a transfer of the caller's memory failed, for the caller to read. */
static const char *bulk_why(int status, bool reading)
{
/* shm: the exporter copies with process_vm_*, which needs ptrace access */
#define NO_PTRACE                                                                        \
	": no ptrace access between the two processes (shm needs the same uid and yama " \
	"ptrace_scope 0, or CAP_SYS_PTRACE)"
	if (status == -ECANCELED)
		return "the caller cancelled the call";
	if (status == -EPERM)
		return reading ? "could not read the request from the caller" NO_PTRACE
			       : "could not write the reply into the caller's buffer" NO_PTRACE;
#undef NO_PTRACE
	return reading ? "could not read the request from the caller"
		       : "could not write the reply into the caller's buffer";
}

/* Ask the provider to move @req's bytes: pull its request, or push its reply. */
static int bulk_start(tern_req *req)
{
	tern_session *s = req->s;
	int ti = tern__tp_index(s);

	/* The caller cancelled the call: its memory is not ours to touch. */
	if (req->cancelled)
		return -ECANCELED;
	if (req->state == TERN_REQ_FETCHING)
		return s->conn->ops->bulk_read(s->conn, &req->qdesc, &req->in_stage->mr.tm[ti], 0,
					       req->in_len, (uintptr_t)req);
	return s->conn->ops->bulk_write(s->conn, &req->bulk_mr->tm[ti], req->bulk_off,
					req->bulk_len, &req->rdesc, (uintptr_t)req);
}

static void bulk_failed(tern_req *req, int rc)
{
	bool reading = req->state == TERN_REQ_FETCHING;

	req->state = TERN_REQ_HANDLER;
	reply_error(req, rc, bulk_why(rc, reading));
}

/*
 * Start @req's transfer (state FETCHING or WRITING), or, when the provider
 * has as many in flight as it holds, queue it behind those already waiting
 * (never ahead of them: arrival order).
 */
static void bulk_go(tern_req *req)
{
	tern_session *s = req->s;
	struct tern_rpc_session *r = tern__rpc(s);
	int rc;

	if (!r->bw_len) {
		rc = bulk_start(req);
		if (rc != -EAGAIN) {
			if (rc)
				bulk_failed(req, rc);
			return;
		}
	}
	/* each request waits at most once: n places are enough */
	r->bulk_wait[(r->bw_head + r->bw_len++) % s->n] = req->idx;
}

/* A transfer of @s's connection finished: start those waiting, in order. */
static void bulk_kick(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	while (r->bw_len && s->state == TERN_S_READY) {
		tern_req *req = &r->reqs[r->bulk_wait[r->bw_head]];
		int rc = bulk_start(req);

		if (rc == -EAGAIN)
			return;
		r->bw_head = (r->bw_head + 1) % s->n;
		r->bw_len--;
		if (rc)
			bulk_failed(req, rc);
	}
}

/* Push @n bytes of @mr at @off into the caller's reply buffer; reply when done. */
static void bulk_reply(tern_req *req, struct tern_mr *mr, size_t off, size_t n)
{
	req->state = TERN_REQ_WRITING;
	req->bulk_mr = mr;
	req->bulk_off = off;
	req->bulk_len = n;
	bulk_go(req);
}

/* A handler wrote @n bytes at req->out: send them. */
static void reply_out(tern_req *req, size_t n)
{
	tern_session *s = req->s;
	char why[96];

	if (n > req->out_cap) {
		snprintf(why, sizeof(why), "reply of %zu bytes does not fit the %zu-byte buffer", n,
			 req->out_cap);
		reply_error(req, -EMSGSIZE, why);
	} else if (!req->out_stage) {
		/* No copy: the slot the handler wrote is posted as is. */
		finish(req, TERN_MSG_REP, 0, (uint32_t)n);
	} else if (n <= s->max_payload) {
		/* It fit a slot after all: one small copy beats a transfer. */
		memcpy(tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE, req->out, n);
		s->copy_bytes += n;
		finish(req, TERN_MSG_REP, 0, (uint32_t)n);
	} else {
		bulk_reply(req, &req->out_stage->mr, 0, n);
	}
}

/* A raw handler's bytes: into the slot, or pushed into the caller's buffer. */
static void reply_iov(tern_req *req, const struct tern_iov *iov)
{
	tern_session *s = req->s;
	struct tern_mr *mr;
	const char *from = iov->base; /* where in mr the reply starts */
	char why[112];

	if (iov->len <= slot_cap(req)) {
		/* The one copy of the raw path. */
		if (iov->len)
			memcpy(tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE, iov->base,
			       iov->len);
		s->copy_bytes += iov->len;
		finish(req, TERN_MSG_REP, 0, (uint32_t)iov->len);
		return;
	}
	if (!req->has_rdesc || !s->conn->ops->bulk_write) {
		snprintf(why, sizeof(why),
			 "reply of %zu bytes exceeds the slot payload %u (name a reply buffer)",
			 iov->len, s->max_payload);
		reply_error(req, -EMSGSIZE, why);
		return;
	}
	if (iov->len > req->rdesc.len) {
		snprintf(why, sizeof(why),
			 "reply of %zu bytes exceeds the caller's %llu-byte buffer", iov->len,
			 (unsigned long long)req->rdesc.len);
		reply_error(req, -EMSGSIZE, why);
		return;
	}
	/*
	 * Zero copy where the bytes are registered and stay as they are until
	 * the transfer is done: the pulled request itself (an echo), or a
	 * region of the user's whose handler will be told when the reply went
	 * (tern_req_on_reply_sent()).  Otherwise the bytes are the handler's
	 * only until it returned (struct tern_iov): stage them, at the start
	 * of the staging.
	 */
	if (req->in_stage && tern__mr_contains(&req->in_stage->mr, iov->base, iov->len)) {
		mr = &req->in_stage->mr;
	} else if (!req->sent_cb || !(mr = tern__mr_find(s->ctx, iov->base, iov->len))) {
		int rc = tern__session_stage_get(s, iov->len, &req->out_stage);

		if (rc) {
			reply_error(req, rc, stage_why(rc, "no memory to stage the reply"));
			return;
		}
		memcpy(req->out_stage->mr.addr, iov->base, iov->len);
		s->copy_bytes += iov->len;
		mr = &req->out_stage->mr;
		from = mr->addr; /* the copy, not the handler's bytes */
	}
	bulk_reply(req, mr, (size_t)(from - (const char *)mr->addr), iov->len);
}

/* Run the handler of request @req, whose bytes are req->in / req->in_len. */
static void invoke(tern_session *s, tern_req *req, const struct tern_method *m)
{
	const void *in = req->in;
	size_t in_len = req->in_len;
	uint32_t token = req->token;
	char why[96];
	int rc;

	if (m->kind != TERN_KIND_ONEWAY && !(m->kind == TERN_KIND_BATCH && m->fn.batch->oneway))
		s->cnt.calls_served++;
	switch (m->kind) {
	case TERN_KIND_RAW: {
		struct tern_iov iov = {0};

		req->in_raw = true;
		TERN_CALLBACK(s->ctx, rc = m->fn.raw(req, in, in_len, &iov, m->user));
		req->in_raw = false;
		if (rc < 0)
			reply_error(req, rc, NULL);
		else
			reply_iov(req, &iov);
		break;
	}
	case TERN_KIND_INPLACE: {
		ssize_t n;

		if ((rc = reply_target(req))) {
			reply_error(req, rc, stage_why(rc, "no memory for the reply"));
			break;
		}
		TERN_CALLBACK(s->ctx,
			      n = m->fn.inplace(req, in, in_len, req->out, req->out_cap, m->user));
		if (n < 0)
			reply_error(req, (int)n, NULL);
		else
			reply_out(req, (size_t)n);
		break;
	}
	case TERN_KIND_ONEWAY:
		snprintf(why, sizeof(why), "method 0x%08x is one-way here", req->method);
		reply_error(req, TERN_ENOMETHOD, why);
		break;
	case TERN_KIND_BATCH:
		if (m->fn.batch->oneway) {
			snprintf(why, sizeof(why), "method 0x%08x is one-way here", req->method);
			reply_error(req, TERN_ENOMETHOD, why);
			break;
		}
		/* The reply slot is the item's out: batch handlers write in place. */
		tern__batch_add(m->fn.batch, req,
				tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE, slot_cap(req));
		break;
	case TERN_KIND_DEFERRED:
		req->state = TERN_REQ_DEFERRED;
		TERN_CALLBACK(s->ctx, rc = m->fn.deferred(req, in, in_len, m->user));
		/* The handler may already have replied (and freed the req). */
		if (rc < 0 && req->state == TERN_REQ_DEFERRED && req->token == token)
			reply_error(req, rc, NULL);
		break;
	}
}

/*
 * The descriptors a request starts with, read once (on shm the peer can
 * still write the slot they lie in) and held to what the handshake told the
 * peer: a reply buffer of at most tern__reply_max(), a request of at most
 * our max_msg, and both only where the transport moves large messages.  An
 * honest peer checks all of it before sending, so anything over is a lie.
 */
static int request_descs(tern_session *s, const struct tern_hdr *h, const uint8_t *p,
			 struct tern_bulk_desc *rdesc, struct tern_bulk_desc *q, char *why,
			 size_t why_len)
{
	if (h->method == TERN_METHOD_SVC_CHECK && h->flags) {
		snprintf(why, why_len, "service check with large-message descriptors");
		return TERN_EPEER;
	}
	/* Lengths were checked with the header: the descriptors are there. */
	if (h->flags & TERN_F_REPLY_DESC) {
		tern_bulk_desc_decode(p, rdesc);
		p += TERN_BULK_DESC_SIZE;
		if (rdesc->len > tern__reply_max(s)) {
			snprintf(why, why_len,
				 "request names a reply buffer of %llu bytes, over the %llu "
				 "the handshake allows",
				 (unsigned long long)rdesc->len,
				 (unsigned long long)tern__reply_max(s));
			return TERN_EPEER;
		}
	}
	if (h->flags & TERN_F_BULK) {
		tern_bulk_desc_decode(p, q);
		if (!s->conn->ops->bulk_read || q->len > s->max_msg) {
			snprintf(why, why_len,
				 "request of %llu bytes, over the max_msg of %u announced here",
				 (unsigned long long)q->len, s->max_msg);
			return TERN_EPEER;
		}
	}
	return 0;
}

static void dispatch(tern_session *s, uint32_t token, const struct tern_hdr *h, const void *in,
		     bool cancelled)
{
	struct tern_rpc_session *r = tern__rpc(s);
	const struct tern_method *m =
		tern__methods_find(&tern__rpc_ctx(s->ctx)->methods, h->method);
	struct tern_bulk_desc rdesc = {0}, q = {0};
	const uint8_t *p = in;
	uint32_t plen = h->len;
	tern_req *req;
	char why[128];
	int rc;

	/* A request with no flags has no descriptors: nothing to read or judge. */
	if (h->flags && (rc = request_descs(s, h, p, &rdesc, &q, why, sizeof(why)))) {
		tern__session_fail(s, rc, why);
		return;
	}
	req = &r->reqs[r->free_reqs[--r->nfree_reqs]];
	req->state = TERN_REQ_HANDLER;
	req->sent_cb = NULL;
	req->token = token;
	req->call_slot = h->call_slot;
	req->call_gen = h->call_gen;
	req->method = h->method;
	req->errmsg[0] = 0;
	req->cancelled = cancelled;
	req->has_rdesc = (h->flags & TERN_F_REPLY_DESC) != 0;
	req->rdesc = rdesc;
	req->out = NULL;
	if (req->has_rdesc) {
		p += TERN_BULK_DESC_SIZE;
		plen -= TERN_BULK_DESC_SIZE;
	}
	req->in = p;
	req->in_len = plen;
	req->mx = NULL;
	if (tern__rpc_ctx(s->ctx)->mx &&
	    (req->mx =
		     tern__metrics_begin(tern__rpc_ctx(s->ctx)->mx, TERN_METRICS_SERVED, h->method,
					 m != NULL, h->flags & TERN_F_BULK ? q.len : plen)))
		tern__turn_stamp(s->ctx, &req->mx_t0); /* a request arrives in a turn */

	if (cancelled) {
		/* cancelled while it waited for a reply slot: answer, run nothing */
		reply_error(req, -ECANCELED, bulk_why(-ECANCELED, true));
		return;
	}
	if (h->method == TERN_METHOD_SVC_CHECK) {
		check_services(req, p, plen);
		return;
	}
	if (!m) {
		snprintf(why, sizeof(why), "no method 0x%08x here", h->method);
		reply_error(req, TERN_ENOMETHOD, why);
		return;
	}
	if (!(h->flags & TERN_F_BULK)) {
		invoke(s, req, m);
		return;
	}
	/* A large request (at most max_msg): pull it into staging, then run
	 * the handler. */
	if ((rc = tern__session_stage_get(s, q.len, &req->in_stage))) {
		reply_error(req, rc, stage_why(rc, "no memory to receive the request"));
		return;
	}
	req->in = req->in_stage->mr.addr;
	req->in_len = (uint32_t)q.len;
	req->qdesc = q;
	req->state = TERN_REQ_FETCHING;
	bulk_go(req);
}

/* Only servers pull requests and push replies: the cookie is the request. */
void tern__serve_bulk_done(tern_session *s, uint64_t cookie, int status)
{
	tern_req *req = (tern_req *)(uintptr_t)cookie;
	const struct tern_method *m;
	uint64_t n = htole64(req->bulk_len);
	char why[96];

	if (s->state != TERN_S_READY) {
		finish(req, TERN_MSG_ERR, -ECONNRESET, 0); /* releases it */
		return;
	}
	/* The provider has room for one more: the first waiting goes now,
	 * before anything this completion starts. */
	bulk_kick(s);
	if (req->state == TERN_REQ_FETCHING) {
		req->state = TERN_REQ_HANDLER;
		if (status) {
			reply_error(req, status, bulk_why(status, true));
			return;
		}
		s->cnt.bulk_bytes_read += req->in_len;
		if (req->cancelled) {
			/* cancelled while we pulled: the handler never runs */
			reply_error(req, -ECANCELED, bulk_why(-ECANCELED, true));
			return;
		}
		m = tern__methods_find(&tern__rpc_ctx(s->ctx)->methods, req->method);
		if (!m) {
			snprintf(why, sizeof(why), "no method 0x%08x here", req->method);
			reply_error(req, TERN_ENOMETHOD, why);
			return;
		}
		invoke(s, req, m);
	} else if (req->state == TERN_REQ_WRITING) {
		req->state = TERN_REQ_HANDLER;
		if (status) {
			reply_error(req, status, bulk_why(status, false));
			return;
		}
		s->cnt.bulk_bytes_written += req->bulk_len;
		memcpy(tern__send_slot(s, s->n + req->idx) + TERN_HDR_SIZE, &n, 8);
		finish_flags(req, TERN_MSG_REP, 0, 8, TERN_F_BULK);
	}
}

/* A one-way message's receive is free again: one credit owed. */
static void oneway_release(tern_session *s, uint32_t token)
{
	if (s->state != TERN_S_READY)
		return;
	tern__session_repost(s, token);
	tern_credits_request_done(&s->cr);
	tern__session_mark_dirty(s);
}

/* A pool entry for a one-way message: credits bound them, one is free. */
static tern_req *oneway_take(tern_session *s, uint32_t token, const struct tern_hdr *h,
			     const void *in)
{
	struct tern_rpc_session *r = tern__rpc(s);
	tern_req *req = &r->owreqs[r->free_owreqs[--r->nfree_owreqs]];

	req->token = token;
	req->in = in;
	req->in_len = h->len;
	req->method = h->method;
	req->errmsg[0] = 0;
	req->holds = 0;
	return req;
}

static void serve_oneway_now(tern_session *s, uint32_t token, const struct tern_hdr *h,
			     const void *in)
{
	const struct tern_method *m =
		tern__methods_find(&tern__rpc_ctx(s->ctx)->methods, h->method);
	tern_req *req;

	if (m && m->kind == TERN_KIND_ONEWAY) {
		req = oneway_take(s, token, h, in);
		req->state = TERN_REQ_HANDLER;
		s->cnt.oneway_received++;
		TERN_CALLBACK(s->ctx, m->fn.oneway(req, in, h->len, m->user));
		if (req->errmsg[0]) {
			/* the handler rejected it: no reply can say so, count it */
			s->cnt.oneway_dropped++;
			tern__set_error(s->ctx, "%s: dropped a one-way message: %s", s->peer,
					req->errmsg);
		}
		tern__serve_batch_done(req, 0); /* gives the slot back, unless held */
	} else if (m && m->kind == TERN_KIND_BATCH && m->fn.batch->oneway) {
		req = oneway_take(s, token, h, in);
		s->cnt.oneway_received++;
		tern__batch_add(m->fn.batch, req, NULL, 0);
	} else {
		/* No reply can carry an error back: count it, say why, go on. */
		s->cnt.oneway_dropped++;
		tern__set_error(s->ctx, "%s: dropped a one-way message for method 0x%08x: %s",
				s->peer, h->method,
				m ? "not a one-way method here" : "no such method here");
		oneway_release(s, token);
	}
}

/* Keep arrival order: behind requests waiting for a reply slot, wait too. */
static void backlog_push(tern_session *s, uint32_t token, const struct tern_hdr *h,
			 const void *payload)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct tern_backlog_entry *b = r->backlog;
	uint32_t at;

	if (r->bl_len == r->bl_cap) {
		tern__session_fail(s, TERN_EPEER, "more requests than receive slots");
		return;
	}
	at = (r->bl_head + r->bl_len) % r->bl_cap;
	b[at].token = token;
	b[at].payload = payload;
	b[at].h = *h;
	b[at].cancelled = false;
	r->bl_len++;
	/* the replies already sent must come back (see the top of the file) */
	tern__session_report_sends(s);
}

void tern__serve_request(tern_session *s, uint32_t token, const struct tern_hdr *h,
			 const void *payload)
{
	struct tern_rpc_session *r = tern__rpc(s);

	if (r->nfree_reqs == 0 || r->bl_len)
		backlog_push(s, token, h, payload); /* no reply slot free yet */
	else
		dispatch(s, token, h, payload, false);
}

void tern__serve_oneway(tern_session *s, uint32_t token, const struct tern_hdr *h,
			const void *payload)
{
	if (tern__rpc(s)->bl_len)
		backlog_push(s, token, h, payload);
	else
		serve_oneway_now(s, token, h, payload);
}

void tern__serve_batch_done(tern_req *req, ssize_t status)
{
	tern_session *s = req->s;
	struct tern_rpc_session *r = tern__rpc(s);
	char why[96];

	if (req->holds) {
		/* tern_req_hold(): the slot (and its credit) stays taken */
		req->state = TERN_REQ_HELD;
		req->held_status = status;
		return;
	}
	if (req->oneway) {
		req->state = TERN_REQ_FREE;
		req->in = NULL;
		r->free_owreqs[r->nfree_owreqs++] = req->idx;
		if (s->state != TERN_S_READY) {
			tern__session_unref(s);
			return;
		}
		oneway_release(s, req->token);
		return;
	}
	if (status < 0) {
		reply_error(req, (int)status, NULL);
	} else if ((size_t)status > slot_cap(req)) {
		snprintf(why, sizeof(why), "batch item claims %zd bytes in a %zu-byte slot", status,
			 slot_cap(req));
		reply_error(req, -EMSGSIZE, why);
	} else {
		finish(req, TERN_MSG_REP, 0, (uint32_t)status);
	}
}

void tern__serve_reply_slot_free(tern_session *s, uint32_t idx)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct tern_backlog_entry *b = r->backlog;

	r->free_reqs[r->nfree_reqs++] = idx;
	if (s->refused) {
		/* the refusal is delivered: now close */
		tern__session_fail(s, s->refused, s->refused_why);
		return;
	}
	while (r->bl_len && s->state == TERN_S_READY) {
		struct tern_backlog_entry e = b[r->bl_head];

		if (e.h.kind == TERN_MSG_REQ && !r->nfree_reqs)
			break;
		r->bl_head = (r->bl_head + 1) % r->bl_cap;
		r->bl_len--;
		if (e.h.kind == TERN_MSG_REQ)
			dispatch(s, e.token, &e.h, e.payload, e.cancelled);
		else
			serve_oneway_now(s, e.token, &e.h, e.payload);
	}
}

void tern__serve_session_down(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	/* Requests still in a handler (it may close the session itself) or
	 * held by a deferred handler keep the session's memory until they
	 * finish. */
	for (uint32_t i = 0; i < s->n; i++) {
		if (r->reqs[i].state != TERN_REQ_FREE)
			s->refs++;
		if (r->owreqs[i].state != TERN_REQ_FREE)
			s->refs++;
	}
	r->bl_len = 0;
	/* Transfers still waiting for their turn never reach the provider,
	 * so no bulk_done() will release them: release them here. */
	while (r->bw_len) {
		tern_req *req = &r->reqs[r->bulk_wait[r->bw_head]];

		r->bw_head = (r->bw_head + 1) % s->n;
		r->bw_len--;
		finish(req, TERN_MSG_ERR, -ECONNRESET, 0);
	}
	/* Gathered requests cannot be answered now: release them. */
	tern__batch_drop_session(s->ctx, s);
}

/*
 * The caller cancelled call (@slot, @gen), which timed out (wire.h): from
 * now on its memory is not ours to touch.  A request still waiting for a
 * reply slot, or for its pull, is answered with -ECANCELED and its handler
 * never runs; one being pulled is answered so once the pull is done; a
 * handler that has it (deferred, batched) answers in its own time and can
 * see it in tern_req_cancelled(), and its reply is not pushed into the
 * caller's buffer.  One reply per call either way.
 */
static void cancel_one(tern_session *s, uint16_t slot, uint32_t gen)
{
	struct tern_rpc_session *r = tern__rpc(s);

	for (uint32_t i = 0; i < s->n; i++) {
		tern_req *req = &r->reqs[i];

		if (req->state != TERN_REQ_FREE && req->call_slot == slot && req->call_gen == gen) {
			req->cancelled = true;
			return;
		}
	}
	for (uint32_t k = 0; k < r->bl_len; k++) {
		struct tern_backlog_entry *e = &r->backlog[(r->bl_head + k) % r->bl_cap];

		if (e->h.kind == TERN_MSG_REQ && e->h.call_slot == slot && e->h.call_gen == gen) {
			e->cancelled = true;
			return;
		}
	}
	/* not here: answered already, the reply crossed the cancel */
}

void tern__serve_cancel(tern_session *s, const void *entries, uint32_t len)
{
	const uint8_t *p = entries;

	/* copied out entry by entry: on shm the peer can still write the slot */
	for (uint32_t off = 0; off + TERN_CANCEL_ENTRY_SIZE <= len && s->state == TERN_S_READY;
	     off += TERN_CANCEL_ENTRY_SIZE) {
		uint16_t slot;
		uint32_t gen;

		if (!tern_cancel_entry_decode(p + off, &slot, &gen) || slot >= s->n) {
			tern__session_fail(s, TERN_EPEER, "cancel of a call slot out of range");
			return;
		}
		cancel_one(s, slot, gen);
	}
}

/* ---- the request API ------------------------------------------------------- */

int tern_req_cancelled(tern_req *req)
{
	return req && req->cancelled;
}

tern_session *tern_req_session(tern_req *req)
{
	return req ? req->s : NULL;
}

uint32_t tern_req_method(tern_req *req)
{
	return req ? req->method : 0;
}

int tern_req_on_reply_sent(tern_req *req, tern_reply_sent_cb cb, void *user)
{
	if (!req || !cb || !req->in_raw)
		return -EINVAL;
	req->sent_cb = cb;
	req->sent_user = user;
	return 0;
}

void tern__serve_session_fini(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	for (uint32_t i = 0; r->reqs && i < s->n; i++) {
		tern_req *req = &r->reqs[i];
		tern_reply_sent_cb sent = req->sent_cb;

		/* requests nobody will finish now (a deferred handler's, when
		 * tern_ctx_destroy() frees the session): their staging, and a
		 * raw reply still counted on, which will not go */
		req->sent_cb = NULL;
		reply_sent(s, sent, req->sent_user, -ECANCELED);
		if (req->mx && !req->mx_t0.ns)
			tern__turn_stamp_drop(s->ctx, &req->mx_t0); /* its memory goes */
		tern__session_stage_put(s, req->in_stage);
		tern__session_stage_put(s, req->out_stage);
		req->in_stage = req->out_stage = NULL;
	}
}

void tern_req_set_error(tern_req *req, const char *msg)
{
	if (!req)
		return;
	snprintf(req->errmsg, sizeof(req->errmsg), "%s", msg ? msg : "");
}

tern_req *tern_req_hold(tern_req *req)
{
	if (!req)
		return NULL;
	switch (req->state) {
	case TERN_REQ_HANDLER:
		if (!req->oneway)
			return NULL; /* a raw or inplace call: use a deferred handler */
		break;
	case TERN_REQ_BATCHED:
	case TERN_REQ_HELD:
		break;
	default:
		return NULL;
	}
	req->holds++;
	return req;
}

int tern_req_release(tern_req *req)
{
	tern_ctx *ctx;

	if (!req || !req->holds)
		return -EINVAL;
	if (--req->holds || req->state != TERN_REQ_HELD)
		return 0;  /* still held, or its handler has not returned yet */
	ctx = req->s->ctx; /* (the session may be freed below) */
	/* Give the slot back (a batch call: send its reply) as the handler's
	 * return would have; after the session went down, just let go. */
	tern__serve_batch_done(req, req->held_status);
	/*
	 * A one-way message's credit is owed now, and owed credits leave from
	 * the loop (tern__session_flush_dirty()), after a batch of completions
	 * or a timer.  Inside a tern callback one of those follows; from the
	 * application's own code, in event progress, nothing may come: the
	 * peer, its credits all held, has nothing left to send.  So wake the
	 * loop, as fail_soon() does.
	 */
	if (!ctx->cb_depth && !tern_list_empty(&ctx->dirty))
		tern__wake_soon(ctx);
	return 0;
}

int tern_reply_acquire(tern_req *req, void **out, size_t *cap)
{
	int rc;

	if (!req || !out || !cap || req->state != TERN_REQ_DEFERRED)
		return -EINVAL;
	if (req->s->state != TERN_S_READY) {
		/* Nobody to reply to: finish it here, so a handler that just
		 * gives up does not hold the session's memory forever. */
		finish(req, TERN_MSG_ERR, -ECONNRESET, 0);
		return -ECONNRESET;
	}
	if (!req->out && (rc = reply_target(req)))
		return rc;
	*out = req->out;
	*cap = req->out_cap;
	return 0;
}

int tern_reply_commit(tern_req *req, size_t len)
{
	tern_session *s;
	int rc;

	if (!req || req->state != TERN_REQ_DEFERRED)
		return -EINVAL;
	s = req->s;
	if (s->state != TERN_S_READY) {
		finish(req, TERN_MSG_REP, 0, 0); /* drops it, releases the session */
		return -ECONNRESET;
	}
	if (!req->out && (rc = reply_target(req))) {
		req->errmsg[0] = 0;
		reply_error(req, rc, stage_why(rc, "no memory for the reply"));
		return rc;
	}
	if (len > req->out_cap) {
		req->errmsg[0] = 0;
		reply_out(req, len); /* the error reply */
		return -EMSGSIZE;
	}
	reply_out(req, len);
	return 0;
}

int tern_reply_error(tern_req *req, int err, const char *msg)
{
	tern_session *s;

	if (!req || req->state != TERN_REQ_DEFERRED || err >= 0)
		return -EINVAL;
	s = req->s;
	if (s->state != TERN_S_READY) {
		finish(req, TERN_MSG_ERR, err, 0);
		return -ECONNRESET;
	}
	if (msg)
		tern_req_set_error(req, msg);
	reply_error(req, err, NULL);
	return 0;
}
