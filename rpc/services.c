// SPDX-License-Identifier: MIT
/*
 * services.c - the registry of services a context serves, and the service
 * check a client runs right after connecting, so that a client built
 * against an incompatible schema is refused by name instead of misreading
 * bytes, while one built from another compatible version is accepted.
 *
 * Both sides describe each service by its layout (wire.h: its methods, and
 * the fields of the messages they take), written by tern-gen.  The server
 * compares the client's layout with its own method by method (docs/idl.md,
 * "Compatible changes"):
 *  - a method only one side has is no conflict: the server answers which
 *    of the client's methods it serves, and the client fails calls to the
 *    others locally, with TERN_ENOMETHOD, before anything is sent;
 *  - a method both have must have the same name and kind, and request and
 *    reply of the same form (bytes or a message) whose fields agree, one
 *    list being a prefix of the other: fields appended to a message read
 *    as zero at a peer that has them (tern_req_zero_extend() and the
 *    generated code) and are ignored by one that has not;
 *  - a service the server does not serve has all its methods missing, as
 *    long as the server serves another of the listed services.
 * A side without a layout (tern_service_register(), a hand-made
 * tern_service_ref) is compared by its schema hash alone.
 *
 * The check is untrusted input.  It is parsed in bounds, allocates nothing
 * its sender sizes, and costs at most the server's own layouts: method ids
 * ascend in every layout, so each client method meets each server method
 * at most once.
 */
#include <endian.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rpc.h"

static bool valid_name(const char *name, size_t n)
{
	if (!name || n == 0 || n > TERN_SVC_NAME_MAX)
		return false;
	for (size_t i = 0; i < n; i++) {
		char c = name[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '.'))
			return false;
	}
	return true;
}

static const struct tern_service_entry *find(tern_ctx *ctx, const char *name, size_t n)
{
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);

	for (uint32_t i = 0; i < rctx->nservices; i++)
		if (strlen(rctx->services[i].name) == n &&
		    memcmp(rctx->services[i].name, name, n) == 0)
			return &rctx->services[i];
	return NULL;
}

/* ---- reading: every read in bounds, a short input sets @bad ---------------------- */

struct rd {
	const uint8_t *p;
	size_t len, off;
	bool bad;
};

static bool rd_take(struct rd *r, size_t n)
{
	if (r->bad || r->len - r->off < n) {
		r->bad = true;
		return false;
	}
	r->off += n;
	return true;
}

static uint8_t rd_u8(struct rd *r)
{
	return rd_take(r, 1) ? r->p[r->off - 1] : 0;
}

static uint16_t rd_u16(struct rd *r)
{
	uint16_t v = 0;

	if (rd_take(r, 2))
		memcpy(&v, r->p + r->off - 2, 2);
	return le16toh(v);
}

static uint32_t rd_u32(struct rd *r)
{
	uint32_t v = 0;

	if (rd_take(r, 4))
		memcpy(&v, r->p + r->off - 4, 4);
	return le32toh(v);
}

static uint64_t rd_u64(struct rd *r)
{
	uint64_t v = 0;

	if (rd_take(r, 8))
		memcpy(&v, r->p + r->off - 8, 8);
	return le64toh(v);
}

/* A name (u8 length, bytes): false, and @bad set, if it is not a valid one. */
static bool rd_name(struct rd *r, const char **name, uint8_t *n)
{
	*n = rd_u8(r);
	*name = (const char *)r->p + r->off;
	if (!rd_take(r, *n) || !valid_name(*name, *n)) {
		r->bad = true;
		return false;
	}
	return true;
}

/* ---- layouts ------------------------------------------------------------------- */

/* A layout, validated: its bytes, its messages, where its methods start. */
struct layout {
	const uint8_t *p;
	size_t len;
	const struct tern_layout_msg *msgs;
	uint16_t nmsgs, nmethods;
	uint32_t methods_off;
};

struct lfield {
	const char *name;
	uint8_t name_len, type;
	uint32_t count;
};

struct lmethod {
	uint32_t id;
	const char *name;
	uint8_t name_len, kind;
	uint16_t req, resp;
};

static const char *const type_names[] = {
	"?", "u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64", "f32", "f64", "bytes",
};
static const uint8_t type_sizes[] = {0, 1, 2, 4, 8, 1, 2, 4, 8, 4, 8, 0};
static const char *const kind_names[] = {
	"?", "raw", "inplace", "deferred", "oneway", "batch", "oneway-batch",
};

static bool rd_field(struct rd *r, struct lfield *f)
{
	rd_name(r, &f->name, &f->name_len);
	f->type = rd_u8(r);
	f->count = rd_u32(r);
	return !r->bad;
}

static bool rd_method(struct rd *r, struct lmethod *m)
{
	m->id = rd_u32(r);
	rd_name(r, &m->name, &m->name_len);
	m->kind = rd_u8(r);
	m->req = rd_u16(r);
	m->resp = rd_u16(r);
	return !r->bad;
}

static bool is_oneway(uint8_t kind)
{
	return kind == TERN_LK_ONEWAY || kind == TERN_LK_ONEWAY_BATCH;
}

/*
 * Check a layout through and through, filling @msgs (TERN_LAYOUT_MSGS_MAX
 * entries).  Return: 0, or -EINVAL with @why.
 */
static int layout_parse(const void *bytes, size_t len, struct tern_layout_msg *msgs,
			struct layout *L, char *why, size_t why_len)
{
	struct rd r = {.p = bytes, .len = len};
	uint8_t format = rd_u8(&r);
	uint32_t prev = 0;
	const char *name;
	uint8_t nl;

	memset(L, 0, sizeof(*L));
	if (r.bad || format != TERN_LAYOUT_FORMAT) {
		snprintf(why, why_len, "layout format %u (this tern reads %u)", format,
			 TERN_LAYOUT_FORMAT);
		return -EINVAL;
	}
	L->p = bytes;
	L->len = len;
	L->msgs = msgs;
	L->nmsgs = rd_u16(&r);
	if (L->nmsgs > TERN_LAYOUT_MSGS_MAX) {
		snprintf(why, why_len, "layout has %u messages (at most %u)", L->nmsgs,
			 TERN_LAYOUT_MSGS_MAX);
		return -EINVAL;
	}
	for (uint32_t i = 0; i < L->nmsgs && !r.bad; i++) {
		uint64_t size = 0;

		rd_name(&r, &name, &nl);
		msgs[i].name_len = nl;
		msgs[i].nfields = rd_u16(&r);
		msgs[i].off = (uint32_t)r.off;
		for (uint32_t j = 0; j < msgs[i].nfields && !r.bad; j++) {
			struct lfield f;

			if (!rd_field(&r, &f))
				break;
			if (f.type == 0 || f.type > TERN_LT_BYTES ||
			    (f.type == TERN_LT_BYTES && (f.count || j + 1 != msgs[i].nfields)) ||
			    f.count > TERN_LAYOUT_MSG_MAX) {
				snprintf(why, why_len, "layout has a bad field %.*s", f.name_len,
					 f.name);
				return -EINVAL;
			}
			size += (uint64_t)type_sizes[f.type] * (f.count ? f.count : 1);
			if (size > TERN_LAYOUT_MSG_MAX) {
				snprintf(why, why_len, "layout has a message over %u bytes",
					 TERN_LAYOUT_MSG_MAX);
				return -EINVAL;
			}
		}
	}
	L->nmethods = rd_u16(&r);
	L->methods_off = (uint32_t)r.off;
	if (!r.bad && L->nmethods == 0) {
		snprintf(why, why_len, "layout has no methods");
		return -EINVAL;
	}
	for (uint32_t i = 0; i < L->nmethods && !r.bad; i++) {
		struct lmethod m;

		if (!rd_method(&r, &m))
			break;
		if (m.id == 0 || m.id >= TERN_METHOD_RESERVED_MIN || (i && m.id <= prev) ||
		    m.kind == 0 || m.kind > TERN_LK_ONEWAY_BATCH ||
		    (m.req != TERN_LAYOUT_BYTES && m.req >= L->nmsgs) ||
		    (is_oneway(m.kind) ? m.resp != TERN_LAYOUT_NONE
				       : m.resp != TERN_LAYOUT_BYTES && m.resp >= L->nmsgs)) {
			snprintf(why, why_len, "layout has a bad method %.*s", m.name_len, m.name);
			return -EINVAL;
		}
		prev = m.id;
	}
	if (r.bad || r.off != len) {
		snprintf(why, why_len, "layout %s", r.bad ? "truncated" : "has trailing bytes");
		return -EINVAL;
	}
	return 0;
}

/* The name of message @i of @L. */
static void msg_name(const struct layout *L, uint16_t i, const char **name, int *n)
{
	*n = L->msgs[i].name_len;
	*name = (const char *)L->p + L->msgs[i].off - 2 - *n;
}

static void type_desc(const struct layout *L, uint16_t t, char *buf, size_t cap)
{
	const char *name;
	int n;

	if (t == TERN_LAYOUT_BYTES || t == TERN_LAYOUT_NONE) {
		snprintf(buf, cap, "%s", t == TERN_LAYOUT_BYTES ? "bytes" : "no reply");
		return;
	}
	msg_name(L, t, &name, &n);
	snprintf(buf, cap, "%.*s", n, name);
}

static void field_desc(const struct lfield *f, char *buf, size_t cap)
{
	if (f->count)
		snprintf(buf, cap, "%.*s %s[%" PRIu32 "]", f->name_len, f->name,
			 type_names[f->type], f->count);
	else
		snprintf(buf, cap, "%.*s %s", f->name_len, f->name, type_names[f->type]);
}

/*
 * A method's request or reply at the client (@C, @ct) and here (@S, @st):
 * the same form, and fields that agree as far as both go.
 */
static int compare_type(const struct layout *C, uint16_t ct, const struct layout *S, uint16_t st,
			const char *svc, const struct lmethod *m, const char *what, char *why,
			size_t why_len)
{
	char a[TERN_SVC_NAME_MAX + 24], b[TERN_SVC_NAME_MAX + 24];
	struct rd rc, rs;
	uint32_t n, offset = 0;

	if (ct >= TERN_LAYOUT_NONE || st >= TERN_LAYOUT_NONE) {
		if (ct == st)
			return 0;
		type_desc(C, ct, a, sizeof(a));
		type_desc(S, st, b, sizeof(b));
		snprintf(why, why_len,
			 "service %s, method %.*s: %s %s at the client, %s at the server", svc,
			 m->name_len, m->name, what, a, b);
		return TERN_ESCHEMA;
	}
	rc = (struct rd){.p = C->p, .len = C->len, .off = C->msgs[ct].off};
	rs = (struct rd){.p = S->p, .len = S->len, .off = S->msgs[st].off};
	n = C->msgs[ct].nfields < S->msgs[st].nfields ? C->msgs[ct].nfields : S->msgs[st].nfields;
	for (uint32_t i = 0; i < n; i++) {
		struct lfield fc, fs;

		rd_field(&rc, &fc);
		rd_field(&rs, &fs);
		if (fc.name_len != fs.name_len || memcmp(fc.name, fs.name, fs.name_len) ||
		    fc.type != fs.type || fc.count != fs.count) {
			const char *mn;
			int mnl;

			msg_name(S, st, &mn, &mnl);
			field_desc(&fc, a, sizeof(a));
			field_desc(&fs, b, sizeof(b));
			snprintf(why, why_len,
				 "service %s, method %.*s: %s %.*s, field %" PRIu32
				 " at offset %" PRIu32 ": %s at the client, %s at the server",
				 svc, m->name_len, m->name, what, mnl, mn, i + 1, offset, a, b);
			return TERN_ESCHEMA;
		}
		offset += type_sizes[fs.type] * (fs.count ? fs.count : 1);
	}
	return 0;
}

static void set_bit(uint8_t *out, uint32_t bit, bool on)
{
	if (bit % 8 == 0)
		out[bit / 8] = 0;
	if (on)
		out[bit / 8] |= (uint8_t)(1u << (bit % 8));
}

static bool served(tern_ctx *ctx, uint32_t id)
{
	return tern__methods_find(&tern__rpc_ctx(ctx)->methods, id) != NULL;
}

/* The registered layout of @e. */
static void entry_layout(tern_ctx *ctx, const struct tern_service_entry *e, struct layout *L)
{
	const uint8_t *base = (const uint8_t *)tern__rpc_ctx(ctx)->services + e->data_off;

	L->msgs = (const struct tern_layout_msg *)(const void *)base;
	L->p = base + e->nmsgs * sizeof(struct tern_layout_msg);
	L->len = e->layout_len;
	L->nmsgs = e->nmsgs;
	L->nmethods = e->nmethods;
	L->methods_off = e->methods_off;
}

/*
 * One service, both sides with a layout: answer for each of the client's
 * methods, or refuse the first incompatible one.  Both method lists ascend
 * by id: one merge walk.
 */
static int compare_service(tern_ctx *ctx, const struct tern_service_entry *e,
			   const struct layout *C, uint8_t *out, uint32_t *bit, char *why,
			   size_t why_len)
{
	struct layout S;
	struct rd rc = {.p = C->p, .len = C->len, .off = C->methods_off};
	struct rd rs;
	struct lmethod cm, sm = {0};
	uint32_t js = 0;
	int rc2;

	entry_layout(ctx, e, &S);
	rs = (struct rd){.p = S.p, .len = S.len, .off = S.methods_off};
	if (S.nmethods)
		rd_method(&rs, &sm);
	for (uint32_t k = 0; k < C->nmethods; k++) {
		bool on = false;

		rd_method(&rc, &cm);
		while (js < S.nmethods && sm.id < cm.id)
			if (++js < S.nmethods)
				rd_method(&rs, &sm);
		if (js < S.nmethods && sm.id == cm.id) {
			if (cm.name_len != sm.name_len || memcmp(cm.name, sm.name, sm.name_len)) {
				snprintf(why, why_len,
					 "service %s: method id 0x%08" PRIx32
					 " is %.*s at the client, %.*s at the server",
					 e->name, cm.id, cm.name_len, cm.name, sm.name_len,
					 sm.name);
				return TERN_ESCHEMA;
			}
			if (cm.kind != sm.kind) {
				snprintf(why, why_len,
					 "service %s, method %.*s: %s at the client, %s at the "
					 "server",
					 e->name, cm.name_len, cm.name, kind_names[cm.kind],
					 kind_names[sm.kind]);
				return TERN_ESCHEMA;
			}
			if ((rc2 = compare_type(C, cm.req, &S, sm.req, e->name, &cm, "request", why,
						why_len)) ||
			    (rc2 = compare_type(C, cm.resp, &S, sm.resp, e->name, &cm, "reply", why,
						why_len)))
				return rc2;
			on = served(ctx, cm.id);
		}
		set_bit(out, (*bit)++, on);
	}
	return 0;
}

/* A client method nobody here can answer for: a service not served. */
static void answer_all(tern_ctx *ctx, const struct layout *C, bool check_table, uint8_t *out,
		       uint32_t *bit)
{
	struct rd rc = {.p = C->p, .len = C->len, .off = C->methods_off};
	struct lmethod cm;

	for (uint32_t k = 0; k < C->nmethods; k++) {
		rd_method(&rc, &cm);
		set_bit(out, (*bit)++, check_table && served(ctx, cm.id));
	}
}

int tern__services_verify(tern_ctx *ctx, const void *in, size_t len, uint8_t *out, size_t out_cap,
			  uint32_t *out_len, char *why, size_t why_len)
{
	/* 2 KiB: the client's messages, one service at a time */
	struct tern_layout_msg cmsgs[TERN_LAYOUT_MSGS_MAX];
	struct rd r = {.p = in, .len = len};
	const char *first = NULL;
	uint32_t bit = 0, nfound = 0;
	uint8_t n = rd_u8(&r), firstl = 0;
	char lwhy[96];
	int rc;

	*out_len = 0;
	if (r.bad || n == 0 || n > TERN_SVC_MAX) {
		snprintf(why, why_len, "service check lists %u services", n);
		return TERN_EPEER;
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct tern_service_entry *e;
		struct layout C = {0};
		const char *name;
		uint64_t hash;
		uint32_t llen;
		uint8_t nl;

		if (!rd_name(&r, &name, &nl)) {
			snprintf(why, why_len, "service check has a bad name");
			return TERN_EPEER;
		}
		hash = rd_u64(&r);
		llen = rd_u32(&r);
		if (r.bad || llen > r.len - r.off) {
			snprintf(why, why_len, "service check truncated");
			return TERN_EPEER;
		}
		if (llen && layout_parse(r.p + r.off, llen, cmsgs, &C, lwhy, sizeof(lwhy))) {
			snprintf(why, why_len, "service check: service %.*s: %s", nl, name, lwhy);
			return TERN_EPEER;
		}
		r.off += llen;
		/* Every answer bit has its place: the answer is no longer than the
		 * check (each method record takes more than a byte). */
		if ((bit + C.nmethods + 7) / 8 > out_cap) {
			snprintf(why, why_len, "service check lists too many methods");
			return TERN_EPEER;
		}
		if (!first) {
			first = name;
			firstl = nl;
		}
		e = find(ctx, name, nl);
		if (!e) {
			if (!llen) {
				snprintf(why, why_len, "service %.*s is not served here", nl, name);
				return TERN_ENOSERVICE;
			}
			answer_all(ctx, &C, false, out, &bit);
			continue;
		}
		nfound++;
		if (!llen || !e->layout_len) {
			if (e->schema_hash != hash) {
				snprintf(why, why_len,
					 "service %.*s: schema %016" PRIx64
					 " at the client, %016" PRIx64 " at the server",
					 nl, name, hash, e->schema_hash);
				return TERN_ESCHEMA;
			}
			answer_all(ctx, &C, true, out, &bit);
			continue;
		}
		if ((rc = compare_service(ctx, e, &C, out, &bit, why, why_len)))
			return rc;
	}
	if (r.off != len) {
		snprintf(why, why_len, "service check has trailing bytes");
		return TERN_EPEER;
	}
	if (nfound == 0) {
		if (n == 1)
			snprintf(why, why_len, "service %.*s is not served here", firstl, first);
		else
			snprintf(why, why_len,
				 "none of the %u services listed is served here (the first: %.*s)",
				 n, firstl, first);
		return TERN_ENOSERVICE;
	}
	*out_len = (bit + 7) / 8;
	return 0;
}

/* ---- the registry ------------------------------------------------------------- */

#define ALIGN8(n) (((n) + 7) & ~(size_t)7)

static int service_add(tern_ctx *ctx, const char *name, uint64_t hash, const void *layout,
		       size_t llen)
{
	struct tern_layout_msg msgs[TERN_LAYOUT_MSGS_MAX];
	struct tern_rpc_ctx *rctx = tern__rpc_ctx(ctx);
	struct tern_service_entry *old = rctx->services, *blk, *e;
	struct layout L = {0};
	size_t n = name ? strlen(name) : 0, head_old, head_new, data_old = 0, add, total;
	char why[96];

	if (!valid_name(name, n))
		return -EINVAL;
	if (find(ctx, name, n))
		return -EEXIST;
	if ((layout || llen) && (!layout || !llen || llen > UINT32_MAX ||
				 layout_parse(layout, llen, msgs, &L, why, sizeof(why)))) {
		tern__set_error(ctx, "service %s: %s", name,
				layout && llen ? why : "a layout and its length go together");
		return -EINVAL;
	}
	/* One block: entries, then each entry's messages and layout. */
	head_old = rctx->nservices * sizeof(*e);
	head_new = head_old + sizeof(*e);
	for (uint32_t i = 0; i < rctx->nservices; i++)
		data_old +=
			old[i].nmsgs * sizeof(struct tern_layout_msg) + ALIGN8(old[i].layout_len);
	add = L.nmsgs * sizeof(struct tern_layout_msg) + ALIGN8(llen);
	total = head_new + data_old + add;
	if (total > UINT32_MAX)
		return -ENOMEM;
	blk = malloc(total);
	if (!blk)
		return -ENOMEM;
	if (head_old)
		memcpy(blk, old, head_old);
	if (data_old)
		memcpy((uint8_t *)blk + head_new, (const uint8_t *)old + head_old, data_old);
	for (uint32_t i = 0; i < rctx->nservices; i++)
		blk[i].data_off += (uint32_t)sizeof(*e);
	e = &blk[rctx->nservices];
	memset(e, 0, sizeof(*e));
	memcpy(e->name, name, n + 1);
	e->schema_hash = hash;
	e->data_off = (uint32_t)(head_new + data_old);
	e->nmsgs = L.nmsgs;
	e->nmethods = L.nmethods;
	e->methods_off = L.methods_off;
	e->layout_len = (uint32_t)llen;
	if (L.nmsgs)
		memcpy((uint8_t *)blk + e->data_off, msgs, L.nmsgs * sizeof(msgs[0]));
	if (llen)
		memcpy((uint8_t *)blk + e->data_off + L.nmsgs * sizeof(msgs[0]), layout, llen);
	free(old);
	rctx->services = blk;
	rctx->nservices++;
	return 0;
}

int tern_service_register(tern_ctx *ctx, const char *name, uint64_t schema_hash)
{
	if (!ctx)
		return -EINVAL;
	return service_add(ctx, name, schema_hash, NULL, 0);
}

int tern_service_register_ref(tern_ctx *ctx, const struct tern_service_ref *ref)
{
	if (!ctx || !ref)
		return -EINVAL;
	return service_add(ctx, ref->name, ref->schema_hash, ref->layout, ref->layout_len);
}

/* ---- the client's side ------------------------------------------------------------ */

int tern__services_encode(const struct tern_service_ref *refs, uint32_t n, uint8_t *out, size_t cap)
{
	struct tern_layout_msg msgs[TERN_LAYOUT_MSGS_MAX];
	size_t off = 1;
	char why[96];

	if (n == 0 || n > TERN_SVC_MAX || !refs || cap < 1)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		size_t len = refs[i].name ? strlen(refs[i].name) : 0, ll = refs[i].layout_len;
		uint64_t h = htole64(refs[i].schema_hash);
		uint32_t l32 = htole32((uint32_t)ll);
		struct layout L;

		if (!valid_name(refs[i].name, len) || (!refs[i].layout != !ll) || ll > UINT32_MAX ||
		    (ll && layout_parse(refs[i].layout, ll, msgs, &L, why, sizeof(why))))
			return -EINVAL;
		if (off + 1 + len + 12 + ll > cap)
			return -EMSGSIZE;
		out[off] = (uint8_t)len;
		memcpy(out + off + 1, refs[i].name, len);
		memcpy(out + off + 1 + len, &h, 8);
		memcpy(out + off + 9 + len, &l32, 4);
		if (ll)
			memcpy(out + off + 13 + len, refs[i].layout, ll);
		off += 13 + len + ll;
	}
	out[0] = (uint8_t)n;
	return (int)off;
}

/*
 * Call @fn for each method of our own check, in order.  The check was
 * made (and its layouts checked) by tern__services_encode().
 */
static void each_checked_method(const tern_session *s,
				void (*fn)(void *arg, uint32_t i, const char *svc, uint8_t svcl,
					   const struct lmethod *m),
				void *arg)
{
	struct tern_layout_msg msgs[TERN_LAYOUT_MSGS_MAX];
	const struct tern_rpc_session *rs = tern__rpc_const(s);
	struct rd r = {.p = rs->svc_check, .len = rs->svc_check_len};
	uint32_t k = 0;
	uint8_t n = rd_u8(&r);
	char why[96];

	for (uint32_t i = 0; i < n && !r.bad; i++) {
		struct layout L;
		struct rd rm;
		const char *svc;
		uint8_t svcl;
		uint32_t llen;

		rd_name(&r, &svc, &svcl);
		rd_u64(&r);
		llen = rd_u32(&r);
		if (r.bad || !llen || llen > r.len - r.off ||
		    layout_parse(r.p + r.off, llen, msgs, &L, why, sizeof(why))) {
			r.off += llen <= r.len - r.off ? llen : 0;
			continue;
		}
		r.off += llen;
		rm = (struct rd){.p = L.p, .len = L.len, .off = L.methods_off};
		for (uint32_t j = 0; j < L.nmethods; j++) {
			struct lmethod m;

			rd_method(&rm, &m);
			fn(arg, k++, svc, svcl, &m);
		}
	}
}

struct accept_state {
	const uint8_t *answer;
	uint32_t total, nmissing;
	struct tern_missing_method *missing; /* NULL: count only */
};

static void accept_one(void *arg, uint32_t i, const char *svc, uint8_t svcl,
		       const struct lmethod *m)
{
	struct accept_state *a = arg;

	a->total = i + 1;
	if (!a->answer || a->answer[i / 8] & (1u << (i % 8)))
		return;
	if (a->missing) {
		struct tern_missing_method *x = &a->missing[a->nmissing];

		x->id = m->id;
		snprintf(x->name, sizeof(x->name), "%.*s.%.*s", svcl, svc, m->name_len, m->name);
	}
	a->nmissing++;
}

static int missing_cmp(const void *a, const void *b)
{
	uint32_t x = ((const struct tern_missing_method *)a)->id;
	uint32_t y = ((const struct tern_missing_method *)b)->id;

	return x < y ? -1 : x > y;
}

int tern__services_accept(tern_session *s, const void *answer, size_t len, char *why,
			  size_t why_len)
{
	struct accept_state a = {0};
	const uint8_t *p = answer;
	size_t want;

	each_checked_method(s, accept_one, &a); /* count */
	want = (a.total + 7) / 8;
	if (len != want || (a.total % 8 && p[want - 1] >> (a.total % 8))) {
		snprintf(why, why_len,
			 "the server's answer to the service check is %zu bytes, not the %zu bits "
			 "of a check of %" PRIu32 " methods",
			 len, want, a.total);
		return TERN_EPEER;
	}
	if (a.total == 0)
		return 0;
	a.answer = p;
	each_checked_method(s, accept_one, &a); /* count the missing */
	if (a.nmissing == 0)
		return 0;
	a.missing = calloc(a.nmissing, sizeof(*a.missing));
	if (!a.missing) {
		snprintf(why, why_len, "no memory for the service check's answer");
		return -ENOMEM;
	}
	a.nmissing = 0;
	each_checked_method(s, accept_one, &a);
	qsort(a.missing, a.nmissing, sizeof(*a.missing), missing_cmp);
	free(tern__rpc(s)->missing);
	tern__rpc(s)->missing = a.missing;
	tern__rpc(s)->nmissing = a.nmissing;
	return 0;
}

int tern__services_missing(tern_session *s, uint32_t method)
{
	const struct tern_missing_method *missing = tern__rpc(s)->missing;
	uint32_t lo = 0, hi = tern__rpc(s)->nmissing;

	while (lo < hi) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (missing[mid].id < method) {
			lo = mid + 1;
		} else if (missing[mid].id > method) {
			hi = mid;
		} else {
			tern__set_error(
				s->ctx,
				"%s: %s is not served there (the server said so at connect)",
				s->peer, missing[mid].name);
			return TERN_ENOMETHOD;
		}
	}
	return 0;
}

/* ---- reading an older peer's shorter message ------------------------------------------ */

const void *tern_req_zero_extend(tern_req *req, size_t len)
{
	if (!req || !req->in)
		return NULL;
	if (req->in_len >= len)
		return req->in;
	if (len > TERN_MAX_SLOT_SIZE)
		return NULL;
	if (req->zx_cap < len) {
		/* Our message type's size, never the peer's: the copy is kept
		 * for this request index's next one. */
		void *p = malloc(len);

		if (!p)
			return NULL;
		free(req->zx);
		req->zx = p;
		req->zx_cap = len;
	}
	memcpy(req->zx, req->in, req->in_len);
	memset((uint8_t *)req->zx + req->in_len, 0, len - req->in_len);
	return req->zx;
}
