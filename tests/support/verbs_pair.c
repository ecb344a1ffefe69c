// SPDX-License-Identifier: MIT
/* Raw verbs RC endpoints over rdma_cm; see verbs_pair.h for why this exists. */
#include "verbs_pair.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <net/if.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static int neg_errno(int fallback)
{
	return errno ? -errno : -fallback;
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void vp_opts_init(struct vp_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->buf_len = 64 * 1024;
	o->max_send_wr = 64;
	o->max_recv_wr = 64;
	o->max_inline = 0;
	o->rnr_retry = 7;
	o->min_rnr_timer = 12;
	o->retry_count = 7;
	o->timeout_ms = 10000;
}

int vp_device_count(void)
{
	int n = 0;
	struct ibv_device **l = ibv_get_device_list(&n);
	if (l)
		ibv_free_device_list(l);
	return l ? n : 0;
}

static int fill_sockaddr(const char *addr, uint16_t port, struct sockaddr_in *sin)
{
	memset(sin, 0, sizeof(*sin));
	sin->sin_family = AF_INET;
	sin->sin_port = htons(port);
	if (inet_pton(AF_INET, addr, &sin->sin_addr) != 1)
		return -EINVAL;
	return 0;
}

/* True when rdma_cm maps @addr onto a verbs device. */
static int addr_has_rdma(const char *addr)
{
	struct rdma_event_channel *ch = rdma_create_event_channel();
	struct rdma_cm_id *id = NULL;
	struct sockaddr_in sin;
	int ok = 0;

	if (!ch)
		return 0;
	if (rdma_create_id(ch, &id, NULL, RDMA_PS_TCP) == 0) {
		if (fill_sockaddr(addr, 0, &sin) == 0 &&
		    rdma_bind_addr(id, (struct sockaddr *)&sin) == 0 && id->verbs)
			ok = 1;
		rdma_destroy_id(id);
	}
	rdma_destroy_event_channel(ch);
	return ok;
}

int vp_find_addr(char *out, size_t len)
{
	const char *env = getenv("TERN_RDMA_ADDR");
	const char *link = getenv("TERN_TEST_LINK");
	struct ifaddrs *ifs, *i;
	int rc = -ENODEV;

	if (link && strcmp(link, "1") == 0) {
		/* The two-device lane: the server's end of the link, or nothing
		 * (a lane that quietly ran on one device would prove nothing). */
		env = getenv("TERN_TEST_SERVER_ADDR");
		if (!env || !*env)
			return -ENODEV;
	}
	if (env && *env) {
		snprintf(out, len, "%s", env);
		return addr_has_rdma(out) ? 0 : -ENODEV;
	}
	if (vp_device_count() == 0)
		return -ENODEV;
	if (getifaddrs(&ifs))
		return neg_errno(EIO);
	for (i = ifs; i; i = i->ifa_next) {
		char buf[INET_ADDRSTRLEN];
		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET)
			continue;
		if (i->ifa_flags & IFF_LOOPBACK)
			continue;
		inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf,
			  sizeof(buf));
		if (addr_has_rdma(buf)) {
			snprintf(out, len, "%s", buf);
			rc = 0;
			break;
		}
	}
	freeifaddrs(ifs);
	return rc;
}

int vp_wait_cm_event(struct rdma_event_channel *ch, enum rdma_cm_event_type want,
		     struct rdma_cm_id **id_out, int timeout_ms)
{
	struct pollfd pfd = {.fd = ch->fd, .events = POLLIN};
	struct rdma_cm_event *ev;
	int n, rc;

	n = poll(&pfd, 1, timeout_ms ? timeout_ms : 10000);
	if (n == 0)
		return -ETIMEDOUT;
	if (n < 0)
		return neg_errno(EIO);
	if (rdma_get_cm_event(ch, &ev))
		return neg_errno(EIO);
	if (ev->event != want) {
		fprintf(stderr, "verbs_pair: expected cm event %s, got %s (status %d)\n",
			rdma_event_str(want), rdma_event_str(ev->event), ev->status);
		rc = ev->event == RDMA_CM_EVENT_REJECTED ? -ECONNREFUSED
		     : ev->status < 0			 ? ev->status
							 : -EPROTO;
		rdma_ack_cm_event(ev);
		return rc;
	}
	if (id_out)
		*id_out = ev->id;
	rdma_ack_cm_event(ev);
	return 0;
}

static int build_endpoint(struct vp_endpoint *ep, struct rdma_cm_id *id, const struct vp_opts *o)
{
	struct ibv_qp_init_attr qa;
	int depth = (int)(o->max_send_wr + o->max_recv_wr);

	ep->id = id;
	ep->buf_len = o->buf_len;
	ep->pd = ibv_alloc_pd(id->verbs);
	if (!ep->pd)
		return neg_errno(ENOMEM);
	ep->cq = ibv_create_cq(id->verbs, depth, NULL, NULL, 0);
	if (!ep->cq)
		return neg_errno(ENOMEM);
	memset(&qa, 0, sizeof(qa));
	qa.qp_type = IBV_QPT_RC;
	qa.send_cq = ep->cq;
	qa.recv_cq = ep->cq;
	qa.cap.max_send_wr = o->max_send_wr;
	qa.cap.max_recv_wr = o->max_recv_wr;
	qa.cap.max_send_sge = 1;
	qa.cap.max_recv_sge = 1;
	qa.cap.max_inline_data = o->max_inline;
	qa.sq_sig_all = 0;
	/* Ask for the inline size wanted, halving until the device agrees. */
	while (rdma_create_qp(id, ep->pd, &qa)) {
		if (qa.cap.max_inline_data == 0)
			return neg_errno(EIO);
		qa.cap.max_inline_data /= 2;
	}
	ep->max_inline = qa.cap.max_inline_data;
	if (posix_memalign((void **)&ep->buf, 4096, ep->buf_len ? ep->buf_len : 4096))
		return -ENOMEM;
	memset(ep->buf, 0, ep->buf_len);
	ep->mr = ibv_reg_mr(ep->pd, ep->buf, ep->buf_len,
			    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE |
				    IBV_ACCESS_REMOTE_READ);
	if (!ep->mr)
		return neg_errno(ENOMEM);
	return 0;
}

static void conn_param_init(struct rdma_conn_param *p, const struct vp_opts *o)
{
	memset(p, 0, sizeof(*p));
	p->responder_resources = 1;
	p->initiator_depth = 1;
	/* rdma_cm applies these to the *peer's* QP: the REQ carries the
	 * values the passive side uses and the REP those of the active side,
	 * so both ends pass the same numbers. */
	p->retry_count = o->retry_count;
	p->rnr_retry_count = o->rnr_retry;
	p->private_data = o->private_data;
	p->private_data_len = o->private_data_len;
}

static int prepost(struct vp_endpoint *ep, int n, size_t recv_len)
{
	for (int i = 0; i < n; i++) {
		int rc = vp_post_recv(ep, (size_t)i * recv_len, recv_len, (uint64_t)i);
		if (rc)
			return rc;
	}
	return 0;
}

int vp_listen(const struct vp_opts *o, struct vp_listener *l)
{
	char addr[64];
	struct sockaddr_in sin;
	int rc;

	memset(l, 0, sizeof(*l));
	l->opts = *o;
	if (o->addr)
		snprintf(addr, sizeof(addr), "%s", o->addr);
	else if ((rc = vp_find_addr(addr, sizeof(addr))))
		return rc;
	if ((rc = fill_sockaddr(addr, o->port, &sin)))
		return rc;
	l->ch = rdma_create_event_channel();
	if (!l->ch)
		return neg_errno(EIO);
	if (rdma_create_id(l->ch, &l->id, NULL, RDMA_PS_TCP))
		return neg_errno(EIO);
	if (rdma_bind_addr(l->id, (struct sockaddr *)&sin))
		return neg_errno(EADDRNOTAVAIL);
	if (rdma_listen(l->id, 8))
		return neg_errno(EIO);
	l->port = ntohs(rdma_get_src_port(l->id));
	return 0;
}

int vp_accept(struct vp_listener *l, struct vp_endpoint *ep, int prepost_n, size_t recv_len)
{
	struct rdma_conn_param cp;
	struct rdma_cm_event *ev;
	struct pollfd pfd = {.fd = l->ch->fd, .events = POLLIN};
	struct rdma_cm_id *id;
	int rc;

	memset(ep, 0, sizeof(*ep));
	if (poll(&pfd, 1, l->opts.timeout_ms ? l->opts.timeout_ms : 10000) != 1)
		return -ETIMEDOUT;
	if (rdma_get_cm_event(l->ch, &ev))
		return neg_errno(EIO);
	if (ev->event != RDMA_CM_EVENT_CONNECT_REQUEST) {
		rdma_ack_cm_event(ev);
		return -EPROTO;
	}
	id = ev->id;
	ep->peer_private_len = ev->param.conn.private_data_len;
	if (ev->param.conn.private_data && ep->peer_private_len)
		memcpy(ep->peer_private, ev->param.conn.private_data, ep->peer_private_len);
	rdma_ack_cm_event(ev);

	if ((rc = build_endpoint(ep, id, &l->opts)) || (rc = prepost(ep, prepost_n, recv_len))) {
		rdma_reject(id, NULL, 0);
		return rc;
	}
	conn_param_init(&cp, &l->opts);
	cp.private_data = l->opts.accept_data;
	cp.private_data_len = l->opts.accept_data_len;
	if (rdma_accept(id, &cp))
		return neg_errno(EIO);
	return vp_wait_cm_event(l->ch, RDMA_CM_EVENT_ESTABLISHED, NULL, l->opts.timeout_ms);
}

void vp_listener_close(struct vp_listener *l)
{
	if (l->id)
		rdma_destroy_id(l->id);
	if (l->ch)
		rdma_destroy_event_channel(l->ch);
	memset(l, 0, sizeof(*l));
}

/* A step of vp_connect_ex() failed: say which (a flake's only witness), return @rc. */
static int failed(const char *step, int rc)
{
	fprintf(stderr, "verbs_pair: connect: %s failed: %s\n", step, strerror(-rc));
	return rc;
}

int vp_connect_ex(const struct vp_opts *o, struct vp_endpoint *ep, int prepost_n, size_t recv_len,
		  void *reject_data, size_t *reject_len)
{
	struct rdma_conn_param cp;
	struct sockaddr_in sin;
	struct rdma_cm_event *ev;
	struct pollfd pfd;
	char addr[64];
	int rc, tmo = o->timeout_ms ? o->timeout_ms : 10000;

	memset(ep, 0, sizeof(*ep));
	if (o->addr)
		snprintf(addr, sizeof(addr), "%s", o->addr);
	else if ((rc = vp_find_addr(addr, sizeof(addr))))
		return rc;
	if ((rc = fill_sockaddr(addr, o->port, &sin)))
		return rc;
	ep->ch = rdma_create_event_channel();
	if (!ep->ch)
		return failed("rdma_create_event_channel", neg_errno(EIO));
	if (rdma_create_id(ep->ch, &ep->id, NULL, RDMA_PS_TCP))
		return failed("rdma_create_id", neg_errno(EIO));
	if (rdma_resolve_addr(ep->id, NULL, (struct sockaddr *)&sin, tmo))
		return failed("rdma_resolve_addr", neg_errno(EIO));
	if ((rc = vp_wait_cm_event(ep->ch, RDMA_CM_EVENT_ADDR_RESOLVED, NULL, tmo)))
		return failed("waiting for ADDR_RESOLVED", rc);
	if (rdma_resolve_route(ep->id, tmo))
		return failed("rdma_resolve_route", neg_errno(EIO));
	if ((rc = vp_wait_cm_event(ep->ch, RDMA_CM_EVENT_ROUTE_RESOLVED, NULL, tmo)))
		return failed("waiting for ROUTE_RESOLVED", rc);
	if ((rc = build_endpoint(ep, ep->id, o)) || (rc = prepost(ep, prepost_n, recv_len)))
		return failed("building the endpoint", rc);
	conn_param_init(&cp, o);
	if (rdma_connect(ep->id, &cp))
		return failed("rdma_connect", neg_errno(EIO));

	pfd.fd = ep->ch->fd;
	pfd.events = POLLIN;
	if (poll(&pfd, 1, tmo) != 1)
		return failed("waiting for the connect's outcome", -ETIMEDOUT);
	if (rdma_get_cm_event(ep->ch, &ev))
		return failed("rdma_get_cm_event", neg_errno(EIO));
	switch (ev->event) {
	case RDMA_CM_EVENT_ESTABLISHED:
		rc = 0;
		break;
	case RDMA_CM_EVENT_REJECTED:
		if (reject_data && reject_len) {
			size_t n = ev->param.conn.private_data_len;
			if (n > *reject_len)
				n = *reject_len;
			if (ev->param.conn.private_data)
				memcpy(reject_data, ev->param.conn.private_data, n);
			*reject_len = n;
		}
		rc = -ECONNREFUSED;
		break;
	case RDMA_CM_EVENT_UNREACHABLE:
		rc = -EHOSTUNREACH;
		break;
	default:
		rc = ev->status < 0 ? ev->status : -EPROTO;
		fprintf(stderr, "verbs_pair: connect: %s (status %d)\n", rdma_event_str(ev->event),
			ev->status);
		break;
	}
	rdma_ack_cm_event(ev);
	return rc;
}

int vp_connect(const struct vp_opts *o, struct vp_endpoint *ep, int prepost_n, size_t recv_len)
{
	return vp_connect_ex(o, ep, prepost_n, recv_len, NULL, NULL);
}

void vp_endpoint_close(struct vp_endpoint *ep)
{
	if (ep->id && ep->id->qp)
		rdma_disconnect(ep->id);
	if (ep->id && ep->id->qp)
		rdma_destroy_qp(ep->id);
	if (ep->mr)
		ibv_dereg_mr(ep->mr);
	if (ep->cq)
		ibv_destroy_cq(ep->cq);
	if (ep->pd)
		ibv_dealloc_pd(ep->pd);
	if (ep->id)
		rdma_destroy_id(ep->id);
	if (ep->ch)
		rdma_destroy_event_channel(ep->ch);
	free(ep->buf);
	memset(ep, 0, sizeof(*ep));
}

int vp_post_recv(struct vp_endpoint *ep, size_t off, size_t len, uint64_t wr_id)
{
	struct ibv_sge sge = {
		.addr = (uintptr_t)ep->buf + off,
		.length = (uint32_t)len,
		.lkey = ep->mr->lkey,
	};
	struct ibv_recv_wr wr = {.wr_id = wr_id, .sg_list = &sge, .num_sge = 1}, *bad;

	if (off + len > ep->buf_len)
		return -EINVAL;
	return -ibv_post_recv(ep->id->qp, &wr, &bad);
}

static int post_send_wr(struct vp_endpoint *ep, struct ibv_send_wr *wr, size_t off, size_t len)
{
	struct ibv_send_wr *bad;
	struct ibv_sge sge = {
		.addr = (uintptr_t)ep->buf + off,
		.length = (uint32_t)len,
		.lkey = ep->mr->lkey,
	};

	if (off + len > ep->buf_len)
		return -EINVAL;
	wr->sg_list = &sge;
	wr->num_sge = len ? 1 : 0;
	return -ibv_post_send(ep->id->qp, wr, &bad);
}

int vp_post_send(struct vp_endpoint *ep, size_t off, size_t len, uint64_t wr_id, int flags)
{
	struct ibv_send_wr wr = {.wr_id = wr_id, .opcode = IBV_WR_SEND, .send_flags = flags};

	return post_send_wr(ep, &wr, off, len);
}

int vp_post_rdma(struct vp_endpoint *ep, enum ibv_wr_opcode opcode, size_t off, size_t len,
		 uint64_t raddr, uint32_t rkey, uint64_t wr_id, int flags)
{
	struct ibv_send_wr wr = {.wr_id = wr_id, .opcode = opcode, .send_flags = flags};

	wr.wr.rdma.remote_addr = raddr;
	wr.wr.rdma.rkey = rkey;
	return post_send_wr(ep, &wr, off, len);
}

int vp_post_write(struct vp_endpoint *ep, size_t off, size_t len, uint64_t raddr, uint32_t rkey,
		  uint64_t wr_id, int flags)
{
	return vp_post_rdma(ep, IBV_WR_RDMA_WRITE, off, len, raddr, rkey, wr_id, flags);
}

int vp_poll_one(struct vp_endpoint *ep, struct ibv_wc *wc, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	for (;;) {
		int n = ibv_poll_cq(ep->cq, 1, wc);
		if (n < 0)
			return -EIO;
		if (n == 1)
			return 1;
		if (now_ms() >= end)
			return 0;
	}
}
