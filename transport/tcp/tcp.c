// SPDX-License-Identifier: MIT
/*
 * tcp.c - the tcp:// provider: libuv streams, for machines with no RDMA NIC.
 *
 * Framing and handshake: tcp_proto.h.  TCP_NODELAY on both ends: the engine
 * sends one message per call and batching belongs to the caller.
 *
 * Sending goes straight from the engine's send slot: one writev of the
 * 4-byte length and the slot, usually completed at once; send_done(slot)
 * follows once the kernel has every byte.  A partial write is finished by
 * libuv when the socket drains, from the same slot, so the only memory a
 * slow peer can pin is the slots themselves: the engine's credits bound how
 * many are in flight, and nothing else is ever buffered for sending.
 *
 * Receiving goes into this connection's own 2N + 3 receive slots, made
 * once from our own geometry.  Bytes arrive in a fixed staging buffer; a
 * frame's length is checked against the slot size before any of it is
 * copied into a slot, and a large payload still missing is read straight
 * into its slot.  A frame that finds every receive slot held by the engine
 * waits in staging and reading stops (uv_read_stop, or no recv() in busy
 * mode) until the engine gives a slot back: TCP's own flow control then
 * pushes back on the peer.  Nothing is ever allocated by a size a peer
 * chose.
 *
 * Progress: in event mode libuv reads (uv_read_start); in polled (busy)
 * mode poll() calls recv(MSG_DONTWAIT) itself, so a busy context spins on
 * the socket instead of waiting for its next epoll.
 */
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <unistd.h>

#include "tern/transport.h"
#include "../common/link.h"
#include "../common/memstat.h"
#include "../common/xtab.h"
#include "tcp_proto.h"

/* Defined at the bottom; the engine finds it by name (src/ctx.c). */
extern const struct tern_transport_ops tern_tcp_transport;

#define TCP_STAGE	 (64 * 1024) /* staging for arriving bytes, per connection */
#define TCP_DIRECT_MIN	 4096	     /* read a payload straight into its slot past this */
#define TCP_HANDSHAKE_MS 10000	     /* an accepted socket must say HELLO within this */
#define TCP_POLL_READS	 4	     /* recv() calls per connection per poll() */
#define TCP_BULK_OPS	 64	     /* bulk transfers in flight per connection, each way */
#define TCP_PIECES	 4	     /* bulk pieces written and not yet done, per connection */
#define TCP_OUTS	 (2 * TCP_BULK_OPS)

/* ---- objects ------------------------------------------------------------------ */

struct tcp_tctx {
	tern_ctx *ctx;
	uv_loop_t *loop;
	const struct tern_transport_events *ev;
	enum tern_transport_mode mode;
	/* Connections that are up; left only when freed (never inside poll). */
	struct tern_link up;
	/* Connections with deferred work: send_done owed, or parsing to resume. */
	struct tern_link kick;
	uv_idle_t kick_idle;
	bool kick_active;
	int in_cb; /* inside our read callback: it runs the deferred work itself */
	int open_handles;
	struct tern_mem_stats mem; /* tern_ctx_mem(): counted where taken and given back */
	struct tern_link maps;	   /* slot mappings (struct tern_memmap), for residency */
};

struct tlistener {
	struct tern_tlistener base;
	struct tcp_tctx *t;
	uv_tcp_t tcp;
	struct tern_link pending; /* accepted sockets that have not said HELLO yet */
};

/* What the frame being read is. */
enum tframe {
	TF_MSG = 0, /* an engine message (or a handshake frame) */
	TF_BHDR,    /* a bulk header */
	TF_BPAY,    /* a bulk piece's bytes, read straight into their destination */
};

/* A read we asked the peer for: its DATA pieces land in dst. */
struct tcp_rop {
	bool busy;
	bool req_pending; /* the READ frame's uv_write has not called back */
	bool landed;	  /* every byte is in, reported once the write calls back */
	uint32_t gen;	  /* in the token: a stale or forged DATA misses */
	uint64_t cookie;
	uint8_t *dst;
	uint64_t len, got;
	uv_write_t req;
	uint8_t hdr[TCP_PREFIX + TCP_BULK_HDR];
};

/* Bytes we stream in pieces: a read we serve (DATA) or a write of ours. */
struct tcp_out {
	bool busy;
	bool write;
	uint32_t gen;
	uint32_t key;	/* DATA: the export read (withdrawing it stops us); WRITE: the peer's */
	uint32_t token; /* DATA: the peer's name for the read */
	const uint8_t *src;
	uint64_t raddr; /* WRITE: the peer's address of src[0] */
	uint64_t len, queued;
	uint32_t inflight;
	uint64_t last_end; /* wq_total just after its last queued piece */
	uint64_t cookie;   /* WRITE: bulk_done's */
};

/* One piece on its way: header + bytes straight from the source. */
struct tcp_piece {
	uv_write_t req; /* first: the write callback finds the piece from it */
	uint8_t hdr[TCP_PREFIX + TCP_BULK_HDR];
	int out; /* outs[] index, or -1 when free */
	uint32_t out_gen;
};

enum tstate {
	TC_CONNECTING,	/* client: TCP connect in flight */
	TC_WAIT_ANSWER, /* client: HELLO sent */
	TC_WAIT_HELLO,	/* server: accepted, waiting for HELLO */
	TC_WAIT_READY,	/* server: ACCEPT sent */
	TC_UP,
	TC_CLOSING,
};

struct tconn {
	struct tern_conn base;
	struct tcp_tctx *t;
	struct tlistener *l;   /* server: until the engine has seen the HELLO */
	struct tern_link link; /* t->up when up, l->pending before HELLO */
	struct tern_link kick; /* t->kick */
	enum tstate state;
	bool server;
	bool reading; /* uv_read_start() is on */
	bool paused;  /* a frame waits for a free receive slot */
	bool parsing; /* inside rx_process(): no nested parse */
	bool got_bytes;
	int handles;
	uv_tcp_t tcp;
	uv_connect_t creq;
	uv_timer_t timer;
	uv_write_t ctl_req[2]; /* handshake frames: [0] HELLO/ACCEPT/REFUSE, [1] READY */
	uint8_t ctl_buf[2][TCP_PREFIX + TCP_HS_SIZE];
	bool close_after_ctl;		/* a REFUSE is going out: close when it has */
	uint8_t hs[TERN_HANDSHAKE_MAX]; /* client: the engine's HELLO, sent once connected */
	uint32_t hs_len;

	/* Slots: made once, from our own geometry. */
	uint32_t nslots;
	uint32_t slot_size;
	size_t bk_per_slot;	   /* bookkeeping bytes per slot, in t->mem.conn_heap */
	uint8_t *mem;		   /* send slots, then receive slots: an anonymous mapping */
	struct tern_memmap memmap; /* mem, counted in t->mem.slots_heap */
	uint8_t *recv_base;
	uint32_t *prefix; /* per send slot: its frame length, as sent */
	uv_write_t *wreq; /* per send slot: writes that did not finish at once */
	uint8_t *tx_busy; /* per send slot: posted, send_done not yet reported */
	uint32_t *done;	  /* ring of slots fully written, send_done owed */
	uint32_t done_head, done_len;
	uint32_t *free_rx; /* stack of receive slots the engine does not hold */
	uint32_t nfree_rx;
	uint8_t *rx_held;

	/* The receive parser. */
	uint8_t *stage; /* TCP_STAGE bytes */
	uint32_t st_rd, st_wr;
	bool in_frame;
	uint32_t f_len, f_have, f_token;
	uint8_t *f_dst;
	uint8_t hsbuf[TCP_HS_SIZE];
	uint8_t f_kind; /* enum tframe */
	uint8_t bhdr[TCP_BULK_HDR];
	struct tcp_rop *f_rop; /* TF_BPAY of a DATA: the read it fills */

	/* Large messages: see tcp_proto.h. */
	struct tern_xtab xt; /* what we exported to the peer */
	struct tcp_rop rops[TCP_BULK_OPS];
	struct tcp_out outs[TCP_OUTS];
	struct tcp_piece pieces[TCP_PIECES];
	uint32_t n_serve, n_write; /* busy outs of each kind */
	uint32_t out_rr;	   /* where the next piece's search starts */
	/*
	 * Bytes ever handed to uv_write (not uv_try_write).  Minus libuv's
	 * write queue size, that is how many of them the kernel has: a piece
	 * ending at or before that no longer needs its source.
	 */
	uint64_t wq_total;
	int doomed; /* failed where no upcall may run: the kick reports it */
	const char *doomed_why;
};

#define T(x) ((struct tcp_tctx *)(x))
#define C(x) ((struct tconn *)(x))

static void rx_update_reading(struct tconn *c);
static int rx_process(struct tconn *c);
static int kick_run(struct tcp_tctx *t);
static void kick_idle_start(struct tcp_tctx *t);

/* ---- life and death ------------------------------------------------------------------ */

static void bulk_fail_all(struct tconn *c, int err);

/* Slots the engine kept after their connection (keep_rx): counted until released. */
struct kept_slots {
	struct tern_memmap map;
};

static void kept_slots_release(void *arg)
{
	struct kept_slots *k = arg;

	tern_memmap_del(&k->map);
	munmap(k->map.addr, k->map.len);
	free(k);
}

/* The slots (c->mem) go to the engine if a request still points into them. */
static bool mem_keep(struct tconn *c)
{
	struct kept_slots *k = malloc(sizeof(*k));

	if (!k)
		return false;
	k->map.counter = NULL;
	if (!c->t->ev->keep_rx(&c->base, kept_slots_release, k)) {
		free(k);
		return false;
	}
	tern_memmap_del(&c->memmap);
	tern_memmap_add(&c->t->maps, &k->map, c->mem, 2 * (size_t)c->nslots * c->slot_size, -1,
			&c->t->mem.slots_heap);
	return true;
}

static void conn_free(struct tconn *c)
{
	bulk_fail_all(c, -ECONNRESET);
	tern_xtab_free(&c->xt);
	tern_link_del(&c->link);
	tern_link_del(&c->kick);
	if (c->mem && !mem_keep(c)) {
		tern_memmap_del(&c->memmap);
		munmap(c->mem, 2 * (size_t)c->nslots * c->slot_size);
	}
	c->t->mem.conn_heap -= sizeof(*c) + TCP_STAGE + (size_t)c->nslots * c->bk_per_slot;
	free(c->prefix);
	free(c->wreq);
	free(c->tx_busy);
	free(c->done);
	free(c->free_rx);
	free(c->rx_held);
	free(c->stage);
	c->base.send_base = NULL;
	c->t->ev->closed(&c->base);
	free(c);
}

static void conn_handle_closed(uv_handle_t *h)
{
	struct tconn *c = h->data;

	c->t->open_handles--;
	if (--c->handles == 0)
		conn_free(c);
}

/* Tear down; memory goes when the handles have closed.  Idempotent, safe
 * from any upcall.  Writes still queued are cancelled by uv_close(). */
static void conn_close(struct tconn *c)
{
	if (c->state == TC_CLOSING)
		return;
	c->state = TC_CLOSING;
	if (c->l) {
		tern_link_del(&c->link);
		c->l = NULL;
	}
	tern_link_del(&c->kick);
	uv_timer_stop(&c->timer);
	uv_close((uv_handle_t *)&c->timer, conn_handle_closed);
	uv_close((uv_handle_t *)&c->tcp, conn_handle_closed);
}

/* Failed, at any stage: the engine sorts out what that means (tern/transport.h). */
static void conn_failed(struct tconn *c, int err, const char *why)
{
	c->t->ev->error(&c->base, err, why);
	conn_close(c);
}

static void conn_timer_cb(uv_timer_t *tm)
{
	struct tconn *c = tm->data;

	if (c->state < TC_UP)
		conn_failed(c, -ETIMEDOUT, NULL);
}

static struct tconn *conn_new(struct tcp_tctx *t, bool server)
{
	struct tconn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	c->stage = malloc(TCP_STAGE);
	if (!c->stage) {
		free(c);
		return NULL;
	}
	t->mem.conn_heap += sizeof(*c) + TCP_STAGE;
	c->t = t;
	c->server = server;
	c->base.ops = &tern_tcp_transport;
	c->base.tctx = (struct tern_tctx *)t;
	tern_link_init(&c->link);
	tern_link_init(&c->kick);
	uv_timer_init(t->loop, &c->timer);
	uv_tcp_init(t->loop, &c->tcp);
	c->timer.data = c;
	c->tcp.data = c;
	for (int i = 0; i < TCP_PIECES; i++)
		c->pieces[i].out = -1;
	c->handles = 2;
	t->open_handles += 2;
	return c;
}

/* The slots, sized by our own parameters only.  Return: 0 or -ENOMEM. */
static int conn_alloc(struct tconn *c, const struct tern_conn_params *p)
{
	uint32_t n = p->send_slots;
	size_t ring = (size_t)n * p->slot_size;

	if (p->recv_slots != n || n == 0 || p->slot_size == 0)
		return -EINVAL;
	c->nslots = n;
	c->slot_size = p->slot_size;
	/*
	 * An anonymous mapping rather than the heap: its pages come on first
	 * touch (zeroed, from the kernel), so an idle session costs the few
	 * slots its handshake and service check used, not 2 x (2N + 3) of
	 * them, and they go back to the kernel at the end rather than to a
	 * heap that may keep them.  Anonymous pages cannot SIGBUS: under
	 * strict overcommit the mapping is charged whole here (a clean
	 * -ENOMEM), otherwise a page costs what any malloc'd page does.
	 */
	c->mem = mmap(NULL, 2 * ring, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (c->mem == MAP_FAILED)
		c->mem = NULL;
	else
		tern_memmap_add(&c->t->maps, &c->memmap, c->mem, 2 * ring, -1,
				&c->t->mem.slots_heap);
	c->bk_per_slot = sizeof(*c->prefix) + sizeof(*c->wreq) + 1 + sizeof(*c->done) +
			 sizeof(*c->free_rx) + 1;
	c->t->mem.conn_heap += (size_t)n * c->bk_per_slot;
	c->prefix = calloc(n, sizeof(*c->prefix));
	c->wreq = calloc(n, sizeof(*c->wreq));
	c->tx_busy = calloc(n, 1);
	c->done = calloc(n, sizeof(*c->done));
	c->free_rx = calloc(n, sizeof(*c->free_rx));
	c->rx_held = calloc(n, 1);
	if (!c->mem || !c->prefix || !c->wreq || !c->tx_busy || !c->done || !c->free_rx ||
	    !c->rx_held)
		return -ENOMEM;
	for (uint32_t i = 0; i < n; i++) {
		c->free_rx[i] = n - 1 - i; /* slot 0 on top */
		c->wreq[i].data = c;
	}
	c->nfree_rx = n;
	c->recv_base = c->mem + ring;
	c->base.send_base = c->mem;
	c->base.send_region = ring;
	c->base.slot_size = p->slot_size;
	c->base.send_slots = n;
	c->base.recv_slots = n;
	return 0;
}

static void conn_up(struct tconn *c)
{
	uv_timer_stop(&c->timer);
	c->state = TC_UP;
	tern_link_add(&c->t->up, &c->link);
}

static int uv_to_conn_err(int rc)
{
	/* The peer is gone, whatever the socket's way of saying so. */
	return rc == UV_EPIPE || rc == UV_ECONNRESET || rc == UV_ENOTCONN || rc == UV_EOF
		       ? -ECONNRESET
		       : rc;
}

/* ---- handshake frames ------------------------------------------------------------------ */

static void ctl_written(uv_write_t *req, int status)
{
	struct tconn *c = req->data;

	if (c->state == TC_CLOSING)
		return;
	if (c->close_after_ctl && req == &c->ctl_req[0]) {
		conn_close(c);
		return;
	}
	if (status < 0)
		conn_failed(c, uv_to_conn_err(status), "handshake write failed");
}

static int ctl_send(struct tconn *c, int which, uint16_t type, int32_t status, const void *hs,
		    size_t hs_len)
{
	uv_buf_t b;

	tcp_hs_encode(c->ctl_buf[which], type, status, hs, hs_len);
	b = uv_buf_init((char *)c->ctl_buf[which], sizeof(c->ctl_buf[which]));
	c->ctl_req[which].data = c;
	c->wq_total += b.len;
	return uv_write(&c->ctl_req[which], (uv_stream_t *)&c->tcp, &b, 1, ctl_written);
}

/* Refuse with the engine's answer, then close once the refusal is out. */
static void send_refusal(struct tconn *c, int status, const void *hs, size_t hs_len)
{
	uv_timer_stop(&c->timer);
	c->paused = true; /* read nothing more from it */
	rx_update_reading(c);
	if (ctl_send(c, 0, TCP_HS_REFUSE, status, hs, hs_len)) {
		conn_close(c);
		return;
	}
	c->close_after_ctl = true;
	uv_timer_start(&c->timer, conn_timer_cb, TCP_HANDSHAKE_MS, 0);
}

/*
 * A peer that does not speak our protocol: hand the engine an empty
 * handshake, so that it refuses and reports the connection to the
 * listener's callback like any other non-tern client.
 */
static void server_refuse_garbage(struct tconn *c)
{
	struct tlistener *l = c->l;
	struct tern_conn_params p = {0};
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	void *owner = NULL;
	int rc;

	tern_link_del(&c->link);
	c->l = NULL;
	rc = c->t->ev->incoming(&l->base, NULL, 0, &p, &owner, reply, &reply_len);
	if (rc == 0) {
		c->base.owner = owner;
		conn_failed(c, TERN_EPEER, NULL);
		return;
	}
	send_refusal(c, rc, reply, reply_len < sizeof(reply) ? reply_len : sizeof(reply));
}

static void server_on_hello(struct tconn *c, const struct tcp_hs *f)
{
	struct tcp_tctx *t = c->t;
	struct tlistener *l = c->l;
	struct tern_conn_params p = {0};
	uint8_t reply[TERN_HANDSHAKE_MAX];
	size_t reply_len = 0;
	void *owner = NULL;
	int rc;

	tern_link_del(&c->link);
	c->l = NULL;
	rc = t->ev->incoming(&l->base, f->hs, f->hs_len, &p, &owner, reply, &reply_len);
	if (rc) {
		send_refusal(c, rc, reply, reply_len);
		return;
	}
	c->base.owner = owner;
	if ((rc = conn_alloc(c, &p)) || (rc = ctl_send(c, 0, TCP_HS_ACCEPT, 0, reply, reply_len))) {
		conn_failed(c, rc, NULL);
		return;
	}
	c->state = TC_WAIT_READY;
	uv_timer_start(&c->timer, conn_timer_cb, p.connect_timeout_ms, 0);
}

static bool status_is_sane(int32_t st)
{
	return st < 0 && st > -(TERN_ERRNO_BASE + 1000);
}

static void client_on_answer(struct tconn *c, const struct tcp_hs *f)
{
	int rc;

	if (f->type == TCP_HS_REFUSE) {
		/* The engine's refusal carries its reason (the engine decodes
		 * it); a bare one, a status. */
		int st = !f->hs_len && status_is_sane(f->status) ? f->status : -ECONNREFUSED;

		c->t->ev->connected(&c->base, st, f->hs, f->hs_len);
		conn_close(c);
		return;
	}
	if (f->type != TCP_HS_ACCEPT) {
		conn_failed(c, TERN_EPEER, NULL);
		return;
	}
	if ((rc = ctl_send(c, 1, TCP_HS_READY, 0, NULL, 0))) {
		conn_failed(c, uv_to_conn_err(rc), NULL);
		return;
	}
	conn_up(c);
	if (c->t->ev->connected(&c->base, 0, f->hs, f->hs_len))
		conn_close(c); /* the engine refused the answer */
}

/* A complete handshake frame arrived in hsbuf. */
static void hs_frame(struct tconn *c)
{
	struct tcp_hs f;
	int bad = tcp_hs_decode(c->hsbuf, &f);

	switch (c->state) {
	case TC_WAIT_HELLO:
		if (bad || f.type != TCP_HS_HELLO)
			server_refuse_garbage(c);
		else
			server_on_hello(c, &f);
		break;
	case TC_WAIT_READY:
		if (bad || f.type != TCP_HS_READY) {
			conn_failed(c, TERN_EPEER, NULL);
			break;
		}
		conn_up(c);
		c->t->ev->accepted(&c->base, 0);
		break;
	case TC_WAIT_ANSWER:
		if (bad)
			conn_failed(c, TERN_EPEER, NULL);
		else
			client_on_answer(c, &f);
		break;
	default:
		break;
	}
}

/* ---- receiving ------------------------------------------------------------------------- */

static bool in_handshake(const struct tconn *c)
{
	return c->state == TC_WAIT_ANSWER || c->state == TC_WAIT_HELLO || c->state == TC_WAIT_READY;
}

/*
 * A frame of @len bytes starts.  Decide where it goes, or why it cannot.
 * Return: true to go on reading it; false to stop (paused, or failed).
 */
static bool frame_start(struct tconn *c, uint32_t len)
{
	char why[96];

	if (in_handshake(c)) {
		if (len != TCP_HS_SIZE) {
			if (c->state == TC_WAIT_HELLO)
				server_refuse_garbage(c);
			else
				conn_failed(c, TERN_EPEER, NULL);
			return false;
		}
		c->f_dst = c->hsbuf;
	} else if (len & TCP_BULK_FLAG) {
		if (len != (TCP_BULK_FLAG | TCP_BULK_HDR)) {
			conn_failed(c, TERN_EPEER, "tcp: a bulk frame with a bad header length");
			return false;
		}
		c->f_kind = TF_BHDR;
		c->f_dst = c->bhdr;
		len = TCP_BULK_HDR;
	} else {
		/* Judged before a byte of it lands anywhere. */
		if (len > c->slot_size) {
			snprintf(why, sizeof(why), "tcp: a frame of %u bytes, but slots hold %u",
				 len, c->slot_size);
			conn_failed(c, TERN_EPEER, why);
			return false;
		}
		if (c->nfree_rx == 0) {
			/* Every receive slot is with the engine: wait for one. */
			c->paused = true;
			return false;
		}
		c->f_token = c->free_rx[--c->nfree_rx];
		c->rx_held[c->f_token] = 1;
		c->f_dst = c->recv_base + (size_t)c->f_token * c->slot_size;
		c->f_kind = TF_MSG;
	}
	if (in_handshake(c))
		c->f_kind = TF_MSG;
	c->in_frame = true;
	c->f_len = len;
	c->f_have = 0;
	return true;
}

/*
 * Turn staged bytes into frames and hand them on.  Never nested: an upcall
 * that frees a slot only schedules a resume.  Return: messages delivered.
 */
static bool bulk_frame_end(struct tconn *c);

static int rx_process(struct tconn *c)
{
	int delivered = 0;

	if (c->parsing)
		return 0;
	c->parsing = true;
	while ((in_handshake(c) || c->state == TC_UP) && !c->paused && !c->doomed) {
		uint32_t avail = c->st_wr - c->st_rd;

		if (!c->in_frame) {
			uint32_t len;

			if (avail < TCP_PREFIX)
				break;
			memcpy(&len, c->stage + c->st_rd, TCP_PREFIX);
			if (!frame_start(c, le32toh(len)))
				break;
			c->st_rd += TCP_PREFIX;
			avail -= TCP_PREFIX;
		}
		if (c->f_have < c->f_len) {
			uint32_t take = c->f_len - c->f_have;

			if (take > avail)
				take = avail;
			memcpy(c->f_dst + c->f_have, c->stage + c->st_rd, take);
			c->st_rd += take;
			c->f_have += take;
			if (c->f_have < c->f_len)
				break;
		}
		c->in_frame = false;
		if (c->f_kind != TF_MSG) {
			if (bulk_frame_end(c))
				delivered++;
			continue;
		}
		if (c->state == TC_UP) {
			c->t->ev->recv(&c->base, c->f_token, c->f_dst, c->f_len);
			delivered++;
		} else {
			hs_frame(c);
		}
	}
	if (c->st_rd == c->st_wr)
		c->st_rd = c->st_wr = 0;
	c->parsing = false;
	rx_update_reading(c);
	return delivered;
}

/* Where the next read should land: straight into a slot, or staging. */
static void rx_buf(struct tconn *c, char **base, size_t *len)
{
	if (c->in_frame && c->state == TC_UP && c->st_rd == c->st_wr &&
	    c->f_len - c->f_have >= TCP_DIRECT_MIN) {
		*base = (char *)c->f_dst + c->f_have;
		*len = c->f_len - c->f_have;
		return;
	}
	if (c->st_rd > 0) {
		/* Only a partial prefix or frames waiting for a slot are left. */
		memmove(c->stage, c->stage + c->st_rd, c->st_wr - c->st_rd);
		c->st_wr -= c->st_rd;
		c->st_rd = 0;
	}
	*base = (char *)c->stage + c->st_wr;
	*len = TCP_STAGE - c->st_wr;
}

static int rx_got(struct tconn *c, const char *base, size_t n)
{
	c->got_bytes = true;
	if ((const uint8_t *)base >= c->stage && (const uint8_t *)base < c->stage + TCP_STAGE)
		c->st_wr += (uint32_t)n;
	else
		c->f_have += (uint32_t)n; /* read straight into the frame's slot */
	return rx_process(c);
}

static void rx_eof(struct tconn *c, int err)
{
	char why[96];

	if (c->state == TC_WAIT_HELLO) {
		/* Bytes, but never a whole HELLO: tell the engine, as for garbage. */
		if (c->got_bytes)
			server_refuse_garbage(c);
		else
			conn_close(c);
		return;
	}
	if (c->state != TC_UP) {
		conn_failed(c, err == UV_EOF ? -ECONNRESET : uv_to_conn_err(err), NULL);
		return;
	}
	/* (In a bulk piece, the peer closing mid-transfer is a reset, not a
	 * protocol error: its session went away while it was sending.) */
	if (err == UV_EOF && !c->paused && c->f_kind == TF_MSG &&
	    (c->in_frame || c->st_wr > c->st_rd)) {
		snprintf(why, sizeof(why),
			 "tcp: the peer hung up in the middle of a %u-byte message",
			 c->in_frame ? c->f_len : 0);
		conn_failed(c, TERN_EPEER, why);
		return;
	}
	conn_failed(c, uv_to_conn_err(err), "the peer hung up");
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	(void)suggested;
	rx_buf(h->data, &buf->base, &buf->len);
}

static void read_cb(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf)
{
	struct tconn *c = s->data;
	struct tcp_tctx *t = c->t;

	if (c->state == TC_CLOSING)
		return;
	t->in_cb++;
	if (nread > 0)
		rx_got(c, buf->base, (size_t)nread);
	else if (nread < 0)
		rx_eof(c, (int)nread);
	/*
	 * What the upcalls deferred (send_done for replies written at once)
	 * runs here, on the way out, rather than costing the loop one more
	 * turn through an idle handle; a few rounds, then the idle takes over.
	 */
	for (int i = 0; i < 4 && !tern_link_empty(&t->kick); i++)
		kick_run(t);
	if (--t->in_cb == 0 && !tern_link_empty(&t->kick))
		kick_idle_start(t);
	t->ev->activity(t->ctx);
}

/* Reading is on unless paused, and in busy mode poll() reads instead. */
static void rx_update_reading(struct tconn *c)
{
	bool want =
		(in_handshake(c) || (c->state == TC_UP && c->t->mode == TERN_TRANSPORT_EVENTS)) &&
		!c->paused;

	if (c->state == TC_CLOSING)
		return; /* uv_close() stopped it */
	if (want && !c->reading) {
		uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb);
		c->reading = true;
	} else if (!want && c->reading) {
		uv_read_stop((uv_stream_t *)&c->tcp);
		c->reading = false;
	}
}

/* Busy mode: read what the socket has, without waiting. */
static int conn_poll_socket(struct tconn *c, int budget)
{
	int n = 0, fd;

	if (uv_fileno((uv_handle_t *)&c->tcp, &fd))
		return 0;
	for (int i = 0; i < TCP_POLL_READS && n < budget && c->state == TC_UP && !c->paused; i++) {
		char *base;
		size_t len;
		ssize_t r;

		rx_buf(c, &base, &len);
		if (len == 0)
			break; /* staging full: only while paused, which the loop excludes */
		r = recv(fd, base, len, MSG_DONTWAIT);
		if (r > 0) {
			n += rx_got(c, base, (size_t)r);
			if ((size_t)r < len)
				break; /* drained */
		} else if (r == 0) {
			rx_eof(c, UV_EOF);
		} else if (errno == EAGAIN || errno == EWOULDBLOCK) {
			break;
		} else if (errno != EINTR) {
			rx_eof(c, -errno);
		}
	}
	return n;
}

/* ---- deferred work: send_done for finished writes, parsing to resume ------------------ */

static void kick_cb(uv_idle_t *h);

static void kick(struct tconn *c)
{
	struct tcp_tctx *t = c->t;

	if (tern_link_empty(&c->kick))
		tern_link_add(&t->kick, &c->kick);
	if (!t->in_cb)
		kick_idle_start(t);
}

static void kick_idle_start(struct tcp_tctx *t)
{
	if (!t->kick_active) {
		uv_idle_start(&t->kick_idle, kick_cb);
		t->kick_active = true;
	}
}

static int conn_flush(struct tconn *c)
{
	int n = 0;

	if (c->doomed && c->state == TC_UP) {
		conn_failed(c, c->doomed, c->doomed_why);
		return 1;
	}
	while (c->done_len && c->state == TC_UP) {
		uint32_t slot = c->done[c->done_head];

		c->done_head = (c->done_head + 1) % c->nslots;
		c->done_len--;
		c->tx_busy[slot] = 0;
		c->t->ev->send_done(&c->base, slot);
		n++;
	}
	if (c->paused && c->nfree_rx && c->state == TC_UP) {
		c->paused = false;
		n += rx_process(c);
	}
	return n;
}

/* Run the deferred work queued so far (not what it queues in turn). */
static int kick_run(struct tcp_tctx *t)
{
	struct tern_link batch;
	int n = 0;

	tern_link_init(&batch);
	if (!tern_link_empty(&t->kick)) {
		batch.next = t->kick.next;
		batch.prev = t->kick.prev;
		batch.next->prev = &batch;
		batch.prev->next = &batch;
		tern_link_init(&t->kick);
	}
	while (!tern_link_empty(&batch)) {
		struct tconn *c = tern_link_entry(batch.next, struct tconn, kick);

		tern_link_del(&c->kick);
		n += conn_flush(c);
	}
	return n;
}

static void kick_cb(uv_idle_t *h)
{
	struct tcp_tctx *t = h->data;
	int n = kick_run(t);

	if (tern_link_empty(&t->kick)) {
		uv_idle_stop(&t->kick_idle);
		t->kick_active = false;
	}
	if (n)
		t->ev->activity(t->ctx);
}

/* ---- sending ---------------------------------------------------------------------------- */

static void data_written(uv_write_t *req, int status)
{
	struct tconn *c = req->data;
	uint32_t slot = (uint32_t)(req - c->wreq);

	if (c->state != TC_UP)
		return; /* cancelled by the close */
	c->tx_busy[slot] = 0;
	if (status < 0) {
		conn_failed(c, uv_to_conn_err(status), "tcp: write failed");
		return;
	}
	c->t->ev->send_done(&c->base, slot);
	if (c->t->mode == TERN_TRANSPORT_EVENTS)
		c->t->ev->activity(c->t->ctx);
}

static int tcp_post_send(struct tern_conn *bc, uint32_t slot, uint32_t len, uint32_t flags)
{
	struct tconn *c = C(bc);
	uv_buf_t b[2];
	unsigned nb = 2;
	int n, rc;

	/* send_done follows the write at once: CONFIRM is implied */
	(void)flags;

	if (c->state != TC_UP)
		return -ENOTCONN;
	if (slot >= c->nslots || len > c->slot_size || c->tx_busy[slot])
		return -EINVAL;
	c->prefix[slot] = htole32(len);
	b[0] = uv_buf_init((char *)&c->prefix[slot], TCP_PREFIX);
	b[1] = uv_buf_init((char *)c->base.send_base + (size_t)slot * c->slot_size, len);
	c->tx_busy[slot] = 1;
	/* Straight from the slot; libuv refuses (EAGAIN) if writes are
	 * queued, which keeps frames in order. */
	n = uv_try_write((uv_stream_t *)&c->tcp, b, 2);
	if (n == (int)(TCP_PREFIX + len)) {
		/* send_done must not run inside post_send: defer it. */
		c->done[(c->done_head + c->done_len) % c->nslots] = slot;
		c->done_len++;
		kick(c);
		return 0;
	}
	if (n < 0 && n != UV_EAGAIN) {
		c->tx_busy[slot] = 0;
		return uv_to_conn_err(n);
	}
	if (n < 0)
		n = 0;
	/* Partial: libuv writes the rest, from the slot, as the socket drains. */
	if ((uint32_t)n < TCP_PREFIX) {
		b[0].base += n;
		b[0].len -= (size_t)n;
	} else {
		b[0] = uv_buf_init(b[1].base + (n - TCP_PREFIX), len - (uint32_t)(n - TCP_PREFIX));
		nb = 1;
	}
	rc = uv_write(&c->wreq[slot], (uv_stream_t *)&c->tcp, b, nb, data_written);
	if (rc) {
		c->tx_busy[slot] = 0;
		return uv_to_conn_err(rc);
	}
	c->wq_total += b[0].len + (nb == 2 ? b[1].len : 0);
	return 0;
}

static int tcp_post_recv(struct tern_conn *bc, uint32_t token)
{
	struct tconn *c = C(bc);

	if (c->state != TC_UP)
		return -ENOTCONN;
	if (token >= c->nslots || !c->rx_held[token])
		return -EINVAL;
	c->rx_held[token] = 0;
	c->free_rx[c->nfree_rx++] = token;
	/* A frame waiting for this slot is delivered later, never from in here. */
	if (c->paused)
		kick(c);
	return 0;
}

/* ---- listeners and connects --------------------------------------------------------------- */

static void fmt_peer(char *out, size_t len, const struct sockaddr_storage *ss)
{
	char host[INET6_ADDRSTRLEN] = "?";
	uint16_t port = 0;

	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *a = (const struct sockaddr_in *)ss;
		inet_ntop(AF_INET, &a->sin_addr, host, sizeof(host));
		port = ntohs(a->sin_port);
	} else if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *a = (const struct sockaddr_in6 *)ss;
		inet_ntop(AF_INET6, &a->sin6_addr, host, sizeof(host));
		port = ntohs(a->sin6_port);
	}
	snprintf(out, len, ss->ss_family == AF_INET6 ? "[%s]:%u" : "%s:%u", host, port);
}

/* An accepted socket in @c->tcp: wait for its HELLO, as @l's. */
static void server_conn_start(struct tlistener *l, struct tconn *c)
{
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);

	uv_tcp_nodelay(&c->tcp, 1);
	memset(&ss, 0, sizeof(ss));
	uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &sslen);
	fmt_peer(c->base.peer, sizeof(c->base.peer), &ss);
	c->l = l;
	tern_link_add(&l->pending, &c->link);
	c->state = TC_WAIT_HELLO;
	rx_update_reading(c);
	uv_timer_start(&c->timer, conn_timer_cb, TCP_HANDSHAKE_MS, 0);
}

/*
 * A group's listener hands the socket over unread.  libuv accepts only
 * into a handle of this loop, so the socket goes out as a duplicate and
 * the handle closes here, quietly (no owner: the engine never knew it).
 */
static void handoff(struct tlistener *l, struct tconn *c)
{
	uv_os_fd_t fd;
	int dup_fd = -1;

	if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
		dup_fd = fcntl(fd, F_DUPFD_CLOEXEC, 0);
	conn_close(c);
	if (dup_fd >= 0)
		l->t->ev->handoff(&l->base, (struct tern_handoff){.fd = dup_fd});
}

static void on_connection(uv_stream_t *server, int status)
{
	struct tlistener *l = server->data;
	struct tconn *c;

	if (status < 0)
		return;
	c = conn_new(l->t, true);
	if (!c)
		return;
	if (uv_accept(server, (uv_stream_t *)&c->tcp)) {
		conn_close(c);
		return;
	}
	if (l->base.handoff)
		handoff(l, c);
	else
		server_conn_start(l, c);
}

/* A socket another context's group listener accepted, run as @tl's. */
static int tcp_adopt(struct tern_tlistener *tl, struct tern_handoff h)
{
	struct tlistener *l = (struct tlistener *)tl;
	int fd = h.fd;
	struct tconn *c = conn_new(l->t, true);
	int rc;

	if (!c) {
		close(fd);
		return -ENOMEM;
	}
	if ((rc = uv_tcp_open(&c->tcp, fd))) {
		close(fd);
		conn_close(c);
		return rc;
	}
	server_conn_start(l, c);
	return 0;
}

static int resolve(const struct tern_uri *u, bool passive, struct sockaddr_storage *ss)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0)};
	struct addrinfo *res;
	char port[8];

	snprintf(port, sizeof(port), "%u", u->port);
	if (getaddrinfo(u->host, port, &hints, &res))
		return -EHOSTUNREACH;
	memset(ss, 0, sizeof(*ss));
	memcpy(ss, res->ai_addr, res->ai_addrlen);
	freeaddrinfo(res);
	return 0;
}

static void listener_closed(uv_handle_t *h)
{
	struct tlistener *l = h->data;

	l->t->open_handles--;
	free(l);
}

static struct tlistener *listener_new(struct tern_tctx *tt, void *owner)
{
	struct tcp_tctx *t = T(tt);
	struct tlistener *l = calloc(1, sizeof(*l));

	if (!l)
		return NULL;
	l->base.ops = &tern_tcp_transport;
	l->base.tctx = tt;
	l->base.owner = owner;
	l->t = t;
	tern_link_init(&l->pending);
	uv_tcp_init(t->loop, &l->tcp);
	l->tcp.data = l;
	t->open_handles++;
	return l;
}

/* A group member's listener: no socket (uv_tcp_init() opens none). */
static int tcp_adopt_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
			    struct tern_tlistener **out)
{
	struct tlistener *l = listener_new(tt, owner);

	if (!l)
		return -ENOMEM;
	l->base.port = u->port;
	*out = &l->base;
	return 0;
}

static int tcp_listen(struct tern_tctx *tt, const struct tern_uri *u, void *owner,
		      struct tern_tlistener **out)
{
	struct sockaddr_storage ss;
	int sslen = sizeof(ss);
	struct tlistener *l;
	int rc;

	if ((rc = resolve(u, true, &ss)))
		return rc;
	l = listener_new(tt, owner);
	if (!l)
		return -ENOMEM;
	if ((rc = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0)) ||
	    (rc = uv_listen((uv_stream_t *)&l->tcp, SOMAXCONN, on_connection)) ||
	    (rc = uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&ss, &sslen))) {
		uv_close((uv_handle_t *)&l->tcp, listener_closed);
		return rc;
	}
	l->base.port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						      : ((struct sockaddr_in *)&ss)->sin_port);
	*out = &l->base;
	return 0;
}

static void tcp_listener_close(struct tern_tlistener *tl)
{
	struct tlistener *l = (struct tlistener *)tl;

	while (!tern_link_empty(&l->pending))
		conn_close(tern_link_entry(l->pending.next, struct tconn, link));
	uv_close((uv_handle_t *)&l->tcp, listener_closed);
}

static void connect_cb(uv_connect_t *req, int status)
{
	struct tconn *c = req->data;
	int rc;

	if (c->state != TC_CONNECTING)
		return; /* closed meanwhile */
	if (status < 0) {
		conn_failed(c, status, NULL);
	} else {
		uv_tcp_nodelay(&c->tcp, 1);
		c->state = TC_WAIT_ANSWER;
		if ((rc = ctl_send(c, 0, TCP_HS_HELLO, 0, c->hs, c->hs_len)))
			conn_failed(c, uv_to_conn_err(rc), NULL);
		else
			rx_update_reading(c);
	}
	c->t->ev->activity(c->t->ctx);
}

static int tcp_connect(struct tern_tctx *tt, const struct tern_uri *u,
		       const struct tern_conn_params *p, const void *hs, size_t hs_len, void *owner,
		       struct tern_conn **out)
{
	struct tcp_tctx *t = T(tt);
	struct sockaddr_storage ss;
	struct tconn *c;
	int rc;

	if (hs_len > TERN_HANDSHAKE_MAX)
		return -EINVAL;
	if ((rc = resolve(u, false, &ss)))
		return rc;
	c = conn_new(t, false);
	if (!c)
		return -ENOMEM;
	snprintf(c->base.peer, sizeof(c->base.peer),
		 strchr(u->host, ':') ? "[%.60s]:%u" : "%.60s:%u", u->host, u->port);
	memcpy(c->hs, hs, hs_len);
	c->hs_len = (uint32_t)hs_len;
	c->creq.data = c;
	if ((rc = conn_alloc(c, p)) ||
	    (rc = uv_tcp_connect(&c->creq, &c->tcp, (struct sockaddr *)&ss, connect_cb))) {
		conn_close(c); /* quietly: the engine sees the error code */
		return rc;
	}
	c->state = TC_CONNECTING;
	uv_timer_start(&c->timer, conn_timer_cb, p->connect_timeout_ms, 0);
	c->base.owner = owner; /* the engine knows it from here */
	*out = &c->base;
	return 0;
}

static void tcp_disconnect(struct tern_conn *bc)
{
	struct tconn *c = C(bc);

	conn_close(c);
}

/* ---- large messages ---------------------------------------------------------------------- */

/*
 * Fail where no upcall may run (inside an engine call): stop the socket
 * now, so libuv never touches a buffer again, and report from the kick.
 */
static void bulk_doom(struct tconn *c, int err, const char *why)
{
	int fd;

	if (c->doomed || c->state != TC_UP)
		return;
	c->doomed = err;
	c->doomed_why = why;
	if (uv_fileno((uv_handle_t *)&c->tcp, &fd) == 0)
		shutdown(fd, SHUT_RDWR);
	kick(c);
}

static void piece_written(uv_write_t *req, int status);

/* Keep up to TCP_PIECES pieces in flight, taking the outs in turn. */
static void bulk_pump(struct tconn *c)
{
	for (int p = 0; p < TCP_PIECES && c->state == TC_UP && !c->doomed; p++) {
		struct tcp_piece *pc = &c->pieces[p];
		struct tcp_out *o = NULL;
		uint32_t oi = 0, n;
		uv_buf_t b[2];
		int rc;

		if (pc->out >= 0)
			continue;
		for (uint32_t k = 0; k < TCP_OUTS; k++) {
			oi = (c->out_rr + k) % TCP_OUTS;
			if (c->outs[oi].busy && c->outs[oi].queued < c->outs[oi].len) {
				o = &c->outs[oi];
				break;
			}
		}
		if (!o)
			return;
		c->out_rr = oi + 1;
		n = o->len - o->queued < TCP_BULK_PIECE ? (uint32_t)(o->len - o->queued)
							: TCP_BULK_PIECE;
		if (o->write)
			tcp_bulk_encode(pc->hdr, TCP_BULK_WRITE, o->key, o->raddr + o->queued, n,
					0);
		else
			tcp_bulk_encode(pc->hdr, TCP_BULK_DATA, 0, o->queued, n, o->token);
		b[0] = uv_buf_init((char *)pc->hdr, sizeof(pc->hdr));
		/* straight from the source: no copy, nothing sized by the peer */
		b[1] = uv_buf_init((char *)(uintptr_t)(o->src + o->queued), n);
		pc->req.data = c;
		pc->out = (int)oi;
		pc->out_gen = o->gen;
		rc = uv_write(&pc->req, (uv_stream_t *)&c->tcp, b, 2, piece_written);
		if (rc) {
			pc->out = -1;
			bulk_doom(c, uv_to_conn_err(rc), "tcp: could not write a bulk piece");
			return;
		}
		c->wq_total += sizeof(pc->hdr) + n;
		o->queued += n;
		o->inflight++;
		o->last_end = c->wq_total;
	}
}

static void out_free(struct tconn *c, struct tcp_out *o)
{
	o->busy = false;
	if (o->write)
		c->n_write--;
	else
		c->n_serve--;
}

static void piece_written(uv_write_t *req, int status)
{
	struct tcp_piece *pc = (struct tcp_piece *)req;
	struct tconn *c = req->data;
	struct tcp_out *o;
	int oi = pc->out;

	pc->out = -1;
	if (c->state != TC_UP)
		return; /* cancelled by the close; bulk_fail_all reports */
	if (status < 0) {
		conn_failed(c, uv_to_conn_err(status), "tcp: bulk write failed");
		return;
	}
	o = &c->outs[oi];
	if (o->busy && o->gen == pc->out_gen && --o->inflight == 0 && o->queued == o->len) {
		out_free(c, o);
		/* every byte is with the kernel: the source may go */
		if (o->write)
			c->t->ev->bulk_done(&c->base, o->cookie, 0);
	}
	bulk_pump(c);
	if (c->t->mode == TERN_TRANSPORT_EVENTS)
		c->t->ev->activity(c->t->ctx);
}

/* Has the kernel taken every byte @o queued (so its source is free)? */
static bool out_flushed(struct tconn *c, const struct tcp_out *o)
{
	return uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp) <= c->wq_total - o->last_end;
}

/*
 * The export a served read comes from is withdrawn.  An honest peer reads
 * everything before it replies, so that finds the read done; one that
 * replied early loses the connection, before libuv writes any more from
 * memory the engine is about to free.
 */
static void out_withdraw(struct tconn *c, struct tcp_out *o)
{
	if (o->queued < o->len || !out_flushed(c, o))
		bulk_doom(c, TERN_EPEER, "tcp: the peer ended a call while reading its data");
	out_free(c, o);
}

static struct tcp_out *out_new(struct tconn *c)
{
	for (uint32_t i = 0; i < TCP_OUTS; i++) {
		struct tcp_out *o = &c->outs[i];

		if (!o->busy) {
			uint32_t gen = o->gen;

			memset(o, 0, sizeof(*o));
			o->busy = true;
			o->gen = (gen + 1) & 0xffffffu; /* late callbacks of the last use miss */
			return o;
		}
	}
	return NULL; /* the counts keep us from getting here */
}

static bool bulk_bad(struct tconn *c, const char *why)
{
	conn_failed(c, TERN_EPEER, why);
	return false;
}

/*
 * A bulk header or piece has been read: act on it.  Every field is judged
 * before anything is read into or written from our memory.
 * Return: true if a transfer of ours finished.
 */
static bool bulk_frame_end(struct tconn *c)
{
	struct tcp_bulk b;
	struct tcp_rop *r;
	struct tcp_out *o;
	uint32_t i;

	if (c->f_kind == TF_BPAY) {
		c->f_kind = TF_MSG;
		r = c->f_rop;
		c->f_rop = NULL;
		if (!r)
			return false; /* a WRITE piece: nothing more to do */
		r->got += c->f_len;
		if (r->got < r->len)
			return false;
		if (r->req_pending) {
			/* The rop is not free before its write calls back: it
			 * stays busy until then, so that -EAGAIN always has a
			 * bulk_done() ahead of it (include/tern/transport.h). */
			r->landed = true;
			return false;
		}
		r->busy = false;
		c->t->ev->bulk_done(&c->base, r->cookie, 0);
		return true;
	}
	c->f_kind = TF_MSG;
	tcp_bulk_decode(c->bhdr, &b);
	switch (b.type) {
	case TCP_BULK_READ:
		if (!b.len || !tern_xtab_check(&c->xt, b.key, b.addr, b.len, false))
			return bulk_bad(c, "tcp: the peer asked to read memory it was not given");
		if (c->n_serve >= TCP_BULK_OPS)
			return bulk_bad(c, "tcp: the peer asked for too many reads at once");
		o = out_new(c);
		c->n_serve++;
		o->key = b.key;
		o->token = b.token;
		o->src = (const uint8_t *)(uintptr_t)b.addr;
		o->len = b.len;
		bulk_pump(c);
		return false;
	case TCP_BULK_DATA:
		i = b.token & 0xffu;
		r = &c->rops[i % TCP_BULK_OPS];
		if (i >= TCP_BULK_OPS || !r->busy || r->gen != b.token >> 8)
			return bulk_bad(c, "tcp: data for a read nobody asked for");
		if (!b.len || b.len > TCP_BULK_PIECE || b.addr != r->got || b.len > r->len - r->got)
			return bulk_bad(c,
					"tcp: a data piece that is not the next part of the read");
		c->f_rop = r;
		c->f_dst = r->dst + r->got;
		break;
	case TCP_BULK_WRITE:
		if (!b.len || b.len > TCP_BULK_PIECE)
			return bulk_bad(c, "tcp: a bulk piece of 0 or over 1 MiB");
		if (!tern_xtab_check(&c->xt, b.key, b.addr, b.len, true))
			return bulk_bad(c, "tcp: the peer wrote to memory it was not given");
		c->f_rop = NULL;
		c->f_dst = (uint8_t *)(uintptr_t)b.addr;
		break;
	default:
		return bulk_bad(c, "tcp: a bulk frame of an unknown type");
	}
	/* the piece's bytes follow: straight into their checked destination */
	c->f_kind = TF_BPAY;
	c->in_frame = true;
	c->f_len = (uint32_t)b.len;
	c->f_have = 0;
	return false;
}

static void bulk_fail_all(struct tconn *c, int err)
{
	for (uint32_t i = 0; i < TCP_BULK_OPS; i++) {
		if (c->rops[i].busy) {
			c->rops[i].busy = false;
			c->rops[i].landed = false;
			c->t->ev->bulk_done(&c->base, c->rops[i].cookie, err);
		}
	}
	for (uint32_t i = 0; i < TCP_OUTS; i++) {
		struct tcp_out *o = &c->outs[i];

		if (o->busy) {
			out_free(c, o);
			if (o->write)
				c->t->ev->bulk_done(&c->base, o->cookie, err);
		}
	}
}

static uint64_t tcp_bulk_max(struct tern_conn *bc)
{
	(void)bc;
	return UINT32_MAX; /* pieces move any message size */
}

static int tcp_bulk_export(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			   int writable, struct tern_bulk_desc *out)
{
	struct tconn *c = C(bc);

	if (c->state != TC_UP)
		return -ENOTCONN;
	return tern_xtab_add(&c->xt, m, off, len, writable, out);
}

static void tcp_bulk_unexport(struct tern_conn *bc, const struct tern_bulk_desc *d, unsigned flags)
{
	(void)flags;
	struct tconn *c = C(bc);

	if (tern_xtab_del(&c->xt, d))
		return;
	for (uint32_t i = 0; i < TCP_OUTS; i++)
		if (c->outs[i].busy && !c->outs[i].write && c->outs[i].key == d->key)
			out_withdraw(c, &c->outs[i]);
}

static void tcp_mem_release(struct tern_tctx *tt, struct tern_tmem *m)
{
	struct tcp_tctx *t = T(tt);

	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct tconn *c = tern_link_entry(l, struct tconn, link);

		for (uint32_t i = 0; i < TCP_OUTS; i++) {
			struct tcp_out *o = &c->outs[i];
			const struct tern_xent *e;

			if (!o->busy || o->write)
				continue;
			e = tern_xtab_check(&c->xt, o->key, (uint64_t)(uintptr_t)o->src, o->len,
					    false);
			if (e && e->m == m)
				out_withdraw(c, o);
		}
		tern_xtab_drop_mem(&c->xt, m);
	}
	m->prov = NULL;
}

static void rop_written(uv_write_t *req, int status)
{
	struct tcp_rop *r = (struct tcp_rop *)((char *)req - offsetof(struct tcp_rop, req));
	struct tconn *c = req->data;

	r->req_pending = false;
	if (status < 0 && c->state == TC_UP)
		conn_failed(c, uv_to_conn_err(status), "tcp: write failed");
	if (r->landed && r->busy && c->state == TC_UP) {
		r->landed = false;
		r->busy = false;
		c->t->ev->bulk_done(&c->base, r->cookie, 0);
		if (c->t->mode == TERN_TRANSPORT_EVENTS)
			c->t->ev->activity(c->t->ctx);
	}
}

static int bulk_check(struct tconn *c, const struct tern_bulk_desc *remote, struct tern_tmem *m,
		      size_t off, size_t len)
{
	if (c->state != TC_UP || c->doomed)
		return -ENOTCONN;
	if (len == 0 || off > m->len || len > m->len - off || len > remote->len)
		return -EINVAL;
	return 0;
}

static int tcp_bulk_read(struct tern_conn *bc, const struct tern_bulk_desc *remote,
			 struct tern_tmem *m, size_t off, size_t len, uint64_t cookie)
{
	struct tconn *c = C(bc);
	struct tcp_rop *r = NULL;
	uint32_t i;
	uv_buf_t b;
	int rc;

	if ((rc = bulk_check(c, remote, m, off, len)))
		return rc;
	for (i = 0; i < TCP_BULK_OPS && !r; i++)
		if (!c->rops[i].busy && !c->rops[i].req_pending)
			r = &c->rops[i];
	if (!r)
		return -EAGAIN;
	i = (uint32_t)(r - c->rops);
	r->gen = (r->gen + 1) & 0xffffffu;
	r->cookie = cookie;
	r->dst = (uint8_t *)m->addr + off;
	r->len = len;
	r->got = 0;
	r->landed = false;
	tcp_bulk_encode(r->hdr, TCP_BULK_READ, remote->key, remote->addr, len, r->gen << 8 | i);
	b = uv_buf_init((char *)r->hdr, sizeof(r->hdr));
	r->req.data = c;
	rc = uv_write(&r->req, (uv_stream_t *)&c->tcp, &b, 1, rop_written);
	if (rc)
		return uv_to_conn_err(rc);
	c->wq_total += b.len;
	r->req_pending = true;
	r->busy = true;
	return 0;
}

static int tcp_bulk_write(struct tern_conn *bc, struct tern_tmem *m, size_t off, size_t len,
			  const struct tern_bulk_desc *remote, uint64_t cookie)
{
	struct tconn *c = C(bc);
	struct tcp_out *o;
	int rc;

	if ((rc = bulk_check(c, remote, m, off, len)))
		return rc;
	if (c->n_write >= TCP_BULK_OPS)
		return -EAGAIN;
	o = out_new(c);
	c->n_write++;
	o->write = true;
	o->key = remote->key;
	o->raddr = remote->addr;
	o->src = (const uint8_t *)m->addr + off;
	o->len = len;
	o->cookie = cookie;
	bulk_pump(c);
	return 0;
}

/* ---- the context ---------------------------------------------------------------------------- */

static void tcp_mem_stats(struct tern_tctx *tt, struct tern_mem_stats *acc)
{
	struct tcp_tctx *t = T(tt);

	tern_mem_stats_add(acc, &t->mem);
	acc->slots_heap_resident += tern_memmap_resident(&t->maps);
}

static int tcp_ctx_init(tern_ctx *ctx, uv_loop_t *loop, const struct tern_transport_events *ev,
			struct tern_tctx **out)
{
	struct tcp_tctx *t = calloc(1, sizeof(*t));
	struct sigaction sa;

	if (!t)
		return -ENOMEM;
	/*
	 * libuv writes with write(2), so a peer that has gone makes the
	 * kernel raise SIGPIPE, whose default action kills the process.  A
	 * dead peer must be an error code, not our death: if the process left
	 * SIGPIPE at its default, ignore it (as libuv's own users do).
	 */
	if (sigaction(SIGPIPE, NULL, &sa) == 0 && sa.sa_handler == SIG_DFL) {
		sa.sa_handler = SIG_IGN;
		sigaction(SIGPIPE, &sa, NULL);
	}
	t->ctx = ctx;
	t->loop = loop;
	t->ev = ev;
	t->mode = TERN_TRANSPORT_POLLED;
	tern_link_init(&t->up);
	tern_link_init(&t->kick);
	tern_link_init(&t->maps);
	uv_idle_init(loop, &t->kick_idle);
	t->kick_idle.data = t;
	t->open_handles = 1;
	*out = (struct tern_tctx *)t;
	return 0;
}

static void tctx_handle_closed(uv_handle_t *h)
{
	struct tcp_tctx *t = h->data;
	t->open_handles--;
}

static void tcp_ctx_fini(struct tern_tctx *tt)
{
	struct tcp_tctx *t = T(tt);

	uv_idle_stop(&t->kick_idle);
	uv_close((uv_handle_t *)&t->kick_idle, tctx_handle_closed);
	while (t->open_handles > 0)
		uv_run(t->loop, UV_RUN_NOWAIT);
	free(t);
}

static int tcp_poll(struct tern_tctx *tt, int budget)
{
	struct tcp_tctx *t = T(tt);
	int n = kick_run(t);

	for (struct tern_link *l = t->up.next; l != &t->up && n < budget; l = l->next) {
		struct tconn *c = tern_link_entry(l, struct tconn, link);

		if (c->state == TC_UP)
			n += conn_poll_socket(c, budget - n);
	}
	return n;
}

static int tcp_set_mode(struct tern_tctx *tt, enum tern_transport_mode mode)
{
	struct tcp_tctx *t = T(tt);

	t->mode = mode;
	for (struct tern_link *l = t->up.next; l != &t->up; l = l->next) {
		struct tconn *c = tern_link_entry(l, struct tconn, link);

		if (c->state == TC_UP)
			rx_update_reading(c);
	}
	/* Level-triggered epoll sees whatever is already in the sockets; only
	 * our own deferred work needs running here. */
	return mode == TERN_TRANSPORT_EVENTS ? kick_run(t) : 0;
}

const struct tern_transport_ops tern_tcp_transport = {
	.scheme = "tcp",
	.uri_form = TERN_URI_HOST_PORT,
	.ctx_init = tcp_ctx_init,
	.ctx_fini = tcp_ctx_fini,
	.listen = tcp_listen,
	.listener_close = tcp_listener_close,
	.adopt_listen = tcp_adopt_listen,
	.adopt = tcp_adopt,
	.connect = tcp_connect,
	.post_send = tcp_post_send,
	.post_recv = tcp_post_recv,
	.disconnect = tcp_disconnect,
	.poll = tcp_poll,
	.set_mode = tcp_set_mode,
	.bulk_max = tcp_bulk_max,
	.bulk_export = tcp_bulk_export,
	.bulk_read = tcp_bulk_read,
	.bulk_write = tcp_bulk_write,
	.mem_release = tcp_mem_release,
	.bulk_unexport = tcp_bulk_unexport,
	.mem_stats = tcp_mem_stats,
};
