/* SPDX-License-Identifier: MIT */
/* What the features producer and consumer agree on besides the IDL. */
#ifndef FEATURES_COMMON_H
#define FEATURES_COMMON_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <tern.h>

#define FRAMES_DEFAULT 500000ul
/* One frame of 1024 bytes per slot (+ the 32-byte header, rounded to 64);
 * 512 slots, so a 256-frame batch never holds all of a producer's credits. */
#define FEATURES_SLOT_SIZE  1088u
#define FEATURES_SLOT_COUNT 512u

static inline void features_session_opts(struct tern_session_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->size = sizeof(*o);
	o->slot_size = FEATURES_SLOT_SIZE;
	o->slot_count = FEATURES_SLOT_COUNT;
}

/* The value of element @i of frame @k, computed the same way on both sides. */
static inline float frame_value(uint64_t k, unsigned i)
{
	return (float)k + (float)i * 0.001f;
}

/* FRAMES from argv[2], else $TERN_FEATURES_FRAMES, else the default. */
static inline unsigned long frames_arg(int argc, char **argv)
{
	const char *s = argc > 2 ? argv[2] : getenv("TERN_FEATURES_FRAMES");
	unsigned long n = s ? strtoul(s, NULL, 10) : 0;
	return n ? n : FRAMES_DEFAULT;
}

static inline double now_s(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

#endif
