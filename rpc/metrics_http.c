// SPDX-License-Identifier: MIT
/*
 * metrics_http.c - GET /metrics on the context's own loop
 * (tern_ctx_metrics_listen()): the Prometheus text of
 * tern_ctx_metrics_write(), fresh for every scrape.
 *
 * The responder is the one tern-rnr --listen runs (tools/tern-rnr.c), cut
 * to what a scrape needs: one request per connection, answered and closed.
 * Whoever can reach the port is untrusted: a request is read into a fixed
 * buffer (larger ones get 431), a client has CLIENT_IDLE_MS to send it, at
 * most MAX_CLIENTS are open at once (more are accepted only to be closed),
 * and nothing of the request is used but its method and path.
 *
 * The handles are unreferenced: the endpoint alone does not keep
 * tern_ctx_run(TERN_RUN_DEFAULT) from returning.  tern_ctx_destroy() closes
 * them (rpc.c's rpc_ctx_fini(), through tern__metrics_http_close()).
 */
#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

#define REQ_MAX	       4096 /* bytes of request line and headers accepted */
#define MAX_CLIENTS    16
#define CLIENT_IDLE_MS 5000 /* to send a whole request */
#define LINGER_MS      1000 /* to close after the response */

struct http_client {
	uv_tcp_t tcp;
	uv_timer_t idle;
	uv_write_t wr;
	uv_shutdown_t sd;
	struct tern_metrics_http *srv;
	struct http_client *next;
	char req[REQ_MAX];
	size_t len;
	char head[192];
	char *body;
	size_t body_len;
	int open_handles;
	bool closing;
	bool answered; /* a response is on its way: no more requests */
	bool draining; /* response sent; dropping what the client still sends */
};

struct tern_metrics_http {
	tern_ctx *ctx;
	uv_tcp_t tcp;
	struct http_client *clients;
	int nclients;
	int open_handles; /* the listener's and every client's */
	int port;
	bool closing;
};

static void client_closed(uv_handle_t *h)
{
	struct http_client *c = h->data;
	struct tern_metrics_http *srv = c->srv;

	srv->open_handles--;
	if (--c->open_handles)
		return;
	for (struct http_client **pp = &srv->clients; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	srv->nclients--;
	free(c->body);
	free(c);
}

static void client_close(struct http_client *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->tcp, client_closed);
	uv_close((uv_handle_t *)&c->idle, client_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_idle(uv_timer_t *t)
{
	client_close(t->data); /* a client that never finishes its request, or lingers */
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	(void)req; /* the drain or the linger timer closes the client */
	(void)status;
}

/*
 * Close gracefully: send our FIN, then read and drop what the client still
 * sends until it closes too, or LINGER_MS passes.  Closing with unread bytes
 * in the socket would make the kernel send an RST, which can destroy the
 * response before the client reads it.
 */
static void on_written(uv_write_t *wr, int status)
{
	struct http_client *c = wr->data;

	if (status < 0 || c->srv->closing) {
		client_close(c);
		return;
	}
	c->draining = true;
	uv_timer_start(&c->idle, on_idle, LINGER_MS, 0);
	if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) ||
	    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
		client_close(c);
}

static void respond(struct http_client *c, int code, const char *reason, const char *text,
		    const char *extra, bool head_only)
{
	uv_buf_t bufs[2];
	int n;

	if (text) {
		free(c->body);
		c->body = strdup(text);
		c->body_len = c->body ? strlen(text) : 0;
	}
	n = snprintf(c->head, sizeof(c->head),
		     "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n"
		     "Connection: close\r\n%s\r\n",
		     code, reason,
		     code == 200 ? "text/plain; version=0.0.4; charset=utf-8"
				 : "text/plain; charset=utf-8",
		     c->body_len, extra);
	c->answered = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	bufs[0] = uv_buf_init(c->head, (unsigned)n);
	bufs[1] = uv_buf_init(c->body, (unsigned)c->body_len);
	c->wr.data = c;
	if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, head_only || !c->body_len ? 1 : 2,
		     on_written))
		client_close(c);
}

/* The page: the whole text, its length asked first. */
static int metrics_body(struct http_client *c)
{
	ssize_t n = tern_ctx_metrics_write(c->srv->ctx, NULL, 0);

	if (n < 0)
		return (int)n;
	if (!(c->body = malloc((size_t)n + 1)))
		return -ENOMEM;
	/* one thread: nothing changes the figures between the two calls */
	c->body_len = (size_t)tern_ctx_metrics_write(c->srv->ctx, c->body, (size_t)n + 1);
	return 0;
}

static void handle_request(struct http_client *c)
{
	char *line_end = strpbrk(c->req, "\r\n"), *sp1, *sp2, *q;
	bool head;

	*line_end = '\0';
	sp1 = strchr(c->req, ' ');
	sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
	if (!sp1 || !sp2 || strncmp(sp2 + 1, "HTTP/1.", 7) != 0) {
		respond(c, 400, "Bad Request", "bad request\n", "", false);
		return;
	}
	*sp1 = *sp2 = '\0';
	head = strcmp(c->req, "HEAD") == 0;
	if (!head && strcmp(c->req, "GET") != 0) {
		respond(c, 405, "Method Not Allowed", "only GET and HEAD\n", "Allow: GET, HEAD\r\n",
			false);
		return;
	}
	if ((q = strchr(sp1 + 1, '?')))
		*q = '\0';
	if (strcmp(sp1 + 1, "/metrics") != 0) {
		respond(c, 404, "Not Found", "not found; the metrics are at /metrics\n", "", head);
		return;
	}
	if (metrics_body(c)) {
		respond(c, 500, "Internal Server Error", "no memory for the metrics\n", "", head);
		return;
	}
	respond(c, 200, "OK", NULL, "", head);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
	struct http_client *c = h->data;

	(void)suggested;
	if (c->draining) {
		*buf = uv_buf_init(c->req, REQ_MAX); /* dropped on arrival */
		return;
	}
	/* one byte kept for the terminating NUL the parser relies on */
	*buf = uv_buf_init(c->req + c->len, (unsigned)(REQ_MAX - 1 - c->len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct http_client *c = stream->data;

	(void)buf;
	if (nread < 0) {
		client_close(c); /* EOF or an error, before a whole request or draining */
		return;
	}
	if (c->answered || nread == 0)
		return; /* draining, or nothing this time */
	c->len += (size_t)nread;
	c->req[c->len] = '\0';
	if (memchr(c->req, '\0', c->len))
		respond(c, 400, "Bad Request", "bad request\n", "", false);
	else if (strstr(c->req, "\r\n\r\n") || strstr(c->req, "\n\n"))
		handle_request(c);
	else if (c->len == REQ_MAX - 1)
		respond(c, 431, "Request Header Fields Too Large", "request too large\n", "",
			false);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct tern_metrics_http *srv = server->data;
	struct http_client *c;

	if (status < 0 || !(c = calloc(1, sizeof(*c))))
		return;
	c->srv = srv;
	c->tcp.data = c->idle.data = c;
	uv_tcp_init(srv->ctx->loop, &c->tcp);
	uv_timer_init(srv->ctx->loop, &c->idle);
	uv_unref((uv_handle_t *)&c->tcp);
	uv_unref((uv_handle_t *)&c->idle);
	c->open_handles = 2;
	srv->open_handles += 2;
	c->next = srv->clients;
	srv->clients = c;
	srv->nclients++;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) || srv->nclients > MAX_CLIENTS) {
		client_close(c); /* over the limit: accepted only to be shut */
		return;
	}
	uv_timer_start(&c->idle, on_idle, CLIENT_IDLE_MS, 0);
	if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
		client_close(c);
}

/* HOST:PORT, or [V6HOST]:PORT. */
static int parse_addr(const char *arg, struct sockaddr_storage *ss)
{
	char host[128];
	const char *colon = strrchr(arg, ':');
	unsigned long port;
	char *end;
	size_t hl;

	if (!colon || colon == arg || colon[1] < '0' || colon[1] > '9')
		return -EINVAL;
	errno = 0;
	port = strtoul(colon + 1, &end, 10);
	if (errno || *end || port > 65535)
		return -EINVAL;
	hl = (size_t)(colon - arg);
	if (arg[0] == '[') {
		if (hl < 3 || arg[hl - 1] != ']')
			return -EINVAL;
		arg++;
		hl -= 2;
	}
	if (hl >= sizeof(host))
		return -EINVAL;
	memcpy(host, arg, hl);
	host[hl] = '\0';
	if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ||
	    uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	return -EINVAL;
}

static void listener_closed(uv_handle_t *h)
{
	((struct tern_metrics_http *)h->data)->open_handles--;
}

int tern_ctx_metrics_listen(tern_ctx *ctx, const char *addr)
{
	struct tern_rpc_ctx *rctx;
	struct tern_metrics_http *srv;
	struct sockaddr_storage ss = {0};
	int len = sizeof(ss), rc;

	if (!ctx || !addr || parse_addr(addr, &ss))
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	if (rctx->http)
		return -EALREADY;
	if (!(srv = calloc(1, sizeof(*srv))))
		return -ENOMEM;
	srv->ctx = ctx;
	srv->tcp.data = srv;
	if ((rc = uv_tcp_init(ctx->loop, &srv->tcp))) {
		free(srv);
		return rc;
	}
	srv->open_handles = 1;
	uv_unref((uv_handle_t *)&srv->tcp);
	rctx->http = srv;
	if ((rc = uv_tcp_bind(&srv->tcp, (const struct sockaddr *)&ss, 0)) ||
	    (rc = uv_listen((uv_stream_t *)&srv->tcp, 64, on_connection)) ||
	    (rc = uv_tcp_getsockname(&srv->tcp, (struct sockaddr *)&ss, &len))) {
		tern__set_error(ctx, "metrics: cannot listen on %s: %s", addr, uv_strerror(rc));
		tern__metrics_http_close(ctx);
		return rc;
	}
	srv->port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
						   : ((struct sockaddr_in *)&ss)->sin_port);
	return 0;
}

int tern_ctx_metrics_port(tern_ctx *ctx)
{
	struct tern_metrics_http *srv = ctx ? tern__rpc_ctx(ctx)->http : NULL;

	return srv ? srv->port : -ENOTCONN;
}

void tern__metrics_http_close(tern_ctx *ctx)
{
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);
	struct tern_metrics_http *srv = rctx->http;

	if (!srv)
		return;
	srv->closing = true;
	uv_close((uv_handle_t *)&srv->tcp, listener_closed);
	for (struct http_client *c = srv->clients; c; c = c->next)
		client_close(c);
	/* the loop is still open: let it finish the closes (and their frees) */
	while (srv->open_handles > 0)
		uv_run(ctx->loop, UV_RUN_NOWAIT);
	rctx->http = NULL;
	free(srv);
}
