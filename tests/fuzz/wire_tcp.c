// SPDX-License-Identifier: MIT
/*
 * wire_tcp.c - the fuzzing peer over tcp://, by hand: the real provider
 * (transport/tcp/tcp.c) on the engine's side of a loopback connection,
 * and this file on the other, speaking tcp_proto.h.  The peer is the
 * client when the engine listens and the server when the engine connects.
 *
 * Honest, it frames one message per frame, answers the engine's bulk READs
 * with DATA pieces from its own checked exports, takes WRITE pieces into
 * them, and asks for the engine's exports with READ and WRITE.  Its
 * hostile op writes any bytes into the stream: frames of any length (a
 * slot's worth and more, a bulk flag with a bad header size), bulk headers
 * of any field, pieces for reads nobody asked for, a frame cut in two
 * with the engine running in between, and half-closes.  "Holding" the
 * engine's sends is not reading the socket, the way a slow TCP peer holds
 * them.
 *
 * A run closes with SO_LINGER 0 (a reset), so ten million runs leave no
 * TIME_WAIT behind on the loopback.
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "tern.h"
#include "../../transport/common/xtab.h"
#include "tcp_proto.h"
#include "wire.h"

#define BULK_HELD 64

static struct {
	bool server; /* the engine connected to us */
	enum fz_wire_state state;
	int lsock; /* client role: our listening socket, for every run */
	int sock;
	bool hello_seen;
	/* what the engine sent, not yet parsed */
	uint8_t in[1 << 16];
	uint32_t in_len;
	bool hold_sends, hold_bulk;
	struct tcp_bulk reads[BULK_HELD]; /* the engine's READs of our exports, held */
	uint32_t nreads;
	struct tern_xtab xt;
	struct tern_tmem pmem_tm;
	uint32_t token;
	uint16_t port;
	char uri[96];
} W;

static uint8_t landing[FZ_MAX_MSG + 64]; /* where DATA for our READs lands */

static void bug(const char *what) __attribute__((noreturn));

static void bug(const char *what)
{
	fprintf(stderr, "wire_tcp: the provider %s\n", what);
	abort();
}

/* ---- the socket ------------------------------------------------------------------------- */

static int out(const void *buf, size_t len)
{
	const uint8_t *p = buf;

	/* The engine reads only when it runs: write what fits, let it run. */
	for (int spins = 0; len && W.sock >= 0 && spins < 1000; spins++) {
		ssize_t n = send(W.sock, p, len, MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n > 0) {
			p += n;
			len -= (size_t)n;
		} else if (n < 0 && errno != EAGAIN && errno != EINTR) {
			W.state = FZ_GONE;
			return -errno;
		} else {
			tern_ctx_poll(fz_ctx(), 64);
			uv_run(tern_ctx_loop(fz_ctx()), UV_RUN_NOWAIT);
		}
	}
	return len ? -EAGAIN : 0;
}

static void sock_close(int *fd)
{
	struct linger lg = {.l_onoff = 1, .l_linger = 0};

	if (*fd < 0)
		return;
	setsockopt(*fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	close(*fd);
	*fd = -1;
}

static int hs_out(uint16_t type, int32_t status, const void *hs, size_t len)
{
	uint8_t f[TCP_PREFIX + TCP_HS_SIZE];

	tcp_hs_encode(f, type, status, hs, len);
	return out(f, sizeof(f));
}

static int bulk_out(uint16_t type, uint32_t key, uint64_t addr, uint64_t len, uint32_t token,
		    const void *bytes)
{
	uint8_t h[TCP_PREFIX + TCP_BULK_HDR];
	int rc;

	tcp_bulk_encode(h, type, key, addr, len, token);
	if ((rc = out(h, sizeof(h))))
		return rc;
	return bytes ? out(bytes, len) : 0;
}

/* ---- what the engine sends ---------------------------------------------------------------- */

/* Answer the engine's READ of our export, as tcp.c's exporter would. */
static void serve_read(const struct tcp_bulk *b, int status)
{
	uint64_t off = 0;

	if (status || !b->len || !tern_xtab_check(&W.xt, b->key, b->addr, b->len, false)) {
		/* what tcp.c does to a peer naming memory it was not given */
		W.state = FZ_GONE;
		shutdown(W.sock, SHUT_RDWR);
		return;
	}
	while (off < b->len && W.state == FZ_UP) {
		uint64_t n = b->len - off < TCP_BULK_PIECE ? b->len - off : TCP_BULK_PIECE;

		bulk_out(TCP_BULK_DATA, 0, off, n, b->token,
			 (const uint8_t *)(uintptr_t)b->addr + off);
		off += n;
	}
}

/* One frame of the engine's: @len bytes at @p.  Return false to stop. */
static bool frame(uint32_t len, const uint8_t *p)
{
	struct tcp_bulk b;

	if (!(len & TCP_BULK_FLAG)) {
		fz_engine_msg(p, len);
		return true;
	}
	tcp_bulk_decode(p, &b);
	switch (b.type) {
	case TCP_BULK_READ:
		if (W.hold_bulk && W.nreads < BULK_HELD)
			W.reads[W.nreads++] = b;
		else
			serve_read(&b, 0);
		return true;
	case TCP_BULK_WRITE:
		/* into our export: checked, as tcp.c checks a peer's */
		if (!tern_xtab_check(&W.xt, b.key, b.addr, b.len, true)) {
			W.state = FZ_GONE;
			shutdown(W.sock, SHUT_RDWR);
			return false;
		}
		memcpy((void *)(uintptr_t)b.addr, p + TCP_BULK_HDR, b.len);
		return true;
	case TCP_BULK_DATA: /* for a READ of ours */
		if (b.addr < sizeof(landing) && b.len <= sizeof(landing) - b.addr)
			memcpy(landing + b.addr, p + TCP_BULK_HDR, b.len);
		return true;
	default:
		bug("sent a bulk frame of an unknown type");
	}
}

/* The size of the frame at the head of the buffer, header included, or 0
 * when it is not all there. */
static uint32_t frame_size(const uint8_t *p, uint32_t have)
{
	uint32_t len;
	struct tcp_bulk b;

	if (have < TCP_PREFIX)
		return 0;
	memcpy(&len, p, 4);
	len = le32toh(len);
	if (!(len & TCP_BULK_FLAG)) {
		if (len > FZ_SLOT)
			bug("framed a message longer than a slot");
		return have >= TCP_PREFIX + len ? TCP_PREFIX + len : 0;
	}
	if (len != (TCP_BULK_FLAG | TCP_BULK_HDR))
		bug("framed a bulk header of the wrong size");
	if (have < TCP_PREFIX + TCP_BULK_HDR)
		return 0;
	tcp_bulk_decode(p + TCP_PREFIX, &b);
	if (b.type == TCP_BULK_READ)
		return TCP_PREFIX + TCP_BULK_HDR;
	if (b.len > TCP_BULK_PIECE)
		bug("sent a bulk piece over 1 MiB");
	if (TCP_PREFIX + TCP_BULK_HDR + b.len > sizeof(W.in))
		bug("sent a piece larger than the harness reads");
	return have >= TCP_PREFIX + TCP_BULK_HDR + b.len
		       ? TCP_PREFIX + TCP_BULK_HDR + (uint32_t)b.len
		       : 0;
}

static void take_in(void)
{
	uint32_t at = 0;

	if (W.sock < 0 || W.hold_sends)
		return;
	for (;;) {
		ssize_t n = recv(W.sock, W.in + W.in_len, sizeof(W.in) - W.in_len, MSG_DONTWAIT);

		if (n > 0) {
			W.in_len += (uint32_t)n;
			if (W.in_len < sizeof(W.in))
				continue;
		} else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
			if (W.state == FZ_UP)
				W.state = FZ_GONE;
		}
		break;
	}
	while (W.state == FZ_UP) {
		uint32_t sz = frame_size(W.in + at, W.in_len - at);
		uint32_t len;

		if (!sz)
			break;
		memcpy(&len, W.in + at, 4);
		at += sz;
		if (!frame(le32toh(len), W.in + at - sz + TCP_PREFIX))
			break;
	}
	memmove(W.in, W.in + at, W.in_len - at);
	W.in_len -= at;
}

/* ---- the handshake ------------------------------------------------------------------------ */

static const char *tcp_listen_uri(void)
{
	W.sock = W.lsock = -1;
	return "tcp://127.0.0.1:0";
}

static void reset(void)
{
	W.state = FZ_WAITING;
	W.sock = -1;
	W.hello_seen = false;
	W.in_len = 0;
	W.nreads = 0;
	W.hold_sends = W.hold_bulk = false;
	W.pmem_tm.addr = fz_pmem;
	W.pmem_tm.len = sizeof(fz_pmem);
	tern_xtab_free(&W.xt);
}

/*
 * A blocking connect() that a signal interrupted (libFuzzer's -timeout
 * alarm ticks every second) goes on in the background: it must not be
 * called again, but waited for, and its outcome read from SO_ERROR.  This
 * is what failed the campaign twice with "cannot reach the listener ...:
 * Interrupted system call".  0, or -1 with errno set.
 */
static int connect_wait(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLOUT};
	socklen_t sl = sizeof(int);
	int err = errno;

	if (err != EINTR)
		return -1;
	while (poll(&p, 1, -1) < 0)
		if (errno != EINTR)
			return -1;
	if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &sl))
		return -1;
	errno = err;
	return err ? -1 : 0;
}

static int tcp_connect(const char *uri, const void *hs, size_t len)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	const char *colon = strrchr(uri, ':');
	int one = 1;

	reset();
	W.server = false;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	sa.sin_port = htons((uint16_t)atoi(colon ? colon + 1 : "0"));
	W.sock = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (W.sock < 0)
		return -errno;
	if (connect(W.sock, (struct sockaddr *)&sa, sizeof(sa)) && connect_wait(W.sock))
		return -errno;
	setsockopt(W.sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	return hs_out(TCP_HS_HELLO, 0, hs, len < TERN_HANDSHAKE_MAX ? len : TERN_HANDSHAKE_MAX);
}

/* A handshake frame from the engine, if a whole one is there. */
static bool hs_in(struct tcp_hs *f)
{
	uint32_t len;

	if (W.in_len < TCP_PREFIX + TCP_HS_SIZE) {
		ssize_t n = recv(W.sock, W.in + W.in_len, TCP_PREFIX + TCP_HS_SIZE - W.in_len,
				 MSG_DONTWAIT);

		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) {
			W.state = W.state == FZ_WAITING ? FZ_GONE : W.state;
			return false;
		}
		if (n > 0)
			W.in_len += (uint32_t)n;
	}
	if (W.in_len < TCP_PREFIX + TCP_HS_SIZE)
		return false;
	memcpy(&len, W.in, 4);
	if (le32toh(len) != TCP_HS_SIZE || tcp_hs_decode(W.in + TCP_PREFIX, f))
		bug("sent a malformed handshake frame");
	W.in_len = 0;
	return true;
}

static void client_answer(void)
{
	struct tcp_hs f;

	if (!hs_in(&f))
		return;
	if (f.type != TCP_HS_ACCEPT) {
		W.state = FZ_REFUSED;
		return;
	}
	hs_out(TCP_HS_READY, 0, NULL, 0);
	W.state = FZ_UP;
}

static const char *tcp_listen(void)
{
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t sl = sizeof(sa);

	reset();
	W.server = true;
	if (W.lsock < 0) {
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		W.lsock = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		if (W.lsock < 0 || bind(W.lsock, (struct sockaddr *)&sa, sizeof(sa)) ||
		    listen(W.lsock, 16) || getsockname(W.lsock, (struct sockaddr *)&sa, &sl))
			return NULL;
		W.port = ntohs(sa.sin_port);
	}
	snprintf(W.uri, sizeof(W.uri), "tcp://127.0.0.1:%u", W.port);
	return W.uri;
}

static void server_hello(void)
{
	struct tcp_hs f;
	int one = 1;

	if (W.sock < 0) {
		W.sock = accept4(W.lsock, NULL, NULL, SOCK_CLOEXEC);
		if (W.sock < 0)
			return;
		setsockopt(W.sock, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	}
	if (W.hello_seen) {
		if (hs_in(&f))
			W.state = f.type == TCP_HS_READY ? FZ_UP : FZ_GONE;
		return;
	}
	if (!hs_in(&f))
		return;
	if (f.type != TCP_HS_HELLO)
		bug("connected without a HELLO");
	W.hello_seen = true;
	fz_engine_hello(f.hs, f.hs_len);
}

static void tcp_answer(bool accept, int32_t status, const void *hs, size_t len)
{
	if (len > TERN_HANDSHAKE_MAX)
		len = TERN_HANDSHAKE_MAX;
	hs_out(accept ? TCP_HS_ACCEPT : TCP_HS_REFUSE, status, hs, len);
	if (!accept)
		W.state = FZ_REFUSED;
}

static enum fz_wire_state tcp_state(void)
{
	return W.state;
}

/* ---- the rest of the wire ------------------------------------------------------------------- */

static int tcp_send(const void *buf, uint32_t len)
{
	uint32_t pre = htole32(len);

	if (W.state != FZ_UP)
		return -ENOTCONN;
	if (out(&pre, 4) || out(buf, len))
		return -EIO;
	return 0;
}

static void tcp_pump(void)
{
	tern_ctx *ctx = fz_ctx();

	tern_ctx_poll(ctx, 64);
	uv_run(tern_ctx_loop(ctx), UV_RUN_NOWAIT);
	if (W.state == FZ_WAITING) {
		if (W.server)
			server_hello();
		else if (W.sock >= 0)
			client_answer();
		return;
	}
	if (W.state == FZ_UP)
		take_in();
}

static void tcp_hold(bool sends, bool bulk)
{
	W.hold_sends = sends;
	W.hold_bulk = bulk;
	while (!bulk && W.nreads && W.state == FZ_UP)
		serve_read(&W.reads[--W.nreads], 0);
}

static uint32_t tcp_complete_sends(uint32_t n)
{
	bool held = W.hold_sends;

	/* read once what the socket has */
	W.hold_sends = false;
	if (W.state == FZ_UP)
		take_in();
	W.hold_sends = held;
	return n;
}

static uint32_t tcp_bulk_pending(void)
{
	return W.state == FZ_UP ? W.nreads : 0;
}

static int tcp_complete_bulk(uint32_t i, int status)
{
	struct tcp_bulk b;

	if (i >= W.nreads)
		return -EINVAL;
	b = W.reads[i];
	memmove(&W.reads[i], &W.reads[i + 1], (W.nreads - i - 1) * sizeof(b));
	W.nreads--;
	serve_read(&b, status);
	return 0;
}

static int tcp_expose(size_t off, size_t len, int writable, struct tern_bulk_desc *out_desc)
{
	return tern_xtab_add(&W.xt, &W.pmem_tm, off, len, writable, out_desc);
}

static int tcp_read(const struct tern_bulk_desc *d, void *buf)
{
	(void)buf;
	if (W.state != FZ_UP)
		return -ENOTCONN;
	if (d->len > sizeof(landing))
		return -EINVAL;
	return bulk_out(TCP_BULK_READ, d->key, d->addr, d->len, ++W.token, NULL);
}

static int tcp_write(const struct tern_bulk_desc *d, const void *buf)
{
	uint64_t off = 0;

	if (W.state != FZ_UP)
		return -ENOTCONN;
	while (off < d->len) {
		uint64_t n = d->len - off < TCP_BULK_PIECE ? d->len - off : TCP_BULK_PIECE;
		int rc = bulk_out(TCP_BULK_WRITE, d->key, d->addr + off, n, 0,
				  (const uint8_t *)buf + off);

		if (rc)
			return rc;
		off += n;
	}
	return 0;
}

static void tcp_hostile(void)
{
	uint8_t op = fz_u8(), buf[FZ_SLOT + 64];
	uint32_t n;

	if (W.state != FZ_UP)
		return;
	switch (op % 6) {
	case 0: /* any frame length, then its bytes */
	{
		uint32_t len = op & 0x80 ? fz_u32() : fz_u16() % (FZ_SLOT + 16);

		len = htole32(len);
		out(&len, 4);
		n = fz_u8() % sizeof(buf);
		fz_take(buf, n);
		out(buf, n);
		break;
	}
	case 1: /* a bulk header of any field, maybe bytes after it */
	{
		uint8_t h[TCP_PREFIX + TCP_BULK_HDR];

		tcp_bulk_encode(h, fz_u8() % 5, fz_u32(), fz_u64(), fz_u64(), fz_u32());
		if (op & 0x80)
			fz_take(h + TCP_PREFIX, TCP_BULK_HDR);
		out(h, sizeof(h));
		n = fz_u8() % sizeof(buf);
		fz_take(buf, n);
		out(buf, n);
		break;
	}
	case 2: /* half a frame, then the engine runs */
	{
		uint32_t len = htole32(fz_u8() % FZ_SLOT + 1);

		out(&len, op & 0x80 ? 2 : 4);
		break;
	}
	case 3: /* raw stream bytes */
		n = fz_u8() % sizeof(buf);
		fz_take(buf, n);
		out(buf, n);
		break;
	case 4: /* DATA for a read nobody asked for, or the wrong part of one */
		n = fz_u8() % 64;
		fz_take(buf, n);
		bulk_out(TCP_BULK_DATA, 0, fz_u32(), n, fz_u32(), buf);
		break;
	default: /* half-close: the engine reads our end of the stream */
		shutdown(W.sock, SHUT_WR);
		break;
	}
}

static void tcp_close(void)
{
	sock_close(&W.sock);
	reset();
	W.state = FZ_GONE;
}

const struct fz_wire fz_wire_tcp = {
	.name = "tcp",
	.listen_uri = tcp_listen_uri,
	.connect = tcp_connect,
	.listen = tcp_listen,
	.answer = tcp_answer,
	.state = tcp_state,
	.send = tcp_send,
	.pump = tcp_pump,
	.hold = tcp_hold,
	.complete_sends = tcp_complete_sends,
	.bulk_pending = tcp_bulk_pending,
	.complete_bulk = tcp_complete_bulk,
	.expose = tcp_expose,
	.read = tcp_read,
	.write = tcp_write,
	.hostile = tcp_hostile,
	.close = tcp_close,
};
