// SPDX-License-Identifier: MIT
/*
 * xtab.c - live bulk exports per connection (see xtab.h).
 *
 * A key is (generation << 16) | index: the index finds the entry in O(1),
 * the generation (never 0, bumped on every export) makes a stale or guessed
 * key miss.  The table grows by doubling, driven only by our own exports.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "xtab.h"

#define XTAB_MAX  65536u
#define XTAB_NONE UINT32_MAX

/* What an exported region's prov points at when the provider keeps nothing
 * else there: non-NULL, so the engine calls mem_release() for it. */
static char xtab_mark;

static int xtab_grow(struct tern_xtab *x)
{
	uint32_t ncap = x->cap ? 2 * x->cap : 16;
	struct tern_xent *e;

	if (x->cap >= XTAB_MAX)
		return -ENOSPC;
	e = realloc(x->e, ncap * sizeof(*e));
	if (!e)
		return -ENOMEM;
	memset(e + x->cap, 0, (ncap - x->cap) * sizeof(*e));
	/* the new entries go on the free list, lowest index first */
	for (uint32_t i = ncap; i-- > x->cap;) {
		e[i].next_free = x->free_head;
		x->free_head = i;
	}
	x->e = e;
	x->cap = ncap;
	return 0;
}

int tern_xtab_add(struct tern_xtab *x, struct tern_tmem *m, size_t off, size_t len, int writable,
		  struct tern_bulk_desc *out)
{
	struct tern_xent *e;
	uint32_t i;
	int rc;

	if (off > m->len || len > m->len - off || len == 0)
		return -EINVAL;
	if (x->cap == 0)
		x->free_head = XTAB_NONE;
	if (x->free_head == XTAB_NONE && (rc = xtab_grow(x)))
		return rc;
	i = x->free_head;
	e = &x->e[i];
	x->free_head = e->next_free;
	if (++x->gen == 0)
		x->gen = 1;
	e->m = m;
	e->addr = (uint64_t)(uintptr_t)m->addr + off;
	e->len = len;
	e->writable = writable != 0;
	e->key = ((uint32_t)x->gen << 16) | i;
	x->live++;
	if (!m->prov)
		m->prov = &xtab_mark;
	out->addr = e->addr;
	out->len = len;
	out->key = e->key;
	out->aux = e->writable;
	return 0;
}

const struct tern_xent *tern_xtab_check(const struct tern_xtab *x, uint32_t key, uint64_t addr,
					uint64_t len, bool write)
{
	uint32_t i = key & 0xffffu;
	const struct tern_xent *e;

	if (i >= x->cap)
		return NULL;
	e = &x->e[i];
	if (!e->m || e->key != key || (write && !e->writable))
		return NULL;
	/* inside [e->addr, e->addr + e->len), written so nothing overflows */
	if (addr < e->addr || len > e->len || addr - e->addr > e->len - len)
		return NULL;
	return e;
}

static void xtab_release(struct tern_xtab *x, uint32_t i)
{
	x->e[i].m = NULL;
	x->e[i].key = 0;
	x->e[i].next_free = x->free_head;
	x->free_head = i;
	x->live--;
}

int tern_xtab_del(struct tern_xtab *x, const struct tern_bulk_desc *d)
{
	uint32_t i = d->key & 0xffffu;

	if (i >= x->cap || !x->e[i].m || x->e[i].key != d->key)
		return -ENOENT;
	xtab_release(x, i);
	return 0;
}

void tern_xtab_drop_mem(struct tern_xtab *x, const struct tern_tmem *m)
{
	for (uint32_t i = 0; i < x->cap; i++)
		if (x->e[i].m == m)
			xtab_release(x, i);
}

void tern_xtab_free(struct tern_xtab *x)
{
	free(x->e);
	memset(x, 0, sizeof(*x));
}
