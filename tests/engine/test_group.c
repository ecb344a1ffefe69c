// SPDX-License-Identifier: MIT
/*
 * Context groups (tern.h): three member contexts on three threads behind
 * one listening URI.  Sessions land on every member, round-robin; calls on
 * each of them come back with the right checksum, answered by the member
 * the session landed on; a member that dies closes its own sessions only
 * (their clients see the failure), and later clients land on the members
 * left; destroying the group with sessions open releases everything (ASan
 * and LSan watch); the caller's own threads can run the members; bad
 * input gets clear errors.  Clients on many threads at once call raw,
 * inplace, deferred and large methods, every byte checked; a connection
 * refused in its handshake, or handed to a member that never runs,
 * releases everything it was given.  On tcp://, shm:// and rdma://
 * (TERN_TEST_TRANSPORT; on rdma:// the acceptor hands rdma_cm connection
 * requests over, each member accepting on its own PD and CQs).
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "internal.h"
#include "mem.h"

#define N	   3
#define CLIENTS	   12
#define CALLS	   16
#define M_SUM	   0x720
#define M_ECHO	   0x721 /* raw: the request's bytes back (large ones too) */
#define M_REVERSE  0x722 /* deferred: the bytes reversed, answered from a post */
#define THREADS	   4	 /* client threads calling at once */
#define PER_THREAD 3	 /* sessions per client thread */
#define ROUNDS	   6
#define LARGE	   (96u << 10) /* more than a slot (8 KiB): moved by RDMA on rdma:// */
#define WATCHDOG_S 240
#define WAIT_MS	   20000

static void on_watchdog(int sig)
{
	static const char msg[] = "test_group: a wait did not end\n";

	(void)sig;
	(void)!write(2, msg, sizeof(msg) - 1);
	_exit(1);
}

/* ---- the server ------------------------------------------------------------ */

static atomic_int accepts[N];	   /* sessions each member accepted */
static atomic_int accept_failures; /* refused or failed incoming connections */
static atomic_int stops[N];	   /* on_stop calls per member */
static atomic_int wrong_thread;	   /* a member's callback on another member's thread */
static pthread_t member_thread[N]; /* recorded at each member's first callback */
static atomic_bool member_thread_known[N];

static uint64_t fnv1a(const void *p, size_t n)
{
	const uint8_t *b = p;
	uint64_t h = 1469598103934665603ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ b[i]) * 1099511628211ull;
	return h;
}

/* Every callback of a member runs on that member's one thread. */
static void on_member_thread(tern_ctx *ctx)
{
	int i = tern_group_index(ctx);

	if (i < 0 || i >= N) {
		atomic_fetch_add(&wrong_thread, 1);
		return;
	}
	if (!atomic_load(&member_thread_known[i])) {
		member_thread[i] = pthread_self();
		atomic_store(&member_thread_known[i], true);
	} else if (!pthread_equal(member_thread[i], pthread_self())) {
		atomic_fetch_add(&wrong_thread, 1);
	}
}

/* The reply: the request's checksum and the member that computed it. */
struct sum_reply {
	uint64_t sum;
	uint32_t member;
	uint32_t len;
};

static ssize_t sum_handler(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *user)
{
	tern_ctx *ctx = tern_session_ctx(tern_req_session(r));
	struct sum_reply rep = {
		.sum = fnv1a(in, n), .member = (uint32_t)tern_group_index(ctx), .len = (uint32_t)n};

	(void)user;
	on_member_thread(ctx);
	if (cap < sizeof(rep))
		return -EMSGSIZE;
	memcpy(out, &rep, sizeof(rep));
	return sizeof(rep);
}

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	int i;

	(void)l;
	if (status) {
		atomic_fetch_add(&accept_failures, 1);
		return;
	}
	i = tern_group_index(tern_session_ctx(s));
	on_member_thread(tern_session_ctx(s));
	if (i >= 0 && i < N)
		atomic_fetch_add(&accepts[i], 1);
}

/* A member stops: on its thread, before its context goes. */
static void on_stop(tern_ctx *ctx, unsigned i, void *arg)
{
	assert_ptr_equal(arg, stops);
	assert_int_equal(tern_group_index(ctx), (int)i);
	on_member_thread(ctx);
	atomic_fetch_add(&stops[i], 1);
}

static void counters_reset(void)
{
	for (int i = 0; i < N; i++) {
		atomic_store(&stops[i], 0);
		atomic_store(&accepts[i], 0);
		atomic_store(&member_thread_known[i], false);
	}
	atomic_store(&accept_failures, 0);
	atomic_store(&wrong_thread, 0);
}

static int accepted_total(void)
{
	int n = 0;

	for (int i = 0; i < N; i++)
		n += atomic_load(&accepts[i]);
	return n;
}

/* A deferred request, answered later on the member's own thread. */
struct later {
	tern_req *r;
	const uint8_t *in; /* the request's bytes: valid until the reply */
	size_t n;
};

static void reverse_later(tern_ctx *ctx, void *arg, int status)
{
	struct later *l = arg;
	uint8_t *out;
	size_t cap;

	on_member_thread(ctx);
	if (status) { /* the member is going: its sessions close with it */
		free(l);
		return;
	}
	if (tern_reply_acquire(l->r, (void **)&out, &cap) || cap < l->n) {
		tern_reply_error(l->r, -EMSGSIZE, "reply slot too small");
	} else {
		for (size_t i = 0; i < l->n; i++)
			out[i] = l->in[l->n - 1 - i];
		tern_reply_commit(l->r, l->n);
	}
	free(l);
}

static int reverse_handler(tern_req *r, const void *in, size_t n, void *user)
{
	tern_ctx *ctx = tern_session_ctx(tern_req_session(r));
	struct later *l = malloc(sizeof(*l));
	int rc;

	(void)user;
	on_member_thread(ctx);
	if (!l)
		return -ENOMEM;
	*l = (struct later){.r = r, .in = in, .n = n};
	if ((rc = tern_ctx_post(ctx, reverse_later, l)))
		free(l);
	return rc;
}

static tern_group *group_make_opts(int own_threads, const struct tern_session_opts *so, char *uri,
				   size_t uri_len)
{
	struct tern_group_opts o = {.size = sizeof(o), .members = N, .own_threads = own_threads};
	tern_listener *l = NULL;
	tern_group *g = NULL;

	/* Members sleep between messages: three of them share two cores here. */
	o.ctx.size = sizeof(o.ctx);
	o.ctx.progress = TERN_PROGRESS_EVENT;
	o.on_stop = on_stop;
	o.arg = stops;
	counters_reset();
	assert_int_equal(tern_group_create(&o, &g), 0);
	assert_int_equal(tern_group_size(g), N);
	assert_int_equal(tern_group_register_inplace(g, M_SUM, sum_handler, NULL), 0);
	assert_int_equal(tern_group_register_raw(g, M_ECHO, fx_echo, NULL), 0);
	assert_int_equal(tern_group_register_deferred(g, M_REVERSE, reverse_handler, NULL), 0);
	assert_int_equal(tern_group_listen(g, fx_listen_uri(), so, on_accept, NULL, &l), 0);
	snprintf(uri, uri_len, "%s", tern_listener_uri(l));
	return g;
}

static tern_group *group_make(int own_threads, char *uri, size_t uri_len)
{
	return group_make_opts(own_threads, NULL, uri, uri_len);
}

/* ---- the clients ----------------------------------------------------------- */

static tern_ctx *client_ctx(void)
{
	struct tern_ctx_opts o = {.size = sizeof(o), .progress = TERN_PROGRESS_EVENT};
	tern_ctx *c = NULL;

	assert_int_equal(tern_ctx_create(&o, &c), 0);
	return c;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* Wait (running the client's loop) until the members accepted @n in all. */
static void wait_accepted(tern_ctx *c, int n)
{
	for (int t = 0; accepted_total() < n && t < WAIT_MS; t++) {
		tern_ctx_run(c, TERN_RUN_NOWAIT);
		sleep_ms(1);
	}
	assert_int_equal(accepted_total(), n);
}

/* What the client saw of a session's end (its on_close). */
struct ended {
	bool closed;
	int reason;
};

/* A failed session is freed once this returns: the test forgets it here. */
static void on_client_close(tern_session *s, int reason)
{
	struct ended *e = tern_session_data(s);

	e->closed = true;
	e->reason = reason;
}

static void connect_n(tern_ctx *c, const char *uri, tern_session **s, struct ended *ended, int n)
{
	memset(ended, 0, (size_t)n * sizeof(*ended));
	for (int i = 0; i < n; i++) {
		struct tern_session_opts o = {
			.size = sizeof(o), .on_close = on_client_close, .data = &ended[i]};
		int rc = tern_connect_sync(c, uri, &o, 10000, &s[i]);

		if (rc)
			fail_msg("connect %d to %s: %s (%s)", i, uri, tern_strerror(rc),
				 tern_ctx_last_error(c));
	}
}

/*
 * @calls calls on @s with payloads of varying length and content; each
 * reply must carry the payload's checksum.  Return: the member that
 * answered (the same for every call), or the first failed call's status.
 */
static int calls_check(tern_session *s, int calls, unsigned seed)
{
	uint8_t req[1024];
	int member = -1;

	for (int k = 0; k < calls; k++) {
		struct sum_reply rep;
		struct tern_sync_reply sr = {.buf = &rep, .cap = sizeof(rep)};
		size_t len = 1 + (seed * 131u + (unsigned)k * 37u) % sizeof(req);
		int rc;

		for (size_t j = 0; j < len; j++)
			req[j] = (uint8_t)(seed * 7u + (unsigned)k * 13u + j * 3u);
		rc = tern_call_sync(s, M_SUM, req, len, &sr, 10000);
		if (rc)
			return rc;
		assert_int_equal(sr.len, sizeof(rep));
		assert_int_equal(rep.len, len);
		assert_true(rep.sum == fnv1a(req, len));
		assert_true(rep.member < N);
		if (member >= 0)
			assert_int_equal(rep.member, member);
		member = (int)rep.member;
	}
	return member;
}

/* Close the sessions still open (the others are freed already). */
static void sessions_close(tern_session **s, const struct ended *ended, int n)
{
	for (int i = 0; i < n; i++)
		if (!ended[i].closed)
			tern_session_close(s[i], NULL);
}

/* Run the client until session @i has ended; its reason. */
static int wait_ended(tern_ctx *c, const struct ended *ended, int i)
{
	for (int t = 0; !ended[i].closed && t < WAIT_MS; t++) {
		tern_ctx_run(c, TERN_RUN_NOWAIT);
		sleep_ms(1);
	}
	assert_true(ended[i].closed);
	return ended[i].reason;
}

/*
 * A client context and CLIENTS sessions to @uri, one after another; once
 * the members have accepted them all, round-robin has put as many on each.
 */
static tern_ctx *clients_up(const char *uri, tern_session **s, struct ended *ended)
{
	tern_ctx *c = client_ctx();

	connect_n(c, uri, s, ended, CLIENTS);
	wait_accepted(c, CLIENTS);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&accepts[i]), CLIENTS / N);
	return c;
}

/* ---- tests ------------------------------------------------------------------ */

/* 12 clients, one after another: round-robin puts 4 on each member. */
static void sessions_land_on_every_member(void **state)
{
	tern_session *s[CLIENTS] = {0};
	struct ended ended[CLIENTS];
	int served[N] = {0};
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make(1, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	c = clients_up(uri, s, ended);
	/* Calls on every session, each answered by one member, 4 per member. */
	for (int i = 0; i < CLIENTS; i++) {
		int m = calls_check(s[i], CALLS, (unsigned)i);

		assert_true(m >= 0 && m < N);
		served[m]++;
	}
	for (int i = 0; i < N; i++)
		assert_int_equal(served[i], CLIENTS / N);
	assert_int_equal(atomic_load(&accept_failures), 0);
	assert_int_equal(atomic_load(&wrong_thread), 0);
	sessions_close(s, ended, CLIENTS);
	assert_int_equal(tern_ctx_destroy(c), 0);
	assert_int_equal(tern_group_destroy(g), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&stops[i]), 1);
	assert_int_equal(atomic_load(&wrong_thread), 0);
}

/*
 * Member 1 dies: the clients it served see their calls fail, the others'
 * calls go on, and new clients land on members 0 and 2 only.
 */
static void a_dead_member_closes_only_its_sessions(void **state)
{
	tern_session *s[CLIENTS] = {0}, *later[6] = {0};
	struct ended ended[CLIENTS], ended_later[6];
	int member_of[CLIENTS];
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make(1, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	c = clients_up(uri, s, ended);
	for (int i = 0; i < CLIENTS; i++)
		member_of[i] = calls_check(s[i], 2, (unsigned)i);

	assert_int_equal(tern_group_member_stop(g, 1), 0);
	/* Its clients hear the peer went away: a clear error, not a hang. */
	for (int i = 0; i < CLIENTS; i++)
		if (member_of[i] == 1)
			assert_int_equal(wait_ended(c, ended, i), -ECONNRESET);
	for (int t = 0; tern_group_member(g, 1) && t < WAIT_MS; t++)
		sleep_ms(1);
	assert_null(tern_group_member(g, 1));
	assert_int_equal(tern_group_member_stop(g, 1), -ENOENT);
	assert_int_equal(atomic_load(&stops[1]), 1);
	assert_int_equal(atomic_load(&stops[0]) + atomic_load(&stops[2]), 0);
	/* The others' sessions go on, on the same members. */
	for (int i = 0; i < CLIENTS; i++) {
		if (member_of[i] == 1)
			continue;
		assert_false(ended[i].closed);
		assert_int_equal(calls_check(s[i], 4, 100u + (unsigned)i), member_of[i]);
	}
	sessions_close(s, ended, CLIENTS);

	/* New clients: members 0 and 2 take them in turn, member 1 none. */
	connect_n(c, uri, later, ended_later, 6);
	wait_accepted(c, CLIENTS + 6);
	assert_int_equal(atomic_load(&accepts[0]), CLIENTS / N + 3);
	assert_int_equal(atomic_load(&accepts[1]), CLIENTS / N);
	assert_int_equal(atomic_load(&accepts[2]), CLIENTS / N + 3);
	for (int i = 0; i < 6; i++) {
		int m = calls_check(later[i], CALLS, 200u + (unsigned)i);

		assert_true(m == 0 || m == 2);
	}
	assert_int_equal(atomic_load(&wrong_thread), 0);
	sessions_close(later, ended_later, 6);
	assert_int_equal(tern_ctx_destroy(c), 0);
	assert_int_equal(tern_group_destroy(g), 0);
}

/*
 * The group goes with sessions open and calls just made: every member's
 * context, thread, listener and session is released (LSan checks at
 * exit), and the clients see their sessions fail.
 */
static void destroy_releases_everything(void **state)
{
	tern_session *s[CLIENTS] = {0};
	struct ended ended[CLIENTS];
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make(1, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	c = clients_up(uri, s, ended);
	for (int i = 0; i < CLIENTS; i++)
		assert_true(calls_check(s[i], 2, (unsigned)i) >= 0);
	assert_int_equal(tern_group_destroy(g), 0);
	for (int i = 0; i < CLIENTS; i++)
		assert_int_equal(wait_ended(c, ended, i), -ECONNRESET);
	/* Nobody listens any more. */
	{
		tern_session *x = NULL;

		assert_true(tern_connect_sync(c, uri, NULL, 5000, &x) < 0);
	}
	sessions_close(s, ended, CLIENTS);
	assert_int_equal(tern_ctx_destroy(c), 0);
}

/* ---- the caller's own threads ------------------------------------------ */

struct runner {
	tern_group *g;
	unsigned i;
	int rc;
	pthread_t t;
};

static void *runner_main(void *arg)
{
	struct runner *r = arg;

	r->rc = tern_group_run(r->g, r->i);
	return NULL;
}

/* A thread of the caller's running member @i. */
static void runner_start(struct runner *r, tern_group *g, unsigned i)
{
	*r = (struct runner){.g = g, .i = i, .rc = 1};
	assert_int_equal(pthread_create(&r->t, NULL, runner_main, r), 0);
}

/* Its run ended: the member died, and tern_group_run() said 0. */
static void runner_join(struct runner *r)
{
	pthread_join(r->t, NULL);
	assert_int_equal(r->rc, 0);
}

/* Members run by the caller's threads: the same spread, and destroy ends their runs. */
static void callers_threads_run_the_members(void **state)
{
	tern_session *s[CLIENTS] = {0};
	struct ended ended[CLIENTS];
	struct runner r[N];
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make(0, uri, sizeof(uri));
	assert_int_equal(tern_group_run(g, 0), -EAGAIN); /* not started */
	assert_int_equal(tern_group_start(g), 0);
	for (unsigned i = 0; i < N; i++)
		runner_start(&r[i], g, i);
	c = clients_up(uri, s, ended);
	for (int i = 0; i < CLIENTS; i++)
		assert_true(calls_check(s[i], CALLS, (unsigned)i) >= 0);
	/* A member runs on one thread only. */
	assert_int_equal(tern_group_run(g, 0), -EBUSY);
	/* One member stopped by hand: its run returns 0, the others run on. */
	assert_int_equal(tern_group_member_stop(g, 2), 0);
	runner_join(&r[2]);
	assert_int_equal(tern_group_run(g, 2), -EBUSY); /* it ran */
	assert_int_equal(tern_group_destroy(g), 0);
	for (unsigned i = 0; i < 2; i++)
		runner_join(&r[i]);
	assert_int_equal(atomic_load(&wrong_thread), 0);
	sessions_close(s, ended, CLIENTS);
	assert_int_equal(tern_ctx_destroy(c), 0);
}

/* ---- many clients at once, every kind of method ----------------------------- */

/* Run @c until @d is done; the call's status. */
static int call_wait(tern_ctx *c, tern_session *s, uint32_t method, const void *req, size_t len,
		     void *reply, size_t cap, size_t *got)
{
	struct tern_call_opts o = {
		.size = sizeof(o), .timeout_ms = 60000, .reply_buf = reply, .reply_cap = cap};
	struct fx_done d = {0};
	int rc = tern_call(s, method, req, len, fx_done_cb, &d, &o);

	if (rc)
		return rc;
	for (int t = 0; !d.done && t < 90000; t++)
		if (tern_ctx_run(c, TERN_RUN_ONCE) < 0)
			sleep_ms(1);
	assert_true(d.done);
	*got = d.len;
	return d.status;
}

/* One call whose reply must be @want's @want_len bytes: 0, or why not. */
static int call_expect(tern_ctx *c, tern_session *s, uint32_t method, const void *req, size_t len,
		       uint8_t *rep, const void *want, size_t want_len)
{
	size_t got = 0;
	int rc = call_wait(c, s, method, req, len, rep, LARGE + 4096, &got);

	if (!rc && (got != want_len || memcmp(rep, want, want_len)))
		rc = -EBADMSG;
	return rc;
}

static void fill(uint8_t *b, size_t n, unsigned seed)
{
	for (size_t j = 0; j < n; j++)
		b[j] = (uint8_t)(seed * 29u + j * 7u + (j >> 8));
}

struct caller {
	const char *uri;
	unsigned id;
	atomic_int *calls; /* calls answered right, all threads */
	int member[PER_THREAD];
	char failed[300];
	pthread_t t;
};

/* One client thread: its own context, PER_THREAD sessions, ROUNDS of each kind. */
static void *caller_main(void *arg)
{
	struct caller *k = arg;
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_EVENT};
	tern_session *s[PER_THREAD] = {0};
	uint8_t *req = malloc(LARGE + 4096), *rep = malloc(LARGE + 4096), *rev = malloc(4096);
	tern_ctx *c = NULL;
	int rc = tern_ctx_create(&co, &c);

	for (int i = 0; !rc && i < PER_THREAD; i++) {
		rc = tern_connect_sync(c, k->uri, NULL, 20000, &s[i]);
		k->member[i] = -1;
	}
	for (int r = 0; !rc && r < ROUNDS; r++) {
		for (int i = 0; !rc && i < PER_THREAD; i++) {
			unsigned seed = k->id * 1000u + (unsigned)r * 10u + (unsigned)i;
			size_t small = 1 + (seed * 131u) % 4000, large = LARGE + seed % 4000, got;
			struct sum_reply sum;

			/* inplace: the checksum, and the member that computed it */
			fill(req, small, seed);
			rc = call_wait(c, s[i], M_SUM, req, small, &sum, sizeof(sum), &got);
			if (!rc && (got != sizeof(sum) || sum.sum != fnv1a(req, small) ||
				    sum.len != small || sum.member >= N ||
				    (k->member[i] >= 0 && (int)sum.member != k->member[i])))
				rc = -EBADMSG;
			if (!rc)
				k->member[i] = (int)sum.member;
			/* raw: the bytes back */
			if (!rc)
				rc = call_expect(c, s[i], M_ECHO, req, small, rep, req, small);
			/* deferred: the bytes reversed, from a post on the member */
			for (size_t j = 0; j < small; j++)
				rev[j] = req[small - 1 - j];
			if (!rc)
				rc = call_expect(c, s[i], M_REVERSE, req, small, rep, rev, small);
			/* large: request and reply both bigger than a slot */
			fill(req, large, seed + 7);
			if (!rc)
				rc = call_expect(c, s[i], M_ECHO, req, large, rep, req, large);
			if (!rc)
				atomic_fetch_add(k->calls, 4);
			if (rc)
				snprintf(k->failed, sizeof(k->failed),
					 "thread %u session %d round %d: %s (%s)", k->id, i, r,
					 tern_strerror(rc), tern_ctx_last_error(c));
		}
	}
	if (rc && !k->failed[0])
		snprintf(k->failed, sizeof(k->failed), "thread %u: %s (%s)", k->id,
			 tern_strerror(rc), c ? tern_ctx_last_error(c) : "no context");
	for (int i = 0; i < PER_THREAD; i++)
		if (s[i])
			tern_session_close(s[i], NULL);
	if (c)
		tern_ctx_destroy(c);
	free(req);
	free(rep);
	free(rev);
	return NULL;
}

/*
 * THREADS client threads call at once, on PER_THREAD sessions each: the
 * sessions spread evenly, each stays on its member, and every reply of
 * every kind carries the right bytes.
 */
static void many_clients_call_every_kind_at_once(void **state)
{
	struct caller k[THREADS];
	atomic_int calls = 0;
	int on[N] = {0};
	char uri[300];
	tern_group *g;

	(void)state;
	g = group_make(1, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	for (unsigned i = 0; i < THREADS; i++) {
		k[i] = (struct caller){.uri = uri, .id = i, .calls = &calls};
		assert_int_equal(pthread_create(&k[i].t, NULL, caller_main, &k[i]), 0);
	}
	for (unsigned i = 0; i < THREADS; i++)
		pthread_join(k[i].t, NULL);
	for (unsigned i = 0; i < THREADS; i++) {
		if (k[i].failed[0])
			fail_msg("%s", k[i].failed);
		for (int j = 0; j < PER_THREAD; j++)
			on[k[i].member[j]]++;
	}
	assert_int_equal(atomic_load(&calls), THREADS * PER_THREAD * ROUNDS * 4);
	/* Round-robin, whatever order the connections came in. */
	for (int i = 0; i < N; i++) {
		assert_int_equal(on[i], THREADS * PER_THREAD / N);
		assert_int_equal(atomic_load(&accepts[i]), THREADS * PER_THREAD / N);
	}
	assert_int_equal(atomic_load(&accept_failures), 0);
	assert_int_equal(atomic_load(&wrong_thread), 0);
	assert_int_equal(tern_group_destroy(g), 0);
}

/* ---- connections that never become sessions -------------------------------- */

/*
 * A client whose schema the group refuses: the member that took the
 * connection refuses it in the handshake (on rdma://, rdma_reject() with
 * the reason, and its cm_id and QP released), the client hears why, and
 * the next client, on the next member, is served.
 */
static void a_refused_handshake_releases_its_connection(void **state)
{
	struct tern_session_opts srv = {.size = sizeof(srv), .schema_hash = 0x1111};
	struct tern_session_opts bad = {.size = sizeof(bad), .schema_hash = 0x2222};
	tern_session *x = NULL, *s[2] = {0};
	struct ended ended[2];
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make_opts(1, &srv, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	c = client_ctx();
	for (int i = 0; i < N; i++) {
		assert_int_equal(tern_connect_sync(c, uri, &bad, 10000, &x), TERN_ESCHEMA);
		assert_null(x);
	}
	/* Each member refused one (round-robin), and serves the next. */
	for (int t = 0; atomic_load(&accept_failures) < N && t < WAIT_MS; t++)
		sleep_ms(1);
	assert_int_equal(atomic_load(&accept_failures), N);
	assert_int_equal(accepted_total(), 0);
	connect_n(c, uri, s, ended, 2);
	wait_accepted(c, 2);
	for (int i = 0; i < 2; i++)
		assert_true(calls_check(s[i], 4, 300u + (unsigned)i) >= 0);
	sessions_close(s, ended, 2);
	assert_int_equal(tern_ctx_destroy(c), 0);
	assert_int_equal(tern_group_destroy(g), 0);
}

static void on_pending_connected(tern_session *s, int status)
{
	int *st = tern_session_data(s);

	*st = status;
}

/*
 * A connection handed to a member that never runs (the caller's threads run
 * members 0 and 2 only) waits in its post queue; destroying the group
 * refuses it there (tern_ctx_destroy() runs the queue with -ECANCELED), so
 * the client's connect fails and nothing it was given leaks (LSan at
 * exit; on rdma://, its cm_id, moved to that member's event channel).
 */
static void a_connection_queued_to_a_dead_member_is_refused(void **state)
{
	struct tern_session_opts po = {.size = sizeof(po), .connect_timeout_ms = 60000};
	tern_session *s[2] = {0}, *pending = NULL;
	struct ended ended[2];
	int pending_status = 1;
	struct runner r[N];
	char uri[300];
	tern_group *g;
	tern_ctx *c;

	(void)state;
	g = group_make(0, uri, sizeof(uri));
	assert_int_equal(tern_group_start(g), 0);
	for (unsigned i = 0; i < N; i += 2)
		runner_start(&r[i], g, i);
	c = client_ctx();
	/* Member 0 takes the first; the second goes to member 1, and waits. */
	connect_n(c, uri, s, ended, 1);
	wait_accepted(c, 1);
	po.data = &pending_status;
	assert_int_equal(tern_connect(c, uri, &po, on_pending_connected, &pending), 0);
	/* The third to member 2: so the second has been handed over. */
	connect_n(c, uri, s + 1, ended + 1, 1);
	wait_accepted(c, 2);
	assert_int_equal(atomic_load(&accepts[0]), 1);
	assert_int_equal(atomic_load(&accepts[2]), 1);
	assert_int_equal(pending_status, 1); /* still waiting */
	assert_int_equal(tern_group_destroy(g), 0);
	for (unsigned i = 0; i < N; i += 2)
		runner_join(&r[i]);
	for (int t = 0; pending_status == 1 && t < WAIT_MS; t++) {
		tern_ctx_run(c, TERN_RUN_NOWAIT);
		sleep_ms(1);
	}
	assert_true(pending_status < 0);
	assert_int_equal(atomic_load(&accepts[1]), 0);
	for (int i = 0; i < 2; i++)
		assert_int_equal(wait_ended(c, ended, i), -ECONNRESET);
	sessions_close(s, ended, 2);
	assert_int_equal(tern_ctx_destroy(c), 0);
}

static int setup_nothing(tern_ctx *ctx, unsigned i, void *arg)
{
	(void)ctx, (void)i, (void)arg;
	return 0;
}

static int setup_fails_on_second(tern_ctx *ctx, unsigned i, void *arg)
{
	int *seen = arg;

	(void)ctx;
	(*seen)++;
	return i == 1 ? -EPERM : 0;
}

static void bad_input_is_refused(void **state)
{
	struct tern_group_opts o = {.size = sizeof(o), .members = 0, .own_threads = 1};
	uv_loop_t loop;
	tern_group *g = (tern_group *)&o;
	char uri[300];
	int seen = 0;

	(void)state;
	o.ctx.progress = TERN_PROGRESS_EVENT;
	assert_int_equal(tern_group_create(&o, &g), -EINVAL); /* no members */
	assert_null(g);
	o.members = TERN_GROUP_MAX + 1;
	assert_int_equal(tern_group_create(&o, &g), -EINVAL); /* too many */
	o.members = 2;
	o.ctx.loop = &loop; /* a member runs its own loop */
	assert_int_equal(tern_group_create(&o, &g), -EINVAL);
	o.ctx.loop = NULL;
	o.size = sizeof(o) + 8; /* a newer caller's options we do not know */
	assert_int_equal(tern_group_create(&o, &g), -EINVAL);
	assert_int_equal(tern_group_create(NULL, &g), -EINVAL);
	o.size = sizeof(o);
	assert_int_equal(tern_group_create(&o, NULL), -EINVAL);
	assert_null(tern_group_member(NULL, 0));
	assert_int_equal(tern_group_destroy(NULL), -EINVAL);

	g = group_make(1, uri, sizeof(uri));
	assert_null(tern_group_member(g, N));
	assert_int_equal(tern_group_index(tern_group_member(g, 2)), 2);
	/* A context outside any group. */
	{
		tern_ctx *c = client_ctx();

		assert_int_equal(tern_group_index(c), -ENOENT);
		tern_ctx_destroy(c);
	}
	/* Registrations are checked like tern_register_*()'s. */
	assert_int_equal(tern_group_register_raw(g, 0, fx_echo, NULL), -EINVAL);
	assert_int_equal(tern_group_register_inplace(g, M_SUM, sum_handler, NULL), -EEXIST);
	assert_int_equal(tern_group_setup(g, setup_fails_on_second, &seen), -EPERM);
	assert_int_equal(seen, 2); /* it stopped at the failure */
	/* A scheme with no hand-off (mem:// has no adopt()). */
	assert_int_equal(tern_group_listen(g, "mem://nogroup", NULL, on_accept, NULL, NULL),
			 -EPROTONOSUPPORT);
	assert_non_null(strstr(tern_group_last_error(g), "cannot serve a context group"));
	assert_int_equal(tern_group_listen(g, "bogus://x", NULL, on_accept, NULL, NULL),
			 -EPROTONOSUPPORT);
	assert_int_equal(tern_group_run(g, 0), -EINVAL); /* the group owns its threads */
	assert_int_equal(tern_group_start(g), 0);
	assert_int_equal(tern_group_start(g), -EBUSY);
	/* After the start, set-up is refused. */
	assert_int_equal(tern_group_register_raw(g, M_SUM + 1, fx_echo, NULL), -EBUSY);
	assert_int_equal(tern_group_setup(g, setup_nothing, NULL), -EBUSY);
	assert_int_equal(tern_group_listen(g, fx_listen_uri(), NULL, on_accept, NULL, NULL),
			 -EBUSY);
	assert_int_equal(tern_group_member_stop(g, N), -EINVAL);
	assert_int_equal(tern_group_destroy(g), 0);

	/* A group never started: its members stop in tern_group_destroy(). */
	g = group_make(1, uri, sizeof(uri));
	assert_int_equal(tern_group_destroy(g), 0);
	for (int i = 0; i < N; i++)
		assert_int_equal(atomic_load(&stops[i]), 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(sessions_land_on_every_member),
		cmocka_unit_test(a_dead_member_closes_only_its_sessions),
		cmocka_unit_test(destroy_releases_everything),
		cmocka_unit_test(callers_threads_run_the_members),
		cmocka_unit_test(bad_input_is_refused),
		cmocka_unit_test(many_clients_call_every_kind_at_once),
		cmocka_unit_test(a_refused_handshake_releases_its_connection),
		cmocka_unit_test(a_connection_queued_to_a_dead_member_is_refused),
	};

	if (!fx_runnable())
		return 77;
	/* For bad_input_is_refused(): a provider with no hand-off. */
	if (!fx_is("mem") && tern__transport_register(&tern_mem_transport))
		return 1;
	signal(SIGALRM, on_watchdog);
	/* The VM emulates its CPUs (TCG): rdma:// runs many times slower. */
	alarm(fx_is("rdma") ? 4 * WATCHDOG_S : WATCHDOG_S);
	signal(SIGPIPE, SIG_IGN);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
