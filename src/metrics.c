// SPDX-License-Identifier: MIT
/*
 * metrics.c - per-method call metrics and their Prometheus text.
 *
 * The store maps (side, method) to an entry.  Entries are allocated one by
 * one and never move, so a call in flight keeps a pointer to its entry
 * (the service layer's hooks, metrics.h) and finishing it costs no look-up.
 * The map is open addressing on a power-of-two table, grown at half load,
 * as rpc/methods.c does for the methods themselves.
 *
 * Everything runs on the context's thread: no locks, no atomics.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "metrics.h"

struct tern_metrics *tern__metrics_new(void)
{
	return calloc(1, sizeof(struct tern_metrics));
}

void tern__metrics_free(struct tern_metrics *mx)
{
	if (!mx)
		return;
	for (uint32_t i = 0; i < mx->n; i++)
		free(mx->e[i]);
	free(mx->e);
	free(mx->map);
	free(mx);
}

static uint32_t hash(int side, uint32_t method)
{
	/* Fibonacci hashing: method ids are often small and consecutive. */
	return (uint32_t)((((uint64_t)method << 1 | (uint64_t)side) * 0x9e3779b97f4a7c15ull) >> 32);
}

static struct tern_mstat *lookup(const struct tern_metrics *mx, int side, uint32_t method,
				 uint32_t *slot)
{
	uint32_t i = mx->map ? hash(side, method) & mx->mask : 0;

	for (; mx->map && mx->map[i]; i = (i + 1) & mx->mask) {
		struct tern_mstat *e = mx->e[mx->map[i] - 1];

		if (e->st.method == method && (int)e->st.side == side)
			return e;
	}
	*slot = i;
	return NULL;
}

static int grow(struct tern_metrics *mx)
{
	uint32_t size = mx->map ? 2 * (mx->mask + 1) : 16;
	uint32_t *map = calloc(size, sizeof(*map));

	if (!map)
		return -ENOMEM;
	for (uint32_t k = 0; k < mx->n; k++) {
		const struct tern_mstat *e = mx->e[k];
		uint32_t i = hash((int)e->st.side, e->st.method) & (size - 1);

		while (map[i])
			i = (i + 1) & (size - 1);
		map[i] = k + 1;
	}
	free(mx->map);
	mx->map = map;
	mx->mask = size - 1;
	return 0;
}

static struct tern_mstat *add(struct tern_metrics *mx, int side, uint32_t method)
{
	struct tern_mstat *e;
	uint32_t slot = 0; /* set by lookup(): the method is not there yet */

	if (mx->n == mx->cap) {
		uint32_t cap = mx->cap ? 2 * mx->cap : 16;
		struct tern_mstat **a = realloc(mx->e, cap * sizeof(*a));

		if (!a)
			return NULL;
		mx->e = a;
		mx->cap = cap;
	}
	if ((!mx->map || 2 * (mx->n + 1) > mx->mask + 1) && grow(mx))
		return NULL;
	if (!(e = calloc(1, sizeof(*e))))
		return NULL;
	e->st.method = method;
	e->st.side = (uint32_t)side;
	lookup(mx, side, method, &slot);
	mx->map[slot] = mx->n + 1;
	mx->e[mx->n++] = e;
	return e;
}

struct tern_mstat *tern__metrics_entry(struct tern_metrics *mx, int side, uint32_t method,
				       bool known)
{
	struct tern_mstat *e;
	uint32_t slot;

	if (method >= TERN_METHOD_RESERVED_MIN && method != TERN_METRICS_OTHER)
		return NULL; /* the runtime's own calls (the service check) */
	if (known && method != TERN_METRICS_OTHER) {
		if ((e = lookup(mx, side, method, &slot)))
			return mx->last[side] = e;
		if (mx->nmethods[side] < TERN_METRICS_MAX_METHODS && (e = add(mx, side, method))) {
			mx->nmethods[side]++;
			return mx->last[side] = e;
		}
	}
	if (!mx->other[side])
		mx->other[side] = add(mx, side, TERN_METRICS_OTHER);
	return mx->other[side];
}

unsigned tern__metrics_bucket(uint64_t ns)
{
	uint64_t x = ns - 1; /* bounds are inclusive: bucket x = ns - 1 */
	unsigned k;

	if (ns <= 1024)
		return 0;
	k = 63u - (unsigned)__builtin_clzll(x);
	if (k > 35)
		return TERN_METRICS_BUCKETS - 1;
	return 1 + (k - 10) * 2 + (unsigned)((x >> (k - 1)) & 1);
}

uint64_t tern_metrics_bucket_le_ns(unsigned i)
{
	unsigned k;

	if (i == 0)
		return 1024;
	if (i >= TERN_METRICS_BUCKETS - 1)
		return UINT64_MAX;
	k = 10 + (i - 1) / 2;
	return (i - 1) & 1 ? 1ull << (k + 1) : 3ull << (k - 1);
}

void tern__metrics_error(struct tern_mstat *e, int status)
{
	e->st.errors++;
	for (uint32_t i = 0; i < e->ncodes; i++) {
		if (e->st.codes[i].code == status) {
			e->st.codes[i].count++;
			return;
		}
	}
	if (e->ncodes < TERN_METRICS_CODES) {
		e->st.codes[e->ncodes].code = status;
		e->st.codes[e->ncodes++].count = 1;
	} else {
		e->st.codes_other++;
	}
}

int tern__metrics_stats(const struct tern_metrics *mx, struct tern_method_stats *out, size_t cap)
{
	uint32_t n = mx ? mx->n : 0;

	for (uint32_t i = 0; i < n && i < cap; i++)
		out[i] = mx->e[i]->st;
	return (int)n;
}

/* ---- Prometheus text ---------------------------------------------------------- */

/* snprintf() into a buffer that may be too small: the length is kept. */
struct out {
	char *buf;
	size_t cap, len;
};

__attribute__((format(printf, 2, 3))) static void put(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(o->len < o->cap ? o->buf + o->len : NULL,
		      o->len < o->cap ? o->cap - o->len : 0, fmt, ap);
	va_end(ap);
	if (n > 0)
		o->len += (size_t)n;
}

/* A label value: backslash, double quote and newline escaped. */
static void put_label(struct out *o, const char *s)
{
	for (; *s; s++) {
		if (*s == '\\' || *s == '"')
			put(o, "\\%c", *s);
		else if (*s == '\n')
			put(o, "\\n");
		else
			put(o, "%c", *s);
	}
}

static const char *const side_name[2] = {"served", "issued"};

static void put_method(struct out *o, const struct tern_method_stats *st)
{
	put(o, "side=\"%s\",method=\"", side_name[st->side & 1]);
	if (st->method == TERN_METRICS_OTHER)
		put(o, "other\"");
	else
		put(o, "0x%08x\"", st->method);
}

static void family(struct out *o, const char *name, const char *type, const char *help)
{
	put(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

enum { F_STARTED, F_COMPLETED, F_INFLIGHT, F_REQ_BYTES, F_REP_BYTES };

static void method_family(struct out *o, const struct tern_metrics *mx, int what, const char *name,
			  const char *type, const char *help)
{
	family(o, name, type, help);
	for (uint32_t i = 0; i < mx->n; i++) {
		const struct tern_method_stats *st = &mx->e[i]->st;
		uint64_t v = what == F_STARTED	   ? st->started
			     : what == F_COMPLETED ? st->completed
			     : what == F_INFLIGHT  ? st->started - st->completed
			     : what == F_REQ_BYTES ? st->request_bytes
						   : st->reply_bytes;

		put(o, "%s{", name);
		put_method(o, st);
		put(o, "} %llu\n", (unsigned long long)v);
	}
}

static void put_errors(struct out *o, const struct tern_metrics *mx)
{
	family(o, "tern_rpc_errors_total", "counter",
	       "Calls finished with an error status, by method and code.");
	for (uint32_t i = 0; i < mx->n; i++) {
		const struct tern_mstat *e = mx->e[i];

		for (uint32_t c = 0; c < e->ncodes; c++) {
			put(o, "tern_rpc_errors_total{");
			put_method(o, &e->st);
			put(o, ",code=\"%s\"} %llu\n", tern_err_name(e->st.codes[c].code),
			    (unsigned long long)e->st.codes[c].count);
		}
		if (e->st.codes_other) {
			put(o, "tern_rpc_errors_total{");
			put_method(o, &e->st);
			put(o, ",code=\"other\"} %llu\n", (unsigned long long)e->st.codes_other);
		}
	}
}

static void put_latency(struct out *o, const struct tern_metrics *mx)
{
	family(o, "tern_rpc_latency_seconds", "histogram",
	       "Call latency: served, dispatch to reply; issued, post to callback.");
	for (uint32_t i = 0; i < mx->n; i++) {
		const struct tern_method_stats *st = &mx->e[i]->st;
		uint64_t cum = 0;

		for (unsigned b = 0; b < TERN_METRICS_BUCKETS; b++) {
			uint64_t le = tern_metrics_bucket_le_ns(b);

			cum += st->buckets[b];
			put(o, "tern_rpc_latency_seconds_bucket{");
			put_method(o, st);
			if (le == UINT64_MAX)
				put(o, ",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
			else
				put(o, ",le=\"%.12g\"} %llu\n", (double)le / 1e9,
				    (unsigned long long)cum);
		}
		put(o, "tern_rpc_latency_seconds_sum{");
		put_method(o, st);
		put(o, "} %.9f\n", (double)st->latency_sum_ns / 1e9);
		put(o, "tern_rpc_latency_seconds_count{");
		put_method(o, st);
		put(o, "} %llu\n", (unsigned long long)st->completed);
	}
}

#define COUNTER(f, help)                                            \
	{                                                           \
#f, offsetof(struct tern_session_counters, f), help \
	}
static const struct {
	const char *name;
	size_t off;
	const char *help;
} session_counters[] = {
	COUNTER(calls_sent, "Calls this side issued."),
	COUNTER(calls_completed, "Issued calls whose callback ran."),
	COUNTER(calls_served, "Requests handed to a handler."),
	COUNTER(bytes_sent, "Payload bytes sent."),
	COUNTER(bytes_received, "Payload bytes received."),
	COUNTER(credit_stalls, "Calls that found no slot or credit."),
	COUNTER(timeouts, "Calls that passed their deadline."),
	COUNTER(errors, "Calls completed with an error status."),
	COUNTER(late_replies, "Replies that arrived after their call timed out."),
	COUNTER(protocol_errors, "Malformed or out-of-protocol messages from the peer."),
	COUNTER(credit_msgs_sent, "Explicit credit messages sent."),
	COUNTER(credit_msgs_received, "Explicit credit messages received."),
	COUNTER(oneway_sent, "One-way messages sent."),
	COUNTER(oneway_received, "One-way messages handed to a handler."),
	COUNTER(oneway_dropped, "One-way messages for no one-way method here."),
	COUNTER(bulk_bytes_read, "Bytes pulled from the peer (large requests)."),
	COUNTER(bulk_bytes_written, "Bytes pushed into the peer (large replies)."),
	COUNTER(staging_refused, "Large calls refused for the staging limit."),
};

static void put_sessions(struct out *o, tern_ctx *ctx)
{
	char name[64];

	for (size_t k = 0; k < sizeof(session_counters) / sizeof(session_counters[0]); k++) {
		unsigned ord = 0;

		snprintf(name, sizeof(name), "tern_session_%s_total", session_counters[k].name);
		family(o, name, "counter", session_counters[k].help);
		for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next) {
			tern_session *s = tern_container_of(l, tern_session, link);
			uint64_t v;

			memcpy(&v, (const char *)&s->cnt + session_counters[k].off, sizeof(v));
			/* the ordinal keeps two sessions with one peer apart */
			put(o, "%s{session=\"%u\",role=\"%s\",peer=\"", name, ord++,
			    s->is_server ? "server" : "client");
			put_label(o, s->peer);
			put(o, "\"} %llu\n", (unsigned long long)v);
		}
	}
}

ssize_t tern__metrics_write(const struct tern_metrics *mx, tern_ctx *ctx, char *buf, size_t cap)
{
	static const struct tern_metrics none;
	struct out o = {buf, cap, 0};

	if (cap)
		buf[0] = 0;
	if (!mx)
		mx = &none;
	method_family(&o, mx, F_STARTED, "tern_rpc_started_total", "counter",
		      "Calls begun, by side and method.");
	method_family(&o, mx, F_COMPLETED, "tern_rpc_calls_total", "counter",
		      "Calls finished with any status, by side and method.");
	put_errors(&o, mx);
	method_family(&o, mx, F_INFLIGHT, "tern_rpc_in_flight", "gauge",
		      "Calls begun and not finished.");
	method_family(&o, mx, F_REQ_BYTES, "tern_rpc_request_bytes_total", "counter",
		      "Request payload bytes (received when served, sent when issued).");
	method_family(&o, mx, F_REP_BYTES, "tern_rpc_reply_bytes_total", "counter",
		      "Reply payload bytes of successful calls.");
	put_latency(&o, mx);
	put_sessions(&o, ctx);
	return (ssize_t)o.len;
}
