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
};

struct tern_method {
	uint32_t id; /* 0: empty bucket */
	uint8_t kind;
	union {
		tern_raw_handler raw;
		tern_inplace_handler inplace;
		tern_deferred_handler deferred;
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
	struct tern_list sessions;
	struct tern_list listeners;
	struct tern_list dirty; /* sessions owing credits after this poll */

	int cb_depth; /* >0 while a user callback runs */
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
	bool send_busy; /* send slot not yet released by the provider */
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
	tern_call_cb cb;
	void *user;
	uint64_t deadline_ns;
};

enum tern_req_state {
	TERN_REQ_FREE = 0,
	TERN_REQ_HANDLER,  /* in a raw/inplace handler */
	TERN_REQ_DEFERRED, /* held by a deferred handler */
};

/* A request being served; req i replies from send slot N + i. */
struct tern_req {
	tern_session *s;
	uint32_t idx;
	uint8_t state;
	uint32_t token; /* the receive slot holding the request */
	const void *in;
	uint32_t in_len;
	uint16_t call_slot;
	uint32_t call_gen;
	uint32_t method;
	char errmsg[TERN_ERRMSG_MAX + 1];
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
	bool user_closed;
	bool announced; /* the user has the handle (tern_connect, accept_cb) */
	int refs;	/* deferred requests holding it after close */

	uint32_t n; /* slot_count */
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

	/* client side */
	struct tern_callslot *calls; /* n */
	uint32_t *free_calls;	     /* stack of FREE, not send_busy, call slots */
	uint32_t nfree_calls;
	struct tern_pending *queue; /* ring, queue_cap entries */
	uint32_t q_head, q_len, q_cap;

	/* server side */
	struct tern_req *reqs; /* n */
	uint32_t *free_reqs;   /* stack of reqs whose reply slot is free */
	uint32_t nfree_reqs;
	struct tern_backlog_entry *backlog; /* requests waiting for a reply slot */
	uint32_t bl_head, bl_len, bl_cap;

	/* credit messages */
	uint32_t ctrl_busy; /* bitmask of control send slots in flight */

	struct tern_session_counters cnt;
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
int tern__session_alloc(tern_ctx *ctx, const struct tern_session_opts *opts, tern_session **out);
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
void tern__deadline_arm(tern_ctx *ctx, uint64_t deadline_ns);
void tern__deadlines_run(tern_ctx *ctx, uint64_t now_ns);
void tern__session_mark_dirty(tern_session *s);
void tern__session_repost(tern_session *s, uint32_t token);
static inline uint8_t *tern__send_slot(const tern_session *s, uint32_t slot)
{
	return s->conn->send_base + (size_t)slot * s->slot_size;
}

/* rpc/server.c */
void tern__serve_request(tern_session *s, uint32_t token, const struct tern_hdr *h,
			 const void *payload);
void tern__serve_reply_slot_free(tern_session *s, uint32_t req_idx);
void tern__serve_session_down(tern_session *s);

/* rpc/client.c */
void tern__client_reply(tern_session *s, const struct tern_hdr *h, const void *payload);
void tern__client_send_done(tern_session *s, uint32_t call_idx);
void tern__client_kick(tern_session *s);
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
