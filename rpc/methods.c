// SPDX-License-Identifier: MIT
/*
 * methods.c - the context's method table: id -> handler.
 *
 * Looked up once per request, so it is an open-addressing table with
 * linear probing over a power-of-two array: no allocation and no pointer
 * chasing on lookup.  It grows (at registration, never on the data path)
 * when half full, counting tombstones, so probes stay short.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

#define TOMBSTONE_KIND 0xff

/* Method ids are already hashes of "Service.method"; mix anyway so that
 * hand-picked small ids spread out. */
static uint32_t bucket_of(uint32_t id, uint32_t mask)
{
	id ^= id >> 16;
	id *= 0x7feb352du;
	id ^= id >> 15;
	return id & mask;
}

static int grow(struct tern_method_table *t)
{
	uint32_t nb = t->b ? (t->mask + 1) * 2 : 16;
	struct tern_method *old = t->b, *b = calloc(nb, sizeof(*b));
	uint32_t old_n = t->b ? t->mask + 1 : 0;

	if (!b)
		return -ENOMEM;
	t->b = b;
	t->mask = nb - 1;
	t->count = 0;
	t->tombstones = 0;
	for (uint32_t i = 0; i < old_n; i++) {
		if (old[i].id && old[i].kind != TOMBSTONE_KIND) {
			uint32_t j = bucket_of(old[i].id, t->mask);
			while (b[j].id)
				j = (j + 1) & t->mask;
			b[j] = old[i];
			t->count++;
		}
	}
	free(old);
	return 0;
}

int tern__methods_add(struct tern_method_table *t, const struct tern_method *m)
{
	uint32_t j;

	if (tern__methods_find(t, m->id))
		return -EEXIST;
	if (!t->b || (t->count + t->tombstones + 1) * 2 > t->mask + 1) {
		int rc = grow(t);
		if (rc)
			return rc;
	}
	j = bucket_of(m->id, t->mask);
	while (t->b[j].id && t->b[j].kind != TOMBSTONE_KIND)
		j = (j + 1) & t->mask;
	if (t->b[j].kind == TOMBSTONE_KIND)
		t->tombstones--;
	t->b[j] = *m;
	t->count++;
	return 0;
}

const struct tern_method *tern__methods_find(const struct tern_method_table *t, uint32_t id)
{
	uint32_t j;

	if (!t->b || id == 0)
		return NULL;
	j = bucket_of(id, t->mask);
	/* An empty bucket (id 0) ends the probe; tombstones keep their id. */
	while (t->b[j].id) {
		if (t->b[j].id == id && t->b[j].kind != TOMBSTONE_KIND)
			return &t->b[j];
		j = (j + 1) & t->mask;
	}
	return NULL;
}

int tern__methods_del(struct tern_method_table *t, uint32_t id)
{
	struct tern_method *m = (struct tern_method *)tern__methods_find(t, id);

	if (!m)
		return -ENOENT;
	m->kind = TOMBSTONE_KIND;
	t->count--;
	t->tombstones++;
	return 0;
}

void tern__methods_free(struct tern_method_table *t)
{
	free(t->b);
	memset(t, 0, sizeof(*t));
}

int tern__method_register(tern_ctx *ctx, const struct tern_method *m)
{
	if (!ctx || m->id == 0 || m->id >= TERN_METHOD_RESERVED_MIN || !m->fn.raw)
		return -EINVAL;
	return tern__methods_add(&tern__rpc_ctx(ctx)->methods, m);
}

int tern_register_raw(tern_ctx *ctx, uint32_t method_id, tern_raw_handler fn, void *user)
{
	struct tern_method m = {.id = method_id, .kind = TERN_KIND_RAW, .fn.raw = fn, .user = user};
	return tern__method_register(ctx, &m);
}

int tern_register_inplace(tern_ctx *ctx, uint32_t method_id, tern_inplace_handler fn, void *user)
{
	struct tern_method m = {
		.id = method_id, .kind = TERN_KIND_INPLACE, .fn.inplace = fn, .user = user};
	return tern__method_register(ctx, &m);
}

int tern_register_deferred(tern_ctx *ctx, uint32_t method_id, tern_deferred_handler fn, void *user)
{
	struct tern_method m = {
		.id = method_id, .kind = TERN_KIND_DEFERRED, .fn.deferred = fn, .user = user};
	return tern__method_register(ctx, &m);
}

int tern_register_oneway(tern_ctx *ctx, uint32_t method_id, tern_oneway_handler fn, void *user)
{
	struct tern_method m = {
		.id = method_id, .kind = TERN_KIND_ONEWAY, .fn.oneway = fn, .user = user};
	return tern__method_register(ctx, &m);
}

int tern_unregister(tern_ctx *ctx, uint32_t method_id)
{
	struct tern_rpc_ctx *rctx;
	const struct tern_method *m;

	if (!ctx)
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	/* A batch still gathering runs now; its gatherer stays until the
	 * context goes (nothing routes to it any more). */
	m = tern__methods_find(&rctx->methods, method_id);
	if (m && m->kind == TERN_KIND_BATCH)
		tern__batch_flush(m->fn.batch);
	return tern__methods_del(&rctx->methods, method_id);
}
