// SPDX-License-Identifier: MIT
/*
 * mem.c - the mem:// provider: connections inside one process (see mem.h).
 *
 * Everything happens in this process, on one thread, so there is nothing
 * to wait for: a send is copied into the receiver's posted receive slot at
 * once, a bulk transfer moves its bytes at once (or when a raw peer says),
 * and what the engine must hear of it waits in its context's queue of
 * completions until the engine polls, as a NIC's completions would.  That
 * queue is what keeps every upcall out of the engine's own calls.
 *
 * Under AddressSanitizer the slots are poisoned wherever the engine has no
 * business reading or writing: a receive slot while the provider holds it,
 * and past the message it holds; a send slot while its send is in flight.
 * A read past a message, a read of a slot after giving it back, or a write
 * into a slot still being sent is then a crash at the faulty line, not a
 * silent corruption another provider would show only under load.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tern/transport.h"
#include "../common/link.h"
#include "../common/memstat.h"
#include "../common/xtab.h"
#include "mem.h"

#if defined(__SANITIZE_ADDRESS__)
#define MEM_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define MEM_ASAN 1
#endif
#endif
#ifdef MEM_ASAN
#include <sanitizer/asan_interface.h>
#define mem_poison(p, n)   ASAN_POISON_MEMORY_REGION((p), (n))
#define mem_unpoison(p, n) ASAN_UNPOISON_MEMORY_REGION((p), (n))
#else
#define mem_poison(p, n)   ((void)(p), (void)(n))
#define mem_unpoison(p, n) ((void)(p), (void)(n))
#endif

#define MEM_NAME_MAX 255
#define MEM_BULK_OPS 64 /* a raw peer's held bulk transfers, at most */

/* ---- objects ------------------------------------------------------------------ */

enum mev_type {
	EV_NONE = 0,  /* purged */
	EV_INCOMING,  /* a connect request reaches a listener */
	EV_REFUSED,   /* ...that closed before it saw the request */
	EV_HELLO,     /* an engine's connect reaches a raw peer */
	EV_CONNECTED, /* the answer reaches a connecting engine */
	EV_ACCEPTED,  /* an accepted connection is up */
	EV_RECV,
	EV_SEND_DONE,
	EV_BULK_DONE,
	EV_ERROR,
	EV_CLOSE, /* every resource is released: closed(), then free */
};

struct mconn;
struct mlistener;

/* One completion waiting for the engine. */
struct mev {
	uint8_t type;
	struct mconn *c;	 /* the connection it is for (INCOMING: the connecting one) */
	struct mlistener *l;	 /* INCOMING */
	struct tern_mem_peer *p; /* INCOMING from a raw peer; HELLO */
	uint32_t a, b;		 /* RECV: token, length; SEND_DONE: slot */
	uint64_t cookie;	 /* BULK_DONE */
	int status;
	const char *why; /* ERROR: a static string */
};

struct mem_tctx {
	tern_ctx *ctx;
	uv_loop_t *loop;
	const struct tern_transport_events *ev;
	enum tern_transport_mode mode;
	struct mev *q; /* ring of q_cap completions */
	uint32_t q_cap, q_head, q_len;
	uv_idle_t idle; /* event mode: delivers the queue */
	bool idle_on;
	int open_handles;
	struct tern_link conns;	   /* every connection of this context */
	struct tern_link all;	   /* in mem_tctxs */
	struct tern_mem_stats mem; /* tern_ctx_mem(): counted where taken and given back */
};

struct mlistener {
	struct tern_tlistener base;
	struct mem_tctx *t;
	struct tern_link link; /* mem_listeners */
	char name[MEM_NAME_MAX + 1];
};

/* A raw peer's bulk transfer of the engine's, held until the peer says. */
struct mbulk {
	uint64_t cookie;
	bool write;
	struct tern_bulk_desc remote;
	struct tern_tmem *m;
	size_t off, len;
};

/* Slot memory the engine may keep past the connection (keep_rx). */
struct mslots {
	uint8_t *send, *recv;
	size_t ring;	   /* each one's size */
	uint64_t *counter; /* where both are counted, until released */
};

struct mconn {
	struct tern_conn base;
	struct mem_tctx *t;
	struct tern_link link;	   /* t->conns */
	struct mconn *pair;	   /* the other engine's end, or NULL */
	struct tern_mem_peer *raw; /* ...or the raw peer */
	bool server;
	bool up;      /* established: messages and transfers may flow */
	bool closing; /* torn down: only bulk_done() and closed() follow */
	uint32_t nslots, slot_size;
	struct mslots *slots;
	uint8_t *recv_base;
	uint8_t *tx_busy;  /* per send slot: posted, send_done not yet reported */
	uint32_t *free_rx; /* stack of posted receive slots */
	uint32_t nfree_rx;
	uint8_t *rx_held; /* per receive slot: the engine has it */
	struct tern_xtab xt;
	/* a raw peer's holds */
	bool hold_sends, hold_bulk;
	int export_fail; /* tern_mem_peer_fail_exports(): the next export's error */
	uint32_t *held;	 /* ring of send slots whose completion waits */
	uint32_t held_head, held_len;
	struct mbulk bulk[MEM_BULK_OPS]; /* FIFO of held transfers */
	uint32_t nbulk;
	/* the handshake: our hello until the listener has seen it, then the answer */
	uint8_t hs[MEM_PD_MAX];
	uint32_t hs_len;
};

struct tern_mem_peer {
	struct tern_mem_peer_cbs cbs;
	void *user;
	struct mconn *conn; /* the engine's end */
	enum tern_mem_peer_state state;
	bool listening;	       /* in mem_peers, under name */
	bool answered;	       /* listening: accept or refuse was given */
	struct tern_link link; /* mem_peers */
	char name[MEM_NAME_MAX + 1];
	uint8_t hs[MEM_PD_MAX]; /* connecting: our hello, then the engine's answer */
	uint32_t hs_len;
	int status;
	struct tern_xtab xt; /* what we expose to the engine's transfers */
};

/* Every context, listener and listening raw peer of the process: names
 * are process-wide, like abstract socket names. */
static struct tern_link mem_tctxs = TERN_LINK_INIT(mem_tctxs);
static struct tern_link mem_listeners = TERN_LINK_INIT(mem_listeners);
static struct tern_link mem_peers = TERN_LINK_INIT(mem_peers);

#define T(x) ((struct mem_tctx *)(x))
#define C(x) ((struct mconn *)(x))

static void conn_close(struct mconn *c);

/* ---- the completion queue --------------------------------------------------------- */

static void idle_cb(uv_idle_t *h);

static void idle_update(struct mem_tctx *t)
{
	bool want = t->mode == TERN_TRANSPORT_EVENTS && t->q_len > 0;

	if (want && !t->idle_on)
		uv_idle_start(&t->idle, idle_cb);
	else if (!want && t->idle_on)
		uv_idle_stop(&t->idle);
	t->idle_on = want;
}

/*
 * Queue @e.  Allocation failure has no caller to report to: it aborts, as
 * a test provider may (the queue holds a few entries per slot at most).
 */
static void push(struct mem_tctx *t, const struct mev *e)
{
	if (t->q_len == t->q_cap) {
		uint32_t ncap = t->q_cap ? 2 * t->q_cap : 64;
		struct mev *q = malloc(ncap * sizeof(*q));

		if (!q)
			abort();
		for (uint32_t i = 0; i < t->q_len; i++)
			q[i] = t->q[(t->q_head + i) % t->q_cap];
		free(t->q);
		t->q = q;
		t->q_cap = ncap;
		t->q_head = 0;
	}
	t->q[(t->q_head + t->q_len) % t->q_cap] = *e;
	t->q_len++;
	idle_update(t);
}

static void push_ev(struct mconn *c, uint8_t type, uint32_t a, uint32_t b, uint64_t cookie,
		    int status, const char *why)
{
	struct mev e = {.type = type,
			.c = c,
			.a = a,
			.b = b,
			.cookie = cookie,
			.status = status,
			.why = why};

	push(c->t, &e);
}

/* Forget every queued completion that names @ptr (gone now). */
static void purge(const void *ptr)
{
	tern_link_each(it, &mem_tctxs)
	{
		struct mem_tctx *t = tern_link_entry(it, struct mem_tctx, all);

		for (uint32_t i = 0; i < t->q_len; i++) {
			struct mev *e = &t->q[(t->q_head + i) % t->q_cap];

			if (e->c == ptr || (const void *)e->l == ptr || (const void *)e->p == ptr)
				e->type = EV_NONE;
		}
	}
}

/* ---- connections -------------------------------------------------------------------- */

static struct mconn *conn_new(struct mem_tctx *t, bool server)
{
	struct mconn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->t = t;
	c->server = server;
	c->base.ops = &tern_mem_transport;
	c->base.tctx = (struct tern_tctx *)t;
	tern_link_add(&t->conns, &c->link);
	return c;
}

/* The slots, from our own parameters only.  Return: 0, -EINVAL, -ENOMEM. */
static int conn_alloc(struct mconn *c, const struct tern_conn_params *p)
{
	uint32_t n = p->send_slots;
	size_t ring = (size_t)n * p->slot_size;

	if (p->recv_slots != n || n == 0 || p->slot_size == 0 || p->slot_size % 64)
		return -EINVAL;
	c->nslots = n;
	c->slot_size = p->slot_size;
	c->slots = calloc(1, sizeof(*c->slots));
	if (!c->slots)
		return -ENOMEM;
	/* Two blocks, so that running off the end of the send ring is not a
	 * quiet write into the receive ring. */
	c->slots->send = aligned_alloc(64, ring);
	c->slots->recv = aligned_alloc(64, ring);
	c->slots->ring = ring;
	c->slots->counter = &c->t->mem.slots_heap;
	*c->slots->counter += (c->slots->send ? ring : 0) + (c->slots->recv ? ring : 0);
	c->tx_busy = calloc(n, 1);
	c->free_rx = calloc(n, sizeof(*c->free_rx));
	c->rx_held = calloc(n, 1);
	c->held = calloc(n, sizeof(*c->held));
	if (!c->slots->send || !c->slots->recv || !c->tx_busy || !c->free_rx || !c->rx_held ||
	    !c->held)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++)
		c->free_rx[i] = n - 1 - i; /* slot 0 on top */
	c->nfree_rx = n;
	c->recv_base = c->slots->recv;
	/* Posted receives are the provider's, not the engine's. */
	mem_poison(c->recv_base, ring);
	c->base.send_base = c->slots->send;
	c->base.send_region = ring;
	c->base.slot_size = p->slot_size;
	c->base.send_slots = n;
	c->base.recv_slots = n;
	return 0;
}

static void slots_release(void *arg)
{
	struct mslots *s = arg;

	if (s->send)
		mem_unpoison(s->send, s->ring);
	if (s->recv)
		mem_unpoison(s->recv, s->ring);
	*s->counter -= (s->send ? s->ring : 0) + (s->recv ? s->ring : 0);
	free(s->send);
	free(s->recv);
	free(s);
}

/* Everything is released: the held transfers fail, the engine may keep the
 * slots, closed() tells it, and nothing names @c any more. */
static void conn_free(struct mconn *c)
{
	struct mem_tctx *t = c->t;

	for (uint32_t i = 0; i < c->nbulk; i++)
		t->ev->bulk_done(&c->base, c->bulk[i].cookie, -ECONNRESET);
	c->nbulk = 0;
	tern_xtab_free(&c->xt);
	/* The engine may keep the slots for the requests that point into
	 * them; the rest stays poisoned until it lets them go. */
	if (c->slots && !t->ev->keep_rx(&c->base, slots_release, c->slots))
		slots_release(c->slots);
	c->base.send_base = NULL;
	free(c->tx_busy);
	free(c->free_rx);
	free(c->rx_held);
	free(c->held);
	tern_link_del(&c->link);
	purge(c);
	t->ev->closed(&c->base);
	free(c);
}

static void peer_gone(struct tern_mem_peer *p)
{
	p->conn = NULL;
	if (p->state == MEM_PEER_UP || p->state == MEM_PEER_WAITING)
		p->state = MEM_PEER_GONE;
	if (p->cbs.gone)
		p->cbs.gone(p, p->user);
}

/*
 * Tear @c down: its peer hears of it (an engine as -ECONNRESET), and
 * closed() follows from the queue.  Idempotent, safe from any upcall.
 */
static void conn_close(struct mconn *c)
{
	if (c->closing)
		return;
	c->closing = true;
	c->up = false;
	if (c->pair) {
		struct mconn *o = c->pair;

		o->pair = NULL;
		c->pair = NULL;
		push_ev(o, EV_ERROR, 0, 0, 0, -ECONNRESET, "the peer hung up");
	}
	if (c->raw) {
		struct tern_mem_peer *p = c->raw;

		c->raw = NULL;
		peer_gone(p);
	}
	push_ev(c, EV_CLOSE, 0, 0, 0, 0, NULL);
}

/* Fail @c for what its peer did (or the provider saw): the engine hears
 * of it from the queue, then disconnects. */
static void conn_fail(struct mconn *c, int err, const char *why)
{
	if (!c->closing)
		push_ev(c, EV_ERROR, 0, 0, 0, err, why);
}

/* ---- delivering completions ----------------------------------------------------------- */

static void incoming(struct mem_tctx *t, struct mlistener *l, struct mconn *client,
		     struct tern_mem_peer *p);
static void refuse(struct mconn *client, struct tern_mem_peer *p);

/* Failed, at any stage: the engine sorts out what that means (tern/transport.h). */
static void on_error(struct mem_tctx *t, struct mconn *c, int err, const char *why)
{
	t->ev->error(&c->base, err, why);
	conn_close(c);
}

/* The answer (a refusal carries the engine's reason, which it decodes). */
static void on_connected(struct mem_tctx *t, struct mconn *c, int status)
{
	int refused = t->ev->connected(&c->base, status, c->hs, c->hs_len);

	if (status || refused)
		conn_close(c);
}

static void dispatch(struct mem_tctx *t, const struct mev *e)
{
	struct mconn *c = e->c;

	if (e->type == EV_INCOMING) {
		if (!c || !c->closing) /* a connecting engine that gave up: nothing */
			incoming(t, e->l, c, e->p);
		return;
	}
	if (e->type == EV_REFUSED) {
		refuse(c, e->p);
		return;
	}
	if (e->type == EV_HELLO) {
		if (!c->closing && e->p->cbs.hello)
			e->p->cbs.hello(e->p, c->hs, c->hs_len, e->p->user);
		return;
	}
	if (e->type == EV_CLOSE) {
		conn_free(c);
		return;
	}
	if (e->type == EV_BULK_DONE) {
		/* Every transfer is reported once, closing or not. */
		t->ev->bulk_done(&c->base, e->cookie, c->closing ? -ECONNRESET : e->status);
		return;
	}
	if (c->closing)
		return; /* after an error or disconnect(), only the above */
	switch (e->type) {
	case EV_CONNECTED:
		on_connected(t, c, e->status);
		break;
	case EV_ACCEPTED:
		t->ev->accepted(&c->base, 0);
		break;
	case EV_RECV:
		t->ev->recv(&c->base, e->a, c->recv_base + (size_t)e->a * c->slot_size, e->b);
		break;
	case EV_SEND_DONE:
		c->tx_busy[e->a] = 0;
		/* the engine may write the slot again */
		mem_unpoison(c->base.send_base + (size_t)e->a * c->slot_size, c->slot_size);
		t->ev->send_done(&c->base, e->a);
		break;
	case EV_ERROR:
		on_error(t, c, e->status, e->why);
		break;
	}
}

/*
 * Deliver what was queued before this call, up to @budget: what the
 * upcalls cause is found by the next poll, as a NIC's completions would
 * be, so the engine sees its transfers and sends in flight for a while.
 */
static int deliver(struct mem_tctx *t, int budget)
{
	uint32_t left = t->q_len;
	int n = 0;

	while (n < budget && left-- && t->q_len) {
		struct mev e = t->q[t->q_head];

		t->q_head = (t->q_head + 1) % t->q_cap;
		t->q_len--;
		if (e.type == EV_NONE)
			continue;
		dispatch(t, &e);
		n++;
	}
	idle_update(t);
	return n;
}

static void idle_cb(uv_idle_t *h)
{
	struct mem_tctx *t = h->data;

	if (deliver(t, 64) > 0)
		t->ev->activity(t->ctx);
}

/* ---- names ------------------------------------------------------------------------------ */

static struct mlistener *find_listener(const char *name)
{
	tern_link_each(it, &mem_listeners)
	{
		struct mlistener *l = tern_link_entry(it, struct mlistener, link);

		if (strcmp(l->name, name) == 0)
			return l;
	}
	return NULL;
}

static struct tern_mem_peer *find_peer(const char *name)
{
	tern_link_each(it, &mem_peers)
	{
		struct tern_mem_peer *p = tern_link_entry(it, struct tern_mem_peer, link);

		if (strcmp(p->name, name) == 0)
			return p;
	}
	return NULL;
}

static int name_check(const char *name)
{
	size_t n = strlen(name);

	if (n == 0 || n > MEM_NAME_MAX)
		return -EINVAL;
	return find_listener(name) || find_peer(name) ? -EADDRINUSE : 0;
}

/* ---- the handshake ---------------------------------------------------------------------- */

static void refuse_raw(struct tern_mem_peer *p, int status, const void *hs, size_t len)
{
	p->state = MEM_PEER_REFUSED;
	p->status = status;
	p->hs_len = (uint32_t)len;
	memcpy(p->hs, hs, len);
}

/* Nobody listens (any more): the connecting side is refused. */
static void refuse(struct mconn *client, struct tern_mem_peer *p)
{
	if (client) {
		client->hs_len = 0;
		push_ev(client, EV_CONNECTED, 0, 0, 0, -ECONNREFUSED, NULL);
	} else {
		refuse_raw(p, -ECONNREFUSED, NULL, 0);
	}
}

/* A listener hears a connect request: the engine decides. */
static void incoming(struct mem_tctx *t, struct mlistener *l, struct mconn *client,
		     struct tern_mem_peer *p)
{
	struct tern_conn_params prm = {0};
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	void *owner = NULL;
	struct mconn *s;
	int rc;

	rc = t->ev->incoming(&l->base, client ? client->hs : p->hs,
			     client ? client->hs_len : p->hs_len, &prm, &owner, reply, &reply_len);
	if (reply_len > sizeof(reply))
		reply_len = sizeof(reply);
	if (rc) {
		/* Refused (the engine told its user): the refusal's bytes go
		 * back, as rdma_cm's reject carries them. */
		if (client) {
			memcpy(client->hs, reply, reply_len);
			client->hs_len = (uint32_t)reply_len;
			push_ev(client, EV_CONNECTED, 0, 0, 0, -ECONNREFUSED, NULL);
		} else {
			refuse_raw(p, rc, reply, reply_len);
		}
		return;
	}
	s = conn_new(t, true);
	if (!s)
		abort(); /* a test provider: see push() */
	s->base.owner = owner;
	snprintf(s->base.peer, sizeof(s->base.peer), "%.64s%s", l->name, client ? "" : "[raw]");
	if ((rc = conn_alloc(s, &prm))) {
		if (client)
			push_ev(client, EV_CONNECTED, 0, 0, 0, -ECONNREFUSED, NULL);
		else
			refuse_raw(p, -ECONNREFUSED, NULL, 0);
		push_ev(s, EV_ERROR, 0, 0, 0, rc, "mem: no memory for the slots");
		return;
	}
	s->up = true;
	push_ev(s, EV_ACCEPTED, 0, 0, 0, 0, NULL);
	if (client) {
		s->pair = client;
		client->pair = s;
		client->up = true;
		memcpy(client->hs, reply, reply_len);
		client->hs_len = (uint32_t)reply_len;
		push_ev(client, EV_CONNECTED, 0, 0, 0, 0, NULL);
	} else {
		s->raw = p;
		p->conn = s;
		p->state = MEM_PEER_UP;
		p->status = 0;
		memcpy(p->hs, reply, reply_len);
		p->hs_len = (uint32_t)reply_len;
	}
}

/* ---- ops ---------------------------------------------------------------------------------- */

static int mem_ctx_init(tern_ctx *ctx, uv_loop_t *loop, const struct tern_transport_events *ev,
			struct tern_tctx **out)
{
	struct mem_tctx *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->ctx = ctx;
	t->loop = loop;
	t->ev = ev;
	t->mode = TERN_TRANSPORT_POLLED;
	tern_link_init(&t->conns);
	tern_link_add(&mem_tctxs, &t->all);
	uv_idle_init(loop, &t->idle);
	t->idle.data = t;
	t->open_handles = 1;
	*out = (struct tern_tctx *)t;
	return 0;
}

static void idle_closed(uv_handle_t *h)
{
	struct mem_tctx *t = h->data;

	t->open_handles--;
}

static void mem_ctx_fini(struct tern_tctx *tt)
{
	struct mem_tctx *t = T(tt);

	/* Every connection is closed; one the engine never knew may be left. */
	while (!tern_link_empty(&t->conns)) {
		struct mconn *c = tern_link_entry(t->conns.next, struct mconn, link);

		c->base.owner = NULL;
		if (!c->closing)
			conn_close(c);
		conn_free(c);
	}
	/* Connect requests from other contexts to a listener of ours. */
	while (t->q_len) {
		struct mev e = t->q[t->q_head];

		t->q_head = (t->q_head + 1) % t->q_cap;
		t->q_len--;
		if (e.type == EV_REFUSED)
			refuse(e.c, e.p);
	}
	tern_link_del(&t->all);
	uv_close((uv_handle_t *)&t->idle, idle_closed);
	while (t->open_handles > 0)
		uv_run(t->loop, UV_RUN_NOWAIT);
	free(t->q);
	free(t);
}

static int mem_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
		      struct tern_tlistener **out)
{
	struct mlistener *l;
	int rc;

	if ((rc = name_check(u->host)))
		return rc;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &tern_mem_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	l->t = T(tt);
	snprintf(l->name, sizeof(l->name), "%s", u->host);
	tern_link_add(&mem_listeners, &l->link);
	*out = &l->base;
	return 0;
}

static void mem_listener_close(struct tern_tlistener *tl)
{
	struct mlistener *l = (struct mlistener *)tl;

	tern_link_del(&l->link);
	/* Connect requests it never saw are refused. */
	tern_link_each(it, &mem_tctxs)
	{
		struct mem_tctx *t = tern_link_entry(it, struct mem_tctx, all);

		/* (refused from the queue: pushing here could move it) */
		for (uint32_t i = 0; i < t->q_len; i++) {
			struct mev *e = &t->q[(t->q_head + i) % t->q_cap];

			if (e->type == EV_INCOMING && e->l == l) {
				e->type = EV_REFUSED;
				e->l = NULL;
			}
		}
	}
	free(l);
}

static int mem_connect(struct tern_tctx *tt, const struct tern_uri *u,
		       const struct tern_conn_params *prm, const void *hs, size_t hs_len,
		       void *owner, struct tern_conn **out)
{
	struct mem_tctx *t = T(tt);
	struct mlistener *l = find_listener(u->host);
	struct tern_mem_peer *p = l ? NULL : find_peer(u->host);
	struct mconn *c;
	int rc;

	if (hs_len > TERN_HANDSHAKE_MAX)
		return -EINVAL;
	c = conn_new(t, false);
	if (!c)
		return -ENOMEM;
	if ((rc = conn_alloc(c, prm))) {
		c->closing = true;
		conn_free(c);
		return rc;
	}
	c->base.owner = owner;
	snprintf(c->base.peer, sizeof(c->base.peer), "%.64s", u->host);
	memcpy(c->hs, hs, hs_len);
	c->hs_len = (uint32_t)hs_len;
	if (l) {
		struct mev e = {.type = EV_INCOMING, .c = c, .l = l};

		push(l->t, &e);
	} else if (p && !p->conn && p->state == MEM_PEER_WAITING) {
		struct mev e = {.type = EV_HELLO, .c = c, .p = p};

		/* one engine per listening raw peer: the name is free again */
		tern_link_del(&p->link);
		p->listening = false;
		p->conn = c;
		c->raw = p;
		push(t, &e);
	} else {
		refuse(c, NULL);
	}
	*out = &c->base;
	return 0;
}

static int mem_post_send(struct tern_conn *bc, uint32_t slot, uint32_t len, uint32_t flags)
{
	struct mconn *c = C(bc);
	uint8_t *buf;

	(void)flags; /* every send completes on the next poll, or when a raw peer says */
	if (!c->up || c->closing)
		return -ENOTCONN;
	if (!c->pair && !c->raw)
		return -ECONNRESET; /* the peer is gone: as a reset socket says at once */
	if (slot >= c->nslots || len > c->slot_size || c->tx_busy[slot])
		return -EINVAL;
	buf = c->base.send_base + (size_t)slot * c->slot_size;
	c->tx_busy[slot] = 1;
	if (c->pair) {
		struct mconn *o = c->pair;
		uint32_t token;

		if (len > o->slot_size || o->nfree_rx == 0) {
			/* As a NIC with rnr_retry 0: the sender's credit bug
			 * fails its connection. */
			conn_fail(c, -EPROTO, "mem: a message found no posted receive at the peer");
			return 0;
		}
		token = o->free_rx[--o->nfree_rx];
		o->rx_held[token] = 1;
		mem_unpoison(o->recv_base + (size_t)token * o->slot_size, len);
		memcpy(o->recv_base + (size_t)token * o->slot_size, buf, len);
		push_ev(o, EV_RECV, token, len, 0, 0, NULL);
	} else if (c->raw && c->raw->cbs.msg) {
		c->raw->cbs.msg(c->raw, slot, buf, len, c->raw->user);
	}
	/* In flight: the engine must not write it until send_done(). */
	mem_poison(buf, c->slot_size);
	if (c->raw && c->hold_sends)
		c->held[(c->held_head + c->held_len++) % c->nslots] = slot;
	else
		push_ev(c, EV_SEND_DONE, slot, 0, 0, 0, NULL);
	return 0;
}

static int mem_post_recv(struct tern_conn *bc, uint32_t token)
{
	struct mconn *c = C(bc);

	if (c->closing)
		return -ENOTCONN;
	if (token >= c->nslots || !c->rx_held[token])
		return -EINVAL;
	c->rx_held[token] = 0;
	c->free_rx[c->nfree_rx++] = token;
	/* The engine gave it back: it must not read it again. */
	mem_poison(c->recv_base + (size_t)token * c->slot_size, c->slot_size);
	return 0;
}

static void mem_disconnect(struct tern_conn *bc)
{
	struct mconn *c = C(bc);

	conn_close(c);
}

static int mem_poll(struct tern_tctx *tt, int budget)
{
	return deliver(T(tt), budget);
}

static int mem_set_mode(struct tern_tctx *tt, enum tern_transport_mode mode)
{
	struct mem_tctx *t = T(tt);

	t->mode = mode;
	idle_update(t);
	return 0;
}

static uint64_t mem_bulk_max(struct tern_conn *bc)
{
	(void)bc;
	return UINT32_MAX;
}

static int mem_bulk_export(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			   int writable, struct tern_bulk_desc *out)
{
	struct mconn *c = C(bc);

	if (!c->up || c->closing)
		return -ENOTCONN;
	if (c->export_fail) {
		/* as verbs does when its connection fails during an export: the
		 * failure reaches the engine from the queue, the error at once */
		conn_fail(c, c->export_fail, "an export found the connection failed");
		return c->export_fail;
	}
	return tern_xtab_add(&c->xt, m, off, len, writable, out);
}

static void mem_bulk_unexport(struct tern_conn *bc, const struct tern_bulk_desc *d, unsigned flags)
{
	(void)flags;
	(void)tern_xtab_del(&C(bc)->xt, d); /* gone already with a closed connection: fine */
}

static void mem_mem_release(struct tern_tctx *tt, struct tern_tmem *m)
{
	struct mem_tctx *t = T(tt);

	tern_link_each(it, &t->conns)
	{
		tern_xtab_drop_mem(&tern_link_entry(it, struct mconn, link)->xt, m);
	}
	m->prov = NULL;
}

/* Move a held or immediate transfer of the engine's through a raw peer's
 * exposure.  Return: 0, or -EFAULT when the descriptor names anything else. */
static int raw_move(struct tern_mem_peer *p, const struct mbulk *b)
{
	const struct tern_xent *e =
		tern_xtab_check(&p->xt, b->remote.key, b->remote.addr, b->len, b->write);
	uint8_t *local = (uint8_t *)b->m->addr + b->off;
	void *remote = (void *)(uintptr_t)b->remote.addr;

	if (!e)
		return -EFAULT;
	if (b->write)
		memcpy(remote, local, b->len);
	else
		memcpy(local, remote, b->len);
	return 0;
}

static int bulk_start(struct mconn *c, bool write, const struct tern_bulk_desc *remote,
		      struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	struct mbulk b = {.cookie = cookie,
			  .write = write,
			  .remote = *remote,
			  .m = m,
			  .off = off,
			  .len = len};
	const struct tern_xent *e;

	if (!c->up || c->closing)
		return -ENOTCONN;
	if (len == 0 || off > m->len || len > m->len - off || len > remote->len)
		return -EINVAL;
	if (c->raw) {
		if (c->hold_bulk) {
			if (c->nbulk == MEM_BULK_OPS)
				return -EAGAIN;
			c->bulk[c->nbulk++] = b;
			return 0;
		}
		push_ev(c, EV_BULK_DONE, 0, 0, cookie, raw_move(c->raw, &b), NULL);
		return 0;
	}
	if (!c->pair) {
		push_ev(c, EV_BULK_DONE, 0, 0, cookie, -ECONNRESET, NULL);
		return 0;
	}
	e = tern_xtab_check(&c->pair->xt, remote->key, remote->addr, len, write);
	if (!e) {
		/* As shm's and tcp's exporters do: the peer that named memory
		 * it was not given loses its connection; so does this one. */
		conn_fail(c->pair, TERN_EPEER, "mem: the peer named memory it was not given");
		push_ev(c, EV_BULK_DONE, 0, 0, cookie, -ECONNRESET, NULL);
		return 0;
	}
	if (write)
		memcpy((void *)(uintptr_t)remote->addr, (uint8_t *)m->addr + off, len);
	else
		memcpy((uint8_t *)m->addr + off, (const void *)(uintptr_t)remote->addr, len);
	push_ev(c, EV_BULK_DONE, 0, 0, cookie, 0, NULL);
	return 0;
}

static int mem_bulk_read(struct tern_conn *bc, const struct tern_bulk_desc *remote,
			 struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	return bulk_start(C(bc), false, remote, m, off, len, cookie);
}

static int mem_bulk_write(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			  const struct tern_bulk_desc *remote, uint64_t cookie)
{
	return bulk_start(C(bc), true, remote, m, off, len, cookie);
}

static void mem_mem_stats(struct tern_tctx *tt, struct tern_mem_stats *acc)
{
	tern_mem_stats_add(acc, &((struct mem_tctx *)tt)->mem);
}

const struct tern_transport_ops tern_mem_transport = {
	.scheme = "mem",
	.uri_form = TERN_URI_NAME,
	.ctx_init = mem_ctx_init,
	.ctx_fini = mem_ctx_fini,
	.listen = mem_listen,
	.listener_close = mem_listener_close,
	.connect = mem_connect,
	.post_send = mem_post_send,
	.post_recv = mem_post_recv,
	.disconnect = mem_disconnect,
	.poll = mem_poll,
	.set_mode = mem_set_mode,
	.bulk_max = mem_bulk_max,
	.bulk_export = mem_bulk_export,
	.bulk_read = mem_bulk_read,
	.bulk_write = mem_bulk_write,
	.mem_release = mem_mem_release,
	.bulk_unexport = mem_bulk_unexport,
	.mem_stats = mem_mem_stats,
};

/* ---- the raw peer ------------------------------------------------------------------------- */

static struct tern_mem_peer *peer_new(const struct tern_mem_peer_cbs *cbs, void *user)
{
	struct tern_mem_peer *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	if (cbs)
		p->cbs = *cbs;
	p->user = user;
	p->state = MEM_PEER_WAITING;
	tern_link_init(&p->link);
	return p;
}

int tern_mem_peer_connect(const char *name, const void *hs, size_t len,
			  const struct tern_mem_peer_cbs *cbs, void *user,
			  struct tern_mem_peer **out)
{
	struct mlistener *l;
	struct tern_mem_peer *p;

	if (!name || !out || len > MEM_PD_MAX || (len && !hs))
		return -EINVAL;
	l = find_listener(name);
	if (!l)
		return -ECONNREFUSED;
	p = peer_new(cbs, user);
	if (!p)
		return -ENOMEM;
	if (len)
		memcpy(p->hs, hs, len);
	p->hs_len = (uint32_t)len;
	{
		struct mev e = {.type = EV_INCOMING, .l = l, .p = p};

		push(l->t, &e);
	}
	*out = p;
	return 0;
}

int tern_mem_peer_listen(const char *name, const struct tern_mem_peer_cbs *cbs, void *user,
			 struct tern_mem_peer **out)
{
	struct tern_mem_peer *p;
	int rc;

	if (!name || !out)
		return -EINVAL;
	if ((rc = name_check(name)))
		return rc;
	p = peer_new(cbs, user);
	if (!p)
		return -ENOMEM;
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->listening = true;
	tern_link_add(&mem_peers, &p->link);
	*out = p;
	return 0;
}

static int peer_answer(struct tern_mem_peer *p, int status, const void *hs, size_t len)
{
	struct mconn *c = p->conn;

	if (!c || p->answered || c->closing || len > MEM_PD_MAX || (len && !hs))
		return -EINVAL;
	p->answered = true;
	if (len)
		memcpy(c->hs, hs, len);
	c->hs_len = (uint32_t)len;
	if (status) {
		p->state = MEM_PEER_REFUSED;
		p->status = status;
		p->conn = NULL;
		c->raw = NULL;
	} else {
		p->state = MEM_PEER_UP;
		c->up = true;
	}
	push_ev(c, EV_CONNECTED, 0, 0, 0, status, NULL);
	return 0;
}

int tern_mem_peer_accept(struct tern_mem_peer *p, const void *hs, size_t len)
{
	return p ? peer_answer(p, 0, hs, len) : -EINVAL;
}

static bool status_is_sane(int st)
{
	return st < 0 && st > -(TERN_ERRNO_BASE + 1000);
}

int tern_mem_peer_refuse(struct tern_mem_peer *p, int status, const void *hs, size_t len)
{
	if (!p)
		return -EINVAL;
	/* As tcp's REFUSE: the handshake bytes carry the reason when there
	 * are any, else a status that is an error code, else a refusal. */
	return peer_answer(p, len || !status_is_sane(status) ? -ECONNREFUSED : status, hs, len);
}

enum tern_mem_peer_state tern_mem_peer_state(const struct tern_mem_peer *p)
{
	return p->state;
}

const void *tern_mem_peer_answer(const struct tern_mem_peer *p, size_t *len, int *status)
{
	if (len)
		*len = p->hs_len;
	if (status)
		*status = p->status;
	return p->hs;
}

uint32_t tern_mem_peer_slot_size(const struct tern_mem_peer *p)
{
	return p->conn ? p->conn->slot_size : 0;
}

uint32_t tern_mem_peer_posted(const struct tern_mem_peer *p)
{
	return p->conn ? p->conn->nfree_rx : 0;
}

int tern_mem_peer_send(struct tern_mem_peer *p, const void *buf, uint32_t len)
{
	struct mconn *c = p->conn;
	uint32_t token;

	if (!c || !c->up || c->closing || p->state != MEM_PEER_UP)
		return -ENOTCONN;
	if (len > c->slot_size) {
		conn_fail(c, TERN_EPEER, "mem: the peer sent a message longer than a slot");
		return -EMSGSIZE;
	}
	if (c->nfree_rx == 0) {
		conn_fail(c, TERN_EPEER, "mem: the peer sent with no receive posted");
		return -ENOBUFS;
	}
	token = c->free_rx[--c->nfree_rx];
	c->rx_held[token] = 1;
	mem_unpoison(c->recv_base + (size_t)token * c->slot_size, len);
	memcpy(c->recv_base + (size_t)token * c->slot_size, buf, len);
	push_ev(c, EV_RECV, token, len, 0, 0, NULL);
	return 0;
}

void tern_mem_peer_hold(struct tern_mem_peer *p, bool sends, bool bulk)
{
	struct mconn *c = p->conn;

	if (!c)
		return;
	c->hold_sends = sends;
	c->hold_bulk = bulk;
	if (!sends)
		tern_mem_peer_complete_sends(p, UINT32_MAX);
	while (!bulk && c->nbulk && !c->closing)
		tern_mem_peer_complete_bulk(p, 0, 0);
}

uint32_t tern_mem_peer_complete_sends(struct tern_mem_peer *p, uint32_t n)
{
	struct mconn *c = p->conn;
	uint32_t k = 0;

	while (c && k < n && c->held_len) {
		push_ev(c, EV_SEND_DONE, c->held[c->held_head], 0, 0, 0, NULL);
		c->held_head = (c->held_head + 1) % c->nslots;
		c->held_len--;
		k++;
	}
	return k;
}

uint32_t tern_mem_peer_bulk_pending(const struct tern_mem_peer *p)
{
	return p->conn ? p->conn->nbulk : 0;
}

int tern_mem_peer_complete_bulk(struct tern_mem_peer *p, uint32_t i, int status)
{
	struct mconn *c = p->conn;
	struct mbulk b;

	if (!c || i >= c->nbulk)
		return -EINVAL;
	b = c->bulk[i];
	memmove(&c->bulk[i], &c->bulk[i + 1], (c->nbulk - i - 1) * sizeof(b));
	c->nbulk--;
	if (status >= 0)
		status = raw_move(p, &b);
	push_ev(c, EV_BULK_DONE, 0, 0, b.cookie, status, NULL);
	return 0;
}

int tern_mem_peer_expose(struct tern_mem_peer *p, struct tern_tmem *m, size_t off, size_t len,
			 int writable, struct tern_bulk_desc *out)
{
	return tern_xtab_add(&p->xt, m, off, len, writable, out);
}

static int peer_access(struct tern_mem_peer *p, const struct tern_bulk_desc *d, void *buf,
		       bool write)
{
	struct mconn *c = p->conn;

	if (!c || !c->up || c->closing)
		return -ENOTCONN;
	if (!d->len || !tern_xtab_check(&c->xt, d->key, d->addr, d->len, write)) {
		conn_fail(c, TERN_EPEER, "mem: the peer named memory it was not given");
		return -EFAULT;
	}
	if (write)
		memcpy((void *)(uintptr_t)d->addr, buf, d->len);
	else
		memcpy(buf, (const void *)(uintptr_t)d->addr, d->len);
	return 0;
}

int tern_mem_peer_read(struct tern_mem_peer *p, const struct tern_bulk_desc *d, void *buf)
{
	return peer_access(p, d, buf, false);
}

int tern_mem_peer_write(struct tern_mem_peer *p, const struct tern_bulk_desc *d, const void *buf)
{
	return peer_access(p, d, (void *)(uintptr_t)buf, true);
}

void tern_mem_conn_fail_exports(struct tern_conn *c, int err)
{
	C(c)->export_fail = err;
}

void tern_mem_peer_close(struct tern_mem_peer *p)
{
	struct mconn *c;

	if (!p)
		return;
	c = p->conn;
	if (p->listening)
		tern_link_del(&p->link);
	purge(p);
	if (c) {
		c->raw = NULL;
		if (!c->closing && !p->answered && !c->server) {
			/* an engine waiting for our answer: no answer is a refusal */
			c->hs_len = 0;
			push_ev(c, EV_CONNECTED, 0, 0, 0, -ECONNREFUSED, NULL);
		} else {
			conn_fail(c, -ECONNRESET, "the peer hung up");
		}
	}
	tern_xtab_free(&p->xt);
	free(p);
}
