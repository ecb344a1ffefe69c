/* SPDX-License-Identifier: MIT */
/*
 * compat_side.h - the two versions of compat_v1.tern's Store in one test
 * program (test_gen_compat.c).  Each version's generated header goes in
 * its own translation unit (they define the same C names); this is what
 * they share: plain C on both sides.  v2's side is compat_v2_side.c, its
 * skeleton compat_v2_skel.c (under compat_v2_names.h's names), and the
 * incompatible client compat_bad_side.c.
 */
#ifndef TERN_TESTS_COMPAT_SIDE_H
#define TERN_TESTS_COMPAT_SIDE_H

#include <stdbool.h>
#include <stdint.h>
#include <tern.h>

/* An Item of either version; ttl and tag exist in v2 only. */
struct item {
	uint64_t key;
	int64_t value;
	uint32_t ttl;
	uint8_t tag[3];
};

/* A PutResp of either version; old exists in v2 only. */
struct put_resp {
	uint64_t version;
	int64_t old;
};

/* What a server, of either version, saw. */
struct seen {
	int puts, gets, laters, notes, sums, blobs, drops, logs;
	struct item last;  /* the last Item a handler read (ttl, tag: v2 only) */
	tern_req *held[8]; /* deferred (later) and one-way (note) requests kept */
	const void *held_in[8];
	int nheld;
	int batch_items;
	struct item batch[8]; /* what the batch handler read */
	int nkept;
	struct item kept[8]; /* what the held requests read when answered */
};

/* An asynchronous call's outcome. */
struct reply {
	int done;
	int status;
	struct put_resp resp;
};

/* A request a handler keeps (deferred, or one-way held), with its bytes. */
int seen_keep(struct seen *sv, tern_req *req, const void *in);

/* ---- v2 (compat_v2_side.c) ---------------------------------------------------- */

struct tern_service_ref v2_store_ref(void);
struct tern_service_ref v2_audit_ref(void);
/* Serve Store (without Store.drop's handler unless @with_drop) and Audit. */
int v2_serve(tern_ctx *ctx, struct seen *sv, bool with_drop);
/* Answer the held requests (later: reply with what the kept request
 * reads now; note: read it, then release it) and forget them. */
void v2_answer_held(struct seen *sv);

int v2_put_sync(tern_session *s, const struct item *it, struct put_resp *out);
int v2_put(tern_session *s, const struct item *it, struct reply *r);
int v2_get_sync(tern_session *s, uint64_t key, struct item *out);
int v2_later(tern_session *s, const struct item *it, struct reply *r);
int v2_note(tern_session *s, const struct item *it);
int v2_sum(tern_session *s, const struct item *it, struct reply *r);
int v2_drop_sync(tern_session *s, uint64_t key, struct put_resp *out);
int v2_touch(tern_session *s, uint64_t key);
int v2_peek(tern_session *s, uint64_t key, struct reply *r);
int v2_log_sync(tern_session *s, const char *text);

/* ---- compat_bad.tern (compat_bad_side.c) ---------------------------------------- */

struct tern_service_ref bad_store_ref(void);

#endif
