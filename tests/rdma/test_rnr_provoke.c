// SPDX-License-Identifier: MIT
/*
 * The RNR monitor on real counters: provoke RNR with a raw-verbs RC pair
 * whose responder has no receive posted, and check that the monitor, reading
 * /sys through <tern/rnr.h>, sees the responder's out-of-buffer counter move.
 * The control case (receives posted) must leave it at exactly zero; that is
 * the shape of the session engine's own "credits never cause RNR" test:
 * baseline, run, delta of TERN_RNR_RESPONDER_OUT_OF_BUFFER.
 *
 * Both QPs sit on the same device (rxe0 in the VM), so the requester's and
 * the responder's counters are that device's.  Exits 77 without a device.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <cmocka.h>

#include "tern/rnr.h"
#include "verbs_pair.h"

#define SLOT   256
#define NSLOTS 8

/*
 * rnr_retry 1: one retry after the first RNR NAK, then the send fails with
 * IBV_WC_RNR_RETRY_EXC_ERR.  rdma_cm applies it from the peer's
 * conn_param, and verbs_pair passes the same options on both ends.
 * (rdma_cm sets min_rnr_timer to 0, the longest RNR delay, 655 ms; rxe
 * honours it, so the failure takes about 1.3 s plus emulation.)
 */
#define RNR_RETRY 1

struct pair {
	struct vp_listener l;
	struct vp_endpoint srv, cli;
	int srv_prepost;
	int accept_rc;
	char device[64];
	uint32_t port;
	tern_rnr_monitor *mon;
};

static void *accept_thread(void *arg)
{
	struct pair *p = arg;
	p->accept_rc = vp_accept(&p->l, &p->srv, p->srv_prepost, SLOT);
	return NULL;
}

static int pair_setup(struct pair *p, int srv_prepost)
{
	struct tern_rnr_opts mo;
	struct vp_opts o;
	pthread_t t;
	int rc;

	vp_opts_init(&o);
	o.buf_len = 2 * NSLOTS * SLOT; /* first half receives, second half sends */
	o.rnr_retry = RNR_RETRY;
	o.min_rnr_timer = 1;
	o.timeout_ms = 30000; /* TCG and ASan are slow */
	p->srv_prepost = srv_prepost;
	if ((rc = vp_listen(&o, &p->l))) {
		fprintf(stderr, "vp_listen: %s\n", strerror(-rc));
		return -1;
	}
	o.port = p->l.port;
	pthread_create(&t, NULL, accept_thread, p);
	rc = vp_connect(&o, &p->cli, 0, SLOT);
	pthread_join(t, NULL);
	if (rc || p->accept_rc) {
		fprintf(stderr, "connect %d accept %d\n", rc, p->accept_rc);
		return -1;
	}
	snprintf(p->device, sizeof(p->device), "%s", ibv_get_device_name(p->cli.id->verbs->device));
	p->port = p->cli.id->port_num;
	/* The baseline: taken once the pair is up, on the device it uses. */
	tern_rnr_opts_init(&mo);
	mo.sysfs_root = "/sys";
	mo.device = p->device;
	if ((rc = tern_rnr_monitor_create(&mo, &p->mon))) {
		fprintf(stderr, "tern_rnr_monitor_create: %s\n", tern_strerror(rc));
		return -1;
	}
	return 0;
}

static int setup_no_receives(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	*state = p;
	return p ? pair_setup(p, 0) : -1;
}

static int setup_with_receives(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	*state = p;
	return p ? pair_setup(p, NSLOTS) : -1;
}

static int pair_teardown(void **state)
{
	struct pair *p = *state;
	tern_rnr_monitor_destroy(p->mon);
	vp_endpoint_close(&p->cli);
	vp_endpoint_close(&p->srv);
	vp_listener_close(&p->l);
	free(p);
	return 0;
}

static void sleep_ms(long ms)
{
	struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/*
 * The kernel caches hw_counters for the port's lifespan (ms): wait that
 * long after the traffic, so the reading is not a cached one.
 */
static void settle(struct pair *p)
{
	tern_rnr_snapshot *s;
	const struct tern_rnr_port *ports;
	size_t n;
	long ms = 100;

	assert_int_equal(tern_rnr_monitor_read(p->mon, &s), 0);
	ports = tern_rnr_snapshot_ports(s, &n);
	for (size_t i = 0; i < n; i++)
		if (ports[i].port == p->port && ports[i].lifespan_ms + 20 > ms)
			ms = (long)ports[i].lifespan_ms + 20;
	tern_rnr_snapshot_free(s);
	sleep_ms(ms);
}

static uint64_t delta_of(struct pair *p, const char *name)
{
	uint64_t d = UINT64_MAX;
	int rc = tern_rnr_monitor_delta(p->mon, p->device, p->port, name, &d);

	if (rc)
		fail_msg("%s on %s port %u: %s", name, p->device, p->port, tern_strerror(rc));
	return d;
}

static void test_no_receive_posted_moves_the_responder_out_of_buffer_counter(void **state)
{
	struct pair *p = *state;
	uint64_t responder, requester, exceeded, transport;
	struct timespec t0, t1;
	struct ibv_wc wc;

	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(vp_post_send(&p->cli, NSLOTS * SLOT, 64, 42, IBV_SEND_SIGNALED), 0);
	/* The responder has nothing posted: RNR NAK, one retry, RNR NAK, fail. */
	assert_int_equal(vp_poll_one(&p->cli, &wc, 120000), 1);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	assert_int_equal(wc.wr_id, 42);
	if (wc.status != IBV_WC_RNR_RETRY_EXC_ERR)
		fail_msg("send completed with %s, expected IBV_WC_RNR_RETRY_EXC_ERR",
			 ibv_wc_status_str(wc.status));
	settle(p);

	responder = delta_of(p, TERN_RNR_RESPONDER_OUT_OF_BUFFER);
	requester = delta_of(p, TERN_RNR_REQUESTER_RNR_NAK);
	exceeded = delta_of(p, TERN_RNR_RNR_RETRIES_EXCEEDED);
	transport = delta_of(p, TERN_RNR_TRANSPORT_RETRIES_EXCEEDED);
	printf("rnr provoke on %s port %u (rnr_retry %d, failed after %.2f s): "
	       "responder_out_of_buffer +%llu, requester_rnr_nak +%llu, "
	       "rnr_retries_exceeded +%llu, transport_retries_exceeded +%llu\n",
	       p->device, p->port, RNR_RETRY,
	       (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9,
	       (unsigned long long)responder, (unsigned long long)requester,
	       (unsigned long long)exceeded, (unsigned long long)transport);
	assert_true(responder > 0);
	/* One RNR NAK for the first try and one per retry, each sent by the
	 * responder and received by the requester on the same device. */
	assert_int_equal(responder, RNR_RETRY + 1);
	assert_int_equal(requester, responder);
	assert_int_equal(exceeded, 1); /* one send failed */
	assert_int_equal(transport, 0);
}

static void test_posted_receives_leave_the_responder_counter_at_zero(void **state)
{
	struct pair *p = *state;
	const struct tern_rnr_counter *c;
	tern_rnr_snapshot *s;
	struct ibv_wc wc;

	for (int i = 0; i < NSLOTS; i++) {
		assert_int_equal(
			vp_post_send(&p->cli, NSLOTS * SLOT, 64, (uint64_t)i, IBV_SEND_SIGNALED),
			0);
		assert_int_equal(vp_poll_one(&p->cli, &wc, 60000), 1);
		assert_int_equal(wc.status, IBV_WC_SUCCESS);
		assert_int_equal(vp_poll_one(&p->srv, &wc, 60000), 1);
		assert_int_equal(wc.status, IBV_WC_SUCCESS);
		assert_int_equal(wc.opcode, IBV_WC_RECV);
	}
	settle(p);
	/* The session engine's check, in three lines: baseline (at setup), run
	 * (above), and the canonical responder counter's delta. */
	assert_int_equal(delta_of(p, TERN_RNR_RESPONDER_OUT_OF_BUFFER), 0);
	assert_int_equal(delta_of(p, TERN_RNR_REQUESTER_RNR_NAK), 0);
	/* ...and it is not zero because the monitor saw nothing: the packet
	 * counter moved (rxe sent_pkts, or the PMA counter on hardware). */
	assert_int_equal(tern_rnr_monitor_read(p->mon, &s), 0);
	if (tern_rnr_snapshot_find(s, p->device, p->port, "sent_pkts", &c) &&
	    tern_rnr_snapshot_find(s, p->device, p->port, "counters/port_xmit_packets", &c))
		fail_msg("%s has neither sent_pkts nor counters/port_xmit_packets", p->device);
	printf("control on %s port %u: %d sends, %s +%llu, responder_out_of_buffer +0\n", p->device,
	       p->port, NSLOTS, c->raw, (unsigned long long)c->delta);
	assert_true(c->delta >= NSLOTS);
	tern_rnr_snapshot_free(s);
}

int main(void)
{
	char addr[64];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(
			test_no_receive_posted_moves_the_responder_out_of_buffer_counter,
			setup_no_receives, pair_teardown),
		cmocka_unit_test_setup_teardown(
			test_posted_receives_leave_the_responder_counter_at_zero,
			setup_with_receives, pair_teardown),
	};

	if (vp_find_addr(addr, sizeof(addr))) {
		printf("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)\n");
		return VP_EXIT_SKIP;
	}
	printf("using RDMA address %s\n", addr);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
