/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine's own structures, shared by src/ and rpc/.
 * Never included by a provider (they see include/tern/transport.h only).
 */
#ifndef TERN_INTERNAL_H
#define TERN_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "tern.h"
#include "tern/transport.h"
#include "credit.h"
#include "wire.h"

#define TERN_MAX_TRANSPORTS		4
#define TERN_DEFAULT_SLOT_SIZE		8192u
#define TERN_DEFAULT_SLOT_COUNT		64u
#define TERN_MAX_SLOT_SIZE		(1u << 20)
#define TERN_MAX_SLOT_COUNT		4096u
#define TERN_DEFAULT_CONNECT_TIMEOUT_MS 10000u

/* The providers built into this library (transport/<name>/). */
extern const struct tern_transport_ops tern_verbs_transport;
extern const struct tern_transport_ops tern_shm_transport;
extern const struct tern_transport_ops tern_tcp_transport;

/*
 * tern__transport_register - one more provider for every context made from
 * now on, beside the built-in ones
 * @ops: the provider's ops; it stays the caller's, for the process's life
 *
 * For providers the library does not build in: the tests' and fuzzers'
 * mem:// (transport/mem/).  The engine knows such a provider by its ops
 * alone.  Not thread-safe: register before making contexts.  Internal
 * (hidden): the installed library exports no way to add a provider.
 *
 * Return: 0 (also when @ops is registered already), -EEXIST for a scheme
 * that is taken, -ENOSPC when TERN_MAX_TRANSPORTS are, -EINVAL.
 */
int tern__transport_register(const struct tern_transport_ops *ops);

/* Intrusive doubly linked list. */
struct tern_list {
	struct tern_list *prev, *next;
};

static inline void tern_list_init(struct tern_list *l)
{
	l->prev = l->next = l;
}

static inline void tern_list_add(struct tern_list *head, struct tern_list *n)
{
	n->next = head;
	n->prev = head->prev;
	head->prev->next = n;
	head->prev = n;
}

static inline void tern_list_del(struct tern_list *n)
{
	n->prev->next = n->next;
	n->next->prev = n->prev;
	n->prev = n->next = n;
}

static inline bool tern_list_empty(const struct tern_list *l)
{
	return l->next == l;
}

#define tern_container_of(p, type, member) ((type *)((char *)(p)-offsetof(type, member)))

/* ---- methods (rpc/methods.c) --------------------------------------------- */

enum tern_method_kind {
	TERN_KIND_RAW = 1,
	TERN_KIND_INPLACE = 2,
	TERN_KIND_DEFERRED = 3,
	TERN_KIND_ONEWAY = 4,
	TERN_KIND_BATCH = 5,
};

/* A batched method's gatherer (rpc/batch.c). */
struct tern_batcher {
	struct tern_batcher *next; /* ctx->batchers */
	uint32_t method;
	uint32_t max;
	uint64_t wait_ns;
	bool oneway;
	tern_batch_handler fn;
	void *user;
	struct tern_batch_item *items; /* max */
	uint32_t n;
	uint64_t first_ns; /* when items[0] arrived */
};

struct tern_method {
	uint32_t id; /* 0: empty bucket */
	uint8_t kind;
	union {
		tern_raw_handler raw;
		tern_inplace_handler inplace;
		tern_deferred_handler deferred;
		tern_oneway_handler oneway;
		struct tern_batcher *batch;
	} fn;
	void *user;
};

/* Open addressing, power-of-two buckets, linear probing; grows at 1/2 load. */
struct tern_method_table {
	struct tern_method *b;
	uint32_t mask;
	uint32_t count;
	uint32_t tombstones;
};

int tern__methods_add(struct tern_method_table *t, const struct tern_method *m);
int tern__methods_del(struct tern_method_table *t, uint32_t id);
const struct tern_method *tern__methods_find(const struct tern_method_table *t, uint32_t id);
void tern__methods_free(struct tern_method_table *t);

/* ---- services (rpc/services.c) ------------------------------------------ */

/*
 * A service this context serves.  The registry (ctx->services) is one
 * allocation: the entries, then each entry's layout bytes, its messages and
 * its method index, found by offset from the registry's start, so that the
 * context frees it whole.
 */
struct tern_service_entry {
	char name[TERN_SVC_NAME_MAX + 1];
	uint64_t schema_hash;
	/* from the registry's start: nmsgs struct tern_layout_msg, then the
	 * layout (wire.h) of layout_len bytes (0: none) */
	uint32_t data_off, layout_len;
	uint32_t methods_off; /* in the layout */
	uint16_t nmsgs, nmethods;
};

/* A layout's message: where its fields start, how many, its name's length
 * (the name ends where the u16 field count starts, 2 bytes before @off). */
struct tern_layout_msg {
	uint32_t off;
	uint16_t nfields;
	uint8_t name_len;
};

/* A method of the client's check that the server does not serve. */
struct tern_missing_method {
	uint32_t id;
	char name[2 * TERN_SVC_NAME_MAX + 2]; /* "Service.method" */
};

/* Encode a client's required services; the length, or -EINVAL/-EMSGSIZE. */
int tern__services_encode(const struct tern_service_ref *refs, uint32_t n, uint8_t *out,
			  size_t cap);
/*
 * tern__services_verify - the server's side of the service check
 * @in, @len: the client's check (untrusted: every length is checked)
 * @out, @out_cap: where the answer goes (the reply's payload)
 * @out_len: set to the answer's length
 *
 * Return: 0 (answer written), TERN_ENOSERVICE, TERN_ESCHEMA or TERN_EPEER
 * (malformed), with a message in @why.
 */
int tern__services_verify(tern_ctx *ctx, const void *in, size_t len, uint8_t *out, size_t out_cap,
			  uint32_t *out_len, char *why, size_t why_len);
/*
 * tern__services_accept - the client's side: the server's answer to
 * s->svc_check, which records the methods it lacks in s->missing.
 * Return: 0, TERN_EPEER (a malformed answer) or -ENOMEM, with @why.
 */
int tern__services_accept(tern_session *s, const void *answer, size_t len, char *why,
			  size_t why_len);
/*
 * tern__services_missing - a call to a method the server said it lacks:
 * TERN_ENOMETHOD, with tern_ctx_last_error() naming it; 0 otherwise.
 * Only worth calling when s->nmissing.
 */
int tern__services_missing(tern_session *s, uint32_t method);

/* ---- large messages (src/bulk.c) ------------------------------------------ */

/*
 * A registered region: the user's (tern_mem_register) or a staging buffer
 * of the engine's.  Each transport keeps its own registration state for it
 * in tm[i] (verbs: an ibv_mr per device, made at first use).
 */
struct tern_mr {
	tern_ctx *ctx;
	struct tern_list link; /* ctx->mrs (user registrations only) */
	void *addr;
	size_t len;
	int refs;
	struct tern_tmem tm[TERN_MAX_TRANSPORTS];
};

/* A staging buffer: registered memory for data that is not in a user region. */
struct tern_stage {
	struct tern_mr mr;
	struct tern_stage *next; /* ctx->stages (idle ones) */
};

struct tern_mr *tern__mr_find(tern_ctx *ctx, const void *addr, size_t len);
static inline bool tern__mr_contains(const struct tern_mr *mr, const void *addr, size_t len)
{
	uintptr_t a = (uintptr_t)addr, b = (uintptr_t)mr->addr;
	return a >= b && len <= mr->len && a - b <= mr->len - len;
}
/*
 * The context's pool of staging buffers: one of at least @len bytes (a
 * power of two from 64 KiB), or NULL (no memory, or no such size).
 */
struct tern_stage *tern__stage_get(tern_ctx *ctx, size_t len);
void tern__stage_put(tern_ctx *ctx, struct tern_stage *st);
/*
 * Staging for session @s, within its max_staging.  Return: 0, -ENOBUFS
 * (over max_staging: counted in staging_refused) or -ENOMEM.
 */
int tern__session_stage_get(tern_session *s, size_t len, struct tern_stage **out);
/* Give staging back to the pool (NULL: nothing); @s holds that much less. */
void tern__session_stage_put(tern_session *s, struct tern_stage *st);
void tern__bulk_free_all(tern_ctx *ctx);
/*
 * Export @len bytes at @buf to @s's peer: from the user's registration that
 * covers them, or else through a staging buffer (*@stage, which the caller
 * releases; a readable export copies the bytes into it first).
 */
int tern__bulk_export(tern_session *s, const void *buf, size_t len, int writable,
		      struct tern_bulk_desc *d, struct tern_stage **stage);
/* Withdraw exports made for a call that is over (if the provider tracks them). */
void tern__bulk_unexport(tern_session *s, const struct tern_bulk_desc *d, unsigned n);
/* @s's transport's slot in each region's tm[] */
int tern__tp_index(const tern_session *s);

/* ---- context -------------------------------------------------------------- */

struct tern_tp {
	const struct tern_transport_ops *ops;
	struct tern_tctx *t; /* NULL until first used */
};

struct tern_ctx {
	uv_loop_t *loop;
	uv_loop_t own_loop;
	bool owns_loop;
	enum tern_progress progress;
	uint64_t adaptive_spin_ns;
	uint64_t busy_spin_ns;
	void *data;

	uv_idle_t idle;		   /* busy/adaptive progress */
	uv_timer_t deadline_timer; /* fires at the earliest call deadline of any session */
	uint64_t next_deadline_ns; /* 0: none armed */
	int open_handles;	   /* our uv handles not yet closed */
	bool idle_active;
	bool events_armed; /* adaptive: providers in event mode */
	uint64_t last_activity_ns;

	struct tern_tp tp[TERN_MAX_TRANSPORTS];
	int ntp;

	struct tern_method_table methods;
	struct tern_batcher *batchers;
	struct tern_list mrs;	   /* user registrations: the registration cache */
	struct tern_stage *stages; /* idle staging buffers */
	size_t stage_idle_bytes;
	struct tern_service_entry *services; /* registered with tern_service_register() */
	uint32_t nservices;
	struct tern_list sessions;
	struct tern_list listeners;
	struct tern_list dirty; /* sessions owing credits after this poll */

	int cb_depth;	  /* >0 while a user callback runs */
	int remote_depth; /* cb_depth of the call callback whose status the peer sent */
	int run_default;  /* >0 inside tern_ctx_run(TERN_RUN_DEFAULT): see idle_cb() */
	bool destroying;
	char last_error[256];
};

void tern__set_error(tern_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tern__uri_parse(const char *uri, struct tern_uri *out, char *why, size_t why_len);
int tern__transport_get(tern_ctx *ctx, const struct tern_uri *u, struct tern_tp **out);
uint64_t tern__now_ns(void);
void tern__activity(tern_ctx *ctx);
extern const struct tern_transport_events tern__events;

/* ---- sessions -------------------------------------------------------------- */

enum tern_sess_state {
	TERN_S_CONNECTING,
	TERN_S_READY,
	TERN_S_CLOSING, /* disconnect requested; waiting for the provider's closed() */
	TERN_S_CLOSED,	/* transport released; memory held by deferred requests */
};

enum tern_call_state {
	TERN_CALL_FREE = 0,
	TERN_CALL_ACQUIRED, /* tern_call_acquire() gave its slot to the user */
	TERN_CALL_INFLIGHT, /* posted; waiting for the reply */
};

/* A client call; call slot i sends from send slot i. */
struct tern_callslot {
	tern_session *s;
	uint32_t idx;
	uint32_t gen;
	uint8_t state;
	bool send_busy;	 /* send slot not yet released by the provider */
	bool acq_oneway; /* ACQUIRED by tern_send_acquire (a credit only) */
	void *reply_buf; /* the caller's reply buffer (tern_call_opts), or NULL */
	size_t reply_cap;
	struct tern_stage *req_stage; /* staging a large request the server reads */
	struct tern_stage *rep_stage; /* staging the reply the server writes */
	uint64_t reply_offer;	      /* bytes of reply_buf the server may write (0: none) */
	struct tern_bulk_desc xd[2];  /* what was exported for the call... */
	uint8_t nx;		      /* ...how many: withdrawn when it is over */
	uint64_t deadline_ns;
	tern_call_cb cb;
	void *user;
	uint32_t method;
};

/* A call waiting (wait mode) for a slot or credit. */
struct tern_pending {
	uint32_t method;
	const void *buf;
	size_t len;
	tern_call_cb cb;  /* a call */
	tern_send_cb scb; /* a one-way message */
	void *user;
	uint64_t deadline_ns;
	void *reply_buf;
	size_t reply_cap;
};

/*
 * Staging of a call that timed out: the server may still read or write it
 * until the late reply comes, so it is kept until then (or the session ends).
 */
struct tern_orphan {
	bool used;
	uint16_t slot;
	uint32_t gen;
	struct tern_stage *st[2];
	struct tern_bulk_desc xd[2]; /* its exports, withdrawn with the late reply */
	uint8_t nx;
};

enum tern_req_state {
	TERN_REQ_FREE = 0,
	TERN_REQ_HANDLER,  /* in a raw/inplace handler */
	TERN_REQ_DEFERRED, /* held by a deferred handler */
	TERN_REQ_BATCHED,  /* waiting in a batch */
	TERN_REQ_FETCHING, /* pulling a large request from the caller */
	TERN_REQ_WRITING,  /* pushing a large reply into the caller's buffer */
	TERN_REQ_HELD,	   /* its handler returned; tern_req_hold() keeps its slot */
};

/*
 * A request being served; request i replies from send slot N + i.  One-way
 * messages use a second pool (oneway true), with no reply slot: credits
 * bound the one-way messages not yet given back to N, so an entry is always
 * free.
 */
struct tern_req {
	tern_session *s;
	uint32_t idx;
	uint8_t state;
	bool oneway;
	uint32_t token; /* the receive slot holding the request */
	const void *in;
	uint32_t in_len;
	uint16_t call_slot;
	uint32_t call_gen;
	uint32_t method;
	bool has_rdesc;		      /* the caller named a reply buffer */
	struct tern_bulk_desc rdesc;  /* ...here */
	struct tern_stage *in_stage;  /* a large request, pulled */
	struct tern_stage *out_stage; /* a reply too large for the slot */
	void *out;		      /* where the handler writes its reply */
	size_t out_cap;
	uint64_t bulk_len;   /* the large reply being written */
	uint32_t holds;	     /* tern_req_hold() calls not yet released */
	ssize_t held_status; /* a held batch item's status, for its release */
	char errmsg[TERN_ERRMSG_MAX + 1];
	/* tern_req_zero_extend(): the request read as a longer message; kept
	 * for the next request of this index, freed with the session */
	void *zx;
	size_t zx_cap;
};

/* A validated request waiting for a reply slot (see rpc/server.c). */
struct tern_backlog_entry {
	uint32_t token;
	const void *payload;
	struct tern_hdr h;
};

struct tern_session {
	tern_ctx *ctx;
	struct tern_list link;	/* ctx->sessions */
	struct tern_list dirty; /* ctx->dirty */
	struct tern_conn *conn;
	struct tern_tp *tp;
	struct tern_listener *listener; /* accepted on, or NULL */
	enum tern_sess_state state;
	int fail_status; /* why it failed, once it has */
	/* a post the transport refused, inside a user's call: fails the
	 * session from the loop (session.c, fail_soon()) */
	int fail_soon;
	const char *fail_soon_why;
	bool user_closed;
	bool announced; /* the user has the handle (tern_connect, accept_cb) */
	bool is_server; /* accepted on a listener */
	/*
	 * The service check is in progress: the transport is up (READY) but
	 * the user may not call yet, and only the check's request (server) or
	 * its reply (client) may arrive.
	 */
	bool binding;
	int refused; /* server: the check failed with this; close once it is sent */
	char refused_why[TERN_ERRMSG_MAX + 32];
	uint8_t *svc_check; /* client: the encoded check */
	uint32_t svc_check_len;
	/* client: the checked methods the server lacks, sorted by id */
	struct tern_missing_method *missing;
	uint32_t nmissing;
	/*
	 * 1, plus one for each request still pointing into a receive slot
	 * when the session went down (in a handler, deferred, held).
	 */
	int refs;
	/* the slot memory the provider left to us for them (keep_rx) */
	void (*rx_release)(void *arg);
	void *rx_arg;

	uint32_t n;		     /* slot_count */
	uint32_t max_msg;	     /* the largest message we accept (and announced) */
	uint32_t peer_max_msg;	     /* ...and the peer does (from the handshake) */
	uint64_t max_staging;	     /* the most staging the session may hold */
	struct tern_orphan *orphans; /* n */
	uint32_t slot_size;
	uint32_t max_payload;
	int nonblock;
	uint32_t call_timeout_ms;
	uint64_t schema_hash;
	void *data;
	tern_connect_cb connect_cb;
	tern_session_close_cb close_cb;
	void (*on_close)(tern_session *s, int reason);

	struct tern_credits cr;
	uint32_t tx_seq, rx_seq;
	/* when the peer's last message arrived, or (rx_unstamped) a time
	 * before that: tern__session_flush_dirty() stamps it lazily */
	uint64_t last_rx_ns;
	bool rx_unstamped; /* a message arrived after last_rx_ns */

	/* client side */
	struct tern_callslot *calls; /* n */
	uint32_t *free_calls;	     /* stack of FREE, not send_busy, call slots */
	uint32_t nfree_calls;
	struct tern_pending *queue; /* ring, queue_cap entries */
	uint32_t q_head, q_len, q_cap;

	/* server side */
	struct tern_req *owreqs; /* n: one-way messages being served or held */
	uint32_t *free_owreqs;
	uint32_t nfree_owreqs;
	struct tern_req *reqs; /* n */
	uint32_t *free_reqs;   /* stack of reqs whose reply slot is free */
	uint32_t nfree_reqs;
	struct tern_backlog_entry *backlog; /* requests waiting for a reply slot */
	uint32_t bl_head, bl_len, bl_cap;

	/* credit messages */
	uint32_t ctrl_busy; /* bitmask of control send slots in flight */

	struct tern_session_counters cnt;
	uint64_t staged;     /* bytes of staging this session holds */
	uint64_t copy_bytes; /* payload bytes the engine memcpy'd (tests prove zero-copy with it) */
	uint32_t last_send_slot;
	uint32_t last_send_len;
	char peer[96];
};

struct tern_listener {
	tern_ctx *ctx;
	struct tern_list link;
	struct tern_tp *tp;
	struct tern_tlistener *tl;
	struct tern_session_opts opts;
	tern_accept_cb cb;
	void *data;
	char uri[300];
};

/* src/session.c */
int tern__session_alloc(tern_ctx *ctx, const struct tern_session_opts *opts, struct tern_tp *tp,
			tern_session **out);
int tern__session_attach(tern_session *s, struct tern_conn *c);
void tern__session_params(const tern_session *s, struct tern_conn_params *p);
void tern__session_hello(const tern_session *s, struct tern_hello *h);
void tern__session_fail(tern_session *s, int err, const char *why);
void tern__session_unref(tern_session *s);
void tern__session_flush_dirty(tern_ctx *ctx);
void tern__session_close_all(tern_ctx *ctx);
bool tern__sessions_all_closed(tern_ctx *ctx);
void tern__session_reap_all(tern_ctx *ctx);
int tern__session_send(tern_session *s, uint32_t slot, struct tern_hdr *h);
int tern__session_send_flags(tern_session *s, uint32_t slot, struct tern_hdr *h, uint32_t flags);
void tern__deadline_arm(tern_ctx *ctx, uint64_t deadline_ns);
void tern__deadlines_run(tern_ctx *ctx, uint64_t now_ns);
void tern__session_mark_dirty(tern_session *s);
void tern__session_repost(tern_session *s, uint32_t token);
/*
 * The largest reply buffer a request may name: the smaller of the two
 * sides' max_msg, which both know from the handshake.  The caller offers no
 * more; the server stages no more, and refuses a request naming more.
 */
static inline uint64_t tern__reply_max(const tern_session *s)
{
	return s->max_msg < s->peer_max_msg ? s->max_msg : s->peer_max_msg;
}
static inline uint8_t *tern__send_slot(const tern_session *s, uint32_t slot)
{
	return s->conn->send_base + (size_t)slot * s->slot_size;
}

/* User-facing readiness: transport up and the service check passed. */
static inline bool tern__session_usable(const tern_session *s)
{
	return s->state == TERN_S_READY && !s->binding;
}
void tern__session_announce(tern_session *s);

/* rpc/batch.c */
void tern__batch_add(struct tern_batcher *b, tern_req *req, void *out, size_t out_cap);
void tern__batch_flush(struct tern_batcher *b);
/* Run the batchers whose wait is over; return the next one due (0: none). */
uint64_t tern__batches_due(tern_ctx *ctx, uint64_t now_ns);
void tern__batch_drop_session(tern_ctx *ctx, tern_session *s);
void tern__batchers_free(tern_ctx *ctx);

/* rpc/server.c */
void tern__serve_oneway(tern_session *s, uint32_t token, const struct tern_hdr *h,
			const void *payload);
void tern__serve_batch_done(tern_req *req, ssize_t status);
void tern__serve_bulk_done(tern_req *req, int status);
void tern__serve_request(tern_session *s, uint32_t token, const struct tern_hdr *h,
			 const void *payload);
void tern__serve_reply_slot_free(tern_session *s, uint32_t req_idx);
void tern__serve_session_down(tern_session *s);

/* rpc/client.c */
void tern__client_reply(tern_session *s, const struct tern_hdr *h, const void *payload);
void tern__client_send_done(tern_session *s, uint32_t call_idx);
void tern__client_kick(tern_session *s);
/* Issue a call while binding (bypasses the readiness check). */
int tern__client_call_internal(tern_session *s, uint32_t method, const void *buf, size_t len,
			       tern_call_cb cb, uint32_t timeout_ms);
void tern__client_fail_all(tern_session *s, int err);
/* Fail calls whose deadline passed; return the earliest one left (0: none). */
uint64_t tern__client_expire(tern_session *s, uint64_t now_ns);

/* Run a user callback with the context's callback depth raised. */
#define TERN_CALLBACK(ctx, call)   \
	do {                       \
		(ctx)->cb_depth++; \
		call;              \
		(ctx)->cb_depth--; \
	} while (0)

#endif /* TERN_INTERNAL_H */
