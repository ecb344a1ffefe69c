// SPDX-License-Identifier: MIT
/*
 * echo_client - call the Echo service of echo.tern.
 *
 *   echo_client rdma://10.0.0.1:7000
 *
 * Echoes messages of several sizes, up to the largest a slot holds, through
 * Echo.copy (request copied into a send slot by echo_copy_sync) and through
 * Echo.zerocopy (request built in the send slot: acquire, fill, commit), and
 * checks every byte that comes back.  Exits 0 when all do.
 */
#include <stdio.h>
#include <string.h>
#include <tern.h>

#include "echo.tern.h"

static unsigned char pattern(size_t i, size_t n)
{
	return (unsigned char)(i * 31 + n);
}

static int check(const void *reply, size_t len, size_t n)
{
	const unsigned char *p = reply;

	if (len != n)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (p[i] != pattern(i, n))
			return 0;
	return 1;
}

struct done {
	int finished;
	int ok;
	size_t n;
};

static void on_echo(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct done *d = user;

	(void)s;
	d->finished = 1;
	d->ok = status == 0 && check(reply, len, d->n);
}

static int echo_copy_once(tern_session *s, size_t n)
{
	static unsigned char req[1 << 20], rep_buf[1 << 20];
	struct tern_sync_reply rep = {.buf = rep_buf, .cap = sizeof(rep_buf)};

	for (size_t i = 0; i < n; i++)
		req[i] = pattern(i, n);
	return echo_copy_sync(s, req, n, &rep, 5000) == 0 && check(rep_buf, rep.len, n);
}

static int echo_zerocopy_once(tern_ctx *ctx, tern_session *s, size_t n)
{
	struct done d = {.n = n};
	tern_callslot *slot;
	unsigned char *buf;
	size_t cap;

	/* The request is written where it will be sent from: no copy. */
	if (echo_zerocopy_acquire(s, (void **)&buf, &cap, &slot) || n > cap)
		return 0;
	for (size_t i = 0; i < n; i++)
		buf[i] = pattern(i, n);
	if (echo_zerocopy_commit(slot, n, on_echo, &d, NULL))
		return 0;
	while (!d.finished)
		tern_ctx_run(ctx, TERN_RUN_ONCE);
	return d.ok;
}

int main(int argc, char **argv)
{
	struct tern_session_opts o = {.size = sizeof(o)};
	tern_session *s;
	tern_ctx *ctx;
	size_t sizes[4] = {0, 1, 1000, 0};
	int rc, failed = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: echo_client rdma://ADDRESS:PORT\n");
		return 2;
	}
	if ((rc = tern_ctx_create(NULL, &ctx))) {
		fprintf(stderr, "echo_client: %s\n", tern_strerror(rc));
		return 1;
	}
	echo_client_opts(&o);
	if ((rc = tern_connect_sync(ctx, argv[1], &o, 0, &s))) {
		fprintf(stderr, "echo_client: connect %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(ctx) ? ": " : "", tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}
	sizes[3] = tern_session_max_payload(s);
	for (int i = 0; i < 4; i++) {
		int a = echo_copy_once(s, sizes[i]);
		int b = echo_zerocopy_once(ctx, s, sizes[i]);

		printf("%zu bytes: copy %s, zerocopy %s\n", sizes[i], a ? "ok" : "WRONG",
		       b ? "ok" : "WRONG");
		failed += !a + !b;
	}
	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	printf("echo_client: %s\n", failed ? "WRONG ECHOES" : "every byte came back");
	return failed ? 1 : 0;
}
