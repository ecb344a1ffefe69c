// SPDX-License-Identifier: MIT
/* The service check's encoding, and its parser fed everything a hostile
 * client could send. */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "rpc.h"

static tern_ctx *ctx;

static int setup(void **state)
{
	(void)state;
	if (tern_ctx_create(NULL, &ctx))
		return -1;
	return tern_service_register(ctx, "Calc", 0xabc) || tern_service_register(ctx, "KV", 5);
}

static int teardown(void **state)
{
	(void)state;
	return tern_ctx_destroy(ctx);
}

static int verify(const uint8_t *b, size_t n, char *why)
{
	int rc = tern__services_verify(ctx, b, n, why, 200);
	if (rc)
		assert_true(why[0] != 0);
	return rc;
}

static void test_encoded_list_verifies(void **state)
{
	struct tern_service_ref r[2] = {{"KV", 5}, {"Calc", 0xabc}};
	uint8_t b[256];
	char why[200] = "";
	int n;

	(void)state;
	n = tern__services_encode(r, 2, b, sizeof(b));
	assert_int_equal(n, 4 + 9 + 2 + 9 + 4);
	assert_int_equal(verify(b, (size_t)n, why), 0);
}

static void test_mismatch_and_absence_name_the_service(void **state)
{
	struct tern_service_ref r = {"Calc", 0xabd}, m = {"Stats", 1};
	uint8_t b[256];
	char why[200] = "";
	int n;

	(void)state;
	n = tern__services_encode(&r, 1, b, sizeof(b));
	assert_int_equal(verify(b, (size_t)n, why), TERN_ESCHEMA);
	assert_non_null(strstr(why, "Calc"));
	n = tern__services_encode(&m, 1, b, sizeof(b));
	assert_int_equal(verify(b, (size_t)n, why), TERN_ENOSERVICE);
	assert_non_null(strstr(why, "Stats"));
}

static void test_encode_rejects_bad_names_and_small_buffers(void **state)
{
	struct tern_service_ref bad[] = {
		{"", 1},
		{"a b", 1},
		{NULL, 1},
		{"0123456789012345678901234567890123456789012345678901234567890123", 1}};
	struct tern_service_ref ok = {"Calc", 1};
	uint8_t b[64];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(tern__services_encode(&bad[i], 1, b, sizeof(b)), -EINVAL);
	assert_int_equal(tern__services_encode(&ok, 1, b, 10), -EMSGSIZE);
	assert_int_equal(tern__services_encode(&ok, 0, b, sizeof(b)), -EINVAL);
}

static void test_malformed_checks_are_protocol_errors(void **state)
{
	struct tern_service_ref r = {"Calc", 0xabc};
	uint8_t b[256], t[256];
	char why[200];
	uint32_t big = htole32(1000);
	int n;

	(void)state;
	n = tern__services_encode(&r, 1, b, sizeof(b));
	assert_int_equal(verify(b, 3, why), TERN_EPEER);	     /* no count */
	assert_int_equal(verify(b, (size_t)n - 1, why), TERN_EPEER); /* truncated name */
	assert_int_equal(verify(b, 4 + 8, why), TERN_EPEER);	     /* truncated entry */
	memcpy(t, b, (size_t)n);
	t[n] = 0; /* trailing byte */
	assert_int_equal(verify(t, (size_t)n + 1, why), TERN_EPEER);
	memcpy(t, b, (size_t)n);
	memcpy(t, &big, 4); /* claims 1000 services */
	assert_int_equal(verify(t, (size_t)n, why), TERN_EPEER);
	memset(t, 0, 4); /* zero services */
	assert_int_equal(verify(t, (size_t)n, why), TERN_EPEER);
	memcpy(t, b, (size_t)n);
	t[12] = 200; /* name length past the end */
	assert_int_equal(verify(t, (size_t)n, why), TERN_EPEER);
	memcpy(t, b, (size_t)n);
	t[13] = '\n'; /* a byte no name may hold */
	assert_int_equal(verify(t, (size_t)n, why), TERN_EPEER);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_encoded_list_verifies),
		cmocka_unit_test(test_mismatch_and_absence_name_the_service),
		cmocka_unit_test(test_encode_rejects_bad_names_and_small_buffers),
		cmocka_unit_test(test_malformed_checks_are_protocol_errors),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
