// SPDX-License-Identifier: MIT
/*
 * workers_server - serve Workers.digest from a pool of threads.
 *
 *   workers_server rdma://10.0.0.1:0 [THREADS]
 *
 * A tern context belongs to the one thread that runs it, so a handler
 * whose work is long must not do it there: it would stall every session
 * on the context.  Workers.digest is deferred: its handler copies the
 * request into a job and queues it for a pool of THREADS threads (default
 * 4); the thread that takes it computes the digest and hands the answer
 * back with tern_ctx_post(), the one tern call any thread may make.  The
 * posted function runs on the context's thread at its next turn, where it
 * writes the reply into the reply slot and sends it.
 *
 * Prints the URI it listens on (port 0 picks one) and serves until SIGINT
 * or SIGTERM; then lets the pool finish what it holds and answers what is
 * left with an error.
 */
#define _POSIX_C_SOURCE 200809L /* libuv's header under -std=c11 */

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <tern.h>
#include <uv.h>

#include "workers.tern.h"
#include "digest.h"

#define MAX_THREADS 64

struct job {
	struct job *next;
	tern_req *req; /* the context's: touched on its thread only */
	uint64_t seed;
	uint32_t rounds;
	uint64_t digest; /* the pool thread's result */
};

/* The queue from the context's thread to the pool. */
struct pool {
	pthread_mutex_t lock;
	pthread_cond_t cond;
	struct job *head, **tail;
	bool quit;
	tern_ctx *ctx;
};

/* On the context's thread (tern_ctx_post): send what the pool computed. */
static void answer(tern_ctx *ctx, void *arg, int status)
{
	struct job *j = arg;
	workers_DigestResp *out;
	int rc;

	(void)ctx;
	if (status) {
		/* -ECANCELED: the context is being destroyed; finish the request. */
		tern_reply_error(j->req, status, "the server is stopping");
	} else if ((rc = workers_digest_reply_acquire(j->req, &out))) {
		tern_reply_error(j->req, rc, NULL); /* the client went away */
	} else {
		workers_DigestResp_set_digest(out, j->digest);
		workers_digest_reply_commit(j->req);
	}
	free(j);
}

static void *pool_thread(void *arg)
{
	struct pool *p = arg;
	struct job *j;

	pthread_mutex_lock(&p->lock);
	for (;;) {
		while (!p->head && !p->quit)
			pthread_cond_wait(&p->cond, &p->lock);
		if (!p->head)
			break;
		j = p->head;
		p->head = j->next;
		if (!p->head)
			p->tail = &p->head;
		pthread_mutex_unlock(&p->lock);
		/* The slow part, off the context's thread. */
		j->digest = workers_digest_compute(j->seed, j->rounds);
		/* The context is destroyed only after the pool is joined. */
		if (tern_ctx_post(p->ctx, answer, j)) {
			/* -ENOMEM: the request cannot be answered from here. */
			fprintf(stderr, "workers_server: a reply was lost\n");
			free(j);
		}
		pthread_mutex_lock(&p->lock);
	}
	pthread_mutex_unlock(&p->lock);
	return NULL;
}

/* On the context's thread: queue the request for the pool, reply later. */
static int on_digest(tern_req *req, const workers_DigestReq *in, void *user)
{
	struct pool *p = user;
	struct job *j = malloc(sizeof(*j));

	if (!j)
		return -ENOMEM;
	j->next = NULL;
	j->req = req;
	j->seed = workers_DigestReq_get_seed(in);
	j->rounds = workers_DigestReq_get_rounds(in);
	if (j->rounds > WORKERS_MAX_ROUNDS) {
		free(j);
		return -EINVAL;
	}
	pthread_mutex_lock(&p->lock);
	*p->tail = j;
	p->tail = &j->next;
	pthread_cond_signal(&p->cond);
	pthread_mutex_unlock(&p->lock);
	return 0; /* answered later, by answer() */
}

static struct workers_handlers handlers = {
	.digest = on_digest,
};

static void on_signal(uv_signal_t *h, int signum)
{
	(void)signum;
	tern_ctx_stop(h->data);
}

int main(int argc, char **argv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_ADAPTIVE};
	struct pool pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
	pthread_t th[MAX_THREADS];
	uv_signal_t sigint, sigterm;
	int nthreads = argc > 2 ? atoi(argv[2]) : 4, started = 0;
	tern_listener *l;
	tern_ctx *ctx;
	struct job *j;
	int rc;

	if (argc < 2 || argc > 3 || nthreads < 1 || nthreads > MAX_THREADS) {
		fprintf(stderr, "usage: workers_server rdma://ADDRESS:PORT [THREADS (1-%d)]\n",
			MAX_THREADS);
		return 2;
	}
	if ((rc = tern_ctx_create(&co, &ctx))) {
		fprintf(stderr, "workers_server: %s\n", tern_strerror(rc));
		return 1;
	}
	pool.tail = &pool.head;
	pool.ctx = ctx;
	rc = workers_register(ctx, &handlers, &pool);
	if (rc == 0)
		rc = tern_listen(ctx, argv[1], NULL, NULL, &l);
	if (rc) {
		fprintf(stderr, "workers_server: %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(ctx) ? ": " : "", tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}
	for (; started < nthreads; started++)
		if ((rc = pthread_create(&th[started], NULL, pool_thread, &pool)))
			break;
	if (started == 0) {
		fprintf(stderr, "workers_server: no threads: %s\n", tern_strerror(-rc));
		tern_ctx_destroy(ctx);
		return 1;
	}
	printf("%s\n", tern_listener_uri(l));
	fflush(stdout);
	uv_signal_init(tern_ctx_loop(ctx), &sigint);
	uv_signal_init(tern_ctx_loop(ctx), &sigterm);
	sigint.data = sigterm.data = ctx;
	uv_signal_start(&sigint, on_signal, SIGINT);
	uv_signal_start(&sigterm, on_signal, SIGTERM);
	tern_ctx_run(ctx, TERN_RUN_DEFAULT);

	/* Stop the pool: each thread posts what it holds, then exits. */
	pthread_mutex_lock(&pool.lock);
	pool.quit = true;
	pthread_cond_broadcast(&pool.cond);
	pthread_mutex_unlock(&pool.lock);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	/* Jobs no thread took: answer them here, on the context's thread. */
	while ((j = pool.head)) {
		pool.head = j->next;
		tern_reply_error(j->req, -ESHUTDOWN, "the server is stopping");
		free(j);
	}
	uv_close((uv_handle_t *)&sigint, NULL);
	uv_close((uv_handle_t *)&sigterm, NULL);
	/* Posts not run yet run now with -ECANCELED: answer() finishes them. */
	tern_ctx_destroy(ctx);
	return 0;
}
