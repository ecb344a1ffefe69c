// SPDX-License-Identifier: MIT
/*
 * metrics_http.c - GET /metrics on the context's own loop
 * (tern_ctx_metrics_listen()): the Prometheus text of
 * tern_ctx_metrics_write(), fresh for every scrape.
 *
 * The responder is the engine's src/http.c, the one tern-rnr --listen runs
 * too; this file gives it the page and the limits.  Its handles are
 * unreferenced: the endpoint alone does not keep tern_ctx_run
 * (TERN_RUN_DEFAULT) from returning.  tern_ctx_destroy() closes it (rpc.c's
 * rpc_ctx_fini(), through tern__metrics_http_close()).
 */
#include <errno.h>
#include <stdlib.h>

#include "http.h"
#include "rpc.h"

/* The limits tern_ctx_metrics_listen()'s kernel-doc promises. */
#define REQ_MAX	       4096
#define MAX_CLIENTS    16
#define CLIENT_IDLE_MS 5000
#define LINGER_MS      1000

/* The page: the whole text, its length asked first. */
static int metrics_page(void *arg, char **body, size_t *len)
{
	tern_ctx *ctx = arg;
	ssize_t n = tern_ctx_metrics_write(ctx, NULL, 0);

	if (n < 0)
		return (int)n;
	if (!(*body = malloc((size_t)n + 1)))
		return -ENOMEM;
	/* one thread: nothing changes the figures between the two calls */
	n = tern_ctx_metrics_write(ctx, *body, (size_t)n + 1);
	*len = n < 0 ? 0 : (size_t)n;
	return n < 0 ? (int)n : 0;
}

static void endpoint_closed(void *arg)
{
	tern__rpc_ctx(arg)->http = NULL;
}

int tern_ctx_metrics_listen(tern_ctx *ctx, const char *addr)
{
	const struct tern__http_opts o = {
		.req_max = REQ_MAX,
		.max_clients = MAX_CLIENTS,
		.idle_ms = CLIENT_IDLE_MS,
		.linger_ms = LINGER_MS,
		.unref = true,
		.page = metrics_page,
		.closed = endpoint_closed,
		.arg = ctx,
	};
	struct sockaddr_storage ss;
	struct tern_rpc_ctx *rctx;
	int rc;

	if (!ctx || tern__http_parse_addr(addr, &ss))
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	if (rctx->http)
		return -EALREADY;
	rc = tern__http_start(ctx->loop, (const struct sockaddr *)&ss, &o, &rctx->http);
	if (rc)
		tern__set_error(ctx, "metrics: cannot listen on %s: %s", addr, uv_strerror(rc));
	return rc;
}

int tern_ctx_metrics_port(tern_ctx *ctx)
{
	struct tern__http *h = ctx ? tern__rpc_ctx(ctx)->http : NULL;

	return h ? tern__http_port(h) : -ENOTCONN;
}

void tern__metrics_http_close(tern_ctx *ctx)
{
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);

	if (!rctx->http)
		return;
	tern__http_stop(rctx->http, true);
	/* the loop is still open: let it finish the closes (endpoint_closed) */
	while (rctx->http)
		uv_run(ctx->loop, UV_RUN_NOWAIT);
}
