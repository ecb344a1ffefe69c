/* SPDX-License-Identifier: MIT */
/*
 * internal.h - the engine's own structures: contexts, sessions, listeners,
 * registered memory, and the upcalls the floor above it registers.
 *
 * The engine (src/) is the middle floor.  It names the providers' ops
 * tables (below it) and nothing of the service layer (rpc/, above it),
 * which it reaches only through struct tern_upcalls.  rpc/ includes this
 * header; a provider never does (it sees include/tern/transport.h only).
 */
#ifndef TERN_INTERNAL_H
#define TERN_INTERNAL_H

#include <pthread.h>
#include <stdatomic.h>
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
#define TERN_DEFAULT_CANCEL_TIMEOUT_MS	10000u

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
	int memfd; /* tern_mem_alloc(): the memfd behind @addr, which we unmap at the end; else -1
		    */
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
/*
 * Withdraw exports made for a call that is over (if the provider tracks
 * them); @flags: TERN_UNEXPORT_* (tern/transport.h), what the engine knows.
 */
void tern__bulk_unexport(tern_session *s, const struct tern_bulk_desc *d, unsigned n,
			 unsigned flags);
/* @s's transport's slot in each region's tm[] */
int tern__tp_index(const tern_session *s);

/* ---- the floor above ---------------------------------------------------- */

/*
 * struct tern_upcalls - how the engine reaches the service layer (rpc/)
 *
 * The engine moves messages for sessions; what they mean (calls, requests,
 * methods, batches) is the service layer's.  The service layer makes each
 * context with tern__ctx_create() and this table, and the engine calls it
 * through the table only, never by name: rpc/ names src/, src/ names the
 * providers' ops tables, and nothing points back up except through a
 * table the floor above filled (checked: tests/unit/test_layering.py).
 *
 * Every upcall runs on the context's loop thread.  The per-message ones
 * (request, oneway, reply, call_sent, reply_sent, credits) are on the
 * hot path: one indirect call each.
 */
struct tern_upcalls {
	/*
	 * The bytes of a context and of a session, the floor above's part
	 * included: it embeds struct tern_ctx / struct tern_session first in
	 * its own, and the engine allocates (zeroed) and frees the whole.
	 */
	size_t ctx_size;
	size_t session_size;
	/* The context is going, every session already freed: free its part. */
	void (*ctx_fini)(tern_ctx *ctx);
	/*
	 * A session was made (not yet connected; is_server and, for a client,
	 * peer are set): set up its part, which is zeroed.  A client that
	 * wants to bind sets s->binds.  0, or -errno with tern_ctx_last_error()
	 * set; session_fini() follows either way.
	 */
	int (*session_init)(tern_session *s, const struct tern_session_opts *o);
	/* The session is being freed: free its part (also after a failed init). */
	void (*session_fini)(tern_session *s);
	/*
	 * Client, s->binds: the transport is up and s->binding set.  Run the
	 * check; end it with tern__session_bound(), or tern__session_fail().
	 */
	void (*bind)(tern_session *s);
	/*
	 * A READY session failed or is closing (@err): fail its calls, let go
	 * of its requests.  Requests that still point into a receive slot take
	 * a reference each (s->refs), dropped with tern__session_unref().
	 */
	void (*down)(tern_session *s, int err);
	/*
	 * Messages, checked (header, sequence, credits).  A request or a
	 * one-way message keeps its receive slot @token until the floor above
	 * gives it back (tern__session_repost()); a reply's slot is the
	 * engine's again when reply() returns.
	 */
	void (*request)(tern_session *s, uint32_t token, const struct tern_hdr *h,
			const void *payload);
	void (*oneway)(tern_session *s, uint32_t token, const struct tern_hdr *h,
		       const void *payload);
	void (*reply)(tern_session *s, const struct tern_hdr *h, const void *payload);
	/* Send slot @idx (a call's, idx < n) or n + @idx (a reply's) is free again. */
	void (*call_sent)(tern_session *s, uint32_t idx);
	void (*reply_sent)(tern_session *s, uint32_t idx);
	/*
	 * The peer returned request or control credits, or a control slot
	 * is free again: calls waiting for a credit, and cancels waiting for
	 * a control credit and slot, may go.
	 */
	void (*credits)(tern_session *s);
	/* A cancel (wire.h) arrived: @len bytes of entries, not yet checked. */
	void (*cancel)(tern_session *s, const void *entries, uint32_t len);
	/* A bulk transfer the floor above started (cookie its own) finished. */
	void (*bulk_done)(tern_session *s, uint64_t cookie, int status);
	/*
	 * The context's deadline timer fired at @now_ns: time out what is due.
	 * Return the next deadline wanted (0: none); tern__deadline_arm() arms
	 * one from anywhere else.
	 */
	uint64_t (*timers)(tern_ctx *ctx, uint64_t now_ns);
};

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
	/*
	 * tern_ctx_stop() from a signal handler or another thread: it sets
	 * stop_requested and wakes the loop through stop_async, the only two
	 * things it may touch there (uv_async_send() is async-signal-safe).
	 * The flag stays set until a tern_ctx_run(TERN_RUN_DEFAULT) returns,
	 * so a stop that lands outside one is kept for the next.
	 */
	uv_async_t stop_async;
	atomic_bool stop_requested;
	/*
	 * tern_ctx_post(): other threads append to post_head/post_tail under
	 * post_lock and wake the loop through post_async; the loop thread
	 * moves the queue to post_run (its own, no lock) and runs it from
	 * there, so a post that polls the context nested (tern_ctx_poll() from
	 * inside the post; tern_call_sync() refuses there with -EBUSY) keeps
	 * FIFO order.  post_pending lets a busy poll look without the lock.
	 */
	pthread_mutex_t post_lock;
	struct tern_post *post_head, **post_tail; /* under post_lock */
	bool post_closed;			  /* under post_lock: destroy began */
	atomic_bool post_pending;
	uv_async_t post_async;
	struct tern_post *post_run, **post_run_tail; /* loop thread only */

	uint64_t next_deadline_ns; /* 0: none armed */
	/*
	 * The clock as read once in this turn of the loop (a poll of the
	 * providers, or a provider's event), for what a turn's resolution
	 * serves (metrics' latencies: tern__turn_ns()); 0 when not read yet.
	 * Cleared when the turn ends, so no reading outlives its turn.
	 */
	uint64_t turn_ns;
	struct tern_turn_stamp *turn_owed; /* owed the next poll's reading (tern__turn_stamp()) */
	int open_handles;		   /* our uv handles not yet closed */
	bool idle_active;
	bool events_armed; /* adaptive: providers in event mode */
	uint64_t last_activity_ns;

	struct tern_tp tp[TERN_MAX_TRANSPORTS];
	int ntp;
	/* The transports made so far (tp->t set), in the order they were:
	 * what a poll walks, instead of every known one. */
	struct tern_tp *live[TERN_MAX_TRANSPORTS];
	int nlive;

	const struct tern_upcalls *up; /* the floor above: rpc/ */
	struct tern_list mrs;	       /* user registrations: the registration cache */
	struct tern_stage *stages;     /* idle staging buffers */
	size_t stage_idle_bytes;
	uint64_t stage_bytes;	    /* staging buffers, idle or not (tern_ctx_mem) */
	uint64_t session_heap;	    /* the sessions' own heap, both floors (tern_ctx_mem) */
	uint64_t user_shared_bytes; /* tern_mem_alloc() memory mapped */
	struct tern_list sessions;
	struct tern_list listeners;
	struct tern_list dirty; /* sessions owing credits after this poll */

	int cb_depth;	 /* >0 while a user callback runs */
	int run_default; /* >0 inside tern_ctx_run(TERN_RUN_DEFAULT): see idle_cb() */
	bool destroying;
	char last_error[256];
};

/*
 * tern__ctx_create - a context whose floor above is @up (the service
 * layer's tern_ctx_create() passes its own); same options and results as
 * tern_ctx_create().
 */
int tern__ctx_create(const struct tern_ctx_opts *opts, const struct tern_upcalls *up,
		     tern_ctx **out);
void tern__set_error(tern_ctx *ctx, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
int tern__uri_parse(const char *uri, struct tern_uri *out, char *why, size_t why_len);
int tern__transport_get(tern_ctx *ctx, const struct tern_uri *u, struct tern_tp **out);
uint64_t tern__now_ns(void);

/* tern__turn_ns()'s read, out of the callers' way. */
uint64_t tern__turn_read(tern_ctx *ctx);

/*
 * tern__turn_ns - the clock, read at most once per turn of the loop
 *
 * For code that runs inside a turn (an upcall from a provider's poll or
 * event): the first caller in the turn reads the clock, the others share
 * that reading.  Everything timed with it is timed to a turn's resolution.
 */
static inline uint64_t tern__turn_ns(tern_ctx *ctx)
{
	return ctx->turn_ns ? ctx->turn_ns : tern__turn_read(ctx);
}

/*
 * tern__turn_or_now_ns - this turn's reading if one was taken, else the
 * clock now, not kept: for code that may run between turns (a reply the
 * user posts later), where a reading kept would go stale.
 */
static inline uint64_t tern__turn_or_now_ns(tern_ctx *ctx)
{
	return ctx->turn_ns ? ctx->turn_ns : tern__now_ns();
}

/* A start time owed by a turn: see tern__turn_stamp(). */
struct tern_turn_stamp {
	uint64_t ns;		      /* 0 while owed */
	struct tern_turn_stamp *next; /* on ctx->turn_owed while owed */
};

/*
 * tern__turn_stamp - the start of something timed to a turn's resolution
 *
 * This turn's reading when one was taken.  Otherwise the stamp is owed
 * the reading of the end of this turn (or, between turns, of the next
 * one): what ends before that is known to have taken less than a turn
 * and needs no clock at all (tern__turn_elapsed()).
 */
static inline void tern__turn_stamp(tern_ctx *ctx, struct tern_turn_stamp *st)
{
	if (ctx->turn_ns) {
		st->ns = ctx->turn_ns;
	} else {
		st->ns = 0;
		st->next = ctx->turn_owed;
		ctx->turn_owed = st;
	}
}

/*
 * tern__turn_stamp_between - the same for what may start between turns (a
 * call from the user's code): while the context polls (busy progress, or
 * adaptive while it spins) the next poll is the first that can see the
 * end, so the stamp is owed to that poll's end; when the context sleeps in
 * its providers' events no poll may come before the end: the clock now.
 */
static inline void tern__turn_stamp_between(tern_ctx *ctx, struct tern_turn_stamp *st)
{
	if (!ctx->turn_ns && !ctx->idle_active)
		st->ns = tern__now_ns();
	else
		tern__turn_stamp(ctx, st);
}

/* The turn ends: the stamps owed get its reading (ctx.c). */
void tern__turn_stamps_take(tern_ctx *ctx);

/* A stamp still owed when what it times ended: off the list (ctx.c). */
void tern__turn_stamp_drop(tern_ctx *ctx, struct tern_turn_stamp *st);

/*
 * tern__turn_elapsed - nanoseconds from @st to now, to a turn's resolution
 * @in_turn: the caller runs inside a turn (an upcall), so the reading it
 *	takes may be kept for the rest of the turn
 *
 * 0 without a clock read when @st is still owed: both ends are in one turn.
 */
static inline uint64_t tern__turn_elapsed(tern_ctx *ctx, struct tern_turn_stamp *st, bool in_turn)
{
	if (!st->ns) {
		/* the newest is first: what began and ended in one turn is found at once */
		if (ctx->turn_owed == st)
			ctx->turn_owed = st->next;
		else
			tern__turn_stamp_drop(ctx, st);
		return 0;
	}
	/* one monotonic clock, read in order: never negative */
	return (in_turn ? tern__turn_ns(ctx) : tern__turn_or_now_ns(ctx)) - st->ns;
}

void tern__activity(tern_ctx *ctx);
extern const struct tern_transport_events tern__events;

/* ---- sessions -------------------------------------------------------------- */

enum tern_sess_state {
	TERN_S_CONNECTING,
	TERN_S_READY,
	TERN_S_CLOSING, /* disconnect requested; waiting for the provider's closed() */
	TERN_S_CLOSED,	/* transport released; memory held by deferred requests */
};

struct tern_session {
	tern_ctx *ctx;
	const struct tern_upcalls *up; /* ctx->up: one load less per upcall */
	struct tern_list link;	       /* ctx->sessions */
	struct tern_list dirty;	       /* ctx->dirty */
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
	 * Binding: the floor above holds the session back from its user while
	 * it checks the peer (rpc/: the service check).  A client that binds
	 * says so in its hello (TERN_HELLO_SERVICES).  While binding the
	 * transport is up (READY) but the user may not call, and only the
	 * check's request (server) or its answer (client) may arrive;
	 * tern__session_bound() ends it.
	 */
	bool binds;   /* client: will bind once up */
	bool binding; /* binding now */
	/* the floor above refused the peer with this: close once it is sent */
	int refused;
	char refused_why[TERN_ERRMSG_MAX + 32];
	/*
	 * 1, plus one for each request still pointing into a receive slot
	 * when the session went down (in a handler, deferred, held).
	 */
	int refs;
	/* the slot memory the provider left to us for them (keep_rx) */
	void (*rx_release)(void *arg);
	void *rx_arg;

	uint32_t n;	       /* slot_count */
	uint32_t max_msg;      /* the largest message we accept (and announced) */
	uint32_t peer_max_msg; /* ...and the peer does (from the handshake) */
	uint64_t max_staging;  /* the most staging the session may hold */
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

	/* credit messages */
	uint32_t ctrl_busy; /* bitmask of control send slots in flight */

	struct tern_session_counters cnt;
	uint64_t staged;     /* bytes of staging this session holds */
	uint64_t copy_bytes; /* payload bytes the engine memcpy'd (tests prove zero-copy with it) */
	uint32_t last_send_slot;
	uint32_t last_send_len;
	size_t heap; /* bytes of heap this session holds for life, in ctx->session_heap */
	char peer[96];
	/* up->session_size - sizeof(struct tern_session) bytes of the floor
	 * above follow (struct tern_rpc_session embeds this one first) */
};

struct tern_listener {
	tern_ctx *ctx;
	struct tern_list link;
	struct tern_tp *tp;
	struct tern_tlistener *tl;
	struct tern_session_opts opts;
	tern_accept_cb cb;
	void *data;
	/*
	 * A context group's listener (TERN__LISTEN_HANDOFF): who takes the
	 * connections it accepts (the floor above, rpc/group.c), on this
	 * context's thread.  It owns @h.
	 */
	void (*handoff)(tern_listener *l, struct tern_handoff h);
	void *handoff_arg;
	char uri[300];
};

enum tern__listen_kind {
	TERN__LISTEN = 0,     /* tern_listen(): accept and run every connection here */
	TERN__LISTEN_HANDOFF, /* own the socket; hand accepted sockets to l->handoff */
	TERN__LISTEN_ADOPT,   /* no socket: run sockets tern__listener_adopt() gives it */
};

/*
 * tern__listen - tern_listen() for a context group (rpc/group.c): one
 * HANDOFF listener on the group's acceptor context owns the socket; each
 * member context has an ADOPT listener for the same URI that runs the
 * connections handed to it.  -EPROTONOSUPPORT when the provider has no
 * adopt().
 */
int tern__listen(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
		 tern_accept_cb cb, enum tern__listen_kind kind, tern_listener **out);
/*
 * Run @h, accepted by a HANDOFF listener, on ADOPT listener @l's context,
 * on its thread.  @h is the provider's from the call, on every path.
 */
int tern__listener_adopt(tern_listener *l, struct tern_handoff h);
/*
 * On the HANDOFF listener's thread, before @h is posted to ADOPT listener
 * @l's context (which must stay alive meanwhile): make @h's events reach
 * that context (ops->handoff_move; nothing to do for a socket).  0, or
 * -errno with @h still the caller's.
 */
int tern__handoff_move(tern_listener *l, struct tern_handoff h);
/*
 * Refuse @h (close the socket, or ops->handoff_drop()), on the thread of
 * the context its events reach; @l is any listener of its provider.
 */
void tern__handoff_drop(tern_listener *l, struct tern_handoff h);

/*
 * The session took @bytes of heap for its life (the floor above's tables
 * too): counted for tern_ctx_mem() until session_free() gives them back.
 */
static inline void tern__session_heap(tern_session *s, size_t bytes)
{
	s->heap += bytes;
	s->ctx->session_heap += bytes;
}

/* src/session.c */
/*
 * A new session on @tp: @uri is the one a client connects to, NULL for a
 * session accepted on a listener.  The floor above sets up its part
 * (up->session_init) before this returns.
 */
int tern__session_alloc(tern_ctx *ctx, const struct tern_session_opts *opts, struct tern_tp *tp,
			const char *uri, tern_session **out);
int tern__session_attach(tern_session *s, struct tern_conn *c);
void tern__session_params(const tern_session *s, uint32_t connect_timeout_ms,
			  struct tern_conn_params *p);
void tern__session_hello(const tern_session *s, struct tern_hello *h);
void tern__session_fail(tern_session *s, int err, const char *why);
void tern__session_unref(tern_session *s);
void tern__session_flush_dirty(tern_ctx *ctx);
void tern__session_close_all(tern_ctx *ctx);
bool tern__sessions_all_closed(tern_ctx *ctx);
void tern__session_reap_all(tern_ctx *ctx);
int tern__session_send(tern_session *s, uint32_t slot, struct tern_hdr *h);
int tern__session_send_flags(tern_session *s, uint32_t slot, struct tern_hdr *h, uint32_t flags);
/*
 * A control message with a payload (a cancel): a control slot's payload
 * area (and its room in *@cap) when a control credit and a slot are free,
 * else NULL (the credits upcall says when to try again).  Commit posts
 * it, taking the credit.
 */
void *tern__session_ctrl_acquire(tern_session *s, uint32_t *cap, uint32_t *idx);
void tern__session_ctrl_commit(tern_session *s, uint32_t idx, uint8_t kind, uint32_t len);
/* Have every send posted so far reported soon (a send slot is awaited). */
void tern__session_report_sends(tern_session *s);
void tern__deadline_arm(tern_ctx *ctx, uint64_t deadline_ns);
/*
 * Run the deadline timer (and the flush of dirty sessions after it) on the
 * loop's next turn: for work a user's call left owed outside a callback,
 * which nothing else may come to do in event progress.
 */
void tern__wake_soon(tern_ctx *ctx);
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
/*
 * The transport said @s's connection is gone (@err) inside a user's call:
 * @s fails from the loop, as for a refused post, and is not ready from now
 * on.  Return: -ENOTCONN, what the user's call returns.
 */
int tern__session_gone(tern_session *s, int err, const char *why);

static inline bool tern__session_usable(const tern_session *s)
{
	return s->state == TERN_S_READY && !s->binding;
}
/*
 * Binding is over (or there was none): the session is its user's now.  A
 * server's listener callback hears of it, a client's connect callback.
 */
void tern__session_bound(tern_session *s);

/* Run a user callback with the context's callback depth raised. */
#define TERN_CALLBACK(ctx, call)   \
	do {                       \
		(ctx)->cb_depth++; \
		call;              \
		(ctx)->cb_depth--; \
	} while (0)

#endif /* TERN_INTERNAL_H */
