// SPDX-License-Identifier: MIT
/*
 * idle - what an idle session costs: N client sessions against one server
 * context, two processes, and tern_ctx_mem() and the RSS of each side
 * before the first session and once all N are up and quiet.
 *
 * The parent is the client (one context holding every session), a forked
 * child the server (one context, one listener).  Each side measures its
 * baseline before any session exists; the client opens the N sessions
 * (at most --window connecting at once, so a listener's backlog is never
 * the limit), makes --calls echo calls of --payload bytes on each (0: a
 * session that never carried a call; 1: one that did and went quiet),
 * lets the loop settle, then measures and asks the server to.  Output:
 * one JSON line per side, every tern_ctx_mem() field and the RSS (total,
 * anonymous, shared memory: /proc/self/status) as bytes per session, the
 * difference from the baseline divided by N.
 *
 * tern_ctx_mem() is looked up at run time: against a libtern.so that has
 * none (a build from before it, through LD_LIBRARY_PATH) the bench reports
 * the RSS alone, so the same program measures the "before" figures.
 */
#include <dlfcn.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <poll.h>
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

#include "stats.h"

#define M_ECHO 0x1d1e

struct cfg {
	const char *transport;
	const char *addr;
	const char *label;
	uint32_t sessions, window, calls, payload;
	uint32_t slot_size, slot_count;
};

/* ---- measuring ---------------------------------------------------------------------- */

typedef int (*ctx_mem_fn)(tern_ctx *, struct tern_mem_stats *, size_t);

struct sample {
	bool have_mem;
	struct tern_mem_stats mem;
	uint64_t rss, anon, shmem; /* bytes, /proc/self/status */
};

static void sample_take(tern_ctx *ctx, struct sample *s)
{
	/* the newest library has it; one from before it does not */
	ctx_mem_fn fn = (ctx_mem_fn)(uintptr_t)dlsym(RTLD_DEFAULT, "tern_ctx_mem");

	memset(s, 0, sizeof(*s));
	s->have_mem = fn && fn(ctx, &s->mem, sizeof(s->mem)) == 0;
	s->rss = bench_status_kib("VmRSS") * 1024;
	s->anon = bench_status_kib("RssAnon") * 1024;
	s->shmem = bench_status_kib("RssShmem") * 1024;
}

static double per(uint64_t after, uint64_t before, uint32_t n)
{
	return ((double)after - (double)before) / n;
}

/* One JSON line: what N sessions added, per session. */
static void report(FILE *out, const struct cfg *c, const char *side, const struct sample *b,
		   const struct sample *a)
{
	const char *back = getenv("TERN_SHM_BACK");

	fprintf(out,
		"{\"bench\": \"idle\", \"label\": \"%s\", \"transport\": \"%s\", \"side\": \"%s\", "
		"\"sessions\": %" PRIu32 ", \"calls\": %" PRIu32 ", \"payload\": %" PRIu32
		", \"slot_size\": %" PRIu32 ", \"slot_count\": %" PRIu32 ", \"shm_back\": \"%s\", ",
		c->label, c->transport, side, c->sessions, c->calls, c->payload, c->slot_size,
		c->slot_count, back ? back : "");
	fprintf(out,
		"\"rss_per_session\": %.0f, \"anon_per_session\": %.0f, "
		"\"shmem_per_session\": %.0f, \"rss\": %" PRIu64,
		per(a->rss, b->rss, c->sessions), per(a->anon, b->anon, c->sessions),
		per(a->shmem, b->shmem, c->sessions), a->rss);
	if (a->have_mem && b->have_mem) {
		fprintf(out, ", \"mem_per_session\": {");
#define F(x)                                                                   \
	fprintf(out, "%s\"" #x "\": %.0f", strcmp(#x, "sessions") ? ", " : "", \
		per(a->mem.x, b->mem.x, c->sessions));
		TERN_MEM_STATS_FIELDS(F)
#undef F
		fprintf(out, "}, \"mem\": {");
#define F(x) fprintf(out, "%s\"" #x "\": %" PRIu64, strcmp(#x, "sessions") ? ", " : "", a->mem.x);
		TERN_MEM_STATS_FIELDS(F)
#undef F
		fprintf(out, "}");
	}
	fprintf(out, "}\n");
	fflush(out);
}

/* ---- the server ---------------------------------------------------------------------- */

static int echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	out->base = in;
	out->len = n;
	return 0;
}

static uint32_t accepted;

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	(void)l;
	if (s && !status)
		accepted++;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

/* Is there a byte on @fd?  Then read it. */
static int cmd_read(int fd)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char ch;

	if (poll(&p, 1, 0) <= 0)
		return 0;
	return read(fd, &ch, 1) == 1 ? ch : 'q';
}

static int serve(const struct cfg *c, int cmd_fd, FILE *out)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_EVENT};
	struct tern_session_opts so = {
		.size = sizeof(so), .slot_size = c->slot_size, .slot_count = c->slot_count};
	struct sample before, after;
	char uri[160];
	tern_listener *l;
	tern_ctx *ctx;
	int rc, cmd;

	if ((rc = tern_ctx_create(&co, &ctx)))
		return rc;
	if (!strcmp(c->transport, "shm"))
		snprintf(uri, sizeof(uri), "shm://idle-%d", (int)getpid());
	else
		snprintf(uri, sizeof(uri), "%s://%s:0", c->transport,
			 c->addr ? c->addr : "127.0.0.1");
	if ((rc = tern_register_raw(ctx, M_ECHO, echo, NULL)) ||
	    (rc = tern_listen(ctx, uri, &so, on_accept, &l))) {
		fprintf(stderr, "idle: listen %s: %s %s\n", uri, tern_strerror(rc),
			tern_ctx_last_error(ctx));
		return rc;
	}
	sample_take(ctx, &before);
	fprintf(out, "%s\n", tern_listener_uri(l));
	fflush(out);
	for (;;) {
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
		cmd = cmd_read(cmd_fd);
		if (cmd == 'm') {
			/* the client has every session up: ours may still be in the backlog */
			uint64_t end = now_ms() + 60000;

			while (accepted < c->sessions && now_ms() < end)
				tern_ctx_run(ctx, TERN_RUN_NOWAIT);
			sample_take(ctx, &after);
			report(out, c, "server", &before, &after);
		} else if (cmd == 'q') {
			break;
		} else if (!cmd) {
			usleep(1000);
		}
	}
	tern_ctx_destroy(ctx);
	return 0;
}

/* ---- the client ---------------------------------------------------------------------- */

static uint32_t connected, failed, answered;

static void on_connect(tern_session *s, int status)
{
	(void)s;
	if (status) {
		if (!failed++)
			fprintf(stderr, "idle: connect: %s\n", tern_strerror(status));
		return;
	}
	connected++;
}

static void on_reply(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	(void)s, (void)reply, (void)len, (void)user;
	if (status && !failed++)
		fprintf(stderr, "idle: call: %s\n", tern_strerror(status));
	answered++;
}

static int run_until(tern_ctx *ctx, const uint32_t *v, uint32_t want, uint32_t ms)
{
	uint64_t end = now_ms() + ms;

	while (*v < want && !failed) {
		if (now_ms() > end)
			return -ETIMEDOUT;
		tern_ctx_run(ctx, TERN_RUN_ONCE);
	}
	return failed ? -EIO : 0;
}

static int client(const struct cfg *c, const char *uri, int cmd_fd, FILE *from_srv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_EVENT};
	struct tern_session_opts so = {.size = sizeof(so),
				       .slot_size = c->slot_size,
				       .slot_count = c->slot_count,
				       .connect_timeout_ms = 120000};
	struct sample before, after;
	tern_session **ss = calloc(c->sessions, sizeof(*ss));
	uint8_t *msg = calloc(1, c->payload ? c->payload : 1);
	char line[4096];
	tern_ctx *ctx;
	int rc;

	if (!ss || !msg || (rc = tern_ctx_create(&co, &ctx)))
		return -ENOMEM;
	sample_take(ctx, &before);
	for (uint32_t i = 0; i < c->sessions; i++) {
		if ((rc = tern_connect(ctx, uri, &so, on_connect, &ss[i]))) {
			fprintf(stderr, "idle: connect %s: %s %s\n", uri, tern_strerror(rc),
				tern_ctx_last_error(ctx));
			return rc;
		}
		if (i + 1 - connected >= c->window &&
		    (rc = run_until(ctx, &connected, i + 1 - c->window / 2, 120000)))
			return rc;
	}
	if ((rc = run_until(ctx, &connected, c->sessions, 120000)))
		return rc;
	for (uint32_t k = 0; k < c->calls; k++) {
		for (uint32_t i = 0; i < c->sessions; i++) {
			struct tern_call_opts o = {.size = sizeof(o)};

			if ((rc = tern_call(ss[i], M_ECHO, msg, c->payload, on_reply, NULL, &o)))
				return rc;
			if ((i + 1) % c->window == 0 &&
			    (rc = run_until(ctx, &answered, k * c->sessions + i + 1, 120000)))
				return rc;
		}
		if ((rc = run_until(ctx, &answered, (k + 1) * c->sessions, 120000)))
			return rc;
	}
	/* quiet: credits returned, sends reported */
	for (uint64_t end = now_ms() + 500; now_ms() < end;)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	sample_take(ctx, &after);
	report(stdout, c, "client", &before, &after);
	if (write(cmd_fd, "m", 1) != 1 || !fgets(line, sizeof(line), from_srv))
		return -EIO;
	fputs(line, stdout);
	fflush(stdout);
	(void)!write(cmd_fd, "q", 1);
	tern_ctx_destroy(ctx);
	free(ss);
	free(msg);
	return 0;
}

static void usage(void)
{
	fprintf(stderr, "usage: idle [--transport shm|tcp|rdma] [--sessions N] [--addr IP]\n"
			"            [--calls K] [--payload B] [--window W] [--slot-size B]\n"
			"            [--slot-count N] [--label TEXT]\n");
	exit(2);
}

int main(int argc, char **argv)
{
	static const struct option lo[] = {
		{"transport", required_argument, 0, 't'}, {"sessions", required_argument, 0, 'n'},
		{"addr", required_argument, 0, 'a'},	  {"calls", required_argument, 0, 'c'},
		{"payload", required_argument, 0, 'p'},	  {"window", required_argument, 0, 'w'},
		{"slot-size", required_argument, 0, 's'}, {"slot-count", required_argument, 0, 'k'},
		{"label", required_argument, 0, 'l'},	  {0, 0, 0, 0},
	};
	struct cfg c = {.transport = "shm",
			.label = "",
			.sessions = 1000,
			.window = 32,
			.payload = 1024,
			.slot_size = 8192,
			.slot_count = 64};
	int to_srv[2], from_srv[2], opt, rc, st;
	struct rlimit rl;
	char uri[256];
	FILE *srv_out;
	pid_t pid;

	while ((opt = getopt_long(argc, argv, "", lo, NULL)) != -1) {
		switch (opt) {
		case 't':
			c.transport = optarg;
			break;
		case 'n':
			c.sessions = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'a':
			c.addr = optarg;
			break;
		case 'c':
			c.calls = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'p':
			c.payload = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'w':
			c.window = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 's':
			c.slot_size = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'k':
			c.slot_count = (uint32_t)strtoul(optarg, NULL, 0);
			break;
		case 'l':
			c.label = optarg;
			break;
		default:
			usage();
		}
	}
	if (!c.sessions || !c.window)
		usage();
	/* shm: a socket, two doorbells and the segment's memfd per session, each side */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (pipe(to_srv) || pipe(from_srv))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		FILE *out = fdopen(from_srv[1], "w");

		close(to_srv[1]);
		close(from_srv[0]);
		_exit(out && serve(&c, to_srv[0], out) == 0 ? 0 : 1);
	}
	close(to_srv[0]);
	close(from_srv[1]);
	srv_out = fdopen(from_srv[0], "r");
	if (!srv_out || !fgets(uri, sizeof(uri), srv_out)) {
		fprintf(stderr, "idle: the server did not start\n");
		return 1;
	}
	uri[strcspn(uri, "\n")] = 0;
	rc = client(&c, uri, to_srv[1], srv_out);
	if (rc) {
		fprintf(stderr, "idle: %s (%" PRIu32 " of %" PRIu32 " sessions up)\n",
			tern_strerror(rc), connected, c.sessions);
		(void)!write(to_srv[1], "q", 1);
	}
	close(to_srv[1]);
	waitpid(pid, &st, 0);
	return rc || !WIFEXITED(st) || WEXITSTATUS(st) ? 1 : 0;
}
