/* SPDX-License-Identifier: MIT */
/*
 * memstat.h - what the providers count for tern_ctx_mem().
 *
 * Each provider keeps a struct tern_mem_stats in its per-context state and
 * updates it where it takes and gives back memory; its mem_stats op adds
 * that to the engine's sum.  Slot mappings whose pages come on first touch
 * (shm segments, tcp's slots) are also kept on a list of struct
 * tern_memmap, so the op can ask the kernel how much of them is resident.
 */
#ifndef TERN_MEMSTAT_H
#define TERN_MEMSTAT_H

#include <stddef.h>
#include <stdint.h>

#include "tern.h"
#include "link.h"

/*
 * A mapping counted in *@counter while it is on a list.  @fd >= 0: the
 * shmem file behind it, whose allocated blocks are what backs it (a page
 * that fallocate() backed but nobody wrote yet is not "resident" to
 * mincore, and it costs memory all the same); -1: anonymous memory,
 * measured with mincore().  The owner keeps @fd open, and closes it.
 */
struct tern_memmap {
	struct tern_link link;
	void *addr;
	size_t len;
	int fd;
	uint64_t *counter;
};

/* Count @len bytes at @addr (backed by @fd, or -1) in *@counter, and list them on @list. */
void tern_memmap_add(struct tern_link *list, struct tern_memmap *m, void *addr, size_t len, int fd,
		     uint64_t *counter);
/* Uncount and unlist @m (idempotent: a mapping never added is a no-op). */
void tern_memmap_del(struct tern_memmap *m);
/* The bytes of @list's mappings that pages back now (mincore). */
uint64_t tern_memmap_resident(const struct tern_link *list);
/* Add every field of @part to @acc's. */
void tern_mem_stats_add(struct tern_mem_stats *acc, const struct tern_mem_stats *part);

#endif /* TERN_MEMSTAT_H */
