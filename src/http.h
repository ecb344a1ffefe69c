/* SPDX-License-Identifier: MIT */
/*
 * http.h - the one HTTP responder tern has (http.c): GET and HEAD of one
 * page, /metrics, on a libuv loop.  tern_ctx_metrics_listen() runs it on a
 * context's loop (rpc/metrics_http.c) and tern-rnr --listen on its own
 * (tools/tern-rnr.c, which links it as a small static library).
 *
 * Whoever can reach the port is untrusted.  A request is read into a fixed
 * buffer of req_max bytes (larger ones get 431), a client has idle_ms from
 * its connection to send the whole request (slow senders are cut), at most
 * max_clients are open at once (more are accepted only to be closed), and
 * nothing of the request is used but its method and path.  One request per
 * connection: the answer says Connection: close and whatever the client
 * sends after its first request (a pipelined one) is read and dropped
 * until it closes or linger_ms passes.
 */
#ifndef TERN_HTTP_H
#define TERN_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>
#include <uv.h>

struct tern__http;

/* What tern__http_opts.page may return besides 0 and -errno. */
#define TERN__HTTP_LAST 1 /* answer this one, then tern__http_stop() */

struct tern__http_opts {
	size_t req_max;	    /* bytes of request line and headers accepted, >= 64 */
	int max_clients;    /* connections open at once */
	unsigned idle_ms;   /* from the connection to a whole request */
	unsigned linger_ms; /* to drain the client after the answer */
	bool unref;	    /* the handles do not keep uv_run() from returning */
	/*
	 * The page at /metrics, asked for each GET and HEAD of it: a malloc()ed
	 * *body of *len bytes (the responder frees it).  0, TERN__HTTP_LAST, or
	 * a negative errno, which answers 500.
	 */
	int (*page)(void *arg, char **body, size_t *len);
	/* Optional: a GET's 200 was written out (a scrape delivered). */
	void (*sent)(void *arg);
	/* Optional: everything is closed and freed, after tern__http_stop(). */
	void (*closed)(void *arg);
	void *arg;
};

/**
 * tern__http_parse_addr - HOST:PORT or [V6HOST]:PORT, numeric hosts only
 * @arg: the text
 * @ss: the address, on success
 *
 * Return: 0, or -EINVAL.
 */
int tern__http_parse_addr(const char *arg, struct sockaddr_storage *ss);

/**
 * tern__http_start - listen on @addr and answer on @loop
 * @loop: the loop the responder runs on (it makes no thread)
 * @addr: where to listen; port 0 picks a free one (tern__http_port())
 * @o: the limits and the page; copied
 * @out: the responder, on success
 *
 * Return: 0, or a negative errno (nothing is left open).
 */
int tern__http_start(uv_loop_t *loop, const struct sockaddr *addr, const struct tern__http_opts *o,
		     struct tern__http **out);

/* The port listened on. */
int tern__http_port(const struct tern__http *h);

/**
 * tern__http_stop - stop listening and close every client
 * @h: the responder
 * @now: also cut answers being written (false lets them finish, then
 *	 closes those clients without draining them)
 *
 * Asynchronous: opts.closed is called, and @h freed, once every handle has
 * closed on the loop.  Calling it again is harmless until then.
 */
void tern__http_stop(struct tern__http *h, bool now);

#endif
