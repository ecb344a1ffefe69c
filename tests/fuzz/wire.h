/* SPDX-License-Identifier: MIT */
/*
 * wire.h - how the fuzzing peer (engine_peer.c) reaches the engine.
 *
 * One peer, three wires: mem:// through the provider's raw peer
 * (wire_mem.c), shm:// by hand over the provider's own socket, segment and
 * rings (wire_shm.c), tcp:// by hand over a loopback socket in the
 * provider's framing (wire_tcp.c).  The peer's program is the same on
 * each; a wire adds hostile ops of its own (its indices, descriptors,
 * frames and socket messages) through its hostile() op.
 *
 * A wire hands everything the engine sends to fz_engine_msg() (in the
 * order sent), and the engine's handshake, when the engine connects, to
 * fz_engine_hello().
 */
#ifndef TERN_FUZZ_WIRE_H
#define TERN_FUZZ_WIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/transport.h"

/* The geometry every run uses (both sides). */
#define FZ_SLOT	   256u
#define FZ_N	   4u
#define FZ_NSLOTS  (2 * FZ_N + 3) /* per direction: the engine's 2N + 3 */
#define FZ_MAX_MSG (16u << 10)	  /* what the engine accepts: more than a slot */
#define FZ_PD_MAX  256		  /* the longest handshake a peer presents */

enum fz_wire_state {
	FZ_WAITING = 0, /* connecting, or waiting for the engine's connect */
	FZ_UP,
	FZ_REFUSED,
	FZ_GONE,
};

struct fz_wire {
	const char *name;
	/* The URI the engine listens on (made once per process). */
	const char *(*listen_uri)(void);
	/* Server role: connect to the engine's listener at @uri. */
	int (*connect)(const char *uri, const void *hs, size_t len);
	/* Client role: be ready for the engine's connect; the URI to give it. */
	const char *(*listen)(void);
	/* Client role: answer the engine's hello (fz_engine_hello came). */
	void (*answer)(bool accept, int32_t status, const void *hs, size_t len);
	enum fz_wire_state (*state)(void);
	/* Put one message into the engine's receive slots. */
	int (*send)(const void *buf, uint32_t len);
	/* Let the engine run once, and take in what it sent. */
	void (*pump)(void);
	/* Hold (or release) completion of the engine's sends and transfers. */
	void (*hold)(bool sends, bool bulk);
	uint32_t (*complete_sends)(uint32_t n);
	uint32_t (*bulk_pending)(void);
	int (*complete_bulk)(uint32_t i, int status);
	/* The peer's own memory, for the engine's transfers. */
	int (*expose)(size_t off, size_t len, int writable, struct tern_bulk_desc *out);
	/* Reach what the engine exported. */
	int (*read)(const struct tern_bulk_desc *d, void *buf);
	int (*write)(const struct tern_bulk_desc *d, const void *buf);
	/* One hostile act of the wire's own, arguments from the input. */
	void (*hostile)(void);
	/* Hang up and forget the connection. */
	void (*close)(void);
};

extern const struct fz_wire fz_wire_mem, fz_wire_shm, fz_wire_tcp;

/* The peer's memory (the wires expose parts of it). */
#define FZ_PEER_MEM (FZ_MAX_MSG + 4096)
extern uint8_t fz_pmem[FZ_PEER_MEM];

/* Upcalls into the peer. */
void fz_engine_msg(const void *buf, uint32_t len);
void fz_engine_hello(const void *hs, size_t len);

/* The input, for a wire's hostile ops: zeros past its end. */
uint8_t fz_u8(void);
uint16_t fz_u16(void);
uint32_t fz_u32(void);
uint64_t fz_u64(void);
void fz_take(void *out, size_t n);

/* The engine's context and its loop, for a wire to run. */
struct tern_ctx;
struct tern_ctx *fz_ctx(void);

#endif
