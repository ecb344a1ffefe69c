// SPDX-License-Identifier: MIT
/*
 * tcp_pingpong - the loopback TCP floor tern's tcp:// is measured against.
 *
 * Two processes (fork), one TCP connection over 127.0.0.1 with
 * TCP_NODELAY.  The client writes SIZE bytes, the server reads them all and
 * writes them back, the client reads them all and times the round trip.
 * Three ways to wait:
 *   busy      both ends spin on recv(MSG_DONTWAIT), as tern's busy mode does;
 *   blocking  both ends block in recv(): the cheapest way to sleep;
 *   epoll     both ends sleep in epoll_wait(), then recv(): what any event
 *             loop does, tern's event mode included (libuv waits in epoll).
 *
 * Output: one JSON object per mode and size, the same keys as tern's.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

enum mode { M_BUSY, M_BLOCKING, M_EPOLL, M_COUNT };
static const char *const mode_name[M_COUNT] = {"busy", "blocking", "epoll"};

/* @ep: an epoll instance watching @fd, for M_EPOLL. */
static int recv_all(int fd, void *buf, size_t len, enum mode m, int ep)
{
	size_t have = 0;

	while (have < len) {
		ssize_t n;

		if (m == M_EPOLL) {
			struct epoll_event ev;
			if (epoll_wait(ep, &ev, 1, -1) < 0 && errno != EINTR)
				return -1;
		}
		n = recv(fd, (char *)buf + have, len - have, m == M_BLOCKING ? 0 : MSG_DONTWAIT);
		if (n > 0)
			have += (size_t)n;
		else if (n == 0)
			return -1;
		else if (errno != EAGAIN && errno != EINTR)
			return -1;
	}
	return 0;
}

static int watch(int fd)
{
	struct epoll_event ev = {.events = EPOLLIN};
	int ep = epoll_create1(EPOLL_CLOEXEC);

	if (ep >= 0 && epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev) == 0)
		return ep;
	return -1;
}

static int send_all(int fd, const void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = send(fd, (const char *)buf + done, len - done, MSG_NOSIGNAL);

		if (n > 0)
			done += (size_t)n;
		else if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -1;
	}
	return 0;
}

struct plan {
	size_t sizes[16];
	int nsizes;
	bool modes[M_COUNT];
	long iters, warmup;
	size_t max;
};

static void serve(int fd, const struct plan *p)
{
	uint8_t *buf = malloc(p->max);
	int ep = watch(fd);

	for (int m = 0; m < M_COUNT; m++) {
		if (!p->modes[m])
			continue;
		for (int s = 0; s < p->nsizes; s++)
			for (long i = 0; i < p->iters + p->warmup; i++)
				if (recv_all(fd, buf, p->sizes[s], (enum mode)m, ep) ||
				    send_all(fd, buf, p->sizes[s]))
					_exit(1);
	}
	free(buf);
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'}, {"modes", required_argument, 0, 'm'},
		{"iters", required_argument, 0, 'n'}, {"warmup", required_argument, 0, 'w'},
		{"help", no_argument, 0, 'h'},	      {0, 0, 0, 0},
	};
	struct plan p = {.sizes = {32, 256, 1024, 4096},
			 .nsizes = 4,
			 .modes = {true, true, true},
			 .iters = 50000,
			 .warmup = 5000};
	struct sockaddr_in sa = {.sin_family = AF_INET};
	socklen_t salen = sizeof(sa);
	int ch, lfd, fd, ep, one = 1, st;
	uint8_t *buf;
	double *lat;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:m:n:w:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, p.sizes, 16, &p.nsizes)) {
				fprintf(stderr, "tcp_pingpong: bad --sizes '%s'\n", optarg);
				return 2;
			}
			break;
		case 'm':
			for (int m = 0; m < M_COUNT; m++)
				p.modes[m] = strstr(optarg, mode_name[m]) != NULL;
			break;
		case 'n':
			p.iters = atol(optarg);
			break;
		case 'w':
			p.warmup = atol(optarg);
			break;
		case 'h':
			printf("usage: tcp_pingpong [--sizes 32,256,...] [--modes "
			       "busy,blocking,epoll] "
			       "[--iters N] [--warmup N]\n"
			       "Raw loopback TCP ping-pong between two processes; JSON lines on "
			       "stdout.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (p.iters <= 0 || p.warmup < 0 || !(p.modes[0] || p.modes[1] || p.modes[2]))
		return 2;
	for (int i = 0; i < p.nsizes; i++)
		p.max = p.sizes[i] > p.max ? p.sizes[i] : p.max;
	if (!p.max)
		p.max = 1;

	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	lfd = socket(AF_INET, SOCK_STREAM, 0);
	if (lfd < 0 || bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) || listen(lfd, 1) ||
	    getsockname(lfd, (struct sockaddr *)&sa, &salen))
		return 1;
	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		fd = accept(lfd, NULL, NULL);
		if (fd < 0)
			_exit(1);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		serve(fd, &p);
		_exit(0);
	}
	close(lfd);
	fd = socket(AF_INET, SOCK_STREAM, 0);
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
		return 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	buf = malloc(p.max);
	lat = calloc((size_t)p.iters, sizeof(*lat));
	memset(buf, 0x5a, p.max);
	ep = watch(fd);
	for (int m = 0; m < M_COUNT; m++) {
		if (!p.modes[m])
			continue;
		for (int s = 0; s < p.nsizes; s++) {
			size_t len = p.sizes[s];
			struct bench_stats bs;
			double t_begin = 0;

			for (long i = 0; i < p.iters + p.warmup; i++) {
				double t0 = bench_now_us();

				if (i == p.warmup)
					t_begin = t0;
				if (send_all(fd, buf, len) ||
				    recv_all(fd, buf, len, (enum mode)m, ep)) {
					fprintf(stderr, "tcp_pingpong: connection lost\n");
					kill(pid, SIGKILL);
					return 1;
				}
				if (i >= p.warmup)
					lat[i - p.warmup] = bench_now_us() - t0;
			}
			bench_stats_compute(&bs, lat, (size_t)p.iters, bench_now_us() - t_begin);
			printf("{\"bench\":\"tcp_pingpong\",\"transport\":\"tcp\",\"mode\":\"%s\","
			       "\"kind\":\"baseline\",\"size\":%zu,\"inflight\":1,\"iters\":%ld,"
			       "\"p50_us\":%.3f,\"p99_us\":%.3f,\"rate_per_s\":%.0f}\n",
			       mode_name[m], len, p.iters, bs.p50_us, bs.p99_us, bs.rate_per_s);
			fflush(stdout);
		}
	}
	close(fd);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		return 1;
	free(buf);
	free(lat);
	return 0;
}
