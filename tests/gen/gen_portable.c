// SPDX-License-Identifier: MIT
/*
 * The generated accessors built the way a big-endian host builds them:
 * TERN_GEN_PORTABLE turns off the little-endian memcpy shortcut for whole
 * arrays, so test_gen_unit.c can check that both paths write and read the
 * same bytes.  (The scalar accessors have only one path: byte by byte.)
 */
#define TERN_GEN_PORTABLE 1
#include "gen_portable.h"

#include "calc.tern.h"

_Static_assert(TERN_GEN_LE_HOST == 0, "this file takes the portable path");

void portable_store_vec(void *buf, const float x[4], const int16_t small[3])
{
	calc_Vec *v = buf;

	calc_Vec_store_x(v, x);
	calc_Vec_store_small(v, small);
}

void portable_load_vec(const void *buf, float x[4], int16_t small[3])
{
	const calc_Vec *v = buf;

	calc_Vec_load_x(v, x);
	calc_Vec_load_small(v, small);
}
