// SPDX-License-Identifier: MIT
/*
 * mx.c - a benchmark's view of tern's per-method metrics (mx.h).
 */
#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "mx.h"

int bench_mx_get(tern_ctx *ctx, int side, uint32_t method, struct tern_method_stats *out)
{
	struct tern_method_stats *all;
	int n = tern_ctx_method_stats(ctx, NULL, 0);

	memset(out, 0, sizeof(*out));
	out->method = method;
	out->side = (uint32_t)side;
	if (n <= 0)
		return n;
	if (!(all = calloc((size_t)n, sizeof(*all))))
		return -ENOMEM;
	/* entries are only added, so n is enough: nothing runs in between */
	n = tern_ctx_method_stats(ctx, all, (size_t)n);
	for (int i = 0; i < n; i++)
		if (all[i].method == method && all[i].side == (uint32_t)side)
			*out = all[i];
	free(all);
	return n < 0 ? n : 0;
}

void bench_mx_diff(struct tern_method_stats *d, const struct tern_method_stats *after,
		   const struct tern_method_stats *before)
{
	*d = *after;
	d->started -= before->started;
	d->completed -= before->completed;
	d->errors -= before->errors;
	d->codes_other -= before->codes_other;
	d->request_bytes -= before->request_bytes;
	d->reply_bytes -= before->reply_bytes;
	d->latency_sum_ns -= before->latency_sum_ns;
	/* a code keeps its place once it has one */
	for (int i = 0; i < TERN_METRICS_CODES; i++)
		if (before->codes[i].code == d->codes[i].code)
			d->codes[i].count -= before->codes[i].count;
	for (int i = 0; i < TERN_METRICS_BUCKETS; i++)
		d->buckets[i] -= before->buckets[i];
}

void bench_mx_add(struct tern_method_stats *a, const struct tern_method_stats *b)
{
	a->started += b->started;
	a->completed += b->completed;
	a->errors += b->errors;
	a->request_bytes += b->request_bytes;
	a->reply_bytes += b->reply_bytes;
	a->latency_sum_ns += b->latency_sum_ns;
	for (int i = 0; i < TERN_METRICS_BUCKETS; i++)
		a->buckets[i] += b->buckets[i];
}

double bench_mx_quantile_us(const struct tern_method_stats *st, double q)
{
	uint64_t total = 0, seen = 0, want;

	for (int i = 0; i < TERN_METRICS_BUCKETS; i++)
		total += st->buckets[i];
	if (!total)
		return -1;
	/* the rank of the quantile, 1-based, as bench_stats_compute() takes it */
	want = (uint64_t)(q * (double)total + 0.999999);
	if (want < 1)
		want = 1;
	for (unsigned i = 0; i < TERN_METRICS_BUCKETS; i++) {
		seen += st->buckets[i];
		if (seen >= want) {
			uint64_t le = tern_metrics_bucket_le_ns(i);

			return le == UINT64_MAX ? -1 : (double)le / 1000.0;
		}
	}
	return -1;
}

int bench_mx_print(FILE *f, const char *key, const char *who, const struct tern_method_stats *st,
		   uint64_t calls, uint64_t errors)
{
	uint64_t in_flight = st->started - st->completed;
	int ok = st->completed == calls && st->errors == errors && in_flight == 0;
	static const double qs[2] = {0.50, 0.99};
	char q[2][32];

	for (int i = 0; i < 2; i++) {
		double us = bench_mx_quantile_us(st, qs[i]);

		/* JSON has no -1 for "none": null */
		if (us < 0)
			snprintf(q[i], sizeof(q[i]), "null");
		else
			snprintf(q[i], sizeof(q[i]), "%.3f", us);
	}
	fprintf(f,
		", \"%s\": {\"side\": \"%s\", \"method\": \"0x%08" PRIx32
		"\", \"started\": %" PRIu64 ", \"calls\": %" PRIu64 ", \"errors\": %" PRIu64
		", \"p50_le_us\": %s, \"p99_le_us\": %s, \"expected_calls\": %" PRIu64
		", \"expected_errors\": %" PRIu64 ", \"check\": \"%s\"}",
		key, st->side == TERN_METRICS_SERVED ? "served" : "issued", st->method, st->started,
		st->completed, st->errors, q[0], q[1], calls, errors, ok ? "ok" : "mismatch");
	if (ok)
		return 0;
	fprintf(stderr,
		"%s: tern's metrics (%s) disagree with the benchmark's count: %" PRIu64
		" calls and %" PRIu64 " errors (%" PRIu64 " in flight) where it counted %" PRIu64
		" and %" PRIu64 "\n",
		who, key, st->completed, st->errors, in_flight, calls, errors);
	return -1;
}
