// SPDX-License-Identifier: MIT
/*
 * test_metrics.c - per-method metrics (src/metrics.c): random call mixes
 * whose metrics must equal the calls made, histograms whose count is the
 * sum of their buckets, errors by code, the store's bounds against a peer
 * that calls many methods, and the Prometheus text read back by a strict
 * parser of the text exposition format.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "http_client.h"
#include "internal.h"
#include "metrics.h"

#define M_ECHO	  0x700 /* raw: replies the first half of the request */
#define M_FAIL	  0x701 /* raw: fails with the code the request's first byte picks */
#define M_INPLACE 0x702 /* in place: replies 3 bytes */
#define M_NONE	  0x7ff /* not registered */
#define NMETHODS  4

#define SLOTS  8
#define RUN_MS 60000

static const uint32_t methods[NMETHODS] = {M_ECHO, M_FAIL, M_INPLACE, M_NONE};
static const int fail_codes[] = {-EINVAL, -ENOENT, -EPERM, -EACCES, -EIO};
#define NCODES (int)(sizeof(fail_codes) / sizeof(fail_codes[0]))

/* What the test expects of one method on one side. */
struct expect {
	uint64_t calls, errors, req_bytes, rep_bytes;
	uint64_t by_code[NCODES + 1]; /* the last: TERN_ENOMETHOD */
};

static int on_echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	out->base = in;
	out->len = n / 2;
	return 0;
}

static int on_fail(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)out, (void)u;
	return fail_codes[n ? ((const uint8_t *)in)[0] % NCODES : 0];
}

static ssize_t on_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)in, (void)n, (void)u;
	assert_true(cap >= 3);
	memcpy(out, "abc", 3);
	return 3;
}

static struct fx *start_in(enum tern_progress progress)
{
	struct fx *f = calloc(1, sizeof(*f));
	struct tern_session_opts o = {.size = sizeof(o), .slot_count = SLOTS, .nonblock = 1};

	assert_non_null(f);
	assert_int_equal(fx_setup(f, &o, progress), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_ECHO, on_echo, NULL), 0);
	assert_int_equal(tern_register_raw(f->ctx, M_FAIL, on_fail, NULL), 0);
	assert_int_equal(tern_register_inplace(f->ctx, M_INPLACE, on_inplace, NULL), 0);
	return f;
}

static struct fx *start(void)
{
	return start_in(TERN_PROGRESS_BUSY);
}

static void stop(struct fx *f)
{
	fx_teardown(f);
	free(f);
}

static int ndone;
static void count_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	(void)s, (void)status, (void)reply, (void)len, (void)user;
	ndone++;
}

static const struct tern_method_stats *find(const struct tern_method_stats *st, int n, int side,
					    uint32_t method)
{
	for (int i = 0; i < n; i++)
		if (st[i].side == (uint32_t)side && st[i].method == method)
			return &st[i];
	return NULL;
}

static uint64_t code_count(const struct tern_method_stats *st, int code)
{
	for (int i = 0; i < TERN_METRICS_CODES; i++)
		if (st->codes[i].count && st->codes[i].code == code)
			return st->codes[i].count;
	return 0;
}

static void check_entry(const struct tern_method_stats *st, const struct expect *e)
{
	uint64_t sum = 0, nerr = st->codes_other;

	assert_non_null(st);
	assert_int_equal(st->started, e->calls);
	assert_int_equal(st->completed, e->calls);
	assert_int_equal(st->errors, e->errors);
	assert_int_equal(st->request_bytes, e->req_bytes);
	assert_int_equal(st->reply_bytes, e->rep_bytes);
	for (int b = 0; b < TERN_METRICS_BUCKETS; b++)
		sum += st->buckets[b];
	assert_int_equal(sum, st->completed); /* the histogram's count */
	for (int i = 0; i < TERN_METRICS_CODES; i++)
		nerr += st->codes[i].count;
	assert_int_equal(nerr, st->errors);
	for (int c = 0; c < NCODES; c++)
		assert_int_equal(code_count(st, fail_codes[c]), e->by_code[c]);
	assert_int_equal(code_count(st, TERN_ENOMETHOD), e->by_code[NCODES]);
	assert_int_equal(st->codes_other, 0);
}

/* One random mix of @ncalls calls, @seed picking methods, sizes and codes. */
static void random_mix(unsigned seed, int ncalls)
{
	struct fx *f = start();
	struct expect issued[NMETHODS] = {0}, served[NMETHODS] = {0};
	size_t maxp = tern_session_max_payload(f->cli);
	struct tern_method_stats st[16];
	uint8_t buf[4096];
	int made = 0, n;

	srand(seed);
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	while (made < ncalls) {
		int burst = 1 + rand() % (SLOTS - 1);
		uint64_t inflight = 0;

		for (int b = 0; b < burst && made < ncalls; b++) {
			int k = rand() % NMETHODS;
			size_t len = (size_t)rand() % (maxp < sizeof(buf) ? maxp : sizeof(buf));
			struct expect *is = &issued[k];
			int code;

			if (k == 1 && !len)
				len = 1;
			for (size_t i = 0; i < len; i++)
				buf[i] = (uint8_t)rand();
			code = k == 1 ? (int)(buf[0] % NCODES) : k == 3 ? NCODES : -1;
			assert_int_equal(
				tern_call(f->cli, methods[k], buf, len, count_cb, NULL, NULL), 0);
			made++;
			is->calls++;
			is->req_bytes += len;
			if (code >= 0) {
				is->errors++;
				is->by_code[code]++;
			} else {
				is->rep_bytes += k == 0 ? len / 2 : 3;
			}
			inflight++;
		}
		/* in flight: posted, not finished; the server has seen none yet */
		n = tern_ctx_method_stats(f->ctx, st, 16);
		assert_true(n >= 1 && n <= 8);
		for (int i = 0; i < n; i++)
			if (st[i].side == TERN_METRICS_ISSUED)
				inflight -= st[i].started - st[i].completed;
			else
				assert_int_equal(st[i].started, st[i].completed);
		assert_int_equal(inflight, 0);
		assert_int_equal(fx_run_until_count(f, &ndone, made, RUN_MS), 0);
	}
	/* served: what was issued, M_NONE's calls in the shared entry */
	memcpy(served, issued, sizeof(served));
	n = tern_ctx_method_stats(f->ctx, st, 16);
	assert_true(n <= 8);
	for (int k = 0; k < NMETHODS; k++) {
		if (!issued[k].calls)
			continue;
		check_entry(find(st, n, TERN_METRICS_ISSUED, methods[k]), &issued[k]);
		if (k == 3) {
			assert_null(find(st, n, TERN_METRICS_SERVED, M_NONE));
			check_entry(find(st, n, TERN_METRICS_SERVED, TERN_METRICS_OTHER),
				    &served[k]);
		} else {
			check_entry(find(st, n, TERN_METRICS_SERVED, methods[k]), &served[k]);
		}
	}
	stop(f);
}

static void test_random_mixes_count_every_call_by_method_and_code(void **state)
{
	(void)state;
	for (unsigned seed = 1; seed <= 6; seed++)
		random_mix(seed, 300);
}

static void test_calls_in_flight_are_begun_and_not_finished(void **state)
{
	struct fx *f = start();
	struct tern_method_stats st[8];
	const struct tern_method_stats *e;
	int n;

	(void)state;
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	for (int i = 0; i < 3; i++)
		assert_int_equal(tern_call(f->cli, M_ECHO, "abcd", 4, count_cb, NULL, NULL), 0);
	n = tern_ctx_method_stats(f->ctx, st, 8);
	e = find(st, n, TERN_METRICS_ISSUED, M_ECHO);
	assert_non_null(e);
	assert_int_equal(e->started, 3);
	assert_int_equal(e->completed, 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 3, RUN_MS), 0);
	n = tern_ctx_method_stats(f->ctx, st, 8);
	e = find(st, n, TERN_METRICS_ISSUED, M_ECHO);
	assert_int_equal(e->completed, 3);
	stop(f);
}

/* @side's entry of M_ECHO in @st[0..n), NULL if none */
static const struct tern_method_stats *echo_entry(const struct tern_method_stats *st, int n,
						  int side)
{
	const struct tern_method_stats *e = find(st, n, side, M_ECHO);

	assert_non_null(e);
	return e;
}

static void echo_once(struct fx *f)
{
	int want = ndone + 1;

	assert_int_equal(tern_call(f->cli, M_ECHO, "ab", 2, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, want, RUN_MS), 0);
}

static void test_metrics_are_on_by_default_and_stop_when_disabled(void **state)
{
	struct fx *f;
	struct tern_method_stats st[8];
	int n;

	(void)state;
	unsetenv("TERN_METRICS");
	f = start();
	ndone = 0;
	echo_once(f); /* no tern_ctx_metrics_enable(): counted on both sides */
	n = tern_ctx_method_stats(f->ctx, st, 8);
	assert_int_equal(n, 2);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_SERVED)->completed, 1);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_ISSUED)->completed, 1);

	/* begun while on, finished while off: still finished in its entry */
	assert_int_equal(tern_call(f->cli, M_ECHO, "ab", 2, count_cb, NULL, NULL), 0);
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 0), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 2, RUN_MS), 0);
	echo_once(f); /* off: not counted */
	n = tern_ctx_method_stats(f->ctx, st, 8);
	assert_int_equal(n, 2);
	/* the issued side began the second call while on; the server
	 * dispatched it after the switch */
	assert_int_equal(echo_entry(st, n, TERN_METRICS_ISSUED)->started, 2);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_ISSUED)->completed, 2);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_SERVED)->started, 1);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_SERVED)->completed, 1);

	/* on again: the same entries go on counting */
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	echo_once(f);
	n = tern_ctx_method_stats(f->ctx, st, 8);
	assert_int_equal(n, 2);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_ISSUED)->completed, 3);
	assert_int_equal(echo_entry(st, n, TERN_METRICS_SERVED)->completed, 2);
	stop(f);
}

/* A fixture whose contexts were made with TERN_METRICS=@v, one echo done. */
static struct fx *start_with_env(const char *v)
{
	struct fx *f;

	setenv("TERN_METRICS", v, 1);
	f = start();
	unsetenv("TERN_METRICS");
	ndone = 0;
	echo_once(f);
	return f;
}

/* TERN_METRICS=0 or off: a context starts without metrics, until enabled. */
static void test_TERN_METRICS_off_turns_the_default_off(void **state)
{
	static const char *const offs[] = {"0", "off"};
	static const char *const ons[] = {"1", "on", ""};
	struct tern_method_stats st[8];
	int n;

	(void)state;
	for (size_t i = 0; i < sizeof(offs) / sizeof(offs[0]); i++) {
		struct fx *f = start_with_env(offs[i]);

		assert_int_equal(tern_ctx_method_stats(f->ctx, NULL, 0), 0);
		assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
		echo_once(f);
		n = tern_ctx_method_stats(f->ctx, st, 8);
		assert_int_equal(n, 2);
		assert_int_equal(echo_entry(st, n, TERN_METRICS_ISSUED)->completed, 1);
		assert_int_equal(echo_entry(st, n, TERN_METRICS_SERVED)->completed, 1);
		stop(f);
	}
	/* anything else leaves them on */
	for (size_t i = 0; i < sizeof(ons) / sizeof(ons[0]); i++) {
		struct fx *f = start_with_env(ons[i]);

		assert_int_equal(tern_ctx_method_stats(f->ctx, NULL, 0), 2);
		stop(f);
	}
}

/* A peer calling thousands of methods the server lacks adds one entry. */
static void test_unknown_methods_share_one_entry_and_the_store_is_bounded(void **state)
{
	struct fx *f = start();
	struct tern_method_stats *st;
	int n, nissued = 0, nserved = 0;
	const int calls = TERN_METRICS_MAX_METHODS + 200;

	(void)state;
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	for (int i = 0; i < calls; i++) {
		assert_int_equal(
			tern_call(f->cli, 0x10000 + (uint32_t)i, NULL, 0, count_cb, NULL, NULL), 0);
		assert_int_equal(fx_run_until_count(f, &ndone, i + 1, RUN_MS), 0);
	}
	n = tern_ctx_method_stats(f->ctx, NULL, 0);
	st = calloc((size_t)n, sizeof(*st));
	assert_int_equal(tern_ctx_method_stats(f->ctx, st, (size_t)n), n);
	for (int i = 0; i < n; i++) {
		if (st[i].side == TERN_METRICS_SERVED) {
			nserved++;
			assert_int_equal(st[i].method, TERN_METRICS_OTHER);
			assert_int_equal(st[i].completed, calls);
			assert_int_equal(code_count(&st[i], TERN_ENOMETHOD), calls);
		} else {
			nissued++;
		}
	}
	assert_int_equal(nserved, 1);
	/* the caller's own methods: the first MAX_METHODS, then the shared one */
	assert_int_equal(nissued, TERN_METRICS_MAX_METHODS + 1);
	assert_int_equal(find(st, n, TERN_METRICS_ISSUED, TERN_METRICS_OTHER)->completed, 200);
	free(st);
	stop(f);
}

static void test_latency_buckets_are_log_linear_with_inclusive_bounds(void **state)
{
	(void)state;
	assert_int_equal(tern__metrics_bucket(0), 0);
	assert_int_equal(tern__metrics_bucket(1024), 0);
	assert_int_equal(tern__metrics_bucket(1025), 1);
	assert_int_equal(tern_metrics_bucket_le_ns(1), 1536);
	assert_int_equal(tern_metrics_bucket_le_ns(2), 2048);
	for (unsigned i = 0; i + 1 < TERN_METRICS_BUCKETS; i++) {
		uint64_t le = tern_metrics_bucket_le_ns(i);

		assert_true(le < tern_metrics_bucket_le_ns(i + 1));
		assert_int_equal(tern__metrics_bucket(le), i);
		assert_int_equal(tern__metrics_bucket(le + 1), i + 1);
	}
	assert_int_equal(tern_metrics_bucket_le_ns(TERN_METRICS_BUCKETS - 2), 1ull << 36);
	assert_int_equal(tern__metrics_bucket(UINT64_MAX), TERN_METRICS_BUCKETS - 1);
	assert_int_equal(tern_metrics_bucket_le_ns(TERN_METRICS_BUCKETS - 1), UINT64_MAX);
}

/* ---- a strict reader of the Prometheus text format (0.0.4) ------------------------ */

#define MAX_SERIES 4096

struct series {
	char name[80];
	char labels[512]; /* as written, for duplicate checks and look-ups */
	double value;
};

struct prom {
	struct series *s;
	int n;
	char families[64][80];
	char types[64][16];
	int nfam;
};

static bool name_ok(const char *p, size_t n)
{
	if (!n || !(isalpha((unsigned char)p[0]) || p[0] == '_' || p[0] == ':'))
		return false;
	for (size_t i = 1; i < n; i++)
		if (!(isalnum((unsigned char)p[i]) || p[i] == '_' || p[i] == ':'))
			return false;
	return true;
}

/* The family a sample belongs to: histograms own _bucket, _sum, _count. */
static int family_of(const struct prom *p, const char *name)
{
	for (int i = 0; i < p->nfam; i++) {
		size_t fl = strlen(p->families[i]);

		if (!strcmp(p->families[i], name))
			return i;
		if (!strcmp(p->types[i], "histogram") && !strncmp(name, p->families[i], fl) &&
		    (!strcmp(name + fl, "_bucket") || !strcmp(name + fl, "_sum") ||
		     !strcmp(name + fl, "_count")))
			return i;
	}
	return -1;
}

/* Parse @text, failing the test on anything the format does not allow. */
static void prom_parse(struct prom *p, const char *text)
{
	const char *line = text;
	int cur = -1; /* the family whose samples are being read */

	memset(p, 0, sizeof(*p));
	p->s = calloc(MAX_SERIES, sizeof(*p->s));
	assert_non_null(p->s);
	assert_true(*text);
	assert_int_equal(text[strlen(text) - 1], '\n');
	while (*line) {
		const char *end = strchr(line, '\n');
		size_t len = (size_t)(end - line);

		assert_non_null(end);
		assert_true(len > 0);
		if (!strncmp(line, "# HELP ", 7)) {
			const char *nm = line + 7, *sp = memchr(nm, ' ', (size_t)(end - nm));

			assert_non_null(sp);
			assert_true(name_ok(nm, (size_t)(sp - nm)));
			/* HELP comes right before its TYPE here */
			assert_true(!strncmp(end + 1, "# TYPE ", 7));
			assert_true(!strncmp(end + 8, nm, (size_t)(sp - nm)));
		} else if (!strncmp(line, "# TYPE ", 7)) {
			char nm[80], type[16];

			assert_int_equal(sscanf(line + 7, "%79s %15s", nm, type), 2);
			assert_true(name_ok(nm, strlen(nm)));
			assert_true(!strcmp(type, "counter") || !strcmp(type, "gauge") ||
				    !strcmp(type, "histogram"));
			assert_int_equal(family_of(p, nm), -1); /* one TYPE per family */
			assert_true(p->nfam < 64);
			strcpy(p->families[p->nfam], nm);
			strcpy(p->types[p->nfam], type);
			cur = p->nfam++;
		} else {
			struct series *s = &p->s[p->n];
			const char *q = line, *brace;
			char *vend;
			int fam;

			assert_true(line[0] != '#');
			assert_true(p->n < MAX_SERIES);
			brace = memchr(line, '{', len);
			assert_non_null(brace); /* every sample here has labels */
			assert_true(name_ok(line, (size_t)(brace - line)));
			memcpy(s->name, line, (size_t)(brace - line));
			fam = family_of(p, s->name);
			assert_int_equal(fam, cur); /* a family's samples stay together */
			if (!strcmp(p->types[fam], "counter"))
				assert_true(strlen(s->name) > 6 &&
					    !strcmp(s->name + strlen(s->name) - 6, "_total"));
			q = brace + 1;
			for (;;) { /* name="value" pairs, comma-separated */
				const char *eq = strchr(q, '=');

				assert_non_null(eq);
				assert_true(eq < end);
				assert_true(name_ok(q, (size_t)(eq - q)));
				assert_int_equal(eq[1], '"');
				for (q = eq + 2; *q != '"'; q++) {
					assert_true(q < end);
					if (*q == '\\') {
						q++;
						assert_true(*q == '\\' || *q == '"' || *q == 'n');
					}
				}
				q++;
				if (*q == ',') {
					q++;
					continue;
				}
				assert_int_equal(*q, '}');
				break;
			}
			assert_true((size_t)(q - brace) < sizeof(s->labels));
			memcpy(s->labels, brace, (size_t)(q - brace + 1));
			assert_int_equal(q[1], ' ');
			s->value = strtod(q + 2, &vend);
			assert_ptr_equal(vend, end); /* the value is the rest of the line */
			assert_false(isspace((unsigned char)q[2]));
			assert_true(s->value >= 0 && !isnan(s->value));
			for (int i = 0; i < p->n; i++) /* no series twice */
				assert_false(!strcmp(p->s[i].name, s->name) &&
					     !strcmp(p->s[i].labels, s->labels));
			p->n++;
		}
		line = end + 1;
	}
}

static double prom_get(const struct prom *p, const char *name, const char *labels)
{
	for (int i = 0; i < p->n; i++)
		if (!strcmp(p->s[i].name, name) && !strcmp(p->s[i].labels, labels))
			return p->s[i].value;
	fail_msg("no series %s%s", name, labels);
	return -1;
}

/* Histogram series: cumulative, ending in +Inf equal to _count. */
static void prom_check_histogram(const struct prom *p, const char *name, const char *labels)
{
	char bucket[96], want[600], inf[600];
	double last = 0, prev_le = -1;
	int nb = 0;
	size_t ll = strlen(labels);

	snprintf(bucket, sizeof(bucket), "%s_bucket", name);
	for (int i = 0; i < p->n; i++) {
		const char *le;

		if (strcmp(p->s[i].name, bucket) || strncmp(p->s[i].labels, labels, ll - 1) ||
		    strncmp(p->s[i].labels + ll - 1, ",le=\"", 5))
			continue;
		le = p->s[i].labels + ll + 4;
		if (strncmp(le, "+Inf", 4)) {
			double v = strtod(le, NULL);

			assert_true(v > prev_le);
			prev_le = v;
		}
		assert_true(p->s[i].value >= last);
		last = p->s[i].value;
		nb++;
	}
	assert_int_equal(nb, TERN_METRICS_BUCKETS);
	snprintf(want, sizeof(want), "%s_count", name);
	snprintf(inf, sizeof(inf), "%.*s,le=\"+Inf\"}", (int)(ll - 1), labels);
	assert_true(prom_get(p, bucket, inf) == prom_get(p, want, labels));
}

static void test_prometheus_text_parses_strictly_and_matches_the_stats(void **state)
{
	struct fx *f = start();
	struct tern_method_stats st[8];
	struct prom p;
	char small[16], *text;
	ssize_t need, got;
	int n;

	(void)state;
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	for (int i = 0; i < 20; i++) {
		uint8_t b = (uint8_t)i;

		assert_int_equal(
			tern_call(f->cli, i % 3 ? M_ECHO : M_FAIL, &b, 1, count_cb, NULL, NULL), 0);
		assert_int_equal(fx_run_until_count(f, &ndone, i + 1, RUN_MS), 0);
	}
	assert_int_equal(tern_call(f->cli, M_NONE, NULL, 0, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 21, RUN_MS), 0);

	need = tern_ctx_metrics_write(f->ctx, small, sizeof(small));
	assert_true(need > (ssize_t)sizeof(small));
	assert_int_equal(strlen(small), sizeof(small) - 1); /* cut, still a string */
	text = malloc((size_t)need + 1);
	got = tern_ctx_metrics_write(f->ctx, text, (size_t)need + 1);
	assert_int_equal(got, need);
	assert_int_equal(strlen(text), (size_t)need);
	prom_parse(&p, text);

	n = tern_ctx_method_stats(f->ctx, st, 8);
	for (int i = 0; i < n; i++) {
		char labels[128], code[160];

		if (st[i].method == TERN_METRICS_OTHER)
			snprintf(labels, sizeof(labels), "{side=\"%s\",method=\"other\"}",
				 st[i].side ? "issued" : "served");
		else
			snprintf(labels, sizeof(labels), "{side=\"%s\",method=\"0x%08x\"}",
				 st[i].side ? "issued" : "served", st[i].method);
		assert_true(prom_get(&p, "tern_rpc_calls_total", labels) ==
			    (double)st[i].completed);
		assert_true(prom_get(&p, "tern_rpc_started_total", labels) ==
			    (double)st[i].started);
		assert_true(prom_get(&p, "tern_rpc_in_flight", labels) == 0);
		assert_true(prom_get(&p, "tern_rpc_request_bytes_total", labels) ==
			    (double)st[i].request_bytes);
		assert_true(prom_get(&p, "tern_rpc_latency_seconds_count", labels) ==
			    (double)st[i].completed);
		assert_true(fabs(prom_get(&p, "tern_rpc_latency_seconds_sum", labels) -
				 (double)st[i].latency_sum_ns / 1e9) < 1e-6);
		prom_check_histogram(&p, "tern_rpc_latency_seconds", labels);
		for (int c = 0; c < TERN_METRICS_CODES && st[i].codes[c].count; c++) {
			snprintf(code, sizeof(code), "%.*s,code=\"%s\"}", (int)strlen(labels) - 1,
				 labels, tern_err_name(st[i].codes[c].code));
			assert_true(prom_get(&p, "tern_rpc_errors_total", code) ==
				    (double)st[i].codes[c].count);
		}
	}
	/* M_FAIL: i % 3 == 0 for i < 20 is 7 calls, each with the code b % NCODES */
	assert_true(prom_get(&p, "tern_rpc_calls_total",
			     "{side=\"issued\",method=\"0x00000701\"}") == 7);
	assert_true(prom_get(&p, "tern_rpc_errors_total",
			     "{side=\"served\",method=\"other\",code=\"TERN_ENOMETHOD\"}") == 1);
	/* the two sessions' counters, one series each */
	for (int i = 0; i < p.n; i++) {
		if (!strcmp(p.s[i].name, "tern_session_calls_served_total") &&
		    strstr(p.s[i].labels, "role=\"server\""))
			assert_true(p.s[i].value == 20); /* M_NONE had no handler */
	}
	free(p.s);
	free(text);
	stop(f);
}

/* ---- latency, to a turn of the loop ---------------------------------------------- */

#define M_HOLD 0x703 /* deferred: the test answers it */
#define M_SPIN 0x704 /* raw: spins 20 ms before it answers */

static uint64_t mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* Sleep @ms without turning the loop (usleep() may wake early: the clock decides). */
static void wait_ms(uint64_t ms)
{
	uint64_t t0 = mono_ns();

	while (mono_ns() - t0 < ms * 1000000)
		usleep(1000);
}

static int on_spin(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	uint64_t t0 = mono_ns();

	(void)r, (void)u;
	while (mono_ns() - t0 < 20000000)
		;
	out->base = in;
	out->len = n;
	return 0;
}

static const struct tern_method_stats *stats_of(tern_ctx *ctx, int side, uint32_t method)
{
	static struct tern_method_stats st[16];
	int n = tern_ctx_method_stats(ctx, st, 16);

	assert_true(n > 0 && n <= 16);
	return find(st, n, side, method);
}

/* The entry of a method that finished one call on @side. */
static const struct tern_method_stats *one_call(tern_ctx *ctx, int side, uint32_t method)
{
	const struct tern_method_stats *st = stats_of(ctx, side, method);

	assert_non_null(st);
	assert_int_equal(st->completed, 1);
	return st;
}

/* A context with metrics on and M_HOLD held in @held; no call yet. */
static struct fx *start_holding(struct fx_held *held)
{
	struct fx *f = start();

	held->n = 0;
	assert_int_equal(tern_register_deferred(f->ctx, M_HOLD, fx_hold, held), 0);
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	return f;
}

/*
 * A request held by a deferred handler and answered 50 ms later from the
 * test's own code (between turns): both sides time the whole wait, from
 * the turns the request and the reply came in.
 */
static void test_latency_covers_a_deferred_reply(void **state)
{
	static struct fx_held held;
	struct fx *f = start_holding(&held);
	const struct tern_method_stats *st;

	(void)state;
	assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &held.n, 1, RUN_MS), 0);
	for (int i = 0; i < 10; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT); /* turns end: the stamps are taken */
	wait_ms(50);
	assert_int_equal(tern_reply_error(held.req[0], -EIO, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 1, RUN_MS), 0);
	st = one_call(f->ctx, TERN_METRICS_SERVED, M_HOLD);
	assert_true(st->latency_sum_ns >= 50000000);
	assert_int_equal(st->buckets[tern__metrics_bucket(st->latency_sum_ns)], 1);
	st = one_call(f->ctx, TERN_METRICS_ISSUED, M_HOLD);
	assert_true(st->latency_sum_ns >= 50000000);
	stop(f);
}

/*
 * The resolution is a turn (docs/metrics.md): a handler that answers in
 * the turn its request came in records 0 however long it runs, because
 * both ends share that turn's reading.  A deferred reply is timed (above).
 */
static void test_an_inline_handler_records_its_turn_not_its_own_time(void **state)
{
	struct fx *f = start();
	const struct tern_method_stats *st;

	(void)state;
	assert_int_equal(tern_register_raw(f->ctx, M_SPIN, on_spin, NULL), 0);
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	assert_int_equal(tern_call(f->cli, M_SPIN, "ab", 2, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 1, RUN_MS), 0);
	st = one_call(f->ctx, TERN_METRICS_SERVED, M_SPIN);
	assert_int_equal(st->latency_sum_ns, 0);
	assert_int_equal(st->buckets[0], 1);
	stop(f);
}

/*
 * In event progress no poll may come between a call and its reply's
 * event, so a call from the user's code is stamped when it is made: the
 * 50 ms before the loop runs are in its latency.
 */
static void test_event_progress_stamps_a_call_when_it_is_made(void **state)
{
	struct fx *f = start_in(TERN_PROGRESS_EVENT);
	const struct tern_method_stats *st;

	(void)state;
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	ndone = 0;
	assert_int_equal(tern_call(f->cli, M_ECHO, "abcd", 4, count_cb, NULL, NULL), 0);
	wait_ms(50);
	assert_int_equal(fx_run_until_count(f, &ndone, 1, RUN_MS), 0);
	st = one_call(f->ctx, TERN_METRICS_ISSUED, M_ECHO);
	assert_true(st->latency_sum_ns >= 50000000);
	stop(f);
}

/*
 * Calls made back to back from the user's code owe their stamps to the
 * next turn; answered in any order, each leaves the owed list whole (ASan
 * and the counts), and the context goes with requests still held.
 */
static void test_owed_stamps_survive_any_order_and_teardown(void **state)
{
	static struct fx_held held;
	struct fx *f = start_holding(&held);
	const struct tern_method_stats *st;

	(void)state;
	for (int i = 0; i < 4; i++)
		assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &held.n, 4, RUN_MS), 0);
	/* the oldest first, then the newest: the owed list is walked, not popped */
	assert_int_equal(tern_reply_error(held.req[0], -EIO, NULL), 0);
	assert_int_equal(tern_reply_error(held.req[3], -EIO, NULL), 0);
	assert_int_equal(tern_reply_error(held.req[1], -EIO, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 3, RUN_MS), 0);
	st = stats_of(f->ctx, TERN_METRICS_ISSUED, M_HOLD);
	assert_int_equal(st->started, 4);
	assert_int_equal(st->completed, 3);
	/* one more held, and the session and context go with both */
	assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &held.n, 5, RUN_MS), 0);
	stop(f);
}

/* ---- the /metrics endpoint ------------------------------------------------------- */

static void turn_ctx(void *arg)
{
	tern_ctx_run(((struct fx *)arg)->ctx, TERN_RUN_NOWAIT);
}

/* The whole @req to the endpoint, then our FIN; the answer in @out. */
static size_t http_exchange_ctx(struct fx *f, int port, const void *req, size_t len, char *out,
				size_t cap)
{
	struct http_peer p = {.turn = turn_ctx, .arg = f};

	return http_exchange(&p, port, req, len, out, cap);
}

static struct fx *start_http(int *port)
{
	struct fx *f = start();

	assert_int_equal(tern_ctx_metrics_port(f->ctx), -ENOTCONN);
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "127.0.0.1:0"), 0);
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "127.0.0.1:0"), -EALREADY);
	*port = tern_ctx_metrics_port(f->ctx);
	assert_true(*port > 0);
	assert_int_equal(tern_ctx_metrics_enable(f->ctx, 1), 0);
	return f;
}

static const char get_metrics[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";

static void test_the_endpoint_serves_the_text_over_loopback(void **state)
{
	static char resp[1 << 20];
	int port;
	struct fx *f = start_http(&port);
	const char *body;
	struct prom p;

	(void)state;
	ndone = 0;
	assert_int_equal(tern_call(f->cli, M_FAIL, "\1", 1, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 1, RUN_MS), 0);

	http_exchange_ctx(f, port, get_metrics, strlen(get_metrics), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_non_null(strstr(resp, "\r\nContent-Type: text/plain; version=0.0.4"));
	assert_non_null(strstr(resp, "\r\nContent-Length: "));
	body = http_body(resp);
	prom_parse(&p, body);
	assert_true(prom_get(&p, "tern_rpc_errors_total",
			     "{side=\"served\",method=\"0x00000701\",code=\"ENOENT\"}") == 1);
	free(p.s);

	http_exchange_ctx(f, port, "HEAD /metrics HTTP/1.0\r\n\r\n", 26, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	assert_string_equal(strstr(resp, "\r\n\r\n"), "\r\n\r\n"); /* no body */
	http_exchange_ctx(f, port, "GET /x HTTP/1.1\r\n\r\n", 19, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 404);
	http_exchange_ctx(f, port, "POST /metrics HTTP/1.1\r\n\r\n", 26, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 405);
	http_exchange_ctx(f, port, "GET /metrics\r\n\r\n", 16, resp, sizeof(resp));
	assert_int_equal(http_status(resp), 400);
	stop(f);
}

static void test_the_endpoint_refuses_bad_addresses(void **state)
{
	struct fx *f = start();

	(void)state;
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "127.0.0.1"), -EINVAL);
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "127.0.0.1:70000"), -EINVAL);
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "nohost:80"), -EINVAL);
	assert_int_equal(tern_ctx_metrics_listen(f->ctx, "[::1:80"), -EINVAL);
	assert_int_equal(tern_ctx_metrics_listen(NULL, "127.0.0.1:0"), -EINVAL);
	assert_int_equal(tern_ctx_metrics_port(f->ctx), -ENOTCONN);
	stop(f);
}

/*
 * The responder's limits on the context's loop (tests/unit/test_http.c
 * covers the responder itself): an oversized request gets 431, a full
 * client table shuts the next client, and meanwhile the context's calls
 * and a later scrape still work.
 */
static void test_the_endpoint_limits_do_not_disturb_calls(void **state)
{
	static char resp[1 << 20], req[20000];
	int port;
	struct fx *f = start_http(&port);
	int idle[16];

	(void)state;
	memcpy(req, "GET /metrics HTTP/1.1\r\nX: ", 26);
	memset(req + 26, 'a', sizeof(req) - 26);
	http_exchange_ctx(f, port, req, sizeof(req), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 431);
	/* 16 clients that send nothing hold every place: the next is shut */
	for (int i = 0; i < 16; i++)
		idle[i] = http_connect_local(port);
	for (int i = 0; i < 50; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	http_exchange_ctx(f, port, get_metrics, strlen(get_metrics), resp, sizeof(resp));
	assert_string_equal(resp, "");
	ndone = 0;
	assert_int_equal(tern_call(f->cli, M_ECHO, "ab", 2, count_cb, NULL, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &ndone, 1, RUN_MS), 0);
	for (int i = 0; i < 16; i++)
		close(idle[i]);
	for (int i = 0; i < 50; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	http_exchange_ctx(f, port, get_metrics, strlen(get_metrics), resp, sizeof(resp));
	assert_int_equal(http_status(resp), 200);
	/* a client in the middle of its request when the context goes */
	idle[0] = http_connect_local(port);
	for (int i = 0; i < 20; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	assert_int_equal(send(idle[0], "GET /me", 7, MSG_NOSIGNAL), 7);
	for (int i = 0; i < 20; i++)
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	stop(f); /* closes the endpoint and that client (ASan: nothing leaks) */
	close(idle[0]);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_latency_buckets_are_log_linear_with_inclusive_bounds),
		cmocka_unit_test(test_random_mixes_count_every_call_by_method_and_code),
		cmocka_unit_test(test_calls_in_flight_are_begun_and_not_finished),
		cmocka_unit_test(test_metrics_are_on_by_default_and_stop_when_disabled),
		cmocka_unit_test(test_TERN_METRICS_off_turns_the_default_off),
		cmocka_unit_test(test_unknown_methods_share_one_entry_and_the_store_is_bounded),
		cmocka_unit_test(test_prometheus_text_parses_strictly_and_matches_the_stats),
		cmocka_unit_test(test_latency_covers_a_deferred_reply),
		cmocka_unit_test(test_an_inline_handler_records_its_turn_not_its_own_time),
		cmocka_unit_test(test_event_progress_stamps_a_call_when_it_is_made),
		cmocka_unit_test(test_owed_stamps_survive_any_order_and_teardown),
		cmocka_unit_test(test_the_endpoint_serves_the_text_over_loopback),
		cmocka_unit_test(test_the_endpoint_refuses_bad_addresses),
		cmocka_unit_test(test_the_endpoint_limits_do_not_disturb_calls),
	};

	if (!fx_listen_uri()) {
		printf("SKIP: %s\n",
		       fx_is("rdma") ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
		return 77;
	}
	return _cmocka_run_group_tests(fx_transport(), tests, sizeof(tests) / sizeof(tests[0]),
				       NULL, NULL);
}
