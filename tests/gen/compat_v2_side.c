// SPDX-License-Identifier: MIT
/*
 * compat_v2_side.c - compat_v2.tern's server handlers and client calls for
 * test_gen_compat.c, which runs them against compat_v1.tern's.  What the
 * handlers read of the appended fields (Item.ttl, Item.tag) is recorded:
 * from a v1 client they must read as zero.
 */
#include <errno.h>
#include <string.h>

#include "compat_v2_names.h"

#include "compat_side.h"
#include "compat_v2.tern.h"

#define TIMEOUT_MS 20000

static void read_item(const compat_v2_Item *in, struct item *out)
{
	out->key = compat_v2_Item_get_key(in);
	out->value = compat_v2_Item_get_value(in);
	out->ttl = compat_v2_Item_get_ttl(in);
	compat_v2_Item_load_tag(in, out->tag);
}

static void write_item(compat_v2_Item *m, const struct item *it)
{
	compat_v2_Item_set_key(m, it->key);
	compat_v2_Item_set_value(m, it->value);
	compat_v2_Item_set_ttl(m, it->ttl);
	compat_v2_Item_store_tag(m, it->tag);
}

static void write_resp(compat_v2_PutResp *m, uint64_t version, int64_t old)
{
	compat_v2_PutResp_set_version(m, version);
	compat_v2_PutResp_set_old(m, old);
}

/* ---- the server ------------------------------------------------------------------ */

int seen_keep(struct seen *sv, tern_req *req, const void *in)
{
	if (sv->nheld == 8)
		return -EBUSY;
	sv->held[sv->nheld] = req;
	sv->held_in[sv->nheld++] = in;
	return 0;
}

/* version: how many puts; old: -value, so that a v1 client has more to ignore */
static int on_put(tern_req *req, const compat_v2_Item *in, compat_v2_PutResp *out, void *user)
{
	struct seen *sv = user;

	(void)req;
	read_item(in, &sv->last);
	write_resp(out, (uint64_t)++sv->puts, -sv->last.value);
	return 0;
}

static int on_get(tern_req *req, const compat_v2_Key *in, compat_v2_Item *out, void *user)
{
	struct seen *sv = user;
	struct item it = {.ttl = 99, .tag = {'v', '2', '!'}};

	(void)req;
	it.key = compat_v2_Key_get_key(in);
	it.value = (int64_t)it.key * 10;
	write_item(out, &it);
	sv->gets++;
	return 0;
}

static int on_later(tern_req *req, const compat_v2_Item *in, void *user)
{
	struct seen *sv = user;

	sv->laters++;
	return seen_keep(sv, req, in);
}

static void on_note(tern_req *req, const compat_v2_Item *in, void *user)
{
	struct seen *sv = user;

	sv->notes++;
	if (seen_keep(sv, tern_req_hold(req), in))
		tern_req_release(req);
}

/* Each item through the generated req_view: an older, shorter Item is
 * zero-extended there.  version: key + value; old: ttl. */
static void on_sum(struct tern_batch_item *items, size_t n, void *user)
{
	struct seen *sv = user;

	for (size_t i = 0; i < n; i++) {
		const compat_v2_Item *in =
			compat_v2_Item_req_view(items[i].req, items[i].in, items[i].in_len);
		struct item it;

		if (!in || items[i].out_cap < COMPAT_V2_PUTRESP_SIZE) {
			items[i].status = -EBADMSG;
			continue;
		}
		read_item(in, &it);
		if (sv->batch_items < 8)
			sv->batch[sv->batch_items] = it;
		sv->batch_items++;
		write_resp(items[i].out, it.key + (uint64_t)it.value, it.ttl);
		items[i].status = COMPAT_V2_PUTRESP_SIZE;
	}
	sv->sums++;
}

static int on_blob(tern_req *req, const compat_v2_Blob *in, size_t in_len, compat_v2_Blob *out,
		   struct tern_iov *tail, void *user)
{
	struct seen *sv = user;

	(void)req;
	compat_v2_Blob_set_id(out, compat_v2_Blob_get_id(in) + 1);
	tail->base = compat_v2_Blob_get_data(in, in_len, &tail->len);
	sv->blobs++;
	return 0;
}

static int on_drop(tern_req *req, const compat_v2_Key *in, compat_v2_PutResp *out, void *user)
{
	struct seen *sv = user;

	(void)req;
	write_resp(out, compat_v2_Key_get_key(in), 0);
	sv->drops++;
	return 0;
}

static int on_log(tern_req *req, const void *in, size_t in_len, struct tern_iov *out, void *user)
{
	struct seen *sv = user;

	(void)req;
	out->base = in;
	out->len = in_len;
	sv->logs++;
	return 0;
}

static struct store_handlers store_h;
static struct audit_handlers audit_h = {.log = on_log};

int v2_serve(tern_ctx *ctx, struct seen *sv, bool with_drop)
{
	int rc;

	store_h = (struct store_handlers){
		.put = on_put,
		.get = on_get,
		.later = on_later,
		.note = on_note,
		.sum = on_sum,
		.blob = on_blob,
		.drop = with_drop ? on_drop : NULL,
	};
	if ((rc = store_register(ctx, &store_h, sv)))
		return rc;
	return audit_register(ctx, &audit_h, sv);
}

void v2_answer_held(struct seen *sv)
{
	for (int i = 0; i < sv->nheld; i++) {
		struct item it;

		/* the bytes the handler was given, read now, after other
		 * requests came and went */
		read_item(sv->held_in[i], &it);
		if (sv->nkept < 8)
			sv->kept[sv->nkept++] = it;
		if (tern_req_method(sv->held[i]) == STORE_NOTE_ID) {
			tern_req_release(sv->held[i]);
		} else {
			compat_v2_PutResp *out;

			if (store_later_reply_acquire(sv->held[i], &out) == 0) {
				write_resp(out, it.key, it.ttl);
				store_later_reply_commit(sv->held[i]);
			} else {
				tern_reply_error(sv->held[i], -EIO, NULL);
			}
		}
	}
	sv->nheld = 0;
}

/* ---- the client ------------------------------------------------------------------- */

struct tern_service_ref v2_store_ref(void)
{
	const struct tern_service_ref r = STORE_SERVICE_REF;
	return r;
}

struct tern_service_ref v2_audit_ref(void)
{
	const struct tern_service_ref r = AUDIT_SERVICE_REF;
	return r;
}

static void put_cb(tern_session *s, int status, const compat_v2_PutResp *resp, const char *errmsg,
		   void *user)
{
	struct reply *r = user;

	(void)s, (void)errmsg;
	r->done++;
	r->status = status;
	if (resp) {
		r->resp.version = compat_v2_PutResp_get_version(resp);
		r->resp.old = compat_v2_PutResp_get_old(resp);
	}
}

static void item_cb(tern_session *s, int status, const compat_v2_Item *resp, const char *errmsg,
		    void *user)
{
	struct reply *r = user;

	(void)s, (void)errmsg;
	r->done++;
	r->status = status;
	if (resp) {
		r->resp.version = compat_v2_Item_get_key(resp);
		r->resp.old = compat_v2_Item_get_ttl(resp);
	}
}

int v2_put_sync(tern_session *s, const struct item *it, struct put_resp *out)
{
	compat_v2_Item req;
	compat_v2_PutResp resp;
	int rc;

	write_item(&req, it);
	memset(&resp, 0xee, sizeof(resp)); /* what is not written must not pass for a reply */
	rc = store_put_sync(s, &req, &resp, TIMEOUT_MS);
	out->version = compat_v2_PutResp_get_version(&resp);
	out->old = compat_v2_PutResp_get_old(&resp);
	return rc;
}

int v2_put(tern_session *s, const struct item *it, struct reply *r)
{
	compat_v2_Item req;

	write_item(&req, it);
	return store_put(s, &req, put_cb, r, NULL);
}

int v2_get_sync(tern_session *s, uint64_t key, struct item *out)
{
	compat_v2_Key req;
	compat_v2_Item resp;
	int rc;

	compat_v2_Key_set_key(&req, key);
	memset(&resp, 0xee, sizeof(resp));
	rc = store_get_sync(s, &req, &resp, TIMEOUT_MS);
	read_item(&resp, out);
	return rc;
}

int v2_later(tern_session *s, const struct item *it, struct reply *r)
{
	compat_v2_Item req;

	write_item(&req, it);
	return store_later(s, &req, put_cb, r, NULL);
}

int v2_note(tern_session *s, const struct item *it)
{
	compat_v2_Item req;

	write_item(&req, it);
	return store_note_send_wait(s, &req, TIMEOUT_MS);
}

int v2_sum(tern_session *s, const struct item *it, struct reply *r)
{
	compat_v2_Item req;

	write_item(&req, it);
	return store_sum(s, &req, put_cb, r, NULL);
}

int v2_drop_sync(tern_session *s, uint64_t key, struct put_resp *out)
{
	compat_v2_Key req;
	compat_v2_PutResp resp;
	int rc;

	compat_v2_Key_set_key(&req, key);
	rc = store_drop_sync(s, &req, &resp, TIMEOUT_MS);
	if (rc == 0)
		out->version = compat_v2_PutResp_get_version(&resp);
	return rc;
}

int v2_touch(tern_session *s, uint64_t key)
{
	compat_v2_Key req;

	compat_v2_Key_set_key(&req, key);
	return store_touch_send(s, &req);
}

/* Built in the send slot: the missing method is refused at the commit. */
int v2_peek(tern_session *s, uint64_t key, struct reply *r)
{
	compat_v2_Key *req;
	tern_callslot *slot;
	int rc;

	if ((rc = store_peek_acquire(s, &req, &slot)))
		return rc;
	compat_v2_Key_set_key(req, key);
	return store_peek_commit(slot, item_cb, r, NULL);
}

int v2_log_sync(tern_session *s, const char *text)
{
	struct tern_sync_reply rep = {0};
	char buf[64];

	rep.buf = buf;
	rep.cap = sizeof(buf);
	return audit_log_sync(s, text, strlen(text), &rep, TIMEOUT_MS);
}
