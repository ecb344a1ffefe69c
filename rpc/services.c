// SPDX-License-Identifier: MIT
/*
 * services.c - the registry of services a context serves, and the service
 * check a client runs right after connecting, so that a client built
 * against a different schema is refused by name instead of misreading bytes.
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
	if (n == 0 || n > TERN_SVC_NAME_MAX)
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

int tern_service_register(tern_ctx *ctx, const char *name, uint64_t schema_hash)
{
	struct tern_rpc_ctx *rctx;
	struct tern_service_entry *e;
	size_t n;

	if (!ctx || !name)
		return -EINVAL;
	rctx = tern__rpc_ctx(ctx);
	n = strlen(name);
	if (!valid_name(name, n))
		return -EINVAL;
	if (find(ctx, name, n))
		return -EEXIST;
	e = realloc(rctx->services, (rctx->nservices + 1) * sizeof(*e));
	if (!e)
		return -ENOMEM;
	rctx->services = e;
	e = &rctx->services[rctx->nservices++];
	memcpy(e->name, name, n + 1);
	e->schema_hash = schema_hash;
	return 0;
}

int tern__services_encode(const struct tern_service_ref *refs, uint32_t n, uint8_t *out, size_t cap)
{
	size_t off = 4;
	uint32_t le;

	if (n == 0 || n > TERN_SVC_MAX || !refs)
		return -EINVAL;
	for (uint32_t i = 0; i < n; i++) {
		size_t len = refs[i].name ? strlen(refs[i].name) : 0;
		uint64_t h = htole64(refs[i].schema_hash);

		if (!valid_name(refs[i].name, len))
			return -EINVAL;
		if (off + 9 + len > cap)
			return -EMSGSIZE;
		memcpy(out + off, &h, 8);
		out[off + 8] = (uint8_t)len;
		memcpy(out + off + 9, refs[i].name, len);
		off += 9 + len;
	}
	le = htole32(n);
	memcpy(out, &le, 4);
	return (int)off;
}

int tern__services_verify(tern_ctx *ctx, const void *in, size_t len, char *why, size_t why_len)
{
	const uint8_t *p = in;
	size_t off = 4;
	uint32_t n;

	if (len < 4) {
		snprintf(why, why_len, "service check too short");
		return TERN_EPEER;
	}
	memcpy(&n, p, 4);
	n = le32toh(n);
	if (n == 0 || n > TERN_SVC_MAX) {
		snprintf(why, why_len, "service check lists %" PRIu32 " services", n);
		return TERN_EPEER;
	}
	for (uint32_t i = 0; i < n; i++) {
		const struct tern_service_entry *e;
		const char *name;
		uint64_t h;
		uint8_t nl;

		if (off + 9 > len) {
			snprintf(why, why_len, "service check truncated");
			return TERN_EPEER;
		}
		memcpy(&h, p + off, 8);
		h = le64toh(h);
		nl = p[off + 8];
		name = (const char *)p + off + 9;
		if (off + 9 + nl > len || !valid_name(name, nl)) {
			snprintf(why, why_len, "service check has a bad name");
			return TERN_EPEER;
		}
		off += 9 + nl;
		e = find(ctx, name, nl);
		if (!e) {
			snprintf(why, why_len, "service %.*s is not served here", (int)nl, name);
			return TERN_ENOSERVICE;
		}
		if (e->schema_hash != h) {
			snprintf(why, why_len,
				 "service %.*s: schema %016" PRIx64 " at the client, %016" PRIx64
				 " at the server",
				 (int)nl, name, h, e->schema_hash);
			return TERN_ESCHEMA;
		}
	}
	if (off != len) {
		snprintf(why, why_len, "service check has trailing bytes");
		return TERN_EPEER;
	}
	return 0;
}
