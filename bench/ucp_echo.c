// SPDX-License-Identifier: MIT
/*
 * ucp_echo - the UCX peer of tern's echo: a UCP active-message RPC.
 *
 * ucx_perftest times one message at a time and only in one direction per
 * step; an RPC user of UCX writes this instead: the client sends a request
 * AM (id 0) with UCP_AM_SEND_FLAG_REPLY, the server's handler answers on
 * the reply endpoint UCP hands it (id 1), and the client keeps --inflight
 * calls outstanding.  The transports are whatever UCX selects under the
 * usual environment (UCX_TLS, UCX_NET_DEVICES, ...); bench/peers.py sets
 * them per lane and writes down which.
 *
 *   server handler: an eager request whose receive buffer UCP lets it keep
 *     (UCP_AM_RECV_ATTR_FLAG_DATA) is answered straight from that buffer,
 *     released when the reply is sent; any other eager request is copied
 *     into one of the server's buffers first, since its receive buffer is
 *     gone when the handler returns and the reply may still be queued then.
 *     (Sending from that buffer "only if it completes at once", with
 *     UCP_OP_ATTR_FLAG_FORCE_IMM_CMPL, is not safe: over rc_verbs UCX 1.13
 *     may still return a request that reads the buffer later.)  A
 *     rendezvous request is fetched into a server buffer with
 *     ucp_am_recv_data_nbx() and answered when it is in.
 *   client: the same rules for replies; every reply is checked (length,
 *     and the sequence number in the header and in the first bytes).
 *
 * The parent is the client and a forked child the server (the fork comes
 * before either touches UCX); the server's worker address crosses a pipe.
 * --one-thread: one process, two workers (server and client), one call at
 * a time, both workers progressed in turn: the shape of bench/cost, for
 * "valgrind --tool=callgrind --toggle-collect=bench_measure".
 * Output: one JSON object per size, the keys of tern's benchmarks.
 */
#include <errno.h>
#include <inttypes.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>
#include <ucp/api/ucp.h>

#include "stats.h"

#define AM_REQ	 0
#define AM_REPLY 1
#define NBUF	 64 /* server (and client) buffers: more than --inflight */

struct cfg {
	size_t sizes[16];
	int nsizes;
	long iters, warmup;
	int inflight;
	bool one_thread;
};

/* A message buffer with the request (or send) that still uses it. */
struct buf {
	uint8_t *data;
	bool busy;
	uint64_t seq;
	ucp_ep_h ep; /* server: where the answer goes */
	void *desc;  /* server: a receive buffer UCP let us keep, sent from */
	struct side *side;
};

struct side {
	ucp_context_h ctx;
	ucp_worker_h worker;
	struct buf bufs[NBUF];
	size_t max;
	/* client only */
	size_t len;
	long total, issued, done, bad;
	double *t_issue, *lat;
	bool untimed; /* --one-thread: no clock reads in what callgrind counts */
	long warmup;
};

static int check(ucs_status_t st, const char *what)
{
	if (st == UCS_OK)
		return 0;
	fprintf(stderr, "ucp_echo: %s: %s\n", what, ucs_status_string(st));
	return -1;
}

static struct buf *buf_get(struct side *s)
{
	for (int i = 0; i < NBUF; i++)
		if (!s->bufs[i].busy) {
			s->bufs[i].busy = true;
			return &s->bufs[i];
		}
	return NULL;
}

static void buf_sent(void *req, ucs_status_t st, void *user)
{
	struct buf *b = user;

	if (st != UCS_OK)
		fprintf(stderr, "ucp_echo: send: %s\n", ucs_status_string(st));
	if (b->desc) {
		ucp_am_data_release(b->side->worker, b->desc);
		b->desc = NULL;
	}
	b->busy = false;
	ucp_request_free(req);
}

/* Send @len bytes of @b (header: its sequence number); @b is free again
 * when UCP is done with it. */
static void send_buf(struct buf *b, unsigned id, size_t len, uint32_t flags)
{
	ucp_request_param_t p = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
						 UCP_OP_ATTR_FIELD_USER_DATA |
						 UCP_OP_ATTR_FIELD_FLAGS,
				 .flags = flags,
				 .cb.send = buf_sent,
				 .user_data = b};
	ucs_status_ptr_t r = ucp_am_send_nbx(b->ep, id, &b->seq, sizeof(b->seq), b->data, len, &p);

	if (r == NULL) {
		b->busy = false;
	} else if (UCS_PTR_IS_ERR(r)) {
		fprintf(stderr, "ucp_echo: send: %s\n", ucs_status_string(UCS_PTR_STATUS(r)));
		b->busy = false;
	}
}

/* ---- server ------------------------------------------------------------------ */

static void srv_fetched(void *req, ucs_status_t st, size_t len, void *user)
{
	struct buf *b = user;

	ucp_request_free(req);
	if (st != UCS_OK) {
		b->busy = false;
		return;
	}
	send_buf(b, AM_REPLY, len, 0);
}

static ucs_status_t on_request(void *arg, const void *hdr, size_t hlen, void *data, size_t len,
			       const ucp_am_recv_param_t *p)
{
	struct side *s = arg;
	struct buf *b;
	uint64_t seq;

	if (hlen != sizeof(seq) || !(p->recv_attr & UCP_AM_RECV_ATTR_FIELD_REPLY_EP) ||
	    len > s->max)
		return UCS_ERR_INVALID_PARAM;
	memcpy(&seq, hdr, sizeof(seq));
	b = buf_get(s); /* the reply's header lives in it until the send is done */
	if (!b) {
		fprintf(stderr, "ucp_echo: server out of buffers\n");
		return UCS_ERR_NO_MEMORY;
	}
	b->seq = seq;
	b->ep = p->reply_ep;
	if (p->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
		ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
							  UCP_OP_ATTR_FIELD_USER_DATA,
					  .cb.recv_am = srv_fetched,
					  .user_data = b};
		ucs_status_ptr_t r = ucp_am_recv_data_nbx(s->worker, data, b->data, len, &rp);

		if (r == NULL)
			send_buf(b, AM_REPLY, len, 0);
		else if (UCS_PTR_IS_ERR(r))
			b->busy = false;
		return UCS_INPROGRESS;
	}
	if (p->recv_attr & UCP_AM_RECV_ATTR_FLAG_DATA) {
		/* UCP lets us keep its receive buffer: answer from it, no copy */
		ucp_request_param_t sp = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
							  UCP_OP_ATTR_FIELD_USER_DATA,
					  .cb.send = buf_sent,
					  .user_data = b};
		ucs_status_ptr_t r =
			ucp_am_send_nbx(b->ep, AM_REPLY, &b->seq, sizeof(b->seq), data, len, &sp);

		if (r == NULL || UCS_PTR_IS_ERR(r)) {
			b->busy = false;
			return UCS_OK; /* sent (or failed): UCP may free its buffer */
		}
		b->desc = data; /* released by buf_sent() */
		return UCS_INPROGRESS;
	}
	memcpy(b->data, data, len);
	send_buf(b, AM_REPLY, len, 0);
	return UCS_OK;
}

/* ---- client ------------------------------------------------------------------ */

static void reply_in(struct side *c, uint64_t seq, const void *data, size_t len)
{
	size_t k = c->len < sizeof(seq) ? c->len : sizeof(seq);

	if ((long)seq >= c->total || len != c->len || memcmp(data, &seq, k)) {
		if (c->bad++ < 3) {
			uint64_t got = 0;

			memcpy(&got, data, len < k ? len : k);
			fprintf(stderr,
				"ucp_echo: bad reply: header seq %" PRIu64
				", %zu bytes (want %zu), "
				"payload says %" PRIu64 "\n",
				seq, len, c->len, got);
		}
	} else if ((long)seq >= c->warmup && !c->untimed) {
		c->lat[seq - (uint64_t)c->warmup] = bench_now_us() - c->t_issue[seq];
	}
	c->done++;
}

static void cli_fetched(void *req, ucs_status_t st, size_t len, void *user)
{
	struct buf *b = user;
	struct side *c = b->side;

	ucp_request_free(req);
	if (st != UCS_OK)
		c->bad++;
	reply_in(c, b->seq, b->data, len);
	b->busy = false;
}

static ucs_status_t on_reply(void *arg, const void *hdr, size_t hlen, void *data, size_t len,
			     const ucp_am_recv_param_t *p)
{
	struct side *c = arg;
	uint64_t seq;

	if (hlen != sizeof(seq) || len > c->max) {
		c->bad++;
		c->done++;
		return UCS_OK;
	}
	memcpy(&seq, hdr, sizeof(seq));
	if (p->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) {
		struct buf *b = buf_get(c);
		ucp_request_param_t rp = {.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK |
							  UCP_OP_ATTR_FIELD_USER_DATA,
					  .cb.recv_am = cli_fetched,
					  .user_data = b};
		ucs_status_ptr_t r;

		if (!b) {
			c->bad++;
			c->done++;
			return UCS_OK;
		}
		b->seq = seq;
		r = ucp_am_recv_data_nbx(c->worker, data, b->data, len, &rp);
		if (r == NULL) {
			reply_in(c, seq, b->data, len);
			b->busy = false;
		} else if (UCS_PTR_IS_ERR(r)) {
			b->busy = false;
			c->bad++;
			c->done++;
		}
		return UCS_INPROGRESS;
	}
	reply_in(c, seq, data, len);
	return UCS_OK;
}

static int issue(struct side *c, ucp_ep_h ep)
{
	struct buf *b = buf_get(c);
	long seq = c->issued;

	if (!b)
		return -EAGAIN; /* a send still holds every buffer: progress first */
	b->seq = (uint64_t)seq;
	b->ep = ep;
	/* the payload was filled once (prepare()); each call writes only its number */
	memcpy(b->data, &seq, c->len < sizeof(seq) ? c->len : sizeof(seq));
	if (!c->untimed)
		c->t_issue[seq] = bench_now_us();
	send_buf(b, AM_REQ, c->len, UCP_AM_SEND_FLAG_REPLY);
	c->issued++;
	return 0;
}

/* ---- set-up ------------------------------------------------------------------- */

static int side_init(struct side *s, size_t max, unsigned id, ucp_am_recv_callback_t cb)
{
	ucp_params_t pp = {.field_mask = UCP_PARAM_FIELD_FEATURES, .features = UCP_FEATURE_AM};
	ucp_worker_params_t wp = {.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE,
				  .thread_mode = UCS_THREAD_MODE_SINGLE};
	ucp_am_handler_param_t hp = {.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID |
						   UCP_AM_HANDLER_PARAM_FIELD_CB |
						   UCP_AM_HANDLER_PARAM_FIELD_ARG,
				     .id = id,
				     .cb = cb,
				     .arg = s};

	s->max = max;
	for (int i = 0; i < NBUF; i++) {
		s->bufs[i].data = calloc(1, max ? max : 1);
		s->bufs[i].side = s;
		if (!s->bufs[i].data)
			return -1;
	}
	if (check(ucp_init(&pp, NULL, &s->ctx), "ucp_init") ||
	    check(ucp_worker_create(s->ctx, &wp, &s->worker), "ucp_worker_create") ||
	    check(ucp_worker_set_am_recv_handler(s->worker, &hp), "set_am_recv_handler"))
		return -1;
	return 0;
}

static int connect_to(struct side *s, const void *addr, ucp_ep_h *ep)
{
	ucp_ep_params_t ep_p = {.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS, .address = addr};

	return check(ucp_ep_create(s->worker, &ep_p, ep), "ucp_ep_create");
}

static size_t max_size(const struct cfg *c)
{
	size_t m = 8;

	for (int i = 0; i < c->nsizes; i++)
		m = c->sizes[i] > m ? c->sizes[i] : m;
	return m;
}

static int serve(const struct cfg *c, int wfd)
{
	struct side s = {0};
	ucp_address_t *addr;
	size_t alen;

	if (side_init(&s, max_size(c), AM_REQ, on_request) ||
	    check(ucp_worker_get_address(s.worker, &addr, &alen), "get_address"))
		return 1;
	if (write(wfd, &alen, sizeof(alen)) != (ssize_t)sizeof(alen) ||
	    write(wfd, addr, alen) != (ssize_t)alen)
		return 1;
	close(wfd);
	for (;;) /* until the client is done and kills us */
		ucp_worker_progress(s.worker);
}

static void print_run(const struct cfg *c, struct side *cl, double t0, const char *mode)
{
	struct bench_stats st;

	bench_stats_compute(&st, cl->lat, (size_t)c->iters, bench_now_us() - t0);
	printf("{\"bench\":\"ucp_echo\",\"mode\":\"%s\",\"kind\":\"peer\",\"size\":%zu,"
	       "\"inflight\":%d,\"iters\":%ld,\"p50_us\":%.3f,\"p99_us\":%.3f,\"mean_us\":%.3f,"
	       "\"rate_per_s\":%.0f}\n",
	       mode, cl->len, c->inflight, c->iters, st.p50_us, st.p99_us, st.mean_us,
	       st.rate_per_s);
	fflush(stdout);
}

static int prepare(const struct cfg *c, struct side *cl, size_t len)
{
	cl->len = len;
	cl->total = c->iters + c->warmup;
	cl->warmup = c->warmup;
	cl->issued = cl->done = cl->bad = 0;
	free(cl->t_issue);
	free(cl->lat);
	cl->t_issue = calloc((size_t)cl->total, sizeof(double));
	cl->lat = calloc((size_t)c->iters, sizeof(double));
	for (int i = 0; i < NBUF; i++)
		memset(cl->bufs[i].data, 0x5a, cl->max);
	return cl->t_issue && cl->lat ? 0 : -1;
}

static int client(const struct cfg *c, const void *srv_addr)
{
	struct side cl = {0};
	ucp_ep_h ep;

	if (side_init(&cl, max_size(c), AM_REPLY, on_reply) || connect_to(&cl, srv_addr, &ep))
		return 1;
	for (int i = 0; i < c->nsizes; i++) {
		double t0 = 0;

		if (prepare(c, &cl, c->sizes[i]))
			return 1;
		while (cl.done < cl.total) {
			while (cl.issued < cl.total && cl.issued - cl.done < c->inflight) {
				if (cl.issued == c->warmup)
					t0 = bench_now_us();
				if (issue(&cl, ep))
					break;
			}
			ucp_worker_progress(cl.worker);
		}
		if (cl.bad) {
			fprintf(stderr, "ucp_echo: %ld bad replies\n", cl.bad);
			return 1;
		}
		print_run(c, &cl, t0, "busy");
	}
	return 0;
}

/* ---- one thread, both workers (for callgrind) -------------------------------------- */

struct pair {
	struct side srv, cl;
	ucp_ep_h ep;
};

static int one_round_trip(void *arg)
{
	struct pair *p = arg;
	long want = p->cl.done + 1;

	if (issue(&p->cl, p->ep))
		return -1;
	while (p->cl.done < want) {
		ucp_worker_progress(p->srv.worker);
		ucp_worker_progress(p->cl.worker);
	}
	return 0;
}

static int one_thread(const struct cfg *c)
{
	struct pair p = {0};
	ucp_address_t *addr;
	size_t alen;

	if (side_init(&p.srv, max_size(c), AM_REQ, on_request) ||
	    side_init(&p.cl, max_size(c), AM_REPLY, on_reply) ||
	    check(ucp_worker_get_address(p.srv.worker, &addr, &alen), "get_address") ||
	    connect_to(&p.cl, addr, &p.ep))
		return 1;
	p.cl.untimed = true; /* like bench/cost: the whole run is timed, not each call */
	for (int i = 0; i < c->nsizes; i++) {
		double t0;
		int rc;

		if (prepare(c, &p.cl, c->sizes[i]))
			return 1;
		rc = bench_warm_up(one_round_trip, &p, c->warmup);
		t0 = bench_now_us();
		if (rc == 0)
			rc = bench_measure(one_round_trip, &p, c->iters);
		if (rc || p.cl.bad) {
			fprintf(stderr, "ucp_echo: one thread: %ld bad replies\n", p.cl.bad);
			return 1;
		}
		printf("{\"bench\":\"ucp_echo\",\"mode\":\"one-thread\",\"size\":%zu,\"iters\":%ld,"
		       "\"ns_per_rt\":%.0f}\n",
		       p.cl.len, c->iters, (bench_now_us() - t0) * 1e3 / (double)c->iters);
	}
	ucp_worker_release_address(p.srv.worker, addr);
	return 0; /* the process ends here: no need to take the workers down */
}

/* read() until @len bytes came, or the writer is gone. */
static int read_full(int fd, void *buf, size_t len)
{
	for (size_t got = 0; got < len;) {
		ssize_t n = read(fd, (char *)buf + got, len - got);

		if (n <= 0)
			return -1;
		got += (size_t)n;
	}
	return 0;
}

static void usage(FILE *f)
{
	fprintf(f, "usage: ucp_echo [--sizes 32,1K,4K,64K] [--iters N] [--warmup N]\n"
		   "                [--inflight N] [--one-thread]\n"
		   "A UCP active-message echo between two processes (transports from UCX_TLS\n"
		   "and friends); JSON lines on stdout.\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"inflight", required_argument, 0, 'i'},
		{"one-thread", no_argument, 0, 'o'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	struct cfg c = {.sizes = {32, 1024, 4096, 65536},
			.nsizes = 4,
			.iters = 20000,
			.warmup = 2000,
			.inflight = 1};
	int ch, pfd[2], st, rc;
	size_t alen;
	void *addr;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:w:i:oh", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, c.sizes, 16, &c.nsizes)) {
				usage(stderr);
				return 2;
			}
			break;
		case 'n':
			c.iters = atol(optarg);
			break;
		case 'w':
			c.warmup = atol(optarg);
			break;
		case 'i':
			c.inflight = atoi(optarg);
			break;
		case 'o':
			c.one_thread = true;
			break;
		case 'h':
			usage(stdout);
			return 0;
		default:
			usage(stderr);
			return 2;
		}
	}
	if (c.iters <= 0 || c.warmup < 0 || c.inflight < 1 || c.inflight > NBUF / 2) {
		usage(stderr);
		return 2;
	}
	if (c.one_thread)
		return one_thread(&c);
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		close(pfd[0]);
		_exit(serve(&c, pfd[1]));
	}
	close(pfd[1]);
	addr = NULL;
	if (read_full(pfd[0], &alen, sizeof(alen)) || alen > 1 << 20 || !(addr = malloc(alen)) ||
	    read_full(pfd[0], addr, alen)) {
		fprintf(stderr, "ucp_echo: the server did not start\n");
		kill(pid, SIGKILL);
		waitpid(pid, &st, 0);
		free(addr);
		return 1;
	}
	close(pfd[0]);
	rc = client(&c, addr);
	kill(pid, SIGKILL); /* the server has no "the client is done" of its own */
	waitpid(pid, &st, 0);
	free(addr);
	return rc;
}
