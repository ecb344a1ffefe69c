// SPDX-License-Identifier: MIT
#include "fixture.h"

#include <errno.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "internal.h"
#include "mem.h"
#include "verbs_pair.h"

/* mem:// is not built into the library: add it to every context the test
 * makes, before it makes any. */
__attribute__((constructor)) static void fx_register_mem(void)
{
	if (fx_is("mem") && tern__transport_register(&tern_mem_transport))
		abort();
}

static int64_t now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

const char *fx_transport(void)
{
	const char *t = getenv("TERN_TEST_TRANSPORT");
	return t && *t ? t : "rdma";
}

bool fx_is(const char *name)
{
	return strcmp(fx_transport(), name) == 0;
}

static const char *rdma_addr(void)
{
	static char addr[64];
	static int state; /* 0: not looked, 1: found, -1: none */

	if (!state)
		state = vp_find_addr(addr, sizeof(addr)) ? -1 : 1;
	return state > 0 ? addr : NULL;
}

const char *fx_listen_uri(void)
{
	static char uri[96];
	static unsigned seq;

	if (fx_is("rdma")) {
		if (!rdma_addr())
			return NULL;
		snprintf(uri, sizeof(uri), "rdma://%s:0", rdma_addr());
	} else if (fx_is("shm")) {
		/* pid + sequence: unique across the suites meson runs in parallel */
		snprintf(uri, sizeof(uri), "shm://tern-test-%d-%u", (int)getpid(), ++seq);
	} else if (fx_is("tcp")) {
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:0");
	} else if (fx_is("mem")) {
		snprintf(uri, sizeof(uri), "mem://tern-test-%u", ++seq);
	} else {
		return NULL;
	}
	return uri;
}

bool fx_runnable(void)
{
	if (fx_listen_uri())
		return true;
	printf("SKIP: %s\n", fx_is("rdma")
				     ? "no RDMA device with an IPv4 address (set TERN_RDMA_ADDR)"
				     : "unknown TERN_TEST_TRANSPORT");
	return false;
}

const char *fx_dead_uri(void)
{
	static char uri[96];

	if (fx_is("rdma") && rdma_addr())
		snprintf(uri, sizeof(uri), "rdma://%s:1", rdma_addr());
	else if (fx_is("shm"))
		snprintf(uri, sizeof(uri), "shm://tern-test-nobody-%d", (int)getpid());
	else if (fx_is("mem"))
		snprintf(uri, sizeof(uri), "mem://tern-test-nobody");
	else
		snprintf(uri, sizeof(uri), "tcp://127.0.0.1:1");
	return uri;
}

static void on_accept(tern_listener *l, tern_session *s, int status)
{
	struct fx *f = tern_listener_data(l);
	f->accepts++;
	f->accept_status = status;
	if (s)
		f->srv = s;
}

void fx_done_cb(tern_session *s, int status, const void *reply, size_t len, void *user)
{
	struct fx_done *d = user;

	(void)s;
	d->done = true;
	d->status = status;
	d->len = len;
	memcpy(d->buf, reply, len < sizeof(d->buf) ? len : sizeof(d->buf));
}

int fx_run_until(struct fx *f, const bool *flag, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	while (!*flag) {
		if (now_ms() > end)
			return -ETIMEDOUT;
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
	return 0;
}

int fx_run_until_count(struct fx *f, const int *counter, int target, int timeout_ms)
{
	int64_t end = now_ms() + timeout_ms;

	while (*counter < target) {
		if (now_ms() > end)
			return -ETIMEDOUT;
		tern_ctx_run(f->ctx, TERN_RUN_NOWAIT);
	}
	return 0;
}

int fx_setup(struct fx *f, const struct tern_session_opts *opts, enum tern_progress progress)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = progress};
	const char *base = fx_listen_uri();
	int rc;

	memset(f, 0, sizeof(*f));
	if (!base)
		return -ENODEV;
	if ((rc = tern_ctx_create(&co, &f->ctx)))
		return rc;
	if ((rc = tern_listen(f->ctx, base, opts, on_accept, &f->l))) {
		fprintf(stderr, "listen: %s: %s\n", tern_strerror(rc), tern_ctx_last_error(f->ctx));
		return rc;
	}
	tern_listener_set_data(f->l, f);
	snprintf(f->uri, sizeof(f->uri), "%s", tern_listener_uri(f->l));
	if ((rc = tern_connect_sync(f->ctx, f->uri, opts, 10000, &f->cli))) {
		fprintf(stderr, "connect %s: %s: %s\n", f->uri, tern_strerror(rc),
			tern_ctx_last_error(f->ctx));
		return rc;
	}
	if (fx_run_until_count(f, &f->accepts, 1, 10000) || !f->srv) {
		fprintf(stderr, "no accepted session (status %d)\n", f->accept_status);
		return -ETIMEDOUT;
	}
	return 0;
}

void fx_teardown(struct fx *f)
{
	if (f->ctx)
		tern_ctx_destroy(f->ctx);
	memset(f, 0, sizeof(*f));
}

int fx_echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *user)
{
	(void)r, (void)user;
	out->base = in;
	out->len = n;
	return 0;
}

int fx_hold(tern_req *r, const void *in, size_t n, void *held)
{
	struct fx_held *h = held;

	(void)in, (void)n;
	if (h->n == FX_HELD_MAX)
		return -ENOSPC;
	h->req[h->n++] = r;
	return 0;
}

void fx_old_hello(uint8_t *hs, bool reply, uint32_t slot_size, uint32_t slot_count, int status)
{
	struct tern_hello h = {.version = TERN_WIRE_VERSION - 1,
			       .flags = reply ? TERN_HELLO_REPLY : 0,
			       .slot_size = slot_size,
			       .slot_count = slot_count,
			       .status = status};

	tern_hello_encode(hs, &h);
}

const char *fx_old_version_words(void)
{
	static char w[64];

	snprintf(w, sizeof(w), "wire version %u, ours is %u", TERN_WIRE_VERSION - 1,
		 TERN_WIRE_VERSION);
	return w;
}

bool fx_connected_done;
int fx_connected_status;

void fx_connected_reset(void)
{
	fx_connected_done = false;
	fx_connected_status = 0;
}

void fx_connected_cb(tern_session *s, int status)
{
	(void)s;
	fx_connected_done = true;
	fx_connected_status = status;
}
