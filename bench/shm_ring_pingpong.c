// SPDX-License-Identifier: MIT
/*
 * shm_ring_pingpong - the same-host floor tern's shm:// is measured against.
 *
 * Two processes (fork), one shared mapping, two single-producer/single-
 * consumer rings (client->server, server->client), head and tail on their
 * own cache lines, C11 acquire/release, both sides busy-spinning.  The
 * client copies SIZE bytes into its ring's next slot and publishes it; the
 * server copies them into its own ring (the echo) and publishes that; the
 * client reads the reply where it lies.  That is the work tern does on its
 * inplace echo path (one request copy, one handler copy, the reply read in
 * place), with nothing else: no headers, no credits, no checks, no loop.
 *
 * Output: one JSON object per size, the same keys as tern's benchmarks.
 */
#include <errno.h>
#include <getopt.h>
#include <signal.h>
#include <stdalign.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "stats.h"

#define RING_SLOTS 16 /* power of two */

struct ring {
	/* written by the producer */
	alignas(128) _Atomic uint32_t tail;
	/* written by the consumer */
	alignas(128) _Atomic uint32_t head;
	alignas(128) uint32_t len[RING_SLOTS];
	/* slots follow: RING_SLOTS x slot_size */
};

struct shared {
	struct ring *c2s, *s2c;
	uint8_t *c2s_slots, *s2c_slots;
	size_t slot_size;
};

static inline void cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
	__builtin_ia32_pause();
#endif
}

/* Produce one message of @len bytes from @src into @r. */
static void ring_put(struct ring *r, uint8_t *slots, size_t slot_size, uint32_t *tail,
		     const void *src, uint32_t len)
{
	uint32_t t = *tail;

	/* Space: the consumer's head; acquire pairs with its release. */
	while (t - atomic_load_explicit(&r->head, memory_order_acquire) >= RING_SLOTS)
		cpu_relax();
	memcpy(slots + (size_t)(t % RING_SLOTS) * slot_size, src, len);
	r->len[t % RING_SLOTS] = len;
	*tail = t + 1;
	/* Release: the bytes and the length are visible before the tail. */
	atomic_store_explicit(&r->tail, t + 1, memory_order_release);
}

/* Wait for the next message in @r; return a pointer to it where it lies. */
static const uint8_t *ring_wait(struct ring *r, const uint8_t *slots, size_t slot_size,
				uint32_t head, uint32_t *len)
{
	/* Acquire pairs with the producer's release of tail. */
	while (atomic_load_explicit(&r->tail, memory_order_acquire) == head)
		cpu_relax();
	*len = r->len[head % RING_SLOTS];
	return slots + (size_t)(head % RING_SLOTS) * slot_size;
}

static void ring_done(struct ring *r, uint32_t *head)
{
	/* Release: our reads of the slot are done before the producer reuses it. */
	atomic_store_explicit(&r->head, ++*head, memory_order_release);
}

static void serve(struct shared *sh, long total)
{
	uint32_t c2s_head = 0, s2c_tail = 0;

	for (long i = 0; i < total; i++) {
		uint32_t len;
		const uint8_t *req =
			ring_wait(sh->c2s, sh->c2s_slots, sh->slot_size, c2s_head, &len);

		ring_put(sh->s2c, sh->s2c_slots, sh->slot_size, &s2c_tail, req, len); /* echo */
		ring_done(sh->c2s, &c2s_head);
	}
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"sizes", required_argument, 0, 's'},
		{"iters", required_argument, 0, 'n'},
		{"warmup", required_argument, 0, 'w'},
		{"help", no_argument, 0, 'h'},
		{0, 0, 0, 0},
	};
	size_t sizes[16] = {32, 256, 1024, 4096};
	int nsizes = 4, ch, st;
	long iters = 100000, warmup = 10000, total;
	size_t max = 0, ring_bytes;
	struct shared sh;
	uint8_t *mem, *buf;
	double *lat;
	pid_t pid;

	while ((ch = getopt_long(argc, argv, "s:n:w:h", opts, NULL)) != -1) {
		switch (ch) {
		case 's':
			if (bench_parse_sizes(optarg, sizes, 16, &nsizes)) {
				fprintf(stderr, "shm_ring_pingpong: bad --sizes '%s'\n", optarg);
				return 2;
			}
			break;
		case 'n':
			iters = atol(optarg);
			break;
		case 'w':
			warmup = atol(optarg);
			break;
		case 'h':
			printf("usage: shm_ring_pingpong [--sizes 32,256,...] [--iters N] "
			       "[--warmup N]\n"
			       "Raw SPSC shared-memory ring ping-pong between two processes; JSON "
			       "lines on stdout.\n");
			return 0;
		default:
			return 2;
		}
	}
	if (iters <= 0 || warmup < 0)
		return 2;
	for (int i = 0; i < nsizes; i++)
		max = sizes[i] > max ? sizes[i] : max;
	sh.slot_size = (max + 127) & ~(size_t)127;
	ring_bytes = sizeof(struct ring) + RING_SLOTS * sh.slot_size;
	mem = mmap(NULL, 2 * ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 1;
	sh.c2s = (struct ring *)mem;
	sh.c2s_slots = mem + sizeof(struct ring);
	sh.s2c = (struct ring *)(mem + ring_bytes);
	sh.s2c_slots = mem + ring_bytes + sizeof(struct ring);
	total = (long)nsizes * (iters + warmup);

	pid = fork();
	if (pid < 0)
		return 1;
	if (pid == 0) {
		serve(&sh, total);
		_exit(0);
	}
	buf = malloc(max ? max : 1);
	lat = calloc((size_t)iters, sizeof(*lat));
	memset(buf, 0x5a, max);
	{
		uint32_t c2s_tail = 0, s2c_head = 0;

		for (int s = 0; s < nsizes; s++) {
			struct bench_stats bs;
			double t_begin = 0;
			uint32_t len = (uint32_t)sizes[s];

			for (long i = 0; i < iters + warmup; i++) {
				double t0 = bench_now_us();
				const uint8_t *rep;
				uint32_t rlen;

				if (i == warmup)
					t_begin = t0;
				memcpy(buf, &i, len < sizeof(i) ? len : sizeof(i));
				ring_put(sh.c2s, sh.c2s_slots, sh.slot_size, &c2s_tail, buf, len);
				rep = ring_wait(sh.s2c, sh.s2c_slots, sh.slot_size, s2c_head,
						&rlen);
				if (rlen != len ||
				    memcmp(rep, &i, len < sizeof(i) ? len : sizeof(i))) {
					fprintf(stderr, "shm_ring_pingpong: bad echo\n");
					kill(pid, SIGKILL);
					return 1;
				}
				ring_done(sh.s2c, &s2c_head);
				if (i >= warmup)
					lat[i - warmup] = bench_now_us() - t0;
			}
			bench_stats_compute(&bs, lat, (size_t)iters, bench_now_us() - t_begin);
			printf("{\"bench\":\"shm_ring_pingpong\",\"transport\":\"shm\",\"mode\":"
			       "\"busy\","
			       "\"kind\":\"baseline\",\"size\":%zu,\"inflight\":1,\"iters\":%ld,"
			       "\"p50_us\":%.3f,\"p99_us\":%.3f,\"rate_per_s\":%.0f}\n",
			       sizes[s], iters, bs.p50_us, bs.p99_us, bs.rate_per_s);
			fflush(stdout);
		}
	}
	if (waitpid(pid, &st, 0) < 0 || !WIFEXITED(st) || WEXITSTATUS(st))
		return 1;
	free(buf);
	free(lat);
	return 0;
}
