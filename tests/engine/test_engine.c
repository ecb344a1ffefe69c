// SPDX-License-Identifier: MIT
/*
 * The session engine on every provider (TERN_TEST_TRANSPORT: rdma on rxe0
 * in the VM, shm and tcp on the host): echo sizes for every handler kind,
 * handler errors, the pipelined soak, bidirectional calls, zero copy on the
 * inplace path, every progress mode, and, on rdma, no RNR under load.
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "rpc.h"
#include "tern/rnr.h"

#define M_RAW	      0x100
#define M_INPLACE     0x101
#define M_DEFERRED    0x102
#define M_FAIL	      0x103
#define M_BIG_RAW     0x104
#define M_BIG_INPLACE 0x105

static tern_req *held;	  /* the deferred request being held */
static uint8_t *last_out; /* where the inplace handler wrote */
static size_t last_out_cap;

static ssize_t echo_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	last_out = out;
	last_out_cap = cap;
	if (n > cap)
		return -EMSGSIZE;
	memcpy(out, in, n);
	return (ssize_t)n;
}

static int hold_deferred(tern_req *r, const void *in, size_t n, void *u)
{
	(void)in, (void)n, (void)u;
	held = r;
	return 0;
}

static int fail_einval(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)in, (void)n, (void)out, (void)u;
	tern_req_set_error(r, "widget count must be positive");
	return -EINVAL;
}

static int big_raw(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	static char big[1 << 16];
	(void)r, (void)in, (void)n, (void)u;
	out->base = big;
	out->len = tern_session_max_payload(tern_req_session(r)) + 1;
	return 0;
}

static ssize_t big_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)in, (void)n, (void)out, (void)u;
	return (ssize_t)cap + 1; /* claims more than the room it had */
}

static void register_all(tern_ctx *ctx)
{
	assert_int_equal(tern_register_raw(ctx, M_RAW, fx_echo, NULL), 0);
	assert_int_equal(tern_register_inplace(ctx, M_INPLACE, echo_inplace, NULL), 0);
	assert_int_equal(tern_register_deferred(ctx, M_DEFERRED, hold_deferred, NULL), 0);
	assert_int_equal(tern_register_raw(ctx, M_FAIL, fail_einval, NULL), 0);
	assert_int_equal(tern_register_raw(ctx, M_BIG_RAW, big_raw, NULL), 0);
	assert_int_equal(tern_register_inplace(ctx, M_BIG_INPLACE, big_inplace, NULL), 0);
}

static int setup_with(void **state, const struct tern_session_opts *o, enum tern_progress p)
{
	struct fx *f = calloc(1, sizeof(*f));

	if (fx_setup(f, o, p)) {
		free(f);
		return -1;
	}
	register_all(f->ctx);
	held = NULL;
	*state = f;
	return 0;
}

static int setup(void **state)
{
	return setup_with(state, NULL, TERN_PROGRESS_BUSY);
}

/* The soaks issue from one reused buffer, so they need calls that copy at
 * once or fail (nonblock), never ones that queue the pointer. */
static int setup_nb(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .nonblock = 1};
	return setup_with(state, &o, TERN_PROGRESS_BUSY);
}

static int setup_small_nb(void **state)
{
	struct tern_session_opts o = {
		.size = sizeof(o), .slot_size = 1024, .slot_count = 16, .nonblock = 1};
	return setup_with(state, &o, TERN_PROGRESS_BUSY);
}

static int teardown(void **state)
{
	struct fx *f = *state;
	fx_teardown(f);
	free(f);
	return 0;
}

static void fill(uint8_t *b, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(seed * 2654435761u >> 24) ^ (uint8_t)(i * 31 + (i >> 7));
}

static void echo_once(struct fx *f, uint32_t method, size_t len)
{
	static uint8_t in[1 << 16], out[1 << 16];
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

	fill(in, len, (uint32_t)len);
	memset(out, 0xee, len + 1);
	assert_int_equal(tern_call_sync(f->cli, method, in, len, &rep, 10000), 0);
	assert_int_equal(rep.len, len);
	assert_memory_equal(out, in, len);
}

static void echo_sizes(struct fx *f, uint32_t method)
{
	size_t max = tern_session_max_payload(f->cli);
	static uint8_t big[8192 + 1], back[8192 + 1];
	struct tern_sync_reply rep = {.buf = back};

	assert_int_equal(max, 8192 - 32);
	echo_once(f, method, 0);
	echo_once(f, method, 1);
	echo_once(f, method, max - 1);
	echo_once(f, method, max);
	/* One byte over the slot: the request goes as a bulk transfer (RDMA
	 * READ; process_vm on shm; pieces on tcp), but the
	 * echo's reply is over the slot too and no reply buffer was named:
	 * a clear error, never a truncated reply... */
	memset(big, 0x5c, sizeof(big));
	rep.cap = sizeof(back);
	assert_int_equal(tern_call_sync(f->cli, method, big, max + 1, &rep, 10000), -EMSGSIZE);
	if (method == M_RAW) /* (the test's inplace handler fails it itself) */
		assert_non_null(strstr(rep.errmsg, "reply buffer"));
	/* ...and naming the buffer as the reply buffer, it all comes back. */
	memset(back, 0, sizeof(back));
	rep.direct = 1;
	assert_int_equal(tern_call_sync(f->cli, method, big, max + 1, &rep, 10000), 0);
	assert_int_equal(rep.len, max + 1);
	assert_memory_equal(back, big, max + 1);
}

static void test_raw_echo_sizes(void **state)
{
	echo_sizes(*state, M_RAW);
}

static void test_inplace_echo_sizes(void **state)
{
	echo_sizes(*state, M_INPLACE);
}

/* Run until the deferred handler holds a request: by time, not turns of
 * the loop, since on a lossy link (the rdma_link lane) a lost request
 * arrives only when its ACK timeout resends it. */
static void wait_held(struct fx *f)
{
	struct timespec t0, t;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		clock_gettime(CLOCK_MONOTONIC, &t);
	} while (!held && t.tv_sec - t0.tv_sec < 10);
	assert_non_null(held);
}

/* Call the deferred method and run until its handler holds the request. */
static void call_held(struct fx *f, struct fx_done *d)
{
	held = NULL;
	assert_int_equal(tern_call(f->cli, M_DEFERRED, "x", 1, fx_done_cb, d, NULL), 0);
	wait_held(f);
}

static void test_deferred_replies_later_from_its_slot(void **state)
{
	struct fx *f = *state;
	struct fx_done d = {0};
	void *out;
	size_t cap;

	call_held(f, &d);
	/* The loop keeps running; nothing is answered until we commit. */
	for (int i = 0; i < 100; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	assert_false(d.done);
	assert_int_equal(tern_reply_acquire(held, &out, &cap), 0);
	assert_int_equal(cap, tern_session_max_payload(f->srv));
	memcpy(out, "done!", 5);
	assert_int_equal(tern_reply_commit(held, 5), 0);
	assert_int_equal(tern_reply_commit(held, 5), -EINVAL); /* finished already */
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, 0);
	assert_int_equal(d.len, 5);
	assert_memory_equal(d.buf, "done!", 5);
}

static void test_deferred_error_reaches_the_caller(void **state)
{
	struct fx *f = *state;
	struct fx_done d = {0};

	call_held(f, &d);
	assert_int_equal(tern_reply_error(held, -EBUSY, "try again tomorrow"), 0);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, -EBUSY);
	assert_string_equal((char *)d.buf, "try again tomorrow");
}

static void test_deferred_commit_too_large_is_an_error_not_a_truncation(void **state)
{
	struct fx *f = *state;
	struct fx_done d = {0};

	call_held(f, &d);
	assert_int_equal(tern_reply_commit(held, tern_session_max_payload(f->srv) + 1), -EMSGSIZE);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, -EMSGSIZE);
}

static void test_unknown_method_gets_its_own_code(void **state)
{
	struct fx *f = *state;
	struct tern_sync_reply rep = {0};

	assert_int_equal(tern_call_sync(f->cli, 0xdeadbeef, "?", 1, &rep, 10000), TERN_ENOMETHOD);
	assert_non_null(strstr(rep.errmsg, "0xdeadbeef"));
}

static void test_handler_errno_and_message_reach_the_caller(void **state)
{
	struct fx *f = *state;
	struct tern_sync_reply rep = {0};
	struct tern_session_counters c;

	assert_int_equal(tern_call_sync(f->cli, M_FAIL, "w", 1, &rep, 10000), -EINVAL);
	assert_string_equal(rep.errmsg, "widget count must be positive");
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.errors, 1);
}

/* A call's status and whether the peer sent it, seen inside the callback. */
struct remote_seen {
	bool done;
	int status;
	int remote;
};

static void remote_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct remote_seen *w = user;

	(void)reply, (void)len;
	w->done = true;
	w->status = status;
	w->remote = tern_call_status_remote(s);
}

/* The same code from the handler and from this side: only the flag tells. */
static void test_remote_status_tells_the_peers_codes_from_ours(void **state)
{
	struct fx *f = *state;
	struct tern_call_opts o = {.size = sizeof(o), .timeout_ms = 50};
	struct remote_seen a = {0}, b = {0}, c = {0};
	tern_req *late;

	assert_int_equal(tern_call(f->cli, M_FAIL, "w", 1, remote_cb, &a, NULL), 0);
	assert_int_equal(fx_run_until(f, &a.done, 10000), 0);
	assert_int_equal(a.status, -EINVAL);
	assert_int_equal(a.remote, 1);
	/* a handler's -ETIMEDOUT and -ECONNRESET are the peer's */
	held = NULL;
	assert_int_equal(tern_call(f->cli, M_DEFERRED, "x", 1, remote_cb, &b, NULL), 0);
	wait_held(f);
	assert_int_equal(tern_reply_error(held, -ECONNRESET, "the backend went away"), 0);
	assert_int_equal(fx_run_until(f, &b.done, 10000), 0);
	assert_int_equal(b.status, -ECONNRESET);
	assert_int_equal(b.remote, 1);
	/* the deadline is ours, though the handler fails it with the same code */
	held = NULL;
	assert_int_equal(tern_call(f->cli, M_DEFERRED, "x", 1, remote_cb, &c, &o), 0);
	assert_int_equal(fx_run_until(f, &c.done, 10000), 0);
	assert_int_equal(c.status, -ETIMEDOUT);
	assert_int_equal(c.remote, 0);
	wait_held(f); /* (it may reach the handler after its deadline) */
	late = held;
	assert_int_equal(tern_reply_error(late, -ETIMEDOUT, "too slow"), 0);
	/* outside a callback there is no such status */
	assert_int_equal(tern_call_status_remote(f->cli), 0);
	echo_once(f, M_RAW, 100);
}

static void test_reply_larger_than_the_slot_is_an_error(void **state)
{
	struct fx *f = *state;
	struct tern_sync_reply rep = {0};

	assert_int_equal(tern_call_sync(f->cli, M_BIG_RAW, "x", 1, &rep, 10000), -EMSGSIZE);
	assert_non_null(strstr(rep.errmsg, "exceeds the slot payload"));
	assert_int_equal(tern_call_sync(f->cli, M_BIG_INPLACE, "x", 1, &rep, 10000), -EMSGSIZE);
	/* The session is still healthy afterwards. */
	echo_once(f, M_RAW, 100);
}

/* ---- the soak ------------------------------------------------------------- */

#define SOAK_CALLS 10000

struct soak {
	struct fx *f;
	tern_session *from;
	uint32_t method;
	int issued, done, errors, corrupt;
	uint8_t seen[SOAK_CALLS];
};

static size_t soak_len(uint32_t seq, size_t max)
{
	return 8 + (seq * 7919u) % (max - 8);
}

static void soak_cb(tern_session *s, int status, const void *reply, size_t len, void *user);

static int soak_issue(struct soak *k)
{
	static uint8_t buf[8192];
	uint32_t seq = (uint32_t)k->issued;
	size_t max = tern_session_max_payload(k->from);
	size_t len = soak_len(seq, max);
	int rc;

	memcpy(buf, &seq, 4);
	fill(buf + 4, len - 4, seq);
	rc = tern_call(k->from, k->method, buf, len, soak_cb, k, NULL);
	if (rc == 0)
		k->issued++;
	return rc;
}

static void soak_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct soak *k = user;
	uint8_t want[8192];
	uint32_t seq;

	(void)s;
	k->done++;
	if (status) {
		k->errors++;
		return;
	}
	memcpy(&seq, reply, 4);
	if (seq >= SOAK_CALLS || len != soak_len(seq, tern_session_max_payload(k->from))) {
		k->corrupt++;
		return;
	}
	fill(want, len - 4, seq);
	if (memcmp(want, (const uint8_t *)reply + 4, len - 4) != 0)
		k->corrupt++;
	if (k->seen[seq]++)
		k->corrupt++; /* a duplicate */
}

/* Keep the pipe full: issue until the session pushes back, then run. */
static void soak_run(struct fx *f, struct soak *k, struct soak *other)
{
	while (k->done < SOAK_CALLS || (other && other->done < SOAK_CALLS)) {
		while (k->issued < SOAK_CALLS && soak_issue(k) == 0)
			;
		while (other && other->issued < SOAK_CALLS && soak_issue(other) == 0)
			;
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
}

static void check_soak(struct soak *k)
{
	assert_int_equal(k->done, SOAK_CALLS);
	assert_int_equal(k->errors, 0);
	assert_int_equal(k->corrupt, 0);
	for (int i = 0; i < SOAK_CALLS; i++)
		assert_int_equal(k->seen[i], 1); /* none lost, none duplicated */
}

static void test_pipelined_soak_10000_calls_checksummed(void **state)
{
	struct fx *f = *state;
	struct soak *k = calloc(1, sizeof(*k));
	struct tern_session_counters c;

	k->f = f;
	k->from = f->cli;
	k->method = M_RAW;
	soak_run(f, k, NULL);
	check_soak(k);
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.calls_sent, SOAK_CALLS);
	assert_int_equal(c.protocol_errors, 0);
	assert_int_equal(tern_session_counters(f->srv, &c), 0);
	assert_int_equal(c.calls_served, SOAK_CALLS);
	free(k);
}

/* Both ends soak each other at full depth at once. */
static void soak_both_ways(struct fx *f, uint32_t cli_method, uint32_t srv_method)
{
	struct soak *a = calloc(1, sizeof(*a)), *b = calloc(1, sizeof(*b));

	a->f = b->f = f;
	a->from = f->cli;
	a->method = cli_method;
	b->from = f->srv;
	b->method = srv_method;
	soak_run(f, a, b);
	check_soak(a);
	check_soak(b);
	free(a);
	free(b);
}

static void test_bidirectional_calls_on_one_session(void **state)
{
	/* Request and reply slots must never collide when both call. */
	soak_both_ways(*state, M_INPLACE, M_RAW);
}

/* ---- zero copy -------------------------------------------------------------- */

static void test_inplace_reply_is_written_in_the_registered_send_slot(void **state)
{
	struct fx *f = *state;
	tern_session *srv = f->srv;
	uint64_t copies_before = srv->copy_bytes;
	uint8_t *base = srv->conn->send_base;
	uint8_t *slot;

	last_out = NULL;
	echo_once(f, M_INPLACE, 4000);
	assert_non_null(last_out);
	/* out lies inside the session's registered send region, in a reply slot */
	assert_true(last_out >= base + (size_t)srv->n * srv->slot_size);
	assert_true(last_out + last_out_cap <= base + srv->conn->send_region);
	/* and the slot posted is exactly the one the handler wrote, as is */
	slot = base + (size_t)srv->last_send_slot * srv->slot_size;
	assert_ptr_equal(slot + TERN_HDR_SIZE, last_out);
	assert_int_equal(srv->last_send_len, TERN_HDR_SIZE + 4000);
	/* no payload byte was copied by the engine between handler and post */
	assert_int_equal(srv->copy_bytes, copies_before);

	/* The raw path, for contrast, makes exactly one copy. */
	echo_once(f, M_RAW, 4000);
	assert_int_equal(srv->copy_bytes, copies_before + 4000);
}

static void test_acquire_commit_sends_from_the_acquired_slot(void **state)
{
	struct fx *f = *state;
	tern_session *cli = f->cli;
	uint64_t copies_before = cli->copy_bytes;
	struct fx_done d = {0};
	tern_callslot *c, *c2;
	void *buf, *buf2;
	uint32_t free_before;
	size_t cap;

	assert_int_equal(tern_call_acquire(cli, &buf, &cap, &c), 0);
	assert_int_equal(cap, tern_session_max_payload(cli));
	assert_true((uint8_t *)buf >= cli->conn->send_base &&
		    (uint8_t *)buf < cli->conn->send_base + cli->conn->send_region);
	memcpy(buf, "zero-copy request", 17);
	assert_int_equal(tern_call_commit(c, M_RAW, 17, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, 0);
	assert_memory_equal(d.buf, "zero-copy request", 17);
	assert_int_equal(cli->copy_bytes, copies_before); /* the client copied nothing */

	/* An aborted acquisition gives its slot and credit back. */
	free_before = tern__rpc(cli)->nfree_calls;
	assert_int_equal(tern_call_acquire(cli, &buf2, &cap, &c2), 0);
	assert_int_equal(tern__rpc(cli)->nfree_calls, free_before - 1);
	tern_call_abort(c2);
	assert_int_equal(tern__rpc(cli)->nfree_calls, free_before);
	assert_int_equal(cli->cr.tx, cli->n);
	assert_int_equal(cli->cr.replies_expected, 0);
	/* Commit of more than the slot aborts with a clear error. */
	assert_int_equal(tern_call_acquire(cli, &buf2, &cap, &c2), 0);
	assert_int_equal(tern_call_commit(c2, M_RAW, cap + 1, fx_done_cb, &d, NULL), -EMSGSIZE);
	assert_int_equal(tern__rpc(cli)->nfree_calls, free_before);
}

/* ---- flow control ----------------------------------------------------------- */

/* The kernel caches hw_counters for their lifespan (12 ms on rxe); wait
 * well past it so readings are fresh. */
static void settle_counters(void)
{
	uv_sleep(100);
}

static uint64_t rnr_delta(tern_rnr_monitor *mon, const char *name)
{
	uint64_t d = UINT64_MAX;

	/* NULL device: summed over every port, so no RNR anywhere is missed */
	assert_int_equal(tern_rnr_monitor_delta(mon, NULL, 0, name, &d), 0);
	return d;
}

static void test_saturating_run_causes_no_rnr(void **state)
{
	tern_rnr_monitor *mon;

	settle_counters();
	assert_int_equal(tern_rnr_monitor_create(NULL, &mon), 0);
	/* Small slots, 16 deep, both directions at once: the receive rings are
	 * as full as the credits allow for the whole run. */
	soak_both_ways(*state, M_RAW, M_INPLACE);
	settle_counters();
	assert_int_equal(rnr_delta(mon, TERN_RNR_RESPONDER_OUT_OF_BUFFER), 0);
	assert_int_equal(rnr_delta(mon, TERN_RNR_REQUESTER_RNR_NAK), 0);
	assert_int_equal(rnr_delta(mon, TERN_RNR_RNR_RETRIES_EXCEEDED), 0);
	/* and the traffic did happen on this device */
	assert_true(rnr_delta(mon, "sent_pkts") >= 4 * SOAK_CALLS);
	tern_rnr_monitor_destroy(mon);
}

static void test_nonblock_session_fails_fast_with_eagain(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 2, .nonblock = 1};
	struct tern_session_counters c;
	struct fx_done d[3] = {0};
	void *buf;
	size_t cap;
	tern_callslot *cs;

	(void)state;
	assert_int_equal(fx_setup(f, &o, TERN_PROGRESS_BUSY), 0);
	register_all(f->ctx);
	held = NULL;
	assert_int_equal(tern_call(f->cli, M_DEFERRED, "a", 1, fx_done_cb, &d[0], NULL), 0);
	assert_int_equal(tern_call(f->cli, M_RAW, "b", 1, fx_done_cb, &d[1], NULL), 0);
	/* Two in flight on a two-slot session: the third fails at once. */
	assert_int_equal(tern_call(f->cli, M_RAW, "c", 1, fx_done_cb, &d[2], NULL), -EAGAIN);
	assert_int_equal(tern_call_acquire(f->cli, &buf, &cap, &cs), -EAGAIN);
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.credit_stalls, 2);
	assert_int_equal(fx_run_until(f, &d[1].done, 10000), 0);
	assert_int_equal(tern_call(f->cli, M_RAW, "c", 1, fx_done_cb, &d[2], NULL), 0);
	assert_int_equal(fx_run_until(f, &d[2].done, 10000), 0);
	assert_int_equal(d[2].status, 0);
	fx_teardown(f);
	free(f);
}

static void test_wait_mode_queues_beyond_the_slots(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 2, .queue_depth = 3};
	struct fx_done d[6] = {0};
	int done = 0, val[5] = {10, 11, 12, 13, 14};

	(void)state;
	assert_int_equal(fx_setup(f, &o, TERN_PROGRESS_BUSY), 0);
	register_all(f->ctx);
	/* queued requests are read when sent: each keeps its own buffer */
	for (int i = 0; i < 5; i++)
		assert_int_equal(
			tern_call(f->cli, M_RAW, &val[i], sizeof(int), fx_done_cb, &d[i], NULL), 0);
	/* 2 in flight + 3 queued: the queue is full. */
	assert_int_equal(tern_call(f->cli, M_RAW, "x", 1, fx_done_cb, &d[5], NULL), -ENOBUFS);
	while (done < 5) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = 0;
		for (int i = 0; i < 5; i++)
			done += d[i].done;
	}
	for (int i = 0; i < 5; i++) {
		assert_int_equal(d[i].status, 0);
		assert_memory_equal(d[i].buf, &val[i], sizeof(int));
	}
	fx_teardown(f);
	free(f);
}

/* ---- progress modes ------------------------------------------------------------ */

static void echo_many(enum tern_progress p)
{
	struct fx *f = calloc(1, sizeof(*f));
	uint8_t in[512], out[512];

	assert_int_equal(fx_setup(f, NULL, p), 0);
	register_all(f->ctx);
	for (int i = 0; i < 300; i++) {
		struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};
		size_t len = (size_t)(i % 500) + 1;
		fill(in, len, (uint32_t)i);
		assert_int_equal(
			tern_call_sync(f->cli, i & 1 ? M_RAW : M_INPLACE, in, len, &rep, 10000), 0);
		assert_int_equal(rep.len, len);
		assert_memory_equal(out, in, len);
	}
	fx_teardown(f);
	free(f);
}

static void test_event_progress_echo(void **state)
{
	(void)state;
	echo_many(TERN_PROGRESS_EVENT);
}

static void test_adaptive_progress_echo_across_idle_gaps(void **state)
{
	struct fx *f = calloc(1, sizeof(*f));

	(void)state;
	echo_many(TERN_PROGRESS_ADAPTIVE);
	/* Go quiet long enough to arm and sleep, then call again. */
	assert_int_equal(fx_setup(f, NULL, TERN_PROGRESS_ADAPTIVE), 0);
	register_all(f->ctx);
	echo_once(f, M_RAW, 10);
	for (int i = 0; i < 5; i++) {
		uv_sleep(20);
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
	assert_false(f->ctx->idle_active); /* it went to sleep on the fds */
	echo_once(f, M_INPLACE, 10);
	fx_teardown(f);
	free(f);
}

/* ---- contexts ------------------------------------------------------------------ */

static void watchdog_fired(int sig)
{
	static const char msg[] = "test_engine: a test hung: the watchdog ended it\n";

	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	_exit(1);
}

/* One turn of @ctx: on mem://, a single event (its provider queues them). */
static void turn(tern_ctx *ctx, bool one)
{
	if (one)
		tern_ctx_poll(ctx, 1);
	else
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
}

static void note_closed(tern_session *s, int reason)
{
	(void)reason;
	*(bool *)tern_session_data(s) = true;
}

/*
 * A context destroyed while a connection to its listener is half made (its
 * engine took the client's hello; its provider has not yet said the
 * connection is up) is destroyed: the late "up" closes the connection
 * instead of leaving a session nobody will close.
 */
static void test_destroying_a_context_mid_accept_finishes(void **state)
{
	struct tern_ctx_opts o = {.size = sizeof(o), .progress = TERN_PROGRESS_BUSY};
	bool mem = fx_is("mem"), cli_closed = false;
	struct tern_session_opts so = {
		.size = sizeof(so), .on_close = note_closed, .data = &cli_closed};
	tern_ctx *sctx, *cctx;
	tern_session *cli, *srv;
	tern_listener *l;
	uint64_t end;

	(void)state;
	signal(SIGALRM, watchdog_fired);
	alarm(fx_is("rdma") ? 300 : 30);
	assert_int_equal(tern_ctx_create(&o, &sctx), 0);
	assert_int_equal(tern_ctx_create(&o, &cctx), 0);
	assert_int_equal(tern_listen(sctx, fx_listen_uri(), NULL, NULL, &l), 0);
	assert_int_equal(tern_connect(cctx, tern_listener_uri(l), &so, NULL, &cli), 0);
	/* Until the server's engine has taken the hello... */
	end = tern__now_ns() + 20000000000ull;
	while (tern_list_empty(&sctx->sessions) && tern__now_ns() < end) {
		turn(cctx, false);
		turn(sctx, mem);
	}
	assert_false(tern_list_empty(&sctx->sessions));
	/* ...and the client is up, the server's last step of the handshake
	 * waiting in its provider (mem: queued; shm, tcp: the READY unread;
	 * rdma: the ESTABLISHED event unread). */
	while (!cli_closed && !tern_session_is_ready(cli) && tern__now_ns() < end)
		turn(cctx, false);
	assert_false(cli_closed);
	assert_true(tern_session_is_ready(cli));
	srv = tern_container_of(sctx->sessions.next, tern_session, link);
	assert_int_equal(srv->state, TERN_S_CONNECTING);

	assert_int_equal(tern_ctx_destroy(sctx), 0);

	/* The client hears the connection go (and the session is freed). */
	while (!cli_closed && tern__now_ns() < end)
		turn(cctx, false);
	assert_true(cli_closed);
	assert_int_equal(tern_ctx_destroy(cctx), 0);
	alarm(0);
}

/* on_close, seen from both ends of one fixture */
struct ends_closed {
	tern_session *cli, *srv;
	int cli_reason, srv_reason;
	int cli_calls, srv_calls;
};

static void note_end_closed(tern_session *s, int reason)
{
	struct ends_closed *e = tern_session_data(s);

	if (s == e->cli) {
		e->cli_calls++;
		e->cli_reason = reason;
	} else if (s == e->srv) {
		e->srv_calls++;
		e->srv_reason = reason;
	}
}

/*
 * tern_session_close(s, NULL) runs the session's on_close (tern.h), with
 * the reason a close callback would have had (0); the peer's on_close
 * hears -ECONNRESET.  Both run once.
 */
static void test_close_with_no_callback_runs_on_close(void **state)
{
	struct ends_closed e = {0};
	struct tern_session_opts so = {.size = sizeof(so), .on_close = note_end_closed, .data = &e};
	struct fx f;

	(void)state;
	assert_int_equal(fx_setup(&f, &so, TERN_PROGRESS_BUSY), 0);
	register_all(f.ctx);
	e.cli = f.cli;
	e.srv = f.srv;
	echo_once(&f, M_RAW, 10);
	assert_int_equal(tern_session_close(f.cli, NULL), 0);
	assert_int_equal(fx_run_until_count(&f, &e.cli_calls, 1, 20000), 0);
	assert_int_equal(e.cli_reason, 0);
	assert_int_equal(fx_run_until_count(&f, &e.srv_calls, 1, 20000), 0);
	assert_int_equal(e.srv_reason, -ECONNRESET);
	/* (both handles are freed now; destroying the context runs neither again) */
	fx_teardown(&f);
	assert_int_equal(e.cli_calls, 1);
	assert_int_equal(e.srv_calls, 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_raw_echo_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_inplace_echo_sizes, setup, teardown),
		cmocka_unit_test_setup_teardown(test_deferred_replies_later_from_its_slot, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_deferred_error_reaches_the_caller, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_deferred_commit_too_large_is_an_error_not_a_truncation, setup,
			teardown),
		cmocka_unit_test_setup_teardown(test_unknown_method_gets_its_own_code, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_handler_errno_and_message_reach_the_caller,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_remote_status_tells_the_peers_codes_from_ours,
						setup, teardown),
		cmocka_unit_test_setup_teardown(test_reply_larger_than_the_slot_is_an_error, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_pipelined_soak_10000_calls_checksummed,
						setup_nb, teardown),
		cmocka_unit_test_setup_teardown(test_bidirectional_calls_on_one_session, setup_nb,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_inplace_reply_is_written_in_the_registered_send_slot, setup, teardown),
		cmocka_unit_test_setup_teardown(test_acquire_commit_sends_from_the_acquired_slot,
						setup, teardown),
		cmocka_unit_test(test_nonblock_session_fails_fast_with_eagain),
		cmocka_unit_test(test_wait_mode_queues_beyond_the_slots),
		cmocka_unit_test(test_event_progress_echo),
		cmocka_unit_test(test_adaptive_progress_echo_across_idle_gaps),
		cmocka_unit_test(test_destroying_a_context_mid_accept_finishes),
		cmocka_unit_test(test_close_with_no_callback_runs_on_close),
		/* rdma only, from here: it reads the RNR counters of the NIC */
		cmocka_unit_test_setup_teardown(test_saturating_run_causes_no_rnr, setup_small_nb,
						teardown),
	};
	size_t n = sizeof(tests) / sizeof(tests[0]) - (fx_is("rdma") ? 0 : 1);

	if (!fx_listen_uri()) {
		printf("SKIP: %s\n",
		       fx_is("rdma") ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
		return 77;
	}
	return _cmocka_run_group_tests(fx_transport(), tests, n, NULL, NULL);
}
