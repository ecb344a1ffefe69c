// SPDX-License-Identifier: MIT
/*
 * hello - tern in one file: an echo server and a client in two processes.
 *
 *   ./hello [URI]        URI to listen on, e.g. rdma://10.0.0.1:0, shm://name
 *                        or tcp://127.0.0.1:0.  Default: the best transport
 *                        this machine has, and it says which and why:
 *                        rdma:// on the first address with an RDMA device,
 *                        else shm:// (same host, zero copy).
 *
 * The client calls a raw method (its request is copied into a slot, the
 * server's reply copied once into another), an inplace method (the
 * request is built in the send slot and the reply written in place: no
 * copy by tern), and a method that does not exist, then times a few
 * thousand round trips of each kind and prints what it measured.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <glob.h>
#include <ifaddrs.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <tern.h>

#define M_ECHO_RAW     1
#define M_ECHO_INPLACE 2
#define ROUNDS	       3000

static int echo_raw(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *u)
{
	(void)r, (void)u;
	out->base = in; /* the runtime copies these bytes once into a send slot */
	out->len = n;
	return 0;
}

static ssize_t echo_inplace(tern_req *r, const void *in, size_t n, void *out, size_t cap, void *u)
{
	(void)r, (void)u;
	if (n > cap)
		return -EMSGSIZE;
	memcpy(out, in, n); /* written straight into the registered send slot */
	return (ssize_t)n;
}

static int closed;

static void on_close(tern_session *s, int reason)
{
	(void)s, (void)reason;
	closed = 1;
}

static int serve(const char *uri, int fd)
{
	struct tern_session_opts so = {.size = sizeof(so), .on_close = on_close};
	char where[256];
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	if ((rc = tern_ctx_create(NULL, &ctx)) ||
	    (rc = tern_register_raw(ctx, M_ECHO_RAW, echo_raw, NULL)) ||
	    (rc = tern_register_inplace(ctx, M_ECHO_INPLACE, echo_inplace, NULL)) ||
	    (rc = tern_listen(ctx, uri, &so, NULL, &l))) {
		fprintf(stderr, "server: %s\n", tern_ctx_last_error(ctx));
		return 1;
	}
	snprintf(where, sizeof(where), "%s", tern_listener_uri(l));
	if (write(fd, where, sizeof(where)) != (ssize_t)sizeof(where))
		return 1;
	close(fd);
	while (!closed)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	tern_ctx_destroy(ctx);
	return 0;
}

static double now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e6 + (double)ts.tv_nsec / 1e3;
}

static int cmp(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return (x > y) - (x < y);
}

static bool got;

static void done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	(void)s, (void)reply, (void)len, (void)user;
	if (status)
		fprintf(stderr, "call failed: %s\n", tern_strerror(status));
	got = true;
}

/* One zero-copy call: build the request in the send slot, commit it. */
static int inplace_call(tern_ctx *ctx, tern_session *s, const char *msg)
{
	tern_callslot *c;
	void *buf;
	size_t cap;
	int rc;

	if ((rc = tern_call_acquire(s, &buf, &cap, &c)))
		return rc;
	snprintf(buf, cap, "%s", msg);
	got = false;
	if ((rc = tern_call_commit(c, M_ECHO_INPLACE, strlen(msg) + 1, done, NULL, NULL)))
		return rc;
	while (!got)
		tern_ctx_poll(ctx, 64);
	return 0;
}

static void measure(tern_ctx *ctx, tern_session *s, int inplace, const char *label)
{
	static double lat[ROUNDS];
	char msg[64] = "0123456789012345678901234567890"; /* 32 bytes with the NUL */
	struct tern_sync_reply rep = {.buf = msg, .cap = sizeof(msg)};

	for (int i = 0; i < ROUNDS; i++) {
		double t0 = now_us();
		if (inplace)
			inplace_call(ctx, s, msg);
		else
			tern_call_sync(s, M_ECHO_RAW, msg, 32, &rep, 5000);
		lat[i] = now_us() - t0;
	}
	qsort(lat, ROUNDS, sizeof(double), cmp);
	printf("  %-32s p50 %7.1f us   p99 %7.1f us\n", label, lat[ROUNDS / 2],
	       lat[ROUNDS * 99 / 100]);
}

static int client(const char *uri)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	char reply[256];
	struct tern_sync_reply rep = {.buf = reply, .cap = sizeof(reply)};
	struct tern_session_counters c;
	tern_session *s;
	tern_ctx *ctx;
	int rc;

	if ((rc = tern_ctx_create(&co, &ctx)) ||
	    (rc = tern_connect_sync(ctx, uri, NULL, 10000, &s))) {
		fprintf(stderr, "client: %s\n", tern_ctx_last_error(ctx));
		return 1;
	}
	printf("connected to %s (%zu-byte payloads per slot)\n", tern_session_peer(s),
	       tern_session_max_payload(s));

	rc = tern_call_sync(s, M_ECHO_RAW, "hello, tern", 12, &rep, 5000);
	printf("raw echo       -> %s (%s)\n", rc ? "-" : reply, tern_err_name(rc));
	rc = inplace_call(ctx, s, "zero-copy hello");
	printf("inplace echo   -> sent from the send slot, answered in place (%s)\n",
	       tern_err_name(rc));
	rc = tern_call_sync(s, 0x1234, "?", 1, &rep, 5000);
	printf("unknown method -> %s: %s\n", tern_err_name(rc), rep.errmsg);

	printf("round trips of 32 bytes, one at a time (%d each):\n", ROUNDS);
	measure(ctx, s, 0, "raw (copy in, copy out)");
	measure(ctx, s, 1, "inplace (acquire/commit)");
	tern_session_counters(s, &c);
	printf("session: %llu calls, %llu bytes sent, %llu credit stalls, %llu protocol errors\n",
	       (unsigned long long)c.calls_sent, (unsigned long long)c.bytes_sent,
	       (unsigned long long)c.credit_stalls, (unsigned long long)c.protocol_errors);
	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	return 0;
}

/* Is netdev @ifname behind an RDMA device?  IB (IPoIB) netdevs have the
 * device under their own sysfs node; RoCE devices (mlx5, rxe) list their
 * netdevs in each GID's attributes. */
static bool netdev_has_rdma(const char *ifname)
{
	char path[300], name[64];
	bool found = false;
	glob_t g;

	snprintf(path, sizeof(path), "/sys/class/net/%s/device/infiniband", ifname);
	if (access(path, F_OK) == 0)
		return true;
	if (glob("/sys/class/infiniband/*/ports/*/gid_attrs/ndevs/*", 0, NULL, &g) != 0)
		return false;
	for (size_t i = 0; i < g.gl_pathc && !found; i++) {
		FILE *fp = fopen(g.gl_pathv[i], "r");
		if (!fp)
			continue;
		if (fgets(name, sizeof(name), fp)) {
			name[strcspn(name, "\n")] = 0;
			found = strcmp(name, ifname) == 0;
		}
		fclose(fp);
	}
	globfree(&g);
	return found;
}

/* The first IPv4 address with an RDMA device behind it, as "rdma://A:0". */
static int default_uri(char *out, size_t len)
{
	struct ifaddrs *ifs, *i;
	int rc = -ENODEV;

	if (getifaddrs(&ifs))
		return -errno;
	for (i = ifs; i; i = i->ifa_next) {
		char a[INET_ADDRSTRLEN];

		if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET ||
		    !netdev_has_rdma(i->ifa_name))
			continue;
		inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, a, sizeof(a));
		snprintf(out, len, "rdma://%s:0", a);
		rc = 0;
		break;
	}
	freeifaddrs(ifs);
	return rc;
}

int main(int argc, char **argv)
{
	char uri[256];
	int fd[2], st;
	pid_t pid;

	if (argc > 1) {
		snprintf(uri, sizeof(uri), "%s", argv[1]);
		printf("hello: transport: %.*s, as asked\n", (int)strcspn(uri, ":"), uri);
	} else if (default_uri(uri, sizeof(uri)) == 0) {
		printf("hello: transport: rdma (this machine has an RDMA device; %s)\n", uri);
	} else {
		snprintf(uri, sizeof(uri), "shm://tern-hello-%d", (int)getpid());
		printf("hello: transport: shm (no RDMA device here; both ends are on this host, "
		       "and shm:// is zero copy)\n");
	}
	printf("tern %s: echo server and client over %s\n", tern_version_string(), uri);
	fflush(stdout);
	if (pipe(fd))
		return 1;
	/* Fork before either side opens a device. */
	pid = fork();
	if (pid == 0) {
		close(fd[0]);
		_exit(serve(uri, fd[1]));
	}
	close(fd[1]);
	if (read(fd[0], uri, sizeof(uri)) != (ssize_t)sizeof(uri)) {
		waitpid(pid, &st, 0);
		return 1;
	}
	st = client(uri);
	waitpid(pid, NULL, 0);
	return st;
}
