// SPDX-License-Identifier: MIT
/*
 * verbs.c - the rdma:// provider: RC queue pairs over libibverbs, connected
 * with librdmacm.
 *
 * Per context: one rdma_cm event channel (watched by a uv_poll_t), and per
 * verbs device one PD, one completion channel and one CQ shared by every
 * connection on that device.  Per connection: one RC QP and one allocation
 * holding the send and receive slot rings, registered once as one MR.
 *
 * A context group (tern.h) has one rdma_cm listener, on its acceptor
 * context; each connection request it takes moves, unanswered, to a
 * member context's event channel and is accepted there, on the member's
 * own PD and CQs (struct vhandoff).
 *
 * A work request's wr_id names its connection by table index and
 * generation, so completions of a QP that was already destroyed (they can
 * linger in the shared CQ) are recognised and dropped.
 *
 * Remote access is scoped to the call (docs/transports-verbs-security.md):
 * no registration grants remote access by itself.  An export binds a type 2
 * memory window, on the connection's QP, over exactly its range and for
 * exactly its direction, and invalidates it when the call is over; a device
 * without memory windows gets a registration of just the range instead.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

#include "tern/transport.h"
#include "../common/memstat.h"

/* Defined at the bottom; the engine finds it by name (src/ctx.c). */
extern const struct tern_transport_ops tern_verbs_transport;

/* Inline data sizes to ask for, largest first: small messages then need no
 * DMA read of the send slot.  We take the first the device grants. */
static const uint32_t verbs_inline_sizes[] = {512, 256, 64, 0};
/*
 * No RNR retries at all.  tern's credits guarantee a posted receive for
 * every message (see src/credit.h), so an RNR NAK can only mean a credit
 * bug, and with rnr_retry 0 it fails the QP at once instead of hiding
 * behind hardware retries that only the RNR monitor would ever see.
 */
#define VERBS_RNR_RETRY 0
/*
 * How long a peer may stay silent: the NIC resends an unacknowledged packet
 * after the local ACK timeout, 4.096 us * 2^VERBS_ACK_TIMEOUT (16: 268 ms),
 * up to VERBS_RETRY_COUNT times, then fails the work request with
 * IBV_WC_RETRY_EXC_ERR and the QP with it: a peer that vanished (its host
 * or its link gone, so no disconnect ever comes) fails every pending call
 * about (6 + 1) * 268 ms = 1.9 s after the first packet it did not answer.
 * Not 7 retries: rxe reads a retry count of 7 as "retry forever" (rxe_comp.c,
 * COMPST_ERROR_RETRY), and the calls would hang until their deadlines.  Not
 * rdma_cm's RoCE default timeout either (about 1 s on the guest's 6.1
 * kernel): each timeout is also what a lost last packet costs before it is
 * resent (an earlier loss is NAKed at once), and on a lossy link calls one
 * at a time ran 5x slower with it (docs/testing.md, the two-device lane).
 */
#define VERBS_ACK_TIMEOUT    16
#define VERBS_RETRY_COUNT    6
#define VERBS_RD_ATOMIC	     16	  /* RDMA READ depth we offer/request */
#define VERBS_DRAIN_GRACE_MS 1000 /* wait this long for flush completions */
#define VERBS_POLL_BATCH     32
/*
 * Bulk transfers (RDMA READ/WRITE for large messages): at most BULK_OPS at
 * once per connection.  Each is cut into work requests of at most
 * BULK_CHUNK_MAX (or the port's largest message, if smaller) and posted in
 * windows of BULK_CHUNKS, the last of each window signalled; the next
 * window goes out when that completes.  So any size up to 4 GiB - 1 moves
 * with bounded send-queue room, reserved on top of the slots'.
 *
 * Why 64 KiB work requests and not one per megabyte: a responder
 * acknowledges a WRITE's last packet (rxe also every 64th), and only an
 * acknowledgement (or an in-order READ response) sets the requester's retry
 * counter back to VERBS_RETRY_COUNT.  Across a lossy link a 1 MiB WRITE in
 * one request (1,024 packets at rxe's 1 KiB MTU) ran out of retries: in the
 * two-device lane at 2 % loss, 2 of 17 1 MiB calls failed the connection
 * with IBV_WC_RETRY_EXC_ERR on the server's side; in 64 KiB requests, 0 of
 * 365, and the calls took a third of the time (each lost packet costs less
 * to resend).  On a lossless fabric the cost is one completion each 256 KiB
 * per transfer; not measured on a ConnectX yet (docs/testing.md).
 */
#define VERBS_BULK_OPS	     16
#define VERBS_BULK_CHUNKS    4
#define VERBS_BULK_WR	     (VERBS_BULK_OPS * VERBS_BULK_CHUNKS)
#define VERBS_BULK_SLOT	     (1u << 22) /* wr_id slots from here are bulk WRs */
#define VERBS_BULK_CHUNK_MAX (64u << 10)
#define VERBS_REPORT_SLOT    (5u << 20)		     /* report_sends()'s WRITE (one at a time) */
#define VERBS_FENCE_SLOT     (VERBS_REPORT_SLOT + 1) /* win_fence()'s WRITE (waited for) */
/*
 * Memory windows.  wr_id slots from VERBS_WIN_SLOT are window binds, from
 * VERBS_INV_SLOT their invalidations (plus the window's index in both).
 * A connection has at most VERBS_WIN_MAX windows: the engine exports at
 * most two buffers per call, and its calls in flight plus its timed-out
 * calls still awaiting a late reply (which keep their exports) are at most
 * N, out of 2N + 3 send slots.
 */
#define VERBS_WIN_SLOT	  (6u << 20)
#define VERBS_INV_SLOT	  (7u << 20)
#define VERBS_WIN_MAX(c)  (2 * (c)->base.send_slots)
#define VERBS_INV_WAIT_MS 10000 /* see win_invalidate() */
/*
 * How long a transfer the peer's NIC refused waits for the peer's
 * disconnect before it counts as a violation (see bulk_refused()).  An
 * honest peer that closes or dies withdraws its exports just before its
 * disconnect reaches us; a killed process's rdma_cm sends it as the
 * process exits.  Seconds, for a loaded host.
 */
#define VERBS_VERDICT_MS 3000
#define VERBS_CQ_ENTRIES 1024	  /* a device's first CQ; struct vcq */
#define VERBS_RXE_VENDOR 0xffffff /* rdma_rxe's vendor_id (RXE_VENDOR_ID) */

enum vstate {
	V_RESOLVE_ADDR,
	V_RESOLVE_ROUTE,
	V_CONNECTING, /* client: rdma_connect() sent */
	V_ACCEPTING,  /* server: rdma_accept() sent */
	V_UP,
	V_DOWN,	     /* teardown: waiting for flushes */
	V_DESTROYED, /* resources gone; waiting for the timer handle to close */
};

struct verbs_tctx;

/*
 * How a device grants a peer remote access to one export.  Never with a
 * key to a whole region, never past the call.
 */
enum vexport {
	/* A type 2 memory window bound over the region's registration: one
	 * range, one direction, usable only through the connection's QP. */
	VX_WINDOW,
	/* The same, over a registration of just the range: rxe checks an
	 * access through a window against its registration's bounds, not
	 * the window's (rxe_resp.c check_rkey), so the registration must end
	 * where the export ends. */
	VX_WINDOW_EXACT,
	/* No memory windows: a registration of just the range, with just the
	 * remote access its direction needs, deregistered when the call is
	 * over.  Its key is good on any QP of the protection domain. */
	VX_REGISTER,
};

/*
 * One completion queue of a device.  A connection's QP sends all its
 * completions to the CQ it was made with, and reserves room there for every
 * completion it can have outstanding, so the CQ never overflows.  A device
 * starts with one CQ of VERBS_CQ_ENTRIES; when none has room for a new
 * connection, one is grown with ibv_resize_cq() if the device can, and
 * otherwise another is made: resize is an optimisation, never a condition
 * for accepting a session.  All share the device's completion channel.
 */
struct vcq {
	struct vcq *next;
	struct ibv_cq *cq;
	int size;	  /* entries it has */
	int used;	  /* entries reserved by connections */
	unsigned unacked; /* events taken from the channel, not yet acknowledged */
};

struct vdev {
	struct vdev *next;
	struct verbs_tctx *t;
	struct ibv_context *verbs;
	struct ibv_pd *pd;
	struct ibv_comp_channel *chan;
	struct vcq *cqs;
	struct vcq *turn; /* the CQ poll_cqs() starts with (NULL: the first) */
	int max_cqe;
	bool no_resize; /* TERN_VERBS_NO_RESIZE_CQ: behave as if ibv_resize_cq failed */
	uint8_t rd_atom;
	uint8_t init_rd_atom;
	uint64_t max_msg; /* the port's largest message: one bulk work request at most */
	enum vexport xmode;
	/*
	 * Completions taken off the CQ while waiting for an invalidation
	 * (win_invalidate), oldest first; poll_cqs() handles them before
	 * polling the CQ again, so nothing is lost or reordered.
	 */
	struct ibv_wc *stash;
	uint32_t stash_head, stash_len, stash_cap;
	uv_poll_t poll;
};

struct vwin;

struct vconn {
	struct tern_conn base;
	struct verbs_tctx *t;
	struct vdev *dev;
	struct vcq *cq; /* where its QP's completions go, once it has one */
	struct rdma_cm_id *id;
	uint32_t index;
	uint16_t gen;
	enum vstate state;
	bool server;
	struct tern_conn_params params;
	uint8_t hs[TERN_HANDSHAKE_MAX];
	uint8_t hs_len;
	uint8_t *mem;
	size_t mem_len;
	struct ibv_mr *mr;
	uint8_t *recv_base;
	uint32_t max_inline;
	/*
	 * Selective signalling: only every sig_every-th send asks for a
	 * completion.  A completion means every send posted before it is done
	 * too (a send queue completes in order), so the slots posted since
	 * the last completion wait in this FIFO and are all released at once.
	 */
	uint32_t *posted; /* send slots in post order (ring of send_slots) */
	uint32_t posted_head;
	uint32_t sends_out; /* entries in @posted */
	uint32_t unsignaled;
	uint32_t sig_every;
	bool report_out;      /* report_sends()'s WRITE is in flight... */
	bool report_again;    /* ...and sends posted since want one too */
	uint32_t report_slot; /* the last send it covers */
	uint32_t recvs_out;
	/*
	 * Sends ever posted, and how many of the first of them are known
	 * done (released in post order): a window's bind posted after send
	 * number k has been carried out once more than k are done.
	 */
	uint64_t sends_posted;
	uint64_t sends_released;
	int cq_reserved;
	struct vbulk {
		uint64_t cookie;
		enum ibv_wr_opcode opcode;
		struct tern_tmem *m; /* local memory, the engine's until bulk_done */
		size_t off;
		size_t len;
		struct tern_bulk_desc remote;
		size_t posted;	/* bytes posted so far */
		uint8_t window; /* work requests in the current window; the last is signalled */
		int status;	/* the first error seen */
		enum ibv_wc_status wcst; /* ...and its completion status, if it was one */
	} bulk[VERBS_BULK_OPS];
	/* Exports (memory windows, or per-call registrations); see win_*(). */
	struct vwin **wins;
	uint32_t nwins;	     /* made so far, at most VERBS_WIN_MAX */
	uint32_t *free_wins; /* indices of windows not exported now */
	uint32_t nfree_wins;
	/* A failure found where the engine cannot be told (inside one of its
	 * calls): reported from the timer, and by the flushes that follow. */
	int pending_err;
	const char *pending_why;
	bool qp_dead;	    /* a completion failed: the QP is in the error state */
	uint32_t bulk_busy; /* bitmask of bulk[] in use */
	/*
	 * A transfer the peer's NIC refused, waiting for the verdict
	 * (bulk_refused()): a violation, or a peer that went.  Transfers
	 * that finish meanwhile are held (bulk_held, still in bulk_busy)
	 * and reported with it.
	 */
	bool verdict_pending;
	uint32_t bulk_held;
	int verdict_err;
	char verdict_why[200];
	uv_timer_t timer; /* connect deadline, a verdict's wait, the drain grace period */
};

struct vlistener {
	struct tern_tlistener base;
	struct rdma_cm_id *id;
};

struct verbs_tctx {
	tern_ctx *ctx;
	uv_loop_t *loop;
	const struct tern_transport_events *ev;
	struct rdma_event_channel *cm;
	uv_poll_t cm_poll;
	struct vdev *devs;
	struct vconn **conns;
	uint16_t *gens;
	uint32_t conns_cap;
	uint32_t *free_idx;
	uint32_t nfree;
	enum tern_transport_mode mode;
	int open_handles;
	struct tern_mem_stats mem; /* tern_ctx_mem(): counted at each ibv_reg_mr/ibv_dereg_mr */
};

#define T(x) ((struct verbs_tctx *)(x))
#define C(x) ((struct vconn *)(x))

static int neg_errno(int fallback)
{
	return errno > 0 ? -errno : -fallback;
}

/* ---- wr_id: [index:24][gen:16][recv:1][slot:23] ------------------------------ */

static uint64_t wrid(const struct vconn *c, bool recv, uint32_t slot)
{
	return ((uint64_t)c->index << 40) | ((uint64_t)c->gen << 24) | ((uint64_t)recv << 23) |
	       slot;
}

static void set_nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);
	if (fl >= 0)
		fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ---- devices -------------------------------------------------------------------- */

static int poll_cqs(struct verbs_tctx *t, int budget);

static void dev_poll_cb(uv_poll_t *h, int status, int events)
{
	struct vdev *d = h->data;
	struct verbs_tctx *t = d->t;
	struct ibv_cq *cq;
	void *cq_ctx;

	(void)status;
	(void)events;
	while (ibv_get_cq_event(d->chan, &cq, &cq_ctx) == 0)
		((struct vcq *)cq_ctx)->unacked++;
	for (struct vcq *q = d->cqs; q; q = q->next) {
		if (q->unacked) {
			ibv_ack_cq_events(q->cq, q->unacked);
			q->unacked = 0;
		}
	}
	if (t->mode != TERN_TRANSPORT_EVENTS)
		return;
	/* Re-arm before draining, so a completion that lands while we drain
	 * raises a new event instead of being missed. */
	for (struct vcq *q = d->cqs; q; q = q->next)
		ibv_req_notify_cq(q->cq, 0);
	while (poll_cqs(t, 256) > 0)
		;
	t->ev->activity(t->ctx);
}

/* Is the environment variable @name set to something other than "" or "0"? */
static bool env_flag(const char *name)
{
	const char *v = getenv(name);

	return v && *v && strcmp(v, "0") != 0;
}

/*
 * How @d grants remote access (enum vexport): memory windows of type 2 if
 * it has them and TERN_VERBS_NO_MW does not say otherwise; the user hears
 * of the fallback.
 */
static enum vexport dev_export_mode(struct vdev *d, const struct ibv_device_attr *attr)
{
	bool refused = env_flag("TERN_VERBS_NO_MW");
	struct ibv_mw *mw = NULL;
	char msg[256];

	if (!refused && (attr->device_cap_flags &
			 (IBV_DEVICE_MEM_WINDOW_TYPE_2A | IBV_DEVICE_MEM_WINDOW_TYPE_2B)))
		mw = ibv_alloc_mw(d->pd, IBV_MW_TYPE_2);
	if (mw) {
		ibv_dealloc_mw(mw);
		return attr->vendor_id == VERBS_RXE_VENDOR ? VX_WINDOW_EXACT : VX_WINDOW;
	}
	snprintf(msg, sizeof(msg),
		 "rdma: %s %s: each large message's buffer is registered for its call alone, "
		 "with only the access it needs, and its key is good on any connection of this "
		 "context to the device while the call lasts",
		 ibv_get_device_name(d->verbs->device),
		 refused ? "may not use memory windows (TERN_VERBS_NO_MW)"
			 : "has no memory windows of type 2");
	if (d->t->ev->notice)
		d->t->ev->notice(d->t->ctx, msg);
	return VX_REGISTER;
}

/* A new CQ of @size entries on @d's channel, armed if the context sleeps on it. */
static int cq_add(struct vdev *d, int size, struct vcq **out)
{
	struct vcq *q = calloc(1, sizeof(*q));

	if (!q)
		return -ENOMEM;
	q->cq = ibv_create_cq(d->verbs, size, q, d->chan, 0);
	if (!q->cq) {
		int rc = neg_errno(ENOMEM);

		free(q);
		return rc;
	}
	q->size = q->cq->cqe > size ? q->cq->cqe : size;
	if (d->t->mode == TERN_TRANSPORT_EVENTS)
		ibv_req_notify_cq(q->cq, 0);
	/* at the tail: the CQs that fill first are looked at first */
	struct vcq **p = &d->cqs;
	while (*p)
		p = &(*p)->next;
	*p = q;
	*out = q;
	return 0;
}

/* Grow @q to hold @need more, if the device can resize CQs. */
static int cq_grow(struct vdev *d, struct vcq *q, int need)
{
	int want = q->size * 2 > q->used + need ? q->size * 2 : q->used + need;

	if (want > d->max_cqe)
		want = d->max_cqe;
	if (d->no_resize || q->used + need > want || ibv_resize_cq(q->cq, want))
		return -ENOSPC;
	q->size = q->cq->cqe > want ? q->cq->cqe : want;
	return 0;
}

static int dev_get(struct verbs_tctx *t, struct ibv_context *verbs, struct vdev **out)
{
	struct vcq *q;
	struct ibv_device_attr attr;
	struct ibv_port_attr pattr;
	struct vdev *d;

	for (d = t->devs; d; d = d->next) {
		if (d->verbs == verbs) {
			*out = d;
			return 0;
		}
	}
	if (ibv_query_device(verbs, &attr))
		return neg_errno(EIO);
	if (ibv_query_port(verbs, 1, &pattr))
		return neg_errno(EIO);
	d = calloc(1, sizeof(*d));
	if (!d)
		return -ENOMEM;
	d->t = t;
	d->verbs = verbs;
	d->max_msg =
		pattr.max_msg_sz < VERBS_BULK_CHUNK_MAX ? pattr.max_msg_sz : VERBS_BULK_CHUNK_MAX;
	d->max_cqe = attr.max_cqe;
	d->rd_atom = attr.max_qp_rd_atom < VERBS_RD_ATOMIC ? attr.max_qp_rd_atom : VERBS_RD_ATOMIC;
	d->init_rd_atom = attr.max_qp_init_rd_atom < VERBS_RD_ATOMIC ? attr.max_qp_init_rd_atom
								     : VERBS_RD_ATOMIC;
	d->no_resize = env_flag("TERN_VERBS_NO_RESIZE_CQ");
	d->pd = ibv_alloc_pd(verbs);
	d->chan = d->pd ? ibv_create_comp_channel(verbs) : NULL;
	if (!d->chan ||
	    cq_add(d, VERBS_CQ_ENTRIES < d->max_cqe ? VERBS_CQ_ENTRIES : d->max_cqe, &q)) {
		int rc = neg_errno(ENOMEM);
		if (d->chan)
			ibv_destroy_comp_channel(d->chan);
		if (d->pd)
			ibv_dealloc_pd(d->pd);
		free(d);
		return rc;
	}
	d->xmode = dev_export_mode(d, &attr);
	set_nonblock(d->chan->fd);
	uv_poll_init(t->loop, &d->poll, d->chan->fd);
	d->poll.data = d;
	uv_poll_start(&d->poll, UV_READABLE, dev_poll_cb);
	t->open_handles++;
	d->next = t->devs;
	t->devs = d;
	*out = d;
	return 0;
}

/*
 * Reserve room for @need more of @c's completions: in its own CQ once its
 * QP is made with one; before that in the first CQ with room, or one grown,
 * or a new one (struct vcq).
 */
static int conn_reserve_cq(struct vconn *c, int need)
{
	struct vdev *d = c->dev;
	struct vcq *q = c->cq;
	int rc;

	if (q) {
		if (q->size - q->used < need && cq_grow(d, q, need))
			return -ENOSPC;
	} else {
		for (q = d->cqs; q && q->size - q->used < need; q = q->next)
			;
		if (!q)
			for (q = d->cqs; q && cq_grow(d, q, need); q = q->next)
				;
		if (!q) {
			/* Room for a few connections like this one (and their
			 * windows' binds), as the first CQ has. */
			int size = need * 3 > VERBS_CQ_ENTRIES ? need * 3 : VERBS_CQ_ENTRIES;

			if (size > d->max_cqe)
				size = d->max_cqe;
			if (need > size)
				return -ENOSPC;
			if ((rc = cq_add(d, size, &q)))
				return rc;
		}
		c->cq = q;
	}
	q->used += need;
	c->cq_reserved += need;
	return 0;
}

/* Room in the stash for @n more completions, before taking them off the CQ. */
static bool stash_reserve(struct vdev *d, uint32_t n)
{
	uint32_t cap = d->stash_cap ? d->stash_cap : 64;
	struct ibv_wc *wcs;

	if (d->stash_cap - d->stash_len >= n)
		return true;
	while (cap - d->stash_len < n)
		cap *= 2;
	wcs = malloc(cap * sizeof(*wcs));
	if (!wcs)
		return false;
	for (uint32_t i = 0; i < d->stash_len; i++)
		wcs[i] = d->stash[(d->stash_head + i) % d->stash_cap];
	free(d->stash);
	d->stash = wcs;
	d->stash_cap = cap;
	d->stash_head = 0;
	return true;
}

/* Keep @wc for poll_cqs(); false if there is no memory to keep it in. */
static bool stash_push(struct vdev *d, const struct ibv_wc *wc)
{
	if (!stash_reserve(d, 1))
		return false;
	d->stash[(d->stash_head + d->stash_len++) % d->stash_cap] = *wc;
	return true;
}

static struct ibv_wc stash_pop(struct vdev *d)
{
	struct ibv_wc wc = d->stash[d->stash_head];

	d->stash_head = (d->stash_head + 1) % d->stash_cap;
	d->stash_len--;
	return wc;
}

/* ---- connections ------------------------------------------------------------- */

static void conn_timer_closed(uv_handle_t *h)
{
	struct vconn *c = h->data;
	struct verbs_tctx *t = c->t;

	t->open_handles--;
	t->ev->closed(&c->base);
	free(c);
}

static struct vconn *conn_new(struct verbs_tctx *t, const struct tern_conn_params *p, void *owner,
			      bool server)
{
	struct vconn *c;

	if (t->nfree == 0) {
		uint32_t cap = t->conns_cap ? t->conns_cap * 2 : 64;
		struct vconn **conns = realloc(t->conns, cap * sizeof(*conns));
		uint16_t *gens = conns ? realloc(t->gens, cap * sizeof(*gens)) : NULL;
		uint32_t *free_idx = gens ? realloc(t->free_idx, cap * sizeof(*free_idx)) : NULL;

		if (conns)
			t->conns = conns;
		if (gens)
			t->gens = gens;
		if (!free_idx || cap > (1u << 24))
			return NULL;
		t->free_idx = free_idx;
		for (uint32_t i = t->conns_cap; i < cap; i++) {
			t->conns[i] = NULL;
			t->gens[i] = 0;
			t->free_idx[t->nfree++] = cap - 1 - (i - t->conns_cap);
		}
		t->conns_cap = cap;
	}
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->t = t;
	c->server = server;
	c->params = *p;
	c->base.ops = &tern_verbs_transport;
	c->base.tctx = (struct tern_tctx *)t;
	c->base.owner = owner;
	c->base.slot_size = p->slot_size;
	c->base.send_slots = p->send_slots;
	c->base.recv_slots = p->recv_slots;
	c->index = t->free_idx[--t->nfree];
	c->gen = ++t->gens[c->index];
	t->conns[c->index] = c;
	uv_timer_init(t->loop, &c->timer);
	c->timer.data = c;
	t->open_handles++;
	return c;
}

static int conn_post_recv(struct vconn *c, uint32_t slot)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)(c->recv_base + (size_t)slot * c->base.slot_size),
		.length = c->base.slot_size,
		.lkey = c->mr->lkey,
	};
	struct ibv_recv_wr wr = {.wr_id = wrid(c, true, slot), .sg_list = &sge, .num_sge = 1};
	struct ibv_recv_wr *bad;
	int rc = ibv_post_recv(c->id->qp, &wr, &bad);

	if (rc)
		return -rc;
	c->recvs_out++;
	return 0;
}

/* Build the QP and the rings, and post every receive before the peer can send. */
static int conn_setup(struct vconn *c)
{
	struct ibv_qp_init_attr qa;
	bool windows;
	size_t ring;
	int rc;

	if ((rc = dev_get(c->t, c->id->verbs, &c->dev)))
		return rc;
	windows = c->dev->xmode != VX_REGISTER;
	/* With windows, one more for the invalidation or the bind's fence in
	 * flight (both waited for, so one at a time); each window reserves
	 * one for its bind when it is made (win_take). */
	rc = conn_reserve_cq(c, (int)(c->base.send_slots + 1 + VERBS_BULK_WR + c->base.recv_slots +
				      (windows ? 1 : 0)));
	if (rc)
		return rc;

	c->posted = calloc(c->base.send_slots, sizeof(*c->posted));
	c->wins = calloc(VERBS_WIN_MAX(c), sizeof(*c->wins));
	c->free_wins = calloc(VERBS_WIN_MAX(c), sizeof(*c->free_wins));
	if (!c->posted || !c->wins || !c->free_wins)
		return -ENOMEM;
	/* At most sig_every - 1 slots wait unconfirmed; keep that well under
	 * the send ring so the engine never runs short (small rings: signal
	 * every send). */
	c->sig_every = c->base.send_slots / 8 ? c->base.send_slots / 8 : 1;
	if (c->sig_every > 16)
		c->sig_every = 16;
	ring = (size_t)c->base.send_slots * c->base.slot_size;
	c->mem_len = ring + (size_t)c->base.recv_slots * c->base.slot_size;
	if (posix_memalign((void **)&c->mem, 4096, c->mem_len))
		return -ENOMEM;
	memset(c->mem, 0, c->mem_len);
	c->mr = ibv_reg_mr(c->dev->pd, c->mem, c->mem_len, IBV_ACCESS_LOCAL_WRITE);
	if (!c->mr)
		return neg_errno(ENOMEM);
	c->t->mem.slots_registered += c->mem_len;
	c->base.send_base = c->mem;
	c->base.send_region = ring;
	c->recv_base = c->mem + ring;

	memset(&qa, 0, sizeof(qa));
	qa.qp_type = IBV_QPT_RC;
	qa.send_cq = c->cq->cq;
	qa.recv_cq = c->cq->cq;
	/*
	 * Send queue: a send per send slot (the engine reuses a slot only
	 * after send_done, which needs the completion of that send or of a
	 * later one), report_sends()'s one WRITE, the bulk windows, and
	 * with memory windows the binds (unsignaled, each done once a later
	 * completion is seen) plus one waited invalidation (win_retire()) or
	 * fence (win_fence(), on rxe).
	 * Each bind comes before the send that carries its key, at most two
	 * per send (or is invalidated and waited for, its send never going),
	 * and sends not yet seen done are at most send_slots, so binds not yet
	 * seen done are at most VERBS_WIN_MAX.
	 */
	qa.cap.max_send_wr =
		c->base.send_slots + 1 + VERBS_BULK_WR + (windows ? VERBS_WIN_MAX(c) + 1 : 0);
	qa.cap.max_recv_wr = c->base.recv_slots;
	qa.cap.max_send_sge = 1;
	qa.cap.max_recv_sge = 1;
	qa.sq_sig_all = 0;
	for (size_t i = 0;; i++) {
		qa.cap.max_inline_data = verbs_inline_sizes[i];
		if (rdma_create_qp(c->id, c->dev->pd, &qa) == 0)
			break;
		if (verbs_inline_sizes[i] == 0)
			return neg_errno(ENOMEM);
	}
	c->max_inline = qa.cap.max_inline_data;
	for (uint32_t i = 0; i < c->base.recv_slots; i++)
		if ((rc = conn_post_recv(c, i)))
			return rc;
	return 0;
}

static void conn_param_init(struct vconn *c, struct rdma_conn_param *cp)
{
	uint8_t ack_timeout = VERBS_ACK_TIMEOUT;

	/* Applied to our QP when rdma_cm moves it to RTS.  A kernel without
	 * the option (before 4.18) keeps its own default: slower to notice a
	 * dead peer, still bounded. */
	(void)rdma_set_option(c->id, RDMA_OPTION_ID, RDMA_OPTION_ID_ACK_TIMEOUT, &ack_timeout,
			      sizeof(ack_timeout));
	memset(cp, 0, sizeof(*cp));
	cp->private_data = c->hs;
	cp->private_data_len = c->hs_len;
	cp->responder_resources = c->dev ? c->dev->rd_atom : 1;
	cp->initiator_depth = c->dev ? c->dev->init_rd_atom : 1;
	/* rdma_cm applies these to the peer's QP (the REQ carries the
	 * passive side's, the REP the active side's); both sides send the same. */
	cp->retry_count = VERBS_RETRY_COUNT;
	cp->rnr_retry_count = VERBS_RNR_RETRY;
}

/* Bulk transfers still outstanding when a connection goes: fail them. */
static void bulk_fail_all(struct vconn *c, int err)
{
	for (uint32_t i = 0; i < VERBS_BULK_OPS; i++) {
		if (c->bulk_busy & (1u << i)) {
			c->bulk_busy &= ~(1u << i);
			c->t->ev->bulk_done(&c->base, c->bulk[i].cookie, err);
		}
	}
}

static void wins_destroy(struct vconn *c);

/* Slots the engine kept after their connection (keep_rx). */
struct kept_mem {
	struct ibv_mr *mr;
	void *mem;
	uint64_t *counter; /* where k->mr is counted */
};

static void kept_mem_release(void *arg)
{
	struct kept_mem *k = arg;

	if (k->mr) {
		*k->counter -= k->mr->length;
		ibv_dereg_mr(k->mr);
	}
	free(k->mem);
	free(k);
}

/* Hand the slots to the engine if a request still points into them. */
static bool mem_keep(struct vconn *c)
{
	struct kept_mem *k;

	if (!(k = malloc(sizeof(*k))))
		return false;
	k->mr = c->mr;
	k->mem = c->mem;
	k->counter = &c->t->mem.slots_registered;
	if (c->t->ev->keep_rx(&c->base, kept_mem_release, k))
		return true;
	free(k);
	return false;
}

static void conn_destroy(struct vconn *c)
{
	struct verbs_tctx *t = c->t;

	if (c->state == V_DESTROYED)
		return;
	c->state = V_DESTROYED;
	bulk_fail_all(c, -ECONNRESET);
	uv_timer_stop(&c->timer);
	/* Windows first: a type 2 window holds on to the QP it is bound to. */
	wins_destroy(c);
	if (c->id && c->id->qp)
		rdma_destroy_qp(c->id);
	if (c->mem && mem_keep(c)) {
		/* the engine deregisters and frees them later */
	} else {
		if (c->mr) {
			t->mem.slots_registered -= c->mr->length;
			ibv_dereg_mr(c->mr);
		}
		free(c->mem);
	}
	c->mr = NULL;
	c->mem = NULL;
	free(c->posted);
	c->posted = NULL;
	c->base.send_base = NULL;
	if (c->cq)
		c->cq->used -= c->cq_reserved;
	c->cq_reserved = 0;
	if (c->id)
		rdma_destroy_id(c->id);
	c->id = NULL;
	/* Bump the generation: completions still in the shared CQ for this
	 * index no longer match anything. */
	t->conns[c->index] = NULL;
	t->gens[c->index]++;
	t->free_idx[t->nfree++] = c->index;
	uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
}

static void drain_timeout(uv_timer_t *tm)
{
	conn_destroy(tm->data);
}

/*
 * Everything posted has flushed.  Sends posted after the last signalled one
 * may never produce a completion (they can finish successfully, silently,
 * before the QP errors), so they are not waited for: destroying the QP
 * stops the device touching them, and any late completion is recognised
 * by its generation and dropped.
 */
static void conn_check_drained(struct vconn *c)
{
	if (c->state == V_DOWN && c->sends_out <= c->unsignaled && c->recvs_out == 0 &&
	    !(c->bulk_busy & ~c->bulk_held) && !c->report_out)
		conn_destroy(c);
}

/* Start tearing down: error the QP so everything posted flushes, then wait
 * (bounded) for the flushes before destroying the QP. */
static void conn_teardown(struct vconn *c)
{
	if (c->state == V_DOWN || c->state == V_DESTROYED)
		return;
	if (c->id && c->id->qp) {
		struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};
		if (c->state == V_UP)
			rdma_disconnect(c->id); /* tells the peer, errors the QP */
		ibv_modify_qp(c->id->qp, &a, IBV_QP_STATE);
	}
	c->state = V_DOWN;
	/* Transfers held for a verdict stay held: conn_destroy() reports them. */
	c->verdict_pending = false;
	uv_timer_stop(&c->timer);
	uv_timer_start(&c->timer, drain_timeout, VERBS_DRAIN_GRACE_MS, 0);
	conn_check_drained(c);
}

/* Failed, at any stage: the engine sorts out what that means (tern/transport.h). */
static void conn_failed(struct vconn *c, int err, const char *why)
{
	c->t->ev->error(&c->base, err, why);
	conn_teardown(c);
}

static void mark_up(struct vconn *c)
{
	uv_timer_stop(&c->timer);
	c->state = V_UP;
}

static void connect_timeout(uv_timer_t *tm)
{
	struct vconn *c = tm->data;

	if (c->state < V_UP)
		conn_failed(c, -ETIMEDOUT, NULL);
}

static void fmt_peer(struct vconn *c, struct sockaddr *sa)
{
	char host[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;

	if (sa && sa->sa_family == AF_INET) {
		inet_ntop(AF_INET, &((struct sockaddr_in *)sa)->sin_addr, host, sizeof(host));
		port = ntohs(((struct sockaddr_in *)sa)->sin_port);
	} else if (sa && sa->sa_family == AF_INET6) {
		inet_ntop(AF_INET6, &((struct sockaddr_in6 *)sa)->sin6_addr, host, sizeof(host));
		port = ntohs(((struct sockaddr_in6 *)sa)->sin6_port);
	}
	snprintf(c->base.peer, sizeof(c->base.peer), "%s:%u", host, port);
}

/* ---- completions ------------------------------------------------------------- */

static int wc_error(enum ibv_wc_status st)
{
	switch (st) {
	case IBV_WC_RETRY_EXC_ERR:
		return -ECONNRESET; /* the peer stopped answering */
	case IBV_WC_RNR_RETRY_EXC_ERR:
		return -EPROTO; /* a receive was missing: a credit bug */
	case IBV_WC_WR_FLUSH_ERR:
		return -ECONNRESET;
	case IBV_WC_REM_ACCESS_ERR:
	case IBV_WC_REM_INV_REQ_ERR:
		/* the peer's NIC refused what its descriptor named: memory it
		 * never exported, or not for this direction or this long */
		return TERN_EPEER;
	default:
		return -EIO;
	}
}

/*
 * An error among @c's completions that are not handled yet, other than a
 * flush, if there is one: the CQ is emptied into the stash (which keeps
 * them, in order, for poll_cqs()) to look.
 */
static enum ibv_wc_status flush_cause(struct vconn *c)
{
	struct vdev *d = c->dev;
	uint64_t who = ((uint64_t)c->index << 16) | c->gen;
	int n;

	do {
		struct ibv_wc wc[VERBS_POLL_BATCH];

		if (!stash_reserve(d, VERBS_POLL_BATCH))
			break;
		n = ibv_poll_cq(c->cq->cq, VERBS_POLL_BATCH, wc);
		for (int i = 0; i < n; i++)
			stash_push(d, &wc[i]); /* room reserved */
	} while (n == VERBS_POLL_BATCH);
	for (uint32_t i = 0; i < d->stash_len; i++) {
		const struct ibv_wc *e = &d->stash[(d->stash_head + i) % d->stash_cap];

		if (e->wr_id >> 24 == who && e->status != IBV_WC_SUCCESS &&
		    e->status != IBV_WC_WR_FLUSH_ERR)
			return e->status;
	}
	return IBV_WC_WR_FLUSH_ERR;
}

/*
 * Why @c's work requests failed, from the status @st of one of them; the
 * error for the engine, and @why.  A flush with no error of our own before
 * it means the QP went into the error state from its receiving side: our
 * NIC refused a request of the peer's (an RDMA READ or WRITE outside what
 * we exported to it, through a key of a call that is over, or malformed)
 * and stopped the connection.  The NIC tells the peer (a remote access
 * error there) and nobody here, so this is where we learn it.
 */
static int conn_wc_error(struct vconn *c, enum ibv_wc_status st, char *why, size_t len)
{
	if (c->pending_err) {
		snprintf(why, len, "%s", c->pending_why);
		return c->pending_err;
	}
	if (st == IBV_WC_WR_FLUSH_ERR)
		st = flush_cause(c);
	if (st == IBV_WC_WR_FLUSH_ERR) {
		snprintf(why, len,
			 "our NIC refused a request of the peer's (memory not exported to it, "
			 "or not for that, or no longer) and stopped the connection");
		return TERN_EPEER;
	}
	if (st == IBV_WC_RETRY_EXC_ERR)
		snprintf(why, len,
			 "the peer stopped answering: nothing acknowledged after %d resends "
			 "%u ms apart (%s)",
			 VERBS_RETRY_COUNT, (4096u << VERBS_ACK_TIMEOUT) / 1000000u,
			 ibv_wc_status_str(st));
	else
		snprintf(why, len, "%s", ibv_wc_status_str(st));
	return wc_error(st);
}

/*
 * One of @c's work requests (@what) completed with @st: the connection
 * failed.  Unless a refused transfer is awaiting its verdict: the QP is in
 * the error state since, so this is its flush, and the verdict reports.
 */
static void conn_failed_wc(struct vconn *c, enum ibv_wc_status st, const char *what)
{
	char why[256], cause[200];
	int err;

	if (c->verdict_pending)
		return;
	err = conn_wc_error(c, st, cause, sizeof(cause));

	snprintf(why, sizeof(why), "%s completion: %s", what, cause);
	conn_failed(c, err, why);
}

/*
 * A send completion for @slot: every send posted up to it is done.  Report
 * them in post order (when @report); return false if @c went away meanwhile.
 */
static bool release_sends(struct vconn *c, uint32_t slot, bool report)
{
	struct verbs_tctx *t = c->t;
	uint32_t index = c->index;
	uint16_t gen = c->gen;

	while (c->sends_out) {
		uint32_t s = c->posted[c->posted_head];

		c->posted_head = (c->posted_head + 1) % c->base.send_slots;
		c->sends_out--;
		c->sends_released++;
		if (report)
			t->ev->send_done(&c->base, s);
		/* an upcall may have torn the connection down */
		if (t->conns[index] != c || c->gen != gen || c->state != V_UP)
			report = false;
		if (t->conns[index] != c || c->gen != gen)
			return false;
		if (s == slot)
			break;
	}
	return true;
}

static int bulk_post_window(struct vconn *c, uint32_t op);
static void verbs_report_sends(struct tern_conn *bc);

/*
 * The verdict on a refused transfer (bulk_refused()): tell the engine why
 * the connection failed, then report the transfers held meanwhile.
 */
static void verdict_settle(struct vconn *c, int err, const char *why)
{
	uint32_t held = c->bulk_held;

	c->verdict_pending = false;
	c->bulk_held = 0; /* counted again: the drain waits for their reports */
	conn_failed(c, err, why);
	for (uint32_t i = 0; i < VERBS_BULK_OPS; i++) {
		if ((held & (1u << i)) && (c->bulk_busy & (1u << i))) {
			c->bulk_busy &= ~(1u << i);
			c->t->ev->bulk_done(&c->base, c->bulk[i].cookie, err);
		}
	}
	conn_check_drained(c);
}

static void verdict_timeout(uv_timer_t *tm)
{
	struct vconn *c = tm->data;

	if (c->verdict_pending && c->state == V_UP)
		verdict_settle(c, c->verdict_err, c->verdict_why);
}

/*
 * Transfer @op met a remote access error: the peer's NIC refused what the
 * peer's descriptor named.  A hostile or broken peer does that (memory it
 * never exported, or not for this direction); so does an honest peer that
 * closed or died while we were moving its data: its exports were withdrawn
 * as it went, and its disconnect is on its way to us behind the refusal
 * (rdma_cm tells us separately, in its own time).  So the verdict waits,
 * up to VERBS_VERDICT_MS: the peer's disconnect in that time makes it a
 * reset (-ECONNRESET, on_conn_event()), otherwise it is a violation
 * (TERN_EPEER).  Either way the connection is over: the refusal put our QP
 * in the error state, so nothing more moves meanwhile, and a peer that
 * breaks the rules and then hangs up gains nothing by it.
 */
static void bulk_refused(struct vconn *c, uint32_t op)
{
	char cause[sizeof(c->verdict_why) - 20];

	c->verdict_err = conn_wc_error(c, c->bulk[op].wcst, cause, sizeof(cause));
	snprintf(c->verdict_why, sizeof(c->verdict_why), "bulk transfer: %s", cause);
	c->verdict_pending = true;
	c->bulk_held |= 1u << op;
	uv_timer_stop(&c->timer);
	uv_timer_start(&c->timer, verdict_timeout, VERBS_VERDICT_MS, 0);
}

/*
 * report_sends()'s WRITE completed: every send posted before it is done
 * (report_slot is the last of them, and still in the FIFO: only this
 * completion or an error releases it).  Then ask again for sends posted
 * since, if someone wanted that meanwhile.
 */
static void report_completion(struct vconn *c, enum ibv_wc_status st)
{
	bool ok = st == IBV_WC_SUCCESS && c->state == V_UP;

	c->report_out = false;
	if (c->sends_out && !release_sends(c, c->report_slot, ok))
		return; /* the connection was destroyed from an upcall */
	if (c->state != V_UP) {
		conn_check_drained(c);
		return;
	}
	if (st != IBV_WC_SUCCESS) {
		conn_failed_wc(c, st, "send report (zero-length RDMA WRITE)");
		return;
	}
	if (c->report_again) {
		c->report_again = false;
		verbs_report_sends(&c->base);
	}
}

/*
 * A bulk work request completed.  Only the last of a window is signalled,
 * but an error completes (and flushes) the others too.  When a window is in,
 * post the next, or report the op once, with its first error.
 */
static void bulk_completion(struct vconn *c, uint32_t id, enum ibv_wc_status st)
{
	uint32_t op = id / VERBS_BULK_CHUNKS, chunk = id % VERBS_BULK_CHUNKS;
	struct vbulk *b;
	int status;

	if (op >= VERBS_BULK_OPS || !(c->bulk_busy & (1u << op)))
		return;
	b = &c->bulk[op];
	if (st != IBV_WC_SUCCESS && !b->status) {
		b->status = wc_error(st);
		b->wcst = st;
	}
	if (chunk != b->window - 1u)
		return;
	if (!b->status && b->posted < b->len && c->state == V_UP) {
		int rc = bulk_post_window(c, op);
		if (rc == 0)
			return;
		b->status = rc;
	}
	if (c->state == V_UP && c->verdict_pending) {
		c->bulk_held |= 1u << op; /* reported with the verdict */
		return;
	}
	if (c->state == V_UP && !c->pending_err &&
	    (b->wcst == IBV_WC_REM_ACCESS_ERR || b->wcst == IBV_WC_REM_INV_REQ_ERR)) {
		bulk_refused(c, op);
		return;
	}
	c->bulk_busy &= ~(1u << op);
	status = b->status;
	if (b->wcst != IBV_WC_SUCCESS && c->state == V_UP) {
		/* The session learns why first: the transfer then ends in a
		 * session that is gone, and says nothing of its own. */
		char why[256], cause[200];

		status = conn_wc_error(c, b->wcst, cause, sizeof(cause));
		snprintf(why, sizeof(why), "bulk transfer: %s", cause);
		conn_failed(c, status, why);
	}
	c->t->ev->bulk_done(&c->base, b->cookie, status);
	if (c->state != V_UP)
		conn_check_drained(c);
	else if (status)
		conn_failed(c, status, "bulk transfer failed");
}

static void handle_wc(struct verbs_tctx *t, const struct ibv_wc *wc)
{
	uint32_t index = (uint32_t)(wc->wr_id >> 40);
	uint16_t gen = (uint16_t)(wc->wr_id >> 24);
	bool recv = (wc->wr_id >> 23) & 1;
	uint32_t slot = (uint32_t)(wc->wr_id & ((1u << 23) - 1));
	struct vconn *c;

	if (index >= t->conns_cap || !(c = t->conns[index]) || c->gen != gen)
		return; /* a destroyed connection's leftover */
	if (recv)
		c->recvs_out--;
	if (wc->status != IBV_WC_SUCCESS)
		c->qp_dead = true; /* an RC QP is in the error state once one fails */
	if (!recv && (slot >= VERBS_WIN_SLOT || slot == VERBS_FENCE_SLOT)) {
		/* A bind (unsignaled: here only in error), or an invalidation
		 * or a fence its wait gave up on.  None is in the send FIFO. */
		if (wc->status == IBV_WC_SUCCESS)
			return;
		if (c->state != V_UP)
			conn_check_drained(c);
		else
			conn_failed_wc(c, wc->status,
				       slot == VERBS_FENCE_SLOT ? "memory window bind's fence"
				       : slot >= VERBS_INV_SLOT ? "memory window invalidation"
								: "memory window bind");
		return;
	}
	if (!recv && slot == VERBS_REPORT_SLOT) {
		report_completion(c, wc->status);
		return;
	}
	if (!recv && slot >= VERBS_BULK_SLOT) {
		bulk_completion(c, slot - VERBS_BULK_SLOT, wc->status);
		return;
	}

	if (wc->status == IBV_WC_SUCCESS && recv && c->state == V_ACCEPTING && c->server) {
		/* Data before our ESTABLISHED event: the client is up, so are we
		 * (the first receive counts as the RTU). */
		mark_up(c);
		t->ev->accepted(&c->base, 0);
	}
	if (!recv && !release_sends(c, slot, wc->status == IBV_WC_SUCCESS && c->state == V_UP))
		return; /* the connection was destroyed from an upcall */
	if (c->state != V_UP) {
		conn_check_drained(c);
		return;
	}
	if (wc->status != IBV_WC_SUCCESS) {
		conn_failed_wc(c, wc->status, recv ? "receive" : "send");
		return;
	}
	if (recv) {
		if (slot >= c->base.recv_slots)
			return;
		t->ev->recv(&c->base, slot, c->recv_base + (size_t)slot * c->base.slot_size,
			    wc->byte_len);
	}
}

static int poll_cqs(struct verbs_tctx *t, int budget)
{
	struct ibv_wc wc[VERBS_POLL_BATCH];
	int total = 0;

	for (struct vdev *d = t->devs; d && total < budget; d = d->next) {
		struct vcq *first = d->turn ? d->turn : d->cqs, *q = first;

		/* Each CQ until it is empty, the stash first whenever it has
		 * anything: a connection's completions are in one CQ, and
		 * those in the stash were taken off it before what is still
		 * in it.  The CQs take turns to go first, so that one busy CQ
		 * cannot use up every budget while the others wait. */
		while ((q || d->stash_len) && total < budget) {
			int want, n;

			if (d->stash_len) {
				struct ibv_wc w = stash_pop(d);

				handle_wc(t, &w);
				total++;
				continue;
			}
			want = budget - total < VERBS_POLL_BATCH ? budget - total
								 : VERBS_POLL_BATCH;
			n = ibv_poll_cq(q->cq, want, wc);
			for (int i = 0; i < n; i++)
				handle_wc(t, &wc[i]);
			if (n > 0)
				total += n;
			if (n < want) {
				q = q->next ? q->next : d->cqs;
				if (q == first)
					q = NULL;
			}
		}
		/* the CQ the budget ran out in, else the one after this first */
		d->turn = q ? q : first->next;
	}
	return total;
}

/* ---- rdma_cm events ------------------------------------------------------------ */

struct cm_ev {
	enum rdma_cm_event_type type;
	int status;
	struct rdma_cm_id *id;
	struct rdma_cm_id *listen_id;
	uint8_t pd[256];
	size_t pd_len;
};

/*
 * A connection request a context group's listener took, on its way to a
 * member context (struct tern_handoff's @req).  The acceptor's thread
 * acks the request's event, copies it here and hands it to the engine;
 * the group moves the cm_id to the member's event channel
 * (verbs_handoff_move(): rdma_migrate_id()) and posts it to the member,
 * whose thread then accepts it exactly as its own listener would have
 * (verbs_adopt()), with its own PD, CQ and completion channel.  Events of
 * the id that reach the member before that (the client gave up) only mark
 * it @gone.
 */
struct vhandoff {
	struct cm_ev e;
	bool gone;
};

/*
 * What an id's context holds, told apart by the low bits: a connection (a
 * plain pointer), a listener, or a request being handed off.
 */
#define ID_TAG_MASK  3u
#define LISTENER_TAG 1u
#define HANDOFF_TAG  2u

static void *listener_ctx(struct vlistener *l)
{
	return (void *)((uintptr_t)l | LISTENER_TAG);
}

static struct vlistener *ctx_listener(void *p)
{
	return ((uintptr_t)p & ID_TAG_MASK) == LISTENER_TAG
		       ? (struct vlistener *)((uintptr_t)p & ~(uintptr_t)ID_TAG_MASK)
		       : NULL;
}

static struct vhandoff *ctx_handoff(void *p)
{
	return ((uintptr_t)p & ID_TAG_MASK) == HANDOFF_TAG
		       ? (struct vhandoff *)((uintptr_t)p & ~(uintptr_t)ID_TAG_MASK)
		       : NULL;
}

/* Refuse a request nobody will serve, and free what it holds. */
static void request_refuse(struct rdma_cm_id *id)
{
	rdma_reject(id, NULL, 0);
	rdma_destroy_id(id);
}

/* A group's listener: the request goes to the engine, unanswered. */
static void handoff_out(struct verbs_tctx *t, struct vlistener *l, const struct cm_ev *e)
{
	struct vhandoff *h = malloc(sizeof(*h));

	if (!h) {
		request_refuse(e->id);
		return;
	}
	h->e = *e;
	h->gone = false;
	e->id->context = (void *)((uintptr_t)h | HANDOFF_TAG);
	t->ev->handoff(&l->base, (struct tern_handoff){.fd = -1, .req = h});
}

static void on_connect_request(struct verbs_tctx *t, struct vlistener *l, struct cm_ev *e)
{
	struct tern_conn_params p = {0};
	struct rdma_conn_param cp;
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	void *owner = NULL;
	struct vconn *c;
	int rc;

	if (l->base.handoff) {
		handoff_out(t, l, e);
		return;
	}
	/* The connection object first: once the engine has made a session
	 * for this request, it must get closed() on every path. */
	c = conn_new(t, &p, NULL, true);
	if (!c) {
		request_refuse(e->id);
		return;
	}
	c->id = e->id;
	c->id->context = c;
	fmt_peer(c, rdma_get_peer_addr(c->id));
	rc = t->ev->incoming(&l->base, e->pd, e->pd_len, &p, &owner, reply, &reply_len);
	if (rc) {
		/* Refused by the engine (it told its user): reply why, quietly. */
		rdma_reject(c->id, reply, (uint8_t)reply_len);
		conn_teardown(c);
		return;
	}
	c->params = p;
	c->base.owner = owner;
	c->base.slot_size = p.slot_size;
	c->base.send_slots = p.send_slots;
	c->base.recv_slots = p.recv_slots;
	memcpy(c->hs, reply, reply_len);
	c->hs_len = (uint8_t)reply_len;
	c->state = V_ACCEPTING;
	rc = conn_setup(c);
	if (!rc) {
		conn_param_init(c, &cp);
		if (rdma_accept(c->id, &cp))
			rc = neg_errno(ECONNABORTED);
	}
	if (rc) {
		rdma_reject(c->id, NULL, 0);
		conn_failed(c, rc, NULL);
		return;
	}
	uv_timer_start(&c->timer, connect_timeout, p.connect_timeout_ms, 0);
}

static int reject_status(const struct cm_ev *e)
{
	(void)e;
	return -ECONNREFUSED;
}

static void on_conn_event(struct verbs_tctx *t, struct vconn *c, struct cm_ev *e)
{
	struct rdma_conn_param cp;
	int rc;

	switch (e->type) {
	case RDMA_CM_EVENT_ADDR_RESOLVED:
		if (c->state != V_RESOLVE_ADDR)
			break;
		c->state = V_RESOLVE_ROUTE;
		if (rdma_resolve_route(c->id, (int)c->params.connect_timeout_ms))
			conn_failed(c, neg_errno(EHOSTUNREACH), NULL);
		break;
	case RDMA_CM_EVENT_ROUTE_RESOLVED:
		if (c->state != V_RESOLVE_ROUTE)
			break;
		rc = conn_setup(c);
		if (!rc) {
			conn_param_init(c, &cp);
			c->state = V_CONNECTING;
			if (rdma_connect(c->id, &cp))
				rc = neg_errno(ECONNABORTED);
		}
		if (rc)
			conn_failed(c, rc, NULL);
		break;
	case RDMA_CM_EVENT_ESTABLISHED:
		if (c->state == V_CONNECTING) {
			mark_up(c);
			if (t->ev->connected(&c->base, 0, e->pd, e->pd_len))
				conn_teardown(c); /* the engine refused the answer */
		} else if (c->state == V_ACCEPTING) {
			mark_up(c);
			t->ev->accepted(&c->base, 0);
		}
		break;
	case RDMA_CM_EVENT_ADDR_ERROR:
		conn_failed(c, -EADDRNOTAVAIL, NULL);
		break;
	case RDMA_CM_EVENT_ROUTE_ERROR:
		conn_failed(c, -ENETUNREACH, NULL);
		break;
	case RDMA_CM_EVENT_UNREACHABLE:
		conn_failed(c, -EHOSTUNREACH, NULL);
		break;
	case RDMA_CM_EVENT_REJECTED:
		/* the engine's refusal, if it is one, carries its reason */
		t->ev->connected(&c->base, reject_status(e), e->pd, e->pd_len);
		conn_teardown(c);
		break;
	case RDMA_CM_EVENT_CONNECT_ERROR:
		conn_failed(c, -ECONNABORTED, NULL);
		break;
	case RDMA_CM_EVENT_DISCONNECTED:
		if (c->state == V_UP) {
			/* What the peer sent before it hung up (a last reply, a
			 * refusal's reason) may be in the CQ, behind this event
			 * in the loop: deliver it first.  An upcall may end the
			 * connection meanwhile (its slot then names another). */
			uint32_t index = c->index;
			uint16_t gen = c->gen;

			while (t->conns[index] == c && c->gen == gen && c->state == V_UP &&
			       poll_cqs(t, VERBS_POLL_BATCH) > 0)
				;
			if (t->conns[index] != c || c->gen != gen || c->state != V_UP)
				break;
			if (c->verdict_pending)
				verdict_settle(c, -ECONNRESET,
					       "the peer disconnected (a transfer into memory it "
					       "withdrew as it went was refused)");
			else
				conn_failed(c, -ECONNRESET, "the peer disconnected");
		} else if (c->state < V_UP) {
			conn_failed(c, -ECONNRESET, NULL);
		}
		break;
	case RDMA_CM_EVENT_DEVICE_REMOVAL:
		conn_failed(c, -ENODEV, "the RDMA device was removed");
		break;
	default:
		break; /* TIMEWAIT_EXIT and friends */
	}
}

static void cm_poll_cb(uv_poll_t *h, int status, int events)
{
	struct verbs_tctx *t = h->data;
	struct rdma_cm_event *ev;

	(void)status;
	(void)events;
	while (rdma_get_cm_event(t->cm, &ev) == 0) {
		struct cm_ev e = {
			.type = ev->event,
			.status = ev->status,
			.id = ev->id,
			.listen_id = ev->listen_id,
		};
		if (ev->param.conn.private_data && ev->param.conn.private_data_len) {
			e.pd_len = ev->param.conn.private_data_len;
			if (e.pd_len > sizeof(e.pd))
				e.pd_len = sizeof(e.pd);
			memcpy(e.pd, ev->param.conn.private_data, e.pd_len);
		}
		/* Ack before acting: rdma_destroy_id() waits for every event
		 * of its id to be acked. */
		rdma_ack_cm_event(ev);
		if (e.type == RDMA_CM_EVENT_CONNECT_REQUEST) {
			struct vlistener *l = ctx_listener(e.listen_id->context);
			if (l)
				on_connect_request(t, l, &e);
			else
				request_refuse(e.id);
		} else if (e.id && ctx_handoff(e.id->context)) {
			/* Before the member took it: the client gave up (a
			 * REJECTED or DISCONNECTED of its REQ's timeout). */
			if (e.type != RDMA_CM_EVENT_TIMEWAIT_EXIT)
				ctx_handoff(e.id->context)->gone = true;
		} else if (e.id && e.id->context && !ctx_listener(e.id->context)) {
			on_conn_event(t, e.id->context, &e);
		}
	}
	t->ev->activity(t->ctx);
}

/* ---- ops ------------------------------------------------------------------------ */

static int resolve(const struct tern_uri *u, bool passive, struct sockaddr_storage *ss)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
	struct addrinfo *res;
	char port[8];
	int rc;

	if (!u->has_port)
		return -EINVAL;
	snprintf(port, sizeof(port), "%u", u->port);
	rc = getaddrinfo(u->host, port, &hints, &res);
	if (rc)
		return -EHOSTUNREACH;
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return 0;
}

static int verbs_ctx_init(tern_ctx *ctx, uv_loop_t *loop, const struct tern_transport_events *ev,
			  struct tern_tctx **out)
{
	struct verbs_tctx *t = calloc(1, sizeof(*t));

	if (!t)
		return -ENOMEM;
	t->ctx = ctx;
	t->loop = loop;
	t->ev = ev;
	t->cm = rdma_create_event_channel();
	if (!t->cm) {
		/* No /dev/infiniband/rdma_cm: this host has no RDMA. */
		free(t);
		return -ENODEV;
	}
	set_nonblock(t->cm->fd);
	uv_poll_init(loop, &t->cm_poll, t->cm->fd);
	t->cm_poll.data = t;
	uv_poll_start(&t->cm_poll, UV_READABLE, cm_poll_cb);
	t->open_handles = 1;
	*out = (struct tern_tctx *)t;
	return 0;
}

static void tctx_handle_closed(uv_handle_t *h)
{
	struct verbs_tctx *t = h->data;
	t->open_handles--;
}

static void dev_handle_closed(uv_handle_t *h)
{
	struct vdev *d = h->data;
	d->t->open_handles--;
}

static void verbs_ctx_fini(struct tern_tctx *tt)
{
	struct verbs_tctx *t = T(tt);
	struct vdev *d;

	for (d = t->devs; d; d = d->next) {
		uv_poll_stop(&d->poll);
		uv_close((uv_handle_t *)&d->poll, dev_handle_closed);
	}
	uv_poll_stop(&t->cm_poll);
	uv_close((uv_handle_t *)&t->cm_poll, tctx_handle_closed);
	while (t->open_handles > 0)
		uv_run(t->loop, UV_RUN_NOWAIT);
	while ((d = t->devs)) {
		struct ibv_cq *cq;
		struct vcq *q;
		void *cc;

		t->devs = d->next;
		while (ibv_get_cq_event(d->chan, &cq, &cc) == 0)
			((struct vcq *)cc)->unacked++;
		while ((q = d->cqs)) {
			d->cqs = q->next;
			if (q->unacked)
				ibv_ack_cq_events(q->cq, q->unacked);
			ibv_destroy_cq(q->cq);
			free(q);
		}
		ibv_destroy_comp_channel(d->chan);
		ibv_dealloc_pd(d->pd);
		free(d->stash);
		free(d);
	}
	rdma_destroy_event_channel(t->cm);
	free(t->conns);
	free(t->gens);
	free(t->free_idx);
	free(t);
}

static int verbs_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
			struct tern_tlistener **out)
{
	struct verbs_tctx *t = T(tt);
	struct sockaddr_storage ss;
	struct vlistener *l;
	int rc;

	if ((rc = resolve(u, true, &ss)))
		return rc;
	l = calloc(1, sizeof(*l));
	if (!l)
		return -ENOMEM;
	l->base.ops = &tern_verbs_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	if (rdma_create_id(t->cm, &l->id, listener_ctx(l), RDMA_PS_TCP)) {
		rc = neg_errno(ENOMEM);
		goto fail;
	}
	if (rdma_bind_addr(l->id, (struct sockaddr *)&ss)) {
		rc = neg_errno(EADDRNOTAVAIL);
		goto fail;
	}
	if (rdma_listen(l->id, 128)) {
		rc = neg_errno(EIO);
		goto fail;
	}
	l->base.port = ntohs(rdma_get_src_port(l->id));
	*out = &l->base;
	return 0;
fail:
	if (l->id)
		rdma_destroy_id(l->id);
	free(l);
	return rc;
}

static void verbs_listener_close(struct tern_tlistener *tl)
{
	struct vlistener *l = (struct vlistener *)tl;

	if (l->id)
		rdma_destroy_id(l->id);
	free(l);
}

/* A group member's listener: no cm_id; its requests come through verbs_adopt(). */
static int verbs_adopt_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
			      struct tern_tlistener **out)
{
	struct vlistener *l = calloc(1, sizeof(*l));

	if (!l)
		return -ENOMEM;
	l->base.ops = &tern_verbs_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	l->base.port = u->port;
	*out = &l->base;
	return 0;
}

/*
 * On the acceptor's thread, inside its cm_poll_cb() (so nothing polls the
 * id's current channel meanwhile, as rdma_migrate_id() asks), with the
 * request's event acked (it waits for that): the id's events, pending
 * and future, go to member listener @tl's event channel.
 */
static int verbs_handoff_move(struct tern_tlistener *tl, struct tern_handoff h)
{
	struct vhandoff *vh = h.req;

	if (rdma_migrate_id(vh->e.id, T(tl->tctx)->cm))
		return neg_errno(EIO);
	return 0;
}

static void verbs_handoff_drop(struct tern_handoff h)
{
	struct vhandoff *vh = h.req;

	request_refuse(vh->e.id);
	free(vh);
}

/*
 * On the member's thread: accept the request as @tl's own.  The QP, the
 * slot rings' registration and the completions all go to this context's
 * device state (its PD, CQs and completion channel, made by dev_get() on
 * first use), never the acceptor's: a session is the member's alone.
 */
static int verbs_adopt(struct tern_tlistener *tl, struct tern_handoff h)
{
	struct vhandoff *vh = h.req;

	if (vh->gone) {
		verbs_handoff_drop(h);
		return -ECONNRESET;
	}
	on_connect_request(T(tl->tctx), (struct vlistener *)tl, &vh->e);
	free(vh);
	return 0;
}

static int verbs_connect(struct tern_tctx *tt, const struct tern_uri *u,
			 const struct tern_conn_params *p, const void *hs, size_t hs_len,
			 void *owner, struct tern_conn **out)
{
	struct verbs_tctx *t = T(tt);
	struct sockaddr_storage ss;
	struct vconn *c;
	int rc;

	if (hs_len > TERN_HANDSHAKE_MAX)
		return -EINVAL;
	if ((rc = resolve(u, false, &ss)))
		return rc;
	c = conn_new(t, p, owner, false);
	if (!c)
		return -ENOMEM;
	memcpy(c->hs, hs, hs_len);
	c->hs_len = (uint8_t)hs_len;
	snprintf(c->base.peer, sizeof(c->base.peer), "%.60s:%u", u->host, u->port);
	if (rdma_create_id(t->cm, &c->id, c, RDMA_PS_TCP)) {
		rc = neg_errno(ENOMEM);
		goto fail;
	}
	c->state = V_RESOLVE_ADDR;
	if (rdma_resolve_addr(c->id, NULL, (struct sockaddr *)&ss, (int)p->connect_timeout_ms)) {
		rc = neg_errno(EHOSTUNREACH);
		goto fail;
	}
	uv_timer_start(&c->timer, connect_timeout, p->connect_timeout_ms, 0);
	*out = &c->base;
	return 0;
fail:
	/* Synchronous failure: the engine frees its side; free ours quietly. */
	if (c->id)
		rdma_destroy_id(c->id);
	c->id = NULL;
	t->conns[c->index] = NULL;
	t->gens[c->index]++;
	t->free_idx[t->nfree++] = c->index;
	c->state = V_DESTROYED;
	c->base.owner = NULL;
	uv_close((uv_handle_t *)&c->timer, conn_timer_closed);
	return rc;
}

static int verbs_post_send(struct tern_conn *bc, uint32_t slot, uint32_t len, uint32_t flags)
{
	struct vconn *c = C(bc);
	struct ibv_sge sge = {
		.addr = (uintptr_t)(c->base.send_base + (size_t)slot * c->base.slot_size),
		.length = len,
		.lkey = c->mr->lkey,
	};
	struct ibv_send_wr wr = {
		.wr_id = wrid(c, false, slot),
		.sg_list = &sge,
		.num_sge = 1,
		.opcode = IBV_WR_SEND,
		.send_flags = len <= c->max_inline ? IBV_SEND_INLINE : 0,
	};
	struct ibv_send_wr *bad;
	int rc;

	if (c->state != V_UP)
		return -ENOTCONN;
	if (++c->unsignaled >= c->sig_every || (flags & TERN_SEND_CONFIRM)) {
		wr.send_flags |= IBV_SEND_SIGNALED;
		c->unsignaled = 0;
	}
	rc = ibv_post_send(c->id->qp, &wr, &bad);
	if (rc)
		return -rc;
	c->posted[(c->posted_head + c->sends_out) % c->base.send_slots] = slot;
	c->sends_out++;
	c->sends_posted++;
	return 0;
}

/* A signalled zero-length RDMA WRITE, wr_id slot @slot (see below). */
static int post_zero_write(struct vconn *c, uint32_t slot)
{
	struct ibv_send_wr wr = {
		.wr_id = wrid(c, false, slot),
		.opcode = IBV_WR_RDMA_WRITE,
		.send_flags = IBV_SEND_SIGNALED,
	};
	struct ibv_send_wr *bad;

	return ibv_post_send(c->id->qp, &wr, &bad);
}

/*
 * Have every send posted so far reported: nothing to do when the last one
 * asked for a completion (it reports all before it); otherwise a signalled
 * zero-length RDMA WRITE after them does (VERBS_REPORT_SLOT).  It
 * completes after every send posted before it (one send queue completes
 * in order), and needs neither a receive nor memory at the peer: a
 * zero-length RDMA operation checks no R_Key (IB spec C9-88; rxe's
 * responder skips the check), so it moves no byte and takes no credit.
 */
static void verbs_report_sends(struct tern_conn *bc)
{
	struct vconn *c = C(bc);
	int rc;

	if (c->state != V_UP || !c->unsignaled || !c->sends_out)
		return;
	if (c->report_out) {
		c->report_again = true;
		return;
	}
	rc = post_zero_write(c, VERBS_REPORT_SLOT);
	if (rc) {
		conn_failed(c, -rc, "could not post a send report (zero-length RDMA WRITE)");
		return;
	}
	c->report_slot = c->posted[(c->posted_head + c->sends_out - 1) % c->base.send_slots];
	c->report_out = true;
	c->unsignaled = 0; /* its completion covers those */
}

static int verbs_post_recv(struct tern_conn *bc, uint32_t token)
{
	struct vconn *c = C(bc);

	if (c->state != V_UP)
		return -ENOTCONN;
	if (token >= c->base.recv_slots)
		return -EINVAL;
	return conn_post_recv(c, token);
}

static void verbs_disconnect(struct tern_conn *bc)
{
	struct vconn *c = C(bc);

	conn_teardown(c);
}

/* ---- exports ------------------------------------------------------------------- */

/*
 * A region's state on one device: its registration, for local access only
 * (and, in VX_WINDOW, for binding windows over), and the exports of it
 * that are live now, so that releasing the region ends them first.
 */
struct vmem {
	struct vmem *next;
	struct vdev *dev;
	struct ibv_mr *mr;
	struct vwin *wins;
};

/* One of a connection's exports; its memory window outlives the export. */
struct vwin {
	struct vconn *c;
	uint32_t idx;		     /* in c->wins; the descriptor's aux */
	bool live;		     /* exported now */
	struct ibv_mw *mw;	     /* windows: allocated per export, bound, deallocated */
	struct ibv_mr *mr;	     /* VX_WINDOW_EXACT, VX_REGISTER: this export's range */
	uint32_t rkey;		     /* the key the peer was given */
	uint64_t bind_after;	     /* c->sends_posted when it was bound */
	uint64_t addr, len;	     /* the range */
	struct vmem *region;	     /* the region it lies in */
	struct vwin *rnext, **rprev; /* in region->wins */
};

/* The region's state on this connection's device, registered at first use. */
static struct vmem *mem_vmem(struct vconn *c, struct tern_tmem *m)
{
	int access = IBV_ACCESS_LOCAL_WRITE;
	struct vmem *v;

	for (v = m->prov; v; v = v->next)
		if (v->dev == c->dev)
			return v;
	v = calloc(1, sizeof(*v));
	if (!v)
		return NULL;
	/* No remote access: that is granted export by export. */
	if (c->dev->xmode == VX_WINDOW)
		access |= IBV_ACCESS_MW_BIND;
	v->dev = c->dev;
	v->mr = ibv_reg_mr(c->dev->pd, m->addr, m->len, access);
	if (!v->mr) {
		free(v);
		return NULL;
	}
	*(m->kind == TERN_TMEM_STAGING ? &c->t->mem.staging_registered
				       : &c->t->mem.user_registered) += m->len;
	v->next = m->prov;
	m->prov = v;
	return v;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static void pending_fail_cb(uv_timer_t *tm)
{
	struct vconn *c = tm->data;

	if (c->state == V_UP && c->pending_err)
		conn_failed(c, c->pending_err, c->pending_why);
}

/*
 * @c must fail, but we are inside one of the engine's calls, which an
 * error upcall would pull the rug from under: put the QP in the error
 * state now (it lets no request of the peer's in from then on) and fail
 * the connection from the loop.
 */
static void conn_fail_later(struct vconn *c, int err, const char *why)
{
	struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};

	if (!c->pending_err) {
		c->pending_err = err;
		c->pending_why = why;
	}
	ibv_modify_qp(c->id->qp, &a, IBV_QP_STATE);
	uv_timer_stop(&c->timer);
	uv_timer_start(&c->timer, pending_fail_cb, 0, 0);
}

/* What wait_own_wr() says when the connection fails waiting. */
struct wait_msgs {
	const char *nomem, *failed, *timeout;
};

static const struct wait_msgs inv_msgs = {
	"no memory to wait for a window's invalidation",
	"invalidating a memory window failed",
	"invalidating a memory window took longer than 10 s",
};

static const struct wait_msgs fence_msgs = {
	"no memory to wait for the send queue before a window's bind",
	"the send queue's fence before a window's bind failed",
	"the send queue's fence before a window's bind took longer than 10 s",
};

/*
 * Wait until the signalled work request @id, just posted on @c's send
 * queue, completes; completions met meanwhile are kept, in order, for
 * poll_cqs().  If it fails or has not completed after VERBS_INV_WAIT_MS,
 * the QP goes into the error state and the connection fails from the loop
 * with @m's reason.  Return: 0, -ECONNRESET when it flushed (something
 * else put the QP in error, and says why) or when the peer stopped
 * answering, or another -errno (wc_error()'s).
 */
static int wait_own_wr(struct vconn *c, uint64_t id, const struct wait_msgs *m)
{
	struct vdev *d = c->dev;
	uint64_t end = now_ms() + VERBS_INV_WAIT_MS;

	for (;;) {
		struct ibv_wc wc[VERBS_POLL_BATCH];
		enum ibv_wc_status st = IBV_WC_GENERAL_ERR;
		bool found = false;
		int n;

		if (!stash_reserve(d, VERBS_POLL_BATCH)) {
			conn_fail_later(c, -ENOMEM, m->nomem);
			return -ENOMEM;
		}
		n = ibv_poll_cq(c->cq->cq, VERBS_POLL_BATCH, wc);
		for (int i = 0; i < n; i++) {
			if (wc[i].wr_id == id) {
				found = true;
				st = wc[i].status;
			} else {
				stash_push(d, &wc[i]); /* room reserved */
			}
		}
		if (found && st == IBV_WC_SUCCESS)
			return 0;
		if (found && st == IBV_WC_WR_FLUSH_ERR)
			return -ECONNRESET;
		if (found || n < 0) {
			/* as for any other work request of ours: a peer that
			 * stopped answering (resends ran out) is -ECONNRESET */
			int err = found ? wc_error(st) : -EIO;

			conn_fail_later(c, err, m->failed);
			return err;
		}
		if (now_ms() >= end) {
			conn_fail_later(c, -ETIMEDOUT, m->timeout);
			return -ETIMEDOUT;
		}
	}
}

/*
 * Invalidate @w's window, and wait until that is done: the engine hands its
 * memory to the next call (or back to the user) as soon as we return.  An
 * invalidation completes after every work request posted before it on this
 * send queue, so a transfer in flight on the connection delays it by what
 * it has left to move; completions met meanwhile are kept for poll_cqs().
 * If it cannot be posted, fails, or has not completed after
 * VERBS_INV_WAIT_MS, the QP goes into the error state, which lets no
 * request of the peer's in, and the connection fails from the loop.
 * Return: 0, or -errno when the window may still be bound (while its QP is
 * in the error state, or gone).
 */
static int win_invalidate(struct vconn *c, struct vwin *w)
{
	uint64_t id = wrid(c, false, VERBS_INV_SLOT + w->idx);
	struct ibv_send_wr wr = {
		.wr_id = id, .opcode = IBV_WR_LOCAL_INV, .send_flags = IBV_SEND_SIGNALED};
	struct ibv_send_wr *bad;
	int rc;

	if (c->state != V_UP || c->pending_err || c->qp_dead)
		return -ENOTCONN; /* its QP is in the error state already */
	wr.invalidate_rkey = w->rkey;
	rc = ibv_post_send(c->id->qp, &wr, &bad);
	if (rc) {
		conn_fail_later(c, -rc, "could not post a memory window's invalidation");
		return -rc;
	}
	return wait_own_wr(c, id, &inv_msgs);
}

/*
 * On rxe, let a bind onto @c's send queue only with nothing unacknowledged
 * before it.  rxe carries out a bind when its requester reaches it but
 * retires it only after everything before it is acknowledged; a retry
 * meanwhile (a lost packet's timeout or NAK) rewinds the requester over
 * it, and req_next_wqe() hands it out again without looking at its state:
 * the bind runs twice, rxe_bind_mw() refuses the second, and the
 * requester's error path leaves the QP where a second loss stops it for
 * good, with no error (Linux 6.1's rxe; docs/chaos.md, failure H).  With
 * nothing before it, the bind is retired as soon as it is carried out.
 * What may still be unacknowledged: sends not seen done, transfers, the
 * send report.  Then a signalled zero-length RDMA WRITE (no memory, no
 * credit at the peer, as report_sends()'s) is posted and waited for: a
 * send queue completes in order.  That costs the bind a round trip when
 * the connection is busy, on rxe only; other devices carry out binds in
 * order in hardware.
 */
static int win_fence(struct vconn *c)
{
	int rc;

	if (c->dev->xmode != VX_WINDOW_EXACT || (!c->sends_out && !c->bulk_busy && !c->report_out))
		return 0;
	if (c->state != V_UP || c->pending_err || c->qp_dead)
		return -ENOTCONN;
	rc = post_zero_write(c, VERBS_FENCE_SLOT);
	if (rc) {
		conn_fail_later(c, -rc, "could not post the send queue's fence before a bind");
		return -rc;
	}
	return wait_own_wr(c, wrid(c, false, VERBS_FENCE_SLOT), &fence_msgs);
}

/*
 * Bind @w's window over [addr, addr + len) of @mr, for @access, through
 * @c's QP, under the next key.  The peer learns the key from a message
 * posted after this on the same send queue, and a send queue carries out a
 * bind before any work request posted after it (the verbs' ordering rules
 * for memory window binds; rxe runs local operations inline in its
 * requester, in queue order), so the window is valid before the descriptor
 * leaves.  Not signalled and not waited for: a failed bind still completes
 * (in error), and takes the QP with it.
 */
static int win_bind(struct vconn *c, struct vwin *w, struct ibv_mr *mr, uint64_t addr, uint64_t len,
		    int access)
{
	uint32_t rkey = ibv_inc_rkey(w->mw->rkey);
	struct ibv_send_wr wr = {
		.wr_id = wrid(c, false, VERBS_WIN_SLOT + w->idx),
		.opcode = IBV_WR_BIND_MW,
	};
	struct ibv_send_wr *bad;
	int rc;

	if ((rc = win_fence(c)))
		return rc;
	wr.bind_mw.mw = w->mw;
	wr.bind_mw.rkey = rkey;
	wr.bind_mw.bind_info.mr = mr;
	wr.bind_mw.bind_info.addr = addr;
	wr.bind_mw.bind_info.length = len;
	wr.bind_mw.bind_info.mw_access_flags = (unsigned)access;
	rc = ibv_post_send(c->id->qp, &wr, &bad);
	if (rc)
		return -rc;
	/* The window's key from now on (rxe names the window by its current
	 * key); the next bind takes the next one. */
	w->mw->rkey = rkey;
	w->rkey = rkey;
	w->bind_after = c->sends_posted;
	return 0;
}

/* A window the connection is not exporting now, made if need be. */
static int win_take(struct vconn *c, struct vwin **out)
{
	struct vwin *w;

	if (c->nfree_wins) {
		*out = c->wins[c->free_wins[--c->nfree_wins]];
		return 0;
	}
	if (!c->wins || c->nwins == VERBS_WIN_MAX(c))
		return -ENOBUFS;
	w = calloc(1, sizeof(*w));
	if (!w)
		return -ENOMEM;
	/* Its bind is unsignaled, but a failed or flushed one completes. */
	if (c->dev->xmode != VX_REGISTER && conn_reserve_cq(c, 1)) {
		free(w);
		return -ENOBUFS;
	}
	w->c = c;
	w->idx = c->nwins;
	c->wins[c->nwins++] = w;
	*out = w;
	return 0;
}

static void win_put(struct vconn *c, struct vwin *w)
{
	if (w->mr)
		ibv_dereg_mr(w->mr);
	w->mr = NULL;
	w->live = false;
	c->free_wins[c->nfree_wins++] = w->idx;
}

static void win_unlink(struct vwin *w)
{
	if (w->rnext)
		w->rnext->rprev = w->rprev;
	*w->rprev = w->rnext;
	w->rnext = NULL;
	w->rprev = NULL;
}

/*
 * End @w's export at once, with no work request: deallocating a window
 * invalidates it (and unbinds it from its registration), synchronously.
 * For a region being released, and for a connection going away.
 */
static void win_kill(struct vconn *c, struct vwin *w)
{
	if (w->live)
		win_unlink(w);
	if (w->mw)
		ibv_dealloc_mw(w->mw);
	w->mw = NULL;
	if (w->live)
		win_put(c, w);
}

/*
 * Has @w's bind been carried out?  A send queue carries out work requests
 * in order: yes once the peer answered the message that carried its key
 * (@flags), or once a send posted after the bind is done.
 */
static bool win_bind_done(const struct vconn *c, const struct vwin *w, unsigned flags)
{
	return (flags & TERN_UNEXPORT_ANSWERED) || c->sends_released > w->bind_after;
}

/*
 * End @w's export: when this returns, the peer can reach none of it.
 *
 * Deallocating the window ends it at once (ibv_dealloc_mw is synchronous,
 * like ibv_dereg_mr), whatever the send queue still holds: a local
 * invalidation would complete only after every work request posted before
 * it, and a large transfer in flight, or any send to a peer that has just
 * gone, would hold the whole context until the QP's retries ran out.  The
 * next export allocates a window again.  That needs the bind carried out
 * first: a bind of a deallocated window fails, and takes the QP with it.
 * It is known to be (win_bind_done()) for every call that was answered,
 * and for a call that timed out once its request was sent; for the rest,
 * a call that timed out with its request still queued, or an export whose
 * call could not be sent, the invalidation is posted behind the bind and
 * waited for (win_invalidate()), as the connection must then carry out the
 * queue ahead anyway.  When the connection goes right after (CLOSING), its
 * QP goes into the error state first: nothing queued runs any more, and
 * the peer, whose transfers now meet silence rather than a refusal, sees
 * the connection reset rather than a violation.
 */
static void win_retire(struct vconn *c, struct vwin *w, unsigned flags)
{
	bool dealloc = c->dev->xmode != VX_REGISTER;

	win_unlink(w);
	if (dealloc && c->state == V_UP && (flags & TERN_UNEXPORT_CLOSING) && !c->qp_dead) {
		struct ibv_qp_attr a = {.qp_state = IBV_QPS_ERR};

		ibv_modify_qp(c->id->qp, &a, IBV_QP_STATE);
		c->qp_dead = true;
		if (!c->pending_err) {
			/* what its flushes report, should the engine not
			 * disconnect as it said it would */
			c->pending_err = -ECONNRESET;
			c->pending_why = "the connection was closed";
		}
	}
	/* A window we could not invalidate may still be bound: deallocate it
	 * (rxe refuses to deregister a registration with a window bound). */
	if (dealloc && c->state == V_UP && !c->qp_dead && !c->pending_err &&
	    !win_bind_done(c, w, flags) && win_invalidate(c, w) == 0)
		dealloc = false;
	if (dealloc) {
		ibv_dealloc_mw(w->mw);
		w->mw = NULL;
	}
	win_put(c, w);
}

/* Every export and window of @c, before its QP goes. */
static void wins_destroy(struct vconn *c)
{
	for (uint32_t i = 0; i < c->nwins; i++) {
		win_kill(c, c->wins[i]);
		free(c->wins[i]);
	}
	free(c->wins);
	free(c->free_wins);
	c->wins = NULL;
	c->free_wins = NULL;
	c->nwins = c->nfree_wins = 0;
}

static uint64_t verbs_bulk_max(struct tern_conn *bc)
{
	(void)bc;
	return UINT32_MAX; /* windows of work requests move any message size */
}

/*
 * Let the peer reach [off, off + len) of @m, for reading or (@writable)
 * writing, until bulk_unexport(): a memory window over just that range,
 * for just that direction, bound to this connection's QP; or, without
 * windows, a registration of just that range with just that access.
 */
static int verbs_bulk_export(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			     int writable, struct tern_bulk_desc *out)
{
	struct vconn *c = C(bc);
	int access = writable ? IBV_ACCESS_REMOTE_WRITE : IBV_ACCESS_REMOTE_READ;
	uint64_t addr = (uintptr_t)m->addr + off;
	enum vexport mode;
	struct vmem *v;
	struct vwin *w;
	int rc;

	if (c->state != V_UP)
		return -ENOTCONN;
	mode = c->dev->xmode;
	if (len == 0 || off > m->len || len > m->len - off)
		return -EINVAL;
	if (!(v = mem_vmem(c, m)))
		return neg_errno(ENOMEM);
	if ((rc = win_take(c, &w)))
		return rc;
	if (mode != VX_WINDOW) {
		/* Remote writes need local write access, also through a
		 * window (IB spec C10-74). */
		w->mr = ibv_reg_mr(c->dev->pd, (void *)(uintptr_t)addr, len,
				   (writable ? IBV_ACCESS_LOCAL_WRITE : 0) |
					   (mode == VX_REGISTER ? access : IBV_ACCESS_MW_BIND));
		if (!w->mr) {
			rc = neg_errno(ENOMEM);
			goto fail;
		}
	}
	if (mode == VX_REGISTER) {
		w->rkey = w->mr->rkey;
	} else {
		if (!w->mw && !(w->mw = ibv_alloc_mw(c->dev->pd, IBV_MW_TYPE_2))) {
			rc = neg_errno(ENOMEM);
			goto fail;
		}
		rc = win_bind(c, w, mode == VX_WINDOW ? v->mr : w->mr, addr, len, access);
		if (rc)
			goto fail;
	}
	w->live = true;
	w->addr = addr;
	w->len = len;
	w->region = v;
	w->rnext = v->wins;
	w->rprev = &v->wins;
	if (v->wins)
		v->wins->rprev = &w->rnext;
	v->wins = w;
	out->addr = addr;
	out->len = len;
	out->key = w->rkey;
	out->aux = w->idx;
	return 0;
fail:
	win_put(c, w);
	return rc;
}

static void verbs_bulk_unexport(struct tern_conn *bc, const struct tern_bulk_desc *d,
				unsigned flags)
{
	struct vconn *c = C(bc);
	struct vwin *w;

	/* The engine's own copy of a descriptor we made; gone already with a
	 * connection that went away. */
	if (d->aux >= c->nwins || !(w = c->wins[d->aux])->live || w->rkey != d->key ||
	    w->addr != d->addr || w->len != d->len)
		return;
	win_retire(c, w, flags);
}

/* The region's state on this connection's device, for local access. */
static struct ibv_mr *mem_mr(struct vconn *c, struct tern_tmem *m)
{
	struct vmem *v = mem_vmem(c, m);

	return v ? v->mr : NULL;
}

/* Post the next window of op @op's work requests. */
static int bulk_post_window(struct vconn *c, uint32_t op)
{
	struct vbulk *b = &c->bulk[op];
	uint64_t chunk = c->dev->max_msg;
	struct ibv_mr *mr = mem_mr(c, b->m);
	uint32_t n = 0;

	if (!mr)
		return neg_errno(ENOMEM);
	while (n < VERBS_BULK_CHUNKS && b->posted < b->len) {
		size_t at = b->posted, this = b->len - at < chunk ? b->len - at : chunk;
		bool last = n == VERBS_BULK_CHUNKS - 1 || at + this == b->len;
		struct ibv_sge sge = {
			.addr = (uintptr_t)b->m->addr + b->off + at,
			.length = (uint32_t)this,
			.lkey = mr->lkey,
		};
		struct ibv_send_wr wr = {
			.wr_id = wrid(c, false, VERBS_BULK_SLOT + op * VERBS_BULK_CHUNKS + n),
			.sg_list = &sge,
			.num_sge = 1,
			.opcode = b->opcode,
			/* one completion a window: the send queue completes in order */
			.send_flags = last ? IBV_SEND_SIGNALED : 0,
		};
		struct ibv_send_wr *bad;
		int rc;

		wr.wr.rdma.remote_addr = b->remote.addr + at;
		wr.wr.rdma.rkey = b->remote.key;
		rc = ibv_post_send(c->id->qp, &wr, &bad);
		if (rc) {
			if (n == 0)
				return -rc;
			/* what was posted completes (or flushes) and reports */
			b->status = -rc;
			break;
		}
		b->posted += this;
		n++;
	}
	b->window = (uint8_t)n;
	return 0;
}

static int bulk_post(struct vconn *c, enum ibv_wr_opcode opcode, struct tern_tmem *m, size_t off,
		     size_t len, const struct tern_bulk_desc *remote, uint64_t cookie)
{
	struct vbulk *b;
	uint32_t op;
	int rc;

	if (c->state != V_UP)
		return -ENOTCONN;
	if (off + len > m->len || len > remote->len || len == 0)
		return -EINVAL;
	if (c->bulk_busy == (1u << VERBS_BULK_OPS) - 1)
		return -EAGAIN;
	for (op = 0; c->bulk_busy & (1u << op); op++)
		;
	b = &c->bulk[op];
	b->cookie = cookie;
	b->opcode = opcode;
	b->m = m;
	b->off = off;
	b->len = len;
	b->remote = *remote;
	b->posted = 0;
	b->status = 0;
	b->wcst = IBV_WC_SUCCESS;
	rc = bulk_post_window(c, op);
	if (rc)
		return rc;
	c->bulk_busy |= 1u << op;
	return 0;
}

static int verbs_bulk_read(struct tern_conn *bc, const struct tern_bulk_desc *remote,
			   struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	return bulk_post(C(bc), IBV_WR_RDMA_READ, m, off, len, remote, cookie);
}

static int verbs_bulk_write(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			    const struct tern_bulk_desc *remote, uint64_t cookie)
{
	return bulk_post(C(bc), IBV_WR_RDMA_WRITE, m, off, len, remote, cookie);
}

static void verbs_mem_release(struct tern_tctx *tt, struct tern_tmem *m)
{
	uint64_t *counter = m->kind == TERN_TMEM_STAGING ? &T(tt)->mem.staging_registered
							 : &T(tt)->mem.user_registered;

	while (m->prov) {
		struct vmem *v = m->prov;

		/* Exports the engine never withdrew (a timed-out call's, whose
		 * buffer its user deregistered): they end now, before the
		 * memory can go. */
		while (v->wins)
			win_kill(v->wins->c, v->wins);
		m->prov = v->next;
		*counter -= v->mr->length;
		ibv_dereg_mr(v->mr);
		free(v);
	}
}

static int verbs_poll(struct tern_tctx *tt, int budget)
{
	return poll_cqs(T(tt), budget);
}

static int verbs_set_mode(struct tern_tctx *tt, enum tern_transport_mode mode)
{
	struct verbs_tctx *t = T(tt);
	int n = 0;

	t->mode = mode;
	if (mode == TERN_TRANSPORT_EVENTS) {
		for (struct vdev *d = t->devs; d; d = d->next)
			for (struct vcq *q = d->cqs; q; q = q->next)
				ibv_req_notify_cq(q->cq, 0);
		/* Completions that landed before we armed raise no event. */
		n = poll_cqs(t, 1 << 30);
	}
	return n;
}

static void verbs_mem_stats(struct tern_tctx *tt, struct tern_mem_stats *acc)
{
	tern_mem_stats_add(acc, &T(tt)->mem);
}

const struct tern_transport_ops tern_verbs_transport = {
	.scheme = "rdma",
	.uri_form = TERN_URI_HOST_PORT,
	.ctx_init = verbs_ctx_init,
	.ctx_fini = verbs_ctx_fini,
	.listen = verbs_listen,
	.listener_close = verbs_listener_close,
	.adopt_listen = verbs_adopt_listen,
	.adopt = verbs_adopt,
	.handoff_move = verbs_handoff_move,
	.handoff_drop = verbs_handoff_drop,
	.connect = verbs_connect,
	.post_send = verbs_post_send,
	.post_recv = verbs_post_recv,
	.disconnect = verbs_disconnect,
	.poll = verbs_poll,
	.set_mode = verbs_set_mode,
	.report_sends = verbs_report_sends,
	.bulk_max = verbs_bulk_max,
	.bulk_export = verbs_bulk_export,
	.bulk_read = verbs_bulk_read,
	.bulk_write = verbs_bulk_write,
	.mem_release = verbs_mem_release,
	.bulk_unexport = verbs_bulk_unexport,
	.mem_stats = verbs_mem_stats,
};
