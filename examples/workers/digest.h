/* SPDX-License-Identifier: MIT */
/*
 * digest.h - the work Workers.digest stands for: a chain of splitmix64
 * rounds, long enough to matter, computed by the server's pool and checked
 * by the client.
 */
#ifndef WORKERS_DIGEST_H
#define WORKERS_DIGEST_H

#include <stdint.h>

/* More rounds than this is a request the server refuses (-EINVAL). */
#define WORKERS_MAX_ROUNDS 100000000u

static inline uint64_t workers_digest_compute(uint64_t x, uint32_t rounds)
{
	for (uint32_t i = 0; i < rounds; i++) {
		x += 0x9e3779b97f4a7c15ull;
		x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
		x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
		x ^= x >> 31;
	}
	return x;
}

#endif
