// SPDX-License-Identifier: MIT
/*
 * test_bench_mx - the benchmarks' cross-check with tern's own metrics
 * (bench/mx.c): intervals, sums over processes, quantiles from the
 * histogram, and a check that fails when the counts disagree.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "mx.h"

/* @n calls in bucket @b, @e of them errors */
static void fill(struct tern_method_stats *st, unsigned b, uint64_t n, uint64_t e)
{
	st->started += n;
	st->completed += n;
	st->errors += e;
	st->buckets[b] += n;
}

/* bench_mx_print()'s text into @buf; its return */
static int print(char *buf, size_t cap, const struct tern_method_stats *st, uint64_t calls,
		 uint64_t errors)
{
	FILE *f = fmemopen(buf, cap, "w");
	int rc;

	assert_non_null(f);
	rc = bench_mx_print(f, "metrics", "test", st, calls, errors);
	fclose(f);
	return rc;
}

static void test_quantiles_are_bucket_bounds(void **state)
{
	struct tern_method_stats st = {0};

	(void)state;
	assert_true(bench_mx_quantile_us(&st, 0.5) < 0); /* nothing completed */
	fill(&st, 0, 50, 0);				 /* <= 1.024 us */
	fill(&st, 5, 49, 0);				 /* bucket 5 */
	fill(&st, 20, 1, 0);				 /* the slowest 1% */
	assert_true(bench_mx_quantile_us(&st, 0.50) == 1.024);
	assert_true(bench_mx_quantile_us(&st, 0.51) == (double)tern_metrics_bucket_le_ns(5) / 1000);
	assert_true(bench_mx_quantile_us(&st, 0.99) == (double)tern_metrics_bucket_le_ns(5) / 1000);
	assert_true(bench_mx_quantile_us(&st, 1.0) == (double)tern_metrics_bucket_le_ns(20) / 1000);
	fill(&st, TERN_METRICS_BUCKETS - 1, 1000, 0); /* +Inf: no bound to give */
	assert_true(bench_mx_quantile_us(&st, 0.99) < 0);
}

static void test_an_interval_and_a_sum(void **state)
{
	struct tern_method_stats a = {.method = 7}, b, d, sum = {0};

	(void)state;
	fill(&a, 3, 10, 2);
	b = a;
	fill(&b, 4, 5, 1);
	bench_mx_diff(&d, &b, &a);
	assert_int_equal(d.method, 7);
	assert_int_equal(d.started, 5);
	assert_int_equal(d.completed, 5);
	assert_int_equal(d.errors, 1);
	assert_int_equal(d.buckets[3], 0);
	assert_int_equal(d.buckets[4], 5);
	bench_mx_add(&sum, &a);
	bench_mx_add(&sum, &b);
	assert_int_equal(sum.completed, 25);
	assert_int_equal(sum.errors, 5);
	assert_int_equal(sum.buckets[3], 20);
}

static void test_the_check_fails_on_any_disagreement(void **state)
{
	struct tern_method_stats st = {.method = 0x7e40, .side = TERN_METRICS_ISSUED};
	char buf[1024];

	(void)state;
	fill(&st, 2, 100, 3);
	assert_int_equal(print(buf, sizeof(buf), &st, 100, 3), 0);
	assert_non_null(strstr(buf, "\"check\": \"ok\""));
	assert_non_null(strstr(buf, "\"side\": \"issued\", \"method\": \"0x00007e40\""));
	assert_non_null(strstr(buf, "\"calls\": 100, \"errors\": 3"));
	assert_int_equal(print(buf, sizeof(buf), &st, 101, 3), -1); /* a call tern missed */
	assert_non_null(strstr(buf, "\"check\": \"mismatch\""));
	assert_int_equal(print(buf, sizeof(buf), &st, 99, 3), -1);  /* one too many */
	assert_int_equal(print(buf, sizeof(buf), &st, 100, 2), -1); /* errors */
	st.started++;						    /* one in flight */
	assert_int_equal(print(buf, sizeof(buf), &st, 100, 3), -1);

	/* nothing recorded: null quantiles, and a mismatch against any call */
	memset(&st, 0, sizeof(st));
	assert_int_equal(print(buf, sizeof(buf), &st, 0, 0), 0);
	assert_non_null(strstr(buf, "\"p50_le_us\": null, \"p99_le_us\": null"));
	assert_int_equal(print(buf, sizeof(buf), &st, 1, 0), -1);
}

static void test_a_context_without_the_method_reads_zero(void **state)
{
	struct tern_method_stats st;
	tern_ctx *ctx;

	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	memset(&st, 0xa5, sizeof(st));
	assert_int_equal(bench_mx_get(ctx, TERN_METRICS_SERVED, 42, &st), 0);
	assert_int_equal(st.method, 42);
	assert_int_equal(st.side, TERN_METRICS_SERVED);
	assert_int_equal(st.started, 0);
	assert_int_equal(st.buckets[TERN_METRICS_BUCKETS - 1], 0);
	tern_ctx_destroy(ctx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_quantiles_are_bucket_bounds),
		cmocka_unit_test(test_an_interval_and_a_sum),
		cmocka_unit_test(test_the_check_fails_on_any_disagreement),
		cmocka_unit_test(test_a_context_without_the_method_reads_zero),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
