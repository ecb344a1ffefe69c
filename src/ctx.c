// SPDX-License-Identifier: MIT
/*
 * ctx.c - the context: its loop, its progress mode, its transports, and the
 * one timer that enforces every call deadline.
 */
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "internal.h"

/* Adaptive progress: spin this long after traffic before yielding between polls. */
#define TERN_ADAPTIVE_YIELD_NS 2000

static const struct tern_transport_ops *const builtin_transports[] = {
	&tern_verbs_transport,
	&tern_shm_transport,
	&tern_tcp_transport,
};
#define N_BUILTIN (sizeof(builtin_transports) / sizeof(builtin_transports[0]))
_Static_assert(N_BUILTIN < TERN_MAX_TRANSPORTS, "room for a registered provider");

/* Providers registered by the process (tests: mem://), for every new context. */
static const struct tern_transport_ops *extra_transports[TERN_MAX_TRANSPORTS - N_BUILTIN];
static unsigned n_extra;

int tern__transport_register(const struct tern_transport_ops *ops)
{
	unsigned i;

	if (!ops || !ops->scheme || !ops->ctx_init)
		return -EINVAL;
	for (i = 0; i < n_extra; i++)
		if (extra_transports[i] == ops)
			return 0;
	for (i = 0; i < N_BUILTIN + n_extra; i++) {
		const struct tern_transport_ops *o =
			i < N_BUILTIN ? builtin_transports[i] : extra_transports[i - N_BUILTIN];

		if (strcmp(o->scheme, ops->scheme) == 0)
			return -EEXIST;
	}
	if (n_extra == sizeof(extra_transports) / sizeof(extra_transports[0]))
		return -ENOSPC;
	extra_transports[n_extra++] = ops;
	return 0;
}

uint64_t tern__now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

void tern__set_error(tern_ctx *ctx, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(ctx->last_error, sizeof(ctx->last_error), fmt, ap);
	va_end(ap);
}

const char *tern_ctx_last_error(tern_ctx *ctx)
{
	return ctx ? ctx->last_error : "";
}

int tern_ctx_mem(tern_ctx *ctx, struct tern_mem_stats *out, size_t size)
{
	struct tern_mem_stats m;

	if (!ctx || !out || !size)
		return -EINVAL;
	memset(&m, 0, sizeof(m));
	for (struct tern_list *l = ctx->sessions.next; l != &ctx->sessions; l = l->next)
		m.sessions++;
	m.staging_heap = ctx->stage_bytes;
	m.session_heap = ctx->session_heap;
	m.user_shared = ctx->user_shared_bytes;
	for (int i = 0; i < ctx->ntp; i++)
		if (ctx->tp[i].t && ctx->tp[i].ops->mem_stats)
			ctx->tp[i].ops->mem_stats(ctx->tp[i].t, &m);
	memcpy(out, &m, size < sizeof(m) ? size : sizeof(m));
	return 0;
}

/* Does @u have the form its provider takes?  0, or -EINVAL with a message. */
static int uri_form_check(tern_ctx *ctx, const struct tern_transport_ops *ops,
			  const struct tern_uri *u)
{
	if (ops->uri_form == TERN_URI_HOST_PORT && !u->has_port) {
		tern__set_error(ctx, "%s://%s needs a port (%s://host:port)", u->scheme, u->host,
				u->scheme);
		return -EINVAL;
	}
	if (ops->uri_form == TERN_URI_NAME && u->has_port) {
		tern__set_error(ctx, "%s:// takes a name and no port (%s://name)", u->scheme,
				u->scheme);
		return -EINVAL;
	}
	return 0;
}

int tern__transport_get(tern_ctx *ctx, const struct tern_uri *u, struct tern_tp **out)
{
	for (int i = 0; i < ctx->ntp; i++) {
		struct tern_tp *tp = &ctx->tp[i];
		int rc;

		if (strcmp(tp->ops->scheme, u->scheme) != 0)
			continue;
		if ((rc = uri_form_check(ctx, tp->ops, u)))
			return rc;
		if (!tp->t) {
			/* Per-context provider state is made on first use, so a
			 * context that never touches rdma:// never opens a device. */
			rc = tp->ops->ctx_init(ctx, ctx->loop, &tern__events, &tp->t);
			if (rc) {
				tern__set_error(
					ctx, "%s:// is not available here: %s%s", u->scheme,
					tern_strerror(rc),
					rc == -ENODEV && strcmp(u->scheme, "rdma") == 0
						? " (no RDMA device: no /dev/infiniband/rdma_cm)"
						: "");
				return rc;
			}
			ctx->live[ctx->nlive++] = tp;
			if (ctx->progress == TERN_PROGRESS_EVENT || ctx->events_armed)
				tp->ops->set_mode(tp->t, TERN_TRANSPORT_EVENTS);
		}
		*out = tp;
		return 0;
	}
	{
		char known[64] = "";
		size_t n = 0;

		for (int i = 0; i < ctx->ntp && n < sizeof(known); i++)
			n += (size_t)snprintf(known + n, sizeof(known) - n, "%s%s", i ? ", " : "",
					      ctx->tp[i].ops->scheme);
		tern__set_error(ctx, "unknown URI scheme '%s' (known: %s)", u->scheme, known);
	}
	return -EPROTONOSUPPORT;
}

/* One tern_ctx_post(): fn(ctx, arg, status) owed. */
struct tern_post {
	struct tern_post *next;
	tern_post_fn fn;
	void *arg;
};

int tern_ctx_post(tern_ctx *ctx, tern_post_fn fn, void *arg)
{
	struct tern_post *p;
	bool was_empty;

	if (!ctx || !fn)
		return -EINVAL;
	p = malloc(sizeof(*p));
	if (!p)
		return -ENOMEM;
	p->next = NULL;
	p->fn = fn;
	p->arg = arg;
	pthread_mutex_lock(&ctx->post_lock);
	if (ctx->post_closed) {
		pthread_mutex_unlock(&ctx->post_lock);
		free(p);
		return -ESHUTDOWN;
	}
	was_empty = !ctx->post_head;
	*ctx->post_tail = p;
	ctx->post_tail = &p->next;
	atomic_store_explicit(&ctx->post_pending, true, memory_order_relaxed);
	/*
	 * Under the lock: tern_ctx_destroy() closes the queue under it
	 * before it closes post_async, so no send can reach a closed
	 * handle.  One send per empty-to-non-empty edge: the loop takes
	 * the whole queue at once, and libuv coalesces sends anyway.
	 */
	if (was_empty)
		uv_async_send(&ctx->post_async);
	pthread_mutex_unlock(&ctx->post_lock);
	return 0;
}

/* Move what other threads queued onto the loop thread's own list. */
static void posts_take(tern_ctx *ctx)
{
	pthread_mutex_lock(&ctx->post_lock);
	if (ctx->post_head) {
		*ctx->post_run_tail = ctx->post_head;
		ctx->post_run_tail = ctx->post_tail;
		ctx->post_head = NULL;
		ctx->post_tail = &ctx->post_head;
	}
	atomic_store_explicit(&ctx->post_pending, false, memory_order_relaxed);
	pthread_mutex_unlock(&ctx->post_lock);
}

/*
 * Run the posts taken, oldest first, one at a time off ctx->post_run: a
 * post that runs the loop nested runs the next ones there, in order.
 */
static int posts_run(tern_ctx *ctx, int status)
{
	struct tern_post *p;
	int n = 0;

	while ((p = ctx->post_run)) {
		ctx->post_run = p->next;
		if (!ctx->post_run)
			ctx->post_run_tail = &ctx->post_run;
		TERN_CALLBACK(ctx, p->fn(ctx, p->arg, status));
		free(p);
		n++;
	}
	if (n)
		tern__session_flush_dirty(ctx);
	return n;
}

/* From a poll: a relaxed load when nobody posted, the common case. */
static int posts_poll(tern_ctx *ctx)
{
	if (atomic_load_explicit(&ctx->post_pending, memory_order_relaxed))
		posts_take(ctx);
	return ctx->post_run ? posts_run(ctx, 0) : 0;
}

/* A post woke the loop (event progress, or a busy turn's fd check). */
static void post_cb(uv_async_t *h)
{
	tern_ctx *ctx = h->data;

	posts_take(ctx);
	posts_run(ctx, 0);
}

uint64_t tern__turn_read(tern_ctx *ctx)
{
	return ctx->turn_ns = tern__now_ns();
}

void tern__turn_stamps_take(tern_ctx *ctx)
{
	uint64_t now = tern__turn_ns(ctx);

	for (struct tern_turn_stamp *st = ctx->turn_owed; st; st = st->next)
		st->ns = now;
	ctx->turn_owed = NULL;
}

void tern__turn_stamp_drop(tern_ctx *ctx, struct tern_turn_stamp *st)
{
	for (struct tern_turn_stamp **pp = &ctx->turn_owed; *pp; pp = &(*pp)->next) {
		if (*pp == st) {
			*pp = st->next;
			return;
		}
	}
}

/* The turn is over: what started in it and goes on gets its reading; no reading outlives it. */
static inline void turn_end(tern_ctx *ctx)
{
	if (ctx->turn_owed)
		tern__turn_stamps_take(ctx);
	ctx->turn_ns = 0;
}

/* Poll every initialised transport once; then settle credits and deadlines.
 * Inline: tern_ctx_poll() is nothing else, and a busy caller spins on it. */
static inline int poll_all(tern_ctx *ctx, int budget)
{
	int total = posts_poll(ctx);

	for (int i = 0; i < ctx->nlive; i++) {
		struct tern_tp *tp = ctx->live[i];
		int n = tp->ops->poll(tp->t, budget);

		if (n > 0)
			total += n;
	}
	/* Most polls leave no session owing anything: no call for nothing. */
	if (!tern_list_empty(&ctx->dirty))
		tern__session_flush_dirty(ctx);
	if (ctx->next_deadline_ns) {
		uint64_t now = tern__now_ns();
		if (now >= ctx->next_deadline_ns)
			tern__deadlines_run(ctx, now);
	}
	turn_end(ctx);
	return total;
}

/* Return how many completions the providers found while switching. */
static int set_transport_mode(tern_ctx *ctx, enum tern_transport_mode mode)
{
	int n = 0;

	ctx->events_armed = mode == TERN_TRANSPORT_EVENTS;
	for (int i = 0; i < ctx->ntp; i++)
		if (ctx->tp[i].t)
			n += ctx->tp[i].ops->set_mode(ctx->tp[i].t, mode);
	return n;
}

/*
 * Busy and adaptive progress: one loop turn spins on the transports for
 * up to busy_spin_ns.  Spinning amortises libuv's epoll_wait(0) over many
 * polls.  Whoever runs the loop one turn at a time (tern_call_sync, a
 * user's uv_run(ONCE), a callback's nested run) waits for something a
 * poll handles, so the turn ends at the first work.  Under
 * tern_ctx_run(DEFAULT) nobody looks between turns: the turn spins on
 * after work, and a server answers the next request from the spin
 * instead of from behind an epoll_wait(0), a syscall that costs more
 * than the whole shm round trip on a virtualised host (measured: docs/performance.md,
 * "shm:// and tcp:// on this host").  Timers and fds still get a turn
 * every busy_spin_ns, as they do when the transports are quiet.
 */
#define TERN_POLLS_PER_CLOCK 16

/*
 * Has tern_ctx_stop() asked the running tern_ctx_run(DEFAULT) to return?
 * Then the turn ends now and stop_cb() ends the run.  Relaxed: stop_cb()
 * is the one that acts on it.  A stop kept for a later run does not shorten
 * the turns of the loop driven one at a time meanwhile.
 */
static bool stop_asked(tern_ctx *ctx)
{
	return ctx->run_default && atomic_load_explicit(&ctx->stop_requested, memory_order_relaxed);
}

static bool spin_after_work(tern_ctx *ctx)
{
	/* stop_flag: the user's uv_stop() asked run() to return. */
	return ctx->run_default && !ctx->cb_depth && !ctx->loop->stop_flag && !stop_asked(ctx);
}

static void idle_cb(uv_idle_t *h)
{
	tern_ctx *ctx = h->data;
	uint64_t start = tern__now_ns(), now = start;
	unsigned polls = 0;
	int n;

	do {
		n = poll_all(ctx, 64);
		if (ctx->progress == TERN_PROGRESS_BUSY) {
			if (n > 0 && !spin_after_work(ctx))
				break;
			/*
			 * Busy progress reads the clock for the window alone
			 * (only adaptive reads last_activity_ns), and only
			 * every TERN_POLLS_PER_CLOCK polls: a clock read costs
			 * more than an empty poll (28 ns under kvm-clock
			 * here), and a message that lands during one waits
			 * for it to finish.
			 */
			if (++polls % TERN_POLLS_PER_CLOCK == 0)
				now = tern__now_ns();
			continue;
		}
		/* One clock read a poll: it is most of an idle poll's cost. */
		now = tern__now_ns();
		if (n > 0) {
			ctx->last_activity_ns = now;
			if (!spin_after_work(ctx))
				break;
			continue;
		}
		if (ctx->progress == TERN_PROGRESS_ADAPTIVE &&
		    now - ctx->last_activity_ns > TERN_ADAPTIVE_YIELD_NS)
			/*
			 * Quiet for a moment: let others have the CPU between
			 * polls.  A peer we just woke (a doorbell) is often put
			 * on our CPU by the scheduler; spinning over it keeps
			 * it from answering until we give up and sleep,
			 * adaptive_spin_us later (measured on shm: 100-300 us
			 * round trips instead of 0.4 us).  Alone on the CPU,
			 * this is one cheap syscall per poll.
			 */
			sched_yield();
	} while (now - start < ctx->busy_spin_ns && ctx->idle_active && !stop_asked(ctx));

	if (ctx->progress == TERN_PROGRESS_ADAPTIVE && ctx->idle_active &&
	    now - ctx->last_activity_ns > ctx->adaptive_spin_ns) {
		/* Quiet for long enough: arm the notification fds and sleep. */
		uv_idle_stop(&ctx->idle);
		ctx->idle_active = false;
		/* Completions that raced with arming mean traffic: spin again. */
		if (set_transport_mode(ctx, TERN_TRANSPORT_EVENTS) > 0)
			tern__activity(ctx);
	}
}

/* A provider woke up in event mode (or finished a self-driven poll). */
void tern__activity(tern_ctx *ctx)
{
	ctx->last_activity_ns = tern__now_ns();
	tern__session_flush_dirty(ctx);
	turn_end(ctx); /* the provider's turn is over */
	if (ctx->progress == TERN_PROGRESS_ADAPTIVE && !ctx->idle_active && !ctx->destroying) {
		/* Traffic again: back to spinning. */
		set_transport_mode(ctx, TERN_TRANSPORT_POLLED);
		uv_idle_start(&ctx->idle, idle_cb);
		ctx->idle_active = true;
	}
}

static void deadline_cb(uv_timer_t *t)
{
	tern_ctx *ctx = t->data;

	tern__deadlines_run(ctx, tern__now_ns());
}

void tern__deadline_arm(tern_ctx *ctx, uint64_t deadline_ns)
{
	uint64_t now, ms;

	if (!deadline_ns || (ctx->next_deadline_ns && ctx->next_deadline_ns <= deadline_ns))
		return;
	ctx->next_deadline_ns = deadline_ns;
	now = tern__now_ns();
	/* libuv timers have millisecond resolution: round up, never fire early. */
	ms = deadline_ns > now ? (deadline_ns - now + 999999) / 1000000 : 0;
	/* a deadline does not keep the loop alive (a wake-up may have) */
	uv_unref((uv_handle_t *)&ctx->deadline_timer);
	uv_timer_start(&ctx->deadline_timer, deadline_cb, ms, 0);
}

void tern__wake_soon(tern_ctx *ctx)
{
	tern__deadline_arm(ctx, tern__now_ns());
	/*
	 * The timer is due now (or was already): it keeps the loop alive until
	 * it fires, unlike a deadline (see tern__ctx_create()), so that work
	 * owed now runs even on a loop with nothing else to do (mem://'s in
	 * event progress has no fd).  Fired, the timer is inactive again, and
	 * the next tern__deadline_arm() unrefs it.
	 */
	uv_ref((uv_handle_t *)&ctx->deadline_timer);
}

void tern__deadlines_run(tern_ctx *ctx, uint64_t now_ns)
{
	uint64_t next;

	ctx->next_deadline_ns = 0;
	uv_timer_stop(&ctx->deadline_timer);
	/* The floor above times out what is due (calls, batches); the same
	 * timer returns credits owed to peers that went quiet. */
	next = ctx->up->timers(ctx, now_ns);
	tern__session_flush_dirty(ctx);
	tern__deadline_arm(ctx, next);
}

/* The loop thread's half of tern_ctx_stop(). */
static void stop_cb(uv_async_t *h)
{
	tern_ctx *ctx = h->data;

	/* Not if a tern_ctx_run(TERN_RUN_DEFAULT) took the stop at its start. */
	if (atomic_load_explicit(&ctx->stop_requested, memory_order_acquire))
		uv_stop(ctx->loop);
}

static void handle_closed(uv_handle_t *h)
{
	tern_ctx *ctx = h->data;
	ctx->open_handles--;
}

int tern__ctx_create(const struct tern_ctx_opts *opts, const struct tern_upcalls *up,
		     tern_ctx **out)
{
	struct tern_ctx_opts o = {0};
	tern_ctx *ctx;
	int rc;

	if (!out)
		return -EINVAL;
	*out = NULL;
	if (opts) {
		size_t n = opts->size ? opts->size : sizeof(o);
		if (n > sizeof(o))
			return -EINVAL;
		memcpy(&o, opts, n);
	}
	if (o.progress != TERN_PROGRESS_BUSY && o.progress != TERN_PROGRESS_EVENT &&
	    o.progress != TERN_PROGRESS_ADAPTIVE)
		return -EINVAL;
	if (!up || up->ctx_size < sizeof(*ctx) || up->session_size < sizeof(tern_session))
		return -EINVAL;
	ctx = calloc(1, up->ctx_size);
	if (!ctx)
		return -ENOMEM;
	ctx->up = up;
	if (o.loop) {
		ctx->loop = o.loop;
	} else {
		rc = uv_loop_init(&ctx->own_loop);
		if (rc) {
			free(ctx);
			return rc;
		}
		ctx->loop = &ctx->own_loop;
		ctx->owns_loop = true;
	}
	ctx->progress = o.progress;
	ctx->adaptive_spin_ns = (uint64_t)(o.adaptive_spin_us ? o.adaptive_spin_us : 100) * 1000;
	ctx->busy_spin_ns = (uint64_t)(o.busy_spin_us ? o.busy_spin_us : 20) * 1000;
	ctx->data = o.data;
	tern_list_init(&ctx->sessions);
	tern_list_init(&ctx->listeners);
	tern_list_init(&ctx->dirty);
	tern_list_init(&ctx->mrs);
	for (size_t i = 0; i < N_BUILTIN; i++)
		ctx->tp[ctx->ntp++].ops = builtin_transports[i];
	for (unsigned i = 0; i < n_extra; i++)
		ctx->tp[ctx->ntp++].ops = extra_transports[i];

	uv_idle_init(ctx->loop, &ctx->idle);
	ctx->idle.data = ctx;
	uv_timer_init(ctx->loop, &ctx->deadline_timer);
	ctx->deadline_timer.data = ctx;
	/* The deadline timer alone must not keep tern_ctx_run() alive. */
	uv_unref((uv_handle_t *)&ctx->deadline_timer);
	ctx->open_handles = 2;
	rc = uv_async_init(ctx->loop, &ctx->stop_async, stop_cb);
	if (!rc) {
		ctx->open_handles++;
		rc = uv_async_init(ctx->loop, &ctx->post_async, post_cb);
	}
	if (rc) {
		/* Nothing else is open yet but these handles. */
		uv_close((uv_handle_t *)&ctx->idle, handle_closed);
		uv_close((uv_handle_t *)&ctx->deadline_timer, handle_closed);
		if (ctx->open_handles == 3)
			uv_close((uv_handle_t *)&ctx->stop_async, handle_closed);
		while (ctx->open_handles > 0)
			uv_run(ctx->loop, UV_RUN_NOWAIT);
		if (ctx->owns_loop)
			uv_loop_close(&ctx->own_loop);
		free(ctx);
		return rc;
	}
	ctx->open_handles++;
	ctx->stop_async.data = ctx;
	ctx->post_async.data = ctx;
	/*
	 * Nor may the stop handle: it waits for tern_ctx_stop(), not for
	 * work; nor the post handle (a context whose only hope is another
	 * thread's post is one the user runs with TERN_RUN_ONCE or keeps
	 * alive with a handle of their own).
	 */
	uv_unref((uv_handle_t *)&ctx->stop_async);
	uv_unref((uv_handle_t *)&ctx->post_async);
	pthread_mutex_init(&ctx->post_lock, NULL);
	ctx->post_tail = &ctx->post_head;
	ctx->post_run_tail = &ctx->post_run;
	if (ctx->progress != TERN_PROGRESS_EVENT) {
		uv_idle_start(&ctx->idle, idle_cb);
		ctx->idle_active = true;
	}
	ctx->last_activity_ns = tern__now_ns();
	*out = ctx;
	return 0;
}

int tern_ctx_destroy(tern_ctx *ctx)
{
	struct tern_list *l, *nx;

	if (!ctx)
		return -EINVAL;
	if (ctx->cb_depth > 0)
		return -EBUSY;
	ctx->destroying = true;
	/* Close the queue; what is in it is cancelled while all still stands. */
	pthread_mutex_lock(&ctx->post_lock);
	ctx->post_closed = true;
	pthread_mutex_unlock(&ctx->post_lock);
	posts_take(ctx);
	posts_run(ctx, -ECANCELED);
	for (l = ctx->listeners.next; l != &ctx->listeners; l = nx) {
		nx = l->next;
		tern_listener_close(tern_container_of(l, tern_listener, link), NULL);
	}
	tern__session_close_all(ctx);
	/* Sessions close asynchronously (verbs waits for its flushes): run
	 * the loop until every one has reported closed(). */
	while (!tern__sessions_all_closed(ctx)) {
		if (!ctx->idle_active && !ctx->events_armed)
			set_transport_mode(ctx, TERN_TRANSPORT_EVENTS);
		uv_run(ctx->loop, UV_RUN_ONCE);
	}
	tern__session_reap_all(ctx);
	/* Registrations go before the transports that made them. */
	tern__bulk_free_all(ctx);
	for (int i = 0; i < ctx->ntp; i++)
		if (ctx->tp[i].t)
			ctx->tp[i].ops->ctx_fini(ctx->tp[i].t);
	if (ctx->idle_active)
		uv_idle_stop(&ctx->idle);
	uv_close((uv_handle_t *)&ctx->idle, handle_closed);
	uv_close((uv_handle_t *)&ctx->deadline_timer, handle_closed);
	uv_close((uv_handle_t *)&ctx->stop_async, handle_closed);
	uv_close((uv_handle_t *)&ctx->post_async, handle_closed);
	while (ctx->open_handles > 0)
		uv_run(ctx->loop, UV_RUN_NOWAIT);
	pthread_mutex_destroy(&ctx->post_lock);
	ctx->up->ctx_fini(ctx);
	if (ctx->owns_loop)
		uv_loop_close(&ctx->own_loop);
	free(ctx);
	return 0;
}

uv_loop_t *tern_ctx_loop(tern_ctx *ctx)
{
	return ctx->loop;
}

void *tern_ctx_data(tern_ctx *ctx)
{
	return ctx->data;
}

int tern_ctx_run(tern_ctx *ctx, enum tern_run_mode mode)
{
	uv_run_mode m = mode == TERN_RUN_ONCE	  ? UV_RUN_ONCE
			: mode == TERN_RUN_NOWAIT ? UV_RUN_NOWAIT
						  : UV_RUN_DEFAULT;
	int rc;

	if (m != UV_RUN_DEFAULT)
		return uv_run(ctx->loop, m);
	/* A stop that came before this run (a SIGTERM during set-up) ends it now. */
	if (!ctx->run_default &&
	    atomic_exchange_explicit(&ctx->stop_requested, false, memory_order_acquire))
		return uv_loop_alive(ctx->loop);
	ctx->run_default++;
	rc = uv_run(ctx->loop, m);
	ctx->run_default--;
	/* This run has returned: the stop is served, whatever ended the run. */
	if (!ctx->run_default)
		atomic_store_explicit(&ctx->stop_requested, false, memory_order_relaxed);
	return rc;
}

/*
 * Async-signal-safe and thread-safe: an atomic store to a lock-free flag
 * and uv_async_send(), which libuv documents as both (a compare-and-swap
 * and a write() to an eventfd).  Not uv_stop(): it writes the loop's
 * stop_flag unsynchronised, and a loop asleep in epoll_wait() would not
 * look at it until something else woke the loop.
 */
_Static_assert(ATOMIC_BOOL_LOCK_FREE == 2, "tern_ctx_stop() runs in signal handlers");

void tern_ctx_stop(tern_ctx *ctx)
{
	/* Release: the loop thread that sees the flag sees what came before. */
	atomic_store_explicit(&ctx->stop_requested, true, memory_order_release);
	uv_async_send(&ctx->stop_async);
}

int tern_ctx_poll(tern_ctx *ctx, int budget)
{
	int n;

	if (!ctx)
		return -EINVAL;
	n = poll_all(ctx, budget > 0 ? budget : 64);
	/* Only adaptive progress reads last_activity_ns; a busy caller spinning
	 * here should not pay a clock read per completion. */
	if (n > 0 && ctx->progress == TERN_PROGRESS_ADAPTIVE)
		ctx->last_activity_ns = tern__now_ns();
	return n;
}
