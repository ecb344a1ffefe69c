/* SPDX-License-Identifier: MIT */
/*
 * metrics.h - per-method call metrics of a context (metrics.c): counts,
 * errors by code, bytes, calls in flight and latency histograms, for the
 * calls a context serves and the calls it issues.
 *
 * A context is one thread (DESIGN.md): the store is written and read on it
 * only, so nothing here takes a lock or an atomic.  The service layer holds
 * the store and calls the two hooks below around each call; with metrics off
 * its pointer is NULL and each hook costs one test of it.
 */
#ifndef TERN_METRICS_H
#define TERN_METRICS_H

#include <stdbool.h>
#include <stdint.h>

#include "internal.h"

/* One method's figures on one side (what tern_ctx_method_stats() copies). */
struct tern_mstat {
	struct tern_method_stats st;
	uint32_t ncodes; /* st.codes[] in use */
};

struct tern_metrics {
	/* the entry found last per side: a client calling one method, a
	 * server serving one, find it here without hashing */
	struct tern_mstat *last[2];
	struct tern_mstat **e; /* n entries, in the order first seen */
	uint32_t n, cap;
	uint32_t *map; /* entry index + 1; 0: empty */
	uint32_t mask;
	uint32_t nmethods[2]; /* entries per side, the shared ones left out */
	struct tern_mstat *other[2];
};

/* A new, empty store; NULL without memory. */
struct tern_metrics *tern__metrics_new(void);
void tern__metrics_free(struct tern_metrics *mx);

/*
 * The entry of (@side, @method), made on first use.  Methods the context
 * does not know (@known false: a peer's call to a method not served here)
 * share one entry, so a peer cannot grow the store; so do methods past
 * TERN_METRICS_MAX_METHODS.  NULL for the reserved methods (the service
 * check) and without memory.
 */
struct tern_mstat *tern__metrics_entry(struct tern_metrics *mx, int side, uint32_t method,
				       bool known);

/* The bucket of a latency of @ns (tern_metrics_bucket_le_ns() bounds it). */
unsigned tern__metrics_bucket(uint64_t ns);

/*
 * tern__metrics_begin - a call starts: count it in flight
 * @mx: the context's store, NULL when metrics are off
 * @bytes: the request's length (served: received; issued: sent)
 *
 * The caller stamps the start (tern__turn_stamp() inside a turn,
 * tern__turn_stamp_between() where it may run between turns).
 *
 * Return: the entry to give tern__metrics_end(), NULL when not recorded.
 */
static inline struct tern_mstat *tern__metrics_begin(struct tern_metrics *mx, int side,
						     uint32_t method, bool known, uint64_t bytes)
{
	struct tern_mstat *e = mx->last[side];

	if ((!e || e->st.method != method || !known) &&
	    !(e = tern__metrics_entry(mx, side, method, known)))
		return NULL;
	e->st.started++;
	e->st.request_bytes += bytes;
	return e;
}

/* Copy the entries (tern_ctx_method_stats()); their number. */
int tern__metrics_stats(const struct tern_metrics *mx, struct tern_method_stats *out, size_t cap);

/* The Prometheus text of @mx (may be NULL) and @ctx's sessions (tern_ctx_metrics_write()). */
ssize_t tern__metrics_write(const struct tern_metrics *mx, tern_ctx *ctx, char *buf, size_t cap);

/* An error @status (negative) on @e: by code (tern__metrics_end()). */
void tern__metrics_error(struct tern_mstat *e, int status);

/*
 * tern__metrics_end - a call begun on @e ended after @ns (tern__turn_elapsed())
 * with @status (0 or negative), replying @bytes.  Inline: the hot path is a
 * few adds.
 */
static inline void tern__metrics_end(struct tern_mstat *e, uint64_t ns, int status, uint64_t bytes)
{
	e->st.completed++;
	e->st.latency_sum_ns += ns;
	/* both ends in one turn: 0, bucket 0 at once */
	e->st.buckets[ns <= 1024 ? 0 : tern__metrics_bucket(ns)]++;
	if (status >= 0)
		e->st.reply_bytes += bytes;
	else
		tern__metrics_error(e, status);
}

#endif /* TERN_METRICS_H */
