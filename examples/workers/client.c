// SPDX-License-Identifier: MIT
/*
 * workers_client - call Workers.digest many times at once.
 *
 *   workers_client rdma://10.0.0.1:7000
 *
 * Keeps CALLS calls in flight on one session, so the server's pool works
 * on many at a time and its answers come back in any order, and checks
 * each digest against its own computation.  Exits 0 when all are right.
 */
#include <stdio.h>
#include <tern.h>

#include "workers.tern.h"
#include "digest.h"

#define CALLS  256
#define ROUNDS 20000

struct call {
	workers_DigestReq req; /* a queued call's request stays valid until its callback */
	uint64_t seed;
	int status;
	uint64_t digest;
	int done;
};

static int finished;

static void on_digest(tern_session *s, int status, const workers_DigestResp *resp,
		      const char *errmsg, void *user)
{
	struct call *c = user;

	(void)s, (void)errmsg;
	c->status = status;
	if (status == 0)
		c->digest = workers_DigestResp_get_digest(resp);
	c->done = 1;
	finished++;
}

int main(int argc, char **argv)
{
	struct tern_session_opts o = {.size = sizeof(o)};
	static struct call calls[CALLS];
	tern_session *s;
	tern_ctx *ctx;
	int rc, wrong = 0;

	if (argc != 2) {
		fprintf(stderr, "usage: workers_client rdma://ADDRESS:PORT\n");
		return 2;
	}
	if ((rc = tern_ctx_create(NULL, &ctx))) {
		fprintf(stderr, "workers_client: %s\n", tern_strerror(rc));
		return 1;
	}
	workers_client_opts(&o);
	if ((rc = tern_connect_sync(ctx, argv[1], &o, 0, &s))) {
		fprintf(stderr, "workers_client: connect %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(ctx) ? ": " : "", tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}
	for (int i = 0; i < CALLS; i++) {
		workers_DigestReq *req = &calls[i].req;

		calls[i].seed = 0x5eed0000u + (uint64_t)i * 7919;
		workers_DigestReq_set_seed(req, calls[i].seed);
		/* Uneven work, so the pool answers out of order. */
		workers_DigestReq_set_rounds(req, ROUNDS * (uint32_t)(1 + i % 7));
		/* More calls than the window: the session queues the rest. */
		if ((rc = workers_digest(s, req, on_digest, &calls[i], NULL))) {
			fprintf(stderr, "workers_client: call %d: %s\n", i, tern_strerror(rc));
			calls[i].done = 1, calls[i].status = rc, finished++;
		}
	}
	while (finished < CALLS)
		tern_ctx_run(ctx, TERN_RUN_ONCE);
	for (int i = 0; i < CALLS; i++) {
		uint64_t want =
			workers_digest_compute(calls[i].seed, ROUNDS * (uint32_t)(1 + i % 7));

		if (calls[i].status || calls[i].digest != want) {
			if (wrong++ < 5)
				fprintf(stderr,
					"workers_client: call %d: status %d, digest %llx, want "
					"%llx\n",
					i, calls[i].status, (unsigned long long)calls[i].digest,
					(unsigned long long)want);
		}
	}
	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	if (wrong)
		printf("workers_client: %d of %d digests WRONG\n", wrong, CALLS);
	else
		printf("workers_client: %d digests right\n", CALLS);
	return wrong ? 1 : 0;
}
