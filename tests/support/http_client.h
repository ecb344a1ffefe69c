/* SPDX-License-Identifier: MIT */
/*
 * http_client.h - a test's side of an HTTP exchange with tern's responder
 * (src/http.c), in the test's own thread: the socket is non-blocking and
 * the caller's loop turns between each send and read.  For test_http.c (the
 * responder on a bare libuv loop) and test_metrics.c (on a context's loop).
 * Failures are cmocka assertions.
 */
#ifndef TERN_TESTS_HTTP_CLIENT_H
#define TERN_TESTS_HTTP_CLIENT_H

#include <stdbool.h>
#include <stddef.h>

struct http_peer {
	void (*turn)(void *arg); /* one non-blocking turn of the server's loop */
	void *arg;
	unsigned gap_us; /* when not 0: send one byte at a time, this far apart */
	bool keep_open;	 /* do not shut our sending side once the request is out */
	size_t sent;	 /* out: bytes of the request that went out */
};

/* A non-blocking TCP connection to 127.0.0.1:@port, maybe still in progress. */
int http_connect_local(int port);

/*
 * On @fd (closed here): send @len bytes of @req as @p says, then read until
 * the server closes (or resets), asserting it does within 30 s.  The answer,
 * NUL-terminated, in @out; its length.
 */
size_t http_exchange_fd(struct http_peer *p, int fd, const void *req, size_t len, char *out,
			size_t cap);

/* The same on a new connection to @port. */
size_t http_exchange(struct http_peer *p, int port, const void *req, size_t len, char *out,
		     size_t cap);

/* The status of an HTTP/1.1 answer, or 0 when @resp is none. */
int http_status(const char *resp);

/* The body of @resp, asserting it is as long as its Content-Length says. */
const char *http_body(const char *resp);

#endif
