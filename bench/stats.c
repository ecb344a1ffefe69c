// SPDX-License-Identifier: MIT
#include "stats.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <stdlib.h>
#include <time.h>

double bench_now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp_double(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static double percentile(const double *sorted, size_t n, double p)
{
	/* nearest-rank: the smallest value with at least p% of samples at or below */
	size_t rank = (size_t)(p / 100.0 * (double)n + 0.999999);
	if (rank < 1)
		rank = 1;
	if (rank > n)
		rank = n;
	return sorted[rank - 1];
}

void bench_stats_compute(struct bench_stats *st, double *lat, size_t n, double elapsed_us)
{
	double sum = 0;

	st->p50_us = st->p99_us = st->mean_us = st->rate_per_s = 0;
	if (n == 0)
		return;
	qsort(lat, n, sizeof(*lat), cmp_double);
	for (size_t i = 0; i < n; i++)
		sum += lat[i];
	st->p50_us = percentile(lat, n, 50);
	st->p99_us = percentile(lat, n, 99);
	st->mean_us = sum / (double)n;
	st->rate_per_s = elapsed_us > 0 ? (double)n * 1e6 / elapsed_us : 0;
}

int bench_parse_sizes(const char *s, size_t *out, int max, int *n)
{
	*n = 0;
	while (*s) {
		char *end;
		unsigned long long v = strtoull(s, &end, 10);
		if (end == s)
			return -EINVAL;
		switch (*end) {
		case 'k':
		case 'K':
			v <<= 10;
			end++;
			break;
		case 'm':
		case 'M':
			v <<= 20;
			end++;
			break;
		case 'g':
		case 'G':
			v <<= 30;
			end++;
			break;
		default:
			break;
		}
		if (*n == max)
			return -EINVAL;
		out[(*n)++] = (size_t)v;
		if (*end == ',')
			end++;
		else if (*end)
			return -EINVAL;
		s = end;
	}
	return *n ? 0 : -EINVAL;
}

static int run_round_trips(int (*round_trip)(void *), void *arg, long n)
{
	int rc = 0;

	for (long i = 0; i < n && rc == 0; i++)
		rc = round_trip(arg);
	return rc;
}

/* The two must stay different functions: were their bodies the same, the
 * compiler could fold them into one symbol, and callgrind would count the
 * warm-up too.  The warm-up's own mark keeps them apart. */
volatile long bench_warm_up_runs;

__attribute__((noinline)) int bench_warm_up(int (*round_trip)(void *), void *arg, long n)
{
	bench_warm_up_runs++;
	return run_round_trips(round_trip, arg, n);
}

__attribute__((noinline)) int bench_measure(int (*round_trip)(void *), void *arg, long n)
{
	return run_round_trips(round_trip, arg, n);
}

uint64_t bench_status_kib(const char *key)
{
	char line[256];
	size_t n = strlen(key);
	uint64_t v = 0;
	FILE *f = fopen("/proc/self/status", "r");

	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f))
		if (!strncmp(line, key, n) && line[n] == ':') {
			v = strtoull(line + n + 1, NULL, 10);
			break;
		}
	fclose(f);
	return v;
}
