// SPDX-License-Identifier: MIT
/*
 * verbs_pingpong - the raw-verbs RC ping-pong floor tern is measured against.
 *
 * Two processes (the parent listens, a forked child connects) on one verbs
 * device, each busy-polling its own CQ.  The client sends SIZE bytes, the
 * server answers with SIZE bytes, and the client times every round trip.
 * Small messages go inline when the device allows it and sends are signalled
 * every 16th post, as a well-written verbs program would; tern's own verbs
 * provider is held to the same rules, so the ratio is fair.
 *
 * Output: one JSON object per size, the same keys as tern's benchmarks.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "verbs_pair.h"
#include "stats.h"

#define NRECV	     64 /* receives posted per side (the QP's 64): --depth up to 32 */
#define SIGNAL_EVERY 16

struct rendezvous {
	char addr[64];
	uint16_t port;
	int skip;
};

struct cfg {
	size_t sizes[16];
	int nsizes;
	int depth; /* messages kept in flight by the client (1: ping-pong) */
	long iters;
	long warmup;
	const char *addr;
};

static size_t max_size(const struct cfg *c)
{
	size_t m = 0;
	for (int i = 0; i < c->nsizes; i++)
		if (c->sizes[i] > m)
			m = c->sizes[i];
	return m ? m : 1;
}

/* Poll until at least one message arrived; re-post its receive; return how many. */
static int wait_recv(struct vp_endpoint *ep, size_t slot_len, long *unsignaled)
{
	struct ibv_wc wc[8];
	int recvs = 0;

	while (!recvs) {
		int n = ibv_poll_cq(ep->cq, 8, wc);
		if (n < 0)
			return -EIO;
		for (int i = 0; i < n; i++) {
			if (wc[i].status != IBV_WC_SUCCESS) {
				fprintf(stderr, "verbs_pingpong: completion error %s\n",
					ibv_wc_status_str(wc[i].status));
				return -EIO;
			}
			if (wc[i].opcode == IBV_WC_SEND) {
				*unsignaled = 0;
				continue;
			}
			/* recv: give the slot straight back */
			if (vp_post_recv(ep, wc[i].wr_id * slot_len, slot_len, wc[i].wr_id))
				return -EIO;
			recvs++;
		}
	}
	return recvs;
}

static int send_one(struct vp_endpoint *ep, size_t off, size_t len, long *unsignaled)
{
	int flags = 0;

	if (len <= ep->max_inline)
		flags |= IBV_SEND_INLINE;
	if (++*unsignaled >= SIGNAL_EVERY)
		flags |= IBV_SEND_SIGNALED;
	return vp_post_send(ep, off, len, 0, flags);
}

static int run_server(struct vp_listener *l, const struct cfg *c)
{
	struct vp_endpoint ep;
	size_t slot = max_size(c);
	long unsig = 0;
	int rc;

	if ((rc = vp_accept(l, &ep, NRECV, slot))) {
		fprintf(stderr, "verbs_pingpong: accept: %s\n", strerror(-rc));
		return 1;
	}
	for (int s = 0; s < c->nsizes; s++) {
		for (long i = 0; i < c->iters + c->warmup;) {
			int n = wait_recv(&ep, slot, &unsig);

			if (n < 0)
				goto fail;
			/* echo every message that arrived */
			for (; n > 0; n--, i++)
				if (send_one(&ep, NRECV * slot, c->sizes[s], &unsig))
					goto fail;
		}
	}
	/* Let the last reply's ACK go out before we tear the QP down. */
	usleep(100000);
	vp_endpoint_close(&ep);
	return 0;
fail:
	fprintf(stderr, "verbs_pingpong: server failed\n");
	return 1;
}

static int run_client(const struct cfg *c, uint16_t port)
{
	struct vp_opts o;
	struct vp_endpoint ep;
	size_t slot = max_size(c);
	double *lat = calloc((size_t)c->iters, sizeof(double));
	double *t_sent = calloc((size_t)(c->iters + c->warmup), sizeof(double));
	long unsig = 0;
	int rc;

	vp_opts_init(&o);
	o.addr = c->addr;
	o.port = port;
	o.buf_len = (NRECV + 1) * slot;
	o.max_inline = 512; /* as much as tern's verbs provider asks for */
	/* The listener may still be setting up; retry briefly. */
	for (int tries = 0;; tries++) {
		rc = vp_connect(&o, &ep, NRECV, slot);
		if (rc == 0 || tries == 50)
			break;
		vp_endpoint_close(&ep);
		usleep(100000);
	}
	if (rc) {
		fprintf(stderr, "verbs_pingpong: connect: %s\n", strerror(-rc));
		return 1;
	}
	for (int s = 0; s < c->nsizes; s++) {
		size_t len = c->sizes[s];
		struct bench_stats st;
		double t_begin = 0;

		long total = c->iters + c->warmup, sent = 0, got = 0;

		/* Keep depth messages in flight; RC delivers in order, so the
		 * k-th reply answers the k-th request. */
		while (got < total) {
			while (sent < total && sent - got < c->depth) {
				t_sent[sent] = bench_now_us();
				if (send_one(&ep, NRECV * slot, len, &unsig)) {
					fprintf(stderr, "verbs_pingpong: client failed\n");
					return 1;
				}
				sent++;
			}
			int n = wait_recv(&ep, slot, &unsig);

			if (n < 0) {
				fprintf(stderr, "verbs_pingpong: client failed\n");
				return 1;
			}
			for (; n > 0; n--, got++)
				if (got >= c->warmup)
					lat[got - c->warmup] = bench_now_us() - t_sent[got];
		}
		t_begin = t_sent[c->warmup];
		bench_stats_compute(&st, lat, (size_t)c->iters, bench_now_us() - t_begin);
		printf("{\"bench\":\"verbs_pingpong\",\"transport\":\"rdma\",\"mode\":\"busy\","
		       "\"kind\":\"baseline\",\"size\":%zu,\"inflight\":%d,\"iters\":%ld,"
		       "\"p50_us\":%.2f,\"p99_us\":%.2f,\"mean_us\":%.2f,\"rate_per_s\":%.0f}\n",
		       len, c->depth, c->iters, st.p50_us, st.p99_us, st.mean_us, st.rate_per_s);
		fflush(stdout);
	}
	vp_endpoint_close(&ep);
	free(lat);
	free(t_sent);
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: verbs_pingpong [--sizes 32,256,...] [--depth D] [--iters N] [--warmup N]\n"
		"                      [--addr IP]\n"
		"Raw verbs RC ping-pong between two processes (D messages in flight,\n"
		"default 1); JSON lines on stdout.\n"
		"Exits 77 when there is no verbs device.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"addr", required_argument, 0, 'a'},
		{"depth", required_argument, 0, 'd'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	struct cfg c = {.sizes = {32, 256, 1024, 4096},
			.nsizes = 4,
			.depth = 1,
			.iters = 2000,
			.warmup = 200};
	struct vp_listener l;
	struct vp_opts o;
	char addr[64];
	struct rendezvous rvp;
	int ch, rc, status, pfd[2];
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:w:a:d:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, c.sizes, 16, &c.nsizes)) {
				fprintf(stderr, "verbs_pingpong: bad --sizes '%s'\n", optarg);
				return 2;
			}
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'd':
			c.depth = atoi(optarg);
			break;
		case 'a':
			c.addr = optarg;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (c.iters <= 0 || c.warmup < 0 || c.depth < 1 || c.depth > NRECV / 2) {
		fprintf(stderr,
			"verbs_pingpong: --iters must be > 0, --warmup >= 0, "
			"--depth 1..%d\n",
			NRECV / 2);
		return 2;
	}
	/*
	 * Fork before either side touches libibverbs or librdmacm: a verbs
	 * context must not be shared across fork.  The parent listens and
	 * tells the child the address and port through a pipe.
	 */
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		struct rendezvous rv;
		close(pfd[1]);
		if (read(pfd[0], &rv, sizeof(rv)) != (ssize_t)sizeof(rv) || rv.port == 0)
			_exit(rv.port == 0 && rv.skip ? VP_EXIT_SKIP : 1);
		c.addr = rv.addr;
		_exit(run_client(&c, rv.port));
	}
	close(pfd[0]);
	memset(&rvp, 0, sizeof(rvp));
	if (!c.addr) {
		if (vp_find_addr(addr, sizeof(addr))) {
			fprintf(stderr, "verbs_pingpong: no RDMA device with an IPv4 address\n");
			rvp.skip = 1;
			(void)!write(pfd[1], &rvp, sizeof(rvp));
			waitpid(pid, &status, 0);
			return VP_EXIT_SKIP;
		}
		c.addr = addr;
	}
	vp_opts_init(&o);
	o.addr = c.addr;
	o.buf_len = (NRECV + 1) * max_size(&c);
	o.max_inline = 512;
	if ((rc = vp_listen(&o, &l))) {
		fprintf(stderr, "verbs_pingpong: listen on %s: %s\n", c.addr, strerror(-rc));
		(void)!write(pfd[1], &rvp, sizeof(rvp));
		waitpid(pid, &status, 0);
		return 1;
	}
	snprintf(rvp.addr, sizeof(rvp.addr), "%s", c.addr);
	rvp.port = l.port;
	if (write(pfd[1], &rvp, sizeof(rvp)) != (ssize_t)sizeof(rvp))
		return 1;
	close(pfd[1]);
	rc = run_server(&l, &c);
	vp_listener_close(&l);
	if (rc)
		kill(pid, SIGKILL);
	if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status))
		rc = 1;
	return rc;
}
