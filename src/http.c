// SPDX-License-Identifier: MIT
/*
 * http.c - the HTTP responder of tern_ctx_metrics_listen() and tern-rnr
 * --listen (http.h says what it accepts and why).
 *
 * It depends on libuv and libc only, so tern-rnr, which otherwise uses the
 * public API alone, can link this one file.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "http.h"

struct http_client {
	uv_tcp_t tcp;
	uv_timer_t idle;
	uv_write_t wr;
	uv_shutdown_t sd;
	struct tern__http *srv;
	struct http_client *next;
	char head[256];
	char *body;
	size_t body_len;
	size_t len;	  /* bytes of req[] read */
	int open_handles; /* of tcp and idle */
	bool closing;
	bool answered; /* an answer is on its way: no more requests */
	bool draining; /* answer sent; dropping what the client still sends */
	bool scrape;   /* the answer is a GET's 200 */
	char req[];    /* opts.req_max bytes */
};

struct tern__http {
	struct tern__http_opts o;
	uv_loop_t *loop;
	uv_tcp_t tcp;
	struct http_client *clients;
	int nclients;
	int open_handles; /* the listener's and every client's */
	int port;
	bool stopping;
};

/* The last handle closed after tern__http_stop(): tell the owner, free. */
static void maybe_finish(struct tern__http *h)
{
	if (h->open_handles || !h->stopping)
		return;
	if (h->o.closed)
		h->o.closed(h->o.arg);
	free(h);
}

static void client_closed(uv_handle_t *handle)
{
	struct http_client *c = handle->data;
	struct tern__http *h = c->srv;

	h->open_handles--;
	if (--c->open_handles == 0) {
		for (struct http_client **pp = &h->clients; *pp; pp = &(*pp)->next) {
			if (*pp == c) {
				*pp = c->next;
				break;
			}
		}
		h->nclients--;
		free(c->body);
		free(c);
	}
	maybe_finish(h);
}

static void client_close(struct http_client *c)
{
	if (c->closing)
		return;
	c->closing = true;
	uv_close((uv_handle_t *)&c->tcp, client_closed);
	uv_close((uv_handle_t *)&c->idle, client_closed);
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf);
static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf);

static void on_idle(uv_timer_t *t)
{
	client_close(t->data); /* a request too slow to arrive, or a linger over */
}

static void on_shutdown(uv_shutdown_t *req, int status)
{
	(void)req; /* the drain or the linger timer closes the client */
	(void)status;
}

/*
 * Close gracefully: send our FIN, then read and drop what the client still
 * sends until it closes too, or linger_ms passes.  Closing with unread
 * bytes in the socket would make the kernel send an RST, which can destroy
 * the answer before the client reads it (an oversized request, a pipelined
 * one).
 */
static void on_written(uv_write_t *wr, int status)
{
	struct http_client *c = wr->data;
	struct tern__http *h = c->srv;

	if (status == 0 && c->scrape && !h->stopping && h->o.sent)
		h->o.sent(h->o.arg); /* may stop the responder */
	if (status < 0 || h->stopping) {
		client_close(c);
		return;
	}
	c->draining = true;
	uv_timer_start(&c->idle, on_idle, h->o.linger_ms, 0);
	if (uv_shutdown(&c->sd, (uv_stream_t *)&c->tcp, on_shutdown) ||
	    uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
		client_close(c);
}

/* Answer with the body the client holds (or @text, copied) and close. */
static void respond(struct http_client *c, int code, const char *reason, const char *text,
		    const char *extra_headers, bool head_only)
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
		     c->body_len, extra_headers);
	c->answered = true;
	uv_read_stop((uv_stream_t *)&c->tcp);
	if (n < 0 || (size_t)n >= sizeof(c->head)) {
		client_close(c); /* cannot happen with the fixed texts here */
		return;
	}
	bufs[0] = uv_buf_init(c->head, (unsigned)n);
	bufs[1] = uv_buf_init(c->body, (unsigned)c->body_len);
	c->wr.data = c;
	if (uv_write(&c->wr, (uv_stream_t *)&c->tcp, bufs, head_only || !c->body_len ? 1 : 2,
		     on_written))
		client_close(c);
}

/* A whole request head is in c->req, NUL-terminated, with no NUL inside. */
static void handle_request(struct http_client *c)
{
	struct tern__http *h = c->srv;
	char *line_end = strpbrk(c->req, "\r\n"), *sp1, *sp2, *q;
	bool head;
	int rc;

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
	rc = h->o.page(h->o.arg, &c->body, &c->body_len);
	if (rc < 0) {
		free(c->body);
		c->body = NULL;
		c->body_len = 0;
		respond(c, 500, "Internal Server Error", "cannot make the page\n", "", head);
		return;
	}
	c->scrape = !head; /* what a scraper counts: GETs */
	respond(c, 200, "OK", NULL, "", head);
	if (rc == TERN__HTTP_LAST)
		tern__http_stop(h, false); /* this answer is under way: it finishes */
}

static void on_alloc(uv_handle_t *handle, size_t suggested, uv_buf_t *buf)
{
	struct http_client *c = handle->data;
	size_t max = c->srv->o.req_max;

	(void)suggested;
	if (c->draining) {
		*buf = uv_buf_init(c->req, (unsigned)max); /* dropped on arrival */
		return;
	}
	/* one byte kept for the terminating NUL the parser relies on */
	*buf = uv_buf_init(c->req + c->len, (unsigned)(max - 1 - c->len));
}

static void on_read(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
	struct http_client *c = stream->data;
	size_t from;

	(void)buf;
	if (nread < 0) {
		client_close(c); /* EOF or an error, before a whole request or draining */
		return;
	}
	if (c->answered || nread == 0)
		return; /* draining, or nothing this time */
	/* look again only where the end could be: 3 bytes back cover a split CRLFCRLF */
	from = c->len > 3 ? c->len - 3 : 0;
	c->len += (size_t)nread;
	c->req[c->len] = '\0';
	if (memchr(c->req + from, '\0', c->len - from))
		respond(c, 400, "Bad Request", "bad request\n", "", false);
	else if (strstr(c->req + from, "\r\n\r\n") || strstr(c->req + from, "\n\n"))
		handle_request(c);
	else if (c->len == c->srv->o.req_max - 1)
		respond(c, 431, "Request Header Fields Too Large", "request too large\n", "",
			false);
}

static void on_connection(uv_stream_t *server, int status)
{
	struct tern__http *h = server->data;
	struct http_client *c;

	if (status < 0 || h->stopping || !(c = calloc(1, sizeof(*c) + h->o.req_max)))
		return; /* libuv stops accepting while we leave one pending: no spin */
	c->srv = h;
	c->tcp.data = c->idle.data = c;
	uv_tcp_init(h->loop, &c->tcp);
	uv_timer_init(h->loop, &c->idle);
	if (h->o.unref) {
		uv_unref((uv_handle_t *)&c->tcp);
		uv_unref((uv_handle_t *)&c->idle);
	}
	c->open_handles = 2;
	h->open_handles += 2;
	c->next = h->clients;
	h->clients = c;
	h->nclients++;
	if (uv_accept(server, (uv_stream_t *)&c->tcp) || h->nclients > h->o.max_clients) {
		client_close(c); /* over the limit: accepted only to be shut */
		return;
	}
	uv_timer_start(&c->idle, on_idle, h->o.idle_ms, 0);
	if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read))
		client_close(c);
}

int tern__http_parse_addr(const char *arg, struct sockaddr_storage *ss)
{
	char host[128];
	const char *colon = arg ? strrchr(arg, ':') : NULL;
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
	memset(ss, 0, sizeof(*ss));
	if (uv_ip4_addr(host, (int)port, (struct sockaddr_in *)ss) == 0 ||
	    uv_ip6_addr(host, (int)port, (struct sockaddr_in6 *)ss) == 0)
		return 0;
	return -EINVAL;
}

static void listener_closed(uv_handle_t *handle)
{
	struct tern__http *h = handle->data;

	h->open_handles--;
	maybe_finish(h);
}

/*
 * The socket is bound and listening before any handle exists, so a refused
 * address leaves nothing to close asynchronously: the caller's error path
 * need not run the loop.
 */
static int listen_fd(const struct sockaddr *addr, int *port)
{
	struct sockaddr_storage ss;
	socklen_t len = addr->sa_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						    : sizeof(struct sockaddr_in);
	int fd = socket(addr->sa_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0), on = 1;

	if (fd < 0)
		return -errno;
	if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &on, sizeof(on)) || bind(fd, addr, len) ||
	    listen(fd, 64))
		goto fail;
	len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len))
		goto fail;
	*port = ntohs(ss.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&ss)->sin6_port
					       : ((struct sockaddr_in *)&ss)->sin_port);
	return fd;
fail:
	len = (socklen_t)errno;
	close(fd);
	return -(int)len;
}

int tern__http_start(uv_loop_t *loop, const struct sockaddr *addr, const struct tern__http_opts *o,
		     struct tern__http **out)
{
	struct tern__http *h;
	int fd, rc;

	if (!loop || !addr || !o || !o->page || o->req_max < 64 || o->req_max > (1u << 20) ||
	    o->max_clients < 1 || !out ||
	    (addr->sa_family != AF_INET && addr->sa_family != AF_INET6))
		return -EINVAL;
	if (!(h = calloc(1, sizeof(*h))))
		return -ENOMEM;
	if ((fd = listen_fd(addr, &h->port)) < 0) {
		free(h);
		return fd;
	}
	h->o = *o;
	h->loop = loop;
	h->tcp.data = h;
	if ((rc = uv_tcp_init(loop, &h->tcp))) {
		close(fd);
		free(h);
		return rc;
	}
	h->open_handles = 1;
	if (o->unref)
		uv_unref((uv_handle_t *)&h->tcp);
	if ((rc = uv_tcp_open(&h->tcp, fd)))
		close(fd); /* the handle did not take it */
	if (rc || (rc = uv_listen((uv_stream_t *)&h->tcp, 64, on_connection))) {
		/* the handle is initialised: it closes on the loop, h with it */
		h->o.closed = NULL;
		tern__http_stop(h, true);
		return rc;
	}
	*out = h;
	return 0;
}

int tern__http_port(const struct tern__http *h)
{
	return h->port;
}

void tern__http_stop(struct tern__http *h, bool now)
{
	if (h->stopping)
		return;
	h->stopping = true;
	uv_close((uv_handle_t *)&h->tcp, listener_closed);
	/* answers being written finish first unless @now (on_written closes) */
	for (struct http_client *c = h->clients; c; c = c->next)
		if (now || !c->answered || c->draining)
			client_close(c);
}
