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

#define N_OF(a) (sizeof(a) / sizeof((a)[0]))

/* The next digit of *@n in base @base. */
static size_t digit(size_t *n, size_t base)
{
	size_t d = *n % base;

	*n /= base;
	return d;
}

/*
 * tern_hdr_plain() lets the receive path skip tern_hdr_check(): every
 * header it takes, the full check must take too.  Every combination of the
 * values at the edges of each rule, against the same session (64 slots of
 * 8192 bytes, seq 7 expected).
 */
static void test_plain_takes_only_what_the_check_takes(void **state)
{
	static const uint8_t kinds[] = {0,
					TERN_MSG_REQ,
					TERN_MSG_REP,
					TERN_MSG_ERR,
					TERN_MSG_ONEWAY,
					TERN_MSG_CREDIT,
					TERN_MSG_CTRL_ACK,
					TERN_MSG_CANCEL,
					TERN_MSG_KIND_MAX + 1,
					255};
	static const uint8_t flagss[] = {0, TERN_F_BULK, TERN_F_REPLY_DESC, 0x80};
	static const uint16_t slots[] = {0, 63, 64, 65535};
	static const uint32_t methods[] = {0, 1, 0xffffffffu};
	static const uint32_t lens[] = {0, 8, 10, 8192 - TERN_HDR_SIZE, 8192};
	static const uint32_t msg_lens[] = {
		0, TERN_HDR_SIZE - 1, TERN_HDR_SIZE, TERN_HDR_SIZE + 10, 8192, 8193};
	static const int32_t statuses[] = {0, -1, 1, TERN_WIRE_STATUS_MIN - 1};
	static const uint32_t seqs[] = {6, 7};
	static const uint32_t reserveds[] = {0, 1u << 31};
	size_t total = N_OF(kinds) * N_OF(flagss) * N_OF(slots) * N_OF(methods) * N_OF(lens) *
		       N_OF(msg_lens) * N_OF(statuses) * N_OF(seqs) * N_OF(reserveds);
	size_t plain = 0;

	(void)state;
	for (size_t i = 0; i < total; i++) {
		size_t n = i; /* one digit per field, each in its own base */
		struct tern_hdr h = {.call_gen = 5};
		uint32_t msg_len;
		const char *why = NULL;

		h.kind = kinds[digit(&n, N_OF(kinds))];
		h.flags = flagss[digit(&n, N_OF(flagss))];
		h.call_slot = slots[digit(&n, N_OF(slots))];
		h.method = methods[digit(&n, N_OF(methods))];
		h.len = lens[digit(&n, N_OF(lens))];
		msg_len = msg_lens[digit(&n, N_OF(msg_lens))];
		h.status = statuses[digit(&n, N_OF(statuses))];
		h.seq = seqs[digit(&n, N_OF(seqs))];
		h.reserved = reserveds[digit(&n, N_OF(reserveds))];
		if (!tern_hdr_plain(&h, msg_len, 64, 8192, 7))
			continue;
		plain++;
		assert_int_equal(tern_hdr_check(&h, msg_len, 64, 8192, 7, &why), 0);
	}
	/* ...and it does take the common case: plain requests and replies. */
	assert_true(plain > 0 && plain < total);
	{
		struct tern_hdr h = good_req();

		assert_true(tern_hdr_plain(&h, TERN_HDR_SIZE + 10, 64, 8192, 7));
		h.kind = TERN_MSG_REP;
		h.method = 0;
		assert_true(tern_hdr_plain(&h, TERN_HDR_SIZE + 10, 64, 8192, 7));
	}
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
		cmocka_unit_test(test_plain_takes_only_what_the_check_takes),
		cmocka_unit_test(test_hello_round_trip_and_match),
		cmocka_unit_test(test_hello_refuses_bad_magic_version_and_short_input),
		cmocka_unit_test(test_hello_mismatch_names_the_difference),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
