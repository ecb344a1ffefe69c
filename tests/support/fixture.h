/* SPDX-License-Identifier: MIT */
/*
 * fixture.h - a tern context with a listener and one connected session
 * pair on it, for tests.  Both ends live on one context and one loop, so a
 * test drives the whole exchange from one thread.
 *
 * The provider comes from TERN_TEST_TRANSPORT: rdma (the default), shm,
 * tcp or mem (the in-process provider, transport/mem/, which the fixture
 * registers), so one test source runs against all of them
 * (tests/meson.build registers each engine test once per provider).
 */
#ifndef TERN_TESTS_FIXTURE_H
#define TERN_TESTS_FIXTURE_H

#include <stdbool.h>
#include <stdint.h>
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

/* "rdma", "shm", "tcp" or "mem": TERN_TEST_TRANSPORT, rdma when unset. */
const char *fx_transport(void);

/* Is the provider under test @name? */
bool fx_is(const char *name);

/*
 * A URI to listen on: "rdma://<rdma address>:0", "tcp://127.0.0.1:0", or a
 * shm (mem) name no other listener uses (each call gives a new one, unique
 * across processes).  NULL when the provider cannot run here (no RDMA device, an
 * unknown TERN_TEST_TRANSPORT): the test should exit 77.  The string is
 * valid until the next call.
 *
 * In the two-device lane (tests registered with TERN_TEST_LINK=1, run in
 * tools/rxe-vm --two-devices) the rdma address is the server's end of a
 * veth pair (TERN_TEST_SERVER_ADDR, on rxd), and a client connecting to it
 * leaves through the other end (rxc), as the guest's routing has it; NULL
 * outside that VM, so the lane cannot pass on one device by accident.
 */
const char *fx_listen_uri(void);

/*
 * Can the provider under test run here?  If not, says why on stdout: the
 * test's main() then returns 77 (skip).
 */
bool fx_runnable(void);

/* A URI nobody listens on, for connection-refused tests. */
const char *fx_dead_uri(void);

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

/*
 * A raw handler that answers with the request's own bytes (borrowed: the
 * runtime copies them once into the reply, or not at all for a large
 * request in staging).  Register it with any @user.
 */
int fx_echo(tern_req *r, const void *in, size_t n, struct tern_iov *out, void *user);

/*
 * fx_hold - a deferred handler that keeps every request for the test to
 * answer later: register it with a struct fx_held as @user.  Requests land
 * in held->req[0..n-1] in arrival order; past FX_HELD_MAX the call fails
 * with -ENOSPC (an error reply the test sees, never a request dropped).
 */
#define FX_HELD_MAX 4096
struct fx_held {
	int n;
	tern_req *req[FX_HELD_MAX];
};
int fx_hold(tern_req *r, const void *in, size_t n, void *held);

/* Run the loop until *@flag is true or @timeout_ms passes; 0 or -ETIMEDOUT. */
int fx_run_until(struct fx *f, const bool *flag, int timeout_ms);
int fx_run_until_count(struct fx *f, const int *counter, int target, int timeout_ms);

/* A tern_connect() callback that records its outcome here. */
extern bool fx_connected_done;
extern int fx_connected_status;
void fx_connected_reset(void);
void fx_connected_cb(tern_session *s, int status);

/*
 * A peer of the previous wire version (the hostile peers' hand-built
 * hellos): its 40-byte hello, as it was, into @hs; and the words our
 * errors name it with ("wire version 2, ours is 3").
 */
void fx_old_hello(uint8_t *hs, bool reply, uint32_t slot_size, uint32_t slot_count, int status);
const char *fx_old_version_words(void);

#endif
