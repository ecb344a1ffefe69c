/* SPDX-License-Identifier: MIT */
/*
 * tern/transport.h - the transport provider interface.
 *
 * The rdma-core provider model: the engine (src/) talks to a transport
 * only through a const struct tern_transport_ops that the provider fills
 * with designated initialisers, and the provider talks back only through the
 * struct tern_transport_events the engine hands it.  The engine never
 * includes a header from transport/.
 *
 * What a provider moves is *slots*.  A connection has @send_slots send slots
 * and @recv_slots receive slots of @slot_size bytes each, allocated (and, for
 * verbs, registered) once when the connection is made.  The engine writes a
 * message (its 32-byte header and payload) into send slot i and calls
 * post_send(i, len); the provider delivers it into one of the peer's posted
 * receive slots and later reports send_done(i), after which the engine may
 * reuse slot i.  A delivered message reaches the engine as recv(token, ptr,
 * len): @ptr is borrowed until the engine hands @token back with post_recv().
 *
 * Flow control is the engine's: it never posts more messages than the peer
 * has receive slots for, so a provider needs no buffering of its own beyond
 * its slots, and may treat a message that finds no posted receive slot as a
 * protocol violation.
 *
 * The connection's lifecycle is the engine's too: it knows what it has
 * been told (its session's state), so a provider reports what happens when
 * it happens and keeps no record of what it reported:
 *   - the engine knows a connection once connect() has returned it, or
 *     incoming() has accepted it; the provider sets @owner then, and leaves
 *     it NULL before (a connection being refused, or given up before the
 *     engine had it).  Upcalls on a connection whose owner is NULL are
 *     ignored, so the provider need not ask;
 *   - up: accepted(c, 0) on the server, connected(c, 0, answer) on the
 *     client, once;
 *   - any failure, at any stage, set-up or up: error(), then tear down.  A
 *     report after the first, or after the engine refused the answer or
 *     asked to disconnect(), is ignored;
 *   - a client whose server refused it with an answer (the engine's
 *     handshake, carrying the reason): connected(c, status, answer), then
 *     tear down;
 *   - keep_rx() before freeing the slots, and closed() last, on every
 *     connection (ignored where the engine never knew it).
 * So the lifecycle is written once, in src/session.c, for every provider.
 */
#ifndef TERN_TRANSPORT_H
#define TERN_TRANSPORT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include <tern.h>

#ifdef __cplusplus
extern "C" {
#endif

struct tern_tctx;
struct tern_conn;
struct tern_tlistener;

/* A parsed URI: scheme://host:port or scheme://name. */
struct tern_uri {
	char scheme[16];
	char host[256]; /* host, or the shm name */
	uint16_t port;
	int has_port;
};

/* The engine's handshake travels opaquely; it fits rdma_cm's private data. */
#define TERN_HANDSHAKE_MAX 48

/* What the engine needs of a connection; fixed for its life. */
struct tern_conn_params {
	uint32_t slot_size;
	uint32_t send_slots;
	uint32_t recv_slots;
	uint32_t connect_timeout_ms;
};

/*
 * The part of a connection the engine sees.  Providers embed it first in
 * their own connection struct.
 */
struct tern_conn {
	const struct tern_transport_ops *ops;
	struct tern_tctx *tctx;
	void *owner;	    /* the engine's session, once it knows the connection; else NULL */
	uint8_t *send_base; /* send_slots * slot_size bytes the engine writes into */
	size_t send_region; /* their length */
	uint32_t slot_size;
	uint32_t send_slots;
	uint32_t recv_slots;
	char peer[80]; /* "10.0.0.2:7000" or the shm name, for messages */
};

/*
 * Large messages move as bulk transfers beside a slot message (Mercury's
 * model): one side exports memory, the message carries the descriptor, and
 * the other side reads from or writes to it.
 */
struct tern_tmem {
	void *addr; /* a region the engine registered (tern_mem_register, or its staging) */
	size_t len;
	void *prov; /* the provider's own state for it (e.g. one ibv_mr per device); starts NULL */
	/*
	 * tern_mem_alloc() memory: @fd is a sealed memfd (F_SEAL_SHRINK,
	 * F_SEAL_GROW, F_SEAL_SEAL) whose bytes from offset 0 are @addr's, so
	 * a same-host provider may hand it to the peer (shm does).  The user
	 * agreed to share the whole region with any peer a transfer names it
	 * to.  @memfd false (zero-initialised): ordinary memory, @fd unused.
	 */
	bool memfd;
	int fd;
	/*
	 * What the region is, for tern_ctx_mem(): TERN_TMEM_USER (the user's,
	 * zero-initialised) or TERN_TMEM_STAGING (the engine's staging).
	 */
	uint8_t kind;
};

#define TERN_TMEM_USER	  0
#define TERN_TMEM_STAGING 1

/* What a peer needs to reach exported memory; its meaning is the provider's. */
struct tern_bulk_desc {
	uint64_t addr;
	uint64_t len;
	uint32_t key;
	uint32_t aux;
};
_Static_assert(sizeof(struct tern_bulk_desc) == 24, "bulk descriptor is 24 bytes on the wire");

/*
 * What a context group's listener accepted, on its way to a member context
 * (events->handoff(), ops->adopt()): a socket (shm, tcp: @fd, @req NULL),
 * or the provider's own object for a connection it has no socket for
 * (verbs: an rdma_cm connection request, @req, @fd -1).  Whoever holds it
 * must pass it on or refuse it: close(@fd), or ops->handoff_drop(@req).
 */
struct tern_handoff {
	int fd;
	void *req;
};

/* The part of a listener the engine sees; embedded first by providers. */
struct tern_tlistener {
	const struct tern_transport_ops *ops;
	struct tern_tctx *tctx;
	void *owner; /* the engine's listener */
	uint16_t port;
	/*
	 * A context group's listener (tern.h): the engine sets it right after
	 * listen() returned, before the loop runs again, so it holds for every
	 * connection.  The provider then hands each accepted socket, unread,
	 * to events->handoff() and does nothing more with it: the handshake
	 * runs on the member context that adopt()s it.
	 */
	bool handoff;
};

/*
 * Upcalls, engine side.  A provider calls them from inside its own poll()
 * or from its libuv callbacks, never from another thread.
 */
struct tern_transport_events {
	/*
	 * Server: a connection request arrived carrying the client's
	 * handshake.  The engine checks it and returns 0 to accept, filling
	 * @params, *@owner (its new session) and @reply/@reply_len (the
	 * handshake answer, at most TERN_HANDSHAKE_MAX bytes); or a negative
	 * code to refuse, with @reply holding the refusal the client will see.
	 */
	int (*incoming)(struct tern_tlistener *l, const void *hs, size_t hs_len,
			struct tern_conn_params *params, void **owner, void *reply,
			size_t *reply_len);
	/*
	 * Server: the accepted connection @c is up (status 0).  A non-zero
	 * status is a failed set-up, as error() reports it; the provider then
	 * tears it down and calls closed().
	 */
	void (*accepted)(struct tern_conn *c, int status);
	/*
	 * Client: the connection is up, with the server's handshake answer in
	 * @hs (status 0), or the server refused it (status < 0, its refusal,
	 * if it sent one, in @hs; any other failure may come here or through
	 * error()).  The engine may refuse an answer by returning non-zero; the
	 * provider then tears the connection down, as after a failure.
	 */
	int (*connected)(struct tern_conn *c, int status, const void *hs, size_t hs_len);
	/* A message arrived in receive slot @token. */
	void (*recv)(struct tern_conn *c, uint32_t token, const void *buf, uint32_t len);
	/* Send slot @slot may be reused. */
	void (*send_done)(struct tern_conn *c, uint32_t slot);
	/*
	 * The connection failed (peer gone, transport error, a peer breaking
	 * the protocol, a set-up that timed out), at any stage: before it is
	 * up it is the set-up's failure (@why may be NULL then), later the
	 * session's.  No recv or send_done follows.  The provider tears the
	 * connection down after reporting it; the engine may call disconnect()
	 * from inside this upcall, so tearing down must be idempotent.  Only
	 * the first report counts (see the top of this file).
	 */
	void (*error)(struct tern_conn *c, int err, const char *why);
	/*
	 * Everything is released; @c is freed when this returns.  Called for
	 * every connection, last (ignored where @owner is NULL).
	 */
	void (*closed)(struct tern_conn *c);
	/* Event mode: the provider saw activity (for adaptive progress). */
	void (*activity)(tern_ctx *ctx);
	/*
	 * Something the user should know that is no one call's failure (verbs:
	 * a device without memory windows, whose exports fall back to
	 * per-call registrations).  The engine makes it tern_ctx_last_error().
	 */
	void (*notice)(tern_ctx *ctx, const char *msg);
	/* A bulk_read() or bulk_write() finished (status 0 or -errno). */
	void (*bulk_done)(struct tern_conn *c, uint64_t cookie, int status);
	/*
	 * The provider is about to free @c's slot memory (send and receive).
	 * Requests the engine still holds may point into the receive slots
	 * (a held one-way message, a deferred request, a binding's view), so
	 * the engine may take the memory over: it returns true, and later
	 * calls @release(@arg) itself, once nothing points there; the
	 * provider then must not free or unmap it, and makes @arg own
	 * everything @release needs.  It returns false when the provider
	 * should free the memory now.  Called before closed(), at most once.
	 */
	bool (*keep_rx)(struct tern_conn *c, void (*release)(void *arg), void *arg);
	/*
	 * A listener with @l->handoff accepted @h: a socket (non-blocking,
	 * close-on-exec, nothing read from it yet) or a connection request of
	 * the provider's (nothing answered yet).  The engine owns it now.
	 */
	void (*handoff)(struct tern_tlistener *l, struct tern_handoff h);
};

/*
 * bulk_unexport() flags.  ANSWERED: the peer answered the message that
 * carried the descriptor, so that message, and whatever the provider
 * queued before it (verbs: the window's bind), has reached it.  CLOSING:
 * the engine fails the connection and calls disconnect() right after, so
 * nothing the peer still does with the export can matter.
 */
#define TERN_UNEXPORT_ANSWERED 0x1u
#define TERN_UNEXPORT_CLOSING  0x2u

/* post_send() flags */
#define TERN_SEND_CONFIRM 0x1u /* report send_done() for this slot promptly */

/*
 * What a provider's URIs look like.  The engine checks the form before the
 * provider sees the URI, so "tcp://host" (no port) or "shm://bus:7" (a port
 * on a name) is refused with a message saying what is wrong.
 */
enum tern_uri_form {
	TERN_URI_HOST_PORT = 0, /* scheme://host:port; port 0 picks one when listening */
	TERN_URI_NAME = 1,	/* scheme://name, with no port */
};

enum tern_transport_mode {
	TERN_TRANSPORT_POLLED = 0, /* the engine calls poll(); no fds armed */
	TERN_TRANSPORT_EVENTS = 1, /* the provider arms its fds and polls itself when woken */
};

struct tern_transport_ops {
	const char *scheme; /* "rdma", "shm", "tcp" */
	enum tern_uri_form uri_form;

	/* Per-context state, made when a context first uses this scheme. */
	int (*ctx_init)(tern_ctx *ctx, uv_loop_t *loop, const struct tern_transport_events *ev,
			struct tern_tctx **out);
	/* Every connection and listener is already closed. */
	void (*ctx_fini)(struct tern_tctx *t);

	int (*listen)(struct tern_tctx *t, const struct tern_uri *uri, void *owner,
		      struct tern_tlistener **out);
	/* Stop listening and free @l; connections it accepted live on. */
	void (*listener_close)(struct tern_tlistener *l);
	/*
	 * Context groups (optional; both or neither).  adopt_listen: a
	 * listener for @uri that owns no socket: its connections come through
	 * adopt(), and listener_close() frees it.  adopt: run @fd, which a
	 * handoff listener of the same URI accepted on another context (and
	 * another thread), as if @l had accepted it: the handshake and the
	 * whole connection live on @l's context.  @h is the provider's from
	 * the call, on every path (refused on failure).  0 or -errno.
	 */
	int (*adopt_listen)(struct tern_tctx *t, const struct tern_uri *uri, void *owner,
			    struct tern_tlistener **out);
	int (*adopt)(struct tern_tlistener *l, struct tern_handoff h);
	/*
	 * For a provider whose hand-offs are its own objects (@h.req; both
	 * optional, for sockets neither).  handoff_move: called on the thread
	 * of the context that accepted @h, while member listener @l (of the
	 * same URI, on another context) is sure to live: make @h's events
	 * reach @l's context from now on (verbs: rdma_migrate_id() to its
	 * event channel), so that the member's thread alone touches it after
	 * the hand-off.  0 or -errno (then @h is still the caller's, as it
	 * was).  handoff_drop: refuse and free @h, on the thread of the
	 * context its events reach.
	 */
	int (*handoff_move)(struct tern_tlistener *l, struct tern_handoff h);
	void (*handoff_drop)(struct tern_handoff h);

	/* Start connecting; the outcome arrives through events->connected. */
	int (*connect)(struct tern_tctx *t, const struct tern_uri *uri,
		       const struct tern_conn_params *p, const void *hs, size_t hs_len, void *owner,
		       struct tern_conn **out);

	/*
	 * Send @len bytes from send slot @slot.  A provider may report
	 * send_done() late and in batches (verbs signals only every few
	 * sends), except for a send posted with TERN_SEND_CONFIRM, whose
	 * send_done() must follow as soon as it is delivered: the engine
	 * waits on those (credit messages, a refusal before closing).
	 */
	int (*post_send)(struct tern_conn *c, uint32_t slot, uint32_t len, uint32_t flags);
	int (*post_recv)(struct tern_conn *c, uint32_t token);
	/*
	 * report_sends (optional: for providers that report send_done()
	 * late): every send posted so far gets its send_done() as soon as it
	 * is delivered, as if each had been posted with TERN_SEND_CONFIRM.
	 * The engine calls it when it waits for a send slot that may be
	 * sent but not yet reported (rpc/server.c, rpc/client.c say when),
	 * so it costs nothing while nobody waits.  It must not need a
	 * receive or any memory of the peer's (verbs: a signalled
	 * zero-length RDMA WRITE), and may be called again before the last
	 * one has finished.
	 */
	void (*report_sends)(struct tern_conn *c);
	/*
	 * Tear the connection down: no upcall but closed() follows, once
	 * every resource is released.
	 */
	void (*disconnect)(struct tern_conn *c);

	/* Handle up to @budget completions; return how many, or -errno. */
	int (*poll)(struct tern_tctx *t, int budget);
	/* Switch between engine-polled and event-driven progress. */
	int (*set_mode)(struct tern_tctx *t, enum tern_transport_mode mode);

	/*
	 * Large messages.  All NULL: the provider moves slot-sized messages
	 * only, and the engine refuses larger ones with -EMSGSIZE.
	 *
	 * bulk_max: the largest single transfer (the engine never asks for more).
	 * bulk_export: let the peer reach @m's bytes [off, off + len) through
	 *	the descriptor @out, for reading (@writable 0) or writing.
	 * bulk_read: copy the peer's exported bytes @remote into @m at @off.
	 * bulk_write: copy @m's bytes [off, off + len) into the peer's
	 *	exported @remote.  A message posted after bulk_done() has
	 *	reported it reaches the peer only after the data (the engine
	 *	sends the reply that announces a large reply then).  verbs
	 *	orders even messages posted before bulk_done() (one RC queue);
	 *	shm and tcp, which move the data beside the slot rings, do not.
	 *	bulk_read and bulk_write return -EAGAIN when the connection has as
	 *	many transfers in flight as the provider holds (verbs 16; shm, tcp
	 *	and mem 64), and only then: the engine queues the transfer and tries
	 *	again each time bulk_done() reports one, so a provider must keep a
	 *	transfer counted until just before its bulk_done() (never free a
	 *	place without reporting one, or a queued transfer waits for good).
	 * mem_release: the engine deregisters @m: drop the provider's state.
	 * bulk_unexport (optional): the call @d was exported for is over; the
	 *	peer may no longer reach it once this returns (the engine hands
	 *	the memory to the next call, or back to its user, right after).
	 *	shm and tcp drop it from their table of live exports; verbs
	 *	deallocates its memory window (or deregisters its per-call
	 *	registration), which takes effect at once, whatever the
	 *	connection still has queued (docs/transports-verbs-security.md).
	 *	@flags (TERN_UNEXPORT_*) tell what the engine knows and the
	 *	provider cannot: that the peer has seen the descriptor, or that
	 *	the connection goes right after.  A call that timed out keeps
	 *	its staging's exports until its late reply.  When a connection
	 *	fails, the
	 *	engine withdraws the exports of the calls it fails before their
	 *	callbacks run, but reuses their staging only after closed(): a
	 *	provider whose peer may still be inside a copy it started (shm's
	 *	split copies run in the peer's process) waits for it before
	 *	reporting closed().
	 */
	uint64_t (*bulk_max)(struct tern_conn *c);
	int (*bulk_export)(struct tern_conn *c, struct tern_tmem *m, size_t off, size_t len,
			   int writable, struct tern_bulk_desc *out);
	int (*bulk_read)(struct tern_conn *c, const struct tern_bulk_desc *remote,
			 struct tern_tmem *m, size_t off, size_t len, uint64_t cookie);
	int (*bulk_write)(struct tern_conn *c, struct tern_tmem *m, size_t off, size_t len,
			  const struct tern_bulk_desc *remote, uint64_t cookie);
	void (*mem_release)(struct tern_tctx *t, struct tern_tmem *m);
	void (*bulk_unexport)(struct tern_conn *c, const struct tern_bulk_desc *d, unsigned flags);

	/*
	 * mem_stats (optional): add this context's memory to @acc's fields
	 * (tern_ctx_mem()), counted where the provider takes and gives back
	 * the memory: its connections' slots (also those kept by the engine
	 * through keep_rx, until their release), its staging areas, its
	 * registrations of the engine's regions (by tern_tmem.kind), and its
	 * per-connection heap.  Leave @acc->sessions alone: the engine counts.
	 */
	void (*mem_stats)(struct tern_tctx *t, struct tern_mem_stats *acc);
};

#ifdef __cplusplus
}
#endif
#endif /* TERN_TRANSPORT_H */
