/* SPDX-License-Identifier: MIT */
/*
 * What tern's own metrics (tern_ctx_method_stats()) say about a benchmark's
 * calls, put beside the benchmark's own count: a benchmark that counts N
 * calls and E errors of a method expects tern to have counted the same,
 * and fails when it did not.
 */
#ifndef TERN_BENCH_MX_H
#define TERN_BENCH_MX_H

#include <stdint.h>
#include <stdio.h>

#include <tern.h>

/* @method's entry on @side of @ctx, zeroed when it has none.  0 or -errno. */
int bench_mx_get(tern_ctx *ctx, int side, uint32_t method, struct tern_method_stats *out);

/* @d = @after - @before, counter by counter: what an interval recorded. */
void bench_mx_diff(struct tern_method_stats *d, const struct tern_method_stats *after,
		   const struct tern_method_stats *before);

/* @a += @b, counter by counter: one method's entries from several processes. */
void bench_mx_add(struct tern_method_stats *a, const struct tern_method_stats *b);

/*
 * The upper bound, in µs, of the bucket that holds the @q quantile of
 * @st's latencies (0 < @q <= 1); -1 when no call completed or the
 * quantile is past the last finite bound.
 */
double bench_mx_quantile_us(const struct tern_method_stats *st, double q);

/*
 * Print ', "@key": {...}' (to go before the closing brace of a JSON line;
 * @key is "metrics" where a line has one): @st's side, method, started,
 * calls (completed), errors, the bucket bounds of p50 and p99 (null when
 * none: see bench_mx_quantile_us()), the counts the benchmark expected and
 * "check": "ok" or "mismatch".  It is a mismatch unless @st completed
 * exactly @calls calls, @errors of them errors, and has none in flight.
 *
 * Return: 0 when they agree, -1 (and a line on stderr naming @who) if not.
 */
int bench_mx_print(FILE *f, const char *key, const char *who, const struct tern_method_stats *st,
		   uint64_t calls, uint64_t errors);

#endif
