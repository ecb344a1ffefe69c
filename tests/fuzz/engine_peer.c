// SPDX-License-Identifier: MIT
/*
 * engine_peer.c - the fuzzer as the peer of a real engine (see engine_peer.h).
 *
 * The engine is the library's own code, unchanged, on one context kept for
 * the process's life; the peer reaches it only through mem://, the way a
 * remote peer reaches it through a NIC.  The input is read as:
 *
 *   setup byte, then the handshake (engine_peer.c: start_server/start_client)
 *   ops until the input ends, each an op byte and its arguments
 *
 * Setup bits: 0x01 the handshake role (FZ_HANDSHAKE), 0x02 a service
 * check, 0x04 nonblock, 0x08 (0x10, 0x20) holds, 0x40 the shm and tcp
 * targets' role, 0x80 the engine's check carries Fz's layout (client).
 *
 * Arguments past the end of the input read as zeros, so every input is a
 * valid program.  Messages the peer sends are honest (credits, sequence
 * numbers and call slots as a correct peer would fill them) unless the op
 * says otherwise; the first dishonest one "taints" the run, and from then
 * on the engine's messages are no longer held to an honest peer's view.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"
#include "engine_peer.h"
#include "wire.h"

#define FZ_PAYLOAD    (FZ_SLOT - TERN_HDR_SIZE)
#define FZ_SCHEMA     0x5eed5eed5eedull
#define FZ_SVC_HASH   0x1234abcdull
#define FZ_MAX_OPS    512
#define FZ_CALLS      128 /* the engine's calls one run may make */
#define FZ_REPLY_BUFS 8

/* What the engine serves (handlers below), and what it calls at the peer. */
enum {
	M_RAW = 0x101,
	M_INPLACE,
	M_DEFER,
	M_ONEWAY,
	M_BATCH,
	M_BATCH_OW,
	M_NONE, /* never registered */
	M_PEER, /* what the engine calls: the peer answers anything */
};
static const uint32_t served[] = {M_RAW,   M_INPLACE,  M_DEFER, M_ONEWAY,
				  M_BATCH, M_BATCH_OW, M_NONE,	TERN_METHOD_SVC_CHECK};
#define N_SERVED (sizeof(served) / sizeof(served[0]))
/*
 * The first four can be unregistered and registered again.  (Not the
 * batch methods: an unregistered batch method's gatherer stays until the
 * context goes, by design (rpc/methods.c), so toggling them grows the
 * context; that is no bug to find again with every input.)
 */
#define N_TOGGLE 4

/* A call the engine made to the peer, as the peer saw it. */
struct ecall {
	uint16_t slot;
	uint32_t gen;
	uint32_t method;
	bool has_rdesc, has_bdesc;
	struct tern_bulk_desc rdesc, bdesc;
};

/* A call the engine's user made: its callback must run exactly once. */
struct ucall {
	bool issued, done;
};

struct run {
	const uint8_t *p, *end;
	enum fz_role role;
	const struct fz_wire *w;
	bool peer; /* the wire is connected (the program has not hung up) */
	tern_session *s;
	bool alive;	  /* s may be used */
	bool user_closed; /* tern_session_close() was called */
	bool announced;	  /* the user was given the session */
	int ends;	  /* on_close / close_cb / a failed connect */
	bool client;	  /* the engine connected */
	int connects;	  /* client: connect_cb runs */
	bool hello_seen;  /* client: the engine's hello reached the peer */

	/* the peer's honest view (credit.h), and whether it is still honest */
	struct tern_credits pcr;
	uint32_t tx_seq, rx_seq;
	bool tainted;
	uint32_t svc_answer_len; /* client: what answers its service check */
	bool pbusy[FZ_N];	 /* the peer's calls in flight */
	uint32_t pgen[FZ_N];
	struct tern_bulk_desc pd_rw, pd_ro; /* peer memory the engine may reach */

	struct ecall ec[2 * FZ_N];
	uint32_t nec;

	/* the engine's user */
	tern_req *held[64];
	uint32_t nheld;
	tern_req *deferred[32];
	uint32_t ndeferred;
	struct ucall calls[FZ_CALLS];
	uint32_t ncalls;
	uint32_t reply_bufs_used;
	bool unregistered[N_TOGGLE];
};

static struct run R;
static tern_ctx *ctx;
static tern_listener *lis;
static const struct fz_wire *lis_wire;
static tern_mr *reg_mr;
static uint8_t reg[FZ_MAX_MSG];			   /* registered: zero-copy requests and replies */
static uint8_t src[FZ_MAX_MSG + 64];		   /* requests outside any registration */
static uint8_t replies[FZ_REPLY_BUFS][FZ_MAX_MSG]; /* reply buffers of the engine's calls */

/* ---- the input --------------------------------------------------------------- */

static bool more(const struct run *r)
{
	return r->p < r->end;
}

static uint8_t u8(struct run *r)
{
	return r->p < r->end ? *r->p++ : 0;
}

/* Little-endian; one statement per byte, since the order in which the
 * operands of | are evaluated is unspecified. */
static uint16_t u16(struct run *r)
{
	uint16_t lo = u8(r);

	return (uint16_t)(lo | u8(r) << 8);
}

static uint32_t u32(struct run *r)
{
	uint32_t lo = u16(r);

	return lo | (uint32_t)u16(r) << 16;
}

static uint64_t u64(struct run *r)
{
	uint64_t lo = u32(r);

	return lo | (uint64_t)u32(r) << 32;
}

/* @n bytes of input into @out (zeros past the end). */
static void take(struct run *r, void *out, size_t n)
{
	size_t k = (size_t)(r->end - r->p) < n ? (size_t)(r->end - r->p) : n;

	memcpy(out, r->p, k);
	memset((uint8_t *)out + k, 0, n - k);
	r->p += k;
}

uint8_t fz_pmem[FZ_PEER_MEM]; /* the peer's memory */

/* The same, for the wires' hostile ops. */
uint8_t fz_u8(void)
{
	return u8(&R);
}

uint16_t fz_u16(void)
{
	return u16(&R);
}

uint32_t fz_u32(void)
{
	return u32(&R);
}

uint64_t fz_u64(void)
{
	return u64(&R);
}

void fz_take(void *out, size_t n)
{
	take(&R, out, n);
}

struct tern_ctx *fz_ctx(void)
{
	return ctx;
}

/* ---- what must hold ----------------------------------------------------------- */

/* FZ_TRACE=1 in the environment: say what happens (for a crashing input). */
static int tracing = -1;

static void trace(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void trace(const char *fmt, ...)
{
	va_list ap;

	if (tracing < 0)
		tracing = getenv("FZ_TRACE") != NULL;
	if (!tracing)
		return;
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static void bug(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void bug(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "engine_peer: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, " (last error: %s)\n", ctx ? tern_ctx_last_error(ctx) : "");
	abort();
}

/* ---- the engine's handlers: behaviour chosen by the request's bytes ------------ */

static void hold_req(tern_req *req)
{
	if (R.nheld < sizeof(R.held) / sizeof(R.held[0]) && tern_req_hold(req))
		R.held[R.nheld++] = req;
}

static int h_raw(tern_req *req, const void *in, size_t n, struct tern_iov *out, void *u)
{
	const uint8_t *b = in;
	size_t len = n > 2 ? ((size_t)b[1] | (size_t)b[2] << 8) * 4 : 0;

	(void)u;
	switch (n ? b[0] % 5 : 0) {
	case 0: /* echo, from the receive slot (or the pulled request) */
		out->base = in;
		out->len = n;
		return 0;
	case 1:
		tern_req_set_error(req, "raw handler says no");
		return n > 1 ? (int)(int8_t)b[1] : -EIO;
	case 2: /* a reply of any size, from unregistered memory */
		out->base = src;
		out->len = len < sizeof(src) ? len : sizeof(src);
		return 0;
	case 3: /* from a registered region: no staging */
		out->base = reg;
		out->len = len < sizeof(reg) ? len : sizeof(reg);
		return 0;
	default:
		return 0;
	}
}

static ssize_t h_inplace(tern_req *req, const void *in, size_t n, void *out, size_t cap, void *u)
{
	const uint8_t *b = in;
	size_t want = n > 2 ? ((size_t)b[1] | (size_t)b[2] << 8) * 4 : n;

	(void)req, (void)u;
	switch (n ? b[0] % 3 : 0) {
	case 0:
		memcpy(out, in, n < cap ? n : cap);
		return (ssize_t)n; /* more than cap: the engine says so, never sends it */
	case 1:
		return n > 1 ? -(ssize_t)(b[1] + 1) : -EINVAL;
	default:
		memset(out, 0xab, want < cap ? want : cap);
		return (ssize_t)want;
	}
}

static int h_defer(tern_req *req, const void *in, size_t n, void *u)
{
	const uint8_t *b = in;
	void *out;
	size_t cap;

	(void)u;
	switch (n ? b[0] % 4 : 0) {
	case 0:
		if (R.ndeferred == sizeof(R.deferred) / sizeof(R.deferred[0]))
			return -EBUSY;
		R.deferred[R.ndeferred++] = req;
		return 0;
	case 1: /* reply before returning */
	{
		int rc = tern_reply_acquire(req, &out, &cap);

		if (rc)
			return rc; /* the engine answers with it */
		memset(out, 0xcd, n < cap ? n : cap);
		tern_reply_commit(req, n);
		return 0;
	}
	case 2:
		return -ENOENT;
	default:
		tern_reply_error(req, -EPERM, "deferred handler says no");
		return 0;
	}
}

static void h_oneway(tern_req *req, const void *in, size_t n, void *u)
{
	const uint8_t *b = in;

	(void)u;
	if (n && (b[0] & 1))
		hold_req(req);
	if (n && (b[0] & 2))
		tern_req_set_error(req, "one-way handler rejects it");
}

static void h_batch(struct tern_batch_item *it, size_t n, void *u)
{
	(void)u;
	for (size_t i = 0; i < n; i++) {
		const uint8_t *b = it[i].in;
		uint8_t op = it[i].in_len ? b[0] % 4 : 0;

		if (op == 3) {
			hold_req(it[i].req);
		} else if (!it[i].out) {
			/* one-way: nothing to answer */
		} else if (op == 0) {
			size_t k = it[i].in_len < it[i].out_cap ? it[i].in_len : it[i].out_cap;

			memcpy(it[i].out, it[i].in, k);
			it[i].status = (ssize_t)k;
		} else if (op == 1) {
			tern_req_set_error(it[i].req, "batch item fails");
			it[i].status = -EIO;
		} else {
			it[i].status = (ssize_t)it[i].out_cap + 1; /* claims too much */
		}
	}
}

static int method_register(uint32_t i)
{
	struct tern_batch_opts bo = {.size = sizeof(bo), .max = 3, .wait_us = 0};

	switch (served[i]) {
	case M_RAW:
		return tern_register_raw(ctx, M_RAW, h_raw, NULL);
	case M_INPLACE:
		return tern_register_inplace(ctx, M_INPLACE, h_inplace, NULL);
	case M_DEFER:
		return tern_register_deferred(ctx, M_DEFER, h_defer, NULL);
	case M_ONEWAY:
		return tern_register_oneway(ctx, M_ONEWAY, h_oneway, NULL);
	case M_BATCH:
		return tern_register_batch(ctx, M_BATCH, &bo, h_batch, NULL);
	case M_BATCH_OW:
		bo.oneway = 1;
		return tern_register_batch(ctx, M_BATCH_OW, &bo, h_batch, NULL);
	}
	return 0;
}

/* ---- session callbacks ---------------------------------------------------------- */

static void ended(tern_session *s)
{
	if (s != R.s)
		bug("a session ended that this run does not know");
	R.alive = false;
	R.ends++;
}

static void on_close(tern_session *s, int reason)
{
	(void)reason;
	ended(s);
}

static void on_user_close(tern_session *s, int reason)
{
	(void)reason;
	ended(s);
}

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (!s)
		return; /* refused, or failed before the user saw it */
	if (status || R.s)
		bug("accepted a second session, or with status %d", status);
	R.s = s;
	R.alive = true;
	R.announced = true;
}

static void on_connect(tern_session *s, int status)
{
	if (s != R.s)
		bug("connect callback for a session this run does not know");
	R.connects++;
	if (status) {
		R.alive = false;
		R.ends++;
	} else {
		R.announced = true;
	}
}

/*
 * Fz's layout (src/wire.h), which the service check compares: one message
 * P { u32 a; u8 b[2]; } (M_INPLACE's request), and the methods above by
 * ascending id, M_NONE among them (in the layout, never registered: a
 * client is told it is not served).  Made once, by layout_make().
 */
static uint8_t fz_layout[128];
#define FZ_LAYOUT_METHODS 7

/* Fz without its layout (compared by hash), and with it. */
static struct tern_service_ref fz_services[] = {{"Fz", FZ_SVC_HASH, NULL, 0},
						{"Fz", FZ_SVC_HASH, fz_layout, 0}};

static uint8_t *lay_name(uint8_t *p, const char *name)
{
	*p = (uint8_t)strlen(name);
	memcpy(p + 1, name, *p);
	return p + 1 + *p;
}

static uint8_t *lay_le(uint8_t *p, uint32_t v, int n)
{
	for (int i = 0; i < n; i++)
		*p++ = (uint8_t)(v >> (8 * i));
	return p;
}

static uint8_t *lay_field(uint8_t *p, const char *name, uint8_t type, uint32_t count)
{
	p = lay_name(p, name);
	*p++ = type;
	return lay_le(p, count, 4);
}

static uint8_t *lay_method(uint8_t *p, uint32_t id, const char *name, uint8_t kind, uint16_t req,
			   uint16_t reply)
{
	p = lay_le(p, id, 4);
	p = lay_name(p, name);
	*p++ = kind;
	p = lay_le(p, req, 2);
	return lay_le(p, reply, 2);
}

static void layout_make(void)
{
	uint8_t *p = fz_layout;

	*p++ = TERN_LAYOUT_FORMAT;
	p = lay_le(p, 1, 2); /* one message */
	p = lay_name(p, "P");
	p = lay_le(p, 2, 2);
	p = lay_field(p, "a", TERN_LT_U32, 0);
	p = lay_field(p, "b", TERN_LT_U8, 2);
	p = lay_le(p, FZ_LAYOUT_METHODS, 2);
	p = lay_method(p, M_RAW, "raw", TERN_LK_RAW, TERN_LAYOUT_BYTES, TERN_LAYOUT_BYTES);
	p = lay_method(p, M_INPLACE, "inp", TERN_LK_INPLACE, 0, TERN_LAYOUT_BYTES);
	p = lay_method(p, M_DEFER, "def", TERN_LK_DEFERRED, TERN_LAYOUT_BYTES, TERN_LAYOUT_BYTES);
	p = lay_method(p, M_ONEWAY, "ow", TERN_LK_ONEWAY, TERN_LAYOUT_BYTES, TERN_LAYOUT_NONE);
	p = lay_method(p, M_BATCH, "bat", TERN_LK_BATCH, TERN_LAYOUT_BYTES, TERN_LAYOUT_BYTES);
	p = lay_method(p, M_BATCH_OW, "bow", TERN_LK_ONEWAY_BATCH, TERN_LAYOUT_BYTES,
		       TERN_LAYOUT_NONE);
	p = lay_method(p, M_NONE, "none", TERN_LK_RAW, TERN_LAYOUT_BYTES, TERN_LAYOUT_BYTES);
	fz_services[1].layout_len = (size_t)(p - fz_layout);
}

static void session_opts(struct tern_session_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->slot_size = FZ_SLOT;
	o->slot_count = FZ_N;
	o->schema_hash = FZ_SCHEMA;
	o->max_msg = FZ_MAX_MSG;
	o->on_close = on_close;
}

extern const struct tern_transport_ops tern_mem_transport;

static void init_once(const struct fz_wire *w)
{
	/* busy progress with the shortest spin: one pump is one look */
	struct tern_ctx_opts co = {
		.size = sizeof(co), .progress = TERN_PROGRESS_BUSY, .busy_spin_us = 1};
	struct tern_session_opts so;

	if (ctx) {
		if (w != lis_wire)
			bug("one wire per process");
		return;
	}
	lis_wire = w;
	layout_make();
	if (tern__transport_register(&tern_mem_transport) || tern_ctx_create(&co, &ctx))
		bug("cannot set up");
	for (uint32_t i = 0; i < N_TOGGLE + 2; i++)
		if (method_register(i))
			bug("cannot register method %u", i);
	session_opts(&so);
	if (tern_service_register_ref(ctx, &fz_services[1]) ||
	    tern_listen(ctx, w->listen_uri(), &so, on_accept, &lis) ||
	    tern_mem_register(ctx, reg, sizeof(reg), &reg_mr))
		bug("cannot listen");
	for (size_t i = 0; i < sizeof(src); i++)
		src[i] = (uint8_t)(i * 7 + 1);
	memcpy(reg, src, sizeof(reg));
}

static void pump(int n)
{
	for (int i = 0; i < n; i++)
		R.w->pump();
}

/* ---- the peer's view of the engine's messages ------------------------------------- */

static void ecall_add(struct run *r, const struct tern_hdr *h, const uint8_t *payload)
{
	struct ecall e = {.slot = h->call_slot, .gen = h->call_gen, .method = h->method};
	uint32_t off = 0;

	if ((h->flags & TERN_F_REPLY_DESC) && h->len >= TERN_BULK_DESC_SIZE) {
		tern_bulk_desc_decode(payload, &e.rdesc);
		e.has_rdesc = true;
		off = TERN_BULK_DESC_SIZE;
	}
	if ((h->flags & TERN_F_BULK) && h->len >= off + TERN_BULK_DESC_SIZE) {
		tern_bulk_desc_decode(payload + off, &e.bdesc);
		e.has_bdesc = true;
	}
	for (uint32_t i = 0; i < r->nec; i++)
		if (r->ec[i].slot == e.slot) {
			r->ec[i] = e; /* the old call timed out at the engine */
			return;
		}
	if (r->nec < sizeof(r->ec) / sizeof(r->ec[0]))
		r->ec[r->nec++] = e;
}

/* Every message the engine sends, in order, as the peer receives it. */
void fz_engine_msg(const void *buf, uint32_t len)
{
	struct run *r = &R;
	const char *why = NULL;
	struct tern_hdr h;

	if (len < TERN_HDR_SIZE) {
		if (!r->tainted)
			bug("the engine sent %u bytes, less than a header", len);
		return;
	}
	tern_hdr_decode(buf, &h);
	trace("  engine -> kind %u flags %u slot %u gen %u method %#x len %u credits %u/%u "
	      "status %d seq %u",
	      h.kind, h.flags, h.call_slot, h.call_gen, h.method, h.len, h.credits, h.ctrl_credits,
	      h.status, h.seq);
	if (h.kind == TERN_MSG_ERR)
		trace("  engine -> error: %.*s", (int)(len - TERN_HDR_SIZE),
		      (const char *)buf + TERN_HDR_SIZE);
	if (!r->tainted) {
		/* What an honest peer would check; the engine must pass. */
		if (tern_hdr_check(&h, len, FZ_N, FZ_SLOT, r->rx_seq, &why) ||
		    tern_credits_on_recv(&r->pcr, &h, &why))
			bug("the engine sent kind %u seq %u slot %u credits %u/%u: %s", h.kind,
			    h.seq, h.call_slot, h.credits, h.ctrl_credits, why);
		if ((h.kind == TERN_MSG_REP || h.kind == TERN_MSG_ERR) &&
		    (!r->pbusy[h.call_slot] || r->pgen[h.call_slot] != h.call_gen))
			bug("the engine answered call %u/%u, which the peer is not waiting for",
			    h.call_slot, h.call_gen);
		if (h.kind == TERN_MSG_ERR &&
		    (h.status >= 0 || h.status <= -(TERN_ERRNO_BASE + 1000)))
			bug("the engine sent an error reply with status %d", h.status);
	}
	r->rx_seq = h.seq + 1;
	switch (h.kind) {
	case TERN_MSG_REQ:
		ecall_add(r, &h, (const uint8_t *)buf + TERN_HDR_SIZE);
		break;
	case TERN_MSG_ONEWAY:
		tern_credits_request_done(&r->pcr); /* read and released at once */
		break;
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		if (h.call_slot < FZ_N)
			r->pbusy[h.call_slot] = false;
		break;
	}
}

void fz_engine_hello(const void *hs, size_t len)
{
	(void)hs, (void)len;
	R.hello_seen = true;
}

/* ---- what the peer sends ------------------------------------------------------------- */

/* Send header @h (stamped with the credits owed and the next sequence
 * number) and @plen bytes of payload. */
static void peer_send(struct run *r, struct tern_hdr *h, const uint8_t *payload, uint32_t plen,
		      bool honest)
{
	uint8_t msg[FZ_SLOT + 64];
	uint8_t field;

	tern_credits_stamp(&r->pcr, h);
	h->seq = r->tx_seq++;
	h->len = plen;
	if (!honest) {
		r->tainted = true;
		/* dishonest: one field of the header says what the input says */
		field = u8(r);
		switch (field % 12) {
		case 0:
			h->kind = u8(r);
			break;
		case 1:
			h->flags = u8(r);
			break;
		case 2:
			h->call_slot = u16(r);
			break;
		case 3:
			h->call_gen = u32(r);
			break;
		case 4:
			h->method = u32(r);
			break;
		case 5:
			h->len = u32(r);
			break;
		case 6:
			h->credits = u16(r);
			break;
		case 7:
			h->ctrl_credits = u16(r);
			break;
		case 8:
			h->status = (int32_t)u32(r);
			break;
		case 9:
			h->seq = u32(r);
			break;
		default:
			break; /* 10: reserved below; 11: only the credit state is off */
		}
	}
	if (plen > sizeof(msg) - TERN_HDR_SIZE)
		plen = sizeof(msg) - TERN_HDR_SIZE;
	tern_hdr_encode(msg, h);
	if (!honest && field % 12 == 10) {
		uint32_t v = u32(r);
		memcpy(msg + 28, &v, 4);
	}
	if (plen)
		memcpy(msg + TERN_HDR_SIZE, payload, plen);
	trace("  peer -> kind %u flags %u slot %u gen %u method %#x len %u credits %u/%u "
	      "status %d seq %u%s",
	      h->kind, h->flags, h->call_slot, h->call_gen, h->method, h->len, h->credits,
	      h->ctrl_credits, h->status, h->seq, honest ? "" : " (dishonest)");
	if (r->peer && r->w->send(msg, TERN_HDR_SIZE + plen))
		r->tainted = true; /* it failed the connection */
}

/* A descriptor of peer memory, honest or not, as the input chooses. */
static void make_desc(struct run *r, struct tern_bulk_desc *d)
{
	uint8_t mode = u8(r);
	const struct tern_bulk_desc *base = mode & 1 ? &r->pd_ro : &r->pd_rw;
	uint64_t off;

	if (!base->len)
		mode = 5; /* nothing exposed: any bytes */
	switch (mode % 6) {
	case 0:
	case 1: /* inside an exposure */
		off = u16(r) % base->len;
		d->addr = base->addr + off;
		d->len = u32(r) % (base->len - off + 1);
		d->key = base->key;
		d->aux = base->aux;
		break;
	case 2:
	case 3: /* an exposure's key, any range */
		*d = *base;
		d->addr += (int64_t)(int32_t)u32(r);
		d->len = u64(r);
		break;
	default:
		d->addr = u64(r);
		d->len = u64(r);
		d->key = u32(r);
		d->aux = u32(r);
		break;
	}
}

/*
 * The service check's payload: the input's bytes, or the one this engine
 * serves, with or without the layout (compared method by method, or by
 * hash), its hash or one byte of its layout changed as the input says.
 */
static uint32_t svc_payload(struct run *r, uint8_t *p, uint32_t cap)
{
	uint8_t layout[sizeof(fz_layout)];
	size_t ll = fz_services[1].layout_len;
	struct tern_service_ref ref;
	uint8_t how;
	int n;

	if (u8(r) & 1) {
		uint32_t len = u8(r) % (cap + 1);
		take(r, p, len);
		return len;
	}
	how = u8(r);
	ref = fz_services[(how >> 1) & 1];
	if (how & 1)
		ref.schema_hash ^= 1;
	n = tern__services_encode(&ref, 1, p, cap);
	if (n > 0 && (how & 6) == 6) {
		/* after the encoder's checks: the engine's parser must cope */
		memcpy(layout, fz_layout, ll);
		layout[u8(r) % ll] = u8(r);
		memcpy(p + n - ll, layout, ll);
	}
	return n < 0 ? 0 : (uint32_t)n;
}

static void op_request(struct run *r, bool oneway)
{
	uint8_t sel = u8(r), flags = oneway ? 0 : u8(r) & (TERN_F_BULK | TERN_F_REPLY_DESC);
	struct tern_hdr h = {.kind = oneway ? TERN_MSG_ONEWAY : TERN_MSG_REQ, .flags = flags};
	uint8_t payload[FZ_PAYLOAD];
	uint32_t off = 0, slot = FZ_N;
	struct tern_bulk_desc d;
	bool honest = !(sel & 0x80);

	h.method = sel & 0x40 ? u32(r) : served[sel % N_SERVED];
	if (flags & TERN_F_REPLY_DESC) {
		make_desc(r, &d);
		tern_bulk_desc_encode(payload, &d);
		off = TERN_BULK_DESC_SIZE;
	}
	if (flags & TERN_F_BULK) {
		make_desc(r, &d);
		tern_bulk_desc_encode(payload + off, &d);
		off += TERN_BULK_DESC_SIZE;
	} else if (h.method == TERN_METHOD_SVC_CHECK) {
		off += svc_payload(r, payload + off, FZ_PAYLOAD - off);
	} else {
		uint32_t n = u8(r) % (FZ_PAYLOAD - off + 1);

		take(r, payload + off, n);
		off += n;
	}
	if (h.method == 0)
		honest = false;
	if (oneway) {
		honest = honest && tern_credits_can_send(&r->pcr);
		if (honest)
			tern_credits_take_send(&r->pcr);
	} else {
		for (slot = 0; slot < FZ_N && r->pbusy[slot]; slot++)
			;
		honest = honest && slot < FZ_N && tern_credits_can_call(&r->pcr);
		if (honest) {
			tern_credits_take_call(&r->pcr);
			r->pbusy[slot] = true;
			h.call_slot = (uint16_t)slot;
			h.call_gen = ++r->pgen[slot];
		} else {
			h.call_slot = u8(r) % FZ_N;
			h.call_gen = u32(r);
		}
	}
	peer_send(r, &h, payload, off, honest);
}

/* Answer one of the engine's calls. */
static void op_reply(struct run *r)
{
	uint8_t sel = u8(r), payload[FZ_PAYLOAD];
	struct tern_hdr h = {.kind = sel & 1 ? TERN_MSG_ERR : TERN_MSG_REP};
	bool honest = !(sel & 0x80) && r->nec > 0;
	uint32_t len = 0;
	struct ecall e = {0};

	if (r->nec) {
		uint32_t k = u8(r) % r->nec;

		e = r->ec[k];
		r->ec[k] = r->ec[--r->nec];
	} else {
		e.slot = u8(r) % FZ_N;
		e.gen = u32(r);
	}
	h.call_slot = e.slot;
	h.call_gen = e.gen;
	if (h.kind == TERN_MSG_ERR) {
		h.status = (sel & 2) ? (int32_t)u32(r) : -(int32_t)(u8(r) % 200 + 1);
		if (h.status >= 0 || h.status <= -(TERN_ERRNO_BASE + 1000))
			honest = false;
		len = u8(r) % (TERN_ERRMSG_MAX + 1);
		take(r, payload, len);
	} else if ((sel & 2) && e.has_rdesc) {
		/* write the reply into the caller's buffer, then say how long */
		uint64_t n = u32(r) % (e.rdesc.len + 2);
		struct tern_bulk_desc d = e.rdesc;
		uint64_t le;

		if (n) {
			d.len = n <= e.rdesc.len ? n : e.rdesc.len;
			if (r->peer)
				r->w->write(&d, src);
		}
		if (n <= FZ_PAYLOAD || n > e.rdesc.len)
			honest = false; /* not what a bulk reply may say */
		h.flags = TERN_F_BULK;
		le = htole64(n);
		memcpy(payload, &le, 8);
		len = 8;
	} else {
		len = u8(r) % (FZ_PAYLOAD + 1);
		if (e.method == TERN_METHOD_SVC_CHECK && !(sel & 4)) {
			/* the answer a server gives: a bit per method, the spare
			 * ones clear */
			len = r->svc_answer_len;
			take(r, payload, len);
			if (len)
				payload[len - 1] &= (1u << (FZ_LAYOUT_METHODS % 8)) - 1;
		} else {
			take(r, payload, len);
		}
	}
	if (honest)
		tern_credits_request_done(&r->pcr); /* the peer reposts the request's receive */
	peer_send(r, &h, payload, len, honest);
}

/*
 * A credit message, an ACK, or (a credit message's op with bit 0x40) a
 * cancel of 1 to 4 of the peer's calls: honest ones name a slot and its
 * last generation (a call answered already is honest too: the engine
 * ignores it), others any slot and generation.
 */
static void op_credit(struct run *r, uint8_t kind)
{
	struct tern_hdr h = {.kind = kind};
	uint8_t sel = u8(r), payload[4 * TERN_CANCEL_ENTRY_SIZE];
	bool honest = kind == TERN_MSG_CREDIT ? r->pcr.ctrl_tx > 0 : tern_credits_want_ack(&r->pcr);
	uint32_t len = 0;

	if (sel & 0x80)
		honest = false;
	if (kind == TERN_MSG_CREDIT && (sel & 0x40)) {
		h.kind = TERN_MSG_CANCEL;
		for (uint32_t i = 0; i <= (sel & 3u); i++, len += TERN_CANCEL_ENTRY_SIZE) {
			uint16_t slot = (sel & 0x20) ? u16(r) : (uint16_t)(u8(r) % FZ_N);
			uint32_t gen = (sel & 0x20) || slot >= FZ_N ? u32(r) : r->pgen[slot];

			if (slot >= FZ_N)
				honest = false;
			tern_cancel_entry_encode(payload + len, slot, gen);
		}
	}
	if (honest && kind == TERN_MSG_CREDIT)
		tern_credits_take_credit_msg(&r->pcr);
	peer_send(r, &h, len ? payload : NULL, len, honest);
}

/* Anything at all, up to a little more than a slot. */
static void op_raw(struct run *r)
{
	uint8_t msg[FZ_SLOT + 8];
	uint32_t len = u16(r) % (sizeof(msg) + 1);

	take(r, msg, len);
	r->tainted = true;
	if (r->peer)
		r->w->send(msg, len);
}

/* Read or write what the engine exported for one of its calls. */
static void op_peer_access(struct run *r)
{
	uint8_t sel = u8(r);
	struct tern_bulk_desc d = {0};
	static uint8_t buf[FZ_MAX_MSG];

	if (!r->peer)
		return;
	if (r->nec && !(sel & 0x80)) {
		const struct ecall *e = &r->ec[u8(r) % r->nec];
		bool b = e->has_bdesc && ((sel & 1) || !e->has_rdesc);
		const struct tern_bulk_desc *x = b ? &e->bdesc : &e->rdesc;
		uint64_t off;

		if (!(b ? e->has_bdesc : e->has_rdesc) || !x->len)
			return;
		off = u32(r) % x->len;
		d = *x;
		d.addr += off;
		d.len = u32(r) % (x->len - off) + 1;
	} else {
		d.addr = u64(r);
		d.len = u64(r);
		d.key = u32(r);
	}
	if (d.len > sizeof(buf))
		d.len = sizeof(buf) + (d.len & 1); /* over our buffer: refused, or too long */
	if (d.len > sizeof(buf))
		return;
	if (sel & 2)
		r->w->write(&d, src);
	else
		r->w->read(&d, buf);
}

/* ---- what the engine's user does --------------------------------------------------------- */

static void call_done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct ucall *c = user;
	volatile uint8_t sink = 0;

	(void)s, (void)status;
	if (!c->issued || c->done)
		bug("a call's callback ran twice, or for no call");
	c->done = true;
	/* the reply is the caller's to read: all of it */
	for (size_t i = 0; i < len; i += 61)
		sink ^= ((const uint8_t *)reply)[i];
	if (len)
		sink ^= ((const uint8_t *)reply)[len - 1];
	(void)sink;
}

static void send_done(tern_session *s, int status, void *user)
{
	call_done(s, status, NULL, 0, user);
}

static struct ucall *ucall_new(struct run *r)
{
	return r->ncalls < FZ_CALLS ? &r->calls[r->ncalls++] : NULL;
}

/* A length up to a little past what the peer accepts (at most sizeof(src)). */
static size_t pick_len(struct run *r)
{
	switch (u8(r) % 4) {
	case 0:
		return u8(r) % (FZ_PAYLOAD + 1);
	case 1:
		return FZ_PAYLOAD;
	case 2:
		return FZ_PAYLOAD + 1 + u16(r) % (FZ_MAX_MSG - FZ_PAYLOAD);
	default:
		return u32(r) % (sizeof(src) + 1);
	}
}

static void op_engine_call(struct run *r)
{
	uint8_t sel = u8(r);
	struct tern_call_opts o = {.size = sizeof(o)};
	size_t len = pick_len(r);
	const void *req = (sel & 1) && len <= sizeof(reg) ? reg : src;
	struct ucall *c;
	uint32_t method;
	int rc;

	if (!r->alive || !(c = ucall_new(r)))
		return;
	switch ((sel >> 1) % 4) {
	case 1: /* a reply buffer of ours */
		if (r->reply_bufs_used < FZ_REPLY_BUFS) {
			o.reply_buf = replies[r->reply_bufs_used++];
			o.reply_cap = 1 + u16(r) % FZ_MAX_MSG;
		}
		break;
	case 2: /* inside the registered region */
		o.reply_buf = reg + FZ_MAX_MSG / 2;
		o.reply_cap = 1 + u16(r) % (FZ_MAX_MSG / 2);
		break;
	default:
		break;
	}
	if (sel & 0x10)
		o.timeout_ms = 1 + u8(r);
	if (sel & 0x20) {
		method = M_PEER;
	} else {
		/* or M_NONE, which Fz's layout has: when the peer's answer to
		 * the service check says it lacks it, it fails here, unsent */
		uint8_t m = u8(r);

		method = m >= 0xf0 ? M_NONE : M_PEER + 1 + m % 3;
	}
	rc = tern_call(r->s, method, req, len, call_done, c, &o);
	c->issued = rc == 0;
	if (rc)
		r->ncalls--;
}

static void op_engine_send(struct run *r)
{
	uint8_t sel = u8(r);
	size_t len = u8(r) % (FZ_PAYLOAD + 2);
	struct ucall *c;
	int rc;

	if (!r->alive || !(c = ucall_new(r)))
		return;
	rc = tern_send(r->s, M_PEER, src, len, sel & 1 ? send_done : NULL, c);
	c->issued = rc == TERN_QUEUED;
	if (!c->issued)
		r->ncalls--;
}

static void op_engine_acquire(struct run *r)
{
	uint8_t sel = u8(r);
	size_t len = u16(r) % (FZ_PAYLOAD + 2), cap;
	tern_callslot *slot;
	struct ucall *c;
	void *buf;

	if (!r->alive)
		return;
	if ((sel & 1 ? tern_send_acquire : tern_call_acquire)(r->s, &buf, &cap, &slot))
		return;
	memset(buf, 0x5a, len < cap ? len : cap);
	if (sel & 2) {
		tern_call_abort(slot);
	} else if (sel & 1) {
		tern_send_commit(slot, M_PEER, len);
	} else if ((c = ucall_new(r))) {
		c->issued = tern_call_commit(slot, M_PEER, len, call_done, c, NULL) == 0;
		if (!c->issued)
			r->ncalls--;
	} else {
		tern_call_abort(slot);
	}
}

/*
 * Answer a deferred request.  Whether it is still ours to answer afterwards
 * is what the call returned: it cannot be read from the request, which the
 * last answer of a dead session frees with the session.
 */
static void op_deferred(struct run *r)
{
	uint8_t sel = u8(r);
	uint32_t k;
	tern_req *req;
	size_t len = pick_len(r), cap;
	void *out;
	int rc;
	bool done = true;

	if (!r->ndeferred)
		return;
	k = u8(r) % r->ndeferred;
	req = r->deferred[k];
	switch (sel % 4) {
	case 0:
	case 3:
		rc = tern_reply_acquire(req, &out, &cap);
		/* 0: acquired; -ECONNRESET: finished (its session is gone);
		 * -EINVAL: not deferred; else no room for the reply yet */
		done = rc == -ECONNRESET || rc == -EINVAL;
		if (rc == 0 && sel % 4 == 0) {
			memset(out, 0x77, len < cap ? len : cap);
			tern_reply_commit(req, len);
			done = true;
		}
		break;
	case 1:
		tern_reply_error(req, -(int)(u8(r) % 150 + 1), sel & 4 ? "deferred no" : NULL);
		break;
	default:
		tern_reply_commit(req, len); /* answers it, with an error if need be */
		break;
	}
	if (done)
		r->deferred[k] = r->deferred[--r->ndeferred];
}

static void op_release(struct run *r)
{
	uint32_t k;

	if (!r->nheld)
		return;
	k = u8(r) % r->nheld;
	if (tern_req_release(r->held[k]))
		bug("a held request would not release");
	r->held[k] = r->held[--r->nheld];
}

static void op_toggle_method(struct run *r)
{
	uint32_t i = u8(r) % N_TOGGLE;

	if (r->unregistered[i]) {
		if (method_register(i))
			bug("cannot register method %u again", i);
	} else if (tern_unregister(ctx, served[i])) {
		bug("cannot unregister method %u", i);
	}
	r->unregistered[i] = !r->unregistered[i];
}

/* ---- the handshake ------------------------------------------------------------------------ */

static void hello_for(struct run *r, uint8_t *hs, bool reply)
{
	struct tern_hello h = {
		.version = TERN_WIRE_VERSION,
		.flags = reply ? TERN_HELLO_REPLY : 0,
		.slot_size = FZ_SLOT,
		.slot_count = FZ_N,
		.schema_hash = FZ_SCHEMA,
		.max_msg = FZ_MAX_MSG,
	};

	(void)r;
	tern_hello_encode(hs, &h);
}

/* The handshake: a valid one (with the service flag as @setup says), or
 * (FZ_HANDSHAKE) whatever bytes the input holds. */
static size_t handshake_bytes(struct run *r, uint8_t setup, uint8_t *hs, bool reply)
{
	size_t len;

	if (r->role == FZ_HANDSHAKE) {
		len = u8(r) % (FZ_PD_MAX + 1);
		take(r, hs, len);
		return len;
	}
	hello_for(r, hs, reply);
	if (!reply && (setup & 2)) {
		uint16_t f = htole16(TERN_HELLO_SERVICES);
		memcpy(hs + 6, &f, 2);
	}
	return sizeof(struct tern_wire_hello);
}

/* The peer's memory, for the engine's transfers: all of it writable, the
 * first half also read-only. */
static void expose(struct run *r)
{
	if (r->w->state() != FZ_UP)
		return;
	r->w->expose(0, sizeof(fz_pmem), 1, &r->pd_rw);
	r->w->expose(0, sizeof(fz_pmem) / 2, 0, &r->pd_ro);
}

static void start_server(struct run *r, uint8_t setup)
{
	uint8_t hs[FZ_PD_MAX];
	size_t len = handshake_bytes(r, setup, hs, false);
	int rc = r->w->connect(tern_listener_uri(lis), hs, len);

	if (rc)
		bug("cannot reach the listener %s: %s", tern_listener_uri(lis), strerror(-rc));
	r->peer = true;
	for (int i = 0; i < 64 && r->w->state() == FZ_WAITING; i++)
		pump(1);
	pump(1);
	expose(r);
}

static void start_client(struct run *r, uint8_t setup)
{
	struct tern_session_opts so;
	uint8_t hs[FZ_PD_MAX];
	const char *uri = r->w->listen();
	size_t len;

	if (!uri)
		bug("cannot listen as the peer");
	r->peer = true;
	session_opts(&so);
	so.nonblock = (setup >> 2) & 1;
	so.queue_depth = 3;
	if (setup & 2) {
		/* with the layout, the answer is a bit per method; without, none */
		so.services = &fz_services[setup >> 7]; /* (0x40: the shm and tcp targets' role) */
		so.nservices = 1;
		r->svc_answer_len = setup & 0x80 ? (FZ_LAYOUT_METHODS + 7) / 8 : 0;
	}
	if (tern_connect(ctx, uri, &so, on_connect, &r->s))
		bug("cannot connect to the peer");
	r->alive = true;
	r->client = true;
	for (int i = 0; i < 64 && !r->hello_seen; i++)
		pump(1);
	if (!r->hello_seen)
		bug("the engine's hello did not reach the peer");
	len = handshake_bytes(r, setup, hs, true);
	if (r->role == FZ_HANDSHAKE && (u8(r) & 1))
		r->w->answer(false, (int32_t)u32(r), hs, len);
	else
		r->w->answer(true, 0, hs, len);
	for (int i = 0; i < 64 && r->w->state() == FZ_WAITING; i++)
		pump(1);
	pump(2);
	expose(r);
}

/* ---- one run ----------------------------------------------------------------------------------
 */

static void run_op(struct run *r)
{
	uint8_t op = u8(r);

	trace("op %u", op % 24);
	switch (op % 24) {
	case 0:
	case 1:
	case 2:
		op_request(r, false);
		break;
	case 3:
		op_request(r, true);
		break;
	case 4:
	case 5:
		op_reply(r);
		break;
	case 6:
		op_credit(r, TERN_MSG_CREDIT);
		break;
	case 7:
		op_credit(r, TERN_MSG_CTRL_ACK);
		break;
	case 8:
		op_raw(r);
		break;
	case 9:
	case 10:
		pump(1 + u8(r) % 8);
		break;
	case 11:
		if (r->peer) {
			uint8_t b = u8(r);
			r->w->hold(b & 1, b & 2);
		}
		break;
	case 12:
		if (r->peer)
			r->w->complete_sends(1 + u8(r) % 8);
		break;
	case 13:
		if (r->peer && r->w->bulk_pending()) {
			uint8_t b = u8(r);
			r->w->complete_bulk(b % r->w->bulk_pending(), b & 0x80 ? -EFAULT : 0);
		}
		break;
	case 14:
		op_peer_access(r);
		break;
	case 15:
	case 16:
		op_engine_call(r);
		break;
	case 17:
		op_engine_send(r);
		break;
	case 18:
		op_engine_acquire(r);
		break;
	case 19:
		op_deferred(r);
		break;
	case 20:
		op_release(r);
		break;
	case 21:
		/* time passes: deadlines, batches, credits owed to a quiet peer */
		tern__deadlines_run(ctx, tern__now_ns() + (uint64_t)(1 + u8(r)) * 1000000ull);
		break;
	case 22:
		op_toggle_method(r);
		break;
	default:
		switch (u8(r) % 3) {
		case 0:
			if (r->peer) {
				r->w->close();
				r->peer = false;
			}
			break;
		case 1:
			if (r->alive && !r->user_closed) {
				r->user_closed = true;
				tern_session_close(r->s, on_user_close);
			}
			break;
		default:
			if (r->peer) {
				r->tainted = true;
				r->w->hostile();
			}
			break;
		}
		break;
	}
}

/* The peer hangs up; everything the run started must end. */
static void finish(struct run *r)
{
	int i;

	if (r->peer)
		r->w->close();
	r->peer = false;
	for (i = 0; i < 1000 && !tern_list_empty(&ctx->sessions); i++) {
		while (r->nheld)
			if (tern_req_release(r->held[--r->nheld]))
				bug("a held request would not release");
		while (r->ndeferred) {
			tern_req *req = r->deferred[--r->ndeferred];
			if (tern_reply_error(req, -ECANCELED, NULL) == -EINVAL)
				bug("a deferred request is not deferred");
		}
		r->w->pump();
	}
	if (!tern_list_empty(&ctx->sessions)) {
		tern_session *s = tern_container_of(ctx->sessions.next, tern_session, link);

		/* what still holds it */
		fprintf(stderr, "engine_peer: session state %d refs %d, requests:", s->state,
			s->refs);
		for (uint32_t k = 0; k < s->n; k++)
			fprintf(stderr, " %u/%u", tern__rpc(s)->reqs[k].state,
				tern__rpc(s)->owreqs[k].state);
		fprintf(stderr, "\n");
		bug("a session outlived its peer by %d polls", i);
	}
	for (uint32_t k = 0; k < r->ncalls; k++)
		if (r->calls[k].issued && !r->calls[k].done)
			bug("call %u never completed", k);
	if (r->s && r->ends != 1)
		bug("the session ended %d times", r->ends);
	if (r->client && (r->connects > 1 || (r->connects == 0 && !r->user_closed)))
		bug("the connect callback ran %d times", r->connects);
	for (uint32_t k = 0; k < N_TOGGLE; k++)
		if (r->unregistered[k] && method_register(k))
			bug("cannot register method %u again", k);
}

int fz_engine_run(enum fz_role role, const struct fz_wire *w, const uint8_t *data, size_t size)
{
	struct run *r = &R;
	uint8_t setup;
	int ops = 0;

	init_once(w);
	memset(r, 0, sizeof(*r));
	r->p = data;
	r->end = data + size;
	r->role = role;
	r->w = w;
	tern_credits_init(&r->pcr, FZ_N);
	setup = u8(r);
	if (role == FZ_SERVER || (role == FZ_HANDSHAKE && !(setup & 1)))
		start_server(r, setup);
	else
		start_client(r, setup);
	if (setup & 8)
		r->w->hold(setup & 16, setup & 32);
	while (more(r) && ops++ < FZ_MAX_OPS)
		run_op(r);
	finish(r);
	return 0;
}
