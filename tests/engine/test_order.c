// SPDX-License-Identifier: MIT
/*
 * The order promise of docs/guide.md ("Order on one session"), checked on
 * seeded random interleavings of everything a client can post on one
 * session: one-way messages and calls, copied or built in the send slot
 * (acquired, then committed later, around other sends), queued for want
 * of credits, with a reply buffer, larger than a slot, and to batched
 * methods; while the server holds one-way messages (tern_req_hold) and
 * answers deferred calls late, at random moments.
 *
 * The promise, as checked on the server side:
 *  - "in place" messages (one-way messages to tern_register_oneway()
 *    handlers, calls to raw, inplace and deferred methods whose request
 *    fits a slot) have their handlers run in exactly the order they were
 *    posted;
 *  - a "late" message (a request larger than a slot, an item of a batched
 *    method) has its handler run after those of every in-place message
 *    posted before it.
 * Posted: tern_send()/tern_call() that sent at once, a queued message when
 * it leaves the queue (the test follows the session's queue), a commit.
 *
 * TERN_TEST_SEED=<n> runs that one seed (a failure prints its seed).
 */
#include <errno.h>
#include <inttypes.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "fixture.h"
#include "internal.h"
#include "rpc.h"

#define M_OW	  0x600 /* one-way */
#define M_RAW	  0x601
#define M_INPLACE 0x602
#define M_DEFER	  0x603
#define M_BATCH	  0x604 /* a batched raw method */
#define M_OWBATCH 0x605 /* a batched one-way method */

#define SLOT_SIZE 512
#define SLOTS	  8
#define MAX_MSGS  8192
#define MAX_OPEN  3 /* acquired slots not yet committed */
#define MAX_HELD  3 /* fewer than SLOTS: held messages keep their credits */
#define RUN_MS	  60000
#define REPLY_BUF 4096 /* a reply buffer larger than a slot */
#define LARGE_MSG (3 * SLOT_SIZE)

enum klass {
	IN_PLACE, /* handled at arrival: strictly in posted order */
	LATE,	  /* pulled first, or gathered into a batch */
};

static struct order {
	struct fx f;
	uint64_t rng;
	uint32_t next_id;

	/* the client: what it posted, in order, and what waits in its queue */
	uint32_t posted[MAX_MSGS];
	uint32_t nposted;
	uint32_t queued[MAX_MSGS];
	uint32_t qhead, qlen;
	enum klass klass[MAX_MSGS];
	bool is_call[MAX_MSGS];
	uint32_t calls_posted, calls_done, call_errors;
	uint32_t direct, commits, commits_ahead; /* how they went out */
	struct {
		tern_callslot *slot;
		uint32_t id, method;
		bool oneway;
	} open[MAX_OPEN];
	int nopen;

	/* the server: handlers in the order they ran, held one-ways, deferred calls */
	uint32_t handled[MAX_MSGS];
	uint32_t nhandled;
	uint32_t times_handled[MAX_MSGS];
	tern_req *held[MAX_HELD];
	int nheld;
	struct {
		tern_req *req;
		uint32_t id;
	} deferred[MAX_HELD];
	int ndeferred;
	bool holding; /* the server may hold and defer (off while draining) */
	int bad;      /* malformed messages and replies */
} * o;

static uint32_t rnd(uint32_t n)
{
	/* xorshift64*: the interleaving is a function of the seed alone */
	o->rng ^= o->rng >> 12;
	o->rng ^= o->rng << 25;
	o->rng ^= o->rng >> 27;
	return (uint32_t)((o->rng * 0x2545f4914f6cdd1dull) >> 32) % n;
}

/* ---- the server ------------------------------------------------------------- */

static uint32_t take_id(const void *in, size_t n)
{
	uint32_t id;

	if (n < 4) {
		o->bad++;
		return 0;
	}
	memcpy(&id, in, 4);
	if (id >= o->next_id) {
		o->bad++;
		return 0;
	}
	o->handled[o->nhandled++] = id;
	o->times_handled[id]++;
	return id;
}

static void on_ow(tern_req *r, const void *in, size_t n, void *u)
{
	(void)u;
	take_id(in, n);
	if (o->holding && o->nheld < MAX_HELD && rnd(4) == 0)
		o->held[o->nheld++] = tern_req_hold(r);
}

static int on_raw(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	take_id(in, n);
	out->base = (void *)in;
	out->len = 4;
	return 0;
}

static ssize_t on_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	take_id(in, n);
	memcpy(out, in, 4);
	return cap >= 4 ? 4 : -EMSGSIZE;
}

static void reply_deferred(tern_req *r, uint32_t id)
{
	void *out;
	size_t cap;

	assert_int_equal(tern_reply_acquire(r, &out, &cap), 0);
	memcpy(out, &id, 4);
	assert_int_equal(tern_reply_commit(r, 4), 0);
}

static int on_defer(tern_req *r, const void *in, size_t n, void *u)
{
	uint32_t id = take_id(in, n);

	(void)u;
	if (o->holding && o->ndeferred < MAX_HELD && rnd(2) == 0) {
		o->deferred[o->ndeferred].req = r;
		o->deferred[o->ndeferred].id = id;
		o->ndeferred++;
	} else {
		reply_deferred(r, id);
	}
	return 0;
}

static void on_batch(struct tern_batch_item *it, size_t n, void *u)
{
	(void)u;
	for (size_t i = 0; i < n; i++) {
		take_id(it[i].in, it[i].in_len);
		if (it[i].out) {
			memcpy(it[i].out, it[i].in, 4);
			it[i].status = 4;
		}
	}
}

/* Let go of one held one-way message, or answer one deferred call. */
static void release_one(bool deferred)
{
	int i;

	if (deferred && o->ndeferred) {
		i = (int)rnd((uint32_t)o->ndeferred);
		reply_deferred(o->deferred[i].req, o->deferred[i].id);
		o->deferred[i] = o->deferred[--o->ndeferred];
	} else if (!deferred && o->nheld) {
		i = (int)rnd((uint32_t)o->nheld);
		assert_int_equal(tern_req_release(o->held[i]), 0);
		o->held[i] = o->held[--o->nheld];
	}
}

/* ---- the client -------------------------------------------------------------- */

/* What a call or a queued send keeps until its callback. */
struct pending {
	uint32_t id;
	void *req, *reply_buf;
};

static void call_done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct pending *p = user;
	uint32_t id = UINT32_MAX;

	(void)s;
	o->calls_done++;
	if (status == 0 && len == 4)
		memcpy(&id, reply, 4);
	if (status || id != p->id) {
		o->call_errors++;
		fprintf(stderr, "call %u: status %d (%s), reply of %zu bytes\n", p->id, status,
			tern_strerror(status), len);
	}
	free(p->req);
	free(p->reply_buf);
	free(p);
}

static void send_done(tern_session *s, int status, void *user)
{
	struct pending *p = user;

	(void)s;
	if (status)
		o->call_errors++;
	free(p->req);
	free(p);
}

/* How many messages wait in the client's queue (rpc/client.c). */
static uint32_t q_len(void)
{
	return tern__rpc(o->f.cli)->q_len;
}

static void post(uint32_t id)
{
	o->posted[o->nposted++] = id;
}

static void post_commit(uint32_t id)
{
	o->commits++;
	if (o->qlen)
		o->commits_ahead++; /* overtakes what waits in the queue */
	post(id);
}

/* Whatever left the session's queue since we looked went out, in order. */
static void sync_queue(void)
{
	assert_true(q_len() <= o->qlen);
	while (o->qlen > q_len()) {
		post(o->queued[o->qhead]);
		o->qhead = (o->qhead + 1) % MAX_MSGS;
		o->qlen--;
	}
}

/*
 * After tern_send()/tern_call() accepted @id: sent now, or queued?  The
 * session decides when its queue is empty (a credit or none); behind
 * anything queued, the message must queue too.
 */
static void accepted(uint32_t id, uint32_t q_before)
{
	if (q_before)
		assert_int_equal(q_len(), q_before + 1);
	if (q_len() == q_before + 1) {
		o->queued[(o->qhead + o->qlen) % MAX_MSGS] = id;
		o->qlen++;
	} else {
		assert_int_equal(q_len(), q_before);
		o->direct++;
		post(id);
	}
}

static uint32_t new_id(enum klass k, bool call)
{
	uint32_t id = o->next_id++;

	o->klass[id] = k;
	o->is_call[id] = call;
	return id;
}

static struct pending *payload(uint32_t id, size_t len)
{
	struct pending *p = calloc(1, sizeof(*p));

	assert_non_null(p);
	p->id = id;
	p->req = malloc(len);
	assert_non_null(p->req);
	for (size_t i = 0; i < len; i++)
		((uint8_t *)p->req)[i] = (uint8_t)(id + i);
	memcpy(p->req, &id, 4);
	return p;
}

static void op_send(uint32_t method, enum klass k)
{
	tern_session *s = o->f.cli;
	uint32_t q = q_len(), id = o->next_id;
	size_t len = 4 + rnd(60);
	struct pending *p = payload(id, len);
	int rc = tern_send(s, method, p->req, len, send_done, p);

	if (rc == 0 || rc == TERN_QUEUED) {
		new_id(k, false);
		accepted(id, q);
		if (rc == 0) {
			/* copied into the slot: the callback is for queued sends only */
			free(p->req);
			free(p);
		}
		return;
	}
	assert_true(rc == -ENOBUFS || rc == -EAGAIN);
	free(p->req);
	free(p);
}

static void op_call(uint32_t method, enum klass k, size_t len, bool reply_buf)
{
	tern_session *s = o->f.cli;
	uint32_t q = q_len(), id = o->next_id;
	struct pending *p = payload(id, len);
	struct tern_call_opts co = {.size = sizeof(co)};
	int rc;

	if (reply_buf) {
		p->reply_buf = malloc(REPLY_BUF);
		assert_non_null(p->reply_buf);
		co.reply_buf = p->reply_buf;
		co.reply_cap = REPLY_BUF;
	}
	rc = tern_call(s, method, p->req, len, call_done, p, &co);
	if (rc == 0) {
		new_id(k, true);
		o->calls_posted++;
		accepted(id, q);
		return;
	}
	assert_int_equal(rc, -ENOBUFS);
	free(p->req);
	free(p->reply_buf);
	free(p);
}

static void op_acquire(bool oneway)
{
	static const uint32_t methods[] = {M_RAW, M_INPLACE, M_DEFER};
	tern_session *s = o->f.cli;
	tern_callslot *slot;
	void *buf;
	size_t cap;
	uint32_t id;
	int rc;

	if (o->nopen == MAX_OPEN)
		return;
	rc = oneway ? tern_send_acquire(s, &buf, &cap, &slot)
		    : tern_call_acquire(s, &buf, &cap, &slot);
	if (rc) {
		assert_int_equal(rc, -EAGAIN);
		return;
	}
	id = new_id(IN_PLACE, !oneway);
	memcpy(buf, &id, 4);
	o->open[o->nopen].slot = slot;
	o->open[o->nopen].id = id;
	o->open[o->nopen].method = oneway ? M_OW : methods[rnd(3)];
	o->open[o->nopen].oneway = oneway;
	o->nopen++;
}

/* Commit (or now and then abort) an acquired slot: it goes out now,
 * ahead of anything still queued. */
static void op_commit(int i, bool may_abort)
{
	struct pending *p;

	if (o->nopen == 0)
		return;
	if (may_abort && rnd(8) == 0) {
		tern_call_abort(o->open[i].slot);
		o->klass[o->open[i].id] = LATE;
		o->is_call[o->open[i].id] = false;
		o->times_handled[o->open[i].id] = UINT32_MAX; /* never sent */
	} else if (o->open[i].oneway) {
		assert_int_equal(tern_send_commit(o->open[i].slot, M_OW, 4), 0);
		post_commit(o->open[i].id);
	} else {
		p = calloc(1, sizeof(*p));
		assert_non_null(p);
		p->id = o->open[i].id;
		assert_int_equal(
			tern_call_commit(o->open[i].slot, o->open[i].method, 4, call_done, p, NULL),
			0);
		o->calls_posted++;
		post_commit(o->open[i].id);
	}
	o->open[i] = o->open[--o->nopen];
}

static void run_turns(int n)
{
	for (int i = 0; i < n; i++)
		tern_ctx_run(o->f.ctx, TERN_RUN_NOWAIT);
}

static void step(void)
{
	static const uint32_t methods[] = {M_RAW, M_INPLACE, M_DEFER};
	uint32_t r = rnd(100);

	if (r < 14)
		op_send(M_OW, IN_PLACE);
	else if (r < 19)
		op_acquire(true);
	else if (r < 31)
		op_call(methods[rnd(3)], IN_PLACE, 4 + rnd(60), false);
	else if (r < 35)
		op_acquire(false);
	else if (r < 43)
		op_commit(o->nopen ? (int)rnd((uint32_t)o->nopen) : 0, true);
	else if (r < 45)
		op_call(M_RAW, LATE, LARGE_MSG + rnd(LARGE_MSG), false);
	else if (r < 48)
		op_call(M_BATCH, LATE, 4 + rnd(60), false);
	else if (r < 51)
		op_send(M_OWBATCH, LATE);
	else if (r < 54)
		op_call(methods[rnd(3)], IN_PLACE, 4 + rnd(60), true);
	else if (r < 84)
		run_turns(1 + (int)rnd(4));
	else if (r < 92)
		release_one(false);
	else
		release_one(true);
	sync_queue();
}

static bool all_in(void)
{
	return o->nopen == 0 && o->qlen == 0 && o->calls_done == o->calls_posted &&
	       o->nhandled == o->nposted;
}

/* Commit what is open, stop holding, give everything back, run until all is in. */
static void drain(void)
{
	uint64_t end = tern__now_ns() + (uint64_t)RUN_MS * 1000000;

	while (o->nopen)
		op_commit(0, false);
	o->holding = false;
	while (!all_in() && tern__now_ns() < end) {
		while (o->nheld)
			release_one(false);
		while (o->ndeferred)
			release_one(true);
		run_turns(1);
		sync_queue();
	}
	if (!all_in())
		fail_msg("not all in after %d ms: %u of %u posted handled, %u of %u calls done, "
			 "%u queued",
			 RUN_MS, o->nhandled, o->nposted, o->calls_done, o->calls_posted, o->qlen);
}

/* The promise, on what the server saw. */
static void check(uint64_t seed)
{
	static uint32_t pos[MAX_MSGS], in_place_before[MAX_MSGS + 1], in_place_order[MAX_MSGS];
	uint32_t n_in_place = 0, seen_in_place = 0, late = 0;

	assert_int_equal(o->bad, 0);
	assert_int_equal(o->call_errors, 0);
	for (uint32_t i = 0; i < o->nposted; i++) {
		uint32_t id = o->posted[i];

		pos[id] = i;
		in_place_before[i] = n_in_place;
		if (o->klass[id] == IN_PLACE)
			in_place_order[n_in_place++] = id;
	}
	in_place_before[o->nposted] = n_in_place;
	for (uint32_t id = 0; id < o->next_id; id++)
		if (o->times_handled[id] != UINT32_MAX && o->times_handled[id] != 1)
			fail_msg("seed %" PRIu64 ": message %u handled %u times", seed, id,
				 o->times_handled[id]);
	for (uint32_t j = 0; j < o->nhandled; j++) {
		uint32_t id = o->handled[j];

		if (o->klass[id] == IN_PLACE) {
			if (id != in_place_order[seen_in_place])
				fail_msg("seed %" PRIu64 ": handler %u ran for message %u (posted "
					 "%u-th); the next in place was %u",
					 seed, j, id, pos[id], in_place_order[seen_in_place]);
			seen_in_place++;
		} else {
			late++;
			if (in_place_before[pos[id]] > seen_in_place)
				fail_msg("seed %" PRIu64 ": late message %u (posted %u-th) ran "
					 "before %u in-place messages posted ahead of it",
					 seed, id, pos[id],
					 in_place_before[pos[id]] - seen_in_place);
		}
	}
	printf("seed %" PRIu64 ": %u messages posted (%u late, %u calls): %u at once, %u "
	       "from the queue, %u commits (%u ahead of the queue)\n",
	       seed, o->nposted, late, o->calls_posted, o->direct, o->qhead, o->commits,
	       o->commits_ahead);
}

static void one_seed(uint64_t seed, int steps)
{
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = SLOT_SIZE, .slot_count = SLOTS};
	struct tern_batch_opts bo = {.size = sizeof(bo), .max = 4, .wait_us = 200};
	struct tern_batch_opts obo = {.size = sizeof(bo), .max = 3, .wait_us = 300, .oneway = 1};

	o = calloc(1, sizeof(*o));
	assert_non_null(o);
	o->rng = seed * 0x9e3779b97f4a7c15ull + 1;
	o->holding = true;
	assert_int_equal(fx_setup(&o->f, &so, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_oneway(o->f.ctx, M_OW, on_ow, NULL), 0);
	assert_int_equal(tern_register_raw(o->f.ctx, M_RAW, on_raw, NULL), 0);
	assert_int_equal(tern_register_inplace(o->f.ctx, M_INPLACE, on_inplace, NULL), 0);
	assert_int_equal(tern_register_deferred(o->f.ctx, M_DEFER, on_defer, NULL), 0);
	assert_int_equal(tern_register_batch(o->f.ctx, M_BATCH, &bo, on_batch, NULL), 0);
	assert_int_equal(tern_register_batch(o->f.ctx, M_OWBATCH, &obo, on_batch, NULL), 0);
	for (int i = 0; i < steps && o->next_id < MAX_MSGS - 16; i++)
		step();
	drain();
	check(seed);
	fx_teardown(&o->f);
	free(o);
	o = NULL;
}

static void test_handlers_run_in_the_promised_order(void **state)
{
	const char *env = getenv("TERN_TEST_SEED");
	/* Fewer steps under the VM's emulation. */
	int steps = fx_is("rdma") ? 1500 : 4000;

	(void)state;
	if (env) {
		one_seed(strtoull(env, NULL, 0), steps);
		return;
	}
	for (uint64_t seed = 1; seed <= 4; seed++)
		one_seed(seed, steps);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_handlers_run_in_the_promised_order),
	};

	if (!fx_runnable())
		return 77;
	return _cmocka_run_group_tests(fx_transport(), tests, sizeof(tests) / sizeof(tests[0]),
				       NULL, NULL);
}
