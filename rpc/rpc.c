// SPDX-License-Identifier: MIT
/*
 * rpc.c - the service layer on the engine: the contexts it makes, its part
 * of every session, and the upcalls through which the engine reaches it.
 *
 * The engine (src/) never names a function of this floor: it calls the
 * table below, which tern_ctx_create() hands to every context it makes
 * (as nng's protocols hand their ops to the core socket they open).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

/*
 * Per-method metrics are on unless TERN_METRICS says "0" or "off": they
 * cost under 5% of a small round trip (docs/metrics.md), and an operator
 * should find them on a running server without having asked beforehand.
 * The variable turns them off without a rebuild; tern_ctx_metrics_enable()
 * still overrides it either way.
 */
static bool metrics_default(void)
{
	const char *v = getenv("TERN_METRICS");

	return !v || (strcmp(v, "0") != 0 && strcmp(v, "off") != 0);
}

int tern_ctx_create(const struct tern_ctx_opts *opts, tern_ctx **out)
{
	int rc = tern__ctx_create(opts, &tern__rpc_upcalls, out);

	if (!rc && metrics_default() && (rc = tern_ctx_metrics_enable(*out, 1))) {
		tern_ctx_destroy(*out);
		*out = NULL;
	}
	return rc;
}

static void rpc_ctx_fini(tern_ctx *ctx)
{
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);

	tern__metrics_http_close(ctx);
	tern__methods_free(&rctx->methods);
	tern__batchers_free(ctx);
	free(rctx->services);
	tern__metrics_free(rctx->mx_store);
}

int tern_ctx_metrics_enable(tern_ctx *ctx, int on)
{
	struct tern_rpc_ctx *rctx;

	if (!ctx)
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	if (on && !rctx->mx_store && !(rctx->mx_store = tern__metrics_new()))
		return -ENOMEM;
	rctx->mx = on ? rctx->mx_store : NULL;
	return 0;
}

int tern_ctx_method_stats(tern_ctx *ctx, struct tern_method_stats *out, size_t cap)
{
	if (!ctx || (!out && cap))
		return -EINVAL;
	return tern__metrics_stats(tern__rpc_ctx(ctx)->mx_store, out, cap);
}

ssize_t tern_ctx_metrics_write(tern_ctx *ctx, char *buf, size_t cap)
{
	if (!ctx || (!buf && cap))
		return -EINVAL;
	return tern__metrics_write(tern__rpc_ctx(ctx)->mx_store, ctx, buf, cap);
}

/* Client: the services to check once connected, encoded now (bad names fail tern_connect). */
static int services_prepare(tern_session *s, const struct tern_session_opts *o)
{
	struct tern_rpc_session *r = tern__rpc(s);
	int rc;

	r->svc_check = malloc(s->max_payload);
	if (r->svc_check)
		tern__session_heap(s, s->max_payload);
	rc = r->svc_check ? tern__services_encode(o->services, o->nservices, r->svc_check,
						  s->max_payload)
			  : -ENOMEM;
	if (rc < 0) {
		tern__set_error(s->ctx,
				"%s: bad service list (names are 1..%d of [A-Za-z0-9_.], at most "
				"%d services)",
				s->peer, TERN_SVC_NAME_MAX, TERN_SVC_MAX);
		return rc;
	}
	r->svc_check_len = (uint32_t)rc;
	s->binds = true;
	return 0;
}

static int rpc_session_init(tern_session *s, const struct tern_session_opts *o)
{
	struct tern_rpc_session *r = tern__rpc(s);
	uint32_t n = s->n;

	r->calls = calloc(n, sizeof(*r->calls));
	r->free_calls = calloc(n, sizeof(*r->free_calls));
	r->queue = calloc(o->queue_depth, sizeof(*r->queue));
	r->orphans = calloc(n, sizeof(*r->orphans));
	r->reqs = calloc(n, sizeof(*r->reqs));
	r->free_reqs = calloc(n, sizeof(*r->free_reqs));
	r->owreqs = calloc(n, sizeof(*r->owreqs));
	r->free_owreqs = calloc(n, sizeof(*r->free_owreqs));
	/* every receive slot may hold a request waiting for a reply slot */
	r->bl_cap = 2 * n + TERN_CTRL_SLOTS;
	r->backlog = calloc(r->bl_cap, sizeof(*r->backlog));
	r->bulk_wait = calloc(n, sizeof(*r->bulk_wait));
	if (!r->calls || !r->free_calls || !r->queue || !r->orphans || !r->reqs || !r->free_reqs ||
	    !r->owreqs || !r->free_owreqs || !r->backlog || !r->bulk_wait)
		return -ENOMEM;
	tern__session_heap(
		s, n * (sizeof(*r->calls) + sizeof(*r->free_calls) + sizeof(*r->orphans) +
			sizeof(*r->reqs) + sizeof(*r->free_reqs) + sizeof(*r->owreqs) +
			sizeof(*r->free_owreqs) + sizeof(*r->bulk_wait)) +
			   o->queue_depth * sizeof(*r->queue) + r->bl_cap * sizeof(*r->backlog));
	r->q_cap = o->queue_depth;
	r->cancel_timeout_ms = o->cancel_timeout_ms;
	/* Free stacks pop from the end: push in reverse so slot 0 goes first. */
	for (uint32_t i = 0; i < n; i++) {
		r->calls[i].s = s;
		r->calls[i].idx = i;
		r->free_calls[i] = n - 1 - i;
		r->reqs[i].s = s;
		r->reqs[i].idx = i;
		r->free_reqs[i] = n - 1 - i;
		r->owreqs[i].s = s;
		r->owreqs[i].idx = i;
		r->owreqs[i].oneway = true;
		r->free_owreqs[i] = n - 1 - i;
	}
	r->nfree_calls = n;
	r->nfree_reqs = n;
	r->nfree_owreqs = n;
	if (!s->is_server && o->nservices)
		return services_prepare(s, o);
	return 0;
}

static void rpc_session_fini(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);

	/* staging kept for calls that timed out: the peer is gone now */
	for (uint32_t i = 0; r->orphans && i < s->n; i++) {
		if (r->orphans[i].used) {
			tern__session_stage_put(s, r->orphans[i].st[0]);
			tern__session_stage_put(s, r->orphans[i].st[1]);
		}
	}
	free(r->orphans);
	tern__serve_session_fini(s);
	/* a call's start time still owed by the turn must not outlive its slot
	 * (every path completes its metrics first; this is the last guard) */
	for (uint32_t i = 0; r->calls && i < s->n; i++)
		if (r->calls[i].mx && !r->calls[i].mx_t0.ns)
			tern__turn_stamp_drop(s->ctx, &r->calls[i].mx_t0);
	free(r->calls);
	free(r->free_calls);
	free(r->queue);
	free(r->missing);
	for (uint32_t i = 0; r->reqs && r->owreqs && i < s->n; i++) {
		free(r->reqs[i].zx); /* tern_req_zero_extend()'s copies */
		free(r->owreqs[i].zx);
	}
	free(r->reqs);
	free(r->free_reqs);
	free(r->owreqs);
	free(r->free_owreqs);
	free(r->backlog);
	free(r->bulk_wait);
	free(r->svc_check);
}

/* Client: the server answered the service check. */
static void svc_check_done(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct tern_rpc_session *r = tern__rpc(s);
	char why[TERN_ERRMSG_MAX + 1];

	(void)user;
	if (status)
		snprintf(why, sizeof(why), "%.*s", len ? (int)len : 20,
			 len ? (const char *)reply : "service check failed");
	else /* which of our methods the server serves */
		status = tern__services_accept(s, reply, len, why, sizeof(why));
	free(r->svc_check);
	r->svc_check = NULL;
	if (status) {
		tern__session_fail(s, status, why);
		return; /* closed() reports it through the connect callback */
	}
	tern__session_bound(s);
}

/* Client: check the server's services before the user may call. */
static void rpc_bind(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);
	int rc;

	rc = tern__client_call_internal(s, TERN_METHOD_SVC_CHECK, r->svc_check, r->svc_check_len,
					svc_check_done, TERN_DEFAULT_CONNECT_TIMEOUT_MS);
	if (rc)
		tern__session_fail(s, rc, "cannot send the service check");
}

static void rpc_down(tern_session *s, int err)
{
	tern__client_fail_all(s, err);
	tern__serve_session_down(s);
}

/* Calls whose deadline passed, on every session; then batches whose wait is over. */
static uint64_t rpc_timers(tern_ctx *ctx, uint64_t now_ns)
{
	uint64_t next = 0, d;
	struct tern_list *l, *nx;

	for (l = ctx->sessions.next; l != &ctx->sessions; l = nx) {
		nx = l->next;
		d = tern__client_expire(tern_container_of(l, tern_session, link), now_ns);
		if (d && (!next || d < next))
			next = d;
	}
	d = tern__batches_due(ctx, now_ns);
	if (d && (!next || d < next))
		next = d;
	return next;
}

/* Credits came back: queued calls may go, and cancels. */
static void rpc_credits(tern_session *s)
{
	tern__client_send_cancels(s);
	tern__client_kick(s);
}

const struct tern_upcalls tern__rpc_upcalls = {
	.ctx_size = sizeof(struct tern_rpc_ctx),
	.session_size = sizeof(struct tern_rpc_session),
	.ctx_fini = rpc_ctx_fini,
	.session_init = rpc_session_init,
	.session_fini = rpc_session_fini,
	.bind = rpc_bind,
	.down = rpc_down,
	.request = tern__serve_request,
	.oneway = tern__serve_oneway,
	.reply = tern__client_reply,
	.call_sent = tern__client_send_done,
	.reply_sent = tern__serve_reply_slot_free,
	.credits = rpc_credits,
	.cancel = tern__serve_cancel,
	.bulk_done = tern__serve_bulk_done,
	.timers = rpc_timers,
};
