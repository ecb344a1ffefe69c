// SPDX-License-Identifier: MIT
/* compat_v2.tern's skeleton (generated as compat_v2_skel.h), under
 * compat_v2_names.h's names. */
#include "compat_v2_names.h"

#include "compat_v2_skel.h"
