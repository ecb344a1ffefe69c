// SPDX-License-Identifier: MIT
/*
 * Hostile peers on every provider (TERN_TEST_TRANSPORT): the sizes, offsets
 * and statuses a peer chooses, against what this side told it in the
 * handshake.
 *
 * The hostile peer is a tern engine whose outgoing messages the test
 * rewrites between the engine and the provider (tamper_with(): the
 * session's post_send goes through a hook that edits the message in its
 * send slot).  So the peer is a real client or server in every other
 * respect (handshake, credits, exports, sequence numbers), on every
 * provider, and lies in exactly the field the test names.  What must
 * happen: the side that was lied to fails that session with TERN_EPEER and
 * counts a protocol error, releases everything the session held, and goes
 * on serving every other session.
 *
 * Honest traffic that needs more staging than a session may hold
 * (max_staging) gets -ENOBUFS: never a hang, a crash or an allocation the
 * peer sized.
 *
 * A watchdog (SIGALRM) fails a test that hangs, the way a request with a
 * reply buffer of 2^64 - 1 bytes once hung the server in stage_class().
 */
#include <errno.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "internal.h"

#define M_ECHO 0x500 /* raw: the request back */
#define M_HOLD 0x501 /* deferred: kept until the test answers it */
#define M_MAKE 0x502 /* inplace: a reply of N bytes (N, a u64, is the request) */

#define MIB (1ull << 20)
#define GIB (1ull << 30)

/* ---- handlers ---------------------------------------------------------------- */

static struct fx_held held;

static ssize_t make(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	uint64_t want;

	(void)r, (void)u;
	if (n != 8)
		return -EINVAL;
	memcpy(&want, in, 8);
	if (want > cap)
		return -EMSGSIZE;
	memset(out, 0x6b, want);
	return (ssize_t)want;
}

/* ---- the watchdog --------------------------------------------------------------- */

static void watchdog_fired(int sig)
{
	static const char msg[] = "test_hostile: a test hung: the watchdog ended it\n";

	(void)sig;
	if (write(2, msg, sizeof(msg) - 1) < 0)
		_exit(1);
	_exit(1);
}

/* Under the VM's emulation everything is some ten times slower. */
static void watchdog_arm(void)
{
	signal(SIGALRM, watchdog_fired);
	alarm(fx_is("rdma") ? 300 : 60);
}

/* ---- the tampering hook ------------------------------------------------------------ */

/* Edit an outgoing message (header decoded, payload in place); true if changed. */
typedef bool (*tamper_fn)(struct tern_hdr *h, uint8_t *payload);

static const struct tern_transport_ops *real_ops;
static struct tern_transport_ops tampered_ops;
static tamper_fn tamper;
static int tampered; /* messages the hook changed */

static int tampered_post_send(struct tern_conn *c, uint32_t slot, uint32_t len, uint32_t flags)
{
	uint8_t *msg = c->send_base + (size_t)slot * c->slot_size;
	struct tern_hdr h;

	tern_hdr_decode(msg, &h);
	if (tamper && tamper(&h, msg + TERN_HDR_SIZE)) {
		tern_hdr_encode(msg, &h);
		tampered++;
	}
	return real_ops->post_send(c, slot, len, flags);
}

/* From now on, every message @s sends passes through @fn first. */
static void tamper_with(tern_session *s, tamper_fn fn)
{
	real_ops = s->conn->ops;
	tampered_ops = *real_ops;
	tampered_ops.post_send = tampered_post_send;
	s->conn->ops = &tampered_ops;
	tamper = fn;
	tampered = 0;
}

/* The value the tamper functions write, and where. */
static uint64_t lie;

static void desc_set_len(uint8_t *at, uint64_t len)
{
	struct tern_bulk_desc d;

	tern_bulk_desc_decode(at, &d);
	d.len = len;
	tern_bulk_desc_encode(at, &d);
}

static bool lie_in_reply_desc(struct tern_hdr *h, uint8_t *payload)
{
	if (h->kind != TERN_MSG_REQ || !(h->flags & TERN_F_REPLY_DESC))
		return false;
	desc_set_len(payload, lie);
	return true;
}

static bool lie_in_request_desc(struct tern_hdr *h, uint8_t *payload)
{
	if (h->kind != TERN_MSG_REQ || !(h->flags & TERN_F_BULK))
		return false;
	desc_set_len(payload + (h->flags & TERN_F_REPLY_DESC ? TERN_BULK_DESC_SIZE : 0), lie);
	return true;
}

static bool lie_in_bulk_reply_len(struct tern_hdr *h, uint8_t *payload)
{
	uint64_t n = htole64(lie);

	if (h->kind != TERN_MSG_REP || !(h->flags & TERN_F_BULK))
		return false;
	memcpy(payload, &n, 8);
	return true;
}

/* The status of the next message of kind lie_kind (an error reply, a reply). */
static uint8_t lie_kind;

static bool lie_in_status(struct tern_hdr *h, uint8_t *payload)
{
	(void)payload;
	if (h->kind != lie_kind)
		return false;
	h->status = (int32_t)(int64_t)lie;
	return true;
}

static bool lie_in_service_count(struct tern_hdr *h, uint8_t *payload)
{
	uint32_t n = htole32((uint32_t)lie);

	if (h->kind != TERN_MSG_REQ || h->method != TERN_METHOD_SVC_CHECK)
		return false;
	memcpy(payload, &n, 4);
	return true;
}

/* ---- both ends, and how they ended ------------------------------------------------ */

struct end {
	bool closed;
	int reason;
	struct tern_session_counters c;
};

static struct end srv_end, cli_end;
static struct tern_session_opts opts;

static void on_close(tern_session *s, int reason)
{
	struct end *e = s->is_server ? &srv_end : &cli_end;

	e->closed = true;
	e->reason = reason;
	tern_session_counters(s, &e->c);
}

static void opts_init(uint32_t max_msg, uint64_t max_staging)
{
	memset(&opts, 0, sizeof(opts));
	opts.size = sizeof(opts);
	opts.max_msg = max_msg;
	opts.max_staging = max_staging;
	opts.on_close = on_close;
}

static void handlers_register(tern_ctx *ctx)
{
	assert_int_equal(tern_register_raw(ctx, M_ECHO, fx_echo, NULL), 0);
	assert_int_equal(tern_register_deferred(ctx, M_HOLD, fx_hold, &held), 0);
	assert_int_equal(tern_register_inplace(ctx, M_MAKE, make, NULL), 0);
}

static struct fx *fx_new(uint32_t max_msg, uint64_t max_staging)
{
	struct fx *f = calloc(1, sizeof(*f));

	watchdog_arm();
	memset(&srv_end, 0, sizeof(srv_end));
	memset(&cli_end, 0, sizeof(cli_end));
	held.n = 0;
	opts_init(max_msg, max_staging);
	assert_non_null(f);
	assert_int_equal(fx_setup(f, &opts, TERN_PROGRESS_BUSY), 0);
	handlers_register(f->ctx);
	return f;
}

static void fx_free(struct fx *f)
{
	fx_teardown(f);
	free(f);
	tamper = NULL;
	alarm(0);
}

static int sessions_on(tern_ctx *ctx)
{
	int n = 0;

	for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next)
		n++;
	return n;
}

/* An honest call on @s is answered. */
static void assert_served(struct fx *f, tern_session *s)
{
	struct fx_done ok = {0};

	assert_int_equal(tern_call(s, M_ECHO, "alive", 5, fx_done_cb, &ok, NULL), 0);
	assert_int_equal(fx_run_until(f, &ok.done, 20000), 0);
	assert_int_equal(ok.status, 0);
	assert_int_equal(ok.len, 5);
	assert_memory_equal(ok.buf, "alive", 5);
}

/* A second, honest client, connected before the hostile one acts. */
static tern_session *bystander_connect(struct fx *f)
{
	tern_session *srv = f->srv, *by;

	assert_int_equal(tern_connect_sync(f->ctx, f->uri, &opts, 10000, &by), 0);
	assert_int_equal(fx_run_until_count(f, &f->accepts, 2, 10000), 0);
	f->srv = srv; /* the fixture's pair stays the one under attack */
	return by;
}

/*
 * The server failed the session the hostile client spoke on: TERN_EPEER,
 * one protocol error, the client's call ended, both ends gone and freed
 * (only the bystander's two ends are left on the context), and the server
 * goes on serving the bystander and a new client.
 */
static void expect_server_refused_the_peer(struct fx *f, struct fx_done *d, tern_session *by)
{
	tern_session *s;

	assert_int_equal(fx_run_until(f, &srv_end.closed, 20000), 0);
	assert_int_equal(srv_end.reason, TERN_EPEER);
	assert_int_equal(srv_end.c.protocol_errors, 1);
	assert_int_equal(fx_run_until(f, &d->done, 20000), 0);
	assert_int_not_equal(d->status, 0);
	assert_int_equal(fx_run_until(f, &cli_end.closed, 20000), 0);
	assert_int_equal(cli_end.reason, -ECONNRESET);
	f->cli = f->srv = NULL;
	/* freed once closed: no request left holding either session */
	assert_int_equal(sessions_on(f->ctx), 2);

	assert_served(f, by);
	assert_int_equal(tern_connect_sync(f->ctx, f->uri, &opts, 10000, &s), 0);
	assert_served(f, s);
}

/* ---- defect: reply descriptors the server never offered to fill --------------------- */

/*
 * An honest call with a reply buffer larger than a slot, whose reply
 * descriptor the hostile client rewrites to say @len bytes.
 */
static void reply_desc_of(uint32_t max_msg, uint64_t len)
{
	struct fx *f = fx_new(max_msg, 0);
	size_t cap = 256 << 10;
	uint8_t *rep = calloc(1, cap);
	struct tern_call_opts co = {.size = sizeof(co), .reply_buf = rep, .reply_cap = cap};
	struct fx_done d = {0};
	tern_session *by = bystander_connect(f);
	uint64_t want = 16;

	lie = len;
	tamper_with(f->cli, lie_in_reply_desc);
	/* inplace: the server makes room for the reply before the handler runs */
	assert_int_equal(tern_call(f->cli, M_MAKE, &want, 8, fx_done_cb, &d, &co), 0);
	assert_int_equal(tampered, 1);
	expect_server_refused_the_peer(f, &d, by);
	free(rep);
	fx_free(f);
}

static void test_reply_desc_of_2_64_minus_1_bytes_fails_only_its_session(void **state)
{
	(void)state;
	reply_desc_of(0, UINT64_MAX);
}

static void test_reply_desc_of_2_63_plus_1_bytes_fails_only_its_session(void **state)
{
	(void)state;
	reply_desc_of(0, (1ull << 63) + 1);
}

static void test_reply_desc_of_2_40_bytes_fails_only_its_session(void **state)
{
	(void)state;
	reply_desc_of(0, 1ull << 40);
}

static void test_reply_desc_1_gib_over_max_msg_fails_only_its_session(void **state)
{
	(void)state;
	reply_desc_of(1 << 20, MIB + GIB);
}

static void test_reply_desc_one_byte_over_max_msg_fails_only_its_session(void **state)
{
	(void)state;
	reply_desc_of(1 << 20, MIB + 1);
}

/* ---- defect: request descriptors over what the server accepts -------------------------- */

static void request_desc_of(uint64_t len)
{
	struct fx *f = fx_new(1 << 20, 0);
	size_t size = 512 << 10;
	uint8_t *req = calloc(1, size);
	struct fx_done d = {0};
	tern_session *by = bystander_connect(f);

	lie = len;
	tamper_with(f->cli, lie_in_request_desc);
	assert_int_equal(tern_call(f->cli, M_HOLD, req, size, fx_done_cb, &d, NULL), 0);
	assert_int_equal(tampered, 1);
	expect_server_refused_the_peer(f, &d, by);
	assert_int_equal(held.n, 0); /* no handler saw it */
	free(req);
	fx_free(f);
}

static void test_request_desc_one_byte_over_max_msg_fails_only_its_session(void **state)
{
	(void)state;
	request_desc_of(MIB + 1);
}

static void test_request_desc_of_2_64_minus_1_bytes_fails_only_its_session(void **state)
{
	(void)state;
	request_desc_of(UINT64_MAX);
}

/* ---- what an honest client gets at the bounds ---------------------------------------------- */

/*
 * A reply buffer larger than the session's max_msg is offered only up to
 * max_msg (the server would refuse more): a reply of max_msg bytes lands,
 * one byte more is -EMSGSIZE, and the session lives on.
 */
static void test_a_reply_buffer_over_max_msg_is_offered_up_to_max_msg(void **state)
{
	struct fx *f = fx_new(1 << 20, 0);
	size_t cap = 2 << 20;
	uint8_t *rep = calloc(1, cap);
	struct tern_call_opts co = {.size = sizeof(co), .reply_buf = rep, .reply_cap = cap};
	struct fx_done d = {0};
	uint64_t want = MIB;

	(void)state;
	assert_int_equal(tern_call(f->cli, M_MAKE, &want, 8, fx_done_cb, &d, &co), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(d.status, 0);
	assert_int_equal(d.len, MIB);
	assert_int_equal(rep[MIB - 1], 0x6b);
	assert_int_equal(rep[MIB], 0);
	memset(&d, 0, sizeof(d));
	want = MIB + 1;
	assert_int_equal(tern_call(f->cli, M_MAKE, &want, 8, fx_done_cb, &d, &co), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(d.status, -EMSGSIZE);
	assert_int_equal(tern_session_is_ready(f->cli), 1);
	assert_int_equal(tern_session_is_ready(f->srv), 1);
	free(rep);
	fx_free(f);
}

/* ---- the session's staging cap ------------------------------------------------------------- */

static int completed;

static void count_done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	fx_done_cb(s, status, reply, len, user);
	completed++;
}

/*
 * Many honest large calls at once, each pulled into staging that the
 * server keeps while its deferred handler holds the call: the first
 * max_staging / size are served, the rest fail at once with -ENOBUFS
 * (counted), and everything works again once the held calls are answered.
 */
static void test_concurrent_large_calls_over_the_staging_cap_get_enobufs(void **state)
{
	enum { K = 8, FIT = 4 };
	size_t size = 256 << 10;	     /* a staging class of its own: exactly 256 KiB */
	struct fx *f = fx_new(256 << 10, 0); /* max_staging: 4 x max_msg by default */
	uint8_t *req = calloc(K, size);
	struct fx_done d[K] = {0};
	struct tern_session_counters c;
	int ok = 0, nobufs = 0;
	tern_session *other;
	tern_mr *mr;

	(void)state;
	/* registered: the client stages nothing, the server stages each pull */
	assert_int_equal(tern_mem_register(f->ctx, req, K * size, &mr), 0);
	completed = 0;
	for (int i = 0; i < K; i++)
		assert_int_equal(
			tern_call(f->cli, M_HOLD, req + i * size, size, count_done, &d[i], NULL),
			0);
	/* the first FIT are pulled and held; the rest are refused meanwhile */
	assert_int_equal(fx_run_until_count(f, &held.n, FIT, 20000), 0);
	assert_int_equal(fx_run_until_count(f, &completed, K - FIT, 20000), 0);
	for (int i = 0; i < K; i++) {
		if (d[i].done) {
			assert_int_equal(d[i].status, -ENOBUFS);
			nobufs++;
		}
	}
	assert_int_equal(held.n, FIT);
	assert_int_equal(nobufs, K - FIT);
	assert_int_equal(tern_session_counters(f->srv, &c), 0);
	assert_int_equal(c.staging_refused, K - FIT);
	assert_int_equal(c.protocol_errors, 0);

	for (int i = 0; i < FIT; i++) {
		void *out;
		size_t cap;

		assert_int_equal(tern_reply_acquire(held.req[i], &out, &cap), 0);
		memcpy(out, "done", 4);
		assert_int_equal(tern_reply_commit(held.req[i], 4), 0);
	}
	assert_int_equal(fx_run_until_count(f, &completed, K, 20000), 0);
	for (int i = 0; i < K; i++)
		ok += d[i].status == 0;
	assert_int_equal(ok, FIT);
	assert_int_equal(f->srv->staged, 0);

	/* the same session is served in full again, with staging to spare */
	held.n = 0;
	memset(d, 0, sizeof(d));
	for (int i = 0; i < FIT; i++)
		assert_int_equal(
			tern_call(f->cli, M_ECHO, req + i * size, 1000, fx_done_cb, &d[i], NULL),
			0);
	for (int i = 0; i < FIT; i++) {
		assert_int_equal(fx_run_until(f, &d[i].done, 20000), 0);
		assert_int_equal(d[i].status, 0);
	}
	/* ...and so is another client */
	assert_int_equal(tern_connect_sync(f->ctx, f->uri, &opts, 10000, &other), 0);
	assert_served(f, other);
	assert_int_equal(tern_mem_deregister(mr), 0);
	free(req);
	fx_free(f);
}

/* The caller's own staging is capped too: -ENOBUFS before anything is sent. */
static void test_a_call_over_the_callers_staging_cap_gets_enobufs(void **state)
{
	struct fx *f = fx_new(1 << 20, 256 << 10);
	size_t size = 512 << 10;
	uint8_t *req = calloc(1, size), *rep = calloc(1, 200 << 10);
	struct tern_call_opts co = {.size = sizeof(co), .reply_buf = rep, .reply_cap = 200 << 10};
	struct tern_session_counters c;
	struct fx_done d = {0};
	uint64_t want = 200 << 10;

	(void)state;
	/* unregistered: a 512 KiB request needs 512 KiB of staging */
	assert_int_equal(tern_call(f->cli, M_ECHO, req, size, fx_done_cb, &d, NULL), -ENOBUFS);
	assert_non_null(strstr(tern_ctx_last_error(f->ctx), "max_staging"));
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.staging_refused, 1);
	assert_int_equal(c.calls_sent, 0);
	/* within the cap on both sides: served (256 KiB of staging each) */
	assert_int_equal(tern_call(f->cli, M_MAKE, &want, 8, fx_done_cb, &d, &co), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(d.status, 0);
	assert_int_equal(d.len, want);
	assert_int_equal(rep[want - 1], 0x6b);
	assert_int_equal(f->cli->staged, 0);
	free(req);
	free(rep);
	fx_free(f);
}

/* ---- bulk replies the caller never offered room for ------------------------------------------ */

static void bulk_reply_of(uint64_t len)
{
	struct fx *f = fx_new(0, 0);
	size_t cap = 256 << 10;
	uint8_t *rep = calloc(1, cap);
	struct tern_call_opts co = {.size = sizeof(co), .reply_buf = rep, .reply_cap = cap};
	struct fx_done d = {0};
	uint64_t want = 100 << 10;

	lie = len;
	tamper_with(f->srv, lie_in_bulk_reply_len);
	assert_int_equal(tern_call(f->cli, M_MAKE, &want, 8, fx_done_cb, &d, &co), 0);
	assert_int_equal(fx_run_until(f, &cli_end.closed, 20000), 0);
	assert_int_equal(tampered, 1);
	assert_int_equal(cli_end.reason, TERN_EPEER);
	assert_int_equal(cli_end.c.protocol_errors, 1);
	assert_true(d.done);
	assert_int_equal(d.status, TERN_EPEER);
	free(rep);
	fx_free(f);
}

static void test_bulk_reply_one_byte_over_the_reply_buffer_is_a_protocol_error(void **state)
{
	(void)state;
	bulk_reply_of((256 << 10) + 1);
}

static void test_bulk_reply_of_2_64_minus_1_bytes_is_a_protocol_error(void **state)
{
	(void)state;
	bulk_reply_of(UINT64_MAX);
}

/* ---- defect: an error reply's status -----------------------------------------------------------
 */

/*
 * The hostile server answers a call for a method it lacks (an honest
 * TERN_ENOMETHOD) with @status instead: the client fails the session with
 * TERN_EPEER, the call too; the call never completes as a success.
 */
static void error_status_of(int64_t status, uint8_t kind, uint32_t method)
{
	struct fx *f = fx_new(0, 0);
	struct fx_done d = {0};

	lie = (uint64_t)status;
	lie_kind = kind;
	tamper_with(f->srv, lie_in_status);
	assert_int_equal(tern_call(f->cli, method, "x", 1, fx_done_cb, &d, NULL), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(tampered, 1);
	printf("%s: status %lld: %s (%s)\n", fx_transport(), (long long)status,
	       tern_err_name(d.status), tern_ctx_last_error(f->ctx));
	assert_int_equal(d.status, TERN_EPEER);
	assert_int_equal(fx_run_until(f, &cli_end.closed, 20000), 0);
	assert_int_equal(cli_end.reason, TERN_EPEER);
	assert_int_equal(cli_end.c.protocol_errors, 1);
	assert_int_equal(fx_run_until(f, &srv_end.closed, 20000), 0);
	f->cli = f->srv = NULL;
	assert_int_equal(sessions_on(f->ctx), 0);
	fx_free(f);
}

static void test_an_error_reply_with_status_0_is_a_protocol_error(void **state)
{
	(void)state;
	error_status_of(0, TERN_MSG_ERR, 0x7777);
}

static void test_an_error_reply_with_a_positive_status_is_a_protocol_error(void **state)
{
	(void)state;
	error_status_of(5, TERN_MSG_ERR, 0x7777);
	error_status_of(INT32_MAX, TERN_MSG_ERR, 0x7777);
}

static void test_an_error_reply_with_a_status_below_the_range_is_a_protocol_error(void **state)
{
	(void)state;
	error_status_of(-(TERN_ERRNO_BASE + 1000), TERN_MSG_ERR, 0x7777);
	error_status_of(INT32_MIN, TERN_MSG_ERR, 0x7777);
}

static void test_a_reply_with_a_status_is_a_protocol_error(void **state)
{
	(void)state;
	error_status_of(-EIO, TERN_MSG_REP, M_ECHO);
}

/* The edges of the range still arrive as the error they are. */
static void test_error_statuses_at_the_edges_of_the_range_arrive(void **state)
{
	int64_t edges[] = {-1, -(TERN_ERRNO_BASE + 999)};

	(void)state;
	for (int i = 0; i < 2; i++) {
		struct fx *f = fx_new(0, 0);
		struct fx_done d = {0};

		lie = (uint64_t)edges[i];
		lie_kind = TERN_MSG_ERR;
		tamper_with(f->srv, lie_in_status);
		assert_int_equal(tern_call(f->cli, 0x7777, "x", 1, fx_done_cb, &d, NULL), 0);
		assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
		assert_int_equal(d.status, (int)edges[i]);
		assert_int_equal(tern_session_is_ready(f->cli), 1);
		fx_free(f);
	}
}

/* ---- the service check ------------------------------------------------------------------------
 */

static bool svc_connected;
static int svc_connect_status;
static int refusals, refusal_status;

static void svc_connect_cb(tern_session *s, int status)
{
	(void)s;
	svc_connected = true;
	svc_connect_status = status;
}

static void svc_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (!s) {
		refusals++;
		refusal_status = status;
	}
}

/*
 * A service check that lists no services is malformed: the server refuses
 * the client with TERN_EPEER, counts it, frees the session (the check's
 * request does not keep it alive), and checks the next client as usual.
 */
static void test_a_malformed_service_check_is_refused_and_freed(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_service_ref ref = {.name = "Calc", .schema_hash = 0x1234};
	struct tern_session_opts so = {.size = sizeof(so), .services = &ref, .nservices = 1};
	struct fx_done ok = {0};
	tern_session *s;
	tern_listener *l;
	tern_ctx *ctx;

	(void)state;
	watchdog_arm();
	refusals = 0;
	svc_connected = false;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	handlers_register(ctx);
	assert_int_equal(tern_service_register(ctx, "Calc", 0x1234), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), NULL, svc_accept, &l), 0);
	assert_int_equal(tern_connect(ctx, tern_listener_uri(l), &so, svc_connect_cb, &s), 0);
	lie = 0;
	tamper_with(s, lie_in_service_count);
	while (!svc_connected || !refusals)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	assert_int_equal(tampered, 1);
	assert_int_not_equal(svc_connect_status, 0);
	assert_int_equal(refusal_status, TERN_EPEER);
	assert_int_equal(sessions_on(ctx), 0);
	tamper = NULL;

	assert_int_equal(tern_connect_sync(ctx, tern_listener_uri(l), &so, 10000, &s), 0);
	assert_int_equal(tern_call(s, M_ECHO, "alive", 5, fx_done_cb, &ok, NULL), 0);
	while (!ok.done)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	assert_int_equal(ok.status, 0);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	alarm(0);
}

/* argv[1], if given, picks the tests to run by name (a cmocka pattern). */
int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_desc_of_2_64_minus_1_bytes_fails_only_its_session),
		cmocka_unit_test(test_reply_desc_of_2_63_plus_1_bytes_fails_only_its_session),
		cmocka_unit_test(test_reply_desc_of_2_40_bytes_fails_only_its_session),
		cmocka_unit_test(test_reply_desc_1_gib_over_max_msg_fails_only_its_session),
		cmocka_unit_test(test_reply_desc_one_byte_over_max_msg_fails_only_its_session),
		cmocka_unit_test(test_request_desc_one_byte_over_max_msg_fails_only_its_session),
		cmocka_unit_test(test_request_desc_of_2_64_minus_1_bytes_fails_only_its_session),
		cmocka_unit_test(test_a_reply_buffer_over_max_msg_is_offered_up_to_max_msg),
		cmocka_unit_test(test_concurrent_large_calls_over_the_staging_cap_get_enobufs),
		cmocka_unit_test(test_a_call_over_the_callers_staging_cap_gets_enobufs),
		cmocka_unit_test(
			test_bulk_reply_one_byte_over_the_reply_buffer_is_a_protocol_error),
		cmocka_unit_test(test_bulk_reply_of_2_64_minus_1_bytes_is_a_protocol_error),
		cmocka_unit_test(test_an_error_reply_with_status_0_is_a_protocol_error),
		cmocka_unit_test(test_an_error_reply_with_a_positive_status_is_a_protocol_error),
		cmocka_unit_test(
			test_an_error_reply_with_a_status_below_the_range_is_a_protocol_error),
		cmocka_unit_test(test_a_reply_with_a_status_is_a_protocol_error),
		cmocka_unit_test(test_error_statuses_at_the_edges_of_the_range_arrive),
		cmocka_unit_test(test_a_malformed_service_check_is_refused_and_freed),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: %s\n",
		       fx_is("rdma") ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
		return 77;
	}
	if (argc > 1)
		cmocka_set_test_filter(argv[1]);
	return _cmocka_run_group_tests(fx_transport(), tests, sizeof(tests) / sizeof(tests[0]),
				       NULL, NULL);
}
