// SPDX-License-Identifier: MIT
/*
 * tern_local_bench - tern's echo over shm:// or tcp://, two processes.
 *
 * The parent is the client, a forked child the server; each makes its own
 * context after the fork, with the progress mode asked for.  The server
 * echoes with an inplace handler (the reply is written straight into its
 * send slot: on shm that is memory the client reads in place).  The client
 * copies each request into a slot with tern_call() and, in busy mode,
 * spins in tern_ctx_poll(); in event and adaptive mode it runs the loop.
 *
 * --inflight 1 times each round trip (compare with shm_ring_pingpong and
 * tcp_pingpong); more keeps that many calls in flight and reports the rate.
 * Output: one JSON object per size, the keys of every tern benchmark, and
 * what the client context's own metrics recorded for the size's calls
 * ("metrics": bench/mx.h), which must match the calls it made.
 *
 * --one-cpu pins both processes to CPU 0, where each peer's wake-up
 * competes with the other's spinning: adaptive progress with a long
 * --adaptive-spin-us must yield while quiet, or every round trip waits out
 * the window.  Divide its p50 by event mode's on one CPU, measured in the
 * same run (docs/performance.md, "Adaptive peers on one CPU"); this was a
 * unit test's timed assertion, which a loaded machine failed.
 */
#include <errno.h>
#include <getopt.h>
#include <sched.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <tern.h>

#include "mx.h"
#include "stats.h"

#define M_ECHO 0x7e40

struct cfg {
	const char *transport;
	const char *mode;
	enum tern_progress progress;
	size_t sizes[16];
	int nsizes;
	long iters, warmup;
	int inflight;
	bool one_cpu;
	uint32_t adaptive_spin_us; /* 0: the library's default */
	uint32_t slot_size, slot_count;
};

static ssize_t echo_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	if (n > cap)
		return -EMSGSIZE;
	memcpy(out, in, n);
	return (ssize_t)n;
}

static void server_session_closed(tern_session *s, int reason)
{
	(void)reason;
	tern_ctx_stop(tern_session_ctx(s)); /* the client is done */
}

static int serve(const struct cfg *c, int wfd)
{
	struct tern_ctx_opts co = {.size = sizeof(co),
				   .progress = c->progress,
				   .adaptive_spin_us = c->adaptive_spin_us};
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = c->slot_size,
				       .slot_count = c->slot_count,
				       .on_close = server_session_closed};
	char uri[128];
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	if (strcmp(c->transport, "shm") == 0)
		snprintf(uri, sizeof(uri), "shm://tern-bench-%d", (int)getpid());
	else
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:0");
	if ((rc = tern_ctx_create(&co, &ctx)) ||
	    (rc = tern_register_inplace(ctx, M_ECHO, echo_inplace, NULL)) ||
	    (rc = tern_listen(ctx, uri, &so, NULL, &l))) {
		fprintf(stderr, "tern_local_bench: server: %s\n", tern_strerror(rc));
		return 1;
	}
	snprintf(uri, sizeof(uri), "%s\n", tern_listener_uri(l));
	if (write(wfd, uri, strlen(uri)) < 0)
		return 1;
	close(wfd);
	tern_ctx_run(ctx, TERN_RUN_DEFAULT);
	tern_ctx_destroy(ctx);
	return 0;
}

/* ---- the client ------------------------------------------------------------ */

struct run {
	tern_ctx *ctx;
	tern_session *s;
	const struct cfg *c;
	size_t len;
	long issued, done, bad, failed;
	double *t_issue; /* per call, by sequence number */
	double *lat;	 /* per timed call */
	long warmup;
};

static void reply_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct run *r = tern_session_data(s);
	long seq = (long)(intptr_t)user;
	size_t k = r->len < sizeof(seq) ? r->len : sizeof(seq);

	if (status || len != r->len || memcmp(reply, &seq, k))
		r->bad++;
	if (status < 0)
		r->failed++;
	if (seq >= r->warmup)
		r->lat[seq - r->warmup] = bench_now_us() - r->t_issue[seq];
	r->done++;
}

static void wait_some(struct run *r)
{
	if (r->c->progress == TERN_PROGRESS_BUSY)
		tern_ctx_poll(r->ctx, 64); /* spin on the rings or the socket, no epoll */
	else
		tern_ctx_run(r->ctx, TERN_RUN_ONCE);
}

static int run_size(struct run *r, uint8_t *buf)
{
	long total = r->c->iters + r->c->warmup;
	struct tern_method_stats mx0, mx1, mx;
	struct bench_stats st;
	double t_begin = 0;
	int rc;

	r->issued = r->done = r->bad = r->failed = 0;
	if ((rc = bench_mx_get(r->ctx, TERN_METRICS_ISSUED, M_ECHO, &mx0)))
		return 1;
	memset(buf, 0x5a, r->len);
	while (r->done < total) {
		while (r->issued < total && r->issued - r->done < r->c->inflight) {
			long seq = r->issued;
			size_t k = r->len < sizeof(seq) ? r->len : sizeof(seq);

			memcpy(buf, &seq, k);
			if (seq == r->warmup)
				t_begin = bench_now_us();
			r->t_issue[seq] = bench_now_us();
			rc = tern_call(r->s, M_ECHO, buf, r->len, reply_cb, (void *)(intptr_t)seq,
				       NULL);
			if (rc == -EAGAIN)
				break;
			if (rc) {
				fprintf(stderr, "tern_local_bench: call: %s\n", tern_strerror(rc));
				return 1;
			}
			r->issued++;
		}
		wait_some(r);
	}
	if (r->bad) {
		fprintf(stderr, "tern_local_bench: %ld bad replies\n", r->bad);
		return 1;
	}
	bench_stats_compute(&st, r->lat, (size_t)r->c->iters, bench_now_us() - t_begin);
	if ((rc = bench_mx_get(r->ctx, TERN_METRICS_ISSUED, M_ECHO, &mx1)))
		return 1;
	bench_mx_diff(&mx, &mx1, &mx0); /* this size's calls, warm-up included */
	printf("{\"bench\":\"tern_local\",\"transport\":\"%s\",\"mode\":\"%s\",\"kind\":\"tern\","
	       "\"handler\":\"inplace\",\"size\":%zu,\"inflight\":%d,\"iters\":%ld,"
	       "\"one_cpu\":%s,\"adaptive_spin_us\":%u,"
	       "\"p50_us\":%.3f,\"p99_us\":%.3f,\"mean_us\":%.3f,\"rate_per_s\":%.0f",
	       r->c->transport, r->c->mode, r->len, r->c->inflight, r->c->iters,
	       r->c->one_cpu ? "true" : "false", r->c->adaptive_spin_us, st.p50_us, st.p99_us,
	       st.mean_us, st.rate_per_s);
	rc = bench_mx_print(stdout, "metrics", "tern_local_bench", &mx, (uint64_t)r->done,
			    (uint64_t)r->failed);
	printf("}\n");
	fflush(stdout);
	return rc ? 1 : 0;
}

static int client(const struct cfg *c, const char *uri)
{
	struct tern_ctx_opts co = {.size = sizeof(co),
				   .progress = c->progress,
				   .busy_spin_us = 1,
				   .adaptive_spin_us = c->adaptive_spin_us};
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = c->slot_size,
				       .slot_count = c->slot_count,
				       .nonblock = 1};
	long total = c->iters + c->warmup;
	struct run r = {.c = c, .warmup = c->warmup};
	uint8_t *buf = malloc(c->slot_size);
	int rc = 0;

	r.t_issue = calloc((size_t)total, sizeof(double));
	r.lat = calloc((size_t)c->iters, sizeof(double));
	/* metrics on whatever TERN_METRICS says: the lines report them */
	if ((rc = tern_ctx_create(&co, &r.ctx)) || (rc = tern_ctx_metrics_enable(r.ctx, 1)) ||
	    (rc = tern_connect_sync(r.ctx, uri, &so, 10000, &r.s))) {
		fprintf(stderr, "tern_local_bench: connect %s: %s (%s)\n", uri, tern_strerror(rc),
			r.ctx ? tern_ctx_last_error(r.ctx) : "");
		return 1;
	}
	tern_session_set_data(r.s, &r);
	for (int i = 0; i < c->nsizes && rc == 0; i++) {
		r.len = c->sizes[i];
		rc = run_size(&r, buf);
	}
	tern_session_close(r.s, NULL);
	tern_ctx_destroy(r.ctx);
	free(r.t_issue);
	free(r.lat);
	free(buf);
	return rc;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tern_local_bench --transport shm|tcp [--mode busy|event|adaptive]\n"
		   "                        [--sizes 32,256,...] [--iters N] [--warmup N] "
		   "[--inflight N]\n"
		   "                        [--one-cpu] [--adaptive-spin-us US]\n"
		   "tern's echo between two processes on this host; JSON lines on stdout.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"transport", required_argument, 0, 't'},
		{"mode", required_argument, 0, 'm'},
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"inflight", required_argument, 0, 'i'},
		{"one-cpu", no_argument, 0, '1'},
		{"adaptive-spin-us", required_argument, 0, 'a'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	struct cfg c = {.transport = "shm",
			.mode = "busy",
			.sizes = {32, 256, 1024, 4096},
			.nsizes = 4,
			.iters = 100000,
			.warmup = 10000,
			.inflight = 1};
	char uri[160];
	size_t max = 0;
	int ch, pfd[2], st, rc;
	pid_t pid;
	FILE *fp;

	while ((ch = getopt_long(argc, argv, "t:m:s:n:w:i:1a:h", opts, NULL)) != -1) {
		switch (ch) {
		case 't':
			c.transport = optarg;
			break;
		case 'm':
			c.mode = optarg;
			break;
		case 's':
			if (bench_parse_sizes(optarg, c.sizes, 16, &c.nsizes)) {
				fprintf(stderr, "tern_local_bench: bad --sizes '%s'\n", optarg);
				return 2;
			}
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'i':
			c.inflight = atoi(optarg);
			break;
		case '1':
			c.one_cpu = true;
			break;
		case 'a':
			c.adaptive_spin_us = (uint32_t)atol(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	c.progress = strcmp(c.mode, "event") == 0      ? TERN_PROGRESS_EVENT
		     : strcmp(c.mode, "adaptive") == 0 ? TERN_PROGRESS_ADAPTIVE
						       : TERN_PROGRESS_BUSY;
	if ((strcmp(c.transport, "shm") && strcmp(c.transport, "tcp")) || c.iters <= 0 ||
	    c.warmup < 0 || c.inflight < 1 || c.inflight > 4096 ||
	    (c.progress == TERN_PROGRESS_BUSY && strcmp(c.mode, "busy"))) {
		usage(stderr);
		return 2;
	}
	for (int i = 0; i < c.nsizes; i++)
		max = c.sizes[i] > max ? c.sizes[i] : max;
	c.slot_size = (uint32_t)((max + 32 + 63) & ~(size_t)63);
	if (c.slot_size < 1024)
		c.slot_size = 1024;
	c.slot_count = c.inflight > 32 ? (uint32_t)c.inflight : 32;

	if (c.one_cpu) {
		cpu_set_t one;

		/* before the fork: the server inherits it */
		CPU_ZERO(&one);
		CPU_SET(0, &one);
		if (sched_setaffinity(0, sizeof(one), &one)) {
			perror("tern_local_bench: sched_setaffinity");
			return 1;
		}
	}
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(pfd[0]);
		_exit(serve(&c, pfd[1]));
	}
	close(pfd[1]);
	fp = fdopen(pfd[0], "r");
	if (!fp || !fgets(uri, sizeof(uri), fp)) {
		fprintf(stderr, "tern_local_bench: the server did not start\n");
		waitpid(pid, &st, 0);
		return 1;
	}
	fclose(fp);
	uri[strcspn(uri, "\n")] = 0;
	rc = client(&c, uri);
	if (rc)
		kill(pid, SIGKILL);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		rc = 1;
	return rc;
}
