// SPDX-License-Identifier: MIT
/*
 * The soft-RNR monitor on fake sysfs trees: discovery of mlx5-like and
 * rxe-like layouts, the canonical map, deltas, rates, resets, missing and
 * garbage files, hot-plug, and the three output formats.
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <cmocka.h>

#include "fake_sysfs.h"
#include "tern/rnr.h"

#define HW "hw_counters"
#define IB "counters"

struct fixture {
	struct fake_sysfs fs;
	uint64_t now_ns; /* the injected clock */
};

static uint64_t fake_clock(void *arg)
{
	return ((struct fixture *)arg)->now_ns;
}

static int setup(void **state)
{
	struct fixture *f = calloc(1, sizeof(*f));

	if (!f || fake_sysfs_init(&f->fs))
		return -1;
	f->now_ns = 1000000000;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	fake_sysfs_cleanup(&f->fs);
	free(f);
	return 0;
}

static tern_rnr_monitor *monitor(struct fixture *f, const char *device)
{
	struct tern_rnr_opts o;
	tern_rnr_monitor *m = NULL;

	tern_rnr_opts_init(&o);
	o.sysfs_root = f->fs.root;
	o.device = device;
	o.clock_ns = fake_clock;
	o.clock_arg = f;
	assert_int_equal(tern_rnr_monitor_create(&o, &m), 0);
	assert_non_null(m);
	return m;
}

static tern_rnr_snapshot *read_now(tern_rnr_monitor *m)
{
	tern_rnr_snapshot *s = NULL;

	assert_int_equal(tern_rnr_monitor_read(m, &s), 0);
	assert_non_null(s);
	return s;
}

static const struct tern_rnr_counter *get(const tern_rnr_snapshot *s, const char *dev,
					  uint32_t port, const char *name)
{
	const struct tern_rnr_counter *c = NULL;

	assert_int_equal(tern_rnr_snapshot_find(s, dev, port, name, &c), 0);
	assert_non_null(c);
	return c;
}

static const struct tern_rnr_port *port_of(const tern_rnr_snapshot *s, const char *dev,
					   uint32_t port)
{
	size_t n;
	const struct tern_rnr_port *p = tern_rnr_snapshot_ports(s, &n);

	for (size_t i = 0; i < n; i++)
		if (p[i].port == port && strcmp(p[i].device, dev) == 0)
			return &p[i];
	return NULL;
}

/* Everything a snapshot prints, as one string (caller frees). */
static char *render(const tern_rnr_snapshot *s, const tern_rnr_snapshot *prev,
		    enum tern_rnr_format fmt)
{
	struct {
		char *buf;
		size_t len;
	} *m = calloc(1, sizeof(*m));
	char *out;
	FILE *f;

	/* open_memstream() keeps the address of its buffer pointer: held on
	 * the heap, gcc -O3 does not mistake the result for a pointer to this
	 * frame (-Wdangling-pointer). */
	assert_non_null(m);
	f = open_memstream(&m->buf, &m->len);
	assert_non_null(f);
	assert_int_equal(tern_rnr_snapshot_write(s, prev, fmt, f), 0);
	fclose(f);
	out = m->buf;
	free(m);
	return out;
}

/* ---- discovery and the canonical map ------------------------------------------ */

static void test_discovers_ports_of_mlx5_and_rxe_layouts(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_port *p;
	const struct tern_rnr_counter *c;
	size_t n;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	p = tern_rnr_snapshot_ports(s, &n);
	assert_int_equal(n, 3); /* sorted: device, then port */
	assert_string_equal(p[0].device, "mlx5_0");
	assert_int_equal(p[0].port, 0); /* device-wide hw_counters */
	assert_string_equal(p[1].device, "mlx5_0");
	assert_int_equal(p[1].port, 1);
	assert_string_equal(p[2].device, "rxe0");
	assert_int_equal(p[2].port, 1);
	for (size_t i = 0; i < n; i++)
		assert_int_equal(p[i].state, TERN_RNR_PORT_PRESENT);
	/* rxe on 6.1: 15 counters, all hw_counters; lifespan is a setting. */
	assert_int_equal(p[2].n_counters, 15);
	assert_int_equal(p[2].lifespan_ms, 12);
	assert_int_equal(p[1].lifespan_ms, 10);
	assert_int_equal(tern_rnr_snapshot_find(s, "rxe0", 1, "lifespan", &c), -ENOENT);
	/* mlx5: 12 Q counters and 4 PMA counters. */
	assert_int_equal(p[1].n_counters, 16);
	c = get(s, "mlx5_0", 1, "counters/port_xmit_data");
	assert_int_equal(c->group, TERN_RNR_IB_COUNTERS);
	assert_int_equal(c->status, TERN_RNR_OK);
	/* link_downed is in both groups on some devices: hw_counters wins the
	 * bare name, the prefix picks either. */
	assert_int_equal(get(s, "mlx5_0", 1, "link_downed")->group, TERN_RNR_IB_COUNTERS);
	assert_int_equal(get(s, "rxe0", 1, "hw_counters/link_downed")->group, TERN_RNR_HW_COUNTERS);
	assert_int_equal(get(s, "mlx5_0", 0, "rx_icrc_encapsulated")->status, TERN_RNR_OK);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_driver_names_map_onto_canonical_names(void **state)
{
	struct fixture *f = *state;
	static const char *const expect[][3] = {
		{TERN_RNR_RESPONDER_OUT_OF_BUFFER, "out_of_buffer", "send_rnr_err"},
		{TERN_RNR_REQUESTER_RNR_NAK, "rnr_nak_retry_err", "rcvd_rnr_err"},
		{TERN_RNR_TRANSPORT_RETRIES_EXCEEDED, "local_ack_timeout_err",
		 "retry_exceeded_err"},
	};
	/* canonical, mlx5 (NULL: none), rxe */
	static const char *const retrans[][3] = {
		{TERN_RNR_REQUESTER_RETRIES, NULL, "completer_retry_err"},
		{TERN_RNR_REQUESTER_SEQUENCE_NAK, "packet_seq_err", "rcvd_seq_err"},
		{TERN_RNR_RESPONDER_DUPLICATE_REQUEST, "duplicate_request", "duplicate_request"},
		{TERN_RNR_RESPONDER_OUT_OF_SEQUENCE, "out_of_sequence", "out_of_seq_request"},
	};
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;
	const struct tern_rnr_port *p;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
		c = get(s, "mlx5_0", 1, expect[i][0]);
		assert_string_equal(c->raw, expect[i][1]);
		assert_string_equal(c->name, expect[i][0]);
		assert_string_equal(c->canonical, expect[i][0]);
		c = get(s, "rxe0", 1, expect[i][0]);
		assert_string_equal(c->raw, expect[i][2]);
	}
	assert_string_equal(get(s, "rxe0", 1, TERN_RNR_RNR_RETRIES_EXCEEDED)->raw,
			    "retry_rnr_exceeded_err");
	for (size_t i = 0; i < sizeof(retrans) / sizeof(retrans[0]); i++) {
		c = get(s, "rxe0", 1, retrans[i][0]);
		assert_string_equal(c->raw, retrans[i][2]);
		assert_string_equal(c->canonical, retrans[i][0]);
		if (retrans[i][1]) {
			c = get(s, "mlx5_0", 1, retrans[i][0]);
			assert_string_equal(c->raw, retrans[i][1]);
			assert_string_equal(c->name, retrans[i][0]);
		}
	}
	/* mlx5 has no single counter of requester retries. */
	assert_int_equal(tern_rnr_snapshot_find(s, "mlx5_0", 1, TERN_RNR_REQUESTER_RETRIES, &c),
			 -ENOENT);
	/* This mlx5 predates req_rnr_retries_exceeded: no such canonical counter. */
	assert_int_equal(tern_rnr_snapshot_find(s, "mlx5_0", 1, TERN_RNR_RNR_RETRIES_EXCEEDED, &c),
			 -ENOENT);
	/* Unmapped counters keep their raw names. */
	c = get(s, "rxe0", 1, "sent_pkts");
	assert_string_equal(c->name, "sent_pkts");
	assert_null(c->canonical);
	/* Canonical counters come first in a port's list, in the canonical
	 * order: the four RNR ones, then the four retransmission ones. */
	p = port_of(s, "rxe0", 1);
	assert_string_equal(p->counters[0].name, TERN_RNR_RESPONDER_OUT_OF_BUFFER);
	assert_string_equal(p->counters[3].name, TERN_RNR_TRANSPORT_RETRIES_EXCEEDED);
	assert_string_equal(p->counters[4].name, TERN_RNR_REQUESTER_RETRIES);
	assert_string_equal(p->counters[7].name, TERN_RNR_RESPONDER_OUT_OF_SEQUENCE);
	assert_null(p->counters[8].canonical);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_canonical_name_table(void **state)
{
	/* raw (mlx5 or rxe), canonical */
	static const char *const map[][2] = {
		{"out_of_buffer", "responder_out_of_buffer"},
		{"send_rnr_err", "responder_out_of_buffer"},
		{"rnr_nak_retry_err", "requester_rnr_nak"},
		{"rcvd_rnr_err", "requester_rnr_nak"},
		{"req_rnr_retries_exceeded", "rnr_retries_exceeded"},
		{"retry_rnr_exceeded_err", "rnr_retries_exceeded"},
		{"req_transport_retries_exceeded", "transport_retries_exceeded"},
		{"local_ack_timeout_err", "transport_retries_exceeded"},
		{"retry_exceeded_err", "transport_retries_exceeded"},
		{"completer_retry_err", "requester_retries"},
		{"packet_seq_err", "requester_sequence_nak"},
		{"rcvd_seq_err", "requester_sequence_nak"},
		{"duplicate_request", "responder_duplicate_request"},
		{"out_of_sequence", "responder_out_of_sequence"},
		{"out_of_seq_request", "responder_out_of_sequence"},
	};

	(void)state;
	for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
		assert_string_equal(tern_rnr_canonical_name(map[i][0]), map[i][1]);
		assert_true(tern_rnr_is_canonical(map[i][1]));
		assert_false(tern_rnr_is_canonical(map[i][0]));
	}
	assert_null(tern_rnr_canonical_name("sent_pkts"));
	assert_null(tern_rnr_canonical_name("implied_nak_seq_err"));
	assert_null(tern_rnr_canonical_name(NULL));
	assert_false(tern_rnr_is_canonical(NULL));
}

static void test_transport_counter_prefers_the_exact_mlx5_one(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;

	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	assert_int_equal(
		fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "req_transport_retries_exceeded", 4),
		0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "req_rnr_retries_exceeded", 2),
			 0);
	m = monitor(f, NULL);
	s = read_now(m);
	assert_string_equal(get(s, "mlx5_0", 1, TERN_RNR_TRANSPORT_RETRIES_EXCEEDED)->raw,
			    "req_transport_retries_exceeded");
	assert_string_equal(get(s, "mlx5_0", 1, TERN_RNR_RNR_RETRIES_EXCEEDED)->raw,
			    "req_rnr_retries_exceeded");
	/* The fallback stays visible under its own name. */
	c = get(s, "mlx5_0", 1, "local_ack_timeout_err");
	assert_string_equal(c->raw, "local_ack_timeout_err");
	assert_null(c->canonical);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_raw_names_of_other_drivers_are_aliases(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	assert_string_equal(get(s, "rxe0", 1, "out_of_buffer")->raw, "send_rnr_err");
	assert_string_equal(get(s, "rxe0", 1, "local_ack_timeout_err")->raw, "retry_exceeded_err");
	assert_string_equal(get(s, "mlx5_0", 1, "send_rnr_err")->raw, "out_of_buffer");
	assert_string_equal(get(s, "mlx5_0", 1, "rcvd_rnr_err")->raw, "rnr_nak_retry_err");
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

/* ---- readings -------------------------------------------------------------------- */

static void test_delta_counts_from_the_baseline(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;

	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 100), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 130), 0);
	s = read_now(m);
	c = get(s, "mlx5_0", 1, TERN_RNR_RESPONDER_OUT_OF_BUFFER);
	assert_int_equal(c->value, 130);
	assert_int_equal(c->delta, 30);
	assert_int_equal(c->total, 30);
	assert_int_equal(c->resets, 0);
	assert_int_equal(get(s, "mlx5_0", 1, "rnr_nak_retry_err")->delta, 0);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_rebaseline_starts_deltas_again(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	uint64_t d = 99;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 10), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 20), 0);
	assert_int_equal(tern_rnr_monitor_delta(m, "rxe0", 1, "responder_out_of_buffer", &d), 0);
	assert_int_equal(d, 10);
	assert_int_equal(tern_rnr_monitor_rebaseline(m), 0);
	assert_int_equal(tern_rnr_monitor_delta(m, "rxe0", 1, "responder_out_of_buffer", &d), 0);
	assert_int_equal(d, 0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 25), 0);
	assert_int_equal(tern_rnr_monitor_delta(m, "rxe0", 1, "responder_out_of_buffer", &d), 0);
	assert_int_equal(d, 5);
	tern_rnr_monitor_destroy(m);
}

static void test_delta_with_no_device_sums_every_port(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	uint64_t d = 0;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 3), 0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 2), 0);
	assert_int_equal(tern_rnr_monitor_delta(m, NULL, 0, TERN_RNR_RESPONDER_OUT_OF_BUFFER, &d),
			 0);
	assert_int_equal(d, 5);
	assert_int_equal(
		tern_rnr_monitor_delta(m, "nosuch0", 1, TERN_RNR_RESPONDER_OUT_OF_BUFFER, &d),
		-ENOENT);
	assert_int_equal(tern_rnr_monitor_delta(m, NULL, 0, "no_such_counter", &d), -ENOENT);
	tern_rnr_monitor_destroy(m);
}

static void test_rate_between_two_snapshots_uses_their_times(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *a, *b;
	double r = 0;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	f->now_ns = 10000000000ull;
	a = read_now(m);
	assert_int_equal(tern_rnr_snapshot_time_ns(a), 10000000000ull);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 50), 0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 10), 0);
	f->now_ns = 12000000000ull;
	b = read_now(m);
	assert_int_equal(tern_rnr_rate(a, b, "rxe0", 1, TERN_RNR_RESPONDER_OUT_OF_BUFFER, &r), 0);
	assert_true(r == 25.0);
	assert_int_equal(tern_rnr_rate(a, b, NULL, 0, "out_of_buffer", &r), 0);
	assert_true(r == 30.0);
	assert_int_equal(tern_rnr_rate(a, b, "rxe0", 1, "sent_pkts", &r), 0);
	assert_true(r == 0.0);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_monitor_destroy(m);
}

static void test_rate_refuses_other_monitors_and_reversed_time(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m1, *m2;
	tern_rnr_snapshot *a, *b, *c;
	double r;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m1 = monitor(f, NULL);
	m2 = monitor(f, NULL);
	a = read_now(m1);
	f->now_ns += 1000000000;
	b = read_now(m1);
	c = read_now(m2);
	assert_int_equal(tern_rnr_rate(a, c, "rxe0", 1, "sent_pkts", &r), -EINVAL);
	assert_int_equal(tern_rnr_rate(b, a, "rxe0", 1, "sent_pkts", &r), -EINVAL);
	assert_int_equal(tern_rnr_rate(a, a, "rxe0", 1, "sent_pkts", &r), -EINVAL);
	assert_int_equal(tern_rnr_rate(a, b, "rxe0", 1, "sent_pkts", &r), 0);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_snapshot_free(c);
	tern_rnr_monitor_destroy(m1);
	tern_rnr_monitor_destroy(m2);
}

static void test_rate_across_a_device_that_came_back(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *a, *b, *s;
	double r;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 10), 0);
	a = read_now(m); /* total 10 */
	assert_int_equal(fake_sysfs_remove(&f->fs, "class/infiniband/rxe0"), 0);
	tern_rnr_snapshot_free(read_now(m)); /* gone */
	tern_rnr_snapshot_free(read_now(m)); /* forgotten */
	assert_int_equal(fake_sysfs_symlink(&f->fs, "../../devices/virtual/infiniband/rxe0",
					    "class/infiniband/rxe0"),
			 0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 0), 0);
	s = read_now(m); /* new, total 0 */
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 2), 0);
	f->now_ns += 2000000000;
	b = read_now(m); /* total 2, below a's 10: counted from first sight */
	assert_int_equal(tern_rnr_rate(a, b, "rxe0", 1, "send_rnr_err", &r), 0);
	assert_true(r == 1.0);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_counter_reset_is_not_a_huge_delta(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *a, *b, *s;
	const struct tern_rnr_counter *c;
	double r;

	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 1000), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 1500), 0);
	a = read_now(m);
	/* The driver reloads: the counter starts again from zero and reaches 20. */
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 20), 0);
	f->now_ns += 4000000000ull;
	b = read_now(m);
	c = get(b, "mlx5_0", 1, "out_of_buffer");
	assert_int_equal(c->value, 20);
	assert_int_equal(c->delta, 520); /* 500 before the reset, 20 after */
	assert_int_equal(c->resets, 1);
	assert_int_equal(tern_rnr_rate(a, b, "mlx5_0", 1, "out_of_buffer", &r), 0);
	assert_true(r == 5.0); /* 20 over 4 s, not (20 - 1500) as a u64 */
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "mlx5_0", 1, HW, "out_of_buffer", 30), 0);
	s = read_now(m);
	assert_int_equal(get(s, "mlx5_0", 1, "out_of_buffer")->delta, 530);
	assert_int_equal(get(s, "mlx5_0", 1, "out_of_buffer")->resets, 1);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_snapshot_free(s);
	/* A new baseline forgets the reset. */
	assert_int_equal(tern_rnr_monitor_rebaseline(m), 0);
	s = read_now(m);
	assert_int_equal(get(s, "mlx5_0", 1, "out_of_buffer")->resets, 0);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

/* ---- bad sysfs contents ------------------------------------------------------------ */

static void test_missing_file_is_reported_per_counter(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;
	uint64_t d;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 5), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 8), 0);
	s = read_now(m);
	tern_rnr_snapshot_free(s);
	assert_int_equal(fake_sysfs_remove(&f->fs, "class/infiniband/rxe0/ports/1/hw_counters/"
						   "send_rnr_err"),
			 0);
	s = read_now(m);
	c = get(s, "rxe0", 1, TERN_RNR_RESPONDER_OUT_OF_BUFFER);
	assert_int_equal(c->status, TERN_RNR_MISSING);
	assert_int_equal(c->err, -ENOENT);
	assert_int_equal(c->value, 0);
	assert_int_equal(c->delta, 3); /* what was counted before stays */
	assert_int_equal(get(s, "rxe0", 1, "rcvd_rnr_err")->status, TERN_RNR_OK);
	assert_int_equal(tern_rnr_snapshot_delta(s, "rxe0", 1, "send_rnr_err", &d), -ENODATA);
	assert_int_equal(d, 3);
	assert_int_equal(tern_rnr_snapshot_delta(s, "rxe0", 1, "rcvd_rnr_err", &d), 0);
	tern_rnr_snapshot_free(s);
	/* It comes back, higher: counted on from the last good value. */
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 10), 0);
	s = read_now(m);
	c = get(s, "rxe0", 1, TERN_RNR_RESPONDER_OUT_OF_BUFFER);
	assert_int_equal(c->status, TERN_RNR_OK);
	assert_int_equal(c->delta, 5);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_garbage_is_reported_per_counter(void **state)
{
	struct fixture *f = *state;
	static const char *const garbage[] = {
		"",
		"\n",
		"abc\n",
		"-1\n",
		"+5\n",
		"12abc\n",
		"0x10\n",
		"1 2\n",
		"18446744073709551616\n", /* UINT64_MAX + 1 */
		"99999999999999999999999\n",
		"N/A (no PMA)\n",
		"1234567890123456789012345678901234567890123456789012345678901234567890\n",
	};
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 1), 0);
	m = monitor(f, NULL);
	for (size_t i = 0; i < sizeof(garbage) / sizeof(garbage[0]); i++) {
		assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "send_rnr_err", garbage[i]),
				 0);
		s = read_now(m);
		c = get(s, "rxe0", 1, "send_rnr_err");
		if (c->status != TERN_RNR_GARBAGE)
			fail_msg("'%s' read as %s", garbage[i], tern_rnr_status_name(c->status));
		assert_int_equal(c->value, 0);
		assert_int_equal(get(s, "rxe0", 1, "sent_pkts")->status, TERN_RNR_OK);
		tern_rnr_snapshot_free(s);
	}
	tern_rnr_monitor_destroy(m);
}

static void test_value_longer_than_any_number_is_garbage(void **state)
{
	struct fixture *f = *state;
	static const char nul_inside[] = {'1', '2', '\0', '3', '4', '\n'};
	char padded[128];
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 1), 0);
	m = monitor(f, NULL);
	/* Its first 64 bytes read as "7" and blanks; the rest is not a number. */
	snprintf(padded, sizeof(padded), "7%80sjunk\n", "");
	assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "send_rnr_err", padded), 0);
	assert_int_equal(fake_sysfs_write_bytes(
				 &f->fs, "class/infiniband/rxe0/ports/1/hw_counters/sent_pkts",
				 nul_inside, sizeof(nul_inside)),
			 0);
	s = read_now(m);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->status, TERN_RNR_GARBAGE);
	assert_int_equal(get(s, "rxe0", 1, "sent_pkts")->status, TERN_RNR_GARBAGE);
	assert_int_equal(get(s, "rxe0", 1, "rcvd_rnr_err")->status, TERN_RNR_OK);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_well_formed_values_parse(void **state)
{
	struct fixture *f = *state;
	static const struct {
		const char *text;
		uint64_t value;
	} ok[] = {
		{"0\n", 0},
		{"7", 7},
		{"  42 \n", 42},
		{"18446744073709551615\n", UINT64_MAX},
	};
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
		assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "sent_pkts", ok[i].text), 0);
		s = read_now(m);
		assert_int_equal(get(s, "rxe0", 1, "sent_pkts")->status, TERN_RNR_OK);
		assert_true(get(s, "rxe0", 1, "sent_pkts")->value == ok[i].value);
		tern_rnr_snapshot_free(s);
	}
	tern_rnr_monitor_destroy(m);
}

static void test_garbage_does_not_break_the_total(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	uint64_t d;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 100), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "send_rnr_err", "oops\n"), 0);
	s = read_now(m);
	assert_int_equal(tern_rnr_snapshot_delta(s, "rxe0", 1, "send_rnr_err", &d), -EBADMSG);
	tern_rnr_snapshot_free(s);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 110), 0);
	assert_int_equal(tern_rnr_monitor_delta(m, "rxe0", 1, "send_rnr_err", &d), 0);
	assert_int_equal(d, 10);
	tern_rnr_monitor_destroy(m);
}

static void test_unreadable_counter_reports_the_errno(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;
	uint64_t d;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	/* Opens fine, and read() fails: a link to a directory. */
	assert_int_equal(
		fake_sysfs_symlink(&f->fs, "..", "class/infiniband/rxe0/ports/1/hw_counters/weird"),
		0);
	m = monitor(f, NULL);
	s = read_now(m);
	c = get(s, "rxe0", 1, "weird");
	assert_int_equal(c->status, TERN_RNR_UNREADABLE);
	assert_int_equal(c->err, -EISDIR);
	assert_int_equal(tern_rnr_snapshot_delta(s, "rxe0", 1, "weird", &d), -EISDIR);
	assert_int_equal(get(s, "rxe0", 1, "sent_pkts")->status, TERN_RNR_OK);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_open_errors_tell_missing_from_unreadable(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	/* Listed, then not there when opened: missing.  A link loop: unreadable. */
	assert_int_equal(fake_sysfs_symlink(&f->fs, "nowhere",
					    "class/infiniband/rxe0/ports/1/hw_counters/dangling"),
			 0);
	assert_int_equal(fake_sysfs_symlink(&f->fs, "loop",
					    "class/infiniband/rxe0/ports/1/hw_counters/loop"),
			 0);
	m = monitor(f, NULL);
	s = read_now(m);
	c = get(s, "rxe0", 1, "dangling");
	assert_int_equal(c->status, TERN_RNR_MISSING);
	assert_int_equal(c->err, -ENOENT);
	c = get(s, "rxe0", 1, "loop");
	assert_int_equal(c->status, TERN_RNR_UNREADABLE);
	assert_int_equal(c->err, -ELOOP);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_fifo_reads_as_garbage_instead_of_hanging(void **state)
{
	struct fixture *f = *state;
	char path[PATH_MAX];
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	fake_sysfs_path(&f->fs, "class/infiniband/rxe0/ports/1/hw_counters/pipe", path,
			sizeof(path));
	assert_int_equal(mkfifo(path, 0600), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	assert_int_equal(get(s, "rxe0", 1, "pipe")->status, TERN_RNR_GARBAGE);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_files_per_group_are_bounded(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	char name[32];

	for (int i = 0; i < 1100; i++) {
		snprintf(name, sizeof(name), "c%04d", i);
		assert_int_equal(fake_sysfs_set_u64(&f->fs, "big0", 1, HW, name, (uint64_t)i), 0);
	}
	m = monitor(f, NULL);
	s = read_now(m);
	assert_int_equal(port_of(s, "big0", 1)->n_counters, 1024);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

/* ---- hot-plug ------------------------------------------------------------------------ */

static void test_device_that_appears_gets_a_baseline_at_first_sight(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_port *p;

	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 77), 0);
	s = read_now(m);
	p = port_of(s, "rxe0", 1);
	assert_non_null(p);
	assert_int_equal(p->state, TERN_RNR_PORT_NEW);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->value, 77);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->delta, 0);
	assert_int_equal(port_of(s, "mlx5_0", 1)->state, TERN_RNR_PORT_PRESENT);
	tern_rnr_snapshot_free(s);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 80), 0);
	s = read_now(m);
	assert_int_equal(port_of(s, "rxe0", 1)->state, TERN_RNR_PORT_PRESENT);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->delta, 3);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_device_that_disappears_is_reported_gone_once(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	const struct tern_rnr_port *p;
	uint64_t d;

	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 4), 0);
	s = read_now(m);
	tern_rnr_snapshot_free(s);
	/* rdma link delete rxe0: the class link and the device go. */
	assert_int_equal(fake_sysfs_remove(&f->fs, "class/infiniband/rxe0"), 0);
	assert_int_equal(fake_sysfs_remove(&f->fs, "devices/virtual/infiniband/rxe0"), 0);
	s = read_now(m);
	p = port_of(s, "rxe0", 1);
	assert_non_null(p);
	assert_int_equal(p->state, TERN_RNR_PORT_GONE);
	assert_int_equal(p->counters[0].status, TERN_RNR_MISSING);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->delta, 4);
	assert_int_equal(port_of(s, "mlx5_0", 1)->state, TERN_RNR_PORT_PRESENT);
	tern_rnr_snapshot_free(s);
	s = read_now(m);
	assert_null(port_of(s, "rxe0", 1));
	assert_non_null(port_of(s, "mlx5_0", 1));
	tern_rnr_snapshot_free(s);
	assert_int_equal(tern_rnr_monitor_delta(m, "rxe0", 1, "send_rnr_err", &d), -ENOENT);
	/* It comes back: a new device, with a new baseline. */
	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 9), 0);
	s = read_now(m);
	assert_int_equal(port_of(s, "rxe0", 1)->state, TERN_RNR_PORT_NEW);
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->delta, 0);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_every_device_gone_leaves_an_empty_reading(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	size_t n = 9;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_remove(&f->fs, "class"), 0);
	s = read_now(m);
	tern_rnr_snapshot_ports(s, &n);
	assert_int_equal(n, 1); /* gone, once */
	tern_rnr_snapshot_free(s);
	s = read_now(m);
	assert_null(tern_rnr_snapshot_ports(s, &n));
	assert_int_equal(n, 0);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_device_filter_is_a_glob(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	size_t n;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe1", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 0), 0);
	m = monitor(f, "rxe*");
	s = read_now(m);
	tern_rnr_snapshot_ports(s, &n);
	assert_int_equal(n, 2);
	assert_null(port_of(s, "mlx5_0", 1));
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
	m = monitor(f, "mlx5_0");
	s = read_now(m);
	tern_rnr_snapshot_ports(s, &n);
	assert_int_equal(n, 2); /* port 0 and port 1 */
	assert_non_null(port_of(s, "mlx5_0", 1));
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_no_infiniband_class_means_no_devices(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	size_t n = 9;
	uint64_t d;

	m = monitor(f, NULL);
	s = read_now(m);
	assert_null(tern_rnr_snapshot_ports(s, &n));
	assert_int_equal(n, 0);
	assert_int_equal(tern_rnr_snapshot_delta(s, NULL, 0, TERN_RNR_RESPONDER_OUT_OF_BUFFER, &d),
			 -ENOENT);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_snapshot_outlives_its_monitor(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 3), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	tern_rnr_monitor_destroy(m);
	assert_string_equal(get(s, "rxe0", 1, "send_rnr_err")->name, "responder_out_of_buffer");
	assert_int_equal(get(s, "rxe0", 1, "send_rnr_err")->value, 3);
	tern_rnr_snapshot_free(s);
}

/* ---- arguments ------------------------------------------------------------------------ */

static void test_bad_arguments_are_einval(void **state)
{
	struct fixture *f = *state;
	struct tern_rnr_opts o;
	tern_rnr_monitor *m = (tern_rnr_monitor *)&o;
	tern_rnr_snapshot *s;
	const struct tern_rnr_counter *c;
	uint64_t d;
	double r;

	assert_int_equal(tern_rnr_monitor_create(NULL, NULL), -EINVAL);
	tern_rnr_opts_init(&o);
	o.sysfs_root = f->fs.root;
	o.size = 1;
	assert_int_equal(tern_rnr_monitor_create(&o, &m), -EINVAL);
	assert_null(m);
	o.size = sizeof(o) + 8; /* a newer caller's struct we cannot know */
	assert_int_equal(tern_rnr_monitor_create(&o, &m), -EINVAL);
	o.size = sizeof(o);
	o.sysfs_root = "";
	assert_int_equal(tern_rnr_monitor_create(&o, &m), -EINVAL);
	o.sysfs_root = f->fs.root;
	assert_int_equal(tern_rnr_monitor_create(&o, &m), 0);
	assert_int_equal(tern_rnr_monitor_read(NULL, &s), -EINVAL);
	assert_int_equal(tern_rnr_monitor_read(m, NULL), -EINVAL);
	assert_int_equal(tern_rnr_monitor_rebaseline(NULL), -EINVAL);
	assert_int_equal(tern_rnr_monitor_delta(m, NULL, 0, NULL, &d), -EINVAL);
	assert_int_equal(tern_rnr_monitor_delta(m, NULL, 0, "x", NULL), -EINVAL);
	assert_int_equal(tern_rnr_monitor_delta(NULL, NULL, 0, "x", &d), -EINVAL);
	s = read_now(m);
	assert_int_equal(tern_rnr_snapshot_find(s, NULL, 1, "x", &c), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_find(s, "rxe0", 1, NULL, &c), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_find(NULL, "rxe0", 1, "x", &c), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_find(s, "rxe0", 1, "x", NULL), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_delta(NULL, NULL, 0, "x", &d), -EINVAL);
	assert_int_equal(tern_rnr_rate(NULL, s, NULL, 0, "x", &r), -EINVAL);
	assert_int_equal(tern_rnr_rate(s, NULL, NULL, 0, "x", &r), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_write(NULL, NULL, TERN_RNR_FORMAT_PROM, stdout),
			 -EINVAL);
	assert_int_equal(tern_rnr_snapshot_write(s, NULL, TERN_RNR_FORMAT_PROM, NULL), -EINVAL);
	assert_int_equal(tern_rnr_snapshot_write(s, NULL, (enum tern_rnr_format)42, stdout),
			 -EINVAL);
	assert_int_equal(tern_rnr_snapshot_time_ns(NULL), 0);
	assert_null(tern_rnr_snapshot_ports(NULL, NULL));
	tern_rnr_snapshot_free(NULL);
	tern_rnr_monitor_destroy(NULL);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_older_callers_opts_get_defaults_for_new_fields(void **state)
{
	struct fixture *f = *state;
	struct tern_rnr_opts o;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;

	/* A caller built before clock_ns existed: its struct ends earlier, and
	 * whatever lies past its size must not be read as a clock. */
	memset(&o, 0xA5, sizeof(o));
	o.size = offsetof(struct tern_rnr_opts, clock_ns);
	o.sysfs_root = f->fs.root;
	o.device = NULL;
	assert_int_equal(tern_rnr_monitor_create(&o, &m), 0);
	s = read_now(m);
	assert_true(tern_rnr_snapshot_time_ns(s) != f->now_ns);
	assert_true(tern_rnr_snapshot_time_ns(s) > 0);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
	/* NULL options: the defaults, reading the real /sys (maybe empty). */
	assert_int_equal(tern_rnr_monitor_create(NULL, &m), 0);
	tern_rnr_monitor_destroy(m);
}

/* ---- output ----------------------------------------------------------------------------- */

static void test_prom_output_line_by_line(void **state)
{
	struct fixture *f = *state;
	static const char *const expect[] = {
		"# HELP tern_rnr_counter_total RDMA port counter as read from sysfs; counter is "
		"tern's canonical name where there is one, raw the driver's file name.",
		"# TYPE tern_rnr_counter_total counter",
		"tern_rnr_counter_total{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"responder_out_of_buffer\",raw=\"send_rnr_err\"} 7",
		"tern_rnr_counter_total{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"sent_pkts\",raw=\"sent_pkts\"} 9",
		"# HELP tern_rnr_counter_delta Increase since the monitor's baseline, corrected "
		"for "
		"counter resets.",
		"# TYPE tern_rnr_counter_delta gauge",
		"tern_rnr_counter_delta{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"responder_out_of_buffer\",raw=\"send_rnr_err\"} 2",
		"tern_rnr_counter_delta{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"requester_rnr_nak\",raw=\"rcvd_rnr_err\"} 0",
		"tern_rnr_counter_delta{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"sent_pkts\",raw=\"sent_pkts\"} 0",
		"# HELP tern_rnr_counter_resets Times the counter went backwards (was reset) since "
		"the baseline.",
		"# TYPE tern_rnr_counter_resets gauge",
		"tern_rnr_counter_resets{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"responder_out_of_buffer\",raw=\"send_rnr_err\"} 0",
		"tern_rnr_counter_resets{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"requester_rnr_nak\",raw=\"rcvd_rnr_err\"} 0",
		"tern_rnr_counter_resets{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"sent_pkts\",raw=\"sent_pkts\"} 0",
		"# HELP tern_rnr_counter_read_error 1 when the counter could not be read; status "
		"is "
		"missing, garbage or unreadable.",
		"# TYPE tern_rnr_counter_read_error gauge",
		"tern_rnr_counter_read_error{device=\"rxe0\",port=\"1\",group=\"hw_counters\","
		"counter=\"requester_rnr_nak\",raw=\"rcvd_rnr_err\",status=\"garbage\"} 1",
		"# HELP tern_rnr_port_present 1 while the port is in sysfs, 0 in the one reading "
		"after it disappeared.",
		"# TYPE tern_rnr_port_present gauge",
		"tern_rnr_port_present{device=\"rxe0\",port=\"1\"} 1",
	};
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	char *out, *line, *save = NULL;
	size_t i = 0;

	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 5), 0);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "sent_pkts", 9), 0);
	assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "rcvd_rnr_err", "junk\n"), 0);
	assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "lifespan", "12\n"), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 7), 0);
	s = read_now(m);
	out = render(s, NULL, TERN_RNR_FORMAT_PROM);
	assert_int_equal(out[strlen(out) - 1], '\n');
	for (line = strtok_r(out, "\n", &save); line; line = strtok_r(NULL, "\n", &save), i++) {
		assert_true(i < sizeof(expect) / sizeof(expect[0]));
		assert_string_equal(line, expect[i]);
	}
	assert_int_equal(i, sizeof(expect) / sizeof(expect[0]));
	free(out);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_prom_escapes_label_values(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	char *out;

	assert_int_equal(fake_sysfs_set_u64(&f->fs, "we\"ird\\dev", 1, HW, "send_rnr_err", 1), 0);
	m = monitor(f, NULL);
	s = read_now(m);
	out = render(s, NULL, TERN_RNR_FORMAT_PROM);
	assert_non_null(
		strstr(out, "tern_rnr_port_present{device=\"we\\\"ird\\\\dev\",port=\"1\"} 1\n"));
	free(out);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_gone_port_in_prom_and_table(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *s;
	char *out;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	assert_int_equal(fake_sysfs_remove(&f->fs, "class/infiniband/rxe0"), 0);
	s = read_now(m);
	out = render(s, NULL, TERN_RNR_FORMAT_PROM);
	assert_non_null(strstr(out, "tern_rnr_port_present{device=\"rxe0\",port=\"1\"} 0\n"));
	assert_null(strstr(out, "tern_rnr_counter_total{"));
	assert_non_null(strstr(out, "raw=\"send_rnr_err\",status=\"missing\"} 1\n"));
	free(out);
	out = render(s, NULL, TERN_RNR_FORMAT_TABLE);
	assert_non_null(strstr(out, " gone "));
	free(out);
	tern_rnr_snapshot_free(s);
	tern_rnr_monitor_destroy(m);
}

static void test_json_is_one_line_with_rates(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *a, *b;
	char *out;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	m = monitor(f, NULL);
	a = read_now(m);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 3), 0);
	assert_int_equal(fake_sysfs_set(&f->fs, "rxe0", 1, HW, "sent_pkts", "bad\n"), 0);
	f->now_ns += 2000000000;
	b = read_now(m);
	out = render(b, a, TERN_RNR_FORMAT_JSON);
	assert_non_null(strchr(out, '\n'));
	assert_int_equal(strchr(out, '\n') - out, (ptrdiff_t)strlen(out) - 1);
	assert_int_equal(out[0], '{');
	assert_non_null(strstr(out, "\"interval_s\":2.000000,"));
	assert_non_null(strstr(out,
			       "{\"counter\":\"responder_out_of_buffer\",\"raw\":\"send_rnr_err\","
			       "\"group\":\"hw_counters\",\"canonical\":true,\"status\":\"ok\","
			       "\"value\":3,\"delta\":3,\"resets\":0,\"rate\":1.500}"));
	assert_non_null(strstr(out, "\"raw\":\"sent_pkts\",\"group\":\"hw_counters\","
				    "\"canonical\":false,\"status\":\"garbage\",\"value\":null,"
				    "\"delta\":0,\"resets\":0,\"rate\":null}"));
	free(out);
	out = render(b, NULL, TERN_RNR_FORMAT_JSON);
	assert_non_null(strstr(out, "\"interval_s\":null,"));
	free(out);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_monitor_destroy(m);
}

static void test_table_columns_line_up(void **state)
{
	struct fixture *f = *state;
	tern_rnr_monitor *m;
	tern_rnr_snapshot *a, *b;
	char *out, *line, *save = NULL;
	size_t width = 0, rows = 0;

	assert_int_equal(fake_sysfs_add_rxe(&f->fs, "rxe0", 0), 0);
	assert_int_equal(fake_sysfs_add_mlx5(&f->fs, "mlx5_0", 123456789), 0);
	m = monitor(f, NULL);
	a = read_now(m);
	assert_int_equal(fake_sysfs_set_u64(&f->fs, "rxe0", 1, HW, "send_rnr_err", 12), 0);
	f->now_ns += 4000000000ull;
	b = read_now(m);
	out = render(b, a, TERN_RNR_FORMAT_TABLE);
	assert_non_null(strstr(out, "rates over 4.000 s\n"));
	line = strtok_r(out, "\n", &save); /* the "# time" line */
	assert_int_equal(line[0], '#');
	while ((line = strtok_r(NULL, "\n", &save))) {
		/* The last column is right-aligned, so aligned rows are equally long. */
		if (!width)
			width = strlen(line);
		assert_int_equal(strlen(line), width);
		if (strstr(line, "send_rnr_err")) {
			assert_non_null(strstr(line, "responder_out_of_buffer"));
			assert_non_null(strstr(line, " 12  "));
			assert_true(strstr(line, " 3.00") == line + width - 5);
		}
		rows++;
	}
	assert_int_equal(rows, 1 + 15 + 16 + 1); /* header, rxe0, mlx5_0 port 1, port 0 */
	free(out);
	tern_rnr_snapshot_free(a);
	tern_rnr_snapshot_free(b);
	tern_rnr_monitor_destroy(m);
}

#define T(fn) cmocka_unit_test_setup_teardown(fn, setup, teardown)

int main(void)
{
	const struct CMUnitTest tests[] = {
		T(test_discovers_ports_of_mlx5_and_rxe_layouts),
		T(test_driver_names_map_onto_canonical_names),
		T(test_canonical_name_table),
		T(test_transport_counter_prefers_the_exact_mlx5_one),
		T(test_raw_names_of_other_drivers_are_aliases),
		T(test_delta_counts_from_the_baseline),
		T(test_rebaseline_starts_deltas_again),
		T(test_delta_with_no_device_sums_every_port),
		T(test_rate_between_two_snapshots_uses_their_times),
		T(test_rate_refuses_other_monitors_and_reversed_time),
		T(test_rate_across_a_device_that_came_back),
		T(test_counter_reset_is_not_a_huge_delta),
		T(test_missing_file_is_reported_per_counter),
		T(test_garbage_is_reported_per_counter),
		T(test_value_longer_than_any_number_is_garbage),
		T(test_well_formed_values_parse),
		T(test_garbage_does_not_break_the_total),
		T(test_unreadable_counter_reports_the_errno),
		T(test_open_errors_tell_missing_from_unreadable),
		T(test_fifo_reads_as_garbage_instead_of_hanging),
		T(test_files_per_group_are_bounded),
		T(test_device_that_appears_gets_a_baseline_at_first_sight),
		T(test_device_that_disappears_is_reported_gone_once),
		T(test_every_device_gone_leaves_an_empty_reading),
		T(test_device_filter_is_a_glob),
		T(test_no_infiniband_class_means_no_devices),
		T(test_snapshot_outlives_its_monitor),
		T(test_bad_arguments_are_einval),
		T(test_older_callers_opts_get_defaults_for_new_fields),
		T(test_prom_output_line_by_line),
		T(test_prom_escapes_label_values),
		T(test_gone_port_in_prom_and_table),
		T(test_json_is_one_line_with_rates),
		T(test_table_columns_line_up),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
