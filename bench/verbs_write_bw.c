// SPDX-License-Identifier: MIT
/*
 * verbs_write_bw - raw RDMA WRITE bandwidth, the floor for tern's large
 * messages.
 *
 * Two processes on one verbs device (the parent listens, a forked child
 * connects).  The server registers a buffer and sends its address and key;
 * the client registers its own and RDMA WRITEs SIZE bytes into the server's,
 * one transfer at a time (each cut into work requests of the port's largest
 * message, the last signalled), and times each.  One transfer in flight, as
 * tern's bench/tern_bw measures one call in flight.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"
#include "verbs_pair.h"

#define MAX_SIZES 16

struct desc {
	uint64_t addr;
	uint32_t rkey;
	uint32_t pad;
};

static size_t max_of(const size_t *v, int n)
{
	size_t m = 0;
	for (int i = 0; i < n; i++)
		if (v[i] > m)
			m = v[i];
	return m;
}

static int server(struct vp_listener *l)
{
	struct vp_endpoint ep;
	struct ibv_wc wc;
	struct desc d;
	int rc;

	/* receive 1 (the client's "done") lives past the buffer's first 64 bytes */
	if ((rc = vp_accept(l, &ep, 0, 64)))
		return 1;
	if (vp_post_recv(&ep, 0, 64, 1))
		return 1;
	d.addr = (uintptr_t)ep.buf;
	d.rkey = ep.mr->rkey;
	memcpy(ep.buf + 64, &d, sizeof(d));
	if (vp_post_send(&ep, 64, sizeof(d), 2, IBV_SEND_SIGNALED) ||
	    vp_poll_one(&ep, &wc, 30000) != 1 || wc.status != IBV_WC_SUCCESS)
		return 1;
	/* wait for "done" */
	if (vp_poll_one(&ep, &wc, 3600 * 1000) != 1 || wc.status != IBV_WC_SUCCESS)
		return 1;
	vp_endpoint_close(&ep);
	return 0;
}

static int client(const char *addr, uint16_t port, size_t buf, const size_t *sizes, int nsizes,
		  int iters, int read_op)
{
	struct vp_opts o;
	struct vp_endpoint ep;
	struct ibv_port_attr pa;
	struct ibv_wc wc;
	struct desc d;
	uint64_t chunk;
	int rc;

	vp_opts_init(&o);
	o.addr = addr;
	o.port = port;
	o.buf_len = buf;
	o.max_send_wr = 256;
	for (int tries = 0;; tries++) {
		rc = vp_connect(&o, &ep, 1, 64);
		if (rc == 0 || tries == 50)
			break;
		vp_endpoint_close(&ep);
		usleep(100000);
	}
	if (rc || vp_poll_one(&ep, &wc, 30000) != 1 || wc.status != IBV_WC_SUCCESS)
		return 1;
	memcpy(&d, ep.buf, sizeof(d));
	if (ibv_query_port(ep.id->verbs, ep.id->port_num, &pa))
		return 1;
	chunk = pa.max_msg_sz;
	memset(ep.buf, 0x5a, buf);
	for (int s = 0; s < nsizes; s++) {
		size_t len = sizes[s];
		double *lat = calloc((size_t)iters, sizeof(double)), t_begin = 0;
		struct bench_stats st;
		int warm = 1;

		for (int i = -warm; i < iters; i++) {
			double t0 = bench_now_us();
			size_t at = 0;

			if (i == 0)
				t_begin = t0;
			while (at < len) {
				size_t this = len - at < chunk ? len - at : chunk;
				int last = at + this == len;
				rc = vp_post_rdma(
					&ep, read_op ? IBV_WR_RDMA_READ : IBV_WR_RDMA_WRITE, at,
					this, d.addr + at, d.rkey, 7, last ? IBV_SEND_SIGNALED : 0);
				if (rc)
					return 1;
				at += this;
			}
			if (vp_poll_one(&ep, &wc, 600000) != 1 || wc.status != IBV_WC_SUCCESS) {
				fprintf(stderr, "verbs_write_bw: write failed\n");
				return 1;
			}
			if (i >= 0)
				lat[i] = bench_now_us() - t0;
		}
		bench_stats_compute(&st, lat, (size_t)iters, bench_now_us() - t_begin);
		printf("{\"bench\":\"verbs_%s_bw\",\"transport\":\"rdma\",\"mode\":\"busy\","
		       "\"kind\":\"baseline\",\"size\":%zu,\"inflight\":1,\"iters\":%d,"
		       "\"p50_us\":%.1f,\"p99_us\":%.1f,\"gb_per_s\":%.3f}\n",
		       read_op ? "read" : "write", len, iters, st.p50_us, st.p99_us,
		       (double)len / st.p50_us / 1e3);
		fflush(stdout);
		free(lat);
	}
	/* tell the server we are done */
	vp_post_send(&ep, 0, 1, 9, IBV_SEND_SIGNALED);
	vp_poll_one(&ep, &wc, 10000);
	vp_endpoint_close(&ep);
	return 0;
}

struct rendezvous {
	char addr[64];
	uint16_t port;
};

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"read", no_argument, 0, 'r'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	size_t sizes[MAX_SIZES] = {64 << 10, 1 << 20, 16 << 20, 256 << 20};
	int nsizes = 4, iters = 5, read_op = 0, ch, pfd[2], st, rc;
	struct rendezvous rv = {0};
	struct vp_listener l;
	struct vp_opts o;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:rh", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, sizes, MAX_SIZES, &nsizes))
				return 2;
			break;
		case 'n':
			iters = atoi(optarg);
			break;
		case 'r':
			read_op = 1;
			break;
		default:
			fprintf(stderr, "usage: verbs_write_bw [--sizes 64K,1M,16M] [--iters N] "
					"[--read]\n"
					"(--read: RDMA READ from the server's buffer instead)\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (iters < 1)
		return 2;
	/* fork before either side touches verbs */
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(pfd[1]);
		if (read(pfd[0], &rv, sizeof(rv)) != (ssize_t)sizeof(rv) || !rv.port)
			_exit(VP_EXIT_SKIP);
		_exit(client(rv.addr, rv.port, max_of(sizes, nsizes), sizes, nsizes, iters,
			     read_op));
	}
	close(pfd[0]);
	if (vp_find_addr(rv.addr, sizeof(rv.addr))) {
		(void)!write(pfd[1], &rv, sizeof(rv));
		waitpid(pid, &st, 0);
		fprintf(stderr, "verbs_write_bw: no RDMA device with an IPv4 address\n");
		return VP_EXIT_SKIP;
	}
	vp_opts_init(&o);
	o.addr = rv.addr;
	o.buf_len = max_of(sizes, nsizes) + 4096;
	if ((rc = vp_listen(&o, &l)))
		return 1;
	rv.port = l.port;
	if (write(pfd[1], &rv, sizeof(rv)) != (ssize_t)sizeof(rv))
		return 1;
	rc = server(&l);
	vp_listener_close(&l);
	if (rc)
		kill(pid, SIGKILL);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		rc = 1;
	return rc;
}
