/* SPDX-License-Identifier: MIT */
/*
 * engine_peer.h - the fuzzer as the peer of a real engine.
 *
 * One input is one connection (over mem://, shm:// or tcp://: wire.h): its first bytes choose the
 * handshake, the rest is a program of operations (engine_peer.c says which) that the peer and the
 * engine's user perform in turn: the peer sends messages, honest or not, completes or holds the
 * engine's sends and transfers, reads and writes what the engine exported; the engine's user calls,
 * replies to deferred requests, releases held ones, closes.  When the
 * program ends the peer hangs up, and the run checks what must hold
 * whatever the peer did: the session ends and is freed, every callback
 * ran exactly once, and, while the peer played by the rules, every
 * message the engine sent was valid for an honest peer to receive.
 */
#ifndef TERN_FUZZ_ENGINE_PEER_H
#define TERN_FUZZ_ENGINE_PEER_H

#include <stddef.h>
#include <stdint.h>

enum fz_role {
	FZ_SERVER,    /* the peer connects; the engine accepted the session */
	FZ_CLIENT,    /* the engine connects to the peer */
	FZ_HANDSHAKE, /* either, with the handshake bytes the input's own */
};

struct fz_wire;

/* Run one input over @w (wire.h) through a context kept for the process's
 * life (one wire per process). */
int fz_engine_run(enum fz_role role, const struct fz_wire *w, const uint8_t *data, size_t size);

#endif
