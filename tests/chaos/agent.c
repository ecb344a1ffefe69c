// SPDX-License-Identifier: MIT
/*
 * agent.c - one agent of the chaos run: a context, its sessions, the
 * generator that drives them, the handlers that serve the peer, and the
 * model against which every outcome is checked.
 *
 * The caller decides everything: a request's header tells its handler what
 * to do (reply with so many bytes of a given seed, fail with a given code,
 * echo, hold for so long), so the caller knows the one right outcome of
 * each call before it is made, and the handler checks every request byte.
 * What timing may change (a deadline passing, a session going down, staging
 * running out) is allowed only where it is documented, and only when its
 * cause is there (-ETIMEDOUT after the deadline, -ECANCELED after our own
 * close...).
 *
 * Each operation's parameters come from a fixed number of draws of the
 * agent's generator, so the schedule of operations is the same for the
 * same seed whatever the timing does; which session an operation lands on
 * and what the transport interleaves are not.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uv.h>

#include "chaos.h"

const struct chaos_geom chaos_geoms[CHAOS_NLISTEN] = {
	{8192, 64},  /* the defaults */
	{1024, 8},   /* issue 13's long-poll window */
	{512, 2},    /* credits run out all the time */
	{65536, 16}, /* large slots */
};

/* Sessions a client keeps open at most. */
#define MAX_CLIENT_SESSIONS 3
/* Calls and queued one-way messages in flight per agent at most. */
#define CALLS_CAP 8192
#define OP_DRAWS  16
/* Nothing completed for this long with calls in flight: a stall. */
#define STALL_NS (30ull * 1000000000ull)

enum call_kind {
	K_CALL = 1,
	K_ONEWAY, /* a queued one-way message: its tern_send_cb */
};

enum call_role {
	R_PLAIN = 0,
	R_PROBE, /* quiesce: a plain call proves the session still works */
	R_AUDIT, /* drain: what the peer received of our one-way streams */
	R_WAKE,	 /* releases this stream's long-polls */
};

enum expect {
	EXP_OK = 1,
	EXP_REMOTE, /* the handler's (or the engine's, at the peer) error */
	EXP_LOCAL,  /* this side's error (a reply larger than the reply buffer) */
	EXP_RESET,  /* M_CLOSEME: OK or -ECONNRESET */
};

struct csess;

struct ccall {
	uint64_t id;
	uint8_t kind, role;
	bool issuing; /* inside tern_call: a callback now breaks the API */
	struct csess *cs;
	uint32_t method;
	struct chaos_hdr h; /* the request's header: an echo is checked against it */
	uint64_t t0_ns;
	uint32_t timeout_ms; /* the effective deadline (0: none) */
	uint8_t *req;	     /* the request, kept until the callback (tern_call's rule) */
	int req_cls;	     /* arena class, or -1 (malloc) */
	uint8_t *rbuf;	     /* the reply buffer, or NULL */
	int rbuf_cls;
	size_t reply_cap;
	enum expect exp;
	int exp_code;
	uint64_t exp_len;
	bool nobufs_remote; /* the server may run out of staging for it */
	bool nobufs_local;  /* ...or this side */
	bool user_mem;	    /* a large buffer of ours is exported (not staging) */
	uint64_t budget;    /* large bytes charged to the agent */
	int ow_m;	    /* K_ONEWAY: which stream (0 M_ONEWAY, 1 M_OWBATCH) */
};

struct csess {
	struct agent *a;
	struct csess *next;
	tern_session *s; /* NULL once its end was reported (the handle is freed) */
	uint32_t serial;
	uint64_t stream;
	int geom;
	uint32_t n;
	uint32_t max_payload;
	bool nonblock;
	uint32_t default_timeout_ms;
	bool server;	      /* accepted by this agent */
	bool ready;	      /* usable: connected, or accepted */
	bool closing;	      /* this side closed it */
	bool down;	      /* its end was reported */
	bool expect_on_close; /* closed with a NULL callback: on_close should say so */
	int down_reason;
	int peer; /* the agent at the other end, once a message named it (-1) */
	uint64_t peer_stream;
	uint32_t inflight;  /* our calls on it */
	uint32_t longpolls; /* our long-polls the peer holds */
	uint32_t abandoned; /* our calls the peer will not answer while traffic runs */
	uint32_t abandoned_total;
	bool wake_inflight;   /* an M_WAKE of ours is on its way */
	uint64_t late_large;  /* our large calls in user memory that timed out */
	uint64_t close_at_ns; /* M_CLOSEME: close then (0: not asked) */
	uint64_t ow_seq[2], ow_ok[2], ow_hash[2];
	bool probed, audited, drained;
	bool probe_inflight, audit_inflight;
	uint64_t probe_until_ns;
	struct tern_session_counters cnt; /* read at its end */
	bool has_cnt;
};

enum held_kind {
	H_DEFERRED = 1,
	H_ONEWAY,
	H_BATCH,
};

/* A request this side's handler kept: deferred, or held with tern_req_hold(). */
struct held {
	uint8_t kind;
	tern_req *req;
	struct csess *cs;
	uint64_t due_ns; /* UINT64_MAX: a long-poll (until M_WAKE) or abandoned (until drain) */
	struct chaos_hdr h;
	const uint8_t *in; /* its bytes, checked again at release */
	size_t in_len;
	void *out; /* deferred, acquired at once */
	size_t out_cap;
	bool acquired;
};

/* What this side received of one peer stream's one-way messages. */
struct rstream {
	uint64_t stream;
	struct chaos_audit au;
};

/* Registered memory for large requests and reply buffers: power-of-two blocks. */
#define ARENA_MIN_SHIFT 12
#define ARENA_CLASSES	40
struct arena {
	uint8_t *base;
	size_t size, bump;
	tern_mr *mr;
	size_t *free[ARENA_CLASSES];
	uint32_t nfree[ARENA_CLASSES], cap[ARENA_CLASSES];
};

struct agent {
	int id;
	bool single; /* the only agent of its process */
	bool dying;  /* mem:// kill: callbacks of the context's end are not checked */
	tern_ctx *ctx;
	uv_timer_t tick; /* wakes a blocking loop turn every millisecond */
	/*
	 * rng draws the operations and nothing else, so that the schedule
	 * does not depend on timing; crng draws what timing decides when
	 * (connections, the order of releases).
	 */
	struct chaos_rng rng, crng;
	uint64_t seed_base; /* payload seeds: a function of the call */
	struct chaos_trace *tr;
	struct agent_stats st;
	enum agent_phase phase;
	uint64_t phase_ns;
	uint64_t ops_target;
	uint32_t depth;	      /* calls this agent keeps in flight at most */
	uint64_t progress_ns; /* the last operation or completion */
	uint64_t go_ns;	      /* the first operation */
	uint64_t stop_calls;
	/* server */
	tern_listener *l[CHAOS_NLISTEN];
	/* client */
	const char *uris[CHAOS_NLISTEN];
	uint32_t connecting;
	uint64_t next_connect_ns;
	struct csess *sessions;
	uint32_t serials;
	/* calls */
	struct ccall *calls[CALLS_CAP];
	uint64_t next_id;
	uint32_t outstanding;
	uint64_t large_inflight;
	/* requests held by handlers */
	struct held *held;
	uint32_t nheld, held_cap;
	struct rstream *rs;
	uint32_t nrs, rs_cap;
	/* reply bytes of raw handlers: plain, and registered (copied all the same) */
	uint8_t *scratch, *rscratch;
	size_t scratch_len, rscratch_len;
	tern_mr *rscratch_mr;
	struct arena arena;
	struct chaos_audit audit_reply;
	uint64_t max_msg;
};

static const int chaos_errs[] = {
	-EIO,
	-EINVAL,
	-EPERM,
	-ENOENT,
	-ECONNRESET,
	-ETIMEDOUT,
	-ECANCELED,
	-EMSGSIZE,
	-EAGAIN,
	TERN_EREMOTE,
	TERN_ENOMETHOD,
	-1,
	-(TERN_ERRNO_BASE + 999),  /* the last code that crosses the wire */
	-(TERN_ERRNO_BASE + 1000), /* arrives as TERN_EREMOTE */
	-100000,		   /* too */
};

static int clamp_status(int err)
{
	return err <= -1 && err >= -(TERN_ERRNO_BASE + 999) ? err : TERN_EREMOTE;
}

static const char *method_name(uint32_t m)
{
	static const char *const names[] = {"RAW",     "INPLACE", "DEFERRED", "BATCH",	 "ONEWAY",
					    "OWBATCH", "WAKE",	  "AUDIT",    "CLOSEME", "NOPE"};

	return m >= M_RAW && m <= M_NOPE ? names[m - M_RAW] : "?";
}

static const char *action_name(uint8_t act)
{
	static const char *const names[] = {"?", "ok", "err", "echo", "longpoll", "abandon"};

	return act <= ACT_ABANDON ? names[act] : "?";
}

static uint64_t mn64(uint64_t a, uint64_t b)
{
	return a < b ? a : b;
}

static void *xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (!p) {
		chaos_log("out of memory (%zu bytes)", n);
		abort();
	}
	return p;
}

/* ---- the arena ------------------------------------------------------------- */

static int arena_class(size_t len)
{
	int c = ARENA_MIN_SHIFT;

	while (c < ARENA_CLASSES && ((size_t)1 << c) < len)
		c++;
	return c;
}

/* A block of at least @len bytes of registered memory, or NULL (then plain memory serves). */
static void *arena_get(struct arena *ar, size_t len, int *cls)
{
	int c = arena_class(len);
	size_t sz;

	if (!ar->base || c >= ARENA_CLASSES)
		return NULL;
	if (ar->nfree[c]) {
		*cls = c;
		return ar->base + ar->free[c][--ar->nfree[c]];
	}
	sz = (size_t)1 << c;
	if (sz > ar->size - ar->bump)
		return NULL;
	*cls = c;
	ar->bump += sz;
	return ar->base + ar->bump - sz;
}

static void arena_put(struct arena *ar, void *p, int c)
{
	if (ar->nfree[c] == ar->cap[c]) {
		ar->cap[c] = ar->cap[c] ? 2 * ar->cap[c] : 16;
		ar->free[c] = realloc(ar->free[c], ar->cap[c] * sizeof(size_t));
		if (!ar->free[c])
			abort();
	}
	ar->free[c][ar->nfree[c]++] = (size_t)((uint8_t *)p - ar->base);
}

/* Memory for a request or reply buffer: registered (@reg) when the arena has room. */
static uint8_t *buf_get(struct agent *a, size_t len, bool reg, int *cls)
{
	uint8_t *p = reg ? arena_get(&a->arena, len, cls) : NULL;

	if (p)
		return p;
	*cls = -1;
	return xmalloc(len);
}

static void buf_put(struct agent *a, uint8_t *p, int cls)
{
	if (!p)
		return;
	if (cls >= 0)
		arena_put(&a->arena, p, cls);
	else
		free(p);
}

/* ---- sessions --------------------------------------------------------------- */

static struct csess *csess_new(struct agent *a, bool server, int geom)
{
	struct csess *cs = calloc(1, sizeof(*cs));

	if (!cs)
		abort();
	cs->a = a;
	cs->serial = ++a->serials;
	cs->stream = (uint64_t)a->id << 32 | cs->serial;
	cs->server = server;
	cs->geom = geom;
	cs->peer = -1;
	cs->next = a->sessions;
	a->sessions = cs;
	return cs;
}

static bool csess_live(const struct csess *cs)
{
	return cs->s && cs->ready && !cs->closing && !cs->down;
}

static struct csess *session_of_req(tern_req *req)
{
	return tern_session_data(tern_req_session(req));
}

/* Read a session's counters before its handle goes, and check them. */
static void keep_counters(struct csess *cs)
{
	if (!cs->s)
		return;
	tern_session_counters(cs->s, &cs->cnt);
	cs->has_cnt = true;
	if (cs->cnt.protocol_errors)
		chaos_fail(cs->a->tr, "s%d.%u: %llu protocol errors between honest peers",
			   cs->a->id, cs->serial, (unsigned long long)cs->cnt.protocol_errors);
}

static const char *defect3_hint(const struct csess *cs)
{
	return cs->late_large ? " (this session had large calls in user memory time out: "
				"known defect 3, issue 13)"
			      : "";
}

static void session_down(struct csess *cs, int reason, const char *how)
{
	struct agent *a = cs->a;

	chaos_ev(a->tr, "s%d.%u %s: %s", a->id, cs->serial, how, tern_err_name(reason));
	keep_counters(cs);
	cs->down = true;
	cs->down_reason = reason;
	cs->s = NULL; /* freed once this callback returns */
	a->st.closes++;
	if (a->dying)
		return;
	if (reason == TERN_EPEER)
		chaos_fail(a->tr, "s%d.%u ended with TERN_EPEER between honest peers (%s)%s", a->id,
			   cs->serial, tern_ctx_last_error(a->ctx), defect3_hint(cs));
}

static void on_close(tern_session *s, int reason)
{
	struct csess *cs = tern_session_data(s);

	if (!cs)
		return; /* an accepted session the agent never saw */
	/* Only the peer's going, or (with a NULL close callback) our own close. */
	if (!cs->a->dying && reason != -ECONNRESET && !(cs->closing && cs->expect_on_close))
		chaos_fail(cs->a->tr,
			   "s%d.%u: on_close with %s (%d): not a documented reason (%s)%s",
			   cs->a->id, cs->serial, tern_err_name(reason), reason,
			   tern_ctx_last_error(cs->a->ctx), defect3_hint(cs));
	session_down(cs, reason, "on_close");
}

static void on_closed(tern_session *s, int reason)
{
	struct csess *cs = tern_session_data(s);

	/* 0 after tern_session_close(), or why it had failed already */
	if (!cs->a->dying && reason != 0 && reason != -ECONNRESET)
		chaos_fail(cs->a->tr, "s%d.%u: close callback with %s (%d)", cs->a->id, cs->serial,
			   tern_err_name(reason), reason);
	session_down(cs, reason, "closed");
}

static void close_session(struct csess *cs, bool null_cb)
{
	struct agent *a = cs->a;
	int rc;

	chaos_ev(a->tr, "s%d.%u close%s (%u calls in flight)", a->id, cs->serial,
		 null_cb ? " (no callback)" : "", cs->inflight);
	keep_counters(cs);
	cs->closing = true;
	cs->expect_on_close = null_cb;
	rc = tern_session_close(cs->s, null_cb ? NULL : on_closed);
	if (rc)
		chaos_fail(a->tr, "s%d.%u: tern_session_close: %s", a->id, cs->serial,
			   tern_strerror(rc));
}

static void on_connect(tern_session *s, int status)
{
	struct csess *cs = tern_session_data(s);
	struct agent *a = cs->a;

	a->connecting--;
	if (status) {
		cs->down = true;
		cs->s = NULL;
		if (a->dying)
			return;
		chaos_fail(a->tr, "s%d.%u: connect to %s failed: %s (%s)", a->id, cs->serial,
			   a->uris[cs->geom], tern_strerror(status), tern_ctx_last_error(a->ctx));
	}
	cs->ready = true;
	cs->max_payload = (uint32_t)tern_session_max_payload(s);
	a->st.sessions++;
	chaos_ev(a->tr, "s%d.%u connected to %s (%u x %u%s)", a->id, cs->serial, a->uris[cs->geom],
		 cs->n, chaos_geoms[cs->geom].slot_size, cs->nonblock ? ", nonblock" : "");
}

/*
 * How long a peer may keep a call past its deadline (and its cancel)
 * before the caller gives the session up.  Every hold here is short, but an
 * agent inside tern_call_sync() (up to its 10 s deadline) releases nothing
 * meanwhile: honest, slow, and not what the run is about.
 */
#define CHAOS_CANCEL_TIMEOUT_MS 60000

static void connect_one(struct agent *a)
{
	struct tern_service_ref svc = {.name = "Chaos", .schema_hash = 0x6368616f73ull};
	int geom = (int)rng_below(&a->crng, CHAOS_NLISTEN);
	struct csess *cs = csess_new(a, false, geom);
	struct tern_session_opts o = {
		.size = sizeof(o),
		.slot_size = chaos_geoms[geom].slot_size,
		.slot_count = chaos_geoms[geom].slot_count,
		.on_close = on_close,
		.data = cs,
		.max_msg = (uint32_t)a->max_msg,
		/* set-up under a full load, in an emulated VM: not what is tested */
		.connect_timeout_ms = 30000,
		.cancel_timeout_ms = CHAOS_CANCEL_TIMEOUT_MS,
	};
	tern_session *s;
	int rc;

	o.nonblock = rng_pct(&a->crng, 30);
	if (rng_pct(&a->crng, 30))
		o.queue_depth = (uint32_t)rng_range(&a->crng, 1, 8);
	if ((cfg.features & CF_DEADLINES) && rng_pct(&a->crng, 20))
		o.call_timeout_ms = (uint32_t)rng_range(&a->crng, 1000, 5000);
	if (rng_pct(&a->crng, 70)) {
		o.services = &svc;
		o.nservices = 1;
	}
	if ((cfg.features & CF_LARGE) && rng_pct(&a->crng, 15))
		o.max_staging = rng_range(&a->crng, 1, 4) * a->max_msg; /* runs out at times */
	cs->n = o.slot_count;
	cs->nonblock = o.nonblock;
	cs->default_timeout_ms = o.call_timeout_ms;
	rc = tern_connect(a->ctx, a->uris[geom], &o, on_connect, &s);
	if (rc)
		chaos_fail(a->tr, "tern_connect %s: %s (%s)", a->uris[geom], tern_strerror(rc),
			   tern_ctx_last_error(a->ctx));
	if (!cs->down)
		cs->s = s;
	a->connecting++;
	chaos_ev(a->tr, "s%d.%u connecting to %s", a->id, cs->serial, a->uris[geom]);
}

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	struct agent *a = tern_listener_data(l);
	struct csess *cs;
	int geom = 0;

	if (status) {
		/* A client killed while connecting, or one we refuse: its own
		 * side checks what it saw. */
		chaos_ev(a->tr, "accept refused: %s", tern_err_name(status));
		return;
	}
	for (int i = 0; i < CHAOS_NLISTEN; i++)
		if (a->l[i] == l)
			geom = i;
	cs = csess_new(a, true, geom);
	cs->s = s;
	cs->ready = true;
	cs->n = chaos_geoms[geom].slot_count;
	cs->max_payload = (uint32_t)tern_session_max_payload(s);
	cs->default_timeout_ms = geom == 1 && (cfg.features & CF_DEADLINES) ? 3000 : 0;
	cs->nonblock = geom == 2; /* the listener's options (agent_new) */
	tern_session_set_data(s, cs);
	a->st.sessions++;
	chaos_ev(a->tr, "s%d.%u accepted on listener %d from %s", a->id, cs->serial, geom,
		 tern_session_peer(s));
}

/* ---- calls: the table ------------------------------------------------------- */

static struct ccall *call_new(struct agent *a, struct csess *cs, uint8_t kind)
{
	struct ccall *c = calloc(1, sizeof(*c));

	if (!c)
		abort();
	/* ids are never reused; one whose place is taken is skipped */
	while (a->calls[a->next_id % CALLS_CAP])
		a->next_id++;
	c->id = a->next_id++;
	c->kind = kind;
	c->cs = cs;
	c->req_cls = c->rbuf_cls = -1;
	return c;
}

static void call_track(struct agent *a, struct ccall *c)
{
	a->calls[c->id % CALLS_CAP] = c;
	a->outstanding++;
	c->cs->inflight++;
}

static struct ccall *call_find(struct agent *a, uint64_t id)
{
	struct ccall *c = a->calls[id % CALLS_CAP];

	return c && c->id == id ? c : NULL;
}

static void call_free(struct agent *a, struct ccall *c)
{
	buf_put(a, c->req, c->req_cls);
	buf_put(a, c->rbuf, c->rbuf_cls);
	a->large_inflight -= c->budget;
	free(c);
}

static void call_untrack(struct agent *a, struct ccall *c)
{
	a->progress_ns = chaos_now_ns();
	a->calls[c->id % CALLS_CAP] = NULL;
	a->outstanding--;
	c->cs->inflight--;
}

static bool outstanding_room(struct agent *a)
{
	return a->outstanding + 2 < CALLS_CAP && a->outstanding < a->depth;
}

/* ---- calls: the outcome ------------------------------------------------------ */

/* Does @reply hold what the handler was told to write? */
static bool reply_right(struct ccall *c, const uint8_t *reply, size_t len, char *why, size_t wl)
{
	size_t bad;

	if (len != c->exp_len) {
		snprintf(why, wl, "reply of %zu bytes, expected %llu", len,
			 (unsigned long long)c->exp_len);
		return false;
	}
	if (c->role == R_AUDIT) {
		bad = SIZE_MAX; /* check_audit() reads it */
	} else if (c->h.action == ACT_ECHO) {
		if (c->h.len < sizeof(struct chaos_hdr)) {
			bad = chaos_check(reply, len, c->h.body_seed, 0); /* a ping */
		} else if (memcmp(reply, &c->h, sizeof(c->h))) {
			bad = 0;
		} else {
			bad = chaos_check(reply + sizeof(c->h), len - sizeof(c->h), c->h.body_seed,
					  sizeof(c->h));
			if (bad != SIZE_MAX)
				bad += sizeof(c->h);
		}
	} else {
		bad = chaos_check(reply, len, c->h.reply_seed, 0);
	}
	if (bad != SIZE_MAX) {
		snprintf(why, wl, "byte %zu of the %zu-byte reply is wrong", bad, len);
		return false;
	}
	if (c->rbuf && len && reply != c->rbuf) {
		snprintf(why, wl, "the reply is not in the reply buffer");
		return false;
	}
	return true;
}

static void call_wrong(struct agent *a, struct ccall *c, const char *what)
{
	a->st.wrong++;
	chaos_fail(a->tr,
		   "call #%llu (%s %s, request %llu, reply %llu, deadline %u ms, on s%d.%u "
		   "%u x %u%s) %s",
		   (unsigned long long)c->id, method_name(c->method), action_name(c->h.action),
		   (unsigned long long)c->h.len, (unsigned long long)c->h.reply_len, c->timeout_ms,
		   a->id, c->cs->serial, c->cs->n, chaos_geoms[c->cs->geom].slot_size,
		   c->cs->nonblock ? " nonblock" : "", what);
}

/* A local status: allowed only where its cause is there. */
static bool local_status_ok(struct agent *a, struct ccall *c, tern_session *s, int status,
			    char *why, size_t wl)
{
	uint64_t el = chaos_now_ns() - c->t0_ns;

	switch (status) {
	case -ETIMEDOUT:
		if (!c->timeout_ms || el < (uint64_t)c->timeout_ms * 1000000ull) {
			snprintf(why, wl, "-ETIMEDOUT after %.3f ms with a deadline of %u ms",
				 el / 1e6, c->timeout_ms);
			return false;
		}
		a->st.timeouts++;
		if (c->user_mem)
			c->cs->late_large++;
		return true;
	case -ECONNRESET:
		if (c->cs->closing || tern_session_is_ready(s)) {
			snprintf(why, wl, "-ECONNRESET on a session %s",
				 c->cs->closing ? "this side closed" : "still ready");
			return false;
		}
		a->st.resets++;
		return true;
	case -ECANCELED:
		if (!c->cs->closing && !a->dying) {
			snprintf(why, wl, "-ECANCELED, but this side closed nothing");
			return false;
		}
		a->st.canceled++;
		return true;
	case -ENOBUFS:
		if (!c->nobufs_local) {
			snprintf(why, wl, "-ENOBUFS for a call that needs no staging here");
			return false;
		}
		a->st.nobufs++;
		return true;
	case -EMSGSIZE:
		if (c->exp == EXP_LOCAL && c->exp_code == -EMSGSIZE)
			return true;
		snprintf(why, wl, "-EMSGSIZE from this side, not expected");
		return false;
	case TERN_EPEER:
		snprintf(why, wl, "TERN_EPEER between honest peers%s", defect3_hint(c->cs));
		return false;
	}
	snprintf(why, wl, "%s (%d) from this side: not a documented outcome", tern_err_name(status),
		 status);
	return false;
}

static void check_audit(struct agent *a, struct ccall *c, const void *reply, size_t len);

/* Which known defect a session that stopped working looks like. */
static const char *dead_hint(const struct csess *cs)
{
	if (cs->abandoned_total)
		return " (calls the peer never answered took its reservations: known defect 3, "
		       "issue 13)";
	if (!strcmp(cfg.transport, "rdma") && (cfg.features & CF_LONGPOLL))
		return " (our credits are stuck at the peer, long-polls were in the mix: known "
		       "defect 1, issue 13, strands reply slots on rdma)";
	return "";
}

static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct csess *cs = tern_session_data(s);
	struct agent *a = cs->a;
	uint64_t id = (uint64_t)(uintptr_t)user;
	struct ccall *c = call_find(a, id);
	int remote = tern_call_status_remote(s);
	char why[256] = "";
	bool ok = true;

	if (!c || c->kind != K_CALL) {
		a->st.dup++;
		chaos_fail(a->tr,
			   "s%d.%u: a callback for call #%llu, which is not in flight "
			   "(completed already, or never made)",
			   a->id, cs->serial, (unsigned long long)id);
	}
	chaos_ev(a->tr, "s%d.%u cb #%llu %s%s len %zu after %.3f ms", a->id, cs->serial,
		 (unsigned long long)id, tern_err_name(status), remote ? " (remote)" : "", len,
		 (chaos_now_ns() - c->t0_ns) / 1e6);
	if (c->issuing)
		call_wrong(a, c, "ran its callback before tern_call returned");
	if (c->cs != cs)
		call_wrong(a, c, "completed on another session");
	if (a->dying) {
		/* the context is going: -ECANCELED, nothing to check */
	} else if (status == 0) {
		if (c->exp == EXP_OK || c->exp == EXP_RESET) {
			ok = reply_right(c, reply, len, why, sizeof(why));
		} else {
			snprintf(why, sizeof(why), "succeeded, expected %s (%s)",
				 tern_err_name(c->exp_code),
				 c->exp == EXP_LOCAL ? "local" : "remote");
			ok = false;
		}
		if (ok) {
			a->st.ok++;
			if (c->exp_len > cs->max_payload || c->h.len > cs->max_payload)
				a->st.large_bytes += c->exp_len + c->h.len;
		}
	} else if (remote) {
		if (c->exp == EXP_REMOTE && status == c->exp_code) {
			char want[64];

			snprintf(want, sizeof(want), "chaos #%llu", (unsigned long long)c->id);
			if ((c->h.flags & CH_ERRMSG) && c->h.action == ACT_ERR &&
			    (len != strlen(want) || memcmp(reply, want, len))) {
				snprintf(why, sizeof(why),
					 "error message \"%.*s\", expected \"%s\"",
					 (int)(len < 100 ? len : 100), (const char *)reply, want);
				ok = false;
			}
			a->st.remote_err++;
		} else if (status == -ENOBUFS && c->nobufs_remote) {
			a->st.nobufs++;
		} else {
			snprintf(why, sizeof(why), "%s (%d) from the peer, expected %s%s",
				 tern_err_name(status), status,
				 c->exp == EXP_REMOTE ? tern_err_name(c->exp_code) : "success",
				 status == -EAGAIN && (c->h.len > cs->max_payload ||
						       c->exp_len > cs->max_payload)
					 ? " (a large call refused: known defect 2, issue 13?)"
					 : "");
			ok = false;
		}
	} else {
		ok = local_status_ok(a, c, s, status, why, sizeof(why));
	}
	if (!ok)
		call_wrong(a, c, why);
	if (c->role == R_AUDIT && status == 0)
		check_audit(a, c, reply, len);
	if (c->role == R_PROBE) {
		cs->probe_inflight = false;
		if (status && tern_session_is_ready(s))
			chaos_fail(
				a->tr,
				"s%d.%u is silently dead: a plain call after traffic stopped got "
				"%s (%u of our calls on it were abandoned by the peer)%s",
				a->id, cs->serial, tern_err_name(status), cs->abandoned_total,
				dead_hint(cs));
		cs->probed = true; /* it works, or it ended (and said why) */
	}
	if (c->role == R_AUDIT) {
		cs->audit_inflight = false;
		cs->audited = status == 0 || !tern_session_is_ready(s);
		if (!cs->audited)
			call_wrong(a, c, "the audit failed on a working session");
	}
	if (c->role == R_WAKE) {
		cs->wake_inflight = false;
		if (status != 0 && tern_session_is_ready(s))
			call_wrong(a, c, "the wake-up failed on a working session");
	}
	if (c->h.action == ACT_LONGPOLL)
		cs->longpolls--;
	if (c->h.action == ACT_ABANDON)
		cs->abandoned--;
	call_untrack(a, c);
	call_free(a, c);
}

/* ---- calls: making them ------------------------------------------------------ */

struct plan {
	uint32_t method;
	uint8_t action, flags;
	int32_t err;
	uint64_t req_len, reply_len;
	uint32_t hold_us;
	uint32_t timeout_ms; /* per call (0: the session's) */
	bool req_reg;	     /* a large request from registered memory */
	int rbuf;	     /* 0: none, 1: plain, 2: registered */
	size_t reply_cap;
	bool acquire; /* tern_call_acquire + commit (small requests only) */
	uint8_t role;
};

/*
 * Whether a call's reply buffer is offered to the server (a descriptor in
 * the request), and whether its request then travels by descriptor too:
 * the reply buffer's descriptor takes TERN_BULK_DESC_SIZE bytes of the
 * slot, so a request that fits a slot alone may not fit beside it
 * (rpc/client.c, issue_bulk()).
 */
static bool plan_rdesc(const struct agent *a, const struct csess *cs, const struct plan *p)
{
	return p->rbuf && mn64(p->reply_cap, a->max_msg) > cs->max_payload;
}

static bool plan_req_large(const struct agent *a, const struct csess *cs, const struct plan *p)
{
	return p->req_len > cs->max_payload - (plan_rdesc(a, cs, p) ? chaos_bulk_desc_size() : 0);
}

/* The one right outcome of a call, from what its handler is told. */
static void plan_expect(struct agent *a, struct ccall *c, const struct plan *p)
{
	struct csess *cs = c->cs;
	uint64_t rlen = p->action == ACT_ECHO ? p->req_len : p->reply_len;
	uint64_t offer = p->rbuf ? mn64(p->reply_cap, a->max_msg) : 0;
	bool rdesc = plan_rdesc(a, cs, p), req_large = plan_req_large(a, cs, p);
	uint64_t server_cap;

	c->exp_len = rlen;
	c->nobufs_remote = req_large || rdesc;
	c->nobufs_local = (req_large && c->req_cls < 0) || (rdesc && c->rbuf_cls < 0);
	c->user_mem = (req_large && c->req_cls >= 0) || (rdesc && c->rbuf_cls >= 0);
	if (p->method == M_CLOSEME) {
		c->exp = EXP_RESET;
		return;
	}
	if (p->method == M_NOPE || p->method == M_ONEWAY) {
		c->exp = EXP_REMOTE;
		c->exp_code = TERN_ENOMETHOD;
		return;
	}
	if (p->action == ACT_ERR) {
		c->exp = EXP_REMOTE;
		c->exp_code = clamp_status(p->err);
		return;
	}
	server_cap = p->method == M_BATCH ? cs->max_payload : rdesc ? offer : cs->max_payload;
	if (rlen > server_cap) {
		c->exp = EXP_REMOTE;
		c->exp_code = -EMSGSIZE;
		return;
	}
	if (p->rbuf && !rdesc && rlen > p->reply_cap) {
		c->exp = EXP_LOCAL;
		c->exp_code = -EMSGSIZE;
		return;
	}
	c->exp = EXP_OK;
}

/* Write a request: its header, then body bytes (or a ping's bytes). */
static void fill_request(uint8_t *p, const struct chaos_hdr *h)
{
	if (h->len < sizeof(*h)) {
		chaos_fill(p, h->len, h->body_seed, 0);
		return;
	}
	memcpy(p, h, sizeof(*h));
	chaos_fill(p + sizeof(*h), h->len - sizeof(*h), h->body_seed, sizeof(*h));
}

/* Make a call as @p says; its outcome is checked in on_reply(). */
static void make_call(struct agent *a, struct csess *cs, const struct plan *p)
{
	struct ccall *c = call_new(a, cs, K_CALL);
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = p->timeout_ms};
	uint64_t large = 0;
	int rc;

	c->role = p->role;
	c->method = p->method;
	c->h = (struct chaos_hdr){
		.magic = CHAOS_MAGIC,
		.action = p->action,
		.flags = p->flags,
		.stream = cs->stream,
		.id = c->id,
		.body_seed = chaos_mix(a->seed_base + 2 * c->id),
		.reply_seed = chaos_mix(a->seed_base + 2 * c->id + 1),
		.len = p->req_len,
		.reply_len = p->reply_len,
		.err = p->err,
		.hold_us = p->hold_us,
	};
	if (plan_req_large(a, cs, p))
		large += p->req_len;
	if (p->rbuf) {
		c->rbuf = buf_get(a, p->reply_cap, p->rbuf == 2, &c->rbuf_cls);
		c->reply_cap = p->reply_cap;
		o.reply_buf = c->rbuf;
		o.reply_cap = c->reply_cap;
		if (p->reply_cap > cs->max_payload)
			large += p->reply_cap;
	}
	c->budget = large;
	a->large_inflight += large;
	c->timeout_ms = p->timeout_ms ? p->timeout_ms : cs->default_timeout_ms;
	c->t0_ns = chaos_now_ns();

	if (p->acquire) {
		tern_callslot *slot;
		void *buf;
		size_t cap;

		rc = tern_call_acquire(cs->s, &buf, &cap, &slot);
		if (rc == 0) {
			if (cap < p->req_len)
				chaos_fail(a->tr,
					   "tern_call_acquire gave %zu bytes, the slot holds %u",
					   cap, cs->max_payload);
			plan_expect(a, c, p);
			fill_request(buf, &c->h);
			c->issuing = true;
			call_track(a, c);
			rc = tern_call_commit(slot, p->method, p->req_len, on_reply,
					      (void *)(uintptr_t)c->id, &o);
			c->issuing = false;
			if (rc) {
				call_untrack(a, c);
				chaos_fail(a->tr, "tern_call_commit on s%d.%u: %s", a->id,
					   cs->serial, tern_strerror(rc));
			}
		}
	} else {
		c->req =
			buf_get(a, p->req_len, p->req_reg && plan_req_large(a, cs, p), &c->req_cls);
		plan_expect(a, c, p);
		fill_request(c->req, &c->h);
		c->issuing = true;
		call_track(a, c);
		rc = tern_call(cs->s, p->method, c->req, p->req_len, on_reply,
			       (void *)(uintptr_t)c->id, &o);
		c->issuing = false;
		if (rc)
			call_untrack(a, c);
	}
	chaos_ev(a->tr,
		 "s%d.%u call #%llu %s %s req %llu%s reply %llu%s%s cap %zu deadline %u ms "
		 "hold %u us%s: %s",
		 a->id, cs->serial, (unsigned long long)c->id, method_name(p->method),
		 action_name(p->action), (unsigned long long)p->req_len,
		 c->req_cls >= 0 ? " (reg)" : "", (unsigned long long)p->reply_len,
		 p->rbuf ? " buf" : "", p->rbuf == 2 && c->rbuf_cls >= 0 ? " (reg)" : "",
		 c->reply_cap, c->timeout_ms, p->hold_us, p->acquire ? " acquired" : "",
		 tern_err_name(rc));
	if (rc == 0) {
		a->st.calls++;
		if (p->action == ACT_LONGPOLL)
			cs->longpolls++;
		if (p->action == ACT_ABANDON) {
			cs->abandoned++;
			cs->abandoned_total++;
		}
		return;
	}
	/* Refused at once: only for a documented reason. */
	a->st.refused++;
	switch (rc) {
	case -EAGAIN:
		if (!cs->nonblock && !p->acquire)
			call_wrong(a, c, "tern_call: -EAGAIN in wait mode");
		break;
	case -ENOBUFS: /* the wait queue is full, or staging ran out */
		if (cs->nonblock && !c->nobufs_local)
			call_wrong(a, c, "tern_call: -ENOBUFS with no queue and no staging");
		break;
	case -ENOTCONN:
		if (tern_session_is_ready(cs->s))
			call_wrong(a, c, "tern_call: -ENOTCONN on a ready session");
		break;
	default: {
		char why[96];

		snprintf(why, sizeof(why), "tern_call refused it with %s", tern_err_name(rc));
		call_wrong(a, c, why);
	}
	}
	call_free(a, c);
}

/* ---- one-way messages: sending -------------------------------------------------- */

static void ow_count(struct csess *cs, int m, uint64_t seq)
{
	cs->ow_ok[m]++;
	cs->ow_hash[m] += chaos_mix(seq);
	cs->a->st.oneway_sent++;
}

static void on_sent(tern_session *s, int status, void *user)
{
	struct csess *cs = tern_session_data(s);
	struct agent *a = cs->a;
	uint64_t id = (uint64_t)(uintptr_t)user;
	struct ccall *c = call_find(a, id);
	char why[128] = "";
	bool ok = true;

	if (!c || c->kind != K_ONEWAY) {
		a->st.dup++;
		chaos_fail(a->tr, "s%d.%u: a send callback for message #%llu, not queued", a->id,
			   cs->serial, (unsigned long long)id);
	}
	chaos_ev(a->tr, "s%d.%u sent #%llu seq %llu: %s", a->id, cs->serial, (unsigned long long)id,
		 (unsigned long long)c->h.id, tern_err_name(status));
	if (c->issuing)
		call_wrong(a, c, "ran its send callback before tern_send returned");
	if (status == 0) {
		ow_count(cs, c->ow_m, c->h.id);
	} else if (!a->dying) {
		if (status == -ETIMEDOUT || status == -ECONNRESET || status == -ECANCELED) {
			ok = local_status_ok(a, c, s, status, why, sizeof(why));
		} else {
			snprintf(why, sizeof(why), "send callback with %s", tern_err_name(status));
			ok = false;
		}
	}
	if (!ok)
		call_wrong(a, c, why);
	call_untrack(a, c);
	call_free(a, c);
}

static void send_oneway(struct agent *a, struct csess *cs, uint32_t method, uint64_t len,
			uint8_t flags, uint32_t hold_us, int api)
{
	int m = method == M_OWBATCH;
	struct chaos_hdr h = {
		.magic = CHAOS_MAGIC,
		.action = ACT_OK,
		.flags = flags,
		.stream = cs->stream,
		.id = cs->ow_seq[m] + 1, /* taken only if the message goes */
		.body_seed = chaos_mix(cs->stream * 3 + (uint64_t)m + 4 * (cs->ow_seq[m] + 1)),
		.len = len,
		.hold_us = hold_us,
	};
	struct ccall *c = NULL;
	int rc;

	if (api == 2 && (cfg.features & CF_ACQUIRE)) {
		tern_callslot *slot;
		void *buf;
		size_t cap;

		rc = tern_send_acquire(cs->s, &buf, &cap, &slot);
		if (rc == 0) {
			fill_request(buf, &h);
			rc = tern_send_commit(slot, method, len);
			if (rc)
				chaos_fail(a->tr, "tern_send_commit on s%d.%u: %s", a->id,
					   cs->serial, tern_strerror(rc));
		}
	} else if (api == 1) {
		uint8_t *tmp = xmalloc(len);

		fill_request(tmp, &h);
		rc = tern_send(cs->s, method, tmp, len, NULL, NULL);
		free(tmp);
	} else {
		c = call_new(a, cs, K_ONEWAY);
		c->h = h;
		c->method = method;
		c->ow_m = m;
		c->timeout_ms = cs->default_timeout_ms;
		c->t0_ns = chaos_now_ns();
		c->req = xmalloc(len);
		fill_request(c->req, &h);
		c->issuing = true;
		call_track(a, c);
		rc = tern_send(cs->s, method, c->req, len, on_sent, (void *)(uintptr_t)c->id);
		c->issuing = false;
		if (rc != TERN_QUEUED)
			call_untrack(a, c);
	}
	chaos_ev(a->tr, "s%d.%u send %s seq %llu len %llu%s: %s", a->id, cs->serial,
		 method_name(method), (unsigned long long)h.id, (unsigned long long)len,
		 flags & CH_HOLD ? " (hold)" : "",
		 rc == TERN_QUEUED ? "queued" : tern_err_name(rc));
	if (rc == 0 || rc == TERN_QUEUED)
		cs->ow_seq[m] = h.id;
	if (rc == 0)
		ow_count(cs, m, h.id);
	if (rc == TERN_QUEUED) {
		if (cs->nonblock || !c)
			chaos_fail(a->tr, "s%d.%u: tern_send queued a message %s", a->id,
				   cs->serial,
				   cs->nonblock ? "on a nonblock session" : "without a callback");
		return;
	}
	if (rc && rc != -EAGAIN && rc != -ENOBUFS &&
	    !(rc == -ENOTCONN && !tern_session_is_ready(cs->s)))
		chaos_fail(a->tr, "s%d.%u: tern_send refused a message with %s", a->id, cs->serial,
			   tern_err_name(rc));
	if (rc == -ENOBUFS && (cs->nonblock || !c))
		chaos_fail(a->tr, "s%d.%u: tern_send -ENOBUFS with nothing to queue", a->id,
			   cs->serial);
	if (rc)
		a->st.refused++;
	if (c)
		call_free(a, c);
}

/* ---- serving: requests ------------------------------------------------------ */

static void serve_wrong(struct agent *a, struct csess *cs, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

static void serve_wrong(struct agent *a, struct csess *cs, const char *fmt, ...)
{
	char why[256];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(why, sizeof(why), fmt, ap);
	va_end(ap);
	a->st.wrong++;
	chaos_fail(a->tr, "serving s%d.%u: %s", a->id, cs ? cs->serial : 0, why);
}

/*
 * Check a request's bytes against its header.  Return 0 for a request with
 * a header (copied to @h), 1 for a ping (shorter than a header).
 */
static int parse(struct agent *a, struct csess *cs, uint32_t method, const void *in, size_t len,
		 struct chaos_hdr *h)
{
	size_t bad;

	if (len < sizeof(*h)) {
		if (method != M_RAW && method != M_INPLACE)
			serve_wrong(a, cs, "%s: a %zu-byte request", method_name(method), len);
		memset(h, 0, sizeof(*h));
		return 1;
	}
	memcpy(h, in, sizeof(*h));
	if (h->magic != CHAOS_MAGIC || h->len != len)
		serve_wrong(a, cs,
			    "%s: a request of %zu bytes whose header says magic %08x, %llu "
			    "bytes (stream %llx, #%llu)",
			    method_name(method), len, h->magic, (unsigned long long)h->len,
			    (unsigned long long)h->stream, (unsigned long long)h->id);
	bad = chaos_check((const uint8_t *)in + sizeof(*h), len - sizeof(*h), h->body_seed,
			  sizeof(*h));
	if (bad != SIZE_MAX)
		serve_wrong(a, cs,
			    "%s: byte %zu of the %zu-byte request #%llu from stream %llx is "
			    "wrong",
			    method_name(method), bad + sizeof(*h), len, (unsigned long long)h->id,
			    (unsigned long long)h->stream);
	/* One stream per session: its peer names itself in every message. */
	if (cs->peer_stream && cs->peer_stream != h->stream)
		serve_wrong(a, cs, "%s: stream %llx on the session of stream %llx",
			    method_name(method), (unsigned long long)h->stream,
			    (unsigned long long)cs->peer_stream);
	cs->peer_stream = h->stream;
	cs->peer = (int)(h->stream >> 32);
	a->st.served++;
	chaos_ev(a->tr, "s%d.%u serve %s #%llu %s of stream %llx: req %zu reply %llu%s%s", a->id,
		 cs->serial, method_name(method), (unsigned long long)h->id, action_name(h->action),
		 (unsigned long long)h->stream, len, (unsigned long long)h->reply_len,
		 h->flags & CH_REG_REPLY ? " (reg)" : "", h->flags & CH_HOLD ? " (hold)" : "");
	return 0;
}

static void set_errmsg(tern_req *req, const struct chaos_hdr *h)
{
	char msg[48];

	if (!(h->flags & CH_ERRMSG))
		return;
	snprintf(msg, sizeof(msg), "chaos #%llu", (unsigned long long)h->id);
	tern_req_set_error(req, msg);
}

/*
 * A raw reply sent with no copy (tern_req_on_reply_sent()): its arena block
 * stays as it is until the runtime says it is done with it, then goes back
 * to the arena, whose next user rewrites it: a read after that reaches the
 * caller as wrong bytes.
 */
#define REG_REPLY_MAGIC 0x5245475245504cull
struct reg_reply {
	uint64_t magic;
	struct agent *a;
	uint8_t *p;
	int cls;
};

static void reg_reply_sent(tern_session *s, int status, void *user)
{
	struct reg_reply *rr = user;

	(void)s;
	if (rr->magic != REG_REPLY_MAGIC) /* (a second call reads freed memory: ASan) */
		abort();
	/* 0, or the documented reasons it did not go */
	if (status > 0)
		chaos_fail(rr->a->tr, "a raw reply's sent callback with status %d", status);
	rr->magic = 0;
	arena_put(&rr->a->arena, rr->p, rr->cls);
	free(rr);
}

/* A registered block for a large raw reply, kept until it is sent; NULL: none free. */
static const uint8_t *raw_reply_nocopy(struct agent *a, tern_req *req, const struct chaos_hdr *h)
{
	struct reg_reply *rr;
	int cls;
	uint8_t *p = arena_get(&a->arena, (size_t)h->reply_len, &cls);

	if (!p)
		return NULL;
	rr = xmalloc(sizeof(*rr));
	*rr = (struct reg_reply){.magic = REG_REPLY_MAGIC, .a = a, .p = p, .cls = cls};
	if (tern_req_on_reply_sent(req, reg_reply_sent, rr))
		chaos_fail(a->tr, "tern_req_on_reply_sent refused a raw handler's request");
	chaos_fill(p, h->reply_len, h->reply_seed, 0);
	return p;
}

/*
 * Reply bytes for a raw handler: valid until it returns (struct tern_iov),
 * registered or not; the next handler rewrites them.  Half the registered
 * ones (CH_REG_REPLY) go with no copy instead, from a block of their own.
 */
static const uint8_t *raw_reply(struct agent *a, tern_req *req, const struct chaos_hdr *h)
{
	bool reg = (h->flags & CH_REG_REPLY) != 0;
	const uint8_t *nocopy = reg && (h->reply_seed & 1) ? raw_reply_nocopy(a, req, h) : NULL;

	if (nocopy)
		return nocopy;
	uint8_t **buf = reg ? &a->rscratch : &a->scratch;
	size_t *have = reg ? &a->rscratch_len : &a->scratch_len;

	if (h->reply_len > *have) {
		size_t n = h->reply_len < 65536 ? 65536 : (size_t)h->reply_len;

		if (reg && a->rscratch_mr)
			tern_mem_deregister(a->rscratch_mr);
		a->rscratch_mr = NULL;
		free(*buf);
		*buf = xmalloc(n);
		*have = n;
		if (reg && tern_mem_register(a->ctx, *buf, n, &a->rscratch_mr))
			chaos_fail(a->tr, "tern_mem_register %zu bytes failed", n);
	}
	chaos_fill(*buf, h->reply_len, h->reply_seed, 0);
	return *buf;
}

static int h_raw(tern_req *req, const void *in, size_t len, struct tern_iov *out, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;

	if (parse(a, cs, M_RAW, in, len, &h) || h.action == ACT_ECHO) {
		out->base = in;
		out->len = len;
		return 0;
	}
	if (h.action == ACT_ERR) {
		set_errmsg(req, &h);
		return h.err;
	}
	out->base = raw_reply(a, req, &h);
	out->len = h.reply_len;
	return 0;
}

static ssize_t h_inplace(tern_req *req, const void *in, size_t len, void *out, size_t cap,
			 void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;

	if (parse(a, cs, M_INPLACE, in, len, &h) || h.action == ACT_ECHO) {
		if (len <= cap)
			memcpy(out, in, len);
		return (ssize_t)len; /* more than cap: the engine's -EMSGSIZE */
	}
	if (h.action == ACT_ERR) {
		set_errmsg(req, &h);
		return h.err;
	}
	if (h.reply_len <= cap)
		chaos_fill(out, h.reply_len, h.reply_seed, 0);
	return (ssize_t)h.reply_len;
}

static void held_push(struct agent *a, const struct held *e)
{
	if (a->nheld == a->held_cap) {
		a->held_cap = a->held_cap ? 2 * a->held_cap : 64;
		a->held = realloc(a->held, a->held_cap * sizeof(*a->held));
		if (!a->held)
			abort();
	}
	a->held[a->nheld++] = *e;
}

static uint64_t due_after(uint32_t hold_us)
{
	return chaos_now_ns() + (uint64_t)hold_us * 1000ull;
}

static int h_deferred(tern_req *req, const void *in, size_t len, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct held e = {.kind = H_DEFERRED, .req = req, .cs = cs, .in = in, .in_len = len};

	parse(a, cs, M_DEFERRED, in, len, &e.h);
	if (e.h.action == ACT_ERR && e.h.hold_us == 0) {
		set_errmsg(req, &e.h);
		return e.h.err; /* fail at once */
	}
	e.due_ns = e.h.action == ACT_LONGPOLL || e.h.action == ACT_ABANDON ? UINT64_MAX
									   : due_after(e.h.hold_us);
	if ((e.h.flags & CH_EARLY_ACQ) && e.h.action != ACT_ERR) {
		int rc = tern_reply_acquire(req, &e.out, &e.out_cap);

		if (rc == 0)
			e.acquired = true;
		else if (rc != -ENOBUFS && rc != -ENOMEM)
			serve_wrong(a, cs, "tern_reply_acquire in the handler: %s",
				    tern_err_name(rc));
	}
	held_push(a, &e);
	return 0;
}

/* Answer a deferred request (its hold is over). */
static void release_deferred(struct agent *a, struct held *e)
{
	uint64_t rlen = e->h.action == ACT_ECHO ? e->in_len : e->h.reply_len;
	int rc;

	if (e->h.action == ACT_ERR) {
		char msg[48];

		snprintf(msg, sizeof(msg), "chaos #%llu", (unsigned long long)e->h.id);
		rc = tern_reply_error(e->req, e->h.err, e->h.flags & CH_ERRMSG ? msg : NULL);
		if (rc && rc != -ECONNRESET)
			serve_wrong(a, e->cs, "tern_reply_error: %s", tern_err_name(rc));
		return;
	}
	if (!e->acquired) {
		rc = tern_reply_acquire(e->req, &e->out, &e->out_cap);
		if (rc == -ECONNRESET)
			return; /* the session went: the request is finished */
		if (rc == -ENOBUFS || rc == -ENOMEM) {
			/* no staging: the request stays pending, answer it so */
			rc = tern_reply_error(e->req, rc, "no staging");
			if (rc && rc != -ECONNRESET)
				serve_wrong(a, e->cs, "tern_reply_error: %s", tern_err_name(rc));
			return;
		}
		if (rc)
			serve_wrong(a, e->cs, "tern_reply_acquire: %s", tern_err_name(rc));
	}
	if (rlen <= e->out_cap) {
		if (e->h.action == ACT_ECHO)
			memcpy(e->out, e->in, rlen);
		else
			chaos_fill(e->out, rlen, e->h.reply_seed, 0);
	}
	rc = tern_reply_commit(e->req, rlen);
	if (rc == 0 || rc == -ECONNRESET || rc == -ENOBUFS || rc == -ENOMEM)
		return;
	if (rc == -EMSGSIZE && rlen > e->out_cap)
		return; /* what the caller asked for: the error reply went */
	serve_wrong(a, e->cs, "tern_reply_commit of %llu bytes (room %zu): %s",
		    (unsigned long long)rlen, e->out_cap, tern_err_name(rc));
}

/* ---- serving: one-way messages and batches ------------------------------------- */

static struct rstream *rstream_get(struct agent *a, uint64_t stream)
{
	for (uint32_t i = 0; i < a->nrs; i++)
		if (a->rs[i].stream == stream)
			return &a->rs[i];
	if (a->nrs == a->rs_cap) {
		a->rs_cap = a->rs_cap ? 2 * a->rs_cap : 16;
		a->rs = realloc(a->rs, a->rs_cap * sizeof(*a->rs));
		if (!a->rs)
			abort();
	}
	memset(&a->rs[a->nrs], 0, sizeof(a->rs[0]));
	a->rs[a->nrs].stream = stream;
	return &a->rs[a->nrs++];
}

/* A one-way message arrived: once, and after every earlier one of its stream. */
static void oneway_arrived(struct agent *a, struct csess *cs, int m, const struct chaos_hdr *h)
{
	struct rstream *r = rstream_get(a, h->stream);

	if (h->id <= r->au.last[m]) {
		a->st.dup++;
		serve_wrong(a, cs, "one-way %s seq %llu of stream %llx after seq %llu: %s",
			    m ? "OWBATCH" : "ONEWAY", (unsigned long long)h->id,
			    (unsigned long long)h->stream, (unsigned long long)r->au.last[m],
			    h->id == r->au.last[m] ? "delivered twice" : "out of order");
	}
	r->au.last[m] = h->id;
	r->au.count[m]++;
	r->au.hash[m] += chaos_mix(h->id);
	a->st.oneway_recv++;
}

static void hold_item(struct agent *a, struct csess *cs, uint8_t kind, tern_req *req,
		      const struct chaos_hdr *h, const void *in, size_t len)
{
	struct held e = {.kind = kind, .cs = cs, .h = *h, .in = in, .in_len = len};

	e.req = tern_req_hold(req);
	if (e.req != req)
		serve_wrong(a, cs, "tern_req_hold refused a %s",
			    kind == H_ONEWAY ? "one-way message" : "batch item");
	e.due_ns = due_after(h->hold_us);
	held_push(a, &e);
}

static void h_oneway(tern_req *req, const void *in, size_t len, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;

	parse(a, cs, M_ONEWAY, in, len, &h);
	oneway_arrived(a, cs, 0, &h);
	if (h.flags & CH_HOLD)
		hold_item(a, cs, H_ONEWAY, req, &h, in, len);
}

static void h_owbatch(struct tern_batch_item *items, size_t n, void *user)
{
	struct agent *a = user;

	for (size_t i = 0; i < n; i++) {
		struct csess *cs = session_of_req(items[i].req);
		struct chaos_hdr h;

		parse(a, cs, M_OWBATCH, items[i].in, items[i].in_len, &h);
		oneway_arrived(a, cs, 1, &h);
		if (h.flags & CH_HOLD)
			hold_item(a, cs, H_ONEWAY, items[i].req, &h, items[i].in, items[i].in_len);
	}
}

static void h_batch(struct tern_batch_item *items, size_t n, void *user)
{
	struct agent *a = user;

	for (size_t i = 0; i < n; i++) {
		struct tern_batch_item *it = &items[i];
		struct csess *cs = session_of_req(it->req);
		struct chaos_hdr h;
		uint64_t rlen;

		parse(a, cs, M_BATCH, it->in, it->in_len, &h);
		rlen = h.action == ACT_ECHO ? it->in_len : h.reply_len;
		if (h.action == ACT_ERR) {
			set_errmsg(it->req, &h);
			it->status = h.err;
		} else {
			if (rlen <= it->out_cap) {
				if (h.action == ACT_ECHO)
					memcpy(it->out, it->in, rlen);
				else
					chaos_fill(it->out, rlen, h.reply_seed, 0);
			}
			it->status = (ssize_t)rlen; /* over out_cap: the engine's -EMSGSIZE */
		}
		if (h.flags & CH_HOLD)
			hold_item(a, cs, H_BATCH, it->req, &h, it->in, it->in_len);
	}
}

static void release_item(struct agent *a, struct held *e)
{
	size_t bad = SIZE_MAX;
	int rc;

	/* a held slot keeps its bytes, unchanged, until released */
	if (memcmp(e->in, &e->h, sizeof(e->h)))
		bad = 0;
	else
		bad = chaos_check(e->in + sizeof(e->h), e->in_len - sizeof(e->h), e->h.body_seed,
				  sizeof(e->h));
	if (bad != SIZE_MAX)
		serve_wrong(a, e->cs, "byte %zu of a held %s (#%llu) changed while held", bad,
			    e->kind == H_ONEWAY ? "one-way message" : "batch item",
			    (unsigned long long)e->h.id);
	rc = tern_req_release(e->req);
	if (rc)
		serve_wrong(a, e->cs, "tern_req_release: %s", tern_err_name(rc));
}

static void release_held(struct agent *a, uint32_t i)
{
	struct held e = a->held[i];

	a->held[i] = a->held[--a->nheld];
	chaos_ev(a->tr, "release %s #%llu of stream %llx",
		 e.kind == H_DEFERRED ? action_name(e.h.action) : "held",
		 (unsigned long long)e.h.id, (unsigned long long)e.h.stream);
	if (e.kind == H_DEFERRED)
		release_deferred(a, &e);
	else
		release_item(a, &e);
}

/* Release what is due, in random order (hold times are random too). */
static void release_due(struct agent *a)
{
	uint64_t now = chaos_now_ns();
	uint32_t start, n = a->nheld;

	if (!n)
		return;
	/* an abandoned call its caller cancelled (its deadline passed) is
	 * answered now, as a long-poll server should: the caller gets its
	 * window back (tern_req_cancelled()) */
	for (uint32_t i = 0; i < n; i++) {
		struct held *e = &a->held[i];

		if (e->kind == H_DEFERRED && e->h.action == ACT_ABANDON &&
		    e->due_ns == UINT64_MAX && tern_req_cancelled(e->req))
			e->due_ns = 0;
	}
	start = (uint32_t)rng_below(&a->crng, n);
	for (uint32_t k = 0; k < n && a->nheld; k++) {
		uint32_t i = (start + k) % a->nheld;
		if (a->held[i].due_ns <= now)
			release_held(a, i);
	}
}

/* Make everything held of @kind due now (0: all kinds); @abandoned too or not. */
static void release_all(struct agent *a, bool abandoned, bool longpolls)
{
	for (uint32_t i = 0; i < a->nheld; i++) {
		struct held *e = &a->held[i];
		bool lp = e->kind == H_DEFERRED && e->h.action == ACT_LONGPOLL;
		bool ab = e->kind == H_DEFERRED && e->h.action == ACT_ABANDON;

		if ((lp && !longpolls) || (ab && !abandoned))
			continue;
		e->due_ns = 0;
	}
}

/* ---- serving: the control methods ----------------------------------------------- */

static int h_wake(tern_req *req, const void *in, size_t len, struct tern_iov *out, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;
	uint32_t woken = 0;

	(void)out;
	parse(a, cs, M_WAKE, in, len, &h);
	for (uint32_t i = 0; i < a->nheld; i++) {
		struct held *e = &a->held[i];
		if (e->kind == H_DEFERRED && e->h.action == ACT_LONGPOLL &&
		    e->h.stream == h.stream) {
			e->due_ns = 0;
			woken++;
		}
	}
	chaos_ev(a->tr, "s%d.%u wake stream %llx: %u long-polls", a->id, cs->serial,
		 (unsigned long long)h.stream, woken);
	return 0;
}

static int h_audit(tern_req *req, const void *in, size_t len, struct tern_iov *out, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;

	parse(a, cs, M_AUDIT, in, len, &h);
	a->audit_reply = rstream_get(a, h.stream)->au;
	out->base = &a->audit_reply;
	out->len = sizeof(a->audit_reply);
	return 0;
}

static int h_closeme(tern_req *req, const void *in, size_t len, struct tern_iov *out, void *user)
{
	struct agent *a = user;
	struct csess *cs = session_of_req(req);
	struct chaos_hdr h;

	(void)out;
	parse(a, cs, M_CLOSEME, in, len, &h);
	if (cs->closing || cs->down)
		return 0;
	if (h.flags & CH_CLOSE_INLINE)
		close_session(cs, false); /* inside its own handler */
	else
		cs->close_at_ns = due_after(h.hold_us);
	return 0;
}

/* The peer's record of what arrived of our one-way streams: exactly what went. */
static void check_audit(struct agent *a, struct ccall *c, const void *reply, size_t len)
{
	struct csess *cs = c->cs;
	struct chaos_audit au;

	if (len != sizeof(au))
		call_wrong(a, c, "an audit reply of the wrong size");
	memcpy(&au, reply, sizeof(au));
	for (int m = 0; m < 2; m++) {
		if (au.count[m] == cs->ow_ok[m] && au.hash[m] == cs->ow_hash[m])
			continue;
		if (au.count[m] < cs->ow_ok[m])
			a->st.lost++;
		else
			a->st.dup++;
		chaos_fail(a->tr,
			   "s%d.%u: one-way stream %s of %llx: %llu messages went (last seq "
			   "%llu), the peer got %llu (last seq %llu)%s",
			   a->id, cs->serial, m ? "OWBATCH" : "ONEWAY",
			   (unsigned long long)cs->stream, (unsigned long long)cs->ow_ok[m],
			   (unsigned long long)cs->ow_seq[m], (unsigned long long)au.count[m],
			   (unsigned long long)au.last[m],
			   au.count[m] == cs->ow_ok[m] ? " (other messages)" : "");
	}
	chaos_ev(a->tr, "s%d.%u audit: %llu + %llu one-way messages, all there", a->id, cs->serial,
		 (unsigned long long)au.count[0], (unsigned long long)au.count[1]);
}

/* ---- the generator ---------------------------------------------------------- */

/* Wake the long-polls the peer holds for @cs's stream (the call that releases them). */
static void send_wake(struct agent *a, struct csess *cs)
{
	/* a long deadline of its own: a session's default must not fail it */
	struct plan p = {.method = M_WAKE,
			 .action = ACT_OK,
			 .role = R_WAKE,
			 .req_len = sizeof(struct chaos_hdr),
			 .timeout_ms = 600000};
	uint64_t before = a->st.refused;

	if (!csess_live(cs) || !cs->longpolls || cs->wake_inflight)
		return;
	make_call(a, cs, &p);
	cs->wake_inflight = a->st.refused == before;
}

/* Wake one session's long-polls (the first that has some). */
static void wake_one(struct agent *a)
{
	for (struct csess *cs = a->sessions; cs; cs = cs->next) {
		if (csess_live(cs) && cs->longpolls && !cs->wake_inflight) {
			send_wake(a, cs);
			return;
		}
	}
}

enum op {
	OP_CALL,
	OP_CALL_ACQ,
	OP_SYNC,
	OP_LARGE,
	OP_ONEWAY,
	OP_BURST,
	OP_LONGPOLL,
	OP_WAKE,
	OP_ABANDON,
	OP_LATE_LARGE,
	OP_CLOSE,
	OP_CLOSEME,
	OP_CONNECT,
	OP_PAUSE,
	OP_COUNT
};

/* How often each operation comes, and the features it needs (all of them). */
static const struct {
	uint32_t weight;
	uint32_t needs;
} op_mix[OP_COUNT] = {
	[OP_CALL] = {400, 0},
	[OP_CALL_ACQ] = {60, CF_ACQUIRE},
	[OP_SYNC] = {5, 0},
	[OP_LARGE] = {60, CF_LARGE},
	[OP_ONEWAY] = {130, CF_ONEWAY},
	[OP_BURST] = {25, CF_BURST},
	[OP_LONGPOLL] = {15, CF_LONGPOLL},
	[OP_WAKE] = {20, CF_LONGPOLL},
	[OP_ABANDON] = {6, CF_ABANDON},
	[OP_LATE_LARGE] = {6, CF_LATE_LARGE | CF_LARGE},
	[OP_CLOSE] = {2, CF_CLOSE},
	[OP_CLOSEME] = {2, CF_CLOSE},
	[OP_CONNECT] = {3, CF_CLOSE},
	[OP_PAUSE] = {20, 0},
};

static uint32_t op_weight(struct agent *a, enum op op)
{
	bool client = a->id != 0;

	if ((op_mix[op].needs & cfg.features) != op_mix[op].needs)
		return 0;
	if (!client && !(cfg.features & CF_REVERSE) && op != OP_CLOSE && op != OP_PAUSE)
		return 0; /* the server only serves, and closes */
	if (op == OP_CONNECT && !client)
		return 0;
	/* a blocking call only where nothing else shares the thread */
	if (op == OP_SYNC && (!a->single || cfg.soak))
		return 0;
	if (op == OP_PAUSE && cfg.soak)
		return 0;
	return op_mix[op].weight;
}

static enum op pick_op(struct agent *a, uint64_t r)
{
	uint32_t total = 0, w[OP_COUNT];

	for (int i = 0; i < OP_COUNT; i++)
		total += w[i] = op_weight(a, (enum op)i);
	if (!total)
		return OP_PAUSE;
	r %= total;
	for (int i = 0; i < OP_COUNT; i++) {
		if (r < w[i])
			return (enum op)i;
		r -= w[i];
	}
	return OP_PAUSE;
}

static struct csess *pick_session(struct agent *a, uint64_t r)
{
	uint32_t n = 0;
	struct csess *cs;

	for (cs = a->sessions; cs; cs = cs->next)
		n += csess_live(cs);
	if (!n)
		return NULL;
	r %= n;
	for (cs = a->sessions; cs; cs = cs->next)
		if (csess_live(cs) && r-- == 0)
			return cs;
	return NULL;
}

/* A size from @lo to @hi, most of them small: log-uniform. */
static uint64_t log_size(struct chaos_rng *r, uint64_t lo, uint64_t hi)
{
	int bits = 0;
	uint64_t top;

	if (hi <= lo)
		return lo;
	while (bits < 63 && (1ull << bits) <= hi - lo)
		bits++;
	top = 1ull << rng_below(r, (uint64_t)bits + 1);
	return lo + rng_below(r, mn64(top, hi - lo + 1));
}

static uint32_t pick_timeout(struct chaos_rng *r)
{
	uint64_t x;

	if (!(cfg.features & CF_DEADLINES))
		return 0;
	x = rng_below(r, 100);
	if (x < 75)
		return 0;
	if (x < 85)
		return (uint32_t)rng_range(r, 1, 20); /* some expire */
	return (uint32_t)rng_range(r, 200, 5000);
}

static uint32_t pick_hold(struct chaos_rng *r)
{
	uint64_t x = rng_below(r, 100);

	if (x < 70)
		return (uint32_t)rng_below(r, 2000);
	if (x < 95)
		return (uint32_t)rng_range(r, 2000, 50000);
	return (uint32_t)rng_range(r, 50000, 300000);
}

/* A small call: any method, any action, a reply that fits (mostly). */
static void plan_small(struct csess *cs, struct chaos_rng *r, struct plan *p)
{
	static const uint32_t methods[] = {M_RAW, M_INPLACE, M_DEFERRED, M_BATCH};
	uint32_t mp = cs->max_payload;
	uint64_t x = rng_below(r, 100);

	memset(p, 0, sizeof(*p));
	p->method = methods[rng_below(r, (cfg.features & CF_BATCH) ? 4 : 3)];
	p->action = ACT_OK;
	if (x < 12)
		p->action = ACT_ECHO;
	else if (x < 22 && (cfg.features & CF_ERRORS))
		p->action = ACT_ERR;
	p->err = chaos_errs[rng_below(r, sizeof(chaos_errs) / sizeof(chaos_errs[0]))];
	if (rng_pct(r, 50))
		p->flags |= CH_ERRMSG;
	if (p->method == M_DEFERRED) {
		p->hold_us = pick_hold(r);
		if (rng_pct(r, 30))
			p->flags |= CH_EARLY_ACQ;
		if (p->action == ACT_ERR && rng_pct(r, 30))
			p->hold_us = 0; /* failed by the handler's return */
	}
	if (p->method == M_BATCH && (cfg.features & CF_HOLD) && rng_pct(r, 20)) {
		p->flags |= CH_HOLD;
		p->hold_us = pick_hold(r);
	}
	/* request: mostly small, sometimes the whole slot */
	x = rng_below(r, 100);
	if (x < 3 && (p->method == M_RAW || p->method == M_INPLACE)) {
		p->req_len = rng_below(r, sizeof(struct chaos_hdr)); /* a ping */
		p->action = ACT_ECHO;
	} else if (x < 8) {
		p->req_len = mp - rng_below(r, 2);
	} else {
		p->req_len = log_size(r, sizeof(struct chaos_hdr), mp);
	}
	/* reply */
	x = rng_below(r, 100);
	if (x < 5)
		p->reply_len = mp - rng_below(r, 2);
	else if (x < 8 && (cfg.features & CF_ERRORS))
		p->reply_len = mp + 1 + rng_below(r, 64); /* no room: -EMSGSIZE */
	else
		p->reply_len = log_size(r, 0, mp);
	if (rng_pct(r, 15)) {
		p->rbuf = 1;
		p->reply_cap = (size_t)(p->action == ACT_ECHO ? p->req_len : p->reply_len);
		if ((cfg.features & CF_ERRORS) && rng_pct(r, 20) && p->reply_cap)
			p->reply_cap -= 1 + rng_below(r, p->reply_cap); /* too small */
		else
			p->reply_cap += rng_below(r, 64);
		if (p->reply_cap > mp)
			p->reply_cap = mp; /* small calls offer no more than a slot */
	}
	p->timeout_ms = pick_timeout(r);
	if ((cfg.features & CF_ERRORS) && rng_pct(r, 2)) {
		p->method = rng_pct(r, 50) ? M_NOPE : M_ONEWAY; /* TERN_ENOMETHOD */
		p->action = ACT_OK;
	}
}

/* A large call: the request, the reply or both larger than a slot. */
static bool plan_large(struct agent *a, struct csess *cs, struct chaos_rng *r, struct plan *p,
		       uint64_t max)
{
	static const uint32_t methods[] = {M_RAW, M_INPLACE, M_DEFERRED, M_BATCH};
	uint32_t mp = cs->max_payload;
	uint64_t room =
		cfg.large_budget > a->large_inflight ? cfg.large_budget - a->large_inflight : 0;
	uint64_t x;

	memset(p, 0, sizeof(*p));
	max = mn64(max, mn64(cfg.max_large, room / 2));
	if (max <= mp)
		return false;
	p->method = methods[rng_below(r, 3)];
	if ((cfg.features & CF_BATCH) && rng_pct(r, 10))
		p->method = M_BATCH; /* a large request, a reply that fits a slot */
	x = rng_below(r, 100);
	p->action = x < 30 ? ACT_ECHO : (x < 36 && (cfg.features & CF_ERRORS)) ? ACT_ERR : ACT_OK;
	p->err = chaos_errs[rng_below(r, sizeof(chaos_errs) / sizeof(chaos_errs[0]))];
	x = rng_below(r, 3); /* 0: large request, 1: large reply, 2: both */
	p->req_len = x != 1 ? log_size(r, mp + 1, max) : log_size(r, sizeof(struct chaos_hdr), mp);
	p->reply_len = x != 0 ? log_size(r, mp + 1, max) : log_size(r, 0, mp);
	if (p->method == M_BATCH)
		p->reply_len = log_size(r, 0, mp);
	p->req_reg = rng_pct(r, 50);
	if (p->action == ACT_ECHO ? p->req_len > mp : p->reply_len > mp) {
		p->rbuf = rng_pct(r, 50) ? 2 : 1;
		p->reply_cap = (size_t)(p->action == ACT_ECHO ? p->req_len : p->reply_len);
		if ((cfg.features & CF_ERRORS) && rng_pct(r, 5))
			p->reply_cap -= 1; /* one byte short: -EMSGSIZE */
	} else if (rng_pct(r, 30)) {
		p->rbuf = rng_pct(r, 50) ? 2 : 1;
		p->reply_cap = (size_t)log_size(r, mp + 1, max); /* offered, not used */
	}
	if (p->method == M_DEFERRED)
		p->hold_us = pick_hold(r);
	if (p->method == M_RAW && rng_pct(r, 50) && (cfg.features & CF_RAW_REG))
		p->flags |= CH_REG_REPLY;
	if ((cfg.features & CF_DEADLINES) && rng_pct(r, 15))
		p->timeout_ms = (uint32_t)rng_range(r, 2000, 10000); /* generous */
	return true;
}

static uint32_t window_free_for_longpolls(const struct csess *cs)
{
	/* leave at least one credit for the wake-up itself */
	uint32_t held = cs->longpolls + cs->abandoned;

	return cs->n > held + 1 ? cs->n - held - 1 : 0;
}

static void op_run(struct agent *a, enum op op, uint64_t *rnd)
{
	struct chaos_rng r = {.s = rnd[1]};
	struct csess *cs = pick_session(a, rnd[2]);
	struct plan p;
	uint32_t k;

	if (!cs && op != OP_CONNECT && op != OP_PAUSE)
		return;
	switch (op) {
	case OP_CALL:
		plan_small(cs, &r, &p);
		make_call(a, cs, &p);
		break;
	case OP_CALL_ACQ:
		plan_small(cs, &r, &p);
		if (p.req_len >= sizeof(struct chaos_hdr) && p.method != M_ONEWAY &&
		    p.method != M_NOPE)
			p.acquire = true;
		if (!(cfg.features & CF_COMMIT_RBUF))
			p.rbuf = 0; /* see chaos.h */
		make_call(a, cs, &p);
		break;
	case OP_SYNC: {
		struct chaos_hdr h = {
			.magic = CHAOS_MAGIC,
			.action = ACT_OK,
			.stream = cs->stream,
			.id = UINT64_MAX, /* not a tracked call */
			.body_seed = rng_next(&r),
			.reply_seed = rng_next(&r),
			.len = sizeof(h) + rng_below(&r, 200),
			.reply_len = rng_below(&r, 200),
		};
		uint8_t req[sizeof(h) + 200], buf[256];
		struct tern_sync_reply rep = {.buf = buf, .cap = sizeof(buf)};
		int rc;

		fill_request(req, &h);
		rc = tern_call_sync(cs->s, rng_pct(&r, 50) ? M_RAW : M_INPLACE, req, h.len, &rep,
				    10000);
		chaos_ev(a->tr, "s%d.%u call_sync: %s", a->id, cs->serial, tern_err_name(rc));
		if (rc == 0 && (rep.len != h.reply_len ||
				chaos_check(buf, rep.len, h.reply_seed, 0) != SIZE_MAX))
			chaos_fail(a->tr, "s%d.%u: tern_call_sync's reply is wrong", a->id,
				   cs->serial);
		/* a handler may close the session meanwhile (M_CLOSEME): -ECANCELED */
		if (rc && rc != -ECONNRESET && rc != -EAGAIN && rc != -ENOBUFS &&
		    rc != -ETIMEDOUT && !(rc == -ECANCELED && cs->closing) &&
		    !(rc == -ENOTCONN && !tern_session_is_ready(cs->s)))
			chaos_fail(a->tr, "s%d.%u: tern_call_sync: %s", a->id, cs->serial,
				   tern_err_name(rc));
		break;
	}
	case OP_LARGE:
		if (plan_large(a, cs, &r, &p, cfg.max_large))
			make_call(a, cs, &p);
		break;
	case OP_ONEWAY: {
		uint32_t m = (cfg.features & CF_BATCH) && rng_pct(&r, 30) ? M_OWBATCH : M_ONEWAY;
		uint64_t len = log_size(&r, sizeof(struct chaos_hdr), cs->max_payload);
		bool hold = (cfg.features & CF_HOLD_OW) && rng_pct(&r, 20);
		uint32_t hold_us = pick_hold(&r);
		uint64_t api = rng_below(
			&r, 10); /* 0-6 queued with a callback, 7-8 no callback, 9 acquire */

		send_oneway(a, cs, m, len, hold ? CH_HOLD : 0, hold_us,
			    api < 7   ? 0
			    : api < 9 ? 1
				      : 2);
		break;
	}
	case OP_BURST: {
		bool large = (cfg.features & CF_LARGE_WINDOW) && (cfg.features & CF_LARGE) &&
			     rng_pct(&r, 30);

		k = cs->n + (uint32_t)rng_below(&r, cs->n / 2 + 1);
		chaos_ev(a->tr, "s%d.%u burst of %u %s calls", a->id, cs->serial, k,
			 large ? "large" : "small");
		for (uint32_t i = 0; i < k && csess_live(cs) && a->outstanding + 2 < CALLS_CAP;
		     i++) {
			if (large) {
				/* just over a slot: many at once, little memory */
				if (!plan_large(a, cs, &r, &p, 4ull * cs->max_payload))
					break;
				p.timeout_ms = 0;
			} else {
				plan_small(cs, &r, &p);
			}
			make_call(a, cs, &p);
		}
		break;
	}
	case OP_LONGPOLL:
		k = (uint32_t)mn64(rng_range(&r, 1, cs->n), window_free_for_longpolls(cs));
		for (uint32_t i = 0; i < k && csess_live(cs); i++) {
			memset(&p, 0, sizeof(p));
			p.method = M_DEFERRED;
			p.action = ACT_LONGPOLL;
			/*
			 * Never a deadline (no session default either): a long-poll
			 * that timed out here would still hold its request slot at
			 * the peer, unknown to us, and the wake-up could find no
			 * slot (a caller cannot cancel: defect 3's ground).
			 */
			p.timeout_ms = 600000;
			p.req_len = log_size(&r, sizeof(struct chaos_hdr), 256);
			p.reply_len = log_size(&r, 0, 256);
			if (rng_pct(&r, 30))
				p.flags |= CH_EARLY_ACQ;
			make_call(a, cs, &p);
		}
		break;
	case OP_WAKE:
		wake_one(a);
		break;
	case OP_ABANDON:
		/* enough, at times, to take every reservation of the session */
		k = (uint32_t)rng_range(&r, 1, cs->n + 1);
		for (uint32_t i = 0; i < k && csess_live(cs); i++) {
			memset(&p, 0, sizeof(p));
			p.method = M_DEFERRED;
			p.action = ACT_ABANDON;
			p.req_len = sizeof(struct chaos_hdr);
			p.reply_len = 16;
			p.timeout_ms = (uint32_t)rng_range(&r, 5, 50);
			make_call(a, cs, &p);
		}
		break;
	case OP_LATE_LARGE:
		/* a large call in our own memory, whose deadline passes while
		 * the server still holds it (and then pushes its reply) */
		if (!plan_large(a, cs, &r, &p, 8ull * cs->max_payload))
			break;
		p.method = M_DEFERRED;
		p.action = rng_pct(&r, 50) ? ACT_ECHO : ACT_OK;
		if (p.action == ACT_ECHO && p.req_len <= cs->max_payload)
			p.action = ACT_OK;
		p.req_reg = true;
		if (p.rbuf)
			p.rbuf = 2;
		p.hold_us = (uint32_t)rng_range(&r, 20000, 100000);
		p.timeout_ms = (uint32_t)rng_range(&r, 1, 10);
		make_call(a, cs, &p);
		break;
	case OP_CLOSE:
		close_session(cs, (cfg.features & CF_CLOSE_NULL) && rng_pct(&r, 30));
		break;
	case OP_CLOSEME:
		memset(&p, 0, sizeof(p));
		p.method = M_CLOSEME;
		p.action = ACT_OK;
		p.req_len = sizeof(struct chaos_hdr);
		p.hold_us = (uint32_t)rng_below(&r, 20000);
		if (rng_pct(&r, 30))
			p.flags |= CH_CLOSE_INLINE;
		make_call(a, cs, &p);
		break;
	case OP_CONNECT: {
		uint32_t open = a->connecting;

		for (struct csess *c = a->sessions; c; c = c->next)
			open += csess_live(c);
		if (open < MAX_CLIENT_SESSIONS)
			connect_one(a);
		break;
	}
	case OP_PAUSE:
	case OP_COUNT:
		break;
	}
}

static uint32_t live_sessions(struct agent *a)
{
	uint32_t n = 0;

	for (struct csess *cs = a->sessions; cs; cs = cs->next)
		n += csess_live(cs);
	return n;
}

/* Sessions closed by a request (M_CLOSEME) whose time has come. */
static void scheduled_closes(struct agent *a, bool now_all)
{
	uint64_t now = chaos_now_ns();

	for (struct csess *cs = a->sessions; cs; cs = cs->next)
		if (cs->close_at_ns && (now_all || cs->close_at_ns <= now)) {
			cs->close_at_ns = 0;
			if (csess_live(cs))
				close_session(cs, false);
		}
}

static void phase_fail_lost(struct agent *a, const char *phase);

/* How far the run is, 0..1 (for the warm RSS sample). */
static double run_fraction(struct agent *a)
{
	if (a->ops_target)
		return (double)a->st.ops / (double)a->ops_target;
	if (a->stop_calls)
		return (double)a->st.calls / (double)a->stop_calls;
	if (cfg.seconds)
		return (chaos_now_ns() - a->go_ns) / 1e9 / cfg.seconds;
	return 0;
}

static void generate_one(struct agent *a);

static void generate(struct agent *a)
{
	/* the soak fills its window in one turn; the chaos mix goes op by op */
	int n = cfg.soak ? 64 : 1;

	if (!a->go_ns)
		a->go_ns = chaos_now_ns();
	if (!a->st.rss_warm && run_fraction(a) >= 0.1)
		a->st.rss_warm = chaos_rss();
	for (int i = 0; i < n && !agent_ops_done(a) && outstanding_room(a); i++) {
		uint64_t refused = a->st.refused;

		generate_one(a);
		if (a->st.refused != refused)
			break; /* out of slots or credits: let the loop turn */
	}
	if (!outstanding_room(a))
		generate_one(a); /* the stall check, and long-polls' wake-up */
}

static void generate_one(struct agent *a)
{
	uint64_t rnd[OP_DRAWS];
	enum op op;

	if (agent_ops_done(a))
		return;
	/* a client keeps at least one session */
	if (a->id != 0 && !a->connecting && !live_sessions(a) &&
	    chaos_now_ns() >= a->next_connect_ns) {
		connect_one(a);
		a->next_connect_ns = chaos_now_ns() + 1000000;
	}
	if (!outstanding_room(a)) {
		/* long-polls may fill the room: only their wake-up frees it */
		wake_one(a);
		if (chaos_now_ns() - a->progress_ns > STALL_NS)
			phase_fail_lost(a, "run");
		return;
	}
	a->progress_ns = chaos_now_ns();
	/* a fixed number of draws per operation: the schedule does not
	 * depend on what the previous operations met */
	for (int i = 0; i < OP_DRAWS; i++)
		rnd[i] = rng_next(&a->rng);
	op = pick_op(a, rnd[0]);
	a->st.ops++;
	op_run(a, op, rnd);
}

/* ---- phases ----------------------------------------------------------------- */

static void phase_fail_lost(struct agent *a, const char *phase)
{
	bool abandoned = false, longpolls = false;

	for (uint32_t i = 0; i < CALLS_CAP; i++) {
		if (!a->calls[i])
			continue;
		abandoned |= a->calls[i]->cs->abandoned_total > 0;
		longpolls |= a->calls[i]->cs->longpolls > 0;
	}
	agent_dump(a, phase);
	a->st.lost += a->outstanding;
	chaos_fail(a->tr,
		   "%u calls never completed (%s): their callbacks did not run within 30 s%s",
		   a->outstanding, phase,
		   abandoned   ? " (their sessions had calls the peer never answered time out: "
				 "known defect 3, issue 13)"
		   : longpolls ? " (long-polls in flight on their sessions: known defect 1, "
				 "issue 13)"
			       : "");
}

/* Quiesce: wake our long-polls, wait for every call, then prove each session works. */
static void step_quiesce(struct agent *a)
{
	bool all = true;

	release_due(a);
	scheduled_closes(a, true);
	for (struct csess *cs = a->sessions; cs; cs = cs->next)
		send_wake(a, cs);
	/* the probes go once nothing else is in flight */
	for (struct csess *cs = a->sessions; cs; cs = cs->next) {
		if (cs->probe_inflight) {
			all = false;
			continue;
		}
		if (!csess_live(cs) || cs->probed)
			continue;
		all = false;
		if (a->outstanding)
			continue;
		if (!cs->probe_until_ns)
			cs->probe_until_ns = chaos_now_ns() + 10000000000ull;
		{
			struct plan p = {.method = M_RAW,
					 .action = ACT_OK,
					 .req_len = sizeof(struct chaos_hdr),
					 .reply_len = 8,
					 .timeout_ms = 10000,
					 .role = R_PROBE};
			uint64_t before = a->st.refused;

			make_call(a, cs, &p);
			if (a->st.refused == before) {
				cs->probe_inflight = true;
			} else if (chaos_now_ns() > cs->probe_until_ns) {
				chaos_fail(a->tr,
					   "s%d.%u is silently dead: a plain call has been refused "
					   "for 10 s after traffic stopped, with none of ours in "
					   "flight (%u of our calls on it were abandoned by the "
					   "peer)%s",
					   a->id, cs->serial, cs->abandoned_total, dead_hint(cs));
			}
		}
	}
	if (a->outstanding == 0 && all) {
		agent_set_phase(a, PH_QUIET);
		return;
	}
	if (chaos_now_ns() - a->phase_ns > STALL_NS)
		phase_fail_lost(a, "quiesce");
}

static void step_drain(struct agent *a)
{
	bool all = true;

	release_due(a);
	if (a->outstanding) {
		if (chaos_now_ns() - a->phase_ns > STALL_NS)
			phase_fail_lost(a, "drain");
		return;
	}
	for (struct csess *cs = a->sessions; cs; cs = cs->next) {
		if (!csess_live(cs) || cs->audited)
			continue;
		all = false;
		if (!cs->drained) {
			if (a->single) {
				int rc = tern_session_drain(cs->s, 20000);

				if (rc == -ETIMEDOUT)
					chaos_fail(a->tr,
						   "s%d.%u: tern_session_drain timed out (20 s)",
						   a->id, cs->serial);
				if (rc && rc != -ENOTCONN)
					chaos_fail(a->tr, "s%d.%u: tern_session_drain: %s", a->id,
						   cs->serial, tern_err_name(rc));
				cs->drained = true;
			} else if (chaos_session_drained(cs->s)) {
				cs->drained = true;
			} else if (chaos_now_ns() - a->phase_ns > 20000000000ull) {
				chaos_fail(a->tr, "s%d.%u did not drain in 20 s", a->id,
					   cs->serial);
			}
			continue;
		}
		if (!cs->audit_inflight && csess_live(cs)) {
			struct plan p = {.method = M_AUDIT,
					 .action = ACT_OK,
					 .req_len = sizeof(struct chaos_hdr),
					 .reply_len = sizeof(struct chaos_audit),
					 .timeout_ms = 10000,
					 .role = R_AUDIT};
			uint64_t before = a->st.refused;

			make_call(a, cs, &p);
			if (a->st.refused == before)
				cs->audit_inflight = true;
		}
	}
	if (all && !a->outstanding)
		agent_set_phase(a, PH_DRAINED);
}

static void step_check(struct agent *a)
{
	char why[512];
	int live = 0;
	struct csess *bad = NULL;

	for (struct csess *cs = a->sessions; cs; cs = cs->next) {
		if (!cs->s || cs->down)
			continue;
		if (cs->closing) {
			bad = cs; /* its end has not been reported yet */
			snprintf(why, sizeof(why), "closed, and its end not reported yet");
			continue;
		}
		live++;
		if (!bad && !chaos_session_home(cs->s, (cfg.features & CF_SLOTS_HOME) != 0, why,
						sizeof(why)))
			bad = cs;
	}
	if (!bad && chaos_ctx_sessions(a->ctx) != live) {
		snprintf(why, sizeof(why), "the context holds %d sessions, %d are open",
			 chaos_ctx_sessions(a->ctx), live);
		if (chaos_now_ns() - a->phase_ns > 5000000000ull)
			chaos_fail(a->tr, "once traffic stopped: %s", why);
		return;
	}
	if (!bad) {
		for (struct csess *cs = a->sessions; cs; cs = cs->next) {
			keep_counters(cs);
			a->st.late_replies += cs->cnt.late_replies;
		}
		a->st.rss_end = chaos_rss();
		agent_set_phase(a, PH_CHECKED);
		return;
	}
	if (chaos_now_ns() - a->phase_ns > 5000000000ull)
		chaos_fail(a->tr, "once traffic stopped, s%d.%u (%u x %u) still holds: %s", a->id,
			   bad->serial, bad->n, chaos_geoms[bad->geom].slot_size, why);
}

void agent_set_phase(struct agent *a, enum agent_phase ph)
{
	chaos_ev(a->tr, "phase %d -> %d (%u calls in flight, %u held)", a->phase, ph,
		 a->outstanding, a->nheld);
	a->phase = ph;
	a->phase_ns = chaos_now_ns();
	switch (ph) {
	case PH_QUIESCE:
		/* held one-way messages, batch items and timed holds go now;
		 * long-polls wait for our peers' wake-ups, abandoned calls
		 * for the drain */
		release_all(a, false, false);
		break;
	case PH_DRAIN:
		release_all(a, true, true);
		break;
	default:
		break;
	}
}

void agent_step(struct agent *a)
{
	switch (a->phase) {
	case PH_RUN:
		release_due(a);
		scheduled_closes(a, false);
		generate(a);
		break;
	case PH_QUIESCE:
		step_quiesce(a);
		break;
	case PH_DRAIN:
		step_drain(a);
		break;
	case PH_CHECK:
		step_check(a);
		break;
	case PH_QUIET:
	case PH_DRAINED:
	case PH_CHECKED:
		release_due(a);
		break;
	}
}

/* ---- the agent ---------------------------------------------------------------- */

static void tick_cb(uv_timer_t *t)
{
	(void)t;
}

static void register_methods(struct agent *a)
{
	struct tern_batch_opts bo = {.size = sizeof(bo)};
	int rc = 0;

	rc |= tern_register_raw(a->ctx, M_RAW, h_raw, a);
	rc |= tern_register_inplace(a->ctx, M_INPLACE, h_inplace, a);
	rc |= tern_register_deferred(a->ctx, M_DEFERRED, h_deferred, a);
	rc |= tern_register_oneway(a->ctx, M_ONEWAY, h_oneway, a);
	rc |= tern_register_raw(a->ctx, M_WAKE, h_wake, a);
	rc |= tern_register_raw(a->ctx, M_AUDIT, h_audit, a);
	rc |= tern_register_raw(a->ctx, M_CLOSEME, h_closeme, a);
	bo.max = (uint32_t)rng_range(&a->rng, 1, 16);
	bo.wait_us = (uint32_t)rng_range(&a->rng, 0, 2000);
	rc |= tern_register_batch(a->ctx, M_BATCH, &bo, h_batch, a);
	bo.max = (uint32_t)rng_range(&a->rng, 1, 16);
	bo.wait_us = (uint32_t)rng_range(&a->rng, 0, 2000);
	bo.oneway = 1;
	rc |= tern_register_batch(a->ctx, M_OWBATCH, &bo, h_owbatch, a);
	rc |= tern_service_register(a->ctx, "Chaos", 0x6368616f73ull);
	if (rc)
		chaos_fail(a->tr, "registering the methods failed");
}

static void listen_uri(char *out, size_t len, int i)
{
	static unsigned seq;

	if (!strcmp(cfg.transport, "shm"))
		snprintf(out, len, "shm://chaos-%d-%u-%d", (int)getpid(), ++seq, i);
	else if (!strcmp(cfg.transport, "mem"))
		snprintf(out, len, "mem://chaos-%u-%d", ++seq, i);
	else if (!strcmp(cfg.transport, "tcp"))
		snprintf(out, len, "tcp://127.0.0.1:0");
	else
		snprintf(out, len, "%s", cfg.transport); /* rdma: chaos.c passes the address */
}

extern const char *chaos_rdma_addr;

struct agent *agent_new(int id, const char *const *uris, bool single)
{
	struct agent *a = calloc(1, sizeof(*a));
	struct tern_ctx_opts co = {.size = sizeof(co)};
	uint64_t x;
	int rc;

	if (!a)
		abort();
	a->id = id;
	a->single = single;
	a->rng.s = chaos_mix(cfg.seed * 0x100000001b3ull + (uint64_t)id);
	a->crng.s = chaos_mix(a->rng.s ^ 0x636f6e6e656374ull);
	a->seed_base = chaos_mix(a->crng.s);
	a->tr = chaos_trace_new(id);
	a->next_id = 1;
	a->progress_ns = chaos_now_ns();
	a->max_msg = cfg.max_large > (1u << 20) ? cfg.max_large : (1u << 20);
	if (a->max_msg > 0xffffffffull)
		a->max_msg = 0xffffffffull;
	x = rng_below(&a->rng, 100);
	co.progress = x < 25   ? TERN_PROGRESS_BUSY
		      : x < 70 ? TERN_PROGRESS_EVENT
			       : TERN_PROGRESS_ADAPTIVE;
	if (cfg.soak)
		co.progress = TERN_PROGRESS_EVENT; /* a fair share of two cores */
	a->depth = cfg.soak ? 256 : (uint32_t)rng_range(&a->rng, 8, 256);
	a->ops_target = cfg.ops;
	rc = tern_ctx_create(&co, &a->ctx);
	if (rc)
		chaos_fail(a->tr, "tern_ctx_create: %s", tern_strerror(rc));
	uv_timer_init(tern_ctx_loop(a->ctx), &a->tick);
	uv_timer_start(&a->tick, tick_cb, 1, 1);
	register_methods(a);
	chaos_ev(a->tr, "agent %d: progress %d, depth %u", id, co.progress, a->depth);

	/* registered memory for large requests and reply buffers */
	if (cfg.features & CF_LARGE) {
		size_t sz = (size_t)mn64(cfg.large_budget, 4 * cfg.max_large);

		a->arena.size = sz < (8u << 20) ? (8u << 20) : sz;
		a->arena.base = xmalloc(a->arena.size);
		rc = tern_mem_register(a->ctx, a->arena.base, a->arena.size, &a->arena.mr);
		if (rc)
			chaos_fail(a->tr, "tern_mem_register %zu bytes: %s", a->arena.size,
				   tern_strerror(rc));
	}

	if (id == 0) {
		for (int i = 0; i < CHAOS_NLISTEN; i++) {
			struct tern_session_opts o = {
				.size = sizeof(o),
				.slot_size = chaos_geoms[i].slot_size,
				.slot_count = chaos_geoms[i].slot_count,
				.on_close = on_close,
				.data = NULL, /* set per session in on_accept */
				.max_msg = (uint32_t)a->max_msg,
				.call_timeout_ms =
					i == 1 && (cfg.features & CF_DEADLINES) ? 3000 : 0,
				.nonblock = i == 2,
				.connect_timeout_ms = 30000, /* as the clients' */
				.cancel_timeout_ms = CHAOS_CANCEL_TIMEOUT_MS,
			};
			char uri[128];

			if (chaos_rdma_addr)
				snprintf(uri, sizeof(uri), "rdma://%s:0", chaos_rdma_addr);
			else
				listen_uri(uri, sizeof(uri), i);
			rc = tern_listen(a->ctx, uri, &o, on_accept, &a->l[i]);
			if (rc)
				chaos_fail(a->tr, "tern_listen %s: %s (%s)", uri, tern_strerror(rc),
					   tern_ctx_last_error(a->ctx));
			tern_listener_set_data(a->l[i], a);
		}
	} else {
		for (int i = 0; i < CHAOS_NLISTEN; i++)
			a->uris[i] = uris[i];
		connect_one(a);
		if (rng_pct(&a->crng, 50) && (cfg.features & CF_CLOSE))
			connect_one(a);
	}
	a->st.rss_start = chaos_rss();
	return a;
}

const char *agent_listen_uri(struct agent *a, int i)
{
	return tern_listener_uri(a->l[i]);
}

void agent_pump(struct agent *a, bool block)
{
	tern_ctx_run(a->ctx, block ? TERN_RUN_ONCE : TERN_RUN_NOWAIT);
}

enum agent_phase agent_phase(struct agent *a)
{
	return a->phase;
}

bool agent_ops_done(struct agent *a)
{
	if (a->ops_target && a->st.ops >= a->ops_target)
		return true;
	if (a->stop_calls && a->st.calls >= a->stop_calls)
		return true;
	return false;
}

bool agent_ready(struct agent *a)
{
	return a->id == 0 || live_sessions(a) > 0;
}

int agent_traffic_with(struct agent *a, int peer)
{
	int n = 0;

	for (uint32_t i = 0; i < a->nheld; i++)
		n += (int)(a->held[i].h.stream >> 32) == peer;
	for (struct csess *cs = a->sessions; cs; cs = cs->next)
		if (cs->peer == peer && csess_live(cs))
			n += (int)cs->inflight;
	return n;
}

struct agent_stats *agent_stats(struct agent *a)
{
	return &a->st;
}

struct chaos_trace *agent_trace(struct agent *a)
{
	return a->tr;
}

void agent_set_limits(struct agent *a, uint64_t ops, uint64_t calls)
{
	a->ops_target = ops;
	a->stop_calls = calls;
}

void agent_dump(struct agent *a, const char *why)
{
	uint32_t shown = 0;

	chaos_log("agent %d (%s): phase %d, %u calls in flight, %u requests held, %u sessions "
		  "open",
		  a->id, why, a->phase, a->outstanding, a->nheld, live_sessions(a));
	for (uint32_t i = 0; i < CALLS_CAP && shown < 20; i++) {
		struct ccall *c = a->calls[i];
		if (!c)
			continue;
		shown++;
		chaos_log("  call #%llu %s %s on s%d.%u (%u x %u%s), %.1f s old, deadline %u ms; "
			  "the session: %u long-polls in flight, %u calls abandoned by the peer "
			  "(%u still in flight)",
			  (unsigned long long)c->id,
			  c->kind == K_ONEWAY ? "ONEWAY" : method_name(c->method),
			  action_name(c->h.action), a->id, c->cs->serial, c->cs->n,
			  chaos_geoms[c->cs->geom].slot_size, c->cs->nonblock ? " nonblock" : "",
			  (chaos_now_ns() - c->t0_ns) / 1e9, c->timeout_ms, c->cs->longpolls,
			  c->cs->abandoned_total, c->cs->abandoned);
	}
	for (struct csess *cs = a->sessions; cs; cs = cs->next) {
		char st[512];

		if (!cs->s || cs->down)
			continue;
		chaos_session_state(cs->s, st, sizeof(st));
		chaos_log("  s%d.%u (%u x %u%s, peer agent %d): %s", a->id, cs->serial, cs->n,
			  chaos_geoms[cs->geom].slot_size, cs->nonblock ? " nonblock" : "",
			  cs->peer, st);
	}
	for (uint32_t i = 0; i < a->nheld && i < 20; i++)
		chaos_log("  held %s #%llu of stream %llx%s", action_name(a->held[i].h.action),
			  (unsigned long long)a->held[i].h.id,
			  (unsigned long long)a->held[i].h.stream,
			  a->held[i].due_ns == UINT64_MAX ? " (until woken or drained)" : "");
}

static void tick_closed(uv_handle_t *h)
{
	(void)h;
}

/*
 * @clean: nothing is in flight, so the registrations go first, as a user's
 * would; otherwise the context releases them with itself (a call in flight
 * may still use them until then).
 */
static void agent_teardown(struct agent *a, bool clean)
{
	int rc;

	uv_close((uv_handle_t *)&a->tick, tick_closed);
	if (clean && a->rscratch_mr && tern_mem_deregister(a->rscratch_mr))
		chaos_fail(a->tr, "tern_mem_deregister of the reply scratch failed");
	if (clean && a->arena.mr && tern_mem_deregister(a->arena.mr))
		chaos_fail(a->tr, "tern_mem_deregister of the arena failed");
	a->rscratch_mr = a->arena.mr = NULL;
	rc = tern_ctx_destroy(a->ctx);
	if (rc)
		chaos_fail(a->tr, "tern_ctx_destroy: %s", tern_strerror(rc));
	a->ctx = NULL;
}

void agent_kill(struct agent *a)
{
	chaos_ev(a->tr, "killed (its context destroyed)");
	a->dying = true;
	agent_teardown(a, false);
}

void agent_free(struct agent *a)
{
	if (a->ctx) {
		bool clean = a->phase == PH_CHECKED;

		a->dying = true; /* what is left ends with -ECANCELED */
		agent_teardown(a, clean);
	}
	for (uint32_t i = 0; i < CALLS_CAP; i++)
		if (a->calls[i])
			call_free(a, a->calls[i]);
	while (a->sessions) {
		struct csess *cs = a->sessions;
		a->sessions = cs->next;
		free(cs);
	}
	for (int c = 0; c < ARENA_CLASSES; c++)
		free(a->arena.free[c]);
	free(a->arena.base);
	free(a->held);
	free(a->rs);
	free(a->scratch);
	free(a->rscratch);
	chaos_trace_free(a->tr);
	free(a);
}
