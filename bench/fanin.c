// SPDX-License-Identifier: MIT
/*
 * fanin - many client sessions saturating one server context, checked.
 *
 * One server context (this process) and --procs client processes with
 * --sessions sessions each, every session keeping --depth calls in flight
 * until it has made --calls of them.  Requests are of random sizes up to
 * --max-size, their bytes drawn from a seeded generator; the server's
 * inplace handler answers with an FNV-1a checksum of what it received
 * followed by the request itself, and the client checks both against what
 * it sent.  The run fails (exit 1) unless:
 *
 *   - every call's callback ran exactly once and every reply was right
 *     (no error, no lost call, no wrong byte, no wrong checksum);
 *   - the server answered exactly the calls the clients made;
 *   - tern's own metrics agree: the server context's served count of the
 *     method and the client contexts' issued counts (summed) equal the
 *     calls the handler saw and the replies the clients got, errors too,
 *     none left in flight ("metrics_served", "metrics_issued": bench/mx.h);
 *   - on rdma://, the RNR counters of every device did not move (credits
 *     make an RNR NAK impossible; tern/rnr.h reads them from sysfs).
 *
 * Output: one JSON line (sessions, calls, seconds, calls/s, p50/p99 of a
 * call's round trip as the clients saw it, the RNR deltas, the server's
 * registered memory and resident slot memory from tern_ctx_mem() with every session up,
 * its RSS).  ./tools/bench fanin runs it at 256 sessions in the VM; the
 * rdma and unit suites run a small one as a test.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <tern.h>
#include <tern/rnr.h>

#include "mx.h"
#include "stats.h"
#include "verbs_pair.h"

#define M_SUM 0xfa41

struct cfg {
	const char *transport;
	const char *addr;
	uint32_t procs, sessions, depth, calls, max_size;
	uint32_t slot_size, slot_count;
	uint64_t seed;
	uint32_t timeout_s;
	uint32_t accept_timeout_ms;
};

/* What one client process sends the server when it is done. */
struct tally {
	uint64_t issued, ok, failed, wrong, twice, lost;
	uint64_t replies, reply_errors; /* callbacks run; of those, with an error status */
	struct tern_method_stats mx;	/* the client context's metrics of M_SUM, issued */
	int first_error;
	uint32_t sessions_up;
	double elapsed_us;
	double connect_us; /* to bring every session up */
	uint32_t nlat;
};

static uint64_t fnv1a(const uint8_t *p, size_t n)
{
	uint64_t h = 0xcbf29ce484222325ull;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x100000001b3ull;
	return h;
}

static uint64_t mix(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ull;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
	return x ^ (x >> 31);
}

/* The request bytes of call @seq of session @sid: a function of both. */
static size_t request_fill(const struct cfg *c, uint64_t sid, uint64_t seq, uint8_t *buf)
{
	uint64_t r = mix(c->seed ^ mix(sid << 32 ^ seq));
	size_t len = 8 + (size_t)(r % (c->max_size - 7));

	memcpy(buf, &seq, 8);
	for (size_t i = 8; i < len; i++) {
		if (i % 8 == 0)
			r = mix(r);
		buf[i] = (uint8_t)(r >> (8 * (i % 8)));
	}
	return len;
}

/* ---- the server ---------------------------------------------------------------------- */

static uint64_t served, refused;
static uint32_t accepted;

static ssize_t sum(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	uint64_t h = fnv1a(in, n);

	(void)r, (void)u;
	if (n + 8 > cap) {
		refused++;
		return -EMSGSIZE;
	}
	memcpy(out, &h, 8);
	memcpy((uint8_t *)out + 8, in, n);
	served++;
	return (ssize_t)(n + 8);
}

static tern_ctx *server_ctx;
static uint32_t accept_failed, server_errors;

/*
 * A server session that ends for a reason of its own: clients end theirs
 * by going (-ECONNRESET here, or 0), anything else is an error.
 */
static void on_server_close(tern_session *s, int reason)
{
	(void)s;
	if (!reason || reason == -ECONNRESET)
		return;
	if (server_errors++ < 3)
		fprintf(stderr, "fanin: a server session failed: %s (%s)\n", tern_err_name(reason),
			tern_ctx_last_error(server_ctx));
}

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (s && !status) {
		accepted++;
		return;
	}
	if (!accept_failed++)
		fprintf(stderr, "fanin: an accept failed: %s (%s)\n", tern_err_name(status),
			tern_ctx_last_error(server_ctx));
}

static const char *const rnr_names[] = {
	TERN_RNR_RESPONDER_OUT_OF_BUFFER,
	TERN_RNR_REQUESTER_RNR_NAK,
	TERN_RNR_RNR_RETRIES_EXCEEDED,
};

/* ---- a client process ------------------------------------------------------------------- */

struct csess {
	const struct cfg *c;
	struct tally *t;
	tern_session *s;
	uint64_t sid, next, done, inflight;
	uint8_t *seen; /* one byte per call: how many times its callback ran */
	double *sent_us;
	bool up, failed;
};

static double *lat;
static uint32_t nlat, cap_lat;
static uint32_t connected, conn_failed;

static void on_connect(tern_session *s, int status)
{
	(void)s;
	if (status)
		conn_failed++;
	else
		connected++;
}

static void issue(struct csess *cs);

static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct csess *cs = user;
	uint8_t want[65536];
	uint64_t seq, h;
	size_t wlen;

	(void)s;
	cs->inflight--;
	cs->done++;
	cs->t->replies++;
	if (status) {
		cs->t->failed++;
		cs->t->reply_errors++;
		if (!cs->t->first_error)
			cs->t->first_error = status;
		cs->failed = true;
		return;
	}
	/* the reply echoes the request, whose first 8 bytes are its number */
	if (len < 16) {
		cs->t->wrong++;
		return;
	}
	memcpy(&seq, (const uint8_t *)reply + 8, 8);
	if (seq >= cs->next) {
		cs->t->wrong++;
		return;
	}
	if (cs->seen[seq]++) {
		cs->t->twice++;
		return;
	}
	wlen = request_fill(cs->c, cs->sid, seq, want);
	h = fnv1a(want, wlen);
	if (len != wlen + 8 || memcmp(reply, &h, 8) ||
	    memcmp((const uint8_t *)reply + 8, want, wlen))
		cs->t->wrong++;
	else
		cs->t->ok++;
	if (nlat < cap_lat)
		lat[nlat++] = bench_now_us() - cs->sent_us[seq];
	issue(cs);
}

/* Keep the session's window full (up to --depth calls in flight). */
static void issue(struct csess *cs)
{
	uint8_t buf[65536];

	while (!cs->failed && cs->inflight < cs->c->depth && cs->next < cs->c->calls) {
		uint64_t seq = cs->next;
		size_t len = request_fill(cs->c, cs->sid, seq, buf);
		int rc;

		cs->sent_us[seq] = bench_now_us();
		rc = tern_call(cs->s, M_SUM, buf, len, on_reply, cs, NULL);
		if (rc == -EAGAIN)
			return; /* a window of our own is full: the next reply issues */
		if (rc) {
			cs->t->failed++;
			if (!cs->t->first_error)
				cs->t->first_error = rc;
			cs->failed = true;
			return;
		}
		cs->next++;
		cs->inflight++;
		cs->t->issued++;
	}
}

/* Move all @n bytes through @fd (a pipe), one way or the other: 0 or -EIO. */
static int io_full(int fd, void *buf, size_t n, bool out)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t k = out ? write(fd, p, n) : read(fd, p, n);

		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -EIO;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int client(const struct cfg *c, const char *uri, uint32_t proc, int out_fd)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_EVENT};
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = c->slot_size,
				       .slot_count = c->slot_count,
				       .connect_timeout_ms = 120000};
	struct csess *ss = calloc(c->sessions, sizeof(*ss));
	struct tally t = {0};
	tern_ctx *ctx;
	double t0, end;
	uint64_t total = (uint64_t)c->sessions * c->calls;
	int rc;

	cap_lat = (uint32_t)(total < 1000000 ? total : 1000000);
	lat = calloc(cap_lat ? cap_lat : 1, sizeof(*lat));
	/* metrics on whatever TERN_METRICS says: the line reports them */
	if (!ss || !lat || (rc = tern_ctx_create(&co, &ctx)) ||
	    (rc = tern_ctx_metrics_enable(ctx, 1)))
		return 1;
	for (uint32_t i = 0; i < c->sessions; i++) {
		ss[i] = (struct csess){.c = c,
				       .t = &t,
				       .sid = (uint64_t)proc * c->sessions + i,
				       .seen = calloc(c->calls, 1),
				       .sent_us = calloc(c->calls, sizeof(double))};
		if (!ss[i].seen || !ss[i].sent_us)
			return 1;
		if ((rc = tern_connect(ctx, uri, &so, on_connect, &ss[i].s))) {
			fprintf(stderr, "fanin[%u]: connect %s: %s %s\n", proc, uri,
				tern_strerror(rc), tern_ctx_last_error(ctx));
			return 1;
		}
	}
	end = bench_now_us() + 120e6;
	while (connected + conn_failed < c->sessions && bench_now_us() < end)
		tern_ctx_run(ctx, TERN_RUN_ONCE);
	t.sessions_up = connected;
	t.connect_us = bench_now_us() - (end - 120e6);
	if (connected < c->sessions) {
		fprintf(stderr, "fanin[%u]: %u of %u sessions up (%s)\n", proc, connected,
			c->sessions, tern_ctx_last_error(ctx));
		t.first_error = -ECONNREFUSED;
	} else {
		/* everyone at once: the first window of every session, then replies issue */
		t0 = bench_now_us();
		for (uint32_t i = 0; i < c->sessions; i++)
			issue(&ss[i]);
		end = t0 + c->timeout_s * 1e6;
		for (;;) {
			uint64_t done = 0;
			bool stuck = true;

			for (uint32_t i = 0; i < c->sessions; i++) {
				done += ss[i].done;
				if (ss[i].inflight || (ss[i].next < c->calls && !ss[i].failed)) {
					stuck = false;
					if (!ss[i].inflight)
						issue(&ss[i]); /* refused with -EAGAIN earlier */
				}
			}
			if (stuck || done >= total)
				break;
			if (bench_now_us() > end) {
				fprintf(stderr,
					"fanin[%u]: %" PRIu64 " of %" PRIu64
					" calls answered after %u s\n",
					proc, done, total, c->timeout_s);
				break;
			}
			tern_ctx_run(ctx, TERN_RUN_ONCE);
		}
		t.elapsed_us = bench_now_us() - t0;
	}
	if (t.first_error)
		fprintf(stderr, "fanin[%u]: first error %s (%s)\n", proc,
			tern_err_name(t.first_error), tern_ctx_last_error(ctx));
	/* a call whose callback never ran is lost */
	for (uint32_t i = 0; i < c->sessions; i++)
		t.lost += ss[i].next - ss[i].done;
	/* what tern counted, for the parent to hold against the tally */
	if (bench_mx_get(ctx, TERN_METRICS_ISSUED, M_SUM, &t.mx))
		t.first_error = t.first_error ? t.first_error : -ENOMEM;
	/* the latencies first (the parent reads the tally, then these) */
	t.nlat = nlat;
	if (io_full(out_fd, &t, sizeof(t), true) ||
	    io_full(out_fd, lat, nlat * sizeof(double), true)) {
		fprintf(stderr, "fanin[%u]: cannot report: %s\n", proc, strerror(errno));
		return 1;
	}
	tern_ctx_destroy(ctx); /* closes every session: their pending calls were counted */
	for (uint32_t i = 0; i < c->sessions; i++) {
		free(ss[i].seen);
		free(ss[i].sent_us);
	}
	free(ss);
	free(lat);
	return 0;
}

/* ---- the run ----------------------------------------------------------------------------- */

static int fail(const char *why)
{
	fprintf(stderr, "fanin: %s\n1 failed\n", why);
	return 1;
}

static void usage(void)
{
	fprintf(stderr,
		"usage: fanin [--transport shm|tcp|rdma] [--addr IP] [--procs P] [--sessions S]\n"
		"             [--depth D] [--calls N] [--max-size B] [--slot-size B]\n"
		"             [--slot-count N] [--seed X] [--timeout S] [--accept-timeout-ms MS]\n"
		"P client processes with S sessions each against one server context; every\n"
		"session keeps D calls in flight until it made N.  Exit 1 on any lost,\n"
		"duplicated, failed or wrong call, or an RNR counter that moved.\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"transport", required_argument, 0, 't'},
		{"addr", required_argument, 0, 'a'},
		{"procs", required_argument, 0, 'p'},
		{"sessions", required_argument, 0, 'n'},
		{"depth", required_argument, 0, 'd'},
		{"calls", required_argument, 0, 'c'},
		{"max-size", required_argument, 0, 'm'},
		{"slot-size", required_argument, 0, 's'},
		{"slot-count", required_argument, 0, 'k'},
		{"seed", required_argument, 0, 'x'},
		{"timeout", required_argument, 0, 'T'},
		{"accept-timeout-ms", required_argument, 0, 'A'},
		{0, 0, 0, 0},
	};
	struct cfg c = {.transport = "shm",
			.procs = 8,
			.sessions = 32,
			.depth = 8,
			.calls = 200,
			.max_size = 1024,
			.slot_size = 8192,
			.slot_count = 64,
			.seed = 1,
			.timeout_s = 600,
			/*
			 * The listener's handshake deadline.  In the VM a client
			 * process takes 20 to 30 s to bring up 32 rdma sessions, and
			 * the last handshakes wait behind its own registrations: at
			 * the default 10 s one session in a 256-client storm failed.
			 */
			.accept_timeout_ms = 120000};
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	struct tern_session_opts so = {.size = sizeof(so), .on_close = on_server_close};
	struct tern_mem_stats mem = {0};
	struct tally sum_t = {0};
	tern_rnr_monitor *mon = NULL;
	uint64_t rnr_delta[3] = {0, 0, 0};
	double *all_lat = NULL, slowest_us = 0, connect_us = 0;
	size_t nall = 0;
	struct tern_method_stats smx;
	struct bench_stats st = {0};
	char uri[256];
	tern_listener *l;
	tern_ctx *ctx;
	pid_t *pids;
	int *fds, *go_fds, opt, rc, bad = 0;
	uint32_t alive;
	struct rlimit rl;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 't':
			c.transport = optarg;
			break;
		case 'a':
			c.addr = optarg;
			break;
		case 'p':
			c.procs = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'n':
			c.sessions = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'd':
			c.depth = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'c':
			c.calls = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'm':
			c.max_size = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 's':
			c.slot_size = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'k':
			c.slot_count = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'x':
			c.seed = strtoull(optarg, NULL, 0);
			break;
		case 'T':
			c.timeout_s = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'A':
			c.accept_timeout_ms = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		default:
			usage();
		}
	}
	/* a request and its reply (8 bytes more) fit a slot, with room for the header */
	if (!c.procs || !c.sessions || !c.depth || !c.calls || c.max_size < 8 ||
	    c.max_size > 65536 - 8 || c.max_size + 8 + 64 > c.slot_size)
		usage();
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	/*
	 * The clients first, before this process opens any RDMA device (even
	 * looking up an address opens them all, in librdmacm): a verbs
	 * context opened before a fork is refused to the child (the kernel
	 * answers its commands with EACCES), and registered memory is not
	 * inherited.  Each child waits for the listener's URI on a pipe.
	 */
	pids = calloc(c.procs, sizeof(*pids));
	fds = calloc(c.procs, sizeof(*fds));
	go_fds = calloc(c.procs, sizeof(*go_fds));
	if (!pids || !fds || !go_fds)
		return fail("out of memory");
	fflush(NULL);
	for (uint32_t p = 0; p < c.procs; p++) {
		int pfd[2], gfd[2];

		if (pipe(pfd) || pipe(gfd))
			return fail("pipe");
		pids[p] = fork();
		if (pids[p] < 0)
			return fail("fork");
		if (pids[p] == 0) {
			char curi[256];
			size_t got = 0;
			ssize_t k;

			close(pfd[0]);
			close(gfd[1]);
			for (uint32_t q = 0; q < p; q++) {
				close(fds[q]);
				close(go_fds[q]);
			}
			while (got < sizeof(curi) - 1 &&
			       (k = read(gfd[0], curi + got, sizeof(curi) - 1 - got)) > 0)
				got += (size_t)k;
			curi[got] = 0;
			if (!got || strlen(curi) + 1 != got)
				_exit(3); /* the server did not start */
			_exit(client(&c, curi, p, pfd[1]));
		}
		close(pfd[1]);
		close(gfd[0]);
		fds[p] = pfd[0];
		go_fds[p] = gfd[1];
	}
	if (!strcmp(c.transport, "rdma") && !c.addr) {
		static char addr[64];

		if (vp_find_addr(addr, sizeof(addr))) {
			return fail("no RDMA device with an address here");
		}
		c.addr = addr;
	}
	so.slot_size = c.slot_size;
	so.slot_count = c.slot_count;
	so.connect_timeout_ms = c.accept_timeout_ms;
	if ((rc = tern_ctx_create(&co, &ctx)) || (rc = tern_ctx_metrics_enable(ctx, 1)))
		return fail(tern_strerror(rc));
	server_ctx = ctx;
	if (!strcmp(c.transport, "shm"))
		snprintf(uri, sizeof(uri), "shm://fanin-%d", (int)getpid());
	else
		snprintf(uri, sizeof(uri), "%s://%s:0", c.transport, c.addr ? c.addr : "127.0.0.1");
	if ((rc = tern_register_inplace(ctx, M_SUM, sum, NULL)) ||
	    (rc = tern_listen(ctx, uri, &so, on_accept, &l))) {
		fprintf(stderr, "fanin: listen %s: %s %s\n", uri, tern_strerror(rc),
			tern_ctx_last_error(ctx));
		return 1;
	}
	snprintf(uri, sizeof(uri), "%s", tern_listener_uri(l));
	if (!strcmp(c.transport, "rdma")) {
		usleep(100000); /* the kernel caches hw_counters briefly (12 ms on rxe) */
		if (tern_rnr_monitor_create(NULL, &mon)) {
			fprintf(stderr, "fanin: no RNR monitor: the RNR check needs one\n");
			return 1;
		}
	}

	/* now the clients may connect */
	for (uint32_t p = 0; p < c.procs; p++) {
		size_t n = strlen(uri) + 1;

		if (write(go_fds[p], uri, n) != (ssize_t)n)
			return fail("a client went before it was told where to connect");
		close(go_fds[p]);
	}

	/* serve until every client has reported, measuring memory at full fan-in */
	alive = c.procs;
	while (alive) {
		struct pollfd pf;

		for (int k = 0; k < 256; k++)
			tern_ctx_run(ctx, TERN_RUN_NOWAIT);
		if (accepted == c.procs * c.sessions && !mem.sessions)
			tern_ctx_mem(ctx, &mem, sizeof(mem));
		for (uint32_t p = 0; p < c.procs; p++) {
			struct tally t;
			double *pl;

			if (fds[p] < 0)
				continue;
			pf = (struct pollfd){.fd = fds[p], .events = POLLIN};
			if (poll(&pf, 1, 0) <= 0)
				continue;
			if (io_full(fds[p], &t, sizeof(t), false)) {
				fprintf(stderr, "fanin: client %u died without a report\n", p);
				bad = 1;
			} else {
				pl = realloc(all_lat, (nall + t.nlat + 1) * sizeof(double));
				if (!pl)
					return fail("out of memory");
				all_lat = pl;
				if (io_full(fds[p], pl + nall, t.nlat * sizeof(double), false)) {
					fprintf(stderr,
						"fanin: client %u: %u latencies did not arrive "
						"(%" PRIu64 " ok, %" PRIu64 " issued)\n",
						p, t.nlat, t.ok, t.issued);
					return fail("a client's report was cut short");
				}
				nall += t.nlat;
				sum_t.issued += t.issued;
				sum_t.ok += t.ok;
				sum_t.failed += t.failed;
				sum_t.wrong += t.wrong;
				sum_t.twice += t.twice;
				sum_t.lost += t.lost;
				sum_t.replies += t.replies;
				sum_t.reply_errors += t.reply_errors;
				bench_mx_add(&sum_t.mx, &t.mx);
				sum_t.sessions_up += t.sessions_up;
				if (!sum_t.first_error)
					sum_t.first_error = t.first_error;
				if (t.elapsed_us > slowest_us)
					slowest_us = t.elapsed_us;
				if (t.connect_us > connect_us)
					connect_us = t.connect_us;
			}
			close(fds[p]);
			fds[p] = -1;
			alive--;
		}
	}
	for (uint32_t p = 0; p < c.procs; p++) {
		int stt;

		waitpid(pids[p], &stt, 0);
		if (!WIFEXITED(stt) || WEXITSTATUS(stt)) {
			fprintf(stderr, "fanin: client %u exited badly\n", p);
			bad = 1;
		}
	}
	/* the server's side: whatever it still had was answered before the clients went */
	for (int k = 0; k < 1000; k++)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	if (mon) {
		usleep(100000);
		for (int i = 0; i < 3; i++)
			if (tern_rnr_monitor_delta(mon, NULL, 0, rnr_names[i], &rnr_delta[i]) ||
			    rnr_delta[i]) {
				fprintf(stderr, "fanin: the RNR counter %s moved by %" PRIu64 "\n",
					rnr_names[i], rnr_delta[i]);
				bad = 1;
			}
		tern_rnr_monitor_destroy(mon);
	}
	if (nall)
		bench_stats_compute(&st, all_lat, nall, slowest_us);
	if (bench_mx_get(ctx, TERN_METRICS_SERVED, M_SUM, &smx))
		return fail("out of memory");
	sum_t.mx.method = M_SUM;
	sum_t.mx.side = TERN_METRICS_ISSUED;
	printf("{\"bench\": \"fanin\", \"transport\": \"%s\", \"procs\": %u, \"sessions\": %u, "
	       "\"sessions_up\": %u, \"depth\": %u, \"max_size\": %u, \"slot_size\": %u, "
	       "\"slot_count\": %u, \"seed\": %" PRIu64 ", \"calls\": %" PRIu64 ", \"ok\": %" PRIu64
	       ", \"served\": %" PRIu64 ", \"failed\": %" PRIu64 ", \"wrong\": %" PRIu64
	       ", \"twice\": %" PRIu64 ", \"lost\": %" PRIu64
	       ", \"first_error\": \"%s\", \"connect_s\": %.3f, \"seconds\": %.3f, "
	       "\"calls_per_s\": %.0f, "
	       "\"p50_us\": %.1f, \"p99_us\": %.1f, \"rnr\": {\"%s\": %" PRIu64 ", \"%s\": %" PRIu64
	       ", \"%s\": %" PRIu64 "}, \"accept_failed\": %u, \"server_errors\": %u"
	       ", \"server_registered\": %" PRIu64 ", \"server_slots_resident\": %" PRIu64
	       ", \"server_rss_kib\": %" PRIu64,
	       c.transport, c.procs, c.procs * c.sessions, sum_t.sessions_up, c.depth, c.max_size,
	       c.slot_size, c.slot_count, c.seed, sum_t.issued, sum_t.ok, served, sum_t.failed,
	       sum_t.wrong, sum_t.twice, sum_t.lost,
	       sum_t.first_error ? tern_err_name(sum_t.first_error) : "", connect_us / 1e6,
	       slowest_us / 1e6, slowest_us > 0 ? (double)sum_t.ok / (slowest_us / 1e6) : 0.0,
	       st.p50_us, st.p99_us, rnr_names[0], rnr_delta[0], rnr_names[1], rnr_delta[1],
	       rnr_names[2], rnr_delta[2], accept_failed, server_errors,
	       mem.slots_registered + mem.staging_registered + mem.user_registered,
	       mem.slots_shared_resident + mem.slots_heap_resident, bench_status_kib("VmRSS"));
	/* tern's own counts: the server's context and the clients' together */
	if (bench_mx_print(stdout, "metrics_served", "fanin", &smx, served + refused, refused) |
	    bench_mx_print(stdout, "metrics_issued", "fanin", &sum_t.mx, sum_t.replies,
			   sum_t.reply_errors))
		bad = 1;
	printf("}\n");
	if (sum_t.sessions_up != c.procs * c.sessions ||
	    sum_t.ok != (uint64_t)c.procs * c.sessions * c.calls || sum_t.failed || sum_t.wrong ||
	    sum_t.twice || sum_t.lost || served != sum_t.ok || accept_failed || server_errors)
		bad = 1;
	/* for the test suites' summary (tools/lib/test_summary.py) */
	printf("%s\n", bad ? "1 failed" : "1 passed");
	tern_ctx_destroy(ctx);
	free(all_lat);
	free(pids);
	free(fds);
	free(go_fds);
	return bad;
}
