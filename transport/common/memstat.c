// SPDX-License-Identifier: MIT
/*
 * memstat.c - counters and residency for tern_ctx_mem() (memstat.h).
 */
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include "memstat.h"

void tern_memmap_add(struct tern_link *list, struct tern_memmap *m, void *addr, size_t len, int fd,
		     uint64_t *counter)
{
	m->addr = addr;
	m->len = len;
	m->fd = fd;
	m->counter = counter;
	*counter += len;
	tern_link_add(list, &m->link);
}

void tern_memmap_del(struct tern_memmap *m)
{
	if (!m->counter)
		return;
	*m->counter -= m->len;
	m->counter = NULL;
	tern_link_del(&m->link);
}

static uint64_t resident(const void *addr, size_t len)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	uintptr_t a = (uintptr_t)addr & ~(uintptr_t)(page - 1);
	size_t total = ((uintptr_t)addr + len - a + page - 1) / page;
	unsigned char vec[1024];
	uint64_t n = 0;

	/* In chunks: a segment may be hundreds of MiB of pages. */
	for (size_t done = 0; done < total;) {
		size_t k = total - done < sizeof(vec) ? total - done : sizeof(vec);

		if (mincore((void *)(a + done * page), k * page, vec))
			return n; /* not mapped: nothing more to count */
		for (size_t i = 0; i < k; i++)
			n += vec[i] & 1;
		done += k;
	}
	return n * page;
}

uint64_t tern_memmap_resident(const struct tern_link *list)
{
	uint64_t n = 0;

	tern_link_each(it, list)
	{
		const struct tern_memmap *m = tern_link_entry(it, struct tern_memmap, link);
		struct stat st;

		if (m->fd < 0)
			n += resident(m->addr, m->len);
		else if (fstat(m->fd, &st) == 0)
			n += (uint64_t)st.st_blocks * 512 < m->len ? (uint64_t)st.st_blocks * 512
								   : m->len;
	}
	return n;
}

void tern_mem_stats_add(struct tern_mem_stats *acc, const struct tern_mem_stats *part)
{
#define ADD(x) acc->x += part->x;
	TERN_MEM_STATS_FIELDS(ADD)
#undef ADD
}
