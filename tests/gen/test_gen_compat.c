// SPDX-License-Identifier: MIT
/*
 * Two versions of one service, each's client against the other's server
 * (docs/idl.md, "Compatible changes"), on every provider (shm:// and
 * tcp:// on the host, rdma:// in the VM): compat_v1.tern's Store, here,
 * and compat_v2.tern's (compat_v2_side.c), which adds methods, a service
 * and fields appended to Item and PutResp.
 *
 *  - a newer client connects to an older server; its longer requests are
 *    read as far as the server's types go, the server's shorter replies
 *    read as zero for the fields it lacks, and calls to what the server
 *    lacks fail at the caller with TERN_ENOMETHOD, unsent;
 *  - an older client connects to a newer server, whose handlers read the
 *    appended fields of its requests as zero, also when they keep the
 *    request (deferred, held one-way) and in batches, and however dirty
 *    the receive slots were;
 *  - an incompatible client (compat_bad.tern) is refused, by service,
 *    method and field; a server serving none of the services listed too.
 *
 * Server and client share one context and loop, as in test_gen_rdma.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "compat_side.h"
#include "compat_v1.tern.h"
#include "fixture.h"

#define TIMEOUT_MS 20000
#define SLOTS	   4 /* few slots: making every receive slot dirty takes few calls */

/* ---- the v1 server ------------------------------------------------------------- */

static void read_item(const compat_v1_Item *in, struct item *out)
{
	memset(out, 0, sizeof(*out));
	out->key = compat_v1_Item_get_key(in);
	out->value = compat_v1_Item_get_value(in);
}

static int on_put(tern_req *req, const compat_v1_Item *in, compat_v1_PutResp *out, void *user)
{
	struct seen *sv = user;

	(void)req;
	read_item(in, &sv->last);
	compat_v1_PutResp_set_version(out, (uint64_t)++sv->puts);
	return 0;
}

static int on_get(tern_req *req, const compat_v1_Key *in, compat_v1_Item *out, void *user)
{
	struct seen *sv = user;
	uint64_t key = compat_v1_Key_get_key(in);

	(void)req;
	compat_v1_Item_set_key(out, key);
	compat_v1_Item_set_value(out, (int64_t)key * 10);
	sv->gets++;
	return 0;
}

static int on_later(tern_req *req, const compat_v1_Item *in, void *user)
{
	struct seen *sv = user;

	sv->laters++;
	return seen_keep(sv, req, in);
}

static void on_note(tern_req *req, const compat_v1_Item *in, void *user)
{
	struct seen *sv = user;

	sv->notes++;
	if (seen_keep(sv, tern_req_hold(req), in))
		tern_req_release(req);
}

static void on_sum(struct tern_batch_item *items, size_t n, void *user)
{
	struct seen *sv = user;

	for (size_t i = 0; i < n; i++) {
		const compat_v1_Item *in =
			compat_v1_Item_req_view(items[i].req, items[i].in, items[i].in_len);
		struct item it;

		if (!in || items[i].out_cap < COMPAT_V1_PUTRESP_SIZE) {
			items[i].status = -EBADMSG;
			continue;
		}
		read_item(in, &it);
		if (sv->batch_items < 8)
			sv->batch[sv->batch_items] = it;
		sv->batch_items++;
		compat_v1_PutResp_set_version(items[i].out, it.key + (uint64_t)it.value);
		items[i].status = COMPAT_V1_PUTRESP_SIZE;
	}
	sv->sums++;
}

static int on_blob(tern_req *req, const compat_v1_Blob *in, size_t in_len, compat_v1_Blob *out,
		   struct tern_iov *tail, void *user)
{
	struct seen *sv = user;

	(void)req;
	compat_v1_Blob_set_id(out, compat_v1_Blob_get_id(in) + 1);
	tail->base = compat_v1_Blob_get_data(in, in_len, &tail->len);
	sv->blobs++;
	return 0;
}

static struct store_handlers v1_h = {
	.put = on_put,
	.get = on_get,
	.later = on_later,
	.note = on_note,
	.sum = on_sum,
	.blob = on_blob,
};

static void v1_answer_held(struct seen *sv)
{
	for (int i = 0; i < sv->nheld; i++) {
		struct item it;

		read_item(sv->held_in[i], &it);
		if (sv->nkept < 8)
			sv->kept[sv->nkept++] = it;
		if (tern_req_method(sv->held[i]) == STORE_NOTE_ID) {
			tern_req_release(sv->held[i]);
		} else {
			compat_v1_PutResp *out = NULL;

			assert_int_equal(store_later_reply_acquire(sv->held[i], &out), 0);
			compat_v1_PutResp_set_version(out, it.key);
			assert_int_equal(store_later_reply_commit(sv->held[i]), 0);
		}
	}
	sv->nheld = 0;
}

/* ---- set-up ----------------------------------------------------------------- */

enum server_version { V1, V2, V2_NO_DROP };

struct t {
	tern_ctx *ctx;
	tern_listener *l;
	struct seen sv;
	enum server_version version;
	int accepted, refused, refused_status;
};

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	struct t *t = tern_listener_data(l);

	if (s)
		t->accepted++;
	else
		t->refused++, t->refused_status = status;
}

static int run_until(struct t *t, const int *counter, int n)
{
	struct fx f = {.ctx = t->ctx};

	return fx_run_until_count(&f, counter, n, TIMEOUT_MS);
}

static int setup_version(void **state, enum server_version v)
{
	struct tern_session_opts lo = {.size = sizeof(lo), .slot_count = SLOTS};
	struct t *t = calloc(1, sizeof(*t));
	const char *uri = fx_listen_uri();
	int rc;

	if (!t || !uri || tern_ctx_create(NULL, &t->ctx))
		return -1;
	*state = t;
	t->version = v;
	rc = v == V1 ? store_register(t->ctx, &v1_h, &t->sv) : v2_serve(t->ctx, &t->sv, v == V2);
	if (rc || (rc = tern_listen(t->ctx, uri, &lo, on_accept, &t->l))) {
		fprintf(stderr, "setup: %s: %s\n", tern_strerror(rc), tern_ctx_last_error(t->ctx));
		return -1;
	}
	tern_listener_set_data(t->l, t);
	return 0;
}

static int setup_v1(void **state)
{
	return setup_version(state, V1);
}

static int setup_v2(void **state)
{
	return setup_version(state, V2);
}

static int setup_v2_no_drop(void **state)
{
	return setup_version(state, V2_NO_DROP);
}

static int teardown(void **state)
{
	struct t *t = *state;

	if (t) {
		for (int i = 0; i < t->sv.nheld; i++)
			if (tern_req_method(t->sv.held[i]) == STORE_NOTE_ID)
				tern_req_release(t->sv.held[i]);
			else
				tern_reply_error(t->sv.held[i], -ECANCELED, NULL);
		if (t->ctx)
			tern_ctx_destroy(t->ctx);
		free(t);
	}
	return 0;
}

static int connect_with(struct t *t, const struct tern_service_ref *refs, uint32_t n,
			tern_session **s)
{
	struct tern_session_opts o = {
		.size = sizeof(o), .services = refs, .nservices = n, .slot_count = SLOTS};

	*s = NULL;
	return tern_connect_sync(t->ctx, tern_listener_uri(t->l), &o, TIMEOUT_MS, s);
}

static tern_session *connect_v2(struct t *t)
{
	const struct tern_service_ref refs[] = {v2_store_ref(), v2_audit_ref()};
	tern_session *s;
	int rc = connect_with(t, refs, 2, &s);

	if (rc)
		fprintf(stderr, "connect: %s: %s\n", tern_err_name(rc),
			tern_ctx_last_error(t->ctx));
	assert_int_equal(rc, 0);
	return s;
}

static tern_session *connect_v1(struct t *t)
{
	const struct tern_service_ref ref = STORE_SERVICE_REF;
	tern_session *s;
	int rc = connect_with(t, &ref, 1, &s);

	if (rc)
		fprintf(stderr, "connect: %s: %s\n", tern_err_name(rc),
			tern_ctx_last_error(t->ctx));
	assert_int_equal(rc, 0);
	return s;
}

static uint64_t calls_sent(tern_session *s)
{
	struct tern_session_counters c;

	assert_int_equal(tern_session_counters(s, &c), 0);
	return c.calls_sent;
}

/* ---- the v1 client -------------------------------------------------------------- */

static void v1_put_cb(tern_session *s, int status, const compat_v1_PutResp *resp,
		      const char *errmsg, void *user)
{
	struct reply *r = user;

	(void)s, (void)errmsg;
	r->done++;
	r->status = status;
	if (resp)
		r->resp.version = compat_v1_PutResp_get_version(resp);
}

static void v1_item(compat_v1_Item *m, uint64_t key, int64_t value)
{
	compat_v1_Item_set_key(m, key);
	compat_v1_Item_set_value(m, value);
}

/*
 * Fill every receive slot of the session's server end with 0xaa, so that
 * a handler reading past an older client's shorter request would see
 * that, not zeros.
 */
static void dirty_the_slots(struct t *t, tern_session *s)
{
	size_t cap = tern_session_max_payload(s) - COMPAT_V1_BLOB_SIZE - 64;
	unsigned char *buf = malloc(tern_session_max_payload(s));
	compat_v1_Blob *req = (compat_v1_Blob *)buf, *resp = malloc(tern_session_max_payload(s));
	int blobs = t->sv.blobs;
	size_t len;

	assert_non_null(buf);
	assert_non_null(resp);
	memset(buf, 0xaa, tern_session_max_payload(s));
	compat_v1_Blob_set_id(req, 1);
	for (int i = 0; i < 4 * (2 * SLOTS + 3); i++)
		assert_int_equal(store_blob_sync(s, req, COMPAT_V1_BLOB_SIZE + cap, resp,
						 tern_session_max_payload(s), &len, TIMEOUT_MS),
				 0);
	assert_int_equal(len, COMPAT_V1_BLOB_SIZE + cap);
	assert_int_equal(t->sv.blobs, blobs + 4 * (2 * SLOTS + 3));
	free(buf);
	free(resp);
}

/* ---- a newer client, an older server -------------------------------------------- */

static void test_a_newer_client_calls_an_older_server(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v2(t);
	struct item it = {.key = 7, .value = 70, .ttl = 5, .tag = {'a', 'b', 'c'}}, got;
	struct put_resp pr;
	struct reply r = {0};

	/* Its Item is 23 bytes: read as far as v1's 16 go.  v1's PutResp is
	 * 8 bytes: `old` reads as zero (the proxy got 0xee bytes). */
	assert_int_equal(v2_put_sync(s, &it, &pr), 0);
	assert_int_equal(pr.version, 1);
	assert_int_equal(pr.old, 0);
	assert_int_equal(t->sv.last.key, 7);
	assert_int_equal(t->sv.last.value, 70);

	/* the same, through the async proxy's callback */
	it.key = 8;
	assert_int_equal(v2_put(s, &it, &r), 0);
	assert_int_equal(run_until(t, &r.done, 1), 0);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.resp.version, 2);
	assert_int_equal(r.resp.old, 0);
	assert_int_equal(t->sv.last.key, 8);

	/* an inplace reply, written by v1 as its 16-byte Item */
	assert_int_equal(v2_get_sync(s, 7, &got), 0);
	assert_int_equal(got.key, 7);
	assert_int_equal(got.value, 70);
	assert_int_equal(got.ttl, 0);
	assert_int_equal(got.tag[0] | got.tag[1] | got.tag[2], 0);
}

static void test_an_older_server_keeps_and_batches_a_newer_clients_requests(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v2(t);
	struct item a = {.key = 5, .value = 50, .ttl = 9}, b = {.key = 6, .value = 60, .ttl = 9};
	struct reply later = {0}, sum = {0};

	assert_int_equal(v2_later(s, &a, &later), 0);
	assert_int_equal(v2_note(s, &b), 0);
	assert_int_equal(run_until(t, &t->sv.notes, 1), 0);
	assert_int_equal(run_until(t, &t->sv.laters, 1), 0);
	assert_int_equal(v2_sum(s, &a, &sum), 0);
	assert_int_equal(run_until(t, &sum.done, 1), 0);
	assert_int_equal(sum.status, 0);
	assert_int_equal(sum.resp.version, 55);
	assert_int_equal(sum.resp.old, 0);

	v1_answer_held(&t->sv);
	assert_int_equal(run_until(t, &later.done, 1), 0);
	assert_int_equal(later.status, 0);
	assert_int_equal(later.resp.version, 5);
	assert_int_equal(later.resp.old, 0);
	assert_int_equal(t->sv.nkept, 2);
	assert_int_equal(t->sv.kept[0].key + t->sv.kept[1].key, 11);
}

static void test_what_an_older_server_lacks_fails_at_the_caller_unsent(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v2(t);
	struct item it = {.key = 1, .value = 2};
	struct put_resp pr;
	struct reply r = {0};
	uint64_t sent = calls_sent(s);

	/* a new method of an old service, through each kind of proxy */
	assert_int_equal(v2_drop_sync(s, 1, &pr), TERN_ENOMETHOD);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "Store.drop is not served there"));
	assert_int_equal(v2_touch(s, 1), TERN_ENOMETHOD);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "Store.touch"));
	assert_int_equal(v2_peek(s, 1, &r), TERN_ENOMETHOD);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "Store.peek"));
	/* a method of a service the server lacks */
	assert_int_equal(v2_log_sync(s, "hello"), TERN_ENOMETHOD);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "Audit.log"));
	/* nothing was sent; the slot peek took is back */
	assert_int_equal(calls_sent(s), sent);
	assert_int_equal(r.done, 0);
	for (int i = 0; i < 2 * SLOTS; i++)
		assert_int_equal(v2_put_sync(s, &it, &pr), 0);
	assert_int_equal(calls_sent(s), sent + 2 * SLOTS);
}

static void
test_a_client_that_skips_the_check_hears_of_a_missing_method_from_the_server(void **state)
{
	struct t *t = *state;
	tern_session *s;
	struct put_resp pr;

	assert_int_equal(connect_with(t, NULL, 0, &s), 0);
	assert_int_equal(v2_drop_sync(s, 1, &pr), TERN_ENOMETHOD);
	assert_int_equal(calls_sent(s), 1); /* a round trip */
}

static void test_a_server_serving_none_of_the_listed_services_refuses(void **state)
{
	struct t *t = *state;
	struct tern_service_ref audit = v2_audit_ref();
	tern_session *s;

	assert_int_equal(connect_with(t, &audit, 1, &s), TERN_ENOSERVICE);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "service Audit is not served here"));
	assert_int_equal(run_until(t, &t->refused, 1), 0);
	assert_int_equal(t->refused_status, TERN_ENOSERVICE);
}

static void test_an_incompatible_client_is_refused_by_service_method_and_field(void **state)
{
	struct t *t = *state;
	struct tern_service_ref bad = bad_store_ref();
	tern_session *s;
	int rc;

	rc = connect_with(t, &bad, 1, &s);
	printf("client: %s: %s\n", tern_err_name(rc), tern_ctx_last_error(t->ctx));
	assert_int_equal(rc, TERN_ESCHEMA);
	assert_null(s);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx),
			       "service Store, method get: request Key, field 1 at offset 0: "
			       "key u32 at the client, key u64 at the server"));
	assert_int_equal(run_until(t, &t->refused, 1), 0);
	assert_int_equal(t->refused_status, TERN_ESCHEMA);
	assert_non_null(strstr(tern_ctx_last_error(t->ctx), "method get"));
}

/* ---- an older client, a newer server -------------------------------------------- */

static void test_an_older_client_calls_a_newer_server(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v1(t);
	compat_v1_Item req;
	compat_v1_PutResp pr;
	compat_v1_Key key;
	compat_v1_Item item;
	struct reply r = {0};

	dirty_the_slots(t, s);
	/* v1's 16-byte Item: ttl and tag read as zero at the v2 handler */
	v1_item(&req, 7, 70);
	assert_int_equal(store_put_sync(s, &req, &pr, TIMEOUT_MS), 0);
	assert_int_equal(compat_v1_PutResp_get_version(&pr), 1); /* of v2's 16 bytes */
	assert_int_equal(t->sv.last.key, 7);
	assert_int_equal(t->sv.last.value, 70);
	assert_int_equal(t->sv.last.ttl, 0);
	assert_int_equal(t->sv.last.tag[0] | t->sv.last.tag[1] | t->sv.last.tag[2], 0);

	v1_item(&req, 8, 80);
	assert_int_equal(store_put(s, &req, v1_put_cb, &r, NULL), 0);
	assert_int_equal(run_until(t, &r.done, 1), 0);
	assert_int_equal(r.status, 0);
	assert_int_equal(r.resp.version, 2);
	assert_int_equal(t->sv.last.ttl, 0);

	/* v2's 23-byte Item, read as v1's */
	compat_v1_Key_set_key(&key, 9);
	assert_int_equal(store_get_sync(s, &key, &item, TIMEOUT_MS), 0);
	assert_int_equal(compat_v1_Item_get_key(&item), 9);
	assert_int_equal(compat_v1_Item_get_value(&item), 90);
}

static void test_a_newer_server_keeps_and_batches_an_older_clients_requests(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v1(t);
	compat_v1_Item a, b, c;
	compat_v1_PutResp pr;
	struct reply later = {0}, sum = {0};

	dirty_the_slots(t, s);
	v1_item(&a, 5, 50);
	v1_item(&b, 6, 60);
	assert_int_equal(store_later(s, &a, v1_put_cb, &later, NULL), 0);
	assert_int_equal(store_note_send_wait(s, &b, TIMEOUT_MS), 0);
	assert_int_equal(run_until(t, &t->sv.laters, 1), 0);
	assert_int_equal(run_until(t, &t->sv.notes, 1), 0);
	/* more requests come and go while those two are kept */
	dirty_the_slots(t, s);
	v1_item(&c, 1, 1);
	for (int i = 0; i < 2 * SLOTS; i++)
		assert_int_equal(store_put_sync(s, &c, &pr, TIMEOUT_MS), 0);
	assert_int_equal(store_sum(s, &a, v1_put_cb, &sum, NULL), 0);
	assert_int_equal(run_until(t, &sum.done, 1), 0);
	assert_int_equal(sum.status, 0);
	assert_int_equal(sum.resp.version, 55);
	assert_int_equal(t->sv.batch_items, 1);
	assert_int_equal(t->sv.batch[0].ttl, 0);

	v2_answer_held(&t->sv);
	assert_int_equal(t->sv.nkept, 2);
	for (int i = 0; i < 2; i++) {
		assert_int_equal(t->sv.kept[i].key, 5 + i);
		assert_int_equal(t->sv.kept[i].value, 50 + 10 * i);
		assert_int_equal(t->sv.kept[i].ttl, 0);
		assert_int_equal(t->sv.kept[i].tag[0] | t->sv.kept[i].tag[1] | t->sv.kept[i].tag[2],
				 0);
	}
	assert_int_equal(run_until(t, &later.done, 1), 0);
	assert_int_equal(later.status, 0);
	assert_int_equal(later.resp.version, 5);
}

static void test_a_request_of_no_version_is_refused(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v1(t);
	unsigned char raw[32] = {7};
	struct tern_sync_reply rep = {.buf = raw, .cap = sizeof(raw)};

	/* 12 bytes end inside Item.value */
	assert_int_equal(tern_call_sync(s, STORE_PUT_ID, raw, 12, &rep, TIMEOUT_MS), -EBADMSG);
	assert_string_equal(
		rep.errmsg,
		"Store.put: request of 12 bytes, expected 23 (or fewer, ending at a field)");
	/* 8 bytes end at Item.key: an Item of key 7, the rest zero */
	assert_int_equal(tern_call_sync(s, STORE_PUT_ID, raw, 8, &rep, TIMEOUT_MS), 0);
	assert_int_equal(t->sv.last.key, 7);
	assert_int_equal(t->sv.last.value, 0);
	assert_int_equal(t->sv.puts, 1);
}

static void test_a_method_the_newer_server_does_not_implement_fails_at_the_caller(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v2(t);
	struct put_resp pr;
	uint64_t sent = calls_sent(s);

	assert_int_equal(v2_drop_sync(s, 3, &pr), TERN_ENOMETHOD);
	assert_int_equal(calls_sent(s), sent);
	assert_int_equal(v2_log_sync(s, "served"), 0);
	assert_int_equal(t->sv.logs, 1);
	assert_int_equal(t->sv.drops, 0);
}

static void test_the_same_version_both_ways(void **state)
{
	struct t *t = *state;
	tern_session *s = connect_v2(t);
	struct item it = {.key = 4, .value = 40, .ttl = 3, .tag = {1, 2, 3}}, got;
	struct put_resp pr;

	assert_int_equal(v2_put_sync(s, &it, &pr), 0);
	assert_int_equal(pr.version, 1);
	assert_int_equal(pr.old, -40);
	assert_int_equal(t->sv.last.ttl, 3);
	assert_int_equal(t->sv.last.tag[2], 3);
	assert_int_equal(v2_get_sync(s, 4, &got), 0);
	assert_int_equal(got.ttl, 99);
	assert_int_equal(got.tag[1], '2');
	assert_int_equal(v2_drop_sync(s, 11, &pr), 0);
	assert_int_equal(pr.version, 11);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_a_newer_client_calls_an_older_server, setup_v1,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_an_older_server_keeps_and_batches_a_newer_clients_requests, setup_v1,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_what_an_older_server_lacks_fails_at_the_caller_unsent, setup_v1,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_a_client_that_skips_the_check_hears_of_a_missing_method_from_the_server,
			setup_v1, teardown),
		cmocka_unit_test_setup_teardown(
			test_a_server_serving_none_of_the_listed_services_refuses, setup_v1,
			teardown),
		cmocka_unit_test_setup_teardown(
			test_an_incompatible_client_is_refused_by_service_method_and_field,
			setup_v1, teardown),
		cmocka_unit_test_setup_teardown(test_an_older_client_calls_a_newer_server, setup_v2,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_a_newer_server_keeps_and_batches_an_older_clients_requests, setup_v2,
			teardown),
		cmocka_unit_test_setup_teardown(test_a_request_of_no_version_is_refused, setup_v2,
						teardown),
		cmocka_unit_test_setup_teardown(
			test_a_method_the_newer_server_does_not_implement_fails_at_the_caller,
			setup_v2_no_drop, teardown),
		cmocka_unit_test_setup_teardown(test_the_same_version_both_ways, setup_v2,
						teardown),
	};

	if (!fx_listen_uri())
		return 77;
	return cmocka_run_group_tests(tests, NULL, NULL);
}
