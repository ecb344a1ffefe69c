/* SPDX-License-Identifier: MIT */
/*
 * shm_layout.h - the shm:// provider's shared segment and socket messages.
 *
 * Private to transport/shm/ and to the tests that play a hostile peer; the
 * engine never includes it.  Both ends run on one host, so everything is in
 * host byte order; sizes and offsets are still fixed-width and pinned.
 *
 * One connection = one memfd segment, made by the server once the engine
 * has accepted the handshake, sealed (F_SEAL_SHRINK | F_SEAL_GROW |
 * F_SEAL_SEAL) and handed to the client with SCM_RIGHTS:
 *
 *   0           struct shm_seg_hdr   geometry; read once by the client to
 *                                    check it, never trusted afterwards
 *   ctl_off     control words, one per SHM_LINE-byte line, so no two
 *               written by different sides share a line:
 *                 dir d (0: client->server, 1: server->client):
 *                   tail   descriptors published  (written by d's sender)
 *                   head   descriptors consumed   (written by d's receiver)
 *                 wake[s]  side s's sleep epoch (s 0: client, 1: server;
 *                          written by s only; odd = may be asleep)
 *   desc_off[d] ring_size x struct shm_desc, written by d's sender:
 *                 {slot, len}  "my slot `slot` holds a message of len bytes"
 *                 ret          "I am done with your slot `ret`: reuse it"
 *               Either half may be SHM_NONE.  A return rides on the next
 *               message going the same way, or alone when there is none.
 *   slots_off[d] nslots x slot_size bytes, page aligned: direction d's
 *               slots.  The sender's send slots *are* the receiver's
 *               receive slots, which is what makes the path zero-copy.
 *
 * Returns travel on the descriptors rather than a ring of their own so
 * that a reply and the return of its request's slot are one descriptor,
 * one cache line to fetch, not three (measured: docs/performance.md,
 * "shm:// and tcp:// on this host").
 *
 * Every index is written by exactly one side (the comment says which) and
 * read by the other with acquire loads; see shm.c for each barrier.  Every
 * value read from the segment is checked against the geometry each side
 * computed *itself* from its own parameters: shm_geom_init() below, never
 * the header.
 */
#ifndef TERN_SHM_LAYOUT_H
#define TERN_SHM_LAYOUT_H

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#include "tern/transport.h"

#define SHM_SEG_MAGIC	  0x474553544e524554ull /* "TERNTSEG" */
#define SHM_MSG_MAGIC	  0x4d485354u		/* "TSHM" */
#define SHM_PROTO_VERSION 2
/*
 * 128, not 64: Intel's adjacent-line prefetcher pulls lines in pairs, so
 * words two sides write must be 128 bytes apart to never share traffic.
 */
#define SHM_LINE      128
#define SHM_PAGE      4096
#define SHM_MAX_SLOT  (1u << 20)     /* the engine's largest slot */
#define SHM_MAX_SLOTS (2 * 4096 + 3) /* 2N + 3 for the engine's largest N */

/* Control words, in line order. */
enum shm_ctl {
	SHM_TAIL = 0,
	SHM_HEAD = 1,
	SHM_CTL_PER_DIR = 2,
	SHM_WAKE = 2 * SHM_CTL_PER_DIR, /* + side */
	SHM_CTL_LINES = SHM_WAKE + 2,
};

#define SHM_NONE 0xffffffffu /* no message, or no return, in a descriptor */

struct shm_seg_hdr {
	uint64_t magic;
	uint16_t version;
	uint16_t reserved;
	uint32_t slot_size;
	uint32_t nslots;
	uint32_t ring_size;
	uint64_t size;
};
_Static_assert(sizeof(struct shm_seg_hdr) == 32, "segment header is 32 bytes");
_Static_assert(offsetof(struct shm_seg_hdr, slot_size) == 12, "slot_size at 12");
_Static_assert(offsetof(struct shm_seg_hdr, size) == 24, "size at 24");

/* One control word on its own line. */
struct shm_line {
	_Atomic uint32_t v;
	uint8_t pad[SHM_LINE - sizeof(uint32_t)];
};
_Static_assert(sizeof(struct shm_line) == SHM_LINE, "one control word per line");

/* A descriptor.  Every field is read once, with a relaxed load, into a
 * local: the peer may be rewriting it while we look. */
struct shm_desc {
	_Atomic uint32_t slot; /* the sender's slot holding a message, or SHM_NONE */
	_Atomic uint32_t len;  /* its length; 0 with no message */
	_Atomic uint32_t ret;  /* the receiver's slot given back, or SHM_NONE */
	_Atomic uint32_t reserved;
};
_Static_assert(sizeof(struct shm_desc) == 16, "descriptor is 16 bytes");
_Static_assert(offsetof(struct shm_desc, ret) == 8, "ret at 8");

/* Where everything is, computed by each side from its own parameters. */
struct shm_geom {
	uint32_t slot_size;
	uint32_t nslots;
	/*
	 * Power of two >= 2 * nslots: unread descriptors never exceed that
	 * (each carries a message still in flight, at most nslots, or a
	 * return not yet seen, at most nslots), and free-running indices are
	 * masked.
	 */
	uint32_t ring_size;
	size_t ctl_off;
	size_t desc_off[2];
	size_t slots_off[2];
	size_t size;
};

static inline size_t shm_align(size_t v, size_t a)
{
	return (v + a - 1) & ~(a - 1);
}

/*
 * shm_geom_init - lay out a segment for @nslots slots of @slot_size bytes
 * per direction.  Return: 0, or -EINVAL for a geometry out of bounds.
 */
static inline int shm_geom_init(struct shm_geom *g, uint32_t slot_size, uint32_t nslots)
{
	size_t off;

	if (slot_size < 64 || slot_size > SHM_MAX_SLOT || slot_size % 64 || nslots == 0 ||
	    nslots > SHM_MAX_SLOTS)
		return -EINVAL;
	g->slot_size = slot_size;
	g->nslots = nslots;
	g->ring_size = 1;
	while (g->ring_size < 2 * nslots)
		g->ring_size <<= 1;
	g->ctl_off = SHM_LINE; /* the header has line 0 to itself */
	off = g->ctl_off + (size_t)SHM_CTL_LINES * SHM_LINE;
	for (int d = 0; d < 2; d++) {
		g->desc_off[d] = off;
		off = shm_align(off + (size_t)g->ring_size * sizeof(struct shm_desc), SHM_LINE);
	}
	for (int d = 0; d < 2; d++) {
		off = shm_align(off, SHM_PAGE);
		g->slots_off[d] = off;
		off += (size_t)nslots * slot_size; /* at most 8194 MiB: no overflow in size_t */
	}
	g->size = shm_align(off, SHM_PAGE);
	return 0;
}

static inline struct shm_line *shm_ctl(uint8_t *seg, const struct shm_geom *g, int line)
{
	return (struct shm_line *)(seg + g->ctl_off + (size_t)line * SHM_LINE);
}

/* Control word @w of direction @d. */
static inline _Atomic uint32_t *shm_dir_word(uint8_t *seg, const struct shm_geom *g, int d,
					     enum shm_ctl w)
{
	return &shm_ctl(seg, g, d * SHM_CTL_PER_DIR + (int)w)->v;
}

static inline struct shm_desc *shm_descs(uint8_t *seg, const struct shm_geom *g, int d)
{
	return (struct shm_desc *)(seg + g->desc_off[d]);
}

static inline uint8_t *shm_slots(uint8_t *seg, const struct shm_geom *g, int d)
{
	return seg + g->slots_off[d];
}

/* ---- the socket ---------------------------------------------------------------
 *
 * A SOCK_SEQPACKET Unix-domain socket: the abstract name "\0tern.shm.<name>",
 * or <dir>/<name>.sock when TERN_SHM_DIR=<dir> (dir 0700, socket 0600).
 *
 *   client -> server  HELLO   engine handshake + geometry;  fd: client doorbell
 *   server -> client  ACCEPT  engine answer + geometry + segment size;
 *                             fds: segment memfd, server doorbell
 *                  or REFUSE  status + the engine's refusal (if any)
 *   client -> server  READY   the client mapped and checked the segment
 *
 * After READY the socket carries large-message traffic (below) and its
 * hang-up, which is how each side learns the other is gone.
 *
 * Large messages (bulk): the side that *uses* an export asks the side that
 * made it, which checks the request against its table of live exports
 * (transport/common/xtab.h) and moves the bytes itself with one
 * process_vm_writev/readv straight between the two processes' buffers:
 *
 *   user -> exporter  BULK_REQ   op READ:  copy export [xaddr, +len) to my laddr
 *                                op WRITE: copy my [laddr, +len) into the export
 *   exporter -> user  BULK_SPLIT (large transfers) "I copy [0, mid); you
 *                                copy [mid, len) yourself", sent before the
 *                                exporter starts, so both processes copy
 *                                at once, each half one process_vm call
 *   exporter -> user  BULK_DONE  status for token: 0, or -EPERM (no ptrace
 *                                access to the user), -EFAULT, ...
 *
 * A user that cannot reach the exporter's memory for its half asks for it
 * with a second BULK_REQ (flag SHM_BULK_NOSPLIT) and waits for both DONEs.
 *
 * The exporter writes only into exports it made, and only reads or writes
 * the user's memory where the user said (which can hurt no one but the
 * user).  A BULK_REQ naming a key, range or direction that was not
 * exported, or a BULK_DONE for a token not pending, closes the connection
 * with TERN_EPEER.  Because the user's bulk_done() follows the BULK_DONE,
 * anything it posts afterwards reaches the peer after the data.
 *
 * Without ptrace (Yama ptrace_scope 1, a non-dumpable peer, or
 * TERN_SHM_NO_PTRACE=1) process_vm_* fails with EPERM; so does nothing
 * else.  The exporter then answers a checked BULK_REQ with a memfd *area*
 * the user maps and copies through itself, by memcpy:
 *
 *   exporter -> user  BULK_MAP    key = area id, xaddr = offset in the area,
 *                                 laddr and len echo the request (the
 *                                 user's half, after a split).  The area's
 *                                 memfd rides along the first time the id is
 *                                 used (or after UNMAP), sealed like the
 *                                 segment.  Two kinds:
 *                                 - a tern_mem_alloc() region the export
 *                                   lies in: one copy, the user's, straight
 *                                   between its buffer and the export; the
 *                                   transfer is over when the copy is;
 *                                 - SHM_MAP_STAGED: a staging memfd of this
 *                                   connection's (never shared with another
 *                                   peer).  READ: the exporter copied the
 *                                   export into it; the user copies it out
 *                                   and says BULK_FREE.  WRITE: the user
 *                                   copies its bytes in and says
 *                                   BULK_FILLED; the exporter checks the
 *                                   export is still live, copies them into
 *                                   it and says BULK_DONE.
 *   user -> exporter  BULK_FREE   key = area, token: a READ's area is free
 *   user -> exporter  BULK_FILLED key = area, token: a WRITE's bytes are in
 *   exporter -> user  BULK_UNMAP  key = area: forget it (the region was
 *                                 released, or idle staging retired)
 *
 * What the user maps stays mapped until UNMAP or the connection's end: a
 * hostile user may keep it, so areas hold only what the peer may see anyway
 * (docs/threat-model.md).  The user checks a MAP against its own request
 * (token, direction, laddr, len) and the area's size from fstat; anything
 * else, a FREE or FILLED for an area not lent for that token, or an fd on
 * any other message, closes the connection with TERN_EPEER.
 */
enum shm_msg_type {
	SHM_MSG_HELLO = 1,
	SHM_MSG_ACCEPT = 2,
	SHM_MSG_REFUSE = 3,
	SHM_MSG_READY = 4,
	SHM_MSG_BULK_REQ = 5,
	SHM_MSG_BULK_DONE = 6,
	SHM_MSG_BULK_SPLIT = 7,
	SHM_MSG_BULK_MAP = 8,
	SHM_MSG_BULK_FREE = 9,
	SHM_MSG_BULK_FILLED = 10,
	SHM_MSG_BULK_UNMAP = 11,
	SHM_MSG_TYPES, /* one past the last */
};

enum shm_bulk_op {
	SHM_BULK_READ = 1,
	SHM_BULK_WRITE = 2,
	SHM_BULK_OP_MASK = 0xff,
	SHM_BULK_NOSPLIT = 0x100, /* flag: copy it all yourself */
	SHM_MAP_STAGED = 0x200,	  /* BULK_MAP flag: a staging area, to FREE or FILL */
};

#define SHM_MAX_AREAS	   256		 /* areas one side lends a connection's peer, at most */
#define SHM_STAGE_MIN	   (64u << 10)	 /* staging areas come in powers of two from here */
#define SHM_STAGE_IDLE_MAX (64ull << 20) /* idle staging kept per connection, at most */

#define SHM_SPLIT_MIN (4u << 20) /* transfers from here on are split in two */

/* A bulk message's body, in struct shm_msg's hs[] (hs_len stays 0). */
struct shm_bulk {
	uint64_t xaddr; /* REQ: the exporter's first byte (the descriptor's addr); MAP: offset */
	uint64_t len;	/* REQ, MAP: how many bytes; SPLIT: where the user's half starts */
	uint64_t laddr; /* REQ, MAP: the user's buffer, in the user's address space */
	uint32_t key;	/* REQ: the descriptor's key; MAP, FREE, FILLED, UNMAP: the area */
	uint32_t token; /* the user's name for the transfer, echoed in DONE */
	uint32_t op;	/* REQ: enum shm_bulk_op */
	int32_t status; /* DONE: 0 or -errno */
};
_Static_assert(sizeof(struct shm_bulk) == 40, "bulk body is 40 bytes");
_Static_assert(sizeof(struct shm_bulk) <= TERN_HANDSHAKE_MAX, "bulk body fits hs[]");

struct shm_msg {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	int32_t status; /* REFUSE: why, a negative errno or TERN_E* code */
	uint32_t slot_size;
	uint32_t nslots;
	uint32_t hs_len;
	uint64_t seg_size; /* ACCEPT: the memfd's size */
	uint8_t hs[TERN_HANDSHAKE_MAX];
};
_Static_assert(sizeof(struct shm_msg) == 32 + TERN_HANDSHAKE_MAX, "socket message size");
_Static_assert(offsetof(struct shm_msg, seg_size) == 24, "seg_size at 24");

#define SHM_ABSTRACT_PREFIX "tern.shm."
#define SHM_NAME_MAX	    64

#endif /* TERN_SHM_LAYOUT_H */
