/* SPDX-License-Identifier: MIT */
/* Small helpers every benchmark shares: a clock, percentiles, size lists. */
#ifndef TERN_BENCH_STATS_H
#define TERN_BENCH_STATS_H

#include <stddef.h>

struct bench_stats {
	double p50_us;
	double p99_us;
	double mean_us;
	double rate_per_s; /* operations per second over the timed interval */
};

/* Monotonic time in microseconds. */
double bench_now_us(void);

/* Percentiles of @lat (sorted in place) and the rate of @n ops in @elapsed_us. */
void bench_stats_compute(struct bench_stats *st, double *lat, size_t n, double elapsed_us);

/* Parse "32,256,1K,4K,1M" into @out (at most @max entries). 0 or -EINVAL. */
int bench_parse_sizes(const char *s, size_t *out, int max, int *n);

#endif
