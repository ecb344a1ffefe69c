// SPDX-License-Identifier: MIT
/*
 * A context's completion queues on real verbs: the first CQ of a device
 * has 1,024 entries and a session at the defaults reserves about 4N + 70 of
 * them, so the fourth connection does not fit.  The provider must take it
 * anyway without ibv_resize_cq, which some devices lack: meson runs this
 * program with TERN_VERBS_NO_RESIZE_CQ=1 (resize treated as unsupported)
 * and without it.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fixture.h"

#define M_ECHO	 0x501
#define SESSIONS 6 /* client ends; with their accepted ends, 12 connections */
#define ROUNDS	 40

struct echo_call {
	int *done;
	int status;
	uint32_t want;
	bool right;
};

static void echo_done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct echo_call *c = user;
	uint32_t got = 0;

	(void)s;
	c->status = status;
	if (status == 0 && len == sizeof(got)) {
		memcpy(&got, reply, sizeof(got));
		c->right = got == c->want;
	}
	(*c->done)++;
}

/*
 * Six sessions at the default geometry on one context (both ends of each
 * on it: twelve connections, about 4,000 completions reserved, four times
 * what the first CQ holds) all connect and carry calls, each answered with
 * its own payload.
 */
static void test_sessions_beyond_the_first_cq_carry_calls(void **state)
{
	static struct echo_call calls[SESSIONS][ROUNDS];
	tern_session *cli[SESSIONS];
	struct fx f;
	int done = 0;

	(void)state;
	assert_int_equal(fx_setup(&f, NULL, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	cli[0] = f.cli;
	for (int i = 1; i < SESSIONS; i++) {
		int rc = tern_connect_sync(f.ctx, f.uri, NULL, 20000, &cli[i]);

		if (rc)
			fprintf(stderr, "session %d: %s: %s\n", i, tern_strerror(rc),
				tern_ctx_last_error(f.ctx));
		assert_int_equal(rc, 0);
	}
	assert_int_equal(fx_run_until_count(&f, &f.accepts, SESSIONS, 20000), 0);
	assert_int_equal(f.accept_status, 0);

	for (int r = 0; r < ROUNDS; r++) {
		for (int i = 0; i < SESSIONS; i++) {
			struct echo_call *c = &calls[i][r];
			uint32_t v = (uint32_t)(i * 1000 + r);

			*c = (struct echo_call){.done = &done, .status = 1, .want = v};
			assert_int_equal(
				tern_call(cli[i], M_ECHO, &v, sizeof(v), echo_done, c, NULL), 0);
		}
	}
	assert_int_equal(fx_run_until_count(&f, &done, SESSIONS * ROUNDS, 60000), 0);
	for (int i = 0; i < SESSIONS; i++) {
		for (int r = 0; r < ROUNDS; r++) {
			assert_int_equal(calls[i][r].status, 0);
			assert_true(calls[i][r].right);
		}
	}
	fx_teardown(&f);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_sessions_beyond_the_first_cq_carry_calls),
	};

	if (!fx_runnable())
		return 77;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
