// SPDX-License-Identifier: MIT
/*
 * verbs_export_cost - what scoping one export to its call costs on this
 * device, per call, in raw verbs (the work transport/verbs/verbs.c adds to
 * a large call; docs/transports-verbs-security.md):
 *
 *   window:   bind a type 2 memory window over the range of a registration
 *             (IBV_WR_BIND_MW, unsignaled), invalidate it (IBV_WR_LOCAL_INV,
 *             signalled) and wait for that: hardware with memory windows;
 *   exact:    the same over a registration of just the range, registered
 *             and deregistered per call: what tern does on rxe, whose
 *             windows are bounded only by their registration;
 *   register: a registration of just the range with remote write access,
 *             deregistered per call: devices without memory windows;
 *   window-dealloc, exact-dealloc: window and exact as tern does them
 *             since an invalidation may not wait behind the send queue: a
 *             window allocated per export, bound (signalled here, and
 *             waited for: in tern the call's round trip covers the bind),
 *             and deallocated, which ends it at once.
 *
 * One JSON line per mode and size: p50/p99 microseconds per export.
 * Divide by a large call's latency (bench/tern_bw) for the share.
 */
#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"
#include "verbs_pair.h"

#define MAX_SIZES 8

enum mode { M_WINDOW, M_EXACT, M_REGISTER, M_WINDOW_DEALLOC, M_EXACT_DEALLOC };
static const char *const mode_names[] = {"window", "exact", "register", "window-dealloc",
					 "exact-dealloc"};

struct pair {
	struct vp_listener l;
	struct vp_endpoint srv, cli;
	int accept_rc;
};

static void *accept_thread(void *arg)
{
	struct pair *p = arg;

	p->accept_rc = vp_accept(&p->l, &p->srv, 4, 4096);
	return NULL;
}

/* One export of [region + 1, + len) and its end, as @mode does it. */
static int export_once(struct pair *p, enum mode mode, struct ibv_mr *region_mr, struct ibv_mw *mw,
		       char *region, size_t len)
{
	bool dealloc = mode == M_WINDOW_DEALLOC || mode == M_EXACT_DEALLOC;
	bool exact = mode == M_EXACT || mode == M_EXACT_DEALLOC;
	struct ibv_mr *mr = region_mr;
	struct ibv_wc wc;
	int rc = 0;

	if (mode != M_WINDOW && mode != M_WINDOW_DEALLOC) {
		mr = ibv_reg_mr(p->cli.pd, region + 1, len,
				IBV_ACCESS_LOCAL_WRITE |
					(exact ? IBV_ACCESS_MW_BIND : IBV_ACCESS_REMOTE_WRITE));
		if (!mr)
			return -errno;
	}
	if (dealloc) {
		struct ibv_mw *w = ibv_alloc_mw(p->cli.pd, IBV_MW_TYPE_2);
		struct ibv_send_wr bind = {
			.wr_id = 1, .opcode = IBV_WR_BIND_MW, .send_flags = IBV_SEND_SIGNALED};
		struct ibv_send_wr *bad;

		if (!w) {
			rc = -errno;
		} else {
			bind.bind_mw.mw = w;
			bind.bind_mw.rkey = ibv_inc_rkey(w->rkey);
			bind.bind_mw.bind_info.mr = mr;
			bind.bind_mw.bind_info.addr = (uintptr_t)region + 1;
			bind.bind_mw.bind_info.length = len;
			bind.bind_mw.bind_info.mw_access_flags = IBV_ACCESS_REMOTE_WRITE;
			if ((rc = ibv_post_send(p->cli.id->qp, &bind, &bad)))
				rc = -rc;
			else if (vp_poll_one(&p->cli, &wc, 5000) != 1 ||
				 wc.status != IBV_WC_SUCCESS)
				rc = -EIO;
			ibv_dealloc_mw(w);
		}
	} else if (mode != M_REGISTER) {
		uint32_t key = ibv_inc_rkey(mw->rkey);
		struct ibv_send_wr bind = {.wr_id = 1, .opcode = IBV_WR_BIND_MW};
		struct ibv_send_wr inv = {
			.wr_id = 2, .opcode = IBV_WR_LOCAL_INV, .send_flags = IBV_SEND_SIGNALED};
		struct ibv_send_wr *bad;

		bind.bind_mw.mw = mw;
		bind.bind_mw.rkey = key;
		bind.bind_mw.bind_info.mr = mr;
		bind.bind_mw.bind_info.addr = (uintptr_t)region + 1;
		bind.bind_mw.bind_info.length = len;
		bind.bind_mw.bind_info.mw_access_flags = IBV_ACCESS_REMOTE_WRITE;
		inv.invalidate_rkey = key;
		if ((rc = ibv_post_send(p->cli.id->qp, &bind, &bad)) ||
		    (rc = ibv_post_send(p->cli.id->qp, &inv, &bad)))
			rc = -rc;
		else
			mw->rkey = key;
		if (!rc && (vp_poll_one(&p->cli, &wc, 5000) != 1 || wc.status != IBV_WC_SUCCESS))
			rc = -EIO;
	}
	if (mr != region_mr)
		ibv_dereg_mr(mr);
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	size_t sizes[MAX_SIZES] = {16 << 10, 1 << 20}, max = 0;
	int nsizes = 2, iters = 2000, ch;
	struct pair p;
	struct vp_opts o;
	struct ibv_mr *region_mr;
	struct ibv_mw *mw;
	pthread_t t;
	double *lat;

	while ((ch = getopt_long(argc, argv, "s:n:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, sizes, MAX_SIZES, &nsizes))
				return 2;
			break;
		case 'n':
			iters = atoi(optarg);
			break;
		default:
			fprintf(stderr, "usage: verbs_export_cost [--sizes 16K,1M] [--iters N]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (iters <= 0)
		return 2;
	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > max)
			max = sizes[i];
	memset(&p, 0, sizeof(p));
	vp_opts_init(&o);
	o.buf_len = max + 4096;
	if (vp_listen(&o, &p.l)) {
		fprintf(stderr, "verbs_export_cost: no RDMA device with an IPv4 address\n");
		return VP_EXIT_SKIP;
	}
	o.port = p.l.port;
	pthread_create(&t, NULL, accept_thread, &p);
	if (vp_connect(&o, &p.cli, 4, 4096)) {
		fprintf(stderr, "verbs_export_cost: cannot connect\n");
		return 1;
	}
	pthread_join(t, NULL);
	if (p.accept_rc)
		return 1;
	region_mr = ibv_reg_mr(p.cli.pd, p.cli.buf, o.buf_len,
			       IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_MW_BIND);
	mw = ibv_alloc_mw(p.cli.pd, IBV_MW_TYPE_2);
	lat = calloc((size_t)iters, sizeof(*lat));
	if (!region_mr || !mw || !lat) {
		fprintf(stderr, "verbs_export_cost: this device has no memory windows\n");
		return VP_EXIT_SKIP;
	}
	for (int si = 0; si < nsizes; si++) {
		for (int m = M_WINDOW; m <= M_EXACT_DEALLOC; m++) {
			struct bench_stats st;
			double t_begin = bench_now_us();

			for (int i = 0; i < iters; i++) {
				double t0 = bench_now_us();
				int rc = export_once(&p, (enum mode)m, region_mr, mw, p.cli.buf,
						     sizes[si]);

				if (rc) {
					fprintf(stderr, "verbs_export_cost: %s: %s\n",
						mode_names[m], strerror(-rc));
					return 1;
				}
				lat[i] = bench_now_us() - t0;
			}
			bench_stats_compute(&st, lat, (size_t)iters, bench_now_us() - t_begin);
			printf("{\"bench\":\"verbs_export_cost\",\"mode\":\"%s\",\"size\":%zu,"
			       "\"iters\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,\"mean_us\":%.1f}\n",
			       mode_names[m], sizes[si], iters, st.p50_us, st.p99_us, st.mean_us);
			fflush(stdout);
		}
	}
	free(lat);
	ibv_dealloc_mw(mw);
	ibv_dereg_mr(region_mr);
	vp_endpoint_close(&p.cli);
	vp_endpoint_close(&p.srv);
	vp_listener_close(&p.l);
	return 0;
}
