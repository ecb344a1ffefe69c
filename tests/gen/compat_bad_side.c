// SPDX-License-Identifier: MIT
/* A client of compat_bad.tern's Store: Key.key changed from u64 to u32. */
#include "compat_bad.tern.h"
#include "compat_side.h"

struct tern_service_ref bad_store_ref(void)
{
	const struct tern_service_ref r = STORE_SERVICE_REF;
	return r;
}
