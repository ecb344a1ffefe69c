// SPDX-License-Identifier: MIT
/*
 * store_server - serve tests/python/store.tern in C, every method inplace.
 *
 *   store_server URI
 *
 * Prints the URI it listens on (port 0 picks one) and serves until SIGINT
 * or SIGTERM.  Its Python twin is the Store class of py_server.py:
 * test_interop.py runs one client against both and expects the same
 * replies, byte for byte, and the same errors.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <tern.h>
#include <uv.h>

#include "store.tern.h"

#define MAX_ENTRIES 64

struct entry {
	uint8_t name[STORE_KEY_NAME_LEN];
	uint32_t version;
	uint32_t sum;
	size_t len;
	uint8_t *data;
};

static struct entry entries[MAX_ENTRIES];
static size_t nentries;

/* FNV-1a over 32 bits: the checksum both servers report. */
static uint32_t sum32(const uint8_t *p, size_t n)
{
	uint32_t h = 2166136261u;

	for (size_t i = 0; i < n; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

static struct entry *find(const uint8_t *name)
{
	for (size_t i = 0; i < nentries; i++)
		if (memcmp(entries[i].name, name, STORE_KEY_NAME_LEN) == 0)
			return &entries[i];
	return NULL;
}

/* The entry a Key names, its name copied out into @name. */
static struct entry *find_key(const store_Key *in, uint8_t *name)
{
	store_Key_load_name(in, name);
	return find(name);
}

static void stat_of(const struct entry *e, store_Stat *out)
{
	store_Stat_store_name(out, e->name);
	store_Stat_set_size(out, e->len);
	store_Stat_set_version(out, e->version);
	store_Stat_set_sum(out, e->sum);
}

static int fail(tern_req *req, int err, const char *why)
{
	tern_req_set_error(req, why);
	return err;
}

/* put: store the value (flags bit 0: only if the key is new); reply its Stat. */
static int on_put(tern_req *req, const store_Entry *in, size_t in_len, store_Stat *out, void *user)
{
	uint8_t name[STORE_KEY_NAME_LEN];
	const void *data;
	struct entry *e;
	uint8_t *copy;
	size_t n;

	(void)user;
	data = store_Entry_get_data(in, in_len, &n);
	store_Entry_load_name(in, name);
	e = find(name);
	if (e && (store_Entry_get_flags(in) & 1))
		return fail(req, -EEXIST, "the key exists");
	if (!e && nentries == MAX_ENTRIES)
		return fail(req, -ENOSPC, "the store is full");
	copy = malloc(n ? n : 1);
	if (!copy)
		return -ENOMEM;
	memcpy(copy, data, n);
	if (!e) {
		e = &entries[nentries++];
		memcpy(e->name, name, sizeof(name));
		e->version = 0;
		e->data = NULL;
	}
	free(e->data);
	e->data = copy;
	e->len = n;
	e->version++;
	e->sum = sum32(copy, n);
	stat_of(e, out);
	return 0;
}

/* get: the value, its bytes written straight after the fixed part. */
static ssize_t on_get(tern_req *req, const store_Key *in, store_Value *out, size_t tail_cap,
		      void *user)
{
	uint8_t name[STORE_KEY_NAME_LEN];
	const struct entry *e = find_key(in, name);

	(void)user;
	if (!e)
		return fail(req, -ENOENT, "no such key");
	if (e->len > tail_cap)
		return fail(req, -EMSGSIZE, "the value does not fit the slot");
	store_Value_store_name(out, e->name);
	store_Value_set_version(out, e->version);
	store_Value_set_sum(out, e->sum);
	memcpy(store_Value_data_ptr(out), e->data, e->len);
	return (ssize_t)e->len;
}

static int on_stat(tern_req *req, const store_Key *in, store_Stat *out, void *user)
{
	uint8_t name[STORE_KEY_NAME_LEN];
	const struct entry *e = find_key(in, name);

	(void)user;
	if (!e)
		return fail(req, -ENOENT, "no such key");
	stat_of(e, out);
	return 0;
}

/* name: "<name>@v<version>" or "<name>@missing", as bytes. */
static ssize_t on_name(tern_req *req, const store_Key *in, void *out, size_t out_cap, void *user)
{
	char name[STORE_KEY_NAME_LEN];
	const struct entry *e = find_key(in, (uint8_t *)name);
	int n = (int)strnlen(name, sizeof(name));

	(void)req, (void)user;
	if (e)
		return snprintf(out, out_cap, "%.*s@v%u", n, name, (unsigned)e->version);
	return snprintf(out, out_cap, "%.*s@missing", n, name);
}

static struct store_handlers handlers = {
	.put = on_put,
	.get = on_get,
	.stat = on_stat,
	.name = on_name,
};

static void on_signal(uv_signal_t *h, int signum)
{
	(void)signum;
	tern_ctx_stop(h->data);
}

int main(int argc, char **argv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_ADAPTIVE};
	uv_signal_t sigint, sigterm;
	tern_listener *l;
	tern_ctx *ctx;
	int rc;

	if (argc != 2) {
		fprintf(stderr, "usage: store_server URI\n");
		return 2;
	}
	if ((rc = tern_ctx_create(&co, &ctx))) {
		fprintf(stderr, "store_server: %s\n", tern_strerror(rc));
		return 1;
	}
	rc = store_register(ctx, &handlers, NULL);
	if (rc == 0)
		rc = tern_listen(ctx, argv[1], NULL, NULL, &l);
	if (rc) {
		fprintf(stderr, "store_server: %s: %s: %s\n", argv[1], tern_strerror(rc),
			tern_ctx_last_error(ctx));
		tern_ctx_destroy(ctx);
		return 1;
	}
	printf("%s\n", tern_listener_uri(l));
	fflush(stdout);
	uv_signal_init(tern_ctx_loop(ctx), &sigint);
	uv_signal_init(tern_ctx_loop(ctx), &sigterm);
	sigint.data = sigterm.data = ctx;
	uv_signal_start(&sigint, on_signal, SIGINT);
	uv_signal_start(&sigterm, on_signal, SIGTERM);
	tern_ctx_run(ctx, TERN_RUN_DEFAULT);
	uv_close((uv_handle_t *)&sigint, NULL);
	uv_close((uv_handle_t *)&sigterm, NULL);
	tern_ctx_destroy(ctx);
	for (size_t i = 0; i < nentries; i++)
		free(entries[i].data);
	return 0;
}
