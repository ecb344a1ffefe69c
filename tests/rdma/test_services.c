// SPDX-License-Identifier: MIT
/*
 * The service check on real verbs: a client states the services (and their
 * schema hashes) it will call; the server refuses a missing service or a
 * different schema by name, on both sides, before any call is made.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fixture.h"

#define CALC_HASH 0x0123456789abcdefull
#define M_ADD	  0x11

static int add(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	static int64_t sum;
	const int64_t *v = in;
	(void)r, (void)u;
	if (n != 16)
		return -EINVAL;
	sum = v[0] + v[1];
	out->base = &sum;
	out->len = sizeof(sum);
	return 0;
}

static int accepted, refused, refused_status;

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (s)
		accepted++;
	else {
		refused++;
		refused_status = status;
	}
}

struct server {
	tern_ctx *ctx;
	tern_listener *l;
};

static int setup(void **state)
{
	struct server *sv = calloc(1, sizeof(*sv));
	struct tern_ctx_opts co = {.size = sizeof(co)};

	accepted = refused = refused_status = 0;
	if (tern_ctx_create(&co, &sv->ctx) || tern_register_raw(sv->ctx, M_ADD, add, NULL) ||
	    tern_service_register(sv->ctx, "Calc", CALC_HASH) ||
	    tern_listen(sv->ctx, fx_listen_uri(), NULL, on_accept, &sv->l))
		return -1;
	*state = sv;
	return 0;
}

static int teardown(void **state)
{
	struct server *sv = *state;
	tern_ctx_destroy(sv->ctx);
	free(sv);
	return 0;
}

static int connect_with(struct server *sv, const struct tern_service_ref *refs, uint32_t n,
			tern_session **s)
{
	struct tern_session_opts o = {.size = sizeof(o), .services = refs, .nservices = n};
	return tern_connect_sync(sv->ctx, tern_listener_uri(sv->l), &o, 10000, s);
}

static void test_matching_service_connects_and_calls(void **state)
{
	struct server *sv = *state;
	struct tern_service_ref calc = {"Calc", CALC_HASH};
	int64_t args[2] = {40, 2}, sum = 0;
	struct tern_sync_reply rep = {.buf = &sum, .cap = sizeof(sum)};
	tern_session *s;

	assert_int_equal(connect_with(sv, &calc, 1, &s), 0);
	assert_true(tern_session_is_ready(s));
	assert_int_equal(tern_call_sync(s, M_ADD, args, sizeof(args), &rep, 10000), 0);
	assert_int_equal(sum, 42);
	assert_int_equal(accepted, 1);
	assert_int_equal(refused, 0);
}

static void test_different_schema_is_refused_by_name_on_both_sides(void **state)
{
	struct server *sv = *state;
	struct tern_service_ref calc = {"Calc", CALC_HASH ^ 1};
	tern_session *s = NULL;
	int rc;

	rc = connect_with(sv, &calc, 1, &s);
	printf("client: %s: %s\n", tern_err_name(rc), tern_ctx_last_error(sv->ctx));
	assert_int_equal(rc, TERN_ESCHEMA);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(sv->ctx), "service Calc"));
	/* the server saw the refusal too, and never handed out the session */
	for (int i = 0; i < 100000 && !refused; i++)
		tern_ctx_run(sv->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(refused, 1);
	assert_int_equal(refused_status, TERN_ESCHEMA);
	assert_int_equal(accepted, 0);
}

static void test_missing_service_is_refused_by_name(void **state)
{
	struct server *sv = *state;
	struct tern_service_ref want[2] = {{"Calc", CALC_HASH}, {"Stats", 7}};
	tern_session *s = NULL;
	int rc;

	rc = connect_with(sv, want, 2, &s);
	printf("client: %s: %s\n", tern_err_name(rc), tern_ctx_last_error(sv->ctx));
	assert_int_equal(rc, TERN_ENOSERVICE);
	assert_non_null(strstr(tern_ctx_last_error(sv->ctx), "Stats"));
	for (int i = 0; i < 100000 && !refused; i++)
		tern_ctx_run(sv->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(refused_status, TERN_ENOSERVICE);
}

static int connect_status = 1;

static void connect_cb(tern_session *s, int status)
{
	(void)s;
	connect_status = status;
}

static void test_no_call_before_the_check_completes(void **state)
{
	struct server *sv = *state;
	struct tern_service_ref calc = {"Calc", CALC_HASH};
	struct tern_session_opts o = {.size = sizeof(o), .services = &calc, .nservices = 1};
	tern_session *s;

	connect_status = 1;
	assert_int_equal(tern_connect(sv->ctx, tern_listener_uri(sv->l), &o, connect_cb, &s), 0);
	assert_int_equal(tern_call(s, M_ADD, "x", 1, fx_done_cb, NULL, NULL), -ENOTCONN);
	while (connect_status == 1)
		tern_ctx_run(sv->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(connect_status, 0);
	assert_true(tern_session_is_ready(s));
}

static void test_bad_service_lists_and_reserved_ids_are_rejected(void **state)
{
	struct server *sv = *state;
	struct tern_service_ref bad = {"no spaces", 1};
	tern_session *s;

	assert_int_equal(connect_with(sv, &bad, 1, &s), -EINVAL);
	assert_int_equal(tern_service_register(sv->ctx, "Calc", 1), -EEXIST);
	assert_int_equal(tern_service_register(sv->ctx, "", 1), -EINVAL);
	assert_int_equal(tern_register_raw(sv->ctx, 0xffffff01u, add, NULL), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_matching_service_connects_and_calls, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_different_schema_is_refused_by_name_on_both_sides, setup, teardown),
		cmocka_unit_test_setup_teardown(test_missing_service_is_refused_by_name, setup,
						teardown),
		cmocka_unit_test_setup_teardown(test_no_call_before_the_check_completes, setup,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_bad_service_lists_and_reserved_ids_are_rejected, setup, teardown),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)\n");
		return 77;
	}
	return cmocka_run_group_tests(tests, NULL, NULL);
}
