// SPDX-License-Identifier: MIT
/*
 * tern_bw - large-message bandwidth, one call in flight.
 *
 * --transport rdma (the default), shm or tcp.  On shm a transfer is one
 * process_vm copy between the two processes; on tcp a stream of pieces.
 * Their baselines (bench/local_bw) are one memcpy and raw loopback TCP.
 *
 * --shm-paths (shm): every size and direction three ways, back to back in
 * the same two processes, so their ratios come from one run:
 *   vm     a tern_mem_register()ed malloc buffer: process_vm_readv/writev
 *   map    a tern_mem_alloc() buffer: the server maps its memfd, one memcpy
 *   stage  the malloc buffer on a session made with TERN_SHM_NO_PTRACE=1
 *          (what ptrace_scope 1 leaves): two memcpys through a staging memfd
 * Each line then also carries vm_gb_per_s and vm_ratio, the vm path's
 * bandwidth at the same size and direction in the same round.
 *
 * The parent serves, a forked child calls (fork first, verbs after).
 *   reply: the client names a registered reply buffer and asks for SIZE
 *          bytes; the server's raw handler points at a registered buffer of
 *          its own, which tern pushes with RDMA WRITE (no copy).
 *   request: the client sends SIZE bytes from a registered buffer; the
 *          server pulls them with RDMA READ and answers 8 bytes.
 * Each call is timed from issue to completion.  With --baseline FILE (the
 * JSON lines of bench/verbs_write_bw, with and without --read) each line
 * carries the raw bandwidth of the operation it uses (WRITE for replies,
 * READ for requests) at the same size, and the ratio.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include <tern.h>

#include "stats.h"
#include "verbs_pair.h"

#define M_GET	  1
#define M_PUT	  2
#define MAX_SIZES 16

static uint8_t *srv_buf;
static size_t srv_len;

/* srv_buf never changes: nothing to do once a reply from it has gone */
static void get_sent(tern_session *s, int status, void *user)
{
	(void)s, (void)status, (void)user;
}

static int get(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	uint64_t want;

	(void)u;
	if (n != 8)
		return -EINVAL;
	memcpy(&want, in, 8);
	if (want > srv_len)
		return -EMSGSIZE;
	/* registered, and left as it is until sent: pushed with no copy */
	tern_req_on_reply_sent(r, get_sent, NULL);
	out->base = srv_buf;
	out->len = want;
	return 0;
}

static int put(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	static uint64_t got;

	(void)r, (void)in, (void)u;
	got = n;
	out->base = &got;
	out->len = 8;
	return 0;
}

static int closed;

static void on_close(tern_session *s, int reason)
{
	(void)s, (void)reason;
	closed = 1;
}

static struct tern_session_opts session_opts(void)
{
	struct tern_session_opts o = {
		.size = sizeof(o), .max_msg = UINT32_MAX, .on_close = on_close};
	return o;
}

static const char *transport = "rdma";

static int run_server(const char *addr, size_t max, int fd)
{
	struct tern_session_opts so = session_opts();
	char uri[128];
	tern_listener *l;
	tern_ctx *ctx;
	tern_mr *mr;

	srv_len = max;
	if (posix_memalign((void **)&srv_buf, 4096, max))
		return 1;
	memset(srv_buf, 0x3c, max);
	if (!strcmp(transport, "rdma"))
		snprintf(uri, sizeof(uri), "rdma://%s:0", addr);
	else if (!strcmp(transport, "shm"))
		snprintf(uri, sizeof(uri), "shm://tern-bw-%d", (int)getpid());
	else
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:0");
	/* on one host both ends spin, as bench/run-local.sh runs them */
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};

	if (tern_ctx_create(strcmp(transport, "rdma") ? &co : NULL, &ctx) ||
	    tern_mem_register(ctx, srv_buf, max, &mr) || tern_register_raw(ctx, M_GET, get, NULL) ||
	    tern_register_raw(ctx, M_PUT, put, NULL) || tern_listen(ctx, uri, &so, NULL, &l)) {
		fprintf(stderr, "tern_bw server: %s\n", tern_ctx_last_error(ctx));
		return 1;
	}
	snprintf(uri, sizeof(uri), "%s", tern_listener_uri(l));
	if (write(fd, uri, sizeof(uri)) != (ssize_t)sizeof(uri))
		return 1;
	close(fd);
	while (!closed)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	tern_ctx_destroy(ctx);
	free(srv_buf);
	return 0;
}

static double baseline(const char *file, const char *bench, size_t size)
{
	char line[512];
	double v = 0;
	FILE *fp;

	if (!file || !(fp = fopen(file, "r")))
		return 0;
	while (fgets(line, sizeof(line), fp)) {
		char *p = strstr(line, "\"size\":"), *q = strstr(line, "\"gb_per_s\":");
		if (p && q && strstr(line, bench) && strtoull(p + 7, NULL, 10) == size)
			v = strtod(q + 11, NULL);
	}
	fclose(fp);
	return v;
}

/* The baseline a direction is divided by, as its "bench" JSON value. */
static const char *base_name(int request)
{
	if (!strcmp(transport, "shm"))
		return "\"memcpy_bw\"";
	if (!strcmp(transport, "tcp"))
		return "\"tcp_stream_bw\"";
	return request ? "\"verbs_read_bw\"" : "\"verbs_write_bw\"";
}

enum shm_path { PATH_VM, PATH_MAP, PATH_STAGE, PATHS };
static bool shm_paths;

static const char *kind_name(int request, enum shm_path path)
{
	static const char *const shm[PATHS][2] = {
		{"reply (process_vm push)", "request (process_vm pull)"},
		{"reply (memfd map)", "request (memfd map)"},
		{"reply (staging memfd)", "request (staging memfd)"},
	};

	if (!strcmp(transport, "shm"))
		return shm[path][request];
	if (!strcmp(transport, "tcp"))
		return request ? "request (streamed)" : "reply (streamed)";
	return request ? "request (RDMA READ)" : "reply (RDMA WRITE)";
}

/* One call of @len bytes (@dir 0: a reply into @buf, 1: a request from it): its time in us, or < 0.
 */
static double one_call(tern_session *s, uint8_t *buf, int dir, size_t len)
{
	uint64_t want = len;
	char ack[8];
	struct tern_sync_reply rep = {
		.buf = dir ? (void *)ack : buf, .cap = dir ? sizeof(ack) : len, .direct = !dir};
	double t0 = bench_now_us();
	int rc = dir ? tern_call_sync(s, M_PUT, buf, len, &rep, 600000)
		     : tern_call_sync(s, M_GET, &want, 8, &rep, 600000);

	if (rc || (!dir && rep.len != len)) {
		fprintf(stderr, "tern_bw: %s %zu: %s %s\n", dir ? "put" : "get", len,
			tern_err_name(rc), rep.errmsg);
		return -1;
	}
	return bench_now_us() - t0;
}

static int run_client(const char *uri, const size_t *sizes, int nsizes, int iters,
		      const char *base_file)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	struct tern_session_opts so = session_opts();
	size_t max = 0;
	uint8_t *buf, *abuf = NULL;
	tern_session *s, *s_stage = NULL;
	tern_ctx *ctx;
	tern_mr *mr, *amr;
	int npaths = shm_paths ? PATHS : 1;

	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > max)
			max = sizes[i];
	if (posix_memalign((void **)&buf, 4096, max))
		return 1;
	memset(buf, 0x11, max);
	if (tern_ctx_create(&co, &ctx) || tern_connect_sync(ctx, uri, &so, 10000, &s) ||
	    tern_mem_register(ctx, buf, max, &mr)) {
		fprintf(stderr, "tern_bw client: %s\n", tern_ctx_last_error(ctx));
		return 1;
	}
	if (shm_paths) {
		/* the setting is read when a connection is made: this one only */
		setenv("TERN_SHM_NO_PTRACE", "1", 1);
		if (tern_connect_sync(ctx, uri, &so, 10000, &s_stage) ||
		    tern_mem_alloc(ctx, max, (void **)&abuf, &amr)) {
			fprintf(stderr, "tern_bw client: %s\n", tern_ctx_last_error(ctx));
			return 1;
		}
		unsetenv("TERN_SHM_NO_PTRACE");
		memset(abuf, 0x11, max);
	}
	for (int dir = 0; dir < 2; dir++) {
		for (int si = 0; si < nsizes; si++) {
			size_t len = sizes[si];
			double base = baseline(base_file, base_name(dir), len), vm = 0;

			double *lat[PATHS] = {0}, t_begin = bench_now_us();
			struct bench_stats st[PATHS];

			for (int path = 0; path < npaths; path++)
				if (!(lat[path] = calloc((size_t)iters, sizeof(double))))
					return 1;
			/*
			 * The paths take turns call by call, so that whatever else
			 * the machine does weighs on each alike: their ratios are
			 * what this run is for.  Call -1 of each warms it up.
			 */
			for (int i = -1; i < iters; i++) {
				for (int path = 0; path < npaths; path++) {
					tern_session *ps = path == PATH_STAGE ? s_stage : s;
					uint8_t *pb = path == PATH_MAP ? abuf : buf;
					double us = one_call(ps, pb, dir, len);

					if (us < 0)
						return 1;
					if (i >= 0)
						lat[path][i] = us;
				}
			}
			for (int path = 0; path < npaths; path++) {
				double gb;

				bench_stats_compute(&st[path], lat[path], (size_t)iters,
						    bench_now_us() - t_begin);
				free(lat[path]);
				gb = (double)len / st[path].p50_us / 1e3;
				if (path == PATH_VM)
					vm = gb;
				printf("{\"bench\":\"tern_bw\",\"transport\":\"%s\","
				       "\"mode\":\"busy\",\"kind\":\"%s\",\"size\":%zu,"
				       "\"inflight\":1,\"iters\":%d,\"p50_us\":%.1f,"
				       "\"p99_us\":%.1f,\"gb_per_s\":%.3f,\"baseline\":%s,"
				       "\"baseline_gb_per_s\":%.3f,\"ratio\":%.3f",
				       transport, kind_name(dir, (enum shm_path)path), len, iters,
				       st[path].p50_us, st[path].p99_us, gb, base_name(dir), base,
				       base > 0 ? gb / base : 0);
				if (shm_paths)
					printf(",\"vm_gb_per_s\":%.3f,\"vm_ratio\":%.3f", vm,
					       gb / vm);
				printf("}\n");
				fflush(stdout);
			}
		}
	}
	if (s_stage)
		tern_session_close(s_stage, NULL);
	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	free(buf);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"baseline", required_argument, 0, 'b'},
		{"transport", required_argument, 0, 't'},
		{"shm-paths", no_argument, 0, 'p'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	size_t sizes[MAX_SIZES] = {64 << 10, 1 << 20, 16 << 20, 256 << 20}, max = 0;
	int nsizes = 4, iters = 5, ch, pfd[2], st, rc;
	const char *base = NULL;
	char addr[64], uri[128];
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:b:t:ph", opts, NULL)) != -1) {
		switch (ch) {
		case 'p':
			shm_paths = true;
			break;
		case 's':
			if (bench_parse_sizes(optarg, sizes, MAX_SIZES, &nsizes))
				return 2;
			break;
		case 'n':
			iters = atoi(optarg);
			break;
		case 'b':
			base = optarg;
			break;
		case 't':
			transport = optarg;
			if (strcmp(transport, "rdma") && strcmp(transport, "shm") &&
			    strcmp(transport, "tcp")) {
				fprintf(stderr, "tern_bw: --transport rdma, shm or tcp\n");
				return 2;
			}
			break;
		default:
			fprintf(stderr, "usage: tern_bw [--transport rdma|shm|tcp] [--shm-paths] "
					"[--sizes 64K,1M,16M] [--iters N] [--baseline FILE]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (shm_paths && strcmp(transport, "shm")) {
		fprintf(stderr, "tern_bw: --shm-paths is for --transport shm\n");
		return 2;
	}
	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > max)
			max = sizes[i];
	addr[0] = 0;
	if (strcmp(transport, "rdma"))
		goto serve;
	/* the address probe opens verbs: in a child, before the real fork */
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		rc = vp_find_addr(addr, sizeof(addr));
		if (rc == 0 && write(pfd[1], addr, sizeof(addr)) != (ssize_t)sizeof(addr))
			rc = -EIO;
		_exit(rc ? VP_EXIT_SKIP : 0);
	}
	close(pfd[1]);
	rc = read(pfd[0], addr, sizeof(addr)) == (ssize_t)sizeof(addr);
	close(pfd[0]);
	waitpid(pid, &st, 0);
	if (!rc) {
		fprintf(stderr, "tern_bw: no RDMA device with an IPv4 address\n");
		return VP_EXIT_SKIP;
	}
serve:
	if (pipe(pfd))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(pfd[0]);
		_exit(run_server(addr, max, pfd[1]));
	}
	close(pfd[1]);
	if (read(pfd[0], uri, sizeof(uri)) != (ssize_t)sizeof(uri)) {
		waitpid(pid, &st, 0);
		return 1;
	}
	close(pfd[0]);
	rc = run_client(uri, sizes, nsizes, iters, base);
	if (rc)
		kill(pid, SIGKILL);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		rc = 1;
	return rc;
}
