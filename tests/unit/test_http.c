// SPDX-License-Identifier: MIT
/*
 * test_http.c - the HTTP responder (src/http.c) that tern_ctx_metrics_listen()
 * and tern-rnr --listen share: the answers it gives, and that malformed,
 * huge, slow, pipelined and too many requests cannot hurt it.
 *
 * One thread: the test's sockets are non-blocking and the loop turns
 * (UV_RUN_NOWAIT) between their sends and reads.  No assertion is on a
 * time; the loops only give up (and fail) after 30 s.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>

#include "http.h"
#include "http_client.h"

struct fx {
	uv_loop_t loop;
	struct tern__http *h;
	int port;
	int pages;	 /* page() calls */
	int sent;	 /* sent() calls */
	int closed;	 /* closed() calls */
	int page_rc;	 /* what page() returns */
	size_t page_len; /* bytes of the page, >= 32 */
};

static int page(void *arg, char **body, size_t *len)
{
	struct fx *f = arg;
	char head[32];

	f->pages++;
	if (f->page_rc < 0)
		return f->page_rc;
	assert_non_null(*body = malloc(f->page_len));
	memset(*body, '#', f->page_len);
	memcpy(*body, head, (size_t)snprintf(head, sizeof(head), "tern_test_page %d\n", f->pages));
	(*body)[f->page_len - 1] = '\n';
	*len = f->page_len;
	return f->page_rc;
}

static void sent(void *arg)
{
	((struct fx *)arg)->sent++;
}

static void closed(void *arg)
{
	struct fx *f = arg;

	f->closed++;
	f->h = NULL;
}

static struct tern__http_opts opts(struct fx *f)
{
	return (struct tern__http_opts){
		.req_max = 512,
		.max_clients = 4,
		.idle_ms = 300,
		.linger_ms = 300,
		.page = page,
		.sent = sent,
		.closed = closed,
		.arg = f,
	};
}

static struct fx *start_with(const struct tern__http_opts *o)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct sockaddr_storage ss;
	struct tern__http_opts oo = *o;

	assert_non_null(f);
	f->page_len = 64;
	oo.arg = f;
	assert_int_equal(uv_loop_init(&f->loop), 0);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:0", &ss), 0);
	assert_int_equal(tern__http_start(&f->loop, (struct sockaddr *)&ss, &oo, &f->h), 0);
	f->port = tern__http_port(f->h);
	assert_true(f->port > 0);
	return f;
}

static struct fx *start(void)
{
	struct fx tmp;
	struct tern__http_opts o = opts(&tmp);

	return start_with(&o);
}

static void turn(struct fx *f)
{
	uv_run(&f->loop, UV_RUN_NOWAIT);
}

/* Stop, let every close run, and check nothing is left on the loop. */
static void finish(struct fx *f)
{
	if (f->h)
		tern__http_stop(f->h, true);
	while (f->h)
		turn(f);
	assert_int_equal(f->closed, 1);
	assert_int_equal(uv_run(&f->loop, UV_RUN_NOWAIT), 0);
	assert_int_equal(uv_loop_close(&f->loop), 0);
	free(f);
}

static void turn_cb(void *arg)
{
	turn(arg);
}

/* A plain client of @f: the whole request at once, then our FIN. */
static struct http_peer peer(struct fx *f)
{
	return (struct http_peer){.turn = turn_cb, .arg = f};
}

static size_t exchange(struct fx *f, const void *req, size_t len, char *out, size_t cap)
{
	struct http_peer p = peer(f);

	return http_exchange(&p, f->port, req, len, out, cap);
}

static double elapsed_s(const struct timespec *t0)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)(t.tv_sec - t0->tv_sec) + (double)(t.tv_nsec - t0->tv_nsec) / 1e9;
}

static int count_of(const char *hay, const char *needle)
{
	int n = 0;

	for (const char *p = hay; (p = strstr(p, needle)); p++)
		n++;
	return n;
}

static const char get[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
static char resp[1 << 21];

static void test_answers_get_head_and_the_errors(void **state)
{
	struct fx *f = start();

	(void)state;
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_non_null(strstr(resp, "\r\nContent-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(resp, "\r\nConnection: close\r\n"));
	assert_true(strncmp(http_body(resp), "tern_test_page 1\n", 17) == 0);
	assert_int_equal(f->sent, 1);

	/* bare LFs end a head too; a query string is ignored */
	exchange(f, "GET /metrics?x=1 HTTP/1.0\n\n", 27, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_int_equal(f->pages, 2);

	exchange(f, "HEAD /metrics HTTP/1.1\r\n\r\n", 26, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_string_equal(strstr(resp, "\r\n\r\n"), "\r\n\r\n"); /* no body */
	assert_int_equal(f->sent, 2);				   /* a HEAD is no scrape */

	exchange(f, "GET /x HTTP/1.1\r\n\r\n", 19, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 404);
	http_body(resp);
	exchange(f, "POST /metrics HTTP/1.1\r\n\r\n", 26, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 405);
	assert_non_null(strstr(resp, "\r\nAllow: GET, HEAD\r\n"));
	exchange(f, "GET /metrics\r\n\r\n", 16, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 400);
	exchange(f, "GET /metrics SPDY/3\r\n\r\n", 23, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 400);
	assert_int_equal(f->pages, 3);

	/* the page fails: 500, and the next scrape is served again */
	f->page_rc = -ENOMEM;
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 500);
	f->page_rc = 0;
	/* a large page goes out whole */
	f->page_len = 1 << 20;
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_int_equal(strlen(http_body(resp)), 1 << 20);
	assert_int_equal(f->sent, 3);
	finish(f);
}

/*
 * Random bytes, flipped bytes, requests cut short, heads over req_max and
 * NULs: each is answered with an error or closed, never crashes or leaks
 * (ASan), and a good request is served after them.
 */
static void test_survives_malformed_and_huge_requests(void **state)
{
	static char req[200000];
	struct fx *f = start();
	int pages = 0;

	(void)state;
	srand(15);
	for (int i = 0; i < 200; i++) {
		size_t len = 0;
		int code;

		switch (i % 5) {
		case 0:
			len = (size_t)rand() % 2000;
			for (size_t k = 0; k < len; k++)
				req[k] = (char)rand();
			break;
		case 1:
			len = strlen(get);
			memcpy(req, get, len);
			for (int k = 0; k < 3; k++)
				req[rand() % (int)len] = (char)rand();
			break;
		case 2:
			len = (size_t)rand() % strlen(get);
			memcpy(req, get, len);
			break;
		case 3: /* the buffer is 512: anything from 511 bytes on is too large */
			len = 511 + (size_t)rand() % (sizeof(req) - 511);
			memcpy(req, "GET /metrics HTTP/1.1\r\nX: ", 26);
			memset(req + 26, 'a', len - 26);
			break;
		case 4:
			len = strlen(get);
			memcpy(req, get, len);
			req[rand() % 12] = 0;
			break;
		}
		exchange(f, req, len, resp, sizeof(resp));
		code = http_status(resp);
		assert_true(resp[0] == 0 || code == 200 || code == 400 || code == 404 ||
			    code == 405 || code == 431);
		if (i % 5 == 3)
			assert_int_equal(code, 431);
		if (i % 5 == 2 || i % 5 == 4)
			assert_true(code != 200);
		pages += code == 200;
	}
	assert_int_equal(f->pages, pages);
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	finish(f);
}

/*
 * A client that sends part of its request and stops, and one that sends it
 * a byte at a time, are cut when idle_ms has passed since they connected,
 * unanswered; others are served meanwhile.
 */
static void test_cuts_slow_clients_and_serves_others_meanwhile(void **state)
{
	static char other[4096];
	struct fx *f = start();
	char big[200];
	int stalled = http_connect_local(f->port);
	struct http_peer p = peer(f);

	(void)state;
	for (int i = 0; i < 20; i++)
		turn(f);
	assert_int_equal(send(stalled, "GET /met", 8, MSG_NOSIGNAL), 8);
	exchange(f, get, strlen(get), other, sizeof(other));
	assert_int_equal(http_status(other), 200);
	/* the stalled one is closed by the server, with no answer */
	p.keep_open = true;
	http_exchange_fd(&p, stalled, NULL, 0, resp, sizeof(resp));
	assert_string_equal(resp, "");

	/* 200 bytes at one per 10 ms take 2 s: the 300 ms budget ends first */
	memset(big, 'a', sizeof(big));
	memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
	memcpy(big + sizeof(big) - 4, "\r\n\r\n", 4);
	p = peer(f);
	p.gap_us = 10000;
	http_exchange(&p, f->port, big, sizeof(big), resp, sizeof(resp));
	assert_string_equal(resp, "");
	assert_true(p.sent < sizeof(big));
	assert_int_equal(f->pages, 1);
	finish(f);
}

/*
 * Requests pipelined on one connection: the first is answered, the rest
 * read and dropped, and the connection closed (one request per connection).
 */
static void test_answers_one_of_pipelined_requests(void **state)
{
	static char req[8 * sizeof(get)];
	struct fx *f = start();
	size_t len = 0;

	(void)state;
	for (int i = 0; i < 8; i++) {
		memcpy(req + len, get, strlen(get));
		len += strlen(get);
	}
	exchange(f, req, len, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_int_equal(count_of(resp, "HTTP/1.1 "), 1);
	assert_int_equal(f->pages, 1);
	/* a second request sent once the first answer has arrived: dropped */
	{
		int fd = http_connect_local(f->port);
		struct http_peer p = peer(f);
		size_t got = 0;
		struct timespec t0;

		clock_gettime(CLOCK_MONOTONIC, &t0);
		while (send(fd, get, strlen(get), MSG_NOSIGNAL) != (ssize_t)strlen(get)) {
			assert_true(errno == EAGAIN && elapsed_s(&t0) < 30); /* connecting */
			turn(f);
		}
		resp[0] = 0;
		while (!strstr(resp, "\r\n\r\n")) {
			ssize_t n;

			turn(f);
			n = recv(fd, resp + got, sizeof(resp) - 1 - got, 0);
			if (n > 0)
				got += (size_t)n;
			resp[got] = 0;
			assert_true(n != 0 && elapsed_s(&t0) < 30);
		}
		http_exchange_fd(&p, fd, get, strlen(get), resp + got, sizeof(resp) - got);
		assert_int_equal(http_status(resp), 200);
		assert_int_equal(count_of(resp, "HTTP/1.1 "), 1);
		http_body(resp); /* the whole body, by its Content-Length */
	}
	assert_int_equal(f->pages, 2);
	finish(f);
}

/* max_clients connections that send nothing hold every place: the next is shut. */
static void test_refuses_clients_over_the_limit(void **state)
{
	struct fx *f = start();
	int idle[4];

	(void)state;
	for (int i = 0; i < 4; i++)
		idle[i] = http_connect_local(f->port);
	for (int i = 0; i < 50; i++)
		turn(f);
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_string_equal(resp, "");
	assert_int_equal(f->pages, 0);
	for (int i = 0; i < 4; i++)
		close(idle[i]);
	for (int i = 0; i < 50; i++)
		turn(f);
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	finish(f);
}

/*
 * TERN__HTTP_LAST: that answer goes out whole, then the responder closes
 * (tern-rnr's alert); stopping with clients open frees everything (ASan).
 */
static void test_stops_after_the_last_page_and_frees_everything(void **state)
{
	struct fx *f = start();
	int idle = http_connect_local(f->port);
	struct http_peer p = peer(f);

	(void)state;
	f->page_rc = TERN__HTTP_LAST;
	f->page_len = 100000;
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_int_equal(strlen(http_body(resp)), 100000);
	while (f->h)
		turn(f);
	assert_int_equal(f->closed, 1);
	assert_int_equal(f->pages, 1);
	/* the idle client was closed, and nobody listens any more */
	p.keep_open = true;
	http_exchange_fd(&p, idle, NULL, 0, resp, sizeof(resp));
	assert_string_equal(resp, "");
	exchange(f, get, strlen(get), resp, sizeof(resp));
	assert_string_equal(resp, "");
	finish(f);

	/* stop(now) with a client in the middle of a request */
	f = start();
	idle = http_connect_local(f->port);
	for (int i = 0; i < 20; i++)
		turn(f);
	assert_int_equal(send(idle, "GET", 3, MSG_NOSIGNAL), 3);
	for (int i = 0; i < 20; i++)
		turn(f);
	close(idle);
	finish(f);
}

static void test_refuses_bad_addresses_and_options(void **state)
{
	struct sockaddr_storage ss;
	struct fx f = {0};
	struct tern__http_opts o = opts(&f);
	struct tern__http *h = NULL;
	int port;

	(void)state;
	assert_int_equal(tern__http_parse_addr("127.0.0.1", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:70000", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:8x", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:-1", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("nohost:80", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("[::1:80", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr(":80", &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr(NULL, &ss), -EINVAL);
	assert_int_equal(tern__http_parse_addr("[::1]:80", &ss), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(tern__http_parse_addr("0.0.0.0:9464", &ss), 0);
	assert_int_equal(ss.ss_family, AF_INET);

	assert_int_equal(uv_loop_init(&f.loop), 0);
	assert_int_equal(tern__http_parse_addr("127.0.0.1:0", &ss), 0);
	o.req_max = 10;
	assert_int_equal(tern__http_start(&f.loop, (struct sockaddr *)&ss, &o, &h), -EINVAL);
	o = opts(&f);
	o.page = NULL;
	assert_int_equal(tern__http_start(&f.loop, (struct sockaddr *)&ss, &o, &h), -EINVAL);
	o = opts(&f);
	o.max_clients = 0;
	assert_int_equal(tern__http_start(&f.loop, (struct sockaddr *)&ss, &o, &h), -EINVAL);
	/* a port in use: the error, and nothing left on the loop */
	o = opts(&f);
	assert_int_equal(tern__http_start(&f.loop, (struct sockaddr *)&ss, &o, &f.h), 0);
	port = tern__http_port(f.h);
	((struct sockaddr_in *)&ss)->sin_port = htons((uint16_t)port);
	assert_int_equal(tern__http_start(&f.loop, (struct sockaddr *)&ss, &o, &h), -EADDRINUSE);
	assert_null(h);
	tern__http_stop(f.h, false);
	while (f.h)
		uv_run(&f.loop, UV_RUN_NOWAIT);
	assert_int_equal(f.closed, 1);
	assert_int_equal(uv_loop_close(&f.loop), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_answers_get_head_and_the_errors),
		cmocka_unit_test(test_survives_malformed_and_huge_requests),
		cmocka_unit_test(test_cuts_slow_clients_and_serves_others_meanwhile),
		cmocka_unit_test(test_answers_one_of_pipelined_requests),
		cmocka_unit_test(test_refuses_clients_over_the_limit),
		cmocka_unit_test(test_stops_after_the_last_page_and_frees_everything),
		cmocka_unit_test(test_refuses_bad_addresses_and_options),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
