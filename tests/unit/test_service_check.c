// SPDX-License-Identifier: MIT
/*
 * The service check (rpc/services.c): versions of one service that differ
 * compatibly are accepted both ways and answered method by method; each
 * kind of incompatible change is refused, naming the service, the method
 * and the field; services without a layout are compared by hash; and the
 * parsers take everything a hostile peer could send.  The layouts are
 * tern-gen's, from service_layouts.py's versions of one service.
 */
#include <endian.h>
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "rpc.h"
#include "service_layouts.h"

#define NVARIANTS (sizeof(kv_variants) / sizeof(kv_variants[0]))

static const struct kv_variant *variant(const char *name)
{
	for (size_t i = 0; i < NVARIANTS; i++)
		if (strcmp(kv_variants[i].name, name) == 0)
			return &kv_variants[i];
	fail_msg("no variant %s", name);
	return NULL;
}

static struct tern_service_ref ref_of(const struct kv_variant *v)
{
	struct tern_service_ref r = {"Kv", v->hash, v->layout, v->len};

	return r;
}

static int handler(tern_req *req, const void *in, size_t in_len, struct tern_iov *out, void *user)
{
	(void)req, (void)in, (void)in_len, (void)out, (void)user;
	return 0;
}

/* A context serving @v, with a handler for each of its methods but @unserved. */
static tern_ctx *server_of(const struct kv_variant *v, uint32_t unserved)
{
	struct tern_service_ref r = ref_of(v);
	tern_ctx *ctx;

	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	for (size_t i = 0; i < v->nids; i++)
		if (v->ids[i] != unserved)
			assert_int_equal(tern_register_raw(ctx, v->ids[i], handler, NULL), 0);
	assert_int_equal(tern_service_register_ref(ctx, &r), 0);
	return ctx;
}

struct answer {
	int rc;
	char why[TERN_ERRMSG_MAX];
	uint8_t bits[64];
	uint32_t len;
};

static struct answer check(tern_ctx *ctx, const struct tern_service_ref *refs, uint32_t n)
{
	static uint8_t b[8192];
	struct answer a = {0};
	int len = tern__services_encode(refs, n, b, sizeof(b));

	assert_true(len > 0);
	a.rc = tern__services_verify(ctx, b, (size_t)len, a.bits, sizeof(a.bits), &a.len, a.why,
				     sizeof(a.why));
	if (a.rc)
		assert_true(a.why[0] != 0);
	return a;
}

static bool bit(const struct answer *a, uint32_t i)
{
	return a->bits[i / 8] & (1u << (i % 8));
}

static bool has(const struct kv_variant *v, uint32_t id)
{
	for (size_t i = 0; i < v->nids; i++)
		if (v->ids[i] == id)
			return true;
	return false;
}

/* ---- compatible versions ------------------------------------------------------------ */

static void test_the_same_layout_is_accepted_and_each_method_answered(void **state)
{
	const struct kv_variant *base = variant("base");
	struct tern_service_ref r = ref_of(base);
	tern_ctx *ctx = server_of(base, KV_SCAN_ID);
	struct answer a = check(ctx, &r, 1);

	(void)state;
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.len, 1); /* six methods, one byte */
	for (size_t i = 0; i < base->nids; i++)
		assert_int_equal(bit(&a, (uint32_t)i), base->ids[i] != KV_SCAN_ID);
	assert_int_equal(a.bits[0] >> base->nids, 0); /* the spare bits clear */
	tern_ctx_destroy(ctx);
}

static void test_compatible_versions_are_accepted_both_ways(void **state)
{
	const struct kv_variant *base = variant("base");

	(void)state;
	for (size_t i = 0; i < NVARIANTS; i++) {
		const struct kv_variant *v = &kv_variants[i];
		const struct kv_variant *pair[2][2] = {{base, v}, {v, base}};

		if (v->refusal)
			continue;
		for (int k = 0; k < 2; k++) {
			const struct kv_variant *srv = pair[k][0], *cli = pair[k][1];
			struct tern_service_ref r = ref_of(cli);
			tern_ctx *ctx = server_of(srv, 0);
			struct answer a = check(ctx, &r, 1);

			if (a.rc)
				fail_msg("%s client, %s server: %s", cli->name, srv->name, a.why);
			assert_int_equal(a.len, (cli->nids + 7) / 8);
			/* a method is served when the server has it */
			for (size_t j = 0; j < cli->nids; j++)
				assert_int_equal(bit(&a, (uint32_t)j), has(srv, cli->ids[j]));
			tern_ctx_destroy(ctx);
		}
	}
}

/* ---- incompatible changes --------------------------------------------------------- */

static void test_each_incompatible_change_is_refused_by_service_method_and_field(void **state)
{
	const struct kv_variant *base = variant("base");
	int n = 0;

	(void)state;
	for (size_t i = 0; i < NVARIANTS; i++) {
		const struct kv_variant *v = &kv_variants[i];
		struct tern_service_ref r = ref_of(v), rb = ref_of(base);
		tern_ctx *ctx;
		struct answer a;

		if (!v->refusal)
			continue;
		n++;
		ctx = server_of(base, 0);
		a = check(ctx, &r, 1);
		assert_int_equal(a.rc, TERN_ESCHEMA);
		if (strcmp(a.why, v->refusal))
			fail_msg("%s: \"%s\", expected \"%s\"", v->name, a.why, v->refusal);
		tern_ctx_destroy(ctx);
		/* and the other way round: the same method, sides swapped */
		ctx = server_of(v, 0);
		a = check(ctx, &rb, 1);
		assert_int_equal(a.rc, TERN_ESCHEMA);
		assert_memory_equal(a.why, v->refusal, strlen("service Kv, method ") + 3);
		tern_ctx_destroy(ctx);
	}
	assert_int_equal(n, 14);
}

static void test_a_method_id_of_another_name_is_refused(void **state)
{
	const struct kv_variant *base = variant("base");
	uint8_t layout[1024];
	struct tern_service_ref r = ref_of(base);
	tern_ctx *ctx = server_of(base, 0);
	struct answer a;
	uint8_t *p;

	(void)state;
	/* "put" becomes "pux", keeping Kv.put's id */
	memcpy(layout, base->layout, base->len);
	p = memmem(layout, base->len, "\003put", 4);
	assert_non_null(p);
	p[3] = 'x';
	r.layout = layout;
	a = check(ctx, &r, 1);
	assert_int_equal(a.rc, TERN_ESCHEMA);
	assert_string_equal(a.why, "service Kv: method id 0xdd1a7f8b is pux at the client, put at "
				   "the server");
	tern_ctx_destroy(ctx);
}

/* ---- services: missing, without a layout ---------------------------------------------- */

static void test_a_service_the_server_lacks_has_its_methods_missing(void **state)
{
	const struct kv_variant *base = variant("base");
	struct tern_service_ref refs[3] = {
		{"Other", OTHER_HASH, other_layout, sizeof(other_layout)},
		ref_of(base),
		{"Nope", 1, NULL, 0}};
	tern_ctx *ctx = server_of(base, 0);
	struct answer a;

	(void)state;
	a = check(ctx, refs, 2);
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.len, 1); /* Other.f, then Kv's six */
	assert_false(bit(&a, 0));
	for (uint32_t i = 1; i <= base->nids; i++)
		assert_true(bit(&a, i));
	/* none of the services listed: the wrong server */
	a = check(ctx, refs, 1);
	assert_int_equal(a.rc, TERN_ENOSERVICE);
	assert_string_equal(a.why, "service Other is not served here");
	refs[1] = refs[0];
	refs[1].name = "Other2";
	a = check(ctx, refs, 2);
	assert_int_equal(a.rc, TERN_ENOSERVICE);
	assert_string_equal(a.why,
			    "none of the 2 services listed is served here (the first: Other)");
	/* one without a layout: nothing to mark missing, so it must be there */
	refs[1] = ref_of(base);
	a = check(ctx, refs + 1, 2);
	assert_int_equal(a.rc, TERN_ENOSERVICE);
	assert_string_equal(a.why, "service Nope is not served here");
	tern_ctx_destroy(ctx);
}

static void test_a_side_without_a_layout_compares_the_hash(void **state)
{
	const struct kv_variant *base = variant("base"), *grown = variant("grown");
	struct tern_service_ref bare = {"Kv", base->hash, NULL, 0}, with = ref_of(base);
	tern_ctx *ctx;
	struct answer a;

	(void)state;
	/* a server without one */
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	assert_int_equal(tern_register_raw(ctx, KV_PUT_ID, handler, NULL), 0);
	assert_int_equal(tern_service_register(ctx, "Kv", base->hash), 0);
	a = check(ctx, &bare, 1);
	assert_int_equal(a.rc, 0);
	assert_int_equal(a.len, 0);
	a = check(ctx, &with, 1); /* the same hash: answered from the method table */
	assert_int_equal(a.rc, 0);
	for (size_t i = 0; i < base->nids; i++)
		assert_int_equal(bit(&a, (uint32_t)i), base->ids[i] == KV_PUT_ID);
	with = ref_of(grown); /* compatible, but nothing says so here */
	a = check(ctx, &with, 1);
	assert_int_equal(a.rc, TERN_ESCHEMA);
	assert_non_null(strstr(a.why, "service Kv: schema "));
	tern_ctx_destroy(ctx);
	/* a client without one */
	ctx = server_of(base, 0);
	a = check(ctx, &bare, 1);
	assert_int_equal(a.rc, 0);
	bare.schema_hash ^= 1;
	a = check(ctx, &bare, 1);
	assert_int_equal(a.rc, TERN_ESCHEMA);
	tern_ctx_destroy(ctx);
}

static void test_register_checks_the_layout(void **state)
{
	const struct kv_variant *base = variant("base");
	struct tern_service_ref r = ref_of(base);
	tern_ctx *ctx;

	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	r.layout_len--;
	assert_int_equal(tern_service_register_ref(ctx, &r), -EINVAL);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "service Kv: layout"));
	r.layout_len = 0;
	assert_int_equal(tern_service_register_ref(ctx, &r), -EINVAL);
	r = ref_of(base);
	r.name = "K v";
	assert_int_equal(tern_service_register_ref(ctx, &r), -EINVAL);
	assert_int_equal(tern_service_register_ref(ctx, NULL), -EINVAL);
	/* several services, added one by one, each found whole */
	r = ref_of(base);
	assert_int_equal(tern_service_register(ctx, "First", 1), 0);
	assert_int_equal(tern_service_register_ref(ctx, &r), 0);
	assert_int_equal(tern_service_register_ref(ctx, &r), -EEXIST);
	r.name = "Kv2";
	assert_int_equal(tern_service_register_ref(ctx, &r), 0);
	for (int i = 0; i < 2; i++) {
		struct tern_service_ref c = ref_of(variant("grown"));
		struct answer a;

		c.name = i ? "Kv2" : "Kv";
		a = check(ctx, &c, 1);
		assert_int_equal(a.rc, 0);
	}
	tern_ctx_destroy(ctx);
}

/* ---- hostile input ---------------------------------------------------------------- */

static uint8_t good[4096];
static int good_len;

static int verify(tern_ctx *ctx, const uint8_t *b, size_t n)
{
	uint8_t out[64];
	uint32_t out_len;
	char why[TERN_ERRMSG_MAX];
	int rc = tern__services_verify(ctx, b, n, out, sizeof(out), &out_len, why, sizeof(why));

	if (rc)
		assert_true(why[0] != 0);
	else
		assert_true(out_len <= sizeof(out));
	return rc;
}

static void make_good(void)
{
	struct tern_service_ref refs[2] = {
		ref_of(variant("grown")),
		{"Other", OTHER_HASH, other_layout, sizeof(other_layout)}};

	good_len = tern__services_encode(refs, 2, good, sizeof(good));
	assert_true(good_len > 0);
}

static void test_every_truncation_and_corruption_is_answered_in_bounds(void **state)
{
	tern_ctx *ctx = server_of(variant("base"), 0);
	uint8_t t[4096];
	int accepted = 0;

	(void)state;
	make_good();
	assert_int_equal(verify(ctx, good, (size_t)good_len), 0);
	for (int n = 0; n < good_len; n++)
		assert_int_equal(verify(ctx, good, (size_t)n), TERN_EPEER);
	for (int i = 0; i < good_len; i++) {
		static const uint8_t vals[] = {0x00, 0x01, 0x02, 0x0b, 0x0c,
					       0x7f, 0x80, 0xfe, 0xff};

		for (size_t k = 0; k < sizeof(vals); k++) {
			int rc;

			memcpy(t, good, (size_t)good_len);
			if (t[i] == vals[k])
				continue;
			t[i] = vals[k];
			rc = verify(ctx, t, (size_t)good_len);
			assert_true(rc == 0 || rc == TERN_EPEER || rc == TERN_ESCHEMA ||
				    rc == TERN_ENOSERVICE);
			accepted += rc == 0;
		}
	}
	/* some corruptions are still valid checks (a hash, an id, a name) */
	assert_true(accepted > 0);
	tern_ctx_destroy(ctx);
}

/* Offsets in a one-service check of base's layout, for the cases below. */
static int base_check(uint8_t *b)
{
	struct tern_service_ref r = ref_of(variant("base"));

	return tern__services_encode(&r, 1, b, 4096);
}

#define LAYOUT_AT (1 + 1 + 2 + 8 + 4) /* count, name "Kv", hash, layout_len */

static void test_malformed_checks_are_protocol_errors(void **state)
{
	tern_ctx *ctx = server_of(variant("base"), 0);
	const struct kv_variant *base = variant("base");
	uint8_t b[4096], t[4096];
	int n = base_check(b);
	uint8_t *methods;
	uint32_t big = htole32(100000);

	(void)state;
	assert_int_equal(verify(ctx, b, (size_t)n), 0);
#define CASE(what)                                                       \
	do {                                                             \
		memcpy(t, b, (size_t)n);                                 \
		what;                                                    \
		assert_int_equal(verify(ctx, t, (size_t)n), TERN_EPEER); \
	} while (0)
	CASE(t[0] = 0);					     /* no services */
	CASE(t[0] = TERN_SVC_MAX + 1);			     /* too many */
	CASE(t[1] = 0);					     /* an empty name */
	CASE(t[2] = ' ');				     /* a byte no name holds */
	CASE(memcpy(t + 12, &big, 4));			     /* a layout past the end */
	CASE(t[LAYOUT_AT] = 2);				     /* another layout format */
	CASE(t[LAYOUT_AT + 1] = 0xff; t[LAYOUT_AT + 2] = 1); /* 511 messages */
	CASE(t[LAYOUT_AT + 1] = 0; t[LAYOUT_AT + 2] = 1);    /* 256 messages, not there */
	memcpy(t, b, (size_t)n);
	t[n] = 0; /* a trailing byte */
	assert_int_equal(verify(ctx, t, (size_t)n + 1), TERN_EPEER);
	/* the methods: id, name, kind, request, reply */
	methods = memmem(b + LAYOUT_AT, base->len, "\003tag", 4) - 4;
	assert_true(methods > b);
	CASE(memset(t + (methods - b), 0, 4));	  /* id 0 */
	CASE(memset(t + (methods - b), 0xff, 4)); /* a reserved id */
	CASE(t[methods - b + 8] = 0);		  /* kind 0 */
	CASE(t[methods - b + 8] = 7);		  /* no such kind */
	CASE(t[methods - b + 9] = 0x20);	  /* a message that is not there */
	CASE(t[methods - b + 11] = 0xfe; t[methods - b + 12] = 0xff); /* a call with no reply */
	/* ids that do not ascend: the first method's made larger than the next */
	CASE(memset(t + (methods - b), 0xfe, 4));
	/* a field of an unknown type, trailing bytes not last */
	{
		uint8_t *f = memmem(b + LAYOUT_AT, base->len, "\004data", 5);

		assert_non_null(f);
		CASE(t[f - b + 5] = TERN_LT_BYTES + 1); /* no such type */
		CASE(t[f - b + 5] = 0);
		CASE(t[f - b + 6] = 1); /* bytes with a count */
		f = memmem(b + LAYOUT_AT, base->len, "\002id", 3);
		assert_non_null(f);
		CASE(t[f - b + 3] = TERN_LT_BYTES); /* Blob.id as bytes: not last */
		f = memmem(b + LAYOUT_AT, base->len, "\005flags", 6);
		assert_non_null(f);
		CASE(memset(t + (f - b) + 7, 0xff, 4)); /* flags[4294967295]: over 1 MiB */
	}
#undef CASE
	tern_ctx_destroy(ctx);
}

static void test_encode_rejects_bad_refs(void **state)
{
	const struct kv_variant *base = variant("base");
	struct tern_service_ref bad[] = {
		{"", 1, NULL, 0},
		{"a b", 1, NULL, 0},
		{NULL, 1, NULL, 0},
		{"0123456789012345678901234567890123456789012345678901234567890123", 1, NULL, 0},
		{"Kv", 1, base->layout, 0},
		{"Kv", 1, NULL, 4},
		{"Kv", 1, base->layout, base->len - 1}};
	struct tern_service_ref ok = {"Kv", 1, NULL, 0}, with = ref_of(base);
	uint8_t b[512];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
		assert_int_equal(tern__services_encode(&bad[i], 1, b, sizeof(b)), -EINVAL);
	assert_int_equal(tern__services_encode(&ok, 1, b, 10), -EMSGSIZE);
	assert_int_equal(tern__services_encode(&ok, 0, b, sizeof(b)), -EINVAL);
	assert_int_equal(tern__services_encode(&ok, 1, b, sizeof(b)), 1 + 3 + 8 + 4);
	assert_int_equal(tern__services_encode(&with, 1, b, sizeof(b)), 1 + 3 + 8 + 4 + base->len);
	assert_int_equal(tern__services_encode(&with, 1, b, 1 + 3 + 8 + 4 + base->len - 1),
			 -EMSGSIZE);
}

/* ---- the client's side: the answer ------------------------------------------------------ */

static void test_the_client_records_what_the_server_lacks(void **state)
{
	const struct kv_variant *grown = variant("grown");
	tern_ctx *ctx;
	struct tern_rpc_session rs;
	tern_session *s = &rs.base;
	char why[TERN_ERRMSG_MAX];
	uint8_t answer[2] = {0, 0};
	uint32_t drop = 0;

	(void)state;
	assert_int_equal(tern_ctx_create(NULL, &ctx), 0);
	make_good(); /* grown's Kv (7 methods), then Other (1) */
	memset(&rs, 0, sizeof(rs));
	s->ctx = ctx;
	rs.svc_check = good;
	rs.svc_check_len = (uint32_t)good_len;
	snprintf(s->peer, sizeof(s->peer), "tcp://server");
	/* one bit per method: 8 methods, one byte; not two, not none */
	assert_int_equal(tern__services_accept(s, answer, 2, why, sizeof(why)), TERN_EPEER);
	assert_int_equal(tern__services_accept(s, answer, 0, why, sizeof(why)), TERN_EPEER);
	assert_null(rs.missing);
	/* all of Kv's but drop served, Other not */
	for (size_t i = 0; i < grown->nids; i++)
		if (has(variant("base"), grown->ids[i]))
			answer[0] |= (uint8_t)(1u << i);
		else
			drop = grown->ids[i];
	assert_int_equal(tern__services_accept(s, answer, 1, why, sizeof(why)), 0);
	assert_int_equal(rs.nmissing, 2);
	assert_int_equal(tern__services_missing(s, KV_PUT_ID), 0);
	assert_int_equal(tern__services_missing(s, drop), TERN_ENOMETHOD);
	assert_string_equal(tern_ctx_last_error(ctx),
			    "tcp://server: Kv.drop is not served there (the server said so at "
			    "connect)");
	assert_int_equal(tern__services_missing(s, OTHER_F_ID), TERN_ENOMETHOD);
	assert_non_null(strstr(tern_ctx_last_error(ctx), "Other.f"));
	free(rs.missing);
	rs.missing = NULL;
	rs.nmissing = 0;
	/* thirteen methods: two bytes, the three spare bits clear */
	{
		struct tern_service_ref refs[2] = {ref_of(variant("grown")),
						   ref_of(variant("base"))};
		uint8_t b[4096], two[2] = {0xff, 0xff};
		int n = tern__services_encode(refs, 2, b, sizeof(b));

		rs.svc_check = b;
		rs.svc_check_len = (uint32_t)n;
		assert_int_equal(tern__services_accept(s, two, 2, why, sizeof(why)), TERN_EPEER);
		two[1] = 0x1f;
		assert_int_equal(tern__services_accept(s, two, 2, why, sizeof(why)), 0);
		assert_int_equal(rs.nmissing, 0);
	}
	tern_ctx_destroy(ctx);
}

static void test_zero_extend_copies_a_shorter_request(void **state)
{
	uint8_t in[16];
	tern_req req;
	const uint8_t *p;

	(void)state;
	memset(&req, 0, sizeof(req));
	memset(in, 0x5a, sizeof(in));
	req.in = in;
	req.in_len = 8;
	assert_ptr_equal(tern_req_zero_extend(&req, 8), in);
	assert_ptr_equal(tern_req_zero_extend(&req, 4), in);
	p = tern_req_zero_extend(&req, 24);
	assert_non_null(p);
	assert_ptr_not_equal(p, in);
	for (int i = 0; i < 24; i++)
		assert_int_equal(p[i], i < 8 ? 0x5a : 0);
	assert_ptr_equal(tern_req_zero_extend(&req, 12), p); /* kept, reused */
	assert_null(tern_req_zero_extend(&req, TERN_MAX_SLOT_SIZE + 1));
	assert_null(tern_req_zero_extend(NULL, 8));
	free(req.zx);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_the_same_layout_is_accepted_and_each_method_answered),
		cmocka_unit_test(test_compatible_versions_are_accepted_both_ways),
		cmocka_unit_test(
			test_each_incompatible_change_is_refused_by_service_method_and_field),
		cmocka_unit_test(test_a_method_id_of_another_name_is_refused),
		cmocka_unit_test(test_a_service_the_server_lacks_has_its_methods_missing),
		cmocka_unit_test(test_a_side_without_a_layout_compares_the_hash),
		cmocka_unit_test(test_register_checks_the_layout),
		cmocka_unit_test(test_every_truncation_and_corruption_is_answered_in_bounds),
		cmocka_unit_test(test_malformed_checks_are_protocol_errors),
		cmocka_unit_test(test_encode_rejects_bad_refs),
		cmocka_unit_test(test_the_client_records_what_the_server_lacks),
		cmocka_unit_test(test_zero_extend_copies_a_shorter_request),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
