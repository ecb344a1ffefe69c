// SPDX-License-Identifier: MIT
/*
 * Code generated from calc.tern, on the host: the wire bytes the accessors
 * write, views, ids and schema hashes recomputed in C from their
 * definitions (docs/idl.md), what calc_register leaves registered, and
 * bad arguments refused with -EINVAL instead of a crash.  The calls
 * themselves run over rdma:// in test_gen_rdma.c.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "calc.tern.h"
#include "gen_portable.h"

static uint32_t fnv1a_32(const char *s)
{
	uint32_t h = 0x811c9dc5u;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x01000193u;
	return h;
}

static uint64_t fnv1a_64(const char *s)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (; *s; s++)
		h = (h ^ (unsigned char)*s) * 0x100000001b3ull;
	return h;
}

static void test_addreq_is_two_little_endian_i64(void **state)
{
	unsigned char buf[CALC_ADDREQ_SIZE];
	static const unsigned char want[16] = {8,    7,	   6,	 5,    4,    3,	   2,	 1,
					       0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
	calc_AddReq *r = (calc_AddReq *)buf;

	(void)state;
	calc_AddReq_set_a(r, 0x0102030405060708);
	calc_AddReq_set_b(r, -2);
	assert_memory_equal(buf, want, sizeof(want));
	assert_int_equal(calc_AddReq_get_a(r), 0x0102030405060708);
	assert_int_equal(calc_AddReq_get_b(r), -2);
}

static void test_every_scalar_type_round_trips_at_its_offset(void **state)
{
	/* Count { u64 n; i8 sign; u16 width; u32 height; f32 ratio; }: 19 bytes */
	unsigned char buf[CALC_COUNT_SIZE];
	calc_Count *c = (calc_Count *)buf;

	(void)state;
	assert_int_equal(CALC_COUNT_SIZE, 19);
	calc_Count_set_n(c, UINT64_MAX - 1);
	calc_Count_set_sign(c, -128);
	calc_Count_set_width(c, 0xabcd);
	calc_Count_set_height(c, 0x89abcdefu);
	calc_Count_set_ratio(c, 1.5f); /* binary32 0x3fc00000 */
	assert_int_equal(buf[0], 0xfe);
	assert_int_equal(buf[8], 0x80);
	assert_int_equal(buf[9], 0xcd);
	assert_int_equal(buf[10], 0xab);
	assert_int_equal(buf[11], 0xef);
	assert_int_equal(buf[14], 0x89);
	assert_memory_equal(buf + 15, "\x00\x00\xc0\x3f", 4);
	assert_true(calc_Count_get_n(c) == UINT64_MAX - 1);
	assert_int_equal(calc_Count_get_sign(c), -128);
	assert_int_equal(calc_Count_get_width(c), 0xabcd);
	assert_int_equal(calc_Count_get_height(c), 0x89abcdefu);
	assert_true(calc_Count_get_ratio(c) == 1.5f);
}

static void test_accessors_work_at_any_address(void **state)
{
	unsigned char buf[64];

	(void)state;
	for (size_t off = 0; off < 8; off++) {
		calc_Vec *v = (calc_Vec *)(buf + off);

		memset(buf, 0xaa, sizeof(buf));
		calc_Vec_set_factor(v, -0.25);
		calc_Vec_set_x(v, 3, 2.0f);
		calc_Vec_set_small(v, 2, -300);
		assert_true(calc_Vec_get_factor(v) == -0.25);
		assert_true(calc_Vec_get_x(v, 3) == 2.0f);
		assert_int_equal(calc_Vec_get_small(v, 2), -300);
		if (off) /* nothing around it moved */
			assert_int_equal(buf[off - 1], 0xaa);
		assert_int_equal(buf[off + CALC_VEC_SIZE], 0xaa);
	}
}

static void test_array_indexes_out_of_range_are_ignored(void **state)
{
	unsigned char buf[CALC_VEC_SIZE], before[CALC_VEC_SIZE];
	calc_Vec *v = (calc_Vec *)buf;

	(void)state;
	memset(buf, 0x5a, sizeof(buf));
	memcpy(before, buf, sizeof(buf));
	calc_Vec_set_x(v, CALC_VEC_X_LEN, 1.0f);
	calc_Vec_set_small(v, (size_t)-1, 7);
	assert_memory_equal(buf, before, sizeof(buf));
	assert_true(calc_Vec_get_x(v, CALC_VEC_X_LEN) == 0.0f);
	assert_int_equal(calc_Vec_get_small(v, 99), 0);
}

static void test_whole_arrays_agree_on_both_paths(void **state)
{
	const float x[4] = {1.0f, -2.5f, 1e30f, 0.125f};
	const int16_t small[3] = {-1, 32767, -32768};
	unsigned char fast[CALC_VEC_SIZE] = {0}, portable[CALC_VEC_SIZE] = {0};
	float x2[4];
	int16_t s2[3];

	(void)state;
	calc_Vec_store_x((calc_Vec *)fast, x);
	calc_Vec_store_small((calc_Vec *)fast, small);
	portable_store_vec(portable, x, small);
	assert_memory_equal(fast, portable, sizeof(fast));
	assert_memory_equal(fast + 4, "\x00\x00\x20\xc0", 4); /* -2.5f, little-endian */
	assert_memory_equal(fast + 25, "\xff\xff\xff\x7f\x00\x80", 6);
	portable_load_vec(fast, x2, s2);
	assert_memory_equal(x2, x, sizeof(x));
	assert_memory_equal(s2, small, sizeof(small));
	calc_Vec_load_x((const calc_Vec *)portable, x2);
	assert_memory_equal(x2, x, sizeof(x));
}

static void test_views_check_the_length(void **state)
{
	unsigned char buf[64] = {0};

	(void)state;
	assert_null(calc_AddReq_view(buf, 15));
	assert_ptr_equal(calc_AddReq_view(buf, 16), buf);
	/* longer: a newer peer's AddReq, read as far as this one goes */
	assert_ptr_equal(calc_AddReq_view(buf, 17), buf);
	assert_null(calc_AddReq_view(NULL, 16));
	/* Blob { u32 id; u16 kind; bytes data; }: at least 6 bytes */
	assert_null(calc_Blob_view(buf, 5));
	assert_ptr_equal(calc_Blob_view(buf, 6), buf);
	assert_ptr_equal(calc_Blob_view(buf, 64), buf);
	assert_ptr_equal(calc_Empty_view(buf, 0), buf);
	assert_ptr_equal(calc_Empty_view(buf, 1), buf);
}

/* An older peer's message ends at a field: where each field ends, below the size. */
static void test_prefixes_end_at_fields(void **state)
{
	/* Vec { f32 x[4]; f64 factor; u8 flags; i16 small[3]; }: 16, 24, 25, 31 */
	static const size_t ends[] = {0, 16, 24, 25};

	(void)state;
	for (size_t len = 0; len <= CALC_VEC_SIZE; len++) {
		int want = 0;

		for (size_t i = 0; i < sizeof(ends) / sizeof(ends[0]); i++)
			want |= len == ends[i];
		assert_int_equal(calc_Vec_prefix_(len), want);
	}
	assert_int_equal(calc_AddReq_prefix_(8), 1);
	assert_int_equal(calc_AddReq_prefix_(16), 0); /* the whole: not a shorter version */
	/* outside a request (no tern_req), only the whole type is read */
	assert_null(calc_Vec_req_view(NULL, "x", 16));
	assert_non_null(calc_Vec_req_view(NULL, "0123456789012345678901234567890", 31));
	assert_null(calc_Blob_req_view(NULL, "abcde", 5));
}

static void test_trailing_bytes_follow_the_fixed_part(void **state)
{
	unsigned char buf[32];
	calc_Blob *b = (calc_Blob *)buf;
	size_t n = 99;

	(void)state;
	assert_int_equal(CALC_BLOB_SIZE, 6);
	assert_ptr_equal(calc_Blob_data_ptr(b), buf + 6);
	memcpy(calc_Blob_data_ptr(b), "hello", 5);
	calc_Blob_set_id(b, 7);
	assert_ptr_equal(calc_Blob_get_data(b, 11, &n), buf + 6);
	assert_int_equal(n, 5);
	assert_memory_equal(calc_Blob_get_data(b, 11, &n), "hello", 5);
	calc_Blob_get_data(b, 6, &n);
	assert_int_equal(n, 0);
	calc_Blob_get_data(b, 3, &n); /* shorter than the fixed part */
	assert_int_equal(n, 0);
}

static void test_ids_are_fnv1a_32_of_service_dot_method(void **state)
{
	(void)state;
	assert_int_equal(CALC_ADD_ID, 0xbdaf910du);
	assert_int_equal(CALC_ADD_ID, fnv1a_32("Calc.add"));
	assert_int_equal(CALC_ECHO_ID, fnv1a_32("Calc.echo"));
	assert_int_equal(CALC_STATS_ID, fnv1a_32("Calc.stats"));
	assert_int_equal(SHAPES_SCALE_ID, fnv1a_32("Shapes.scale"));
	assert_int_equal(SHAPES_NAME_INPLACE_ID, fnv1a_32("Shapes.name_inplace"));
	assert_int_equal(SHAPES_LATER_BLOB_ID, fnv1a_32("Shapes.later_blob"));
	assert_int_equal(SHAPES_PING_ID, fnv1a_32("Shapes.ping"));
}

static void test_schema_hashes_are_fnv1a_64_of_the_schema_text(void **state)
{
	(void)state;
	assert_true(CALC_SCHEMA_HASH == 0x1cda670d390a9378ull);
	assert_true(CALC_SCHEMA_HASH == fnv1a_64(CALC_SCHEMA_TEXT));
	assert_true(SHAPES_SCHEMA_HASH == fnv1a_64(SHAPES_SCHEMA_TEXT));
	assert_non_null(strstr(SHAPES_SCHEMA_TEXT, "message Blob 6\nfield id u32 0 0\n"
						   "field kind u16 0 4\nfield data bytes 0 6\n"));
}

static void test_the_service_ref_names_service_and_schema(void **state)
{
	struct tern_session_opts o = {.size = sizeof(o)};
	const struct tern_service_ref both[] = {CALC_SERVICE_REF, SHAPES_SERVICE_REF};

	(void)state;
	assert_string_equal(calc_service.name, "Calc");
	assert_true(calc_service.schema_hash == CALC_SCHEMA_HASH);
	assert_string_equal(both[1].name, "Shapes");
	calc_client_opts(&o);
	assert_ptr_equal(o.services, &calc_service);
	assert_int_equal(o.nservices, 1);
}

/* ---- calc_register ------------------------------------------------------ */

static int add(tern_req *req, const calc_AddReq *in, calc_AddResp *out, void *user)
{
	(void)req, (void)in, (void)out, (void)user;
	return 0;
}

static ssize_t echo(tern_req *req, const void *in, size_t in_len, void *out, size_t cap, void *user)
{
	(void)req, (void)in, (void)out, (void)cap, (void)user;
	return (ssize_t)in_len;
}

static int stats(tern_req *req, const void *in, size_t in_len, void *user)
{
	(void)req, (void)in, (void)in_len, (void)user;
	return 0;
}

static int raw(tern_req *req, const void *in, size_t in_len, struct tern_iov *out, void *user)
{
	(void)req, (void)in, (void)in_len, (void)out, (void)user;
	return 0;
}

static int ctx_setup(void **state)
{
	tern_ctx *ctx;

	if (tern_ctx_create(NULL, &ctx))
		return -1;
	*state = ctx;
	return 0;
}

static int ctx_teardown(void **state)
{
	tern_ctx_destroy(*state);
	return 0;
}

static void test_register_serves_the_methods_and_the_service(void **state)
{
	tern_ctx *ctx = *state;
	struct calc_handlers h = {.add = add, .echo = echo, .stats = stats};
	int user;

	assert_int_equal(calc_register(ctx, &h, &user), 0);
	assert_ptr_equal(h.user_, &user);
	assert_int_equal(tern_register_raw(ctx, CALC_ADD_ID, raw, NULL), -EEXIST);
	assert_int_equal(tern_register_raw(ctx, CALC_STATS_ID, raw, NULL), -EEXIST);
	assert_int_equal(tern_service_register(ctx, "Calc", CALC_SCHEMA_HASH), -EEXIST);
	/* A second time: refused, and the first registration stands. */
	assert_int_equal(calc_register(ctx, &h, &user), -EEXIST);
	assert_int_equal(tern_unregister(ctx, CALC_ADD_ID), 0);
	assert_int_equal(tern_unregister(ctx, CALC_ECHO_ID), 0);
	assert_int_equal(tern_unregister(ctx, CALC_STATS_ID), 0);
}

static void test_register_undoes_itself_when_a_method_id_is_taken(void **state)
{
	tern_ctx *ctx = *state;
	struct calc_handlers h = {.add = add, .echo = echo, .stats = stats};

	assert_int_equal(tern_register_raw(ctx, CALC_STATS_ID, raw, NULL), 0);
	assert_int_equal(calc_register(ctx, &h, NULL), -EEXIST);
	assert_int_equal(tern_unregister(ctx, CALC_ADD_ID), -ENOENT);
	assert_int_equal(tern_unregister(ctx, CALC_ECHO_ID), -ENOENT);
	assert_int_equal(tern_unregister(ctx, CALC_STATS_ID), 0); /* someone else's: kept */
	assert_int_equal(tern_service_register(ctx, "Calc", CALC_SCHEMA_HASH), 0);
}

static void test_register_undoes_itself_when_the_service_is_taken(void **state)
{
	tern_ctx *ctx = *state;
	struct calc_handlers h = {.add = add, .echo = echo, .stats = stats};

	assert_int_equal(tern_service_register(ctx, "Calc", 1), 0);
	assert_int_equal(calc_register(ctx, &h, NULL), -EEXIST);
	assert_int_equal(tern_unregister(ctx, CALC_ADD_ID), -ENOENT);
	assert_int_equal(tern_unregister(ctx, CALC_ECHO_ID), -ENOENT);
	assert_int_equal(tern_unregister(ctx, CALC_STATS_ID), -ENOENT);
}

static void test_null_handlers_are_not_served(void **state)
{
	tern_ctx *ctx = *state;
	struct calc_handlers h = {.echo = echo};

	assert_int_equal(calc_register(ctx, &h, NULL), 0);
	assert_int_equal(tern_unregister(ctx, CALC_ADD_ID), -ENOENT);
	assert_int_equal(tern_unregister(ctx, CALC_ECHO_ID), 0);
}

/* ---- bad arguments ------------------------------------------------------- */

static void add_cb(tern_session *s, int status, const calc_AddResp *r, const char *e, void *u)
{
	(void)s, (void)status, (void)r, (void)e, (void)u;
	fail_msg("a refused call must not call back");
}

static void blob_cb(tern_session *s, int status, const calc_Blob *r, size_t len, const char *e,
		    void *u)
{
	(void)s, (void)status, (void)r, (void)len, (void)e, (void)u;
	fail_msg("a refused call must not call back");
}

static void test_bad_arguments_are_refused_not_crashed(void **state)
{
	tern_ctx *ctx = *state;
	calc_AddReq req = {{0}};
	calc_AddResp resp;
	calc_Vec *vec;
	calc_Blob *blob;
	void *buf;
	size_t cap;
	tern_callslot *slot;

	assert_int_equal(calc_register(NULL, &(struct calc_handlers){0}, NULL), -EINVAL);
	assert_int_equal(calc_register(ctx, NULL, NULL), -EINVAL);
	/* The typed proxies allocate a callback record: freed when refused (LSan). */
	assert_int_equal(calc_add(NULL, &req, add_cb, NULL, NULL), -EINVAL);
	assert_int_equal(calc_add(NULL, NULL, add_cb, NULL, NULL), -EINVAL);
	assert_int_equal(calc_add(NULL, &req, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(calc_add_sync(NULL, &req, &resp, 0), -EINVAL);
	assert_int_equal(calc_add_sync(NULL, NULL, &resp, 0), -EINVAL);
	assert_int_equal(calc_add_sync(NULL, &req, NULL, 0), -EINVAL);
	assert_int_equal(calc_echo(NULL, "x", 1, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(calc_echo_acquire(NULL, &buf, &cap, &slot), -EINVAL);
	assert_int_equal(calc_echo_commit(NULL, 1, NULL, NULL, NULL), -EINVAL);
	assert_int_equal(shapes_scale_acquire(NULL, &vec, &slot), -EINVAL);
	assert_int_equal(shapes_scale_acquire(NULL, NULL, &slot), -EINVAL);
	assert_int_equal(shapes_fill_acquire(NULL, &blob, NULL, &slot), -EINVAL);
	assert_int_equal(shapes_fill_commit(NULL, 3, blob_cb, NULL, NULL), -EINVAL);
	assert_int_equal(shapes_tag(NULL, NULL, 0, blob_cb, NULL, NULL), -EINVAL);
	assert_int_equal(calc_stats_reply_acquire(NULL, &buf, &cap), -EINVAL);
	assert_int_equal(calc_stats_reply_commit(NULL, 0), -EINVAL);
	assert_int_equal(shapes_later_reply_acquire(NULL, &vec), -EINVAL);
	assert_int_equal(shapes_later_blob_reply_acquire(NULL, &blob, &cap), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addreq_is_two_little_endian_i64),
		cmocka_unit_test(test_every_scalar_type_round_trips_at_its_offset),
		cmocka_unit_test(test_accessors_work_at_any_address),
		cmocka_unit_test(test_array_indexes_out_of_range_are_ignored),
		cmocka_unit_test(test_whole_arrays_agree_on_both_paths),
		cmocka_unit_test(test_views_check_the_length),
		cmocka_unit_test(test_prefixes_end_at_fields),
		cmocka_unit_test(test_trailing_bytes_follow_the_fixed_part),
		cmocka_unit_test(test_ids_are_fnv1a_32_of_service_dot_method),
		cmocka_unit_test(test_schema_hashes_are_fnv1a_64_of_the_schema_text),
		cmocka_unit_test(test_the_service_ref_names_service_and_schema),
		cmocka_unit_test_setup_teardown(test_register_serves_the_methods_and_the_service,
						ctx_setup, ctx_teardown),
		cmocka_unit_test_setup_teardown(
			test_register_undoes_itself_when_a_method_id_is_taken, ctx_setup,
			ctx_teardown),
		cmocka_unit_test_setup_teardown(
			test_register_undoes_itself_when_the_service_is_taken, ctx_setup,
			ctx_teardown),
		cmocka_unit_test_setup_teardown(test_null_handlers_are_not_served, ctx_setup,
						ctx_teardown),
		cmocka_unit_test_setup_teardown(test_bad_arguments_are_refused_not_crashed,
						ctx_setup, ctx_teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
