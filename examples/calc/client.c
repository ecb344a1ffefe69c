// SPDX-License-Identifier: MIT
/*
 * calc_client - call the Calc service of calc.tern.
 *
 *   calc_client rdma://10.0.0.1:7000
 *
 * One synchronous add, eight asynchronous ones in flight at once, an add
 * the server refuses, and the deferred stats.  Exits 0 when every answer
 * is what it should be.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <tern.h>

#include "calc.tern.h"

#define NASYNC 8

struct adds {
	int done;
	int failed;
	int64_t sum_of_sums;
	int status;    /* of the last failure */
	char why[208]; /* and the server's message */
};

/* A typed callback: @resp is the reply, read where it lies in the slot. */
static void on_sum(tern_session *s, int status, const calc_AddResp *resp, const char *errmsg,
		   void *user)
{
	struct adds *a = user;

	(void)s;
	a->done++;
	if (status) {
		a->failed++;
		a->status = status;
		snprintf(a->why, sizeof(a->why), "%s", errmsg);
		return;
	}
	a->sum_of_sums += calc_AddResp_get_sum(resp);
}

static void run_until(tern_ctx *ctx, const int *done, int n)
{
	while (*done < n)
		tern_ctx_run(ctx, TERN_RUN_ONCE);
}

static int add_sync(tern_session *s, int64_t a, int64_t b, int64_t *sum)
{
	calc_AddReq req;
	calc_AddResp resp;
	int rc;

	calc_AddReq_set_a(&req, a);
	calc_AddReq_set_b(&req, b);
	rc = calc_add_sync(s, &req, &resp, 5000);
	if (rc == 0)
		*sum = calc_AddResp_get_sum(&resp);
	return rc;
}

int main(int argc, char **argv)
{
	struct tern_session_opts o = {.size = sizeof(o)};
	struct adds adds = {0};
	calc_Stats stats;
	int64_t sum, recent[CALC_STATS_RECENT_LEN];
	tern_session *s;
	tern_ctx *ctx;
	int rc, ok = 1;

	if (argc != 2) {
		fprintf(stderr, "usage: calc_client rdma://ADDRESS:PORT\n");
		return 2;
	}
	if ((rc = tern_ctx_create(NULL, &ctx))) {
		fprintf(stderr, "calc_client: %s\n", tern_strerror(rc));
		return 1;
	}
	/* Require Calc, with this schema, of the server: checked at connect. */
	calc_client_opts(&o);
	rc = tern_connect_sync(ctx, argv[1], &o, 0, &s);
	if (rc) {
		fprintf(stderr, "calc_client: connect %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(ctx) ? ": " : "", tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}

	rc = add_sync(s, 40, 2, &sum);
	printf("add(40, 2) = %" PRId64 "\n", rc ? 0 : sum);
	ok &= rc == 0 && sum == 42;

	for (int i = 1; i <= NASYNC; i++) {
		calc_AddReq req;

		calc_AddReq_set_a(&req, i);
		calc_AddReq_set_b(&req, 100 * i);
		/* The request is copied into a send slot before calc_add returns. */
		if ((rc = calc_add(s, &req, on_sum, &adds, NULL))) {
			fprintf(stderr, "calc_add: %s\n", tern_strerror(rc));
			adds.done++, adds.failed++;
		}
	}
	run_until(ctx, &adds.done, NASYNC);
	printf("%d async adds: sum of sums = %" PRId64 "\n", NASYNC, adds.sum_of_sums);
	ok &= adds.failed == 0 && adds.sum_of_sums == 101 * NASYNC * (NASYNC + 1) / 2;

	/* The server refuses this one; its message comes with the status. */
	{
		calc_AddReq req;
		struct adds bad = {0};

		calc_AddReq_set_a(&req, INT64_MAX);
		calc_AddReq_set_b(&req, 1);
		if (calc_add(s, &req, on_sum, &bad, NULL) == 0)
			run_until(ctx, &bad.done, 1);
		printf("add(INT64_MAX, 1) failed: %s: %s\n", tern_strerror(bad.status), bad.why);
		ok &= bad.status == -ERANGE;
	}

	rc = calc_stats_sync(s, NULL, 0, &stats, 5000);
	if (rc == 0) {
		calc_Stats_load_recent(&stats, recent);
		printf("stats: adds=%" PRIu64 " total=%" PRId64 " recent=[%" PRId64 " %" PRId64
		       " %" PRId64 " %" PRId64 "]\n",
		       calc_Stats_get_adds(&stats), calc_Stats_get_total(&stats), recent[0],
		       recent[1], recent[2], recent[3]);
	} else {
		printf("stats: %s\n", tern_strerror(rc));
	}
	ok &= rc == 0 && calc_Stats_get_adds(&stats) == NASYNC + 1;

	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	printf("%s\n", ok ? "calc_client: all answers right" : "calc_client: WRONG ANSWERS");
	return ok ? 0 : 1;
}
