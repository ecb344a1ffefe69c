// SPDX-License-Identifier: MIT
/*
 * internals.c - what the engine still holds, read from its own structures.
 *
 * tern.h has no query for a session's credits, slots or staging, so this
 * one file reads src/internal.h, as tests/engine do.  The providers' own
 * tables (shm's and tcp's live exports, verbs' memory windows) are out of
 * the engine's reach and so out of this one's: what the engine recorded
 * of its exports (each call's, each timed-out call's) is checked instead.
 */
#include <stdio.h>
#include <string.h>

#include "chaos.h"
#include "internal.h"
#include "mem.h"

int chaos_register_mem(void)
{
	return tern__transport_register(&tern_mem_transport);
}

bool chaos_session_drained(tern_session *s)
{
	return s->q_len == 0 && s->cr.tx == s->n && s->cr.replies_expected == 0;
}

bool chaos_session_home(tern_session *s, bool slots, char *why, size_t len)
{
	uint32_t calls = 0, busy = 0, exports = 0, orphans = 0, reqs = 0, owreqs = 0;

	if (s->state != TERN_S_READY) {
		snprintf(why, len, "the session is not ready (state %d)", s->state);
		return false;
	}
	for (uint32_t i = 0; i < s->n; i++) {
		const struct tern_callslot *c = &s->calls[i];

		calls += c->state != TERN_CALL_FREE;
		busy += c->send_busy; /* its send not reported done yet */
		exports += c->nx + (c->req_stage != NULL) + (c->rep_stage != NULL);
		orphans += s->orphans[i].used;
		reqs += s->reqs[i].state != TERN_REQ_FREE;
		owreqs += s->owreqs[i].state != TERN_REQ_FREE;
	}
	if (s->cr.tx != s->n || s->cr.replies_expected || s->cr.to_return ||
	    s->cr.peer_tx != s->n || calls || s->q_len || reqs || owreqs || s->bl_len ||
	    s->staged || exports || orphans ||
	    (slots && (s->nfree_calls != s->n || busy || s->nfree_reqs != s->n ||
		       s->nfree_owreqs != s->n))) {
		snprintf(why, len,
			 "credits %u/%u (peer %u/%u, owed %u), replies expected %u, calls %u, call "
			 "slots free %u/%u (%u sends not done), queued %u, request slots free "
			 "%u/%u (%u in use), "
			 "one-way %u/%u (%u in use), backlog %u, staging %llu bytes, call "
			 "exports and staging %u, timed-out calls' leftovers %u",
			 s->cr.tx, s->n, s->cr.peer_tx, s->n, s->cr.to_return,
			 s->cr.replies_expected, calls, s->nfree_calls, s->n, busy, s->q_len,
			 s->nfree_reqs, s->n, reqs, s->nfree_owreqs, s->n, owreqs, s->bl_len,
			 (unsigned long long)s->staged, exports, orphans);
		return false;
	}
	return true;
}

int chaos_ctx_sessions(tern_ctx *ctx)
{
	int n = 0;

	for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next)
		n++;
	return n;
}

void chaos_session_state(tern_session *s, char *out, size_t len)
{
	uint32_t reqs = 0, owreqs = 0, calls = 0;

	for (uint32_t i = 0; i < s->n; i++) {
		reqs += s->reqs[i].state != TERN_REQ_FREE;
		owreqs += s->owreqs[i].state != TERN_REQ_FREE;
		calls += s->calls[i].state != TERN_CALL_FREE;
	}
	snprintf(out, len,
		 "state %d, credits tx %u peer_tx %u owed %u, control tx %u peer %u owed %u "
		 "(busy %x), replies expected %u, calls %u, free call slots %u, queued %u, "
		 "requests %u (free reply slots %u), one-way %u, backlog %u",
		 s->state, s->cr.tx, s->cr.peer_tx, s->cr.to_return, s->cr.ctrl_tx,
		 s->cr.peer_ctrl_tx, s->cr.ctrl_to_return, s->ctrl_busy, s->cr.replies_expected,
		 calls, s->nfree_calls, s->q_len, reqs, s->nfree_reqs, owreqs, s->bl_len);
}
