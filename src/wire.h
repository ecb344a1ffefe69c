/* SPDX-License-Identifier: MIT */
/*
 * wire.h - tern's wire format: the 32-byte message header and the
 * connection handshake.  Fixed-width, little-endian, with every offset
 * pinned by _Static_assert.  Encoders and decoders are static inline (they
 * are on the hot path); validation against a session's geometry lives in
 * wire.c.
 */
#ifndef TERN_WIRE_H
#define TERN_WIRE_H

#include <endian.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "tern.h"
#include "tern/transport.h"

/*
 * TERN_WIRE_VERSION is raised whenever the messages change meaning: 3 added
 * TERN_MSG_CANCEL (a version 2 peer would take a cancel for a protocol
 * error).  Peers of different versions are refused at the handshake,
 * never later.
 */
#define TERN_WIRE_MAGIC	  0x4e524554u /* "TERN" read as a little-endian u32 */
#define TERN_WIRE_VERSION 3
#define TERN_HDR_SIZE	  32
#define TERN_ERRMSG_MAX	  200 /* bytes of message an error reply carries */

enum tern_msg_kind {
	TERN_MSG_REQ = 1,      /* a call; consumes one of the sender's credits */
	TERN_MSG_REP = 2,      /* a successful reply; lands in a receive the caller reserved */
	TERN_MSG_ERR = 3,      /* a failed reply: status + short message */
	TERN_MSG_CREDIT = 4,   /* returns credits when there is no reply to carry them */
	TERN_MSG_ONEWAY = 5,   /* a message with no reply; consumes one of the sender's credits */
	TERN_MSG_CTRL_ACK = 6, /* returns all control credits to a peer that spent them */
	TERN_MSG_CANCEL = 7,   /* calls that timed out: let go of the caller's memory, answer */
	TERN_MSG_KIND_MAX = 7,
};

/*
 * A cancel (TERN_MSG_CANCEL) travels like a credit message, on a control
 * credit (credit.h), and names the calls it cancels in its payload, one
 * 8-byte entry each (u16 call_slot, u16 zero, u32 call_gen, LE); its
 * header names no call.  The server answers each call it still holds with
 * that call's one reply: the reply its handler makes in the end, or, when
 * no handler has run yet (waiting for a reply slot or for its request to
 * be pulled), an error reply with -ECANCELED.  From the cancel on it never
 * touches the caller's memory again (no pull, no push).  A cancel for a
 * call it does not hold (answered already: the reply crossed the cancel)
 * is ignored; an entry naming a slot past slot_count, or with its zero
 * field set, is a protocol error.
 */
#define TERN_CANCEL_ENTRY_SIZE 8

static inline void tern_cancel_entry_encode(void *p, uint16_t slot, uint32_t gen)
{
	uint16_t s = htole16(slot), z = 0;
	uint32_t g = htole32(gen);

	memcpy((uint8_t *)p, &s, 2);
	memcpy((uint8_t *)p + 2, &z, 2);
	memcpy((uint8_t *)p + 4, &g, 4);
}

/* Return: false when the entry's zero field is not zero. */
static inline bool tern_cancel_entry_decode(const void *p, uint16_t *slot, uint32_t *gen)
{
	uint16_t s, z;
	uint32_t g;

	memcpy(&s, (const uint8_t *)p, 2);
	memcpy(&z, (const uint8_t *)p + 2, 2);
	memcpy(&g, (const uint8_t *)p + 4, 4);
	*slot = le16toh(s);
	*gen = le32toh(g);
	return z == 0;
}

/*
 * The statuses an error reply may carry: a negative errno or a TERN_E* code,
 * -1 down to TERN_WIRE_STATUS_MIN.  A server sends nothing else (a handler's
 * code outside the range goes out as TERN_EREMOTE), and a client takes
 * nothing else: an error reply whose status is 0, positive or below the
 * range would reach the caller as a success or as a code it cannot name.
 */
#define TERN_WIRE_STATUS_MIN (-(TERN_ERRNO_BASE + 999))

static inline bool tern_wire_status_ok(int32_t status)
{
	return status < 0 && status >= TERN_WIRE_STATUS_MIN;
}

/*
 * Header flags: large messages.  A request may start with the descriptor of
 * the caller's reply buffer (REPLY_DESC), and may carry, instead of its
 * bytes, the descriptor of where the server can read them (BULK).  A reply
 * flagged BULK was written into the caller's reply buffer; its payload is
 * the length written (u64).
 */
#define TERN_F_BULK	    0x01u
#define TERN_F_REPLY_DESC   0x02u
#define TERN_BULK_DESC_SIZE 24

/* The header, decoded into host order. */
struct tern_hdr {
	uint8_t kind;
	uint8_t flags;
	uint16_t call_slot;    /* the caller's call slot (REQ, REP, ERR) */
	uint32_t call_gen;     /* ...and its generation: slot+gen names one call */
	uint32_t method;       /* REQ: method id */
	uint32_t len;	       /* payload bytes after the header */
	uint16_t credits;      /* request credits returned to the receiver */
	uint16_t ctrl_credits; /* control (credit-message) credits returned */
	int32_t status;	       /* ERR: negative errno or TERN_E* code */
	uint32_t seq;	       /* per-direction message counter, from 0 */
	uint32_t reserved;     /* 0 */
};

/* The header as it lies in a slot. */
struct tern_wire_hdr {
	uint8_t kind;
	uint8_t flags;
	uint16_t call_slot;
	uint32_t call_gen;
	uint32_t method;
	uint32_t len;
	uint16_t credits;
	uint16_t ctrl_credits;
	uint32_t status;
	uint32_t seq;
	uint32_t reserved;
};
_Static_assert(sizeof(struct tern_wire_hdr) == TERN_HDR_SIZE, "wire header is 32 bytes");
_Static_assert(offsetof(struct tern_wire_hdr, call_slot) == 2, "call_slot at 2");
_Static_assert(offsetof(struct tern_wire_hdr, call_gen) == 4, "call_gen at 4");
_Static_assert(offsetof(struct tern_wire_hdr, method) == 8, "method at 8");
_Static_assert(offsetof(struct tern_wire_hdr, len) == 12, "len at 12");
_Static_assert(offsetof(struct tern_wire_hdr, credits) == 16, "credits at 16");
_Static_assert(offsetof(struct tern_wire_hdr, ctrl_credits) == 18, "ctrl_credits at 18");
_Static_assert(offsetof(struct tern_wire_hdr, status) == 20, "status at 20");
_Static_assert(offsetof(struct tern_wire_hdr, seq) == 24, "seq at 24");
_Static_assert(offsetof(struct tern_wire_hdr, reserved) == 28, "reserved at 28");

static inline void tern_hdr_encode(void *slot, const struct tern_hdr *h)
{
	/*
	 * Field by field, straight into the slot.  Building a struct on the
	 * stack and copying it out costs a store-forwarding stall per 16-byte
	 * reload of the just-written fields, on every message sent.
	 */
	uint8_t *p = slot;
	uint16_t v16;
	uint32_t v32;

	p[0] = h->kind;
	p[1] = h->flags;
	v16 = htole16(h->call_slot), memcpy(p + 2, &v16, 2);
	v32 = htole32(h->call_gen), memcpy(p + 4, &v32, 4);
	v32 = htole32(h->method), memcpy(p + 8, &v32, 4);
	v32 = htole32(h->len), memcpy(p + 12, &v32, 4);
	v16 = htole16(h->credits), memcpy(p + 16, &v16, 2);
	v16 = htole16(h->ctrl_credits), memcpy(p + 18, &v16, 2);
	v32 = htole32((uint32_t)h->status), memcpy(p + 20, &v32, 4);
	v32 = htole32(h->seq), memcpy(p + 24, &v32, 4);
	memset(p + 28, 0, 4); /* reserved */
}

/* Decode without judging; tern_hdr_check() judges. */
static inline void tern_hdr_decode(const void *slot, struct tern_hdr *h)
{
	struct tern_wire_hdr w;

	memcpy(&w, slot, sizeof(w));
	h->kind = w.kind;
	h->flags = w.flags;
	h->call_slot = le16toh(w.call_slot);
	h->call_gen = le32toh(w.call_gen);
	h->method = le32toh(w.method);
	h->len = le32toh(w.len);
	h->credits = le16toh(w.credits);
	h->ctrl_credits = le16toh(w.ctrl_credits);
	h->status = (int32_t)le32toh(w.status);
	h->seq = le32toh(w.seq);
	h->reserved = le32toh(w.reserved);
}

/*
 * tern_hdr_check - validate a received header before anything reads it
 * @h: the decoded header
 * @msg_len: the bytes the transport delivered (header included)
 * @slot_count: the session's slot count (call slots are below it)
 * @slot_size: the session's slot size
 * @expect_seq: the next sequence number from this peer
 * @why: set to a static description on failure
 *
 * Checks only what one header can prove wrong on its own; credit accounting
 * is the session's.  Return: 0 or TERN_EPEER.
 */
int tern_hdr_check(const struct tern_hdr *h, uint32_t msg_len, uint32_t slot_count,
		   uint32_t slot_size, uint32_t expect_seq, const char **why);

/*
 * tern_hdr_plain - the common case of tern_hdr_check(), in one pass
 *
 * True when @h is a request or a reply with no flags and no status, whose
 * length, sequence number, call slot and (for a request) method
 * tern_hdr_check() would accept: then it returns 0 too, so the receive
 * path may skip it.  False says nothing: tern_hdr_check() judges, and says
 * why.  Arguments as tern_hdr_check()'s.
 */
static inline bool tern_hdr_plain(const struct tern_hdr *h, uint32_t msg_len, uint32_t slot_count,
				  uint32_t slot_size, uint32_t expect_seq)
{
	return msg_len >= TERN_HDR_SIZE && msg_len <= slot_size &&
	       (h->flags | h->reserved | (uint32_t)h->status) == 0 &&
	       h->len == msg_len - TERN_HDR_SIZE && h->seq == expect_seq &&
	       h->call_slot < slot_count &&
	       (h->kind == TERN_MSG_REP || (h->kind == TERN_MSG_REQ && h->method != 0));
}

/* A bulk descriptor on the wire: addr, len (u64), key, aux (u32), LE. */
static inline void tern_bulk_desc_encode(void *p, const struct tern_bulk_desc *d)
{
	uint64_t a = htole64(d->addr), l = htole64(d->len);
	uint32_t k = htole32(d->key), x = htole32(d->aux);

	memcpy((uint8_t *)p, &a, 8);
	memcpy((uint8_t *)p + 8, &l, 8);
	memcpy((uint8_t *)p + 16, &k, 4);
	memcpy((uint8_t *)p + 20, &x, 4);
}

static inline void tern_bulk_desc_decode(const void *p, struct tern_bulk_desc *d)
{
	uint64_t a, l;
	uint32_t k, x;

	memcpy(&a, (const uint8_t *)p, 8);
	memcpy(&l, (const uint8_t *)p + 8, 8);
	memcpy(&k, (const uint8_t *)p + 16, 4);
	memcpy(&x, (const uint8_t *)p + 20, 4);
	d->addr = le64toh(a);
	d->len = le64toh(l);
	d->key = le32toh(k);
	d->aux = le32toh(x);
}

/*
 * The handshake: the client's in rdma_cm's connect private data (the shm
 * socket message, the first tcp frame), the server's answer in the accept
 * (or reject) private data.  40 bytes, under rdma_cm's 56-byte limit.
 */
#define TERN_HELLO_REPLY    0x1u /* flags: this is the server's answer */
#define TERN_HELLO_SERVICES 0x2u /* flags: a service check comes first */

/* Method ids from here up are tern's own; users cannot register them. */
#define TERN_METHOD_RESERVED_MIN 0xffffff00u
/*
 * The service check: the client's first request once the transport is up
 * (docs/idl.md, "At connect time").  Little-endian; a name is u8 len
 * (1..63) and its bytes.
 *
 *   check  = u8 count (1..64), count x { name, u64 schema_hash,
 *            u32 layout_len, layout (layout_len 0: none) }
 *   layout = u8 format (1),
 *            u16 nmsgs (0..256), nmsgs x { name, u16 nfields,
 *                nfields x { name, u8 type, u32 count } },
 *            u16 nmethods (1..), nmethods x { u32 id, name, u8 kind,
 *                u16 request, u16 reply }, ids strictly ascending
 *
 * A field's type is TERN_LT_*, its count the array length (0: a scalar;
 * bytes: 0 and last).  A request or reply is a message's index,
 * TERN_LAYOUT_BYTES or (the reply of a one-way kind) TERN_LAYOUT_NONE.
 * tern-gen writes layouts (tools/tern-gen, schema_layout()).
 *
 * Answered by a reply whose payload has one bit per method of the check's
 * layouts, in order (bit i: byte i / 8, bit i % 8): set when the server
 * serves that method; or by an error naming the service, the method and
 * the field that refuse the client.
 */
#define TERN_METHOD_SVC_CHECK 0xffffff01u
#define TERN_SVC_MAX	      64
#define TERN_SVC_NAME_MAX     63
#define TERN_LAYOUT_FORMAT    1
#define TERN_LAYOUT_MSGS_MAX  256
#define TERN_LAYOUT_BYTES     0xffffu
#define TERN_LAYOUT_NONE      0xfffeu
/* The largest fixed part of a message: a 1 MiB slot less the header. */
#define TERN_LAYOUT_MSG_MAX ((1u << 20) - TERN_HDR_SIZE)

enum tern_layout_type {
	TERN_LT_U8 = 1,
	TERN_LT_U16,
	TERN_LT_U32,
	TERN_LT_U64,
	TERN_LT_I8,
	TERN_LT_I16,
	TERN_LT_I32,
	TERN_LT_I64,
	TERN_LT_F32,
	TERN_LT_F64,
	TERN_LT_BYTES, /* the trailing bytes */
};

enum tern_layout_kind {
	TERN_LK_RAW = 1,
	TERN_LK_INPLACE,
	TERN_LK_DEFERRED,
	TERN_LK_ONEWAY,
	TERN_LK_BATCH,
	TERN_LK_ONEWAY_BATCH,
};

struct tern_wire_hello {
	uint32_t magic;
	uint16_t version;
	uint16_t flags;
	uint32_t slot_size;
	uint32_t slot_count;
	uint64_t schema_hash;
	uint32_t max_msg; /* largest message this side accepts (0: one slot) */
	uint32_t status;  /* a refusal: the TERN_E* code, as u32 */
	uint32_t reserved[2];
};
_Static_assert(sizeof(struct tern_wire_hello) == 40, "hello is 40 bytes");
_Static_assert(offsetof(struct tern_wire_hello, slot_size) == 8, "slot_size at 8");
_Static_assert(offsetof(struct tern_wire_hello, schema_hash) == 16, "schema_hash at 16");
_Static_assert(offsetof(struct tern_wire_hello, status) == 28, "status at 28");

struct tern_hello {
	uint16_t version;
	uint16_t flags;
	uint32_t slot_size;
	uint32_t slot_count;
	uint64_t schema_hash;
	uint32_t max_msg;
	int32_t status;
};

void tern_hello_encode(void *buf, const struct tern_hello *h);

/*
 * The hello's magic, version and status keep their offsets in every
 * version, so that a refusal reads across versions: a peer of another
 * version learns why it was refused (tern_hello_decode() still fills @h).
 */
_Static_assert(offsetof(struct tern_wire_hello, version) == 4, "version at 4");

/*
 * tern_hello_decode - parse a peer's handshake
 * Return: 0, or TERN_EVERSION (short, bad magic, other version).  On a
 * short hello or a bad magic @h is all zero (version 0 is never valid);
 * on another version @h holds what it said, for the error message and for
 * a refusal's status.
 */
int tern_hello_decode(const void *buf, size_t len, struct tern_hello *h);

/*
 * tern_hello_match - does the peer's handshake agree with ours?
 * Return: 0, TERN_EGEOMETRY or TERN_ESCHEMA, with a message in @why.
 */
int tern_hello_match(const struct tern_hello *ours, const struct tern_hello *peer, char *why,
		     size_t why_len);

#endif /* TERN_WIRE_H */
