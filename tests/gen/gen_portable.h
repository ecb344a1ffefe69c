/* SPDX-License-Identifier: MIT */
/* gen_portable.c: calc_Vec's whole-array accessors on the portable path. */
#ifndef TERN_TESTS_GEN_PORTABLE_H
#define TERN_TESTS_GEN_PORTABLE_H

#include <stdint.h>

void portable_store_vec(void *buf, const float x[4], const int16_t small[3]);
void portable_load_vec(const void *buf, float x[4], int16_t small[3]);

#endif
