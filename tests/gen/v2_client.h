/* SPDX-License-Identifier: MIT */
/*
 * v2_client.c: a client built from calc_v2.tern, in a test linked with the
 * server of calc.tern.  Only v2's header is used (its proxies are inline),
 * so the two versions of Calc never meet in one translation unit.
 */
#ifndef TERN_TESTS_V2_CLIENT_H
#define TERN_TESTS_V2_CLIENT_H

#include <stdint.h>
#include <tern.h>

/* Calc as calc_v2.tern declares it, and Extra, which v1 lacks. */
struct tern_service_ref v2_calc_ref(void);
struct tern_service_ref v2_extra_ref(void);
uint32_t v2_add_id(void);
uint32_t v2_echo_id(void);
uint32_t v2_stats_id(void);

/* Calc.mul through v2's sync proxy: a method the v1 server lacks. */
int v2_mul(tern_session *s, int64_t a, int64_t b, int64_t *product);

#endif
