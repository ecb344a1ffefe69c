// SPDX-License-Identifier: MIT
/*
 * util.c - the chaos run's plumbing: payload bytes, clocks, RSS, the event
 * trace and failure reports.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "chaos.h"

char chaos_role[32] = "chaos";

/* ---- payload bytes ----------------------------------------------------------- */

static inline uint64_t word_at(uint64_t seed, uint64_t k)
{
	return chaos_mix(seed ^ (k * 0xd6e8feb86659fd93ull));
}

void chaos_fill(void *buf, size_t len, uint64_t seed, uint64_t off)
{
	uint8_t *p = buf;
	size_t i = 0;

	/* byte-wise up to a word boundary of the stream, then whole words */
	while (i < len && (off + i) % 8) {
		uint64_t w = word_at(seed, (off + i) / 8);
		p[i] = (uint8_t)(w >> (8 * ((off + i) % 8)));
		i++;
	}
	for (; i + 8 <= len; i += 8) {
		uint64_t w = word_at(seed, (off + i) / 8);
		memcpy(p + i, &w, 8);
	}
	for (; i < len; i++) {
		uint64_t w = word_at(seed, (off + i) / 8);
		p[i] = (uint8_t)(w >> (8 * ((off + i) % 8)));
	}
}

size_t chaos_check(const void *buf, size_t len, uint64_t seed, uint64_t off)
{
	const uint8_t *p = buf;
	size_t i = 0;

	while (i < len && (off + i) % 8) {
		uint64_t w = word_at(seed, (off + i) / 8);
		if (p[i] != (uint8_t)(w >> (8 * ((off + i) % 8))))
			return i;
		i++;
	}
	for (; i + 8 <= len; i += 8) {
		uint64_t w = word_at(seed, (off + i) / 8), got;
		memcpy(&got, p + i, 8);
		if (got != w)
			break; /* the byte loop below finds which */
	}
	for (; i < len; i++) {
		uint64_t w = word_at(seed, (off + i) / 8);
		if (p[i] != (uint8_t)(w >> (8 * ((off + i) % 8))))
			return i;
	}
	return SIZE_MAX;
}

uint64_t chaos_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint64_t chaos_rss(void)
{
	unsigned long size = 0, resident = 0;
	FILE *f = fopen("/proc/self/statm", "r");

	if (!f)
		return 0;
	if (fscanf(f, "%lu %lu", &size, &resident) != 2)
		resident = 0;
	fclose(f);
	return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* ---- the trace --------------------------------------------------------------- */

#define TRACE_LEN  4096 /* events kept per agent */
#define TRACE_TEXT 160

struct chaos_ev {
	uint64_t t_ns;
	char text[TRACE_TEXT];
};

struct chaos_trace {
	int agent;
	FILE *file; /* --trace-dir */
	uint64_t t0;
	uint64_t n; /* events recorded */
	struct chaos_ev ev[TRACE_LEN];
};

struct chaos_trace *chaos_trace_new(int agent_id)
{
	struct chaos_trace *t = calloc(1, sizeof(*t));

	if (!t)
		abort();
	t->agent = agent_id;
	t->t0 = chaos_now_ns();
	return t;
}

void chaos_trace_free(struct chaos_trace *t)
{
	if (t && t->file)
		fclose(t->file);
	free(t);
}

void chaos_ev(struct chaos_trace *t, const char *fmt, ...)
{
	struct chaos_ev *e;
	va_list ap;

	if (!t)
		return;
	e = &t->ev[t->n++ % TRACE_LEN];
	e->t_ns = chaos_now_ns();
	va_start(ap, fmt);
	vsnprintf(e->text, sizeof(e->text), fmt, ap);
	va_end(ap);
	if (cfg.trace_dir) {
		if (!t->file) {
			char path[512];

			snprintf(path, sizeof(path), "%s/seed%llu-agent%d.log", cfg.trace_dir,
				 (unsigned long long)cfg.seed, t->agent);
			t->file = fopen(path, "w");
			if (t->file) /* a killed process leaves its last line too */
				setvbuf(t->file, NULL, _IOLBF, 0);
		}
		if (t->file)
			fprintf(t->file, "%10.3f ms  %s\n", (e->t_ns - t->t0) / 1e6, e->text);
	}
	if (cfg.trace) {
		/* one write per line: several processes share the terminal */
		char line[TRACE_TEXT + 64];
		int n = snprintf(line, sizeof(line), "%s %10.3f ms  a%d %s\n", chaos_role,
				 (e->t_ns - t->t0) / 1e6, t->agent, e->text);

		if (write(2, line, (size_t)(n < (int)sizeof(line) ? n : (int)sizeof(line) - 1)) < 0)
			return;
	}
}

void chaos_trace_print(struct chaos_trace *t, int last)
{
	uint64_t from;

	if (!t)
		return;
	if (last > TRACE_LEN)
		last = TRACE_LEN;
	from = t->n > (uint64_t)last ? t->n - (uint64_t)last : 0;
	fprintf(stderr, "%s: the last %llu of agent %d's %llu events:\n", chaos_role,
		(unsigned long long)(t->n - from), t->agent, (unsigned long long)t->n);
	for (uint64_t i = from; i < t->n; i++) {
		const struct chaos_ev *e = &t->ev[i % TRACE_LEN];
		fprintf(stderr, "  %10.3f ms  %s\n", (e->t_ns - t->t0) / 1e6, e->text);
	}
}

void chaos_log(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", chaos_role);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

void chaos_fail(struct chaos_trace *t, const char *fmt, ...)
{
	va_list ap;

	char msg[2048];
	int n;

	fflush(stdout);
	/* one write: other processes may be writing to the same stderr */
	n = snprintf(msg, sizeof(msg), "%s: FAILED (seed %llu, %s): ", chaos_role,
		     (unsigned long long)cfg.seed, cfg.transport);
	va_start(ap, fmt);
	n += vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	va_end(ap);
	if (n < (int)sizeof(msg))
		n += snprintf(msg + n, sizeof(msg) - (size_t)n, "\n%s: replay: %s\n", chaos_role,
			      cfg.replay);
	if (n >= (int)sizeof(msg))
		n = (int)sizeof(msg) - 1;
	if (write(2, msg, (size_t)n) < 0)
		_exit(1);
	chaos_trace_print(t, cfg.tail);
	if (t && t->file)
		fflush(t->file);
	fflush(stderr);
	/*
	 * _exit, not exit: the contexts are left as they are, and a leak
	 * report about them would bury what broke.
	 */
	_exit(1);
}
