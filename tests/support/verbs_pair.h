/* SPDX-License-Identifier: MIT */
/*
 * verbs_pair - raw libibverbs/librdmacm RC endpoints for tests and baselines.
 *
 * This is deliberately *not* tern: it is the floor that tern is measured
 * against (bench/verbs_pingpong), the device probe that decides whether the
 * rdma suite can run, and the "hostile peer" that tests use to send bytes
 * tern's engine never would.  Connection set-up goes through rdma_cm, the
 * same path tern's verbs provider uses.
 */
#ifndef TERN_TESTS_VERBS_PAIR_H
#define TERN_TESTS_VERBS_PAIR_H

#include <stddef.h>
#include <stdint.h>
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>

/* Exit status meaning "skipped" to meson and to liburing-style test runners. */
#define VP_EXIT_SKIP 77

struct vp_opts {
	const char *addr; /* IPv4 of an RDMA netdev; NULL: vp_find_addr() */
	uint16_t port;	  /* 0: the listener picks one */
	size_t buf_len;	  /* registered buffer per endpoint */
	uint32_t max_send_wr;
	uint32_t max_recv_wr;
	uint32_t max_inline;
	uint8_t rnr_retry;	  /* 0..7; 7 means infinite */
	uint8_t min_rnr_timer;	  /* responder's RNR NAK timer code, 0..31 */
	uint8_t retry_count;	  /* transport retries, 0..7 */
	const void *private_data; /* sent with connect (client) */
	uint8_t private_data_len;
	const void *accept_data; /* sent with accept (server) */
	uint8_t accept_data_len;
	int timeout_ms; /* for each cm step; 0: 10 s */
};

struct vp_endpoint {
	struct rdma_cm_id *id;
	struct rdma_event_channel *ch;
	struct ibv_pd *pd;
	struct ibv_cq *cq;
	struct ibv_mr *mr;
	char *buf;
	size_t buf_len;
	uint32_t max_inline;
	/* private data the peer sent with its connect request, if any */
	uint8_t peer_private[256];
	uint8_t peer_private_len;
};

struct vp_listener {
	struct rdma_event_channel *ch;
	struct rdma_cm_id *id;
	uint16_t port;
	struct vp_opts opts;
};

/* Fill @out with an IPv4 address that rdma_cm binds to an RDMA device.
 * Honours TERN_RDMA_ADDR; in the two-device lane (TERN_TEST_LINK=1) it is
 * the server's end of the link, TERN_TEST_SERVER_ADDR, set by
 * tools/rxe-vm --two-devices.  Returns 0, or -ENODEV when there is none. */
int vp_find_addr(char *out, size_t len);

/* Number of verbs devices the library sees (0 on a host without RDMA). */
int vp_device_count(void);

/* Initialise @o with the defaults: 64 KiB buffer, 64 WRs each way,
 * rnr_retry 7, min_rnr_timer 12, retry_count 7. */
void vp_opts_init(struct vp_opts *o);

int vp_listen(const struct vp_opts *o, struct vp_listener *l);
/* Wait for one connect request, build the endpoint, pre-post @prepost
 * receives of @recv_len bytes each (from the start of the buffer), accept. */
int vp_accept(struct vp_listener *l, struct vp_endpoint *ep, int prepost, size_t recv_len);
void vp_listener_close(struct vp_listener *l);

int vp_connect(const struct vp_opts *o, struct vp_endpoint *ep, int prepost, size_t recv_len);
/* Same, but return the rdma_cm event status instead of failing when the
 * peer rejects; @reject_data receives the reject's private data. */
int vp_connect_ex(const struct vp_opts *o, struct vp_endpoint *ep, int prepost, size_t recv_len,
		  void *reject_data, size_t *reject_len);
void vp_endpoint_close(struct vp_endpoint *ep);

int vp_post_recv(struct vp_endpoint *ep, size_t off, size_t len, uint64_t wr_id);
int vp_post_send(struct vp_endpoint *ep, size_t off, size_t len, uint64_t wr_id, int flags);
int vp_post_write(struct vp_endpoint *ep, size_t off, size_t len, uint64_t raddr, uint32_t rkey,
		  uint64_t wr_id, int flags);
/* RDMA READ or WRITE (@opcode) between our buffer at @off and the peer's @raddr. */
int vp_post_rdma(struct vp_endpoint *ep, enum ibv_wr_opcode opcode, size_t off, size_t len,
		 uint64_t raddr, uint32_t rkey, uint64_t wr_id, int flags);

/* Busy-poll the CQ for one completion, up to @timeout_ms.  Returns 1 with
 * @wc filled, 0 on timeout, or -errno. */
int vp_poll_one(struct vp_endpoint *ep, struct ibv_wc *wc, int timeout_ms);

/* Wait for the next rdma_cm event on @ch of type @want (or fail).  Exposed
 * so tests can wait for DISCONNECTED. */
int vp_wait_cm_event(struct rdma_event_channel *ch, enum rdma_cm_event_type want,
		     struct rdma_cm_id **id_out, int timeout_ms);

#endif
