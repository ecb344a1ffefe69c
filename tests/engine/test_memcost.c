// SPDX-License-Identifier: MIT
/*
 * tern_ctx_mem(): the figures follow the sessions, on every provider.
 *
 *  - a seeded random run of opens and closes (some sessions make a call,
 *    so their pages are touched): after every step the session count is
 *    what is open, and each reserved figure (slots registered, mapped,
 *    on the heap; the providers' per-connection heap) is its value before
 *    the first session plus one pair's worth per open pair; once every
 *    session has closed, every figure is back where it started;
 *  - shm:// and tcp://: an idle session's slots are reserved but mostly
 *    not backed by pages (TERN_SHM_BACK=full, the old way, backs all of
 *    a shm segment at once), and a call's slot gets its pages when it is
 *    written.
 *
 * TERN_TEST_SEED=<n> runs that one seed (a failure prints its seed).
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "fixture.h"

#define M_ECHO	  0x700
#define SLOTS	  8 /* small rings: rxe's CQ holds every session of the run */
#define MAX_PAIRS 4
#define STEPS	  40
#define SEEDS	  3

static struct tern_mem_stats mem_of(tern_ctx *ctx)
{
	struct tern_mem_stats m;

	memset(&m, 0xa5, sizeof(m)); /* every field must be written */
	assert_int_equal(tern_ctx_mem(ctx, &m, sizeof(m)), 0);
	return m;
}

/* Run the loop until the context holds @n sessions (closing ones go asynchronously). */
static void run_until_sessions(struct fx *f, uint64_t n)
{
	time_t end = time(NULL) + 30;

	while (mem_of(f->ctx).sessions != n) {
		assert_true(time(NULL) < end);
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
}

static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/*
 * The reserved figures: exact, whatever pages back them (all but the
 * session count and the two resident figures).
 */
static bool reserved(const char *name)
{
	return strcmp(name, "sessions") && !strstr(name, "resident");
}

#define RESERVED(X) TERN_MEM_STATS_FIELDS(X)

static void check_pairs(uint64_t seed, int step, const struct tern_mem_stats *base,
			const struct tern_mem_stats *pair, const struct tern_mem_stats *m,
			uint64_t open)
{
	if (m->sessions != base->sessions + 2 * open)
		fail_msg("seed %" PRIu64 " step %d: %" PRIu64 " sessions, %" PRIu64 " open pairs",
			 seed, step, m->sessions, open);
#define CHECK(x)                                                                       \
	if (reserved(#x) && m->x != base->x + open * pair->x)                          \
		fail_msg("seed %" PRIu64 " step %d: " #x " %" PRIu64 ", want %" PRIu64 \
			 " + %" PRIu64 " x %" PRIu64,                                  \
			 seed, step, m->x, base->x, open, pair->x);
	RESERVED(CHECK)
#undef CHECK
}

static void one_seed(uint64_t seed)
{
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = SLOTS};
	struct tern_mem_stats base, pair = {0}, m;
	tern_session *cli[MAX_PAIRS];
	uint64_t rng = seed * 2654435761u + 1, open = 0;
	bool have_pair = false;
	struct fx f;

	assert_int_equal(fx_setup(&f, &o, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	/* The fixture's own pair goes first: the start is a context with none. */
	assert_int_equal(tern_session_close(f.cli, NULL), 0);
	run_until_sessions(&f, 0);
	base = mem_of(f.ctx);
	assert_int_equal(base.sessions, 0);
	for (int step = 0; step < STEPS; step++) {
		bool opening = open == 0 || (open < MAX_PAIRS && rnd(&rng) % 2);

		if (opening) {
			int accepts = f.accepts;

			assert_int_equal(tern_connect_sync(f.ctx, f.uri, &o, 10000, &cli[open]), 0);
			assert_int_equal(fx_run_until_count(&f, &f.accepts, accepts + 1, 10000), 0);
			if (rnd(&rng) % 2) {
				char msg[1000], back[sizeof(msg)];
				struct tern_sync_reply rep = {.buf = back, .cap = sizeof(back)};

				memset(msg, (int)step, sizeof(msg));
				assert_int_equal(tern_call_sync(cli[open], M_ECHO, msg, sizeof(msg),
								&rep, 10000),
						 0);
				assert_memory_equal(back, msg, sizeof(msg));
			}
			open++;
			m = mem_of(f.ctx);
			if (!have_pair) {
#define UNIT(x) pair.x = reserved(#x) ? m.x - base.x : 0;
				RESERVED(UNIT)
#undef UNIT
				have_pair = true;
				/* a session costs something, and the provider says so */
				assert_true(pair.slots_registered + pair.slots_shared +
						    pair.slots_heap >=
					    2ull * 2 * (2 * SLOTS + 3) * 8192);
			}
		} else {
			uint64_t k = rnd(&rng) % open;

			assert_int_equal(tern_session_close(cli[k], NULL), 0);
			cli[k] = cli[--open];
			run_until_sessions(&f, base.sessions + 2 * open);
			m = mem_of(f.ctx);
		}
		check_pairs(seed, step, &base, &pair, &m, open);
		/* what pages back is never more than what is reserved */
		assert_true(m.slots_shared_resident <= m.slots_shared);
		assert_true(m.slots_heap_resident <= m.slots_heap);
	}
	while (open)
		assert_int_equal(tern_session_close(cli[--open], NULL), 0);
	run_until_sessions(&f, 0);
	m = mem_of(f.ctx);
	check_pairs(seed, STEPS, &base, &pair, &m, 0);
	assert_int_equal(m.slots_shared_resident, base.slots_shared_resident);
	assert_int_equal(m.slots_heap_resident, base.slots_heap_resident);
	fx_teardown(&f);
}

static void test_counters_rise_with_sessions_and_fall_back_after_close(void **state)
{
	const char *one = getenv("TERN_TEST_SEED");

	(void)state;
	if (one) {
		one_seed(strtoull(one, NULL, 0));
		return;
	}
	for (uint64_t seed = 1; seed <= SEEDS; seed++)
		one_seed(seed);
}

/* The context's slot bytes, and the part of them pages back now. */
static void slots_of(tern_ctx *ctx, uint64_t *reserved, uint64_t *resident)
{
	struct tern_mem_stats m = mem_of(ctx);

	*reserved = m.slots_shared + m.slots_heap;
	*resident = m.slots_shared_resident + m.slots_heap_resident;
}

static void test_idle_session_slots_come_on_first_touch(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o)}; /* the defaults: 64 x 8 KiB */
	uint64_t reserved, resident, resident2;
	char msg[6000], back[sizeof(msg)];
	struct tern_sync_reply rep = {.buf = back, .cap = sizeof(back)};
	struct fx f;

	(void)state;
	assert_int_equal(fx_setup(&f, &o, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	slots_of(f.ctx, &reserved, &resident);
	/* two sessions (both ends live here), 2 x 131 slots of 8 KiB each */
	assert_true(reserved >= 2ull * 2 * 131 * 8192);
	/* idle: the handshake and the service check touched a few slots */
	if (resident * 8 > reserved)
		fail_msg("idle: %" PRIu64 " of %" PRIu64 " slot bytes resident", resident,
			 reserved);
	memset(msg, 7, sizeof(msg));
	assert_int_equal(tern_call_sync(f.cli, M_ECHO, msg, sizeof(msg), &rep, 10000), 0);
	slots_of(f.ctx, &reserved, &resident2);
	/* the request and the reply slots got their pages, both ways */
	assert_true(resident2 >= resident + 2 * sizeof(msg) - 2 * 4096);
	fx_teardown(&f);
}

/* The old way, kept for strict overcommit: the whole segment backed at once. */
static void test_shm_back_full_backs_the_whole_segment(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o)};
	struct tern_mem_stats m;
	struct fx f;

	(void)state;
	setenv("TERN_SHM_BACK", "full", 1);
	assert_int_equal(fx_setup(&f, &o, TERN_PROGRESS_BUSY), 0);
	unsetenv("TERN_SHM_BACK");
	m = mem_of(f.ctx);
	assert_true(m.slots_shared > 0);
	assert_int_equal(m.slots_shared_resident, m.slots_shared);
	fx_teardown(&f);
}

int main(void)
{
	struct CMUnitTest tests[3] = {
		cmocka_unit_test(test_counters_rise_with_sessions_and_fall_back_after_close),
	};
	size_t n = 1;

	if (!fx_runnable())
		return 77;
	/* Lazy slot pages are shm's and tcp's (mem:// is the tests' own,
	 * verbs registers, so pins, its slots): the other providers do not
	 * list these rather than skip them (the rdma lane fails on a skip). */
	if (fx_is("shm") || fx_is("tcp"))
		tests[n++] = (struct CMUnitTest)cmocka_unit_test(
			test_idle_session_slots_come_on_first_touch);
	if (fx_is("shm"))
		tests[n++] = (struct CMUnitTest)cmocka_unit_test(
			test_shm_back_full_backs_the_whole_segment);
	return _cmocka_run_group_tests(fx_transport(), tests, n, NULL, NULL);
}
