// SPDX-License-Identifier: MIT
/*
 * calc_server - serve the Calc service of calc.tern.
 *
 *   calc_server rdma://10.0.0.1:0
 *   calc_server --members 4 tcp://0.0.0.0:7000
 *
 * Prints the URI it listens on (port 0 picks one) and serves until SIGINT or
 * SIGTERM.  Calc.add is answered in the handler, straight into the reply
 * slot; Calc.stats is deferred: the handler keeps the request and a timer
 * answers it a millisecond later, as a server would once work done
 * elsewhere (a GPU, a disk, another call) completes.
 *
 * With --members N it serves as a context group (tern.h): N contexts on N
 * threads behind the one URI, each client's session on one of them for its
 * whole life.  Each member keeps its own state (its own stats, its own
 * timer on its own loop), so nothing is shared between the threads and no
 * lock is taken; Calc.stats reports the member the session landed on.
 * (The group runs on rdma://, shm:// and tcp://.)
 */
/* libuv's header needs POSIX types (pthread_rwlock_t), which a strict
 * -std=c11 build only has when asked for; tern.h alone needs nothing. */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tern.h>
#include <uv.h>

#include "calc.tern.h"

#define MAX_PENDING 64

struct calc_state {
	uint64_t adds;
	int64_t total;
	int64_t recent[CALC_STATS_RECENT_LEN];
	tern_req *pending[MAX_PENDING]; /* Calc.stats requests not answered yet */
	int npending;
	uv_timer_t timer;
	tern_ctx *ctx;
	struct calc_handlers handlers; /* a group member's own (one per context) */
};

static int on_add(tern_req *req, const calc_AddReq *in, calc_AddResp *out, void *user)
{
	struct calc_state *st = user;
	int64_t sum;

	/* Read the request and write the reply where they lie, in the slots. */
	if (__builtin_add_overflow(calc_AddReq_get_a(in), calc_AddReq_get_b(in), &sum)) {
		tern_req_set_error(req, "a + b overflows an i64");
		return -ERANGE;
	}
	calc_AddResp_set_sum(out, sum);
	st->adds++;
	st->total += sum;
	memmove(&st->recent[1], &st->recent[0], sizeof(st->recent) - sizeof(st->recent[0]));
	st->recent[0] = sum;
	return 0;
}

static void answer_stats(uv_timer_t *t)
{
	struct calc_state *st = t->data;

	for (int i = 0; i < st->npending; i++) {
		tern_req *req = st->pending[i];
		calc_Stats *out;
		int rc = calc_stats_reply_acquire(req, &out);

		if (rc) {
			/* The client went away meanwhile: finish the request anyway. */
			tern_reply_error(req, rc, NULL);
			continue;
		}
		calc_Stats_set_adds(out, st->adds);
		calc_Stats_set_total(out, st->total);
		calc_Stats_store_recent(out, st->recent);
		calc_stats_reply_commit(req);
	}
	st->npending = 0;
}

static int on_stats(tern_req *req, const void *in, size_t in_len, void *user)
{
	struct calc_state *st = user;

	(void)in, (void)in_len;
	if (st->npending == MAX_PENDING)
		return -EBUSY;
	st->pending[st->npending++] = req;
	if (!uv_is_active((uv_handle_t *)&st->timer))
		uv_timer_start(&st->timer, answer_stats, 1, 0);
	return 0; /* answered later */
}

/* Kept for as long as the context serves Calc (calc_register keeps it). */
static struct calc_handlers handlers = {
	.add = on_add,
	.stats = on_stats,
};

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l, (void)s;
	if (status)
		fprintf(stderr, "calc_server: refused a client: %s\n", tern_strerror(status));
}

static void on_signal(uv_signal_t *h, int signum)
{
	(void)signum;
	tern_ctx_stop(h->data);
}

/* Requests still held are finished before the context goes. */
static void state_fini(struct calc_state *st)
{
	for (int i = 0; i < st->npending; i++)
		tern_reply_error(st->pending[i], -ESHUTDOWN, "the server is stopping");
	st->npending = 0;
}

/* ---- as a group of contexts ------------------------------------------------ */

/* Before the start, on this thread: each member gets its state and timer. */
static int member_setup(tern_ctx *ctx, unsigned i, void *arg)
{
	struct calc_state *st = (struct calc_state *)arg + i;

	st->ctx = ctx;
	uv_timer_init(tern_ctx_loop(ctx), &st->timer);
	st->timer.data = st;
	/* calc_register() keeps the struct, one per context: each member its own. */
	st->handlers = handlers;
	return calc_register(ctx, &st->handlers, st);
}

/* On the member's thread, before its context (and its loop) goes. */
static void member_stop(tern_ctx *ctx, unsigned i, void *arg)
{
	struct calc_state *st = (struct calc_state *)arg + i;

	(void)ctx;
	state_fini(st);
	uv_close((uv_handle_t *)&st->timer, NULL);
}

static void on_group_signal(uv_signal_t *h, int signum)
{
	(void)signum;
	uv_stop(h->loop);
}

static int serve_group(const char *uri, unsigned members)
{
	struct calc_state *st = calloc(members, sizeof(*st));
	struct tern_group_opts go = {.size = sizeof(go),
				     .members = members,
				     .own_threads = 1,
				     .on_stop = member_stop,
				     .arg = st};
	uv_signal_t sigint, sigterm;
	tern_listener *l;
	tern_group *g;
	uv_loop_t loop;
	int rc;

	if (!st)
		return -ENOMEM;
	go.ctx.size = sizeof(go.ctx);
	go.ctx.progress = TERN_PROGRESS_ADAPTIVE;
	if ((rc = tern_group_create(&go, &g))) {
		free(st);
		return rc;
	}
	rc = tern_group_setup(g, member_setup, st);
	if (rc == 0)
		rc = tern_group_listen(g, uri, NULL, on_accept, NULL, &l);
	if (rc == 0)
		rc = tern_group_start(g);
	if (rc) {
		fprintf(stderr, "calc_server: %s: %s%s%s\n", uri, tern_strerror(rc),
			*tern_group_last_error(g) ? ": " : "", tern_group_last_error(g));
	} else {
		printf("%s\n", tern_listener_uri(l));
		fflush(stdout);
		/* This thread only waits for a signal; the members serve. */
		uv_loop_init(&loop);
		uv_signal_init(&loop, &sigint);
		uv_signal_init(&loop, &sigterm);
		uv_signal_start(&sigint, on_group_signal, SIGINT);
		uv_signal_start(&sigterm, on_group_signal, SIGTERM);
		uv_run(&loop, UV_RUN_DEFAULT);
		uv_close((uv_handle_t *)&sigint, NULL);
		uv_close((uv_handle_t *)&sigterm, NULL);
		uv_run(&loop, UV_RUN_DEFAULT);
		uv_loop_close(&loop);
	}
	/* Stops every member (member_stop() on each thread), then frees. */
	tern_group_destroy(g);
	free(st);
	return rc;
}

int main(int argc, char **argv)
{
	struct calc_state st = {0};
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_ADAPTIVE};
	uv_signal_t sigint, sigterm;
	uv_loop_t loop;
	tern_listener *l;
	int rc;

	if (argc == 4 && strcmp(argv[1], "--members") == 0) {
		char *end;
		unsigned long n = strtoul(argv[2], &end, 10);

		if (*end || n == 0 || n > TERN_GROUP_MAX) {
			fprintf(stderr, "calc_server: --members takes 1 to %d\n", TERN_GROUP_MAX);
			return 2;
		}
		return serve_group(argv[3], (unsigned)n) ? 1 : 0;
	}
	if (argc != 2) {
		fprintf(stderr, "usage: calc_server [--members N] rdma://ADDRESS:PORT\n");
		return 2;
	}
	/* Our loop, so that our timer and signal handles outlive the context. */
	uv_loop_init(&loop);
	co.loop = &loop;
	if ((rc = tern_ctx_create(&co, &st.ctx))) {
		fprintf(stderr, "calc_server: %s\n", tern_strerror(rc));
		return 1;
	}
	uv_timer_init(&loop, &st.timer);
	st.timer.data = &st;
	rc = calc_register(st.ctx, &handlers, &st);
	if (rc == 0)
		rc = tern_listen(st.ctx, argv[1], NULL, on_accept, &l);
	if (rc) {
		fprintf(stderr, "calc_server: %s: %s%s%s\n", argv[1], tern_strerror(rc),
			*tern_ctx_last_error(st.ctx) ? ": " : "", tern_ctx_last_error(st.ctx));
	} else {
		printf("%s\n", tern_listener_uri(l));
		fflush(stdout);
		uv_signal_init(&loop, &sigint);
		uv_signal_init(&loop, &sigterm);
		sigint.data = sigterm.data = st.ctx;
		uv_signal_start(&sigint, on_signal, SIGINT);
		uv_signal_start(&sigterm, on_signal, SIGTERM);
		tern_ctx_run(st.ctx, TERN_RUN_DEFAULT);
		uv_close((uv_handle_t *)&sigint, NULL);
		uv_close((uv_handle_t *)&sigterm, NULL);
	}
	state_fini(&st);
	tern_ctx_destroy(st.ctx);
	uv_close((uv_handle_t *)&st.timer, NULL);
	uv_run(&loop, UV_RUN_DEFAULT);
	uv_loop_close(&loop);
	return rc ? 1 : 0;
}
