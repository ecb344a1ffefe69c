// SPDX-License-Identifier: MIT
/* Validation of everything a peer sends: nothing it says is trusted. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>

#include "tern.h"
#include "wire.h"

int tern_hdr_check(const struct tern_hdr *h, uint32_t msg_len, uint32_t slot_count,
		   uint32_t slot_size, uint32_t expect_seq, const char **why)
{
	if (msg_len < TERN_HDR_SIZE || msg_len > slot_size) {
		*why = "message shorter than a header or longer than a slot";
		return TERN_EPEER;
	}
	if (h->kind == 0 || h->kind > TERN_MSG_KIND_MAX) {
		*why = "unknown message kind";
		return TERN_EPEER;
	}
	if (h->reserved != 0) {
		*why = "reserved header bits set";
		return TERN_EPEER;
	}
	/* Flags: only what each kind may carry, with the payload it implies. */
	switch (h->kind) {
	case TERN_MSG_REQ: {
		uint32_t need = 0;

		if (h->flags & ~(TERN_F_BULK | TERN_F_REPLY_DESC)) {
			*why = "unknown request flags";
			return TERN_EPEER;
		}
		if (h->flags & TERN_F_REPLY_DESC)
			need += TERN_BULK_DESC_SIZE;
		if (h->flags & TERN_F_BULK)
			need += TERN_BULK_DESC_SIZE;
		if ((h->flags & TERN_F_BULK) ? h->len != need : h->len < need) {
			*why = "request too short for its descriptors";
			return TERN_EPEER;
		}
		break;
	}
	case TERN_MSG_REP:
		if ((h->flags & ~TERN_F_BULK) || ((h->flags & TERN_F_BULK) && h->len != 8)) {
			*why = "bad reply flags";
			return TERN_EPEER;
		}
		break;
	default:
		if (h->flags) {
			*why = "flags on a message that takes none";
			return TERN_EPEER;
		}
		break;
	}
	/* The length field must agree with what actually arrived. */
	if (h->len != msg_len - TERN_HDR_SIZE) {
		*why = "header length disagrees with the message size";
		return TERN_EPEER;
	}
	if (h->seq != expect_seq) {
		*why = "message out of sequence";
		return TERN_EPEER;
	}
	switch (h->kind) {
	case TERN_MSG_REQ:
	case TERN_MSG_REP:
	case TERN_MSG_ERR:
		if (h->call_slot >= slot_count) {
			*why = "call slot out of range";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_ONEWAY:
		if (h->call_slot != 0 || h->call_gen != 0) {
			*why = "one-way message names a call";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_CREDIT:
	case TERN_MSG_CTRL_ACK:
		if (h->len != 0) {
			*why = "credit message with a payload";
			return TERN_EPEER;
		}
		break;
	case TERN_MSG_CANCEL:
		/* the calls are in the payload (wire.h); the header names none */
		if (h->len == 0 || h->len % TERN_CANCEL_ENTRY_SIZE || h->call_slot || h->call_gen ||
		    h->method) {
			*why = "malformed cancel";
			return TERN_EPEER;
		}
		break;
	}
	/* Only an error reply carries a status, and only an error code. */
	if (h->kind == TERN_MSG_ERR && !tern_wire_status_ok(h->status)) {
		*why = "error reply whose status is not an error code";
		return TERN_EPEER;
	}
	if (h->kind != TERN_MSG_ERR && h->status != 0) {
		*why = "status on a message that is not an error reply";
		return TERN_EPEER;
	}
	if (h->kind == TERN_MSG_ERR && h->len > TERN_ERRMSG_MAX) {
		*why = "error message too long";
		return TERN_EPEER;
	}
	if ((h->kind == TERN_MSG_REQ || h->kind == TERN_MSG_ONEWAY) && h->method == 0) {
		*why = "method id 0";
		return TERN_EPEER;
	}
	return 0;
}

void tern_hello_encode(void *buf, const struct tern_hello *h)
{
	struct tern_wire_hello w = {
		.magic = htole32(TERN_WIRE_MAGIC),
		.version = htole16(h->version),
		.flags = htole16(h->flags),
		.slot_size = htole32(h->slot_size),
		.slot_count = htole32(h->slot_count),
		.schema_hash = htole64(h->schema_hash),
		.max_msg = htole32(h->max_msg),
		.status = htole32((uint32_t)h->status),
	};
	memcpy(buf, &w, sizeof(w));
}

int tern_hello_decode(const void *buf, size_t len, struct tern_hello *h)
{
	struct tern_wire_hello w;

	memset(h, 0, sizeof(*h));
	if (!buf || len < sizeof(w))
		return TERN_EVERSION;
	memcpy(&w, buf, sizeof(w));
	if (le32toh(w.magic) != TERN_WIRE_MAGIC)
		return TERN_EVERSION;
	h->version = le16toh(w.version);
	h->flags = le16toh(w.flags);
	h->slot_size = le32toh(w.slot_size);
	h->slot_count = le32toh(w.slot_count);
	h->schema_hash = le64toh(w.schema_hash);
	h->max_msg = le32toh(w.max_msg);
	h->status = (int32_t)le32toh(w.status);
	if (h->version != TERN_WIRE_VERSION)
		return TERN_EVERSION;
	return 0;
}

int tern_hello_match(const struct tern_hello *ours, const struct tern_hello *peer, char *why,
		     size_t why_len)
{
	if (peer->slot_size != ours->slot_size || peer->slot_count != ours->slot_count) {
		snprintf(why, why_len,
			 "slot geometry differs: peer %" PRIu32 " x %" PRIu32 " B, ours %" PRIu32
			 " x %" PRIu32 " B",
			 peer->slot_count, peer->slot_size, ours->slot_count, ours->slot_size);
		return TERN_EGEOMETRY;
	}
	if (peer->schema_hash && ours->schema_hash && peer->schema_hash != ours->schema_hash) {
		snprintf(why, why_len, "schema hash differs: peer %016" PRIx64 ", ours %016" PRIx64,
			 peer->schema_hash, ours->schema_hash);
		return TERN_ESCHEMA;
	}
	return 0;
}
