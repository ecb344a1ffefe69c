/* SPDX-License-Identifier: MIT */
/*
 * tern - an RPC runtime for RDMA verbs.
 *
 * The one public header.  Conventions (libuv's):
 *  - functions return 0 or a negative errno; tern's own conditions use the
 *    TERN_E* codes below, which never collide with errno values, and
 *    tern_strerror() names any of them;
 *  - long-lived objects are opaque handles created by tern_x_create() or an
 *    equivalent and returned through an out-parameter;
 *  - option structs are zero-initialised by the caller; their first field is
 *    their size, so new fields never break old callers (0 means "the size of
 *    the struct this header declares");
 *  - closing is asynchronous and takes a callback; a handle is never freed
 *    inside its own callback.
 *
 * Threading: a tern_ctx is run-to-completion on one thread.  Nothing here is
 * thread-safe except where a comment says so.
 */
#ifndef TERN_H
#define TERN_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define TERN_EXPORT __attribute__((visibility("default")))
#else
#define TERN_EXPORT
#endif

/*
 * libuv's loop.  uv_loop_t is a typedef of this struct, so a caller that
 * includes <uv.h> passes its uv_loop_t * as it is.  Declared rather than
 * included: uv.h needs POSIX types that a strict -std=c11 build does not
 * have, and most users never touch the loop.
 */
struct uv_loop_s;

#define TERN_VERSION_MAJOR 0
#define TERN_VERSION_MINOR 1
#define TERN_VERSION_PATCH 0

/*
 * tern-specific error codes.  They sit far above any errno value so that a
 * negative return is unambiguous: either -errno or one of these.
 */
#define TERN_ERRNO_BASE 4000
enum {
	TERN_ENOMETHOD = -(TERN_ERRNO_BASE + 1),  /* the peer has no handler for this method id */
	TERN_ENOSERVICE = -(TERN_ERRNO_BASE + 2), /* the peer did not register this service */
	TERN_ESCHEMA = -(TERN_ERRNO_BASE + 3),	  /* a service's schema differs between the peers */
	TERN_EVERSION = -(TERN_ERRNO_BASE + 4),	  /* bad magic or unsupported wire version */
	TERN_EGEOMETRY = -(TERN_ERRNO_BASE + 5),  /* slot size or count refused by the peer */
	TERN_EREMOTE = -(TERN_ERRNO_BASE + 6),	  /* the remote handler failed with no errno */
	TERN_EPEER = -(TERN_ERRNO_BASE + 7), /* the peer broke the protocol (malformed message) */
};

/**
 * tern_strerror - a human-readable message for a tern return code
 * @err: 0, a negative errno, or a TERN_E* code
 *
 * Return: a static string; never NULL.
 */
TERN_EXPORT const char *tern_strerror(int err);

/**
 * tern_err_name - the symbolic name of a tern return code
 * @err: 0, a negative errno, or a TERN_E* code
 *
 * Return: "OK", an errno name such as "ETIMEDOUT", a tern name such as
 * "TERN_ENOMETHOD", or "UNKNOWN"; a static string, never NULL.
 */
TERN_EXPORT const char *tern_err_name(int err);

/**
 * tern_version_string - the library's version, "MAJOR.MINOR.PATCH"
 */
TERN_EXPORT const char *tern_version_string(void);

/* ------------------------------------------------------------------------ */
/* Handles                                                                   */

typedef struct tern_ctx tern_ctx;
typedef struct tern_listener tern_listener;
typedef struct tern_session tern_session;
typedef struct tern_req tern_req;
typedef struct tern_callslot tern_callslot;
typedef struct tern_mr tern_mr;
typedef struct tern_group tern_group;

/* ------------------------------------------------------------------------ */
/* Context                                                                   */

/**
 * enum tern_progress - how a context learns about completions
 * @TERN_PROGRESS_BUSY: poll every transport on every loop turn; lowest
 *	latency, one core at 100%.
 * @TERN_PROGRESS_EVENT: arm the transports' notification fds (the verbs
 *	completion channel, shm doorbells, sockets) and sleep in the loop.
 * @TERN_PROGRESS_ADAPTIVE: spin like BUSY while there is traffic, then arm
 *	and sleep after @adaptive_spin_us without a completion.
 */
enum tern_progress {
	TERN_PROGRESS_BUSY = 0,
	TERN_PROGRESS_EVENT = 1,
	TERN_PROGRESS_ADAPTIVE = 2,
};

/**
 * struct tern_ctx_opts - options for tern_ctx_create()
 * @size: sizeof(struct tern_ctx_opts), or 0
 * @loop: the caller's libuv loop, or NULL to let the context own one
 * @progress: see enum tern_progress
 * @adaptive_spin_us: ADAPTIVE: how long to spin without traffic before
 *	sleeping (default 100)
 * @busy_spin_us: BUSY/ADAPTIVE: how long one loop turn may spin on the
 *	transports before libuv gets to run timers and fds (default 20)
 * @data: the caller's pointer, returned by tern_ctx_data()
 */
struct tern_ctx_opts {
	uint32_t size;
	struct uv_loop_s *loop;
	enum tern_progress progress;
	uint32_t adaptive_spin_us;
	uint32_t busy_spin_us;
	void *data;
};

/**
 * tern_ctx_create - create a context
 * @opts: options, or NULL for the defaults (own loop, busy progress)
 * @out: the new context
 *
 * A context owns the transports' per-context resources, the method table,
 * every session and listener made on it, and its libuv handles.  It
 * records per-method metrics from the start (tern_ctx_metrics_enable()).
 *
 * Return: 0, -EINVAL, -ENOMEM.
 */
TERN_EXPORT int tern_ctx_create(const struct tern_ctx_opts *opts, tern_ctx **out);

/**
 * tern_ctx_destroy - close everything on a context and free it
 * @ctx: the context
 *
 * Closes every listener and session (pending calls complete with
 * -ECANCELED), runs the loop until their handles are closed and frees the
 * context.  If the context owns its loop, the loop is closed too.  The
 * sessions' @on_close does not run for the sessions it closes (a close
 * callback given to tern_session_close() earlier does): free what you
 * attached to them once this returns.  Must not be called from inside a
 * tern callback.
 *
 * Return: 0, or -EBUSY when called from a callback.
 */
TERN_EXPORT int tern_ctx_destroy(tern_ctx *ctx);

/**
 * tern_ctx_loop - the libuv loop a context runs on
 *
 * Return: the loop, a uv_loop_t * for a caller that includes <uv.h>.
 */
TERN_EXPORT struct uv_loop_s *tern_ctx_loop(tern_ctx *ctx);

/**
 * tern_ctx_data - the @data pointer given at creation
 */
TERN_EXPORT void *tern_ctx_data(tern_ctx *ctx);

enum tern_run_mode {
	TERN_RUN_DEFAULT = 0, /* until tern_ctx_stop() or nothing is left to do */
	TERN_RUN_ONCE = 1,    /* one loop turn, blocking for events if needed */
	TERN_RUN_NOWAIT = 2,  /* one loop turn, never blocking */
};

/**
 * tern_ctx_run - run the context's loop
 * @ctx: the context
 * @mode: see enum tern_run_mode
 *
 * In busy and adaptive progress, a loop turn under TERN_RUN_ONCE or
 * TERN_RUN_NOWAIT (or the caller's own uv_run()) ends at the first poll
 * that handled something; under TERN_RUN_DEFAULT it spins on for up to
 * busy_spin_us, so a server answers the next request without a libuv turn
 * in between.  tern_ctx_stop() from a callback ends the spin after that
 * poll.
 *
 * Return: what uv_run() returns: non-zero when there is more to do.
 */
TERN_EXPORT int tern_ctx_run(tern_ctx *ctx, enum tern_run_mode mode);

/**
 * tern_ctx_stop - make tern_ctx_run(TERN_RUN_DEFAULT) return soon
 * @ctx: the context
 *
 * Safe from any thread and from a signal handler (async-signal-safe): it
 * sets an atomic flag and wakes the loop with uv_async_send(), so a loop
 * asleep in event progress wakes up and a busy or adaptive turn ends at
 * its next poll.  The running tern_ctx_run(TERN_RUN_DEFAULT) returns
 * after that loop turn; a stop that comes while none is running (a
 * SIGTERM during set-up, or while the loop is driven with TERN_RUN_ONCE,
 * TERN_RUN_NOWAIT or tern_call_sync()) makes the next one return at once.
 * Either way one stop ends one run.  A caller's own uv_run(UV_RUN_DEFAULT)
 * on the loop returns too, and the stop is still kept for the next
 * tern_ctx_run(TERN_RUN_DEFAULT).  Sessions and calls are left as they are: close
 * them, or tern_ctx_destroy() the context, after the run has returned.
 * @ctx must stay valid until the call returns: do not race it with
 * tern_ctx_destroy().
 */
TERN_EXPORT void tern_ctx_stop(tern_ctx *ctx);

/**
 * tern_ctx_poll - poll every transport once, without libuv
 * @ctx: the context
 * @budget: the most completions to handle (0: a default of 64)
 *
 * For callers that spin in their own loop.  Handles completions and expired
 * deadlines; connection set-up still needs the loop to run now and then.
 *
 * Return: the number of completions handled, or a negative errno.
 */
TERN_EXPORT int tern_ctx_poll(tern_ctx *ctx, int budget);

/**
 * tern_post_fn - work handed to a context by tern_ctx_post()
 * @ctx: the context it was posted to
 * @arg: the poster's pointer
 * @status: 0 when it runs at a loop turn; -ECANCELED when the context is
 *	destroyed first (see tern_ctx_post()): release what @arg holds, and
 *	start nothing new on @ctx
 */
typedef void (*tern_post_fn)(tern_ctx *ctx, void *arg, int status);

/**
 * tern_ctx_post - run @fn(@ctx, @arg, 0) on the context's thread
 * @ctx: the context
 * @fn: what to run
 * @arg: passed to @fn
 *
 * The one thread-safe entry point of tern besides tern_ctx_stop(): any
 * thread may call it, and it is how other threads reach a context (a
 * deferred reply computed on a worker pool, a call issued from another
 * thread).  @fn runs on the thread that runs the context, at its next
 * loop turn or poll (tern_ctx_run(), tern_ctx_poll(), tern_call_sync()),
 * as a tern callback: it may call anything a callback may, but not
 * tern_ctx_destroy().  Posts run in the order they were made: FIFO for
 * one posting thread, and in the order their tern_ctx_post() calls took
 * the queue's lock across threads.  A post wakes a context asleep in
 * event (or adaptive) progress through a uv_async_t; a busy poll sees it
 * through an atomic flag, without a system call.  A post does not keep
 * the loop alive by itself: libuv runs no turn of a loop with no active
 * handle (tern_ctx_run(TERN_RUN_DEFAULT) returns, TERN_RUN_ONCE too), and
 * the post waits for a turn that does.  A listener or a session keeps a
 * context's loop alive (their fds); without one, keep it alive with a
 * handle of your own.
 *
 * A stopped context (tern_ctx_stop()) still takes posts: they run at its
 * next run.  When tern_ctx_destroy() begins, the queue closes: posts still
 * queued are called once each with status -ECANCELED, on the thread that
 * destroys, before anything on the context is closed (so @fn may still
 * release a deferred request with tern_reply_error()), and a later post
 * fails with -ESHUTDOWN and never calls @fn.  @ctx must stay allocated
 * while tern_ctx_post() runs: a thread that may post must be done before
 * tern_ctx_destroy() returns (join it, or have it stop posting on a
 * -ESHUTDOWN and signal you).
 *
 * Context: any thread; not async-signal-safe (it allocates and locks).
 * Return: 0 (@fn will be called exactly once), -EINVAL (NULL @ctx or
 * @fn), -ENOMEM, -ESHUTDOWN (the context is being destroyed).
 */
TERN_EXPORT int tern_ctx_post(tern_ctx *ctx, tern_post_fn fn, void *arg);

/**
 * tern_ctx_last_error - a detailed message about the context's last failure
 *
 * Filled whenever a tern function or callback reports a failure that has
 * more to say than its code (a refused handshake, a malformed URI, a peer
 * that broke the protocol).  Valid until the next failure on this context.
 */
TERN_EXPORT const char *tern_ctx_last_error(tern_ctx *ctx);

/**
 * struct tern_mem_stats - the memory a context holds, from tern_ctx_mem()
 * @sessions: sessions the context holds, in any state, until they are freed
 * @slots_registered: slot bytes registered with an RDMA device (verbs: the
 *	send and receive slots; registered memory is pinned, all resident)
 * @slots_shared: slot bytes in shared memory this process maps (shm: the
 *	connection segments, both directions; each side of a connection maps
 *	the same segment and counts it)
 * @slots_shared_resident: the part of @slots_shared that pages back now
 *	(mincore(2) at the time of the call): what the segments really cost
 * @slots_heap: slot bytes in private memory (tcp, mem), reserved
 * @slots_heap_resident: the part of @slots_heap that pages back now
 * @staging_heap: bytes of the engine's staging buffers for large messages
 *	(idle ones kept for reuse included)
 * @staging_registered: staging bytes registered with an RDMA device
 * @staging_shared: bytes of shm staging areas mapped (lent to a peer or
 *	lent by one)
 * @user_registered: bytes of the user's regions (tern_mem_register(),
 *	tern_mem_alloc()) registered with an RDMA device
 * @user_shared: bytes of tern_mem_alloc() memory mapped
 * @conn_heap: private memory of the providers' per-connection state
 *	(bookkeeping arrays, tcp's receive buffer), not counted above
 * @session_heap: the engine's own heap for its sessions (the session, its
 *	tables of calls and requests, sized by the slot count and queue depth)
 *
 * Every figure is counted where the memory is taken and given back (the
 * resident ones are measured by the kernel at the time of the call), never
 * estimated.  A region registered with two devices counts twice.
 */
struct tern_mem_stats {
	uint64_t sessions;
	uint64_t slots_registered;
	uint64_t slots_shared;
	uint64_t slots_shared_resident;
	uint64_t slots_heap;
	uint64_t slots_heap_resident;
	uint64_t staging_heap;
	uint64_t staging_registered;
	uint64_t staging_shared;
	uint64_t user_registered;
	uint64_t user_shared;
	uint64_t conn_heap;
	uint64_t session_heap;
};

/*
 * TERN_MEM_STATS_FIELDS - X(name) for each field of struct tern_mem_stats,
 * in order: for code that walks them all (sums, printing, bindings).
 */
/* clang-format off: one field a line, as clang-format cannot keep them */
#define TERN_MEM_STATS_FIELDS(X) \
	X(sessions)              \
	X(slots_registered)      \
	X(slots_shared)          \
	X(slots_shared_resident) \
	X(slots_heap)            \
	X(slots_heap_resident)   \
	X(staging_heap)          \
	X(staging_registered)    \
	X(staging_shared)        \
	X(user_registered)       \
	X(user_shared)           \
	X(conn_heap)             \
	X(session_heap)
/* clang-format on */

/**
 * tern_ctx_mem - what a context's sessions, staging and registrations cost
 * @ctx: the context
 * @out: filled with the figures
 * @size: sizeof(*@out) as the caller was built with; fields past it are
 *	not written, so a caller built against an older header keeps working
 *
 * Each transport reports its own memory; the engine adds its staging and
 * the user's regions.  Not on any hot path: the resident figures walk the
 * context's slot mappings with mincore(2).
 *
 * Return: 0, or -EINVAL (@ctx or @out NULL, @size 0).
 */
TERN_EXPORT int tern_ctx_mem(tern_ctx *ctx, struct tern_mem_stats *out, size_t size);

/* ------------------------------------------------------------------------ */
/* Sessions                                                                  */

/**
 * struct tern_service_ref - a service, as a client requires it of a server
 * @name: the name declared in the IDL ("Calc"); 1..63 bytes of [A-Za-z0-9_.]
 * @schema_hash: tern-gen's hash of its methods and message layouts
 * @layout: tern-gen's description of its methods and their message layouts
 *	(docs/idl.md, "Compatible changes"), or NULL.  With a layout on both
 *	sides the service check compares method by method, and accepts the
 *	compatible changes (a method or a service added, fields appended);
 *	without one on either side it compares @schema_hash, and any
 *	difference is refused.
 * @layout_len: its length in bytes
 *
 * Generated code provides one per service (CALC_SERVICE_REF, calc_service).
 */
struct tern_service_ref {
	const char *name;
	uint64_t schema_hash;
	const void *layout;
	size_t layout_len;
};

/**
 * tern_service_register - declare that this context serves a service
 * @ctx: the context
 * @name: the service's name
 * @schema_hash: its schema hash
 *
 * Generated skeletons call this next to registering the service's methods,
 * so that clients requiring the service (struct tern_session_opts
 * @services) are checked at connect time.  A service registered this way
 * has no layout: a client is accepted only with the same @schema_hash.
 *
 * Return: 0, -EINVAL (bad name), -EEXIST (already registered), -ENOMEM.
 */
TERN_EXPORT int tern_service_register(tern_ctx *ctx, const char *name, uint64_t schema_hash);

/**
 * tern_service_register_ref - declare that this context serves a service,
 *	with its layout
 * @ctx: the context
 * @ref: the service (generated code: &calc_service); @ref->layout is
 *	copied
 *
 * What generated skeletons call.  With the layout, the service check
 * accepts a client built from another version of the service as long as
 * the two versions differ only by compatible changes (docs/idl.md): a
 * method one side lacks fails at the caller with TERN_ENOMETHOD before
 * anything is sent, and a method whose kind or message layout changed
 * refuses the client with TERN_ESCHEMA, naming the method and the field.
 *
 * Return: 0, -EINVAL (bad name or a malformed layout), -EEXIST (already
 * registered), -ENOMEM.
 */
TERN_EXPORT int tern_service_register_ref(tern_ctx *ctx, const struct tern_service_ref *ref);

/**
 * struct tern_session_opts - options for a session (and a listener's sessions)
 * @size: sizeof(struct tern_session_opts), or 0
 * @slot_size: bytes per slot, header included (default 8192, at least 64,
 *	a multiple of 64, at most 1 MiB); the largest payload in one message
 *	is tern_session_max_payload()
 * @slot_count: calls in flight per direction (default 64, 1..4096)
 * @nonblock: 0: a call that finds no free slot or credit waits in a bounded
 *	queue; 1: it fails at once with -EAGAIN
 * @queue_depth: wait mode: the bound of that queue (default 4 * slot_count);
 *	beyond it calls fail with -ENOBUFS
 * @call_timeout_ms: the deadline of calls that do not set their own
 *	(0: no deadline)
 * @connect_timeout_ms: connection set-up deadline (default 10000)
 * @schema_hash: a digest of the services this side expects; when both
 *	peers set one and they differ, the handshake is refused with
 *	TERN_ESCHEMA (0: don't check)
 * @on_close: called once when the session ends for any reason other than a
 *	failed connect: the peer went away (-ECONNRESET), the peer broke the
 *	protocol (TERN_EPEER), or tern_session_close() with a NULL callback
 *	(0, as the close callback would have had); a close with a callback
 *	of its own runs that one instead, and tern_ctx_destroy() runs
 *	neither.  A session that fails is closed by tern itself; the handle
 *	is freed when this callback returns, so keep no pointer to it past
 *	that.
 * @data: the caller's pointer, returned by tern_session_data()
 * @services: client side: the services this session will call (generated
 *	code provides a tern_service_ref per service).  Right after the
 *	transport is up the server checks each against its registered
 *	services, method by method where both sides have the layout: a
 *	method or a service the server lacks does not fail the connect, but
 *	calls to it then fail at once with TERN_ENOMETHOD, before anything is
 *	sent; a method whose kind or messages changed incompatibly fails it
 *	with TERN_ESCHEMA, naming the service, the method and the field; a
 *	server that serves none of the services, or lacks one listed
 *	without a layout, with TERN_ENOSERVICE.  Refusals reach both sides.
 *	The array need only live until tern_connect() returns.
 * @nservices: entries in @services (at most 64)
 * @max_msg: the largest message this side accepts (default 1 GiB, at most
 *	4 GiB - 1).  Messages larger than a slot move by RDMA (see
 *	tern_mem_register()); the peer learns this limit in the handshake
 *	and refuses larger calls with -EMSGSIZE before sending anything.  A
 *	call's reply buffer is offered to the server up to the smaller of the
 *	two sides' max_msg (a longer reply is -EMSGSIZE).  A peer that sends
 *	a larger request, or names a larger reply buffer, than the handshake
 *	allows breaks the protocol: its session fails with TERN_EPEER.
 * @max_staging: the most staging memory the session holds at once, in
 *	bytes (default 4 * @max_msg).  Staging is the registered memory large
 *	messages pass through when they are not in a tern_mem_register()ed
 *	region: as a server, every large request it pulls and every large
 *	reply it builds for a reply buffer; as a caller, large requests and
 *	reply buffers.  It comes in power-of-two sizes from 64 KiB.  A call
 *	that would take the session over this fails with -ENOBUFS, counted in
 *	@staging_refused: tern_call() returns it, or the server answers the
 *	call with it.  The session itself goes on.
 * @cancel_timeout_ms: how long after a call's deadline the server may
 *	still hold it (default 10000).  A call that times out is cancelled:
 *	the server answers it once it has let go of the caller's memory
 *	(see tern_call(), "Deadlines").  A server that answers neither the
 *	call nor its cancel within this costs the session: it closes, its
 *	calls fail and @on_close hears -ECONNABORTED, tern_ctx_last_error()
 *	naming the call.  Until then the call keeps its place in the window.
 *
 * Both peers must use the same slot size and count; a mismatch is refused
 * with TERN_EGEOMETRY on both sides.  A session registers
 * (2 * slot_count + 3) slots in each direction, once, at creation: one ring
 * half for requests, one for replies, so that replies can never overwrite
 * requests when both peers call at once, plus three for control messages
 * (two credit messages and one ACK).
 */
struct tern_session_opts {
	uint32_t size;
	uint32_t slot_size;
	uint32_t slot_count;
	int nonblock;
	uint32_t queue_depth;
	uint32_t call_timeout_ms;
	uint32_t connect_timeout_ms;
	uint64_t schema_hash;
	void (*on_close)(tern_session *s, int reason);
	void *data;
	const struct tern_service_ref *services;
	uint32_t nservices;
	uint32_t max_msg;
	uint64_t max_staging;
	uint32_t cancel_timeout_ms;
};

/**
 * struct tern_session_counters - what a session has seen
 * @calls_sent: calls this side issued (posted to the peer)
 * @calls_completed: of those, calls whose callback ran with any status
 * @calls_served: requests from the peer handed to a handler
 * @bytes_sent: payload bytes sent (requests and replies)
 * @bytes_received: payload bytes received
 * @credit_stalls: calls that found no slot or credit (and waited or failed)
 * @timeouts: calls that passed their deadline
 * @errors: calls completed with an error status, timeouts included
 * @late_replies: replies that arrived after their call had timed out
 *	(dropped, never delivered to a newer call)
 * @protocol_errors: malformed or out-of-protocol messages from the peer
 * @credit_msgs_sent: explicit credit messages sent
 * @credit_msgs_received: explicit credit messages received
 * @oneway_sent: one-way messages this side sent
 * @oneway_received: one-way messages handed to a handler
 * @oneway_dropped: one-way messages for a method that is not a registered
 *	one-way method here (there is no reply to tell the sender)
 * @bulk_bytes_read: bytes this side pulled from the peer (large requests)
 * @bulk_bytes_written: bytes this side pushed into the peer (large replies)
 * @staging_refused: large calls failed with -ENOBUFS because they would
 *	have taken this session's staging over @max_staging (as caller or as
 *	server)
 */
struct tern_session_counters {
	uint64_t calls_sent;
	uint64_t calls_completed;
	uint64_t calls_served;
	uint64_t bytes_sent;
	uint64_t bytes_received;
	uint64_t credit_stalls;
	uint64_t timeouts;
	uint64_t errors;
	uint64_t late_replies;
	uint64_t protocol_errors;
	uint64_t credit_msgs_sent;
	uint64_t credit_msgs_received;
	uint64_t oneway_sent;
	uint64_t oneway_received;
	uint64_t oneway_dropped;
	uint64_t bulk_bytes_read;
	uint64_t bulk_bytes_written;
	uint64_t staging_refused;
};

/**
 * tern_connect_cb - a connection attempt finished
 * @s: the session; on failure it is already closed and is freed after the
 *	callback returns
 * @status: 0, or a negative errno / TERN_E* code; tern_ctx_last_error()
 *	has the details
 */
typedef void (*tern_connect_cb)(tern_session *s, int status);

/**
 * tern_accept_cb - a listener accepted (or refused) a session
 * @l: the listener
 * @s: the new, ready session, or NULL when @status is non-zero
 * @status: 0, or why an incoming connection was refused (a handshake
 *	mismatch, resources); tern_ctx_last_error() has the details
 */
typedef void (*tern_accept_cb)(tern_listener *l, tern_session *s, int status);

/*
 * tern_session_close_cb - a session has closed
 * @reason: 0 after tern_session_close(); otherwise why it failed
 *	(-ECONNRESET: the peer went away; TERN_EPEER: it broke the protocol)
 */
typedef void (*tern_session_close_cb)(tern_session *s, int reason);
typedef void (*tern_listener_close_cb)(tern_listener *l);

/**
 * tern_connect - open a session to a URI
 * @ctx: the context
 * @uri: "rdma://host:port" (also "shm://name" and "tcp://host:port" where
 *	those providers are built in)
 * @opts: session options, or NULL for the defaults
 * @cb: called once when the session is ready or has failed
 * @out: the session handle, valid at once (calls fail with -ENOTCONN until
 *	@cb reports success)
 *
 * Return: 0 when the attempt started; -EINVAL for a malformed URI,
 * -EPROTONOSUPPORT for an unknown scheme, or another negative errno.
 */
TERN_EXPORT int tern_connect(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
			     tern_connect_cb cb, tern_session **out);

/**
 * tern_connect_sync - open a session and wait for it, running the loop
 * @timeout_ms: 0 means @opts' connect timeout
 *
 * Must not be called from a tern callback.
 *
 * Return: 0 with *@out ready, or the failure (*@out is then NULL).
 */
TERN_EXPORT int tern_connect_sync(tern_ctx *ctx, const char *uri,
				  const struct tern_session_opts *opts, uint32_t timeout_ms,
				  tern_session **out);

/**
 * tern_listen - accept sessions on a URI
 * @uri: "rdma://host:port"; port 0 picks a free port (see tern_listener_port())
 * @opts: options every accepted session gets (their geometry must match
 *	the client's)
 * @cb: called for every accepted or refused connection
 *
 * Return: 0, -EINVAL, -EPROTONOSUPPORT, -EADDRINUSE, -EADDRNOTAVAIL, ...
 */
TERN_EXPORT int tern_listen(tern_ctx *ctx, const char *uri, const struct tern_session_opts *opts,
			    tern_accept_cb cb, tern_listener **out);

/**
 * tern_listener_port - the port a listener is bound to (0 for shm)
 */
TERN_EXPORT int tern_listener_port(tern_listener *l);

/**
 * tern_listener_uri - the URI a client should connect to, with the real port
 */
TERN_EXPORT const char *tern_listener_uri(tern_listener *l);

/**
 * tern_listener_set_data - attach the caller's pointer to a listener
 */
TERN_EXPORT void tern_listener_set_data(tern_listener *l, void *data);

/**
 * tern_listener_data - the pointer given to tern_listener_set_data()
 */
TERN_EXPORT void *tern_listener_data(tern_listener *l);

/**
 * tern_listener_close - stop accepting; @cb (may be NULL) runs when closed
 *
 * Sessions already accepted stay open.
 */
TERN_EXPORT void tern_listener_close(tern_listener *l, tern_listener_close_cb cb);

/**
 * tern_session_close - close a session asynchronously
 * @s: the session
 * @cb: called once the transport is torn down (may be NULL: then the
 *	session's @on_close, if any, runs, with the same reason: 0, or why
 *	the session had failed already)
 *
 * Calls still pending complete with -ECANCELED before @cb runs.  Requests
 * held by deferred handlers stay valid until they are replied to (the reply
 * is then dropped): the session's memory is released only after @cb and
 * after the last such request.  Closing twice returns -EALREADY.
 */
TERN_EXPORT int tern_session_close(tern_session *s, tern_session_close_cb cb);

/**
 * tern_session_counters - copy a session's counters
 */
TERN_EXPORT int tern_session_counters(tern_session *s, struct tern_session_counters *out);

/**
 * tern_session_max_payload - the largest request or reply in one message
 *
 * slot_size minus the 32-byte wire header.
 */
TERN_EXPORT size_t tern_session_max_payload(tern_session *s);

/**
 * tern_session_ctx - the context a session belongs to
 */
TERN_EXPORT tern_ctx *tern_session_ctx(tern_session *s);

/**
 * tern_session_set_data - attach the caller's pointer to a session
 *
 * Accepted sessions start with the listener's @opts.data.
 */
TERN_EXPORT void tern_session_set_data(tern_session *s, void *data);

/**
 * tern_session_data - the session's caller pointer (@opts.data or set later)
 */
TERN_EXPORT void *tern_session_data(tern_session *s);

/**
 * tern_session_is_ready - 1 once connected and until closed or failed
 *
 * 0 as soon as the transport has said the connection is gone inside a
 * call of yours (tern_call() returned -ENOTCONN): the session's failure
 * itself, and its calls' callbacks, follow from the loop.
 */
TERN_EXPORT int tern_session_is_ready(tern_session *s);

/**
 * tern_session_peer - the peer's URI ("rdma://10.0.0.2:7000")
 */
TERN_EXPORT const char *tern_session_peer(tern_session *s);

/* ------------------------------------------------------------------------ */
/* Methods (server side)                                                     */

/**
 * struct tern_iov - bytes a raw handler replies with
 *
 * They need to stay valid only until the handler returns: the runtime
 * copies them once, into a registered send slot, or, for a reply larger
 * than a slot (which goes into the caller's reply buffer), into registered
 * staging.  The one exception is a large reply the handler chose to send
 * with no copy, from a region given to tern_mem_register(): see
 * tern_req_on_reply_sent().
 */
struct tern_iov {
	const void *base;
	size_t len;
};

/**
 * tern_reply_sent_cb - the runtime reads a raw reply's bytes no more
 * @s: the session the request came on (it may be closing)
 * @status: 0 once the reply has left, or why it did not (a negative errno:
 *	the transfer failed or the handler failed the call, and the caller
 *	got that error; -ECONNRESET: the session went down; -ECANCELED: its
 *	context was destroyed)
 * @user: the pointer given to tern_req_on_reply_sent()
 */
typedef void (*tern_reply_sent_cb)(tern_session *s, int status, void *user);

/**
 * tern_req_on_reply_sent - reply large from registered memory with no copy,
 *	and be told when it is sent
 * @req: a call, inside its raw handler
 * @cb: called once, from the context's thread, when the runtime no longer
 *	reads the reply's bytes
 * @user: passed to @cb
 *
 * A raw handler's reply larger than a slot is normally copied into staging
 * before the handler's memory is let go (struct tern_iov).  After this
 * call, if its bytes lie in a region given to tern_mem_register(), it is
 * pushed from there instead (RDMA WRITE on verbs), after the handler has
 * returned: the bytes must then stay valid and unchanged, and the region
 * registered, until @cb runs.  @cb runs for whatever reply the handler
 * gives, large or not (one that fits a slot has been copied already when
 * the handler returns, and @cb runs then), and for a failed call too.
 *
 * Context: inside the raw handler only.
 * Return: 0, or -EINVAL (not in a raw handler, or @cb NULL).
 */
TERN_EXPORT int tern_req_on_reply_sent(tern_req *req, tern_reply_sent_cb cb, void *user);

/**
 * tern_raw_handler - a raw method
 * @req: the request; valid until the handler returns
 * @in: the request bytes, borrowed from the receive slot
 * @in_len: their length
 * @out: set it to the reply bytes (left empty: an empty reply)
 * @user: the pointer given at registration
 *
 * Return: 0, or a negative errno / TERN_E* code that the caller receives
 * as its status (with the message set by tern_req_set_error(), if any).
 */
typedef int (*tern_raw_handler)(tern_req *req, const void *in, size_t in_len, struct tern_iov *out,
				void *user);

/**
 * tern_inplace_handler - an inplace method
 * @req: the request; valid until the handler returns
 * @in: the request bytes, borrowed from the receive slot
 * @in_len: their length
 * @out: the reply's place in a registered send slot
 * @out_cap: the room there
 * @user: the pointer given at registration
 *
 * The handler writes its reply straight into @out; the runtime posts that
 * slot as it is, with no copy.
 *
 * Return: the reply's length (at most @out_cap: more is an error, never a
 * truncated reply), or a negative errno / TERN_E* code.
 */
typedef ssize_t (*tern_inplace_handler)(tern_req *req, const void *in, size_t in_len, void *out,
					size_t out_cap, void *user);

/**
 * tern_deferred_handler - a deferred method
 * @req: the request; it stays valid, and so do @in's bytes, until the
 *	handler replies with tern_reply_commit() or tern_reply_error()
 *
 * Return: 0 to reply later, or a negative errno / TERN_E* code to fail the
 * call at once (the request is then finished).
 */
typedef int (*tern_deferred_handler)(tern_req *req, const void *in, size_t in_len, void *user);

/**
 * tern_register_raw - register a raw method on a context
 * @ctx: the context; the method serves every session on it
 * @method_id: non-zero and below 0xffffff00 (tern's own); generated code
 *	uses a stable hash of "Service.method"
 * @fn: the handler
 * @user: passed to @fn
 *
 * Return: 0, -EINVAL (id 0 or NULL @fn), -EEXIST (id taken), -ENOMEM.
 */
TERN_EXPORT int tern_register_raw(tern_ctx *ctx, uint32_t method_id, tern_raw_handler fn,
				  void *user);

/**
 * tern_register_inplace - register an inplace method; see tern_register_raw()
 */
TERN_EXPORT int tern_register_inplace(tern_ctx *ctx, uint32_t method_id, tern_inplace_handler fn,
				      void *user);

/**
 * tern_register_deferred - register a deferred method; see tern_register_raw()
 */
TERN_EXPORT int tern_register_deferred(tern_ctx *ctx, uint32_t method_id, tern_deferred_handler fn,
				       void *user);

/**
 * tern_oneway_handler - a one-way method: no reply
 * @req: the message; valid until the handler returns
 * @in: the message bytes, borrowed from the receive slot
 *
 * Messages of one session reach their handler in the order they were sent.
 * The slot is taken back when the handler returns, unless the handler keeps
 * it with tern_req_hold().
 */
typedef void (*tern_oneway_handler)(tern_req *req, const void *in, size_t in_len, void *user);

/**
 * tern_register_oneway - register a one-way method; see tern_register_raw()
 */
TERN_EXPORT int tern_register_oneway(tern_ctx *ctx, uint32_t method_id, tern_oneway_handler fn,
				     void *user);

/**
 * struct tern_batch_item - one request of a batch
 * @req: the request (tern_req_session() tells its session)
 * @in: its bytes, borrowed from its receive slot until the handler returns
 *	(or, held with tern_req_hold(), until tern_req_release())
 * @in_len: their length
 * @out: where its reply goes, in a registered send slot (NULL for one-way)
 * @out_cap: the room there (0 for one-way)
 * @status: set by the handler: the reply's length, or a negative errno to
 *	fail this item alone (tern_req_set_error() adds a message); ignored
 *	for one-way batches.  Starts at 0 (an empty reply).
 */
struct tern_batch_item {
	tern_req *req;
	const void *in;
	size_t in_len;
	void *out;
	size_t out_cap;
	ssize_t status;
};

/**
 * tern_batch_handler - run one batch
 * @items: the requests, in arrival order
 * @n: how many (1..max)
 * @user: the pointer given at registration
 */
typedef void (*tern_batch_handler)(struct tern_batch_item *items, size_t n, void *user);

/**
 * struct tern_batch_opts - how requests are gathered into batches
 * @size: sizeof(struct tern_batch_opts), or 0
 * @max: run the handler once this many requests wait (1..65536)
 * @wait_us: ...or once the first of them has waited this long.  Busy
 *	progress checks it on every loop turn; event progress wakes on a
 *	libuv timer, which has millisecond resolution.
 * @oneway: the method is one-way: items have no reply
 *
 * Requests are gathered from every session of the context.  A session's
 * requests wait in their receive slots, so a batch is also run as soon as a
 * contributing peer has no credit left to send more: gathering never makes
 * a sender wait on itself.
 */
struct tern_batch_opts {
	uint32_t size;
	uint32_t max;
	uint32_t wait_us;
	int oneway;
};

/**
 * tern_register_batch - register a batched method; see tern_register_raw()
 *
 * Return: 0, -EINVAL (bad id, handler or options), -EEXIST, -ENOMEM.
 */
TERN_EXPORT int tern_register_batch(tern_ctx *ctx, uint32_t method_id,
				    const struct tern_batch_opts *opts, tern_batch_handler fn,
				    void *user);

/**
 * tern_unregister - remove a method; requests for it then get TERN_ENOMETHOD
 *
 * Return: 0 or -ENOENT.
 */
TERN_EXPORT int tern_unregister(tern_ctx *ctx, uint32_t method_id);

/**
 * tern_req_session - the session a request arrived on
 */
TERN_EXPORT tern_session *tern_req_session(tern_req *req);

/**
 * tern_req_method - the request's method id
 */
TERN_EXPORT uint32_t tern_req_method(tern_req *req);

/**
 * tern_req_set_error - attach a short message to the error a handler returns
 *
 * At most 200 bytes reach the caller; longer messages are cut.  A one-way
 * handler that calls it rejects its message: there is no reply, so the
 * message is counted in oneway_dropped and the text goes to
 * tern_ctx_last_error().
 */
TERN_EXPORT void tern_req_set_error(tern_req *req, const char *msg);

/**
 * tern_req_cancelled - whether the caller gave up on this call
 * @req: a request a handler holds (a deferred one, typically)
 *
 * A call whose deadline passes at the caller is cancelled there, and the
 * caller keeps the call's place in its window (a receive for the reply,
 * and the credit this request holds here) until this side answers it.  A
 * handler that holds requests for long (a long-poll) should look here and
 * answer a cancelled one soon, with anything (tern_reply_error() with
 * -ECANCELED is the custom): the reply is dropped at the caller, but it
 * gives the window back.  A handler that does not answer within the
 * caller's cancel_timeout_ms (struct tern_session_opts) costs the session:
 * the caller closes it.  A cancelled call's reply is never pushed into
 * the caller's reply buffer (it is answered with -ECANCELED instead), and
 * a large request not yet pulled when the cancel came is not pulled: its
 * handler never runs.
 *
 * Return: 1 when cancelled, else 0.
 */
TERN_EXPORT int tern_req_cancelled(tern_req *req);

/**
 * tern_req_zero_extend - a request's bytes, read as a longer message
 * @req: a request or one-way message, in its handler, deferred or held
 * @len: the size of the message type the handler reads them as
 *
 * A peer built before fields were appended to a message type sends it
 * shorter; the fields it does not know read as zero (docs/idl.md,
 * "Compatible changes").  Generated server code calls this; a batch
 * handler reads its items through the generated P_M_req_view().
 *
 * Return: the request's own bytes when they are at least @len long;
 * otherwise a copy of them followed by zeros up to @len, owned by @req and
 * valid as long as its bytes are (until the reply, or the release of a
 * hold).  NULL on -ENOMEM, or when @len is over 1 MiB.
 */
TERN_EXPORT const void *tern_req_zero_extend(tern_req *req, size_t len);

/**
 * tern_req_hold - keep a one-way message's or a batch item's receive slot
 * @req: a one-way message, inside its handler, or a batch item, inside the
 *	batch handler
 *
 * The runtime takes such a slot back when the handler returns; a held one
 * stays as it is (@in keeps its bytes, unchanged) until tern_req_release().
 * A held slot keeps its credit: a sender whose credits are all held waits
 * (tern_send() returns -EAGAIN, calls queue), it loses nothing.  A
 * held batch call's reply is sent at its release.  Order of delivery is
 * unchanged.  Each hold needs its own release.
 *
 * If the session goes down meanwhile, the handle and the bytes stay valid
 * until released: the transport leaves the slots to the engine, which
 * frees them with the session, after the last release (or at
 * tern_ctx_destroy(), which ends every hold).
 *
 * Context: the context's thread only.
 * Return: the handle to release (@req itself), or NULL when @req is not a
 * one-way message or batch item in its handler (raw, inplace and deferred
 * calls keep their slot with a deferred handler instead).
 */
TERN_EXPORT tern_req *tern_req_hold(tern_req *req);

/**
 * tern_req_release - give back a slot kept with tern_req_hold()
 * @req: the handle tern_req_hold() returned
 *
 * The slot is reposted and its credit returned (a batch call's reply is
 * sent) once every hold is released and the handler has returned.  Do not
 * use @req or its bytes after the last release.
 *
 * Context: the context's thread only; inside or outside a callback.
 * Return: 0, or -EINVAL if @req is not held.
 */
TERN_EXPORT int tern_req_release(tern_req *req);

/**
 * tern_reply_acquire - the send slot a deferred reply is written into
 * @req: a request held by a deferred handler
 * @out: where the reply goes (inside a registered send slot)
 * @cap: the room there
 *
 * Return: 0; -EINVAL if @req is not a pending deferred request; -ECONNRESET
 * if its session is gone (@req is then finished: do not use it again);
 * -ENOMEM or -ENOBUFS (a reply buffer larger than a slot needs staging,
 * and there is no memory for it, or it would exceed max_staging; the
 * request stays pending: answer it with tern_reply_error()).
 */
TERN_EXPORT int tern_reply_acquire(tern_req *req, void **out, size_t *cap);

/**
 * tern_reply_commit - send a deferred reply of @len bytes from its slot
 *
 * Finishes @req.  On a session that has closed meanwhile, the reply is
 * dropped and -ECONNRESET returned; @req is finished either way.
 *
 * Return: 0, -EMSGSIZE (@len over the slot; an error reply is sent
 * instead), -ENOMEM or -ENOBUFS (no staging for a reply larger than a slot;
 * an error reply with that code is sent instead), -ECONNRESET, -EINVAL.
 */
TERN_EXPORT int tern_reply_commit(tern_req *req, size_t len);

/**
 * tern_reply_error - fail a deferred request with @err and a short message
 *
 * Finishes @req.  @msg may be NULL.
 */
TERN_EXPORT int tern_reply_error(tern_req *req, int err, const char *msg);

/* ------------------------------------------------------------------------ */
/* Calls (client side)                                                       */

/**
 * tern_call_cb - a call finished
 * @s: the session
 * @status: 0, or a negative errno / TERN_E* code: the handler's own code,
 *	TERN_ENOMETHOD, -ETIMEDOUT (deadline, see tern_call()), -ECONNRESET
 *	(peer gone), -ECONNABORTED (this side gave the session up: the peer
 *	held a call past its deadline and cancel_timeout_ms),
 *	-ECANCELED (session closed locally), -EMSGSIZE (reply too large),
 *	-ENOBUFS (the server's staging for the session is full), TERN_EPEER
 *	(the peer broke the protocol; the session fails too)...  A remote
 *	code crosses the wire only in -1 .. -(TERN_ERRNO_BASE + 999); a
 *	handler's code outside that range arrives as TERN_EREMOTE, and an
 *	error reply carrying anything else is a protocol violation.
 * @reply: on success the reply bytes, borrowed from the receive slot and
 *	valid only during the callback; on a remote error the remote's short
 *	message (NUL-terminated, maybe empty)
 * @len: their length
 * @user: the pointer given with the call
 */
typedef void (*tern_call_cb)(tern_session *s, int status, const void *reply, size_t len,
			     void *user);

/**
 * tern_call_status_remote - whether a failed call's status came from the peer
 * @s: the session of the tern_call_cb running now
 *
 * The codes overlap: a handler may fail a call with -ECONNRESET or
 * -ETIMEDOUT, which this side also reports when the session goes down or
 * the deadline passes.  Inside a tern_call_cb (or a typed proxy's callback)
 * this tells them apart.
 *
 * Return: 1 when the peer sent the status (the handler's own code,
 * TERN_ENOMETHOD, a refusal of the request or of the reply's size), 0 when
 * this side produced it (deadline, session down or closed, a reply larger
 * than the reply buffer), and 0 outside a call callback and in callbacks
 * nested in one.
 */
TERN_EXPORT int tern_call_status_remote(tern_session *s);

/**
 * struct tern_call_opts - per-call options
 * @size: sizeof(struct tern_call_opts), or 0
 * @timeout_ms: this call's deadline from now (0: the session's default)
 * @reply_buf: where the reply goes, whatever its size; needed for a reply
 *	larger than a slot, which the server then writes straight into it
 *	(RDMA WRITE on verbs).  Inside a region given to tern_mem_register()
 *	no copy is made; otherwise the reply passes through a registered
 *	staging buffer and is copied once.  The callback's @reply then points
 *	here.  When the call times out, see tern_call(), "Deadlines": a
 *	reply buffer inside a registration stays the server's until the
 *	callback runs; one outside any registration is not exposed at all
 *	(its staging takes the late reply, counted in late_replies, and drops
 *	it), and is the caller's again at the deadline.
 * @reply_cap: its size; a longer reply is an error, never truncated
 */
struct tern_call_opts {
	uint32_t size;
	uint32_t timeout_ms;
	void *reply_buf;
	size_t reply_cap;
};

/**
 * tern_call - call a method, copying the request into a send slot
 * @s: a ready session
 * @method_id: the method
 * @req: request bytes; copied at once when a slot and credit are free,
 *	otherwise (wait mode) they must stay valid until @cb runs.  A request
 *	larger than a slot always stays valid until @cb runs: the server
 *	pulls it (RDMA READ on verbs); inside a region given to
 *	tern_mem_register() it is not copied at all, otherwise once, into a
 *	registered staging buffer.
 * @len: up to the peer's max_msg (see struct tern_session_opts)
 * @cb: completion callback, called exactly once when this returns 0
 * @user: passed to @cb
 * @opts: NULL, or per-call options
 *
 * Deadlines: a call whose deadline (@opts' timeout_ms, or the session's
 * call_timeout_ms) passes completes with -ETIMEDOUT, and is cancelled at
 * the server: a cancel message asks it to let go, and it answers with the
 * call's one reply, which this side drops (late_replies).  The server
 * does not pull a request or push a reply once it has the cancel, and a
 * request still waiting there never reaches its handler.  Until the
 * answer, the call keeps its place in the window (credit.h), so calls
 * after it may wait or get -EAGAIN; a server that answers neither call
 * nor cancel within the session's cancel_timeout_ms closes the session
 * (-ECONNABORTED, see struct tern_session_opts).  When @cb runs:
 *
 * - the call's memory is all the engine's (a request that fit a slot or
 *   was staged, no reply buffer or one outside any registration): at the
 *   deadline; @req and @reply_buf are the caller's again then.
 * - the call lent the server memory of the caller's own (a request
 *   larger than a slot, or a reply buffer, inside a tern_mem_register()ed
 *   region): when the server has let go of it (its answer), at the latest
 *   cancel_timeout_ms after the deadline (the session then closes), with
 *   -ETIMEDOUT all the same.  The server may read the request or write
 *   the reply buffer until then, but never after @cb: reuse them in @cb.
 *
 * Return: 0; -EMSGSIZE (over the peer's max_msg, or over a slot on a
 * transport without large messages); -EAGAIN (nonblock session with no
 * free slot or credit); -ENOBUFS (wait queue full, or staging the request
 * or reply buffer would exceed the session's max_staging); -ENOTCONN;
 * TERN_ENOMETHOD (the server said in the service check that it lacks the
 * method: nothing is sent).
 */
TERN_EXPORT int tern_call(tern_session *s, uint32_t method_id, const void *req, size_t len,
			  tern_call_cb cb, void *user, const struct tern_call_opts *opts);

/**
 * tern_call_acquire - take a send slot to build a request in, zero-copy
 * @s: a ready session
 * @buf: where the request goes (inside a registered send slot)
 * @cap: the room there
 * @out: the call, to pass to tern_call_commit() or tern_call_abort()
 *
 * Reserves the slot, a credit and room for the reply, so the commit that
 * follows cannot stall.  Both modes fail fast here: there are no bytes to
 * queue yet.
 *
 * Return: 0, -EAGAIN (no slot or credit now), -ENOTCONN.
 */
TERN_EXPORT int tern_call_acquire(tern_session *s, void **buf, size_t *cap, tern_callslot **out);

/**
 * tern_call_commit - send an acquired slot as a call of @len bytes
 * @opts: NULL, or per-call options, as for tern_call(): a reply buffer
 *	takes the reply as it does there, whatever its size.  One larger
 *	than a slot is named to the server by a descriptor that goes before
 *	the request, so the request moves up in the slot; a request too long
 *	to leave room for it goes as a large request, through staging (one
 *	copy).
 *
 * Return: 0 (and @cb will run), -EMSGSIZE (@len over the slot; the call is
 * aborted), -ENOTCONN (the session failed meanwhile; the call is aborted),
 * TERN_ENOMETHOD (a method the server lacks, see tern_call(); aborted),
 * -ENOBUFS or -ENOMEM (no staging for the reply buffer or the moved
 * request, see tern_call(); aborted).
 */
TERN_EXPORT int tern_call_commit(tern_callslot *c, uint32_t method_id, size_t len, tern_call_cb cb,
				 void *user, const struct tern_call_opts *opts);

/**
 * tern_call_abort - give an acquired slot back unused
 */
TERN_EXPORT void tern_call_abort(tern_callslot *c);

/**
 * tern_mem_register - register memory for large messages, once
 * @ctx: the context
 * @addr: start of the region
 * @len: its length
 * @out: the registration
 *
 * Large requests and reply buffers inside a registered region move with no
 * copy; so do a raw handler's large replies from one, when the handler
 * asks to be told when they are sent (tern_req_on_reply_sent()).  The
 * context keeps a registration cache: registering a range that an existing
 * registration covers returns that registration (counted, so each
 * tern_mem_register() needs its tern_mem_deregister()), and the transports
 * register it with a device lazily, at first use on it.
 *
 * Return: 0, -EINVAL, -ENOMEM.
 */
TERN_EXPORT int tern_mem_register(tern_ctx *ctx, void *addr, size_t len, tern_mr **out);

/**
 * tern_mem_alloc - allocate memory for large messages that a same-host peer may map
 * @ctx: the context
 * @len: how many bytes (rounded up to whole pages)
 * @addr: where the memory starts, page aligned and zeroed
 * @out: its registration, as tern_mem_register() would make it
 *
 * The memory is a sealed memfd, mapped shared.  Over shm:// a large request
 * or reply buffer in it moves with no ptrace access between the processes
 * and no copy on this side: the first transfer that names the region hands
 * the memfd to the peer, which maps it and copies straight in or out.  The
 * peer then holds a mapping of the *whole* region for as long as it likes
 * (an honest peer unmaps it when the connection or the registration ends;
 * a hostile one may keep reading and writing it), so put in it only data
 * that every peer it is used with may see and change.  Other transports
 * treat it like any registered region.
 *
 * Release it with tern_mem_deregister(), which unmaps it (only this
 * process's mapping: a peer's stays valid, and harmless, until it unmaps).
 *
 * Return: 0, -EINVAL, -ENOMEM, or the -errno of memfd_create() or mmap().
 */
TERN_EXPORT int tern_mem_alloc(tern_ctx *ctx, size_t len, void **addr, tern_mr **out);

/**
 * tern_mem_deregister - drop a registration made by tern_mem_register() or tern_mem_alloc()
 *
 * The region must not be in use by a call in flight.  The last reference
 * to a tern_mem_alloc() region unmaps it.
 *
 * Return: 0, -EINVAL.
 */
TERN_EXPORT int tern_mem_deregister(tern_mr *mr);

/**
 * tern_send_cb - a queued one-way message left (or could not leave)
 * @status: 0 once the message is copied into a slot (its buffer may be
 *	reused), or why it never will be (-ECONNRESET, -ECANCELED, -ETIMEDOUT)
 */
typedef void (*tern_send_cb)(tern_session *s, int status, void *user);

#define TERN_QUEUED 1 /* tern_send(): the message waits in the queue; @cb tells when it left */

/**
 * tern_send - send a one-way message, copying it into a send slot
 * @s: a ready session
 * @method_id: a one-way method at the peer
 * @msg: the bytes; free again when this returns 0
 * @len: at most tern_session_max_payload()
 * @cb: NULL, or called once if the message has to wait (see below)
 * @user: passed to @cb
 *
 * Messages go out in the order they were sent.  When no slot or credit is
 * free: a nonblock session returns -EAGAIN; a wait session queues the
 * message if @cb is given (@msg must then stay valid until @cb runs) and
 * returns TERN_QUEUED, or returns -EAGAIN without @cb.  Credits come back
 * without replies, in batched credit messages.
 *
 * Return: 0 (sent), TERN_QUEUED, -EAGAIN, -ENOBUFS (queue full), -EMSGSIZE,
 * -ENOTCONN, TERN_ENOMETHOD (a method the server lacks, see tern_call()).
 */
TERN_EXPORT int tern_send(tern_session *s, uint32_t method_id, const void *msg, size_t len,
			  tern_send_cb cb, void *user);

/**
 * tern_send_acquire - take a send slot to build a one-way message in
 *
 * Like tern_call_acquire(), but reserves only a credit (nothing comes back).
 *
 * Return: 0, -EAGAIN (no slot or credit now), -ENOTCONN.
 */
TERN_EXPORT int tern_send_acquire(tern_session *s, void **buf, size_t *cap, tern_callslot **out);

/**
 * tern_send_commit - send an acquired slot as a one-way message of @len bytes
 *
 * Return: 0, -EMSGSIZE, -ENOTCONN or TERN_ENOMETHOD (the slot is then
 * given back), -EINVAL.
 */
TERN_EXPORT int tern_send_commit(tern_callslot *c, uint32_t method_id, size_t len);

/**
 * tern_session_wait_writable - run the loop until a slot and a credit are free
 * @timeout_ms: 0: no limit
 *
 * For producers that choose to wait when credits run out: after -EAGAIN,
 * call this, then send again.  Must not be called from a tern callback.
 *
 * Return: 0, -ETIMEDOUT, -ENOTCONN (the session failed), -EBUSY.
 */
TERN_EXPORT int tern_session_wait_writable(tern_session *s, uint32_t timeout_ms);

/**
 * tern_session_drain - run the loop until the peer has consumed everything
 * @timeout_ms: 0: no limit
 *
 * Returns when nothing is queued, every call has completed and every
 * credit is back: the peer has received and released every one-way message
 * sent (those gathered in its batches too); and every send this side made
 * for them is done, so the whole window is free again (a provider that
 * reports its sends late, rdma://, is asked to report them).  A producer
 * calls this before closing, since closing discards what is still in
 * flight.  Must not be called from a tern callback.
 *
 * Return: 0, -ETIMEDOUT, -ENOTCONN (the session failed), -EBUSY.
 */
TERN_EXPORT int tern_session_drain(tern_session *s, uint32_t timeout_ms);

/**
 * struct tern_sync_reply - where tern_call_sync() puts the reply
 * @buf: the caller's buffer
 * @cap: its size
 * @len: set to the reply's length; on -EMSGSIZE (never a cut reply),
 *	still its length when @direct is 0 and the reply fit a slot but not
 *	@cap, otherwise 0 with the reason in @errmsg (a reply larger than a
 *	slot with @direct 0, or larger than @cap with @direct 1)
 * @errmsg: the remote's message when the call failed remotely
 * @direct: 1: @buf is the call's reply buffer (struct tern_call_opts
 *	@reply_buf), so a reply larger than a slot lands in it directly.
 *	0: the reply is copied from its slot, and must fit one.
 * @prefix: 1: a reply longer than @cap is no error: its first @cap bytes
 *	are copied and @len says how long it was.  For a typed reply from a
 *	peer whose message type has more fields than ours (docs/idl.md,
 *	"Compatible changes"); generated _sync proxies set it.  0: a longer
 *	reply is -EMSGSIZE, never cut short.
 */
struct tern_sync_reply {
	void *buf;
	size_t cap;
	size_t len;
	char errmsg[208];
	int direct;
	int prefix;
};

/**
 * tern_call_sync - call and wait, running the context's loop
 * @rep: NULL, or where the reply goes (see struct tern_sync_reply)
 * @timeout_ms: the deadline (0: the session's default; if that is 0 too,
 *	wait without one)
 *
 * Must not be called from a tern callback.
 *
 * Return: the call's status, or -EMSGSIZE when the reply does not fit
 * @rep->buf (and @rep->prefix is 0).
 */
TERN_EXPORT int tern_call_sync(tern_session *s, uint32_t method_id, const void *req, size_t len,
			       struct tern_sync_reply *rep, uint32_t timeout_ms);

/* ------------------------------------------------------------------------ */
/* Context groups: one server on many cores                                  */

/* The most members a group may have. */
#define TERN_GROUP_MAX 64

/**
 * struct tern_group_opts - options for tern_group_create()
 * @size: sizeof(struct tern_group_opts), or 0
 * @members: how many member contexts, 1 to TERN_GROUP_MAX
 * @own_threads: non-zero: tern_group_start() starts one thread per member,
 *	which runs it; 0: the caller runs each member on a thread of its own
 *	with tern_group_run()
 * @ctx: every member's context options; @ctx.loop must be NULL (each
 *	member runs its own loop on its own thread).  A member that may sit
 *	idle should not use TERN_PROGRESS_BUSY: it keeps its core at 100%.
 * @on_stop: NULL, or called once for each member (@ctx, its index @i,
 *	@arg) when it stops, on its thread, before its context is destroyed:
 *	finish the requests you hold (tern_reply_error()) and close the libuv
 *	handles you made on tern_ctx_loop(@ctx).  A member that never ran
 *	(or a group never started) stops in tern_group_destroy(), on its
 *	thread.
 * @arg: for @on_stop
 */
struct tern_group_opts {
	uint32_t size;
	unsigned members;
	int own_threads;
	struct tern_ctx_opts ctx;
	void (*on_stop)(tern_ctx *ctx, unsigned i, void *arg);
	void *arg;
};

/**
 * tern_group_create - a context group: N contexts serving one listening URI
 * @opts: the options (see struct tern_group_opts)
 * @out: the new group
 *
 * A group is N member contexts, each run by one thread, behind listeners
 * made with tern_group_listen().  One more context of the group's own, the
 * acceptor, run by a thread the group starts, owns the listening sockets
 * (on rdma://, the rdma_cm listener): it accepts each connection and hands
 * it, before the handshake, to a member through tern_ctx_post(), and the
 * handshake and the whole session run on that member.  On rdma:// what
 * crosses is the connection request: its cm_id moves to the member's
 * rdma_cm event channel (rdma_migrate_id()), and the member accepts it
 * with a QP on its own protection domain, CQs and completion channel.  So
 * a session lives on one member, on one thread, for its whole life, and
 * its hot path takes no lock; the hand-off is the one place the threads
 * meet.  Members are picked round-robin over the members still alive (a
 * dead member is skipped), in the order the acceptor accepted the
 * connections.
 *
 * Set the group up, then start it: register methods (tern_group_setup(),
 * tern_group_register_raw() and friends) and listen, then
 * tern_group_start().  Set-up after the start fails with -EBUSY.
 *
 * Return: 0; -EINVAL (no @opts or @out, @members 0 or over
 * TERN_GROUP_MAX, a @ctx.loop), -ENOMEM.
 */
TERN_EXPORT int tern_group_create(const struct tern_group_opts *opts, tern_group **out);

/**
 * tern_group_member - member @i's context
 *
 * Before tern_group_start(), for set-up of your own; afterwards only on the
 * member's own thread (in its callbacks), or through tern_ctx_post() while
 * it is alive.
 *
 * Return: the context, or NULL (bad @i, or the member is gone).
 */
TERN_EXPORT tern_ctx *tern_group_member(tern_group *g, unsigned i);

/**
 * tern_group_size - how many members @g was made with
 */
TERN_EXPORT unsigned tern_group_size(tern_group *g);

/**
 * tern_group_index - which member of its group @ctx is
 *
 * Return: the member's index, or -ENOENT when @ctx is in no group.
 */
TERN_EXPORT int tern_group_index(tern_ctx *ctx);

/**
 * tern_group_setup - run @fn(member, index, @arg) on every member, in order
 *
 * For registrations a group has no shortcut for (a generated service's
 * register function, tern_register_batch()).  It stops at the first
 * failure and returns it.  Before tern_group_start() only.
 *
 * Return: 0, @fn's failure, -EINVAL, -EBUSY (the group has started).
 */
TERN_EXPORT int tern_group_setup(tern_group *g, int (*fn)(tern_ctx *ctx, unsigned i, void *arg),
				 void *arg);

/**
 * tern_group_register_raw - register a raw method on every member
 *
 * tern_register_raw() on each member: methods are registered once for
 * the group.  Before tern_group_start() only; @user is shared by every
 * member's thread, so what the handler does with it must be thread-safe.
 *
 * Return: 0, what tern_register_raw() returns, -EBUSY (started).
 */
TERN_EXPORT int tern_group_register_raw(tern_group *g, uint32_t method_id, tern_raw_handler fn,
					void *user);
/**
 * tern_group_register_inplace - see tern_group_register_raw()
 */
TERN_EXPORT int tern_group_register_inplace(tern_group *g, uint32_t method_id,
					    tern_inplace_handler fn, void *user);
/**
 * tern_group_register_deferred - see tern_group_register_raw()
 */
TERN_EXPORT int tern_group_register_deferred(tern_group *g, uint32_t method_id,
					     tern_deferred_handler fn, void *user);
/**
 * tern_group_register_oneway - see tern_group_register_raw()
 */
TERN_EXPORT int tern_group_register_oneway(tern_group *g, uint32_t method_id,
					   tern_oneway_handler fn, void *user);

/**
 * tern_group_listen - accept sessions on @uri for the whole group
 * @uri: "rdma://host:port", "tcp://host:port" or "shm://name"; port 0
 *	picks one
 * @opts: options every accepted session gets
 * @cb: runs on the member that took the session, on its thread, with that
 *	member's listener (tern_session_ctx() is the member)
 * @data: every member's listener's tern_listener_data()
 * @out: the acceptor's listener, for tern_listener_uri() and
 *	tern_listener_port() (may be NULL); the group closes it, never you
 *
 * Before tern_group_start() only.
 *
 * Return: 0, what tern_listen() returns, -EBUSY (started), -ENOSPC (too
 * many listeners: 8).
 */
TERN_EXPORT int tern_group_listen(tern_group *g, const char *uri,
				  const struct tern_session_opts *opts, tern_accept_cb cb,
				  void *data, tern_listener **out);

/**
 * tern_group_last_error - what the group's last failed set-up call says
 *
 * tern_ctx_last_error() for the group's set-up (tern_group_listen()).
 * Before tern_group_start(), or after a failed one.
 */
TERN_EXPORT const char *tern_group_last_error(tern_group *g);

/**
 * tern_group_start - start the acceptor, and the members' threads if the
 * group owns them
 *
 * Return: 0, -EBUSY (already started), or pthread_create()'s failure as
 * a negative errno (then destroy the group).
 */
TERN_EXPORT int tern_group_start(tern_group *g);

/**
 * tern_group_run - run member @i on the calling thread until it is stopped
 *
 * For groups made without @own_threads, after tern_group_start(): each
 * member needs a thread of the caller's that calls this.  It runs the
 * member's loop until tern_group_member_stop() or tern_group_destroy(), then
 * the member dies: it takes no more sessions, its context is destroyed
 * on this thread (its sessions close: their clients see the connection
 * fail), and this returns.  A member runs once.
 *
 * Return: 0 when the member has died; -EINVAL (bad @i, a group that owns
 * its threads), -EAGAIN (not started yet), -EBUSY (the member runs or
 * ran already), -ESHUTDOWN (the group is stopping).
 */
TERN_EXPORT int tern_group_run(tern_group *g, unsigned i);

/**
 * tern_group_member_stop - make member @i die (see tern_group_run())
 *
 * Context: any thread.  It returns at once; the member's thread finishes
 * its loop turn, closes the member's sessions and destroys its context.
 *
 * Return: 0, -EINVAL, -ENOENT (the member is gone already).
 */
TERN_EXPORT int tern_group_member_stop(tern_group *g, unsigned i);

/**
 * tern_group_destroy - stop every member and free the group
 *
 * Stops the acceptor (the listening sockets close), then every member,
 * waits for the members' threads (the group's, or the caller's inside
 * tern_group_run()) to finish, and destroys the members that never ran.
 * Not from one of the group's threads.  @g is gone when it returns: no
 * thread may call a tern_group function on it after.
 *
 * Return: 0, -EINVAL.
 */
TERN_EXPORT int tern_group_destroy(tern_group *g);

/* ------------------------------------------------------------------------ */
/* Metrics                                                                   */

/* The sides of a method's metrics: the calls this context serves and issues. */
enum tern_metrics_side {
	TERN_METRICS_SERVED = 0,
	TERN_METRICS_ISSUED = 1,
};

/*
 * Latency buckets: bucket 0 holds calls of at most 1024 ns; above, each
 * power of two is split in two (log-linear: bounds 1.5 * 2^k and 2^(k+1)
 * ns) up to 2^36 ns (about 69 s); the last bucket holds the rest.
 */
#define TERN_METRICS_BUCKETS 54
/* Error codes kept apart per method; further codes count as "other". */
#define TERN_METRICS_CODES 8
/* Methods with their own entry per side; more share the "other" entry. */
#define TERN_METRICS_MAX_METHODS 1024
/* The method id of the shared entry (methods unknown here, or too many). */
#define TERN_METRICS_OTHER 0xffffffffu

/**
 * struct tern_method_stats - one method's calls on one side
 * @method: the method id (TERN_METRICS_OTHER: the shared entry)
 * @side: enum tern_metrics_side
 * @started: calls begun (served: handed to the method; issued: posted)
 * @completed: of those, calls finished with any status
 * @errors: of those, calls finished with an error (negative) status
 * @codes: errors by status code, the first TERN_METRICS_CODES codes seen
 * @codes_other: errors whose code found no room in @codes
 * @request_bytes: request payload bytes (received when served, sent when
 *	issued; a large message counts its whole length when served, and the
 *	message's own bytes when issued)
 * @reply_bytes: reply payload bytes of successful calls
 * @latency_sum_ns: the sum of the completed calls' latencies
 * @buckets: completed calls by latency, not cumulative (bucket i holds
 *	latencies up to tern_metrics_bucket_le_ns(i))
 *
 * Calls in flight are @started - @completed.  A served call's latency runs
 * from its dispatch to its reply's posting; an issued call's from its
 * posting to its callback.
 */
struct tern_method_stats {
	uint32_t method;
	uint32_t side;
	uint64_t started;
	uint64_t completed;
	uint64_t errors;
	struct {
		int32_t code;
		uint64_t count;
	} codes[TERN_METRICS_CODES];
	uint64_t codes_other;
	uint64_t request_bytes;
	uint64_t reply_bytes;
	uint64_t latency_sum_ns;
	uint64_t buckets[TERN_METRICS_BUCKETS];
};

/**
 * tern_ctx_metrics_enable - record per-method metrics, or stop
 * @on: 1 to record, 0 to stop (what was recorded stays readable)
 *
 * On by default: tern_ctx_create() turns them on unless the environment
 * variable TERN_METRICS is "0" or "off".  Recording costs under 5% of a
 * small round trip's instructions (docs/metrics.md has the figures); turn
 * them off here where even that matters.  Calls begun while on are
 * finished in their entry even if metrics are turned off meanwhile.
 *
 * Return: 0, -EINVAL, or -ENOMEM.
 */
TERN_EXPORT int tern_ctx_metrics_enable(tern_ctx *ctx, int on);

/**
 * tern_ctx_method_stats - copy the metrics of the methods a context has seen
 * @out: room for @cap entries (may be NULL when @cap is 0)
 *
 * Entries come in the order their methods were first seen, served and
 * issued sides apart.
 *
 * Return: the number of entries there are (more than @cap: only @cap were
 * copied), or -EINVAL.
 */
TERN_EXPORT int tern_ctx_method_stats(tern_ctx *ctx, struct tern_method_stats *out, size_t cap);

/**
 * tern_metrics_bucket_le_ns - the upper bound of latency bucket @i
 *
 * Return: the bound in ns (inclusive), UINT64_MAX for the last bucket and
 * past it.
 */
TERN_EXPORT uint64_t tern_metrics_bucket_le_ns(unsigned i);

/**
 * tern_ctx_metrics_write - the context's metrics in Prometheus text format
 * @buf: where the text goes, NUL-terminated when @cap is not 0
 * @cap: @buf's size
 *
 * Writes the per-method families (tern_rpc_*: calls, errors by code, bytes,
 * in flight, latency histograms) and every session's counters
 * (tern_session_*, labelled by peer), in the text exposition format 0.0.4.
 * Like snprintf(), returns the length the whole text needs: when that is
 * @cap or more, call again with a larger buffer.
 *
 * Return: the text's length without the NUL, or -EINVAL.
 */
TERN_EXPORT ssize_t tern_ctx_metrics_write(tern_ctx *ctx, char *buf, size_t cap);

/**
 * tern_ctx_metrics_listen - serve the metrics over HTTP on the context's loop
 * @addr: "HOST:PORT" or "[IPV6]:PORT" to listen on (port 0: a free one,
 *	tern_ctx_metrics_port() tells which); a numeric address, loopback
 *	unless the metrics are meant to be seen from elsewhere
 *
 * GET (and HEAD) /metrics answers tern_ctx_metrics_write()'s text, read
 * fresh for each request, on the context's thread: no lock, no copy kept.
 * One request per connection; requests over 4 KiB get 431, other methods
 * and paths 405 and 404; a client has 5 s to send its request and at most
 * 16 are served at once.  The endpoint does not keep tern_ctx_run()
 * (TERN_RUN_DEFAULT) from returning; tern_ctx_destroy() closes it.  It
 * serves the session counters even while per-method metrics are off.
 *
 * Return: 0; -EINVAL (a bad @addr), -EALREADY (already listening), or the
 * negative errno of bind or listen (tern_ctx_last_error() says which).
 */
TERN_EXPORT int tern_ctx_metrics_listen(tern_ctx *ctx, const char *addr);

/**
 * tern_ctx_metrics_port - the port tern_ctx_metrics_listen() listens on
 *
 * Return: the port, or -ENOTCONN when not listening.
 */
TERN_EXPORT int tern_ctx_metrics_port(tern_ctx *ctx);

#ifdef __cplusplus
}
#endif
#endif /* TERN_H */
