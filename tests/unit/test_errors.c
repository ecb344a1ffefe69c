// SPDX-License-Identifier: MIT
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <string.h>
#include <cmocka.h>

#include "tern.h"

static void test_strerror_names_errno_values(void **state)
{
	(void)state;
	assert_string_equal(tern_strerror(0), "success");
	assert_string_equal(tern_strerror(-ETIMEDOUT), strerror(ETIMEDOUT));
	assert_string_equal(tern_err_name(-ECONNRESET), "ECONNRESET");
	assert_string_equal(tern_err_name(0), "OK");
}

static void test_tern_codes_have_their_own_names(void **state)
{
	(void)state;
	assert_string_equal(tern_err_name(TERN_ENOMETHOD), "TERN_ENOMETHOD");
	assert_string_equal(tern_strerror(TERN_ENOMETHOD),
			    "no handler for this method at the peer");
	assert_string_equal(tern_err_name(TERN_ESCHEMA), "TERN_ESCHEMA");
	/* every tern code has a name and a message of its own */
	for (int e = TERN_EPEER; e <= TERN_ENOMETHOD; e++) {
		assert_string_not_equal(tern_err_name(e), "UNKNOWN");
		assert_string_not_equal(tern_strerror(e), "unknown error");
	}
	/* tern codes never collide with an errno value */
	assert_true(-TERN_ENOMETHOD > 133 /* EHWPOISON, the largest Linux errno */);
}

static void test_unknown_codes_are_reported_not_crashed(void **state)
{
	(void)state;
	assert_string_equal(tern_err_name(-(TERN_ERRNO_BASE + 999)), "UNKNOWN");
	assert_string_equal(tern_strerror(12345), "unknown error");
	assert_non_null(tern_strerror(-100000));
}

static void test_version_string_matches_macros(void **state)
{
	(void)state;
	assert_string_equal(tern_version_string(), "0.1.0");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_strerror_names_errno_values),
		cmocka_unit_test(test_tern_codes_have_their_own_names),
		cmocka_unit_test(test_unknown_codes_are_reported_not_crashed),
		cmocka_unit_test(test_version_string_matches_macros),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
