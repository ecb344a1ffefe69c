// SPDX-License-Identifier: MIT
/*
 * features_consumer - batched inference on a stream of feature vectors.
 *
 *   features_consumer LISTEN_URI [FRAMES]
 *
 * Serves Features.push, a one-way method the runtime gathers into batches
 * of up to 256 frames.  Each batch is checked frame by frame (every value of
 * every frame, and their order), copied once into a 256 x 256 matrix, and
 * multiplied by a 256 x 16 weight matrix.  After FRAMES frames (default
 * 500000, or $TERN_FEATURES_FRAMES) and once the producer has closed (it
 * drains its credits first), it prints frames/s and GB/s and exits, 0 if
 * every frame was right.  Prints its URI first, for the producer.
 */
#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <uv.h>

#include "common.h"
#include "features.tern.h"

#define DIM 256
#define OUT 16

struct consumer {
	unsigned long target;
	uint64_t next; /* the frame expected next */
	uint64_t bad;
	uint64_t batches;
	uint64_t got;
	double t0, t1;
	double checksum;
	float x[DIM * DIM]; /* the batch: one row per frame */
	float w[DIM * OUT];
	float y[DIM * OUT];
	bool done;
};

static void infer(struct consumer *c, size_t n)
{
	memset(c->y, 0, sizeof(float) * n * OUT);
	for (size_t b = 0; b < n; b++)
		for (size_t k = 0; k < DIM; k++) {
			float xv = c->x[b * DIM + k];
			for (size_t j = 0; j < OUT; j++)
				c->y[b * OUT + j] += xv * c->w[k * OUT + j];
		}
	for (size_t i = 0; i < n * OUT; i++)
		c->checksum += c->y[i];
}

static void on_batch(struct tern_batch_item *items, size_t n, void *user)
{
	struct consumer *c = user;

	if (!c->got)
		c->t0 = now_s();
	for (size_t i = 0; i < n; i++) {
		const features_Frame *f = features_Frame_view(items[i].in, items[i].in_len);
		float *row = &c->x[i * DIM];
		bool ok = f != NULL;

		/* the one copy out of the receive slot: into the batch */
		if (f)
			features_Frame_load_v(f, row);
		for (unsigned k = 0; ok && k < DIM; k++)
			ok = row[k] == frame_value(c->next, k);
		if (!ok) {
			c->bad++;
			memset(row, 0, sizeof(float) * DIM);
		}
		c->next++;
	}
	infer(c, n);
	c->got += n;
	c->batches++;
	if (c->got >= c->target) {
		c->t1 = now_s();
		c->done = true;
	}
}

static volatile int stop;
static int producers_gone;

static void on_close(tern_session *s, int reason)
{
	(void)s;
	(void)reason;
	producers_gone++;
}

static void on_signal(uv_signal_t *h, int signum)
{
	(void)h;
	(void)signum;
	stop = 1;
}

int main(int argc, char **argv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	static struct consumer c;
	static struct features_handlers h = {.push = on_batch};
	struct tern_session_opts so;
	uv_signal_t sigint, sigterm;
	sigset_t quit;
	tern_listener *l;
	tern_ctx *ctx;
	uv_loop_t loop;
	double secs;
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: features_consumer LISTEN_URI [FRAMES]\n");
		return 2;
	}
	c.target = frames_arg(argc, argv);
	for (size_t i = 0; i < DIM * OUT; i++)
		c.w[i] = (float)((i * 2654435761u) % 2001) / 1000.0f - 1.0f;
	uv_loop_init(&loop);
	co.loop = &loop;
	features_session_opts(&so);
	so.on_close = on_close;
	if ((rc = tern_ctx_create(&co, &ctx)) || (rc = features_register(ctx, &h, &c)) ||
	    (rc = tern_listen(ctx, argv[1], &so, NULL, &l))) {
		fprintf(stderr, "features_consumer: %s: %s\n", tern_strerror(rc),
			tern_ctx_last_error(ctx));
		return 1;
	}
	printf("%s\n", tern_listener_uri(l));
	fflush(stdout);
	uv_signal_init(&loop, &sigint);
	uv_signal_init(&loop, &sigterm);
	uv_signal_start(&sigint, on_signal, SIGINT);
	uv_signal_start(&sigterm, on_signal, SIGTERM);
	while (!c.done && !stop)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	/* Stay until the producer has its credits back and closes. */
	for (double end = now_s() + 60; c.done && !producers_gone && !stop && now_s() < end;)
		tern_ctx_run(ctx, TERN_RUN_NOWAIT);
	secs = c.done ? c.t1 - c.t0 : 0;
	printf("{\"bench\":\"features\",\"side\":\"consumer\",\"lang\":\"c\",\"frames\":%llu,"
	       "\"bad\":%llu,\"batches\":%llu,\"seconds\":%.3f,\"frames_per_s\":%.0f,"
	       "\"gb_per_s\":%.3f,\"checksum\":%.6g}\n",
	       (unsigned long long)c.got, (unsigned long long)c.bad, (unsigned long long)c.batches,
	       secs, secs > 0 ? (double)c.got / secs : 0,
	       secs > 0 ? (double)c.got * 1024 / secs / 1e9 : 0, c.checksum);
	if (c.done && !c.bad)
		printf("features_consumer: all %lu frames checked\n", c.target);
	/*
	 * On our way out: a SIGTERM from now on (a harness that saw the
	 * producer finish) must not kill us mid-teardown.  Closing the last
	 * uv_signal_t of a signal restores its default action, so block both
	 * first; one still pending dies with the process.
	 */
	sigemptyset(&quit);
	sigaddset(&quit, SIGINT);
	sigaddset(&quit, SIGTERM);
	sigprocmask(SIG_BLOCK, &quit, NULL);
	uv_close((uv_handle_t *)&sigint, NULL);
	uv_close((uv_handle_t *)&sigterm, NULL);
	tern_ctx_destroy(ctx);
	uv_run(&loop, UV_RUN_NOWAIT);
	uv_loop_close(&loop);
	return c.done && !c.bad ? 0 : 1;
}
