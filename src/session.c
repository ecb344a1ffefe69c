// SPDX-License-Identifier: MIT
/*
 * session.c - one connection to one peer: its slot rings, its credits, its
 * state machine, and the transport upcalls that drive it.
 *
 * Send slot layout (2N + C slots of slot_size bytes, N = slot_count):
 *
 *   [0, N)        request slots: call slot i sends from send slot i
 *   [N, 2N)       reply slots: request i being served replies from N + i
 *   [2N, 2N + C)  control slots: credit messages
 *
 * Requests and replies never share a slot, so when both peers call each
 * other at once a reply can never overwrite a request still being read
 * (the SlimeRPC bug).  The receive side has 2N + C posted receives; see
 * credit.h for why that is exactly enough.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

static void session_free(tern_session *s)
{
	/* the floor above first: it may give staging back to the session */
	s->up->session_fini(s);
	s->ctx->session_heap -= s->heap;
	/* the last request pointing into the slots is done: let them go */
	if (s->rx_release)
		s->rx_release(s->rx_arg);
	tern_list_del(&s->link);
	tern_list_del(&s->dirty);
	free(s);
}

void tern__session_unref(tern_session *s)
{
	if (--s->refs == 0)
		session_free(s);
}

static int opts_copy(const struct tern_session_opts *in, struct tern_session_opts *o)
{
	memset(o, 0, sizeof(*o));
	if (in) {
		size_t n = in->size ? in->size : sizeof(*o);
		if (n > sizeof(*o))
			return -EINVAL;
		memcpy(o, in, n);
	}
	if (!o->slot_size)
		o->slot_size = TERN_DEFAULT_SLOT_SIZE;
	if (!o->slot_count)
		o->slot_count = TERN_DEFAULT_SLOT_COUNT;
	if (!o->connect_timeout_ms)
		o->connect_timeout_ms = TERN_DEFAULT_CONNECT_TIMEOUT_MS;
	if (o->slot_size < 64 || o->slot_size % 64 || o->slot_size > TERN_MAX_SLOT_SIZE)
		return -EINVAL;
	if (o->slot_count > TERN_MAX_SLOT_COUNT)
		return -EINVAL;
	if (!o->queue_depth)
		o->queue_depth = 4 * o->slot_count;
	if (!o->max_msg)
		o->max_msg = 1u << 30;
	if (!o->max_staging)
		o->max_staging = 4 * (uint64_t)o->max_msg;
	if (!o->cancel_timeout_ms)
		o->cancel_timeout_ms = TERN_DEFAULT_CANCEL_TIMEOUT_MS;
	return 0;
}

int tern__session_alloc(tern_ctx *ctx, const struct tern_session_opts *opts, struct tern_tp *tp,
			const char *uri, tern_session **out)
{
	struct tern_session_opts o;
	tern_session *s;
	uint32_t n;
	int rc;

	if ((rc = opts_copy(opts, &o))) {
		tern__set_error(ctx,
				"bad session options: slot_size must be 64..%u and a multiple of "
				"64, slot_count 1..%u",
				TERN_MAX_SLOT_SIZE, TERN_MAX_SLOT_COUNT);
		return rc;
	}
	n = o.slot_count;
	/* the floor above's part follows, zeroed too (struct tern_upcalls) */
	s = calloc(1, ctx->up->session_size);
	if (!s)
		return -ENOMEM;
	tern_list_init(&s->link);
	tern_list_init(&s->dirty);
	s->ctx = ctx;
	s->up = ctx->up;
	s->refs = 1;
	tern__session_heap(s, ctx->up->session_size);
	s->state = TERN_S_CONNECTING;
	s->n = n;
	s->slot_size = o.slot_size;
	s->max_payload = o.slot_size - TERN_HDR_SIZE;
	s->nonblock = o.nonblock;
	s->call_timeout_ms = o.call_timeout_ms;
	s->schema_hash = o.schema_hash;
	s->tp = tp;
	/* Larger than a slot only if the transport can move bulk data: this
	 * is what the handshake announces, and what the peer is held to. */
	s->max_msg = tp->ops->bulk_export ? o.max_msg : s->max_payload;
	s->max_staging = o.max_staging;
	s->on_close = o.on_close;
	s->data = o.data;
	s->is_server = !uri;
	if (uri)
		snprintf(s->peer, sizeof(s->peer), "%s", uri);
	tern_credits_init(&s->cr, n);
	tern_list_add(&ctx->sessions, &s->link);
	if ((rc = s->up->session_init(s, &o))) {
		session_free(s);
		return rc;
	}
	*out = s;
	return 0;
}

void tern__session_params(const tern_session *s, uint32_t connect_timeout_ms,
			  struct tern_conn_params *p)
{
	memset(p, 0, sizeof(*p));
	p->slot_size = s->slot_size;
	p->send_slots = 2 * s->n + TERN_CTRL_SLOTS;
	p->recv_slots = 2 * s->n + TERN_CTRL_SLOTS;
	p->connect_timeout_ms = connect_timeout_ms;
}

void tern__session_hello(const tern_session *s, struct tern_hello *h)
{
	memset(h, 0, sizeof(*h));
	h->version = TERN_WIRE_VERSION;
	h->slot_size = s->slot_size;
	h->slot_count = s->n;
	h->schema_hash = s->schema_hash;
	h->max_msg = s->max_msg;
	if (s->binds)
		h->flags |= TERN_HELLO_SERVICES;
}

int tern__session_attach(tern_session *s, struct tern_conn *c)
{
	s->conn = c;
	c->owner = s;
	snprintf(s->peer, sizeof(s->peer), "%s://%s", c->ops->scheme, c->peer);
	/* The provider must have given us the geometry we asked for. */
	if (c->slot_size != s->slot_size || c->send_slots != 2 * s->n + TERN_CTRL_SLOTS ||
	    c->recv_slots != 2 * s->n + TERN_CTRL_SLOTS)
		return -EPROTO;
	return 0;
}

void tern__session_mark_dirty(tern_session *s)
{
	if (tern_list_empty(&s->dirty))
		tern_list_add(&s->ctx->dirty, &s->dirty);
}

/*
 * Post send slot @slot with header @h (whose payload is already in place).
 * Every outgoing message carries the credits we owe, so most credits travel
 * for free on replies and requests.
 */
int tern__session_send(tern_session *s, uint32_t slot, struct tern_hdr *h)
{
	return tern__session_send_flags(s, slot, h, 0);
}

/*
 * The transport refused a post: its connection is gone.  We may be inside
 * a user's call (tern_call, tern_send, tern_reply_commit, tern_req_release
 * ...), and failing the session there would run callbacks, this very
 * call's among them, before the user's own call has returned.  So the
 * failure waits for the loop: the session's next flush (at the latest from
 * the deadline timer, armed for now) fails it, and every callback runs from
 * there, once.
 */
static void fail_soon(tern_session *s, int err, const char *why)
{
	if (s->fail_soon || s->state != TERN_S_READY)
		return;
	s->fail_soon = err;
	s->fail_soon_why = why;
	tern__session_mark_dirty(s);
	tern__wake_soon(s->ctx);
}

int tern__session_gone(tern_session *s, int err, const char *why)
{
	/* the session's reason for its calls and its close: a connection the
	 * transport had already given up says -ENOTCONN, which is no reason
	 * a callback documents; the connection was reset */
	fail_soon(s, err == -ENOTCONN ? -ECONNRESET : err, why);
	return -ENOTCONN;
}

int tern__session_send_flags(tern_session *s, uint32_t slot, struct tern_hdr *h, uint32_t flags)
{
	int rc;

	tern_credits_stamp(&s->cr, h);
	h->seq = s->tx_seq++;
	h->reserved = 0;
	tern_hdr_encode(tern__send_slot(s, slot), h);
	s->last_send_slot = slot;
	s->last_send_len = TERN_HDR_SIZE + h->len;
	rc = s->conn->ops->post_send(s->conn, slot, TERN_HDR_SIZE + h->len, flags);
	if (rc) {
		fail_soon(s, rc, "post_send failed");
		return rc;
	}
	s->cnt.bytes_sent += h->len;
	return 0;
}

void tern__session_repost(tern_session *s, uint32_t token)
{
	int rc;

	if (s->state != TERN_S_READY)
		return; /* tearing down: the provider flushes it */
	rc = s->conn->ops->post_recv(s->conn, token);
	if (rc)
		fail_soon(s, rc, "post_recv failed");
}

/*
 * The floor above waits for a send slot that may be sent but not reported
 * (a provider that reports send_done() late, as verbs does): ask for the
 * reports now.  A provider that reports every send promptly has no op.
 */
void tern__session_report_sends(tern_session *s)
{
	if (s->state == TERN_S_READY && s->conn && s->conn->ops->report_sends)
		s->conn->ops->report_sends(s->conn);
}

/* Post control slot @i (a credit message, a cancel, or the ACK), confirmed: there are few. */
static void send_ctrl(tern_session *s, uint32_t i, uint8_t kind, uint32_t len)
{
	struct tern_hdr h = {.kind = kind, .len = len};

	s->ctrl_busy |= 1u << i;
	tern__session_send_flags(s, 2 * s->n + i, &h, TERN_SEND_CONFIRM);
}

/* A control slot for a credit message or a cancel (not the ACK's), or C. */
static uint32_t free_ctrl_slot(const tern_session *s)
{
	uint32_t i;

	for (i = 0; i < TERN_CTRL_CREDITS; i++)
		if (!(s->ctrl_busy & (1u << i)))
			break;
	return i;
}

static void send_credit_msg(tern_session *s)
{
	uint32_t i = free_ctrl_slot(s);

	if (i == TERN_CTRL_CREDITS)
		return; /* both in flight; send_done will try again */
	tern_credits_take_credit_msg(&s->cr);
	s->cnt.credit_msgs_sent++;
	send_ctrl(s, i, TERN_MSG_CREDIT, 0);
}

void *tern__session_ctrl_acquire(tern_session *s, uint32_t *cap, uint32_t *idx)
{
	uint32_t i;

	if (s->state != TERN_S_READY || !s->cr.ctrl_tx)
		return NULL;
	if ((i = free_ctrl_slot(s)) == TERN_CTRL_CREDITS)
		return NULL;
	*idx = i;
	*cap = s->max_payload;
	return tern__send_slot(s, 2 * s->n + i) + TERN_HDR_SIZE;
}

void tern__session_ctrl_commit(tern_session *s, uint32_t idx, uint8_t kind, uint32_t len)
{
	tern_credits_take_credit_msg(&s->cr);
	send_ctrl(s, idx, kind, len);
}

/* Credits owed to a peer that has gone quiet this long go back anyway. */
#define TERN_CREDIT_IDLE_NS 1000000ull

/*
 * After a batch of completions: sessions that owe credits and had no
 * message to carry them send a credit message when the peer might need it
 * (enough owed, or the peer running low), or once the peer has been quiet
 * for TERN_CREDIT_IDLE_NS: the tail of a one-way stream then still comes
 * back, so a sender waiting on its credits (tern_session_drain) finishes.
 */
void tern__session_flush_dirty(tern_ctx *ctx)
{
	struct tern_list later;
	uint64_t now = 0;

	tern_list_init(&later);
	while (!tern_list_empty(&ctx->dirty)) {
		tern_session *s = tern_container_of(ctx->dirty.next, tern_session, dirty);

		tern_list_del(&s->dirty);
		if (s->state != TERN_S_READY)
			continue;
		if (s->fail_soon) {
			tern__session_fail(s, s->fail_soon, s->fail_soon_why);
			continue;
		}
		if (tern_credits_want_ack(&s->cr)) {
			/* The peer spent its control credits: give them back
			 * (with whatever else is owed), or once the slot is free. */
			if (!(s->ctrl_busy & (1u << TERN_ACK_SLOT)))
				send_ctrl(s, TERN_ACK_SLOT, TERN_MSG_CTRL_ACK, 0);
			continue;
		}
		/* No control credit: the peer's ACK or next message brings one. */
		if (!s->cr.to_return || !s->cr.ctrl_tx)
			continue;
		if (tern_credits_want_credit_msg(&s->cr)) {
			send_credit_msg(s);
			continue;
		}
		if (s->rx_unstamped && s->last_rx_ns && ctx->next_deadline_ns &&
		    ctx->next_deadline_ns <= s->last_rx_ns + TERN_CREDIT_IDLE_NS) {
			/*
			 * The peer spoke since the last stamp, so it is not
			 * quiet, and a deadline no later than that stamp's
			 * idle time will bring us back to stamp it: no clock
			 * read (this is every round trip of a busy client).
			 * Credits then go back after 1 to 2 idle times.
			 */
			tern_list_add(&later, &s->dirty);
			continue;
		}
		if (!now)
			now = tern__now_ns();
		if (s->rx_unstamped) {
			s->last_rx_ns = now;
			s->rx_unstamped = false;
		}
		if (now - s->last_rx_ns >= TERN_CREDIT_IDLE_NS) {
			send_credit_msg(s);
			continue;
		}
		/* look again once the peer has been quiet long enough */
		tern_list_add(&later, &s->dirty);
		tern__deadline_arm(ctx, s->last_rx_ns + TERN_CREDIT_IDLE_NS);
	}
	while (!tern_list_empty(&later)) {
		struct tern_list *l = later.next;
		tern_list_del(l);
		tern_list_add(&ctx->dirty, l);
	}
}

/* ---- failure and close ---------------------------------------------------- */

/* Record why the session failed; the first reason wins. */
static void note_failure(tern_session *s, int err, const char *why)
{
	if (!s->fail_status)
		s->fail_status = err;
	if (err == TERN_EPEER)
		s->cnt.protocol_errors++;
	tern__set_error(s->ctx, "%s: %s (%s)", s->peer[0] ? s->peer : "session", why,
			tern_strerror(err));
	s->state = TERN_S_CLOSING;
}

void tern__session_fail(tern_session *s, int err, const char *why)
{
	bool was_ready = s->state == TERN_S_READY;

	if (s->state == TERN_S_CLOSING || s->state == TERN_S_CLOSED)
		return;
	note_failure(s, err, why);
	if (was_ready)
		s->up->down(s, err);
	/* Nothing is in flight while connecting; the provider tears down
	 * and reports closed() either way. */
	if (s->conn)
		s->conn->ops->disconnect(s->conn);
}

int tern_session_close(tern_session *s, tern_session_close_cb cb)
{
	if (!s)
		return -EINVAL;
	if (s->user_closed)
		return -EALREADY;
	s->user_closed = true;
	s->close_cb = cb;
	if (s->state == TERN_S_CLOSING || s->state == TERN_S_CLOSED)
		return 0; /* already failing; closed() will call @cb */
	if (s->state == TERN_S_CONNECTING) {
		s->connect_cb = NULL; /* closing a connecting session: only @cb runs */
		tern__session_fail(s, -ECANCELED, "closed while connecting");
		return 0;
	}
	s->fail_status = -ECANCELED;
	tern__session_fail(s, -ECANCELED, "closed");
	return 0;
}

void tern__session_close_all(tern_ctx *ctx)
{
	struct tern_list *l, *nx;

	for (l = ctx->sessions.next; l != &ctx->sessions; l = nx) {
		tern_session *s = tern_container_of(l, tern_session, link);
		nx = l->next;
		if (!s->user_closed && s->state != TERN_S_CLOSED)
			tern_session_close(s, NULL);
	}
}

bool tern__sessions_all_closed(tern_ctx *ctx)
{
	for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next)
		if (tern_container_of(l, tern_session, link)->state != TERN_S_CLOSED)
			return false;
	return true;
}

void tern__session_reap_all(tern_ctx *ctx)
{
	/* Only deferred requests hold these; with the context gone nobody
	 * can finish them. */
	while (!tern_list_empty(&ctx->sessions))
		session_free(tern_container_of(ctx->sessions.next, tern_session, link));
}

/* ---- transport upcalls ----------------------------------------------------- */

/* Why a hello tern_hello_decode() refused was refused, for the error. */
static void hello_mismatch(const struct tern_hello *peer, const char *who, char *why,
			   size_t why_len)
{
	if (!peer->version)
		snprintf(why, why_len, "the %s's handshake is not tern's", who);
	else
		snprintf(why, why_len, "the %s speaks wire version %u, ours is %u", who,
			 (unsigned)peer->version, TERN_WIRE_VERSION);
}

static int ev_incoming(struct tern_tlistener *tl, const void *hs, size_t hs_len,
		       struct tern_conn_params *params, void **owner, void *reply,
		       size_t *reply_len)
{
	tern_listener *l = tl->owner;
	tern_ctx *ctx = l->ctx;
	struct tern_hello peer, ours;
	tern_session *s;
	char why[200];
	int rc;

	*owner = NULL;
	rc = tern__session_alloc(ctx, &l->opts, l->tp, NULL, &s);
	if (rc)
		return rc;
	tern__session_hello(s, &ours);
	ours.flags = TERN_HELLO_REPLY;
	rc = tern_hello_decode(hs, hs_len, &peer);
	if (rc) {
		hello_mismatch(&peer, "client", why, sizeof(why));
	} else {
		rc = tern_hello_match(&ours, &peer, why, sizeof(why));
	}
	if (rc) {
		/* Refuse, telling the client why and what we expected. */
		ours.status = rc;
		tern_hello_encode(reply, &ours);
		*reply_len = sizeof(struct tern_wire_hello);
		tern__set_error(ctx, "%s: refused a connection: %s", l->uri, why);
		session_free(s);
		if (l->cb)
			TERN_CALLBACK(ctx, l->cb(l, NULL, rc));
		return rc;
	}
	tern_hello_encode(reply, &ours);
	*reply_len = sizeof(struct tern_wire_hello);
	/* the accept's set-up deadline is the listener's, like the connect's */
	tern__session_params(s, l->opts.connect_timeout_ms, params);
	s->peer_max_msg = peer.max_msg ? peer.max_msg : s->max_payload;
	/* The client will check our services before anything else. */
	s->binding = (peer.flags & TERN_HELLO_SERVICES) != 0;
	s->listener = l;
	*owner = s;
	return 0;
}

static void session_ready(tern_session *s)
{
	s->state = TERN_S_READY;
}

/*
 * The upcalls keep the connection's lifecycle for every provider: the
 * engine knows what it was told (the session's state), so a provider
 * reports what happens as it happens and remembers nothing of it.  An
 * upcall on a connection the engine does not know (owner NULL: refused,
 * or given up before the engine had it) is ignored; so is a report that
 * comes too late to matter (a failure after the session already failed,
 * or after the engine asked to disconnect).
 */

static void ev_accepted(struct tern_conn *c, int status)
{
	tern_session *s = c->owner;

	if (!s)
		return; /* refused */
	if (s->state != TERN_S_CONNECTING) {
		/*
		 * Closed while the provider was still setting it up
		 * (tern_ctx_destroy() closes every session): the engine had no
		 * connection to disconnect then, it has one now.
		 */
		if (s->state == TERN_S_CLOSING && !status)
			c->ops->disconnect(c);
		return;
	}
	s->conn = c;
	if (status) {
		note_failure(s, status, "accept failed"); /* the provider tears it down */
		return;
	}
	if (tern__session_attach(s, c)) {
		tern__session_fail(s, -EPROTO, "the transport did not give the requested geometry");
		return;
	}
	session_ready(s);
	if (!s->binding)
		tern__session_bound(s);
}

void tern__session_bound(tern_session *s)
{
	tern_listener *l = s->listener;

	s->binding = false;
	if (s->is_server) {
		s->announced = true;
		/* The listener may have been closed meanwhile; the session lives on. */
		if (l && l->cb)
			TERN_CALLBACK(s->ctx, l->cb(l, s, 0));
	} else if (s->connect_cb) {
		tern_connect_cb cb = s->connect_cb;

		s->connect_cb = NULL;
		TERN_CALLBACK(s->ctx, cb(s, 0));
	}
}

/* Client: the connection was not made (@status), or the server refused it (@hs). */
static int connect_failed(tern_session *s, int status, const void *hs, size_t hs_len)
{
	struct tern_hello peer, ours;
	char why[200];
	int rc = tern_hello_decode(hs, hs_len, &peer); /* none: all zero */

	/* A tern server's refusal carries its reason and its geometry; one of
	 * another wire version (it refused ours) says so in its version. */
	if (rc == 0 && peer.status < 0) {
		tern__session_hello(s, &ours);
		if (tern_hello_match(&ours, &peer, why, sizeof(why)) == 0)
			snprintf(why, sizeof(why), "%s", tern_strerror(peer.status));
		status = peer.status;
		note_failure(s, status, why);
	} else if (rc && peer.version && peer.status < 0) {
		hello_mismatch(&peer, "server", why, sizeof(why));
		status = TERN_EVERSION;
		note_failure(s, status, why);
	} else {
		note_failure(s, status,
			     status == -ECONNREFUSED ? "connection refused (no listener?)"
			     : status == -ETIMEDOUT  ? "connect timed out"
						     : "connect failed");
	}
	return status; /* the provider tears it down */
}

static int ev_connected(struct tern_conn *c, int status, const void *hs, size_t hs_len)
{
	tern_session *s = c->owner;
	struct tern_hello peer, ours;
	char why[200];
	int rc;

	if (!s || s->state != TERN_S_CONNECTING)
		return status ? status : -ECONNABORTED; /* failed already: disconnect */
	if (status)
		return connect_failed(s, status, hs, hs_len);
	tern__session_hello(s, &ours);
	rc = tern_hello_decode(hs, hs_len, &peer);
	if (rc) {
		hello_mismatch(&peer, "server", why, sizeof(why));
		note_failure(s, rc, why);
		return rc;
	}
	rc = tern_hello_match(&ours, &peer, why, sizeof(why));
	s->peer_max_msg = peer.max_msg ? peer.max_msg : s->max_payload;
	if (!rc && tern__session_attach(s, c)) {
		rc = -EPROTO;
		snprintf(why, sizeof(why), "the transport did not give the requested geometry");
	}
	if (rc) {
		note_failure(s, rc, why);
		return rc; /* the provider disconnects */
	}
	session_ready(s);
	if (s->binds) {
		/* The floor above checks the server before the user may call. */
		s->binding = true;
		s->up->bind(s);
		return 0;
	}
	tern__session_bound(s);
	return 0;
}

static void ev_recv(struct tern_conn *c, uint32_t token, const void *buf, uint32_t len)
{
	tern_session *s = c->owner;
	const char *why = NULL;
	struct tern_hdr h;
	const uint8_t *payload = (const uint8_t *)buf + TERN_HDR_SIZE;
	int rc;

	if (s->state != TERN_S_READY)
		return;
	/* Nothing from the peer is read before it is checked. */
	if (len < TERN_HDR_SIZE) {
		tern__session_fail(s, TERN_EPEER, "message shorter than a header");
		return;
	}
	tern_hdr_decode(buf, &h);
	rc = tern_hdr_plain(&h, len, s->n, s->slot_size, s->rx_seq)
		     ? 0
		     : tern_hdr_check(&h, len, s->n, s->slot_size, s->rx_seq, &why);
	if (!rc && s->binding &&
	    !(s->is_server ? h.kind == TERN_MSG_REQ && h.method == TERN_METHOD_SVC_CHECK
			   : h.kind == TERN_MSG_REP || h.kind == TERN_MSG_ERR)) {
		/* Nothing but the check and its answer before the check is done. */
		why = "message before the service check completed";
		rc = TERN_EPEER;
	}
	if (!rc)
		rc = tern_credits_on_recv(&s->cr, &h, &why);
	if (rc) {
		tern__session_fail(s, rc, why);
		return;
	}
	s->rx_seq++;
	/* Stamped when someone asks (flush_dirty): a clock read per message
	 * costs more than the rest of this function. */
	s->rx_unstamped = true;
	s->cnt.bytes_received += h.len;

	switch (h.kind) {
	case TERN_MSG_REQ:
		s->up->request(s, token, &h, payload);
		break;
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		s->up->reply(s, &h, payload);
		/* The reply was borrowed for the callback only. */
		tern__session_repost(s, token);
		break;
	case TERN_MSG_ONEWAY:
		s->up->oneway(s, token, &h, payload);
		break;
	case TERN_MSG_CREDIT:
		s->cnt.credit_msgs_received++;
		tern__session_repost(s, token);
		break;
	case TERN_MSG_CTRL_ACK:
		tern__session_repost(s, token);
		break;
	case TERN_MSG_CANCEL:
		/* read at once, so its receive goes back at once (credit.h) */
		s->up->cancel(s, payload, h.len);
		tern__session_repost(s, token);
		break;
	}
	if (s->state != TERN_S_READY)
		return;
	/* request credits for calls, control credits for cancels */
	if (h.credits || h.ctrl_credits)
		s->up->credits(s);
	if (s->cr.to_return || tern_credits_want_ack(&s->cr))
		tern__session_mark_dirty(s);
}

static void ev_send_done(struct tern_conn *c, uint32_t slot)
{
	tern_session *s = c->owner;

	if (slot < s->n) {
		s->up->call_sent(s, slot);
	} else if (slot < 2 * s->n) {
		s->up->reply_sent(s, slot - s->n);
	} else if (slot < 2 * s->n + TERN_CTRL_SLOTS) {
		s->ctrl_busy &= ~(1u << (slot - 2 * s->n));
		if (s->cr.to_return || tern_credits_want_ack(&s->cr))
			tern__session_mark_dirty(s);
		/* a control slot is free: a cancel waiting for one may go */
		if (slot - 2 * s->n < TERN_CTRL_CREDITS && s->state == TERN_S_READY)
			s->up->credits(s);
	}
}

/*
 * A failure, at any stage: the first report counts.  While the connection
 * is being set up it is the set-up's failure (the connect callback or the
 * listener's hears of it); later the session's, whose calls fail.
 */
static void ev_error(struct tern_conn *c, int err, const char *why)
{
	tern_session *s = c->owner;

	if (!s || s->state == TERN_S_CLOSING || s->state == TERN_S_CLOSED)
		return;
	if (s->state == TERN_S_CONNECTING) {
		s->conn = c;
		if (s->is_server)
			note_failure(s, err, "accept failed");
		else
			connect_failed(s, err, NULL, 0);
		return; /* the provider tears it down */
	}
	tern__session_fail(s, err, why ? why : "connection failed");
}

static void ev_closed(struct tern_conn *c)
{
	tern_session *s = c->owner;
	int reason;

	if (!s)
		return;
	reason = s->fail_status;
	s->conn = NULL;
	s->state = TERN_S_CLOSED;
	if (s->connect_cb) {
		/* A connect that never became ready. */
		tern_connect_cb cb = s->connect_cb;
		s->connect_cb = NULL;
		TERN_CALLBACK(s->ctx, cb(s, reason ? reason : -ECONNABORTED));
	} else if (!s->announced) {
		/* An incoming connection that failed before anyone saw it.  A
		 * refused client hangs up after our answer, and that failure's
		 * text replaced the refusal's: the listener hears the reason. */
		if (s->refused)
			tern__set_error(s->ctx, "%s: %s (%s)", s->peer, s->refused_why,
					tern_strerror(s->refused));
		if (s->listener && s->listener->cb)
			TERN_CALLBACK(s->ctx, s->listener->cb(s->listener, NULL,
							      reason ? reason : -ECONNABORTED));
	} else if (s->user_closed && s->close_cb) {
		TERN_CALLBACK(s->ctx, s->close_cb(s, reason == -ECANCELED ? 0 : reason));
	} else if (s->on_close && !s->ctx->destroying) {
		/*
		 * The peer went, the session failed, or the user closed it with
		 * no callback of its own (tern.h: then on_close runs, with the
		 * close callback's reason).  Not for the sessions
		 * tern_ctx_destroy() closes: the application is tearing down.
		 */
		TERN_CALLBACK(s->ctx,
			      s->on_close(s, s->user_closed && reason == -ECANCELED ? 0 : reason));
	}
	tern__session_unref(s);
}

/*
 * The provider is freeing the slots: keep them if a request still points
 * into them, until the session itself goes (session_free()).
 */
static bool ev_keep_rx(struct tern_conn *c, void (*release)(void *arg), void *arg)
{
	tern_session *s = c->owner;

	if (!s || s->refs == 1 || s->rx_release) /* nothing points into them */
		return false;
	s->rx_release = release;
	s->rx_arg = arg;
	return true;
}

static void ev_bulk_done(struct tern_conn *c, uint64_t cookie, int status)
{
	tern_session *s = c->owner;

	/* the cookie is the floor above's, which started the transfer */
	if (s)
		s->up->bulk_done(s, cookie, status);
}

static void ev_activity(tern_ctx *ctx)
{
	tern__activity(ctx);
}

static void ev_notice(tern_ctx *ctx, const char *msg)
{
	tern__set_error(ctx, "%s", msg);
}

/* A group's listener accepted a connection: the group hands it to a member. */
static void ev_handoff(struct tern_tlistener *tl, struct tern_handoff h)
{
	tern_listener *l = tl->owner;

	if (l->handoff)
		l->handoff(l, h);
	else
		tern__handoff_drop(l, h);
}

int tern__listener_adopt(tern_listener *l, struct tern_handoff h)
{
	return l->tp->ops->adopt(l->tl, h);
}

int tern__handoff_move(tern_listener *l, struct tern_handoff h)
{
	return h.req ? l->tp->ops->handoff_move(l->tl, h) : 0;
}

void tern__handoff_drop(tern_listener *l, struct tern_handoff h)
{
	if (h.req)
		l->tp->ops->handoff_drop(h);
	else
		close(h.fd);
}

const struct tern_transport_events tern__events = {
	.incoming = ev_incoming,
	.accepted = ev_accepted,
	.connected = ev_connected,
	.recv = ev_recv,
	.send_done = ev_send_done,
	.error = ev_error,
	.closed = ev_closed,
	.activity = ev_activity,
	.notice = ev_notice,
	.bulk_done = ev_bulk_done,
	.keep_rx = ev_keep_rx,
	.handoff = ev_handoff,
};

/* ---- public session API ------------------------------------------------------ */

int tern_connect(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
		 tern_connect_cb cb, tern_session **out)
{
	struct tern_session_opts o;
	struct tern_conn_params p;
	struct tern_uri u;
	struct tern_hello hello;
	struct tern_tp *tp;
	uint8_t hs[TERN_HANDSHAKE_MAX];
	tern_session *s;
	char why[200];
	int rc;

	if (!ctx || !uri || !out)
		return -EINVAL;
	*out = NULL;
	if ((rc = tern__uri_parse(uri, &u, why, sizeof(why)))) {
		tern__set_error(ctx, "%s", why);
		return rc;
	}
	if ((rc = opts_copy(opts, &o)))
		return rc;
	if ((rc = tern__transport_get(ctx, &u, &tp)))
		return rc;
	if ((rc = tern__session_alloc(ctx, &o, tp, uri, &s)))
		return rc;
	s->connect_cb = cb;
	tern__session_params(s, o.connect_timeout_ms, &p);
	tern__session_hello(s, &hello);
	tern_hello_encode(hs, &hello);
	rc = tp->ops->connect(tp->t, &u, &p, hs, sizeof(struct tern_wire_hello), s, &s->conn);
	if (rc) {
		tern__set_error(ctx, "%s: %s", uri, tern_strerror(rc));
		session_free(s);
		return rc;
	}
	s->announced = true;
	*out = s;
	return 0;
}

struct sync_connect {
	bool done;
	int status;
};

static void sync_connect_cb(tern_session *s, int status)
{
	struct sync_connect *sc = tern_session_data(s);
	sc->done = true;
	sc->status = status;
}

int tern_connect_sync(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
		      uint32_t timeout_ms, tern_session **out)
{
	struct tern_session_opts o = {0};
	struct sync_connect sc = {0};
	tern_session *s;
	void *user_data;
	int rc;

	if (!ctx || !out)
		return -EINVAL;
	*out = NULL;
	if (ctx->cb_depth > 0)
		return -EBUSY;
	if (opts) {
		size_t n = opts->size ? opts->size : sizeof(o);
		if (n > sizeof(o))
			return -EINVAL;
		memcpy(&o, opts, n);
	}
	o.size = sizeof(o);
	user_data = o.data;
	o.data = &sc;
	if (timeout_ms)
		o.connect_timeout_ms = timeout_ms;
	rc = tern_connect(ctx, uri, &o, sync_connect_cb, &s);
	if (rc)
		return rc;
	while (!sc.done)
		uv_run(ctx->loop, UV_RUN_ONCE);
	if (sc.status)
		return sc.status; /* the session is freed */
	s->data = user_data;
	*out = s;
	return 0;
}

int tern_listen(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
		tern_accept_cb cb, tern_listener **out)
{
	return tern__listen(ctx, uri, opts, cb, TERN__LISTEN, out);
}

int tern__listen(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
		 tern_accept_cb cb, enum tern__listen_kind kind, tern_listener **out)
{
	struct tern_session_opts o;
	struct tern_uri u;
	tern_listener *l;
	char why[200];
	int rc;

	if (!ctx || !uri || !out)
		return -EINVAL;
	*out = NULL;
	if ((rc = opts_copy(opts, &o))) {
		tern__set_error(ctx, "bad session options for %s", uri);
		return rc;
	}
	if ((rc = tern__uri_parse(uri, &u, why, sizeof(why)))) {
		tern__set_error(ctx, "%s", why);
		return rc;
	}
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->ctx = ctx;
	l->opts = o;
	l->cb = cb;
	tern_list_init(&l->link);
	if ((rc = tern__transport_get(ctx, &u, &l->tp))) {
		free(l);
		return rc;
	}
	if (kind != TERN__LISTEN && !l->tp->ops->adopt) {
		tern__set_error(ctx, "%s:// cannot serve a context group (yet)", u.scheme);
		free(l);
		return -EPROTONOSUPPORT;
	}
	if (kind == TERN__LISTEN_ADOPT)
		rc = l->tp->ops->adopt_listen(l->tp->t, &u, l, &l->tl);
	else
		rc = l->tp->ops->listen(l->tp->t, &u, l, &l->tl);
	if (rc) {
		tern__set_error(ctx, "cannot listen on %s: %s", uri, tern_strerror(rc));
		free(l);
		return rc;
	}
	if (u.has_port)
		snprintf(l->uri, sizeof(l->uri), "%s://%s%s%s:%u", u.scheme,
			 strchr(u.host, ':') ? "[" : "", u.host, strchr(u.host, ':') ? "]" : "",
			 l->tl->port);
	else
		snprintf(l->uri, sizeof(l->uri), "%s://%s", u.scheme, u.host);
	/* Before the loop runs again: no connection is accepted without it. */
	l->tl->handoff = kind == TERN__LISTEN_HANDOFF;
	tern_list_add(&ctx->listeners, &l->link);
	*out = l;
	return 0;
}

int tern_listener_port(tern_listener *l)
{
	return l ? l->tl->port : -EINVAL;
}

const char *tern_listener_uri(tern_listener *l)
{
	return l ? l->uri : "";
}

void tern_listener_set_data(tern_listener *l, void *data)
{
	l->data = data;
}

void *tern_listener_data(tern_listener *l)
{
	return l->data;
}

void tern_listener_close(tern_listener *l, tern_listener_close_cb cb)
{
	struct tern_list *it;

	if (!l)
		return;
	/* Sessions accepted on it live on; they just forget their listener. */
	for (it = l->ctx->sessions.next; it != &l->ctx->sessions; it = it->next) {
		tern_session *s = tern_container_of(it, tern_session, link);
		if (s->listener == l)
			s->listener = NULL;
	}
	l->tp->ops->listener_close(l->tl);
	tern_list_del(&l->link);
	if (cb)
		TERN_CALLBACK(l->ctx, cb(l));
	free(l);
}

int tern_session_counters(tern_session *s, struct tern_session_counters *out)
{
	if (!s || !out)
		return -EINVAL;
	*out = s->cnt;
	return 0;
}

size_t tern_session_max_payload(tern_session *s)
{
	return s ? s->max_payload : 0;
}

tern_ctx *tern_session_ctx(tern_session *s)
{
	return s->ctx;
}

void tern_session_set_data(tern_session *s, void *data)
{
	s->data = data;
}

void *tern_session_data(tern_session *s)
{
	return s->data;
}

int tern_session_is_ready(tern_session *s)
{
	return s && tern__session_usable(s) && !s->fail_soon;
}

const char *tern_session_peer(tern_session *s)
{
	return s ? s->peer : "";
}
