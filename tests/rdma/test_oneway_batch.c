// SPDX-License-Identifier: MIT
/*
 * One-way messages and dynamic batching on real verbs: order and no loss
 * under backpressure (credits coming back in explicit credit messages),
 * wait / nonblock / queued sends, batches formed by count, by time and by a
 * sender running out of credit, per-item errors, batches across sessions.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "fixture.h"

#define M_SINK	  0x300
#define M_BATCH	  0x301
#define M_OWBATCH 0x302
#define M_ECHO	  0x303

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* ---- the one-way sink: checks order, counts ---------------------------- */

static uint32_t sink_next, sink_bad, sink_count;

static void sink(tern_req *r, const void *in, size_t n, void *u)
{
	uint32_t seq;
	(void)r, (void)u;
	if (n != 64) {
		sink_bad++;
		return;
	}
	memcpy(&seq, in, 4);
	if (seq != sink_next)
		sink_bad++;
	sink_next = seq + 1;
	sink_count++;
}

static struct fx *fx_new(const struct tern_session_opts *o)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_int_equal(fx_setup(f, o, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_oneway(f->ctx, M_SINK, sink, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_ECHO, fx_echo, NULL), 0);
	sink_next = sink_bad = sink_count = 0;
	return f;
}

static void fx_free(struct fx *f)
{
	fx_teardown(f);
	free(f);
}

#define STREAM 20000

static void test_oneway_stream_in_order_with_waiting_sender(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 8};
	struct fx *f = fx_new(&o);
	struct tern_session_counters cli, srv;
	uint8_t msg[64] = {0};

	(void)state;
	for (uint32_t i = 0; i < STREAM; i++) {
		int rc;
		memcpy(msg, &i, 4);
		/* no callback: out of credit means -EAGAIN, then wait */
		while ((rc = tern_send(f->cli, M_SINK, msg, sizeof(msg), NULL, NULL)) == -EAGAIN)
			assert_int_equal(tern_session_wait_writable(f->cli, 10000), 0);
		assert_int_equal(rc, 0);
	}
	assert_int_equal(fx_run_until_count(f, (int *)&sink_count, STREAM, 20000), 0);
	assert_int_equal(sink_count, STREAM);
	assert_int_equal(sink_bad, 0); /* every one, in order */
	/* a last credit message may still be on its way */
	for (double t0 = now_s(); now_s() - t0 < 10;) {
		tern_session_counters(f->cli, &cli);
		tern_session_counters(f->srv, &srv);
		if (srv.credit_msgs_sent == cli.credit_msgs_received)
			break;
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
	assert_int_equal(cli.oneway_sent, STREAM);
	assert_int_equal(srv.oneway_received, STREAM);
	assert_int_equal(srv.oneway_dropped, 0);
	/* 8 credits for 20,000 messages: the sender ran dry and waited... */
	assert_true(cli.credit_stalls > 0);
	/* ...and with no replies, credits came back in credit messages, many
	 * credits each */
	assert_true(srv.credit_msgs_sent > 0);
	assert_true(srv.credit_msgs_sent < STREAM / 2);
	assert_int_equal(srv.credit_msgs_sent, cli.credit_msgs_received);
	printf("20000 one-way messages, 8 credits: %llu credit messages, %llu stalls\n",
	       (unsigned long long)srv.credit_msgs_sent, (unsigned long long)cli.credit_stalls);
	fx_free(f);
}

static void test_oneway_nonblock_gets_eagain_and_loses_nothing(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 4, .nonblock = 1};
	struct fx *f = fx_new(&o);
	uint8_t msg[64] = {0};
	uint32_t sent = 0, eagain = 0;

	(void)state;
	while (sent < 2000) {
		int rc;
		memcpy(msg, &sent, 4);
		rc = tern_send(f->cli, M_SINK, msg, sizeof(msg), NULL, NULL);
		if (rc == -EAGAIN) {
			eagain++;
			tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
			continue;
		}
		assert_int_equal(rc, 0);
		sent++;
	}
	assert_int_equal(fx_run_until_count(f, (int *)&sink_count, 2000, 20000), 0);
	assert_int_equal(sink_bad, 0);
	assert_true(eagain > 0);
	fx_free(f);
}

static int queued_done, queued_bad;

static void queued_cb(tern_session *s, int status, void *user)
{
	(void)s, (void)user;
	queued_done++;
	if (status)
		queued_bad++;
}

static void test_oneway_queued_sends_keep_order_and_report(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 2, .queue_depth = 64};
	struct fx *f = fx_new(&o);
	static uint8_t msgs[40][64];
	int queued = 0;

	(void)state;
	queued_done = queued_bad = 0;
	for (uint32_t i = 0; i < 40; i++) {
		int rc;
		memcpy(msgs[i], &i, 4);
		rc = tern_send(f->cli, M_SINK, msgs[i], 64, queued_cb, NULL);
		assert_true(rc == 0 || rc == TERN_QUEUED);
		queued += rc == TERN_QUEUED;
	}
	assert_true(queued > 0);
	assert_int_equal(fx_run_until_count(f, (int *)&sink_count, 40, 20000), 0);
	assert_int_equal(sink_bad, 0);
	assert_int_equal(queued_done, queued);
	assert_int_equal(queued_bad, 0);
	fx_free(f);
}

static void test_oneway_acquire_commit_zero_copy(void **state)
{
	struct fx *f = fx_new(NULL);
	tern_callslot *c;
	void *buf;
	size_t cap;

	(void)state;
	for (uint32_t i = 0; i < 100; i++) {
		int rc;
		while ((rc = tern_send_acquire(f->cli, &buf, &cap, &c)) == -EAGAIN)
			tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		assert_int_equal(rc, 0);
		memset(buf, 0, 64);
		memcpy(buf, &i, 4);
		/* a send slot is not a call: tern_call_commit refuses it */
		if (i == 0)
			assert_int_equal(tern_call_commit(c, M_SINK, 64, fx_done_cb, NULL, NULL),
					 -EINVAL);
		assert_int_equal(tern_send_commit(c, M_SINK, 64), 0);
	}
	assert_int_equal(fx_run_until_count(f, (int *)&sink_count, 100, 20000), 0);
	assert_int_equal(sink_bad, 0);
	fx_free(f);
}

static void test_oneway_to_a_method_that_is_not_one_way_is_counted(void **state)
{
	struct fx *f = fx_new(NULL);
	struct tern_session_counters c;
	struct fx_done d = {0};

	(void)state;
	assert_int_equal(tern_send(f->cli, 0xabcdef, "x", 1, NULL, NULL), 0);
	assert_int_equal(tern_send(f->cli, M_ECHO, "x", 1, NULL, NULL), 0);
	/* a call after them proves they were handled (in order) */
	assert_int_equal(tern_call(f->cli, M_ECHO, "y", 1, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	tern_session_counters(f->srv, &c);
	assert_int_equal(c.oneway_dropped, 2);
	assert_non_null(strstr(tern_ctx_last_error(f->ctx), "dropped a one-way message"));
	/* and a call to a one-way method is an error, not a hang */
	d.done = false;
	assert_int_equal(tern_call(f->cli, M_SINK, "z", 1, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 10000), 0);
	assert_int_equal(d.status, TERN_ENOMETHOD);
	fx_free(f);
}

static void test_drain_waits_until_the_peer_consumed_everything(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 64};
	struct fx *f = fx_new(&o);
	uint8_t msg[64] = {0};

	(void)state;
	/* A tail shorter than a quarter of the credits: no threshold is met,
	 * so only the idle rule returns those credits. */
	for (uint32_t i = 0; i < 3; i++) {
		memcpy(msg, &i, 4);
		assert_int_equal(tern_send(f->cli, M_SINK, msg, sizeof(msg), NULL, NULL), 0);
	}
	assert_int_equal(tern_session_drain(f->cli, 10000), 0);
	assert_int_equal(sink_count, 3); /* consumed before drain returned */
	/* and a longer stream drains too, every message consumed */
	for (uint32_t i = 3; i < 1000; i++) {
		int rc;
		memcpy(msg, &i, 4);
		while ((rc = tern_send(f->cli, M_SINK, msg, sizeof(msg), NULL, NULL)) == -EAGAIN)
			assert_int_equal(tern_session_wait_writable(f->cli, 10000), 0);
		assert_int_equal(rc, 0);
	}
	assert_int_equal(tern_session_drain(f->cli, 10000), 0);
	assert_int_equal(sink_count, 1000);
	assert_int_equal(sink_bad, 0);
	fx_free(f);
}

/* ---- batching -------------------------------------------------------------- */

static int batches, batch_sizes[64], batch_sessions[64];
static double batch_at[64];

/* Replies "item i of n": the caller can see which batch served it.  Items
 * whose request starts with 'x' fail alone. */
static void batch_handler(struct tern_batch_item *it, size_t n, void *u)
{
	tern_session *first = n ? tern_req_session(it[0].req) : NULL;
	int sessions = 1;

	(void)u;
	if (batches < 64) {
		batch_sizes[batches] = (int)n;
		batch_at[batches] = now_s();
	}
	for (size_t i = 0; i < n; i++) {
		if (tern_req_session(it[i].req) != first)
			sessions = 2;
		if (it[i].in_len && ((const char *)it[i].in)[0] == 'x') {
			tern_req_set_error(it[i].req, "no x here");
			it[i].status = -EINVAL;
			continue;
		}
		it[i].status = snprintf(it[i].out, it[i].out_cap, "%.*s %zu/%zu", (int)it[i].in_len,
					(const char *)it[i].in, i, n);
	}
	if (batches < 64)
		batch_sessions[batches] = sessions;
	batches++;
}

static void reg_batch(struct fx *f, uint32_t max, uint32_t wait_us)
{
	struct tern_batch_opts bo = {.size = sizeof(bo), .max = max, .wait_us = wait_us};
	assert_int_equal(tern_register_batch(f->ctx, M_BATCH, &bo, batch_handler, NULL), 0);
	batches = 0;
}

static void test_batch_forms_by_count(void **state)
{
	struct fx *f = fx_new(NULL);
	struct fx_done d[8] = {0};
	char req[8][8];
	int done = 0;

	(void)state;
	reg_batch(f, 8, 60 * 1000000); /* a minute: only the count can trigger it */
	for (int i = 0; i < 8; i++) {
		snprintf(req[i], sizeof(req[i]), "r%d", i);
		assert_int_equal(
			tern_call(f->cli, M_BATCH, req[i], strlen(req[i]), fx_done_cb, &d[i], NULL),
			0);
	}
	while (done < 8) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = 0;
		for (int i = 0; i < 8; i++)
			done += d[i].done;
	}
	assert_int_equal(batches, 1);
	assert_int_equal(batch_sizes[0], 8);
	for (int i = 0; i < 8; i++) {
		char want[32];
		snprintf(want, sizeof(want), "r%d %d/8", i, i);
		assert_int_equal(d[i].status, 0);
		assert_int_equal(d[i].len, strlen(want));
		assert_memory_equal(d[i].buf, want, d[i].len); /* its own reply */
	}
	fx_free(f);
}

static void test_batch_forms_by_time(void **state)
{
	struct fx *f = fx_new(NULL);
	struct fx_done d[3] = {0};
	double t0;
	int done = 0;

	(void)state;
	reg_batch(f, 64, 50000); /* 50 ms */
	t0 = now_s();
	for (int i = 0; i < 3; i++)
		assert_int_equal(tern_call(f->cli, M_BATCH, "t", 1, fx_done_cb, &d[i], NULL), 0);
	while (done < 3) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = d[0].done + d[1].done + d[2].done;
	}
	assert_int_equal(batches, 1);
	assert_int_equal(batch_sizes[0], 3);
	printf("3 requests, max 64, wait 50 ms: batch ran after %.1f ms\n",
	       (batch_at[0] - t0) * 1e3);
	assert_true(batch_at[0] - t0 >= 0.045);
	assert_true(batch_at[0] - t0 < 5.0);
	fx_free(f);
}

static void test_batch_items_fail_alone(void **state)
{
	struct fx *f = fx_new(NULL);
	struct fx_done d[4] = {0};
	const char *req[4] = {"a", "xb", "c", "xd"};
	int done = 0;

	(void)state;
	reg_batch(f, 4, 60 * 1000000);
	for (int i = 0; i < 4; i++)
		assert_int_equal(
			tern_call(f->cli, M_BATCH, req[i], strlen(req[i]), fx_done_cb, &d[i], NULL),
			0);
	while (done < 4) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = d[0].done + d[1].done + d[2].done + d[3].done;
	}
	assert_int_equal(d[0].status, 0);
	assert_int_equal(d[1].status, -EINVAL);
	assert_string_equal((char *)d[1].buf, "no x here");
	assert_int_equal(d[2].status, 0);
	assert_memory_equal(d[2].buf, "c 2/4", 5);
	assert_int_equal(d[3].status, -EINVAL);
	fx_free(f);
}

static void test_batch_gathers_across_sessions(void **state)
{
	struct fx *f = fx_new(NULL);
	struct fx_done d[8] = {0};
	tern_session *second;
	int done = 0;

	(void)state;
	reg_batch(f, 8, 60 * 1000000);
	assert_int_equal(tern_connect_sync(f->ctx, f->uri, NULL, 10000, &second), 0);
	for (int i = 0; i < 8; i++)
		assert_int_equal(tern_call(i % 2 ? second : f->cli, M_BATCH, "s", 1, fx_done_cb,
					   &d[i], NULL),
				 0);
	while (done < 8) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = 0;
		for (int i = 0; i < 8; i++)
			done += d[i].done;
	}
	assert_int_equal(batches, 1);
	assert_int_equal(batch_sizes[0], 8);
	assert_int_equal(batch_sessions[0], 2);
	for (int i = 0; i < 8; i++)
		assert_int_equal(d[i].status, 0);
	fx_free(f);
}

static void test_batch_never_makes_a_sender_wait_on_itself(void **state)
{
	/* 4 credits, batches of 16 with an hour's wait: without the credit
	 * rule the sender would sit until the hour passed. */
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 4};
	struct fx *f = fx_new(&o);
	struct fx_done d[12] = {0};
	double t0 = now_s();
	int done = 0;

	(void)state;
	reg_batch(f, 16, 3600u * 1000000u);
	for (int i = 0; i < 12; i++)
		assert_int_equal(tern_call(f->cli, M_BATCH, "w", 1, fx_done_cb, &d[i], NULL), 0);
	while (done < 12 && now_s() - t0 < 30) {
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
		done = 0;
		for (int i = 0; i < 12; i++)
			done += d[i].done;
	}
	assert_int_equal(done, 12);
	assert_true(batches >= 3);
	for (int i = 0; i < batches && i < 64; i++)
		assert_true(batch_sizes[i] <= 4);
	fx_free(f);
}

static uint32_t ow_next, ow_bad, ow_count, ow_batches;

static void ow_batch(struct tern_batch_item *it, size_t n, void *u)
{
	(void)u;
	ow_batches++;
	for (size_t i = 0; i < n; i++) {
		uint32_t seq;
		assert_null(it[i].out);
		memcpy(&seq, it[i].in, 4);
		if (seq != ow_next)
			ow_bad++;
		ow_next = seq + 1;
		ow_count++;
	}
}

static void test_oneway_batches_in_order(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 64};
	struct tern_batch_opts bo = {.size = sizeof(bo), .max = 32, .wait_us = 2000, .oneway = 1};
	struct fx *f = fx_new(&o);
	uint8_t msg[64] = {0};

	(void)state;
	ow_next = ow_bad = ow_count = ow_batches = 0;
	assert_int_equal(tern_register_batch(f->ctx, M_OWBATCH, &bo, ow_batch, NULL), 0);
	for (uint32_t i = 0; i < 5000; i++) {
		int rc;
		memcpy(msg, &i, 4);
		while ((rc = tern_send(f->cli, M_OWBATCH, msg, sizeof(msg), NULL, NULL)) == -EAGAIN)
			assert_int_equal(tern_session_wait_writable(f->cli, 10000), 0);
		assert_int_equal(rc, 0);
	}
	assert_int_equal(fx_run_until_count(f, (int *)&ow_count, 5000, 20000), 0);
	assert_int_equal(ow_bad, 0);
	assert_true(ow_batches < 5000); /* they really were batched */
	printf("5000 one-way messages in %u batches\n", ow_batches);
	fx_free(f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_oneway_stream_in_order_with_waiting_sender),
		cmocka_unit_test(test_oneway_nonblock_gets_eagain_and_loses_nothing),
		cmocka_unit_test(test_oneway_queued_sends_keep_order_and_report),
		cmocka_unit_test(test_oneway_acquire_commit_zero_copy),
		cmocka_unit_test(test_oneway_to_a_method_that_is_not_one_way_is_counted),
		cmocka_unit_test(test_drain_waits_until_the_peer_consumed_everything),
		cmocka_unit_test(test_batch_forms_by_count),
		cmocka_unit_test(test_batch_forms_by_time),
		cmocka_unit_test(test_batch_items_fail_alone),
		cmocka_unit_test(test_batch_gathers_across_sessions),
		cmocka_unit_test(test_batch_never_makes_a_sender_wait_on_itself),
		cmocka_unit_test(test_oneway_batches_in_order),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
