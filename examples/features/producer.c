// SPDX-License-Identifier: MIT
/*
 * features_producer - push a stream of f32[256] feature vectors.
 *
 *   features_producer URI [FRAMES]
 *
 * Sends FRAMES frames (default 500000, or $TERN_FEATURES_FRAMES) as one-way
 * Features.push messages, each built in place in its send slot.  When the
 * consumer holds every credit it waits (tern_session_wait_writable); at the
 * end it waits until the consumer has consumed everything (tern_session_drain)
 * before closing.  Prints what it measured.
 */
#include <errno.h>
#include <stdio.h>

#include "common.h"
#include "features.tern.h"

int main(int argc, char **argv)
{
	struct tern_ctx_opts co = {.size = sizeof(co), .progress = TERN_PROGRESS_BUSY};
	struct tern_session_counters cnt;
	struct tern_session_opts so;
	unsigned long frames;
	tern_session *s;
	tern_ctx *ctx;
	double t0, t1;
	int rc;

	if (argc < 2) {
		fprintf(stderr, "usage: features_producer URI [FRAMES]\n");
		return 2;
	}
	frames = frames_arg(argc, argv);
	features_session_opts(&so);
	features_client_opts(&so); /* the consumer must serve this Features */
	if ((rc = tern_ctx_create(&co, &ctx)))
		return 1;
	if ((rc = tern_connect_sync(ctx, argv[1], &so, 10000, &s)))
		goto fail;
	t0 = now_s();
	for (unsigned long k = 0; k < frames; k++) {
		features_Frame *f;
		tern_callslot *slot;

		while ((rc = features_push_send_acquire(s, &f, &slot)) == -EAGAIN)
			if ((rc = tern_session_wait_writable(s, 30000)))
				goto fail;
		if (rc)
			goto fail;
		for (unsigned i = 0; i < FEATURES_FRAME_V_LEN; i++)
			features_Frame_set_v(f, i, frame_value(k, i)); /* written in the slot */
		if ((rc = features_push_send_commit(slot)))
			goto fail;
	}
	if ((rc = tern_session_drain(s, 120000)))
		goto fail;
	t1 = now_s();
	tern_session_counters(s, &cnt);
	printf("{\"bench\":\"features\",\"side\":\"producer\",\"frames\":%lu,\"seconds\":%.3f,"
	       "\"frames_per_s\":%.0f,\"credit_stalls\":%llu,\"credit_msgs\":%llu}\n",
	       frames, t1 - t0, (double)frames / (t1 - t0), (unsigned long long)cnt.credit_stalls,
	       (unsigned long long)cnt.credit_msgs_received);
	printf("features_producer: %lu frames sent and consumed\n", frames);
	tern_session_close(s, NULL);
	tern_ctx_destroy(ctx);
	return 0;
fail:
	fprintf(stderr, "features_producer: %s: %s\n", tern_strerror(rc), tern_ctx_last_error(ctx));
	tern_ctx_destroy(ctx);
	return 1;
}
