// SPDX-License-Identifier: MIT
/*
 * internals.c - what the engine still holds, read from its own structures.
 *
 * tern.h has no query for a session's credits, slots or staging, so this
 * one file reads the engine's (src/internal.h) and the service layer's
 * (rpc/rpc.h) structures, as tests/engine do.  The providers' own tables
 * (shm's and tcp's live exports, verbs' memory windows) are out of the
 * engine's reach and so out of this one's: what the service layer recorded
 * of its exports (each call's, each timed-out call's) is checked instead.
 */
#include <stdio.h>
#include <string.h>

#include "chaos.h"
#include "internal.h"
#include "mem.h"
#include "rpc.h"

int chaos_register_mem(void)
{
	return tern__transport_register(&tern_mem_transport);
}

bool chaos_session_drained(tern_session *s)
{
	return tern__rpc(s)->q_len == 0 && s->cr.tx == s->n && s->cr.replies_expected == 0;
}

/* What is taken among @s's call slots, requests and timed-out calls. */
struct taken {
	uint32_t calls, busy, exports, orphans, reqs, owreqs;
};

static struct taken taken(tern_session *s)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct taken t = {0};

	for (uint32_t i = 0; i < s->n; i++) {
		const struct tern_callslot *c = &r->calls[i];

		t.calls += c->state != TERN_CALL_FREE;
		t.busy += c->send_busy; /* its send not reported done yet */
		t.exports += c->nx + (c->req_stage != NULL) + (c->rep_stage != NULL);
		t.orphans += r->orphans[i].used;
		t.reqs += r->reqs[i].state != TERN_REQ_FREE;
		t.owreqs += r->owreqs[i].state != TERN_REQ_FREE;
	}
	return t;
}

bool chaos_session_home(tern_session *s, bool slots, char *why, size_t len)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct taken t;

	if (s->state != TERN_S_READY) {
		snprintf(why, len, "the session is not ready (state %d)", s->state);
		return false;
	}
	t = taken(s);
	/*
	 * Selective signalling (rdma://) leaves up to sig_every - 1 sends
	 * unreported while nobody waits for a slot; the engine asks for a
	 * report the moment someone does (rpc/client.c, rpc/server.c).  Ask
	 * for one here too: what the check proves is that every slot comes
	 * home once its send is reported, so none is lost.
	 */
	if (slots && (t.busy || r->nfree_reqs + t.reqs != s->n))
		tern__session_report_sends(s);
	if (s->cr.tx != s->n || s->cr.replies_expected || s->cr.to_return ||
	    s->cr.peer_tx != s->n || t.calls || r->q_len || t.reqs || t.owreqs || r->bl_len ||
	    s->staged || t.exports || t.orphans ||
	    (slots && (r->nfree_calls != s->n || t.busy || r->nfree_reqs != s->n ||
		       r->nfree_owreqs != s->n))) {
		snprintf(why, len,
			 "credits %u/%u (peer %u/%u, owed %u), replies expected %u, calls %u, call "
			 "slots free %u/%u (%u sends not done), queued %u, request slots free "
			 "%u/%u (%u in use), one-way %u/%u (%u in use), backlog %u, staging %llu "
			 "bytes, call exports and staging %u, timed-out calls' leftovers %u",
			 s->cr.tx, s->n, s->cr.peer_tx, s->n, s->cr.to_return,
			 s->cr.replies_expected, t.calls, r->nfree_calls, s->n, t.busy, r->q_len,
			 r->nfree_reqs, s->n, t.reqs, r->nfree_owreqs, s->n, t.owreqs, r->bl_len,
			 (unsigned long long)s->staged, t.exports, t.orphans);
		return false;
	}
	return true;
}

void chaos_session_state(tern_session *s, char *out, size_t len)
{
	struct tern_rpc_session *r = tern__rpc(s);
	struct taken t = taken(s);

	snprintf(out, len,
		 "state %d, credits tx %u peer_tx %u owed %u, control tx %u peer %u owed %u "
		 "(busy %x), replies expected %u, calls %u, free call slots %u, queued %u, "
		 "requests %u (free reply slots %u), one-way %u, backlog %u",
		 s->state, s->cr.tx, s->cr.peer_tx, s->cr.to_return, s->cr.ctrl_tx,
		 s->cr.peer_ctrl_tx, s->cr.ctrl_to_return, s->ctrl_busy, s->cr.replies_expected,
		 t.calls, r->nfree_calls, r->q_len, t.reqs, r->nfree_reqs, t.owreqs, r->bl_len);
}

int chaos_ctx_sessions(tern_ctx *ctx)
{
	int n = 0;

	for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next)
		n++;
	return n;
}

unsigned chaos_bulk_desc_size(void)
{
	return TERN_BULK_DESC_SIZE;
}
