// SPDX-License-Identifier: MIT
/*
 * local_bw - the floors large messages on shm:// and tcp:// are divided by.
 *
 *   --memcpy  single-threaded memcpy from one buffer into another of SIZE
 *             bytes (both touched beforehand): what one copy costs, which
 *             is what shm's process_vm transfer is.
 *   --tcp     raw loopback TCP, one SIZE-byte transfer in flight: the
 *             parent asks (8 bytes), a forked child writes SIZE bytes, the
 *             parent reads them all into one buffer; timed from the request
 *             to the last byte, like one tern call.  Both ends spin on
 *             non-blocking sockets, as a busy tern context does.
 *
 * JSON lines: {"bench":"memcpy_bw"|"tcp_stream_bw","size":N,"gb_per_s":X,...}
 * with the bandwidth at the median time.
 */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define MAX_SIZES 16

static void report(const char *bench, size_t size, int iters, double *lat, double elapsed)
{
	struct bench_stats st;

	bench_stats_compute(&st, lat, (size_t)iters, elapsed);
	printf("{\"bench\":\"%s\",\"size\":%zu,\"iters\":%d,\"p50_us\":%.1f,\"p99_us\":%.1f,"
	       "\"gb_per_s\":%.3f}\n",
	       bench, size, iters, st.p50_us, st.p99_us, (double)size / st.p50_us / 1e3);
	fflush(stdout);
}

static int run_memcpy(const size_t *sizes, int nsizes, int iters)
{
	for (int si = 0; si < nsizes; si++) {
		size_t len = sizes[si];
		double *lat = calloc((size_t)iters, sizeof(double)), t_begin = 0;
		uint8_t *src, *dst;

		if (!lat || posix_memalign((void **)&src, 4096, len) ||
		    posix_memalign((void **)&dst, 4096, len))
			return 1;
		memset(src, 0x11, len);
		memset(dst, 0x22, len);
		for (int i = -1; i < iters; i++) {
			double t0 = bench_now_us();

			memcpy(dst, src, len);
			/* keep the copy: the compiler may not drop it */
			__asm__ volatile("" : : "r"(dst) : "memory");
			if (i == 0)
				t_begin = t0;
			if (i >= 0)
				lat[i] = bench_now_us() - t0;
		}
		report("memcpy_bw", len, iters, lat, bench_now_us() - t_begin);
		free(src);
		free(dst);
		free(lat);
	}
	return 0;
}

static int full_write(int fd, const uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = send(fd, p, n, MSG_DONTWAIT | MSG_NOSIGNAL);

		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

static int full_read(int fd, uint8_t *p, size_t n)
{
	while (n) {
		ssize_t k = recv(fd, p, n, MSG_DONTWAIT);

		if (k < 0 && (errno == EINTR || errno == EAGAIN))
			continue;
		if (k <= 0)
			return -1;
		p += k;
		n -= (size_t)k;
	}
	return 0;
}

/* The child: for each request (an 8-byte size), write that many bytes. */
static int tcp_sender(int fd, size_t max)
{
	uint8_t *buf;
	uint64_t want;

	if (posix_memalign((void **)&buf, 4096, max))
		return 1;
	memset(buf, 0x3c, max);
	while (full_read(fd, (uint8_t *)&want, 8) == 0 && want)
		if (want > max || full_write(fd, buf, want))
			return 1;
	free(buf);
	return 0;
}

static int run_tcp(const size_t *sizes, int nsizes, int iters)
{
	struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
	socklen_t sl = sizeof(sa);
	int ls, fd, one = 1, st, rc = 0;
	size_t max = 0;
	uint8_t *buf;
	pid_t pid;

	for (int i = 0; i < nsizes; i++)
		if (sizes[i] > max)
			max = sizes[i];
	ls = socket(AF_INET, SOCK_STREAM, 0);
	if (ls < 0 || bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 1) ||
	    getsockname(ls, (struct sockaddr *)&sa, &sl))
		return 1;
	pid = fork();
	if (pid == 0) {
		close(ls);
		fd = socket(AF_INET, SOCK_STREAM, 0);
		if (fd < 0 || connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
			_exit(1);
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		_exit(tcp_sender(fd, max));
	}
	fd = accept(ls, NULL, NULL);
	close(ls);
	if (fd < 0 || posix_memalign((void **)&buf, 4096, max))
		return 1;
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	memset(buf, 0, max);
	for (int si = 0; si < nsizes && !rc; si++) {
		size_t len = sizes[si];
		double *lat = calloc((size_t)iters, sizeof(double)), t_begin = 0;

		for (int i = -1; i < iters && !rc; i++) {
			uint64_t want = len;
			double t0 = bench_now_us();

			if (full_write(fd, (uint8_t *)&want, 8) || full_read(fd, buf, len))
				rc = 1;
			if (i == 0)
				t_begin = t0;
			if (i >= 0)
				lat[i] = bench_now_us() - t0;
		}
		if (!rc)
			report("tcp_stream_bw", len, iters, lat, bench_now_us() - t_begin);
		free(lat);
	}
	{
		uint64_t end = 0;
		(void)!write(fd, &end, 8);
	}
	close(fd);
	free(buf);
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		rc = 1;
	return rc;
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'}, {"iters", required_argument, 0, 'n'},
		{"memcpy", no_argument, 0, 'm'},      {"tcp", no_argument, 0, 't'},
		{"help", no_argument, 0, 'h'},	      {0, 0, 0, 0},
	};
	size_t sizes[MAX_SIZES] = {64 << 10, 1 << 20, 16 << 20, 256 << 20};
	int nsizes = 4, iters = 5, ch, what = 0;

	while ((ch = getopt_long(argc, argv, "s:n:mth", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, sizes, MAX_SIZES, &nsizes))
				return 2;
			break;
		case 'n':
			iters = atoi(optarg);
			break;
		case 'm':
		case 't':
			what = ch;
			break;
		default:
			fprintf(stderr,
				"usage: local_bw --memcpy|--tcp [--sizes 64K,1M] [--iters N]\n");
			return ch == 'h' ? 0 : 2;
		}
	}
	if (iters < 1 || !what) {
		fprintf(stderr, "local_bw: say --memcpy or --tcp\n");
		return 2;
	}
	return what == 'm' ? run_memcpy(sizes, nsizes, iters) : run_tcp(sizes, nsizes, iters);
}
