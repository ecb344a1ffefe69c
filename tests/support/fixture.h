/* SPDX-License-Identifier: MIT */
/*
 * fixture.h - a tern context with a listener and one connected session
 * pair on it, for tests.  Both ends live on one context and one loop, so a
 * test drives the whole exchange from one thread.
 */
#ifndef TERN_TESTS_FIXTURE_H
#define TERN_TESTS_FIXTURE_H

#include <stdbool.h>
#include <tern.h>

struct fx {
	tern_ctx *ctx;
	tern_listener *l;
	tern_session *cli; /* the connecting end */
	tern_session *srv; /* the accepted end */
	int accept_status;
	int accepts;
	char uri[160];
};

/* The base URI tests listen on: "rdma://<rdma address>:0", or NULL when the
 * host has no RDMA device (the test should exit 77). */
const char *fx_listen_uri(void);

/* Make a context (@progress), listen, connect with @opts on both ends. */
int fx_setup(struct fx *f, const struct tern_session_opts *opts, enum tern_progress progress);
void fx_teardown(struct fx *f);

/* A call's outcome, recorded by fx_done_cb (pass the struct as @user). */
struct fx_done {
	bool done;
	int status;
	size_t len;
	uint8_t buf[8192];
};
void fx_done_cb(tern_session *s, int status, const void *reply, size_t len, void *user);

/* Run the loop until *@flag is true or @timeout_ms passes; 0 or -ETIMEDOUT. */
int fx_run_until(struct fx *f, const bool *flag, int timeout_ms);
int fx_run_until_count(struct fx *f, const int *counter, int target, int timeout_ms);

#endif
