/* SPDX-License-Identifier: MIT */
/*
 * mem.h - the mem:// provider: connections inside one process, and a raw
 * peer for tests and fuzzers to play the far end of one.
 *
 * Built for tests and fuzzing only, never into the installed library; a
 * test adds it to the contexts it makes with tern__transport_register()
 * (src/internal.h), and the engine knows it by its ops table alone, like
 * every provider.
 *
 * Two engines in one process (on one thread) reach each other at
 * mem://name the way two processes do over shm://: each end has its own
 * 2N + 3 send and receive slots, a message is copied from the sender's
 * send slot into a posted receive slot of the receiver, and bulk transfers
 * are checked against the exporter's table of live exports
 * (transport/common/xtab.h) before a byte moves.  Completions (receives,
 * send and bulk completions, the handshake, closes) wait in a queue per
 * context and reach the engine from poll(), or from an idle handle in event
 * mode, never from inside one of its calls.
 *
 * A raw peer (struct tern_mem_peer) is the far end played by a test: it
 * connects to an engine's listener, or listens for an engine's connect,
 * with whatever handshake bytes it likes (up to MEM_PD_MAX, like rdma_cm's
 * private data); sends whatever bytes it likes into the engine's receive
 * slots; sees every message the engine sends; exposes memory of its own
 * for the engine's bulk transfers ("remote memory" a descriptor can name);
 * reads and writes what the engine exported, checked as shm and tcp check
 * a peer; and decides when the engine's sends and transfers complete.
 * Nothing a raw peer does reaches the engine except through the provider's
 * upcalls, exactly as a remote peer's bytes would.
 */
#ifndef TERN_MEM_H
#define TERN_MEM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/transport.h"

extern const struct tern_transport_ops tern_mem_transport;

/* The longest handshake a raw peer may present (rdma_cm private data, as
 * the verbs provider keeps it). */
#define MEM_PD_MAX 256

struct tern_mem_peer;

/* What a raw peer hears of the engine.  Every callback is optional; none
 * may call into the engine (they run inside its calls), only into the
 * peer functions below. */
struct tern_mem_peer_cbs {
	/* An engine connected to the name this peer listens on, with
	 * handshake @hs: answer with tern_mem_peer_accept() or _refuse(). */
	void (*hello)(struct tern_mem_peer *p, const void *hs, size_t len, void *user);
	/* The engine posted @len bytes from its send slot @slot.  @buf is
	 * valid until that send completes. */
	void (*msg)(struct tern_mem_peer *p, uint32_t slot, const void *buf, uint32_t len,
		    void *user);
	/* The engine's end of the connection is gone. */
	void (*gone)(struct tern_mem_peer *p, void *user);
};

/* Where a raw peer's connect stands. */
enum tern_mem_peer_state {
	MEM_PEER_WAITING = 0, /* connect or listen pending */
	MEM_PEER_UP,	      /* the engine accepted (or was accepted) */
	MEM_PEER_REFUSED,     /* the engine refused: status and answer say why */
	MEM_PEER_GONE,	      /* the engine's end went away */
};

/**
 * tern_mem_peer_connect - connect a raw peer to an engine listening on mem://@name
 * @name: the listener's name
 * @hs: the handshake the engine's incoming() sees (any bytes)
 * @len: its length, at most MEM_PD_MAX
 * @cbs: what the peer hears (copied), or NULL
 * @user: passed to the callbacks
 * @out: the peer
 *
 * The engine sees the connect request on its next poll.  Then
 * tern_mem_peer_state() says whether it accepted (its answer in
 * tern_mem_peer_answer()).
 * Return: 0, -ECONNREFUSED (nobody listens), -EINVAL, -ENOMEM.
 */
int tern_mem_peer_connect(const char *name, const void *hs, size_t len,
			  const struct tern_mem_peer_cbs *cbs, void *user,
			  struct tern_mem_peer **out);

/**
 * tern_mem_peer_listen - let one engine connect to mem://@name and reach a raw peer
 * Return: 0, -EADDRINUSE, -EINVAL, -ENOMEM.
 */
int tern_mem_peer_listen(const char *name, const struct tern_mem_peer_cbs *cbs, void *user,
			 struct tern_mem_peer **out);

/**
 * tern_mem_peer_accept - answer a connecting engine: accepted, with handshake @hs
 * @len: at most MEM_PD_MAX
 * Return: 0, or -EINVAL when no engine waits for an answer.
 */
int tern_mem_peer_accept(struct tern_mem_peer *p, const void *hs, size_t len);

/* Answer a connecting engine: refused with @status (0 stands for
 * -ECONNREFUSED) and the refusal's handshake bytes @hs, as rdma_cm's
 * reject carries them. */
int tern_mem_peer_refuse(struct tern_mem_peer *p, int status, const void *hs, size_t len);

enum tern_mem_peer_state tern_mem_peer_state(const struct tern_mem_peer *p);
/* The engine's answer to a connect (accept or refusal), and its status. */
const void *tern_mem_peer_answer(const struct tern_mem_peer *p, size_t *len, int *status);
/* The engine's receive slots: how large, and how many are posted now. */
uint32_t tern_mem_peer_slot_size(const struct tern_mem_peer *p);
uint32_t tern_mem_peer_posted(const struct tern_mem_peer *p);

/**
 * tern_mem_peer_send - put @len bytes into a posted receive slot of the engine
 *
 * As a NIC with rnr_retry 0 would: a message that finds no posted receive,
 * or is longer than a slot, fails the connection (TERN_EPEER at the engine).
 * Return: 0; -ENOTCONN when not up; -ENOBUFS or -EMSGSIZE after failing
 * the connection for it.
 */
int tern_mem_peer_send(struct tern_mem_peer *p, const void *buf, uint32_t len);

/*
 * Sends and bulk transfers the engine starts complete on its next poll,
 * unless held: then they wait, in order, for the calls below.  Holding
 * shows what the engine does while its slots and staging are still out.
 */
void tern_mem_peer_hold(struct tern_mem_peer *p, bool sends, bool bulk);
/* Complete up to @n held sends, oldest first.  Return: how many. */
uint32_t tern_mem_peer_complete_sends(struct tern_mem_peer *p, uint32_t n);
/* Held bulk transfers of the engine: how many, and complete the @i-th
 * (oldest first) now, moving its bytes, or failing it with @status < 0. */
uint32_t tern_mem_peer_bulk_pending(const struct tern_mem_peer *p);
int tern_mem_peer_complete_bulk(struct tern_mem_peer *p, uint32_t i, int status);

/**
 * tern_mem_peer_expose - let the engine's bulk transfers reach @m's bytes [off, off + len)
 *
 * The descriptor goes to the engine in whatever message the caller builds.
 * A transfer the engine starts through a descriptor that names anything
 * else fails with -EFAULT.
 * Return: 0 or tern_xtab_add()'s error.
 */
int tern_mem_peer_expose(struct tern_mem_peer *p, struct tern_tmem *m, size_t off, size_t len,
			 int writable, struct tern_bulk_desc *out);

/**
 * tern_mem_peer_read - copy the engine's exported bytes @d names into @buf
 * tern_mem_peer_write - copy @buf into the engine's export @d names
 * @d: addr, len (how many) and key, as the peer chooses
 *
 * Checked against the engine's live exports like shm's and tcp's peers
 * are: a key, range or direction it did not export fails the connection
 * with TERN_EPEER.
 * Return: 0, -ENOTCONN, or -EFAULT (and the connection fails).
 */
int tern_mem_peer_read(struct tern_mem_peer *p, const struct tern_bulk_desc *d, void *buf);
int tern_mem_peer_write(struct tern_mem_peer *p, const struct tern_bulk_desc *d, const void *buf);

/*
 * From now on exports on @c (an engine's mem:// connection) fail with @err
 * (a negative errno), and each failure fails the connection from the
 * queue: what the verbs provider does when its QP dies during a memory
 * window's bind.  0 lets exports through again.
 */
void tern_mem_conn_fail_exports(struct tern_conn *c, int err);

/* Hang up (the engine sees -ECONNRESET) and free the peer. */
void tern_mem_peer_close(struct tern_mem_peer *p);

#endif /* TERN_MEM_H */
