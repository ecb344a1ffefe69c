// SPDX-License-Identifier: MIT
/*
 * Generated proxies calling generated skeletons, on every provider
 * (TERN_TEST_TRANSPORT: rdma:// with rxe0 in the VM; shm:// and tcp:// on
 * the host, also under valgrind, see ../valgrind): calc.tern's Calc (typed add, inplace echo,
 * deferred stats) and Shapes (arrays, trailing bytes, empty messages, every kind with typed and
 * untyped ends), and the checks the trampolines make.  Clients and servers of different versions
 * of one service are test_gen_compat.c's.
 *
 * Server and client share one context and loop, as in tests/support's
 * fixture, so each test drives the whole exchange from one thread.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "calc.tern.h"
#include "fixture.h"

#define TIMEOUT_MS 20000

/* ---- the server ----------------------------------------------------------- */

struct server {
	tern_req *held[8]; /* requests deferred handlers kept */
	int nheld;
	int adds;
};

static int on_add(tern_req *req, const calc_AddReq *in, calc_AddResp *out, void *user)
{
	struct server *sv = user;
	int64_t sum;

	if (__builtin_add_overflow(calc_AddReq_get_a(in), calc_AddReq_get_b(in), &sum)) {
		tern_req_set_error(req, "a + b overflows");
		return -ERANGE;
	}
	calc_AddResp_set_sum(out, sum);
	sv->adds++;
	return 0;
}

static ssize_t on_echo(tern_req *req, const void *in, size_t in_len, void *out, size_t cap,
		       void *user)
{
	(void)req, (void)user;
	if (in_len > cap)
		return -EMSGSIZE;
	memcpy(out, in, in_len);
	return (ssize_t)in_len;
}

static int hold(tern_req *req, void *user)
{
	struct server *sv = user;

	if (sv->nheld == 8)
		return -EBUSY;
	sv->held[sv->nheld++] = req;
	return 0;
}

static int on_stats(tern_req *req, const void *in, size_t in_len, void *user)
{
	(void)in, (void)in_len;
	return hold(req, user);
}

static int on_scale(tern_req *req, const calc_Vec *in, calc_Vec *out, void *user)
{
	double f = calc_Vec_get_factor(in);

	(void)req, (void)user;
	for (size_t i = 0; i < CALC_VEC_X_LEN; i++)
		calc_Vec_set_x(out, i, (float)(calc_Vec_get_x(in, i) * f));
	for (size_t i = 0; i < CALC_VEC_SMALL_LEN; i++)
		calc_Vec_set_small(out, i, (int16_t)-calc_Vec_get_small(in, i));
	calc_Vec_set_factor(out, f);
	calc_Vec_set_flags(out, (uint8_t)(calc_Vec_get_flags(in) | 0x80));
	return 0;
}

/* raw, trailing bytes both ways: the reply's tail is the request's, copied once */
static int on_tag(tern_req *req, const calc_Blob *in, size_t in_len, calc_Blob *out,
		  struct tern_iov *tail, void *user)
{
	(void)req, (void)user;
	calc_Blob_set_id(out, calc_Blob_get_id(in) + 1);
	calc_Blob_set_kind(out, calc_Blob_get_kind(in));
	tail->base = calc_Blob_get_data(in, in_len, &tail->len);
	return 0;
}

/* inplace, trailing reply: `kind` bytes of (id & 0xff), written in the slot */
static ssize_t on_fill(tern_req *req, const calc_Blob *in, size_t in_len, calc_Blob *out,
		       size_t tail_cap, void *user)
{
	size_t n = calc_Blob_get_kind(in);

	(void)req, (void)in_len, (void)user;
	calc_Blob_set_id(out, calc_Blob_get_id(in));
	calc_Blob_set_kind(out, 0);
	if (n == 0xffff)
		return (ssize_t)tail_cap + 1; /* a handler that lies about its length */
	if (n > tail_cap)
		return -EMSGSIZE;
	memset(calc_Blob_data_ptr(out), (int)(calc_Blob_get_id(in) & 0xff), n);
	return (ssize_t)n;
}

static int on_count(tern_req *req, const void *in, size_t in_len, calc_Count *out, void *user)
{
	(void)req, (void)in, (void)user;
	calc_Count_set_n(out, in_len);
	calc_Count_set_sign(out, -1);
	calc_Count_set_width(out, 2);
	calc_Count_set_height(out, 3);
	calc_Count_set_ratio(out, 0.5f);
	return 0;
}

/* Count.n above this asks name and name_inplace for n bytes of pattern(). */
#define NAME_LONG     64
#define NAME_LONG_MAX (256u << 10)

static unsigned char pattern(size_t i)
{
	return (unsigned char)(i * 7 + (i >> 8));
}

static int on_name(tern_req *req, const calc_Count *in, struct tern_iov *out, void *user)
{
	static char name[32];
	static unsigned char long_name[NAME_LONG_MAX];
	uint64_t n = calc_Count_get_n(in);

	(void)req, (void)user;
	if (n > NAME_LONG) {
		if (n > NAME_LONG_MAX)
			return -EINVAL;
		for (size_t i = 0; i < n; i++)
			long_name[i] = pattern(i);
		out->base = long_name;
		out->len = n;
		return 0;
	}
	snprintf(name, sizeof(name), "n=%llu", (unsigned long long)n);
	out->base = name;
	out->len = strlen(name);
	return 0;
}

static ssize_t on_name_inplace(tern_req *req, const calc_Count *in, void *out, size_t cap,
			       void *user)
{
	uint64_t n = calc_Count_get_n(in);
	char why[96];

	(void)user;
	if (n > NAME_LONG) {
		if (n > cap) {
			snprintf(why, sizeof(why), "a name of %llu bytes, room for %zu",
				 (unsigned long long)n, cap);
			tern_req_set_error(req, why);
			return -EMSGSIZE;
		}
		for (size_t i = 0; i < n; i++)
			((unsigned char *)out)[i] = pattern(i);
		return (ssize_t)n;
	}
	return snprintf(out, cap, "inplace n=%llu", (unsigned long long)n);
}

static int on_later(tern_req *req, const calc_Vec *in, void *user)
{
	(void)in;
	return hold(req, user);
}

static int on_later_blob(tern_req *req, const calc_Blob *in, size_t in_len, void *user)
{
	(void)in, (void)in_len;
	return hold(req, user);
}

static int on_ping(tern_req *req, const calc_Empty *in, calc_Empty *out, void *user)
{
	(void)req, (void)in, (void)out, (void)user;
	return 0;
}

static struct calc_handlers calc_h = {.add = on_add, .echo = on_echo, .stats = on_stats};
static struct shapes_handlers shapes_h = {
	.scale = on_scale,
	.tag = on_tag,
	.fill = on_fill,
	.count = on_count,
	.name = on_name,
	.name_inplace = on_name_inplace,
	.later = on_later,
	.later_blob = on_later_blob,
	.ping = on_ping,
};

/* ---- set-up ----------------------------------------------------------------- */

struct t {
	struct fx fx; /* ctx, listener, and the client's end (cli) */
	struct server sv;
	int accepted, refused, refused_status;
};

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	struct t *t = tern_listener_data(l);

	if (s)
		t->accepted++;
	else
		t->refused++, t->refused_status = status;
}

/* Run the loop until *@counter reaches @n; 0 or -ETIMEDOUT. */
static int run_until(struct t *t, const int *counter, int n)
{
	return fx_run_until_count(&t->fx, counter, n, TIMEOUT_MS);
}

static int connect_with(struct t *t, const struct tern_service_ref *refs, uint32_t n,
			tern_session **s)
{
	struct tern_session_opts o = {.size = sizeof(o), .services = refs, .nservices = n};

	return tern_connect_sync(t->fx.ctx, tern_listener_uri(t->fx.l), &o, TIMEOUT_MS, s);
}

static int setup(void **state)
{
	struct t *t = calloc(1, sizeof(*t));
	const struct tern_service_ref both[] = {CALC_SERVICE_REF, SHAPES_SERVICE_REF};
	int rc;

	if (!t || tern_ctx_create(NULL, &t->fx.ctx))
		return -1;
	*state = t;
	if ((rc = calc_register(t->fx.ctx, &calc_h, &t->sv)) ||
	    (rc = shapes_register(t->fx.ctx, &shapes_h, &t->sv)) ||
	    (rc = tern_listen(t->fx.ctx, fx_listen_uri(), NULL, on_accept, &t->fx.l))) {
		fprintf(stderr, "setup: %s: %s\n", tern_strerror(rc),
			tern_ctx_last_error(t->fx.ctx));
		return -1;
	}
	tern_listener_set_data(t->fx.l, t);
	if ((rc = connect_with(t, both, 2, &t->fx.cli))) {
		fprintf(stderr, "connect: %s: %s\n", tern_strerror(rc),
			tern_ctx_last_error(t->fx.ctx));
		return -1;
	}
	return 0;
}

static int teardown(void **state)
{
	struct t *t = *state;

	if (t) {
		/* Deferred requests never answered are finished first. */
		for (int i = 0; i < t->sv.nheld; i++)
			tern_reply_error(t->sv.held[i], -ECANCELED, NULL);
		if (t->fx.ctx)
			tern_ctx_destroy(t->fx.ctx);
		free(t);
	}
	return 0;
}

/* What a typed callback saw. */
struct seen {
	int done;
	int status;
	char errmsg[208];
	unsigned char resp[256];
	size_t len;
};

static void record(struct seen *w, int status, const void *resp, size_t len, const char *errmsg)
{
	w->done++;
	w->status = status;
	w->len = len;
	snprintf(w->errmsg, sizeof(w->errmsg), "%s", errmsg ? errmsg : "(null)");
	if (resp && len <= sizeof(w->resp))
		memcpy(w->resp, resp, len);
	if (status == 0)
		assert_non_null(resp);
	else
		assert_null(resp);
}

static void sum_cb(tern_session *s, int status, const calc_AddResp *resp, const char *errmsg,
		   void *user)
{
	(void)s;
	record(user, status, resp, resp ? CALC_ADDRESP_SIZE : 0, errmsg);
}

static void vec_cb(tern_session *s, int status, const calc_Vec *resp, const char *errmsg,
		   void *user)
{
	(void)s;
	record(user, status, resp, resp ? CALC_VEC_SIZE : 0, errmsg);
}

static void blob_cb(tern_session *s, int status, const calc_Blob *resp, size_t len,
		    const char *errmsg, void *user)
{
	(void)s;
	record(user, status, resp, len, errmsg);
}

static void bytes_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	(void)s;
	record(user, status, status ? NULL : reply, len, status ? reply : NULL);
}

/* ---- Calc ------------------------------------------------------------------- */

static void test_typed_add_sync(void **state)
{
	struct t *t = *state;
	calc_AddReq req;
	calc_AddResp resp;

	calc_AddReq_set_a(&req, 40);
	calc_AddReq_set_b(&req, 2);
	assert_int_equal(calc_add_sync(t->fx.cli, &req, &resp, TIMEOUT_MS), 0);
	assert_int_equal(calc_AddResp_get_sum(&resp), 42);
	assert_int_equal(t->sv.adds, 1);
}

static void test_typed_add_async_many_in_flight(void **state)
{
	struct t *t = *state;
	struct seen w[16] = {{0}};
	int done = 0;

	for (int i = 0; i < 16; i++) {
		calc_AddReq req;

		calc_AddReq_set_a(&req, i);
		calc_AddReq_set_b(&req, -1000 * i);
		assert_int_equal(calc_add(t->fx.cli, &req, sum_cb, &w[i], NULL), 0);
	}
	for (int i = 0; i < 16; i++) {
		assert_int_equal(run_until(t, &w[i].done, 1), 0);
		assert_int_equal(w[i].status, 0);
		assert_string_equal(w[i].errmsg, "(null)");
		assert_int_equal(calc_AddResp_get_sum((const calc_AddResp *)w[i].resp), -999 * i);
		done += w[i].done;
	}
	assert_int_equal(done, 16); /* each callback ran exactly once */
}

static void test_a_handler_error_reaches_the_typed_callback_with_its_message(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	calc_AddReq req;
	calc_AddResp resp;

	calc_AddReq_set_a(&req, INT64_MAX);
	calc_AddReq_set_b(&req, 1);
	assert_int_equal(calc_add(t->fx.cli, &req, sum_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, -ERANGE);
	assert_string_equal(w.errmsg, "a + b overflows");
	assert_int_equal(calc_add_sync(t->fx.cli, &req, &resp, TIMEOUT_MS), -ERANGE);
}

static void test_inplace_echo_builds_its_request_in_the_send_slot(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	tern_callslot *slot;
	void *buf;
	size_t cap;

	assert_int_equal(calc_echo_acquire(t->fx.cli, &buf, &cap, &slot), 0);
	assert_int_equal(cap, tern_session_max_payload(t->fx.cli));
	memcpy(buf, "written where it is sent from", 29);
	assert_int_equal(calc_echo_commit(slot, 29, bytes_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, 0);
	assert_int_equal(w.len, 29);
	assert_memory_equal(w.resp, "written where it is sent from", 29);
}

static void test_inplace_echo_through_the_copy_and_sync_proxies(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	char out[64];
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

	assert_int_equal(calc_echo(t->fx.cli, "copied", 6, bytes_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_memory_equal(w.resp, "copied", 6);
	assert_int_equal(calc_echo_sync(t->fx.cli, "sync", 4, &rep, TIMEOUT_MS), 0);
	assert_int_equal(rep.len, 4);
	assert_memory_equal(out, "sync", 4);
}

/* Run the loop until the server holds @n deferred requests. */
static void wait_held(struct t *t, int n)
{
	assert_int_equal(run_until(t, &t->sv.nheld, n), 0);
}

static tern_req *take_held(struct t *t)
{
	assert_true(t->sv.nheld > 0);
	return t->sv.held[--t->sv.nheld];
}

static void test_deferred_stats_is_answered_later(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	tern_req *req;
	void *buf;
	size_t cap;

	assert_int_equal(calc_stats(t->fx.cli, "?", 1, bytes_cb, &w, NULL), 0);
	wait_held(t, 1);
	for (int i = 0; i < 1000; i++) /* the handler returned; no reply yet */
		tern_ctx_run(t->fx.ctx, TERN_RUN_NOWAIT);
	assert_int_equal(w.done, 0);
	req = take_held(t);
	assert_int_equal(calc_stats_reply_acquire(req, &buf, &cap), 0);
	memcpy(buf, "adds=0", 6);
	assert_int_equal(calc_stats_reply_commit(req, 6), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, 0);
	assert_int_equal(w.len, 6);
	assert_memory_equal(w.resp, "adds=0", 6);
}

/* ---- Shapes ------------------------------------------------------------------ */

static void fill_vec(calc_Vec *v)
{
	const float x[4] = {1, 2, 3, 4};
	const int16_t small[3] = {1, -2, 300};

	calc_Vec_store_x(v, x);
	calc_Vec_store_small(v, small);
	calc_Vec_set_factor(v, 2.5);
	calc_Vec_set_flags(v, 3);
}

static void check_scaled(const calc_Vec *v)
{
	float x[4];
	int16_t small[3];

	calc_Vec_load_x(v, x);
	calc_Vec_load_small(v, small);
	assert_true(x[0] == 2.5f && x[1] == 5.0f && x[2] == 7.5f && x[3] == 10.0f);
	assert_true(small[0] == -1 && small[1] == 2 && small[2] == -300);
	assert_true(calc_Vec_get_factor(v) == 2.5);
	assert_int_equal(calc_Vec_get_flags(v), 0x83);
}

static void test_typed_inplace_both_ways(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	tern_callslot *slot;
	calc_Vec *req = NULL, local, resp;

	/* Build the request in the send slot, read the reply in the receive slot. */
	assert_int_equal(shapes_scale_acquire(t->fx.cli, &req, &slot), 0);
	fill_vec(req);
	assert_int_equal(shapes_scale_commit(slot, vec_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, 0);
	check_scaled((const calc_Vec *)w.resp);

	fill_vec(&local);
	assert_int_equal(shapes_scale_sync(t->fx.cli, &local, &resp, TIMEOUT_MS), 0);
	check_scaled(&resp);
}

static void test_trailing_bytes_both_ways_raw(void **state)
{
	struct t *t = *state;
	unsigned char reqbuf[CALC_BLOB_SIZE + 5], respbuf[64];
	calc_Blob *req = (calc_Blob *)reqbuf, *resp = (calc_Blob *)respbuf;
	size_t len = 0, n;

	calc_Blob_set_id(req, 41);
	calc_Blob_set_kind(req, 7);
	memcpy(calc_Blob_data_ptr(req), "hello", 5);
	assert_int_equal(shapes_tag_sync(t->fx.cli, req, sizeof(reqbuf), resp, sizeof(respbuf),
					 &len, TIMEOUT_MS),
			 0);
	assert_int_equal(len, CALC_BLOB_SIZE + 5);
	assert_int_equal(calc_Blob_get_id(resp), 42);
	assert_int_equal(calc_Blob_get_kind(resp), 7);
	assert_memory_equal(calc_Blob_get_data(resp, len, &n), "hello", 5);
	assert_int_equal(n, 5);
	/* a reply that does not fit the caller's buffer (the reply buffer:
	 * nothing is written, no length given) */
	assert_int_equal(shapes_tag_sync(t->fx.cli, req, sizeof(reqbuf), resp, CALC_BLOB_SIZE + 4,
					 &len, TIMEOUT_MS),
			 -EMSGSIZE);
	assert_int_equal(len, 0);
}

/*
 * A _sync proxy's reply buffer is the call's reply buffer: a reply larger
 * than a slot lands in it directly when it fits (100 KiB of trailing bytes
 * into 200 KiB), and is -EMSGSIZE, never cut short, when it does not.
 */
static void test_a_sync_reply_larger_than_a_slot_lands_in_the_callers_buffer(void **state)
{
	struct t *t = *state;
	size_t tail = 100 << 10, cap = 200 << 10, len = 0, n;
	unsigned char *reqbuf = malloc(CALC_BLOB_SIZE + tail), *respbuf = calloc(1, cap);
	unsigned char *pattern = malloc(tail);
	calc_Blob *req = (calc_Blob *)reqbuf, *resp = (calc_Blob *)respbuf;

	assert_non_null(reqbuf);
	assert_non_null(respbuf);
	assert_non_null(pattern);
	for (size_t i = 0; i < tail; i++)
		pattern[i] = (unsigned char)(i * 7 + (i >> 8));
	calc_Blob_set_id(req, 9);
	calc_Blob_set_kind(req, 3);
	memcpy(calc_Blob_data_ptr(req), pattern, tail);
	assert_true(tail > tern_session_max_payload(t->fx.cli));
	assert_int_equal(
		shapes_tag_sync(t->fx.cli, req, CALC_BLOB_SIZE + tail, resp, cap, &len, TIMEOUT_MS),
		0);
	assert_int_equal(len, CALC_BLOB_SIZE + tail);
	assert_int_equal(calc_Blob_get_id(resp), 10);
	assert_memory_equal(calc_Blob_get_data(resp, len, &n), pattern, tail);
	assert_int_equal(n, tail);
	assert_int_equal(shapes_tag_sync(t->fx.cli, req, CALC_BLOB_SIZE + tail, resp,
					 CALC_BLOB_SIZE + tail - 1, &len, TIMEOUT_MS),
			 -EMSGSIZE);
	free(reqbuf);
	free(respbuf);
	free(pattern);
}

/*
 * The _sync proxy of a method with a `bytes` reply takes a struct
 * tern_sync_reply.  With .direct = 1 its buffer is the call's reply buffer:
 * a reply larger than a slot lands in it.  With .direct = 0 the reply is
 * copied out of its slot and must fit one: a larger one is -EMSGSIZE, with
 * the server's reason in .errmsg and .len 0, never cut short.  So is a
 * reply that does not fit a direct buffer.
 */
static void untyped_sync_reply_larger_than_a_slot(struct t *t, bool inplace, const char *no_buf,
						  const char *short_buf)
{
	size_t n = 100 << 10, cap = 200 << 10;
	unsigned char *buf = calloc(1, cap);
	struct tern_sync_reply rep;
	calc_Count q;
	int rc;

	assert_non_null(buf);
	assert_true(n > tern_session_max_payload(t->fx.cli));
	memset(&q, 0, sizeof(q));
	calc_Count_set_n(&q, n);
#define NAME_SYNC()                                                          \
	(inplace ? shapes_name_inplace_sync(t->fx.cli, &q, &rep, TIMEOUT_MS) \
		 : shapes_name_sync(t->fx.cli, &q, &rep, TIMEOUT_MS))

	/* Copied from the slot: the reply must fit one. */
	memset(&rep, 0, sizeof(rep));
	rep.buf = buf;
	rep.cap = cap;
	rc = NAME_SYNC();
	printf("direct 0: %s: %s\n", tern_strerror(rc), rep.errmsg);
	assert_int_equal(rc, -EMSGSIZE);
	assert_non_null(strstr(rep.errmsg, no_buf));
	assert_int_equal(rep.len, 0);

	/* The caller's buffer is the reply buffer. */
	memset(&rep, 0, sizeof(rep));
	rep.buf = buf;
	rep.cap = cap;
	rep.direct = 1;
	assert_int_equal(NAME_SYNC(), 0);
	assert_int_equal(rep.len, n);
	for (size_t i = 0; i < n; i++)
		if (buf[i] != pattern(i))
			fail_msg("byte %zu of the reply is %#x, not %#x", i, buf[i], pattern(i));

	/* One byte short. */
	memset(&rep, 0, sizeof(rep));
	rep.buf = buf;
	rep.cap = n - 1;
	rep.direct = 1;
	rc = NAME_SYNC();
	printf("direct 1, one byte short: %s: %s\n", tern_strerror(rc), rep.errmsg);
	assert_int_equal(rc, -EMSGSIZE);
	assert_non_null(strstr(rep.errmsg, short_buf));
	assert_int_equal(rep.len, 0);

	/* A reply that fits a slot but not the buffer: copied from the slot,
	 * its length is known; the reply buffer: refused on arrival. */
	n = NAME_LONG + 1;
	calc_Count_set_n(&q, n);
	memset(&rep, 0, sizeof(rep));
	rep.buf = buf;
	rep.cap = n - 1;
	assert_int_equal(NAME_SYNC(), -EMSGSIZE);
	assert_int_equal(rep.len, n);
	assert_string_equal(rep.errmsg, "");
	rep.direct = 1;
	assert_int_equal(NAME_SYNC(), -EMSGSIZE);
	assert_int_equal(rep.len, 0);
	assert_string_equal(rep.errmsg, "reply larger than the reply buffer");
#undef NAME_SYNC
	free(buf);
}

static void test_an_untyped_sync_reply_larger_than_a_slot_raw(void **state)
{
	untyped_sync_reply_larger_than_a_slot(*state, false, "exceeds the slot payload",
					      "exceeds the caller's 102399-byte buffer");
}

static void test_an_untyped_sync_reply_larger_than_a_slot_inplace(void **state)
{
	struct t *t = *state;
	char no_buf[64];

	/* An inplace handler sees the room it has: a slot, or the caller's buffer. */
	snprintf(no_buf, sizeof(no_buf), "a name of %u bytes, room for %zu", 100u << 10,
		 tern_session_max_payload(t->fx.cli));
	untyped_sync_reply_larger_than_a_slot(t, true, no_buf,
					      "a name of 102400 bytes, room for 102399");
}

/*
 * A typed _sync proxy whose reply has trailing bytes written in place: the
 * handler writes more than a slot holds (into staging the server pushes
 * into the caller's buffer); a buffer one byte short is -EMSGSIZE with
 * *resp_len 0.
 */
static void test_a_typed_inplace_sync_reply_larger_than_a_slot(void **state)
{
	struct t *t = *state;
	size_t tail = 60000, cap = CALC_BLOB_SIZE + tail, len = 1, n;
	unsigned char reqbuf[CALC_BLOB_SIZE], *respbuf = calloc(1, cap);
	calc_Blob *req = (calc_Blob *)reqbuf, *resp = (calc_Blob *)respbuf;
	const unsigned char *data;

	assert_non_null(respbuf);
	assert_true(tail > tern_session_max_payload(t->fx.cli));
	calc_Blob_set_id(req, 0x1c5);
	calc_Blob_set_kind(req, (uint16_t)tail);
	assert_int_equal(
		shapes_fill_sync(t->fx.cli, req, sizeof(reqbuf), resp, cap, &len, TIMEOUT_MS), 0);
	assert_int_equal(len, cap);
	assert_int_equal(calc_Blob_get_id(resp), 0x1c5);
	data = calc_Blob_get_data(resp, len, &n);
	assert_int_equal(n, tail);
	for (size_t i = 0; i < n; i++)
		if (data[i] != 0xc5)
			fail_msg("byte %zu of the reply's tail is %#x", i, data[i]);
	assert_int_equal(
		shapes_fill_sync(t->fx.cli, req, sizeof(reqbuf), resp, cap - 1, &len, TIMEOUT_MS),
		-EMSGSIZE);
	assert_int_equal(len, 0);
	free(respbuf);
}

static void test_trailing_bytes_written_in_place(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	tern_callslot *slot;
	calc_Blob *req = NULL;
	size_t tail_cap, n;
	const unsigned char *data;

	assert_int_equal(shapes_fill_acquire(t->fx.cli, &req, &tail_cap, &slot), 0);
	assert_int_equal(tail_cap, tern_session_max_payload(t->fx.cli) - CALC_BLOB_SIZE);
	calc_Blob_set_id(req, 0x1ab);
	calc_Blob_set_kind(req, 100);
	assert_int_equal(shapes_fill_commit(slot, 0, blob_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, 0);
	assert_int_equal(w.len, CALC_BLOB_SIZE + 100);
	data = calc_Blob_get_data((const calc_Blob *)w.resp, w.len, &n);
	assert_int_equal(n, 100);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(data[i], 0xab);
}

static void test_a_handler_claiming_more_than_the_slot_is_refused(void **state)
{
	struct t *t = *state;
	struct seen w = {0};
	unsigned char reqbuf[CALC_BLOB_SIZE];
	calc_Blob *req = (calc_Blob *)reqbuf;

	calc_Blob_set_id(req, 1);
	calc_Blob_set_kind(req, 0xffff);
	assert_int_equal(shapes_fill(t->fx.cli, req, sizeof(reqbuf), blob_cb, &w, NULL), 0);
	assert_int_equal(run_until(t, &w.done, 1), 0);
	assert_int_equal(w.status, -EMSGSIZE);
	printf("errmsg: %s\n", w.errmsg);
	assert_non_null(strstr(w.errmsg, "Shapes.fill: reply of"));
}

static void test_typed_and_untyped_ends_mixed(void **state)
{
	struct t *t = *state;
	calc_Count count;
	char out[64] = {0};
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out) - 1};

	assert_int_equal(shapes_count_sync(t->fx.cli, "abc", 3, &count, TIMEOUT_MS), 0);
	assert_true(calc_Count_get_n(&count) == 3);
	assert_int_equal(calc_Count_get_sign(&count), -1);
	assert_true(calc_Count_get_ratio(&count) == 0.5f);
	assert_int_equal(shapes_name_sync(t->fx.cli, &count, &rep, TIMEOUT_MS), 0);
	assert_string_equal(out, "n=3");
	memset(out, 0, sizeof(out));
	assert_int_equal(shapes_name_inplace_sync(t->fx.cli, &count, &rep, TIMEOUT_MS), 0);
	assert_string_equal(out, "inplace n=3");
}

static void test_empty_messages(void **state)
{
	struct t *t = *state;
	calc_Empty in = {{0}}, out;

	assert_int_equal(shapes_ping_sync(t->fx.cli, &in, &out, TIMEOUT_MS), 0);
}

static void test_typed_deferred_replies(void **state)
{
	struct t *t = *state;
	struct seen vw = {0}, bw = {0}, ew = {0};
	calc_Vec v, *out = NULL;
	unsigned char reqbuf[CALC_BLOB_SIZE + 3];
	calc_Blob *breq = (calc_Blob *)reqbuf, *bout = NULL;
	tern_req *req;
	size_t tail_cap, n;

	fill_vec(&v);
	calc_Blob_set_id(breq, 9);
	calc_Blob_set_kind(breq, 0);
	memcpy(calc_Blob_data_ptr(breq), "xyz", 3);
	assert_int_equal(shapes_later(t->fx.cli, &v, vec_cb, &vw, NULL), 0);
	wait_held(t, 1);
	assert_int_equal(shapes_later_blob(t->fx.cli, breq, sizeof(reqbuf), blob_cb, &bw, NULL), 0);
	wait_held(t, 2);
	assert_int_equal(shapes_later(t->fx.cli, &v, vec_cb, &ew, NULL), 0);
	wait_held(t, 3);

	/* The last one fails, with a message. */
	assert_int_equal(tern_reply_error(take_held(t), -EIO, "the disk is on fire"), 0);
	assert_int_equal(run_until(t, &ew.done, 1), 0);
	assert_int_equal(ew.status, -EIO);
	assert_string_equal(ew.errmsg, "the disk is on fire");

	/* Trailing bytes: the tail's length goes with the commit. */
	req = take_held(t);
	assert_int_equal(shapes_later_blob_reply_acquire(req, &bout, &tail_cap), 0);
	calc_Blob_set_id(bout, 10);
	calc_Blob_set_kind(bout, 1);
	memcpy(calc_Blob_data_ptr(bout), "later", 5);
	assert_int_equal(shapes_later_blob_reply_commit(req, 5), 0);
	assert_int_equal(run_until(t, &bw.done, 1), 0);
	assert_int_equal(bw.len, CALC_BLOB_SIZE + 5);
	assert_int_equal(calc_Blob_get_id((const calc_Blob *)bw.resp), 10);
	assert_memory_equal(calc_Blob_get_data((const calc_Blob *)bw.resp, bw.len, &n), "later", 5);

	req = take_held(t);
	assert_int_equal(shapes_later_reply_acquire(req, &out), 0);
	fill_vec(out);
	on_scale(req, out, out, NULL); /* in place: the same bytes in and out */
	assert_int_equal(shapes_later_reply_commit(req), 0);
	assert_int_equal(run_until(t, &vw.done, 1), 0);
	assert_int_equal(vw.status, 0);
	check_scaled((const calc_Vec *)vw.resp);
}

/* ---- what the trampolines refuse ---------------------------------------------- */

static void test_requests_of_the_wrong_length_are_refused(void **state)
{
	struct t *t = *state;
	char out[64];
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

	/* A message of fixed size may be shorter only where an older version
	 * of it ends, at a field (test_gen_compat.c); not inside one. */
	assert_int_equal(tern_call_sync(t->fx.cli, CALC_ADD_ID, "abc", 3, &rep, TIMEOUT_MS),
			 -EBADMSG);
	assert_string_equal(
		rep.errmsg,
		"Calc.add: request of 3 bytes, expected 16 (or fewer, ending at a field)");
	assert_int_equal(tern_call_sync(t->fx.cli, SHAPES_TAG_ID, "ab", 2, &rep, TIMEOUT_MS),
			 -EBADMSG);
	assert_string_equal(rep.errmsg, "Shapes.tag: request of 2 bytes, expected at least 6");
	assert_int_equal(tern_call_sync(t->fx.cli, SHAPES_LATER_ID, "abcd", 4, &rep, TIMEOUT_MS),
			 -EBADMSG);
	assert_string_equal(
		rep.errmsg,
		"Shapes.later: request of 4 bytes, expected 31 (or fewer, ending at a field)");
	assert_int_equal(t->sv.adds, 0);
	assert_int_equal(t->sv.nheld, 0);
}

int main(void)
{
#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)
	const struct CMUnitTest tests[] = {
		T(test_typed_add_sync),
		T(test_typed_add_async_many_in_flight),
		T(test_a_handler_error_reaches_the_typed_callback_with_its_message),
		T(test_inplace_echo_builds_its_request_in_the_send_slot),
		T(test_inplace_echo_through_the_copy_and_sync_proxies),
		T(test_deferred_stats_is_answered_later),
		T(test_typed_inplace_both_ways),
		T(test_trailing_bytes_both_ways_raw),
		T(test_a_sync_reply_larger_than_a_slot_lands_in_the_callers_buffer),
		T(test_an_untyped_sync_reply_larger_than_a_slot_raw),
		T(test_an_untyped_sync_reply_larger_than_a_slot_inplace),
		T(test_a_typed_inplace_sync_reply_larger_than_a_slot),
		T(test_trailing_bytes_written_in_place),
		T(test_a_handler_claiming_more_than_the_slot_is_refused),
		T(test_typed_and_untyped_ends_mixed),
		T(test_empty_messages),
		T(test_typed_deferred_replies),
		T(test_requests_of_the_wrong_length_are_refused),
	};
#undef T

	if (!fx_listen_uri()) {
		printf("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
