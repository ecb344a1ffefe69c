// SPDX-License-Identifier: MIT
/*
 * group.c - context groups: N member contexts on N threads behind one
 * listening URI (tern.h, "Context groups").
 *
 * The acceptor, a context of the group's own on a thread of its own, owns
 * the listening sockets (the engine's HANDOFF listeners).  The provider
 * hands it each accepted connection unread (struct tern_handoff: a socket,
 * or on rdma:// a connection request not yet answered); the acceptor
 * picks a member and gives it the connection through tern_ctx_post(),
 * where the member's ADOPT listener for the same URI runs the handshake
 * and the session.  The connection crosses threads before the handshake
 * because everything a session is made of (its slots, its shm segment,
 * its QP, its libuv handles) must be made on the loop that will run it: a
 * libuv handle cannot move between loops, so a handshake run on the
 * acceptor would leave the session on the wrong thread.
 *
 * g->lock guards the members' states and the round-robin cursor; it is
 * taken to hand a socket over (once per connection) and when a member
 * dies, never on a call's path.  A member is marked dead under it before
 * its context is destroyed, so the acceptor never posts to a context that
 * is going; connections already queued to it are refused by its post
 * callback (tern_ctx_destroy() runs queued posts with -ECANCELED).
 */
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "rpc.h"

#define GROUP_MAX_LISTENS 8

enum member_state {
	M_IDLE = 0, /* made, not run yet */
	M_RUNNING,  /* a thread runs it */
	M_DEAD,	    /* its context is destroyed (or being destroyed) */
};

struct member {
	tern_ctx *ctx;
	enum member_state state;
	pthread_t thread; /* own_threads */
	bool thread_made;
};

/* One tern_group_listen(): the acceptor's listener and each member's. */
struct group_listen {
	tern_group *g;
	tern_listener *acceptor;
	tern_listener *member[TERN_GROUP_MAX];
};

struct tern_group {
	unsigned n;
	bool own_threads;
	void (*on_stop)(tern_ctx *ctx, unsigned i, void *arg);
	void *arg;
	bool started;
	bool stopping; /* under lock */
	tern_ctx *acceptor;
	pthread_t acceptor_thread;
	pthread_mutex_t lock;
	pthread_cond_t member_done; /* a member finished running */
	unsigned rr;		    /* under lock: where the next pick starts */
	struct member m[TERN_GROUP_MAX];
	struct group_listen listens[GROUP_MAX_LISTENS];
	unsigned nlistens;
};

/* A connection on its way to a member. */
struct handed {
	tern_listener *l; /* the member's ADOPT listener */
	struct tern_handoff conn;
};

/* On the member's thread: run the connection, or refuse it (the member is going). */
static void adopt_cb(tern_ctx *ctx, void *arg, int status)
{
	struct handed *h = arg;
	int rc;

	(void)ctx;
	if (status) {
		tern__handoff_drop(h->l, h->conn);
	} else if ((rc = tern__listener_adopt(h->l, h->conn)) && h->l->cb) {
		tern__set_error(ctx, "a connection handed to this member: %s", tern_strerror(rc));
		TERN_CALLBACK(ctx, h->l->cb(h->l, NULL, rc));
	}
	free(h);
}

/*
 * On the acceptor's thread: hand @conn to the next live member,
 * round-robin.  With no member alive (or no memory), it is refused: the
 * client's connect fails as if nobody listened.
 *
 * A provider's own object (rdma://'s connection request) is first moved
 * to the member (tern__handoff_move(): its rdma_cm events go to the
 * member's event channel from then on), under the lock, so the member is
 * alive throughout; if the post then fails, it is moved back here, and
 * refused on this thread, whose events it reaches again.
 */
static void group_handoff(tern_listener *l, struct tern_handoff conn)
{
	struct group_listen *gl = l->handoff_arg;
	tern_group *g = gl->g;
	struct handed *h = malloc(sizeof(*h));

	if (!h) {
		tern__handoff_drop(l, conn);
		return;
	}
	h->conn = conn;
	pthread_mutex_lock(&g->lock);
	for (unsigned k = 0; k < g->n; k++) {
		unsigned i = (g->rr + k) % g->n;

		if (g->m[i].state == M_DEAD)
			continue;
		h->l = gl->member[i];
		if (tern__handoff_move(h->l, conn))
			continue;
		/* Never -ESHUTDOWN: a member is marked dead, under this
		 * lock, before its context's queue closes. */
		if (tern_ctx_post(g->m[i].ctx, adopt_cb, h) == 0) {
			g->rr = i + 1;
			h = NULL;
			break;
		}
		if (tern__handoff_move(l, conn))
			break; /* stuck on the member: refused below, as it can be */
	}
	pthread_mutex_unlock(&g->lock);
	if (h) {
		free(h);
		tern__handoff_drop(l, conn);
	}
}

/*
 * A member's (and the acceptor's) loop waits for hand-offs, which come
 * through the context's post handle: ref it, so that tern_ctx_run()
 * (TERN_RUN_DEFAULT) sleeps with no session or socket of its own instead
 * of returning.  Before the context's thread runs it.
 */
static void keep_alive(tern_ctx *ctx)
{
	uv_ref((uv_handle_t *)&ctx->post_async);
}

int tern_group_create(const struct tern_group_opts *opts, tern_group **out)
{
	struct tern_group_opts o = {0};
	struct tern_ctx_opts acc = {.size = sizeof(acc), .progress = TERN_PROGRESS_EVENT};
	tern_group *g;
	int rc;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (!opts)
		return -EINVAL;
	{
		size_t n = opts->size ? opts->size : sizeof(o);
		if (n > sizeof(o))
			return -EINVAL;
		memcpy(&o, opts, n);
	}
	if (o.members == 0 || o.members > TERN_GROUP_MAX || o.ctx.loop)
		return -EINVAL;
	g = calloc(1, sizeof(*g));
	if (!g)
		return -ENOMEM;
	g->n = o.members;
	g->own_threads = o.own_threads != 0;
	pthread_mutex_init(&g->lock, NULL);
	pthread_cond_init(&g->member_done, NULL);
	/* The acceptor sleeps until a connection comes: event progress. */
	rc = tern_ctx_create(&acc, &g->acceptor);
	for (unsigned i = 0; !rc && i < g->n; i++) {
		struct tern_rpc_ctx *r;

		rc = tern_ctx_create(&o.ctx, &g->m[i].ctx);
		if (rc)
			break;
		r = tern__rpc_ctx(g->m[i].ctx);
		r->group = g;
		r->group_index = i;
		keep_alive(g->m[i].ctx);
	}
	if (rc) {
		tern_group_destroy(g);
		return rc;
	}
	keep_alive(g->acceptor);
	/* Not on create's own failure: the user set nothing up yet. */
	g->on_stop = o.on_stop;
	g->arg = o.arg;
	*out = g;
	return 0;
}

tern_ctx *tern_group_member(tern_group *g, unsigned i)
{
	tern_ctx *ctx;

	if (!g || i >= g->n)
		return NULL;
	pthread_mutex_lock(&g->lock);
	ctx = g->m[i].state == M_DEAD ? NULL : g->m[i].ctx;
	pthread_mutex_unlock(&g->lock);
	return ctx;
}

unsigned tern_group_size(tern_group *g)
{
	return g ? g->n : 0;
}

int tern_group_index(tern_ctx *ctx)
{
	if (!ctx || !tern__rpc_ctx(ctx)->group)
		return -ENOENT;
	return (int)tern__rpc_ctx(ctx)->group_index;
}

int tern_group_setup(tern_group *g, int (*fn)(tern_ctx *ctx, unsigned i, void *arg), void *arg)
{
	int rc = 0;

	if (!g || !fn)
		return -EINVAL;
	if (g->started)
		return -EBUSY;
	for (unsigned i = 0; !rc && i < g->n; i++)
		rc = fn(g->m[i].ctx, i, arg);
	return rc;
}

/* The four tern_group_register_*(): one method, registered on each member. */
static int reg_one(tern_ctx *ctx, unsigned i, void *arg)
{
	(void)i;
	return tern__method_register(ctx, arg);
}

static int reg_all(tern_group *g, struct tern_method m)
{
	return tern_group_setup(g, reg_one, &m);
}

int tern_group_register_raw(tern_group *g, uint32_t method_id, tern_raw_handler fn, void *user)
{
	return reg_all(g,
		       (struct tern_method){
			       .id = method_id, .kind = TERN_KIND_RAW, .fn.raw = fn, .user = user});
}

int tern_group_register_inplace(tern_group *g, uint32_t method_id, tern_inplace_handler fn,
				void *user)
{
	return reg_all(g, (struct tern_method){.id = method_id,
					       .kind = TERN_KIND_INPLACE,
					       .fn.inplace = fn,
					       .user = user});
}

int tern_group_register_deferred(tern_group *g, uint32_t method_id, tern_deferred_handler fn,
				 void *user)
{
	return reg_all(g, (struct tern_method){.id = method_id,
					       .kind = TERN_KIND_DEFERRED,
					       .fn.deferred = fn,
					       .user = user});
}

int tern_group_register_oneway(tern_group *g, uint32_t method_id, tern_oneway_handler fn,
			       void *user)
{
	return reg_all(g, (struct tern_method){.id = method_id,
					       .kind = TERN_KIND_ONEWAY,
					       .fn.oneway = fn,
					       .user = user});
}

int tern_group_listen(tern_group *g, const char *uri, const struct tern_session_opts *opts,
		      tern_accept_cb cb, void *data, tern_listener **out)
{
	struct group_listen *gl;
	int rc;

	if (out)
		*out = NULL;
	if (!g || !uri)
		return -EINVAL;
	if (g->started)
		return -EBUSY;
	if (g->nlistens == GROUP_MAX_LISTENS)
		return -ENOSPC;
	gl = &g->listens[g->nlistens];
	memset(gl, 0, sizeof(*gl));
	gl->g = g;
	rc = tern__listen(g->acceptor, uri, opts, NULL, TERN__LISTEN_HANDOFF, &gl->acceptor);
	if (rc)
		return rc;
	gl->acceptor->handoff = group_handoff;
	gl->acceptor->handoff_arg = gl;
	/* The members listen on the URI the socket got (its real port). */
	for (unsigned i = 0; i < g->n; i++) {
		rc = tern__listen(g->m[i].ctx, tern_listener_uri(gl->acceptor), opts, cb,
				  TERN__LISTEN_ADOPT, &gl->member[i]);
		if (rc) {
			tern__set_error(g->acceptor, "%s", tern_ctx_last_error(g->m[i].ctx));
			while (i-- > 0)
				tern_listener_close(gl->member[i], NULL);
			tern_listener_close(gl->acceptor, NULL);
			return rc;
		}
		gl->member[i]->data = data;
	}
	g->nlistens++;
	if (out)
		*out = gl->acceptor;
	return 0;
}

const char *tern_group_last_error(tern_group *g)
{
	return g ? tern_ctx_last_error(g->acceptor) : "";
}

static void *acceptor_main(void *arg)
{
	tern_group *g = arg;

	tern_ctx_run(g->acceptor, TERN_RUN_DEFAULT);
	return NULL;
}

struct member_arg {
	tern_group *g;
	unsigned i;
};

static int member_run(tern_group *g, unsigned i);

static void *member_main(void *arg)
{
	struct member_arg *a = arg;

	member_run(a->g, a->i);
	free(a);
	return NULL;
}

int tern_group_start(tern_group *g)
{
	int rc;

	if (!g)
		return -EINVAL;
	if (g->started)
		return -EBUSY;
	g->started = true;
	rc = -pthread_create(&g->acceptor_thread, NULL, acceptor_main, g);
	if (rc) {
		g->started = false;
		return rc;
	}
	for (unsigned i = 0; g->own_threads && i < g->n; i++) {
		struct member_arg *a = malloc(sizeof(*a));

		if (a) {
			a->g = g;
			a->i = i;
		}
		/* Marked before the thread exists: tern_group_run() is ours. */
		pthread_mutex_lock(&g->lock);
		g->m[i].state = M_RUNNING;
		pthread_mutex_unlock(&g->lock);
		rc = a ? -pthread_create(&g->m[i].thread, NULL, member_main, a) : -ENOMEM;
		if (rc) {
			/* tern_group_destroy() stops what runs and destroys
			 * the members left idle. */
			free(a);
			pthread_mutex_lock(&g->lock);
			g->m[i].state = M_IDLE;
			pthread_mutex_unlock(&g->lock);
			return rc;
		}
		g->m[i].thread_made = true;
	}
	return 0;
}

/*
 * The user's on_stop, then the context: its sessions close (their clients
 * see the connection fail), and sockets handed to it but not yet adopted
 * close in adopt_cb().
 */
static void member_fini(tern_group *g, unsigned i)
{
	if (g->on_stop)
		g->on_stop(g->m[i].ctx, i, g->arg);
	tern_ctx_destroy(g->m[i].ctx);
}

/* Run member @i here until it is stopped; then it dies (tern_group_run()). */
static int member_run(tern_group *g, unsigned i)
{
	struct member *m = &g->m[i];
	tern_ctx *ctx = m->ctx;

	tern_ctx_run(ctx, TERN_RUN_DEFAULT);
	/* No hand-off reaches it from here on (see group_handoff()). */
	pthread_mutex_lock(&g->lock);
	m->state = M_DEAD;
	pthread_mutex_unlock(&g->lock);
	member_fini(g, i);
	pthread_mutex_lock(&g->lock);
	m->ctx = NULL;
	pthread_cond_broadcast(&g->member_done);
	pthread_mutex_unlock(&g->lock);
	return 0;
}

int tern_group_run(tern_group *g, unsigned i)
{
	int rc = 0;

	if (!g || i >= g->n || g->own_threads)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	if (g->stopping)
		rc = -ESHUTDOWN;
	else if (!g->started)
		rc = -EAGAIN;
	else if (g->m[i].state != M_IDLE)
		rc = -EBUSY;
	else
		g->m[i].state = M_RUNNING;
	pthread_mutex_unlock(&g->lock);
	return rc ? rc : member_run(g, i);
}

/* Under g->lock.  tern_ctx_stop() is thread-safe; a stop made before the
 * member's run starts ends that run at once. */
static int member_stop(tern_group *g, unsigned i)
{
	if (g->m[i].state == M_DEAD)
		return -ENOENT;
	tern_ctx_stop(g->m[i].ctx);
	return 0;
}

int tern_group_member_stop(tern_group *g, unsigned i)
{
	int rc;

	if (!g || i >= g->n)
		return -EINVAL;
	pthread_mutex_lock(&g->lock);
	rc = member_stop(g, i);
	pthread_mutex_unlock(&g->lock);
	return rc;
}

int tern_group_destroy(tern_group *g)
{
	bool running;

	if (!g)
		return -EINVAL;
	/* First the acceptor: no socket is handed over after this. */
	if (g->started) {
		tern_ctx_stop(g->acceptor);
		pthread_join(g->acceptor_thread, NULL);
	}
	pthread_mutex_lock(&g->lock);
	g->stopping = true;
	for (unsigned i = 0; i < g->n; i++)
		if (g->m[i].ctx && g->m[i].state == M_RUNNING)
			member_stop(g, i);
	/* The members' threads (ours, or the caller's in tern_group_run()). */
	do {
		running = false;
		for (unsigned i = 0; i < g->n; i++)
			running |= g->m[i].state == M_RUNNING ||
				   (g->m[i].state == M_DEAD && g->m[i].ctx);
		if (running)
			pthread_cond_wait(&g->member_done, &g->lock);
	} while (running);
	pthread_mutex_unlock(&g->lock);
	for (unsigned i = 0; i < g->n; i++) {
		if (g->m[i].thread_made)
			pthread_join(g->m[i].thread, NULL);
		/* Never run: it stops here. */
		if (g->m[i].ctx)
			member_fini(g, i);
	}
	if (g->acceptor)
		tern_ctx_destroy(g->acceptor);
	pthread_cond_destroy(&g->member_done);
	pthread_mutex_destroy(&g->lock);
	free(g);
	return 0;
}
