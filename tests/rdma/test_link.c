// SPDX-License-Identifier: MIT
/*
 * The two-device lane (suite rdma_link): a client on rxc and a server on
 * rxd, the two ends of a veth pair in the Soft-RoCE VM, with netem losing
 * and delaying what both ends send (tools/rxe-vm --two-devices --loss PCT
 * --delay US).  On one device and a dummy netdev no packet ever crosses a
 * link; here every one does, some are lost, and rxe's retransmission runs.
 *
 * What it pins down: the calls cross the veth (not a loopback inside one
 * device), every one completes with the right bytes through the losses,
 * and the retransmissions the loss causes show up in the RNR monitor under
 * their canonical names while the RNR counters stay still.
 */
#include <errno.h>
#include <net/if.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>
#include <cmocka.h>

#include "fixture.h"
#include "tern/rnr.h"

#define M_ECHO 0x200
#define M_HOLD 0x201

#define SMALL	       1024
#define SEQ_CALLS      300 /* one at a time: every loss is at the tail */
#define PIPE_CALLS     2000
#define PIPE_WINDOW    32	 /* in flight at once: most losses are followed */
#define LARGE	       (1 << 20) /* over the slot: RDMA READ and WRITE */
#define LARGE_CALLS    16	 /* through windows; TERN_TEST_LINK_LARGE_CALLS overrides */
#define LARGE_CALLS_MR 8	 /* registered per call */
#define CALL_TIMEOUT   60000

struct link {
	const char *cdev, *sdev;       /* rxc, rxd */
	const char *cnetdev, *snetdev; /* vc, vd */
	double loss;		       /* percent, each way */
	unsigned delay_us;
	const char *restore; /* shell command: the link back as it was */
};

static struct link lk;

static double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void fill(uint8_t *b, size_t n, uint32_t seed)
{
	for (size_t i = 0; i < n; i++)
		b[i] = (uint8_t)(seed * 2654435761u >> 24) ^ (uint8_t)(i * 31 + (i >> 7));
}

/* /sys/class/net/<netdev>/statistics/<name>. */
static uint64_t netdev_stat(const char *netdev, const char *name)
{
	char path[256];
	unsigned long long v = 0;
	FILE *fp;

	snprintf(path, sizeof(path), "/sys/class/net/%s/statistics/%s", netdev, name);
	fp = fopen(path, "r");
	assert_non_null(fp);
	assert_int_equal(fscanf(fp, "%llu", &v), 1);
	fclose(fp);
	return v;
}

/* What netem dropped on @netdev so far ("dropped N" in tc -s), or -1. */
static long long netem_dropped(const char *netdev)
{
	char cmd[128], line[512];
	long long n = -1;
	FILE *p;

	snprintf(cmd, sizeof(cmd), "tc -s qdisc show dev %s 2>/dev/null", netdev);
	if (!(p = popen(cmd, "r")))
		return -1;
	while (fgets(line, sizeof(line), p)) {
		const char *d = strstr(line, "(dropped ");
		if (d && n < 0)
			n = strtoll(d + strlen("(dropped "), NULL, 10);
	}
	pclose(p);
	return n;
}

static uint64_t delta(tern_rnr_monitor *m, const char *dev, const char *name)
{
	uint64_t d = 0;
	assert_int_equal(tern_rnr_monitor_delta(m, dev, 1, name, &d), 0);
	return d;
}

/* ---- calls -------------------------------------------------------------- */

struct pipe {
	struct fx *f;
	int issued, done, bad;
	uint8_t seen[PIPE_CALLS];
};

static void pipe_issue(struct pipe *p);

static void pipe_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct pipe *p = user;
	uint8_t want[SMALL];

	(void)s;
	/* The call's index travels in its first four bytes. */
	if (status || len != SMALL) {
		p->bad++;
	} else {
		uint32_t i;
		memcpy(&i, reply, sizeof(i));
		fill(want, SMALL, i);
		memcpy(want, &i, sizeof(i));
		if (i >= PIPE_CALLS || memcmp(reply, want, SMALL) || p->seen[i]++)
			p->bad++; /* wrong, or a duplicate */
	}
	p->done++;
	pipe_issue(p);
}

static void pipe_issue(struct pipe *p)
{
	while (p->issued < PIPE_CALLS && p->issued - p->done < PIPE_WINDOW) {
		static uint8_t b[SMALL];
		uint32_t i = (uint32_t)p->issued;

		fill(b, SMALL, i);
		memcpy(b, &i, sizeof(i));
		/* A nonblock session copies the request into a send slot or
		 * fails: one buffer serves.  The window is half the slots, so
		 * it never fails for want of a slot or credit; it is called
		 * from callbacks too, so a failure is counted, not asserted. */
		if (tern_call(p->f->cli, M_ECHO, b, SMALL, pipe_cb, p, NULL)) {
			p->bad++;
			p->done++;
		}
		p->issued++;
	}
}

static void sequential_calls(struct fx *f)
{
	static uint8_t in[SMALL], out[SMALL];
	struct tern_sync_reply rep = {.buf = out, .cap = sizeof(out)};

	for (uint32_t i = 0; i < SEQ_CALLS; i++) {
		fill(in, SMALL, i);
		memset(out, 0, sizeof(out));
		assert_int_equal(tern_call_sync(f->cli, M_ECHO, in, SMALL, &rep, CALL_TIMEOUT), 0);
		assert_int_equal(rep.len, SMALL);
		assert_memory_equal(out, in, SMALL);
	}
}

static void pipelined_calls(struct fx *f)
{
	struct pipe *p = calloc(1, sizeof(*p));

	p->f = f;
	pipe_issue(p);
	assert_int_equal(fx_run_until_count(f, &p->done, PIPE_CALLS, 10 * CALL_TIMEOUT), 0);
	assert_int_equal(p->bad, 0);
	free(p);
}

static int large_calls_n(void)
{
	const char *e = getenv("TERN_TEST_LINK_LARGE_CALLS");

	return e && atoi(e) > 0 ? atoi(e) : LARGE_CALLS;
}

static void large_calls(struct fx *f, int n)
{
	uint8_t *in = malloc(LARGE), *out = malloc(LARGE);
	struct tern_sync_reply rep = {.buf = out, .cap = LARGE, .direct = 1};

	assert_non_null(in);
	assert_non_null(out);
	for (int i = 0; i < n; i++) {
		double t;
		int rc;

		fill(in, LARGE, 0x1000 + (uint32_t)i);
		memset(out, 0, LARGE);
		t = now_s();
		rc = tern_call_sync(f->cli, M_ECHO, in, LARGE, &rep, CALL_TIMEOUT);
		if (rc) {
			/* Say why, and what both devices counted, before failing. */
			printf("link: large call %d of %d: %s after %.1f s (%s; %s)\n", i + 1, n,
			       strerror(-rc), now_s() - t, rep.errmsg, tern_ctx_last_error(f->ctx));
			fflush(stdout);
			if (system("grep -H . /sys/class/infiniband/rx[cd]/ports/1/hw_counters/*"))
				printf("link: no hw_counters\n");
		}
		assert_int_equal(rc, 0);
		assert_int_equal(rep.len, LARGE);
		assert_memory_equal(out, in, LARGE);
	}
	free(in);
	free(out);
}

static void test_calls_cross_the_link_intact_through_loss(void **state)
{
	static const char *const retrans[] = {
		TERN_RNR_REQUESTER_RETRIES,
		TERN_RNR_REQUESTER_SEQUENCE_NAK,
		TERN_RNR_RESPONDER_DUPLICATE_REQUEST,
		TERN_RNR_RESPONDER_OUT_OF_SEQUENCE,
	};
	static const char *const never[] = {
		TERN_RNR_RESPONDER_OUT_OF_BUFFER,
		TERN_RNR_REQUESTER_RNR_NAK,
		TERN_RNR_RNR_RETRIES_EXCEEDED,
		TERN_RNR_TRANSPORT_RETRIES_EXCEEDED,
	};
	const int calls = SEQ_CALLS + PIPE_CALLS + large_calls_n() + LARGE_CALLS_MR;
	struct tern_session_opts so = {.size = sizeof(so), .nonblock = 1};
	tern_rnr_monitor *mon;
	struct fx f;
	uint64_t ctx0, stx0, ctx, stx, retries = 0;
	long long cdrop0 = netem_dropped(lk.cnetdev), sdrop0 = netem_dropped(lk.snetdev);
	long long cdrop, sdrop;
	double t0, t1, t2, t3, t4;

	(void)state;
	/* Every device: rxe0 (on the dummy netdev) must not move either. */
	assert_int_equal(tern_rnr_monitor_create(NULL, &mon), 0);
	ctx0 = netdev_stat(lk.cnetdev, "tx_packets");
	stx0 = netdev_stat(lk.snetdev, "tx_packets");

	assert_int_equal(fx_setup(&f, &so, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	t0 = now_s();
	sequential_calls(&f);
	t1 = now_s();
	pipelined_calls(&f);
	t2 = now_s();
	/*
	 * The large calls export their buffers through memory windows, bound
	 * on the send queue: before win_fence() the guest's rxe ran a bind a
	 * second time when it resent the work requests before it, and the QP
	 * stopped for good (docs/chaos.md, failure H): about one 1 MiB call in
	 * 60 to 120 here.  Then the same from a context that registers each
	 * call's buffers instead (TERN_VERBS_NO_MW), the other way to export.
	 */
	large_calls(&f, large_calls_n());
	t3 = now_s();
	fx_teardown(&f);
	setenv("TERN_VERBS_NO_MW", "1", 1);
	assert_int_equal(fx_setup(&f, &so, TERN_PROGRESS_BUSY), 0);
	assert_int_equal(tern_register_raw(f.ctx, M_ECHO, fx_echo, NULL), 0);
	large_calls(&f, LARGE_CALLS_MR);
	t4 = now_s();
	fx_teardown(&f);
	unsetenv("TERN_VERBS_NO_MW");
	usleep(100 * 1000); /* past hw_counters' lifespan (rxe: 12 ms) */

	ctx = netdev_stat(lk.cnetdev, "tx_packets") - ctx0;
	stx = netdev_stat(lk.snetdev, "tx_packets") - stx0;
	cdrop = netem_dropped(lk.cnetdev) - cdrop0;
	sdrop = netem_dropped(lk.snetdev) - sdrop0;
	printf("link: loss %g%% and delay %u us each way; %d calls (%d x 1 KiB one at a time "
	       "in %.1f s, %d x 1 KiB %d in flight in %.1f s, %d x 1 MiB through memory windows "
	       "in %.1f s, %d x 1 MiB registered per call in %.1f s), all intact\n",
	       lk.loss, lk.delay_us, calls, SEQ_CALLS, t1 - t0, PIPE_CALLS, PIPE_WINDOW, t2 - t1,
	       large_calls_n(), t3 - t2, LARGE_CALLS_MR, t4 - t3);
	printf("link: packets sent %s %llu, %s %llu; netem dropped %lld and %lld\n", lk.cnetdev,
	       (unsigned long long)ctx, lk.snetdev, (unsigned long long)stx, cdrop, sdrop);
	for (size_t d = 0; d < 2; d++) {
		const char *dev = d ? lk.sdev : lk.cdev;
		printf("link: %s", dev);
		for (size_t i = 0; i < sizeof(retrans) / sizeof(retrans[0]); i++)
			printf(" %s +%llu", retrans[i],
			       (unsigned long long)delta(mon, dev, retrans[i]));
		printf("\n");
		retries += delta(mon, dev, TERN_RNR_REQUESTER_RETRIES);
		/* Every call crossed the link: the requests left through the
		 * client's device, the replies through the server's. */
		assert_true(delta(mon, dev, "sent_pkts") >= (uint64_t)calls);
		/* Loss is not RNR, and nothing was given up. */
		for (size_t i = 0; i < sizeof(never) / sizeof(never[0]); i++)
			assert_int_equal(delta(mon, dev, never[i]), 0);
	}
	assert_true(ctx >= (uint64_t)calls);
	assert_true(stx >= (uint64_t)calls);
	/* Nothing took the loopback inside one device, or the dummy. */
	if (tern_rnr_monitor_delta(mon, "rxe0", 1, "sent_pkts", &ctx0) == 0)
		assert_int_equal(ctx0, 0);
	/* With loss on the link, some packets were lost and resent: a lane
	 * whose losses never happened would test nothing. */
	if (lk.loss > 0) {
		assert_true(cdrop + sdrop > 0);
		assert_true(retries > 0);
	}
	tern_rnr_monitor_destroy(mon);
}

/* ---- a host that vanishes ------------------------------------------------ */

#define HELD	  4
#define IN_FLIGHT 4
/*
 * How long the client may take to notice: (retry_cnt + 1) ACK timeouts,
 * about 2 s with the QP attributes transport/verbs/verbs.c sets, and
 * slack for a loaded TCG guest.  Before they were set, rxe retried
 * forever (it reads a retry_cnt of 7 as "infinite") and no call ever
 * completed.
 */
#define VANISH_BOUND_S 20.0

static tern_req *held_reqs[HELD];
static int n_held;
static int closed_reason;
static bool closed;

static int hold(tern_req *r, const void *in, size_t n, void *u)
{
	(void)in, (void)n, (void)u;
	if (n_held < HELD)
		held_reqs[n_held++] = r;
	return 0;
}

static tern_session *client;

/* The client's session only: the server's (on the same context, with the
 * same options) hears nothing from the vanished side. */
static void on_close(tern_session *s, int reason)
{
	if (s != client)
		return;
	closed = true;
	closed_reason = reason;
}

/* Set @netdev down, as "ip link set NETDEV down" does; 0 or -errno. */
static int netdev_down(const char *netdev)
{
	struct ifreq ifr;
	int fd = socket(AF_INET, SOCK_DGRAM, 0), rc = 0;

	if (fd < 0)
		return -errno;
	memset(&ifr, 0, sizeof(ifr));
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", netdev);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr) == 0) {
		ifr.ifr_flags = (short)(ifr.ifr_flags & ~IFF_UP);
		if (ioctl(fd, SIOCSIFFLAGS, &ifr))
			rc = -errno;
	} else {
		rc = -errno;
	}
	close(fd);
	return rc;
}

struct outcome {
	int done;
	int status[HELD + IN_FLIGHT];
};

static void outcome_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct outcome *o = user;

	(void)s, (void)reply, (void)len;
	o->status[o->done++] = status;
}

/*
 * The server's end of the veth goes down (its host vanished) while the
 * client has calls pending: some held by the server's deferred handler,
 * some sent after the link went (in flight, unacknowledged).  No reply and
 * no disconnect can come; the client's NIC retries, gives up, and every
 * pending call fails with -ECONNRESET, saying why, within seconds.
 */
static void test_a_vanished_host_fails_every_pending_call_within_seconds(void **state)
{
	struct tern_session_opts so = {.size = sizeof(so), .on_close = on_close};
	static struct outcome o; /* the callbacks may run in the teardown */
	struct fx *f = calloc(1, sizeof(*f));
	const char *why;
	double t0, took;

	memset(&o, 0, sizeof(o));
	n_held = 0;
	closed = false;
	client = NULL;
	assert_int_equal(fx_setup(f, &so, TERN_PROGRESS_BUSY), 0);
	*state = f;
	client = f->cli;
	assert_int_equal(tern_register_raw(f->ctx, M_ECHO, fx_echo, NULL), 0);
	assert_int_equal(tern_register_deferred(f->ctx, M_HOLD, hold, NULL), 0);
	for (int i = 0; i < HELD; i++)
		assert_int_equal(tern_call(f->cli, M_HOLD, "x", 1, outcome_cb, &o, NULL), 0);
	assert_int_equal(fx_run_until_count(f, &n_held, HELD, CALL_TIMEOUT), 0);

	assert_int_equal(netdev_down(lk.snetdev), 0);
	t0 = now_s();
	for (int i = 0; i < IN_FLIGHT; i++)
		assert_int_equal(tern_call(f->cli, M_ECHO, "ping", 4, outcome_cb, &o, NULL), 0);
	fx_run_until_count(f, &o.done, HELD + IN_FLIGHT, (int)(VANISH_BOUND_S * 3000));
	took = now_s() - t0;
	fx_run_until(f, &closed, 5000); /* on_close follows the calls' callbacks */
	why = tern_ctx_last_error(f->ctx);
	printf("vanished host: %d of %d pending calls failed in %.2f s; the session: %s (%s)\n",
	       o.done, HELD + IN_FLIGHT, took, closed ? tern_err_name(closed_reason) : "open",
	       why ? why : "");
	assert_int_equal(o.done, HELD + IN_FLIGHT);
	assert_true(took < VANISH_BOUND_S);
	for (int i = 0; i < HELD + IN_FLIGHT; i++)
		assert_int_equal(o.status[i], -ECONNRESET);
	assert_true(closed);
	assert_int_equal(closed_reason, -ECONNRESET);
	assert_non_null(why);
	assert_non_null(strstr(why, "stopped answering"));
}

/* The link comes back as it was whatever the test did, for the tests
 * after it (going down also dropped the routes through it). */
static int link_restore(void **state)
{
	struct fx *f = *state;
	int rc = system(lk.restore);

	if (rc != 0)
		fprintf(stderr, "restoring the link failed (%d): %s\n", rc, lk.restore);
	if (f) {
		fx_teardown(f);
		free(f);
	}
	*state = NULL;
	return rc == 0 ? 0 : -1;
}

int main(int argc, char **argv)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_calls_cross_the_link_intact_through_loss),
		cmocka_unit_test_teardown(
			test_a_vanished_host_fails_every_pending_call_within_seconds, link_restore),
	};
	const char *loss = getenv("TERN_TEST_LINK_LOSS"),
		   *delay = getenv("TERN_TEST_LINK_DELAY_US");

	lk.cdev = getenv("TERN_TEST_CLIENT_DEV");
	lk.sdev = getenv("TERN_TEST_SERVER_DEV");
	lk.cnetdev = getenv("TERN_TEST_CLIENT_NETDEV");
	lk.snetdev = getenv("TERN_TEST_SERVER_NETDEV");
	lk.loss = loss ? strtod(loss, NULL) : 0;
	lk.delay_us = delay ? (unsigned)strtoul(delay, NULL, 10) : 0;
	lk.restore = getenv("TERN_TEST_LINK_RESTORE");
	if (!fx_listen_uri() || !lk.cdev || !lk.sdev || !lk.cnetdev || !lk.snetdev || !lk.restore) {
		printf("SKIP: not in the two-device lane (tools/rxe-vm --two-devices, "
		       "TERN_TEST_LINK=1)\n");
		return 77;
	}
	if (argc > 1) /* one test by name (a cmocka pattern) */
		cmocka_set_test_filter(argv[1]);
	return cmocka_run_group_tests(tests, NULL, NULL);
}
