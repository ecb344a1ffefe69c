// SPDX-License-Identifier: MIT
/* The wire codec: byte layout, round trips, and every check a peer can fail. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <cmocka.h>

#include "wire.h"

static struct tern_hdr good_req(void)
{
	struct tern_hdr h = {
		.kind = TERN_MSG_REQ,
		.call_slot = 3,
		.call_gen = 0x01020304,
		.method = 0xa1b2c3d4,
		.len = 10,
		.credits = 2,
		.ctrl_credits = 1,
		.seq = 7,
	};
	return h;
}

static void test_header_bytes_are_little_endian_at_fixed_offsets(void **state)
{
	struct tern_hdr h = good_req();
	uint8_t b[TERN_HDR_SIZE];
	const uint8_t want[TERN_HDR_SIZE] = {
		1,    0,    3,	  0,	0x04, 0x03, 0x02, 0x01, /* kind flags slot gen */
		0xd4, 0xc3, 0xb2, 0xa1, 10,   0,    0,	  0,	/* method len */
		2,    0,    1,	  0,	0,    0,    0,	  0,	/* credits ctrl status */
		7,    0,    0,	  0,	0,    0,    0,	  0,	/* seq reserved */
	};

	(void)state;
	tern_hdr_encode(b, &h);
	assert_memory_equal(b, want, sizeof(want));
}

static void test_header_round_trips_negative_status(void **state)
{
	struct tern_hdr h = good_req(), d;
	uint8_t b[TERN_HDR_SIZE];

	(void)state;
	h.kind = TERN_MSG_ERR;
	h.status = -4001;
	tern_hdr_encode(b, &h);
	tern_hdr_decode(b, &d);
	assert_int_equal(d.status, -4001);
	assert_int_equal(d.call_gen, 0x01020304);
	assert_int_equal(d.method, 0xa1b2c3d4);
}

static int check(struct tern_hdr h, uint32_t msg_len, uint32_t expect_seq)
{
	const char *why = NULL;
	int rc = tern_hdr_check(&h, msg_len, 64, 8192, expect_seq, &why);
	if (rc)
		assert_non_null(why);
	return rc;
}

static void test_check_accepts_a_good_request(void **state)
{
	(void)state;
	assert_int_equal(check(good_req(), TERN_HDR_SIZE + 10, 7), 0);
}

static void test_check_rejects_short_and_oversized_messages(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	assert_int_equal(check(h, TERN_HDR_SIZE - 1, 7), TERN_EPEER);
	h.len = 8192;
	assert_int_equal(check(h, 8192 + TERN_HDR_SIZE, 7), TERN_EPEER);
}

static void test_check_rejects_length_disagreeing_with_arrival(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	assert_int_equal(check(h, TERN_HDR_SIZE + 11, 7), TERN_EPEER);
	h.len = 0xffffffff; /* would overflow an unchecked "hdr + len" */
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
}

static void test_check_rejects_unknown_kind_flags_and_reserved(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	h.kind = 0;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h.kind = TERN_MSG_KIND_MAX + 1;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h = good_req();
	h.flags = 0x80;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h = good_req();
	h.reserved = 1;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
}

static void test_check_rejects_out_of_range_call_slot(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	h.call_slot = 64;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h.call_slot = 63;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), 0);
}

static void test_check_rejects_out_of_sequence(void **state)
{
	(void)state;
	assert_int_equal(check(good_req(), TERN_HDR_SIZE + 10, 8), TERN_EPEER);
}

static void test_check_rejects_credit_message_with_payload_and_long_errors(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	h.kind = TERN_MSG_CREDIT;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h.len = 0;
	assert_int_equal(check(h, TERN_HDR_SIZE, 7), 0);
	h = good_req();
	h.kind = TERN_MSG_ERR;
	h.status = -EIO;
	h.len = TERN_ERRMSG_MAX;
	assert_int_equal(check(h, TERN_HDR_SIZE + TERN_ERRMSG_MAX, 7), 0);
	h.len = TERN_ERRMSG_MAX + 1;
	assert_int_equal(check(h, TERN_HDR_SIZE + TERN_ERRMSG_MAX + 1, 7), TERN_EPEER);
}

/* An error reply carries an error code (-1 .. -(4000 + 999)); nothing else carries one. */
static void test_check_takes_only_error_codes_as_statuses(void **state)
{
	int32_t good[] = {-1, -EIO, TERN_ENOMETHOD, TERN_EPEER, -(TERN_ERRNO_BASE + 999)};
	int32_t bad[] = {0, 1, 5, INT32_MAX, -(TERN_ERRNO_BASE + 1000), INT32_MIN};
	struct tern_hdr h = good_req();

	(void)state;
	h.kind = TERN_MSG_ERR;
	for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		h.status = good[i];
		assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), 0);
	}
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		h.status = bad[i];
		assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	}
	/* a success, a request, a credit: status 0 only */
	h = good_req();
	h.status = -EIO;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h.kind = TERN_MSG_REP;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
	h.status = 0;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), 0);
}

static void test_check_rejects_method_zero(void **state)
{
	struct tern_hdr h = good_req();
	(void)state;
	h.method = 0;
	assert_int_equal(check(h, TERN_HDR_SIZE + 10, 7), TERN_EPEER);
}

static void test_hello_round_trip_and_match(void **state)
{
	struct tern_hello a = {.version = TERN_WIRE_VERSION,
			       .slot_size = 8192,
			       .slot_count = 64,
			       .schema_hash = 0x1122334455667788ull},
			  b;
	uint8_t buf[40];
	char why[200];

	(void)state;
	tern_hello_encode(buf, &a);
	assert_int_equal(buf[0], 'T');
	assert_int_equal(buf[3], 'N');
	assert_int_equal(tern_hello_decode(buf, sizeof(buf), &b), 0);
	assert_int_equal(b.slot_size, 8192);
	assert_true(b.schema_hash == a.schema_hash);
	assert_int_equal(tern_hello_match(&a, &b, why, sizeof(why)), 0);
}

static void test_hello_refuses_bad_magic_version_and_short_input(void **state)
{
	struct tern_hello a = {.version = TERN_WIRE_VERSION, .slot_size = 8192, .slot_count = 64},
			  b;
	uint8_t buf[40];

	(void)state;
	tern_hello_encode(buf, &a);
	assert_int_equal(tern_hello_decode(buf, 39, &b), TERN_EVERSION);
	assert_int_equal(tern_hello_decode(NULL, 0, &b), TERN_EVERSION);
	buf[0] ^= 0xff;
	assert_int_equal(tern_hello_decode(buf, sizeof(buf), &b), TERN_EVERSION);
	assert_int_equal(b.version, 0); /* not tern's: nothing read */
	a.version = TERN_WIRE_VERSION + 1;
	tern_hello_encode(buf, &a);
	assert_int_equal(tern_hello_decode(buf, sizeof(buf), &b), TERN_EVERSION);
	/* The previous version (2: before TERN_MSG_CANCEL) too; what it said
	 * is still read, for the error message and a refusal's status. */
	a.version = TERN_WIRE_VERSION - 1;
	a.status = TERN_EVERSION;
	tern_hello_encode(buf, &a);
	assert_int_equal(tern_hello_decode(buf, sizeof(buf), &b), TERN_EVERSION);
	assert_int_equal(b.version, TERN_WIRE_VERSION - 1);
	assert_int_equal(b.status, TERN_EVERSION);
	assert_true(TERN_WIRE_VERSION >= 3);
}

static void test_hello_mismatch_names_the_difference(void **state)
{
	struct tern_hello a = {.slot_size = 8192, .slot_count = 64, .schema_hash = 1};
	struct tern_hello b = a;
	char why[200];

	(void)state;
	b.slot_size = 4096;
	assert_int_equal(tern_hello_match(&a, &b, why, sizeof(why)), TERN_EGEOMETRY);
	assert_non_null(strstr(why, "4096"));
	b = a;
	b.schema_hash = 2;
	assert_int_equal(tern_hello_match(&a, &b, why, sizeof(why)), TERN_ESCHEMA);
	b.schema_hash = 0; /* 0: the peer does not check */
	assert_int_equal(tern_hello_match(&a, &b, why, sizeof(why)), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_header_bytes_are_little_endian_at_fixed_offsets),
		cmocka_unit_test(test_header_round_trips_negative_status),
		cmocka_unit_test(test_check_accepts_a_good_request),
		cmocka_unit_test(test_check_rejects_short_and_oversized_messages),
		cmocka_unit_test(test_check_rejects_length_disagreeing_with_arrival),
		cmocka_unit_test(test_check_rejects_unknown_kind_flags_and_reserved),
		cmocka_unit_test(test_check_rejects_out_of_range_call_slot),
		cmocka_unit_test(test_check_rejects_out_of_sequence),
		cmocka_unit_test(test_check_rejects_credit_message_with_payload_and_long_errors),
		cmocka_unit_test(test_check_takes_only_error_codes_as_statuses),
		cmocka_unit_test(test_check_rejects_method_zero),
		cmocka_unit_test(test_hello_round_trip_and_match),
		cmocka_unit_test(test_hello_refuses_bad_magic_version_and_short_input),
		cmocka_unit_test(test_hello_mismatch_names_the_difference),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
