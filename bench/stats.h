/* SPDX-License-Identifier: MIT */
/* Small helpers every benchmark shares: a clock, percentiles, size lists. */
#ifndef TERN_BENCH_STATS_H
#define TERN_BENCH_STATS_H

#include <stddef.h>
#include <stdint.h>

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

/* The value of @key in /proc/self/status (VmRSS, RssAnon, ...) in KiB; 0 if absent. */
uint64_t bench_status_kib(const char *key);

/* Parse "32,256,1K,4K,1M" into @out (at most @max entries). 0 or -EINVAL. */
int bench_parse_sizes(const char *s, size_t *out, int max, int *n);

/*
 * Round trips for callgrind to count (bench/cost.py): both run @round_trip
 * @n times and return its first non-zero status, but only what
 * bench_measure() runs is counted under "valgrind --tool=callgrind
 * --toggle-collect=bench_measure"; bench_warm_up() is the uncounted
 * warm-up (first touches, cold caches).
 */
int bench_warm_up(int (*round_trip)(void *arg), void *arg, long n);
int bench_measure(int (*round_trip)(void *arg), void *arg, long n);

#endif
