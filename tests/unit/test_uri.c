// SPDX-License-Identifier: MIT
/* URI parsing and the method table: the engine's small pure parts. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <unistd.h>
#include <cmocka.h>

#include "rpc.h"

static int parse(const char *s, struct tern_uri *u)
{
	char why[200] = "";
	int rc = tern__uri_parse(s, u, why, sizeof(why));
	if (rc)
		assert_true(why[0] != 0);
	return rc;
}

static void test_uri_host_and_port(void **state)
{
	struct tern_uri u;
	(void)state;
	assert_int_equal(parse("rdma://10.0.0.1:7000", &u), 0);
	assert_string_equal(u.scheme, "rdma");
	assert_string_equal(u.host, "10.0.0.1");
	assert_int_equal(u.port, 7000);
	assert_true(u.has_port);
	assert_int_equal(parse("TCP://host.example:0", &u), 0);
	assert_string_equal(u.scheme, "tcp");
	assert_int_equal(u.port, 0);
}

static void test_uri_ipv6_and_names(void **state)
{
	struct tern_uri u;
	(void)state;
	assert_int_equal(parse("rdma://[fe80::1]:9", &u), 0);
	assert_string_equal(u.host, "fe80::1");
	assert_int_equal(u.port, 9);
	assert_int_equal(parse("shm://feature-bus", &u), 0);
	assert_string_equal(u.host, "feature-bus");
	assert_false(u.has_port);
}

static void test_uri_malformed_is_einval(void **state)
{
	struct tern_uri u;
	(void)state;
	assert_int_equal(parse("", &u), -EINVAL);
	assert_int_equal(parse("10.0.0.1:7000", &u), -EINVAL);
	assert_int_equal(parse("://x:1", &u), -EINVAL);
	assert_int_equal(parse("rdma://", &u), -EINVAL);
	assert_int_equal(parse("rdma://:7000", &u), -EINVAL);
	assert_int_equal(parse("rdma://h:", &u), -EINVAL);
	assert_int_equal(parse("rdma://h:65536", &u), -EINVAL);
	assert_int_equal(parse("rdma://h:12x", &u), -EINVAL);
	assert_int_equal(parse("rdma://h:-1", &u), -EINVAL);
	assert_int_equal(parse("rdma://[::1:7", &u), -EINVAL);
	assert_int_equal(parse("rd-ma://h:1", &u), -EINVAL);
	assert_int_equal(parse("rdma://a b:1", &u), -EINVAL);
}

static int dummy_raw(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)in, (void)n, (void)out, (void)u;
	return 0;
}

static void test_method_table_add_find_delete_grow(void **state)
{
	struct tern_method_table t = {0};
	(void)state;
	for (uint32_t i = 1; i <= 1000; i++) {
		struct tern_method m = {.id = i * 2654435761u,
					.kind = TERN_KIND_RAW,
					.fn.raw = dummy_raw,
					.user = (void *)(uintptr_t)i};
		assert_int_equal(tern__methods_add(&t, &m), 0);
	}
	for (uint32_t i = 1; i <= 1000; i++) {
		const struct tern_method *m = tern__methods_find(&t, i * 2654435761u);
		assert_non_null(m);
		assert_int_equal((uintptr_t)m->user, i);
	}
	assert_null(tern__methods_find(&t, 12345));
	struct tern_method dup = {.id = 2654435761u, .kind = TERN_KIND_RAW, .fn.raw = dummy_raw};
	assert_int_equal(tern__methods_add(&t, &dup), -EEXIST);
	for (uint32_t i = 1; i <= 1000; i += 2)
		assert_int_equal(tern__methods_del(&t, i * 2654435761u), 0);
	assert_int_equal(tern__methods_del(&t, 2654435761u), -ENOENT);
	for (uint32_t i = 2; i <= 1000; i += 2)
		assert_non_null(tern__methods_find(&t, i * 2654435761u));
	/* deleted ids can be registered again */
	assert_int_equal(tern__methods_add(&t, &dup), 0);
	tern__methods_free(&t);
}

static void test_register_rejects_bad_input(void **state)
{
	tern_ctx *ctx;
	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	assert_int_equal(tern_register_raw(ctx, 0, dummy_raw, NULL), -EINVAL);
	assert_int_equal(tern_register_raw(ctx, 5, NULL, NULL), -EINVAL);
	assert_int_equal(tern_register_raw(ctx, 5, dummy_raw, NULL), 0);
	assert_int_equal(tern_register_raw(ctx, 5, dummy_raw, NULL), -EEXIST);
	assert_int_equal(tern_unregister(ctx, 5), 0);
	assert_int_equal(tern_unregister(ctx, 5), -ENOENT);
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

static void test_bad_uris_and_schemes_are_clear_errors(void **state)
{
	tern_ctx *ctx;
	tern_session *s;
	tern_listener *l;
	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	assert_int_equal(tern_connect(ctx, "nonsense", NULL, NULL, &s), -EINVAL);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "nonsense"));
	assert_int_equal(tern_connect(ctx, "pigeon://x:1", NULL, NULL, &s), -EPROTONOSUPPORT);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "pigeon"));
	assert_int_equal(tern_listen(ctx, "rdma://h:99999", NULL, NULL, &l), -EINVAL);
	struct tern_session_opts o = {.size = sizeof(o), .slot_size = 100};
	assert_int_equal(tern_listen(ctx, "rdma://127.0.0.1:0", &o, NULL, &l), -EINVAL);
	if (access("/dev/infiniband/rdma_cm", F_OK) != 0) {
		/* a host with no RDMA says so, not just "No such device" */
		assert_int_equal(tern_listen(ctx, "rdma://127.0.0.1:0", NULL, NULL, &l), -ENODEV);
		assert_non_null(strstr(tern_ctx_last_error(ctx), "no RDMA device"));
	}
	assert_int_equal(tern_ctx_destroy(ctx), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_uri_host_and_port),
		cmocka_unit_test(test_uri_ipv6_and_names),
		cmocka_unit_test(test_uri_malformed_is_einval),
		cmocka_unit_test(test_method_table_add_find_delete_grow),
		cmocka_unit_test(test_register_rejects_bad_input),
		cmocka_unit_test(test_bad_uris_and_schemes_are_clear_errors),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
