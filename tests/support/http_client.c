// SPDX-License-Identifier: MIT
/* http_client.c - see http_client.h. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "http_client.h"

int http_connect_local(int port)
{
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);

	assert_true(fd >= 0);
	assert_int_equal(inet_pton(AF_INET, "127.0.0.1", &a.sin_addr), 1);
	assert_true(connect(fd, (struct sockaddr *)&a, sizeof(a)) == 0 || errno == EINPROGRESS);
	return fd;
}

size_t http_exchange_fd(struct http_peer *p, int fd, const void *req, size_t len, char *out,
			size_t cap)
{
	size_t done = 0, got = 0;
	bool shut = false;
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		ssize_t n;

		p->turn(p->arg);
		if (done < len) {
			n = send(fd, (const char *)req + done, p->gap_us ? 1 : len - done,
				 MSG_NOSIGNAL);
			if (n > 0)
				done += (size_t)n;
			else if (errno == EPIPE || errno == ECONNRESET)
				len = done; /* the server stopped listening to us */
			if (p->gap_us)
				usleep(p->gap_us);
		}
		if (done == len && !shut && !p->keep_open)
			shut = shutdown(fd, SHUT_WR) == 0 || errno != ENOTCONN;
		n = recv(fd, out + got, cap - 1 - got, 0);
		if (n > 0)
			got += (size_t)n;
		else if (n == 0 || (errno != EAGAIN && errno != ENOTCONN))
			break; /* closed (or reset, or refused) by the server */
		if (got == cap - 1)
			break;
		clock_gettime(CLOCK_MONOTONIC, &t);
		assert_true(t.tv_sec - t0.tv_sec < 30); /* the server must close */
	}
	close(fd);
	out[got] = 0;
	p->sent = done;
	return got;
}

size_t http_exchange(struct http_peer *p, int port, const void *req, size_t len, char *out,
		     size_t cap)
{
	return http_exchange_fd(p, http_connect_local(port), req, len, out, cap);
}

int http_status(const char *resp)
{
	int code = 0;

	return sscanf(resp, "HTTP/1.1 %3d ", &code) == 1 ? code : 0;
}

const char *http_body(const char *resp)
{
	const char *cl = strstr(resp, "\r\nContent-Length: "), *body = strstr(resp, "\r\n\r\n");
	size_t n = 0;

	assert_non_null(cl);
	assert_non_null(body);
	assert_int_equal(sscanf(cl + 18, "%zu", &n), 1);
	assert_int_equal(strlen(body + 4), n);
	return body + 4;
}
