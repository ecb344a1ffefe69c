/* SPDX-License-Identifier: MIT */
/*
 * chaos.h - the seeded chaos run: a model checker for the engine.
 *
 * From one printed seed, agents (a server and its clients, each on its own
 * context, in their own processes except on mem://) drive each other with
 * a random mix of everything tern.h offers, and check invariants instead
 * of examples: every callback exactly once, replies carrying the bytes the
 * handler was told to write, only documented error codes, every one-way
 * message delivered once and in order, and, once traffic stops, every
 * credit, slot and staging buffer home.  docs/chaos.md describes it.
 *
 * The pieces: util.c (random numbers, payload bytes, the event trace,
 * failure reports), agent.c (one agent: its sessions, its generator, its
 * handlers and its model of every call), chaos.c (options, processes,
 * phases, the summary) and internals.c (the one file that looks past
 * tern.h, at what the engine holds).
 */
#ifndef TERN_CHAOS_H
#define TERN_CHAOS_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <tern.h>

/* ---- the mix ---------------------------------------------------------------- */

/*
 * What the generator may do.  Every one is on by default; --without turns
 * them off.  The last four are the patterns that hit issue 13's known
 * defects: a lane that must pass turns off only those its provider
 * suffers from, saying which defect (tests/meson.build).
 */
enum chaos_feature {
	CF_LARGE = 1u << 0,	    /* requests and replies larger than a slot */
	CF_ONEWAY = 1u << 1,	    /* one-way messages */
	CF_BATCH = 1u << 2,	    /* batched methods, call and one-way */
	CF_HOLD = 1u << 3,	    /* tern_req_hold() on batch items (one-way: CF_HOLD_OW) */
	CF_DEADLINES = 1u << 4,	    /* per-call and per-session deadlines, some expiring */
	CF_REVERSE = 1u << 5,	    /* the server calls its clients too */
	CF_CLOSE = 1u << 6,	    /* sessions closed by either side, new connections */
	CF_KILL = 1u << 7,	    /* a client process killed with SIGKILL mid-burst */
	CF_BURST = 1u << 8,	    /* a session's whole window of calls at once */
	CF_ACQUIRE = 1u << 9,	    /* tern_call_acquire / tern_send_acquire */
	CF_ERRORS = 1u << 10,	    /* handlers failing calls, unknown methods, oversize replies */
	CF_LONGPOLL = 1u << 11,	    /* defect 1: deferred calls released by a later call */
	CF_LARGE_WINDOW = 1u << 12, /* defect 2: a window of large calls at once */
	CF_LATE_LARGE = 1u << 13,   /* defect 3: large calls in user memory that time out */
	CF_ABANDON = 1u << 14,	    /* defect 3: calls the server never answers */
	/*
	 * Found by this run (fixed since): tern_call_commit() took a struct
	 * tern_call_opts but ignored its reply buffer...
	 */
	CF_COMMIT_RBUF = 1u << 15,
	/* ...and tern_session_close() with a NULL callback never ran on_close */
	CF_CLOSE_NULL = 1u << 16,
	/* ...and a raw handler's large reply from registered memory was read
	 * after the handler returned (struct tern_iov says it need not be):
	 * replies from a registered scratch the next handler rewrites, and
	 * from blocks kept until tern_req_on_reply_sent() says they went */
	CF_RAW_REG = 1u << 17,
	/*
	 * Not a pattern but a check: once traffic stops, every call slot and
	 * request (reply) slot is free.  On rdma, selective signalling leaves
	 * the slots of unsignalled sends taken until a later send is signalled
	 * (known defect 1, issue 13).
	 */
	CF_SLOTS_HOME = 1u << 18,
	/*
	 * tern_req_hold() on one-way messages and one-way batch items (CF_HOLD
	 * covers call batch items).  Found by this run (fixed since): released
	 * outside a callback, in event progress, their credits were not
	 * returned until some other event came, and a peer waiting for them
	 * waited forever.
	 */
	CF_HOLD_OW = 1u << 19,
};

#define CF_ALL ((1u << 20) - 1)

struct chaos_feature_name {
	const char *name;
	uint32_t bit;
	const char *what;
};
extern const struct chaos_feature_name chaos_features[];

/* ---- configuration (the same in every process of a run) -------------------- */

struct chaos_cfg {
	uint64_t seed;
	uint64_t ops;	/* operations per agent (0 with --seconds or --calls: no limit) */
	double seconds; /* run this long (0: until the ops are done) */
	uint64_t calls; /* stop once this many calls completed, over all agents */
	char transport[8];
	uint32_t clients;      /* client agents at a time */
	uint64_t max_large;    /* the largest request or reply */
	uint64_t large_budget; /* bytes of large calls in flight per agent */
	uint32_t features;
	bool soak;
	bool trace;	       /* every event to stderr as it happens */
	const char *trace_dir; /* ...or to DIR/agent-<id>.log, one file per agent */
	int tail;	       /* events of the trace printed with a failure */
	int runs;	       /* seeds seed .. seed + runs - 1 */
	/* the rest is set per process */
	const char *self;  /* argv[0] re-executed for client processes */
	char replay[1024]; /* the command line that replays this run */
};

extern struct chaos_cfg cfg;

/* ---- random numbers and payload bytes (util.c) ------------------------------ */

static inline uint64_t chaos_mix(uint64_t z)
{
	z += 0x9e3779b97f4a7c15ull;
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

struct chaos_rng {
	uint64_t s;
};

static inline uint64_t rng_next(struct chaos_rng *r)
{
	return chaos_mix(r->s += 0x9e3779b97f4a7c15ull);
}

/* Uniform in [0, n) (n > 0); the tiny bias of the modulo does not matter here. */
static inline uint64_t rng_below(struct chaos_rng *r, uint64_t n)
{
	return rng_next(r) % n;
}

/* Uniform in [lo, hi]. */
static inline uint64_t rng_range(struct chaos_rng *r, uint64_t lo, uint64_t hi)
{
	return lo + rng_below(r, hi - lo + 1);
}

/* True with probability pct / 100. */
static inline bool rng_pct(struct chaos_rng *r, unsigned pct)
{
	return rng_below(r, 100) < pct;
}

/*
 * Payload bytes: byte i of a stream with seed @seed is a function of (seed,
 * i) alone, so a receiver regenerates what the sender wrote and compares.
 */
void chaos_fill(void *buf, size_t len, uint64_t seed, uint64_t off);
/* Compare: SIZE_MAX when equal, else the offset of the first wrong byte. */
size_t chaos_check(const void *buf, size_t len, uint64_t seed, uint64_t off);

uint64_t chaos_now_ns(void);
/* Resident set size of this process, in bytes. */
uint64_t chaos_rss(void);

/* ---- the trace and failures (util.c) ----------------------------------------- */

struct chaos_trace;
struct chaos_trace *chaos_trace_new(int agent_id);
void chaos_trace_free(struct chaos_trace *t);
/* Record one event ("s1.2 call #17 RAW req 300 reply 40 ..."). */
void chaos_ev(struct chaos_trace *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void chaos_trace_print(struct chaos_trace *t, int last);

/*
 * An invariant broke: print the seed, the replay command, what broke and
 * the trace's tail, then exit 1 (tests/meson.build counts a non-zero exit
 * as the failure of this seed).
 */
void chaos_fail(struct chaos_trace *t, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), noreturn));
/* A note on stderr, prefixed with the process's role. */
void chaos_log(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
extern char chaos_role[32];

/* ---- what crosses the wire ------------------------------------------------- */

#define CHAOS_MAGIC 0x4f414843u /* "CHAO" */

/* Method ids: below tern's own (0xffffff00). */
enum chaos_method {
	M_RAW = 0x7c000001,
	M_INPLACE = 0x7c000002,
	M_DEFERRED = 0x7c000003,
	M_BATCH = 0x7c000004,
	M_ONEWAY = 0x7c000005,
	M_OWBATCH = 0x7c000006,
	M_WAKE = 0x7c000007,	/* raw: release this stream's long-polls */
	M_AUDIT = 0x7c000008,	/* raw: what this side received of a stream's one-way messages */
	M_CLOSEME = 0x7c000009, /* raw: close this session, from this (the handler's) side */
	M_NOPE = 0x7c00000a,	/* registered nowhere: TERN_ENOMETHOD */
};

/* What a handler is told to do with a call. */
enum chaos_action {
	ACT_OK = 1,	  /* reply with reply_len bytes of reply_seed */
	ACT_ERR = 2,	  /* fail with err */
	ACT_ECHO = 3,	  /* reply with the request itself */
	ACT_LONGPOLL = 4, /* deferred: held until an M_WAKE on its stream, then ACT_OK */
	ACT_ABANDON = 5,  /* deferred: never answered while traffic runs */
};

enum chaos_hdr_flags {
	CH_REG_REPLY = 1u << 0,	   /* raw: a large reply from registered memory */
	CH_EARLY_ACQ = 1u << 1,	   /* deferred: tern_reply_acquire() at once, commit later */
	CH_HOLD = 1u << 2,	   /* one-way or batch item: tern_req_hold() it for hold_us */
	CH_ERRMSG = 1u << 3,	   /* ACT_ERR: with a message naming the call */
	CH_CLOSE_INLINE = 1u << 4, /* M_CLOSEME: close inside the handler */
};

/*
 * The first 64 bytes of every call and one-way message the generator sends
 * (shorter requests are pings: echoed).  Both ends are on one host, so
 * native byte order.
 */
struct chaos_hdr {
	uint32_t magic;
	uint8_t action;
	uint8_t flags;
	uint16_t rsvd;
	uint64_t stream;     /* the sender's session: agent << 32 | serial */
	uint64_t id;	     /* the call's id, or the one-way message's sequence number */
	uint64_t body_seed;  /* bytes [64, len) */
	uint64_t reply_seed; /* the reply's bytes */
	uint64_t len;	     /* this message's length */
	uint64_t reply_len;
	int32_t err;	  /* ACT_ERR */
	uint32_t hold_us; /* deferred, held one-way or batch item: for how long */
};
_Static_assert(sizeof(struct chaos_hdr) == 64, "chaos_hdr is 64 bytes");

/* M_AUDIT's reply: what arrived of one stream, per one-way method. */
struct chaos_audit {
	uint64_t count[2];
	uint64_t hash[2];
	uint64_t last[2];
};

/* ---- agents (agent.c) ------------------------------------------------------- */

struct agent;

/* The listeners' geometries: clients pick one per connection. */
#define CHAOS_NLISTEN 4
struct chaos_geom {
	uint32_t slot_size;
	uint32_t slot_count;
};
extern const struct chaos_geom chaos_geoms[CHAOS_NLISTEN];

enum agent_phase {
	PH_RUN,	    /* generating */
	PH_QUIESCE, /* no new work: long-polls woken, wait for every call, then probe */
	PH_QUIET,   /* done with that */
	PH_DRAIN,   /* abandoned calls answered, sessions drained, one-way streams audited */
	PH_DRAINED, /* done with that */
	PH_CHECK,   /* traffic stopped everywhere: is everything home? */
	PH_CHECKED, /* done: results ready */
};

/* What an agent reports at the end. */
struct agent_stats {
	uint64_t ops;
	uint64_t calls;	     /* calls whose tern_call (or commit) returned 0 */
	uint64_t ok;	     /* completed with the right reply */
	uint64_t remote_err; /* completed with the error the handler was told to return */
	uint64_t timeouts;
	uint64_t resets;   /* -ECONNRESET: the peer went away */
	uint64_t canceled; /* -ECANCELED: closed here */
	uint64_t nobufs;   /* -ENOBUFS (staging or queue full) */
	uint64_t refused;  /* calls refused at once (-EAGAIN, -ENOBUFS, -ENOTCONN...) */
	uint64_t oneway_sent;
	uint64_t oneway_recv;
	uint64_t served;	   /* requests this side's handlers ran */
	uint64_t large_bytes;	   /* bytes of large requests and replies checked */
	uint64_t sessions;	   /* sessions opened (connected or accepted) */
	uint64_t closes;	   /* sessions closed by either side */
	uint64_t lost, dup, wrong; /* invariant violations (the run stops at the first) */
	uint64_t rss_start;	   /* before any traffic */
	uint64_t rss_warm;	   /* a tenth of the way: caches and pools filled */
	uint64_t rss_end;
	uint64_t late_replies;
};

/*
 * agent_new - an agent with its own context
 * @id: 0 for the server (it listens), clients 1, 2, ...
 * @uris: clients: the server's listener URIs (CHAOS_NLISTEN of them)
 * @single: the only agent of its process: it may block in
 *	tern_session_drain() (on mem:// every agent shares the thread, and
 *	one context blocking would starve its peer)
 */
struct agent *agent_new(int id, const char *const *uris, bool single);
/* The server's listener URIs (agent 0). */
const char *agent_listen_uri(struct agent *a, int i);
/* Run the agent's loop once: @block lets it sleep up to a millisecond. */
void agent_pump(struct agent *a, bool block);
/* Generate (PH_RUN) or advance the phase it is in. */
void agent_step(struct agent *a);
void agent_set_phase(struct agent *a, enum agent_phase ph);
enum agent_phase agent_phase(struct agent *a);
bool agent_ops_done(struct agent *a);
/* Has a client connected its first session (or the server its listeners)? */
bool agent_ready(struct agent *a);
/* Server: requests held from, and calls in flight to, agent @peer. */
int agent_traffic_with(struct agent *a, int peer);
struct agent_stats *agent_stats(struct agent *a);
struct chaos_trace *agent_trace(struct agent *a);
/* Stop after @ops operations or @calls calls (0: no limit). */
void agent_set_limits(struct agent *a, uint64_t ops, uint64_t calls);
/* Print what is in flight and held (a stall). */
void agent_dump(struct agent *a, const char *why);
/* mem:// only: the in-process stand-in for SIGKILL (the context is destroyed). */
void agent_kill(struct agent *a);
void agent_free(struct agent *a);

/* ---- what the engine holds (internals.c) ------------------------------------ */

/* Add mem:// to the contexts made from now on. */
int chaos_register_mem(void);
/*
 * Once both ends are quiet: is everything of session @s home (credits,
 * queues, staging, timed-out calls' leftovers, and with @slots the call
 * and request slots)?  If not, @why says what is not.
 */
bool chaos_session_home(tern_session *s, bool slots, char *why, size_t len);
/* tern_session_drain()'s condition, for agents that may not block. */
bool chaos_session_drained(tern_session *s);
/* The engine's view of @s, for a stall's report. */
void chaos_session_state(tern_session *s, char *out, size_t len);
/* Sessions @ctx still has (freed ones are gone). */
int chaos_ctx_sessions(tern_ctx *ctx);
/* The bytes a bulk descriptor takes in a slot (src/wire.h). */
unsigned chaos_bulk_desc_size(void);

#endif
