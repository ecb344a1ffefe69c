/* SPDX-License-Identifier: MIT */
/*
 * tcp_proto.h - the tcp:// provider's framing and handshake.
 *
 * Private to transport/tcp/ and to the tests that play a hostile peer; the
 * engine never includes it.  Everything on the wire is little-endian.
 *
 * The stream is a sequence of frames: a u32 length, then that many bytes.
 * The first frame each way is a handshake frame (struct tcp_hs, exactly
 * TCP_HS_SIZE bytes); every later frame is one engine message (its 32-byte
 * header and payload) as the engine wrote it into its send slot, at most
 * one slot long.  The length is checked before a byte of the frame is read
 * into a slot, so a peer can never make us read past a slot or allocate.
 *
 *   client -> server  HELLO   the engine's handshake
 *   server -> client  ACCEPT  the engine's answer
 *                  or REFUSE  status + the engine's refusal, then close
 *   client -> server  READY   the client is set up; data frames follow
 */
#ifndef TERN_TCP_PROTO_H
#define TERN_TCP_PROTO_H

#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tern/transport.h"

#define TCP_HS_MAGIC	  0x50435454u /* "TTCP" */
#define TCP_PROTO_VERSION 1
#define TCP_PREFIX	  4 /* the frame length */

enum tcp_hs_type {
	TCP_HS_HELLO = 1,
	TCP_HS_ACCEPT = 2,
	TCP_HS_REFUSE = 3,
	TCP_HS_READY = 4,
};

struct tcp_hs {
	uint32_t magic;
	uint16_t version;
	uint16_t type;
	int32_t status; /* REFUSE: a negative errno or TERN_E* code */
	uint32_t hs_len;
	uint8_t hs[TERN_HANDSHAKE_MAX];
};
#define TCP_HS_SIZE 64
_Static_assert(sizeof(struct tcp_hs) == TCP_HS_SIZE, "handshake frame is 64 bytes");
_Static_assert(offsetof(struct tcp_hs, hs_len) == 12, "hs_len at 12");

/* A whole handshake frame, length prefix included, into @out. */
static inline void tcp_hs_encode(uint8_t out[TCP_PREFIX + TCP_HS_SIZE], uint16_t type,
				 int32_t status, const void *hs, size_t hs_len)
{
	struct tcp_hs f;
	uint32_t len = htole32(TCP_HS_SIZE);

	memset(&f, 0, sizeof(f));
	f.magic = htole32(TCP_HS_MAGIC);
	f.version = htole16(TCP_PROTO_VERSION);
	f.type = htole16(type);
	f.status = (int32_t)htole32((uint32_t)status);
	if (hs_len > TERN_HANDSHAKE_MAX)
		hs_len = TERN_HANDSHAKE_MAX;
	f.hs_len = htole32((uint32_t)hs_len);
	if (hs_len)
		memcpy(f.hs, hs, hs_len);
	memcpy(out, &len, TCP_PREFIX);
	memcpy(out + TCP_PREFIX, &f, sizeof(f));
}

/* Parse a handshake frame's body.  Return: 0, or -EBADMSG. */
static inline int tcp_hs_decode(const uint8_t in[TCP_HS_SIZE], struct tcp_hs *f)
{
	memcpy(f, in, sizeof(*f));
	f->magic = le32toh(f->magic);
	f->version = le16toh(f->version);
	f->type = le16toh(f->type);
	f->status = (int32_t)le32toh((uint32_t)f->status);
	f->hs_len = le32toh(f->hs_len);
	if (f->magic != TCP_HS_MAGIC || f->version != TCP_PROTO_VERSION ||
	    f->hs_len > TERN_HANDSHAKE_MAX)
		return -EBADMSG;
	return 0;
}

/*
 * Large messages (bulk).  A frame whose length has TCP_BULK_FLAG set is a
 * bulk frame: a struct tcp_bulk header (the low bits must be exactly
 * TCP_BULK_HDR), then, for DATA and WRITE, the piece's bytes.  Message
 * frames never have the flag (they are at most one slot), so the two never
 * mix up.
 *
 *   user -> exporter  READ   "send me [addr, addr + len) of export key"
 *   exporter -> user  DATA   one piece of a READ: token, offset, len; bytes
 *   user -> exporter  WRITE  one piece into export key at addr: len; bytes
 *
 * Pieces are at most TCP_BULK_PIECE bytes; a sender keeps a few in flight,
 * written straight from the source buffer, and a receiver reads each piece
 * straight into its destination, which it has checked before the first
 * byte: READ and WRITE against the exporter's table of live exports, DATA
 * against the read the user asked for (token, next offset, bytes still
 * missing).  Anything else closes the connection with TERN_EPEER.  The
 * stream is ordered, so a message sent after the last piece of a WRITE
 * reaches the peer after the data.
 */
#define TCP_BULK_FLAG  0x80000000u
#define TCP_BULK_HDR   32
#define TCP_BULK_PIECE (1u << 20)

enum tcp_bulk_type {
	TCP_BULK_READ = 1,
	TCP_BULK_DATA = 2,
	TCP_BULK_WRITE = 3,
};

struct tcp_bulk {
	uint16_t type;
	uint16_t reserved;
	uint32_t key;	/* READ, WRITE: the export's key */
	uint64_t addr;	/* READ, WRITE: the exporter's address; DATA: offset in the read */
	uint64_t len;	/* READ: the whole read; DATA, WRITE: this piece, which follows */
	uint32_t token; /* READ, DATA: the user's name for the read */
	uint32_t reserved2;
};
_Static_assert(sizeof(struct tcp_bulk) == TCP_BULK_HDR, "bulk header is 32 bytes");
_Static_assert(offsetof(struct tcp_bulk, len) == 16, "len at 16");

/* A whole bulk header, length prefix included, into @out. */
static inline void tcp_bulk_encode(uint8_t out[TCP_PREFIX + TCP_BULK_HDR], uint16_t type,
				   uint32_t key, uint64_t addr, uint64_t len, uint32_t token)
{
	struct tcp_bulk b;
	uint32_t pre = htole32(TCP_BULK_FLAG | TCP_BULK_HDR);

	memset(&b, 0, sizeof(b));
	b.type = htole16(type);
	b.key = htole32(key);
	b.addr = htole64(addr);
	b.len = htole64(len);
	b.token = htole32(token);
	memcpy(out, &pre, TCP_PREFIX);
	memcpy(out + TCP_PREFIX, &b, sizeof(b));
}

static inline void tcp_bulk_decode(const uint8_t in[TCP_BULK_HDR], struct tcp_bulk *b)
{
	memcpy(b, in, sizeof(*b));
	b->type = le16toh(b->type);
	b->key = le32toh(b->key);
	b->addr = le64toh(b->addr);
	b->len = le64toh(b->len);
	b->token = le32toh(b->token);
}

#endif /* TERN_TCP_PROTO_H */
