// SPDX-License-Identifier: MIT
/*
 * tern_bench - tern echo latency and rate between two processes.
 *
 * The parent serves, a forked child calls (fork happens before either side
 * touches verbs).  For each handler kind, size and depth the client keeps
 * INFLIGHT calls outstanding, times every call from issue to completion,
 * and reports p50/p99 and calls per second as one JSON object per line.
 *
 *   raw:     the client copies its request into a slot (tern_call); the
 *            server's raw handler returns the request bytes, which the
 *            runtime copies once into a reply slot.
 *   inplace: the client builds its request in the send slot
 *            (tern_call_acquire/commit) and the server's inplace handler
 *            writes the reply straight into its send slot: no copy by tern.
 *
 * Both sides busy-poll, like the raw verbs baseline (bench/verbs_pingpong).
 * With --baseline FILE (that program's JSON lines) each line also carries
 * the baseline's p50 at the same size and depth, and the ratio.  Each line
 * ends with what the client context's own metrics recorded for the run's
 * method ("metrics": bench/mx.h), which must match the calls it made.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tern.h>

#include "mx.h"
#include "stats.h"
#include "verbs_pair.h"

#define M_RAW	  1
#define M_INPLACE 2
#define MAX_SIZES 16

struct cfg {
	size_t sizes[MAX_SIZES];
	int nsizes;
	int depths[4];
	int ndepths;
	long iters;
	long warmup;
	const char *addr;
	const char *baseline;
	const char *transport;
	uint32_t slot_size;
};

/* ---- server ------------------------------------------------------------- */

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
	memcpy(out, in, n); /* the echo itself: the handler's work, not tern's */
	return (ssize_t)n;
}

static volatile int server_done;

static void server_session_closed(tern_session *s, int reason)
{
	(void)s, (void)reason;
	server_done = 1;
}

static int run_server(const struct cfg *c, int port_fd)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = c->slot_size, .on_close = server_session_closed};
	char uri[128];
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	snprintf(uri, sizeof(uri), "%s://%s:0", c->transport, c->addr);
	if ((rc = tern_ctx_create(&co, &ctx)) ||
	    (rc = tern_register_raw(ctx, M_RAW, raw_echo, NULL)) ||
	    (rc = tern_register_inplace(ctx, M_INPLACE, inplace_echo, NULL)) ||
	    (rc = tern_listen(ctx, uri, &so, NULL, &l))) {
		fprintf(stderr, "tern_bench server: %s: %s\n", tern_strerror(rc),
			tern_ctx_last_error(ctx));
		return 1;
	}
	snprintf(uri, sizeof(uri), "%s", tern_listener_uri(l));
	if (write(port_fd, uri, sizeof(uri)) != (ssize_t)sizeof(uri))
		return 1;
	close(port_fd);
	while (!server_done)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	tern_ctx_destroy(ctx);
	return 0;
}

/* ---- client ------------------------------------------------------------- */

struct run {
	tern_session *s;
	size_t size;
	int inplace;
	long total, issued, done, errors;
	double *t_issue; /* per call, indexed by sequence */
	double *lat;	 /* latencies of timed calls */
	long warmup;
	uint8_t *payload;
};

static void bench_cb(tern_session *s, int status, const void *reply, size_t len, void *user);

static int issue(struct run *r)
{
	long seq = r->issued;
	int rc;

	r->t_issue[seq] = bench_now_us();
	if (r->inplace) {
		tern_callslot *cs;
		void *buf;
		size_t cap;

		rc = tern_call_acquire(r->s, &buf, &cap, &cs);
		if (rc)
			return rc;
		/* the request is built in the slot; here: its sequence number */
		if (r->size >= sizeof(seq))
			memcpy(buf, &seq, sizeof(seq));
		rc = tern_call_commit(cs, M_INPLACE, r->size, bench_cb, r, NULL);
	} else {
		if (r->size >= sizeof(seq))
			memcpy(r->payload, &seq, sizeof(seq));
		rc = tern_call(r->s, M_RAW, r->payload, r->size, bench_cb, r, NULL);
	}
	if (rc == 0)
		r->issued++;
	return rc;
}

static void bench_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct run *r = user;
	long seq = r->done;

	(void)s;
	if (status || len != r->size) {
		r->errors++;
	} else if (r->size >= sizeof(seq)) {
		memcpy(&seq, reply, sizeof(seq));
		if (seq < 0 || seq >= r->total)
			r->errors++;
	}
	if (seq >= r->warmup && seq < r->total && !r->errors)
		r->lat[seq - r->warmup] = bench_now_us() - r->t_issue[seq];
	r->done++;
}

static double baseline_p50(const struct cfg *c, size_t size, int depth)
{
	char line[1024], want[32];
	double best = 0;
	FILE *fp;

	if (!c->baseline || !(fp = fopen(c->baseline, "r")))
		return 0;
	/* the line of this size measured at the same depth: like with like */
	snprintf(want, sizeof(want), "\"inflight\":%d,", depth);
	while (fgets(line, sizeof(line), fp)) {
		char *p = strstr(line, "\"size\":"), *q = strstr(line, "\"p50_us\":");
		if (p && q && strtoull(p + 7, NULL, 10) == size && strstr(line, want))
			best = strtod(q + 9, NULL);
	}
	fclose(fp);
	return best;
}

static int run_client(const struct cfg *c, const char *uri)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = c->slot_size, .nonblock = 1};
	long total = c->iters + c->warmup;
	struct run r = {0};
	tern_ctx *ctx;
	int rc;

	/* metrics on whatever TERN_METRICS says: the lines report them */
	if ((rc = tern_ctx_create(&co, &ctx)) || (rc = tern_ctx_metrics_enable(ctx, 1)) ||
	    (rc = tern_connect_sync(ctx, uri, &so, 10000, &r.s))) {
		fprintf(stderr, "tern_bench client: %s: %s\n", tern_strerror(rc),
			tern_ctx_last_error(ctx));
		return 1;
	}
	r.t_issue = calloc((size_t)total, sizeof(double));
	r.lat = calloc((size_t)c->iters, sizeof(double));
	r.payload = calloc(1, tern_session_max_payload(r.s));
	for (int inplace = 0; inplace <= 1; inplace++) {
		for (int si = 0; si < c->nsizes; si++) {
			double rate1 = 0;
			for (int di = 0; di < c->ndepths; di++) {
				int depth = c->depths[di];
				struct tern_method_stats mx0, mx1, mx;
				struct bench_stats st;
				double t0 = 0, base;

				r.size = c->sizes[si];
				if (r.size > tern_session_max_payload(r.s))
					r.size = tern_session_max_payload(r.s);
				r.inplace = inplace;
				r.total = total;
				r.warmup = c->warmup;
				r.issued = r.done = r.errors = 0;
				if (bench_mx_get(ctx, TERN_METRICS_ISSUED,
						 inplace ? M_INPLACE : M_RAW, &mx0))
					return 1;
				while (r.done < total) {
					while (r.issued < total && r.issued - r.done < depth)
						if (issue(&r))
							break;
					tern_ctx_poll(ctx, 64);
				}
				/* timed from the first timed call's issue to the last completion */
				t0 = r.t_issue[c->warmup];
				if (r.errors) {
					fprintf(stderr,
						"tern_bench: %ld calls failed or came back wrong\n",
						r.errors);
					return 1;
				}
				bench_stats_compute(&st, r.lat, (size_t)c->iters,
						    bench_now_us() - t0);
				/* tern's count of this run's calls, warm-up included */
				if (bench_mx_get(ctx, TERN_METRICS_ISSUED,
						 inplace ? M_INPLACE : M_RAW, &mx1))
					return 1;
				bench_mx_diff(&mx, &mx1, &mx0);
				if (depth == 1)
					rate1 = st.rate_per_s;
				base = baseline_p50(c, r.size, depth);
				printf("{\"bench\":\"tern_echo\",\"transport\":\"%s\",\"mode\":"
				       "\"busy\","
				       "\"kind\":\"%s\",\"size\":%zu,\"inflight\":%d,\"iters\":%ld,"
				       "\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,"
				       "\"rate_per_s\":%.0f,"
				       "\"baseline_p50_us\":%.2f,\"ratio\":%.3f,"
				       "\"rate_vs_inflight1\":%.2f",
				       c->transport, inplace ? "inplace" : "raw", r.size, depth,
				       c->iters, st.p50_us, st.p99_us, st.mean_us, st.rate_per_s,
				       base, base > 0 ? st.p50_us / base : 0,
				       rate1 > 0 ? st.rate_per_s / rate1 : 0);
				rc = bench_mx_print(stdout, "metrics", "tern_bench", &mx,
						    (uint64_t)r.done, (uint64_t)r.errors);
				printf("}\n");
				fflush(stdout);
				if (rc)
					return 1;
			}
		}
	}
	free(r.t_issue);
	free(r.lat);
	free(r.payload);
	tern_session_close(r.s, NULL);
	tern_ctx_destroy(ctx);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: tern_bench [--sizes 32,256,1K,4K,8160] [--depths 1,16] [--iters N]\n"
		   "                  [--warmup N] [--addr IP] [--slot-size B] [--baseline FILE]\n"
		   "tern echo between two processes over rdma://; JSON lines on stdout.\n"
		   "Exits 77 when there is no verbs device.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"depths", required_argument, 0, 'd'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"addr", required_argument, 0, 'a'},
		{"baseline", required_argument, 0, 'b'},
		{"slot-size", required_argument, 0, 'S'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	struct cfg c = {
		.sizes = {32, 256, 1024, 4096, 8160},
		.nsizes = 5,
		.depths = {1, 16},
		.ndepths = 2,
		.iters = 2000,
		.warmup = 200,
		.transport = "rdma",
		.slot_size = 8192,
	};
	size_t depths[4];
	char addr[64], uri[128];
	int ch, pfd[2], st, rc, nd;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:d:n:w:a:b:S:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, c.sizes, MAX_SIZES, &c.nsizes))
				goto bad;
			break;
		case 'd':
			if (bench_parse_sizes(optarg, depths, 4, &nd))
				goto bad;
			c.ndepths = nd;
			for (int i = 0; i < nd; i++)
				c.depths[i] = (int)depths[i];
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'a':
			c.addr = optarg;
			break;
		case 'b':
			c.baseline = optarg;
			break;
		case 'S':
			c.slot_size = (uint32_t)atol(optarg);
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			goto bad;
		}
	}
	if (c.iters <= 0 || c.warmup < 0)
		goto bad;
	for (int i = 0; i < c.ndepths; i++)
		if (c.depths[i] < 1)
			goto bad;
	/* The address probe opens verbs: do it in a child, before the fork
	 * that splits client and server. */
	if (!c.addr) {
		if (pipe(pfd))
			return 1;
		pid = fork();
		if (pid == 0) {
			close(pfd[0]);
			rc = vp_find_addr(addr, sizeof(addr));
			if (rc == 0 && write(pfd[1], addr, sizeof(addr)) != (ssize_t)sizeof(addr))
				rc = -EIO;
			_exit(rc ? VP_EXIT_SKIP : 0);
		}
		close(pfd[1]);
		if (read(pfd[0], addr, sizeof(addr)) != (ssize_t)sizeof(addr)) {
			waitpid(pid, &st, 0);
			fprintf(stderr, "tern_bench: no RDMA device with an IPv4 address\n");
			return VP_EXIT_SKIP;
		}
		close(pfd[0]);
		waitpid(pid, &st, 0);
		c.addr = addr;
	}
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(pfd[0]);
		_exit(run_server(&c, pfd[1]));
	}
	close(pfd[1]);
	if (read(pfd[0], uri, sizeof(uri)) != (ssize_t)sizeof(uri)) {
		waitpid(pid, &st, 0);
		fprintf(stderr, "tern_bench: the server did not start\n");
		return 1;
	}
	close(pfd[0]);
	rc = run_client(&c, uri);
	if (rc)
		kill(pid, SIGKILL);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		rc = 1;
	return rc;
bad:
	usage(stderr);
	return 2;
}
