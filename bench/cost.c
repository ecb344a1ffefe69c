// SPDX-License-Identifier: MIT
/*
 * cost - what one echo round trip costs tern in user-space instructions.
 *
 * One process, one thread, two contexts: a server context listening and a
 * client context connected to it over shm://, tcp:// or rdma://.  Each
 * round trip issues one call on the client, then polls the server context
 * and the client context in turn until the reply callback has run.  With no
 * second thread and no spinning peer, the instructions a round trip takes
 * do not depend on timing: run under callgrind, the count is the same every
 * time (bench/run-cost.sh shows it twice and divides out the per-run
 * constant by subtracting a run with fewer round trips).
 *
 *   raw:     tern_call() copies the request into a slot; the server's raw
 *            handler returns the request bytes, which tern copies once into
 *            the reply slot.
 *   inplace: tern_call_acquire()/tern_call_commit() build the request in
 *            the slot, and the inplace handler writes the reply straight
 *            into its send slot.
 *
 * Both contexts run with per-method metrics off (tern_ctx_metrics_enable(0);
 * they are on by default) unless --metrics: what recording them costs a
 * round trip.
 *
 * --progress busy drives each context with tern_ctx_poll() (what a
 * busy-polling application does); --progress event with one
 * tern_ctx_run(TERN_RUN_NOWAIT) turn each (the libuv turn and the
 * notification fds an event-driven application pays for).
 *
 * The round trips that are counted all happen inside bench_measure()
 * (bench/stats.c): "valgrind --tool=callgrind --toggle-collect=bench_measure"
 * counts them and nothing else.  Every reply is checked (length, status, the
 * sequence number it echoes); a wrong one fails the run.  Outside valgrind
 * the JSON line's ns_per_rt is the wall time, for orientation only.
 */
#include <errno.h>
#include <getopt.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <tern.h>

#include "stats.h"

#define M_RAW	  1
#define M_INPLACE 2

struct cost {
	const char *transport;
	bool inplace;
	bool event;
	bool metrics; /* per-method metrics on in both contexts */
	size_t size;
	long iters, warmup;
	tern_ctx *srv, *cli;
	tern_session *s;
	uint8_t *payload;
	long seq;     /* the call in flight */
	bool replied; /* its callback ran */
	long bad;     /* replies that came back wrong */
	long turns;   /* server+client poll pairs over the measured round trips */
};

static int raw_echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	out->base = in;
	out->len = n;
	return 0;
}

static ssize_t inplace_echo(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	if (n > cap)
		return -EMSGSIZE;
	memcpy(out, in, n);
	return (ssize_t)n;
}

static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct cost *c = user;
	size_t k = c->size < sizeof(c->seq) ? c->size : sizeof(c->seq);

	(void)s;
	if (status || len != c->size || memcmp(reply, &c->seq, k))
		c->bad++;
	c->replied = true;
}

static void turn(struct cost *c, tern_ctx *ctx)
{
	if (c->event)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	else
		tern_ctx_poll(ctx, 0);
}

static int round_trip(void *arg)
{
	struct cost *c = arg;
	size_t k = c->size < sizeof(c->seq) ? c->size : sizeof(c->seq);
	long spins = 0;
	int rc;

	c->seq++;
	c->replied = false;
	if (c->inplace) {
		tern_callslot *cs;
		void *buf;
		size_t cap;

		rc = tern_call_acquire(c->s, &buf, &cap, &cs);
		if (rc)
			return rc;
		/* the request is built in the slot: here, its sequence number
		 * (like tern_bench; the rest of the slot is not the call's cost) */
		memcpy(buf, &c->seq, k);
		rc = tern_call_commit(cs, M_INPLACE, c->size, on_reply, c, NULL);
	} else {
		memcpy(c->payload, &c->seq, k);
		rc = tern_call(c->s, M_RAW, c->payload, c->size, on_reply, c, NULL);
	}
	if (rc)
		return rc;
	while (!c->replied) {
		turn(c, c->srv);
		turn(c, c->cli);
		c->turns++;
		if (++spins > 100000000)
			return -ETIMEDOUT;
	}
	return 0;
}

static bool accepted;

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l, (void)s;
	accepted = status == 0;
}

static int connect_pair(struct cost *c, const char *addr)
{
	struct tern_ctx_opts co = {.size = sizeof(co),
				   .progress = c->event ? TERN_PROGRESS_EVENT : TERN_PROGRESS_BUSY};
	/* valgrind on the VM's emulated CPU is slow: give the handshake time */
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = 8192, .nonblock = 1, .connect_timeout_ms = 300000};
	tern_listener *l;
	char uri[160];
	int rc;

	if (strcmp(c->transport, "shm") == 0)
		snprintf(uri, sizeof(uri), "shm://tern-cost-%d", (int)getpid());
	else
		snprintf(uri, sizeof(uri), "%s://%s:0", c->transport, addr);
	if ((rc = tern_ctx_create(&co, &c->srv)) || (rc = tern_ctx_create(&co, &c->cli)))
		return rc;
	/* both ways explicitly: contexts record metrics by default */
	if ((rc = tern_ctx_metrics_enable(c->srv, c->metrics)) ||
	    (rc = tern_ctx_metrics_enable(c->cli, c->metrics)))
		return rc;
	if ((rc = tern_register_raw(c->srv, M_RAW, raw_echo, NULL)) ||
	    (rc = tern_register_inplace(c->srv, M_INPLACE, inplace_echo, NULL)) ||
	    (rc = tern_listen(c->srv, uri, &so, on_accept, &l))) {
		fprintf(stderr, "cost: listen %s: %s (%s)\n", uri, tern_strerror(rc),
			tern_ctx_last_error(c->srv));
		return rc;
	}
	snprintf(uri, sizeof(uri), "%s", tern_listener_uri(l));
	if ((rc = tern_connect(c->cli, uri, &so, NULL, &c->s)))
		return rc;
	/* Both loops have to turn for the handshake: nobody else runs them. */
	for (double end = bench_now_us() + 300e6; bench_now_us() < end;) {
		tern_ctx_run(c->srv, TERN_RUN_NOWAIT);
		tern_ctx_run(c->cli, TERN_RUN_NOWAIT);
		if (accepted && tern_session_is_ready(c->s))
			return 0;
	}
	fprintf(stderr, "cost: connect %s timed out (%s)\n", uri, tern_ctx_last_error(c->cli));
	return -ETIMEDOUT;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: cost --transport shm|tcp|rdma [--kind raw|inplace] [--size B]\n"
		   "            [--iters N] [--warmup N] [--progress busy|event] [--addr IP]\n"
		   "            [--metrics]\n"
		   "One thread drives a client and a server context through N echo round trips;\n"
		   "run it under valgrind --tool=callgrind --toggle-collect=bench_measure\n"
		   "(bench/run-cost.sh does, and prints instructions per round trip).\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"transport", required_argument, 0, 't'},
		{"kind", required_argument, 0, 'k'},
		{"size", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"progress", required_argument, 0, 'p'},
		{"addr", required_argument, 0, 'a'},
		{"metrics", no_argument, 0, 'm'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	struct cost c = {.transport = "shm", .size = 32, .iters = 1000, .warmup = 100};
	const char *addr = NULL, *kind = "raw", *progress = "busy";
	double t0, ns;
	int ch, rc;

	while ((ch = getopt_long(argc, argv, "t:k:s:n:w:p:a:mh", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			c.transport = optarg;
			break;
		case 'k':
			kind = optarg;
			break;
		case 's':
			c.size = strtoul(optarg, NULL, 0);
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'p':
			progress = optarg;
			break;
		case 'a':
			addr = optarg;
			break;
		case 'm':
			c.metrics = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	c.inplace = strcmp(kind, "inplace") == 0;
	c.event = strcmp(progress, "event") == 0;
	if ((strcmp(kind, "raw") && !c.inplace) || (strcmp(progress, "busy") && !c.event) ||
	    (strcmp(c.transport, "shm") && strcmp(c.transport, "tcp") &&
	     strcmp(c.transport, "rdma")) ||
	    c.size < 1 || c.size > 4096 || c.iters < 0 || c.warmup < 0) {
		usage(stderr);
		return 2;
	}
	if (!addr)
		addr = strcmp(c.transport, "rdma") == 0 ? "10.77.0.1" : "127.0.0.1";
	c.payload = calloc(1, c.size);
	if (!c.payload || (rc = connect_pair(&c, addr)))
		return 1;
	memset(c.payload, 0x5a, c.size);
	rc = bench_warm_up(round_trip, &c, c.warmup);
	c.turns = 0;
	t0 = bench_now_us();
	if (rc == 0)
		rc = bench_measure(round_trip, &c, c.iters);
	ns = c.iters ? (bench_now_us() - t0) * 1e3 / (double)c.iters : 0;
	if (rc || c.bad) {
		fprintf(stderr, "cost: %s, %ld bad replies\n", rc ? tern_strerror(rc) : "ok",
			c.bad);
		return 1;
	}
	printf("{\"bench\":\"cost\",\"transport\":\"%s\",\"kind\":\"%s\",\"progress\":\"%s\","
	       "\"metrics\":%s,\"size\":%zu,\"iters\":%ld,\"turns_per_rt\":%.3f,\"ns_per_rt\":%.0f}"
	       "\n",
	       c.transport, kind, progress, c.metrics ? "true" : "false", c.size, c.iters,
	       c.iters ? (double)c.turns / (double)c.iters : 0, ns);
	tern_session_close(c.s, NULL);
	tern_ctx_destroy(c.cli);
	tern_ctx_destroy(c.srv);
	free(c.payload);
	return 0;
}
