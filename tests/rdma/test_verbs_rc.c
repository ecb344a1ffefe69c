// SPDX-License-Identifier: MIT
/*
 * The lane's first real RDMA test: two RC QPs on one verbs device (rxe0 in
 * the VM), connected through rdma_cm on the device's IPv4 address, sending
 * messages both ways and checking every byte.  Exits 77 when the host has no
 * verbs device, so a developer machine with a real NIC runs it directly.
 */
#include <errno.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "verbs_pair.h"

struct pair {
	struct vp_listener l;
	struct vp_endpoint srv, cli;
	int accept_rc;
};

#define SLOT   4096
#define NSLOTS 8

static void *accept_thread(void *arg)
{
	struct pair *p = arg;
	p->accept_rc = vp_accept(&p->l, &p->srv, NSLOTS, SLOT);
	return NULL;
}

static int pair_setup(void **state)
{
	struct pair *p = calloc(1, sizeof(*p));
	struct vp_opts o;
	pthread_t t;
	int rc;

	vp_opts_init(&o);
	o.buf_len = 2 * NSLOTS * SLOT; /* first half receives, second half sends */
	if ((rc = vp_listen(&o, &p->l))) {
		fprintf(stderr, "vp_listen: %s\n", strerror(-rc));
		return -1;
	}
	o.port = p->l.port;
	pthread_create(&t, NULL, accept_thread, p);
	rc = vp_connect(&o, &p->cli, NSLOTS, SLOT);
	pthread_join(t, NULL);
	if (rc || p->accept_rc) {
		fprintf(stderr, "connect %d accept %d\n", rc, p->accept_rc);
		return -1;
	}
	*state = p;
	return 0;
}

static int pair_teardown(void **state)
{
	struct pair *p = *state;
	vp_endpoint_close(&p->cli);
	vp_endpoint_close(&p->srv);
	vp_listener_close(&p->l);
	free(p);
	return 0;
}

static void fill(char *b, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (char)(seed * 131 + i * 7 + (i >> 8));
}

/* Send @len bytes from @from's send half and check @to receives exactly them. */
static void send_and_check(struct vp_endpoint *from, struct vp_endpoint *to, size_t len,
			   unsigned seed)
{
	struct ibv_wc wc;
	size_t send_off = NSLOTS * SLOT;
	char expect[SLOT];

	fill(from->buf + send_off, len, seed);
	memcpy(expect, from->buf + send_off, len);
	assert_int_equal(vp_post_send(from, send_off, len, 1000 + seed, IBV_SEND_SIGNALED), 0);

	assert_int_equal(vp_poll_one(from, &wc, 5000), 1);
	assert_int_equal(wc.status, IBV_WC_SUCCESS);
	assert_int_equal(wc.opcode, IBV_WC_SEND);
	assert_int_equal(wc.wr_id, 1000 + seed);

	assert_int_equal(vp_poll_one(to, &wc, 5000), 1);
	assert_int_equal(wc.status, IBV_WC_SUCCESS);
	assert_int_equal(wc.opcode, IBV_WC_RECV);
	assert_int_equal(wc.byte_len, len);
	assert_true(wc.wr_id < NSLOTS);
	assert_memory_equal(to->buf + wc.wr_id * SLOT, expect, len);
	/* Give the receive back so the ring never runs dry. */
	assert_int_equal(vp_post_recv(to, wc.wr_id * SLOT, SLOT, wc.wr_id), 0);
}

static void test_rc_connects_on_a_verbs_device(void **state)
{
	struct pair *p = *state;
	assert_non_null(p->cli.id->verbs);
	assert_non_null(p->cli.id->qp);
	assert_non_null(p->srv.id->qp);
	assert_int_equal(p->cli.id->qp->qp_type, IBV_QPT_RC);
	assert_int_not_equal(p->cli.id->qp->qp_num, p->srv.id->qp->qp_num);
}

static void test_rc_send_client_to_server(void **state)
{
	struct pair *p = *state;
	send_and_check(&p->cli, &p->srv, 1, 1);
	send_and_check(&p->cli, &p->srv, 100, 2);
	send_and_check(&p->cli, &p->srv, SLOT, 3);
}

static void test_rc_send_server_to_client(void **state)
{
	struct pair *p = *state;
	send_and_check(&p->srv, &p->cli, 1, 4);
	send_and_check(&p->srv, &p->cli, 999, 5);
	send_and_check(&p->srv, &p->cli, SLOT, 6);
}

static void test_rc_ping_pong_keeps_order(void **state)
{
	struct pair *p = *state;
	for (unsigned i = 0; i < 200; i++) {
		send_and_check(&p->cli, &p->srv, 64 + i, 100 + i);
		send_and_check(&p->srv, &p->cli, 64 + i, 1000 + i);
	}
}

static void test_rc_zero_length_send(void **state)
{
	struct pair *p = *state;
	send_and_check(&p->cli, &p->srv, 0, 7);
	send_and_check(&p->srv, &p->cli, 0, 8);
}

int main(void)
{
	char addr[64];
	const struct CMUnitTest tests[] = {
		cmocka_unit_test_setup_teardown(test_rc_connects_on_a_verbs_device, pair_setup,
						pair_teardown),
		cmocka_unit_test_setup_teardown(test_rc_send_client_to_server, pair_setup,
						pair_teardown),
		cmocka_unit_test_setup_teardown(test_rc_send_server_to_client, pair_setup,
						pair_teardown),
		cmocka_unit_test_setup_teardown(test_rc_zero_length_send, pair_setup,
						pair_teardown),
		cmocka_unit_test_setup_teardown(test_rc_ping_pong_keeps_order, pair_setup,
						pair_teardown),
	};

	if (vp_find_addr(addr, sizeof(addr))) {
		printf("SKIP: no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)\n");
		return VP_EXIT_SKIP;
	}
	printf("using RDMA address %s\n", addr);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
