// SPDX-License-Identifier: MIT
/*
 * echo_server - serve the Echo service of echo.tern.
 *
 *   echo_server rdma://10.0.0.1:0
 *
 * Prints the URI it listens on (port 0 picks one) and serves until SIGINT
 * or SIGTERM.
 */
/* libuv's header needs POSIX types (pthread_rwlock_t), which a strict
 * -std=c11 build only has when asked for; tern.h alone needs nothing. */
#define _POSIX_C_SOURCE 200809L

#include <stdio.h>
#include <string.h>
#include <tern.h>
#include <uv.h>

#include "echo.tern.h"

/* raw: say where the reply is; tern copies it into the send slot. */
static int on_copy(tern_req *req, const void *in, size_t in_len, struct tern_iov *out, void *user)
{
	(void)req, (void)user;
	out->base = in; /* the request itself: valid until this returns */
	out->len = in_len;
	return 0;
}

/* inplace: write the reply into the send slot, and say how long it is. */
static ssize_t on_zerocopy(tern_req *req, const void *in, size_t in_len, void *out, size_t out_cap,
			   void *user)
{
	(void)req, (void)user;
	if (in_len > out_cap)
		return -EMSGSIZE;
	memcpy(out, in, in_len);
	return (ssize_t)in_len;
}

static struct echo_handlers handlers = {
	.copy = on_copy,
	.zerocopy = on_zerocopy,
};

static void on_signal(uv_signal_t *h, int signum)
{
	(void)signum;
	tern_ctx_stop(h->data);
}

int main(int argc, char **argv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_ADAPTIVE};
	uv_signal_t sigint, sigterm;
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	if (argc != 2) {
		fprintf(stderr, "usage: echo_server rdma://ADDRESS:PORT\n");
		return 2;
	}
	if ((rc = tern_ctx_create(&co, &ctx))) {
		fprintf(stderr, "echo_server: %s\n", tern_strerror(rc));
		return 1;
	}
	rc = echo_register(ctx, &handlers, NULL);
	if (rc == 0)
		rc = tern_listen(ctx, argv[1], NULL, NULL, &l);
	if (rc) {
		fprintf(stderr, "echo_server: %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(ctx) ? ": " : "", tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}
	printf("%s\n", tern_listener_uri(l));
	fflush(stdout);
	/* The context owns its loop; these handles are closed before it goes. */
	uv_signal_init(tern_ctx_loop(ctx), &sigint);
	uv_signal_init(tern_ctx_loop(ctx), &sigterm);
	sigint.data = sigterm.data = ctx;
	uv_signal_start(&sigint, on_signal, SIGINT);
	uv_signal_start(&sigterm, on_signal, SIGTERM);
	tern_ctx_run(ctx, TERN_RUN_DEFAULT);
	uv_close((uv_handle_t *)&sigint, NULL);
	uv_close((uv_handle_t *)&sigterm, NULL);
	tern_ctx_destroy(ctx);
	return 0;
}
