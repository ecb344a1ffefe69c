// SPDX-License-Identifier: MIT
/*
 * wire_mem.c - the fuzzing peer over mem://, through the provider's raw
 * peer (transport/mem/mem.h).  The provider gives what a NIC gives: every
 * message the engine posts, the say over when its sends and transfers
 * complete, checked access to its exports.  Its hostile op is the one a
 * NIC allows too: a message into a receive ring with no room, or longer
 * than a slot.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "tern.h"
#include "mem.h"
#include "wire.h"

#define MEM_LISTEN_NAME "fz"
#define MEM_PEER_NAME	"fz-peer"

static struct tern_mem_peer *peer;
static struct tern_tmem pmem_tm = {.addr = fz_pmem, .len = sizeof(fz_pmem)};

static void on_msg(struct tern_mem_peer *p, uint32_t slot, const void *buf, uint32_t len,
		   void *user)
{
	(void)p, (void)slot, (void)user;
	fz_engine_msg(buf, len);
}

static void on_hello(struct tern_mem_peer *p, const void *hs, size_t len, void *user)
{
	(void)p, (void)user;
	fz_engine_hello(hs, len);
}

static const struct tern_mem_peer_cbs cbs = {.hello = on_hello, .msg = on_msg};

static const char *mem_listen_uri(void)
{
	return "mem://" MEM_LISTEN_NAME;
}

static int mem_connect(const char *uri, const void *hs, size_t len)
{
	(void)uri;
	return tern_mem_peer_connect(MEM_LISTEN_NAME, hs, len, &cbs, NULL, &peer);
}

static const char *mem_listen(void)
{
	return tern_mem_peer_listen(MEM_PEER_NAME, &cbs, NULL, &peer) ? NULL
								      : "mem://" MEM_PEER_NAME;
}

static void mem_answer(bool accept, int32_t status, const void *hs, size_t len)
{
	if (accept)
		tern_mem_peer_accept(peer, hs, len);
	else
		tern_mem_peer_refuse(peer, status, hs, len);
}

static enum fz_wire_state mem_state(void)
{
	switch (peer ? tern_mem_peer_state(peer) : MEM_PEER_GONE) {
	case MEM_PEER_WAITING:
		return FZ_WAITING;
	case MEM_PEER_UP:
		return FZ_UP;
	case MEM_PEER_REFUSED:
		return FZ_REFUSED;
	default:
		return FZ_GONE;
	}
}

static int mem_send(const void *buf, uint32_t len)
{
	return tern_mem_peer_send(peer, buf, len);
}

static void mem_pump(void)
{
	tern_ctx_poll(fz_ctx(), 64);
}

static void mem_hold(bool sends, bool bulk)
{
	tern_mem_peer_hold(peer, sends, bulk);
}

static uint32_t mem_complete_sends(uint32_t n)
{
	return tern_mem_peer_complete_sends(peer, n);
}

static uint32_t mem_bulk_pending(void)
{
	return tern_mem_peer_bulk_pending(peer);
}

static int mem_complete_bulk(uint32_t i, int status)
{
	return tern_mem_peer_complete_bulk(peer, i, status);
}

static int mem_expose(size_t off, size_t len, int writable, struct tern_bulk_desc *out)
{
	return tern_mem_peer_expose(peer, &pmem_tm, off, len, writable, out);
}

static int mem_read(const struct tern_bulk_desc *d, void *buf)
{
	return tern_mem_peer_read(peer, d, buf);
}

static int mem_write(const struct tern_bulk_desc *d, const void *buf)
{
	return tern_mem_peer_write(peer, d, buf);
}

/* What only a wire can do: fill the ring past its posted receives, or
 * send more than a slot.  Either fails the connection, as on a NIC. */
static void mem_hostile(void)
{
	uint8_t msg[FZ_SLOT + 64] = {0};
	uint32_t n = fz_u8() % 8 + 1;

	if (fz_u8() & 1) {
		fz_take(msg, sizeof(msg));
		tern_mem_peer_send(peer, msg, sizeof(msg));
		return;
	}
	while (n-- && tern_mem_peer_posted(peer))
		tern_mem_peer_send(peer, msg, 32); /* a header's worth */
	tern_mem_peer_send(peer, msg, 32);	   /* a header's worth */
}

static void mem_close(void)
{
	tern_mem_peer_close(peer);
	peer = NULL;
}

const struct fz_wire fz_wire_mem = {
	.name = "mem",
	.listen_uri = mem_listen_uri,
	.connect = mem_connect,
	.listen = mem_listen,
	.answer = mem_answer,
	.state = mem_state,
	.send = mem_send,
	.pump = mem_pump,
	.hold = mem_hold,
	.complete_sends = mem_complete_sends,
	.bulk_pending = mem_bulk_pending,
	.complete_bulk = mem_complete_bulk,
	.expose = mem_expose,
	.read = mem_read,
	.write = mem_write,
	.hostile = mem_hostile,
	.close = mem_close,
};
