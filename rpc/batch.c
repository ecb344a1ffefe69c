// SPDX-License-Identifier: MIT
/*
 * batch.c - dynamic batching: gather up to @max requests for one method,
 * from every session of the context, and run one handler over all of them
 * when @max have arrived or the first has waited @wait_us.
 *
 * A gathered request stays in its receive slot (and, for a call, owns its
 * reply slot), so gathering holds the sender's credits.  Two rules keep that
 * from ever deadlocking a sender:
 *   - the wait is bounded (wait_us), whatever happens;
 *   - when a contributing peer has no credit left (it cannot send the rest
 *     of the batch until we release something), the batch runs at once.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

void tern__batch_flush(struct tern_batcher *b)
{
	uint32_t n = b->n;
	tern_ctx *ctx;

	if (n == 0)
		return;
	ctx = b->items[0].req->s->ctx;
	b->n = 0;
	b->first_ns = 0;
	TERN_CALLBACK(ctx, b->fn(b->items, n, b->user));
	/* Reply (or, one-way, just release) each item in arrival order. */
	for (uint32_t i = 0; i < n; i++)
		tern__serve_batch_done(b->items[i].req, b->items[i].status);
}

void tern__batch_add(struct tern_batcher *b, tern_req *req, void *out, size_t out_cap)
{
	tern_session *s = req->s;
	struct tern_batch_item *it = &b->items[b->n++];

	req->state = TERN_REQ_BATCHED;
	it->req = req;
	it->in = req->in;
	it->in_len = req->in_len;
	it->out = out;
	it->out_cap = out_cap;
	it->status = 0;
	if (b->n == 1) {
		b->first_ns = tern__now_ns();
		tern__deadline_arm(s->ctx, b->first_ns + b->wait_ns);
	}
	/* Full, or the sender is out of credit and waits on us: run now. */
	if (b->n == b->max || s->cr.peer_tx == 0)
		tern__batch_flush(b);
}

uint64_t tern__batches_due(tern_ctx *ctx, uint64_t now_ns)
{
	uint64_t next = 0;

	for (struct tern_batcher *b = tern__rpc_ctx(ctx)->batchers; b; b = b->next) {
		uint64_t due;

		if (!b->n)
			continue;
		due = b->first_ns + b->wait_ns;
		if (due <= now_ns)
			tern__batch_flush(b);
		else if (!next || due < next)
			next = due;
	}
	return next;
}

/* A session died: its gathered requests leave their batches unanswered. */
void tern__batch_drop_session(tern_ctx *ctx, tern_session *s)
{
	for (struct tern_batcher *b = tern__rpc_ctx(ctx)->batchers; b; b = b->next) {
		uint32_t k = 0;

		for (uint32_t i = 0; i < b->n; i++) {
			if (b->items[i].req->s == s)
				tern__serve_batch_done(b->items[i].req, -ECONNRESET);
			else
				b->items[k++] = b->items[i];
		}
		b->n = k;
		if (k == 0)
			b->first_ns = 0;
	}
}

void tern__batchers_free(tern_ctx *ctx)
{
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);

	while (rctx->batchers) {
		struct tern_batcher *b = rctx->batchers;
		rctx->batchers = b->next;
		free(b->items);
		free(b);
	}
}

int tern_register_batch(tern_ctx *ctx, uint32_t method_id, const struct tern_batch_opts *opts,
			tern_batch_handler fn, void *user)
{
	struct tern_rpc_ctx *rctx;
	struct tern_batch_opts o = {0};
	struct tern_method m = {.id = method_id, .kind = TERN_KIND_BATCH};
	struct tern_batcher *b;
	int rc;

	if (!ctx || !fn || !opts || method_id == 0 || method_id >= TERN_METHOD_RESERVED_MIN)
		return -EINVAL;
	memcpy(&o, opts, opts->size && opts->size < sizeof(o) ? opts->size : sizeof(o));
	if (o.max == 0 || o.max > 65536)
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	if (tern__methods_find(&rctx->methods, method_id))
		return -EEXIST;
	b = calloc(1, sizeof(*b));
	if (!b || !(b->items = calloc(o.max, sizeof(*b->items)))) {
		free(b);
		return -ENOMEM;
	}
	b->method = method_id;
	b->max = o.max;
	b->wait_ns = (uint64_t)o.wait_us * 1000;
	b->oneway = o.oneway != 0;
	b->fn = fn;
	b->user = user;
	m.fn.batch = b;
	m.user = user;
	if ((rc = tern__methods_add(&rctx->methods, &m))) {
		free(b->items);
		free(b);
		return rc;
	}
	b->next = rctx->batchers;
	rctx->batchers = b;
	return 0;
}
