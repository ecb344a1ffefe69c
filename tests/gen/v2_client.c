// SPDX-License-Identifier: MIT
#include "v2_client.h"

#include "calc_v2.tern.h"

struct tern_service_ref v2_calc_ref(void)
{
	const struct tern_service_ref r = CALC_SERVICE_REF;
	return r;
}

struct tern_service_ref v2_extra_ref(void)
{
	const struct tern_service_ref r = EXTRA_SERVICE_REF;
	return r;
}

uint32_t v2_add_id(void)
{
	return CALC_ADD_ID;
}

uint32_t v2_echo_id(void)
{
	return CALC_ECHO_ID;
}

uint32_t v2_stats_id(void)
{
	return CALC_STATS_ID;
}

int v2_mul(tern_session *s, int64_t a, int64_t b, int64_t *product)
{
	calc_v2_AddReq req;
	calc_v2_AddResp resp;
	int rc;

	calc_v2_AddReq_set_a(&req, a);
	calc_v2_AddReq_set_b(&req, b);
	rc = calc_mul_sync(s, &req, &resp, 10000);
	if (rc == 0)
		*product = calc_v2_AddResp_get_sum(&resp);
	return rc;
}
