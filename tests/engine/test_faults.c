// SPDX-License-Identifier: MIT
/*
 * Faults on every provider (TERN_TEST_TRANSPORT): deadlines and late
 * replies, a peer process killed mid-call, refused handshakes, connecting
 * to nothing, and closing with calls pending; on rdma also a hostile peer
 * (raw verbs) sending malformed messages.  The shm and tcp hostile peers
 * are in test_shm.c and test_tcp.c.
 *
 * The killed peer is this same program re-executed with --hold-server, so
 * the child starts with fresh verbs state (a verbs context must not cross
 * fork()); it inherits TERN_TEST_TRANSPORT.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "rpc.h"
#include "verbs_pair.h"

extern char **environ;

#define M_ECHO 0x200
#define M_HOLD 0x201

static struct fx_held held;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static struct fx *fx_new(const struct tern_session_opts *o)
{
	struct fx *f = calloc(1, sizeof(*f));

	assert_int_equal(fx_setup(f, o, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_ECHO, fx_echo, NULL), 0);
	assert_int_equal(tern_register_deferred(f->ctx, M_HOLD, fx_hold, &held), 0);
	held.n = 0;
	return f;
}

static void fx_free(struct fx *f)
{
	fx_teardown(f);
	free(f);
}

static void run_until_held(struct fx *f, int n)
{
	double end = now_s() + 20;
	while (held.n < n && now_s() < end)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(held.n, n);
}

/* ---- deadlines ------------------------------------------------------------- */

static void test_deadline_times_out_reclaims_the_slot_and_drops_the_late_reply(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 2};
	struct tern_call_opts co = {.size = sizeof(co), .timeout_ms = 300};
	struct fx *f = fx_new(&o);
	struct fx_done old = {0}, fresh = {0};
	struct tern_session_counters c;
	double t0;
	void *out;
	size_t cap;

	(void)state;
	assert_int_equal(tern_call(f->cli, M_HOLD, "old", 3, fx_done_cb, &old, &co), 0);
	run_until_held(f, 1);
	t0 = now_s();
	assert_int_equal(fx_run_until(f, &old.done, 10000), 0);
	assert_int_equal(old.status, -ETIMEDOUT);
	assert_true(now_s() - t0 < 5.0);
	/*
	 * The call slot is free again at once... except on shm, where the
	 * server reads the request in place, in that very slot: it comes back
	 * when the server is done reading it, and the deferred handler still
	 * holds it.  (The request's credit is pinned the same way on every
	 * provider: the server has not re-posted its receive.)
	 */
	assert_int_equal(tern__rpc(f->cli)->nfree_calls, f->cli->n - (fx_is("shm") ? 1 : 0));
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.timeouts, 1);

	/* ...and a new call takes the very same slot, with a new generation
	 * (on shm the other slot). */
	assert_int_equal(tern_call(f->cli, M_HOLD, "new", 3, fx_done_cb, &fresh, NULL), 0);
	assert_int_equal(tern__rpc(f->cli)->calls[fx_is("shm") ? 1 : 0].state, TERN_CALL_INFLIGHT);
	run_until_held(f, 2);

	/* The old request is answered now: its reply must not complete the
	 * new call that sits in the same slot. */
	assert_int_equal(tern_reply_acquire(held.req[0], &out, &cap), 0);
	memcpy(out, "STALE", 5);
	assert_int_equal(tern_reply_commit(held.req[0], 5), 0);
	for (int i = 0; i < 20000; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	assert_false(fresh.done);
	assert_int_equal(tern_session_counters(f->cli, &c), 0);
	assert_int_equal(c.late_replies, 1);

	assert_int_equal(tern_reply_acquire(held.req[1], &out, &cap), 0);
	memcpy(out, "FRESH", 5);
	assert_int_equal(tern_reply_commit(held.req[1], 5), 0);
	assert_int_equal(fx_run_until(f, &fresh.done, 10000), 0);
	assert_int_equal(fresh.status, 0);
	assert_memory_equal(fresh.buf, "FRESH", 5);
	fx_free(f);
}

static void test_queued_call_times_out_in_the_queue(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = 1};
	struct tern_call_opts co = {.size = sizeof(co), .timeout_ms = 200};
	struct fx *f = fx_new(&o);
	struct fx_done a = {0}, b = {0};

	(void)state;
	assert_int_equal(tern_call(f->cli, M_HOLD, "a", 1, fx_done_cb, &a, NULL), 0);
	assert_int_equal(tern_call(f->cli, M_ECHO, "b", 1, fx_done_cb, &b, &co), 0); /* queued */
	assert_int_equal(fx_run_until(f, &b.done, 10000), 0);
	assert_int_equal(b.status, -ETIMEDOUT);
	assert_false(a.done);
	fx_free(f);
}

/* ---- a peer that dies ------------------------------------------------------ */

static int hold_server_main(void)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	tern_ctx *ctx;
	tern_listener *l;
	int reported = 0;

	/* It spins until killed: if the test dies first (a failed assert),
	 * die with it rather than spin on as an orphan. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() == 1)
		return 1;
	if (tern_ctx_create(&co, &ctx) || tern_register_deferred(ctx, M_HOLD, fx_hold, &held) ||
	    tern_listen(ctx, fx_listen_uri(), NULL, NULL, &l))
		return 1;
	printf("%s\n", tern_listener_uri(l));
	fflush(stdout);
	for (;;) {
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
		if (held.n > reported) {
			reported = held.n;
			printf("held %d\n", held.n);
			fflush(stdout);
		}
	}
}

static bool killed_closed;
static int killed_reason;

static void killed_on_close(tern_session *s, int reason)
{
	(void)s;
	killed_closed = true;
	killed_reason = reason;
}

static void test_peer_killed_mid_call_resets_every_pending_call(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_session_opts so = {.size = sizeof(so), .on_close = killed_on_close};
	struct tern_call_opts cop = {.size = sizeof(cop), .timeout_ms = 30000};
	char *argv[] = {"/proc/self/exe", "--hold-server", NULL};
	struct fx_done d[5] = {0};
	posix_spawn_file_actions_t fa;
	char line[256], buf[4096] = "";
	size_t have = 0;
	int out[2], st, all;
	tern_session *s;
	tern_ctx *ctx;
	pid_t pid;
	double t0;
	FILE *fp;

	(void)state;
	assert_int_equal(pipe(out), 0);
	posix_spawn_file_actions_init(&fa);
	posix_spawn_file_actions_adddup2(&fa, out[1], 1);
	posix_spawn_file_actions_addclose(&fa, out[0]);
	assert_int_equal(posix_spawn(&pid, "/proc/self/exe", &fa, NULL, argv, environ), 0);
	posix_spawn_file_actions_destroy(&fa);
	close(out[1]);
	fp = fdopen(out[0], "r");
	assert_non_null(fgets(line, sizeof(line), fp));
	line[strcspn(line, "\n")] = 0;
	fcntl(out[0], F_SETFL, O_NONBLOCK);

	killed_closed = false;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_connect_sync(ctx, line, &so, 10000, &s), 0);
	for (int i = 0; i < 5; i++)
		assert_int_equal(tern_call(s, M_HOLD, "x", 1, fx_done_cb, &d[i], &cop), 0);
	/* Wait until the server holds all five. */
	t0 = now_s();
	while (!strstr(buf, "held 5") && now_s() - t0 < 20) {
		ssize_t n = read(out[0], buf + have, sizeof(buf) - 1 - have);
		if (n > 0) {
			have += (size_t)n;
			buf[have] = 0;
		}
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	}
	assert_non_null(strstr(buf, "held 5"));

	assert_int_equal(kill(pid, SIGKILL), 0);
	assert_int_equal(waitpid(pid, &st, 0), pid);
	t0 = now_s();
	do {
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
		all = 1;
		for (int i = 0; i < 5; i++)
			all &= d[i].done;
	} while (!all && now_s() - t0 < 30);
	for (int i = 0; i < 5; i++) {
		assert_true(d[i].done);
		assert_int_equal(d[i].status, -ECONNRESET);
	}
	/* well within the 30 s deadline: the disconnect, not the timer, did it */
	printf("pending calls reset %.2f s after the kill\n", now_s() - t0);
	assert_true(now_s() - t0 < 25.0);
	/* and the session ends by itself, saying why (its handle is freed
	 * once on_close returns, so it is not touched after that) */
	while (!killed_closed && now_s() - t0 < 30)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	assert_true(killed_closed);
	assert_int_equal(killed_reason, -ECONNRESET);
	fclose(fp);
	tern_ctx_destroy(ctx);
}

/* ---- a hostile peer: raw verbs sending what tern never would ------------ */

#define H_SLOT	1024
#define H_COUNT 4

struct hostile {
	struct vp_opts o;
	struct vp_endpoint ep;
	uint8_t msgs[8][H_SLOT];
	uint32_t lens[8];
	int nmsgs;
	int rc;
	bool sent;
};

struct closed_info {
	bool closed;
	int reason;
	struct tern_session_counters c;
};

static struct closed_info hostile_closed;

static void hostile_on_close(tern_session *s, int reason)
{
	hostile_closed.closed = true;
	hostile_closed.reason = reason;
	tern_session_counters(s, &hostile_closed.c);
}

static void *hostile_thread(void *arg)
{
	struct hostile *h = arg;
	struct ibv_wc wc;

	h->rc = vp_connect(&h->o, &h->ep, 8, H_SLOT);
	if (h->rc)
		return NULL;
	for (int i = 0; i < h->nmsgs; i++) {
		int got;

		memcpy(h->ep.buf + 8 * H_SLOT, h->msgs[i], h->lens[i]);
		if ((h->rc = vp_post_send(&h->ep, 8 * H_SLOT, h->lens[i], 0, IBV_SEND_SIGNALED))) {
			fprintf(stderr, "hostile peer: posting message %d: %s\n", i,
				strerror(-h->rc));
			return NULL;
		}
		got = vp_poll_one(&h->ep, &wc, 5000);
		/* The last message is the violation: the server may close on
		 * it before its acknowledgement leaves, so our send may then
		 * fail (or not complete yet).  Whether it arrived is for the
		 * server's counters to say, not for this completion. */
		if (i < h->nmsgs - 1 && (got != 1 || wc.status != IBV_WC_SUCCESS)) {
			fprintf(stderr, "hostile peer: message %d: %s\n", i,
				got == 1 ? ibv_wc_status_str(wc.status) : "no completion");
			h->rc = -EIO;
			return NULL;
		}
	}
	h->sent = true;
	return NULL;
}

static struct tern_hdr valid_req(uint32_t seq)
{
	struct tern_hdr r = {.kind = TERN_MSG_REQ, .method = M_HOLD, .seq = seq, .len = 4};
	return r;
}

static void add_msg(struct hostile *h, const struct tern_hdr *hdr, uint32_t total_len)
{
	tern_hdr_encode(h->msgs[h->nmsgs], hdr);
	h->lens[h->nmsgs++] = total_len;
}

/* Connect a raw verbs peer with a valid handshake, send @h's messages, and
 * check tern closes the session with TERN_EPEER and counts it. */
static void expect_protocol_error(struct hostile *h)
{
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = H_SLOT,
				       .slot_count = H_COUNT,
				       .on_close = hostile_on_close};
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_hello hello = {
		.version = TERN_WIRE_VERSION, .slot_size = H_SLOT, .slot_count = H_COUNT};
	uint8_t hs[40];
	tern_listener *l;
	tern_ctx *ctx;
	pthread_t t;
	double t0;

	memset(&hostile_closed, 0, sizeof(hostile_closed));
	held.n = 0;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_register_deferred(ctx, M_HOLD, fx_hold, &held), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), &so, NULL, &l), 0);
	tern_hello_encode(hs, &hello);
	vp_opts_init(&h->o);
	h->o.port = (uint16_t)tern_listener_port(l);
	h->o.buf_len = 9 * H_SLOT;
	h->o.private_data = hs;
	h->o.private_data_len = sizeof(hs);
	pthread_create(&t, NULL, hostile_thread, h);
	t0 = now_s();
	while (!hostile_closed.closed && now_s() - t0 < 20)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	pthread_join(t, NULL);
	assert_int_equal(h->rc, 0);
	assert_true(hostile_closed.closed);
	assert_int_equal(hostile_closed.reason, TERN_EPEER);
	assert_int_equal(hostile_closed.c.protocol_errors, 1);
	printf("refused: %s\n", tern_ctx_last_error(ctx));
	vp_endpoint_close(&h->ep);
	tern_ctx_destroy(ctx);
}

static void test_hostile_peer_short_message(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	(void)state;
	memset(h->msgs[0], 0x5a, 10);
	h->lens[0] = 10;
	h->nmsgs = 1;
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_unknown_kind(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = valid_req(0);
	(void)state;
	r.kind = 9;
	add_msg(h, &r, TERN_HDR_SIZE + 4);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_length_field_lies(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = valid_req(0);
	(void)state;
	r.len = 1000; /* but only 4 bytes follow */
	add_msg(h, &r, TERN_HDR_SIZE + 4);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_call_slot_out_of_range(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = valid_req(0);
	(void)state;
	r.call_slot = 60000;
	add_msg(h, &r, TERN_HDR_SIZE + 4);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_out_of_sequence(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = valid_req(5);
	(void)state;
	add_msg(h, &r, TERN_HDR_SIZE + 4);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_request_without_credit(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	(void)state;
	/* H_COUNT requests use every credit (the server holds them, so none
	 * comes back); one more is a violation. */
	for (uint32_t i = 0; i <= H_COUNT; i++) {
		struct tern_hdr r = valid_req(i);
		r.call_slot = (uint16_t)(i % H_COUNT);
		add_msg(h, &r, TERN_HDR_SIZE + 4);
	}
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_reply_to_no_call(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = {.kind = TERN_MSG_REP, .seq = 0, .len = 0};
	(void)state;
	add_msg(h, &r, TERN_HDR_SIZE);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_credits_it_never_owed(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	struct tern_hdr r = {.kind = TERN_MSG_CREDIT, .credits = 3};
	(void)state;
	add_msg(h, &r, TERN_HDR_SIZE);
	expect_protocol_error(h);
	free(h);
}

static void test_hostile_peer_control_ack_out_of_turn(void **state)
{
	struct hostile *h = calloc(1, sizeof(*h));
	/* an ACK returns control credits the server never spent */
	struct tern_hdr r = {.kind = TERN_MSG_CTRL_ACK};
	(void)state;
	add_msg(h, &r, TERN_HDR_SIZE);
	expect_protocol_error(h);
	free(h);
}

/*
 * A consumer that returns credits in pieces and never sends anything else:
 * the raw verbs peer takes H_COUNT one-way messages, returns one credit per
 * credit message until its two control credits are spent, and can return
 * the rest only after tern sends the control ACK.  Without the ACK, the
 * producer's tern_session_drain() would wait forever.
 */
struct piecemeal {
	struct vp_opts o;
	struct vp_endpoint ep;
	int rc;
	int oneways, acks;
	uint32_t seq;
};

/* The next message tern sent us (re-posting its receive), or -errno. */
static int piecemeal_recv(struct piecemeal *p, struct tern_hdr *h)
{
	struct ibv_wc wc;

	for (;;) {
		int n = vp_poll_one(&p->ep, &wc, 10000);

		if (n != 1 || wc.status != IBV_WC_SUCCESS)
			return -EIO;
		if (wc.opcode != IBV_WC_RECV)
			continue; /* our sends */
		tern_hdr_decode(p->ep.buf + wc.wr_id * H_SLOT, h);
		return vp_post_recv(&p->ep, wc.wr_id * H_SLOT, H_SLOT, wc.wr_id);
	}
}

static int piecemeal_credit(struct piecemeal *p, uint16_t credits)
{
	struct tern_hdr c = {.kind = TERN_MSG_CREDIT, .credits = credits, .seq = p->seq++};

	tern_hdr_encode(p->ep.buf + 8 * H_SLOT, &c);
	return vp_post_send(&p->ep, 8 * H_SLOT, TERN_HDR_SIZE, 0, 0);
}

static void *piecemeal_thread(void *arg)
{
	struct piecemeal *p = arg;
	struct tern_hdr h;

	if ((p->rc = vp_connect(&p->o, &p->ep, 8, H_SLOT)))
		return NULL;
	while (p->oneways < H_COUNT) {
		if ((p->rc = piecemeal_recv(p, &h)))
			return NULL;
		p->oneways += h.kind == TERN_MSG_ONEWAY;
	}
	/* two credit messages, one credit each: no control credit left */
	if ((p->rc = piecemeal_credit(p, 1)) || (p->rc = piecemeal_credit(p, 1)))
		return NULL;
	do {
		if ((p->rc = piecemeal_recv(p, &h)))
			return NULL; /* no ACK: the rest is stranded */
	} while (h.kind != TERN_MSG_CTRL_ACK);
	p->acks++;
	if (h.ctrl_credits != 2) {
		p->rc = -EPROTO;
		return NULL;
	}
	p->rc = piecemeal_credit(p, H_COUNT - 2);
	return NULL;
}

static tern_session *accepted;

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (!status)
		accepted = s;
}

static void test_a_silent_producer_sends_the_control_ack(void **state)
{
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = H_SLOT, .slot_count = H_COUNT};
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_hello hello = {
		.version = TERN_WIRE_VERSION, .slot_size = H_SLOT, .slot_count = H_COUNT};
	struct piecemeal *p = calloc(1, sizeof(*p));
	uint8_t hs[40], msg[16] = {0};
	tern_listener *l;
	tern_ctx *ctx;
	pthread_t t;
	double t0;

	(void)state;
	accepted = NULL;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), &so, on_accept, &l), 0);
	tern_hello_encode(hs, &hello);
	vp_opts_init(&p->o);
	p->o.port = (uint16_t)tern_listener_port(l);
	p->o.buf_len = 9 * H_SLOT;
	p->o.private_data = hs;
	p->o.private_data_len = sizeof(hs);
	pthread_create(&t, NULL, piecemeal_thread, p);
	for (t0 = now_s(); !accepted && now_s() - t0 < 20;)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	assert_non_null(accepted);
	/* the accepted end produces: every credit, then silence */
	for (int i = 0; i < H_COUNT; i++)
		assert_int_equal(tern_send(accepted, M_HOLD, msg, sizeof(msg), NULL, NULL), 0);
	assert_int_equal(tern_send(accepted, M_HOLD, msg, sizeof(msg), NULL, NULL), -EAGAIN);
	assert_int_equal(tern_session_drain(accepted, 15000), 0);
	pthread_join(t, NULL);
	assert_int_equal(p->rc, 0);
	assert_int_equal(p->oneways, H_COUNT);
	assert_int_equal(p->acks, 1);
	vp_endpoint_close(&p->ep);
	tern_ctx_destroy(ctx);
	free(p);
}

/* ---- refused and failed connections ------------------------------------------ */

static void test_connect_to_a_port_with_no_listener_is_a_clean_error(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	tern_session *s = (tern_session *)1;
	char uri[128];
	tern_ctx *ctx;
	double t0;
	int rc;

	(void)state;
	snprintf(uri, sizeof(uri), "%s", fx_dead_uri());
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	t0 = now_s();
	rc = tern_connect_sync(ctx, uri, NULL, 5000, &s);
	printf("no listener: %s (%s) after %.2f s\n", tern_err_name(rc), tern_ctx_last_error(ctx),
	       now_s() - t0);
	assert_true(rc == -ECONNREFUSED || rc == -EHOSTUNREACH || rc == -ETIMEDOUT);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(ctx), uri));
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

static int server_refusals;
static int server_refusal_status;

static void count_refusal(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (!s) {
		server_refusals++;
		server_refusal_status = status;
	}
}

static void expect_refusal(const struct tern_session_opts *srv, const struct tern_session_opts *cli,
			   int want, const char *needle)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	tern_session *s = NULL;
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	server_refusals = 0;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), srv, count_refusal, &l), 0);
	rc = tern_connect_sync(ctx, tern_listener_uri(l), cli, 10000, &s);
	printf("client: %s: %s\n", tern_err_name(rc), tern_ctx_last_error(ctx));
	assert_int_equal(rc, want);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(ctx), needle));
	/* and the server saw it too */
	assert_int_equal(server_refusals, 1);
	assert_int_equal(server_refusal_status, want);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

static void test_geometry_mismatch_is_refused_on_both_sides(void **state)
{
	struct tern_session_opts srv = {.size = sizeof(srv), .slot_size = 8192};
	struct tern_session_opts cli = {.size = sizeof(cli), .slot_size = 4096};
	(void)state;
	expect_refusal(&srv, &cli, TERN_EGEOMETRY, "4096");
}

static void test_schema_mismatch_is_refused_on_both_sides(void **state)
{
	struct tern_session_opts srv = {.size = sizeof(srv), .schema_hash = 0x1111};
	struct tern_session_opts cli = {.size = sizeof(cli), .schema_hash = 0x2222};
	(void)state;
	expect_refusal(&srv, &cli, TERN_ESCHEMA, "schema");
}

static char refusal_why[256];

static void note_refusal(tern_listener *l, tern_session *s, int status)
{
	count_refusal(l, s, status);
	if (!s)
		snprintf(refusal_why, sizeof(refusal_why), "%s",
			 tern_ctx_last_error(tern_listener_data(l)));
}

/*
 * A client refused by the service check: the listener hears the status and,
 * in tern_ctx_last_error(), the reason, not what the hang-up that follows
 * the refusal left there.
 */
static void test_a_service_refusal_tells_the_listener_why(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	const struct tern_service_ref want = {.name = "Calc", .schema_hash = 0x2222};
	struct tern_session_opts cli = {.size = sizeof(cli), .services = &want, .nservices = 1};
	tern_session *s = NULL;
	tern_listener *l;
	tern_ctx *ctx;

	(void)state;
	server_refusals = 0;
	refusal_why[0] = 0;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_service_register(ctx, "Calc", 0x1111), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), NULL, note_refusal, &l), 0);
	tern_listener_set_data(l, ctx);
	assert_int_equal(tern_connect_sync(ctx, tern_listener_uri(l), &cli, 10000, &s),
			 TERN_ESCHEMA);
	for (int i = 0; i < 2000 && !server_refusals; i++)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	printf("listener: %s\n", refusal_why);
	assert_int_equal(server_refusals, 1);
	assert_int_equal(server_refusal_status, TERN_ESCHEMA);
	assert_non_null(strstr(refusal_why, "refused a client"));
	assert_non_null(strstr(refusal_why, "Calc"));
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

/* ---- closing ------------------------------------------------------------------ */

static int closes;
static int close_reason;

static void close_cb(tern_session *s, int reason)
{
	(void)s;
	closes++;
	close_reason = reason;
}

/* on_close of whichever session the test did not close itself */
static int peer_close_reason;
static bool peer_closed;

static void peer_on_close(tern_session *s, int reason)
{
	(void)s;
	peer_closed = true;
	peer_close_reason = reason;
}

static void test_local_close_cancels_pending_calls(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .on_close = peer_on_close};
	struct fx *f = fx_new(&o);
	struct fx_done d = {0}, q = {0};

	(void)state;
	closes = 0;
	peer_closed = false;
	assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, fx_done_cb, &d, NULL), 0);
	run_until_held(f, 1);
	assert_int_equal(tern_session_close(f->cli, close_cb), 0);
	assert_int_equal(tern_session_close(f->cli, close_cb), -EALREADY);
	assert_true(d.done); /* at once, before the transport is even down */
	assert_int_equal(d.status, -ECANCELED);
	assert_int_equal(tern_call(f->cli, M_ECHO, "y", 1, fx_done_cb, &q, NULL), -ENOTCONN);
	assert_int_equal(fx_run_until_count(f, &closes, 1, 10000), 0);
	assert_int_equal(close_reason, 0);
	f->cli = NULL;
	/* The server's session ends too (the peer disconnected)... */
	assert_int_equal(fx_run_until(f, &peer_closed, 20000), 0);
	assert_int_equal(peer_close_reason, -ECONNRESET);
	f->srv = NULL;
	/* ...but its held request outlived it: asking for its reply slot is
	 * a clean error, not a crash, and finishes it, releasing the session's
	 * memory (LeakSanitizer would report it otherwise)... */
	{
		void *out;
		size_t cap;
		assert_int_equal(tern_reply_acquire(held.req[0], &out, &cap), -ECONNRESET);
	}
	/* (held.req[0] is gone with it: ASan would catch any further use) */
	fx_free(f);
}

static void test_server_closing_resets_the_clients_calls(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o), .on_close = peer_on_close};
	struct fx *f = fx_new(&o);
	struct fx_done d = {0};

	(void)state;
	peer_closed = false;
	closes = 0;
	assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, fx_done_cb, &d, NULL), 0);
	run_until_held(f, 1);
	assert_int_equal(tern_session_close(f->srv, close_cb), 0);
	assert_int_equal(fx_run_until(f, &d.done, 20000), 0);
	assert_int_equal(d.status, -ECONNRESET);
	/* the client's session ends by itself and says why */
	assert_int_equal(fx_run_until(f, &peer_closed, 20000), 0);
	assert_int_equal(peer_close_reason, -ECONNRESET);
	assert_int_equal(closes, 1); /* the server's own close callback */
	f->cli = f->srv = NULL;
	fx_free(f);
}

/* ---- a peer of the previous wire version (hand-built hellos, raw verbs) ---- */

struct old_peer {
	struct vp_opts o;
	struct vp_endpoint ep;
	struct vp_listener l;
	uint8_t hs[sizeof(struct tern_wire_hello)];
	uint8_t reject[256];
	size_t reject_len;
	int rc;
	bool done;
};

static void *old_client_thread(void *arg)
{
	struct old_peer *p = arg;

	p->reject_len = sizeof(p->reject);
	p->rc = vp_connect_ex(&p->o, &p->ep, 0, 0, p->reject, &p->reject_len);
	p->done = true;
	return NULL;
}

/*
 * A client of the previous version: the listener refuses it at the
 * handshake with TERN_EVERSION and says which version it spoke, and the
 * refusal it sends back says so too (status, and our version).
 */
static void test_a_client_of_the_previous_wire_version_is_refused_at_the_handshake(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = H_SLOT, .slot_count = H_COUNT};
	struct old_peer *p = calloc(1, sizeof(*p));
	struct tern_hello back;
	tern_listener *l;
	tern_ctx *ctx;
	pthread_t t;
	double t0;

	(void)state;
	server_refusals = 0;
	refusal_why[0] = 0;
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	assert_int_equal(tern_listen(ctx, fx_listen_uri(), &so, note_refusal, &l), 0);
	tern_listener_set_data(l, ctx);
	fx_old_hello(p->hs, false, H_SLOT, H_COUNT, 0);
	vp_opts_init(&p->o);
	p->o.port = (uint16_t)tern_listener_port(l);
	p->o.private_data = p->hs;
	p->o.private_data_len = sizeof(p->hs);
	pthread_create(&t, NULL, old_client_thread, p);
	for (t0 = now_s(); (!p->done || !server_refusals) && now_s() - t0 < 20;)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	pthread_join(t, NULL);
	printf("listener: %s: %s\n", tern_err_name(server_refusal_status), refusal_why);
	assert_int_equal(p->rc, -ECONNREFUSED);
	assert_int_equal(server_refusals, 1);
	assert_int_equal(server_refusal_status, TERN_EVERSION);
	assert_non_null(strstr(refusal_why, fx_old_version_words()));
	/* the refusal: our hello, with the status */
	assert_int_equal(p->reject_len >= sizeof(struct tern_wire_hello), true);
	assert_int_equal(tern_hello_decode(p->reject, p->reject_len, &back), 0);
	assert_int_equal(back.status, TERN_EVERSION);
	vp_endpoint_close(&p->ep);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	free(p);
}

/* A listener of the previous version: refuses our hello, as it would. */
static void *old_server_thread(void *arg)
{
	struct old_peer *p = arg;
	struct rdma_cm_id *id;

	p->rc = vp_wait_cm_event(p->l.ch, RDMA_CM_EVENT_CONNECT_REQUEST, &id, 20000);
	if (!p->rc) {
		if (rdma_reject(id, p->hs, sizeof(p->hs)))
			p->rc = -errno;
		rdma_destroy_id(id);
	}
	p->done = true;
	return NULL;
}

/*
 * A server of the previous version refuses our hello (it cannot read it):
 * the client's connect fails with TERN_EVERSION and says which version the
 * server speaks, not "connection refused" as if nobody listened.
 */
static void test_a_server_of_the_previous_wire_version_is_a_version_error(void **state)
{
	struct tern_ctx_opts co = {.size = sizeof(co)};
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = H_SLOT, .slot_count = H_COUNT};
	struct old_peer *p = calloc(1, sizeof(*p));
	tern_session *s = NULL;
	char uri[128];
	const char *u = fx_listen_uri();
	tern_ctx *ctx;
	pthread_t t;
	int rc;

	(void)state;
	fx_old_hello(p->hs, true, H_SLOT, H_COUNT, TERN_EVERSION);
	vp_opts_init(&p->o);
	assert_int_equal(vp_listen(&p->o, &p->l), 0);
	snprintf(uri, sizeof(uri), "%.*s:%u", (int)(strrchr(u, ':') - u), u, p->l.port);
	assert_int_equal(tern_ctx_create(&co, &ctx), 0);
	pthread_create(&t, NULL, old_server_thread, p);
	rc = tern_connect_sync(ctx, uri, &so, 20000, &s);
	pthread_join(t, NULL);
	printf("client: %s: %s\n", tern_err_name(rc), tern_ctx_last_error(ctx));
	assert_int_equal(p->rc, 0);
	assert_int_equal(rc, TERN_EVERSION);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "server speaks"));
	assert_non_null(strstr(tern_ctx_last_error(ctx), fx_old_version_words()));
	vp_listener_close(&p->l);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
	free(p);
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(
			test_deadline_times_out_reclaims_the_slot_and_drops_the_late_reply),
		cmocka_unit_test(test_queued_call_times_out_in_the_queue),
		cmocka_unit_test(test_peer_killed_mid_call_resets_every_pending_call),
		cmocka_unit_test(test_connect_to_a_port_with_no_listener_is_a_clean_error),
		cmocka_unit_test(test_geometry_mismatch_is_refused_on_both_sides),
		cmocka_unit_test(test_schema_mismatch_is_refused_on_both_sides),
		cmocka_unit_test(test_a_service_refusal_tells_the_listener_why),
		cmocka_unit_test(test_local_close_cancels_pending_calls),
		cmocka_unit_test(test_server_closing_resets_the_clients_calls),
		/* rdma only, from here: the hostile peer speaks raw verbs */
		cmocka_unit_test(test_hostile_peer_short_message),
		cmocka_unit_test(test_hostile_peer_unknown_kind),
		cmocka_unit_test(test_hostile_peer_length_field_lies),
		cmocka_unit_test(test_hostile_peer_call_slot_out_of_range),
		cmocka_unit_test(test_hostile_peer_out_of_sequence),
		cmocka_unit_test(test_hostile_peer_request_without_credit),
		cmocka_unit_test(test_hostile_peer_reply_to_no_call),
		cmocka_unit_test(test_hostile_peer_credits_it_never_owed),
		cmocka_unit_test(test_hostile_peer_control_ack_out_of_turn),
		cmocka_unit_test(test_a_silent_producer_sends_the_control_ack),
		cmocka_unit_test(
			test_a_client_of_the_previous_wire_version_is_refused_at_the_handshake),
		cmocka_unit_test(test_a_server_of_the_previous_wire_version_is_a_version_error),
	};
	/* the hostile peers at the end: raw verbs, rdma only */
	size_t n = sizeof(tests) / sizeof(tests[0]) - (fx_is("rdma") ? 0 : 12);

	if (!fx_listen_uri()) {
		printf("SKIP: %s\n",
		       fx_is("rdma") ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
		return 77;
	}
	if (argc > 1 && strcmp(argv[1], "--hold-server") == 0)
		return hold_server_main();
	return _cmocka_run_group_tests(fx_transport(), tests, n, NULL, NULL);
}
