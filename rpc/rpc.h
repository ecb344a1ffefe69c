/* SPDX-License-Identifier: MIT */
/*
 * rpc.h - the service layer's own structures: methods, calls, requests,
 * batches, and its part of each context and session.
 *
 * The service layer is the floor above the engine (src/): it names the
 * engine's functions and reads its structures, and the engine reaches it
 * only through the struct tern_upcalls it registered (rpc.c).  Nothing in
 * src/ or transport/ includes this header (tests/unit/test_layering.py).
 */
#ifndef TERN_RPC_H
#define TERN_RPC_H

#include "internal.h"
#include "metrics.h"

/* ---- methods (methods.c) -------------------------------------------------- */

enum tern_method_kind {
	TERN_KIND_RAW = 1,
	TERN_KIND_INPLACE = 2,
	TERN_KIND_DEFERRED = 3,
	TERN_KIND_ONEWAY = 4,
	TERN_KIND_BATCH = 5,
};

/* A batched method's gatherer (batch.c). */
struct tern_batcher {
	struct tern_batcher *next; /* tern__rpc_ctx(ctx)->batchers */
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
/* Check @m and add it to @ctx's table: every tern_register_*() (and the group's). */
int tern__method_register(tern_ctx *ctx, const struct tern_method *m);
int tern__methods_del(struct tern_method_table *t, uint32_t id);
const struct tern_method *tern__methods_find(const struct tern_method_table *t, uint32_t id);
void tern__methods_free(struct tern_method_table *t);

/* ---- services (services.c) ------------------------------------------------ */

/*
 * A service this context serves.  The registry (tern_rpc_ctx.services) is
 * one allocation: the entries, then each entry's messages and layout, found
 * by offset from the registry's start, so that the context frees it whole.
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
 * tern__services_accept - the client's side: the server's answer to its
 * svc_check, which records the methods it lacks in its missing list.
 * Return: 0, TERN_EPEER (a malformed answer) or -ENOMEM, with @why.
 */
int tern__services_accept(tern_session *s, const void *answer, size_t len, char *why,
			  size_t why_len);
/*
 * tern__services_missing - a call to a method the server said it lacks:
 * TERN_ENOMETHOD, with tern_ctx_last_error() naming it; 0 otherwise.
 * Only worth calling when the session's nmissing is not 0.
 */
int tern__services_missing(tern_session *s, uint32_t method);

/* ---- the service layer's part of a context ---------------------------------- */

struct tern_rpc_ctx {
	struct tern_ctx base; /* the engine's part: first, tern__ctx_create() makes it */
	struct tern_method_table methods;
	struct tern_batcher *batchers;
	struct tern_service_entry *services; /* registered with tern_service_register() */
	uint32_t nservices;
	int remote_depth; /* cb_depth of the call callback whose status the peer sent */
	struct tern_metrics *mx_store; /* made by tern_ctx_metrics_enable() */
	struct tern_metrics *mx;       /* mx_store while metrics are on, else NULL */
	struct tern__http *http;       /* tern_ctx_metrics_listen() (metrics_http.c) */
	struct tern_group *group;      /* the group it is a member of (group.c), or NULL */
	unsigned group_index;
};

static inline struct tern_rpc_ctx *tern__rpc_ctx(tern_ctx *ctx)
{
	return tern_container_of(ctx, struct tern_rpc_ctx, base);
}

/* ---- calls (client.c) ------------------------------------------------------- */

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
	struct tern_mstat *mx;	      /* its metrics entry (metrics.h), or NULL */
	struct tern_turn_stamp mx_t0; /* when it started, to a turn's resolution */
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
 * A call that timed out, until the server answers it (client.c): the
 * server may still read its request or write its reply, so its exports
 * and staging stay, and so does its reply's reservation (credit.h).
 */
struct tern_orphan {
	bool used;
	bool cancel_due; /* its cancel is not sent yet */
	uint16_t slot;
	uint32_t gen;
	struct tern_stage *st[2];
	struct tern_bulk_desc xd[2]; /* its exports, withdrawn with the answer */
	uint8_t nx;
	uint64_t give_up_ns; /* no answer by then: the session closes */
	/* the call lent the user's own memory: its callback waits for the answer */
	tern_call_cb cb;
	void *user;
};

/* ---- requests (server.c) ---------------------------------------------------- */

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
	uint64_t bulk_len;	     /* the large reply being written */
	struct tern_mr *bulk_mr;     /* ...from this region */
	size_t bulk_off;	     /* ...at this offset */
	struct tern_bulk_desc qdesc; /* the large request being pulled */
	uint32_t holds;		     /* tern_req_hold() calls not yet released */
	bool cancelled;		     /* the caller cancelled the call (tern_req_cancelled()) */
	bool in_raw;		     /* inside its raw handler */
	tern_reply_sent_cb sent_cb;  /* tern_req_on_reply_sent(), until the reply went */
	void *sent_user;
	ssize_t held_status; /* a held batch item's status, for its release */
	char errmsg[TERN_ERRMSG_MAX + 1];
	/* tern_req_zero_extend(): the request read as a longer message; kept
	 * for the next request of this index, freed with the session */
	void *zx;
	size_t zx_cap;
	struct tern_mstat *mx;	      /* its metrics entry (metrics.h), or NULL */
	struct tern_turn_stamp mx_t0; /* when it started, to a turn's resolution */
};

/* A validated request waiting for a reply slot (see server.c). */
struct tern_backlog_entry {
	uint32_t token;
	const void *payload;
	struct tern_hdr h;
	bool cancelled; /* the caller cancelled it: answer -ECANCELED, run nothing */
};

/* ---- the service layer's part of a session ---------------------------------- */

struct tern_rpc_session {
	struct tern_session base; /* the engine's part: first, the engine makes it */

	/* client side */
	struct tern_callslot *calls; /* n */
	uint32_t *free_calls;	     /* stack of FREE, not send_busy, call slots */
	uint32_t nfree_calls;
	struct tern_pending *queue; /* ring, q_cap entries */
	uint32_t q_head, q_len, q_cap;
	struct tern_orphan *orphans; /* n: calls and orphans together hold at most n replies */
	uint32_t norphans;
	uint32_t ncancel_due;	    /* orphans whose cancel is not sent yet */
	uint32_t cancel_timeout_ms; /* struct tern_session_opts */
	uint8_t *svc_check;	    /* the encoded service check, until it is answered */
	uint32_t svc_check_len;
	/* the checked methods the server lacks, sorted by id */
	struct tern_missing_method *missing;
	uint32_t nmissing;

	/* server side */
	struct tern_req *owreqs; /* n: one-way messages being served or held */
	uint32_t *free_owreqs;
	uint32_t nfree_owreqs;
	struct tern_req *reqs; /* n */
	uint32_t *free_reqs;   /* stack of reqs whose reply slot is free */
	uint32_t nfree_reqs;
	struct tern_backlog_entry *backlog; /* requests waiting for a reply slot */
	uint32_t bl_head, bl_len, bl_cap;
	uint32_t *bulk_wait; /* ring of n: requests whose transfer waits its turn */
	uint32_t bw_head, bw_len;
};

static inline struct tern_rpc_session *tern__rpc(tern_session *s)
{
	return tern_container_of(s, struct tern_rpc_session, base);
}

static inline const struct tern_rpc_session *tern__rpc_const(const tern_session *s)
{
	return tern_container_of(s, const struct tern_rpc_session, base);
}

/* ---- what the files of rpc/ call in each other ------------------------------ */

/* rpc.c: the upcalls the engine makes into this floor. */
extern const struct tern_upcalls tern__rpc_upcalls;

/* batch.c */
void tern__batch_add(struct tern_batcher *b, tern_req *req, void *out, size_t out_cap);
void tern__batch_flush(struct tern_batcher *b);
/* Run the batchers whose wait is over; return the next one due (0: none). */
uint64_t tern__batches_due(tern_ctx *ctx, uint64_t now_ns);
void tern__batch_drop_session(tern_ctx *ctx, tern_session *s);
void tern__batchers_free(tern_ctx *ctx);

/* server.c */
void tern__serve_oneway(tern_session *s, uint32_t token, const struct tern_hdr *h,
			const void *payload);
void tern__serve_batch_done(tern_req *req, ssize_t status);
void tern__serve_bulk_done(tern_session *s, uint64_t cookie, int status);
void tern__serve_request(tern_session *s, uint32_t token, const struct tern_hdr *h,
			 const void *payload);
void tern__serve_reply_slot_free(tern_session *s, uint32_t req_idx);
void tern__serve_session_down(tern_session *s);
void tern__serve_cancel(tern_session *s, const void *entries, uint32_t len);
/* The session is being freed: tell raw handlers their replies will not go. */
void tern__serve_session_fini(tern_session *s);

/* metrics_http.c: close the /metrics endpoint, if any (the loop still runs). */
void tern__metrics_http_close(tern_ctx *ctx);

/* client.c */
void tern__client_reply(tern_session *s, const struct tern_hdr *h, const void *payload);
void tern__client_send_done(tern_session *s, uint32_t call_idx);
void tern__client_kick(tern_session *s);
/* Send the cancels of calls that timed out, as control credits allow. */
void tern__client_send_cancels(tern_session *s);
/* Issue a call while binding (bypasses the readiness check). */
int tern__client_call_internal(tern_session *s, uint32_t method, const void *buf, size_t len,
			       tern_call_cb cb, uint32_t timeout_ms);
void tern__client_fail_all(tern_session *s, int err);
/* Fail calls whose deadline passed; return the earliest one left (0: none). */
uint64_t tern__client_expire(tern_session *s, uint64_t now_ns);

#endif /* TERN_RPC_H */
